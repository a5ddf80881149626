"""The dlib face backend: dlib's HOG (or CNN) face detector, its 5-point shape predictor and its ResNet face
recogniser (128-d). The models are CC0 and install from PyPI (`dlib-bin` + `face-recognition-models`), so this
backend always works, offline included: it is the fallback. The shared interface and conventions are in backends.py.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.faces.backends import (
    ARCFACE_TEMPLATE_112,
    DetectedFace,
    FaceBackend,
    FaceBackendError,
    FaceThresholds,
    check_image,
    l2_normalise,
    thresholds_dict,
)

DLIB_KEY = "dlib-resnet-v1"
DLIB_LICENCE = "CC0 1.0 (dlib models by Davis King, packaged by face-recognition-models)"
DLIB_SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
DLIB_RECOGNISER = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_CNN_DETECTOR = "mmod_human_face_detector.dat"

# dlib's documentation: two descriptors are the same person when their *Euclidean* distance is below 0.6, and its
# face-clustering example links faces closer than 0.5. The descriptors are not unit vectors: their norms are about
# 1.3-1.6 (mean ~1.45 on the face_recognition and InsightFace test photos). For two descriptors of norm n,
# |a - b|^2 = 2 n^2 (1 - cos), so a Euclidean distance e corresponds to a cosine distance of about e^2 / (2 n^2).
_DLIB_TYPICAL_NORM = 1.45


def _dlib_euclidean_to_cosine(euclidean: float) -> float:
    return round(euclidean**2 / (2 * _DLIB_TYPICAL_NORM**2), 4)


# MEASURED on real, hand-labelled faces through the real pipeline (scripts/calibrate_faces.py; tables, data and
# reasons in docs/face-thresholds.md): 39 faces dlib finds on the test photos, 35 of them of 12 known people (the
# KPhotoAlbum demo album, face_recognition's Obama and Biden, InsightFace's t1.jpg). Same-person pairs lie at
# 0.009-0.123, different-person pairs at 0.076-0.239: they overlap, so each value is a trade-off, chosen where the
# measurements put it. dlib's Euclidean rules above convert to 0.059 (clustering, 0.5) and 0.086 (same person, 0.6):
# the measured concept value agrees with the second, while 0.059 leaves 3 of Jesper's 9 upright faces out of his
# person on the demo album.
DLIB_THRESHOLDS = FaceThresholds(
    # FaceClusterer on the demo album puts every identity in one person, with no person mixing two identities, for
    # 0.071-0.090 (sideways photos turned) / 0.071-0.093 (as stored): 0.08 is the middle of that window. (From 0.076
    # a background stranger joins Jim once wayne.jpg is turned: the price of not splitting Jesper.)
    cluster_distance=0.08,
    # "Is this X?" (an unnamed group's centroid vs a named person's): on every group that can be cut from the
    # labelled identities (388), the group vs the rest of its own identity is 0.008-0.061, vs another identity
    # 0.075 and up (0.077 apart from the photos they share): 0.068 is the middle of that gap. At the old 0.10,
    # 207 of the 388 groups would have been offered someone else while their own person was unnamed.
    suggest_distance=0.068,
    # the MyVLM person head (min distance to a concept's references): with 4 references (the paper's training
    # images), recall 96.6% at 0.02% false accepts (the paper's ArcFace: 96.4% at 2.3%); with every reference, 100%
    # at 0.26%.
    concept_distance=0.085,
    # Size and score gates, checked against the same faces and kept as they were: they drop none of the 39. The HOG
    # detector (80 px window, upsample=1) finds faces down to 37 px; the three under 44 px are background strangers,
    # every named face is >= 44 px with score >= 0.65 (>= 0.77 in the album).
    min_face_px=36,
    found_min_px=64,  # smaller faces may join a person but not found one (8 of the album's 23 named faces)
    min_score=0.5,  # = raw HOG score 0, dlib's own decision threshold (see DlibBackend for the mapping)
    found_min_score=0.75,  # = raw HOG score ~0.55
    # links with a face that may not found (< 64 px or unsure): FaceClusterer on the turned album places every
    # labelled face right and no stranger for 0.070-0.075 (Jesper's 63 px face in grand_canyon_1.jpg needs 0.070;
    # bar55.jpg's background woman joins Jim through his 44 px face at 0.076); 37 px strangers of another album
    # joined a named person at 0.073 and 0.076 with the plain 0.08: 0.072 keeps them out.
    small_cluster_distance=0.072,
)


def dlib_model_dir() -> Path:
    """The folder holding dlib's model files from the `face-recognition-models` package.

    Found with importlib's spec, without importing the package (its __init__ imports pkg_resources, gone from
    setuptools >= 81).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceBackendError(
            "dlib's face models are not installed: `pip install face-recognition-models` (CC0, ~100 MB) "
            "provides them; `dlib-bin` provides dlib itself"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _dlib_score(raw: float) -> float:
    """dlib's raw detector score (HOG: SVM margin, ~0..3 for faces; CNN: MMOD confidence) -> 0..1.

    score = sigmoid(2 * raw): dlib's own decision threshold (raw 0) maps to 0.5, like InsightFace's default det_thresh;
    raw 0.5 -> 0.73, 1 -> 0.88, 2 -> 0.98. Inverse: raw = ln(score / (1 - score)) / 2.
    """
    return _sigmoid(2.0 * float(raw))


# Where SCRFD puts the nose tip and mouth corners relative to dlib's points, in ArcFace's 112 px template frame (eyes
# on the template's eyes). Fitted on 28 faces both detectors found (InsightFace's t1.jpg, the KPhotoAlbum demo, the
# face_recognition photos): the tip sits 6.5 px above dlib's nose base and swings 1.5x as far sideways when the head
# turns; the mouth corners sit 9.3 px below dlib's nose base, at x 41.8 and 73.1 whatever the head does.
_NOSE_TIP_RISE = 6.5
_NOSE_TIP_EXTRA_SWING = 0.5
_TEMPLATE_NOSE_X = 56.0
_MOUTH_BELOW_NOSE_BASE = 9.3
_MOUTH_X = (41.8, 73.1)


def _dlib_landmarks_to_insightface(parts: np.ndarray) -> np.ndarray:
    """dlib's 5 points (5, 2) -> InsightFace's 5 points (5, 2) float32.

    dlib's shape_predictor_5_face_landmarks gives, in image terms: 0 = right eye outer corner, 1 = right eye inner
    corner, 2 = left eye outer corner, 3 = left eye inner corner, 4 = the base of the nose (where it meets the upper
    lip), "left" being the image's left. InsightFace wants eye centres, the nose tip and the mouth corners:

      left eye  = midpoint of dlib points 2 and 3     right eye = midpoint of dlib points 0 and 1
      nose tip  = ESTIMATED from dlib point 4         mouth corners = ESTIMATED (dlib's model has no mouth points)

    The estimates use the constants above in the frame that puts the eyes on ArcFace's template eyes. Against
    SCRFD's keypoints on those 28 faces the mean error is 0.12 (nose) and 0.17 (mouth corners) of the eye distance,
    versus 0.07-0.12 for the eyes: fine for display and pose checks; dlib's embeddings use dlib's own points anyway.
    """
    parts = np.asarray(parts, dtype=np.float64).reshape(5, 2)
    left_eye = (parts[2] + parts[3]) / 2
    right_eye = (parts[0] + parts[1]) / 2
    # Similarity transform template frame -> image, from the two eyes, as complex numbers: z_image = a * z + b.
    t_left, t_right = (complex(*p) for p in ARCFACE_TEMPLATE_112[:2].astype(np.float64))
    i_left, i_right = complex(*left_eye), complex(*right_eye)
    if i_left == i_right:  # degenerate shape: no frame to place the estimates in
        return np.array([left_eye, right_eye, parts[4], parts[4], parts[4]], dtype=np.float32)
    a = (i_right - i_left) / (t_right - t_left)
    b = i_left - a * t_left
    base = (complex(*parts[4]) - b) / a  # dlib's nose base in the template frame
    nose_tip = complex(base.real + _NOSE_TIP_EXTRA_SWING * (base.real - _TEMPLATE_NOSE_X), base.imag - _NOSE_TIP_RISE)
    mouth_y = base.imag + _MOUTH_BELOW_NOSE_BASE
    estimated = [a * z + b for z in (nose_tip, complex(_MOUTH_X[0], mouth_y), complex(_MOUTH_X[1], mouth_y))]
    return np.array([left_eye, right_eye] + [[z.real, z.imag] for z in estimated], dtype=np.float32)


@dataclass(frozen=True)
class DlibConfig:
    detector: str = "hog"  # "hog" (fast, frontal faces) or "cnn" (MMOD: more poses, much slower on CPU)
    upsample: int = 1  # times the detector doubles the image first: 1 finds faces down to ~40 px, at ~4x the time
    jitters: int = 1  # > 1: average that many randomly jittered crops per face (slower, not deterministic)
    adjust_threshold: float = 0.0  # HOG only: added to dlib's decision threshold (negative finds more, weaker faces)
    padding: float = 0.25  # context around the aligned 150 px crop the ResNet sees (dlib's default)
    models_dir: Path | None = None  # folder with the .dat files; None = the face-recognition-models package

    def __post_init__(self) -> None:
        if self.detector not in ("hog", "cnn"):
            raise FaceBackendError(f"dlib detector must be 'hog' or 'cnn', not {self.detector!r}")
        if self.upsample < 0 or self.jitters < 0:
            raise FaceBackendError("dlib upsample and jitters must be >= 0")


class DlibBackend(FaceBackend):
    """dlib: HOG or CNN detector, 5-point shape predictor, ResNet 128-d descriptors (L2-normalised here).

    Threads: dlib's object detectors and DNNs are not thread-safe (dlib's docs), the shape predictor is. The HOG
    detector releases the GIL, so each thread gets its own detector (two workers really detect in parallel); the
    shape predictor is shared; the ResNet (which holds the GIL anyway) is shared behind a lock.

    Scores: see `_dlib_score` (sigmoid of twice the raw score; 0.5 = dlib's own threshold).
    """

    name = "dlib"
    embedding_dim = 128

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 1,
        jitters: int = 1,
        *,
        adjust_threshold: float = 0.0,
        models_dir: Path | None = None,
        thresholds: FaceThresholds | None = None,
    ) -> None:
        self.config = DlibConfig(
            detector=detector,
            upsample=int(upsample),
            jitters=int(jitters),
            adjust_threshold=float(adjust_threshold),
            models_dir=Path(models_dir) if models_dir is not None else None,
        )
        self.key = DLIB_KEY  # the detector does not change the embedding space: hog and cnn faces mix
        self.thresholds = thresholds or DLIB_THRESHOLDS
        self._load_lock = threading.Lock()
        self._embed_lock = threading.Lock()  # the ResNet is not thread-safe
        self._thread = threading.local()  # per-thread detector
        self._shape_predictor = None  # shared (thread-safe)
        self._recogniser = None  # shared behind _embed_lock
        self._files: dict[str, Path] = {}

    # -- loading -----------------------------------------------------------------------------------------------------

    def _model_file(self, filename: str) -> Path:
        folder = self.config.models_dir or dlib_model_dir()
        path = folder / filename
        if not path.is_file():
            raise FaceBackendError(
                f"dlib model file {filename} is missing from {folder}; reinstall `face-recognition-models`"
            )
        return path

    def load(self) -> None:
        if self._recogniser is not None:
            return
        with self._load_lock:
            if self._recogniser is not None:
                return
            import dlib

            files = {
                "shape_predictor": self._model_file(DLIB_SHAPE_PREDICTOR),
                "recogniser": self._model_file(DLIB_RECOGNISER),
            }
            if self.config.detector == "cnn":
                files["detector"] = self._model_file(DLIB_CNN_DETECTOR)
            self._shape_predictor = dlib.shape_predictor(str(files["shape_predictor"]))
            self._files = files
            self._recogniser = dlib.face_recognition_model_v1(str(files["recogniser"]))  # set last: marks "loaded"

    def _detector(self):
        """This thread's detector (dlib detectors must not be shared between threads)."""
        det = getattr(self._thread, "detector", None)
        if det is None:
            import dlib

            if self.config.detector == "hog":
                det = dlib.get_frontal_face_detector()
            else:
                det = dlib.cnn_face_detection_model_v1(str(self._files["detector"]))
            self._thread.detector = det
        return det

    # -- inference ---------------------------------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = check_image(image)  # (H, W, 3) uint8 RGB
        self.load()
        det = self._detector()
        if self.config.detector == "hog":
            # rects: dlib.rectangles in the input's pixels (dlib maps the upsampling back), raw: SVM margins
            rects, raw, _ = det.run(image, self.config.upsample, self.config.adjust_threshold)
            found = list(zip(rects, raw))
        else:
            found = [(d.rect, d.confidence) for d in det(image, self.config.upsample)]
        faces = []
        for rect, raw_score in found:
            parts = self._shape_predictor(image, rect).parts()  # 5 dlib points, see _dlib_landmarks_to_insightface
            points = np.array([[p.x, p.y] for p in parts], dtype=np.float32)  # (5, 2)
            faces.append(
                DetectedFace(
                    # dlib rectangles are inclusive: right = left + width - 1
                    bbox=(rect.left(), rect.top(), rect.width(), rect.height()),
                    landmarks=_dlib_landmarks_to_insightface(points),
                    score=_dlib_score(raw_score),
                )
            )
        faces.sort(key=lambda f: -f.score)
        return faces

    def embed(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        image = check_image(image)
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        self.load()
        import dlib

        # dlib aligns with its own 5 points, which DetectedFace does not keep (its mouth corners are estimates):
        # re-run the (cheap, deterministic) shape predictor on each box; for boxes from detect() this gives the
        # same points as detection did.
        shapes = dlib.full_object_detections()
        for face in faces:
            x, y, w, h = face.bbox
            rect = dlib.rectangle(int(round(x)), int(round(y)), int(round(x + w)) - 1, int(round(y + h)) - 1)
            shapes.append(self._shape_predictor(image, rect))
        with self._embed_lock:
            # one call for all faces of the photo: dlib batches them through the ResNet
            vectors = self._recogniser.compute_face_descriptor(
                image, shapes, self.config.jitters, self.config.padding
            )
        descriptors = np.array([np.asarray(v) for v in vectors], dtype=np.float32)  # (n, 128), norms ~1.3-1.6
        return l2_normalise(descriptors)

    def describe(self) -> dict[str, Any]:
        self.load()
        import dlib

        cuda = bool(getattr(dlib, "DLIB_USE_CUDA", False))
        detector = "HOG (dlib.get_frontal_face_detector)" if self.config.detector == "hog" else "CNN (MMOD)"
        return {
            "name": f"dlib ({self.config.detector})",
            "backend": self.name,
            "key": self.key,
            "embedding_dim": self.embedding_dim,
            "detector": detector,
            "model_files": {role: str(path) for role, path in self._files.items()},
            "licence": DLIB_LICENCE,
            "device": "cuda" if cuda else "cpu",
            "config": {
                "detector": self.config.detector,
                "upsample": self.config.upsample,
                "jitters": self.config.jitters,
                "adjust_threshold": self.config.adjust_threshold,
            },
            "thresholds": thresholds_dict(self.thresholds),
        }
