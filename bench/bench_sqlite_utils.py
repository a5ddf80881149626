#!/usr/bin/env python3
"""Benchmark: why the catalog's hot paths keep hand-written prepared statements rather than sqlite-utils' table
methods (engine/storage/catalog.py uses sqlite-utils for schema set-up: tables, columns, FTS).

Same catalog schema, same rows, in this one process, one write transaction per 500 rows as the scanner does:

  photo rows   the scanner's insert of a new photo (engine/ingest/scanner.py _insert_photo): cat.conn.execute(prepared
               INSERT) per row, against db["photos"].insert(row) per row
  stage marks  Catalog.mark_stage (INSERT ... ON CONFLICT DO UPDATE, one prepared statement) against
               db["stage_status"].upsert(row, pk=(photo_id, stage)) (which cannot add to `runs`: it only sets)
  settings     Catalog.get_setting against db["settings"].get(key) (a rare path; shown for completeness)

    .venv/bin/python bench/bench_sqlite_utils.py            # 20,000 rows
    .venv/bin/python bench/bench_sqlite_utils.py --rows 5000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.storage.catalog import Catalog, now  # noqa: E402
from engine.storage.library_folder import LibraryPaths  # noqa: E402

_COLUMNS = ("folder_id", "path", "path_bytes", "name", "kind", "size", "mtime_ns", "added_at", "updated_at",
            "content_hash", "status", "last_error")
_INSERT = f"INSERT INTO photos({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def fresh(tmp: Path, name: str) -> Catalog:
    cat = Catalog(LibraryPaths(tmp / name))
    with cat.write():
        cat.conn.execute("INSERT INTO folders(path, path_bytes, added_at) VALUES ('/a', X'2f61', ?)", [now()])
    return cat


def rows(n: int, tag: str) -> list[dict]:
    ts = now()
    return [{"folder_id": 1, "path": f"/a/{tag}{i}.jpg", "path_bytes": f"/a/{tag}{i}.jpg".encode(),
             "name": f"{i}.jpg", "kind": "image", "size": i, "mtime_ns": i, "added_at": ts, "updated_at": ts,
             "content_hash": f"h{i}", "status": "pending", "last_error": None} for i in range(n)]


def in_chunks(cat: Catalog, items: list, fn) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(items), 500):
        with cat.write():
            for item in items[i:i + 500]:
                fn(item)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.rows
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {n:,} rows, best of {args.rounds} rounds")
    tmp = Path(tempfile.mkdtemp(prefix="bench-su-"))
    best: dict[str, float] = {}

    def keep(key: str, t: float) -> None:
        best[key] = min(best.get(key, float("inf")), t)

    try:
        for r in range(args.rounds):
            for way in (("prepared", "sqlite-utils") if r % 2 == 0 else ("sqlite-utils", "prepared")):
                cat = fresh(tmp, f"{way}-{r}")
                data = rows(n, way)
                if way == "prepared":
                    keep("photo rows prepared", in_chunks(cat, data, lambda row, cat=cat: cat.conn.execute(
                        _INSERT, [row[c] for c in _COLUMNS])))
                else:
                    table = cat.db["photos"]
                    keep("photo rows sqlite-utils", in_chunks(cat, data, table.insert))
                ids = [r_[0] for r_ in cat.conn.execute("SELECT id FROM photos")]
                if way == "prepared":
                    keep("stage marks prepared", in_chunks(cat, ids, lambda pid, cat=cat: cat.mark_stage(
                        pid, "thumbnail", 1, "done")))
                else:
                    table = cat.db["stage_status"]
                    keep("stage marks sqlite-utils", in_chunks(cat, ids, lambda pid, table=table: table.upsert(
                        {"photo_id": pid, "stage": "thumbnail", "state": "done", "version": 1, "error": None,
                         "runs": 1, "updated_at": now()}, pk=("photo_id", "stage"))))
                assert cat.scalar("SELECT COUNT(*) FROM stage_status") == n
                cat.set_setting("vlm", "blip2")
                t0 = time.perf_counter()
                for _ in range(2_000):
                    if way == "prepared":
                        cat.get_setting("vlm")
                    else:
                        cat.db["settings"].get("vlm")
                keep(f"settings {way}", (time.perf_counter() - t0) / 2_000 * n)
                cat.close()
        print("\n| what | prepared (s) | sqlite-utils (s) | sqlite-utils / prepared |\n|---|---:|---:|---:|")
        for what in ("photo rows", "stage marks", "settings"):
            a, b = best[f"{what} prepared"], best[f"{what} sqlite-utils"]
            print(f"| {what} ({n:,}) | {a:.3f} | {b:.3f} | {b / a:.1f} |")
        print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
