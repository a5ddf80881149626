"""Watching: file-system events are hints, never facts.

Events are collected and debounced; files still being written are waited for (size and mtime stable); then only
the smallest affected folders are rescanned and the pipeline runs for what changed. A full reconcile runs at
start-up, and offline folders are checked periodically, so nothing depends on an event having been seen.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from . import paths as P
from .catalog import FOLDER_OFFLINE
from .pipeline import PipelineReport, ProgressCallback
from .scanner import ScanReport

log = logging.getLogger(__name__)

SETTING_POLLING = "watch_polling"


@dataclass
class WatchUpdate:
    """What one round of the watcher did (handed to `on_update`)."""

    scan: ScanReport
    pipeline: PipelineReport | None
    folders: list[str] = field(default_factory=list)
    startup: bool = False


class _Hints(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path]
        if getattr(event, "dest_path", ""):
            paths.append(event.dest_path)
        self.watcher._hint([P.to_bytes(p) for p in paths], event.is_directory)


class FolderWatcher:
    """Keeps a library's catalog in line with its folders until `stop()`. Runs its own threads."""

    def __init__(
        self,
        library_root: str | os.PathLike,
        *,
        polling: bool | None = None,
        poll_interval: float = 2.0,
        debounce: float = 0.5,
        max_delay: float = 10.0,
        stable_wait: float = 0.3,
        offline_check: float = 30.0,
        run_pipeline: bool = True,
        on_update: Callable[[WatchUpdate], None] | None = None,
        progress: ProgressCallback | None = None,
    ):
        self.library_root = library_root
        self.polling = polling
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.max_delay = max_delay
        self.stable_wait = stable_wait
        self.offline_check = offline_check
        self.run_pipeline = run_pipeline
        self.on_update = on_update
        self.progress = progress
        self._lock = threading.Condition()
        self._dirty_dirs: set[bytes] = set()
        self._dirty_files: set[bytes] = set()
        self._first_event = 0.0
        self._last_event = 0.0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._observers: list = []
        self._watched: set[bytes] = set()
        self._skip = P.normalize(library_root)
        self._library = None
        self.rounds = 0
        self.error: BaseException | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self, wait_ready: bool = True, timeout: float = 600) -> FolderWatcher:
        self._thread = threading.Thread(target=self._main, name="folder-watcher", daemon=True)
        self._thread.start()
        if wait_ready:
            self._ready.wait(timeout)
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        lib = self._library
        if lib is not None:
            lib.cancel()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        for obs in self._observers:
            obs.stop()
        for obs in self._observers:
            obs.join(timeout)
        self._observers.clear()

    def __enter__(self) -> FolderWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_idle(self, timeout: float = 60, quiet: float = 0.0) -> bool:
        """For tests and scripts: wait until no hint is pending and no round is running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._dirty_dirs and not self._busy
                last = self._last_event
            if idle and time.monotonic() - last >= quiet:
                return True
            time.sleep(0.05)
        return False

    # -- events -----------------------------------------------------------------------------------------------------

    _busy = False

    def _hint(self, paths: list[bytes], is_directory: bool) -> None:
        dirs, files = set(), set()
        for p in paths:
            if P.is_within(p, self._skip):
                continue
            dirs.add(os.path.dirname(p))
            if is_directory:
                dirs.add(p)
            elif not os.path.basename(p).startswith(b"."):
                files.add(p)  # hidden names (editors' temporary files) matter only through their folder
        if not dirs:
            return
        now = time.monotonic()
        with self._lock:
            if not self._dirty_dirs:
                self._first_event = now
            self._dirty_dirs |= dirs
            self._dirty_files |= files
            self._last_event = now
            self._lock.notify_all()

    # -- the watcher thread -----------------------------------------------------------------------------------------

    def _main(self) -> None:
        from .api import Library

        try:
            self._library = lib = Library(self.library_root)
            polling = self.polling if self.polling is not None else bool(lib.catalog.get_setting(SETTING_POLLING, False))
            self._start_observers(lib, polling)
            self._round(lib, None, startup=True)  # reconcile everything at start-up
            self._ready.set()
            next_offline_check = time.monotonic() + self.offline_check
            while not self._stop.is_set():
                batch = self._next_batch(next_offline_check)
                if self._stop.is_set():
                    break
                if batch is None:
                    next_offline_check = time.monotonic() + self.offline_check
                    self._check_offline(lib, polling)
                    continue
                self._round(lib, batch)
        except BaseException as exc:  # noqa: BLE001 - reported to whoever owns the watcher
            self.error = exc
            log.exception("folder watcher stopped by an error")
            self._ready.set()
        finally:
            if self._library is not None:
                self._library.close()
                self._library = None

    def _start_observers(self, lib, polling: bool) -> None:
        for folder in lib.folders():
            if folder.path_bytes in self._watched or not os.path.isdir(folder.fs_path):
                continue
            self._schedule(folder.fs_path, polling)
            self._watched.add(folder.path_bytes)

    def _schedule(self, path: str, polling: bool) -> None:
        handler = _Hints(self)
        if not polling:
            obs = Observer()
            try:
                obs.schedule(handler, path, recursive=True)
                obs.start()
                self._observers.append(obs)
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                    raise
                log.warning(
                    "the system's limit on file watches is reached (%s) for %s; polling this folder instead. "
                    "Raise fs.inotify.max_user_watches to watch it natively.", exc, path)
                try:
                    obs.stop()
                except Exception:  # noqa: BLE001
                    pass
        obs = PollingObserver(timeout=self.poll_interval)
        obs.schedule(handler, path, recursive=True)
        obs.start()
        self._observers.append(obs)

    def _next_batch(self, offline_deadline: float) -> tuple[set[bytes], set[bytes]] | None:
        """Wait for hints, then for quiet (debounce), then for files to stop growing. None: time for offline check."""
        while True:
            with self._lock:
                while not self._dirty_dirs and not self._stop.is_set():
                    remaining = offline_deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._lock.wait(min(remaining, 1.0))
                while not self._stop.is_set():
                    now = time.monotonic()
                    quiet_for = now - self._last_event
                    if quiet_for >= self.debounce or now - self._first_event >= self.max_delay:
                        break
                    self._lock.wait(self.debounce - quiet_for)
                if self._stop.is_set():
                    return set(), set()
                files = set(self._dirty_files)
            # Outside the lock: is anything still being written? Then wait for the writer, not for max_delay.
            if files and not self._stable(files):
                with self._lock:
                    self._first_event = time.monotonic()
                continue
            with self._lock:
                dirs, files = self._dirty_dirs, self._dirty_files
                self._dirty_dirs, self._dirty_files = set(), set()
                self._busy = True
            return dirs, files

    def _stable(self, files: set[bytes]) -> bool:
        def snapshot() -> dict[bytes, tuple[int, int] | None]:
            out = {}
            for f in files:
                try:
                    st = os.stat(f)
                    out[f] = (st.st_size, st.st_mtime_ns)
                except OSError:
                    out[f] = None
            return out

        before = snapshot()
        self._stop.wait(self.stable_wait)
        return snapshot() == before

    def _round(self, lib, batch: tuple[set[bytes], set[bytes]] | None, startup: bool = False) -> None:
        try:
            self._busy = True
            if batch is None:
                scan = lib.scan()
                targets = [f.path for f in lib.folders()]
            else:
                dirs, _files = batch
                existing = {self._nearest_existing(d) for d in dirs}
                scan = lib.scan(existing)
                targets = sorted(P.display(d) for d in existing)
            report = None
            if self.run_pipeline and not self._stop.is_set():
                report = lib.process(progress=self.progress)
            self.rounds += 1
            if scan.touched or startup or (report and any(s.processed or s.errors for s in report.stages.values())):
                log.info("watch round: %s", scan.to_json())
            if self.on_update:
                self.on_update(WatchUpdate(scan, report, targets, startup))
        finally:
            with self._lock:
                self._busy = False

    @staticmethod
    def _nearest_existing(path: bytes) -> bytes:
        """A deleted folder's changes are seen by rescanning its nearest surviving parent."""
        while path and path != b"/" and not os.path.isdir(path):
            path = os.path.dirname(path)
        return path

    def _check_offline(self, lib, polling: bool) -> None:
        offline = [f for f in lib.folders() if f.status == FOLDER_OFFLINE or f.path_bytes not in self._watched]
        if not offline:
            return
        scan = lib.scan([f.path_bytes for f in offline])
        self._start_observers(lib, polling)
        report = lib.process(progress=self.progress) if self.run_pipeline and scan.touched else None
        if self.on_update and scan.touched:
            self.on_update(WatchUpdate(scan, report, [f.path for f in offline]))
