"""People: naming, merging, moving, splitting, rejecting, hiding and forgetting faces' owners.

Every action here is the user's word, so it is final: faces it touches become confirmed (automatic runs never
change them), and "not this person" is remembered for that face forever.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.domain.personalize import instant
from engine.errors import UserError
from engine.storage.catalog import Catalog, now
from engine.storage.vectors import from_blob

log = logging.getLogger(__name__)


class PeopleError(UserError, ValueError):
    """A request that cannot be done as asked; the message says why."""


@dataclass
class Suggestion:
    person_id: int
    name: str
    similarity: float


class People:
    """The naming workflow over the catalog (one per thread, like the catalog)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- reading -------------------------------------------------------------------------------------------------------

    def person(self, person_id: int) -> dict[str, Any]:
        rows = self.catalog.query("SELECT * FROM people WHERE id = ?", [person_id])
        if not rows:
            raise PeopleError(f"no person with id {person_id}")
        return dict(rows[0])

    def find(self, name: str) -> dict[str, Any] | None:
        rows = self.catalog.query("SELECT * FROM people WHERE name = ? COLLATE NOCASE", [name.strip()])
        return dict(rows[0]) if rows else None

    def faces_of(self, person_id: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.catalog.query(
            "SELECT f.*, p.path AS photo_path FROM faces f JOIN photos p ON p.id = f.photo_id "
            "WHERE f.person_id = ? ORDER BY f.state = 'confirmed' DESC, f.score * f.w DESC, f.id", [person_id])]

    def faces_in_photo(self, photo_id: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.catalog.query(
            "SELECT f.*, pe.name AS person_name FROM faces f LEFT JOIN people pe ON pe.id = f.person_id "
            "WHERE f.photo_id = ? ORDER BY f.x", [photo_id])]

    def people(self, *, include_hidden: bool = False, named: bool | None = None) -> list[dict[str, Any]]:
        """People with their face counts: named first (by name), then unnamed clusters by size, largest first."""
        where = ["1"]
        if not include_hidden:
            where.append("pe.hidden = 0")
        if named is True:
            where.append("pe.name IS NOT NULL")
        elif named is False:
            where.append("pe.name IS NULL")
        rows = self.catalog.query(
            f"""SELECT pe.*, COUNT(f.id) AS face_count,
                       SUM(f.state = 'confirmed') AS confirmed, SUM(f.state = 'suggested') AS suggested
                FROM people pe LEFT JOIN faces f ON f.person_id = pe.id
                WHERE {' AND '.join(where)} GROUP BY pe.id
                ORDER BY pe.name IS NULL, pe.name COLLATE NOCASE, face_count DESC, pe.id""")
        return [dict(r) for r in rows]

    def representative_face(self, person_id: int) -> dict[str, Any] | None:
        faces = self.faces_of(person_id)
        return faces[0] if faces else None

    def _centroids(self) -> dict[int, np.ndarray]:
        """Each person's unit mean embedding (confirmed and suggested faces; one embedding space per person)."""
        vecs: dict[int, list[np.ndarray]] = defaultdict(list)
        for r in self.catalog.query(
                "SELECT person_id, embedding FROM faces WHERE person_id IS NOT NULL AND embedding IS NOT NULL "
                "AND state IN ('confirmed', 'suggested')"):
            vecs[r["person_id"]].append(from_blob(r["embedding"]))
        out = {}
        for pid, vs in vecs.items():
            dim = max({len(v) for v in vs}, key=[len(v) for v in vs].count)  # faces of another backend: left out
            c = np.mean([v for v in vs if len(v) == dim], axis=0)
            out[pid] = c / (np.linalg.norm(c) or 1.0)
        return out

    def _photos_by_person(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = defaultdict(set)
        for r in self.catalog.query("SELECT DISTINCT person_id, photo_id FROM faces WHERE person_id IS NOT NULL"):
            out[r["person_id"]].add(r["photo_id"])
        return out

    def _rejected_by_group(self) -> dict[int, set[int]]:
        """{person: the people one of its faces was rejected for}: never offered for it again."""
        out: dict[int, set[int]] = defaultdict(set)
        for r in self.catalog.query(
                "SELECT DISTINCT f.person_id AS group_id, r.person_id FROM face_rejections r "
                "JOIN faces f ON f.id = r.face_id WHERE f.person_id IS NOT NULL"):
            out[r["group_id"]].add(r["person_id"])
        return out

    def suggestions_by_group(self, max_distance: float) -> dict[int, Suggestion]:
        """"Is this Alex?" for every unnamed, visible group at once: {group id: the one named person offered}.

        A group is offered its closest named person within `max_distance` (centroid to centroid), except people it
        shares a photo with (one photo never shows anyone twice: someone standing next to Alex is not Alex) and
        people one of its faces was rejected for. A named person is offered for one group at a time, the closest:
        a person whose centroid lies near many faces (a 'hub', such as a face seen across twenty years) cannot take
        every question; once the user answers, the next group gets its turn."""
        people = self.people()
        named = [p["id"] for p in people if p["name"] is not None]
        groups = [p["id"] for p in people if p["name"] is None]
        cents = self._centroids()
        photos = self._photos_by_person()
        rejected = self._rejected_by_group()
        best: dict[int, tuple[float, int]] = {}  # group -> (distance, person)
        for g in groups:
            if g not in cents:
                continue
            for p in named:
                c = cents.get(p)
                if c is None or len(c) != len(cents[g]) or p in rejected[g] or photos[g] & photos[p]:
                    continue
                d = float(1.0 - cents[g] @ c)
                if d <= max_distance and d < best.get(g, (np.inf, 0))[0]:
                    best[g] = (d, p)
        closest_group: dict[int, tuple[float, int]] = {}  # person -> (distance, group)
        for g, (d, p) in best.items():
            if (d, g) < closest_group.get(p, (np.inf, 0)):
                closest_group[p] = (d, g)
        names = {p["id"]: p["name"] for p in people}
        return {g: Suggestion(p, names[p], 1.0 - d) for p, (d, g) in closest_group.items()}

    def suggestions(self, person_id: int, max_distance: float) -> list[Suggestion]:
        """"Is this Alex?" for one unnamed group: at most one person (see `suggestions_by_group`)."""
        offer = self.suggestions_by_group(max_distance).get(person_id)
        return [offer] if offer else []

    # -- the user's actions -------------------------------------------------------------------------------------------

    def name(self, person_id: int, name: str, face_ids: list[int] | None = None) -> int:
        """Name a group, or rename a person; typing an existing name merges into that person. Returns the id.

        Naming an unnamed group confirms the faces the user saw: `face_ids`, the group as shown (the app passes
        them), or the group as it stands (None: the command line, which printed it). Faces placed afterwards, and
        every suggested face of a person already named (a rename), stay suggested until the user confirms them:
        the user's word covers what they looked at, not a stranger that clustering put there."""
        name = " ".join(name.split())
        if not name:
            raise PeopleError("a name cannot be empty")
        was_named = self.person(person_id)["name"] is not None
        existing = self.find(name)
        with self.catalog.write():
            if existing is not None and existing["id"] != person_id:
                return self.merge(existing["id"], [person_id], face_ids)
            shown = self._shown_faces(person_id, face_ids)
            self.catalog.conn.execute("UPDATE people SET name = ?, updated_at = ? WHERE id = ?",
                                      [name, now(), person_id])
            self._confirm(shown)
            if not was_named:   # their photos' next captions use the name (a rename re-renders, no model runs)
                instant.recaption(self.catalog, instant.photos_of_person(self.catalog, person_id))
        log.info("person %d named %r (%d faces confirmed)", person_id, name, len(shown))
        return person_id

    def rename(self, person_id: int, name: str) -> int:
        return self.name(person_id, name)

    def _shown_faces(self, person_id: int, face_ids: list[int] | None) -> list[int]:
        """The suggested faces of an unnamed, visible group that the user saw (all of them when `face_ids` is None);
        none for a named or hidden person, whose suggested faces came after the user's word."""
        person = self.person(person_id)
        if person["name"] is not None or person["hidden"]:
            return []
        ids = [r["id"] for r in self.catalog.query(
            "SELECT id FROM faces WHERE person_id = ? AND state = 'suggested'", [person_id])]
        return ids if face_ids is None else sorted(set(ids) & set(face_ids))

    def _confirm(self, face_ids: list[int]) -> None:
        self.catalog.conn.executemany("UPDATE faces SET state = 'confirmed', updated_at = ? WHERE id = ?",
                                      [(now(), fid) for fid in face_ids])

    def _confirm_all(self, person_id: int) -> None:
        self.catalog.conn.execute(
            "UPDATE faces SET state = 'confirmed', updated_at = ? WHERE person_id = ? AND state = 'suggested'",
            [now(), person_id])

    def merge(self, target_id: int, source_ids: list[int], face_ids: list[int] | None = None) -> int:
        """Fold people into `target_id`. Where both are in one photo, the target's face stays and the other waits.

        The unnamed groups involved are confirmed as the user saw them (`face_ids`, or as they stand); a named
        person's suggested faces stay suggested (see `name`)."""
        target = self.person(target_id)
        with self.catalog.write():
            shown = self._shown_faces(target_id, face_ids)
            for sid in source_ids:
                if sid == target_id:
                    continue
                shown += self._shown_faces(sid, face_ids)
                if target["name"] is not None:   # the source's photos are the target's now: name them
                    instant.recaption(self.catalog, instant.photos_of_person(self.catalog, sid))
                instant.move_person(self.catalog, sid, target_id)
                clashes = self.catalog.query(
                    "SELECT s.id FROM faces s JOIN faces t ON t.photo_id = s.photo_id AND t.person_id = ? "
                    "WHERE s.person_id = ?", [target_id, sid])
                for r in clashes:
                    self.catalog.conn.execute(
                        "UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL, updated_at = ? "
                        "WHERE id = ?", [now(), r["id"]])
                self.catalog.conn.execute("UPDATE faces SET person_id = ?, updated_at = ? WHERE person_id = ?",
                                          [target_id, now(), sid])
                self.catalog.conn.execute(
                    "INSERT OR IGNORE INTO face_rejections(face_id, person_id, created_at) "
                    "SELECT face_id, ?, created_at FROM face_rejections WHERE person_id = ?", [target_id, sid])
                self.catalog.conn.execute("DELETE FROM people WHERE id = ?", [sid])
            self._confirm([fid for fid in shown if self._face(fid)["person_id"] == target_id])
        return target_id

    def move_faces(self, face_ids: list[int], person_id: int) -> None:
        """These faces are this person (confirmed). A photo's other face of the person is released."""
        self.person(person_id)
        with self.catalog.write():
            for fid in face_ids:
                face = self._face(fid)
                self.catalog.conn.execute(
                    "UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL, updated_at = ? "
                    "WHERE photo_id = ? AND person_id = ? AND id != ?", [now(), face["photo_id"], person_id, fid])
                self.catalog.conn.execute("DELETE FROM face_rejections WHERE face_id = ? AND person_id = ?",
                                          [fid, person_id])
                self.catalog.conn.execute(
                    "UPDATE faces SET person_id = ?, state = 'confirmed', similarity = NULL, updated_at = ? WHERE id = ?",
                    [person_id, now(), fid])
                instant.recaption(self.catalog, [face["photo_id"]])

    def confirm(self, face_id: int) -> None:
        face = self._face(face_id)
        if face["person_id"] is None:
            raise PeopleError(f"face {face_id} belongs to nobody yet: move it to a person instead")
        with self.catalog.write():
            self.catalog.conn.execute("UPDATE faces SET state = 'confirmed', updated_at = ? WHERE id = ?",
                                      [now(), face_id])

    def create(self, name: str | None, face_ids: list[int]) -> int:
        """A new person from these faces (confirmed), named or not; an existing name merges. Returns the id."""
        if not face_ids:
            raise PeopleError("a new person needs at least one face")
        for fid in face_ids:
            self._face(fid)
        with self.catalog.write():
            ts = now()
            new_id = int(self.catalog.conn.execute(
                "INSERT INTO people(name, hidden, created_at, updated_at) VALUES (NULL, 0, ?, ?)", [ts, ts]).lastrowid)
            self.move_faces(face_ids, new_id)
            if name:
                new_id = self.name(new_id, name)
        return new_id

    def split(self, person_id: int, face_ids: list[int]) -> int:
        """Move these faces of a person into a new, unnamed person. Returns its id."""
        self.person(person_id)
        owned = {r["id"] for r in self.catalog.query("SELECT id FROM faces WHERE person_id = ?", [person_id])}
        if not face_ids or not set(face_ids) <= owned:
            raise PeopleError(f"faces {sorted(set(face_ids) - owned)} do not belong to person {person_id}")
        with self.catalog.write():
            ts = now()
            new_id = int(self.catalog.conn.execute(
                "INSERT INTO people(name, hidden, created_at, updated_at) VALUES (NULL, 0, ?, ?)", [ts, ts]).lastrowid)
            self.move_faces(face_ids, new_id)
        return new_id

    def reject(self, face_id: int, person_id: int) -> None:
        """"Not this person": the face leaves the person and is never proposed for them again."""
        face = self._face(face_id)
        self.person(person_id)
        with self.catalog.write():
            self.catalog.conn.execute(
                "INSERT OR IGNORE INTO face_rejections(face_id, person_id, created_at) VALUES (?, ?, ?)",
                [face_id, person_id, now()])
            if face["person_id"] == person_id:
                self.catalog.conn.execute(
                    "UPDATE faces SET person_id = NULL, state = 'rejected', similarity = NULL, updated_at = ? "
                    "WHERE id = ?", [now(), face_id])

    def ignore_face(self, face_id: int) -> None:
        """Not a face worth tracking (a poster, a crowd): never clustered."""
        self._face(face_id)
        with self.catalog.write():
            self.catalog.conn.execute(
                "UPDATE faces SET person_id = NULL, state = 'ignored', updated_at = ? WHERE id = ?", [now(), face_id])

    def hide(self, person_id: int, hidden: bool = True) -> None:
        """Hide a group of strangers. Its faces stay with it (confirmed), so new faces of them stay hidden too."""
        self.person(person_id)
        with self.catalog.write():
            self.catalog.conn.execute("UPDATE people SET hidden = ?, updated_at = ? WHERE id = ?",
                                      [int(hidden), now(), person_id])
            if hidden:
                self._confirm_all(person_id)

    def hide_small(self, max_faces: int) -> list[int]:
        """Hide every unnamed group with at most `max_faces` faces at once."""
        small = [p["id"] for p in self.people(named=False) if p["face_count"] <= max_faces]
        with self.catalog.write():
            for pid in small:
                self.hide(pid)
        return small

    def forget(self, person_id: int) -> int:
        """Delete a person's name and face data (privacy). Their faces stay as ignored places, without embeddings,
        so a later run does not recognise them again. Returns the number of faces forgotten."""
        self.person(person_id)
        with self.catalog.write():
            n = self.catalog.conn.execute(
                "UPDATE faces SET person_id = NULL, state = 'ignored', embedding = NULL, landmarks = NULL, "
                "similarity = NULL, updated_at = ? WHERE person_id = ?", [now(), person_id]).rowcount
            self.catalog.conn.execute("DELETE FROM people WHERE id = ?", [person_id])
        return n

    def _face(self, face_id: int) -> dict[str, Any]:
        rows = self.catalog.query("SELECT * FROM faces WHERE id = ?", [face_id])
        if not rows:
            raise PeopleError(f"no face with id {face_id}")
        return dict(rows[0])
