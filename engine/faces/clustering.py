"""Incremental face clustering, Immich-style: a new face joins the person its nearest neighbours belong to, or
founds a new (unnamed) person when it is a good face with enough close neighbours, or waits for more faces.

The user's word is law: confirmed faces are never moved, a rejected person is never proposed again for that face,
and a photo holds at most one face of each person.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..catalog import Catalog, now
from ..vectors import VectorIndex, stack_blobs
from .backends import FaceThresholds

log = logging.getLogger(__name__)

MIN_CLUSTER_SIZE = 3  # faces within the threshold, the face itself included: three photos of one person make a person
NEIGHBOURS = 16

ASSIGNABLE_STATES = ("unknown", "rejected")  # faces clustering may place; suggested and confirmed ones are placed


class FaceIndex(VectorIndex):
    """The faces of one backend, by face id."""

    @classmethod
    def load(cls, catalog: Catalog, backend: str, dim: int) -> FaceIndex:
        idx = cls(dim)
        rows = catalog.query(
            "SELECT id, embedding FROM faces WHERE backend = ? AND embedding IS NOT NULL AND state != 'ignored'",
            [backend],
        )
        if rows:
            ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
            idx.add(ids, stack_blobs([r["embedding"] for r in rows], dim))
        return idx


@dataclass
class _Face:
    id: int
    photo_id: int
    person_id: int | None
    state: str
    quality: bool


@dataclass
class ClusterReport:
    joined: int = 0
    founded_people: int = 0
    founding_faces: int = 0
    deferred: int = 0
    seconds: float = 0.0
    new_people: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("joined", "founded_people", "founding_faces", "deferred", "seconds")}


class FaceClusterer:
    """Places unassigned faces of one backend. Call `run()` after new faces arrive, `recluster()` to start over."""

    def __init__(self, catalog: Catalog, backend: str, dim: int, thresholds: FaceThresholds,
                 index: FaceIndex | None = None):
        self.catalog = catalog
        self.backend = backend
        self.dim = dim
        self.min_sim = 1.0 - thresholds.cluster_distance
        self.min_sim_small = 1.0 - thresholds.link_distance(both_may_found=False)  # a link with a small face
        self.index = index if index is not None else FaceIndex.load(catalog, backend, dim)

    # -- state of the catalog, held in memory for one run ------------------------------------------------------------

    def _load(self) -> None:
        rows = self.catalog.query(
            "SELECT id, photo_id, person_id, state, quality, updated_at FROM faces WHERE backend = ? "
            "AND embedding IS NOT NULL AND state != 'ignored'", [self.backend])
        self.faces = {r["id"]: _Face(r["id"], r["photo_id"], r["person_id"], r["state"], bool(r["quality"])) for r in rows}
        self.updated = {r["id"]: r["updated_at"] for r in rows}
        self.photo_people: dict[int, set[int]] = defaultdict(set)
        self.members: dict[int, set[int]] = defaultdict(set)
        for f in self.faces.values():
            if f.person_id is not None:
                self.photo_people[f.photo_id].add(f.person_id)
                self.members[f.person_id].add(f.id)
        self.rejected: dict[int, set[int]] = defaultdict(set)
        for r in self.catalog.query("SELECT face_id, person_id FROM face_rejections"):
            self.rejected[r["face_id"]].add(r["person_id"])
        # Groups made by clustering alone (no name, not hidden, nothing confirmed) may be merged by it; the others
        # carry the user's word and are never merged automatically.
        self.automatic = {r["id"] for r in self.catalog.query(
            "SELECT id FROM people p WHERE name IS NULL AND hidden = 0 AND NOT EXISTS "
            "(SELECT 1 FROM faces f WHERE f.person_id = p.id AND f.state = 'confirmed')")}
        self._seen = self._data_version()

    def _data_version(self) -> int:
        """Changes when another connection (another run, the app) commits to the catalog; not for our own writes."""
        return int(self.catalog.scalar("PRAGMA data_version"))

    def _fresh(self, queue: list[_Face]) -> list[_Face] | None:
        """Inside the write lock: if someone else wrote since we read the catalog (another run clustering the same
        faces, the user naming a group), read it again and return the queue's faces as they are now; else None.
        Decisions are never made on a stale picture, so two runs cannot found the same group twice."""
        if self._data_version() == self._seen:
            return None
        self.index = FaceIndex.load(self.catalog, self.backend, self.dim)
        self._load()
        return [self.faces[f.id] for f in queue if f.id in self.faces]

    def _vectors(self, ids: list[int]) -> np.ndarray:
        return np.stack([self.index.vector(i) for i in ids]) if ids else np.zeros((0, self.dim), np.float32)

    def _assign(self, face: _Face, person_id: int, similarity: float) -> None:
        self.catalog.conn.execute(
            "UPDATE faces SET person_id = ?, state = 'suggested', similarity = ?, updated_at = ? WHERE id = ?",
            [person_id, similarity, now(), face.id])
        face.person_id, face.state = person_id, "suggested"
        self.photo_people[face.photo_id].add(person_id)
        self.members[person_id].add(face.id)

    def _merge(self, target: int, source: int) -> None:
        """Fold an automatic group into another (they proved to be one person). A photo keeps one face of each."""
        for fid in list(self.members.pop(source, ())):
            face = self.faces[fid]
            self.photo_people[face.photo_id].discard(source)
            if target in self.photo_people[face.photo_id]:
                self.catalog.conn.execute(
                    "UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL, updated_at = ? "
                    "WHERE id = ?", [now(), fid])
                face.person_id, face.state = None, "unknown"
                continue
            self.catalog.conn.execute("UPDATE faces SET person_id = ?, updated_at = ? WHERE id = ?",
                                      [target, now(), fid])
            face.person_id = target
            self.photo_people[face.photo_id].add(target)
            self.members[target].add(fid)
        self.catalog.conn.execute("DELETE FROM people WHERE id = ?", [source])
        self.automatic.discard(source)

    # -- the algorithm -------------------------------------------------------------------------------------------------

    def _marker_key(self) -> str:
        return f"faces_clustered:{self.backend}"

    def run(self) -> ClusterReport:
        """Place the faces that arrived or changed since the last run (and waiting faces they may now unlock)."""
        start = time.perf_counter()
        report = ClusterReport()
        if len(self.index) == 0:
            return report
        self._load()
        if len(self.index) != len(self.faces):  # faces came or went since the index was read (another run)
            self.index = FaceIndex.load(self.catalog, self.backend, self.dim)
        marker = self.catalog.get_setting(self._marker_key()) or {"upto": 0, "at": ""}
        started_at = now()
        queue = [f for f in self.faces.values() if f.person_id is None and f.state in ASSIGNABLE_STATES
                 and (f.id > marker["upto"] or (self.updated[f.id] or "") > marker["at"])]
        retried: set[int] = set()
        first = True
        while queue:
            queue.sort(key=lambda f: (not f.quality, f.id))  # good faces first: they may found people
            retried |= {f.id for f in queue}
            deferred, touched, placed_any = [], set(), False
            # the search (seconds for a whole album) runs before the write lock: other writers never wait for it
            sims, ids = self.index.search(self._vectors([f.id for f in queue]), NEIGHBOURS + 1)
            with self.catalog.write():
                fresh = self._fresh(queue)
                if fresh is not None:  # searched again under the lock: only when another writer came between
                    queue = fresh
                    sims, ids = self.index.search(self._vectors([f.id for f in queue]), NEIGHBOURS + 1)
                for face, srow, irow in zip(queue, sims, ids, strict=True):
                    if face.person_id is not None:
                        continue  # placed meanwhile as a neighbour of a founding face
                    placed = self._place(face, srow, irow, report)
                    placed_any |= placed
                    if placed or first:
                        # a waiting face near a newcomer or a newly placed face may be placeable now (it has one
                        # more close face, or a person to join)
                        touched |= {int(i) for i, sim in zip(irow, srow, strict=True)
                                    if i != -1 and sim >= self.min_sim and int(i) in self.faces}
                    if not placed:
                        deferred.append(face)
            waiting = [self.faces[i] for i in touched - retried
                       if self.faces[i].person_id is None and self.faces[i].state in ASSIGNABLE_STATES]
            first = False
            if not placed_any and not waiting:
                report.deferred = len(deferred)
                break
            queue = (deferred if placed_any else []) + waiting
        top = max(self.faces) if self.faces else 0
        self.catalog.set_setting(self._marker_key(), {"upto": top, "at": started_at})
        report.seconds = time.perf_counter() - start
        return report

    def _link_sim(self, face: _Face, other_id: int) -> float:
        """The similarity two faces need to be neighbours: higher when either may not found (small or unsure)."""
        return self.min_sim if face.quality and self.faces[other_id].quality else self.min_sim_small

    def _place(self, face: _Face, srow: np.ndarray, irow: np.ndarray, report: ClusterReport) -> bool:
        neighbours = [(int(i), float(s)) for i, s in zip(irow, srow, strict=True)
                      if i != -1 and i != face.id and int(i) in self.faces and s >= self._link_sim(face, int(i))]
        blocked = self.rejected.get(face.id, set()) | self.photo_people.get(face.photo_id, set())
        votes: dict[int, float] = defaultdict(float)
        best_sim: dict[int, float] = defaultdict(float)
        for nid, sim in neighbours:
            pid = self.faces[nid].person_id
            if pid is not None and pid not in blocked:
                votes[pid] += sim
                best_sim[pid] = max(best_sim[pid], sim)
        core = face.quality and 1 + len(neighbours) >= MIN_CLUSTER_SIZE
        if votes:
            pid = max(votes, key=votes.__getitem__)
            if core and pid in self.automatic:
                # a core face between automatic groups links them (as density-based clustering would): one person
                for other in sorted(votes, key=votes.__getitem__, reverse=True):
                    if other != pid and other in self.automatic and not (self.rejected.get(face.id, set()) & {other}):
                        self._merge(pid, other)
            self._assign(face, pid, best_sim[pid])
            report.joined += 1
            return True
        if core:
            members = [face]
            photos = {face.photo_id}
            for nid, _sim in neighbours:
                n = self.faces[nid]
                if n.person_id is None and n.state in ASSIGNABLE_STATES and n.photo_id not in photos:
                    members.append(n)
                    photos.add(n.photo_id)
            if len(members) < MIN_CLUSTER_SIZE:
                return False
            ts = now()
            pid = int(self.catalog.conn.execute(
                "INSERT INTO people(name, hidden, created_at, updated_at) VALUES (NULL, 0, ?, ?)", [ts, ts]).lastrowid)
            self.automatic.add(pid)
            for m in members:
                sim = 1.0 if m is face else next(s for i, s in neighbours if i == m.id)
                self._assign(m, pid, sim)
            report.founded_people += 1
            report.founding_faces += len(members)
            report.new_people.append(pid)
            return True
        return False

    def recluster(self) -> ClusterReport:
        """Start over, keeping every confirmed face, every name and every rejection."""
        with self.catalog.write():
            self.catalog.set_setting(self._marker_key(), {"upto": 0, "at": ""})
            self.catalog.conn.execute(
                "UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL, updated_at = ? "
                "WHERE backend = ? AND state = 'suggested'", [now(), self.backend])
            self.catalog.conn.execute(
                "DELETE FROM people WHERE name IS NULL AND hidden = 0 AND NOT EXISTS "
                "(SELECT 1 FROM faces f WHERE f.person_id = people.id)")
        return self.run()
