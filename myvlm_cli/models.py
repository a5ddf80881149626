"""`myvlm models`: the models each feature needs, and getting, checking, removing and importing them.

    myvlm models [--json]               the table: feature, model, size, licence, state, where
    myvlm models get NAME               download (progress bar; Ctrl-C keeps what arrived, `get` again resumes)
    myvlm models verify NAME [--fix]    check sizes and hashes (--fix deletes damaged files so `get` refetches them)
    myvlm models remove NAME            delete the model's files (only this model's)
    myvlm models import NAME FOLDER     copy a model from a folder (e.g. one `hf download --local-dir` made)

`register(sub)` adds the command (myvlm_cli/main.py builds the parser).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from .common import print_json

if TYPE_CHECKING:
    from tqdm import tqdm


def _size(n: int | None) -> str:
    from engine.library import human_size

    return human_size(n)


class _Bar:
    """A bytes progress bar on stderr fed by the manager's progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()   # no bar drawn into a pipe or a log
        self.bar: tqdm | None = None
        self.phase = ""

    def __call__(self, p) -> None:
        if not self.enabled or p.phase == "listing":
            return
        if self.bar is None:
            from tqdm import tqdm  # here: the other commands start faster without it

            self.bar = tqdm(total=p.total, initial=p.done, unit="B", unit_scale=True, unit_divisor=1024,
                            file=sys.stderr, dynamic_ncols=True, desc=p.name)
            if p.resumed:
                tqdm.write(f"resuming: {_size(p.resumed)} were already here", file=sys.stderr)
        if p.total is not None and self.bar.total != p.total:
            self.bar.total = p.total
        self.bar.n = p.done
        if p.files_total:
            self.bar.set_postfix_str(f"{p.phase} {p.file} ({p.files_done}/{p.files_total} files)", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _interrupt(after: str) -> threading.Event:
    """Ctrl-C (or SIGTERM) sets the event: the download stops after the chunk in flight, keeping its partial files.
    A second Ctrl-C aborts at once. `after` says what stopping leaves (with the command to type, NAME filled in)."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(f"\nstopping… {after} (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _manager(args: argparse.Namespace, lib):
    from engine.library import ModelManager

    return ModelManager(lib.paths.models if lib is not None else None,
                        face_pack_repo=getattr(args, "repo", None))


def cmd_models(args: argparse.Namespace, lib) -> int:
    from engine.library import DownloadCancelled, ModelError

    action = getattr(args, "models_action", None)
    as_json = bool(getattr(args, "json", False) or getattr(args, "list_json", False))
    try:
        mm = _manager(args, lib)
        if action is None:
            return _list(mm, as_json)
        if action == "get":
            return _get(mm, args, as_json)
        if action == "verify":
            rep = mm.verify(args.name, fix=args.fix)
            if as_json:
                print_json(rep.as_dict())
            else:
                for f in rep.checked:
                    print(f"ok          {f}")
                for f in rep.unverified:
                    print(f"unverified  {f} (no hash known to check it against)")
                for f in rep.problems:
                    print(f"PROBLEM     {f}")
                for f in rep.removed:
                    print(f"deleted     {f} (`myvlm models get {rep.name}` fetches it again)")
                print(f"{rep.name}: {'verified' if rep.ok else 'NOT OK'} ({rep.state})")
            return 0 if rep.ok else 1
        if action == "remove":
            freed = mm.remove(args.name)
            if as_json:
                print_json({"name": mm.entry(args.name).name, "freed_bytes": freed,
                             "state": mm.state(args.name)})
            else:
                print(f"{mm.entry(args.name).name}: removed, {_size(freed)} freed")
            return 0
        if action == "import":
            bar = _Bar(not as_json and not args.no_progress)
            try:
                res = mm.import_folder(args.name, args.folder, progress=bar,
                                       cancel=_interrupt("nothing is imported; the folder is untouched"))
            finally:
                bar.close()
            if as_json:
                print_json(res.as_dict())
            else:
                print(f"{res.name}: imported ({res.state}) → {res.path}")
            return 0 if res.state == "present" else 1
    except DownloadCancelled as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 130
    except ModelError as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(action)


def _list(mm, as_json: bool) -> int:
    rows = mm.status()
    if as_json:
        print_json({"hub_cache": str(mm.cache_dir), "endpoint": mm.endpoint, "offline": mm.offline,
                     "face_pack_repo": mm.face_pack_repo, "models": [r.as_dict() for r in rows]})
        return 0
    table = [("FEATURE", "MODEL", "SIZE", "LICENCE", "STATE", "WHERE")]
    for r in rows:
        size = _size(r.size_bytes) if r.state == "present" else f"~{_size(r.approx_bytes)}"
        state = r.state + (f" ({_size(r.partial_bytes)})" if r.state == "partial" else "")
        name = r.name + (" *" if r.default else "")
        table.append((r.feature, name, size, r.licence, state, r.where or ""))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5])
    print(f"\n* used out of the box. Hugging Face cache: {mm.cache_dir}" + (" (offline: HF_HUB_OFFLINE)"
                                                                         if mm.offline else ""))
    print("`myvlm models get NAME` downloads one; `myvlm models import NAME FOLDER` copies one from a folder.")
    return 0


def _get(mm, args: argparse.Namespace, as_json: bool) -> int:
    e = mm.entry(args.name)
    if not as_json:
        print(f"{e.title}: about {_size(e.size_bytes)}, licence: {e.licence}", file=sys.stderr)
    from engine.library import TokenRequired

    bar = _Bar(not as_json and not args.no_progress)
    try:
        try:
            res = mm.get(args.name, progress=bar,
                         cancel=_interrupt(f"what arrived is kept; `myvlm models get {e.name}` again resumes"))
        except TokenRequired as exc:
            token = _ask_token(str(exc)) if not mm.token else None
            if not token:
                raise
            mm.token = token
            res = mm.get(args.name, progress=bar,
                         cancel=_interrupt(f"what arrived is kept; `myvlm models get {e.name}` again resumes"))
    finally:
        bar.close()
    if as_json:
        print_json(res.as_dict())
    elif res.already_present:
        print(f"{res.name}: already present → {res.path}")
    else:
        extra = f", {_size(res.resumed_bytes)} resumed" if res.resumed_bytes else ""
        print(f"{res.name}: {res.state}, {_size(res.downloaded_bytes)} downloaded{extra} → {res.path}")
    return 0


def _ask_token(why: str) -> str | None:
    """The user's Hugging Face token for a gated model, asked on the terminal (not echoed, not stored); None when
    nobody is at a terminal to answer."""
    import getpass

    if not sys.stdin.isatty():
        return None
    print(f"myvlm: {why}.", file=sys.stderr)
    try:
        return getpass.getpass("Hugging Face token (Enter to stop): ").strip() or None
    except (EOFError, KeyboardInterrupt):
        return None


def register(sub) -> None:
    s = sub.add_parser("models", help="the models each feature needs: list, get, verify, remove, import")
    s.add_argument("--json", dest="list_json", action="store_true", help="the table as JSON")
    msub = s.add_subparsers(dest="models_action", metavar="ACTION")

    g = msub.add_parser("get", help="download a model from the Hugging Face hub (resumes an unfinished one)")
    g.add_argument("name", metavar="NAME", help="a model of `myvlm models` (or its repo id)")
    g.add_argument("--repo", metavar="OWNER/NAME[:FOLDER/{pack}]",
                   help="face packs: the hub repository to take them from (default: $MYVLM_FACE_PACK_REPO or "
                        "public-data/insightface:models/{pack})")
    g.add_argument("--no-progress", action="store_true")

    v = msub.add_parser("verify", help="check a model's files against their sizes and hashes (offline)")
    v.add_argument("name", metavar="NAME")
    v.add_argument("--fix", action="store_true", help="delete damaged files, so that `get` fetches them again")

    r = msub.add_parser("remove", help="delete a model's files")
    r.add_argument("name", metavar="NAME")

    i = msub.add_parser("import", help="copy a model from a folder into its place (the folder is only read)")
    i.add_argument("name", metavar="NAME")
    i.add_argument("folder", metavar="FOLDER")
    i.add_argument("--no-progress", action="store_true")

    for p in (g, v, r, i):
        p.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)
