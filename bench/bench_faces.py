#!/usr/bin/env python3
"""Benchmark: the faces stage against the face_recognition library's loop, on real photos, same dlib models.

Methods, timed in this process over the same photos (already in the OS page cache):
  baseline   what `face_recognition.face_locations(img)` + `face_recognition.face_encodings(img, locations)` do with
             their defaults (HOG detector, number_of_times_to_upsample=1, the 5-point "small" shape predictor,
             num_jitters=1), written with dlib directly (the face_recognition package compiles dlib on install):
             PIL open + convert("RGB") + np.array at FULL size, detector(img, 1), boxes trimmed to the image, then
             per face shape_predictor + compute_face_descriptor; one photo after another, one thread. Loading the
             three models is timed with it (once per round, as ours loads them once per pipeline run).
  ours       the real thing: Library(tmp).add_folder + scan (timed apart, not in any ratio), then
             process(stages=["thumbnail"]) (timed apart: the previews the faces stage reads), then
             process(stages=["faces"]) with face_backend "dlib" (HOG, upsample 1): detection and embedding on the
             ~1440 px preview in FaceStage's two workers, crops, catalog writes and FaceStage.finish's clustering.
             Ratios are given for the faces stage alone and for thumbnails + faces together.
  ours, 1 worker   the same in a second library with FaceStage.workers = 1: the gain of working on the preview
             alone, without the second thread (its faces must equal the two workers' faces).
The three run interleaved over --rounds slices of the photos, rotating which goes first.

Photo sets (each gets its own table):
  album   the real test photos at their own sizes: the KPhotoAlbum demo album (24 photos, 800 px), the
          face_recognition test images (7) and InsightFace's t1.jpg (6 faces).
  12mp    upscaled ~12-megapixel JPEG copies (BICUBIC, quality 90, cached in .cache/bench/) of those photos: real
          albums are camera-sized, and that is where working on the preview pays.

Recall: the faces labelled by hand in tests/data/kphotoalbum_faces.json (when present): every real face of the
album's photos, named or "unknown", in the stored frame at full size; that includes faces only found once the photo
is turned by KPhotoAlbum's angle (both methods look at photos as stored, so these are misses for both) and faces the
detector misses ("missed"); matched at IoU > 0.5, one-to-one; boxes of the upscaled copies are scaled. Plus the known
face counts of the face_recognition images (1 each) and t1.jpg (6): recall = sum of min(found, known) / sum of known.
Detections on "not-a-face" boxes and detections in labelled photos matching no label are counted too. The photos have
no EXIF rotation, so the baseline's full-size boxes and ours (stored in the displayed frame at full size) share one
frame. It is asserted that ours recalls at least as many faces as the baseline.

    .venv/bin/python bench/bench_faces.py             # 32 real photos + 32 12-MP copies
    .venv/bin/python bench/bench_faces.py --quick     # 12 real photos + 4 12-MP copies
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.library import Library  # noqa: E402
from engine.models.faces.dlib_backend import DLIB_RECOGNISER, DLIB_SHAPE_PREDICTOR, dlib_model_dir  # noqa: E402
from engine.pipeline.faces import FaceStage, iou  # noqa: E402

CACHE = ROOT / ".cache" / "bench"
DATA = ROOT / ".cache" / "test-data"
LABELS = ROOT / "tests" / "data" / "kphotoalbum_faces.json"
GEN_VERSION = 1  # bump when the 12 MP copies are made differently
TARGET_RATIO = 1.5
IOU_MATCH = 0.5
# Known face counts where no boxes are labelled: face_recognition's test images hold one face each (its own tests
# say so), InsightFace's t1.jpg six.
KNOWN_COUNTS = {"t1.jpg": 6, "biden.jpg": 1, "obama.jpg": 1, "obama2.jpg": 1, "obama3.jpg": 1,
                "obama_partial_face.jpg": 1, "obama_partial_face2.jpg": 1, "32bit.png": 1}

Box = tuple[float, float, float, float]  # x, y, w, h


# -- photos and labels ------------------------------------------------------------------------------------------------

def real_photos() -> list[Path]:
    """Photos with faces first (t1, face_recognition's), then the KPhotoAlbum demo album, each group by name."""
    fr = sorted((DATA / "face_recognition").glob("*"))
    kpa = sorted((DATA / "kphotoalbum").glob("*.jpg"))
    photos = [DATA / "insightface" / "t1.jpg", *fr, *kpa]
    missing = [p for p in photos if not p.is_file()]
    if missing or not kpa or not fr:
        sys.exit(f"test photos missing ({missing[:3] or 'kphotoalbum/face_recognition'}): run `make test-data`")
    return photos


def make_big(src: Path, dst: Path, megapixels: float) -> float:
    """An upscaled JPEG copy of about `megapixels`; returns the scale factor (new width / old width)."""
    with Image.open(src) as im:
        img = im.convert("RGB")
    w, h = img.size
    scale = (megapixels * 1e6 / (w * h)) ** 0.5
    size = (round(w * scale), round(h * scale))
    tmp = dst.with_suffix(".part")
    img.resize(size, Image.Resampling.BICUBIC).save(tmp, "JPEG", quality=90)
    os.replace(tmp, dst)
    return size[0] / w


def ensure_big(photos: list[Path], megapixels: float) -> tuple[list[Path], dict[str, tuple[str, float]]]:
    """Cached upscaled copies; returns them and {copy name: (original name, scale)}."""
    folder = CACHE / f"faces-v{GEN_VERSION}-{megapixels:g}mp"
    folder.mkdir(parents=True, exist_ok=True)
    out, origin = [], {}
    made = 0
    for p in photos:
        dst = folder / f"{p.stem}_{megapixels:g}mp.jpg"
        if not dst.exists():
            made += 1
            make_big(p, dst, megapixels)
        with Image.open(p) as a, Image.open(dst) as b:
            origin[dst.name] = (p.name, b.size[0] / a.size[0])
        out.append(dst)
    if made:
        print(f"made {made} upscaled {megapixels:g} MP copies in {folder} (cached for later runs)", flush=True)
    return out, origin


def _box(face: dict) -> Box:
    for key in ("box", "bbox", "rect"):
        if key in face:
            v = face[key]
            if isinstance(v, dict):
                return float(v["x"]), float(v["y"]), float(v["w"]), float(v["h"])
            x, y, w, h = v
            return float(x), float(y), float(w), float(h)
    return float(face["x"]), float(face["y"]), float(face["w"]), float(face["h"])


def _to_stored(box: Box, angle: int, width: int, height: int) -> Box:
    """A box in the frame turned `angle` degrees clockwise -> the stored frame (width x height)."""
    x, y, w, h = box
    if angle % 360 == 90:
        return y, height - x - w, h, w
    if angle % 360 == 180:
        return width - x - w, height - y - h, w, h
    if angle % 360 == 270:
        return width - y - h, x, h, w
    return box


def load_labels(path: Path) -> dict[str, dict]:
    """{file name: entry} of the album's top-level photos from the hand labels (tests/data/kphotoalbum_faces.json:
    {"photos": {name: {"angle", "faces", "faces_turned", "missed"}}}; a bare list of faces per name works too)."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "photos" in data:
        data = data["photos"]
    items = data.items() if isinstance(data, dict) else (
        (d.get("file") or d.get("name") or d.get("photo") or d.get("path"), d) for d in data)
    return {name: entry if isinstance(entry, dict) else {"faces": entry}
            for name, entry in items if isinstance(name, str) and "/" not in name}


def label_boxes(entry: dict, size: tuple[int, int]) -> tuple[list[Box], list[Box]]:
    """(real faces, "not-a-face" boxes) in the stored frame: the faces found as stored, the ones only found with the
    photo turned (KPhotoAlbum's angle; both methods look at the photo as stored, so these count as misses), and the
    ones the detector misses ("missed")."""
    real, fake = [], []
    turned = [(f, entry.get("angle", 0)) for f in entry.get("faces_turned", [])]
    for face, angle in [(f, 0) for f in entry.get("faces", []) + entry.get("missed", [])] + turned:
        box = _to_stored(_box(face), angle, *size)
        (fake if face.get("label") == "not-a-face" else real).append(box)
    return real, fake


@dataclass
class Truth:
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # photo name -> labelled faces (this set's frame)
    fake: dict[str, list[Box]] = field(default_factory=dict)  # photo name -> boxes labelled "not-a-face"
    counts: dict[str, int] = field(default_factory=dict)  # photo name -> known number of faces


def truth_for(paths: list[Path], labels: dict[str, dict] | None,
              origin: dict[str, tuple[str, float]] | None = None) -> Truth:
    t = Truth()
    for p in paths:
        orig, scale = origin[p.name] if origin else (p.name, 1.0)
        if labels is not None and orig in labels:
            src = p if origin is None else next(q for q in real_photos() if q.name == orig)
            with Image.open(src) as im:
                real, fake = label_boxes(labels[orig], im.size)
            t.boxes[p.name] = [tuple(v * scale for v in b) for b in real]
            t.fake[p.name] = [tuple(v * scale for v in b) for b in fake]
        elif orig in KNOWN_COUNTS:
            t.counts[p.name] = KNOWN_COUNTS[orig]
    return t


def match(truth: list[Box], found: list[Box]) -> int:
    """Labelled boxes matched by a found box at IoU > 0.5, one-to-one, greedily by IoU."""
    pairs = sorted(((iou(a, b), i, j) for i, a in enumerate(truth) for j, b in enumerate(found)), reverse=True)
    used_t, used_f, hits = set(), set(), 0
    for v, i, j in pairs:
        if v <= IOU_MATCH:
            break
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
            hits += 1
    return hits


def recall(truth: Truth, found: dict[str, list[Box]]) -> dict[str, tuple[int, int]]:
    """{"boxes": (hits, labelled), "counts": (hits, known), "fake": (hits on not-a-face boxes, detections in
    labelled photos that match no label at all), "extra": (detections beyond the known counts, 0)}."""
    bh = sum(match(b, found.get(n, [])) for n, b in truth.boxes.items())
    bt = sum(len(b) for b in truth.boxes.values())
    ch = sum(min(c, len(found.get(n, []))) for n, c in truth.counts.items())
    ct = sum(truth.counts.values())
    extra = sum(max(0, len(found.get(n, [])) - c) for n, c in truth.counts.items())
    fh = sum(match(b, found.get(n, [])) for n, b in truth.fake.items())
    other = sum(len(found.get(n, [])) for n in truth.boxes) - bh - fh
    return {"boxes": (bh, bt), "counts": (ch, ct), "fake": (fh, other), "extra": (extra, 0)}


# -- the methods ------------------------------------------------------------------------------------------------------

def baseline(paths: list[Path], found: dict[str, list[Box]]) -> float:
    """face_recognition's face_locations + face_encodings (defaults), with dlib directly, at full size, one thread."""
    import dlib

    t0 = time.perf_counter()
    models = dlib_model_dir()
    detector = dlib.get_frontal_face_detector()
    pose_predictor = dlib.shape_predictor(str(models / DLIB_SHAPE_PREDICTOR))  # face_encodings(model="small")
    encoder = dlib.face_recognition_model_v1(str(models / DLIB_RECOGNISER))
    for p in paths:
        img = np.array(Image.open(p).convert("RGB"))  # face_recognition.load_image_file
        h, w = img.shape[:2]
        boxes, encodings = [], []
        for rect in detector(img, 1):  # face_locations(img, number_of_times_to_upsample=1, model="hog")
            # _trim_css_to_bounds(_rect_to_css(rect)): (top, right, bottom, left) clipped to the image
            top, right = max(rect.top(), 0), min(rect.right(), w)
            bottom, left = min(rect.bottom(), h), max(rect.left(), 0)
            # face_encodings: back to a dlib rectangle, 5-point landmarks, one descriptor per face, num_jitters=1
            shape = pose_predictor(img, dlib.rectangle(left, top, right, bottom))
            encodings.append(np.array(encoder.compute_face_descriptor(img, shape, 1)))
            boxes.append((float(left), float(top), float(right - left + 1), float(bottom - top + 1)))
        assert all(e.shape == (128,) for e in encodings)
        found[p.name] = boxes
    return time.perf_counter() - t0


@dataclass
class OursTimes:
    faces: float = 0.0
    thumbs: float = 0.0
    scan: float = 0.0
    cluster: float = 0.0


def ours(paths: list[Path], lib: Library, album: Path, times: OursTimes, workers: int | None = None) -> None:
    """Link these photos into the watched album, scan, thumbnail stage, faces stage (with its clustering); with
    `workers`, FaceStage runs that many worker threads instead of its own number."""
    for p in paths:  # hard links: the album holds exactly these photos
        try:
            os.link(p, album / p.name)
        except OSError:
            shutil.copyfile(p, album / p.name)
    t0 = time.perf_counter()
    scan = lib.scan()
    t1 = time.perf_counter()
    assert scan.new == len(paths) and scan.errors == 0, scan.to_json()
    rep = lib.process(stages=["thumbnail"])
    t2 = time.perf_counter()
    st = rep.stages["thumbnail"]
    assert st.processed == len(paths) and st.errors == 0, rep.to_json()
    default_workers = FaceStage.workers
    FaceStage.workers = workers or default_workers
    try:
        t3 = time.perf_counter()
        rep = lib.process(stages=["faces"])
        t4 = time.perf_counter()
    finally:
        FaceStage.workers = default_workers
    st = rep.stages["faces"]
    assert st.processed == len(paths) and st.errors == 0 and st.shared == 0, rep.to_json()
    times.scan += t1 - t0
    times.thumbs += t2 - t1
    times.faces += t4 - t3


def ours_found(lib: Library) -> dict[str, list[Box]]:
    found: dict[str, list[Box]] = {}
    sql = "SELECT p.name, f.x, f.y, f.w, f.h FROM photos p LEFT JOIN faces f ON f.photo_id = p.id"
    for r in lib.catalog.query(sql):
        found.setdefault(r["name"], [])
        if r["x"] is not None:
            found[r["name"]].append((r["x"], r["y"], r["w"], r["h"]))
    return {name: sorted(boxes) for name, boxes in found.items()}


def agreement(a: dict[str, list[Box]], b: dict[str, list[Box]]) -> tuple[int, int, int]:
    """(faces both found at IoU > 0.5, only in a, only in b)."""
    both = sum(match(a.get(n, []), b.get(n, [])) for n in set(a) | set(b))
    na = sum(len(v) for v in a.values())
    nb = sum(len(v) for v in b.values())
    return both, na - both, nb - both


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# -- one photo set ----------------------------------------------------------------------------------------------------

def run_set(title: str, paths: list[Path], truth: Truth, rounds: int, work: Path) -> dict:
    n = len(paths)
    rounds = max(1, min(rounds, n))
    megapixels = []
    for p in paths:
        with Image.open(p) as im:
            megapixels.append(im.size[0] * im.size[1] / 1e6)
    nbytes = sum(len(p.read_bytes()) for p in paths)  # into the page cache
    print(f"\n== {title}: {n} photos, {np.mean(megapixels):.1f} MP on average ({min(megapixels):.1f}-"
          f"{max(megapixels):.1f}), {nbytes / 1e6:.1f} MB; {rounds} interleaved rounds; load average {loadavg()}",
          flush=True)
    base_found: dict[str, list[Box]] = {}
    base_s = 0.0
    times, times1 = OursTimes(), OursTimes()
    (work / "album").mkdir(parents=True)
    (work / "album1").mkdir()
    with Library(work / "library") as lib, Library(work / "library1") as lib1:
        for lb, folder in ((lib, "album"), (lib1, "album1")):
            lb.options = {"face_backend": "dlib"}  # HOG, upsample 1: the baseline's detector and models
            lb.add_folder(work / folder)
        order = ["baseline", "ours", "ours1"]
        for r in range(rounds):
            chunk = paths[r * n // rounds:(r + 1) * n // rounds]
            for method in order[r % 3:] + order[: r % 3]:  # rotate which method runs first
                if method == "baseline":
                    base_s += baseline(chunk, base_found)
                elif method == "ours":
                    ours(chunk, lib, work / "album", times)
                else:
                    ours(chunk, lib1, work / "album1", times1, workers=1)
            print(f"  round {r + 1}/{rounds}: {len(chunk)} photos, baseline {base_s:.1f}s, ours faces "
                  f"{times.faces:.1f}s + thumbnails {times.thumbs:.1f}s, ours with 1 worker {times1.faces:.1f}s",
                  flush=True)
        our_found = ours_found(lib)
        assert ours_found(lib1) == our_found  # one worker or two: the same faces
        people = lib.catalog.scalar("SELECT COUNT(*) FROM people")
        placed = lib.catalog.scalar("SELECT COUNT(*) FROM faces WHERE person_id IS NOT NULL")
        no_emb = lib.catalog.scalar("SELECT COUNT(*) FROM faces WHERE embedding IS NULL")
        assert no_emb == 0
    assert set(our_found) == {p.name for p in paths} == set(base_found)

    rec_b, rec_o = recall(truth, base_found), recall(truth, our_found)
    both, only_b, only_o = agreement(base_found, our_found)
    nb, no = sum(map(len, base_found.values())), sum(map(len, our_found.values()))

    def rtxt(rec: dict[str, tuple[int, int]]) -> str:
        parts = []
        if rec["boxes"][1]:
            parts.append("{}/{} labelled".format(*rec["boxes"]))
        if rec["counts"][1]:
            extra = f" (+{rec['extra'][0]} extra)" if rec["extra"][0] else ""
            parts.append("{}/{} counted".format(*rec["counts"]) + extra)
        if truth.boxes:
            parts.append("{} not-a-face, {} unlabelled".format(*rec["fake"]))
        return "; ".join(parts) or "-"

    rows = [
        ("baseline: face_recognition loop, full size, 1 thread", base_s, nb, rtxt(rec_b)),
        ("ours: faces stage via Pipeline, 1 worker (preview)", times1.faces, no, rtxt(rec_o)),
        (f"ours: faces stage via Pipeline ({FaceStage.workers} workers, preview)", times.faces, no, rtxt(rec_o)),
        ("ours: thumbnail + faces stages", times.thumbs + times.faces, no, rtxt(rec_o)),
    ]
    print()
    print(f"{'method':<56} {'seconds':>8} {'photos/s':>9} {'vs base':>8} {'faces':>6}  recall (labelled faces)")
    print("-" * 118)
    for name, secs, nf, rt in rows:
        print(f"{name:<56} {secs:>8.2f} {n / secs:>9.2f} {base_s / secs:>7.2f}x {nf:>6}  {rt}")
    print("-" * 118)
    print(f"{'(in the total) thumbnail stage alone':<56} {times.thumbs:>8.2f} {n / times.thumbs:>9.2f}")
    print(f"{'(not in any ratio) scan: walk + hash':<56} {times.scan:>8.2f}")
    ratio = base_s / times.faces
    print(f"\nfaces stage vs baseline {ratio:.2f}x ({'meets' if ratio >= TARGET_RATIO else 'MISSES'} the "
          f"{TARGET_RATIO}x target), thumbnails + faces {base_s / (times.thumbs + times.faces):.2f}x. Boxes: {both} "
          f"found by both (IoU > {IOU_MATCH}), {only_b} only by the baseline, {only_o} only by ours. Clustering put "
          f"{placed} of {no} faces into {people} people. Load average now {loadavg()}.")

    for key in ("boxes", "counts"):
        (hb, t), (ho, _) = rec_b[key], rec_o[key]
        if not t:
            continue
        assert ho >= hb, f"{title}: ours recalls fewer labelled faces ({key}: {ho}/{t}) than the baseline ({hb}/{t})"
    return {
        "set": title, "photos": n, "megapixels_mean": float(np.mean(megapixels)), "rounds": rounds,
        "baseline_s": base_s, "faces_s": times.faces, "faces_1_worker_s": times1.faces,
        "thumbnails_s": times.thumbs, "scan_s": times.scan,
        "ratio_faces": ratio, "ratio_total": base_s / (times.thumbs + times.faces),
        "faces_baseline": nb, "faces_ours": no, "both": both, "only_baseline": only_b, "only_ours": only_o,
        "recall_baseline": rec_b, "recall_ours": rec_o, "people": people, "placed": placed,
    }


# -- main -------------------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=0, help="real photos (default all 32)")
    ap.add_argument("--big", type=int, default=-1, help="upscaled copies, of the first N real photos (default all)")
    ap.add_argument("--megapixels", type=float, default=12.0, help="size of the upscaled copies (default 12)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleave the methods over this many slices of each set, alternating which goes first")
    ap.add_argument("--labels", type=Path, default=LABELS, help=f"hand labels (default {LABELS.relative_to(ROOT)})")
    ap.add_argument("--quick", action="store_true", help="12 real photos and 4 upscaled copies, one round")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON (bench/results/ is git-ignored)")
    args = ap.parse_args()

    photos = real_photos()
    if args.quick:
        args.count, args.big, args.rounds = args.count or 12, 4 if args.big < 0 else args.big, 1
    if args.count:
        photos = photos[: args.count]
    big_n = len(photos) if args.big < 0 else min(args.big, len(photos))
    labels = load_labels(args.labels) if args.labels.is_file() else None
    if labels is None:
        print(f"no hand labels at {args.labels}: recall counts the faces of the face_recognition images and t1.jpg "
              f"only (known counts)")
    else:
        print(f"hand labels: {args.labels} ({len(labels)} photos); known counts for the face_recognition images "
              f"and t1.jpg")
    import dlib

    print(f"{os.cpu_count()} CPUs; dlib {dlib.__version__}; Pillow {Image.__version__}; load average {loadavg()}")

    results = []
    CACHE.mkdir(parents=True, exist_ok=True)
    sets = [("album (real photos, own size)", photos, truth_for(photos, labels))]
    if big_n:
        big, origin = ensure_big(photos[:big_n], args.megapixels)
        sets.append((f"{args.megapixels:g} MP upscaled copies", big, truth_for(big, labels, origin)))
    for title, paths, truth in sets:
        with tempfile.TemporaryDirectory(prefix="faces-", dir=CACHE) as tmp:
            results.append(run_set(title, paths, truth, args.rounds, Path(tmp)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "labels": str(args.labels) if labels else None,
                                         "sets": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
