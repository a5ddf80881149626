"""The folder watcher, with real file operations on real (small) JPEGs.

Every test waits on the catalog (polled from the test thread, with a timeout) rather than sleeping for a fixed
time; the watcher runs with a short debounce so each test takes a few seconds.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.ingest.image_cache import ImageCache
from engine.ingest.scanner import content_hash
from engine.ingest.watch import FolderWatcher, WatchUpdate
from engine.library import Library
from engine.storage.catalog import FOLDER_OFFLINE, FOLDER_ONLINE, GONE, OFFLINE, OK

TIMEOUT = 30.0


# -- helpers ----------------------------------------------------------------------------------------------------------

def jpeg_bytes(seed: int, size: tuple[int, int] = (64, 48), quality: int = 85) -> bytes:
    """A small real JPEG with distinct content per seed (random noise)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    data = jpeg_bytes(seed, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def wait_for(condition: Callable[[], object], what: str, timeout: float = TIMEOUT, interval: float = 0.1):
    """Poll until `condition()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Watched:
    """A running watcher plus what it reported."""

    def __init__(self, watcher: FolderWatcher, updates: list[WatchUpdate]):
        self.watcher = watcher
        self.updates = updates

    def idle(self, quiet: float = 0.3) -> None:
        assert self.watcher.wait_idle(timeout=TIMEOUT, quiet=quiet), "watcher did not settle"
        assert self.watcher.error is None, self.watcher.error


@pytest.fixture
def album(tmp_path: Path, library) -> Path:
    """A watched photo folder (added to the library, empty)."""
    a = tmp_path / "album"
    a.mkdir()
    library.add_folder(a)
    return a


@pytest.fixture
def watch(library_dir: Path):
    """Start FolderWatchers on the library (short delays); every one is stopped at the end of the test."""
    started: list[FolderWatcher] = []

    def start(**kw) -> Watched:
        kw.setdefault("debounce", 0.2)
        kw.setdefault("stable_wait", 0.3)
        kw.setdefault("max_delay", 5.0)
        updates: list[WatchUpdate] = []
        w = FolderWatcher(library_dir, open_library=Library, on_update=updates.append, **kw)
        started.append(w)
        w.start(timeout=TIMEOUT)
        assert w.ready and w.error is None, w.error
        return Watched(w, updates)

    yield start
    for w in started:
        w.stop()
    for w in started:
        assert not w.running, "watcher thread did not stop"


def photo(library, path: Path):
    return library.catalog.photo_by_path(path)


def ok_photo(library, path: Path, **expect):
    """The photo at `path` once it is processed (status ok) and matches `expect` (attribute values)."""
    p = photo(library, path)
    if p is None or p.status != OK:
        return None
    if any(getattr(p, k) != v for k, v in expect.items()):
        return None
    return p


def thumb_runs(library, photo_id: int) -> int:
    return library.catalog.stage_rows(photo_id)["thumbnail"]["runs"]


def has_thumb(library, content_hash_: str) -> bool:
    return ImageCache(library.paths).thumb_path(content_hash_).exists()


def processed_in(updates: list[WatchUpdate]) -> int:
    return sum(u.pipeline.stages["thumbnail"].processed for u in updates
               if u.pipeline is not None and "thumbnail" in u.pipeline.stages)


def errors_in(updates: list[WatchUpdate]) -> int:
    n = 0
    for u in updates:
        n += u.scan.errors
        if u.pipeline is not None:
            n += sum(s.errors for s in u.pipeline.stages.values())
    return n


# -- create, modify, rename/move, delete ------------------------------------------------------------------------------

def test_create_photo_in_root_is_catalogued_with_thumbnail(album, library, watch):
    make_jpeg(album / "old.jpg", 1)  # already there: catalogued by the start-up reconcile
    w = watch()
    assert ok_photo(library, album / "old.jpg")
    assert w.updates and w.updates[0].startup

    data = make_jpeg(album / "new.jpg", 2)
    p = wait_for(lambda: ok_photo(library, album / "new.jpg"), "the new photo to be processed")
    assert p.content_hash == content_hash(str(album / "new.jpg"))
    assert p.size == len(data) and (p.width, p.height) == (64, 48)
    assert has_thumb(library, p.content_hash)
    assert thumb_runs(library, p.id) == 1

    # Reading the photos (hashing, decoding) is no event: an idle watcher stays idle.
    w.idle()
    rounds = w.watcher.rounds
    time.sleep(1.0)
    w.idle()
    assert w.watcher.rounds == rounds
    assert errors_in(w.updates) == 0


def test_only_the_smallest_affected_folder_is_rescanned(album, library, watch):
    for i in range(3):
        make_jpeg(album / f"root{i}.jpg", 10 + i)
    (album / "2024" / "may").mkdir(parents=True)
    make_jpeg(album / "2024" / "other.jpg", 20)
    w = watch()
    w.idle()
    n = len(w.updates)

    make_jpeg(album / "2024" / "may" / "x.jpg", 21)
    wait_for(lambda: ok_photo(library, album / "2024" / "may" / "x.jpg"), "the new photo")
    w.idle()
    news = [u for u in w.updates[n:] if u.scan.new]
    assert len(news) == 1
    assert news[0].folders == [str(album / "2024" / "may")]
    assert news[0].scan.seen == 1  # neither the album root nor 2024/ was walked


@pytest.mark.parametrize("how", ["rewrite", "atomic_replace"])
def test_modify_in_place_reprocesses_the_same_record(album, library, watch, how):
    target = album / "edit.jpg"
    make_jpeg(target, 1, size=(64, 48))
    w = watch()
    before = ok_photo(library, target)
    assert before is not None and before.width == 64

    new = jpeg_bytes(2, size=(80, 60))
    if how == "rewrite":
        with open(target, "r+b") as fh:  # same inode, new bytes
            fh.write(new)
            fh.truncate()
    else:  # what editors do: write a hidden temporary file, rename it over the photo
        tmp = album / ".edit.jpg.tmp"
        tmp.write_bytes(new)
        os.replace(tmp, target)

    after = wait_for(lambda: ok_photo(library, target, width=80), "the edited photo to be re-processed")
    assert after.id == before.id
    assert after.content_hash != before.content_hash
    assert after.content_hash == content_hash(str(target))
    assert (after.width, after.height, after.size) == (80, 60, len(new))
    assert has_thumb(library, after.content_hash)
    assert library.catalog.stage_rows(after.id)["thumbnail"]["state"] == "done"
    w.idle()
    assert processed_in(w.updates[1:]) == 1
    assert len(library.photos()) == 1  # the hidden temporary file never reached the catalog
    assert errors_in(w.updates) == 0


def test_rename_and_move_keep_the_record_and_its_derived_data(album, library, watch):
    (album / "a").mkdir()
    (album / "b").mkdir()
    make_jpeg(album / "a" / "x.jpg", 1)
    w = watch()
    orig = ok_photo(library, album / "a" / "x.jpg")
    assert orig is not None and thumb_runs(library, orig.id) == 1

    # Rename within the folder.
    os.rename(album / "a" / "x.jpg", album / "a" / "renamed.jpg")
    p = wait_for(lambda: ok_photo(library, album / "a" / "renamed.jpg"), "the renamed photo")
    assert p.id == orig.id and p.content_hash == orig.content_hash
    assert photo(library, album / "a" / "x.jpg") is None

    # Move to another sub-folder.
    os.rename(album / "a" / "renamed.jpg", album / "b" / "moved.jpg")
    p = wait_for(lambda: ok_photo(library, album / "b" / "moved.jpg"), "the moved photo")
    assert p.id == orig.id and p.name == "moved.jpg"
    assert photo(library, album / "a" / "renamed.jpg") is None

    # Rename the folder that holds it.
    os.rename(album / "b", album / "b2")
    p = wait_for(lambda: ok_photo(library, album / "b2" / "moved.jpg"), "the photo of the renamed folder")
    assert p.id == orig.id

    w.idle()
    assert thumb_runs(library, orig.id) == 1  # never re-processed
    assert processed_in(w.updates[1:]) == 0
    assert sum(u.scan.moved for u in w.updates) == 3
    assert [x.id for x in library.photos()] == [orig.id]
    assert p.width == 64 and p.status == OK
    assert errors_in(w.updates) == 0


def test_delete_marks_gone_and_keeps_the_record(album, library, watch):
    make_jpeg(album / "del.jpg", 1)
    make_jpeg(album / "sub" / "s1.jpg", 2)
    make_jpeg(album / "sub" / "s2.jpg", 3)
    make_jpeg(album / "keep.jpg", 4)
    w = watch()
    ids = {n: ok_photo(library, album / n).id for n in ("del.jpg", "sub/s1.jpg", "sub/s2.jpg", "keep.jpg")}

    (album / "del.jpg").unlink()
    p = wait_for(lambda: (x := photo(library, album / "del.jpg")) and x.status == GONE and x, "the photo to be gone")
    assert p.id == ids["del.jpg"] and p.gone_at is not None
    assert p.width == 64  # what was derived is kept (until the user purges gone photos)

    shutil.rmtree(album / "sub")
    for n in ("sub/s1.jpg", "sub/s2.jpg"):
        p = wait_for(lambda n=n: (x := photo(library, album / n)) and x.status == GONE and x, f"{n} to be gone")
        assert p.id == ids[n]
    w.idle()
    assert photo(library, album / "keep.jpg").status == OK
    assert len(library.photos()) == 4
    assert library.catalog.folders()[0].status == FOLDER_ONLINE


# -- bursts and writers -----------------------------------------------------------------------------------------------

def test_burst_of_1000_files_is_debounced(album, library, watch):
    n = 1000
    blobs = [jpeg_bytes(1000 + i, size=(32, 24), quality=70) for i in range(n)]
    w = watch(debounce=0.3)
    start = time.monotonic()
    burst = album / "burst"
    burst.mkdir()
    for i, data in enumerate(blobs):
        (burst / f"img{i:04d}.jpg").write_bytes(data)

    def all_ok() -> bool:
        return library.catalog.scalar("SELECT COUNT(*) FROM photos WHERE status = 'ok'") == n

    wait_for(all_ok, f"{n} photos to be processed", timeout=900, interval=0.25)  # a hang guard for a busy machine
    elapsed = time.monotonic() - start
    w.idle()
    rounds = w.watcher.rounds
    assert library.catalog.scalar("SELECT COUNT(*) FROM photos") == n
    assert sum(u.scan.new for u in w.updates) == n
    assert processed_in(w.updates) == n  # every photo decoded once
    assert errors_in(w.updates) == 0
    assert 1 <= rounds <= 10, f"{rounds} rounds for a burst of {n} files: debouncing does not work"
    print(f"\nburst of {n}: {rounds} rounds, {elapsed:.1f}s until all processed")


def test_file_still_being_written_is_waited_for(album, library, watch):
    target = album / "slow.jpg"
    data = jpeg_bytes(7, size=(640, 480), quality=95)
    chunks = 8
    interval = 0.25  # between writes: well under stable_wait, so a check never sees the file still
    w = watch(debounce=0.1, stable_wait=1.0)
    n = len(w.updates)

    done = threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            step = -(-len(data) // chunks)
            with open(target, "wb") as fh:
                for i in range(0, len(data), step):
                    fh.write(data[i : i + step])
                    fh.flush()
                    time.sleep(interval)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen_while_writing = []
    statuses = set()
    while not done.is_set():
        p = photo(library, target)
        if p is not None:
            seen_while_writing.append((p.status, p.size))
        time.sleep(0.05)
    t.join()
    assert not failure, failure

    def final():
        p = photo(library, target)
        if p is not None:
            statuses.add(p.status)
        return p if p is not None and p.status == OK else None

    p = wait_for(final, "the written photo to be processed", interval=0.05)
    assert seen_while_writing == [], f"catalogued while still being written: {seen_while_writing}"
    assert "error" not in statuses
    assert p.size == len(data) and p.content_hash == content_hash(str(target))
    assert (p.width, p.height) == (640, 480) and p.last_error is None
    assert has_thumb(library, p.content_hash)
    w.idle()
    assert errors_in(w.updates) == 0
    assert sum(u.scan.new for u in w.updates[n:]) == 1 and sum(u.scan.changed for u in w.updates[n:]) == 0
    assert thumb_runs(library, p.id) == 1


# -- start-up, polling, offline folders ------------------------------------------------------------------------------

def test_startup_reconciles_changes_made_while_not_watching(album, library, watch):
    for name, seed in (("a.jpg", 1), ("b.jpg", 2), ("c.jpg", 3)):
        make_jpeg(album / name, seed)
    first = watch()
    ids = {n: ok_photo(library, album / n).id for n in ("a.jpg", "b.jpg", "c.jpg")}
    first.watcher.stop()
    assert not first.watcher.running

    (album / "a.jpg").unlink()
    os.rename(album / "b.jpg", album / "b-renamed.jpg")
    make_jpeg(album / "c.jpg", 33, size=(72, 54))
    make_jpeg(album / "d.jpg", 4)

    second = watch()  # returns once the start-up reconcile is done
    startup = second.updates[0]
    assert startup.startup
    assert (startup.scan.gone, startup.scan.moved, startup.scan.changed, startup.scan.new) == (1, 1, 1, 1)
    assert photo(library, album / "a.jpg").status == GONE
    b = ok_photo(library, album / "b-renamed.jpg")
    assert b.id == ids["b.jpg"] and thumb_runs(library, b.id) == 1
    c = ok_photo(library, album / "c.jpg")
    assert c.id == ids["c.jpg"] and c.width == 72
    assert ok_photo(library, album / "d.jpg") is not None
    assert errors_in(second.updates) == 0


@pytest.mark.parametrize("via", ["argument", "setting"])
def test_polling_observer_sees_changes(album, library, watch, via):
    make_jpeg(album / "before.jpg", 1)
    if via == "setting":
        library.catalog.set_setting("watch_polling", True)
        w = watch(poll_interval=0.2)
    else:
        w = watch(polling=True, poll_interval=0.2)
    assert w.watcher._watches and all(x.polling for x in w.watcher._watches.values())

    make_jpeg(album / "sub" / "new.jpg", 2)
    p = wait_for(lambda: ok_photo(library, album / "sub" / "new.jpg"), "the polled photo to be processed")
    assert has_thumb(library, p.content_hash)
    (album / "before.jpg").unlink()
    wait_for(lambda: photo(library, album / "before.jpg").status == GONE, "the deleted photo to be gone")
    w.idle()
    assert errors_in(w.updates) == 0


def test_native_observer_is_the_default(album, library, watch):
    w = watch()
    assert w.watcher._watches and not any(x.polling for x in w.watcher._watches.values())


@pytest.mark.parametrize("polling", [False, True])
def test_offline_folder_is_kept_and_comes_back(tmp_path, album, library, watch, polling):
    make_jpeg(album / "p.jpg", 1)
    w = watch(offline_check=0.3, polling=polling, poll_interval=0.2)
    orig = ok_photo(library, album / "p.jpg")

    away = tmp_path / "unplugged"
    os.rename(album, away)  # the drive is unplugged / the share unmounted
    wait_for(lambda: library.catalog.folders()[0].status == FOLDER_OFFLINE, "the folder to be offline")
    p = photo(library, album / "p.jpg")
    assert p.status == OK and p.effective_status == OFFLINE  # offline, never gone
    assert library.catalog.scalar("SELECT COUNT(*) FROM photos WHERE status = 'gone'") == 0
    w.idle()

    os.rename(away, album)  # plugged in again
    wait_for(lambda: library.catalog.folders()[0].status == FOLDER_ONLINE, "the folder to be back online")
    p = ok_photo(library, album / "p.jpg")
    assert p.id == orig.id and p.effective_status == OK and thumb_runs(library, p.id) == 1

    # And it is watched again.
    make_jpeg(album / "after.jpg", 2)
    wait_for(lambda: ok_photo(library, album / "after.jpg"), "a photo added after the folder came back")
    w.idle()
    assert errors_in(w.updates) == 0
    assert photo(library, album / "p.jpg").status == OK


def test_folder_added_while_watching(tmp_path, album, library, watch):
    w = watch()
    second = tmp_path / "second"
    make_jpeg(second / "s.jpg", 1)
    library.add_folder(second)
    w.watcher.refresh()
    wait_for(lambda: ok_photo(library, second / "s.jpg"), "the new folder's photo")
    make_jpeg(second / "t.jpg", 2)
    wait_for(lambda: ok_photo(library, second / "t.jpg"), "a photo created in the new folder")
    w.idle()
    assert errors_in(w.updates) == 0


def test_library_inside_the_album_is_ignored(tmp_path, watch):
    from engine.library import Library

    album = tmp_path / "photos"
    lib_dir = album / ".." / "photos" / "MyLibrary"  # the library is kept inside the watched album
    make_jpeg(album / "a.jpg", 1)
    with Library(lib_dir) as lib:
        lib.add_folder(album)
    updates: list[WatchUpdate] = []
    w = FolderWatcher(lib_dir, open_library=Library, debounce=0.2, on_update=updates.append).start(timeout=TIMEOUT)
    try:
        assert w.error is None
        assert w.wait_idle(timeout=TIMEOUT, quiet=0.5)
        rounds = w.rounds
        make_jpeg(album / "b.jpg", 2)  # the watcher's own thumbnails land in the library: no loop
        with Library(lib_dir) as lib:
            wait_for(lambda: ok_photo(lib, album / "b.jpg"), "the new photo")
            assert w.wait_idle(timeout=TIMEOUT, quiet=0.5)
            assert w.rounds > rounds
            rounds = w.rounds
            time.sleep(1.0)
            assert w.wait_idle(timeout=5, quiet=0.5), "the watcher keeps reacting to its own writes"
            assert w.rounds == rounds
            assert len(lib.photos()) == 2
    finally:
        w.stop()


def test_watch_limit_falls_back_to_polling(album, library, watch, monkeypatch):
    """inotify's max_user_watches reached: the folder is polled instead, and changes are still seen."""
    import errno

    from watchdog.observers import Observer

    import engine.ingest.watch as watch_mod

    class LimitedObserver(Observer):
        def schedule(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watch_mod, "Observer", LimitedObserver)
    w = watch(poll_interval=0.2)
    assert w.watcher._watches and all(x.polling for x in w.watcher._watches.values())
    make_jpeg(album / "x.jpg", 1)
    wait_for(lambda: ok_photo(library, album / "x.jpg"), "the photo in the polled folder")
    w.idle()
    assert errors_in(w.updates) == 0
