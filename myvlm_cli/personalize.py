"""`myvlm train`, `targets`, `caption`, `ask`, `locate`, `export-embedding` and `research-train`: the
personalisation front door.

`register(sub)` adds the subcommands (myvlm_cli/main.py builds the parser). A command's `--vlm` is this run's
choice of VLM (Library.options), as the global `--vlm` is. What the library refuses (an unknown concept or photo, a
VLM that cannot run here, damaged weights) exits 2, running out of memory or disk 1, a stopped training 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .common import print_json

if TYPE_CHECKING:
    from engine.library import Library


def _refused():
    """What a command says as `myvlm: <message>` with exit status 2: the engine's UserErrors, and the builtin
    errors its readers of user-given files raise (a research folder without captions.json)."""
    from engine.errors import UserError

    return (UserError, ValueError, FileNotFoundError)


def _resource_errors():
    """Out of memory, a full disk: the job failed for a reason the message explains (exit status 1)."""
    from engine.library import DiskFull, TrainingOutOfMemory

    return (DiskFull, TrainingOutOfMemory)


def _use_vlm(lib: Library, args: argparse.Namespace) -> None:
    if getattr(args, "vlm", None):
        lib.options["vlm"] = args.vlm


def _config(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainingConfig fields the command line changes."""
    cfg: dict[str, Any] = {}
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.reg_lambda is not None:
        cfg["reg_lambda"] = args.reg_lambda
    if args.seed is not None:
        cfg["seed"] = args.seed
    if getattr(args, "no_augment", False):
        cfg["augment"] = False
    return cfg


class _TrainBar:
    """A tqdm bar with loss and ETA, fed by the trainer's progress callback."""

    def __init__(self, quiet: bool, desc: str):
        from tqdm import tqdm  # here: the other commands start faster without it

        self.bar = tqdm(total=None, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
                        disable=quiet or not sys.stderr.isatty())   # no bar drawn into a pipe or a log

    def __call__(self, p) -> None:
        self.bar.total = p.steps
        self.bar.n = p.step
        self.bar.set_postfix(loss=f"{p.loss:.3f}", reg=f"{p.reg_loss:.4f}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _prepare_people(lib: Library, names) -> None:
    """Make each name teachable (Library.prepare_teaching: a named person gets a concept from their confirmed faces,
    as the app's "Teach the captioner" does); a name that is neither a concept nor a person is refused with where to
    look."""
    from engine.errors import NotFound

    for name in names:
        try:
            made = lib.prepare_teaching([name])
        except NotFound:
            raise NotFound(_unknown_name(name)) from None
        for m in made:
            print(f"{m['name']} had no concept yet: made one from their confirmed faces "
                  f"(as `myvlm concept add-person {m['person_id']}` does)", file=sys.stderr)


def _unknown_name(name: str) -> str:
    return (f"no concept or named person {name!r}: `myvlm concept list` lists the concepts and `myvlm people` the "
            f"people (name one with `myvlm name ID {name}`, then `myvlm train {name}`); a pet or a thing: "
            f"`myvlm concept add-object {name} PHOTO...`")


def cmd_train(args: argparse.Namespace, lib: Library) -> int:
    from engine.errors import Cancelled

    _use_vlm(lib, args)
    bar = _TrainBar(args.json, "training")
    try:
        _prepare_people(lib, args.concepts)
        result = lib.teach_captioner(args.concepts, args.task, _config(args), progress=bar,
                                     resume=not args.restart)
    except Cancelled as exc:
        print(f"myvlm: {exc}; run the same command again to continue from the last checkpoint", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("myvlm: interrupted; run the same command again to continue from the last checkpoint",
              file=sys.stderr)
        return 130
    except _resource_errors() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 1
    except _refused() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    out = [{"concept": lib.concept(cid).name, "identifier": e.identifier, "vlm": e.checkpoint, "task": e.task,
            "steps": e.step, "checkpoints": list(e.history)} for cid, e in result.items()]
    if args.json:
        print_json(out)
    else:
        for o in out:
            print(f"{o['concept']} ({o['identifier']!r}): trained on {o['vlm']} for {o['task']}, {o['steps']} steps")
    return 0


def cmd_targets(args: argparse.Namespace, lib: Library) -> int:
    _use_vlm(lib, args)
    try:
        if args.set is not None:
            lib.set_targets(args.set[0], args.set[1:])
            items = lib.targets(args.concept, args.task)
        elif args.generate or args.regenerate:
            _prepare_people(lib, [args.concept])
            items = lib.generate_targets(args.concept, args.task, regenerate=args.regenerate)
        else:
            items = lib.targets(args.concept, args.task)
    except _refused() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print_json([t.to_json() for t in items])
        return 0
    for t in items:
        flag = "  (check: no phrase named the concept)" if t.needs_review else ""
        print(f"[{t.example_id}] {t.label}{flag}")
        for c in t.captions or ["(no targets yet: myvlm targets CONCEPT --generate)"]:
            print(f"    {c}")
        for q, a in t.qa:
            print(f"    Q: {q}  A: {a}")
    return 0


def _show_text(args: argparse.Namespace, photo, said: dict[str, Any], kind: str) -> int:
    """`said`: a Library.caption / Library.ask answer ({kind: the text with today's names, "text", "model", ...})."""
    if args.json:
        print_json({"photo": photo.path, **said})
    else:
        print(said[kind])
    return 0


def cmd_caption(args: argparse.Namespace, lib: Library) -> int:
    _use_vlm(lib, args)
    try:
        photo = lib.find_photo(args.photo)
        said = lib.caption(photo.id, personalized=not args.original, store=not args.no_store)
    except _refused() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    return _show_text(args, photo, said, "caption")


def cmd_ask(args: argparse.Namespace, lib: Library) -> int:
    _use_vlm(lib, args)
    try:
        photo = lib.find_photo(args.photo)
        said = lib.ask(photo.id, args.question, store=not args.no_store)
    except _refused() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    return _show_text(args, photo, said, "answer")


def cmd_locate(args: argparse.Namespace, lib: Library) -> int:
    """JSON: {"photo", "concept", "box": [x1, y1, x2, y2] in pixels or null, "raw": the model's text}."""
    from engine.errors import NotFound

    _use_vlm(lib, args)
    try:
        photo = lib.find_photo(args.photo)
        try:
            concept = lib.concept(args.concept)
        except _refused():
            raise NotFound(_unknown_name(args.concept)) from None
        where = lib.locate(photo.id, concept.id)
    except _refused() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    if "cannot" in where:   # a VLM that does not answer with boxes
        print(f"myvlm: {where['cannot']}", file=sys.stderr)
        return 2
    print_json(where)
    return 0


def cmd_research_train(args: argparse.Namespace, lib: Library) -> int:
    from engine.errors import Cancelled
    from engine.library import research_train

    bar = _TrainBar(args.json, "training")
    try:
        report = research_train(args.folder, args.out, vlm=args.vlm or "blip2", task=args.task, config=_config(args),
                                models_dir=lib.paths.models, eval_images=args.images, progress=bar)
    except Cancelled as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 130
    except _refused() as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    finally:
        bar.close()
    if args.json:
        print_json(report)
    else:
        print(f"wrote {report['embeddings']} and {report['outputs']}")
    return 0


def cmd_export_embedding(args: argparse.Namespace, lib: Library) -> int:
    _use_vlm(lib, args)
    try:
        path = lib.export_embedding(args.concept, args.task, args.out)
    except _refused() as exc:
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
