"""Incremental face clustering, Immich-style: a new face joins the person its nearest neighbours belong to, or
founds a new (unnamed) person when it is a good face with enough close neighbours, or waits for more faces.

The user's word is law: confirmed faces are never moved, a rejected person is never proposed again for that face,
and a photo holds at most one face of each person.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from engine.models.faces.backends import FaceThresholds
from engine.storage.catalog import Catalog, now
from engine.storage.vectors import VectorIndex, stack_blobs

log = logging.getLogger(__name__)

MIN_CLUSTER_SIZE = 3  # faces within the threshold, the face itself included: three photos of one person make a person
NEIGHBOURS = 16

ASSIGNABLE_STATES = ("unknown", "rejected")  # faces clustering may place; suggested and confirmed ones are placed
LOG_KEEP = 100_000  # faces_log entries kept behind the newest run's marker (other processes' copies catch up on them)
CHUNK = 500  # ids per SQL statement


IVF_MIN = 50_000  # faces from which the index is an inverted file: sublinear search, near-exact for tight clusters
IVF_PROBE = 24  # cells searched per query, of about 2 x sqrt(faces)


class FaceIndex(VectorIndex):
    """The faces of one backend, by face id. Exact (a flat scan) below IVF_MIN faces; above, faiss IndexIVFFlat
    trained on the faces themselves: a query scans IVF_PROBE cells instead of every face, so a face placed in a
    library of a million costs milliseconds and clustering from scratch is no longer quadratic."""

    def rebuild(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Empty the index and fill it with these faces, choosing flat or inverted by their number."""
        import faiss

        n = len(ids)
        if n >= IVF_MIN:
            nlist = max(64, int(2 * np.sqrt(n)))
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = vecs[np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)]
            ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # vector(id) and remove by id
            ivf.nprobe = IVF_PROBE
            self.index = ivf
        else:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if n:
            self.add(ids, vecs)


@dataclass(slots=True)
class _Face:
    id: int
    photo_id: int
    person_id: int | None
    state: str
    quality: bool


def _log_last(catalog: Catalog) -> int:
    """The newest faces_log seq ever given (0: none); AUTOINCREMENT never gives one twice, even after trimming."""
    return int(catalog.scalar("SELECT seq FROM sqlite_sequence WHERE name = 'faces_log'") or 0)


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


class ClusterState:
    """One backend's faces as clustering needs them (index, faces, people, rejections), in memory for the life of a
    catalog connection and kept current from faces_log: catching up on k changed faces reads O(k) rows. Writes by
    any connection or process are logged by triggers, so a copy never decides on a stale picture."""

    def __init__(self, backend: str, dim: int):
        self.backend, self.dim = backend, dim
        self.lock = threading.RLock()
        self.index = FaceIndex(dim)
        self.seq = -1  # last faces_log entry applied (-1: nothing loaded)
        self._clear()

    def _clear(self) -> None:
        self.index.index.reset()
        self.faces: dict[int, _Face] = {}
        self.photo_faces: dict[int, set[int]] = defaultdict(set)
        self.members: dict[int, set[int]] = defaultdict(set)
        self.rejected: dict[int, set[int]] = defaultdict(set)
        self.people: dict[int, bool] = {}  # person id -> unnamed and not hidden
        self.confirmed: dict[int, int] = {}  # confirmed face (of any backend) -> its person
        self.confirmed_count: Counter[int] = Counter()

    # -- reading ------------------------------------------------------------------------------------------------------

    def automatic(self, pid: int) -> bool:
        """Made by clustering alone (no name, not hidden, nothing confirmed): clustering may merge it; the others carry
        the user's word and are never merged automatically."""
        return self.people.get(pid, False) and not self.confirmed_count[pid]

    def photo_people(self, photo_id: int) -> set[int]:
        return {p for f in self.photo_faces.get(photo_id, ()) if (p := self.faces[f].person_id) is not None}

    # -- keeping up ---------------------------------------------------------------------------------------------------

    def sync(self, catalog: Catalog) -> set[int] | None:
        """Apply what the log says changed since the last sync. Returns the faces that changed (None: all were read
        again)."""
        last = _log_last(catalog)
        if last == self.seq:
            return set()
        first = catalog.scalar("SELECT min(seq) FROM faces_log")
        first = last + 1 if first is None else int(first)
        if self.seq < 0 or last < self.seq or first > self.seq + 1:  # new, replaced, or trimmed past us
            self._load_all(catalog, last)
            return None
        faces, people = set(), set()
        for r in catalog.conn.execute("SELECT face_id, person_id FROM faces_log WHERE seq > ? AND seq <= ?",
                                      [self.seq, last]):
            if r[0] is not None:
                faces.add(r[0])
            if r[1] is not None:
                people.add(r[1])
        if len(faces) > max(5000, len(self.faces) // 4):
            self._load_all(catalog, last)
            return None
        for chunk in _chunks(sorted(faces)):
            self._apply_faces(catalog, chunk)
        for chunk in _chunks(sorted(people)):
            got = {r[0]: bool(r[1]) for r in catalog.query(
                f"SELECT id, name IS NULL AND hidden = 0 FROM people WHERE id IN ({','.join('?' * len(chunk))})",
                chunk)}
            for pid in chunk:
                if pid in got:
                    self.people[pid] = got[pid]
                else:
                    self.people.pop(pid, None)
        self.seq = last
        return faces

    def _load_all(self, catalog: Catalog, last: int) -> None:
        self._clear()
        rows = catalog.query(
            "SELECT id, photo_id, person_id, state, quality, embedding FROM faces WHERE backend = ? "
            "AND embedding IS NOT NULL AND state != 'ignored'", [self.backend])
        rows = [r for r in rows if len(r[5]) == self.dim * 4]
        for r in rows:
            self._put(_Face(r[0], r[1], r[2], r[3], bool(r[4])))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self.index.rebuild(ids, stack_blobs([r[5] for r in rows], self.dim))
        for fid, pid in catalog.conn.execute(
                "SELECT id, person_id FROM faces WHERE state = 'confirmed' AND person_id IS NOT NULL"):
            self.confirmed[fid] = pid
            self.confirmed_count[pid] += 1
        for fid, pid in catalog.conn.execute("SELECT face_id, person_id FROM face_rejections"):
            self.rejected[fid].add(pid)
        self.people = {r[0]: bool(r[1]) for r in catalog.conn.execute(
            "SELECT id, name IS NULL AND hidden = 0 FROM people")}
        self.seq = last

    def _put(self, face: _Face) -> None:
        self.faces[face.id] = face
        self.photo_faces[face.photo_id].add(face.id)
        if face.person_id is not None:
            self.members[face.person_id].add(face.id)

    def _drop(self, fid: int) -> _Face | None:
        face = self.faces.pop(fid, None)
        if face is not None:
            self.photo_faces[face.photo_id].discard(fid)
            if face.person_id is not None:
                self.members[face.person_id].discard(fid)
        return face

    def _apply_faces(self, catalog: Catalog, ids: list[int]) -> None:
        marks = ",".join("?" * len(ids))
        rows = {r[0]: r for r in catalog.query(
            f"SELECT id, photo_id, backend, person_id, state, quality, embedding FROM faces WHERE id IN ({marks})", ids)}
        for fid in ids:
            self.rejected.pop(fid, None)
        for fid, pid in catalog.query(f"SELECT face_id, person_id FROM face_rejections WHERE face_id IN ({marks})",
                                      ids):
            self.rejected[fid].add(pid)
        gone: list[int] = []
        new_ids: list[int] = []
        new_vecs: list[bytes] = []
        for fid in ids:
            r = rows.get(fid)
            old_pid = self.confirmed.pop(fid, None)
            if old_pid is not None:
                self.confirmed_count[old_pid] -= 1
            if r is not None and r[4] == "confirmed" and r[3] is not None:
                self.confirmed[fid] = r[3]
                self.confirmed_count[r[3]] += 1
            old = self._drop(fid)
            ours = (r is not None and r[2] == self.backend and r[6] is not None and r[4] != "ignored"
                    and len(r[6]) == self.dim * 4)
            if ours:
                self._put(_Face(fid, r[1], r[3], r[4], bool(r[5])))
            if old is not None and (not ours or self.index.vector(fid).tobytes() != r[6]):
                gone.append(fid)
            if ours and (old is None or fid in gone):
                new_ids.append(fid)
                new_vecs.append(r[6])
        self.index.remove(gone)
        if new_ids:
            self.index.add(np.asarray(new_ids, np.int64), stack_blobs(new_vecs, self.dim))


# one state per catalog connection and backend, dropped with the connection
_states: weakref.WeakKeyDictionary[Catalog, dict[str, ClusterState]] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def cluster_state(catalog: Catalog, backend: str, dim: int) -> ClusterState:
    """This connection's clustering state of `backend`, brought up to date."""
    with _states_lock:
        per = _states.setdefault(catalog, {})
        state = per.get(backend)
        if state is None or state.dim != dim:
            state = per[backend] = ClusterState(backend, dim)
    with state.lock:
        state.sync(catalog)
    return state


def forget_state(catalog: Catalog, backend: str) -> None:
    with _states_lock:
        _states.get(catalog, {}).pop(backend, None)


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
    """Places unassigned faces of one backend. Call `run()` after new faces arrive, `recluster()` to start over.

    The state (index, faces, people) lives as long as the catalog connection and follows faces_log, so a run over
    k new faces reads O(k) rows; the marker setting remembers up to which log entry faces were considered."""

    def __init__(self, catalog: Catalog, backend: str, dim: int, thresholds: FaceThresholds):
        self.catalog = catalog
        self.backend = backend
        self.dim = dim
        self.min_sim = 1.0 - thresholds.cluster_distance
        self.min_sim_small = 1.0 - thresholds.link_distance(both_may_found=False)  # a link with a small face
        self.state = cluster_state(catalog, backend, dim)
        self._pending: set[int] = set()  # faces to look at in the next run

    @property
    def index(self) -> FaceIndex:
        return self.state.index

    @property
    def faces(self) -> dict[int, _Face]:
        return self.state.faces

    @contextmanager
    def _write(self) -> Iterator[set[int] | None]:
        """A write transaction on an up-to-date state. Yields what others changed since the last sync (None: all
        was read again); on commit our own log entries are marked as applied (memory was updated as we wrote),
        on failure the state is read again next time."""
        try:
            with self.catalog.write():
                changed = self.state.sync(self.catalog)
                self._pending |= set(self.faces) if changed is None else changed
                yield changed
                self.state.seq = _log_last(self.catalog)
        except BaseException:
            self.state.seq = -1
            raise

    def _vectors(self, ids: list[int]) -> np.ndarray:
        return np.stack([self.index.vector(i) for i in ids]) if ids else np.zeros((0, self.dim), np.float32)

    def _assign(self, face: _Face, person_id: int, similarity: float) -> None:
        self.catalog.conn.execute(
            "UPDATE faces SET person_id = ?, state = 'suggested', similarity = ?, updated_at = ? WHERE id = ?",
            [person_id, similarity, now(), face.id])
        if face.person_id is not None:
            self.state.members[face.person_id].discard(face.id)
        face.person_id, face.state = person_id, "suggested"
        self.state.members[person_id].add(face.id)

    def _merge(self, target: int, source: int) -> None:
        """Fold an automatic group into another (they proved to be one person). A photo keeps one face of each, and
        a face the user said is not the target waits instead."""
        st = self.state
        for fid in sorted(st.members.pop(source, ())):
            face = self.faces[fid]
            face.person_id = None
            if target in st.photo_people(face.photo_id) or target in st.rejected.get(fid, ()):
                self.catalog.conn.execute(
                    "UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL, updated_at = ? "
                    "WHERE id = ?", [now(), fid])
                face.state = "unknown"
                self._pending.add(fid)  # looked at again next run
                continue
            self.catalog.conn.execute("UPDATE faces SET person_id = ?, updated_at = ? WHERE id = ?",
                                      [target, now(), fid])
            face.person_id = target
            st.members[target].add(fid)
        self.catalog.conn.execute("DELETE FROM people WHERE id = ?", [source])  # its rejections go with it
        st.people.pop(source, None)
        for rejected in st.rejected.values():  # (a later person may get its id: no stale "not them" for it)
            rejected.discard(source)

    # -- the algorithm -------------------------------------------------------------------------------------------------

    def _marker_key(self) -> str:
        return f"faces_clustered:{self.backend}"

    def _queue(self) -> list[_Face]:
        """Unplaced faces logged since the last run's marker (all of them if the marker is missing or the log was
        trimmed past it), plus the faces the last run left to look at again."""
        marker = self.catalog.get_setting(self._marker_key()) or {}
        since = marker.get("seq") if isinstance(marker, dict) else None
        first = self.catalog.scalar("SELECT min(seq) FROM faces_log")
        first = self.state.seq + 1 if first is None else int(first)
        if not isinstance(since, int) or first > since + 1:
            ids: set[int] = set(self.faces)
        else:
            ids = {r[0] for r in self.catalog.conn.execute(
                "SELECT DISTINCT face_id FROM faces_log WHERE seq > ? AND face_id IS NOT NULL", [since])}
            ids |= {int(i) for i in marker.get("pending", ())}
        return [f for i in ids if (f := self.faces.get(i)) is not None and f.person_id is None
                and f.state in ASSIGNABLE_STATES]

    def run(self) -> ClusterReport:
        """Place the faces that arrived or changed since the last run (and waiting faces they may now unlock)."""
        with self.state.lock:
            return self._run()

    def _run(self) -> ClusterReport:
        start = time.perf_counter()
        report = ClusterReport()
        self.state.sync(self.catalog)
        if not self.faces:
            return report
        queue = self._queue()
        retried: set[int] = set()
        first = True
        while queue:
            queue.sort(key=lambda f: (not f.quality, f.id))  # good faces first: they may found people
            retried |= {f.id for f in queue}
            deferred, touched, placed_any = [], set(), False
            # the search (seconds for a whole album) runs before the write lock: other writers never wait for it
            sims, ids = self.index.search(self._vectors([f.id for f in queue]), NEIGHBOURS + 1)
            with self._write() as changed:
                if changed is None or changed:  # another writer came between: read again, search again
                    queue = [self.faces[f.id] for f in queue if f.id in self.faces]
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
                       if i in self.faces and self.faces[i].person_id is None
                       and self.faces[i].state in ASSIGNABLE_STATES]
            first = False
            if not placed_any and not waiting:
                report.deferred = len(deferred)
                break
            queue = [f for f in deferred if f.id in self.faces] if placed_any else []
            queue += waiting
        with self._write():
            seq = _log_last(self.catalog)
            pending = sorted(i for i in self._pending if (f := self.faces.get(i)) is not None
                             and f.person_id is None and f.state in ASSIGNABLE_STATES)
            # many to look at again (another run rewrote much of the catalog): no marker, so all are looked at
            marker = {"seq": seq, "pending": pending} if len(pending) <= 10_000 else {}
            self.catalog.set_setting(self._marker_key(), marker)
            self.catalog.conn.execute("DELETE FROM faces_log WHERE seq <= ?", [seq - LOG_KEEP])
        self._pending.clear()
        report.seconds = time.perf_counter() - start
        return report

    def _link_sim(self, face: _Face, other_id: int) -> float:
        """The similarity two faces need to be neighbours: higher when either may not found (small or unsure)."""
        return self.min_sim if face.quality and self.faces[other_id].quality else self.min_sim_small

    def _place(self, face: _Face, srow: np.ndarray, irow: np.ndarray, report: ClusterReport) -> bool:
        neighbours = [(int(i), float(s)) for i, s in zip(irow, srow, strict=True)
                      if i != -1 and i != face.id and int(i) in self.faces and s >= self._link_sim(face, int(i))]
        st = self.state
        blocked = st.rejected.get(face.id, set()) | st.photo_people(face.photo_id)
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
            if core and st.automatic(pid):
                # a core face between automatic groups links them (as density-based clustering would): one person
                for other in sorted(votes, key=votes.__getitem__, reverse=True):
                    if other != pid and st.automatic(other) and other not in st.rejected.get(face.id, ()):
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
            st.people[pid] = True
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
        with self.state.lock:
            with self.catalog.write():  # logged like any write: the run reads these changes back
                self.catalog.set_setting(self._marker_key(), {})  # no marker: the run looks at every waiting face
                self.catalog.conn.execute(
                    "UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL, updated_at = ? "
                    "WHERE backend = ? AND state = 'suggested'", [now(), self.backend])
                self.catalog.conn.execute(
                    "DELETE FROM people WHERE name IS NULL AND hidden = 0 AND NOT EXISTS "
                    "(SELECT 1 FROM faces f WHERE f.person_id = people.id)")
            return self._run()
