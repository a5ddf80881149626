"""Faces stage: detect and embed faces on each photo's preview, keep identities across re-runs, then cluster.

Boxes are stored in the displayed frame (EXIF orientation and the user's rotation applied) at full resolution. A
face found again at the same place (IoU > 0.5) keeps its id, person and state; confirmed faces are never dropped
(after a backend switch they are re-embedded where they were).
"""

from __future__ import annotations

import io
import logging
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine import settings
from engine.domain.face_clustering import FaceClusterer
from engine.models.faces.backends import DetectedFace, FaceBackend, create_backend
from engine.pipeline.runner import Job, Stage
from engine.pipeline.thumbnails import ImageCache
from engine.storage.catalog import Catalog, now
from engine.storage.vectors import to_blob

log = logging.getLogger(__name__)

CROP_SIZE = 160
CROP_MARGIN = 1.6  # crop side = box side × margin, for a little context around the face
IOU_SAME_FACE = 0.5
CODE_VERSION = 1


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def same_face(a: tuple[float, float, float, float], b: tuple[float, float, float, float], same_backend: bool) -> float:
    """How surely two boxes are one face (0: not the same). Same detector: IoU > 0.5. Different detectors frame
    faces differently (dlib's HOG box is a tight square, SCRFD's a taller rectangle; IoU 0.53-0.76 measured on the
    same faces), so across backends each box must also hold the other's centre, at a similar size."""
    overlap = iou(a, b)
    if overlap > IOU_SAME_FACE:
        return overlap
    if same_backend:
        return 0.0

    def holds(box: tuple[float, float, float, float], other: tuple[float, float, float, float]) -> bool:
        cx, cy = other[0] + other[2] / 2, other[1] + other[3] / 2
        return box[0] <= cx <= box[0] + box[2] and box[1] <= cy <= box[1] + box[3]

    ratio = (a[2] * a[3]) / max(b[2] * b[3], 1e-6)
    return overlap if holds(a, b) and holds(b, a) and 0.4 <= ratio <= 2.5 and overlap > 0.25 else 0.0


@dataclass
class FoundFace:
    bbox: tuple[float, float, float, float]  # displayed frame, full resolution
    landmarks: np.ndarray  # (5, 2) displayed frame
    score: float
    quality: bool
    embedding: np.ndarray  # (dim,)
    crop: bytes  # JPEG
    keep_id: int | None = None  # an existing confirmed face re-embedded in place


@dataclass
class FacesResult:
    faces: list[FoundFace] = field(default_factory=list)


@dataclass(frozen=True)
class _Known:
    id: int
    bbox: tuple[float, float, float, float]
    landmarks: bytes | None
    state: str
    backend: str
    has_embedding: bool


class FaceStage(Stage):
    name = "faces"
    requires = ("thumbnail",)
    workers = 2

    def __init__(self) -> None:
        self.backend_name: str | None = None
        self.backend: FaceBackend | None = None
        self.cache: ImageCache | None = None
        self.version = CODE_VERSION
        self._photos: dict[int, tuple[int, int, int]] = {}
        self._known: dict[int, list[_Known]] = {}
        self.faces_dir: str = ""

    def configure(self, face_backend: str | None = None, **_: object) -> None:
        if face_backend:
            self.backend_name = face_backend

    def setup(self, catalog: Catalog) -> None:
        if self.backend is None:
            self.backend = resolve_backend(catalog, self.backend_name)
        # Different backend, different embedding space: the version changes, so every photo is redone.
        self.version = zlib.crc32(f"{CODE_VERSION}:{self.backend.key}".encode()) & 0x7FFFFFFF
        self.cache = ImageCache(catalog.paths)
        self.faces_dir = str(catalog.paths.root / "faces")
        os.makedirs(self.faces_dir, exist_ok=True)

    def before_work(self, catalog: Catalog, jobs: list[Job]) -> None:
        ids = [j.photo_id for j in jobs]
        self._photos, self._known = {}, {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for r in catalog.query(f"SELECT id, width, height, user_rotation FROM photos WHERE id IN ({marks})", chunk):
                self._photos[r["id"]] = (r["width"], r["height"], r["user_rotation"])
            self._known.update(_known_faces(catalog, chunk))

    # -- worker thread ---------------------------------------------------------------------------------------------

    def process(self, job: Job) -> FacesResult:
        assert self.backend is not None and self.cache is not None
        width, height, rotation = self._photos[job.photo_id]
        preview = self.cache.preview(job.fs_path, job.content_hash, rotation)
        pixels = np.asarray(preview)  # (H, W, 3) uint8 RGB, displayed frame
        disp_w, disp_h = (height, width) if rotation % 180 else (width, height)
        scale = disp_w / pixels.shape[1]  # preview -> full-resolution displayed frame
        th = self.backend.thresholds
        detected = [f for f in self.backend.detect(pixels) if th.keep(f)]  # gates in preview pixels
        result = FacesResult()
        if detected:
            emb = self.backend.embed(pixels, detected)  # (n, dim)
            for f, e in zip(detected, emb, strict=True):
                quality = th.may_found(f)
                result.faces.append(FoundFace(
                    tuple(float(v) * scale for v in f.bbox), np.asarray(f.landmarks, np.float32) * scale,
                    float(f.score), quality, e, _crop(preview, f.bbox)))
        # Confirmed faces the detector missed this time (another backend, another rotation): embed them in place.
        for k in self._known.get(job.photo_id, []):
            if k.state != "confirmed" or k.landmarks is None:
                continue
            if k.backend == self.backend.key and k.has_embedding:
                continue  # its embedding is still good: the detector just could not see it this time
            if any(same_face(k.bbox, f.bbox, k.backend == self.backend.key) for f in result.faces):
                continue
            lm = np.frombuffer(k.landmarks, np.float32).reshape(5, 2) / scale
            box = tuple(v / scale for v in k.bbox)
            face = DetectedFace(box, lm, 1.0)
            e = self.backend.embed(pixels, [face])[0]
            result.faces.append(FoundFace(k.bbox, lm * scale, 1.0, False, e, _crop(preview, box), keep_id=k.id))
        return result

    # -- writer thread ---------------------------------------------------------------------------------------------

    def commit(self, catalog: Catalog, job: Job, result: FacesResult) -> None:
        """Make the photo's stored faces those found now: a face stored already (by an earlier run, or by another
        run at the same time) is updated in place, never stored a second time; the faces are read again here,
        under the write lock, not taken from what `before_work` saw."""
        assert self.backend is not None
        key = self.backend.key
        known = {k.id: k for k in _known_faces(catalog, [job.photo_id]).get(job.photo_id, [])}
        matched: set[int] = set()
        ts = now()
        for f in result.faces:
            face_id = f.keep_id if f.keep_id in known and f.keep_id not in matched else None
            if face_id is None:
                best = max(((same_face(k.bbox, f.bbox, k.backend == key), k.id) for k in known.values()
                            if k.id not in matched), default=(0.0, None))
                face_id = best[1] if best[0] > 0 else None
            x, y, w, h = f.bbox
            if face_id is not None:
                matched.add(face_id)
                k = known[face_id]
                forgotten = k.state == "ignored" and not k.has_embedding  # the user asked us to forget this face
                catalog.conn.execute(
                    "UPDATE faces SET backend = ?, x = ?, y = ?, w = ?, h = ?, landmarks = ?, score = ?, quality = ?, "
                    "embedding = ?, updated_at = ? WHERE id = ?",
                    [key, x, y, w, h, None if forgotten else to_blob(f.landmarks), f.score, int(f.quality),
                     None if forgotten else to_blob(f.embedding), ts, face_id])
                if forgotten:
                    continue
            else:
                face_id = int(catalog.conn.execute(
                    "INSERT INTO faces(photo_id, backend, x, y, w, h, landmarks, score, quality, embedding, state, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'unknown', ?, ?)",
                    [job.photo_id, key, x, y, w, h, to_blob(f.landmarks), f.score, int(f.quality),
                     to_blob(f.embedding), ts, ts]).lastrowid)
            _write_crop(self.faces_dir, face_id, f.crop)
        for k in known.values():
            if k.id not in matched and k.state not in ("confirmed", "ignored"):
                catalog.conn.execute("DELETE FROM faces WHERE id = ?", [k.id])
                _remove_crop(self.faces_dir, k.id)

    def share(self, catalog: Catalog, source_photo_id: int, job: Job) -> None:
        """A duplicate photo has the same faces: copy them (placed like the original's, not confirmed)."""
        if catalog.scalar("SELECT 1 FROM faces WHERE photo_id = ? LIMIT 1", [job.photo_id]):
            return
        rows = catalog.query("SELECT * FROM faces WHERE photo_id = ?", [source_photo_id])
        ts = now()
        for r in rows:
            new_id = int(catalog.conn.execute(
                "INSERT INTO faces(photo_id, backend, x, y, w, h, landmarks, score, quality, embedding, person_id, "
                "state, similarity, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [job.photo_id, r["backend"], r["x"], r["y"], r["w"], r["h"], r["landmarks"], r["score"], r["quality"],
                 r["embedding"], r["person_id"], "suggested" if r["person_id"] else r["state"], r["similarity"],
                 ts, ts]).lastrowid)
            src = os.path.join(self.faces_dir, f"{r['id']}.jpg")
            if os.path.exists(src):
                with open(src, "rb") as fh:
                    _write_crop(self.faces_dir, new_id, fh.read())

    def finish(self, catalog: Catalog) -> None:
        """New faces are placed into people once a run's detections are committed."""
        assert self.backend is not None
        report = FaceClusterer(catalog, self.backend.key, self.backend.embedding_dim, self.backend.thresholds).run()
        log.info("clustering: %s", report.to_json())


def _known_faces(catalog: Catalog, photo_ids: list[int]) -> dict[int, list[_Known]]:
    """The faces stored for these photos now, by photo."""
    out: dict[int, list[_Known]] = {}
    marks = ",".join("?" * len(photo_ids))
    for r in catalog.query(
            f"SELECT id, photo_id, x, y, w, h, landmarks, state, backend, embedding IS NOT NULL AS has_emb "
            f"FROM faces WHERE photo_id IN ({marks}) ORDER BY id", photo_ids):
        out.setdefault(r["photo_id"], []).append(
            _Known(r["id"], (r["x"], r["y"], r["w"], r["h"]), r["landmarks"], r["state"], r["backend"],
                   bool(r["has_emb"])))
    return out


def turn_faces(catalog: Catalog, photo, degrees: int) -> None:
    """Turn a photo's stored face boxes and landmarks clockwise by `degrees` (multiple of 90), in its displayed frame."""
    steps = (degrees // 90) % 4
    if not steps or photo.width is None:
        return
    w_disp, h_disp = (photo.height, photo.width) if photo.user_rotation % 180 else (photo.width, photo.height)
    for r in catalog.query("SELECT id, x, y, w, h, landmarks FROM faces WHERE photo_id = ?", [photo.id]):
        x, y, w, h = r["x"], r["y"], r["w"], r["h"]
        lm = None if r["landmarks"] is None else np.frombuffer(r["landmarks"], np.float32).reshape(5, 2).copy()
        fw, fh = w_disp, h_disp
        for _ in range(steps):  # 90° clockwise in a fw × fh frame: (x, y) -> (fh - y, x)
            x, y, w, h = fh - y - h, x, h, w
            if lm is not None:
                lm = np.stack([fh - lm[:, 1], lm[:, 0]], axis=1).astype(np.float32)
            fw, fh = fh, fw
        catalog.conn.execute("UPDATE faces SET x = ?, y = ?, w = ?, h = ?, landmarks = ?, updated_at = ? WHERE id = ?",
                             [x, y, w, h, None if lm is None else to_blob(lm), now(), r["id"]])


def resolve_backend(catalog: Catalog, override: str | None = None) -> FaceBackend:
    """The backend a run uses: `--face-backend`, else the library's setting, else automatic (models load lazily)."""
    return create_backend(override or settings.read(catalog, "face_backend"), catalog.paths.models)


def _crop(img: Image.Image, bbox: tuple[float, float, float, float]) -> bytes:
    x, y, w, h = bbox
    side = max(w, h) * CROP_MARGIN
    cx, cy = x + w / 2, y + h / 2
    box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    crop = img.crop(box).resize((CROP_SIZE, CROP_SIZE), Image.Resampling.BICUBIC)  # outside the photo: black
    buf = io.BytesIO()
    crop.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def crop_path(faces_dir: str, face_id: int) -> str:
    return os.path.join(faces_dir, f"{face_id}.jpg")


def _write_crop(faces_dir: str, face_id: int, data: bytes) -> None:
    tmp = crop_path(faces_dir, face_id) + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, crop_path(faces_dir, face_id))


def _remove_crop(faces_dir: str, face_id: int) -> None:
    try:
        os.unlink(crop_path(faces_dir, face_id))
    except FileNotFoundError:
        pass
