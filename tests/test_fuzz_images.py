"""Fuzzing photo reading: mutated real photos (and the same pixels as PNG, WebP, TIFF, GIF, HEIC) either decode to a
valid result or fail with a PhotoReadError, the per-file error the thumbnail stage records in the catalog; never
another exception, never a hang, never a memory blow-up. Broken EXIF never loses a photo; decompression bombs are
refused from their header.

The mutations (tests/fuzz_media.py) are structure-aware: bit flips, truncation, JPEG segment / PNG chunk / RIFF chunk
/ ISO-BMFF box deletion, duplication, swapping and lying lengths, hand-built EXIF blocks with wrong IFD offsets, huge
counts, IFDs that point at themselves, bogus orientation, GPS and date values, random bytes in APP1, TIFF IFD entries
rewritten, and headers claiming billions of pixels.

CI runs a bounded, derandomized number of examples with no example database (reproducible, nothing written).
`MYVLM_FUZZ_SCALE=50 pytest tests/test_fuzz_images.py` runs fifty times as many; scripts/fuzz_images.py is the atheris
(libFuzzer, coverage-guided) harness for long local runs over the same code.
"""

from __future__ import annotations

import faulthandler
import io
import os
import resource
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.domain.search.places import read_gps
from engine.ingest import images
from engine.ingest.image_cache import PREVIEW_SIZE, THUMB_SIZE, ImageCache
from engine.ingest.images import (
    MAX_FULL_DECODE_PIXELS,
    MAX_PIXELS,
    PhotoReadError,
    decode,
    probe,
)
from engine.library import Library
from engine.storage.library_folder import LibraryPaths

from . import fuzz_media as M
from .helpers import album_snapshot

SCALE = float(os.environ.get("MYVLM_FUZZ_SCALE", "1"))
# No per-example deadline: on a busy machine a slow example is not a bug (speed is measured in bench/); a hang is,
# and the watchdog below catches it, in C too.
FUZZ = settings(database=None, derandomize=True, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MEMORY_BUDGET_MB = 700  # growth of the process's peak memory one example may cause
HANG_SECONDS = 120  # a watchdog: a decoder stuck in C never returns to Python, where a deadline would be checked

EXT = {"PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "TIFF_DEFLATE": ".tiff", "GIF": ".gif", "HEIF": ".heic",
       "PROGRESSIVE": ".jpg"}


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


# ----------------------------------------------------------------------------------------------------------------------
# Seeds: real photos with real EXIF, and other formats made from one of them
# ----------------------------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "corrupt EXIF" notes: expected here


class Seeds(dict):
    """{file name: bytes}; shown by name only when hypothesis prints a failing example."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed photos>"


@pytest.fixture(scope="module")
def seeds(test_data: Path) -> Seeds:
    """{file name: bytes}; the extension tells the format, as it would in an album."""
    kpa, fr = test_data / "kphotoalbum", test_data / "face_recognition"
    out = Seeds()
    out |= {name: (kpa / name).read_bytes() for name in ("jesper.jpg", "snow.jpg", "anne_helene.jpg")}
    out["obama.jpg"] = (fr / "obama.jpg").read_bytes()  # a camera's EXIF with 17 entries
    out["32bit.png"] = (fr / "32bit.png").read_bytes()  # RGBA PNG
    photo = Image.open(kpa / "jesper.jpg")
    for fmt, data in M.encode_variants(photo).items():
        out[f"seed{EXT[fmt]}" if fmt != "TIFF_DEFLATE" else "seed_deflate.tiff"] = data
    small = photo.convert("RGB").resize((200, 133))
    exif = photo.getexif()
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (57.0, 43.0, 30.5), 3: "E", 4: (10.0, 35.0, 12.0)})  # Skagen
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=85, exif=exif.tobytes())
    out["gps.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=85, progressive=True, exif=exif.tobytes())
    out["progressive.jpg"] = buf.getvalue()
    return out


SEED_NAMES = ("jesper.jpg", "snow.jpg", "anne_helene.jpg", "obama.jpg", "32bit.png", "gps.jpg", "progressive.jpg",
              "seed.png", "seed.webp", "seed.tif", "seed_deflate.tiff", "seed.gif", "seed.heic")
EXIF_CARRIERS = ("jesper.jpg", "obama.jpg", "gps.jpg", "progressive.jpg", "32bit.png", "seed.png", "seed.webp")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-images")


# ----------------------------------------------------------------------------------------------------------------------
# Strategies: lists of mutation recipes for tests/fuzz_media.apply
# ----------------------------------------------------------------------------------------------------------------------

fracs = st.floats(0, 1, allow_nan=False)
u32 = st.one_of(st.sampled_from([0, 1, 2, 3, 13, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))
small_dims = st.integers(0, 4096)
huge_dims = st.sampled_from([20_000, 65_535, 100_000, 2**24, 2**31, 2**32 - 1])

byte_ops = st.one_of(
    st.tuples(st.just("flip"), fracs, st.integers(0, 7)),
    st.tuples(st.just("set"), fracs, st.integers(0, 255)),
    st.tuples(st.just("truncate"), fracs),
    st.tuples(st.just("delete"), fracs, st.integers(1, 4096)),
    st.tuples(st.just("duplicate"), fracs, st.integers(1, 4096)),
    st.tuples(st.just("insert"), fracs, st.binary(min_size=1, max_size=64)),
)
part_index = st.integers(0, 63)
part_ops = st.one_of(
    st.tuples(st.just("part_delete"), part_index),
    st.tuples(st.just("part_duplicate"), part_index),
    st.tuples(st.just("part_swap"), part_index, part_index),
    st.tuples(st.just("part_garbage"), part_index, st.binary(max_size=256), st.booleans()),
    st.tuples(st.just("part_length"), part_index, u32),
)


def _rationals(pairs: list[tuple[int, int]]) -> bytes:
    return b"".join(M.struct.pack("<II", a & 0xFFFFFFFF, b & 0xFFFFFFFF) for a, b in pairs)


counts = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 20, 0x7FFFFFFF, 0xFFFFFFFF]), st.integers(0, 2**32 - 1))
types = st.sampled_from(M.TIFF_TYPES + M.BOGUS_TYPES)
# entries a camera writes, with values a broken camera or editor writes
orientation_entries = st.builds(
    lambda typ, count, v: (M.TAGS["orientation"], typ, count, M.value_bytes(typ, v)),
    st.sampled_from([3, 3, 4, 2, 5, 12, 0]), st.sampled_from([1, 1, 2, 0, 0xFFFFFFFF]),
    st.one_of(st.integers(1, 8), st.sampled_from(M.BAD_ORIENTATIONS)))
date_entries = st.builds(
    lambda tag, typ, count, text: (tag, typ, count if count is not None else len(text.encode()) + 1,
                                   M.value_bytes(2, text)),
    st.sampled_from([M.TAGS["datetime"], M.TAGS["date_original"]]), st.sampled_from([2, 2, 7, 1, 3]),
    st.one_of(st.none(), counts), st.one_of(st.sampled_from(M.BAD_DATES), st.text(max_size=30)))
gps_entries = st.builds(
    lambda tag, count, pairs: (tag, 5, count if count is not None else len(pairs), _rationals(pairs)),
    st.sampled_from([2, 4, 6, 2, 4]), st.one_of(st.none(), counts),
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 60, 100, 2**32 - 1])), max_size=4))
gps_refs = st.builds(lambda tag, ref: (tag, 2, 2, ref), st.sampled_from([1, 3]),
                     st.sampled_from([b"N\x00", b"S\x00", b"W\x00", b"\xff\x00", b"", b"NORTH"]))
pointer_entries = st.builds(lambda tag, typ, count, where: (tag, typ, count, where),
                            st.sampled_from(M.IFD_POINTERS), st.sampled_from([4, 4, 13, 3, 2]), st.sampled_from([1, 1, 2, 0xFFFFFFFF]),
                            st.sampled_from(["sub", "sub", "self", "ifd0", "zero", "past_end", "huge", "odd"]))
random_entries = st.tuples(st.one_of(st.sampled_from(sorted(M.TAGS.values())), st.integers(0, 0xFFFF)), types,
                           counts, st.one_of(st.binary(max_size=48), st.sampled_from(M.OFFSETS),
                                             st.integers(0, 2**32 - 1)))
ifd_entries = st.one_of(orientation_entries, date_entries, pointer_entries, random_entries)
sub_entries = st.one_of(date_entries, gps_entries, gps_refs, pointer_entries, random_entries)
tiff_blocks = st.builds(M.build_tiff, st.lists(ifd_entries, max_size=8),
                        st.one_of(st.none(), st.sampled_from(M.OFFSETS)), st.booleans(),
                        st.lists(sub_entries, max_size=6))
exif_ops = st.tuples(st.just("exif"), tiff_blocks)
app1_ops = st.tuples(st.just("app1_random"), st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(lambda b: b"Exif\x00\x00" + b),
    st.binary(max_size=256).map(lambda b: b"http://ns.adobe.com/xap/1.0/\x00" + b),
    st.tuples(tiff_blocks, fracs).map(lambda t: b"Exif\x00\x00" + t[0][: max(1, int(len(t[0]) * t[1]))]),
))
dimension_ops = st.tuples(st.just("dimensions"), st.one_of(small_dims, huge_dims), st.one_of(small_dims, huge_dims))
tiff_entry_ops = st.tuples(st.just("tiff_entry"), st.integers(0, 40), st.sampled_from(["type", "count", "value"]),
                           u32)
any_op = st.one_of(byte_ops, part_ops, exif_ops, app1_ops, dimension_ops, tiff_entry_ops)


# ----------------------------------------------------------------------------------------------------------------------
# The property
# ----------------------------------------------------------------------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _clear(exc: PhotoReadError) -> None:
    """A message a user can read: some text, one line, no traceback."""
    msg = str(exc)
    assert msg.strip() and "Traceback" not in msg and len(msg) < 2000, msg


def read_all_ways(path: Path, cache: ImageCache, must_decode: bool = False) -> images.DecodedPhoto | None:
    """Thumbnail + preview (one decode, as the thumbnail stage does), the header probe and the GPS reader."""
    peak = _peak_mb()
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        key = "0" * 32
        for f in (cache.thumb_path(key), cache.preview_path(key)):
            f.unlink(missing_ok=True)
        try:
            made = cache.make(str(path), key)
        except PhotoReadError as exc:
            _clear(exc)
            assert not must_decode, f"a good photo was lost: {exc}"
            made = None
            assert not cache.thumb_path(key).exists() and not cache.preview_path(key).exists()
            event(f"{path.suffix} refused: {str(exc).split(':')[0]}")  # see --hypothesis-show-statistics
        else:
            event(f"{path.suffix} decoded")
        try:
            header = probe(str(path))
        except PhotoReadError as exc:
            _clear(exc)
            assert made is None, f"decoded, yet the header probe failed: {exc}"
            header = None
        if made is not None:
            thumb, preview = Image.open(cache.thumb_path(key)), Image.open(cache.preview_path(key))
            assert thumb.mode == preview.mode == "RGB"
            assert 0 < max(thumb.size) <= THUMB_SIZE and 0 < max(preview.size) <= PREVIEW_SIZE
            assert made.width > 0 and made.height > 0 and 1 <= made.orientation <= 8
            assert made.date_source in ("exif", "file")
            assert 1800 < int(made.date_taken[:4]) < 2200
            if header is not None:
                w, h, orientation, fmt, taken = header
                assert (w, h, orientation, fmt) == (made.width, made.height, made.orientation, made.format)
                assert (taken is not None) == (made.date_source == "exif")
        gps = read_gps(str(path))
        if gps is not None:
            lat, lon = gps
            assert -90 <= lat <= 90 and -180 <= lon <= 180
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert _peak_mb() - peak < MEMORY_BUDGET_MB, f"peak memory grew by {_peak_mb() - peak:.0f} MB"
    return made


@pytest.fixture(scope="module")
def cache(workdir: Path) -> ImageCache:
    return ImageCache(LibraryPaths(workdir / "library"))


def _write(workdir: Path, name: str, data: bytes) -> Path:
    path = workdir / f"mutated{Path(name).suffix}"
    path.write_bytes(data)
    return path


@settings(FUZZ, max_examples=n(200))
@given(name=st.sampled_from(SEED_NAMES), ops=st.lists(any_op, min_size=1, max_size=4))
@example(name="jesper.jpg", ops=[("truncate", 0.5)])
@example(name="seed.heic", ops=[("truncate", 0.7)])
@example(name="seed.png", ops=[("dimensions", 100_000, 100_000)])
@example(name="progressive.jpg", ops=[("dimensions", 17_000, 17_000)])
@example(name="seed.tif", ops=[("tiff_entry", 7, "value", 0xFFFFFFF0)])
@example(name="seed.webp", ops=[("part_length", 1, 0xFFFFFFFF)])
def test_mutated_photos_decode_or_fail_clearly(seeds, workdir, cache, name, ops):
    read_all_ways(_write(workdir, name, M.apply(seeds[name], ops)), cache)


@settings(FUZZ, max_examples=n(100))
@given(name=st.sampled_from(EXIF_CARRIERS), tiff=tiff_blocks)
@example(name="jesper.jpg", tiff=M.build_tiff([(0x0112, 3, 1, M.value_bytes(3, 6)), (0x8769, 4, 1, "ifd0"),
                                               (0x8825, 4, 1, "self")], next_ifd="self"))  # IFDs in a loop
@example(name="gps.jpg", tiff=M.build_tiff([(0x8825, 4, 1, "sub")], sub_entries=[
    (1, 2, 2, b"S\x00"), (2, 5, 0xFFFFFFFF, _rationals([(1, 0), (5, 0), (7, 0)])), (4, 5, 3, b"")]))
@example(name="obama.jpg", tiff=M.build_tiff([(0x0112, 3, 0x7FFFFFFF, "past_end"), (0x0132, 2, 20, "huge")]))
def test_broken_exif_never_loses_the_photo(seeds, workdir, cache, name, tiff):
    """Only the EXIF is wrong: the photo must still decode (orientation 1..8, a plausible date or none)."""
    made = read_all_ways(_write(workdir, name, M.apply(seeds[name], [("exif", tiff)])), cache, must_decode=True)
    assert made is not None


@settings(FUZZ, max_examples=n(30))
@given(name=st.sampled_from(("jesper.jpg", "progressive.jpg", "seed.png", "32bit.png", "seed.gif", "seed.tif",
                             "seed_deflate.tiff", "seed.webp")),
       w=st.integers(20_000, 65_535), h=st.integers(20_000, 65_535))  # JPEG and GIF sizes are 16-bit
def test_decompression_bombs_are_refused_from_the_header(seeds, workdir, name, w, h):
    """A header claiming more than the limit is refused before any pixel is decoded: fast, and no memory."""
    path = _write(workdir, name, M.apply(seeds[name], [("dimensions", w, h)]))
    peak = _peak_mb()
    assert w * h > MAX_PIXELS
    try:
        decode(str(path))
    except PhotoReadError as exc:
        _clear(exc)
        if name != "seed.webp":  # a WebP canvas that disagrees with its frame is unreadable before its size counts
            assert "too large" in str(exc), str(exc)
    else:
        pytest.fail(f"{w}×{h} decoded")
    assert _peak_mb() - peak < 150


def test_pixel_limits_follow_the_decoder(seeds, workdir):
    """Pillow's own guard is aligned with ours; sequential JPEGs (decoded at 1/8 scale) may be as large as a stitched
    panorama, formats decoded at full size stop lower; a 102-megapixel medium-format photo is not a bomb."""
    assert Image.MAX_IMAGE_PIXELS >= MAX_PIXELS > MAX_FULL_DECODE_PIXELS >= 102_000_000
    cases = [("jesper.jpg", 17_000, 17_000, None), ("progressive.jpg", 17_000, 17_000, "too large"),
             ("seed.png", 12_000, 11_000, "too large"), ("jesper.jpg", 30_000, 30_000, "too large"),
             ("jesper.jpg", 11_648, 8_736, None)]
    for name, w, h, expected in cases:
        path = _write(workdir, name, M.apply(seeds[name], [("dimensions", w, h)]))
        peak = _peak_mb()
        try:
            decode(str(path))
            message = None
        except PhotoReadError as exc:
            message = str(exc)
        if expected is None:  # the claimed size is allowed: whatever else fails, it is not refused as a bomb
            assert message is None or "too large" not in message, (name, w, h, message)
            assert _peak_mb() - peak < 300, "a sequential JPEG is decoded at reduced scale"
        else:
            assert message is not None and expected in message, (name, w, h, message)


# ----------------------------------------------------------------------------------------------------------------------
# End to end: mutated files in an album, indexed by the real pipeline
# ----------------------------------------------------------------------------------------------------------------------

RECIPES = {  # name in the album -> (seed, mutations)
    "truncated.jpg": ("snow.jpg", [("truncate", 0.4)]),
    "no-scan.jpg": ("jesper.jpg", [("part_delete", -1)]),  # the last segment parsed: SOS
    "scribbled.jpg": ("anne_helene.jpg", [("insert", 0.02, b"\xff\xd9" * 20)]),
    "bomb.png": ("seed.png", [("dimensions", 100_000, 100_000)]),
    "bad-header.png": ("32bit.png", [("part_garbage", 0, bytes(13), False)]),  # IHDR zeroed, its CRC kept
    "cut.heic": ("seed.heic", [("truncate", 0.6)]),
    "cut.webp": ("seed.webp", [("truncate", 0.5)]),
    "strips-nowhere.tif": ("seed.tif", [("tiff_entry", 7, "value", 0xFFFFFFF0)]),
    "headless.gif": ("seed.gif", [("delete", 0.0, 13)]),
    "exif-loop.jpg": ("jesper.jpg", [("exif", M.build_tiff([(0x0112, 3, 1, M.value_bytes(3, 8)), (0x8769, 4, 1, "ifd0")],
                                                       next_ifd="self"))]),
    "app1-noise.jpg": ("obama.jpg", [("app1_random", b"Exif\x00\x00" + bytes(range(256)) * 2)]),
    "gps-zero-denominators.jpg": ("gps.jpg", [("exif", M.build_tiff([(0x8825, 4, 1, "sub")], sub_entries=[
        (1, 2, 2, b"N\x00"), (2, 5, 3, _rationals([(57, 0), (1, 0), (0, 0)]))]))]),
}
MUST_FAIL = {"truncated.jpg", "no-scan.jpg", "bomb.png", "bad-header.png", "cut.heic", "cut.webp", "headless.gif"}
MUST_DECODE = {"exif-loop.jpg", "app1-noise.jpg", "gps-zero-denominators.jpg"}


def test_album_of_mutated_photos_indexes_with_per_file_errors(seeds, test_data, tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    good = {"jesper.jpg": test_data / "kphotoalbum" / "jesper.jpg", "obama.jpg": test_data / "face_recognition" /
            "obama.jpg", "skagen.jpg": test_data / "kphotoalbum" / "skagen.jpg"}
    for name, src in good.items():
        shutil.copy(src, album / name)
    for name, (seed, ops) in RECIPES.items():
        (album / name).write_bytes(M.apply(seeds[seed], ops))
    # what a direct decode says about each file is what the catalog must say
    oracle: dict[str, str | None] = {}
    for p in album.iterdir():
        try:
            decode(str(p))
            oracle[p.name] = None
        except PhotoReadError as exc:
            oracle[p.name] = str(exc)
    assert {n for n, e in oracle.items() if e} >= MUST_FAIL
    assert not any(oracle[n] for n in MUST_DECODE | set(good))
    assert "too large" in oracle["bomb.png"] and "truncated" in oracle["truncated.jpg"]

    before = album_snapshot(album)
    lib = Library(tmp_path / "library")
    try:
        lib.add_folder(album)
        lib.scan()
        report = lib.process()
        photos = {p.name: p for p in lib.photos()}
        assert set(photos) == set(oracle)
        for name, error in oracle.items():
            photo = photos[name]
            if error is None:
                assert photo.status == "ok" and photo.last_error is None, (name, photo.last_error)
                assert photo.width and photo.height
            else:
                assert photo.status == "error" and photo.last_error == error, (name, photo.status, photo.last_error)
        assert report.stages["thumbnail"].errors == sum(e is not None for e in oracle.values())
        listed = {e["path"].rsplit("/", 1)[-1]: e["error"] for e in lib.status()["errors"]}
        assert {n for n, e in oracle.items() if e} <= set(listed)
        # the good photos are fully indexed: real size, EXIF date, a thumbnail
        jesper = photos["jesper.jpg"]
        with Image.open(good["jesper.jpg"]) as img:
            assert (jesper.width, jesper.height) == img.size
        assert photos["exif-loop.jpg"].orientation == 8 and photos["exif-loop.jpg"].width == jesper.height
        assert all(ImageCache(lib.paths).thumbnail(photos[n].content_hash) is not None for n in good)
    finally:
        lib.close()
    assert album_snapshot(album) == before  # not one byte or mtime changed
