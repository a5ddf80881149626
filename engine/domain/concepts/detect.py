"""Detection: every concept head over the album's stored embeddings, vectorised (no model runs here).

Object heads read CLIP embeddings; person heads read face embeddings, each face matched on its own, the best face
per photo reported. Signals are stored per (photo, concept) with the head revision that produced them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from engine.domain.concepts.registry import OBJECT, PERSON, Concept, ConceptRegistry, Head
from engine.storage.catalog import Catalog
from engine.storage.vectors import stack_blobs

log = logging.getLogger(__name__)

OBJECT_FLOOR = 0.05  # signals weaker than this are not stored (a photo without a row: the head said no)


@dataclass
class Signal:
    photo_id: int
    concept_id: int
    score: float
    fired: bool
    face_id: int | None = None


@dataclass
class DetectReport:
    concepts: int = 0
    photos: int = 0
    fired: int = 0
    seconds: float = 0.0
    skipped: dict[int, str] = field(default_factory=dict)  # concept id -> why its head could not run

    def to_json(self) -> dict:
        return {"concepts": self.concepts, "photos": self.photos, "fired": self.fired,
                "seconds": round(self.seconds, 4), "skipped": self.skipped}


def object_signals(head: Head, photo_ids: np.ndarray, feats: np.ndarray, concept_id: int) -> list[Signal]:
    from engine.domain.concepts.object_head import score

    if len(photo_ids) == 0:
        return []
    p = score(head.tensors["classifier.weight"], head.tensors["classifier.bias"], feats)  # (n,)
    keep = np.nonzero(p >= min(OBJECT_FLOOR, head.threshold))[0]
    return [Signal(int(photo_ids[i]), concept_id, float(p[i]), bool(p[i] >= head.threshold)) for i in keep]


def person_signals(head: Head, face_ids: np.ndarray, face_photos: np.ndarray, feats: np.ndarray,
                   concept_id: int, *, confirmed: np.ndarray | None = None,
                   excluded: np.ndarray | None = None) -> list[Signal]:
    """Each face on its own: distance = min over references; the best face of each photo speaks for it.

    The user's word overrides the head: faces confirmed as this person always fire (`confirmed` mask), faces
    confirmed as someone else or rejected for this person never do (`excluded` mask)."""
    refs = head.tensors["references"]  # (k, D)
    if len(face_ids) == 0:
        return []
    dist = 1.0 - (feats @ refs.T).max(axis=1)  # (n_faces,)
    if confirmed is not None:
        dist = np.where(confirmed, 0.0, dist)
    if excluded is not None:
        dist = np.where(excluded, np.inf, dist)
    best: dict[int, tuple[float, int]] = {}
    for i in np.argsort(dist, kind="stable"):
        pid = int(face_photos[i])
        if pid not in best:
            best[pid] = (float(dist[i]), int(face_ids[i]))
    floor = 2.0 * head.threshold
    return [Signal(pid, concept_id, 1.0 - d, d <= head.threshold, fid)
            for pid, (d, fid) in best.items() if d <= floor]


class ConceptDetector:
    """Computes concept signals from stored embeddings. Cheap: run it after any (re)training or new photos."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.registry = ConceptRegistry(catalog)

    def compute(self, concept_ids: Iterable[int] | None = None,
                photo_ids: Iterable[int] | None = None) -> tuple[list[Concept], list[Signal], DetectReport]:
        start = time.perf_counter()
        report = DetectReport()
        wanted = None if concept_ids is None else set(concept_ids)
        concepts = [c for c in self.registry.list() if c.head_state in ("ready", "stale")
                    and (wanted is None or c.id in wanted)]
        only = None if photo_ids is None else np.fromiter(photo_ids, dtype=np.int64)
        signals: list[Signal] = []
        by_space: dict[tuple[str, str], list[tuple[Concept, Head]]] = defaultdict(list)
        for c in concepts:
            head = self.registry.head(c.id)
            if head is None:
                report.skipped[c.id] = "no head file"
                continue
            by_space[(c.kind, head.space)].append((c, head))
        for (kind, space), items in by_space.items():
            if kind == OBJECT:
                ids, feats = self._clip(space, only)
                if not len(ids):
                    for c, _ in items:
                        report.skipped[c.id] = f"no photo has a CLIP embedding in {space} yet"
                for c, head in items:
                    signals += object_signals(head, ids, feats, c.id)
                report.photos = max(report.photos, len(ids))
            elif kind == PERSON:
                fids, fphotos, feats, owners, states = self._faces(space, only)
                for c, head in items:
                    rejected = {r["face_id"] for r in self.catalog.query(
                        "SELECT face_id FROM face_rejections WHERE person_id = ?", [c.person_id])}
                    confirmed = (owners == c.person_id) & (states == "confirmed")
                    excluded = ((owners != c.person_id) & (owners != -1) & (states == "confirmed")) | np.isin(
                        fids, np.fromiter(rejected, dtype=np.int64, count=len(rejected)))
                    signals += person_signals(head, fids, fphotos, feats, c.id, confirmed=confirmed, excluded=excluded)
                report.photos = max(report.photos, len(set(fphotos.tolist())))
        report.concepts = len(concepts) - len(report.skipped)
        report.fired = sum(s.fired for s in signals)
        report.seconds = time.perf_counter() - start
        return concepts, signals, report

    def store(self, concepts: list[Concept], signals: list[Signal], photo_ids: Iterable[int] | None = None) -> None:
        """Replace the signals of these concepts (over these photos, or all) with the new ones."""
        revision = {c.id: c.head_revision for c in concepts}
        with self.catalog.write():
            if photo_ids is None:
                for c in concepts:
                    self.catalog.conn.execute("DELETE FROM concept_signals WHERE concept_id = ?", [c.id])
            else:
                ids = list(photo_ids)
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    self.catalog.conn.execute(
                        f"DELETE FROM concept_signals WHERE photo_id IN ({','.join('?' * len(chunk))}) "
                        f"AND concept_id IN ({','.join('?' * len(revision))})", chunk + list(revision))
            self.catalog.conn.executemany(
                "INSERT OR REPLACE INTO concept_signals(photo_id, concept_id, revision, score, fired, face_id) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(s.photo_id, s.concept_id, revision[s.concept_id], s.score, int(s.fired), s.face_id) for s in signals])

    def run(self, concept_ids: Iterable[int] | None = None, photo_ids: Iterable[int] | None = None) -> DetectReport:
        photo_list = None if photo_ids is None else list(photo_ids)
        concepts, signals, report = self.compute(concept_ids, photo_list)
        self.store([c for c in concepts if c.id not in report.skipped], signals, photo_list)
        log.info("concept detection: %s", report.to_json())
        return report

    # -- stored embeddings -------------------------------------------------------------------------------------------

    def _clip(self, space: str, only: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        rows = self.catalog.query("SELECT photo_id, embedding FROM clip_embeddings WHERE model = ? ORDER BY photo_id",
                                  [space])
        if only is not None:
            keep = set(only.tolist())
            rows = [r for r in rows if r["photo_id"] in keep]
        ids = np.fromiter((r["photo_id"] for r in rows), dtype=np.int64, count=len(rows))
        dim = len(rows[0]["embedding"]) // 4 if rows else 0
        return ids, stack_blobs([r["embedding"] for r in rows], dim)

    def _faces(self, space: str, only: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(face ids, photo ids, embeddings, person ids (-1: nobody), states) of one face space."""
        rows = self.catalog.query(
            "SELECT id, photo_id, embedding, person_id, state FROM faces WHERE backend = ? AND embedding IS NOT NULL "
            "AND state != 'ignored' ORDER BY id", [space])
        if only is not None:
            keep = set(only.tolist())
            rows = [r for r in rows if r["photo_id"] in keep]
        fids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
        photos = np.fromiter((r["photo_id"] for r in rows), dtype=np.int64, count=len(rows))
        owners = np.fromiter((r["person_id"] if r["person_id"] is not None else -1 for r in rows), dtype=np.int64,
                             count=len(rows))
        states = np.array([r["state"] for r in rows], dtype=object)
        dim = len(rows[0]["embedding"]) // 4 if rows else 0
        return fids, photos, stack_blobs([r["embedding"] for r in rows], dim), owners, states
