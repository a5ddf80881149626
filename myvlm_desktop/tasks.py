"""Engine calls off the GUI thread.

`EngineThread` runs callables one after another on a thread of its own that holds its OWN engine `Library`
(a catalog connection belongs to the thread that opened it). Writes (naming, merging, captions) go through it, so
the GUI never waits on the database's write lock while the indexing process commits; so do reads that may be slow.
Results and errors come back on the GUI thread through callbacks.

Errors are for people: `user_message()` turns an engine exception into a sentence (a `UserError`'s own message says
what to do; a `Cancelled` is reported quietly); anything unexpected is logged with its traceback and shown as one
line, never as a traceback.
"""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from engine.errors import Cancelled, UserError
from engine.library import Library

log = logging.getLogger(__name__)

Done = Callable[[Any], None]
Failed = Callable[[BaseException], None]


def is_cancelled(exc: BaseException) -> bool:
    """The user stopped the job (engine.errors.Cancelled): said quietly, never as an error."""
    return isinstance(exc, Cancelled)


def is_expected(exc: BaseException) -> bool:
    """An error the engine raised on purpose (engine.errors.UserError): its message is for the user, and it needs
    no traceback in the log."""
    return isinstance(exc, UserError)


def user_message(exc: BaseException) -> str:
    """A sentence for an error dialog: a UserError's own message (a cancel's too: callers report it quietly), else
    a short generic sentence (the traceback goes to the log)."""
    text = str(exc)
    if isinstance(exc, UserError) and text:
        text = getattr(exc, "in_app", None) or text   # NotIndexedYet: Index Now and Settings, not `myvlm index`
        return text[:1].upper() + text[1:]
    if isinstance(exc, MemoryError):
        return "Not enough memory for this. Close other programs or choose a smaller model in Settings."
    return f"Something went wrong ({type(exc).__name__}: {text or 'no details'}). The log file has the details."


@dataclass
class _Task:
    id: int
    fn: Callable[[Library], Any]
    label: str


class _Bridge(QObject):
    done = Signal(int, object, object)  # task id, result, exception (or None)


class EngineThread(QThread):
    """A serial queue of engine calls on one thread with its own `Library`."""

    busyChanged = Signal(bool)

    def __init__(self, library_root: Path, options: dict[str, Any] | None = None, *, name: str = "engine",
                 parent: QObject | None = None):
        super().__init__(parent)
        self.setObjectName(f"myvlm-{name}")
        self._root = Path(library_root)
        self.options = dict(options or {})
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._callbacks: dict[int, tuple[Done | None, Failed | None]] = {}
        self._bridge = _Bridge()
        self._bridge.done.connect(self._on_done)
        self._stopped = False
        self.current: str = ""
        self.longest_task_s = 0.0

    # -- GUI thread -------------------------------------------------------------------------------------------------

    def call(self, fn: Callable[[Library], Any], done: Done | None = None, failed: Failed | None = None,
             label: str = "") -> int:
        """Run `fn(library)` on the thread; `done(result)` or `failed(exception)` later, on the GUI thread."""
        if self._stopped:
            return 0
        tid = next(self._ids)
        was_idle = not self._callbacks
        self._callbacks[tid] = (done, failed)
        self._queue.put(_Task(tid, fn, label or getattr(fn, "__name__", "task")))
        if not self.isRunning():
            self.start()
        if was_idle:
            self.busyChanged.emit(True)
        return tid

    def pending(self) -> int:
        return len(self._callbacks)

    @property
    def busy(self) -> bool:
        return bool(self._callbacks)

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        """Finish the queued calls, close the thread's library and end the thread. A call still running after
        `timeout_ms` (a model loading) is left to finish on its own; the thread is kept alive, not destroyed."""
        self._stopped = True
        if not self.isRunning():
            return True
        self._queue.put(None)
        if self.wait(timeout_ms):
            return True
        keep_until_finished(self)
        return False

    @Slot(int, object, object)
    def _on_done(self, tid: int, result: Any, error: BaseException | None) -> None:
        done, failed = self._callbacks.pop(tid, (None, None))
        try:
            if error is None:
                if done is not None:
                    done(result)
            elif failed is not None:
                failed(error)
            else:
                log.error("background task failed: %s", user_message(error))
        finally:
            if not self._callbacks:
                self.busyChanged.emit(False)

    # -- the thread -------------------------------------------------------------------------------------------------

    def run(self) -> None:
        lib: Library | None = None
        try:
            while True:
                task = self._queue.get()
                if task is None:
                    break
                self.current = task.label
                started = time.perf_counter()
                try:
                    if lib is None:
                        lib = Library(self._root)
                        lib.options.update(self.options)
                    result, error = task.fn(lib), None
                except BaseException as exc:
                    if not is_expected(exc):   # a name taken, a cancelled training: no traceback
                        log.exception("task %s failed", task.label)
                    result, error = None, exc
                self.longest_task_s = max(self.longest_task_s, time.perf_counter() - started)
                self.current = ""
                self._bridge.done.emit(task.id, result, error)
        finally:
            if lib is not None:
                lib.close()


_orphans: set[QThread] = set()


def keep_until_finished(thread: QThread) -> None:
    """A thread that outlives its window: detach it from the window (Qt would destroy it with its parent, and a
    QThread destroyed while running aborts the process) and keep it referenced until it ends."""
    log.warning("thread %s is still busy (%s); letting it finish", thread.objectName(),
                getattr(thread, "current", "") or "work in progress")
    thread.setParent(None)
    _orphans.add(thread)
    thread.finished.connect(lambda: _orphans.discard(thread))


class SingleJobThread(QObject):
    """Runs one cancellable job at a time on its own QThread (a model download, a training run).

    A job is a QObject with a `run` slot, a `finished(outcome)` signal and `cancel()`; wire its other signals
    before `start`. `finished` is re-emitted here once the thread is done and both are deleted.
    """

    finished = Signal(object)

    def __init__(self, name: str, shutdown_ms: int, parent: QObject | None = None):
        super().__init__(parent)
        self._name, self._shutdown_ms = name, shutdown_ms
        self._thread: QThread | None = None
        self._job: QObject | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def job(self) -> QObject | None:
        return self._job

    def start_job(self, job: QObject, name: str | None = None) -> bool:
        if self._thread is not None:
            return False
        thread = QThread(self)
        thread.setObjectName(name or self._name)
        job.moveToThread(thread)
        thread.started.connect(job.run)
        # quit from the worker thread itself, as soon as the job is done (queued to the GUI thread it would wait
        # behind _on_finished, which waits for the thread)
        job.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
        job.finished.connect(self._on_finished)
        self._thread, self._job = thread, job
        thread.start()
        return True

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def shutdown(self, timeout_ms: int | None = None) -> bool:
        """Cancel the job and wait a little; a job still busy after that is left to finish on its own."""
        thread = self._thread
        if thread is None:
            return True
        self.cancel()
        if thread.wait(self._shutdown_ms if timeout_ms is None else timeout_ms):
            return True
        keep_until_finished(thread)
        return False

    @Slot(object)
    def _on_finished(self, outcome: Any) -> None:
        thread, job = self._thread, self._job
        self._thread = self._job = None
        if thread is not None:
            if thread.wait(2000):
                thread.deleteLater()
            else:  # still unwinding: delete it once it has really ended
                thread.finished.connect(thread.deleteLater)
        if job is not None:
            job.deleteLater()
        self.finished.emit(outcome)
