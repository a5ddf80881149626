"""Which run is doing a photo's stage, so two runs on one library never do the same work twice.

The app's watcher, its Index Now and any number of `myvlm index` commands may run the pipeline on one library at
once. Before a run works on a photo it claims (photo, stage) in the catalog's `stage_claims` table, in the same write
transaction that stores its results, and only if the stage is still to do; a photo claimed by another live run is
skipped now and looked at again when the run has nothing else left. A claim names its run (a token), its process
(pid, host and the process's start time, so a pid reused by another program is not mistaken for it) and an expiry
the run keeps pushing forward. A claim whose process no longer runs on this machine, or that was not renewed in
time (a hung run, or a run on another machine sharing the library), is free to take over: a kill -9 never leaves
photos that nobody may index.

No Qt; psutil only (already used to tell a live training from a dead one).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from engine.storage.catalog import Catalog

CLAIM_TTL_S = 300.0   # a claim not renewed for this long is free (its run hangs, or runs on another machine)
RENEW_EVERY_S = 60.0  # how often a run pushes its claims' expiry forward
CHUNK = 500           # photo ids per SQL statement


def _this_process() -> tuple[int, str, float]:
    return _process_identity(os.getpid())   # by pid: a forked child is another process


@lru_cache(maxsize=4)
def _process_identity(pid: int) -> tuple[int, str, float]:
    import psutil

    return pid, socket.gethostname(), psutil.Process(pid).create_time()


@dataclass(frozen=True)
class ClaimOwner:
    """One run of the pipeline (a process may run several, one after another or side by side)."""

    token: str
    pid: int
    host: str
    started: float  # the process's start time (psutil), which tells it from a later process with its pid

    @classmethod
    def for_this_run(cls) -> ClaimOwner:
        pid, host, started = _this_process()
        return cls(uuid.uuid4().hex, pid, host, started)


def process_alive(pid: int, host: str, started: float) -> bool:
    """Does the process that made a claim still run? One on another machine cannot be seen: its expiry decides."""
    if host != socket.gethostname():
        return True
    import psutil

    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:   # e.g. access denied: it exists
        return True


def free_stale_claims(catalog: Catalog) -> int:
    """Drop the claims of runs that died or stopped renewing them (inside a write transaction). Returns how many."""
    stale = [r["token"] for r in catalog.query(
        "SELECT token, pid, host, started, MIN(expires) AS expires FROM stage_claims GROUP BY token")
        if r["expires"] < time.time() or not process_alive(r["pid"], r["host"], r["started"])]
    return sum(catalog.conn.execute("DELETE FROM stage_claims WHERE token = ?", [t]).rowcount for t in stale)


def claim(catalog: Catalog, owner: ClaimOwner, stage: str, version: int, photo_ids: Iterable[int],
          retry_errors: bool) -> tuple[set[int], set[int]]:
    """Claim the photos whose stage is still to do (inside a write transaction). Returns (claimed by this run,
    claimed by another live run); the rest were finished meanwhile and need nothing."""
    ids = list(photo_ids)
    free_stale_claims(catalog)
    finished = _finished(catalog, stage, version, ids, retry_errors)
    wanted = [i for i in ids if i not in finished]
    expires = time.time() + CLAIM_TTL_S
    catalog.conn.executemany(
        "INSERT OR IGNORE INTO stage_claims(photo_id, stage, token, pid, host, started, expires) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(i, stage, owner.token, owner.pid, owner.host, owner.started, expires) for i in wanted])
    mine: set[int] = set()
    theirs: set[int] = set()
    for chunk in _chunks(wanted):
        for r in catalog.query(f"SELECT photo_id, token FROM stage_claims WHERE stage = ? AND photo_id IN "
                               f"({','.join('?' * len(chunk))})", [stage, *chunk]):
            (mine if r["token"] == owner.token else theirs).add(r["photo_id"])
    return mine, theirs


def release(catalog: Catalog, owner: ClaimOwner, stage: str, photo_ids: Iterable[int] | None = None) -> None:
    """Give claims back (inside a write transaction): the given photos, or all of this run's for the stage."""
    if photo_ids is None:
        catalog.conn.execute("DELETE FROM stage_claims WHERE token = ? AND stage = ?", [owner.token, stage])
        return
    catalog.conn.executemany("DELETE FROM stage_claims WHERE photo_id = ? AND stage = ? AND token = ?",
                             [(i, stage, owner.token) for i in photo_ids])


def renew(catalog: Catalog, owner: ClaimOwner) -> None:
    """Push this run's claims' expiry forward (inside a write transaction)."""
    catalog.conn.execute("UPDATE stage_claims SET expires = ? WHERE token = ?",
                         [time.time() + CLAIM_TTL_S, owner.token])


def _finished(catalog: Catalog, stage: str, version: int, ids: list[int], retry_errors: bool) -> set[int]:
    """Photos whose stage needs nothing any more: done at this version (or failed, unless errors are retried)."""
    out: set[int] = set()
    states = "('done')" if retry_errors else "('done', 'error')"
    for chunk in _chunks(ids):
        out.update(r[0] for r in catalog.query(
            f"SELECT photo_id FROM stage_status WHERE stage = ? AND version = ? AND state IN {states} "
            f"AND photo_id IN ({','.join('?' * len(chunk))})", [stage, version, *chunk]))
    return out


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i:i + CHUNK]
