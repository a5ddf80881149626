"""Bad input never stops a run: each bad file gets a clear error in the catalog, and the album is never written."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.library import Library

from .conftest import myvlm
from .helpers import album_snapshot, photo_array, write_jpeg

NON_UTF8 = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not valid UTF-8


def build_bad_album(root: Path) -> Path:
    root.mkdir(parents=True)
    write_jpeg(root / "good.jpg", seed=1)
    good = (root / "good.jpg").read_bytes()
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("Dear diary, this is not a JPEG.")
    (root / "truncated.jpg").write_bytes(write_jpeg(root / "t.tmp.jpg", seed=2, width=800, height=600).read_bytes()[:9000])
    (root / "t.tmp.jpg").unlink()
    corrupt = bytearray(good)
    corrupt[150:2500] = b"\xff" * 2350
    (root / "corrupt.jpg").write_bytes(bytes(corrupt))
    Image.new("1", (20000, 20000)).save(root / "bomb.png")
    Image.fromarray(photo_array(3)).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(root / "sixteen.png")
    Image.fromarray(photo_array(4)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png", transparency=3)
    rgba = Image.fromarray(photo_array(5)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo_array(6, 300, 200)).save(root / "rotated.jpg", exif=exif.tobytes())
    with open(os.path.join(os.fsencode(root), NON_UTF8), "wb") as fh:
        fh.write(write_jpeg(root / "n.tmp.jpg", seed=7).read_bytes())
    (root / "n.tmp.jpg").unlink()
    (root / "loops").mkdir()
    os.symlink("..", root / "loops" / "back-to-album")  # folder loop
    os.symlink("self.jpg", root / "loops" / "self.jpg")  # file link to itself
    os.symlink("nowhere.jpg", root / "loops" / "dangling.jpg")
    write_jpeg(root / "locked.jpg", seed=8)
    os.chmod(root / "locked.jpg", 0)
    (root / "movie.mov").write_bytes(b"\x00\x00\x00\x14ftypqt  ")
    return root


@pytest.fixture
def unreadable(monkeypatch):
    """Make locked.jpg unreadable. As root, permissions do not stop reads, so the OS error is injected instead."""
    if os.geteuid() != 0:
        yield
        return
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        name = os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else ""
        mode = args[0] if args else kwargs.get("mode", "r")
        if name.endswith("locked.jpg") and not set(mode) & set("wax+"):
            raise PermissionError(13, "Permission denied", name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    yield


EXPECTED_ERRORS = {
    "zero.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated",
    "corrupt.jpg": "",
    "bomb.png": "too large",
    "self.jpg": "link loop",
    "dangling.jpg": "broken symbolic link",
    "back-to-album": "symbolic link loop",
    "locked.jpg": "permission denied",
}
EXPECTED_OK = {"good.jpg", "cmyk.jpg", "sixteen.png", "palette.png", "alpha.png", "rotated.jpg", "caf\ufffd-\ufffd.jpg"}


def test_bad_album_end_to_end(tmp_path: Path, unreadable):
    album = build_bad_album(tmp_path / "album")
    before = album_snapshot(album)
    lib = Library(tmp_path / "library")
    try:
        lib.add_folder(album)
        lib.scan()
        report = lib.process()
        photos = {p.name: p for p in lib.photos()}
        for name, fragment in EXPECTED_ERRORS.items():
            assert photos[name].status == "error", (name, photos[name])
            assert fragment in photos[name].last_error, (name, photos[name].last_error)
        for name in EXPECTED_OK:
            assert photos[name].status == "ok", (name, photos[name].last_error)
        assert photos["movie.mov"].status == "unsupported" and photos["movie.mov"].last_error is None
        assert (photos["rotated.jpg"].width, photos["rotated.jpg"].height) == (200, 300)
        assert report.stages["thumbnail"].errors == 5  # the scan itself flagged the links and the locked file
        # the non-UTF-8 name is kept exactly
        odd = photos["caf\ufffd-\ufffd.jpg"]
        assert odd.path_bytes == os.path.join(os.fsencode(album), NON_UTF8)
        assert lib.catalog.photo_by_path(odd.path_bytes).id == odd.id
        errors = {e["path"].rsplit("/", 1)[-1] for e in lib.status()["errors"]}
        assert set(EXPECTED_ERRORS) <= errors
    finally:
        lib.close()
    assert album_snapshot(album) == before  # not one byte or mtime changed


def test_bad_album_via_cli_json(tmp_path: Path):
    album = build_bad_album(tmp_path / "album")
    os.chmod(album / "locked.jpg", 0o644)  # in a subprocess nothing can be injected; root reads it anyway
    before = album_snapshot(album)
    lib = tmp_path / "library"
    out = json.loads(myvlm("index", str(album), "--no-progress", "--json", library=lib).stdout)
    assert out["status"]["photos"]["error"] == len(EXPECTED_ERRORS) - 1
    photos = json.loads(myvlm("photos", "--json", library=lib).stdout)
    by_name = {p["name"]: p for p in photos}
    assert by_name["truncated.jpg"]["status"] == "error" and "truncated" in by_name["truncated.jpg"]["error"]
    assert by_name["caf\ufffd-\ufffd.jpg"]["status"] == "ok"
    assert set(photos[0]) >= {"id", "path", "name", "status", "error", "width", "height", "date_taken", "content_hash"}
    status = json.loads(myvlm("status", "--json", library=lib).stdout)
    assert any("bomb.png" in e["path"] and "too large" in e["error"] for e in status["errors"])
    text = myvlm("status", library=lib).stdout
    assert "zero.jpg: empty file (0 bytes)" in text
    assert album_snapshot(album) == before


def test_vanished_between_scan_and_read(library: Library, tmp_path: Path):
    album = tmp_path / "album"
    write_jpeg(album / "stays.jpg", seed=1)
    write_jpeg(album / "goes.jpg", seed=2)
    library.add_folder(album)
    library.scan()
    (album / "goes.jpg").unlink()
    report = library.process()
    assert report.stages["thumbnail"].errors == 1 and report.stages["thumbnail"].processed == 1
    goes = next(p for p in library.photos() if p.name == "goes.jpg")
    assert goes.status == "error" and "vanished" in goes.last_error
    library.scan()
    assert library.catalog.photo(goes.id).status == "gone"


def test_errors_are_retried_only_when_asked_or_changed(library: Library, tmp_path: Path):
    album = tmp_path / "album"
    album.mkdir()
    (album / "later.jpg").write_bytes(b"")
    library.add_folder(album)
    library.scan()
    assert library.process().stages["thumbnail"].errors == 1
    assert library.process().work == 0  # a known error is not retried on every run
    assert library.process(mode="errors").stages["thumbnail"].errors == 1
    write_jpeg(album / "later.jpg", seed=3)  # the copy finished: the file changed, so it is processed again
    library.scan()
    library.process()
    assert library.photos()[0].status == "ok" and library.photos()[0].last_error is None
