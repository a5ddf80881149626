"""CLIP stage: one image embedding per photo (from its preview), for search and object concept heads.

The model is a setting (`clip_model`: ViT-B-32 by default, DFN5B-CLIP-ViT-H-14-378 for quality); changing it
re-embeds everything. Without downloaded weights the stage is skipped with the reason, and the rest works.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np

from engine.ingest.image_cache import ImageCache
from engine.models.clip import ClipEncoder, resolve_encoder
from engine.pipeline.runner import Job, Stage, StageUnavailable
from engine.storage.catalog import Catalog
from engine.storage.vectors import to_blob

log = logging.getLogger(__name__)

CODE_VERSION = 1



class ClipStage(Stage):
    name = "clip"
    requires = ("thumbnail",)
    workers = 1  # the model uses every core itself
    batch_size = 16

    def __init__(self) -> None:
        self.encoder: ClipEncoder | None = None
        self.version = CODE_VERSION
        self.cache: ImageCache | None = None
        self._rotation: dict[int, int] = {}
        self._options: dict[str, str | None] = {}

    def configure(self, clip_model: str | None = None, clip_weights: str | None = None, **_: object) -> None:
        self._options = {"model": clip_model, "weights": clip_weights}

    def setup(self, catalog: Catalog) -> None:
        self.encoder = resolve_encoder(catalog, **self._options)
        self.version = zlib.crc32(f"{CODE_VERSION}:{self.encoder.key}".encode()) & 0x7FFFFFFF
        self.cache = ImageCache(catalog.paths)

    def unavailable(self, catalog: Catalog) -> str | None:
        assert self.encoder is not None
        return self.encoder.missing_reason()

    def before_work(self, catalog: Catalog, jobs: list[Job]) -> None:
        from engine.models.files import ModelLoadError

        assert self.encoder is not None
        if jobs:
            try:
                self.encoder.load()
            except ModelLoadError as exc:  # e.g. a refused pickle: this stage waits, the others go on
                raise StageUnavailable(str(exc)) from exc
        ids = [j.photo_id for j in jobs]
        self._rotation = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for r in catalog.query(f"SELECT id, user_rotation FROM photos WHERE id IN ({','.join('?' * len(chunk))})",
                                   chunk):
                self._rotation[r["id"]] = r["user_rotation"]

    def process_batch(self, jobs: list[Job]) -> list[np.ndarray | Exception]:
        assert self.encoder is not None and self.cache is not None
        images, ok = [], []
        out: list[np.ndarray | Exception] = [RuntimeError("not processed")] * len(jobs)
        for i, job in enumerate(jobs):
            try:
                images.append(self.cache.preview(job.fs_path, job.content_hash, self._rotation.get(job.photo_id, 0)))
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - that photo's error
                out[i] = exc
        if images:
            vecs = self.encoder.encode_images(images)  # (n, dim)
            for i, v in zip(ok, vecs, strict=True):
                out[i] = v
        return out

    def process(self, job: Job) -> np.ndarray:
        result = self.process_batch([job])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def commit(self, catalog: Catalog, job: Job, result: np.ndarray) -> None:
        assert self.encoder is not None
        catalog.conn.execute(
            "INSERT INTO clip_embeddings(photo_id, model, embedding) VALUES (?, ?, ?) "
            "ON CONFLICT(photo_id) DO UPDATE SET model = excluded.model, embedding = excluded.embedding",
            [job.photo_id, self.encoder.key, to_blob(result)])

    def share(self, catalog: Catalog, source_photo_id: int, job: Job) -> None:
        catalog.conn.execute(
            "INSERT OR REPLACE INTO clip_embeddings(photo_id, model, embedding) "
            "SELECT ?, model, embedding FROM clip_embeddings WHERE photo_id = ?", [job.photo_id, source_photo_id])

