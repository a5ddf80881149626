"""The pipeline: runs registered stages over the photos that still need them, resumably, with progress.

Stage work happens on a small thread pool; every result is committed by the thread that called `run()` (the one
writer). Status is persisted per photo and stage, so after a crash or a kill a new run picks up exactly what is
missing. Photos with identical content share one run of each stage.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidInput, UserError
from engine.progress import Progress
from engine.storage import claims
from engine.storage import paths as P
from engine.storage.catalog import Catalog, DiskFull, disk_full, is_disk_full

log = logging.getLogger(__name__)

MISSING, ALL, ERRORS = "missing", "all", "errors"
COMMIT_INTERVAL_S = 0.25
CLAIM_CHUNK_MIN = 4   # content groups claimed at a time (at least)
CLAIM_WAIT_S = 0.5    # how often a run waiting for another run's photos looks again


class StageUnavailable(UserError, RuntimeError):
    """Raised by a stage's `before_work` when it finds only on starting that it cannot run here (its model's files
    are on disk but do not load): the stage is skipped with this sentence, as if `unavailable()` had said it."""


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
                raise InvalidInput(f"unknown stage(s): {', '.join(sorted(unknown))}; known: {', '.join(self.names())}")
        return [f() for n, f in self._factories if wanted is None or n in wanted]


@dataclass(frozen=True)
class ProgressEvent(Progress):
    """What a progress bar (CLI or GUI) shows of one stage: a Progress whose `phase` is the stage (`stage`) and
    `detail` the photo in hand (`current`). `state`: running, paused, finished, cancelled or unavailable (then
    `current` says why)."""

    errors: int = 0
    state: str = "running"

    @property
    def stage(self) -> str:
        return self.phase

    @property
    def current(self) -> str:
        return self.detail


@dataclass
class StageReport:
    processed: int = 0
    shared: int = 0
    cached: int = 0
    errors: int = 0
    seconds: float = 0.0
    unavailable: str | None = None  # why the stage could not run here (then nothing was attempted)
    elsewhere: int = 0  # photos another run on the same library did meanwhile (this run waited for them)


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
    """Runs stages in order. `cancel()` (or setting the `cancel` event it was made with) stops after the photos in
    flight; `pause()`/`resume()` hold new work."""

    def __init__(self, catalog: Catalog, stages: list[Stage], cancel: threading.Event | None = None):
        self.catalog = catalog
        self.stages = stages
        self._cancel = cancel if cancel is not None else threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._listeners: list[ProgressCallback] = []
        self.owner = claims.ClaimOwner.for_this_run()  # names this run in the claims it makes

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
            raise InvalidInput(f"mode must be one of missing, all, errors (got {mode!r})")
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
        run = _StageRun(self, stage, rep, total, retry_errors, reuse)
        try:
            run.until_done(rows)
        except StageUnavailable as exc:  # its model did not load: skipped like an unavailable stage, with why
            rep.unavailable = str(exc)
            log.warning("stage %s skipped: %s", stage.name, exc)
            self._emit(ProgressEvent(stage.name, 0, 0, str(exc), 0, "unavailable"))
            return rep
        finally:
            run.release_claims()
        if run.full is not None:
            self._emit(ProgressEvent(stage.name, run.done, total, str(run.full), rep.errors, "cancelled"))
            raise run.full
        stage.finish(cat)
        rep.seconds = time.perf_counter() - start
        if not self.cancelled:
            rep.elsewhere = max(0, total - (rep.processed + rep.shared + rep.cached + rep.errors))
        state = "cancelled" if self.cancelled else "finished"
        self._emit(ProgressEvent(stage.name, run.done, total, run.current, rep.errors, state))
        log.info("stage %s: %d processed, %d shared, %d cached, %d errors, %d done by another run in %.1fs (%s)",
                 stage.name, rep.processed, rep.shared, rep.cached, rep.errors, rep.elsewhere, rep.seconds, state)
        return rep


class _StageRun:
    """One stage of one pipeline run: claims photos in chunks, works on them, commits, and waits at the end for
    photos another run is doing (engine/storage/claims.py), so the stage is done everywhere when it returns."""

    def __init__(self, pipeline: Pipeline, stage: Stage, rep: StageReport, total: int, retry_errors: bool,
                 reuse: bool):
        self.pipe = pipeline
        self.cat = pipeline.catalog
        self.stage = stage
        self.rep = rep
        self.total = total
        self.retry_errors = retry_errors
        self.reuse = reuse
        self.owner = pipeline.owner
        self.done = 0
        self.current = ""
        self.full: DiskFull | None = None   # the disk filled up: stop, keep what is stored, leave the rest to do
        self.pending_commits: list[Callable[[], None]] = []
        self.last_commit = time.perf_counter()
        self.last_renew = time.monotonic()
        self.attempted: set[int] = set()     # photos this run worked on (or shared): never twice in one run
        self.unclaimed: deque[list[Job]] = deque()   # content groups still to claim, this pass
        self.ready: deque[list[Job]] = deque()       # claimed by this run, not started yet
        self.elsewhere: set[int] = set()     # claimed by another live run, this pass

    # -- passes -----------------------------------------------------------------------------------------------------

    def until_done(self, rows: list) -> None:
        """Passes over what is still to do, until nothing is left that this run may do (or it is cancelled)."""
        while True:
            rows = [r for r in rows if r["id"] not in self.attempted]
            if not rows:
                return
            self.done = max(self.done, self.total - len(rows))
            self._pass(rows)
            if not self.elsewhere or self.pipe.cancelled or self.full is not None:
                return
            # the rest is being done by another run: wait for it (or for its claims to go stale, then do them)
            self.pipe._emit(ProgressEvent(self.stage.name, self.done, self.total,
                                          f"{len(self.elsewhere)} photo(s) being done by another indexing run",
                                          self.rep.errors))
            if self.pipe._cancel.wait(CLAIM_WAIT_S):
                return
            rows = self.cat.pending_for_stage(self.stage.name, self.stage.version, self.stage.requires,
                                              retry_errors=self.retry_errors)

    def _pass(self, rows: list) -> None:
        cat, stage = self.cat, self.stage
        self.elsewhere = set()
        groups: dict[str, list[Job]] = defaultdict(list)
        for r in rows:
            groups[r["content_hash"]].append(Job(r["id"], r["path_bytes"], r["content_hash"], r["name"]))
        # Content already processed under another path: share without running the stage.
        work: list[list[Job]] = []
        for h, jobs in groups.items():
            source = cat.done_for_hash(stage.name, stage.version, h)
            if source is not None:
                self.pending_commits.append(functools.partial(self._apply_share, jobs, source))
                self.attempted.update(j.photo_id for j in jobs)
                self.done += len(jobs)
                self.rep.shared += len(jobs)
            else:
                work.append(jobs)
        self.flush(force=True)
        stage.before_work(cat, [j for jobs in work for j in jobs])
        self.unclaimed = deque(work)
        self.pipe._emit(ProgressEvent(stage.name, self.done, self.total, "", self.rep.errors))
        self._work()

    def _work(self) -> None:
        stage, pipe = self.stage, self.pipe
        in_flight: dict[Future, list[list[Job]]] = {}
        exhausted = False
        with ThreadPoolExecutor(max(1, stage.workers), thread_name_prefix=f"stage-{stage.name}") as pool:
            while True:
                while (not exhausted and not pipe.cancelled and self.full is None
                       and len(in_flight) < 2 * max(1, stage.workers)):
                    if not pipe._running.is_set():
                        if not in_flight:
                            self._give_back_ready()   # a paused run holds no photo another run could do
                            self.flush(force=True)
                            pipe._emit(ProgressEvent(stage.name, self.done, self.total, self.current,
                                                     self.rep.errors, "paused"))
                            while not pipe._running.wait(CLAIM_WAIT_S) and not pipe.cancelled:
                                pass   # paused: a cancel event set from outside ends the wait too
                            continue
                        break
                    batch = self._take(max(1, stage.batch_size))
                    if not batch:
                        exhausted = True
                        break
                    in_flight[pool.submit(self._run_batch, [jobs[0] for jobs in batch])] = batch
                if not in_flight:
                    break
                finished, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    batch = in_flight.pop(fut)
                    try:
                        outcomes = fut.result()
                    except Exception as exc:  # noqa: BLE001 - the whole batch failed: recorded per photo
                        outcomes = [(None, True, exc)] * len(batch)
                    for jobs, outcome in zip(batch, outcomes, strict=True):
                        self._record(jobs, *outcome)
                self._renew_claims()
                self.flush()
        self.flush(force=True)

    # -- claims -----------------------------------------------------------------------------------------------------

    def _take(self, n: int) -> list[list[Job]]:
        """Up to `n` content groups claimed by this run, claiming the next chunk when none are left."""
        while len(self.ready) < n and self.unclaimed:
            chunk = [self.unclaimed.popleft() for _ in range(min(self._chunk_size(), len(self.unclaimed)))]
            self.pending_commits.append(functools.partial(self._claim, chunk))
            self.flush(force=True)   # one write transaction: the results so far, and the claim
        return [self.ready.popleft() for _ in range(min(n, len(self.ready)))]

    def _chunk_size(self) -> int:
        """Small enough that two runs share the work, big enough that claiming costs little."""
        return max(CLAIM_CHUNK_MIN, 2 * max(1, self.stage.workers) * max(1, self.stage.batch_size))

    def _claim(self, chunk: list[list[Job]]) -> None:
        ids = [j.photo_id for jobs in chunk for j in jobs]
        mine, theirs = claims.claim(self.cat, self.owner, self.stage.name, self.stage.version, ids,
                                    self.retry_errors)
        for jobs in chunk:
            own = [j for j in jobs if j.photo_id in mine]
            if own:
                self.ready.append(own)
                self.attempted.update(j.photo_id for j in own)
            self.elsewhere.update(j.photo_id for j in jobs if j.photo_id in theirs)
            self.done += sum(1 for j in jobs if j.photo_id not in mine and j.photo_id not in theirs)

    def _give_back_ready(self) -> None:
        if not self.ready:
            return
        ids = [j.photo_id for jobs in self.ready for j in jobs]
        self.attempted.difference_update(ids)
        self.unclaimed.extendleft(reversed(self.ready))
        self.ready.clear()
        self.pending_commits.append(lambda: claims.release(self.cat, self.owner, self.stage.name, ids))

    def _renew_claims(self) -> None:
        if time.monotonic() - self.last_renew >= claims.RENEW_EVERY_S:
            self.last_renew = time.monotonic()
            self.pending_commits.append(lambda: claims.renew(self.cat, self.owner))
            self.flush(force=True)

    def release_claims(self) -> None:
        """Whatever happened, this run holds no claim of this stage any more (a dead process's are taken over)."""
        try:
            with self.cat.write():
                claims.release(self.cat, self.owner, self.stage.name)
        except Exception:  # noqa: BLE001 - e.g. the disk is full: the claims expire, and go with this process
            log.warning("could not give back the %s claims of this run", self.stage.name, exc_info=True)

    # -- work and commits -------------------------------------------------------------------------------------------

    def _run_batch(self, leaders: list[Job]) -> list[tuple[Any, bool, Exception | None]]:
        """(result, ran, error) per leader; a batch stage processes the uncached ones together."""
        stage = self.stage
        out: list[tuple[Any, bool, Exception | None] | None] = [None] * len(leaders)
        todo = []
        for i, job in enumerate(leaders):
            try:
                cached = stage.cached(job) if self.reuse else None
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

    def _record(self, jobs: list[Job], result: Any, ran: bool, error: Exception | None) -> None:
        rep = self.rep
        self.current = P.display(jobs[0].path_bytes)
        if error is not None and is_disk_full(error):
            # not the photo's fault, so not its error: it stays to do, and the run stops (every later write would
            # fail the same way)
            if self.full is None:
                self.full = disk_full(f"the {self.stage.name} data of {self.current}", error)
                log.error("stage %s stopped: %s", self.stage.name, self.full)
            return
        if error is not None:
            self._record_failure(jobs, error)
            rep.errors += len(jobs)
        else:
            self.pending_commits.append(functools.partial(self._apply_success, jobs[0], jobs[1:], result, ran))
            if ran:
                rep.processed += 1
            else:
                rep.cached += 1
            rep.shared += len(jobs) - 1
        self.done += len(jobs)

    def _record_failure(self, jobs: list[Job], exc: Exception) -> None:
        stage = self.stage
        message = str(exc) or type(exc).__name__
        if not _is_expected(exc):
            log.error("stage %s failed on %s", stage.name, P.display(jobs[0].path_bytes), exc_info=exc)
            message = f"{stage.name} failed: {type(exc).__name__}: {exc}"

        def apply() -> None:
            for j in jobs:
                stage.fail(self.cat, j, exc)
                self.cat.mark_stage(j.photo_id, stage.name, stage.version, "error", message, ran=True)
            claims.release(self.cat, self.owner, stage.name, [j.photo_id for j in jobs])
        self.pending_commits.append(apply)

    def _apply_success(self, leader: Job, followers: list[Job], result: Any, ran: bool) -> None:
        cat, stage = self.cat, self.stage
        if cat.stage_done(leader.photo_id, stage.name, stage.version):
            # another run did it while this one worked (its claim had gone stale): its result stands
            log.info("stage %s of %s was done by another run meanwhile", stage.name, P.display(leader.path_bytes))
        else:
            stage.commit(cat, leader, result)
            cat.mark_stage(leader.photo_id, stage.name, stage.version, "done", ran=ran)
        self._apply_share(followers, leader.photo_id)
        claims.release(cat, self.owner, stage.name, [leader.photo_id] + [f.photo_id for f in followers])

    def _apply_share(self, jobs: list[Job], source: int) -> None:
        cat, stage = self.cat, self.stage
        for j in jobs:
            if cat.stage_done(j.photo_id, stage.name, stage.version):
                continue  # shared or done by another run meanwhile
            stage.share(cat, source, j)
            cat.mark_stage(j.photo_id, stage.name, stage.version, "done", ran=False)

    def flush(self, force: bool = False) -> None:
        if not self.pending_commits or (not force and time.perf_counter() - self.last_commit < COMMIT_INTERVAL_S):
            return
        with self.cat.write():
            for fn in self.pending_commits:
                fn()
        self.pending_commits.clear()
        self.last_commit = time.perf_counter()
        self.pipe._emit(ProgressEvent(self.stage.name, self.done, self.total, self.current, self.rep.errors))


def _is_expected(exc: Exception) -> bool:
    from engine.ingest.images import PhotoReadError

    return isinstance(exc, PhotoReadError)
