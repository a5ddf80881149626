"""Which process is teaching a concept, so that a training killed without warning does not stay "training" forever.

The app and the command line can share a library, so a concept marked `training` in the catalog may be learning in
another process right now, or its process may have died (power cut, kill -9, a crash) before it could write how it
ended. A small lease file in the concept's folder, written before the mark and removed when the training ends, tells
the two apart: when a library is opened, a `training` concept whose lease is missing or names a process that no
longer runs on this machine gets its real state back (partial when a checkpoint was saved, so teaching again
continues from it) and a note saying that it was interrupted.

No torch here: opening a library must stay fast; the embedding store is only read when there is something to mend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.domain.concepts.registry import ConceptRegistry
from engine.storage.catalog import Catalog, now

log = logging.getLogger(__name__)

LEASE_FILE = "training.lease"
INTERRUPTED = ("teaching was interrupted (the app or the command stopped before it finished); teach again to "
               "continue from the last checkpoint")


@contextlib.contextmanager
def training_lease(folders: Iterable[Path]) -> Iterator[None]:
    """Hold the lease of each concept folder while the block runs (this process, this machine)."""
    held: list[Path] = []
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / LEASE_FILE
            path.write_text(record)
            held.append(path)
        yield
    finally:
        for path in held:
            with contextlib.suppress(OSError):
                path.unlink()


def _pid_running(pid: int) -> bool:
    # psutil, not os.kill(pid, 0): on Windows that call sends Ctrl+C to the process instead of probing it
    import psutil

    return pid == os.getpid() or psutil.pid_exists(pid)


def lease_held(folder: Path) -> bool:
    """Is a process still teaching this concept? A lease from another machine (a library on a network drive)
    counts as held: its process cannot be seen from here."""
    try:
        lease = json.loads((folder / LEASE_FILE).read_text())
        pid, host = int(lease["pid"]), str(lease["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return True
    return _pid_running(pid)


def recover_interrupted_training(catalog: Catalog) -> list[str]:
    """Give concepts left `training` by a dead process their real state back; returns their names."""
    rows = catalog.query("SELECT id, name FROM concepts WHERE embedding_state = 'training'")
    if not rows:
        return []
    registry = ConceptRegistry(catalog)
    dead = [r for r in rows if not lease_held(registry.folder(r["id"]))]
    if not dead:
        return []
    # the embedding store and the VLM catalogue: only when there is something to mend
    from engine.domain.personalize.embeddings import EmbeddingStore
    from engine.models.hardware import resolve_vlm_name
    from engine.models.vlm.specs import CAPTION, resolve_spec

    store = EmbeddingStore(catalog.paths.concepts)
    checkpoint = resolve_spec(resolve_vlm_name(catalog))[1]
    updates = []
    for r in dead:
        state = store.state(r["id"], checkpoint, CAPTION)
        error = None if state == "ready" else INTERRUPTED
        updates.append([state, error, now(), r["id"]])
        log.warning("teaching %s was interrupted; it is %s now", r["name"], state)
        with contextlib.suppress(OSError):
            (registry.folder(r["id"]) / LEASE_FILE).unlink()
    with catalog.write():
        catalog.conn.executemany("UPDATE concepts SET embedding_state = ?, last_error = ?, updated_at = ? "
                                 "WHERE id = ? AND embedding_state = 'training'", updates)
    return [r["name"] for r in dead]
