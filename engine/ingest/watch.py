"""Watching: file-system events are hints, never facts.

Events are collected and debounced; files still being written are waited for (size and mtime stable); then only
the smallest affected folders are rescanned and the pipeline runs for what changed. A full reconcile runs at
start-up, and the watched folders are checked periodically (offline folders coming back, a root renamed away or
remounted, a watch that died), so nothing depends on an event having been seen.

One native observer (inotify, FSEvents, ReadDirectoryChanges) watches every folder; the polling observer is used
instead when the `watch_polling` setting asks for it (network shares, whose changes made by other machines no
native API reports), and for a folder the native observer cannot watch (the system's limit on watches reached).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from engine import settings
from engine.ingest.scanner import Scanner, ScanReport
from engine.storage import paths as P
from engine.storage.catalog import FOLDER_OFFLINE, Folder

if TYPE_CHECKING:
    from engine.pipeline.runner import PipelineReport, ProgressCallback

log = logging.getLogger(__name__)


# Event types that say nothing about content: reading a photo (as our own scanner and pipeline do) opens it.
_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})
_LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE, errno.ENFILE})


@dataclass
class WatchUpdate:
    """What one round of the watcher did (handed to `on_update`)."""

    scan: ScanReport
    pipeline: PipelineReport | None
    folders: list[str] = field(default_factory=list)
    startup: bool = False
    check: bool = False  # a periodic check of the folders themselves (offline, back online, watch restarted)


class _Hints(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENTS:
            return
        try:
            self.watcher._hint(event.src_path, getattr(event, "dest_path", "") or "", event.is_directory)
        except Exception:  # noqa: BLE001 - never kill the observer thread over one event
            log.exception("cannot handle file-system event %r", event)


@dataclass
class _Watch:
    observer: object
    watch: object
    key: tuple[int, int]
    polling: bool

    def alive(self) -> bool:
        for emitter in getattr(self.observer, "emitters", ()):
            if emitter.watch == self.watch:
                return emitter.is_alive() and not emitter.stopped_event.is_set()
        return False


def polling_wanted(catalog) -> bool:
    """The `watch_polling` setting: poll instead of native events (network shares, whose changes made by other
    machines raise no event here)."""
    return bool(settings.read(catalog, "watch_polling"))


def _dir_key(path: bytes) -> tuple[int, int] | None:
    """Identity of a folder root: a root renamed away, replaced or (un)mounted gets another key."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not os.path.isdir(path):
        return None
    return (st.st_dev, st.st_ino)


def _root_of(path: bytes, roots: Iterable[bytes]) -> bytes | None:
    best = None
    for r in roots:
        if P.is_within(path, r) and (best is None or len(r) > len(best)):
            best = r
    return best


def _hidden_below(path: bytes, root: bytes) -> bool:
    """Inside a hidden file or folder (below the root): the scanner skips these, so must the watcher."""
    rel = path[len(root.rstrip(b"/")):]
    return any(part.startswith(b".") for part in rel.split(b"/") if part)


class FolderWatcher:
    """Keeps a library's catalog in line with its folders until `stop()`. Runs its own threads.

    debounce: quiet time after the last event before a round; max_delay: longest a stream of events postpones a
    round; stable_wait: a hinted file's size and mtime must hold this long; max_write_wait: longest a round waits
    for a file still being written (then it is scanned as it is, and again when its writer is done);
    offline_check: seconds between checks of the folders themselves.
    """

    def __init__(
        self,
        library_root: str | os.PathLike,
        *,
        open_library: Callable[[str | os.PathLike], Any],
        polling: bool | None = None,
        poll_interval: float = 2.0,
        debounce: float = 0.5,
        max_delay: float = 10.0,
        stable_wait: float = 0.3,
        max_write_wait: float = 60.0,
        offline_check: float = 30.0,
        run_pipeline: bool = True,
        on_update: Callable[[WatchUpdate], None] | None = None,
        progress: ProgressCallback | None = None,
    ):
        self.library_root = library_root
        self.open_library = open_library  # engine.storage.library_folder.Library: passed in, so the watcher sits below the API
        self.polling = polling
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.max_delay = max_delay
        self.stable_wait = stable_wait
        self.max_write_wait = max_write_wait
        self.offline_check = offline_check
        self.run_pipeline = run_pipeline
        self.on_update = on_update
        self.progress = progress
        self._lock = threading.Condition()
        self._dirty_dirs: set[bytes] = set()
        self._dirty_files: set[bytes] = set()
        self._pending_since = 0.0  # when the oldest pending hint arrived
        self._last_event = 0.0
        self._seq = 0  # hints received so far
        self._busy = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._check_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = _Hints(self)
        self._obs_lock = threading.Lock()
        self._native = None
        self._poller = None
        self._native_failed = False
        self._watches: dict[bytes, _Watch] = {}
        self._unwatchable: dict[bytes, tuple[int, int]] = {}  # roots that could not be watched, by key
        self._roots: tuple[bytes, ...] = ()
        self._skip = P.normalize(library_root)
        self._library = None
        self._pipeline = None
        self._polling_mode = False
        self.rounds = 0  # rounds run for events (not counting start-up and folder checks)
        self.error: BaseException | None = None  # what stopped the watcher, if anything did
        self.last_error: BaseException | None = None  # the latest failed round (the watcher retries)

    # -- lifecycle --------------------------------------------------------------------------------------------------

    def start(self, wait_ready: bool = True, timeout: float = 600) -> FolderWatcher:
        if self._thread is not None:
            raise RuntimeError("a FolderWatcher starts once; make a new one")
        self._thread = threading.Thread(target=self._main, name="folder-watcher", daemon=True)
        self._thread.start()
        if wait_ready:
            self._ready.wait(timeout)
        return self

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        pipe = self._pipeline
        if pipe is not None:
            pipe.cancel()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._stop_observers(timeout)

    def __enter__(self) -> FolderWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ready(self) -> bool:
        """The start-up reconcile is done (or the watcher failed to start: see `error`)."""
        return self._ready.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def refresh(self) -> None:
        """Check the folders now (e.g. after one was added): new folders get watched and scanned."""
        self._check_requested.set()
        with self._lock:
            self._lock.notify_all()

    def wait_idle(self, timeout: float = 60, quiet: float = 0.0) -> bool:
        """For tests and scripts: wait until started, no hint is pending, no round is running and no event came
        for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        if not self._ready.wait(timeout):
            return False
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._dirty_dirs and not self._busy and not self._check_requested.is_set()
                last = self._last_event
            if idle and time.monotonic() - last >= quiet:
                return True
            if not self.running:
                return False
            time.sleep(0.05)
        return False

    # -- events (observer threads) ----------------------------------------------------------------------------------

    def _hint(self, src: str | bytes, dest: str | bytes, is_directory: bool) -> None:
        roots = self._roots
        dirs: set[bytes] = set()
        files: set[bytes] = set()
        for raw in (src, dest):
            if not raw:
                continue
            p = P.normalize(raw)
            if P.is_within(p, self._skip):
                continue
            root = _root_of(p, roots)
            if root is None or _hidden_below(p, root):
                continue  # hidden names (editors' temporary files) never reach the catalog: a rename out of them does
            if is_directory:
                dirs.add(p)  # its own content changed; when it no longer exists, its nearest parent is rescanned
            else:
                dirs.add(os.path.dirname(p))
                files.add(p)
        if not dirs:
            return
        now = time.monotonic()
        with self._lock:
            if not self._dirty_dirs:
                self._pending_since = now
            self._dirty_dirs |= dirs
            self._dirty_files |= files
            self._last_event = now
            self._seq += 1
            self._lock.notify_all()

    # -- the watcher thread -----------------------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._library = lib = self.open_library(self.library_root)
            self._polling_mode = (self.polling if self.polling is not None
                                  else polling_wanted(lib.catalog))
            self._sync_watches(lib.folders())  # watch first: what changes during the reconcile is seen too
            self._round(lib, None, startup=True)  # reconcile everything at start-up
            self._sync_watches(lib.folders())
        except BaseException as exc:  # noqa: BLE001 - reported to whoever owns the watcher
            self.error = exc
            log.exception("folder watcher could not start")
            self._ready.set()
            self._shutdown()
            return
        self._ready.set()
        next_check = time.monotonic() + self.offline_check
        failures = 0
        while not self._stop.is_set():
            try:
                if self._check_requested.is_set() or time.monotonic() >= next_check:
                    self._check_requested.clear()
                    self._check_folders(lib)
                    next_check = time.monotonic() + self.offline_check
                    failures = 0
                    continue
                batch = self._next_batch(next_check)
                if batch is None or self._stop.is_set():
                    continue
                self._round(lib, batch)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - one failed round must not end the watching
                failures += 1
                self.last_error = exc
                delay = min(60.0, 0.5 * 2 ** failures)
                log.exception("watch round failed; retrying in %.0fs", delay)
                self._stop.wait(delay)
            except BaseException as exc:  # noqa: BLE001
                self.error = exc
                log.exception("folder watcher stopped by an error")
                break
        self._shutdown()

    def _shutdown(self) -> None:
        self._stop_observers(5)
        if self._library is not None:
            self._library.close()
            self._library = None

    def _scanner(self, lib) -> Scanner:
        return Scanner(lib.catalog, cancel=self._stop)

    def _next_batch(self, check_at: float) -> tuple[set[bytes], set[bytes]] | None:
        """Wait for hints, then for quiet (debounce), then for hinted files to stop changing.

        None: nothing to do now (stopping, or time for the folder check)."""
        with self._lock:
            while True:
                if self._stop.is_set():
                    return None
                now = time.monotonic()
                if not self._dirty_dirs:
                    if self._check_requested.is_set() or now >= check_at:
                        return None
                    self._lock.wait(min(check_at - now, 1.0))
                    continue
                pending_for = now - self._pending_since
                quiet_for = now - self._last_event
                forced = pending_for >= self.max_delay
                if quiet_for < self.debounce and not forced:
                    self._lock.wait(min(self.debounce - quiet_for, self.max_delay - pending_for))
                    continue
                files, seq = set(self._dirty_files), self._seq
                self._lock.release()
                try:
                    stable = self._stable(files)  # sleeps: not under the lock, so hints keep coming in
                finally:
                    self._lock.acquire()
                if self._stop.is_set():
                    return None
                waited = time.monotonic() - self._pending_since
                if not stable and waited < self.max_delay + self.max_write_wait:
                    continue  # a writer is still at work: wait for it
                if not stable:
                    log.info("files still being written after %.0fs; scanning them as they are", waited)
                if self._seq != seq and not forced:
                    continue  # more hints came meanwhile: they get their quiet time and stability check too
                batch = (self._dirty_dirs, self._dirty_files)
                self._dirty_dirs, self._dirty_files = set(), set()
                self._busy = True
                return batch

    def _stable(self, files: set[bytes]) -> bool:
        if not files:
            return True

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

    def _targets(self, lib, dirs: set[bytes]) -> list[bytes]:
        """The smallest existing folders covering the hinted ones, inside watched folders (a folder deleted or
        renamed away is seen from its nearest surviving parent; a root's parent stands for the root)."""
        roots = [f.path_bytes for f in lib.folders()]
        out: set[bytes] = set()
        for d in dirs:
            root = _root_of(d, roots)
            if root is None:
                out.update(r for r in roots if P.is_within(r, d))
                continue
            d = self._nearest_existing(d)
            out.add(d if P.is_within(d, root) else root)
        minimal: list[bytes] = []
        for t in sorted(out):
            if not any(P.is_within(t, m) for m in minimal):
                minimal.append(t)
        return minimal

    def _round(self, lib, batch: tuple[set[bytes], set[bytes]] | None, startup: bool = False) -> None:
        with self._lock:
            self._busy = True
        try:
            if batch is None:
                folders = lib.folders()
                scan = self._scanner(lib).scan_all()
                targets = [f.path for f in folders]
            else:
                dirs, _files = batch
                paths = self._targets(lib, dirs)
                scan = self._scanner(lib).scan_paths(paths) if paths else ScanReport()
                targets = [P.display(t) for t in paths]
            if self._stop.is_set():
                return
            report = self._process(lib)
            if not startup:
                self.rounds += 1
            if scan.touched or startup or scan.offline or _did_work(report):
                log.info("watch round %s: %s", "start-up" if startup else targets, scan.to_json())
            if scan.offline and not startup:
                self._check_requested.set()  # a root went away: its watch is dropped at the check
            self._emit(WatchUpdate(scan, report, targets, startup))
        except BaseException:
            if batch is not None:  # retried after the pause in _main
                with self._lock:
                    if not self._dirty_dirs:
                        self._pending_since = time.monotonic()
                    self._dirty_dirs |= batch[0]
                    self._dirty_files |= batch[1]
            raise
        finally:
            with self._lock:
                self._busy = False

    def _process(self, lib) -> PipelineReport | None:
        if not self.run_pipeline or self._stop.is_set():
            return None
        pipe = lib.pipeline()
        self._pipeline = pipe
        try:
            if self._stop.is_set():
                pipe.cancel()
            return lib.process(pipeline=pipe, progress=self.progress)
        finally:
            self._pipeline = None

    def _emit(self, update: WatchUpdate) -> None:
        if self.on_update is None:
            return
        try:
            self.on_update(update)
        except Exception:  # noqa: BLE001 - a broken listener must not stop the watching
            log.exception("watch update listener failed")

    @staticmethod
    def _nearest_existing(path: bytes) -> bytes:
        """A deleted folder's changes are seen by rescanning its nearest surviving parent."""
        while path and path != b"/" and not os.path.isdir(path):
            path = os.path.dirname(path)
        return path

    # -- the folders themselves -------------------------------------------------------------------------------------

    def _check_folders(self, lib) -> None:
        """Restart lost watches, drop those of roots gone away, and rescan what could have changed unseen."""
        with self._lock:
            self._busy = True
        try:
            folders = lib.folders()
            rescan = self._sync_watches(folders)
            for f in folders:  # an offline root that is back, or an online one gone without a word from the OS
                if (f.status == FOLDER_OFFLINE) == (_dir_key(f.path_bytes) is not None):
                    rescan.add(f.path_bytes)
            if not rescan:
                return
            before = {f.path_bytes: f.status for f in folders}
            scan = self._scanner(lib).scan_paths(sorted(rescan))
            if self._stop.is_set():
                return
            after = {f.path_bytes: f.status for f in lib.folders()}
            flipped = [P.display(p) for p in sorted(rescan) if before.get(p) != after.get(p)]
            self._sync_watches(lib.folders())
            report = self._process(lib) if scan.touched or flipped else None
            if flipped:
                log.info("watched folders %s are now %s", flipped,
                         [after.get(P.to_bytes(p)) for p in flipped])
            if scan.touched or flipped:
                self._emit(WatchUpdate(scan, report, [P.display(p) for p in sorted(rescan)], check=True))
        finally:
            with self._lock:
                self._busy = False

    def _sync_watches(self, folders: list[Folder]) -> set[bytes]:
        """Make the observers watch exactly the folders whose roots exist. Returns the roots whose watch was
        dropped or (re)started: changes there may have gone unseen."""
        changed: set[bytes] = set()
        want = {f.path_bytes: _dir_key(f.path_bytes) for f in folders}
        self._roots = tuple(want)
        for root, w in list(self._watches.items()):
            if want.get(root, "removed") != w.key or not w.alive():
                self._unschedule(root)
                if root in want:
                    changed.add(root)
        for root, key in want.items():
            if key is None or root in self._watches:
                continue
            if self._unwatchable.get(root) == key:
                continue  # it failed before and the folder has not changed since
            if self._schedule(root, key):
                self._unwatchable.pop(root, None)
                changed.add(root)
            else:
                self._unwatchable[root] = key
        return changed

    def _schedule(self, root: bytes, key: tuple[int, int]) -> bool:
        path = P.to_fs(root)
        if self._stop.is_set():
            return False
        if not self._polling_mode and not self._native_failed:
            try:
                obs = self._observer(polling=False)
                watch = obs.schedule(self._handler, path, recursive=True)
                self._watches[root] = _Watch(obs, watch, key, polling=False)
                return True
            except OSError as exc:
                if exc.errno not in _LIMIT_ERRNOS:
                    log.warning("cannot watch %s: %s; it is checked every %.0fs instead", P.display(root), exc,
                                self.offline_check)
                    return False
                log.warning(
                    "the system's limit on file watches is reached (%s) for %s; polling this folder instead. "
                    "Raise fs.inotify.max_user_watches (and max_user_instances) to watch it natively.",
                    exc, P.display(root))
                if exc.errno != errno.ENOSPC:
                    self._native_failed = True  # no inotify instance at all: every folder polls
        try:
            obs = self._observer(polling=True)
            watch = obs.schedule(self._handler, path, recursive=True)
        except OSError as exc:
            log.warning("cannot poll %s: %s; it is checked every %.0fs instead", P.display(root), exc,
                        self.offline_check)
            return False
        self._watches[root] = _Watch(obs, watch, key, polling=True)
        return True

    def _observer(self, polling: bool):
        with self._obs_lock:
            if self._stop.is_set():
                raise OSError(errno.ECANCELED, "the watcher is stopping")
            if polling:
                if self._poller is None:
                    obs = PollingObserver(timeout=self.poll_interval)
                    obs.daemon = True
                    obs.start()
                    self._poller = obs
                return self._poller
            if self._native is None:
                obs = Observer()
                obs.daemon = True
                obs.start()
                self._native = obs
            return self._native

    def _unschedule(self, root: bytes) -> None:
        w = self._watches.pop(root, None)
        if w is None:
            return
        try:
            w.observer.unschedule(w.watch)
        except Exception:  # noqa: BLE001 - already gone with its folder
            log.debug("unscheduling %s", P.display(root), exc_info=True)

    def _stop_observers(self, timeout: float) -> None:
        with self._obs_lock:
            observers = [o for o in (self._native, self._poller) if o is not None]
            self._native = self._poller = None
        for obs in observers:
            try:
                obs.stop()
            except Exception:  # noqa: BLE001
                log.debug("stopping observer", exc_info=True)
        for obs in observers:
            if obs.is_alive() and obs is not threading.current_thread():
                obs.join(timeout)


def _did_work(report: PipelineReport | None) -> bool:
    return bool(report and any(s.processed or s.shared or s.errors for s in report.stages.values()))
