"""A concept left 'training' by a process that died gets its real state back when the library is opened; one that
another live process is teaching keeps its mark. (The kill -9 of a real training is in test_faults.py.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from engine.admin.integrity import check_library
from engine.domain.concepts.registry import ConceptRegistry
from engine.domain.personalize.lease import INTERRUPTED, LEASE_FILE, lease_held, training_lease
from engine.library import Library


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _library_with_training_concept(root: Path, lease: dict | None) -> int:
    with Library(root) as lib:
        registry = ConceptRegistry(lib.catalog)
        concept = registry.create("object", "Bella's ball")
        with lib.catalog.write():
            lib.catalog.conn.execute("UPDATE concepts SET embedding_state = 'training' WHERE id = ?", [concept.id])
        if lease is not None:
            folder = registry.folder(concept.id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / LEASE_FILE).write_text(json.dumps(lease))
        return concept.id


def _state(root: Path, cid: int) -> tuple[str, str | None]:
    with Library(root) as lib:
        c = ConceptRegistry(lib.catalog).get(cid)
        return c.embedding_state, c.last_error


def test_a_training_whose_process_died_is_marked_interrupted(tmp_path: Path):
    cid = _library_with_training_concept(tmp_path / "lib", {"pid": _dead_pid(), "host": socket.gethostname(),
                                                            "started": 0})
    # the first Library above already opened the catalog before the mark: opening it again mends it
    assert _state(tmp_path / "lib", cid) == ("untrained", INTERRUPTED)
    assert not (tmp_path / "lib" / "concepts" / str(cid) / LEASE_FILE).exists()
    with Library(tmp_path / "lib") as lib:
        notes = check_library(lib.catalog, files=False).notes
    assert any("Bella's ball was interrupted" in n for n in notes), notes


def test_no_lease_at_all_counts_as_interrupted(tmp_path: Path):
    # what a library written before leases existed (or a crash between the two writes) looks like
    cid = _library_with_training_concept(tmp_path / "lib", None)
    assert _state(tmp_path / "lib", cid)[0] == "untrained"


def test_a_training_running_in_another_process_keeps_its_mark(tmp_path: Path):
    teacher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cid = _library_with_training_concept(tmp_path / "lib", {"pid": teacher.pid, "host": socket.gethostname(),
                                                                "started": 0})
        assert _state(tmp_path / "lib", cid) == ("training", None)
    finally:
        teacher.kill()
        teacher.wait()
    assert _state(tmp_path / "lib", cid)[0] == "untrained"   # and once that process is gone, it is mended


def test_a_lease_from_another_machine_is_left_alone(tmp_path: Path):
    # a library on a shared drive: a process on another computer cannot be seen from here
    cid = _library_with_training_concept(tmp_path / "lib", {"pid": _dead_pid(), "host": "not-" + socket.gethostname(),
                                                            "started": 0})
    assert _state(tmp_path / "lib", cid)[0] == "training"


def test_the_lease_is_held_while_the_block_runs_and_removed_after(tmp_path: Path):
    folders = [tmp_path / "a", tmp_path / "b"]
    try:
        with training_lease(folders):
            assert all(lease_held(f) for f in folders)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not any((f / LEASE_FILE).exists() for f in folders)
    assert not lease_held(tmp_path / "a")
