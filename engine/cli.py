"""`myvlm`: the headless command line. Everything the GUI does, for scripts and tests.

`--json` output shapes are stable and documented in docs/cli-json.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from . import __version__
from .api import FolderNotFound, Library
from .library import default_pictures_path
from .pipeline import ALL, ERRORS, MISSING, ProgressEvent


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


class _Bars:
    """tqdm bars on stderr, one per stage, fed by scanner and pipeline progress events."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, tqdm] = {}

    def _bar(self, stage: str, total: int) -> tqdm:
        bar = self.bars.get(stage)
        if bar is None:
            bar = tqdm(total=total, desc=f"{stage:>9}", unit="photo", file=sys.stderr, dynamic_ncols=True,
                       disable=not self.enabled, leave=True)
            self.bars[stage] = bar
        elif bar.total != total:
            bar.total = total
        return bar

    def scan(self, stage: str, done: int, total: int, current: str) -> None:
        bar = self._bar("scan", total)
        bar.n = done
        bar.refresh()

    def pipeline(self, ev: ProgressEvent) -> None:
        bar = self._bar(ev.stage, ev.total)
        bar.n = ev.done
        if ev.errors:
            bar.set_postfix(errors=ev.errors, refresh=False)
        bar.refresh()
        if ev.state in ("finished", "cancelled"):
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _install_interrupt(lib: Library) -> threading.Event:
    """First Ctrl-C: finish the photos in flight and stop cleanly (work resumes next time). Second: abort."""
    stopped = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()
        print("\nstopping after the photos in progress… (Ctrl-C again to abort)", file=sys.stderr)
        lib.cancel()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stopped


# -- commands -----------------------------------------------------------------------------------------------------

def cmd_index(args: argparse.Namespace, lib: Library) -> int:
    targets = list(args.paths)
    if not targets and not lib.folders():
        pictures = default_pictures_path()
        if not pictures.is_dir():
            print(f"No photo folder given and no Pictures folder at {pictures}. "
                  "Run `myvlm index PATH` (or `make run ALBUM=PATH`).", file=sys.stderr)
            if args.json:
                _print_json({"scan": None, "pipeline": None, "status": lib.status()})
            else:
                _print_status(lib.status())
            return 0
        targets = [str(pictures)]
    for t in targets:
        try:
            folder = lib.add_folder(t)
        except (FolderNotFound, ValueError) as exc:
            print(f"myvlm: {exc}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"watching {folder.path}", file=sys.stderr)
    stopped = _install_interrupt(lib)
    bars = _Bars(enabled=not args.no_progress)
    try:
        scan = lib.scan(progress=bars.scan)
        bars.close()
        if not args.json:
            print(f"scanned {scan.seen} files in {scan.seconds:.1f}s: {scan.new} new, {scan.changed} changed, "
                  f"{scan.moved} moved, {scan.gone} gone, {scan.duplicates} duplicates, {scan.unsupported} unsupported, "
                  f"{scan.errors} errors" + (f"; offline: {', '.join(scan.offline)}" if scan.offline else ""),
                  file=sys.stderr)
        report = lib.process(mode=args.mode, stages=args.stages, progress=bars.pipeline) if not stopped.is_set() else None
    finally:
        bars.close()
    status = lib.status()
    if args.json:
        _print_json({"scan": scan.to_json(), "pipeline": report.to_json() if report else None, "status": status})
    else:
        _print_status(status)
    return 130 if stopped.is_set() else 0


def cmd_watch(args: argparse.Namespace, lib: Library) -> int:
    from .watch import FolderWatcher

    for t in args.paths:
        try:
            lib.add_folder(t)
        except (FolderNotFound, ValueError) as exc:
            print(f"myvlm: {exc}", file=sys.stderr)
            return 2
    if not lib.folders():
        print("myvlm: no folders to watch; give one: myvlm watch PATH", file=sys.stderr)
        return 2
    if args.polling is not None:
        lib.catalog.set_setting("watch_polling", bool(args.polling))
    done = threading.Event()

    def on_update(update: Any) -> None:
        s = update.scan
        what = "start-up reconcile" if update.startup else ", ".join(update.folders)
        line = (f"[{what}] {s.new} new, {s.changed} changed, {s.moved} moved, {s.gone} gone, {s.errors} errors")
        if args.json:
            print(json.dumps({"folders": update.folders, "startup": update.startup, "scan": s.to_json(),
                              "pipeline": update.pipeline.to_json() if update.pipeline else None}), flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    watcher = FolderWatcher(lib.paths.root, poll_interval=args.interval,
                            on_update=on_update)

    def handler(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    watcher.start(wait_ready=False)
    if not args.json:
        print(f"watching {len(lib.folders())} folder(s); Ctrl-C to stop", file=sys.stderr)
    while not done.wait(0.5):
        if watcher.error is not None:
            print(f"myvlm: watcher stopped: {watcher.error}", file=sys.stderr)
            watcher.stop()
            return 1
    watcher.stop()
    return 0


def _print_status(st: dict[str, Any]) -> None:
    p = st["photos"]
    print(f"Library: {st['library']}")
    for f in st["folders"]:
        extra = f"  ({f['error']})" if f["error"] else ""
        print(f"  folder {f['path']}: {f['status']}, {f['photos']} photos{extra}")
    print(f"Photos: {p['total']} total — {p['ok']} ready, {p['pending']} pending, {p['error']} with errors, "
          f"{p['unsupported']} unsupported, {p['offline']} offline, {p['gone']} gone")
    for name, s in st["stages"].items():
        print(f"  stage {name}: {s['done']} done, {s['pending']} pending, {s['errors']} errors")
    errors = st["errors"]
    if errors:
        print(f"Problems ({len(errors)}):")
        for e in errors[:20]:
            print(f"  {e['path']}: {e['error']}")
        if len(errors) > 20:
            print(f"  … and {len(errors) - 20} more: myvlm photos --errors")


def cmd_status(args: argparse.Namespace, lib: Library) -> int:
    st = lib.status()
    if args.json:
        _print_json(st)
    else:
        _print_status(st)
    return 0


def cmd_photos(args: argparse.Namespace, lib: Library) -> int:
    photos = lib.photos(status=args.status, errors_only=args.errors, order=args.order, limit=args.limit)
    if args.json:
        _print_json([p.to_json() for p in photos])
        return 0
    for p in photos:
        size = f"{p.width}×{p.height}" if p.width else "-"
        extra = f"  ! {p.last_error}" if p.last_error else ""
        print(f"{p.id:>7}  {p.effective_status:<11} {size:>11}  {p.date_taken or '-':<19}  {p.path}{extra}")
    return 0


def cmd_folders(args: argparse.Namespace, lib: Library) -> int:
    if args.remove is not None:
        n = lib.catalog.remove_folder(args.remove)
        print(f"stopped watching folder {args.remove}; forgot {n} photos (the files themselves are untouched)",
              file=sys.stderr)
    folders = lib.status()["folders"]
    if args.json:
        _print_json(folders)
    else:
        for f in folders:
            print(f"{f['id']:>4}  {f['status']:<8} {f['photos']:>7} photos  {f['path']}")
    return 0


def cmd_purge(args: argparse.Namespace, lib: Library) -> int:
    n = lib.catalog.purge_gone()
    if args.json:
        _print_json({"purged": n})
    else:
        print(f"forgot {n} photo(s) whose files are gone")
    return 0


def cmd_rotate(args: argparse.Namespace, lib: Library) -> int:
    photo = lib.catalog.photo(args.photo_id)
    if photo is None:
        print(f"myvlm: no photo with id {args.photo_id}", file=sys.stderr)
        return 2
    lib.catalog.set_user_rotation(photo.id, photo.user_rotation + args.degrees)
    print(f"{photo.path}: shown rotated {(photo.user_rotation + args.degrees) % 360}° (the file is not modified)")
    return 0


def cmd_doctor(args: argparse.Namespace, lib: Library | None) -> int:
    from .doctor import report

    rep = report(lib.paths if lib else None)
    if args.json:
        _print_json(rep)
        return 0
    print(f"MyVLM Desktop {rep['myvlm_desktop']} — Python {rep['python']}, SQLite {rep['sqlite']}")
    d = rep["device"]
    print(f"Device: {d.get('kind')} — {d.get('name')}" + (f", {d['memory_gb']} GB" if "memory_gb" in d else "")
          + (f"; RAM {d['ram_gb']} GB" if "ram_gb" in d else "") + f"; {d.get('cpu_cores')} CPU cores")
    print("Packages:")
    for name, v in rep["packages"].items():
        print(f"  {name:<24} {v or 'MISSING'}")
    print(f"Formats: HEIC {'yes' if rep['formats']['heif'] else 'no'}, AVIF {'yes' if rep['formats']['avif'] else 'no'}")
    m = rep["models"]
    dl = m["dlib_face"]
    print(f"Face models (dlib, CC0): {dl['state']}" + (f" — {dl['fix']}" if dl.get("fix") else f" at {dl['path']}"))
    for pack in m["insightface_packs"]:
        print(f"InsightFace {pack['name']}: {pack['state']}" + (f" — {pack['fix']}" if pack["fix"] else ""))
    for hub in m["hub"]:
        print(f"{hub['name']}: {hub['state']} ({hub['purpose']})" + (f"\n    → {hub['fix']}" if hub["fix"] else ""))
    return 0


# -- parser ------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="myvlm", description="MyVLM Desktop from the command line.")
    p.add_argument("--version", action="version", version=f"myvlm {__version__}")
    p.add_argument("--library", metavar="PATH", help="library folder (default: $MYVLM_LIBRARY or the user data folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="add folders and run every stage to completion")
    s.add_argument("paths", nargs="*", metavar="PATH", help="photo folders (default: the watched ones, else Pictures)")
    s.add_argument("--mode", choices=[MISSING, ALL, ERRORS], default=MISSING,
                   help="missing: only what is not done yet (default); all: redo everything; errors: retry failures")
    s.add_argument("--stage", dest="stages", action="append", metavar="NAME", help="run only this stage (repeatable)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("watch", help="follow folders as files come and go, until Ctrl-C")
    s.add_argument("paths", nargs="*", metavar="PATH")
    s.add_argument("--polling", action=argparse.BooleanOptionalAction, default=None,
                   help="poll instead of OS events (network shares); remembered for this library")
    s.add_argument("--interval", type=float, default=2.0, help="polling interval in seconds")
    s.add_argument("--json", action="store_true", help="one JSON line per update on stdout")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("status", help="what the library holds and what is left to do")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("photos", help="list photos")
    s.add_argument("--status", choices=["pending", "ok", "error", "unsupported", "gone", "offline"])
    s.add_argument("--errors", action="store_true", help="only photos with a problem")
    s.add_argument("--order", choices=["path", "date", "id"], default="path")
    s.add_argument("--limit", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_photos)

    s = sub.add_parser("folders", help="list watched folders")
    s.add_argument("--remove", type=int, metavar="ID", help="stop watching a folder (files are untouched)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_folders)

    s = sub.add_parser("purge", help="forget photos whose files are gone")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser("rotate", help="show a photo rotated (clockwise degrees; the file is never modified)")
    s.add_argument("photo_id", type=int)
    s.add_argument("degrees", type=int, choices=[90, 180, 270, -90])
    s.set_defaults(func=cmd_rotate)

    s = sub.add_parser("doctor", help="versions, device, and which models are present or missing")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("engine").addHandler(handler)
        logging.getLogger("engine").setLevel(logging.INFO)
    try:
        lib = Library(args.library)
    except Exception as exc:  # noqa: BLE001 - the message is for the user
        if args.command == "doctor":
            return cmd_doctor(args, None)
        print(f"myvlm: cannot open the library: {exc}", file=sys.stderr)
        return 1
    with lib:
        try:
            return int(args.func(args, lib) or 0)
        except BrokenPipeError:  # `myvlm photos | head` is fine
            sys.stderr.close()
            return 0


if __name__ == "__main__":
    sys.exit(main())
