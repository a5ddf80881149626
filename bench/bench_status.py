#!/usr/bin/env python3
"""Benchmark: Catalog.status_summary (the status bar's and sidebar's counts, read on every refresh of the window)
against the queries it ran before issue 21 (one per stage, with correlated NOT EXISTS / EXISTS over stage_status
for every photo; kept as the oracle in tests/test_status_summary.py), same catalog, same process.

Library: a real catalog with N photos written straight into it: two folders (one offline, 5% of the photos), 2%
videos, 1% unreadable (no content hash, the thumbnail stage failed), and the five pipeline stages at the rates an
indexed library has: thumbnail done nearly everywhere, faces and CLIP mostly, concepts less, captions half, some
rows left by an older stage version, a few errors on each stage (whose descendants are then blocked). A second
shape, "scanned": only the thumbnail stage has run (bench_gui's library; every other stage is still pending).

    .venv/bin/python bench/bench_status.py                    # 10,000 and 100,000 photos
    .venv/bin/python bench/bench_status.py --sizes 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.storage.catalog import Catalog, now  # noqa: E402
from engine.storage.library_folder import LibraryPaths  # noqa: E402
from tests.test_status_summary import old_status_summary  # noqa: E402

# (name, version, requires, done rate, error rate, old-version rate): what the pipeline leaves behind
STAGES = [("thumbnail", 1, (), 0.99, 0.002, 0.0), ("faces", 7, ("thumbnail",), 0.95, 0.003, 0.02),
          ("clip", 3, ("thumbnail",), 0.93, 0.002, 0.02), ("concepts", 5, ("faces",), 0.80, 0.001, 0.10),
          ("captions", 2, ("concepts",), 0.50, 0.001, 0.05)]


def make_catalog(root: Path, n: int, seed: int = 0, scanned_only: bool = False) -> Catalog:
    rng = random.Random(seed)
    cat = Catalog(LibraryPaths(root))
    ts = now()
    photos, rows = [], []
    for i in range(n):
        folder = 2 if rng.random() < 0.05 else 1
        kind = "video" if rng.random() < 0.02 else "image"
        unreadable = rng.random() < 0.01
        path = f"/album{folder}/p{i:07d}.jpg"
        photos.append((i + 1, folder, path, path.encode(), f"p{i:07d}.jpg", kind,
                       None if unreadable else f"{i:032x}", "error" if unreadable else "ok",
                       "cannot identify image file" if unreadable else None, ts, ts))
        if kind != "image":
            continue
        done = set()
        for name, version, requires, p_done, p_err, p_old in STAGES:
            if unreadable:
                if name == "thumbnail":
                    rows.append((i + 1, name, "error", version, "cannot identify image file", ts))
                continue
            if not done.issuperset(requires) or (scanned_only and name != "thumbnail"):
                continue
            r = rng.random()
            if r < p_err:
                rows.append((i + 1, name, "error", version, "model failed", ts))
            elif r < p_err + p_old:
                rows.append((i + 1, name, "done", version - 1, None, ts))
            elif r < p_err + p_old + p_done:
                rows.append((i + 1, name, "done", version, None, ts))
                done.add(name)
    with cat.write():
        cat.conn.executemany(
            "INSERT INTO folders(id, path, path_bytes, status, added_at) VALUES (?, ?, ?, ?, ?)",
            [(1, "/album1", b"/album1", "online", ts), (2, "/album2", b"/album2", "offline", ts)])
        cat.conn.executemany(
            "INSERT INTO photos(id, folder_id, path, path_bytes, name, kind, content_hash, status, last_error, "
            "added_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", photos)
        cat.conn.executemany(
            "INSERT INTO stage_status(photo_id, stage, state, version, error, runs, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 1, ?)", rows)
    cat.conn.execute("ANALYZE")
    return cat


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    stages = [(name, version, requires) for name, version, requires, *_ in STAGES]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, median of {args.repeat}")
    print("| photos | library | stage rows | new status_summary | old queries | ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, shape in [(n, shape) for n in args.sizes for shape in ("indexed", "scanned")]:
        with tempfile.TemporaryDirectory() as tmp:
            cat = make_catalog(Path(tmp) / "lib", n, scanned_only=shape == "scanned")
            rows = cat.scalar("SELECT COUNT(*) FROM stage_status")
            new_s, new = timed(lambda c=cat: c.status_summary(stages), args.repeat)
            old_s, old = timed(lambda c=cat: old_status_summary(c, stages), args.repeat)
            assert new == old, "the new counts differ from the old queries'"
            print(f"| {n:,} | {shape} | {rows:,} | {new_s * 1000:,.0f} ms | {old_s * 1000:,.0f} ms | {old_s / new_s:.1f}x |",
                  flush=True)
            cat.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
