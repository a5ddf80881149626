"""Decoding: EXIF orientation on real photos, odd formats and modes, and readable errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.ingest.images import PhotoReadError, classify, decode

from .helpers import mean_abs_diff, photo_array

# How each EXIF orientation stores pixels: the inverse of the transpose that shows them upright.
STORE_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # shown with ROTATE_270 (90° clockwise)
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _with_orientation(upright: Image.Image, orientation: int, path: Path) -> Path:
    stored = upright.transpose(STORE_AS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_on_real_photo(kphotoalbum: Path, tmp_path: Path, orientation: int):
    upright = Image.open(kphotoalbum / "jesper.jpg").convert("RGB")
    path = _with_orientation(upright, orientation, tmp_path / f"o{orientation}.jpg")
    d = decode(str(path), max_side=1440)
    assert d.orientation == orientation
    assert (d.width, d.height) == upright.size  # displayed size, after orientation
    assert d.image.size == upright.size  # small photo: not downscaled
    assert mean_abs_diff(d.image, upright) < 4.0
    # the check can fail: the stored (un-oriented) pixels are far from upright
    stored = Image.open(path)
    if stored.size == upright.size:
        assert mean_abs_diff(stored, upright) > 10.0


def test_large_jpeg_is_decoded_small_and_upright(tmp_path: Path):
    upright = Image.fromarray(photo_array(7, 4000, 3000))
    path = _with_orientation(upright, 6, tmp_path / "big.jpg")
    d = decode(str(path), max_side=1440)
    assert (d.width, d.height) == (4000, 3000)
    assert max(d.image.size) == 1440 and d.image.size == (1440, 1080)
    assert mean_abs_diff(d.image, upright) < 4.0


def test_exif_date_taken(tmp_path: Path):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:07:14 16:20:05"
    p = tmp_path / "dated.jpg"
    Image.fromarray(photo_array(1)).save(p, exif=exif.tobytes())
    assert decode(str(p)).date_taken.isoformat() == "2019-07-14T16:20:05"
    q = tmp_path / "undated.jpg"
    Image.fromarray(photo_array(1)).save(q)
    assert decode(str(q)).date_taken is None


def test_modes_become_rgb(tmp_path: Path):
    base = photo_array(3, 120, 90)
    # CMYK JPEG
    Image.fromarray(base).convert("CMYK").save(tmp_path / "cmyk.jpg")
    # 16-bit greyscale PNG with values above 8 bits: scaled, not clipped to white
    grey16 = (np.linspace(0, 65535, 120 * 90).reshape(90, 120)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    # palette PNG with a transparent index, and an RGBA PNG with alpha
    pal = Image.fromarray(base).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "pal.png", transparency=0)
    rgba = Image.fromarray(base).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0))  # fully transparent: shown over white
    rgba.save(tmp_path / "alpha.png")
    # animated GIF: the first frame
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.fromarray(base).save(tmp_path / "pic.webp")
    Image.fromarray(base).save(tmp_path / "pic.tiff")
    Image.fromarray(base).save(tmp_path / "pic.bmp")

    for name in ("cmyk.jpg", "grey16.png", "pal.png", "alpha.png", "anim.gif", "pic.webp", "pic.tiff", "pic.bmp"):
        d = decode(str(tmp_path / name))
        assert d.image.mode == "RGB", name
    g = np.asarray(decode(str(tmp_path / "grey16.png")).image)
    assert g[0, 0, 0] < 5 and g[-1, -1, 0] > 250 and 100 < g[45, 60, 0] < 160  # a full, scaled range
    assert np.asarray(decode(str(tmp_path / "alpha.png")).image).min() == 255  # transparent -> white
    first = np.asarray(decode(str(tmp_path / "anim.gif")).image)[10, 10]
    assert first[0] > 200 and first[2] < 50  # red first frame
    assert mean_abs_diff(decode(str(tmp_path / "cmyk.jpg")).image, Image.fromarray(base)) < 12


def test_heic_when_plugin_present(tmp_path: Path):
    from engine.ingest import images

    if not images.HEIF_SUPPORTED:  # pillow-heif is a declared dependency; its absence is an install bug
        pytest.fail("pillow-heif is not importable although pyproject.toml declares it")
    p = tmp_path / "pic.heic"
    Image.fromarray(photo_array(5, 64, 48)).save(p, format="HEIF")
    assert classify("pic.heic") == ("image", None)
    assert decode(str(p)).image.size == (64, 48)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("zero.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all", "not an image"),
    ],
)
def test_bad_bytes(tmp_path: Path, name: str, content: bytes, message: str):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(PhotoReadError, match=message):
        decode(str(p))


def test_truncated_and_corrupt(tmp_path: Path):
    good = tmp_path / "good.jpg"
    Image.fromarray(photo_array(2, 800, 600)).save(good, quality=90)
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(PhotoReadError, match="truncated"):
        decode(str(tmp_path / "trunc.jpg"))
    corrupt = bytearray(data)
    corrupt[200:4000] = b"\xff" * 3800  # scribble over tables and scan data
    (tmp_path / "corrupt.jpg").write_bytes(bytes(corrupt))
    with pytest.raises(PhotoReadError):
        decode(str(tmp_path / "corrupt.jpg"))


def test_decompression_bomb(tmp_path: Path):
    p = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(p)  # 400 megapixels in a few kilobytes
    assert p.stat().st_size < 200_000
    with pytest.raises(PhotoReadError, match="too large"):
        decode(str(p))


def test_vanished(tmp_path: Path):
    with pytest.raises(PhotoReadError, match="vanished") as info:
        decode(str(tmp_path / "never-there.jpg"))
    assert info.value.vanished


def test_classify():
    assert classify("a.JPG") == ("image", None)
    assert classify(b"clip.MOV")[0] == "video"
    assert classify("x.cr2")[0] == "raw"
    assert classify("notes.txt") == (None, None)
