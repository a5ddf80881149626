"""Scanning: new, edited, moved, renamed, duplicated, deleted files and unplugged folders, on real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine.library import Library
from engine.storage.catalog import Catalog

from .helpers import write_jpeg


def _runs(lib: Library, photo_id: int, stage: str = "thumbnail") -> int:
    return int(lib.catalog.scalar("SELECT runs FROM stage_status WHERE photo_id = ? AND stage = ?", [photo_id, stage]) or 0)


@pytest.fixture
def album(tmp_path: Path) -> Path:
    root = tmp_path / "album"
    for i in range(4):
        write_jpeg(root / f"p{i}.jpg", seed=i)
    write_jpeg(root / "trip" / "beach.jpg", seed=10)
    (root / "trip" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (root / "trip" / "raw.CR2").write_bytes(b"II*\x00raw")
    (root / "notes.txt").write_text("not a photo")
    (root / ".hidden").mkdir()
    write_jpeg(root / ".hidden" / "secret.jpg", seed=99)
    return root


def _index(lib: Library, album: Path):
    lib.add_folder(album)
    scan = lib.scan()
    lib.process()
    return scan


def test_first_scan(library: Library, album: Path):
    scan = _index(library, album)
    assert (scan.new, scan.unsupported, scan.errors) == (5, 2, 0)
    photos = {p.name: p for p in library.photos()}
    assert set(photos) == {"p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg", "beach.jpg", "clip.mp4", "raw.CR2"}
    assert photos["clip.mp4"].status == "unsupported" and photos["clip.mp4"].kind == "video"
    assert photos["raw.CR2"].status == "unsupported" and photos["raw.CR2"].last_error is None
    assert all(photos[n].status == "ok" for n in ("p0.jpg", "beach.jpg"))
    assert photos["p0.jpg"].width == 320 and photos["p0.jpg"].date_source == "file"
    # unchanged rescan changes nothing
    again = library.scan()
    assert not again.touched and again.hashed == 0


def test_edit_in_place_reprocesses(library: Library, album: Path):
    _index(library, album)
    before = library.catalog.photo_by_path(album / "p1.jpg")
    write_jpeg(album / "p1.jpg", seed=123, width=200, height=100)
    os.utime(album / "p1.jpg", ns=(before.mtime_ns + 10**9, before.mtime_ns + 10**9))
    scan = library.scan()
    assert scan.changed == 1
    mid = library.catalog.photo(before.id)
    assert mid.status == "pending" and mid.content_hash != before.content_hash
    library.process()
    after = library.catalog.photo(before.id)
    assert (after.status, after.width, after.height) == ("ok", 200, 100)
    assert _runs(library, before.id) == 1  # stage status was reset, then the stage ran once more


def test_touch_without_change_is_not_reprocessed(library: Library, album: Path):
    _index(library, album)
    p = library.catalog.photo_by_path(album / "p2.jpg")
    os.utime(album / "p2.jpg", ns=(p.mtime_ns + 5 * 10**9, p.mtime_ns + 5 * 10**9))
    scan = library.scan()
    assert scan.changed == 0 and scan.hashed == 1
    assert library.catalog.photo(p.id).status == "ok"
    assert library.process().work == 0  # nothing to do: no stage ran


def test_move_and_rename_keep_the_record(library: Library, album: Path):
    _index(library, album)
    p0 = library.catalog.photo_by_path(album / "p0.jpg")
    beach = library.catalog.photo_by_path(album / "trip" / "beach.jpg")
    library.catalog.set_user_rotation(p0.id, 90)
    (album / "renamed").mkdir()
    os.rename(album / "p0.jpg", album / "renamed" / "first.jpg")
    os.rename(album / "trip" / "beach.jpg", album / "trip" / "sunny-beach.jpg")
    scan = library.scan()
    assert (scan.moved, scan.new, scan.gone) == (2, 0, 0)
    moved = library.catalog.photo(p0.id)
    assert moved.name == "first.jpg" and moved.path.endswith("renamed/first.jpg")
    assert moved.status == "ok" and moved.user_rotation == 90  # everything derived is kept
    assert library.catalog.photo(beach.id).name == "sunny-beach.jpg"
    assert library.process().work == 0  # no work: the content was processed already


def test_move_seen_by_two_partial_rescans(library: Library, album: Path):
    """A watcher may rescan the destination before the source: the record still follows the file."""
    _index(library, album)
    p3 = library.catalog.photo_by_path(album / "p3.jpg")
    os.rename(album / "p3.jpg", album / "trip" / "p3.jpg")
    first = library.scan([album / "trip"])
    assert first.moved == 1 and first.new == 0
    second = library.scan([album])
    assert second.gone == 0 and second.new == 0
    assert library.catalog.photo(p3.id).path.endswith("trip/p3.jpg")


def test_duplicates_run_stages_once(library: Library, album: Path):
    shutil.copy(album / "p1.jpg", album / "trip" / "copy-of-p1.jpg")
    shutil.copy(album / "p1.jpg", album / "trip" / "another-copy.jpg")
    scan = _index(library, album)
    assert scan.duplicates == 2 and scan.new == 7
    rows = library.catalog.query(
        "SELECT p.name, s.stage, s.runs FROM photos p JOIN stage_status s ON s.photo_id = p.id WHERE p.content_hash = "
        "(SELECT content_hash FROM photos WHERE name = 'p1.jpg')"
    )
    for stage in ("thumbnail", "faces"):  # every stage ran once for the three copies
        mine = [r for r in rows if r["stage"] == stage]
        assert len(mine) == 3 and sum(r["runs"] for r in mine) == 1
    copies = [p for p in library.photos() if p.name.endswith("copy.jpg") or p.name.startswith("copy")]
    assert all(p.status == "ok" and p.width == 320 for p in copies)


def test_delete_marks_gone_and_purge_forgets(library: Library, album: Path):
    _index(library, album)
    p2 = library.catalog.photo_by_path(album / "p2.jpg")
    (album / "p2.jpg").unlink()
    scan = library.scan()
    assert scan.gone == 1
    gone = library.catalog.photo(p2.id)
    assert gone.status == "gone" and gone.gone_at is not None
    assert library.catalog.stage_rows(p2.id)  # derived data kept until the user purges
    # the file comes back: the record is revived with its work
    write_jpeg(album / "restored.jpg", seed=2)
    os.rename(album / "restored.jpg", album / "p2.jpg")
    assert library.scan().revived + library.scan().changed >= 0
    assert library.catalog.photo(p2.id).status == "ok"
    (album / "p2.jpg").unlink()
    library.scan()
    assert library.catalog.purge_gone() == 1
    assert library.catalog.photo(p2.id) is None
    assert library.catalog.scalar("SELECT COUNT(*) FROM stage_status WHERE photo_id = ?", [p2.id]) == 0


def test_unplugged_folder_is_offline_not_gone(library: Library, tmp_path: Path, album: Path):
    _index(library, album)
    n = len(library.photos())
    os.rename(album, tmp_path / "elsewhere")  # the drive is unplugged
    scan = library.scan()
    assert scan.offline == [str(album)] and scan.gone == 0
    assert {p.effective_status for p in library.photos()} == {"offline"}
    st = library.status()
    assert st["photos"]["offline"] == n and st["folders"][0]["status"] == "offline"
    assert library.process().work == 0  # nothing is processed while offline
    # an empty mount point that used to hold photos is offline too
    album.mkdir()
    library.scan()
    assert library.status()["folders"][0]["status"] == "offline"
    album.rmdir()
    os.rename(tmp_path / "elsewhere", album)  # plugged back in
    scan = library.scan()
    assert scan.offline == [] and scan.gone == 0 and scan.new == 0
    assert {p.effective_status for p in library.photos()} == {"ok", "unsupported"}


def test_nested_folders_are_merged(library: Library, album: Path):
    inner = library.add_folder(album / "trip")
    library.scan()
    beach_id = library.catalog.photo_by_path(album / "trip" / "beach.jpg").id
    outer = library.add_folder(album)
    assert [f.id for f in library.folders()] == [outer.id] and outer.id != inner.id
    assert library.add_folder(album / "trip").id == outer.id  # inside a watched folder: already covered
    scan = library.scan()
    assert scan.new == 4 and library.catalog.photo(beach_id).folder_id == outer.id


def test_library_inside_album_is_skipped(tmp_path: Path):
    album = tmp_path / "album"
    write_jpeg(album / "a.jpg", seed=1)
    lib = Library(album / "myvlm-library")
    try:
        lib.add_folder(album)
        lib.scan()
        lib.process()
        names = [p.name for p in lib.photos()]
        assert names == ["a.jpg"]  # its own thumbnails are not photos
    finally:
        lib.close()


def test_two_catalog_connections_see_each_other(library: Library, album: Path):
    _index(library, album)
    other = Catalog(library.paths)
    try:
        assert len(other.photos()) == len(library.photos())
    finally:
        other.close()


def test_partial_scan_targets(library: Library, album: Path):
    """Watcher hints: a parent of a root stands for the root; hidden and deleted sub-folders are handled quietly."""
    _index(library, album)
    write_jpeg(album / "trip" / "new.jpg", seed=50)
    scan = library.scan([album.parent, album / "trip"])  # above the watched folder, plus one inside it
    assert scan.folders == 1 and scan.new == 1
    write_jpeg(album / ".hidden" / "more.jpg", seed=51)
    assert library.scan([album / ".hidden"]).seen == 0  # full scans skip hidden folders, so partial ones do too
    shutil.rmtree(album / "trip")
    scan = library.scan([album / "trip"])  # the folder the hint named is gone
    assert scan.gone == 4 and scan.errors == 0  # beach, new, the video and the RAW file
    assert not [p for p in library.photos() if p.kind == "other"]


def test_library_folder_is_not_a_photo_folder(library: Library):
    with pytest.raises(ValueError, match="library's own folder"):
        library.add_folder(library.paths.root)
    with pytest.raises(ValueError, match="library's own folder"):
        library.add_folder(library.paths.thumbs)


def test_cancelled_scan_marks_nothing_gone(library: Library, album: Path):
    import threading

    _index(library, album)
    cancel = threading.Event()
    cancel.set()
    scan = library.scan(cancel=cancel)
    assert scan.gone == 0 and scan.seen == 0
    assert all(p.status != "gone" for p in library.photos())
