"""Thumbnail stage: one decode per photo (engine.ingest.image_cache) gives the thumbnail, the preview every later stage
reads, and the photo's displayed size, orientation and date taken.
"""

from __future__ import annotations

import logging
import os

from engine import settings
from engine.ingest.image_cache import ImageCache, ThumbnailResult, probe_photo
from engine.ingest.images import PhotoReadError
from engine.pipeline.runner import Job, Stage
from engine.storage.catalog import Catalog

log = logging.getLogger(__name__)


class ThumbnailStage(Stage):
    """Decode each photo once: thumbnail, preview, displayed size, orientation and date taken."""

    name = "thumbnail"
    version = 1
    workers = max(1, min(4, os.cpu_count() or 2))

    def __init__(self) -> None:
        self.cache: ImageCache | None = None

    def setup(self, catalog: Catalog) -> None:
        self.cache = ImageCache(catalog.paths)

    def cached(self, job: Job) -> ThumbnailResult | None:
        # Files written by a run that was killed before it committed: read the header only, no decode.
        assert self.cache is not None
        if not (self.cache.thumb_path(job.content_hash).exists() and self.cache.preview_path(job.content_hash).exists()):
            return None
        try:
            return probe_photo(job.fs_path)
        except Exception:  # noqa: BLE001 - fall back to the full stage, which reports errors properly
            return None

    def process(self, job: Job) -> ThumbnailResult:
        assert self.cache is not None
        return self.cache.make(job.fs_path, job.content_hash)

    def commit(self, catalog: Catalog, job: Job, result: ThumbnailResult) -> None:
        catalog.conn.execute(
            """UPDATE photos SET width = ?, height = ?, orientation = ?, format = ?, date_taken = ?, date_source = ?,
               status = 'ok', last_error = NULL WHERE id = ?""",
            [result.width, result.height, result.orientation, result.format, result.date_taken, result.date_source,
             job.photo_id],
        )

    def share(self, catalog: Catalog, source_photo_id: int, job: Job) -> None:
        catalog.conn.execute(
            """UPDATE photos SET (width, height, orientation, format, date_taken, date_source, status, last_error) =
               (SELECT width, height, orientation, format, date_taken, date_source, status, last_error
                FROM photos WHERE id = ?) WHERE id = ?""",
            [source_photo_id, job.photo_id],
        )

    def fail(self, catalog: Catalog, job: Job, error: Exception) -> None:
        message = str(error) if isinstance(error, PhotoReadError) else f"{type(error).__name__}: {error}"
        catalog.conn.execute("UPDATE photos SET status = 'error', last_error = ? WHERE id = ?", [message, job.photo_id])

    def finish(self, catalog: Catalog) -> None:
        assert self.cache is not None
        cap = settings.read(catalog, "preview_cache_bytes")
        self.cache.enforce_preview_cap(int(cap))
