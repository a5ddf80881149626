"""The engine's contracts (engine/errors.py, engine/progress.py): every exception class the engine defines is a
UserError (cancels a Cancelled), and every long operation reports engine.progress.Progress, checked on real small
runs (a scan, the pipeline, a backup, a head's training, a caption batch and a concept's training on tiny-blip2)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import threading
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.errors import Cancelled, UserError
from engine.progress import Progress

from .helpers import write_jpeg


def _engine_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(engine.__path__, "engine."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)   # a module that cannot be imported fails the test here
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("engine.")
                    and obj.__module__ != "engine.errors"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def test_every_engine_exception_is_a_user_error_and_every_cancel_a_cancelled():
    classes = _engine_exceptions()
    # the walk sees the engine's classes (a broken walk would pass vacuously)
    names = {c.__name__ for c in classes}
    assert {"ConceptError", "ModelError", "VlmError", "BackupError", "DiskFull", "TrainingCancelled",
            "DownloadCancelled", "PhotoReadError", "FolderNotFound"} <= names, names
    assert [c.__qualname__ for c in classes if not issubclass(c, UserError)] == []
    cancels = [c for c in classes if "Cancel" in c.__name__]
    assert len(cancels) >= 4 and [c.__qualname__ for c in cancels if not issubclass(c, Cancelled)] == []
    assert [c.__qualname__ for c in classes if issubclass(c, Cancelled) and c not in cancels] == []


def test_user_errors_keep_their_builtin_bases():
    """Existing `except ValueError` / `except OSError` clauses still catch what they caught."""
    from engine.domain.concepts.registry import ConceptError
    from engine.domain.people import PeopleError
    from engine.library import FolderNotFound
    from engine.storage.catalog import DiskFull

    assert issubclass(ConceptError, ValueError) and issubclass(PeopleError, ValueError)
    assert issubclass(DiskFull, OSError) and issubclass(FolderNotFound, FileNotFoundError)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """A library of three small photos, scanned once (the scan's reports kept for the scan's test)."""
    from engine.library import Library

    root = tmp_path_factory.mktemp("contracts")
    album = root / "album"
    for i in range(3):
        write_jpeg(album / f"{i}.jpg", seed=i, width=96, height=64)
    library = Library(root / "lib")
    library.add_folder(album)
    scanned: list = []
    library.scan(progress=scanned.append)
    library.scanned = scanned
    yield library
    library.close()


def _all_progress(seen: list, phases: set[str]) -> None:
    assert seen, "no progress reported"
    assert all(isinstance(p, Progress) for p in seen), {type(p).__name__ for p in seen}
    assert {p.phase for p in seen} >= phases, {p.phase for p in seen}


def test_scan_and_pipeline_report_progress(lib):
    _all_progress(lib.scanned, {"scan"})
    assert lib.scanned[-1].done == lib.scanned[-1].total == 3
    events: list = []
    lib.process(stages=["thumbnail"], progress=events.append)
    _all_progress(events, {"thumbnail"})
    assert events[-1].state == "finished" and events[-1].stage == "thumbnail" and events[-1].fraction == 1.0
    stop = threading.Event()
    stop.set()
    report = lib.process(mode="all", stages=["thumbnail"], cancel=stop)   # set before it starts: nothing is redone
    assert report.cancelled and report.work == 0


def test_backup_reports_progress_and_stops_on_its_event(lib, tmp_path: Path):
    from engine.admin.backup import backup_library

    seen: list = []
    backup_library(lib.paths.root, tmp_path / "backup", progress=seen.append)
    _all_progress(seen, {"catalog", "files"})
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        backup_library(lib.paths.root, tmp_path / "stopped", cancel=stop)


def test_head_training_reports_progress():
    from engine.domain.concepts.object_head import ObjectHeadConfig, train_linear_head

    rng = np.random.default_rng(0)
    seen: list = []
    train_linear_head(rng.normal(size=(2, 3, 8)), rng.normal(size=(6, 8)), ObjectHeadConfig(steps=50),
                      progress=seen.append)
    _all_progress(seen, {"training"})
    assert seen[-1].done == seen[-1].total == 50


def test_caption_batch_and_concept_training_on_tiny_blip2_report_progress(lib):
    from engine.domain.personalize.embeddings import EmbeddingStore
    from engine.domain.personalize.service import Personalizer
    from engine.domain.personalize.training import ConceptToTrain, ConceptTrainer, TrainingConfig, TrainingExample

    photos = [p.id for p in lib.photos()]
    concept = lib.concepts().add_object("Spiff", photos[:2])
    pers = Personalizer(lib.catalog, "tiny-blip2")
    seen: list = []
    pers.prepare_targets(concept.id, progress=seen.append)
    _all_progress(seen, {"captions"})
    assert [(p.done, p.total) for p in seen] == [(1, 2), (2, 2)]

    w = pers.wrapper
    prompt = w.training_prompt("caption", "sks")
    examples = [TrainingExample(pers.photo_image(pid), [7], [(prompt, "sks on a table")]) for pid in photos[:2]]
    steps: list = []
    ConceptTrainer(w, EmbeddingStore(lib.paths.root / "contract-embeddings"), TrainingConfig(steps=2)).train(
        [ConceptToTrain(7, "sks")], examples, progress=steps.append)
    _all_progress(steps, {"training"})
    assert [p.step for p in steps] == [1, 2] and steps[-1].fraction == 1.0
