"""The pipeline: progress, cancel, pause, redo modes, a kill -9 mid-run that loses nothing, and the real album."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from engine.ingest.image_cache import ImageCache
from engine.library import Library
from engine.pipeline.runner import Job, Pipeline, ProgressEvent, Stage

from .conftest import ROOT
from .helpers import album_snapshot, mean_abs_diff, photo_array, write_jpeg


@pytest.fixture
def album(tmp_path: Path) -> Path:
    root = tmp_path / "album"
    for i in range(12):
        write_jpeg(root / f"{i:02d}.jpg", seed=i, width=640, height=480)
    return root


def test_progress_events(library: Library, album: Path):
    library.add_folder(album)
    library.scan()
    events: list[ProgressEvent] = []
    report = library.process(progress=events.append, stages=["thumbnail"])
    assert report.stages["thumbnail"].processed == 12
    assert events[-1].state == "finished" and events[-1].done == events[-1].total == 12
    assert {e.stage for e in events} == {"thumbnail"}
    dones = [e.done for e in events]
    assert dones == sorted(dones)  # monotonic
    assert any(e.current.endswith(".jpg") for e in events)
    cache = ImageCache(library.paths)
    for p in library.photos():
        thumb = cache.thumbnail(p.content_hash)
        assert thumb is not None and max(thumb.size) == 256
        assert max(cache.preview(p.fs_path, p.content_hash).size) == 640  # never upscaled


class SlowStage(Stage):
    """A test stage that records what it did; registered like any later stage."""

    name = "slow"
    requires = ("thumbnail",)
    workers = 2

    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.seen: list[int] = []
        self.lock = threading.Lock()

    def process(self, job: Job) -> int:
        time.sleep(self.delay)
        with self.lock:
            self.seen.append(job.photo_id)
        return job.photo_id


def test_cancel_and_resume(library: Library, album: Path):
    library.add_folder(album)
    library.scan()
    library.process()
    stage = SlowStage(delay=0.1)
    pipe = Pipeline(library.catalog, [stage])
    pipe.subscribe(lambda ev: pipe.cancel() if ev.done >= 3 else None)
    report = pipe.run()
    assert report.cancelled and 3 <= report.stages["slow"].processed < 12
    first = set(stage.seen)
    stage2 = SlowStage(delay=0.0)
    report2 = Pipeline(library.catalog, [stage2]).run()
    assert not report2.cancelled
    assert set(stage2.seen).isdisjoint(first) and len(first) + len(stage2.seen) == 12  # no work lost or doubled


def test_pause_holds_new_work(library: Library, album: Path):
    library.add_folder(album)
    library.scan()
    library.process()
    stage = SlowStage(delay=0.02)
    states: list[str] = []
    made = threading.Event()
    holder: dict[str, Pipeline] = {}

    def worker() -> None:  # like the GUI: the pipeline runs on its own thread with its own connection
        with Library(library.paths.root) as lib:
            pipe = Pipeline(lib.catalog, [stage])
            pipe.pause()
            pipe.subscribe(lambda ev: states.append(ev.state))
            holder["pipe"] = pipe
            made.set()
            pipe.run()

    t = threading.Thread(target=worker)
    t.start()
    assert made.wait(10)
    time.sleep(0.5)
    assert stage.seen == [] and "paused" in states  # paused before anything started
    holder["pipe"].resume()
    t.join(10)
    assert len(stage.seen) == 12 and states[-1] == "finished"


def test_redo_all_and_stage_versions(library: Library, album: Path):
    library.add_folder(album)
    library.scan()
    library.process()
    assert library.process().work == 0
    again = library.process(mode="all")
    assert again.stages["thumbnail"].processed == 12
    runs = library.catalog.query("SELECT runs FROM stage_status WHERE stage = 'thumbnail'")
    assert {r["runs"] for r in runs} == {1}  # redo-all starts the count afresh

    class ThumbnailV2(Stage):
        name, version = "thumbnail", 2

        def process(self, job: Job) -> None:
            return None

    rep = Pipeline(library.catalog, [ThumbnailV2()]).run()
    assert rep.stages["thumbnail"].processed == 12  # a new stage version redoes its work everywhere


def test_unexpected_stage_error_is_recorded_and_run_goes_on(library: Library, album: Path):
    library.add_folder(album)
    library.scan()
    library.process()

    class Flaky(Stage):
        name = "flaky"

        def process(self, job: Job) -> None:
            if job.name == "03.jpg":
                raise RuntimeError("model exploded")

    rep = Pipeline(library.catalog, [Flaky()]).run()
    assert (rep.stages["flaky"].processed, rep.stages["flaky"].errors) == (11, 1)
    row = library.catalog.query("SELECT * FROM stage_status WHERE stage = 'flaky' AND state = 'error'")[0]
    assert "RuntimeError: model exploded" in row["error"]


# -- kill -9 in the middle of indexing ---------------------------------------------------------------------------

def _done_count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute("SELECT COUNT(*) FROM stage_status WHERE state = 'done'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_kill_during_indexing_resumes_without_loss(tmp_path: Path):
    album = tmp_path / "album"
    # 160 big, noisy photos, each its own (its corner block's colour): one generated picture and a block per photo,
    # as slow to decode as 160 generated ones and much quicker to make (photo_array takes ~0.3 s at this size)
    base = photo_array(0, 1600, 1200)
    for i in range(160):
        base[:400, :400] = (i, 255 - i, (37 * i) % 256)
        path = album / f"d{i // 40}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(base).save(path, "JPEG", quality=90)
    before = album_snapshot(album)
    library = tmp_path / "library"
    # the thumbnail stage alone: the resume machinery is the same for every stage, and faces would only add minutes
    cmd = [sys.executable, "-m", "myvlm_cli", "--library", str(library), "index", str(album), "--no-progress",
           "--stage", "thumbnail"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _done_count(library / "library.db") < 20:
        assert proc.poll() is None, "indexing finished before it could be killed: make the album bigger"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _done_count(library / "library.db")
    assert 20 <= killed_at < 160

    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lib = Library(library)
    try:
        assert lib.catalog.integrity_check() == "ok"
        photos = lib.photos()
        assert len(photos) == 160 and all(p.status == "ok" for p in photos)
        runs = [r["runs"] for r in lib.catalog.query("SELECT runs FROM stage_status WHERE stage = 'thumbnail'")]
        assert len(runs) == 160
        assert max(runs) == 1  # nothing was decoded twice
        # photos done but not yet committed when killed were taken from their files on disk (runs == 0)
        assert runs.count(0) <= 16
        cache = ImageCache(lib.paths)
        assert all(cache.thumb_path(p.content_hash).exists() for p in photos)
    finally:
        lib.close()
    assert album_snapshot(album) == before


# -- the real album --------------------------------------------------------------------------------------------------

def test_kphotoalbum_demo_indexes_completely(kphotoalbum: Path, tmp_path: Path):
    listed = [img.get("file") for img in ET.parse(kphotoalbum / "index.xml").getroot().iter("image")]
    photos_listed = [f for f in listed if f.lower().endswith(".jpg")]
    assert len(photos_listed) == 24
    before = album_snapshot(kphotoalbum)
    lib = Library(tmp_path / "library")
    try:
        lib.add_folder(kphotoalbum)
        scan = lib.scan()
        lib.process()
        by_name = {p.path.rsplit("/", 1)[-1]: p for p in lib.photos()}
        for name in photos_listed:
            p = by_name[name]
            assert p.status == "ok", (name, p.last_error)
            assert p.width and p.height and p.date_taken
            src = ImageCache(lib.paths).preview(p.fs_path, p.content_hash)
            from PIL import Image

            assert mean_abs_diff(src, Image.open(p.fs_path)) < 4.0
        assert by_name["movie.avi"].status == "unsupported"
        assert scan.errors == 0 and lib.status()["photos"]["error"] == 0
    finally:
        lib.close()
    assert album_snapshot(kphotoalbum) == before


# -- several processes on one library --------------------------------------------------------------------------------

WRITER = """
import sys, time
from engine.storage.catalog import Catalog
from engine.storage.library_folder import LibraryPaths
cat = Catalog(LibraryPaths(__import__('pathlib').Path(sys.argv[1])))
for i in range(300):
    cat.set_setting(f"{sys.argv[2]}-{i}", i)
    cat.photos(limit=50)
print("ok")
"""


def test_concurrent_processes_never_see_database_locked(tmp_path: Path, album: Path):
    library = tmp_path / "library"
    Library(library).close()
    index = subprocess.Popen(
        [sys.executable, "-m", "myvlm_cli", "--library", str(library), "index", str(album), "--no-progress"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(library), f"w{i}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [w.communicate(timeout=180) for w in writers]
    _, index_err = index.communicate(timeout=180)
    for (out, err), w in zip(outs, writers):
        assert w.returncode == 0 and out.strip() == "ok", err
    assert index.returncode == 0, index_err
    lib = Library(library)
    try:
        assert lib.catalog.scalar("SELECT COUNT(*) FROM settings") == 900
        assert len(lib.photos(status="ok")) == 12
    finally:
        lib.close()
