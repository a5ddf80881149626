"""Faces: detection and embedding backends (dlib's CC0 models offline, InsightFace packs when installed)."""

from engine.models.faces.backends import (
    DetectedFace,
    FaceBackend,
    FaceBackendError,
    FaceThresholds,
    cosine_distance,
    create_backend,
    find_insightface_packs,
)
from engine.models.faces.dlib_backend import DlibBackend
from engine.models.faces.insightface_backend import InsightFaceBackend

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
