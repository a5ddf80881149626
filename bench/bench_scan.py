#!/usr/bin/env python3
"""Benchmark: first scan of a large album against rescans that find a few changes, through the real Library API.

A tree of tiny files with .jpg names (distinct contents, ~100 per folder, three folder levels) stands in for a big
album; nothing is decoded (scan only, no pipeline), so this times walking, hashing and the catalog writes.

  first scan         Library.add_folder + Library.scan(): walk, hash and insert every file
  rescan, changes    Library.scan() after 100 changes (40 edited in place, 30 new, 30 deleted)
  rescan, no change  Library.scan() again: nothing to hash or write
  watcher rescan     another 100 changes, then Library.scan([the changed folders]) (Scanner.scan_paths), as the
                     folder watcher does

Each report's counts are asserted against the changes made, and a full scan after the watcher rescan must find
nothing left to do, so the benchmark doubles as a correctness check at scale.

    .venv/bin/python bench/bench_scan.py              # 100,000 files
    .venv/bin/python bench/bench_scan.py --quick      # 10,000 files
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.library import Library, ScanReport  # noqa: E402

CACHE = ROOT / ".cache" / "bench"


@dataclass
class Tree:
    root: Path
    files: list[Path] = field(default_factory=list)  # live files
    leaves: list[Path] = field(default_factory=list)
    serial: int = 0  # makes every new file's content unique


def leaf_dirs(root: Path, n_leaves: int) -> list[Path]:
    """`n_leaves` folders three levels deep (year/month/event-like), fan-out about the cube root."""
    fan = max(2, math.ceil(n_leaves ** (1 / 3)))
    return [root / f"y{i // (fan * fan):02d}" / f"m{(i // fan) % fan:02d}" / f"e{i % fan:02d}" for i in range(n_leaves)]


def build_tree(root: Path, n_files: int, per_folder: int) -> Tree:
    tree = Tree(root)
    tree.leaves = leaf_dirs(root, max(1, math.ceil(n_files / per_folder)))
    for i in range(n_files):
        leaf = tree.leaves[i // per_folder]
        if i % per_folder == 0:
            leaf.mkdir(parents=True)
        p = leaf / f"IMG_{i:07d}.jpg"
        p.write_bytes(f"photo {i}\n".encode())
        tree.files.append(p)
    tree.serial = n_files
    return tree


@dataclass
class Changes:
    modified: int = 0
    new: int = 0
    deleted: int = 0
    dirs: set[Path] = field(default_factory=set)


def mutate(tree: Tree, rng: random.Random, n_modify: int, n_new: int, n_delete: int, tag: str) -> Changes:
    """Edit files in place (new, longer content), add new files (unique content: not moves), delete others."""
    ch = Changes()
    picked = rng.sample(range(len(tree.files)), n_modify + n_delete)
    for k in picked[:n_modify]:
        p = tree.files[k]
        tree.serial += 1
        p.write_bytes(f"photo edited {tree.serial} ({tag})\n".encode())
        ch.modified += 1
        ch.dirs.add(p.parent)
    for k in sorted(picked[n_modify:], reverse=True):
        p = tree.files.pop(k)
        p.unlink()
        ch.deleted += 1
        ch.dirs.add(p.parent)
    for _ in range(n_new):
        leaf = rng.choice(tree.leaves)
        tree.serial += 1
        p = leaf / f"NEW_{tag}_{tree.serial:07d}.jpg"
        p.write_bytes(f"photo new {tree.serial}\n".encode())
        tree.files.append(p)
        ch.new += 1
        ch.dirs.add(leaf)
    return ch


def check(report: ScanReport, ch: Changes, what: str, seen: int | None = None) -> None:
    got = (report.changed, report.new, report.gone, report.moved, report.hashed, report.errors)
    want = (ch.modified, ch.new, ch.deleted, 0, ch.modified + ch.new, 0)
    assert got == want, f"{what}: (changed, new, gone, moved, hashed, errors) = {got}, expected {want}"
    if seen is not None:
        assert report.seen == seen, f"{what}: seen {report.seen}, expected {seen}"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000, help="files in the tree (default 100000)")
    ap.add_argument("--per-folder", type=int, default=100, help="files per folder (default 100)")
    ap.add_argument("--modify", type=int, default=40, help="files edited in place per change round (default 40)")
    ap.add_argument("--new", type=int, default=30, help="files added per change round (default 30)")
    ap.add_argument("--delete", type=int, default=30, help="files deleted per change round (default 30)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10,000 files: a smoke run in seconds")
    ap.add_argument("--keep", action="store_true", help="keep the tree and library (printed) for inspection")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON (bench/results/ is git-ignored)")
    args = ap.parse_args()
    if args.quick:
        args.files = min(args.files, 10_000)
    rng = random.Random(args.seed)
    n_changes = args.modify + args.new + args.delete

    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="scan-", dir=CACHE))
    try:
        t_build, tree = timed(lambda: build_tree(work / "album", args.files, args.per_folder))
        print(f"{args.files} files in {len(tree.leaves)} folders ({args.per_folder} per folder, 3 levels) built in "
              f"{t_build:.1f}s; {os.cpu_count()} CPUs; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
              flush=True)
        rows: list[tuple[str, float, ScanReport, str]] = []
        peaks: list[float] = []  # the process's peak RSS (GB) after each row: monotonic, so the first row's is its own
        with Library(work / "library") as lib:
            def first():
                lib.add_folder(tree.root)
                return lib.scan()

            t, rep = timed(first)
            check(rep, Changes(new=args.files), "first scan", seen=args.files)
            rows.append(("first scan (add_folder + scan)", t, rep, f"{args.files} files"))
            peaks.append(peak_rss_gb())
            print(f"  first scan {t:.1f}s", flush=True)

            ch = mutate(tree, rng, args.modify, args.new, args.delete, "a")
            t, rep = timed(lib.scan)
            check(rep, ch, "rescan after changes", seen=len(tree.files))
            rows.append((f"rescan, {n_changes} changes", t, rep, f"{ch.modified} edited, {ch.new} new, "
                                                                 f"{ch.deleted} deleted"))
            peaks.append(peak_rss_gb())

            t, rep = timed(lib.scan)
            check(rep, Changes(), "rescan without changes", seen=len(tree.files))
            assert not rep.touched
            rows.append(("rescan, no change", t, rep, "nothing to hash or write"))
            peaks.append(peak_rss_gb())

            ch = mutate(tree, rng, args.modify, args.new, args.delete, "b")
            dirs = sorted(str(d) for d in ch.dirs)
            t, rep = timed(lambda: lib.scan(dirs))
            check(rep, ch, "watcher rescan (scan_paths)")
            rows.append((f"watcher rescan of {len(dirs)} folders", t, rep, f"{n_changes} changes, scan([dirs])"))
            peaks.append(peak_rss_gb())

            # The folder-limited rescan must have caught everything: a full scan finds nothing more.
            rep = lib.scan()
            assert not rep.touched and rep.hashed == 0, f"full scan after scan_paths still found work: {rep.to_json()}"
            cat = lib.catalog
            live = cat.scalar("SELECT COUNT(*) FROM photos WHERE status != 'gone'")
            gone = cat.scalar("SELECT COUNT(*) FROM photos WHERE status = 'gone'")
            assert live == len(tree.files) and gone == 2 * args.delete, (live, gone)

        first_s = rows[0][1]
        print()
        print(f"{'scan':<36} {'seconds':>8} {'files/s':>10} {'first/this':>11} {'peak GB':>8}  "
              f"report (seen/new/changed/gone/hashed)")
        print("-" * 118)
        for (name, secs, rep, _note), peak in zip(rows, peaks, strict=True):
            counts = f"{rep.seen}/{rep.new}/{rep.changed}/{rep.gone}/{rep.hashed}"
            print(f"{name:<36} {secs:>8.2f} {rep.seen / secs:>10.0f} {first_s / secs:>10.1f}x {peak:>8.2f}  {counts}")
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"\nfirst scan / rescan with {n_changes} changes = {first_s / rows[1][1]:.1f}x; "
              f"all report counts verified")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "files": args.files, "per_folder": args.per_folder, "cpus": os.cpu_count(),
                "rows": [{"scan": n, "seconds": s, "ratio": first_s / s, "note": note, "report": r.to_json(),
                          "peak_rss_gb": peak} for (n, s, r, note), peak in zip(rows, peaks, strict=True)],
            }, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


if __name__ == "__main__":
    sys.exit(main())
