"""Things worth naming: recurring non-person subjects ("23 photos of this — name it?").

A subject recurs when many photos look alike in CLIP space *and* were taken on several different days (a burst of
one afternoon is not a pet). Groups made mostly of photos with prominent faces are people, handled by the faces
workflow; groups already covered by a concept are not suggested again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from engine.storage.catalog import Catalog
from engine.storage.vectors import VectorIndex

SIMILARITY = 0.85  # CLIP cosine similarity of "the same subject": PROVISIONAL, no real CLIP weights here to measure
NEIGHBOURS = 24
MIN_PHOTOS = 5
MIN_DAYS = 2
FACE_AREA = 0.04  # a face covering 4 % of the frame makes the photo a portrait
MAX_PORTRAIT_SHARE = 0.5


@dataclass
class ThingSuggestion:
    photo_ids: list[int]
    representative: int  # the photo closest to the group's centre: show it
    days: int
    score: float  # ranking: size, spread over days, tightness
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"photos": self.photo_ids, "representative": self.representative, "count": len(self.photo_ids),
                "days": self.days, "score": round(self.score, 3)}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def suggest_things(catalog: Catalog, model_key: str, dim: int, *, similarity: float = SIMILARITY,
                   min_photos: int = MIN_PHOTOS, min_days: int = MIN_DAYS, limit: int = 20) -> list[ThingSuggestion]:
    rows = catalog.query(
        "SELECT c.photo_id, c.embedding, p.date_taken, p.width, p.height FROM clip_embeddings c "
        "JOIN photos p ON p.id = c.photo_id WHERE c.model = ? AND p.status = 'ok' ORDER BY c.photo_id", [model_key])
    if len(rows) < min_photos:
        return []
    ids = np.array([r["photo_id"] for r in rows], dtype=np.int64)
    feats = np.frombuffer(b"".join(r["embedding"] for r in rows), np.float32).reshape(len(rows), dim)
    day = {r["photo_id"]: (r["date_taken"] or "")[:10] for r in rows}
    area = {r["photo_id"]: float(r["width"] or 1) * float(r["height"] or 1) for r in rows}

    portrait: set[int] = set()
    for r in catalog.query("SELECT photo_id, MAX(w * h) AS a FROM faces WHERE state != 'ignored' GROUP BY photo_id"):
        if r["photo_id"] in area and r["a"] / area[r["photo_id"]] >= FACE_AREA:
            portrait.add(r["photo_id"])
    fired = {r["photo_id"] for r in catalog.query(
        "SELECT photo_id FROM concept_signals s JOIN concepts c ON c.id = s.concept_id "
        "WHERE s.fired = 1 AND c.kind = 'object'")}
    examples = {r["photo_id"] for r in catalog.query(
        "SELECT e.photo_id FROM concept_examples e JOIN concepts c ON c.id = e.concept_id "
        "WHERE c.kind = 'object' AND e.photo_id IS NOT NULL")}

    index = VectorIndex(dim)
    index.add(np.arange(len(ids)), feats)
    sims, nbrs = index.search(feats, min(NEIGHBOURS, len(ids)))
    uf = _UnionFind(len(ids))
    for i in range(len(ids)):
        for s, j in zip(sims[i], nbrs[i], strict=True):
            if j >= 0 and j != i and s >= similarity:
                uf.union(i, int(j))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(ids)):
        groups[uf.find(i)].append(i)

    out = []
    for members in groups.values():
        if len(members) < min_photos:
            continue
        pids = [int(ids[i]) for i in members]
        if any(p in examples for p in pids) or sum(p in fired for p in pids) >= len(pids) / 2:
            continue  # already a concept
        if sum(p in portrait for p in pids) > MAX_PORTRAIT_SHARE * len(pids):
            continue  # people, not things
        days = len({day[p] for p in pids if day[p]})
        if days < min_days:
            continue
        centre = feats[members].mean(axis=0)
        centre /= np.linalg.norm(centre) or 1.0
        closeness = feats[members] @ centre
        rep = int(ids[members[int(np.argmax(closeness))]])
        score = len(pids) * np.log2(1 + days) * float(closeness.mean())
        out.append(ThingSuggestion(sorted(pids), rep, days, score,
                                   [f"{len(pids)} photos", f"taken on {days} different days"]))
    out.sort(key=lambda s: -s.score)
    return out[:limit]
