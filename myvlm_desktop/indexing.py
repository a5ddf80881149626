"""Indexing off the GUI thread: scan the watched folders, then run the pipeline, reporting progress as Qt signals.

`IndexWorker` is a QObject moved to a QThread. It opens its OWN engine `Library` on that thread (SQLite
connections belong to the thread that made them) and closes it when done. `IndexRunner` lives on the GUI thread
and owns the thread's lifecycle: start, cancel, and a blocking `shutdown()` for when the window closes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from engine.api import Library
from engine.pipeline import Pipeline, PipelineReport, ProgressEvent
from engine.scanner import ScanReport

log = logging.getLogger(__name__)

SCAN = "scan"


@dataclass
class IndexResult:
    scan: ScanReport | None = None
    pipeline: PipelineReport | None = None
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        """Problems met by this run (scan errors plus per-photo stage errors)."""
        n = self.scan.errors if self.scan else 0
        if self.pipeline:
            n += sum(s.errors for s in self.pipeline.stages.values())
        return n


class IndexWorker(QObject):
    """Runs on a worker thread. `cancel()` is thread-safe and may be called at any moment."""

    progress = Signal(object)  # ProgressEvent
    finished = Signal(object)  # IndexResult

    def __init__(self, library_root: Path):
        super().__init__()
        self._root = Path(library_root)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._pipeline: Pipeline | None = None
        self.result: IndexResult | None = None

    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @Slot()
    def run(self) -> None:
        result = IndexResult()
        start = time.perf_counter()
        lib: Library | None = None
        try:
            lib = Library(self._root)
            self.progress.emit(ProgressEvent(SCAN, 0, 0))
            result.scan = lib.scan(progress=self._on_scan, cancel=self._cancel)
            self.progress.emit(ProgressEvent(SCAN, result.scan.seen, result.scan.seen, "", result.scan.errors,
                                             "cancelled" if self.cancelled else "finished"))
            if not self.cancelled:
                pipeline = lib.pipeline()
                with self._lock:
                    self._pipeline = pipeline
                if self.cancelled:  # a cancel that came between the check above and the lock
                    pipeline.cancel()
                result.pipeline = lib.process(progress=self.progress.emit, pipeline=pipeline)
        except Exception as exc:  # noqa: BLE001 - reported to the window, never lost
            log.exception("indexing failed")
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._pipeline = None
            if lib is not None:
                lib.close()
            result.cancelled = self.cancelled
            result.seconds = time.perf_counter() - start
            self.result = result
            # Hand this object back to the GUI thread, so it can be deleted there once the thread has ended.
            app = QCoreApplication.instance()
            if app is not None:
                self.moveToThread(app.thread())
            self.finished.emit(result)

    def _on_scan(self, stage: str, done: int, total: int, current: str) -> None:
        self.progress.emit(ProgressEvent(SCAN, done, total, current))


class IndexRunner(QObject):
    """One indexing run at a time, on its own QThread. Signals arrive on the GUI thread."""

    started = Signal()
    progress = Signal(object)  # ProgressEvent
    finished = Signal(object)  # IndexResult, emitted once the thread has ended

    def __init__(self, library_root: Path, parent: QObject | None = None):
        super().__init__(parent)
        self._root = Path(library_root)
        self._thread: QThread | None = None
        self._worker: IndexWorker | None = None
        self.last_result: IndexResult | None = None
        self.last_event: ProgressEvent | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def cancelling(self) -> bool:
        return self._worker is not None and self._worker.cancelled

    def start(self) -> bool:
        """Start a run; False when one is running already."""
        if self._thread is not None:
            return False
        thread = QThread(self)
        thread.setObjectName("myvlm-index")
        worker = IndexWorker(self._root)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.progress.connect(self._on_progress)
        worker.finished.connect(thread.quit)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        self.last_event = None
        thread.start()
        self.started.emit()
        return True

    def cancel(self) -> None:
        """Ask the run to stop after the photos in flight; `finished` follows."""
        if self._worker is not None:
            self._worker.cancel()

    def shutdown(self, timeout_ms: int | None = None) -> bool:
        """Cancel and wait for the thread to end (the window is closing). False if it did not end in time."""
        thread, worker = self._thread, self._worker
        if thread is None or worker is None:
            return True
        worker.cancel()
        thread.quit()  # ends the thread's event loop as soon as the worker returns
        ok = thread.wait() if timeout_ms is None else thread.wait(timeout_ms)
        if ok:
            self._finish(thread)
        return ok

    @Slot(object)
    def _on_progress(self, event: ProgressEvent) -> None:
        if self._worker is None:
            return  # a late event of a run already finished
        self.last_event = event
        self.progress.emit(event)

    @Slot()
    def _on_thread_finished(self) -> None:
        if self._thread is not None:
            self._finish(self._thread)

    def _finish(self, thread: QThread) -> None:
        if thread is not self._thread:
            return
        worker = self._worker
        self._thread = self._worker = None
        result = (worker.result if worker is not None else None) or IndexResult(cancelled=True, error="no result")
        if worker is not None:
            worker.progress.disconnect(self._on_progress)
            if worker.thread() == QThread.currentThread():
                worker.setParent(self)
                worker.deleteLater()
        thread.deleteLater()
        self.last_result = result
        self.finished.emit(result)
