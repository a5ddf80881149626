#!/usr/bin/env python3
"""Measure a face backend's distances on real, hand-labelled faces: the data behind docs/face-thresholds.md.

Runs the real pipeline (Library: add_folder, scan, process: ~1440 px previews, the FaceStage's detection gates and
embeddings, exactly as the app does) into throw-away libraries, on the real test photos of .cache/test-data:

  kphotoalbum/        the KPhotoAlbum demo album (CategoryImages/ included, as a scan finds them); its faces are
                      labelled by box in the labels fixture (tests/data/kphotoalbum_faces.json). With --turn (the
                      default) the photos stored sideways are then turned by index.xml's `angle` (Library.rotate)
                      and processed again, so their faces count too (labels: the fixture's `faces_turned`).
  face_recognition/   obama.jpg, obama2.jpg, obama3.jpg, obama_partial_face.jpg, obama_partial_face2.jpg (Barack
                      Obama) and biden.jpg (Joe Biden); 32bit.png is left out (it is obama2.jpg again, with alpha).
  insightface/t1.jpg  a group photo: its faces are six different people (one photo never shows anyone twice).

Prints, per pair set, the same-person and different-person cosine distances (min / median / max), a ROC-style table
(for candidate thresholds: same-person recall and different-person false-accept rate), the MyVLM concept-head view
(a face against each identity's other faces, min distance), and the clustering FaceClusterer gives on the labelled
album for candidate cluster distances (people mixing two identities, identities split).

    .venv/bin/python scripts/calibrate_faces.py [--labels tests/data/kphotoalbum_faces.json] [--crops /tmp/faces]
                                                [--json out.json] [--backend dlib] [--no-turn]

--crops writes each detected face (with context and its box drawn) and a numbered overview of each photo as PNG,
which is how the labels fixture was made: look at each crop, write its label. Faces that match no label are listed
as "UNLABELLED" (a changed detector, or a fixture to update).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.domain.face_clustering import FaceClusterer
from engine.ingest.image_cache import ImageCache
from engine.library import Library
from engine.models.faces.backends import FaceThresholds, create_backend
from engine.pipeline.faces import iou

TEST_DATA = ROOT / ".cache" / "test-data"
DEFAULT_LABELS = ROOT / "tests" / "data" / "kphotoalbum_faces.json"
NOT_PEOPLE = ("unknown", "not-a-face")  # labels that are no identity: never counted in pairs or purity
UNLABELLED = "UNLABELLED"
FACE_RECOGNITION = {
    "obama.jpg": "Barack Obama",
    "obama2.jpg": "Barack Obama",
    "obama3.jpg": "Barack Obama",
    "obama_partial_face.jpg": "Barack Obama",
    "obama_partial_face2.jpg": "Barack Obama",
    "biden.jpg": "Joe Biden",
}
SOURCES = {"obama_partial_face.jpg": "obama.jpg", "obama_partial_face2.jpg": "obama.jpg"}  # crops of obama.jpg
# the candidate cosine distances: 0.02 .. 0.20, finer (0.005) where dlib's same and different people meet
THRESHOLDS = sorted({round(0.01 * i, 3) for i in range(2, 21)} | {round(0.005 * i, 3) for i in range(12, 26)})
SWEEP = [round(0.001 * i, 3) for i in range(50, 121)]  # cluster distances tried: 0.050 .. 0.120
SMALL_SWEEP = [round(0.001 * i, 3) for i in range(50, 81)]  # distances tried for links with small faces
GROUP_THRESHOLDS = [0.06, 0.062, 0.065, 0.068, 0.07, 0.072, 0.075, 0.08, 0.085, 0.09, 0.1]


@dataclass
class Face:
    dataset: str
    photo: str  # path relative to the album
    turned: int  # degrees the photo was turned (Library.rotate) when this face was found
    face_id: int
    box: tuple[float, float, float, float]  # displayed frame, full resolution
    score: float
    quality: bool
    embedding: np.ndarray
    label: str = UNLABELLED
    person_id: int | None = None
    source: str = ""  # the photo this one was cut from (itself by default): faces of one source are one shot
    not_: tuple[str, ...] = ()  # an "unknown" face: the labelled people it certainly is not

    def __post_init__(self) -> None:
        self.source = self.source or f"{self.dataset}/{self.photo}"


# -- running the pipeline ---------------------------------------------------------------------------------------------


def index_angles(album: Path) -> dict[str, int]:
    """{file: clockwise degrees} of the photos KPhotoAlbum's index.xml shows turned (its `angle` attribute)."""
    root = ET.parse(album / "index.xml").getroot()
    return {im.get("file"): int(im.get("angle")) for im in root.iter("image") if int(im.get("angle", "0") or 0)}


def faces_of(lib: Library, album: Path, dataset: str, only: set[int] | None = None) -> list[Face]:
    out = []
    for r in lib.catalog.query(
        "SELECT f.id, f.photo_id, f.x, f.y, f.w, f.h, f.score, f.quality, f.embedding, f.person_id, p.path, "
        "p.user_rotation FROM faces f JOIN photos p ON p.id = f.photo_id WHERE f.embedding IS NOT NULL ORDER BY f.id"
    ):
        if only is not None and r["photo_id"] not in only:
            continue
        rel = Path(r["path"]).relative_to(album).as_posix()
        out.append(Face(dataset, rel, r["user_rotation"] % 360, r["id"], (r["x"], r["y"], r["w"], r["h"]), r["score"],
                        bool(r["quality"]), np.frombuffer(r["embedding"], np.float32).copy(),
                        person_id=r["person_id"]))
    return out


STAGES = ("thumbnail", "faces")  # what faces need; other stages (CLIP) are not part of this measurement


def open_album(album: Path, dataset: str, backend: str, workdir: Path) -> tuple[Library, list[Face]]:
    """The pipeline on one album, as the app runs it: (library, faces)."""
    lib = Library(workdir / f"library-{dataset}")
    lib.options["face_backend"] = backend
    lib.add_folder(album)
    lib.scan()
    lib.process(stages=STAGES)
    return lib, faces_of(lib, album, dataset)


def turn_photos(lib: Library, album: Path, dataset: str, faces: list[Face], turn: dict[str, int]) -> list[Face]:
    """Turn these photos (Library.rotate, as a user would) and process again: the album's faces afterwards."""
    turned_ids = set()
    for name, degrees in turn.items():
        photo = lib.catalog.photo_by_path(album / name)
        if photo is not None:
            lib.rotate(photo.id, degrees)
            turned_ids.add(photo.id)
    lib.process(stages=STAGES)
    faces = [f for f in faces if f.photo not in turn] + faces_of(lib, album, dataset, only=turned_ids)
    people = {r["id"]: r["person_id"] for r in lib.catalog.query("SELECT id, person_id FROM faces")}
    for f in faces:
        f.person_id = people.get(f.face_id)
    return faces


def raw_detections(lib: Library, album: Path, faces: list[Face]) -> list[dict]:
    """The detector's own output on every photo's preview (in the frame the faces were found in), before the
    pipeline's gates, each with the label of the stored face it became (or None: a gate dropped it)."""
    backend = create_backend(lib.options["face_backend"], lib.paths.models)
    cache = ImageCache(lib.paths)
    frames = {(f.photo, f.turned) for f in faces}
    rows = []
    for photo in lib.catalog.photos():
        if photo.kind != "image" or photo.content_hash is None:
            continue
        rel = Path(photo.path).relative_to(album).as_posix()
        turned = photo.user_rotation % 360
        img = cache.preview(photo.fs_path, photo.content_hash, turned)
        disp_w = photo.height if turned % 180 else photo.width
        scale = disp_w / img.width  # preview -> full-resolution displayed frame
        for d in backend.detect(np.asarray(img)):
            box = tuple(v * scale for v in d.bbox)
            stored = [f for f in faces if (f.photo, f.turned) == (rel, turned) and iou(f.box, box) > 0.5]
            rows.append({"photo": rel, "turned": turned, "box": [round(v) for v in box],
                         "min_side": round(d.min_side * scale), "score": round(d.score, 3),
                         "kept": backend.thresholds.keep(d), "label": stored[0].label if stored else None})
        assert (rel, turned) in frames or not any(r["photo"] == rel and r["kept"] for r in rows)
    return rows


# -- labels -----------------------------------------------------------------------------------------------------------


def label_kphotoalbum(faces: list[Face], labels: dict) -> list[str]:
    """Give each face its fixture label (IoU > 0.5 with a labelled box of its photo, in its frame); returns problems."""
    problems = []
    photos = labels["photos"]
    for f in faces:
        entry = photos.get(f.photo)
        if entry is None:
            problems.append(f"{f.photo}: not in the labels fixture")
            continue
        boxes = entry.get("faces_turned", []) if f.turned else entry.get("faces", [])
        best = max(((iou(f.box, tuple(b["box"])), b["label"]) for b in boxes), default=(0.0, UNLABELLED))
        if "source" in entry:
            f.source = f"{f.dataset}/{entry['source']}"
        if best[0] > 0.5:
            f.label = best[1]
            match = next(b for b in boxes if b["label"] == best[1] and iou(f.box, tuple(b["box"])) == best[0])
            f.not_ = tuple(match.get("not", ()))
        else:
            problems.append(f"{f.photo} (turned {f.turned}): face {[round(v) for v in f.box]} matches no labelled box")
    return problems


def label_by_file(faces: list[Face], names: dict[str, str]) -> list[str]:
    problems = []
    per_photo = defaultdict(list)
    for f in faces:
        per_photo[f.photo].append(f)
    for photo, fs in per_photo.items():
        if photo not in names:
            continue
        for f in fs:
            if photo in SOURCES:
                f.source = f"{f.dataset}/{SOURCES[photo]}"
        biggest = max(fs, key=lambda f: f.box[2] * f.box[3])
        biggest.label = names[photo]  # the portrait's face; any other detection is a background face
        for f in fs:
            if f is not biggest:
                f.label = "unknown"
                problems.append(f"{photo}: extra face {[round(v) for v in f.box]} (labelled unknown)")
    return problems


def label_group(faces: list[Face], prefix: str) -> None:
    """A group photo: every face is a different person."""
    for i, f in enumerate(sorted(faces, key=lambda f: f.box[0])):
        f.label = f"{prefix} #{i + 1}"


# -- crops ------------------------------------------------------------------------------------------------------------


def write_crops(lib: Library, album: Path, faces: list[Face], out: Path) -> None:
    """Each face with context and its box (<photo>_face<i>.png), each photo with numbered boxes (<photo>.png), and
    faces.tsv listing every crop's photo, frame, box (displayed frame, full resolution) and current label."""
    cache = ImageCache(lib.paths)
    out.mkdir(parents=True, exist_ok=True)
    per_photo = defaultdict(list)
    listing = ["crop\tphoto\tturned\tbox\tscore\tquality\tlabel"]
    for f in faces:
        per_photo[(f.photo, f.turned)].append(f)
    for (photo, turned), fs in sorted(per_photo.items()):
        row = lib.catalog.photo_by_path(album / photo)
        assert row is not None and row.content_hash is not None
        img = cache.preview(row.fs_path, row.content_hash, turned)
        disp_w = row.height if turned % 180 else row.width
        scale = img.width / disp_w  # full-resolution displayed frame -> preview
        stem = photo.replace("/", "_").rsplit(".", 1)[0] + (f"_turned{turned}" if turned else "")
        overview = img.copy()
        draw = ImageDraw.Draw(overview)
        for i, f in enumerate(sorted(fs, key=lambda f: f.box[0])):
            x, y, w, h = (v * scale for v in f.box)
            draw.rectangle([x, y, x + w, y + h], outline=(255, 0, 0), width=3)
            draw.text((x + 4, y + 4), str(i), fill=(255, 255, 0))
            side = max(w, h) * 2.2
            cx, cy = x + w / 2, y + h / 2
            crop = img.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))
            crop = crop.resize((240, 240), Image.Resampling.BICUBIC)
            d = ImageDraw.Draw(crop)
            k = 240 / side
            d.rectangle([(x - cx + side / 2) * k, (y - cy + side / 2) * k, (x + w - cx + side / 2) * k,
                         (y + h - cy + side / 2) * k], outline=(255, 0, 0), width=2)
            crop.save(out / f"{stem}_face{i}.png")
            listing.append(f"{stem}_face{i}.png\t{photo}\t{turned}\t{[round(v) for v in f.box]}\t"
                           f"{f.score:.2f}\t{int(f.quality)}\t{f.label}")
        overview.thumbnail((900, 900))
        overview.save(out / f"{stem}.png")
    (out / "faces.tsv").write_text("\n".join(listing) + "\n")


# -- measurements -----------------------------------------------------------------------------------------------------


def is_person(f: Face) -> bool:
    return f.label not in NOT_PEOPLE + (UNLABELLED,)


def pair_distances(faces: list[Face]) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, float]]]:
    """(same-person distances, different-person distances, [(face a, face b, d)] of the same-person pairs).

    Two faces of one person cut from one shot (a CategoryImages portrait and its album photo, obama.jpg and its
    partial crops) are not two photos of that person: such pairs are left out (see `copies`). An "unknown" face
    counts against the labelled people its fixture entry says it is not."""
    people = [f for f in faces if is_person(f)]
    same, diff, same_pairs = [], [], []
    for i in range(len(people)):
        for j in range(i + 1, len(people)):
            d = float(1.0 - people[i].embedding @ people[j].embedding)
            if people[i].label == people[j].label:
                if people[i].source == people[j].source:
                    continue
                same.append(d)
                same_pairs.append((describe(people[i]), describe(people[j]), d))
            else:
                diff.append(d)
    for u in faces:
        for p in people:
            if p.label in u.not_:
                diff.append(float(1.0 - u.embedding @ p.embedding))
    return np.array(same), np.array(diff), same_pairs


def describe(f: Face) -> str:
    return f"{f.label}@{f.photo}" + (f"(turned {f.turned})" if f.turned else "")


def summary(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"n": 0}
    return {"n": int(values.size), "min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def roc(same: np.ndarray, diff: np.ndarray) -> list[dict]:
    return [{"threshold": t,
             "same_recall": float((same <= t).mean()) if same.size else None,
             "different_false_accept": float((diff <= t).mean()) if diff.size else None,
             "different_accepted": int((diff <= t).sum())}
            for t in THRESHOLDS]


def concept_view(faces: list[Face], max_refs: int | None = None, draws: int = 50
                 ) -> tuple[np.ndarray, np.ndarray]:
    """MyVLM's person head: a face fires a concept when its min distance to the concept's references is <= t.

    Leave-one-out: each labelled face against each other identity's faces and its own from OTHER shots; an
    "unknown" face against the identities it is not. max_refs: draw that many references at random (the paper
    trains a concept on 4 images), `draws` times. Returns (distances to its own identity, to other identities).
    """
    rng = np.random.default_rng(0)
    people = sorted((f for f in faces if is_person(f)), key=describe)  # a fixed order: the same draws every run
    by_label = defaultdict(list)
    for f in people:
        by_label[f.label].append(f)
    by_label = dict(sorted(by_label.items()))
    own, other = [], []
    for f in people + sorted((u for u in faces if u.not_), key=lambda u: (u.photo, u.box)):
        for label, members in by_label.items():
            if not is_person(f) and label not in f.not_:
                continue
            # its own identity's references come from other shots (not itself, nor a copy of its shot)
            refs = np.stack([g.embedding for g in members if label != f.label or g.source != f.source]
                            or [np.zeros_like(f.embedding)])
            if not refs.any():
                continue
            dist = 1.0 - refs @ f.embedding  # (n refs,)
            target = own if label == f.label else other
            if max_refs is None or len(dist) <= max_refs:
                target.append(float(dist.min()))
            else:
                target += [float(dist[rng.choice(len(dist), max_refs, replace=False)].min()) for _ in range(draws)]
    return np.array(own), np.array(other)


def centroid_view(faces: list[Face]) -> tuple[np.ndarray, np.ndarray]:
    """"Is this X?" compares a group's centroid with each named person's centroid (People.suggestions). Proxy,
    harder than the real thing (one face is noisier than a group's centroid): each labelled face against the
    normalised mean of each identity's faces (its own: from other shots). Returns (own, other distances)."""
    people = [f for f in faces if f.label not in NOT_PEOPLE + (UNLABELLED,)]
    own, other = [], []
    for f in people:
        by_label = defaultdict(list)
        for g in people:
            if g.label != f.label or g.source != f.source:
                by_label[g.label].append(g.embedding)
        for label, vecs in by_label.items():
            c = np.mean(vecs, axis=0)
            c /= np.linalg.norm(c)
            (own if label == f.label else other).append(float(1.0 - f.embedding @ c))
    return np.array(own), np.array(other)


def centroid_pairs(faces: list[Face]) -> list[tuple[float, str, str]]:
    """Distances between the centroids of different identities with >= 2 shots, closest first."""
    by_label = defaultdict(list)
    for f in faces:
        if f.label not in NOT_PEOPLE + (UNLABELLED,):
            by_label[f.label].append(f)
    cents = {}
    for label, fs in by_label.items():
        if len({f.source for f in fs}) >= 2:
            c = np.mean([f.embedding for f in fs], axis=0)
            cents[label] = c / np.linalg.norm(c)
    names = sorted(cents)
    return sorted((float(1.0 - cents[a] @ cents[b]), a, b) for i, a in enumerate(names) for b in names[i + 1:])


def small_pair_distances(faces: list[Face]) -> tuple[np.ndarray, np.ndarray]:
    """Like `pair_distances`, only the pairs with at least one face that may not found a person (small or unsure):
    the links a small-face rule decides. Returns (same-person, different-person distances)."""
    people = [f for f in faces if is_person(f)]
    same, diff = [], []
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            if a.quality and b.quality or (a.label == b.label and a.source == b.source):
                continue
            (same if a.label == b.label else diff).append(float(1.0 - a.embedding @ b.embedding))
    for u in faces:
        for p in people:
            if p.label in u.not_ and not (u.quality and p.quality):
                diff.append(float(1.0 - u.embedding @ p.embedding))
    return np.array(same), np.array(diff)


def _unit_mean(vecs: list[np.ndarray]) -> np.ndarray:
    c = np.mean(vecs, axis=0)
    return c / (np.linalg.norm(c) or 1.0)


def group_view(faces: list[Face], max_subsets: int = 400) -> list[dict]:
    """"Is this X?" as People.suggestions sees it: an unnamed group (some shots of identity A, any size) against
    named people (the rest of A; every other identity whole). One row per group: its distance to its own identity
    and to each other identity, and whether that identity shares a photo with the group (never suggested).
    Groups are drawn as subsets of A's shots (every subset where there are few, `max_subsets` random ones else)."""
    rng = np.random.default_rng(0)
    by_label: dict[str, list[Face]] = defaultdict(list)
    for f in sorted((f for f in faces if is_person(f)), key=describe):
        by_label[f.label].append(f)
    cents = {lab: _unit_mean([f.embedding for f in fs]) for lab, fs in by_label.items()}
    photos = {lab: {(f.dataset, f.photo) for f in fs} for lab, fs in by_label.items()}
    rows = []
    for lab, fs in sorted(by_label.items()):
        shots = sorted({f.source for f in fs})
        if len(shots) < 2:
            continue
        n = len(shots)
        masks = range(1, 2**n - 1) if 2**n - 2 <= max_subsets else {int(m) for m in rng.integers(1, 2**n - 1,
                                                                                                  max_subsets)}
        for m in sorted(masks):
            mine = {shots[i] for i in range(n) if m >> i & 1}
            group = [f for f in fs if f.source in mine]
            rest = [f for f in fs if f.source not in mine]
            g = _unit_mean([f.embedding for f in group])
            gphotos = {(f.dataset, f.photo) for f in group}
            rows.append({
                "identity": lab, "size": len(group), "own": float(1.0 - g @ _unit_mean([f.embedding for f in rest])),
                "others": {o: float(1.0 - g @ c) for o, c in cents.items() if o != lab},
                "together": sorted(o for o in cents if o != lab and photos[o] & gphotos),
            })
    return rows


def suggestion_outcomes(rows: list[dict], distance: float, margin: float, apart_only: bool = True) -> dict:
    """What a suggestion rule offers the groups of `group_view`, all other identities named: the best eligible
    person within `distance` whose lead over the next eligible one is at least `margin`. Eligible: does not share a
    photo with the group (when apart_only). Returns right / wrong / none counts."""
    out = {"right": 0, "wrong": 0, "none": 0, "wrong_for": defaultdict(int)}
    for r in rows:
        cands = {"=" + r["identity"]: r["own"]} | {o: d for o, d in r["others"].items()
                                                    if not (apart_only and o in r["together"])}
        ranked = sorted(cands.items(), key=lambda kv: kv[1])
        best, d = ranked[0]
        lead = ranked[1][1] - d if len(ranked) > 1 else 1.0
        if d > distance or lead < margin:
            out["none"] += 1
        elif best.startswith("="):
            out["right"] += 1
        else:
            out["wrong"] += 1
            out["wrong_for"][best] += 1
    out["wrong_for"] = dict(out["wrong_for"])
    return out


def per_face(faces: list[Face]) -> list[dict]:
    people = sorted((f for f in faces if is_person(f)), key=lambda f: (f.dataset, f.label, describe(f)))
    rows = []
    for f in people:
        same = [float(1.0 - f.embedding @ g.embedding) for g in people if g.label == f.label and g.source != f.source]
        other = min((float(1.0 - f.embedding @ g.embedding), describe(g)) for g in people if g.label != f.label)
        rows.append({"face": describe(f), "min_side": round(min(f.box[2], f.box[3])), "score": round(f.score, 3),
                     "quality": f.quality, "nearest_same": min(same) if same else None,
                     "nearest_other": other[0], "nearest_other_is": other[1]})
    return rows


def cluster_sweep(lib: Library, faces: list[Face], base: FaceThresholds, distances: list[float],
                  field: str = "cluster_distance") -> list[dict]:
    """FaceClusterer from scratch at each value of the threshold `field` (the cluster distance, or the stricter one
    for links with small faces): people mixing identities, identities split, faces placed."""
    backend = create_backend(lib.options["face_backend"], lib.paths.models)
    label_of = {f.face_id: f.label for f in faces}
    not_of = {f.face_id: f.not_ for f in faces if f.not_}
    counts = defaultdict(int)
    for f in faces:
        counts[f.label] += 1
    rows = []
    for d in distances:
        th = FaceThresholds(**{**{k: getattr(base, k) for k in FaceThresholds.__dataclass_fields__},
                               field: d})
        FaceClusterer(lib.catalog, backend.key, backend.embedding_dim, th).recluster()
        members = defaultdict(list)
        member_ids = defaultdict(list)
        for r in lib.catalog.query("SELECT id, person_id FROM faces WHERE person_id IS NOT NULL"):
            members[r["person_id"]].append(label_of.get(r["id"], UNLABELLED))
            member_ids[r["person_id"]].append(r["id"])
        mixed = [sorted(set(m) - set(NOT_PEOPLE)) for m in members.values()
                 if len(set(m) - set(NOT_PEOPLE) - {UNLABELLED}) > 1]
        people_of = defaultdict(set)
        for pid, m in members.items():
            for label in m:
                people_of[label].add(pid)
        placed = sum(len(m) for m in members.values())
        misplaced = [fid for pid, ids in member_ids.items() for fid in ids
                     if set(not_of.get(fid, ())) & set(members[pid])]
        big = [lab for lab, n in counts.items() if lab not in NOT_PEOPLE + (UNLABELLED,) and n >= 3]
        rows.append({
            "cluster_distance": th.cluster_distance,
            "small_cluster_distance": th.small_cluster_distance,
            "distance": d,
            "people": len(members),
            "mixed_people": mixed,
            # every identity with >= 3 faces is one person holding all its faces
            "complete": all(len(people_of[lab]) == 1 and sum(m.count(lab) for m in members.values()) == counts[lab]
                            for lab in big),
            "strangers_misplaced": len(misplaced),  # "unknown" faces placed with someone they are known not to be
            "faces_placed": placed,
            "faces_placed_not_people": sum(1 for m in members.values() for lab in m if lab in NOT_PEOPLE),
            "identities": {lab: {"faces": counts[lab], "placed": sum(m.count(lab) for m in members.values()),
                                 "people": len(people_of[lab])}
                           for lab in sorted(counts) if lab not in NOT_PEOPLE + (UNLABELLED,) and counts[lab] >= 2},
        })
    FaceClusterer(lib.catalog, backend.key, backend.embedding_dim, base).recluster()  # back to the real thresholds
    return rows


def window(sweep: list[dict]) -> str:
    """Where on the sweep's grid every identity with >= 3 faces is one person and no person mixes identities."""
    good: list[float] = []  # the first unbroken run of good distances
    for r in sweep:
        if r["complete"] and not r["mixed_people"]:
            good.append(r["distance"])
        elif good:
            break
    first_mix = next((r["distance"] for r in sweep if r["mixed_people"]), None)
    first_stranger = next((r["distance"] for r in sweep if r["strangers_misplaced"]), None)
    span = f"{min(good):.3f}-{max(good):.3f}" if good else "nowhere"
    return (f"one person per identity (>= 3 faces), none mixed: {span}; first mix at {first_mix}; first stranger "
            f"placed with someone they are known not to be at {first_stranger}")


# -- report -----------------------------------------------------------------------------------------------------------


def print_group_view(faces: list[Face]) -> dict:
    """The "Is this X?" measurement (`group_view`): per candidate distance, how many groups find their own person
    (named) and how many are offered someone else while their own person is not named; and who that would be."""
    rows = group_view(faces)
    own = np.array([r["own"] for r in rows])
    apart = [{o: d for o, d in r["others"].items() if o not in r["together"]} for r in rows]
    nearest = np.array([min(a.values()) for a in apart])
    others = np.array([d for r in rows for d in r["others"].values()])
    print(f"\n== suggestions for groups: {len(rows)} groups cut from the labelled identities vs named people ==")
    print(f"  group vs the rest of its identity {fmt(summary(own))}")
    print(f"  group vs other identities         {fmt(summary(others))}")
    print(f"  ... not sharing a photo with it   {fmt(summary(nearest))} (the nearest per group)")
    print("    distance  own person offered  groups offered someone else (own person unnamed)")
    table = []
    for t in GROUP_THRESHOLDS:
        table.append({"threshold": t, "recall": float((own <= t).mean()), "wrong": int((nearest <= t).sum())})
        print(f"    {t:8.3f}  {table[-1]['recall']:18.1%}  {table[-1]['wrong']:4d} / {len(rows)}")
    hubs: dict[str, int] = defaultdict(int)
    for a in apart:
        hubs[min(a, key=a.__getitem__)] += 1
    print("  the nearest other identity of each group (one identity near most groups: a hub): "
          + ", ".join(f"{k} {v}" for k, v in sorted(hubs.items(), key=lambda kv: -kv[1])))
    return {"own": summary(own), "others": summary(others), "nearest_apart": summary(nearest), "table": table,
            "hubs": dict(hubs), "groups": len(rows)}


def fmt(s: dict) -> str:
    if not s.get("n"):
        return "n=0"
    return f"n={s['n']:4d}  min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}"


def print_roc(rows: list[dict]) -> None:
    print("    threshold  same-person recall  different-person false accept")
    for r in rows:
        recall = "   -  " if r["same_recall"] is None else f"{r['same_recall']:6.1%}"
        fa = "   -  " if r["different_false_accept"] is None else f"{r['different_false_accept']:6.2%}"
        print(f"    {r['threshold']:8.3f}   {recall:>17}  {fa:>14} ({r['different_accepted']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="the KPhotoAlbum labels fixture")
    ap.add_argument("--data", type=Path, default=TEST_DATA, help="the test photos (scripts/fetch_test_data.py)")
    ap.add_argument("--backend", default="dlib", help="face backend setting (default: dlib)")
    ap.add_argument("--crops", type=Path, help="write face crops and photo overviews (PNG) into this folder")
    ap.add_argument("--json", type=Path, help="write every measurement as JSON")
    ap.add_argument("--no-turn", dest="turn", action="store_false",
                    help="do not turn the sideways KPhotoAlbum photos by index.xml's angle")
    ap.add_argument("--keep", type=Path, help="keep the libraries in this folder (default: a temporary folder)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    labels = json.loads(args.labels.read_text())
    work = args.keep or Path(tempfile.mkdtemp(prefix="calibrate-faces-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    problems: list[str] = []
    try:
        kpa_album = args.data / "kphotoalbum"
        kpa_lib, kpa_upright = open_album(kpa_album, "kphotoalbum", args.backend, work)
        problems += label_kphotoalbum(kpa_upright, labels)
        base = create_backend(args.backend, kpa_lib.paths.models).thresholds
        sweep_upright = cluster_sweep(kpa_lib, kpa_upright, base, SWEEP)
        gates = raw_detections(kpa_lib, kpa_album, kpa_upright)
        kpa = kpa_upright
        if args.turn:
            kpa = turn_photos(kpa_lib, kpa_album, "kphotoalbum", kpa_upright, index_angles(kpa_album))
            problems += label_kphotoalbum([f for f in kpa if f.turned], labels)
            gates = [g for g in gates if g["photo"] not in index_angles(kpa_album)] + [
                g for g in raw_detections(kpa_lib, kpa_album, kpa) if g["turned"]]

        fr_album = work / "face_recognition"  # the portraits without 32bit.png (a copy of obama2.jpg)
        fr_album.mkdir(exist_ok=True)
        for name in FACE_RECOGNITION:
            shutil.copy2(args.data / "face_recognition" / name, fr_album / name)
        fr_lib, fr = open_album(fr_album, "face_recognition", args.backend, work)
        problems += label_by_file(fr, FACE_RECOGNITION)

        t1_album = work / "insightface"
        t1_album.mkdir(exist_ok=True)
        shutil.copy2(args.data / "insightface" / "t1.jpg", t1_album / "t1.jpg")
        t1_lib, t1 = open_album(t1_album, "insightface", args.backend, work)
        label_group(t1, "t1")
        gates += raw_detections(fr_lib, fr_album, fr) + raw_detections(t1_lib, t1_album, t1)

        if args.crops:
            write_crops(kpa_lib, kpa_album, kpa, args.crops / "kphotoalbum")
            write_crops(fr_lib, fr_album, fr, args.crops / "face_recognition")
            write_crops(t1_lib, t1_album, t1, args.crops / "insightface")

        backend = create_backend(args.backend, kpa_lib.paths.models)
        report: dict = {"backend": backend.key, "thresholds": {k: getattr(base, k) for k in
                                                               FaceThresholds.__dataclass_fields__}}

        print(f"backend {backend.key}; thresholds now: {report['thresholds']}\n")
        print("== faces found (the pipeline's gates applied) ==")
        counts: dict = {}
        for name, faces in (("kphotoalbum", kpa), ("face_recognition", fr), ("insightface", t1)):
            by = defaultdict(lambda: {"faces": 0, "quality": 0, "upright": 0})
            for f in faces:
                by[f.label]["faces"] += 1
                by[f.label]["quality"] += int(f.quality)
                by[f.label]["upright"] += int(not f.turned)
            counts[name] = dict(by)
            print(f"  {name}: {len(faces)} faces")
            for label, c in sorted(by.items()):
                print(f"    {label:18s} {c['faces']:3d} faces ({c['upright']} upright, {c['quality']} may found)")
        report["faces"] = counts
        if labels.get("photos"):
            labelled = sum(1 for e in labels["photos"].values() for b in e.get("faces", [])
                           if b["label"] not in NOT_PEOPLE)
            missed = [(p, b["label"]) for p, e in labels["photos"].items() for b in e.get("missed", [])]
            print(f"  kphotoalbum fixture: {labelled} labelled upright person faces; faces people can see but the "
                  f"detector misses (fixture 'missed'): {len(missed)}")

        sets = {
            "kphotoalbum": kpa,
            "kphotoalbum upright only": [f for f in kpa if not f.turned],
            "face_recognition": fr,
            "all (kphotoalbum + face_recognition + t1)": kpa + fr + t1,
        }
        report["pairs"] = {}
        for name, faces in sets.items():
            same, diff, _ = pair_distances(faces)
            print(f"\n== pairs: {name} ==")
            print(f"  same person      {fmt(summary(same))}")
            print(f"  different people {fmt(summary(diff))}")
            print_roc(roc(same, diff))
            report["pairs"][name] = {"same": summary(same), "different": summary(diff), "roc": roc(same, diff)}
        _, _, all_same = pair_distances(kpa + fr + t1)
        print("\n  the widest same-person pairs:")
        for a, b, d in sorted(all_same, key=lambda p: -p[2])[:8]:
            print(f"    {d:.3f}  {a} ~ {b}")
        people = [f for f in kpa + fr + t1 if f.label not in NOT_PEOPLE + (UNLABELLED,)]
        emb = np.stack([f.embedding for f in people])
        copies = sorted((float(1.0 - people[i].embedding @ people[j].embedding), describe(people[i]),
                         describe(people[j])) for i in range(len(people)) for j in range(i + 1, len(people))
                        if people[i].label == people[j].label and people[i].source == people[j].source)
        print("  one person, one shot (a portrait cut from an album photo, a partial crop): left out of the pairs")
        for d, a, b in copies:
            print(f"    {d:.3f}  {a} ~ {b}")
        report["copies"] = [list(c) for c in copies]
        dist = 1.0 - emb @ emb.T
        closest = sorted([(float(dist[i, j]), describe(people[i]), describe(people[j]))
                          for i in range(len(people)) for j in range(i + 1, len(people))
                          if people[i].label != people[j].label]
                         + [(float(1.0 - u.embedding @ p.embedding), f"unknown@{u.photo}", describe(p))
                            for u in kpa if u.not_ for p in people if p.label in u.not_])[:8]
        print("  the closest different-person pairs:")
        for d, a, b in closest:
            print(f"    {d:.3f}  {a} ~ {b}")
        report["widest_same"] = [list(p) for p in sorted(all_same, key=lambda p: -p[2])[:8]]
        report["closest_different"] = [list(p) for p in closest]

        own, other = concept_view(kpa + fr + t1)
        print("\n== MyVLM concept head (a face vs each identity's other faces, min distance; leave-one-out) ==")
        print(f"  own identity     {fmt(summary(own))}")
        print(f"  other identities {fmt(summary(other))}")
        print_roc(roc(own, other))
        report["concept"] = {"own": summary(own), "other": summary(other), "roc": roc(own, other)}
        own4, other4 = concept_view(kpa + fr + t1, max_refs=4)
        print("  with at most 4 references per concept (the paper's 4 training images; 50 random draws where an "
              "identity has more):")
        print(f"  own identity     {fmt(summary(own4))}")
        print(f"  other identities {fmt(summary(other4))}")
        print_roc(roc(own4, other4))
        report["concept_4_refs"] = {"own": summary(own4), "other": summary(other4), "roc": roc(own4, other4)}

        own_c, other_c = centroid_view(kpa + fr + t1)
        print("\n== suggestions (a face vs each identity's centroid of its other shots) ==")
        print(f"  own identity     {fmt(summary(own_c))}")
        print(f"  other identities {fmt(summary(other_c))}")
        print_roc(roc(own_c, other_c))
        report["suggestions"] = {"own": summary(own_c), "other": summary(other_c), "roc": roc(own_c, other_c)}
        cc = centroid_pairs(kpa + fr + t1)
        print("  whole identities, centroid vs centroid (different people):")
        for d, a, b in cc[:6]:
            print(f"    {d:.3f}  {a} ~ {b}")
        report["suggestions"]["centroid_pairs"] = [list(c) for c in cc]
        report["groups"] = print_group_view(kpa + fr + t1)

        small_same, small_diff = small_pair_distances(kpa + fr + t1)
        print("\n== pairs with a face that may not found a person (small or unsure): the small-face rule ==")
        print(f"  same person      {fmt(summary(small_same))}")
        print(f"  different people {fmt(summary(small_diff))}")
        print_roc(roc(small_same, small_diff))
        report["small_pairs"] = {"same": summary(small_same), "different": summary(small_diff),
                                 "roc": roc(small_same, small_diff)}

        print("\n== each labelled face: size, score, nearest same-person shot, nearest other person ==")
        report["per_face"] = per_face(kpa + fr + t1)
        for r in report["per_face"]:
            same = "   -  " if r["nearest_same"] is None else f"{r['nearest_same']:.3f}"
            print(f"  {r['face']:58s} {r['min_side']:4d} px  score {r['score']:.2f}  quality {int(r['quality'])}  "
                  f"same {same}  other {r['nearest_other']:.3f} ({r['nearest_other_is']})")

        print("\n== the detector's gates (min_face_px, min_score) on its raw output ==")
        for g in sorted(gates, key=lambda g: (g["kept"], g["min_side"])):
            if not g["kept"] or g["min_side"] < 64 or g["score"] < 0.8:
                print(f"  {'kept   ' if g['kept'] else 'DROPPED'} {g['photo']} (turned {g['turned']}) {g['box']} "
                      f"{g['min_side']} px score {g['score']:.2f} -> {g['label']}")
        print(f"  ({sum(not g['kept'] for g in gates)} of {len(gates)} raw detections dropped; faces >= 64 px with "
              f"score >= 0.8 not listed)")
        report["gates"] = gates

        report["clustering"] = {}
        for title, sweep in (("as stored (sideways photos not turned)", sweep_upright),
                             ("after turning the sideways photos", cluster_sweep(kpa_lib, kpa, base, SWEEP)
                              if args.turn else [])):
            print(f"\n== FaceClusterer on the KPhotoAlbum album, {title} ==")
            if sweep:
                print("  " + window(sweep))
            for row in sweep:
                if round(row["distance"] * 1000) % 5:
                    continue  # the 0.001 grid is for the window above; rows every 0.005
                ids = ", ".join(f"{lab} {c['placed']}/{c['faces']} in {c['people']}"
                                for lab, c in row["identities"].items())
                print(f"  {row['cluster_distance']:.3f}: {row['people']} people, mixed "
                      f"{row['mixed_people'] or 'none'}; {row['faces_placed']} faces placed "
                      f"({row['faces_placed_not_people']} unknown); {ids}")
            report["clustering"][title] = sweep
        if args.turn:
            plain = FaceThresholds(**{**{k: getattr(base, k) for k in FaceThresholds.__dataclass_fields__},
                                      "small_cluster_distance": None})
            sweep = cluster_sweep(kpa_lib, kpa, plain, SMALL_SWEEP, field="small_cluster_distance")
            print(f"\n== FaceClusterer, turned album, cluster distance {base.cluster_distance}: links with a small "
                  "or unsure face at a stricter distance ==")
            print("  " + window(sweep))
            for row in sweep:
                ids = ", ".join(f"{lab} {c['placed']}/{c['faces']}" for lab, c in row["identities"].items())
                print(f"  {row['distance']:.3f}: mixed {row['mixed_people'] or 'none'}; strangers placed with "
                      f"someone they are not: {row['strangers_misplaced']}; {ids}")
            report["clustering"]["small faces, turned album"] = sweep

        if problems:
            print("\n== label problems ==")
            for p in problems:
                print("  " + p)
        report["problems"] = problems
        print(f"\n{time.perf_counter() - started:.1f} s")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
        for lib in (kpa_lib, fr_lib, t1_lib):
            lib.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
