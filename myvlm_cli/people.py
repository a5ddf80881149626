"""`myvlm people`, `name`, `rename`, `merge`, `move`, `split`, `reject`, `confirm`, `hide`, `forget`, `faces` and
`recluster`: naming the faces the library found."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import print_json

if TYPE_CHECKING:
    from engine.library import Library


def _face_json(f: dict[str, Any]) -> dict[str, Any]:
    return {"id": f["id"], "photo": f.get("photo_path"), "bbox": [round(f["x"], 1), round(f["y"], 1),
            round(f["w"], 1), round(f["h"], 1)], "score": round(f["score"], 4), "state": f["state"]}


def cmd_people(args: argparse.Namespace, lib: Library) -> int:
    from engine.read_models import people_list

    named = True if args.named else (False if args.unnamed else None)
    out = [{"id": p["id"], "name": p["name"], "hidden": p["hidden"], "faces": [_face_json(f) for f in p["faces"]],
            "suggestions": [{"id": s.person_id, "name": s.name, "similarity": round(s.similarity, 4)}
                            for s in p["suggestions"]]}
           for p in people_list(lib, include_hidden=args.all, named=named)]
    if args.json:
        print_json(out)
        return 0
    if not out:
        print("no people yet: index photos with faces first (myvlm index PATH)")
    for p in out:
        label = p["name"] or "unnamed"
        extra = " (hidden)" if p["hidden"] else ""
        confirmed = sum(f["state"] == "confirmed" for f in p["faces"])
        print(f"{p['id']:>5}  {label:<24} {len(p['faces']):>4} faces ({confirmed} confirmed){extra}")
        for s in p["suggestions"]:
            print(f"         Is this {s['name']}? (person {s['id']}, similarity {s['similarity']:.2f})"
                  f"  → myvlm name {p['id']} \"{s['name']}\"")
    return 0


def _people_action(fn):
    """A naming action (a Library verb) and the line it prints; what the library refuses (a UserError) is said by
    main() as `myvlm: <message>`, exit status 2."""

    def run(args: argparse.Namespace, lib: Library) -> int:
        msg = fn(args, lib)
        if msg:
            print(msg)
        return 0
    return run


@_people_action
def cmd_name(args, lib):
    pid = lib.name_person(args.person_id, args.name)
    return f"person {pid} is {args.name}" + (f" (merged into existing person {pid})" if pid != args.person_id else "")


@_people_action
def cmd_merge(args, lib):
    lib.merge_people(args.target, args.sources)
    return f"merged {', '.join(map(str, args.sources))} into {args.target}"


@_people_action
def cmd_move(args, lib):
    lib.move_faces(args.face_ids, args.to)
    return f"moved {len(args.face_ids)} face(s) to person {args.to}"


@_people_action
def cmd_split(args, lib):
    return f"new person {lib.split_person(args.person_id, args.face_ids)}"


@_people_action
def cmd_reject(args, lib):
    lib.reject_faces([args.face_id], args.person_id)
    return f"face {args.face_id} is not person {args.person_id}; it will not be suggested for them again"


@_people_action
def cmd_confirm(args, lib):
    lib.confirm_face(args.face_id)
    return f"face {args.face_id} confirmed"


@_people_action
def cmd_hide(args, lib):
    if args.small is not None:
        hidden = lib.hide_small_groups(args.small)
        return f"hid {len(hidden)} unnamed group(s) of at most {args.small} faces"
    if args.person_id is None:
        from engine.errors import InvalidInput

        raise InvalidInput("give a person id, or --small N")
    lib.hide_person(args.person_id, not args.unhide)
    return f"person {args.person_id} {'shown' if args.unhide else 'hidden'}"


@_people_action
def cmd_forget(args, lib):
    n = lib.forget_person(args.person_id)
    return f"forgot person {args.person_id} and {n} face(s) of theirs"


def cmd_faces(args: argparse.Namespace, lib: Library) -> int:
    from engine.read_models import faces_in_photo

    photo = lib.find_photo(args.photo)
    faces = faces_in_photo(lib, photo.id)
    if args.json:
        print_json([{**_face_json({**f, "photo_path": photo.path}), "person_id": f["person_id"],
                      "person": f["person_name"]} for f in faces])
        return 0
    print(f"{photo.path}: {len(faces)} face(s)")
    for f in faces:
        who = f["person_name"] or (f"unnamed person {f['person_id']}" if f["person_id"] else "nobody")
        print(f"  face {f['id']}: {who} [{f['state']}] at x={f['x']:.0f} y={f['y']:.0f} {f['w']:.0f}×{f['h']:.0f}")
    return 0


def cmd_recluster(args: argparse.Namespace, lib: Library) -> int:
    report = lib.recluster()
    if args.json:
        print_json(report.to_json())
    else:
        print(f"re-clustered: {report.founded_people} groups founded, {report.joined} faces joined, "
              f"{report.deferred} waiting; confirmed faces, names and rejections kept")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("people", help="people and unnamed face groups, with 'Is this …?' suggestions")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="include hidden groups")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--named", action="store_true")
    g.add_argument("--unnamed", action="store_true")
    s.set_defaults(func=cmd_people)

    for cmd, help_ in (("name", "name a person or group (an existing name merges)"), ("rename", "rename a person")):
        s = sub.add_parser(cmd, help=help_)
        s.add_argument("person_id", type=int)
        s.add_argument("name")
        s.set_defaults(func=cmd_name)

    s = sub.add_parser("merge", help="merge people into the first one")
    s.add_argument("target", type=int)
    s.add_argument("sources", type=int, nargs="+")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("move", help="these faces are that person")
    s.add_argument("face_ids", type=int, nargs="+")
    s.add_argument("--to", type=int, required=True, metavar="PERSON_ID")
    s.set_defaults(func=cmd_move)

    s = sub.add_parser("split", help="move some faces of a person into a new group")
    s.add_argument("person_id", type=int)
    s.add_argument("face_ids", type=int, nargs="+")
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("reject", help="this face is not this person (remembered)")
    s.add_argument("face_id", type=int)
    s.add_argument("person_id", type=int)
    s.set_defaults(func=cmd_reject)

    s = sub.add_parser("confirm", help="yes, this face is its person")
    s.add_argument("face_id", type=int)
    s.set_defaults(func=cmd_confirm)

    s = sub.add_parser("hide", help="hide a group of strangers (or all small unnamed groups)")
    s.add_argument("person_id", type=int, nargs="?")
    s.add_argument("--small", type=int, metavar="N", help="hide every unnamed group of at most N faces")
    s.add_argument("--unhide", action="store_true")
    s.set_defaults(func=cmd_hide)

    s = sub.add_parser("forget", help="delete a person's name and face data (privacy)")
    s.add_argument("person_id", type=int)
    s.set_defaults(func=cmd_forget)

    s = sub.add_parser("faces", help="faces found in a photo")
    s.add_argument("photo", help="photo id or path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_faces)

    s = sub.add_parser("recluster", help="group faces again from scratch (keeps confirmed faces, names, rejections)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_recluster)
