"""The pipeline's stages, registered in order. Each later feature adds its stage to `REGISTRY`."""

from __future__ import annotations

from ..pipeline import StageRegistry
from .captions import CaptionStage
from .clip import ClipStage
from .concepts import ConceptStage
from .faces import FaceStage
from .thumbnails import ThumbnailStage

REGISTRY = StageRegistry()
REGISTRY.register(ThumbnailStage.name, ThumbnailStage)
REGISTRY.register(FaceStage.name, FaceStage)
REGISTRY.register(ClipStage.name, ClipStage)
REGISTRY.register(ConceptStage.name, ConceptStage)
REGISTRY.register(CaptionStage.name, CaptionStage)

__all__ = ["REGISTRY", "CaptionStage", "ClipStage", "ConceptStage", "FaceStage", "ThumbnailStage"]
