#!/usr/bin/env python3
"""Coverage-guided fuzzing of photo reading with atheris (libFuzzer), for long local runs; CI runs the bounded
hypothesis tests in tests/test_fuzz_images.py instead.

Each input is turned into a photo file one of three ways (its first byte chooses):
  0  the bytes themselves, as libFuzzer mutates them from the seed corpus (real photos, and the same pixels as PNG,
     WebP, TIFF, GIF and HEIC);
  1  a seed photo with structure-aware mutations drawn from the input (tests/fuzz_media.py: segment, chunk and box
     deletion, duplication and lying lengths, bit flips, truncation, claimed sizes);
  2  a seed photo carrying a hand-built EXIF block drawn from the input (wrong IFD offsets, huge counts, IFDs that
     point at themselves, bogus orientation, GPS and date values).
The file is read the ways the app reads it: `engine.ingest.images.decode` (the thumbnail stage's decode), `probe` (the
header-only read) and `engine.domain.search.places.read_gps`. Any exception other than PhotoReadError is a crash and
libFuzzer saves the input; libFuzzer's own -timeout and -rss_limit_mb catch hangs and memory blow-ups.

  pip install atheris          # not a dependency of the app; 3.0.0 has manylinux wheels for CPython 3.11
  python scripts/fuzz_images.py                            # seeds .cache/fuzz-corpus/images, then fuzzes
  python scripts/fuzz_images.py -max_total_time=3600 -jobs=4 -workers=4
  python scripts/fuzz_images.py crash-<sha1>               # replays one saved input

Needs the test photos (python scripts/fetch_test_data.py). Options after the script name go to libFuzzer; defaults
added here: -timeout=20 -rss_limit_mb=3072 -max_len=262144 and the corpus folder (an empty one is seeded).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris

with atheris.instrument_imports():
    import PIL.GifImagePlugin
    import PIL.Image
    import PIL.JpegImagePlugin
    import PIL.PngImagePlugin
    import PIL.TiffImagePlugin
    import PIL.WebPImagePlugin

    from engine.domain.search import places
    from engine.ingest import images

from tests import fuzz_media as M

TEST_DATA = Path(os.environ.get("MYVLM_TEST_DATA", ROOT / ".cache" / "test-data"))
CORPUS = ROOT / ".cache" / "fuzz-corpus" / "images"
SUFFIX = {b"\xff\xd8": ".jpg", b"\x89P": ".png", b"RI": ".webp", b"II": ".tif", b"MM": ".tif", b"GI": ".gif"}


def load_seeds() -> dict[str, bytes]:
    kpa, fr = TEST_DATA / "kphotoalbum", TEST_DATA / "face_recognition"
    if not (kpa / "jesper.jpg").exists():
        sys.exit(f"no test photos in {TEST_DATA}: run python scripts/fetch_test_data.py first")
    seeds = {p.name: p.read_bytes() for p in sorted(kpa.glob("*.jpg"))[:8]}
    seeds["obama.jpg"] = (fr / "obama.jpg").read_bytes()
    seeds["32bit.png"] = (fr / "32bit.png").read_bytes()
    photo = PIL.Image.open(kpa / "jesper.jpg")
    names = {"PNG": "seed.png", "WEBP": "seed.webp", "TIFF": "seed.tif", "TIFF_DEFLATE": "seed_deflate.tif",
             "GIF": "seed.gif", "HEIF": "seed.heic"}
    for fmt, data in M.encode_variants(photo).items():
        seeds[names[fmt]] = data
    buf = io.BytesIO()
    photo.convert("RGB").resize((200, 133)).save(buf, "JPEG", progressive=True, exif=photo.getexif().tobytes())
    seeds["progressive.jpg"] = buf.getvalue()
    return seeds


SEEDS = load_seeds()
SEED_NAMES = sorted(SEEDS)
WORK = Path(tempfile.mkdtemp(prefix="fuzz-images-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def _ops(fdp: atheris.FuzzedDataProvider) -> list[tuple]:
    ops = []
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        kind = fdp.PickValueInList(list(M.BYTE_OPS + M.PART_OPS) + ["dimensions", "tiff_entry", "app1_random"])
        frac = fdp.ConsumeProbability()
        if kind == "flip":
            ops.append((kind, frac, fdp.ConsumeIntInRange(0, 7)))
        elif kind == "set":
            ops.append((kind, frac, fdp.ConsumeIntInRange(0, 255)))
        elif kind == "truncate":
            ops.append((kind, frac))
        elif kind in ("delete", "duplicate"):
            ops.append((kind, frac, fdp.ConsumeIntInRange(1, 4096)))
        elif kind == "insert":
            ops.append((kind, frac, fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))))
        elif kind in ("part_delete", "part_duplicate"):
            ops.append((kind, fdp.ConsumeIntInRange(0, 63)))
        elif kind == "part_swap":
            ops.append((kind, fdp.ConsumeIntInRange(0, 63), fdp.ConsumeIntInRange(0, 63)))
        elif kind == "part_garbage":
            ops.append((kind, fdp.ConsumeIntInRange(0, 63), fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256)),
                        fdp.ConsumeBool()))
        elif kind == "part_length":
            ops.append((kind, fdp.ConsumeIntInRange(0, 63), fdp.ConsumeUInt(4)))
        elif kind == "dimensions":
            ops.append((kind, fdp.ConsumeUInt(4), fdp.ConsumeUInt(4)))
        elif kind == "tiff_entry":
            ops.append((kind, fdp.ConsumeIntInRange(0, 40), fdp.PickValueInList(["type", "count", "value"]),
                        fdp.ConsumeUInt(4)))
        else:
            ops.append((kind, b"Exif\x00\x00" + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))))
    return ops


def _entry(fdp: atheris.FuzzedDataProvider) -> tuple:
    tag = fdp.PickValueInList(sorted(M.TAGS.values()) + [fdp.ConsumeUInt(2)])
    typ = fdp.PickValueInList(list(M.TIFF_TYPES + M.BOGUS_TYPES))
    count = fdp.ConsumeUInt(4)
    how = fdp.ConsumeIntInRange(0, 4)
    if how == 0:
        payload = M.value_bytes(typ, fdp.PickValueInList(list(M.BAD_ORIENTATIONS) + list(range(1, 9))))
    elif how == 1:
        payload = M.value_bytes(2, fdp.PickValueInList(list(M.BAD_DATES)))
    elif how == 2:
        payload = fdp.PickValueInList(list(M.OFFSETS) + ["sub"])
    elif how == 3:
        payload = fdp.ConsumeUInt(4)
    else:
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 48))
    return tag, typ, count, payload


def _exif(fdp: atheris.FuzzedDataProvider) -> bytes:
    entries = [_entry(fdp) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    sub = [_entry(fdp) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    nxt = fdp.PickValueInList([None, *M.OFFSETS])
    return M.build_tiff(entries, nxt, fdp.ConsumeBool(), sub)


def make_file(data: bytes) -> Path:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 2)
    if mode == 0:
        body = fdp.ConsumeBytes(fdp.remaining_bytes())
        suffix = SUFFIX.get(body[:2], ".heic" if body[4:8] == b"ftyp" else ".jpg")
    else:
        name = fdp.PickValueInList(SEED_NAMES)
        ops = _ops(fdp) if mode == 1 else [("exif", _exif(fdp))]
        body = M.apply(SEEDS[name], ops)
        suffix = Path(name).suffix
    path = WORK / f"input{suffix}"
    path.write_bytes(body)
    return path


def test_one_input(data: bytes) -> None:
    path = make_file(data)
    try:
        images.decode(str(path))
    except images.PhotoReadError as exc:
        assert str(exc).strip()
    try:
        images.probe(str(path))
    except images.PhotoReadError as exc:
        assert str(exc).strip()
    gps = places.read_gps(str(path))
    assert gps is None or (-90 <= gps[0] <= 90 and -180 <= gps[1] <= 180)


def seed_corpus(folder: Path) -> None:
    """Raw seeds for mode 0 (a leading 0 byte), so libFuzzer starts from real photos of every format."""
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return
    for name, data in SEEDS.items():
        (folder / name).write_bytes(b"\x00" + data)


def main() -> None:
    import warnings

    warnings.simplefilter("ignore")  # Pillow's notes on corrupt EXIF are expected on every input
    args = sys.argv[1:]
    positional = [a for a in args if not a.startswith("-")]
    if not positional:
        args.append(str(CORPUS))
        positional = [str(CORPUS)]
    if not any(Path(a).is_file() for a in positional):  # fuzzing, not replaying: the first corpus gets the seeds
        seed_corpus(Path(positional[0]))
    defaults = {"-timeout": "20", "-rss_limit_mb": "3072", "-max_len": "262144"}
    for key, value in defaults.items():
        if not any(a.startswith(key + "=") for a in args):
            args.insert(0, f"{key}={value}")
    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
