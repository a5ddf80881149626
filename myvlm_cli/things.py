"""`myvlm concept ...`: people, pets and things the app recognises by name (their recognition heads)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import is_terminal, print_json

if TYPE_CHECKING:
    from engine.api import Library


def _photo_arg(lib: Library, text: str):
    photo = lib.catalog.photo(int(text)) if text.isdigit() else lib.catalog.photo_by_path(text)
    if photo is None:
        raise ValueError(f"no photo {text!r} in the catalog (give a photo id or the path of an indexed photo)")
    return photo


def _train_and_report(args: argparse.Namespace, lib: Library, concept, create=None) -> int:
    """Train a concept's head and say how it went; `create(train)`, when given, makes the concept with `train`
    (add-object: nothing is left behind when the head cannot be trained)."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc="training", unit="step", file=sys.stderr, leave=False,
               disable=args.json or not is_terminal(sys.stderr))   # a bar only where it can be drawn

    def progress(p: Any) -> None:   # the head trainer's engine.progress.Progress (views, training, evaluation)
        bar.set_description(p.phase, refresh=False)
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    def train(concept_id: int):
        return lib.train_concept_head(concept_id, progress=progress, negatives_folder=getattr(args, "negatives", None))

    try:
        concept = create(train) if create is not None else train(concept.id)
    finally:
        bar.close()
    if args.json:
        print_json(concept.to_json())
    else:
        m = concept.metrics or {}
        found = len(lib.concepts().photos_with(concept.id))
        quality = ""
        if m.get("precision") is not None and m.get("recall") is not None:
            quality = f"; held-out precision {m['precision']:.2f}, recall {m['recall']:.2f} ({m.get('method', '')})"
        print(f"{concept.name} ({concept.kind}, identifier {concept.identifier!r}): head ready{quality}; "
              f"found in {found} photo(s)")
    return 0


def _why_no_suggestions(encoder: Any) -> str:
    """Suggestions come from CLIP embeddings: without its weights there are none to look at, which is not the same
    as "nothing recurring"."""
    missing = encoder.missing_reason()
    if missing:
        return f"no suggestions: finding recurring things needs CLIP, which cannot run here — {missing}"
    return "nothing recurring to suggest yet"


def cmd_concept(args: argparse.Namespace, lib: Library) -> int:
    from engine.concepts.registry import ConceptError
    from engine.faces.backends import FaceBackendError
    from engine.model_manager import ModelError  # and model_files.ModelLoadError: a CLIP file that does not load

    reg = lib.concepts()
    try:
        if args.action == "add-object":
            photos = [_photo_arg(lib, p).id for p in args.photos]
            return _train_and_report(args, lib, None, create=lambda train: reg.add_object_trained(
                args.name, photos, train, identifier=args.identifier))
        if args.action == "add-person":
            concept = reg.add_person(args.person_id, identifier=args.identifier)
            return _train_and_report(args, lib, concept)
        if args.action == "train":
            return _train_and_report(args, lib, reg.get(args.concept))
        if args.action == "list":
            concepts = reg.list()
            if args.json:
                print_json([{**c.to_json(), "photos": len(reg.photos_with(c.id)),
                              "examples": len(reg.examples(c.id))} for c in concepts])
            elif not concepts:
                print("no concepts yet: myvlm concept add-object NAME PHOTO... or add-person PERSON_ID")
            for c in concepts if not args.json else []:
                print(f"{c.id:>4}  {c.name:<20} {c.kind:<7} identifier={c.identifier!r:<10} head={c.head_state:<9} "
                      f"embedding={c.embedding_state:<9} "
                      f"in {len(reg.photos_with(c.id))} photos")
            return 0
        if args.action == "detect":
            from engine.concepts.detect import ConceptDetector

            photo = _photo_arg(lib, args.photo)
            concepts, signals, _ = ConceptDetector(lib.catalog).compute(photo_ids=[photo.id])
            names = {c.id: c for c in concepts}
            out = [{"concept_id": s.concept_id, "name": names[s.concept_id].name, "kind": names[s.concept_id].kind,
                    "score": round(s.score, 4), "fired": s.fired, "face_id": s.face_id}
                   for s in sorted(signals, key=lambda s: -s.score)]
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
            from engine.concepts.research import import_research_concept

            concept = import_research_concept(reg, Path(args.folder), name=args.name)
            print(f"imported {concept.name} ({len(reg.examples(concept.id))} images)")
            return 0
        if args.action == "suggest":
            from engine.concepts.suggest import suggest_things

            enc = lib.clip_encoder()
            found = suggest_things(lib.catalog, enc.key, enc.dim)
            if args.json:
                print_json([s.to_json() for s in found])
            else:
                for s in found:
                    rep = lib.catalog.photo(s.representative)
                    print(f"{len(s.photo_ids)} photos of this over {s.days} days — name it? e.g. {rep.path if rep else '?'}"
                          f"\n    myvlm concept add-object NAME {' '.join(map(str, s.photo_ids[:4]))}")
                if not found:
                    print(_why_no_suggestions(enc))
            return 0
        if args.action == "remove":
            reg.remove(reg.get(args.concept).id)
            return 0
    except (ConceptError, FaceBackendError, ModelError, ValueError) as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
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
