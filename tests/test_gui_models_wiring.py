"""Settings ▸ Models and the rest of the app: a model that arrives (downloaded or imported) lets the stages that were
waiting for it run, without a restart; the model manager's errors are shown as its own sentences.

pytest-qt, offscreen. No real download and no indexing process: the CLIP stage's weights are a library setting
pointing at a file that does not exist yet ("waiting"), then does ("the model is here"); the index runner's
`start` only records what it was asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytestqt  # noqa: F401 - a test dependency: its absence must fail, not skip

from engine.library import Library
from myvlm_desktop import app as app_module
from myvlm_desktop.main_window import MainWindow
from myvlm_desktop.tasks import user_message

WAIT_MS = 30_000


def _arrive(path: Path) -> None:
    """A weights file arrives: a whole safetensors file (the stage checks its header, so bare bytes would be a
    damaged file, which rightly keeps the stage waiting)."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((4, 4), np.float32)}, str(path))


@pytest.fixture
def weights(library_dir: Path, tmp_path: Path) -> Path:
    """The library's CLIP weights file (not there yet: the CLIP stage waits for it)."""
    path = tmp_path / "clip-weights.safetensors"
    lib = Library(library_dir)
    try:
        lib.catalog.set_setting("clip_weights", str(path))
    finally:
        lib.close()
    return path


@pytest.fixture
def window(qtbot, qapp, library_dir: Path, weights: Path, monkeypatch):
    """A main window on that library, not indexing by itself; `window.runs` lists the index runs it asks for."""
    app_module.configure_application(qapp)
    w = MainWindow(library_dir, auto_index=False, watch=False, options={"face_backend": "dlib"})
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    runs: list[dict] = []

    def start(*, scan: bool = True, stages: list[str] | None = None, mode: str = "missing") -> bool:
        runs.append({"scan": scan, "stages": stages, "mode": mode})
        return True

    monkeypatch.setattr(w.indexer, "start", start)
    w.runs = runs
    yield w
    w.indexer._running = False  # the recorder never started a process
    w.close()
    assert not w.indexing


def _models_changed(qtbot, w: MainWindow) -> None:
    """What Settings ▸ Models does after a download: emit its rows; then wait for the window's check."""
    dlg = w.open_settings()
    qtbot.waitUntil(lambda: dlg.data is not None, timeout=WAIT_MS)
    rows = list(dlg.model_panel.rows.values())
    assert rows, "the Models page lists the catalogue"
    dlg.model_panel.modelsChanged.emit(rows)
    qtbot.waitUntil(lambda: not w.reader_thread.busy, timeout=WAIT_MS)
    dlg.reject()


def test_a_model_arriving_runs_the_stages_that_waited_for_it(qtbot, window, weights: Path) -> None:
    w = window
    assert "clip" in w.indexing_flow.stages_waiting_for_models()  # the catalog read at start-up says why it cannot run

    _models_changed(qtbot, w)  # a model changed, but not the one the CLIP stage waits for
    assert w.runs == []

    _arrive(weights)  # "downloaded"
    _models_changed(qtbot, w)
    assert w.runs == [{"scan": False, "stages": None, "mode": "missing"}]  # Index Now's path, without the rescan
    assert "Understanding pictures" in w.statusBar().currentMessage()


def test_a_model_arriving_during_a_run_indexes_again_after_it(qtbot, window, weights: Path) -> None:
    w = window
    w.indexer._running = True  # a run is in progress
    _arrive(weights)
    _models_changed(qtbot, w)
    assert w.runs == [] and w.indexing_flow.index_again == {"scan": False, "stages": None}


def test_nothing_waiting_nothing_to_run(qtbot, window, weights: Path) -> None:
    w = window
    _arrive(weights)
    for name in list(w._status["stages"]):
        w._status["stages"][name]["unavailable"] = None  # every stage can run here
    assert w.indexing_flow.stages_waiting_for_models() == {}
    _models_changed(qtbot, w)
    assert w.runs == []


def test_model_manager_errors_are_shown_as_their_sentences() -> None:
    from engine.models.downloads import DownloadCancelled, ModelError, OfflineError

    assert user_message(ModelError("not enough disk space: the download needs 2.0 GB more")) == (
        "Not enough disk space: the download needs 2.0 GB more")
    assert user_message(OfflineError("downloads are switched off (HF_HUB_OFFLINE is set)")).startswith(
        "Downloads are switched off")
    assert user_message(DownloadCancelled("stopped")) == "Stopped"
    assert "Something went wrong" in user_message(RuntimeError("boom"))
