"""Faces: detection and embedding backends (dlib's CC0 models offline, InsightFace packs when installed)."""

from .backends import (
    DetectedFace,
    FaceBackend,
    FaceBackendError,
    FaceThresholds,
    cosine_distance,
    create_backend,
    find_insightface_packs,
)
from .dlib_backend import DlibBackend
from .insightface_backend import InsightFaceBackend

__all__ = [
    "DetectedFace",
    "DlibBackend",
    "FaceBackend",
    "FaceBackendError",
    "FaceThresholds",
    "InsightFaceBackend",
    "cosine_distance",
    "create_backend",
    "find_insightface_packs",
]
