#!/usr/bin/env python3
"""Benchmark: what the change feed (schema 8: photo_changes filled by triggers; Library.changes_since) costs.

Each write phase runs on a fresh library twice per round, once as migrated (feed on) and once with the feed's
triggers dropped (feed off, the baseline), alternating which goes first, in this one process; the table gives the
median of the rounds and the ratio on/off. Times are this process's CPU time (time.process_time: the work is
CPU-bound SQLite and decoding, and the shared machine's load moved wall-clock rounds by 2x).

  index           Library.add_folder + scan + process(stages=["thumbnail"]) over an album of small JPEGs: what a
                  user's first indexing costs without models (the catalog writes of a scan and one stage)
  catalog writes  per photo, the catalog writes a full pipeline run makes, nothing else: 5 stage marks, a face, a
                  generated caption, 2 concept signals, in transactions of 64 photos (the worst case: no model time
                  to hide the triggers behind)
  retrain         one concept's signals rewritten for every photo in one transaction (as ConceptDetector does
                  after a head is retrained), one in 20 firing, then all firing (the feed logs only signals that
                  fire or fired)

The feed-on library starts with a full feed (CHANGES_KEPT rows, untimed): every logged change then also pays its
share of the trim, as in any library that has seen more than CHANGES_KEPT changes.
  poll, nothing   Library.changes_since(token) when nothing changed (a view asking every second), against
                  Library.catalog_version() (PRAGMA data_version, what the window polled before)
  poll, 100       Library.changes_since(token) after 100 photos were rotated (reads their 100 feed rows)

    .venv/bin/python bench/bench_change_feed.py            # 5,000 photos indexed, 50,000 for the catalog writes
    .venv/bin/python bench/bench_change_feed.py --quick    # 1,000 and 10,000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from engine.library import Library  # noqa: E402
from engine.storage.catalog import CHANGES_KEPT, now  # noqa: E402

STAGES = ("thumbnail", "faces", "clip", "concepts", "captions")


def make_album(root: Path, n: int) -> None:
    """n distinct small JPEGs, 100 per folder."""
    for i in range(n):
        folder = root / f"f{i // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 32), ((i * 7) % 256, (i // 256) % 256, i % 251)).save(folder / f"{i:06d}.jpg", quality=80)


def open_library(tmp: Path, name: str, feed: bool) -> Library:
    lib = Library(tmp / name)
    if feed:   # steady state: the feed full, so every change also pays its share of the trim
        with lib.catalog.write():
            lib.catalog.conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                                     "INSERT INTO photo_changes(photo_id) SELECT 0 FROM n", [CHANGES_KEPT])
    else:
        with lib.catalog.write():
            for (trigger,) in lib.catalog.conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%photo_changes%'").fetchall():
                lib.catalog.conn.execute(f"DROP TRIGGER {trigger}")
    return lib


def phase_index(tmp: Path, album: Path, name: str, feed: bool) -> float:
    lib = open_library(tmp, name, feed)
    t0 = time.process_time()
    lib.add_folder(album)
    lib.scan()
    report = lib.process(stages=["thumbnail"])
    elapsed = time.process_time() - t0
    assert report.stages["thumbnail"].processed > 0
    lib.close()
    return elapsed


def add_photos(lib: Library, n: int) -> list[int]:
    ts = now()
    cat = lib.catalog
    with cat.write():
        folder = cat.conn.execute("INSERT INTO folders(path, path_bytes, status, added_at) VALUES ('/album', ?, "
                                  "'online', ?)", [b"/album", ts]).lastrowid
        cat.conn.executemany(
            "INSERT INTO photos(folder_id, path, path_bytes, name, content_hash, status, added_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'ok', ?, ?)",
            [(folder, f"/album/{i}.jpg", f"/album/{i}.jpg".encode(), f"{i}.jpg", f"h{i}", ts, ts) for i in range(n)])
        cat.conn.execute("INSERT INTO concepts(kind, name, identifier, created_at, updated_at) VALUES "
                         "('object', 'mug', 'mug', ?, ?), ('object', 'bike', 'bike', ?, ?)", [ts] * 4)
    return [r[0] for r in cat.conn.execute("SELECT id FROM photos ORDER BY id")]


def phase_writes(tmp: Path, name: str, feed: bool, n: int) -> tuple[float, float]:
    lib = open_library(tmp, name, feed)
    cat = lib.catalog
    ids = add_photos(lib, n)
    captions = lib.captions()
    blob = bytes(512)
    t0 = time.process_time()
    for start in range(0, len(ids), 64):
        with cat.write():
            for pid in ids[start:start + 64]:
                ts = now()
                cat.conn.execute(
                    "INSERT INTO faces(photo_id, backend, x, y, w, h, score, quality, embedding, state, created_at, "
                    "updated_at) VALUES (?, 'b', 1, 2, 30, 30, 0.9, 1, ?, 'unknown', ?, ?)", [pid, blob, ts, ts])
                for concept in (1, 2):
                    cat.conn.execute("INSERT OR REPLACE INTO concept_signals(photo_id, concept_id, revision, score, "
                                     "fired) VALUES (?, ?, 1, 0.3, 0)", [pid, concept])
                captions.put_caption(pid, "original", "a photo of a mug", model="bench")
                for stage in STAGES:
                    cat.mark_stage(pid, stage, 1, "done")
    writes = time.process_time() - t0
    retrain = []
    for revision, fires in ((2, lambda pid: pid % 20 == 0), (3, lambda pid: True)):
        t0 = time.process_time()
        with cat.write():
            cat.conn.executemany("INSERT OR REPLACE INTO concept_signals(photo_id, concept_id, revision, score, "
                                 "fired) VALUES (?, 2, ?, 0.6, ?)", [(pid, revision, int(fires(pid))) for pid in ids])
        retrain.append(time.process_time() - t0)
    lib.close()
    return writes, retrain


def phase_poll(tmp: Path, n: int, calls: int) -> dict[str, float]:
    lib = open_library(tmp, "poll", True)
    ids = add_photos(lib, n)
    token = lib.changes_since(None).token
    out = {}
    t0 = time.process_time()
    for _ in range(calls):
        lib.catalog_version()
    out["data_version"] = (time.process_time() - t0) / calls
    t0 = time.process_time()
    for _ in range(calls):
        c = lib.changes_since(token)
    out["nothing"] = (time.process_time() - t0) / calls
    assert c.photo_ids == ()
    for pid in ids[:100]:
        lib.catalog.set_user_rotation(pid, 90)
    t0 = time.process_time()
    for _ in range(calls):
        c = lib.changes_since(token)
    out["hundred"] = (time.process_time() - t0) / calls
    assert c.photo_ids is not None and len(c.photo_ids) == 100
    out["log_rows"] = lib.catalog.scalar("SELECT COUNT(*) FROM photo_changes")
    lib.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--index-photos", type=int)
    ap.add_argument("--write-photos", type=int)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n_index = args.index_photos or (1_000 if args.quick else 5_000)
    n_write = args.write_photos or (10_000 if args.quick else 50_000)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {n_index:,} photos indexed, {n_write:,} for the "
          f"catalog writes, {args.rounds} rounds")
    tmp = Path(tempfile.mkdtemp(prefix="bench-feed-"))
    try:
        album = tmp / "album"
        make_album(album, n_index)
        times: dict[tuple[str, bool], list[float]] = {}
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for feed in order:
                tag = f"{r}-{'on' if feed else 'off'}"
                times.setdefault(("index", feed), []).append(phase_index(tmp, album, f"index-{tag}", feed))
                writes, retrain = phase_writes(tmp, f"writes-{tag}", feed, n_write)
                times.setdefault(("catalog writes", feed), []).append(writes)
                times.setdefault(("retrain, 1 in 20 fires", feed), []).append(retrain[0])
                times.setdefault(("retrain, all fire", feed), []).append(retrain[1])
                for d in tmp.glob(f"*-{tag}"):
                    shutil.rmtree(d)
        print("\n| phase | feed off (CPU s) | feed on (CPU s) | on / off |\n|---|---:|---:|---:|")
        for phase in ("index", "catalog writes", "retrain, 1 in 20 fires", "retrain, all fire"):
            off, on = statistics.median(times[(phase, False)]), statistics.median(times[(phase, True)])
            print(f"| {phase} | {off:.2f} | {on:.2f} | {on / off:.2f} |")
        for phase in ("index", "catalog writes", "retrain, 1 in 20 fires", "retrain, all fire"):
            print(f"  {phase} rounds: off {[round(t, 2) for t in times[(phase, False)]]}, "
                  f"on {[round(t, 2) for t in times[(phase, True)]]}")
        poll = phase_poll(tmp, n_write, 2_000)
        print(f"\n| poll ({int(poll['log_rows']):,} rows in the feed) | CPU µs per call |\n|---|---:|")
        print(f"| catalog_version() (PRAGMA data_version) | {poll['data_version'] * 1e6:.1f} |")
        print(f"| changes_since(token), nothing new | {poll['nothing'] * 1e6:.1f} |")
        print(f"| changes_since(token), 100 photos changed | {poll['hundred'] * 1e6:.1f} |")
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
