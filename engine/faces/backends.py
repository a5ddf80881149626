"""Face backends: find faces in a photo and turn each into an embedding, behind one interface.

Two families of models sit behind `FaceBackend`:

  * `DlibBackend`: dlib's HOG (or CNN) face detector, its 5-point shape predictor and its ResNet face recogniser
    (128-d). The models are CC0 and install from PyPI (`dlib-bin` + `face-recognition-models`), so this backend
    always works, offline included. It is the fallback.
  * `InsightFaceBackend`: an InsightFace model pack (buffalo_l, buffalo_s, antelopev2 or any folder with a detection
    and a recognition ONNX): SCRFD detection with 5 keypoints, ArcFace alignment and a 512-d ArcFace embedding.
    Much better than dlib, but the packs are downloaded on request and their licence is non-commercial research only.

`create_backend(name, library_models_dir)` turns a user setting ("auto", "dlib", "insightface:buffalo_l", a folder...)
into a backend; "auto" takes an InsightFace pack when one is installed and dlib otherwise.

Conventions shared by every backend:
  * input images are (H, W, 3) uint8 RGB numpy arrays (the pipeline's ~1440 px previews);
  * boxes are x, y, w, h in that image's pixels, exactly as the detector reports them (a face cut by the photo's
    edge may give a box that reaches slightly past it: clip for display and crops);
  * landmarks are 5 points in InsightFace's order (left eye, right eye, nose, left mouth corner, right mouth corner,
    "left" meaning the image's left, i.e. the person's right);
  * embeddings are float32 rows with unit L2 norm, and every distance is a cosine distance, 1 - cos(a, b);
  * `key` names the embedding space: embeddings with different keys are never compared or mixed.

Model files are loaded lazily, once per backend object, on the first `detect`/`embed`/`load` call. The pipeline calls
`detect` and `embed` from up to two worker threads; see each backend for what it shares between threads.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "DetectedFace",
    "DlibBackend",
    "DlibConfig",
    "FaceBackend",
    "FaceBackendError",
    "FaceThresholds",
    "BACKEND_NAMES",
    "InsightFaceBackend",
    "InsightFaceConfig",
    "cosine_distance",
    "create_backend",
    "default_insightface_pack",
    "dlib_model_dir",
    "find_insightface_packs",
    "insightface_search_dirs",
]


class FaceBackendError(UserError, ValueError):
    """A face backend cannot be created or loaded: unknown name, missing pack, incomplete pack, missing model files.

    The message says what is missing, where it was looked for and what to do instead.
    """


# --------------------------------------------------------------------------------------------------------------------
# Shared data types
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: identity equality (numpy arrays have no usable `==` for dataclasses)
class DetectedFace:
    bbox: tuple[float, float, float, float]  # x, y, w, h in the input image's pixels
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left mouth, right mouth (InsightFace order)
    score: float  # detector confidence in 0..1 (see the backend for how its detector's score is mapped)

    def __post_init__(self) -> None:
        landmarks = np.array(self.landmarks, dtype=np.float32).reshape(5, 2)  # a private, read-only copy
        landmarks.setflags(write=False)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "bbox", tuple(float(v) for v in self.bbox))
        object.__setattr__(self, "score", float(self.score))

    @property
    def min_side(self) -> float:
        """The box's shorter side in pixels: what the `min_face_px` / `found_min_px` thresholds compare with."""
        return min(self.bbox[2], self.bbox[3])


@dataclass(frozen=True)
class FaceThresholds:
    """Gates of one embedding space. All distances are cosine distances (1 - cos) on L2-normalised embeddings."""

    cluster_distance: float  # same person for clustering
    suggest_distance: float  # "Is this Alex?" suggestions (looser)
    concept_distance: float  # the MyVLM face-concept head fires (paper: 0.675 for ArcFace buffalo_l)
    min_face_px: int  # faces whose shorter box side is smaller are ignored
    found_min_px: int  # faces at least this big (and found_min_score) may FOUND a cluster
    min_score: float  # faces with a lower detector score are ignored
    found_min_score: float
    # a link between two faces of which one may not found a person (small or unsure: noisier descriptors) counts
    # for clustering only this close; None: the same as cluster_distance
    small_cluster_distance: float | None = None

    def keep(self, face: DetectedFace) -> bool:
        """Whether the pipeline should keep this detection at all."""
        return face.min_side >= self.min_face_px and face.score >= self.min_score

    def may_found(self, face: DetectedFace) -> bool:
        """Whether this face is big and sure enough to start a new cluster (smaller ones may only join one)."""
        return face.min_side >= self.found_min_px and face.score >= self.found_min_score

    def link_distance(self, both_may_found: bool) -> float:
        """How close two faces must be to count as neighbours for clustering: stricter when either is small or
        unsure, whose descriptors stray further (docs/face-thresholds.md, "Small faces")."""
        if both_may_found or self.small_cluster_distance is None:
            return self.cluster_distance
        return min(self.cluster_distance, self.small_cluster_distance)


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos between the rows of a (n, d) and b (m, d) -> (n, m) float32 (1-d inputs count as one row)."""
    a = _l2_normalise(np.atleast_2d(np.asarray(a, dtype=np.float32)))
    b = _l2_normalise(np.atleast_2d(np.asarray(b, dtype=np.float32)))
    return (1.0 - a @ b.T).astype(np.float32)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit L2 norm (all-zero rows stay zero). (n, d) -> (n, d) float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 RGB array every backend takes, C-contiguous (dlib and OpenCV need that)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"face backends take an (H, W, 3) uint8 RGB image, got {got}")
    return np.ascontiguousarray(image)


# ArcFace's canonical 5 landmarks in a 112 x 112 aligned crop (insightface.utils.face_align.arcface_dst), in
# InsightFace's order. Used to place the mouth corners dlib's 5-point model does not give (see DlibBackend).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


class FaceBackend(ABC):
    """Detects faces and embeds them. Subclasses set these three in __init__ (without loading any model)."""

    name: str  # short name of the backend family: "dlib" or "insightface"
    key: str  # the embedding space, e.g. "dlib-resnet-v1" or "insightface:buffalo_l"
    embedding_dim: int
    thresholds: FaceThresholds

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in image ((H, W, 3) uint8 RGB) that pass the detector's own gate, best score first."""

    @abstractmethod
    def embed(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        """Embeddings of faces (found in this same image) -> (len(faces), embedding_dim) float32, unit-norm rows."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """For `myvlm doctor`, logs and settings: name, key, model files, licence, device (loads the models)."""

    @abstractmethod
    def load(self) -> None:
        """Load the models now (otherwise the first detect/embed does); raises FaceBackendError for missing files."""

    def detect_and_embed(self, image: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
        """detect() then embed() on the same image: (faces, (len(faces), embedding_dim) float32)."""
        faces = self.detect(image)
        return faces, self.embed(image, faces)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r})"


# --------------------------------------------------------------------------------------------------------------------
# dlib
# --------------------------------------------------------------------------------------------------------------------

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
        image = _check_image(image)  # (H, W, 3) uint8 RGB
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
        image = _check_image(image)
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
        return _l2_normalise(descriptors)

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
            "thresholds": _thresholds_dict(self.thresholds),
        }


def _thresholds_dict(t: FaceThresholds) -> dict[str, float]:
    return {name: getattr(t, name) for name in FaceThresholds.__dataclass_fields__}


# --------------------------------------------------------------------------------------------------------------------
# InsightFace
# --------------------------------------------------------------------------------------------------------------------

INSIGHTFACE_LICENCE = "InsightFace model licence: non-commercial research use only"
# Preferred order when a setting says just "insightface" or "auto"; other packs follow alphabetically.
INSIGHTFACE_PACK_PREFERENCE = ("buffalo_l", "buffalo_m", "antelopev2", "buffalo_s", "buffalo_sc")

# buffalo_l (ArcFace R50 trained on WebFace600K). NOT MEASURED: InsightFace's recognition packs cannot be obtained
# on the machines this project is developed and tested on, so none of these comes from our own measurement (see
# docs/face-thresholds.md; scripts/calibrate_faces.py --backend insightface measures them where a pack is
# installed). concept_distance is the MyVLM paper's value; cluster = Immich's default maximum cosine distance for
# face clustering (0.5), suggest a little looser, min/found scores after Immich's minimum detection score (0.7).
# Used for every pack until calibrated per pack.
INSIGHTFACE_THRESHOLDS = FaceThresholds(
    cluster_distance=0.5,  # PROVISIONAL: Immich's default, not measured here
    suggest_distance=0.6,  # PROVISIONAL: not measured here
    concept_distance=0.675,  # MyVLM paper, ArcFace buffalo_l (recall 96.4%, false positives 2.3% there)
    min_face_px=20,  # PROVISIONAL: SCRFD finds smaller faces, but their 112 px crops embed poorly
    found_min_px=48,  # PROVISIONAL
    min_score=0.5,  # = SCRFD's default det_thresh
    found_min_score=0.7,  # PROVISIONAL (Immich's minimum detection score)
)


def _onnx_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu), with CPU as the fallback; else CPU only."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _onnx_role(path: Path) -> str:
    """What an ONNX file in a pack is for, from its signature, the way insightface's model_zoo routes models:

    >= 5 outputs -> "detection" (SCRFD: scores, boxes[, keypoints] per stride); one square image input of 112 px or
    more (a multiple of 16, not 192 = 2d106 landmarks, not 96 = gender/age), one output -> "recognition" (ArcFace);
    anything else (3-D landmarks, attributes, swapper) -> "other". Reading the graph is much cheaper than opening an
    inference session for each of buffalo_l's five models.
    """
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a usable model"
        raise FaceBackendError(f"cannot read ONNX model {path}: {exc}") from exc
    graph = model.graph
    initialisers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]  # old exports list weights as inputs too
    if len(graph.output) >= 5:
        return "detection"
    if len(inputs) == 1 and len(graph.output) == 1:
        dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) == 4 and dims[2] is not None and dims[2] == dims[3]:
            side = dims[2]
            if side >= 112 and side % 16 == 0 and side != 192:
                return "recognition"
    return "other"


@dataclass(frozen=True)
class InsightFaceConfig:
    pack_dir: Path | None  # the pack folder (None when both model files are given)
    detection_model: Path | None = None  # overrides the pack's detection ONNX
    recognition_model: Path | None = None  # overrides the pack's recognition ONNX
    det_size: tuple[int, int] = (640, 640)  # (width, height) SCRFD input; photos are letterboxed into it
    det_thresh: float = 0.5  # SCRFD score gate
    # A second, coarse pass with the photo shrunk to this many pixels (long side) finds faces that fill the frame,
    # which SCRFD misses at det_size (insightface's FaceAnalysis also runs a 128 px pass by default); None = off.
    coarse_side: int | None = 128
    providers: tuple[str, ...] | None = None  # onnxruntime providers; None = CUDA when available, else CPU


class InsightFaceBackend(FaceBackend):
    """An InsightFace pack: SCRFD detection (5 keypoints), ArcFace alignment (norm_crop, 112 px), ArcFace embedding.

    pack_dir: a folder with a detection ONNX and a recognition ONNX (buffalo_l, buffalo_s, antelopev2, a user's own
    folder), or an insightface "manifest v2" package. Each file's role is read from its signature and confirmed by
    insightface's `model_zoo.get_model` (its `taskname`); other models in the pack (landmarks, gender/age) are not
    opened. detection_model / recognition_model name the files directly (e.g. SCRFD from one place, an ArcFace
    model from another); given both, pack_dir may be None.

    Scores are SCRFD's own (sigmoid outputs, 0..1). Threads: onnxruntime sessions allow concurrent `run` calls and
    insightface's SCRFD guards its own per-resolution sessions, so no lock is needed after loading.
    """

    name = "insightface"
    embedding_dim = 512

    def __init__(
        self,
        pack_dir: Path | str | None = None,
        *,
        det_size: tuple[int, int] = (640, 640),
        det_thresh: float = 0.5,
        coarse_side: int | None = 128,
        providers: Sequence[str] | None = None,
        detection_model: Path | str | None = None,
        recognition_model: Path | str | None = None,
        key: str | None = None,
        thresholds: FaceThresholds | None = None,
    ) -> None:
        self.config = InsightFaceConfig(
            pack_dir=Path(pack_dir).expanduser() if pack_dir is not None else None,
            detection_model=Path(detection_model).expanduser() if detection_model is not None else None,
            recognition_model=Path(recognition_model).expanduser() if recognition_model is not None else None,
            det_size=(int(det_size[0]), int(det_size[1])),
            det_thresh=float(det_thresh),
            coarse_side=int(coarse_side) if coarse_side else None,
            providers=tuple(providers) if providers is not None else None,
        )
        cfg = self.config
        if cfg.pack_dir is None and (cfg.detection_model is None or cfg.recognition_model is None):
            raise FaceBackendError("InsightFaceBackend needs a pack folder, or both a detection and a recognition file")
        if cfg.pack_dir is not None and not cfg.pack_dir.is_dir():
            raise FaceBackendError(f"InsightFace pack folder {cfg.pack_dir} does not exist")
        for path in (cfg.detection_model, cfg.recognition_model):
            if path is not None and not path.is_file():
                raise FaceBackendError(f"InsightFace model file {path} does not exist")
        # The embedding space is the recognition model's: the pack's name, or the recognition file's name.
        if key is None:
            if cfg.recognition_model is not None:
                key = f"insightface:{cfg.recognition_model.stem}"
            else:
                key = f"insightface:{cfg.pack_dir.name}"
        self.key = key
        self.thresholds = thresholds or INSIGHTFACE_THRESHOLDS
        self._load_lock = threading.Lock()
        self._detector = None  # insightface.model_zoo.SCRFD
        self._recogniser = None  # insightface.model_zoo.ArcFaceONNX
        self._files: dict[str, Path] = {}

    # -- loading -----------------------------------------------------------------------------------------------------

    def _pack_files(self) -> dict[str, Path]:
        """{"detection": path, "recognition": path} for this backend, or a FaceBackendError saying what is missing."""
        cfg = self.config
        files: dict[str, Path] = {}
        if cfg.detection_model is not None:
            files["detection"] = cfg.detection_model
        if cfg.recognition_model is not None:
            files["recognition"] = cfg.recognition_model
        if len(files) == 2:
            return files
        assert cfg.pack_dir is not None
        found: dict[str, list[Path]] = {"detection": [], "recognition": [], "other": []}
        onnx_files = sorted(cfg.pack_dir.glob("*.onnx"))
        for path in onnx_files:
            role = _onnx_role(path)
            if role in files:  # this role was given explicitly
                role = "other"
            found[role].append(path)
        for role in ("detection", "recognition"):
            if role in files:
                continue
            candidates = found[role]
            if len(candidates) > 1:
                names = ", ".join(p.name for p in candidates)
                raise FaceBackendError(
                    f"InsightFace pack {cfg.pack_dir} has several {role} models ({names}); keep one, or name the "
                    f"file to use"
                )
            if not candidates:
                present = ", ".join(p.name for p in onnx_files) or "no .onnx files"
                need = (
                    "a detection model (SCRFD with 5 keypoints, e.g. det_10g.onnx)"
                    if role == "detection"
                    else "a recognition model (ArcFace: input N x 3 x 112 x 112, output N x 512, e.g. w600k_r50.onnx)"
                )
                raise FaceBackendError(
                    f"InsightFace pack {cfg.pack_dir} is incomplete: it has no {role} model ({present}). "
                    f"A pack needs {need}. Download the pack again, or use the 'dlib' face backend, which needs no "
                    f"downloads."
                )
            files[role] = candidates[0]
        return files

    def load(self) -> None:
        if self._recogniser is not None:
            return
        with self._load_lock:
            if self._recogniser is not None:
                return
            from insightface.model_zoo import model_zoo

            providers = list(self.config.providers) if self.config.providers is not None else _onnx_providers()
            manifest = self._manifest_package()
            if manifest is not None:
                detector, recogniser, files = self._load_manifest(model_zoo, manifest, providers)
            else:
                files = self._pack_files()
                detector = model_zoo.get_model(str(files["detection"]), providers=providers)
                recogniser = model_zoo.get_model(str(files["recognition"]), providers=providers)
            for role, model in (("detection", detector), ("recognition", recogniser)):
                if model is None or getattr(model, "taskname", None) != role:
                    raise FaceBackendError(
                        f"insightface does not load {files[role]} as a {role} model "
                        f"(it reports {getattr(model, 'taskname', None)!r})"
                    )
            if not getattr(detector, "use_kps", True):
                raise FaceBackendError(
                    f"detection model {files['detection']} gives no keypoints; ArcFace alignment needs an SCRFD "
                    f"model with 5 keypoints (the *_kps / *_bnkps variants)"
                )
            # ctx_id 0 keeps the providers chosen above (a negative id would force CPU).
            detector.prepare(0, input_size=self.config.det_size, det_thresh=self.config.det_thresh)
            recogniser.prepare(0)
            width = recogniser.output_shape[-1] if recogniser.output_shape else None
            if isinstance(width, int) and width > 0:
                self.embedding_dim = width  # 512 for every known pack
            self._detector = detector
            self._files = files
            self._recogniser = recogniser  # set last: marks "loaded"

    def _manifest_package(self):
        """insightface's "manifest v2" package description of pack_dir, or None for a plain folder of ONNX files."""
        cfg = self.config
        if cfg.pack_dir is None or cfg.detection_model is not None or cfg.recognition_model is not None:
            return None
        try:
            from insightface.model_zoo.package_manifest import has_model_package_manifest, load_model_package
        except ImportError:  # insightface < 2: no manifests
            return None
        if not has_model_package_manifest(cfg.pack_dir):
            return None
        try:
            return load_model_package(cfg.pack_dir)
        except (OSError, TypeError, ValueError) as exc:
            raise FaceBackendError(f"InsightFace pack {cfg.pack_dir} has an invalid manifest.json: {exc}") from exc

    def _load_manifest(self, model_zoo, package, providers):
        missing = [task for task in ("detection", "recognition") if task not in package.tasks]
        if missing:
            raise FaceBackendError(
                f"InsightFace pack {self.config.pack_dir} is incomplete: its manifest.json lists no "
                f"{' and no '.join(missing)} model. Use the 'dlib' face backend, which needs no downloads."
            )
        models, files = {}, {}
        for task in ("detection", "recognition"):
            descriptor = package.task(task)
            files[task] = Path(descriptor.path)
            models[task] = model_zoo.get_model(
                str(self.config.pack_dir), model_task=task, model_descriptor=descriptor, providers=providers
            )
        return models["detection"], models["recognition"], files

    # -- inference ---------------------------------------------------------------------------------------------------

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = _check_image(image)  # (H, W, 3) uint8 RGB
        self.load()
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # insightface works on OpenCV's BGR
        # boxes: (n, 5) x1, y1, x2, y2, score in the input's pixels; kps: (n, 5, 2). SCRFD letterboxes the photo
        # into det_size itself.
        boxes, kps = self._detector.detect(bgr, max_num=0)
        if self.config.coarse_side:
            coarse_boxes, coarse_kps = self._detect_coarse(bgr, self.config.coarse_side)
            boxes, kps = _merge_detections(
                np.concatenate([boxes, coarse_boxes]),
                np.concatenate([kps, coarse_kps]),
                iou_threshold=float(getattr(self._detector, "nms_thresh", 0.4)),
            )
        faces = []
        for i in range(boxes.shape[0]):
            x1, y1, x2, y2, score = (float(v) for v in boxes[i])
            faces.append(DetectedFace(bbox=(x1, y1, x2 - x1, y2 - y1), landmarks=kps[i], score=score))
        faces.sort(key=lambda f: -f.score)
        return faces

    def _detect_coarse(self, bgr: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD on the photo shrunk to `side` px (long side), pasted into the top-left of a black det_size canvas.

        The canvas keeps the detector's input size, so this works for fixed-size exports (like the SCRFD of the
        tests) and dynamic ones alike. Returns (n, 5) boxes and (n, 5, 2) keypoints in the photo's pixels.
        """
        import cv2

        height, width = bgr.shape[:2]
        canvas_w, canvas_h = self._canvas_size()
        scale = min(side / max(height, width), canvas_w / width, canvas_h / height)
        small = cv2.resize(
            bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        canvas = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)  # (H, W, 3) BGR
        canvas[: small.shape[0], : small.shape[1]] = small
        boxes, kps = self._detector.detect(canvas, max_num=0)  # canvas == input size: SCRFD does not rescale it
        boxes = boxes.astype(np.float32).copy()
        boxes[:, :4] /= scale
        kps = np.asarray(kps, dtype=np.float32).reshape(-1, 5, 2) / scale
        return boxes.reshape(-1, 5), kps

    def _canvas_size(self) -> tuple[int, int]:
        """(width, height) the detector runs at: its fixed input size, or det_size for dynamic models."""
        fixed = getattr(self._detector, "static_input_size", None)  # insightface >= 2
        if fixed is None:
            shape = getattr(self._detector, "input_shape", None) or []  # (1, 3, H, W), str/None where dynamic
            if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
                fixed = (shape[3], shape[2])
        return tuple(int(v) for v in (fixed or self.config.det_size))  # type: ignore[return-value]

    def embed(self, image: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        image = _check_image(image)
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        self.load()
        from insightface.utils import face_align

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        side = int(self._recogniser.input_size[0])  # 112 for every ArcFace pack
        # ArcFace alignment: a similarity transform of the 5 landmarks onto ArcFace's template -> (side, side, 3) BGR
        crops = [face_align.norm_crop(bgr, landmark=f.landmarks, image_size=side) for f in faces]
        batch_dim = self._recogniser.input_shape[0]
        if isinstance(batch_dim, int) and batch_dim == 1:  # a model exported with a fixed batch of one
            rows = [self._recogniser.get_feat(crop) for crop in crops]
            embeddings = np.concatenate(rows, axis=0)
        else:
            embeddings = self._recogniser.get_feat(crops)  # (n, 512); get_feat swaps BGR->RGB and normalises
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(faces), -1)  # (n, embedding_dim)
        return _l2_normalise(embeddings)

    def describe(self) -> dict[str, Any]:
        self.load()
        session = self._recogniser.session
        provider = session.get_providers()[0] if session.get_providers() else "CPUExecutionProvider"
        device = {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}.get(provider, provider)
        pack = self.config.pack_dir
        return {
            "name": f"InsightFace ({pack.name if pack is not None else self.key.split(':', 1)[1]})",
            "backend": self.name,
            "key": self.key,
            "embedding_dim": self.embedding_dim,
            "pack_dir": str(pack) if pack is not None else None,
            "model_files": {role: str(path) for role, path in self._files.items()},
            "licence": INSIGHTFACE_LICENCE,
            "device": device,
            "providers": list(session.get_providers()),
            "config": {
                "det_size": list(self.config.det_size),
                "det_thresh": self.config.det_thresh,
                "coarse_side": self.config.coarse_side,
            },
            "thresholds": _thresholds_dict(self.thresholds),
        }


def _merge_detections(boxes: np.ndarray, kps: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression over detections of several passes: (n, 5) boxes x1, y1, x2, y2, score and (n, 5, 2)
    keypoints -> the kept ones, best score first (a face found by both passes keeps its better detection)."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    boxes, kps = boxes[order], kps[order]
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep: list[int] = []
    for i in range(boxes.shape[0]):
        if keep:
            k = np.array(keep)
            w = np.clip(np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0]), 0, None)
            h = np.clip(np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1]), 0, None)
            iou = w * h / np.maximum(areas[k] + areas[i] - w * h, 1e-9)
            if np.any(iou > iou_threshold):
                continue
        keep.append(i)
    return boxes[keep], kps[keep]


# --------------------------------------------------------------------------------------------------------------------
# Discovery and choice
# --------------------------------------------------------------------------------------------------------------------


def insightface_search_dirs(library_models_dir: Path) -> list[Path]:
    """Where InsightFace packs are looked for, in order: the library's models folder, then insightface's own cache."""
    return [Path(library_models_dir) / "insightface", Path.home() / ".insightface" / "models"]


def _is_pack(folder: Path) -> bool:
    return any(folder.glob("*.onnx")) or (folder / "manifest.json").is_file()


def _pack_folder(folder: Path) -> Path | None:
    """folder if it is a pack, or its only subfolder if that is one (antelopev2.zip unpacks to antelopev2/antelopev2)."""
    if _is_pack(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and _is_pack(subdirs[0]):
        return subdirs[0]
    return None


def find_insightface_packs(library_models_dir: Path) -> dict[str, Path]:
    """{pack name: folder} of the InsightFace packs installed, preferred ones first (see INSIGHTFACE_PACK_PREFERENCE).

    A pack is a folder with at least one .onnx file, in library_models_dir/insightface/<pack> or
    ~/.insightface/models/<pack>; on a name clash the library's copy wins.
    """
    found: dict[str, Path] = {}
    for base in insightface_search_dirs(library_models_dir):
        try:
            children = sorted(p for p in base.iterdir() if p.is_dir())
        except OSError:  # missing or unreadable
            continue
        for child in children:
            if child.name in found:
                continue
            try:
                folder = _pack_folder(child)
            except OSError:
                continue
            if folder is not None:
                found[child.name] = folder
    rank = {name: i for i, name in enumerate(INSIGHTFACE_PACK_PREFERENCE)}
    ordered = sorted(found, key=lambda name: (rank.get(name, len(rank)), name))
    return {name: found[name] for name in ordered}


def default_insightface_pack(library_models_dir: Path) -> tuple[str, Path] | None:
    """The pack "insightface" and "auto" mean: buffalo_l if installed, else the next preferred one; None if none."""
    packs = find_insightface_packs(library_models_dir)
    return next(iter(packs.items()), None)


BACKEND_NAMES = ("auto", "dlib", "dlib-hog", "dlib-cnn", "insightface", "insightface:<pack or folder>", "<folder>")


def _where_packs_are(library_models_dir: Path) -> str:
    dirs = " and ".join(str(d) for d in insightface_search_dirs(library_models_dir))
    return (
        f"InsightFace packs are looked for in {dirs} (one folder per pack, e.g. buffalo_l/ with its .onnx files). "
        f"The 'dlib' face backend works without any pack."
    )


def create_backend(
    name: str | None,
    library_models_dir: Path,
    *,
    dlib_options: Mapping[str, Any] | None = None,
    insightface_options: Mapping[str, Any] | None = None,
) -> FaceBackend:
    """The face backend a setting names. Loads nothing yet (call `.load()` to fail early on broken packs).

      None / "auto"               an InsightFace pack when one is installed (buffalo_l preferred), else dlib (HOG)
      "dlib" / "dlib-hog"         dlib with the HOG detector
      "dlib-cnn"                  dlib with the CNN (MMOD) detector
      "insightface"               the preferred installed InsightFace pack
      "insightface:<pack>"        that pack (by name, from the search folders) ...
      "insightface:<folder>"      ... or that folder
      "<folder>"                  an InsightFace pack folder

    dlib_options / insightface_options go to the constructor of whichever backend is chosen (e.g. {"upsample": 0},
    {"det_size": (1024, 1024)}), so "auto" can carry settings for both.
    Unknown names and missing packs raise FaceBackendError (a ValueError) saying what exists and where.
    """
    library_models_dir = Path(library_models_dir)
    dl, ins = dict(dlib_options or {}), dict(insightface_options or {})
    text = (name or "auto").strip()
    low = text.lower()
    if low == "auto":
        pack = default_insightface_pack(library_models_dir)
        if pack is not None:
            log.info("face backend: InsightFace pack %s (%s)", pack[0], pack[1])
            return InsightFaceBackend(pack[1], **ins)
        log.info("face backend: dlib (no InsightFace pack installed)")
        return DlibBackend(**dl)
    if low in ("dlib", "dlib-hog"):
        return DlibBackend(**{**dl, "detector": "hog"})
    if low == "dlib-cnn":
        return DlibBackend(**{**dl, "detector": "cnn"})
    if low == "insightface":
        pack = default_insightface_pack(library_models_dir)
        if pack is None:
            raise FaceBackendError(f"No InsightFace pack is installed. {_where_packs_are(library_models_dir)}")
        return InsightFaceBackend(pack[1], **ins)
    if low.startswith("insightface:"):
        wanted = text.split(":", 1)[1].strip()
        packs = find_insightface_packs(library_models_dir)
        if wanted in packs:
            return InsightFaceBackend(packs[wanted], **ins)
        folder = Path(wanted).expanduser()
        if wanted and folder.is_dir():
            return InsightFaceBackend(_pack_folder(folder) or folder, **ins)
        have = ", ".join(packs) or "none"
        raise FaceBackendError(
            f"InsightFace pack {wanted!r} is not installed (installed packs: {have}). "
            f"{_where_packs_are(library_models_dir)}"
        )
    folder = Path(text).expanduser()
    if folder.is_dir():
        return InsightFaceBackend(_pack_folder(folder) or folder, **ins)
    packs = find_insightface_packs(library_models_dir)
    have = ", ".join(f"insightface:{p}" for p in packs) or "no InsightFace packs installed"
    raise FaceBackendError(
        f"Unknown face backend {text!r}. Use one of: auto, dlib, dlib-cnn, insightface, insightface:<pack>, or a "
        f"pack folder ({have}). {_where_packs_are(library_models_dir)}"
    )
