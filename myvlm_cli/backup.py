"""`myvlm backup`, `restore` and `move-library`: keeping a library safe (engine/admin/backup.py does the work).

`register(sub)` adds the subcommands (myvlm_cli/main.py builds the parser). The photos themselves are
never copied, moved or changed by any of them: the catalog keeps their paths.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from .common import print_json

if TYPE_CHECKING:
    from tqdm import tqdm


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Bar:
    """One tqdm bar per phase (catalog, files, verify), on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.phase = ""

    def __call__(self, p: Any) -> None:
        """The engine's Progress(phase, done, total) of a backup, restore or move."""
        if self.quiet:
            return
        phase, done, total = p.phase, p.done, p.total or 0
        if phase != self.phase:
            self.close()
            self.phase = phase
            from tqdm import tqdm  # here: the other commands start faster without it

            self.bar = tqdm(total=total, desc=f"{phase:>8}", unit="file", file=sys.stderr, dynamic_ncols=True)
        assert self.bar is not None
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(args: argparse.Namespace, fn) -> tuple[int, Any]:
    """Run a backup, restore or move with a progress bar: what it refuses (a BackupError) exits 2, what the disk
    refuses 1, a Ctrl-C 130."""
    from engine.errors import UserError

    bar = _Bar(args.json or args.no_progress or not sys.stderr.isatty())   # bars only where they can be drawn
    try:
        report = fn(bar)
    except KeyboardInterrupt:
        print("myvlm: interrupted; nothing was changed (the unfinished copy was removed)", file=sys.stderr)
        return 130, None
    except (UserError, OSError) as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return (1 if isinstance(exc, OSError) else 2), None
    finally:
        bar.close()
    return 0, report


def cmd_backup(args: argparse.Namespace, lib) -> int:
    rc, r = _run(args, lambda bar: lib.backup(args.dest, with_thumbnails=args.with_thumbnails, progress=bar))
    if rc:
        return rc
    if args.json:
        print_json(r.to_json())
    else:
        c = r.counts
        print(f"backed up {lib.paths.root} to {r.path}: {r.files} files, {_mb(r.bytes)} "
              f"({c.get('photos', 0)} photos, {c.get('people', 0)} people, {c.get('concepts', 0)} concepts"
              f"{'' if r.with_thumbnails else '; thumbnails are made again after a restore'}). "
              "The photos themselves are not part of a backup.")
    return 0


def cmd_restore(args: argparse.Namespace, lib) -> int:
    rc, r = _run(args, lambda bar: lib.close_and_restore(args.backup, force=args.force, progress=bar))
    if rc:
        return rc
    if args.json:
        print_json(r.to_json())
    else:
        c = r.counts
        print(f"restored the backup of {r.created} (MyVLM Desktop {r.app_version}) into {r.library}"
              f"{' (the library that was there was replaced)' if r.replaced else ''}: {c.get('photos', 0)} photos, "
              f"{c.get('people', 0)} people, {c.get('concepts', 0)} concepts")
        if r.thumbnails_to_rebuild:
            print(f"{r.thumbnails_to_rebuild} thumbnail(s) will be made again: run `myvlm index` or open the app")
    return 0


def cmd_move_library(args: argparse.Namespace, lib) -> int:
    from engine.library import ENV_LIBRARY

    rc, r = _run(args, lambda bar: lib.close_and_move(args.new_path, delete_old=args.delete_old, progress=bar))
    if rc:
        return rc
    if args.json:
        print_json(r.to_json())
        return 0
    print(f"moved the library {r.old} to {r.new} ({r.files} files, {_mb(r.bytes)}, every one checked); "
          "the photos stay where they are")
    if r.default:
        print(f"it is the default library now (remembered in {r.pointer})")
    else:
        print(f"open it with: myvlm --library {r.new} …  (or myvlm-desktop --library {r.new})")
    env = os.environ.get(ENV_LIBRARY)
    if env:
        print(f"note: ${ENV_LIBRARY} is set ({env}) and wins over the default: change it to {r.new}")
    if r.old_deleted:
        print(f"the old folder {r.old} was removed")
    elif r.old_kept_reason:
        print(f"the old folder {r.old} was kept: {r.old_kept_reason}")
    else:
        print(f"the old folder {r.old} was kept; remove it once you are happy: myvlm --library {r.new} status, "
              f"then delete it (or move with --delete-old)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("backup", help="back the library up (catalog, concepts, faces; the photos stay where they are)")
    s.add_argument("dest", metavar="DEST",
                   help="the backup folder to make (an existing folder gets a new dated backup folder inside it)")
    s.add_argument("--with-thumbnails", action="store_true",
                   help="include the thumbnails (otherwise they are made again from the photos after a restore)")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="restore a backup into the library folder (checks it before anything changes)")
    s.add_argument("backup", metavar="BACKUP", help="a folder made by `myvlm backup`")
    s.add_argument("--library", metavar="PATH", default=argparse.SUPPRESS,
                   help="the library folder to restore into (default: the --library before the command, else the "
                        "default library)")
    s.add_argument("--force", action="store_true", help="replace a library that holds photos, people or concepts")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("move-library", help="move the library folder elsewhere (copy, check, switch; photos untouched)")
    s.add_argument("new_path", metavar="NEW_PATH", help="where the library goes (a new or empty folder)")
    s.add_argument("--delete-old", action="store_true", help="remove the old folder once the copy is verified")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_move_library)
