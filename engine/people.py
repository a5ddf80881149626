"""People: naming, merging, moving, splitting, rejecting, hiding and forgetting faces' owners.

Every action here is the user's word, so it is final: faces it touches become confirmed (automatic runs never
change them), and "not this person" is remembered for that face forever.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import Catalog, now
from .vectors import from_blob

log = logging.getLogger(__name__)


class PeopleError(ValueError):
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

    def _centroid(self, person_id: int) -> np.ndarray | None:
        rows = self.catalog.query(
            "SELECT embedding FROM faces WHERE person_id = ? AND embedding IS NOT NULL AND state IN ('confirmed', 'suggested')",
            [person_id])
        if not rows:
            return None
        vecs = np.stack([from_blob(r["embedding"]) for r in rows])
        c = vecs.mean(axis=0)
        return c / (np.linalg.norm(c) or 1.0)

    def suggestions(self, person_id: int, max_distance: float, top: int = 3) -> list[Suggestion]:
        """"Is this Alex?": named people whose faces look like this cluster's, closest first."""
        mine = self._centroid(person_id)
        if mine is None:
            return []
        rejected = {r["person_id"] for r in self.catalog.query(
            "SELECT DISTINCT r.person_id FROM face_rejections r JOIN faces f ON f.id = r.face_id WHERE f.person_id = ?",
            [person_id])}
        out = []
        for p in self.people(named=True):
            if p["id"] == person_id or p["id"] in rejected:
                continue
            c = self._centroid(p["id"])
            if c is None or len(c) != len(mine):
                continue
            sim = float(mine @ c)
            if 1.0 - sim <= max_distance:
                out.append(Suggestion(p["id"], p["name"], sim))
        return sorted(out, key=lambda s: -s.similarity)[:top]

    # -- the user's actions -------------------------------------------------------------------------------------------

    def name(self, person_id: int, name: str) -> int:
        """Name (or rename) a person; typing an existing name merges into that person. Returns the person's id."""
        name = " ".join(name.split())
        if not name:
            raise PeopleError("a name cannot be empty")
        self.person(person_id)
        existing = self.find(name)
        with self.catalog.write():
            if existing is not None and existing["id"] != person_id:
                self.merge(existing["id"], [person_id])
                person_id = existing["id"]
            else:
                self.catalog.conn.execute("UPDATE people SET name = ?, updated_at = ? WHERE id = ?",
                                          [name, now(), person_id])
            self._confirm_all(person_id)
        log.info("person %d named %r", person_id, name)
        return person_id

    def rename(self, person_id: int, name: str) -> int:
        return self.name(person_id, name)

    def _confirm_all(self, person_id: int) -> None:
        self.catalog.conn.execute(
            "UPDATE faces SET state = 'confirmed', updated_at = ? WHERE person_id = ? AND state = 'suggested'",
            [now(), person_id])

    def merge(self, target_id: int, source_ids: list[int]) -> int:
        """Fold people into `target_id`. Where both are in one photo, the target's face stays and the other waits."""
        self.person(target_id)
        with self.catalog.write():
            for sid in source_ids:
                if sid == target_id:
                    continue
                self.person(sid)
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
            self._confirm_all(target_id)
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
