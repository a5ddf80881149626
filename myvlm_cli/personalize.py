"""`myvlm train`, `targets`, `caption`, `ask`, `locate` and `research-train`: the personalisation front door.

`register(sub)` adds the subcommands (myvlm_cli/main.py builds the parser).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _errors():
    from engine.concepts.object_head import TrainingCancelled
    from engine.concepts.registry import ConceptError
    from engine.errors import NotFound
    from engine.model_manager import ModelError
    from engine.personalize.vlm import VlmError

    # ModelError covers model_files.ModelLoadError: damaged weights or a refused pickle, said in one sentence
    return (ConceptError, VlmError, ModelError, ValueError, FileNotFoundError, NotFound), TrainingCancelled


def _resource_errors():
    """Out of memory, a full disk: the job failed for a reason the message explains (exit status 1)."""
    from engine.catalog import DiskFull
    from engine.personalize.training import TrainingOutOfMemory

    return (DiskFull, TrainingOutOfMemory)


def _config(args: argparse.Namespace):
    from engine.personalize.training import TrainingConfig

    cfg = TrainingConfig()
    if args.steps is not None:
        cfg.steps = args.steps
    if args.reg_lambda is not None:
        cfg.reg_lambda = args.reg_lambda
    if args.seed is not None:
        cfg.seed = args.seed
    if getattr(args, "no_augment", False):
        cfg.augment = False
    return cfg


class _TrainBar:
    """A tqdm bar with loss and ETA, fed by the trainer's progress callback."""

    def __init__(self, quiet: bool, desc: str):
        from tqdm import tqdm   # here: the other commands start faster without it

        self.bar = tqdm(total=None, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
                        disable=quiet or not sys.stderr.isatty())   # no bar drawn into a pipe or a log

    def __call__(self, p) -> None:
        self.bar.total = p.steps
        self.bar.n = p.step
        self.bar.set_postfix(loss=f"{p.loss:.3f}", reg=f"{p.reg_loss:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _prepare_people(lib, names) -> None:
    """Make each name teachable, as the app's "Teach the captioner" does (`Library.person_concept`): a named person
    without a concept gets one (their confirmed faces), a person concept without training photos gets their faces'
    photos. A name that is neither a concept nor a person is refused with where to look."""
    from engine.concepts.registry import ConceptError

    reg = lib.concepts()
    for name in names:
        try:
            c = reg.get(name)
        except ConceptError:
            person = None if str(name).isdigit() else lib.people().find(name)
            if person is None:
                raise ConceptError(_unknown_name(name)) from None
            concept = lib.person_concept(person["id"])
            print(f"{concept.name} had no concept yet: made one from their confirmed faces "
                  f"(as `myvlm concept add-person {person['id']}` does)", file=sys.stderr)
            continue
        if c.kind == "person" and c.person_id is not None and not reg.examples(c.id):
            lib.person_concept(c.person_id)


def _unknown_name(name: str) -> str:
    return (f"no concept or named person {name!r}: `myvlm concept list` lists the concepts and `myvlm people` the "
            f"people (name one with `myvlm name ID {name}`, then `myvlm train {name}`); a pet or a thing: "
            f"`myvlm concept add-object {name} PHOTO...`")


def cmd_train(args: argparse.Namespace, lib) -> int:
    errors, cancelled = _errors()
    pers = lib.personalizer(args.vlm)
    bar = _TrainBar(args.json, "training")
    from engine.personalize.estimates import TrainingClock

    clock = TrainingClock()   # this computer's time per concept, for the estimates (`myvlm doctor`)
    try:
        _prepare_people(lib, args.concepts)
        result = pers.train(args.concepts, args.task, _config(args), progress=lambda p: (clock(p), bar(p)),
                            resume=not args.restart)
        if getattr(pers.wrapper, "record_timings", False):
            clock.finish(pers.vlm_name, pers.wrapper.device)
    except cancelled as exc:
        print(f"myvlm: {exc}; run the same command again to continue from the last checkpoint", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("myvlm: interrupted; run the same command again to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    except _resource_errors() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    reg = lib.concepts()
    out = [{"concept": reg.get(cid).name, "identifier": e.identifier, "vlm": e.checkpoint, "task": e.task,
            "steps": e.step, "checkpoints": list(e.history)} for cid, e in result.items()]
    if args.json:
        _print_json(out)
    else:
        for o in out:
            print(f"{o['concept']} ({o['identifier']!r}): trained on {o['vlm']} for {o['task']}, {o['steps']} steps")
    return 0


def cmd_targets(args: argparse.Namespace, lib) -> int:
    errors, _ = _errors()
    pers = lib.personalizer(args.vlm)
    try:
        if args.set is not None:
            pers.set_targets(args.set[0], args.set[1:])
            items = pers.targets(args.concept, args.task)
        elif args.generate or args.regenerate:
            _prepare_people(lib, [args.concept])
            items = pers.prepare_targets(args.concept, args.task, regenerate=args.regenerate)
        else:
            items = pers.targets(args.concept, args.task)
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json([t.to_json() for t in items])
        return 0
    for t in items:
        flag = "  (check: no phrase named the concept)" if t.needs_review else ""
        print(f"[{t.example_id}] {t.label}{flag}")
        for c in t.captions or ["(no targets yet: myvlm targets CONCEPT --generate)"]:
            print(f"    {c}")
        for q, a in t.qa:
            print(f"    Q: {q}  A: {a}")
    return 0


def _photo(lib, text: str):
    photo = lib.catalog.photo(int(text)) if text.isdigit() else lib.catalog.photo_by_path(text)
    if photo is None:
        raise ValueError(f"no photo {text!r} in the catalog (give a photo id or the path of an indexed photo)")
    return photo


def _show_text(args, lib, photo, g, kind: str, store: bool) -> int:
    from engine.captions import CaptionStore

    captions = CaptionStore(lib.catalog)
    if store:
        if kind == "answer":
            captions.put_answer(photo.id, args.question, g.template, model=g.model, concept_ids=g.concepts,
                                instant=g.instant)
        else:
            captions.put_caption(photo.id, "personalised" if g.personalised or g.instant else "original",
                                 g.template, model=g.model, prompt=g.prompt or None, concept_ids=g.concepts,
                                 instant=g.instant)
    rendered = captions.render(g.template)
    if args.json:
        _print_json({"photo": photo.path, kind: rendered, **g.to_json(), "text": g.text})
    else:
        print(rendered)
    return 0


def cmd_caption(args: argparse.Namespace, lib) -> int:
    errors, _ = _errors()
    try:
        photo = _photo(lib, args.photo)
        g = lib.personalizer(args.vlm).caption(photo.id, personalised=not args.original)
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    return _show_text(args, lib, photo, g, "caption", store=not args.no_store)


def cmd_ask(args: argparse.Namespace, lib) -> int:
    errors, _ = _errors()
    try:
        photo = _photo(lib, args.photo)
        g = lib.personalizer(args.vlm).ask(photo.id, args.question)
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    return _show_text(args, lib, photo, g, "answer", store=not args.no_store)


def cmd_locate(args: argparse.Namespace, lib) -> int:
    """JSON: {"photo", "concept", "box": [x1, y1, x2, y2] in pixels or null, "raw": the model's text}."""
    from engine.personalize.locate import locate

    errors, _ = _errors()
    try:
        photo = _photo(lib, args.photo)
        try:
            lib.concepts().get(args.concept)
        except errors[0]:
            raise ValueError(_unknown_name(args.concept)) from None
        where = locate(lib.personalizer(args.vlm), photo.id, args.concept)
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    _print_json(where.as_dict())
    return 0


def cmd_research_train(args: argparse.Namespace, lib) -> int:
    from engine.personalize.research_run import run_research_training

    errors, cancelled = _errors()
    bar = _TrainBar(args.json, "training")
    try:
        report = run_research_training(Path(args.folder), Path(args.out), vlm=args.vlm or "blip2", task=args.task,
                                       config=_config(args), models_dir=lib.paths.models,
                                       eval_images=Path(args.images) if args.images else None, progress=bar)
    except cancelled as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 130
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    if args.json:
        _print_json(report)
    else:
        print(f"wrote {report['embeddings']} and {report['outputs']}")
    return 0


def cmd_export_embedding(args: argparse.Namespace, lib) -> int:
    from engine.personalize.vlm import resolve_spec

    errors, _ = _errors()
    pers = lib.personalizer(args.vlm)
    try:
        concept = lib.concepts().get(args.concept)
        spec, checkpoint = resolve_spec(pers.vlm_name)
        path = pers.store.export_research(concept.id, checkpoint, args.task, Path(args.out), spec.family)
    except errors as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _training_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--vlm", metavar="NAME", help="blip2 (default), blip2-opt, llava, a tiny-* preset or a folder")
    s.add_argument("--task", choices=["caption", "vqa"], default="caption")
    s.add_argument("--steps", type=int, help="optimisation steps (default 100)")
    s.add_argument("--lambda", dest="reg_lambda", type=float, help="attention regulariser weight (default per VLM)")
    s.add_argument("--seed", type=int)
    s.add_argument("--no-augment", action="store_true", help="train on the plain images (the paper's ablation)")
    s.add_argument("--json", action="store_true")


def register(sub) -> None:
    s = sub.add_parser("train", help="teach the VLM concepts by name (their concept embeddings)")
    s.add_argument("concepts", nargs="+", metavar="PERSON_OR_CONCEPT", help="concept names or ids, trained together")
    s.add_argument("--restart", action="store_true", help="start over instead of resuming an unfinished run")
    _training_args(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("targets", help="show, generate or edit the captions a concept is trained on")
    s.add_argument("concept", metavar="PERSON_OR_CONCEPT")
    s.add_argument("--vlm", metavar="NAME")
    s.add_argument("--task", choices=["caption", "vqa"], default="caption")
    s.add_argument("--generate", action="store_true", help="caption the photos that have no targets yet")
    s.add_argument("--regenerate", action="store_true", help="caption every training photo again")
    s.add_argument("--set", nargs="+", metavar=("EXAMPLE_ID", "CAPTION"), type=str,
                   help="replace one photo's targets with these captions")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_targets)

    for name, help_ in (("caption", "caption a photo, by name where trained concepts appear"),):
        s = sub.add_parser(name, help=help_)
        s.add_argument("photo", metavar="PHOTO", help="photo id or path")
        s.add_argument("--original", action="store_true", help="the un-personalised caption")
        s.add_argument("--vlm", metavar="NAME")
        s.add_argument("--no-store", action="store_true", help="do not keep the caption in the library")
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=cmd_caption)

    s = sub.add_parser("ask", help="ask a question about a photo ('What is Alex wearing?')")
    s.add_argument("photo", metavar="PHOTO", help="photo id or path")
    s.add_argument("question")
    s.add_argument("--vlm", metavar="NAME")
    s.add_argument("--no-store", action="store_true", help="do not keep the answer in the library")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("locate", help="draw where a recognised concept is: a box from MiniGPT-v2, as JSON")
    s.add_argument("photo", metavar="PHOTO", help="photo id or path")
    s.add_argument("concept", metavar="NAME", help="a concept or named person recognised in the photo")
    s.add_argument("--vlm", metavar="NAME", help="a VLM that answers with boxes (minigpt-v2, tiny-minigpt-v2)")
    s.set_defaults(func=cmd_locate)

    s = sub.add_parser("export-embedding", help="write a concept's embedding in the research format "
                                                "(concept_embeddings_<vlm>_<task>.pt)")
    s.add_argument("concept", metavar="PERSON_OR_CONCEPT")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--vlm", metavar="NAME")
    s.add_argument("--task", choices=["caption", "vqa"], default="caption")
    s.set_defaults(func=cmd_export_embedding)

    s = sub.add_parser("research-train", help="train from a MyVLM research-layout concept folder; writes "
                                              "concept_embeddings_<vlm>_<task>.pt and inference_outputs_<vlm>_<task>.json")
    s.add_argument("folder", help="concept folder: images + captions.json (+ additional_llava_vqa_data.json)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--images", help="images to caption at each checkpoint (default: the training images)")
    _training_args(s)
    s.set_defaults(func=cmd_research_train)
