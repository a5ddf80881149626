#!/usr/bin/env python3
"""Benchmark: the thumbnail stage against a plain-Pillow baseline, on synthetic 12-megapixel photos.

Methods, all timed in this process over the same photos (already in the OS page cache):
  baseline     Image.open + convert("RGB") (full-size decode), resize to the 1440 px preview (LANCZOS), resize the
               preview to the 256 px thumbnail (LANCZOS), save both as JPEG (same qualities as ours); one thread.
  make (1 thr) engine ImageCache.make() called in a loop on one thread: JPEG draft-mode decode + one resize chain;
               isolates the algorithmic gain from parallelism.
  pipeline     the real thing: Library(tmp).add_folder + scan (reported separately, not in the ratio), then
               Library.process(stages=["thumbnail"]) through engine.pipeline.runner.Pipeline and its thread pool.

Photos are generated once (smooth gradients, shapes, fine texture and noise, with EXIF dates; about 2.6 MB each at
quality 90) and cached in .cache/bench/ so reruns start at once.

    .venv/bin/python bench/bench_thumbnails.py            # 200 photos, 4000x3000
    .venv/bin/python bench/bench_thumbnails.py --quick    # 20 photos
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.ingest.image_cache import PREVIEW_QUALITY, PREVIEW_SIZE, THUMB_QUALITY, THUMB_SIZE, ImageCache  # noqa: E402
from engine.library import Library  # noqa: E402
from engine.pipeline.thumbnails import ThumbnailStage  # noqa: E402
from engine.storage.library_folder import LibraryPaths  # noqa: E402

GEN_VERSION = 1  # bump when make_photo changes, so cached photos are regenerated
CACHE = ROOT / ".cache" / "bench"
TARGET_RATIO = 3.0


# -- synthetic photos -------------------------------------------------------------------------------------------------

def make_photo(args: tuple[int, int, int, int, str]) -> str:
    """A deterministic, photo-like JPEG: low- and mid-frequency colour, shapes, fine texture and sensor noise."""
    i, w, h, quality, path = args
    rng = np.random.default_rng(10_000 + i)
    bicubic = Image.Resampling.BICUBIC
    base = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), bicubic)
    mid = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((w, h), bicubic)
    img = Image.blend(base, mid, 0.3)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(15, 35))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 50, w // 3)), y0 + int(rng.integers(h // 50, h // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    # Fine detail at a ~3 px scale (foliage, fabric), stronger towards one side, then per-pixel noise.
    tex = Image.fromarray(rng.integers(0, 256, (h // 3, w // 3), dtype=np.uint8)).resize((w, h), bicubic)
    gain = np.linspace(0.1, 0.3, w, dtype=np.float32)[None, :]
    arr = np.asarray(img, dtype=np.int16)
    arr += ((np.asarray(tex, dtype=np.float32) - 128.0) * gain).astype(np.int16)[:, :, None]
    arr += rng.integers(-4, 5, (h, w, 3), dtype=np.int16)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"
    stamp = f"2024:{1 + i % 12:02d}:{1 + i % 28:02d} 12:{i % 60:02d}:00"
    exif[0x0132] = stamp
    exif.get_ifd(0x8769)[0x9003] = stamp  # DateTimeOriginal
    tmp = path + ".part"
    img.save(tmp, "JPEG", quality=quality, exif=exif)
    os.replace(tmp, path)
    return path


def ensure_photos(count: int, w: int, h: int, quality: int, jobs: int) -> list[Path]:
    """The first `count` cached photos of this size and quality, generating the missing ones in parallel."""
    folder = CACHE / f"photos-v{GEN_VERSION}-{w}x{h}-q{quality}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"IMG_{i:05d}.jpg" for i in range(count)]
    missing = [(i, w, h, quality, str(p)) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"generating {len(missing)} photos of {w}x{h} into {folder} (cached for later runs) ...", flush=True)
        t0 = time.perf_counter()
        with multiprocessing.Pool(max(1, jobs)) as pool:
            for n, _ in enumerate(pool.imap_unordered(make_photo, missing), 1):
                if n % 20 == 0 or n == len(missing):
                    print(f"  {n}/{len(missing)}", flush=True)
        print(f"  done in {time.perf_counter() - t0:.1f}s", flush=True)
    return paths


def warm_page_cache(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        total += len(p.read_bytes())
    return total


# -- the methods ------------------------------------------------------------------------------------------------------

def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    w, h = size
    scale = side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def baseline(paths: list[Path], out: Path) -> float:
    """Naive Pillow: full decode, LANCZOS resizes (preview from the full image, thumbnail from it), two saves."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            full = im.convert("RGB")
        preview = full.resize(_fit(full.size, PREVIEW_SIZE), Image.Resampling.LANCZOS)
        thumb = preview.resize(_fit(preview.size, THUMB_SIZE), Image.Resampling.LANCZOS)
        preview.save(out / f"{p.stem}-preview.jpg", "JPEG", quality=PREVIEW_QUALITY)
        thumb.save(out / f"{p.stem}-thumb.jpg", "JPEG", quality=THUMB_QUALITY)
    return time.perf_counter() - t0


def ours_sequential(paths: list[Path], cache: ImageCache) -> float:
    """ImageCache.make in a plain loop on this thread (the key only names the output files)."""
    t0 = time.perf_counter()
    for p in paths:
        cache.make(str(p), f"{int(p.stem.split('_')[1]):032x}")
    return time.perf_counter() - t0


def ours_pipeline(paths: list[Path], lib: Library, album: Path) -> tuple[float, float, int]:
    """Add these photos to the watched album, scan (timed apart), then run the thumbnail stage through the pipeline."""
    for p in paths:  # hard links: the album holds exactly these photos without copying gigabytes
        try:
            os.link(p, album / p.name)
        except OSError:
            shutil.copyfile(p, album / p.name)
    t0 = time.perf_counter()
    scan = lib.scan()
    t_scan = time.perf_counter() - t0
    assert scan.new == len(paths) and scan.errors == 0, scan.to_json()
    t1 = time.perf_counter()
    report = lib.process(stages=["thumbnail"])
    t_stage = time.perf_counter() - t1
    st = report.stages["thumbnail"]
    assert st.processed == len(paths) and st.errors == 0 and st.shared == 0, report.to_json()
    return t_stage, t_scan, scan.hashed


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# -- main -------------------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="photos (default 200)")
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated photos")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleave the methods over this many slices of the photos, rotating their order, so "
                         "background load hits all methods alike (default 5)")
    ap.add_argument("--quick", action="store_true", help="20 photos in 2 rounds: a smoke run in well under a minute")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="processes generating photos")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON (bench/results/ is git-ignored)")
    args = ap.parse_args()
    if args.quick:
        args.count = min(args.count, 20)
        args.rounds = min(args.rounds, 2)
    args.rounds = max(1, min(args.rounds, args.count))

    paths = ensure_photos(args.count, args.width, args.height, args.quality, args.jobs)
    nbytes = warm_page_cache(paths)
    n = len(paths)
    preview_size = _fit((args.width, args.height), PREVIEW_SIZE)
    thumb_size = _fit(preview_size, THUMB_SIZE)
    print(f"\n{n} photos, {args.width}x{args.height} ({args.width * args.height / 1e6:.0f} MP), "
          f"{nbytes / n / 1e6:.1f} MB each; {os.cpu_count()} CPUs; Pillow {Image.__version__}; "
          f"{args.rounds} interleaved rounds; load average {loadavg()}", flush=True)

    names = {
        "baseline": "baseline: full decode + LANCZOS, 1 thread",
        "make": "ours: ImageCache.make, 1 thread",
        "pipeline": f"ours: thumbnail stage via Pipeline, {ThumbnailStage.workers} workers",
    }
    secs = dict.fromkeys(names, 0.0)
    scan_s, hashed = 0.0, 0
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="thumbs-", dir=CACHE) as tmp:
        work = Path(tmp)
        seq_paths = LibraryPaths(work / "seq-library")
        seq_paths.ensure()
        seq_cache = ImageCache(seq_paths)
        album = work / "album"
        album.mkdir()
        with Library(work / "library") as lib:
            lib.add_folder(album)
            order = list(names)
            for r in range(args.rounds):
                chunk = paths[r * n // args.rounds:(r + 1) * n // args.rounds]
                for method in order[r % 3:] + order[: r % 3]:  # rotate which method runs first
                    if method == "baseline":
                        secs[method] += baseline(chunk, work / "baseline")
                    elif method == "make":
                        secs[method] += ours_sequential(chunk, seq_cache)
                    else:
                        t_stage, t_scan, h = ours_pipeline(chunk, lib, album)
                        secs[method] += t_stage
                        scan_s += t_scan
                        hashed += h
                print(f"  round {r + 1}/{args.rounds}: {len(chunk)} photos, "
                      + ", ".join(f"{m} {secs[m]:.1f}s" for m in names), flush=True)

            # Correctness: every photo ok with its EXIF date; ours and the baseline's outputs have the right sizes.
            photos = lib.photos()
            assert len(photos) == n and all(ph.status == "ok" and ph.date_source == "exif" for ph in photos)
            cache = ImageCache(lib.paths)
            for ph in photos[:: max(1, n // 10)]:
                assert image_size(cache.preview_path(ph.content_hash)) == preview_size
                assert image_size(cache.thumb_path(ph.content_hash)) == thumb_size
        assert image_size(work / "baseline" / f"{paths[0].stem}-preview.jpg") == preview_size
        assert image_size(work / "baseline" / f"{paths[0].stem}-thumb.jpg") == thumb_size

    base = secs["baseline"]
    print()
    print(f"{'method':<50} {'seconds':>8} {'photos/s':>9} {'vs baseline':>12}")
    print("-" * 82)
    for m, name in names.items():
        print(f"{name:<50} {secs[m]:>8.2f} {n / secs[m]:>9.1f} {base / secs[m]:>11.2f}x")
    print("-" * 82)
    print(f"{'(not in ratio) scan: walk + hash ' + str(hashed) + ' files':<50} {scan_s:>8.2f} {n / scan_s:>9.1f}")
    best = base / secs["pipeline"]
    verdict = "meets" if best >= TARGET_RATIO else "MISSES"
    print(f"\npipeline vs baseline {best:.2f}x ({verdict} the {TARGET_RATIO:.0f}x target); one thread alone "
          f"{base / secs['make']:.2f}x; threads add {secs['make'] / secs['pipeline']:.2f}x. "
          f"Load average now {loadavg()}.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "count": n, "size": [args.width, args.height], "cpus": os.cpu_count(), "rounds": args.rounds,
            "rows": [{"method": names[m], "seconds": secs[m], "photos_per_s": n / secs[m], "ratio": base / secs[m]}
                     for m in names],
            "scan_s": scan_s, "workers": ThumbnailStage.workers,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
