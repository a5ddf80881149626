"""`myvlm concept ...`: people, pets and things the app recognises by name (their recognition heads)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .common import is_terminal, print_json

if TYPE_CHECKING:
    from engine.library import Library


def _train_and_report(args: argparse.Namespace, lib: Library, train) -> int:
    """Train a concept's head with `train(progress)` (a Library verb; it returns the concept's id) and say how it
    went."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc="training", unit="step", file=sys.stderr, leave=False,
               disable=args.json or not is_terminal(sys.stderr))   # a bar only where it can be drawn

    def progress(p: Any) -> None:   # the head trainer's engine.progress.Progress (views, training, evaluation)
        bar.set_description(p.phase, refresh=False)
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    try:
        concept = lib.concept(train(progress))
    finally:
        bar.close()
    if args.json:
        print_json(concept.to_json())
    else:
        from engine.read_models import concept_photo_count

        m = concept.metrics or {}
        quality = ""
        if m.get("precision") is not None and m.get("recall") is not None:
            quality = f"; held-out precision {m['precision']:.2f}, recall {m['recall']:.2f} ({m.get('method', '')})"
        print(f"{concept.name} ({concept.kind}, identifier {concept.identifier!r}): head ready{quality}; "
              f"found in {concept_photo_count(lib, concept.id)} photo(s)")
    return 0


def _why_no_suggestions(lib: Library) -> str:
    """Suggestions come from CLIP embeddings: without its weights there are none to look at, which is not the same
    as "nothing recurring"."""
    missing = lib.clip_unavailable()
    if missing:
        return f"no suggestions: finding recurring things needs CLIP, which cannot run here — {missing}"
    return "nothing recurring to suggest yet"


def cmd_concept(args: argparse.Namespace, lib: Library) -> int:
    """What the library refuses (an unknown concept or photo, no CLIP here, a damaged model file) is a UserError,
    said by main() as `myvlm: <message>`, exit status 2."""
    negatives = getattr(args, "negatives", None)
    if args.action == "add-object":   # a name already used for a thing adds these photos to it (Library.teach_thing)
        photos = [lib.find_photo(p).id for p in args.photos]
        return _train_and_report(args, lib, lambda progress: lib.teach_thing(
            args.name, photos, identifier=args.identifier, progress=progress, negatives_folder=negatives))
    if args.action in ("add-person", "train"):
        concept = (lib.add_person_concept(args.person_id, identifier=args.identifier) if args.action == "add-person"
                   else lib.concept(args.concept))
        return _train_and_report(args, lib, lambda progress: lib.train_concept_head(
            concept.id, progress=progress, negatives_folder=negatives).id)
    if args.action == "list":
        from engine.read_models import concept_list

        rows = concept_list(lib)
        if args.json:
            print_json([{**r["concept"].to_json(), "photos": r["photos"], "examples": r["examples"]} for r in rows])
            return 0
        if not rows:
            print("no concepts yet: myvlm concept add-object NAME PHOTO... or add-person PERSON_ID")
        for r in rows:
            c = r["concept"]
            print(f"{c.id:>4}  {c.name:<20} {c.kind:<7} identifier={c.identifier!r:<10} head={c.head_state:<9} "
                  f"embedding={c.embedding_state:<9} in {r['photos']} photos")
        return 0
    if args.action == "detect":
        photo = lib.find_photo(args.photo)
        out = [{**d, "score": round(d["score"], 4)} for d in lib.detect_concepts(photo.id)]
        if args.json:
            print_json(out)
        else:
            print(f"{photo.path}:")
            for o in out:
                face = f" (face {o['face_id']})" if o["face_id"] else ""
                print(f"  {'✓' if o['fired'] else ' '} {o['name']}: {o['score']:.2f}{face}")
            if not out:
                print("  no concept here")
        return 0
    if args.action == "import":
        from engine.read_models import concept_list

        concept = lib.import_concept(args.folder, name=args.name)
        examples = next(r["examples"] for r in concept_list(lib) if r["concept"].id == concept.id)
        print(f"imported {concept.name} ({examples} images)")
        return 0
    if args.action == "suggest":
        found = lib.thing_suggestions()
        if args.json:
            print_json([s.to_json() for s in found])
        else:
            for s in found:
                rep = lib.photo(s.representative)
                print(f"{len(s.photo_ids)} photos of this over {s.days} days — name it? e.g. {rep.path if rep else '?'}"
                      f"\n    myvlm concept add-object NAME {' '.join(map(str, s.photo_ids[:4]))}")
            if not found:
                print(_why_no_suggestions(lib))
        return 0
    if args.action == "remove":
        lib.remove_concept(args.concept)
        return 0
    return 2


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("concept", help="people, pets and things the app recognises by name")
    csub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("add-object", help="a pet or a thing, from a few photos of it (trains its head)")
    c.add_argument("name")
    c.add_argument("photos", nargs="+", metavar="PHOTO", help="photo ids or paths (4 is a good number)")
    c.add_argument("--identifier", help="the word used in prompts (default: a rare token such as sks)")
    c.add_argument("--negatives", metavar="FOLDER", help="extra photos that are NOT it")
    c = csub.add_parser("add-person", help="a named person (their confirmed faces define the head)")
    c.add_argument("person_id", type=int)
    c.add_argument("--identifier", help="the word used in prompts (default: the name)")
    c = csub.add_parser("train", help="retrain a concept's head")
    c.add_argument("concept", help="concept id or name")
    c.add_argument("--negatives", metavar="FOLDER")
    c = csub.add_parser("list", help="all concepts and their state")
    c = csub.add_parser("detect", help="which concepts a photo shows")
    c.add_argument("photo", help="photo id or path")
    c = csub.add_parser("import", help="import a concept in the MyVLM research layout (images + captions.json)")
    c.add_argument("folder")
    c.add_argument("--name")
    c = csub.add_parser("suggest", help="recurring things worth naming")
    c = csub.add_parser("remove", help="delete a concept (the photos are untouched)")
    c.add_argument("concept")
    for c in csub.choices.values():
        c.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_concept)
