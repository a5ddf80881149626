"""`myvlm`: the headless command line. Everything the GUI does, for scripts and tests.

The parser and the dispatch; each command group lives in its own module (indexing, people, things, search,
personalize, check, backup, models, settings). `--json` output shapes are stable and documented in docs/cli-json.md.
Nothing heavy is imported before the command is known: `myvlm --version` and `status` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine import __version__

from . import backup, check, indexing, models, people, personalize, search, settings, things

# under "engine": the library's log file (engine.storage.library_folder.setup_logging) records that logger's tree
log = logging.getLogger("engine.cli")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="myvlm", description="MyVLM Desktop from the command line.")
    p.add_argument("--version", action="version", version=f"myvlm {__version__}")
    p.add_argument("--library", metavar="PATH", help="library folder (default: $MYVLM_LIBRARY or the user data folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr too")
    p.add_argument("--face-backend", metavar="NAME",
                   help="face backend for this run: auto (default), dlib, dlib-cnn, insightface[:PACK] or a pack folder")
    p.add_argument("--vlm", dest="global_vlm", metavar="NAME",
                   help="vision-language model for this run: blip2, llava, smolvlm-256m... (default: the library's "
                        "setting, else what `myvlm doctor` recommends here), a tiny-* preset or a checkpoint folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (indexing, people, things, search, personalize, check, backup, models, settings):
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("engine").addHandler(handler)
        logging.getLogger("engine").setLevel(logging.INFO)
    from engine.library import Library

    try:
        lib = Library(args.library)
    except Exception as exc:  # noqa: BLE001 - the message is for the user
        if args.command == "doctor":
            return settings.cmd_doctor(args, None)
        print(f"myvlm: cannot open the library: {exc}", file=sys.stderr)
        return 1
    if args.face_backend:
        lib.options["face_backend"] = args.face_backend
    if args.global_vlm:
        lib.options["vlm"] = args.global_vlm
    with lib:
        return _run(args, lib)


def _run(args: argparse.Namespace, lib) -> int:
    """The command, with the one error contract (engine.errors): a UserError's message is for the user
    (`myvlm: <message>`; exit status 2, or 1 where the disk refused: a full disk), a Cancelled exits 130 quietly,
    anything else is a bug: its traceback goes to the library's log and a short sentence to stderr (exit status 1)."""
    from engine.errors import Cancelled, UserError

    try:
        return int(args.func(args, lib) or 0)
    except BrokenPipeError:  # `myvlm photos | head` is fine
        sys.stderr.close()
        return 0
    except Cancelled:
        return 130
    except UserError as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, OSError) else 2   # DiskFull says what could not be written and what to do
    except Exception as exc:  # noqa: BLE001 - a bug: logged whole, said short
        log.exception("myvlm %s failed", args.command)
        print(f"myvlm: {args.command} failed: {type(exc).__name__}: {exc} (the details are in {lib.paths.log_file}; "
              "run with -v to see them here)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
