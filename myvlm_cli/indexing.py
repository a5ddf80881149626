"""`myvlm index`, `watch`, `status`, `photos`, `folders`, `purge` and `rotate`: the library's photos and its work."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .common import is_terminal, print_json, rate_text

if TYPE_CHECKING:   # the engine's API (stages, models) is imported once the command is known
    from engine.library import Library, ProgressEvent

# the pipeline's modes (engine.library's MISSING, ALL, ERRORS), spelled out so that parsing the command line imports no
# engine module (tests/test_cli.py checks they are the pipeline's)
MODES = ("missing", "all", "errors")


class IndexProgress:
    """What `myvlm index` says on stderr while it works. On a terminal: one tqdm bar per stage. Anywhere else (a
    pipe, a log file, CI): plain lines, a stage's start, a line every `interval_s` and its end, so no escape codes or
    half-drawn bars end up glued to the messages. Rates are counted from when a stage starts (the scan: from when
    the scan starts, not from its first burst of hashed files), on `clock`."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, *, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 30.0):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.terminal = enabled and (is_terminal(self.stream) if terminal is None else terminal)
        self.clock = clock
        self.interval_s = interval_s
        self.bars: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}

    def begin(self, stage: str) -> None:
        """The stage's clock starts now (called before the scan: its first progress event comes late)."""
        self.started.setdefault(stage, self.clock())

    def _line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def _rate(self, stage: str, done: int) -> str:
        return rate_text(done, self.clock() - self.started.get(stage, self.clock()),
                         "file" if stage == "scan" else "photo")

    def _bar(self, stage: str, total: int) -> Any:
        from tqdm import tqdm  # only on a terminal

        bar = self.bars.get(stage)
        if bar is None:
            bar = tqdm(total=total, desc=f"{stage:>9}", file=self.stream, dynamic_ncols=True, leave=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self.bars[stage] = bar
        elif bar.total != total:
            bar.total = total
        return bar

    def _show(self, stage: str, done: int, total: int, errors: int = 0, final: str = "") -> None:
        self.begin(stage)
        extra = ", ".join(x for x in (self._rate(stage, done), f"{errors} errors" if errors else "") if x)
        if self.terminal:
            bar = self._bar(stage, total)
            bar.n = done
            bar.set_postfix_str(extra, refresh=False)
            bar.refresh()
            if final:
                bar.close()
            return
        now = self.clock()
        if final:
            seconds = now - self.started[stage]
            self._line(f"{stage}: {final} {done}/{total} in {seconds:.1f} s" + (f" ({extra})" if extra else ""))
        elif stage not in self.last_line:
            self._line(f"{stage}: {total} to do")
        elif now - self.last_line[stage] >= self.interval_s:
            self._line(f"{stage}: {done}/{total}" + (f" ({extra})" if extra else ""))
        else:
            return
        self.last_line[stage] = now

    def scan(self, p: Any) -> None:
        """The scanner's engine.progress.Progress("scan", done, total, current file)."""
        if self.terminal:   # plain output has the scan's summary line after it
            self._show("scan", p.done, p.total)

    def pipeline(self, ev: ProgressEvent) -> None:
        if ev.state == "unavailable":
            self._line(f"{ev.stage}: skipped, cannot run here — {ev.current}")
            return
        if ev.total == 0:
            return   # nothing to do for this stage
        final = {"finished": "done", "cancelled": "stopped at"}.get(ev.state, "")
        self._show(ev.stage, ev.done, ev.total, ev.errors, final)

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
    from engine.library import FolderNotFound, default_pictures_path

    targets = list(args.paths)
    if not targets and not lib.folders():
        pictures = default_pictures_path()
        if not pictures.is_dir():
            print(f"No photo folder given and no Pictures folder at {pictures}. "
                  "Run `myvlm index PATH` (or `make run ALBUM=PATH`).", file=sys.stderr)
            if args.json:
                print_json({"scan": None, "pipeline": None, "status": lib.status()})
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
    bars = IndexProgress(enabled=not args.no_progress)
    try:
        bars.begin("scan")
        scan = lib.scan(progress=bars.scan)
        bars.close()
        if not args.json:
            rate = rate_text(scan.seen, scan.seconds, "file")
            print(f"scanned {scan.seen} files in {scan.seconds:.1f}s{f' ({rate})' if rate else ''}: {scan.new} new, {scan.changed} changed, "
                  f"{scan.moved} moved, {scan.gone} gone, {scan.duplicates} duplicates, {scan.unsupported} unsupported, "
                  f"{scan.errors} errors" + (f"; offline: {', '.join(scan.offline)}" if scan.offline else ""),
                  file=sys.stderr)
        report = lib.process(mode=args.mode, stages=args.stages, progress=bars.pipeline) if not stopped.is_set() else None
    finally:
        bars.close()
    status = lib.status()
    if args.json:
        print_json({"scan": scan.to_json(), "pipeline": report.to_json() if report else None, "status": status})
    else:
        _print_status(status)
    return 130 if stopped.is_set() else 0


def cmd_watch(args: argparse.Namespace, lib: Library) -> int:
    from engine.library import FolderNotFound

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
        lib.set_setting("watch_polling", bool(args.polling))
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

    def handler(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    watcher = lib.watch_folders(on_update, run_pipeline=True, poll_interval=args.interval)
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
        if s.get("unavailable"):
            print(f"  stage {name}: not available here, {s['pending']} photos waiting — {s['unavailable']}")
        else:
            blocked = f", {s['blocked']} blocked by an earlier error (see Problems)" if s.get("blocked") else ""
            print(f"  stage {name}: {s['done']} done, {s['pending']} pending, {s['errors']} errors{blocked}")
    print(status_verdict(st))
    pe = st.get("people")
    if pe and pe["faces"]:
        hint = " — name them: myvlm people" if pe["unnamed"] else ""
        print(f"People: {pe['faces']} faces; {pe['named']} named, {pe['unnamed']} groups waiting for a name"
              f"{', ' + str(pe['hidden']) + ' hidden' if pe['hidden'] else ''}{hint}")
    if st.get("concepts"):
        print("Concepts: " + ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(st["concepts"].items())))
    errors = st["errors"]
    if errors:
        print(f"Problems ({len(errors)}):")
        for e in errors[:20]:
            print(f"  {e['path']}: {e['error']}")
        if len(errors) > 20:
            print(f"  … and {len(errors) - 20} more: myvlm photos --errors")


def status_verdict(st: dict[str, Any]) -> str:
    """One sentence: is the library up to date? Never "up to date" while a stage cannot run or work is left."""
    stages = st["stages"]
    cannot = [name for name, s in stages.items() if s.get("unavailable")]
    pending = max((s["pending"] for name, s in stages.items() if name not in cannot), default=0)
    problems = st["photos"]["error"]
    if cannot:
        return (f"Not up to date: {', '.join(cannot)} cannot run here (why and how to fix: above)"
                + (f"; {pending} photos still to process: myvlm index" if pending else "") + ".")
    if pending:
        return f"Not up to date: {pending} photos still to process: myvlm index."
    if problems:
        return f"Up to date, except {problems} file(s) that cannot be read (Problems, below)."
    return "Up to date."


def cmd_status(args: argparse.Namespace, lib: Library) -> int:
    st = lib.status()
    if args.json:
        print_json(st)
    else:
        _print_status(st)
    return 0


def cmd_photos(args: argparse.Namespace, lib: Library) -> int:
    photos = lib.photos(status=args.status, errors_only=args.errors, order=args.order, limit=args.limit)
    if args.json:
        print_json([p.to_json() for p in photos])
        return 0
    for p in photos:
        size = f"{p.width}×{p.height}" if p.width else "-"
        extra = f"  ! {p.last_error}" if p.last_error else ""
        print(f"{p.id:>7}  {p.effective_status:<11} {size:>11}  {p.date_taken or '-':<19}  {p.path}{extra}")
    return 0


def cmd_folders(args: argparse.Namespace, lib: Library) -> int:
    if args.remove is not None:
        n = lib.remove_folder(args.remove)
        print(f"stopped watching folder {args.remove}; forgot {n} photos (the files themselves are untouched)",
              file=sys.stderr)
    folders = lib.status()["folders"]
    if args.json:
        print_json(folders)
    else:
        for f in folders:
            print(f"{f['id']:>4}  {f['status']:<8} {f['photos']:>7} photos  {f['path']}")
    return 0


def cmd_purge(args: argparse.Namespace, lib: Library) -> int:
    n = lib.purge_gone()
    if args.json:
        print_json({"purged": n})
    else:
        print(f"forgot {n} photo(s) whose files are gone")
    return 0


def cmd_rotate(args: argparse.Namespace, lib: Library) -> int:
    photo = lib.photo(args.photo_id)
    if photo is None:
        print(f"myvlm: no photo with id {args.photo_id}", file=sys.stderr)
        return 2
    lib.rotate(photo.id, args.degrees)
    print(f"{photo.path}: shown rotated {(photo.user_rotation + args.degrees) % 360}° (the file is not modified)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("index", help="add folders and run every stage to completion")
    s.add_argument("paths", nargs="*", metavar="PATH", help="photo folders (default: the watched ones, else Pictures)")
    s.add_argument("--mode", choices=list(MODES), default=MODES[0],
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
