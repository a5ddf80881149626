"""Concepts stage: every concept head on every new photo (vectorised over stored embeddings; no model runs).

Training or retraining a concept recomputes that concept alone over the whole album (ConceptDetector.run), so
this stage only has to cover photos the heads have not seen yet.
"""

from __future__ import annotations

import zlib

from engine.domain.concepts.detect import ConceptDetector, Signal
from engine.models.clip import resolve_encoder
from engine.pipeline.faces import resolve_backend
from engine.pipeline.runner import Job, Stage
from engine.storage.catalog import Catalog

CODE_VERSION = 1


class ConceptStage(Stage):
    name = "concepts"
    requires = ("faces",)  # CLIP embeddings are used when the CLIP stage could run
    workers = 1
    batch_size = 4096

    def __init__(self) -> None:
        self.version = CODE_VERSION
        self._options: dict[str, str | None] = {}
        self._signals: dict[int, list[Signal]] = {}
        self._detector: ConceptDetector | None = None
        self._concepts: list = []

    def configure(self, face_backend: str | None = None, clip_model: str | None = None,
                  clip_weights: str | None = None, **_: object) -> None:
        self._options = {"face_backend": face_backend, "clip_model": clip_model, "clip_weights": clip_weights}

    def setup(self, catalog: Catalog) -> None:
        faces = resolve_backend(catalog, self._options.get("face_backend")).key
        clip = resolve_encoder(catalog, self._options.get("clip_model"), self._options.get("clip_weights")).key
        # new embedding spaces mean new signals everywhere
        self.version = zlib.crc32(f"{CODE_VERSION}:{faces}:{clip}".encode()) & 0x7FFFFFFF
        self._detector = ConceptDetector(catalog)

    def before_work(self, catalog: Catalog, jobs: list[Job]) -> None:
        assert self._detector is not None
        self._concepts, signals, report = self._detector.compute(photo_ids=[j.photo_id for j in jobs])
        self._concepts = [c for c in self._concepts if c.id not in report.skipped]
        self._signals = {}
        for s in signals:
            self._signals.setdefault(s.photo_id, []).append(s)

    def process(self, job: Job) -> list[Signal]:
        return self._signals.get(job.photo_id, [])

    def commit(self, catalog: Catalog, job: Job, result: list[Signal]) -> None:
        assert self._detector is not None
        self._detector.store(self._concepts, result, [job.photo_id])

    def share(self, catalog: Catalog, source_photo_id: int, job: Job) -> None:
        catalog.conn.execute("DELETE FROM concept_signals WHERE photo_id = ?", [job.photo_id])
        catalog.conn.execute(
            "INSERT INTO concept_signals(photo_id, concept_id, revision, score, fired, face_id) "
            "SELECT ?, s.concept_id, s.revision, s.score, s.fired, "
            "(SELECT d.id FROM faces d JOIN faces o ON o.id = s.face_id WHERE d.photo_id = ? "
            " AND abs(d.x - o.x) < 1 AND abs(d.y - o.y) < 1) "
            "FROM concept_signals s WHERE s.photo_id = ?", [job.photo_id, job.photo_id, source_photo_id])
