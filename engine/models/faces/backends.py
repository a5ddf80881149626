"""Face backends: find faces in a photo and turn each into an embedding, behind one interface (this module: the
interface, the thresholds, where InsightFace packs are, and `create_backend`).

Two families of models sit behind `FaceBackend`, one module each, named in `BACKENDS` and imported only when a
backend of that family is made:

  * `DlibBackend` (dlib_backend.py): dlib's HOG (or CNN) face detector, its 5-point shape predictor and its ResNet
    face recogniser (128-d). The models are CC0 and install from PyPI (`dlib-bin` + `face-recognition-models`), so
    this backend always works, offline included. It is the fallback.
  * `InsightFaceBackend` (insightface_backend.py): an InsightFace model pack (buffalo_l, buffalo_s, antelopev2 or any
    folder with a detection and a recognition ONNX): SCRFD detection with 5 keypoints, ArcFace alignment and a 512-d
    ArcFace embedding. Much better than dlib, but the packs are downloaded on request and their licence is
    non-commercial research only.

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

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DetectedFace",
    "FaceBackend",
    "FaceBackendError",
    "FaceThresholds",
    "BACKEND_NAMES",
    "backend_class",
    "cosine_distance",
    "create_backend",
    "default_insightface_pack",
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
    a = l2_normalise(np.atleast_2d(np.asarray(a, dtype=np.float32)))
    b = l2_normalise(np.atleast_2d(np.asarray(b, dtype=np.float32)))
    return (1.0 - a @ b.T).astype(np.float32)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit L2 norm (all-zero rows stay zero). (n, d) -> (n, d) float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def check_image(image: np.ndarray) -> np.ndarray:
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


def thresholds_dict(t: FaceThresholds) -> dict[str, float]:
    return {name: getattr(t, name) for name in FaceThresholds.__dataclass_fields__}


# --------------------------------------------------------------------------------------------------------------------
# Discovery and choice
# --------------------------------------------------------------------------------------------------------------------

# Preferred order when a setting says just "insightface" or "auto"; other packs follow alphabetically.
INSIGHTFACE_PACK_PREFERENCE = ("buffalo_l", "buffalo_m", "antelopev2", "buffalo_s", "buffalo_sc")


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


# backend family -> "module:Class" (the module relative to this package), imported when a backend of it is made
BACKENDS = {"dlib": "dlib_backend:DlibBackend", "insightface": "insightface_backend:InsightFaceBackend"}


def backend_class(family: str) -> type[FaceBackend]:
    """The backend class of a family ("dlib", "insightface"), its module imported now."""
    module, name = BACKENDS[family].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


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
            return backend_class("insightface")(pack[1], **ins)
        log.info("face backend: dlib (no InsightFace pack installed)")
        return backend_class("dlib")(**dl)
    if low in ("dlib", "dlib-hog"):
        return backend_class("dlib")(**{**dl, "detector": "hog"})
    if low == "dlib-cnn":
        return backend_class("dlib")(**{**dl, "detector": "cnn"})
    if low == "insightface":
        pack = default_insightface_pack(library_models_dir)
        if pack is None:
            raise FaceBackendError(f"No InsightFace pack is installed. {_where_packs_are(library_models_dir)}")
        return backend_class("insightface")(pack[1], **ins)
    if low.startswith("insightface:"):
        wanted = text.split(":", 1)[1].strip()
        packs = find_insightface_packs(library_models_dir)
        if wanted in packs:
            return backend_class("insightface")(packs[wanted], **ins)
        folder = Path(wanted).expanduser()
        if wanted and folder.is_dir():
            return backend_class("insightface")(_pack_folder(folder) or folder, **ins)
        have = ", ".join(packs) or "none"
        raise FaceBackendError(
            f"InsightFace pack {wanted!r} is not installed (installed packs: {have}). "
            f"{_where_packs_are(library_models_dir)}"
        )
    folder = Path(text).expanduser()
    if folder.is_dir():
        return backend_class("insightface")(_pack_folder(folder) or folder, **ins)
    packs = find_insightface_packs(library_models_dir)
    have = ", ".join(f"insightface:{p}" for p in packs) or "no InsightFace packs installed"
    raise FaceBackendError(
        f"Unknown face backend {text!r}. Use one of: auto, dlib, dlib-cnn, insightface, insightface:<pack>, or a "
        f"pack folder ({have}). {_where_packs_are(library_models_dir)}"
    )
