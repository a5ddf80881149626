"""A photo whose pixels cannot be decoded is a per-file error, whatever reads the pixels first.

Pillow reads a PNG's EXIF by decoding its pixels; an error there used to be forgiven as "broken EXIF", leaving a
half-black picture indexed as fine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.ingest.images import PhotoReadError, decode, probe

from .helpers import photo_array, write_jpeg


def _png_bytes(seed: int = 3, **save_kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(photo_array(seed, 320, 240)).save(buf, "PNG", **save_kw)
    return buf.getvalue()


def _flip_image_byte(data: bytes) -> bytes:
    """One flipped byte inside the first IDAT chunk's compressed data (its CRC is left stale, as a bad disk does)."""
    at = data.index(b"IDAT") + 4 + 300
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def test_pillow_itself_rejects_the_damaged_png(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(_flip_image_byte(_png_bytes()))
    with pytest.raises(OSError), Image.open(bad) as img:
        img.load()


def test_decode_and_probe_raise_on_one_flipped_byte(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(_flip_image_byte(_png_bytes()))
    with pytest.raises(PhotoReadError, match="corrupt image data"):
        decode(str(bad))
    with pytest.raises(PhotoReadError, match="corrupt image data"):
        probe(str(bad))


def test_png_exif_after_the_pixels_still_gives_the_orientation(tmp_path: Path):
    """Decoding the pixels before reading the EXIF must not lose an eXIf chunk that follows them."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.png"
    path.write_bytes(_png_bytes(exif=exif.tobytes()))
    photo = decode(str(path))
    assert photo.orientation == 6
    assert (photo.width, photo.height) == (240, 320)
    assert photo.image.size == (240, 320)
    assert probe(str(path))[:3] == (240, 320, 6)


def test_index_marks_the_damaged_png_as_an_error_and_goes_on(tmp_path: Path):
    from engine.library import Library

    album = tmp_path / "album"
    for i in range(3):
        write_jpeg(album / f"good{i}.jpg", seed=i)
    (album / "good.png").write_bytes(_png_bytes(seed=7))
    (album / "bad.png").write_bytes(_flip_image_byte(_png_bytes(seed=8)))
    before = (album / "bad.png").read_bytes()

    with Library(tmp_path / "library") as lib:
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail"])
        by_name = {p.name: p for p in lib.photos()}
        assert by_name["bad.png"].status == "error"
        assert "corrupt image data" in (by_name["bad.png"].last_error or "")
        for name in ("good0.jpg", "good1.jpg", "good2.jpg", "good.png"):
            assert by_name[name].status == "ok", (name, by_name[name].last_error)
        assert by_name["good.png"].width == 320
    assert (album / "bad.png").read_bytes() == before  # the photo is read-only to us


def test_a_good_png_decodes_to_its_pixels(tmp_path: Path):
    path = tmp_path / "good.png"
    path.write_bytes(_png_bytes(seed=5))
    got = np.asarray(decode(str(path)).image, dtype=np.int16)
    want = photo_array(5, 320, 240).astype(np.int16)
    assert np.abs(got - want).max() == 0
