"""The pipeline: runs registered stages over the photos that still need them, resumably, with progress.

Stage work happens on a small thread pool; every result is committed by the thread that called `run()` (the one
writer). Status is persisted per photo and stage, so after a crash or a kill a new run picks up exactly what is
missing. Photos with identical content share one run of each stage.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from . import paths as P
from .catalog import Catalog, DiskFull, disk_full, is_disk_full

log = logging.getLogger(__name__)

MISSING, ALL, ERRORS = "missing", "all", "errors"
COMMIT_INTERVAL_S = 0.25


@dataclass(frozen=True)
class Job:
    """One photo for one stage; built from the catalog, handed to worker threads (no database access there)."""

    photo_id: int
    path_bytes: bytes
    content_hash: str
    name: str

    @property
    def fs_path(self) -> str:
        return P.to_fs(self.path_bytes)


class Stage:
    """A pipeline stage. Subclasses set `name`, `version` (bump it to redo the stage everywhere) and `requires`."""

    name: str = ""
    version: int = 1
    requires: tuple[str, ...] = ()
    workers: int = 2
    batch_size: int = 1

    def configure(self, **options: Any) -> None:
        """Options from the front door (e.g. `--face-backend`); unknown ones are ignored."""

    def setup(self, catalog: Catalog) -> None:
        """Called before each run of the stage, before its pending photos are listed (cheap: load models lazily)."""

    def before_work(self, catalog: Catalog, jobs: list[Job]) -> None:
        """Called on the writer thread with the jobs about to run: read what workers will need from the catalog."""

    def cached(self, job: Job) -> Any | None:
        """A result already on disk from an interrupted run (so a kill never causes work twice), else None."""
        return None

    def process(self, job: Job) -> Any:
        """The work, on a worker thread. Raise to record a per-photo error."""
        raise NotImplementedError

    def process_batch(self, jobs: list[Job]) -> list[Any]:
        """Several photos at once (stages with `batch_size` > 1, e.g. a model on a GPU). An exception in the list
        is that photo's error."""
        out: list[Any] = []
        for job in jobs:
            try:
                out.append(self.process(job))
            except Exception as exc:  # noqa: BLE001 - recorded per photo
                out.append(exc)
        return out

    def unavailable(self, catalog: Catalog) -> str | None:
        """Why this stage cannot run on this machine now (e.g. model weights not downloaded), or None. An
        unavailable stage is skipped, with that reason shown, and the rest of the pipeline goes on."""
        return None

    def commit(self, catalog: Catalog, job: Job, result: Any) -> None:
        """Store the result (inside a write transaction, on the writer thread)."""

    def fail(self, catalog: Catalog, job: Job, error: Exception) -> None:
        """Store what a failure means for the photo (inside a write transaction)."""

    def share(self, catalog: Catalog, source_photo_id: int, job: Job) -> None:
        """Copy a duplicate's results to this photo (same content). Stages keyed by content need nothing."""

    def finish(self, catalog: Catalog) -> None:
        """Called after a run of this stage (housekeeping such as cache limits)."""


class StageRegistry:
    """Stages in pipeline order. Later features register theirs (faces, CLIP, concepts, captions, index)."""

    def __init__(self) -> None:
        self._factories: list[tuple[str, Callable[[], Stage]]] = []

    def register(self, name: str, factory: Callable[[], Stage], *, after: str | None = None) -> None:
        if any(n == name for n, _ in self._factories):
            raise ValueError(f"stage {name!r} is already registered")
        if after is None:
            self._factories.append((name, factory))
        else:
            idx = [n for n, _ in self._factories].index(after)
            self._factories.insert(idx + 1, (name, factory))

    def names(self) -> list[str]:
        return [n for n, _ in self._factories]

    def create(self, names: Iterable[str] | None = None) -> list[Stage]:
        wanted = None if names is None else set(names)
        if wanted is not None:
            unknown = wanted - set(self.names())
            if unknown:
                raise ValueError(f"unknown stage(s): {', '.join(sorted(unknown))}; known: {', '.join(self.names())}")
        return [f() for n, f in self._factories if wanted is None or n in wanted]


@dataclass
class ProgressEvent:
    """What a progress bar (CLI or GUI) shows. `state`: running, paused, finished, cancelled or unavailable
    (then `current` says why)."""

    stage: str
    done: int
    total: int
    current: str = ""
    errors: int = 0
    state: str = "running"


@dataclass
class StageReport:
    processed: int = 0
    shared: int = 0
    cached: int = 0
    errors: int = 0
    seconds: float = 0.0
    unavailable: str | None = None  # why the stage could not run here (then nothing was attempted)


@dataclass
class PipelineReport:
    stages: dict[str, StageReport] = field(default_factory=dict)
    cancelled: bool = False

    @property
    def work(self) -> int:
        """Photos handled by any stage in this run (0: everything was already done)."""
        return sum(s.processed + s.shared + s.cached + s.errors for s in self.stages.values())

    def to_json(self) -> dict:
        return {
            "cancelled": self.cancelled,
            "stages": {k: vars(v) for k, v in self.stages.items()},
        }


ProgressCallback = Callable[[ProgressEvent], None]


class Pipeline:
    """Runs stages in order. `cancel()` stops after the photos in flight; `pause()`/`resume()` hold new work."""

    def __init__(self, catalog: Catalog, stages: list[Stage]):
        self.catalog = catalog
        self.stages = stages
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._listeners: list[ProgressCallback] = []

    # -- control (thread-safe) --------------------------------------------------------------------------------------

    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def subscribe(self, callback: ProgressCallback) -> None:
        self._listeners.append(callback)

    def _emit(self, event: ProgressEvent) -> None:
        for cb in self._listeners:
            try:
                cb(event)
            except Exception:  # noqa: BLE001 - a broken progress view must not stop the work
                log.exception("progress listener failed")

    # -- running ----------------------------------------------------------------------------------------------------

    def prepare(self, mode: str = MISSING) -> None:
        if mode == ALL:
            for stage in self.stages:
                self.catalog.reset_stage_everywhere(stage.name)

    def run(self, mode: str = MISSING) -> PipelineReport:
        if mode not in (MISSING, ALL, ERRORS):
            raise ValueError(f"mode must be one of missing, all, errors (got {mode!r})")
        self.prepare(mode)
        report = PipelineReport()
        for stage in self.stages:
            if self.cancelled:
                break
            # "redo all" really redoes: results left on disk by an interrupted run are not reused
            report.stages[stage.name] = self._run_stage(stage, retry_errors=(mode == ERRORS), reuse=(mode != ALL))
        report.cancelled = self.cancelled
        return report

    def _run_stage(self, stage: Stage, retry_errors: bool, reuse: bool = True) -> StageReport:
        cat = self.catalog
        rep = StageReport()
        start = time.perf_counter()
        stage.setup(cat)
        reason = stage.unavailable(cat)
        if reason:
            rep.unavailable = reason
            log.warning("stage %s skipped: %s", stage.name, reason)
            self._emit(ProgressEvent(stage.name, 0, 0, reason, 0, "unavailable"))
            return rep
        rows = cat.pending_for_stage(stage.name, stage.version, stage.requires, retry_errors=retry_errors)
        total = len(rows)
        if total == 0:
            return rep
        groups: dict[str, list[Job]] = defaultdict(list)
        for r in rows:
            groups[r["content_hash"]].append(Job(r["id"], r["path_bytes"], r["content_hash"], r["name"]))

        done = 0
        pending_commits: list[Callable[[], None]] = []
        last_commit = time.perf_counter()
        current = ""

        def flush(force: bool = False) -> None:
            nonlocal last_commit
            if not pending_commits or (not force and time.perf_counter() - last_commit < COMMIT_INTERVAL_S):
                return
            with cat.write():
                for fn in pending_commits:
                    fn()
            pending_commits.clear()
            last_commit = time.perf_counter()
            self._emit(ProgressEvent(stage.name, done, total, current, rep.errors))

        def record_success(leader: Job, followers: list[Job], result: Any, ran: bool) -> None:
            def apply() -> None:
                stage.commit(cat, leader, result)
                cat.mark_stage(leader.photo_id, stage.name, stage.version, "done", ran=ran)
                for f in followers:
                    stage.share(cat, leader.photo_id, f)
                    cat.mark_stage(f.photo_id, stage.name, stage.version, "done", ran=False)
            pending_commits.append(apply)

        def record_failure(jobs: list[Job], exc: Exception) -> None:
            message = str(exc) or type(exc).__name__
            if not _is_expected(exc):
                log.error("stage %s failed on %s", stage.name, P.display(jobs[0].path_bytes), exc_info=exc)
                message = f"{stage.name} failed: {type(exc).__name__}: {exc}"

            def apply() -> None:
                for j in jobs:
                    stage.fail(cat, j, exc)
                    cat.mark_stage(j.photo_id, stage.name, stage.version, "error", message, ran=True)
            pending_commits.append(apply)

        # Content already processed under another path: share without running the stage.
        work: list[list[Job]] = []
        for h, jobs in groups.items():
            source = cat.done_for_hash(stage.name, stage.version, h)
            if source is not None:
                def apply_share(jobs: list[Job] = jobs, source: int = source) -> None:
                    for j in jobs:
                        stage.share(cat, source, j)
                        cat.mark_stage(j.photo_id, stage.name, stage.version, "done", ran=False)
                pending_commits.append(apply_share)
                done += len(jobs)
                rep.shared += len(jobs)
            else:
                work.append(jobs)
        flush(force=True)
        stage.before_work(cat, [j for jobs in work for j in jobs])

        self._emit(ProgressEvent(stage.name, done, total, "", 0))

        def run_batch(leaders: list[Job]) -> list[tuple[Any, bool, Exception | None]]:
            """(result, ran, error) per leader; a batch stage processes the uncached ones together."""
            out: list[tuple[Any, bool, Exception | None] | None] = [None] * len(leaders)
            todo = []
            for i, job in enumerate(leaders):
                try:
                    cached = stage.cached(job) if reuse else None
                except Exception:  # noqa: BLE001 - a broken cache entry is simply redone
                    cached = None
                if cached is not None:
                    out[i] = (cached, False, None)
                else:
                    todo.append(i)
            if todo:
                results = stage.process_batch([leaders[i] for i in todo])
                for i, res in zip(todo, results, strict=True):
                    out[i] = (None, True, res) if isinstance(res, Exception) else (res, True, None)
            return out  # type: ignore[return-value]

        in_flight: dict[Future, list[list[Job]]] = {}
        queue = iter(work)
        exhausted = False
        full: DiskFull | None = None   # the disk filled up: stop, keep what is stored, leave the rest to do
        with ThreadPoolExecutor(max(1, stage.workers), thread_name_prefix=f"stage-{stage.name}") as pool:
            while True:
                while (not exhausted and not self.cancelled and full is None
                       and len(in_flight) < 2 * max(1, stage.workers)):
                    if not self._running.is_set():
                        if not in_flight:
                            flush(force=True)
                            self._emit(ProgressEvent(stage.name, done, total, current, rep.errors, "paused"))
                            self._running.wait()
                            continue
                        break
                    batch = list(itertools.islice(queue, max(1, stage.batch_size)))
                    if not batch:
                        exhausted = True
                        break
                    in_flight[pool.submit(run_batch, [jobs[0] for jobs in batch])] = batch
                if not in_flight:
                    break
                finished, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    batch = in_flight.pop(fut)
                    try:
                        outcomes = fut.result()
                    except Exception as exc:  # noqa: BLE001 - the whole batch failed: recorded per photo
                        outcomes = [(None, True, exc)] * len(batch)
                    for jobs, (result, ran, error) in zip(batch, outcomes, strict=True):
                        current = P.display(jobs[0].path_bytes)
                        if error is not None and is_disk_full(error):
                            # not the photo's fault, so not its error: it stays to do, and the run stops (every
                            # later write would fail the same way)
                            if full is None:
                                full = disk_full(f"the {stage.name} data of {current}", error)
                                log.error("stage %s stopped: %s", stage.name, full)
                            continue
                        if error is not None:
                            record_failure(jobs, error)
                            rep.errors += len(jobs)
                        else:
                            record_success(jobs[0], jobs[1:], result, ran)
                            if ran:
                                rep.processed += 1
                            else:
                                rep.cached += 1
                            rep.shared += len(jobs) - 1
                        done += len(jobs)
                flush()
        flush(force=True)
        if full is not None:
            self._emit(ProgressEvent(stage.name, done, total, str(full), rep.errors, "cancelled"))
            raise full
        stage.finish(cat)
        rep.seconds = time.perf_counter() - start
        state = "cancelled" if self.cancelled else "finished"
        self._emit(ProgressEvent(stage.name, done, total, current, rep.errors, state))
        log.info("stage %s: %d processed, %d shared, %d cached, %d errors in %.1fs (%s)", stage.name, rep.processed,
                 rep.shared, rep.cached, rep.errors, rep.seconds, state)
        return rep


def _is_expected(exc: Exception) -> bool:
    from .images import PhotoReadError

    return isinstance(exc, PhotoReadError)
