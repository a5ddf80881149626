"""The indexing worker process: scan + pipeline for the desktop app, outside the GUI's interpreter.

Why a process: model stages (dlib's detector, CLIP, the VLM) can hold Python's interpreter lock for most of a
second per photo; on a thread of the GUI process that freezes the window. In a process of its own they cannot.

This module imports no Qt. It is started by `myvlm_desktop.indexing.IndexRunner` as
`python -m myvlm_desktop.index_worker --library PATH [--options JSON]` and stays up between runs (models stay
loaded). It speaks JSON lines:

    stdin  (commands): {"cmd": "run", "scan": true, "stages": null, "mode": "missing"}
                       {"cmd": "pause"} {"cmd": "resume"} {"cmd": "cancel"} {"cmd": "quit"}
    stdout (events):   {"event": "ready", "pid": N}
                       {"event": "progress", "stage": S, "done": N, "total": N, "current": "...", "errors": N,
                        "state": "running|paused|finished|cancelled|unavailable"}
                       {"event": "finished", "scan": {...}|null, "pipeline": {...}|null, "cancelled": bool,
                        "error": str|null, "seconds": float}

End of stdin (the app went away) cancels the run in progress and ends the process. Anything else that would
write to stdout (a library's print) goes to stderr, so the event stream stays clean.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import time
from typing import Any, TextIO

log = logging.getLogger("engine.desktop_worker")

SCAN = "scan"
SCAN_EVENT_INTERVAL_S = 0.1


class Worker:
    def __init__(self, library_root: str, options: dict[str, Any], out: TextIO):
        self.library_root = library_root
        self.options = options
        self.out = out
        self._out_lock = threading.Lock()
        self.commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cancel = threading.Event()
        self._paused = False
        self._lock = threading.Lock()
        self._lib = None
        self._last_scan_event = 0.0

    # -- output -----------------------------------------------------------------------------------------------------

    def send(self, **event: Any) -> None:
        line = json.dumps(event, ensure_ascii=False, default=str)
        with self._out_lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError, OSError):
                self._cancel.set()  # nobody listens any more

    # -- control (stdin thread) -------------------------------------------------------------------------------------

    def read_commands(self, stream: TextIO) -> None:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
            except json.JSONDecodeError:
                log.warning("desktop worker: bad command %r", line[:200])
                continue
            kind = cmd.get("cmd")
            if kind == "pause":
                self._set_paused(True)
            elif kind == "resume":
                self._set_paused(False)
            elif kind == "cancel":
                self._cancel_run()
            elif kind == "quit":
                self._cancel_run()
                self.commands.put(None)
                return
            else:
                self.commands.put(cmd)
        self._cancel_run()  # end of input: the app is gone
        self.commands.put(None)

    def _set_paused(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused
            lib = self._lib
        if lib is not None:
            lib.set_paused(paused)

    def _cancel_run(self) -> None:
        self._cancel.set()
        with self._lock:
            lib = self._lib
            self._paused = False
        if lib is not None:
            lib.cancel()
            lib.set_paused(False)

    # -- work (main thread) -----------------------------------------------------------------------------------------

    def library(self):
        if self._lib is None:
            from engine.library import Library

            lib = Library(self.library_root)
            lib.options.update(self.options)
            with self._lock:
                self._lib = lib
                paused = self._paused
            if paused:   # "pause" came before the first run opened the library
                lib.set_paused(True)
        return self._lib

    def serve(self) -> None:
        self.send(event="ready", pid=os.getpid())
        while True:
            cmd = self.commands.get()
            if cmd is None:
                break
            if cmd.get("cmd") == "run":
                self._cancel.clear()
                self.run(scan=bool(cmd.get("scan", True)), stages=cmd.get("stages"), mode=cmd.get("mode") or "missing")
        if self._lib is not None:
            self._lib.close()

    def _on_scan(self, p: Any, done: int = 0, total: int | None = 0, current: str = "") -> None:
        """The scanner's progress: an engine.progress.Progress (or the older (stage, done, total, current))."""
        if not isinstance(p, str):
            done, total, current = p.done, p.total, p.detail
        total = total or 0
        now = time.monotonic()
        if now - self._last_scan_event < SCAN_EVENT_INTERVAL_S:
            return
        self._last_scan_event = now
        self.send(event="progress", stage=SCAN, done=done, total=total, current=current, errors=0, state="running")

    def _on_progress(self, ev: Any) -> None:
        self.send(event="progress", stage=ev.stage, done=ev.done, total=ev.total, current=ev.current,
                  errors=ev.errors, state=ev.state)

    def run(self, scan: bool = True, stages: list[str] | None = None, mode: str = "missing") -> None:
        started = time.perf_counter()
        result: dict[str, Any] = {"scan": None, "pipeline": None, "error": None}
        try:
            lib = self.library()
            if scan:
                self.send(event="progress", stage=SCAN, done=0, total=0, current="", errors=0, state="running")
                report = lib.scan(progress=self._on_scan, cancel=self._cancel)
                result["scan"] = report.to_json()
                self.send(event="progress", stage=SCAN, done=report.seen, total=report.seen, current="",
                          errors=report.errors, state="cancelled" if self._cancel.is_set() else "finished")
            if not self._cancel.is_set():   # pause and cancel reach the run through the Library (thread-safe)
                result["pipeline"] = lib.process(mode=mode, stages=stages, progress=self._on_progress,
                                                 cancel=self._cancel).to_json()
        except Exception as exc:
            from engine.errors import UserError

            if isinstance(exc, UserError):   # e.g. a full disk: a sentence that says what to do, not a bug
                log.error("indexing stopped: %s", exc)
                result["error"] = str(exc)
            else:
                log.exception("indexing failed")
                result["error"] = f"{type(exc).__name__}: {exc}"
        self.send(event="finished", cancelled=self._cancel.is_set(), seconds=time.perf_counter() - started,
                  **result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="myvlm_desktop.index_worker")
    p.add_argument("--library", required=True)
    p.add_argument("--options", default="{}", help="library options as JSON (face_backend, vlm, ...)")
    args = p.parse_args(argv)
    # The event stream gets its own copy of stdout; fd 1 itself now goes to stderr (stray prints, C libraries).
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(args.library, json.loads(args.options), out)
    reader = threading.Thread(target=worker.read_commands, args=(sys.stdin,), name="commands", daemon=True)
    reader.start()
    try:
        worker.serve()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
