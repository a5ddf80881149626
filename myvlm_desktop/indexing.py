"""Indexing off the GUI: scan the watched folders and run the pipeline in a worker process, as Qt signals.

`IndexRunner` lives on the GUI thread. It starts `myvlm_desktop.index_worker` once (a `QProcess`; models stay
loaded between runs) and talks to it in JSON lines: a run, pause, resume, cancel. Progress arrives as
`engine.pipeline.runner.ProgressEvent`s. Model stages may hold Python's interpreter lock for most of a second per photo;
in their own process they cannot freeze the window (the heartbeat test and `bench/bench_gui.py` check it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal, Slot

from engine.library import ProgressEvent

log = logging.getLogger(__name__)

SCAN = "scan"
QUIT_WAIT_MS = 15_000  # a run finishes the photos in flight before it stops; then the process is killed


@dataclass
class IndexResult:
    scan: dict[str, Any] | None = None       # ScanReport.to_json()
    pipeline: dict[str, Any] | None = None   # PipelineReport.to_json()
    cancelled: bool = False
    error: str | None = None
    seconds: float = 0.0
    unavailable: dict[str, str] = field(default_factory=dict)  # stage -> why it could not run here

    @property
    def errors(self) -> int:
        """Problems met by this run (scan errors plus per-photo stage errors)."""
        n = int(self.scan.get("errors", 0)) if self.scan else 0
        if self.pipeline:
            n += sum(int(s.get("errors", 0)) for s in self.pipeline.get("stages", {}).values())
        return n

    @property
    def touched(self) -> bool:
        s = self.scan or {}
        return any(s.get(k) for k in ("new", "changed", "moved", "gone", "revived"))


@dataclass
class _Run:
    scan: bool
    stages: list[str] | None
    mode: str


class IndexRunner(QObject):
    """One indexing run at a time, in the worker process. Signals arrive on the GUI thread.

    `start()` begins a run (queued behind a run in progress is not possible: it returns False); `cancel()` stops
    after the photos in flight; `pause()` / `resume()` hold new work; `shutdown()` ends the process (blocking,
    bounded), for when the window closes.
    """

    started = Signal()
    progress = Signal(object)  # ProgressEvent
    finished = Signal(object)  # IndexResult
    pausedChanged = Signal(bool)

    def __init__(self, library_root: Path, parent: QObject | None = None, *, options: dict[str, Any] | None = None):
        super().__init__(parent)
        self._root = Path(library_root)
        self.options = dict(options or {})
        self._proc: QProcess | None = None
        self._buffer = b""
        self._ready = False
        self._queued: _Run | None = None   # a run asked for before the process said it was ready
        self._running = False
        self._cancelling = False
        self._paused = False
        self._unavailable: dict[str, str] = {}
        self._closing = False
        self.last_result: IndexResult | None = None
        self.last_event: ProgressEvent | None = None
        self.stage_events: dict[str, ProgressEvent] = {}  # the latest event of each stage in this run
        self.pid: int | None = None

    # -- state ------------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def cancelling(self) -> bool:
        return self._running and self._cancelling

    @property
    def paused(self) -> bool:
        return self._running and self._paused

    # -- the process ------------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Start the worker process now (it imports the engine and its model libraries: seconds), idle."""
        if self._proc is None and not self._closing:
            self._spawn()

    def _spawn(self) -> None:
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        package_root = str(Path(__file__).resolve().parents[1])
        env.insert("PYTHONPATH", os.pathsep.join(p for p in (package_root, env.value("PYTHONPATH")) if p))
        env.insert("PYTHONUNBUFFERED", "1")
        env.remove("QT_QPA_PLATFORM")  # the worker shows nothing
        proc.setProcessEnvironment(env)
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        proc.readyReadStandardOutput.connect(self._on_stdout)
        proc.readyReadStandardError.connect(self._on_stderr)
        proc.finished.connect(self._on_process_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self._proc = proc
        self._buffer = b""
        self._ready = False
        proc.start(sys.executable, ["-m", "myvlm_desktop.index_worker", "--library", str(self._root),
                                    "--options", json.dumps(self.options, default=str)])

    def _send(self, **cmd: Any) -> None:
        if self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning:
            self._proc.write((json.dumps(cmd) + "\n").encode())

    # -- control ----------------------------------------------------------------------------------------------------

    def start(self, *, scan: bool = True, stages: list[str] | None = None, mode: str = "missing") -> bool:
        """Start a run; False when one is running already."""
        if self._running or self._closing:
            return False
        self._running = True
        self._cancelling = False
        self._paused = False
        self._unavailable = {}
        self.last_event = None
        self.stage_events = {}
        run = _Run(scan, list(stages) if stages else None, mode)
        if self._proc is None:
            self._spawn()
        if self._ready:
            self._send(cmd="run", scan=run.scan, stages=run.stages, mode=run.mode)
        else:
            self._queued = run
        self.started.emit()
        return True

    def cancel(self) -> None:
        """Ask the run to stop after the photos in flight; `finished` follows."""
        if not self._running:
            return
        self._cancelling = True
        if self._queued is not None:  # the process has not started work yet: nothing to wait for
            self._queued = None
            self._finish(IndexResult(cancelled=True))
            return
        self._send(cmd="cancel")

    def pause(self) -> None:
        if self._running and not self._paused:
            self._paused = True
            self._send(cmd="pause")
            self.pausedChanged.emit(True)

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._send(cmd="resume")
            self.pausedChanged.emit(False)

    def shutdown(self, timeout_ms: int = QUIT_WAIT_MS) -> bool:
        """Stop the run and the process (the window is closing). False when it had to be killed."""
        self._closing = True
        proc = self._proc
        if proc is None:
            self._running = False
            return True
        self._send(cmd="quit")
        proc.closeWriteChannel()
        ok = proc.waitForFinished(timeout_ms) or proc.state() == QProcess.ProcessState.NotRunning
        if not ok:
            log.warning("the indexing process did not stop in %.0fs: killing it", timeout_ms / 1000)
            proc.kill()
            proc.waitForFinished(5000)
        self._drain()
        try:
            proc.finished.disconnect(self._on_process_finished)
        except (RuntimeError, TypeError):
            pass
        self._proc = None
        if self._running:
            self._running = False
            self.last_result = IndexResult(cancelled=True)
        return ok

    # -- events from the process ------------------------------------------------------------------------------------

    @Slot()
    def _on_stdout(self) -> None:
        self._drain()

    def _drain(self) -> None:
        if self._proc is None:
            return
        self._buffer += bytes(self._proc.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                log.warning("indexing process said: %s", line[:300].decode(errors="replace"))
                continue
            self._on_event(ev)

    @Slot()
    def _on_stderr(self) -> None:
        if self._proc is None:
            return
        text = bytes(self._proc.readAllStandardError().data()).decode(errors="replace").rstrip()
        if text:
            log.info("indexing process: %s", text[-2000:])

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "ready":
            self._ready = True
            self.pid = ev.get("pid")
            if self._queued is not None:
                run, self._queued = self._queued, None
                self._send(cmd="run", scan=run.scan, stages=run.stages, mode=run.mode)
                if self._paused:
                    self._send(cmd="pause")
        elif kind == "progress":
            if not self._running:
                return  # a late event of a run already finished
            event = ProgressEvent(str(ev.get("stage", "")), int(ev.get("done", 0)), int(ev.get("total", 0)),
                                  str(ev.get("current") or ""), int(ev.get("errors", 0)), str(ev.get("state", "running")))
            if event.state == "unavailable":
                self._unavailable[event.stage] = event.current
            self.last_event = event
            self.stage_events[event.stage] = event
            self.progress.emit(event)
        elif kind == "finished":
            if not self._running:
                return
            self._finish(IndexResult(ev.get("scan"), ev.get("pipeline"), bool(ev.get("cancelled")), ev.get("error"),
                                     float(ev.get("seconds", 0.0)), dict(self._unavailable)))

    def _finish(self, result: IndexResult) -> None:
        self._running = False
        was_paused, self._paused = self._paused, False
        self.last_result = result
        if was_paused:
            self.pausedChanged.emit(False)
        self.finished.emit(result)

    @Slot(int, QProcess.ExitStatus)
    def _on_process_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._drain()
        self._proc = None
        self._ready = False
        if self._running and not self._closing:
            self._queued = None
            how = "crashed" if status == QProcess.ExitStatus.CrashExit else f"stopped (exit code {code})"
            self._finish(IndexResult(cancelled=self._cancelling,
                                     error=f"the indexing process {how}; see the log file for details"))

    @Slot(QProcess.ProcessError)
    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self._running:
            self._proc = None
            self._queued = None
            self._finish(IndexResult(error=f"cannot start the indexing process ({sys.executable})"))
