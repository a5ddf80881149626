"""The pipeline's stages, registered in order. Each later feature adds its stage to `REGISTRY`."""

from __future__ import annotations

from engine.pipeline.captions import CaptionStage
from engine.pipeline.clip import ClipStage
from engine.pipeline.concepts import ConceptStage
from engine.pipeline.faces import FaceStage
from engine.pipeline.runner import StageRegistry
from engine.pipeline.thumbnails import ThumbnailStage

REGISTRY = StageRegistry()
REGISTRY.register(ThumbnailStage.name, ThumbnailStage)
REGISTRY.register(FaceStage.name, FaceStage)
REGISTRY.register(ClipStage.name, ClipStage)
REGISTRY.register(ConceptStage.name, ConceptStage)
REGISTRY.register(CaptionStage.name, CaptionStage)

__all__ = ["REGISTRY", "CaptionStage", "ClipStage", "ConceptStage", "FaceStage", "ThumbnailStage"]
