"""The pipeline's stages, registered in order. Each later feature adds its stage to `REGISTRY`."""

from __future__ import annotations

from ..pipeline import StageRegistry
from .faces import FaceStage
from .thumbnails import ThumbnailStage

REGISTRY = StageRegistry()
REGISTRY.register(ThumbnailStage.name, ThumbnailStage)
REGISTRY.register(FaceStage.name, FaceStage)

__all__ = ["REGISTRY", "FaceStage", "ThumbnailStage"]
