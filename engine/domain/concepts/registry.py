"""The concept registry: the people, pets and things a user taught the app, with their heads.

A concept has a kind (person / object), a display name, an identifier used in prompts (the person's name; a short
token such as "sks" for objects), the photos that define it, its recognition head and its training state. Heads
and concept embeddings are safetensors files in the library's `concepts/<id>/` folder.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from engine.errors import UserError
from engine.storage.catalog import Catalog, now

log = logging.getLogger(__name__)

PERSON, OBJECT = "person", "object"
HEAD_FILE = "head.safetensors"
OBJECT_TOKENS = ("sks", "pll", "vxn", "qmy", "zbt", "kro", "dwu", "tje")  # rare tokens, as the paper's "sks"


class ConceptError(UserError, ValueError):
    """A request about concepts that cannot be done as asked; the message says why."""


class NotIndexedYet(ConceptError):
    """What a request needs is made by indexing, and indexing has not made it yet. The message names the command
    to run; `in_app` says the same the desktop app's way (its Index Now button, its Settings), for it to show."""

    def __init__(self, message: str, in_app: str):
        super().__init__(message)
        self.in_app = in_app


def photo_not_indexed(photo_id: int) -> NotIndexedYet:
    return NotIndexedYet(f"photo {photo_id} has not been indexed yet: run `myvlm index` first",
                         "a photo you chose has not been indexed yet: press Index Now, and try again once it is done")


@dataclass
class Concept:
    id: int
    kind: str
    name: str
    identifier: str
    person_id: int | None
    head_state: str
    head_revision: int
    head_space: str | None
    threshold: float | None
    metrics: dict[str, Any] | None
    embedding_state: str
    last_error: str | None
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: Any) -> Concept:
        d = dict(row)
        d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else None
        return cls(**d)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "name": self.name, "identifier": self.identifier,
            "person_id": self.person_id, "head": {"state": self.head_state, "revision": self.head_revision,
                                                  "space": self.head_space, "threshold": self.threshold,
                                                  "metrics": self.metrics},
            "embedding_state": self.embedding_state, "error": self.last_error,
        }


@dataclass
class Head:
    """A recognition head as stored: tensors plus a little metadata (what space, what threshold)."""

    kind: str
    space: str  # the embedding space it reads: a face backend key or a CLIP key
    threshold: float
    tensors: dict[str, np.ndarray]  # object: classifier.weight (2, D), classifier.bias (2,); person: references (k, D)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.tensors.items()}, str(tmp),
                  metadata={"kind": self.kind, "space": self.space, "threshold": repr(float(self.threshold))})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Head:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        return cls(meta.get("kind", ""), meta.get("space", ""), float(meta.get("threshold", "nan")), tensors)


def _slug_ok(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise ConceptError("a concept needs a name")
    return name


class ConceptRegistry:
    """Concepts of one library (one per thread, like the catalog)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.root = catalog.paths.concepts

    # -- reading -------------------------------------------------------------------------------------------------------

    def folder(self, concept_id: int) -> Path:
        return self.root / str(concept_id)

    def head_path(self, concept_id: int) -> Path:
        return self.folder(concept_id) / HEAD_FILE

    def get(self, concept: int | str) -> Concept:
        if isinstance(concept, int) or (isinstance(concept, str) and concept.isdigit()):
            rows = self.catalog.query("SELECT * FROM concepts WHERE id = ?", [int(concept)])
        else:
            rows = self.catalog.query("SELECT * FROM concepts WHERE name = ? COLLATE NOCASE", [concept.strip()])
        if not rows:
            raise ConceptError(f"no concept {concept!r}")
        return Concept.from_row(rows[0])

    def list(self, kind: str | None = None) -> list[Concept]:
        sql, params = "SELECT * FROM concepts", []
        if kind:
            sql += " WHERE kind = ?"
            params.append(kind)
        return [Concept.from_row(r) for r in self.catalog.query(sql + " ORDER BY name COLLATE NOCASE", params)]

    def for_person(self, person_id: int) -> Concept | None:
        rows = self.catalog.query("SELECT * FROM concepts WHERE person_id = ?", [person_id])
        return Concept.from_row(rows[0]) if rows else None

    def examples(self, concept_id: int, role: str = "positive") -> list[dict[str, Any]]:
        return [dict(r) for r in self.catalog.query(
            "SELECT e.*, p.path_bytes, p.content_hash, p.user_rotation FROM concept_examples e "
            "LEFT JOIN photos p ON p.id = e.photo_id WHERE e.concept_id = ? AND e.role = ? ORDER BY e.id",
            [concept_id, role])]

    def head(self, concept_id: int) -> Head | None:
        path = self.head_path(concept_id)
        return Head.load(path) if path.exists() else None

    # -- changing ------------------------------------------------------------------------------------------------------

    def _free_identifier(self) -> str:
        used = {c.identifier.lower() for c in self.list()}
        for token in OBJECT_TOKENS:
            if token not in used:
                return token
        n = 2
        while f"sks{n}" in used:
            n += 1
        return f"sks{n}"

    def _check_identifier(self, identifier: str, exclude: int | None = None) -> str:
        identifier = identifier.strip()
        if not re.fullmatch(r"[\w][\w' .-]*", identifier):
            raise ConceptError(f"identifier {identifier!r} must be a word or a name")
        for c in self.list():
            if c.id != exclude and c.identifier.lower() == identifier.lower():
                raise ConceptError(f"identifier {identifier!r} is already used by {c.name!r}")
        return identifier

    def _insert(self, kind: str, name: str, identifier: str, person_id: int | None) -> int:
        if self.catalog.scalar("SELECT 1 FROM concepts WHERE name = ? COLLATE NOCASE", [name]):
            raise ConceptError(f"a concept named {name!r} exists already")
        ts = now()
        return int(self.catalog.conn.execute(
            "INSERT INTO concepts(kind, name, identifier, person_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            [kind, name, identifier, person_id, ts, ts]).lastrowid)

    def create(self, kind: str, name: str, identifier: str | None = None, person_id: int | None = None) -> Concept:
        """A concept with no examples yet (imports add theirs). Default identifier: the name for people, else a
        free rare token."""
        if kind not in (PERSON, OBJECT):
            raise ConceptError(f"a concept is a {PERSON} or an {OBJECT}, not {kind!r}")
        name = _slug_ok(name)
        with self.catalog.write():
            if identifier:
                ident = self._check_identifier(identifier)
            elif kind == PERSON:
                ident = self._check_identifier(name)
            else:
                ident = self._free_identifier()
            cid = self._insert(kind, name, ident, person_id)
        return self.get(cid)

    def _check_photos(self, photo_ids: list[int]) -> None:
        if not photo_ids:
            raise ConceptError("mark at least one photo that shows it")
        missing = [p for p in photo_ids if self.catalog.photo(p) is None]
        if missing:
            raise ConceptError(f"no photo with id {', '.join(map(str, missing))}")

    def add_object(self, name: str, photo_ids: list[int], identifier: str | None = None) -> Concept:
        """A pet or a thing, defined by a few photos of it (4 is the paper's default); no head yet."""
        name = _slug_ok(name)
        self._check_photos(photo_ids)
        with self.catalog.write():
            cid = self.create(OBJECT, name, identifier).id
            self.add_examples(cid, photo_ids)
        return self.get(cid)

    def add_object_trained(self, name: str, photo_ids: list[int], train: Callable[[int], Concept],
                           identifier: str | None = None) -> Concept:
        """A pet or a thing with its head trained by `train(concept_id)`, or nothing at all: when the head cannot be
        trained (no CLIP here, a photo not indexed yet, a cancel) the new concept is taken away again, so the same
        command can simply be run again. An object of that name that never got a head (left half-made by an
        older version) is finished instead: the photos are added to it and its head trained."""
        unfinished = self._never_trained_object(name)
        if unfinished is not None:
            self._check_photos(photo_ids)
            self.add_examples(unfinished.id, photo_ids)
            return train(unfinished.id)
        concept = self.add_object(name, photo_ids, identifier)
        try:
            return train(concept.id)
        except BaseException:
            self.remove(concept.id)
            raise

    def _never_trained_object(self, name: str) -> Concept | None:
        rows = self.catalog.query("SELECT * FROM concepts WHERE name = ? COLLATE NOCASE AND kind = ? "
                                  "AND head_revision = 0", [_slug_ok(name), OBJECT])
        return Concept.from_row(rows[0]) if rows and not self.head_path(rows[0]["id"]).exists() else None

    def add_person(self, person_id: int, identifier: str | None = None) -> Concept:
        """A named person becomes a concept; their confirmed faces define it."""
        rows = self.catalog.query("SELECT * FROM people WHERE id = ?", [person_id])
        if not rows:
            raise ConceptError(f"no person with id {person_id}")
        if rows[0]["name"] is None:
            raise ConceptError(f"person {person_id} has no name yet: name them first (myvlm name {person_id} NAME)")
        existing = self.for_person(person_id)
        if existing is not None:
            return existing
        return self.create(PERSON, rows[0]["name"], identifier, person_id)

    def add_examples(self, concept_id: int, photo_ids: list[int], role: str = "positive") -> None:
        ts = now()
        with self.catalog.write():
            for pid in photo_ids:
                if not self.catalog.scalar(
                        "SELECT 1 FROM concept_examples WHERE concept_id = ? AND photo_id = ? AND role = ?",
                        [concept_id, pid, role]):
                    self.catalog.conn.execute(
                        "INSERT INTO concept_examples(concept_id, photo_id, role, created_at) VALUES (?, ?, ?, ?)",
                        [concept_id, pid, role, ts])
            self.mark_stale(concept_id)

    def add_imported_example(self, concept_id: int, path: Path, captions: list[str] | None = None) -> None:
        with self.catalog.write():
            self.catalog.conn.execute(
                "INSERT INTO concept_examples(concept_id, path, role, captions, created_at) VALUES (?, ?, 'positive', ?, ?)",
                [concept_id, str(path), json.dumps(captions) if captions is not None else None, now()])
            self.mark_stale(concept_id)

    def mark_stale(self, concept_id: int) -> None:
        with self.catalog.write():
            self.catalog.conn.execute(
                "UPDATE concepts SET head_state = CASE WHEN head_state = 'ready' THEN 'stale' ELSE head_state END, "
                "updated_at = ? WHERE id = ?", [now(), concept_id])

    def save_head(self, concept_id: int, head: Head, metrics: dict[str, Any] | None = None) -> Concept:
        """Store a (re)trained head; its revision goes up, so detection redoes this concept's signals."""
        head.save(self.head_path(concept_id))
        with self.catalog.write():
            self.catalog.conn.execute(
                "UPDATE concepts SET head_state = 'ready', head_revision = head_revision + 1, head_space = ?, "
                "threshold = ?, metrics = ?, last_error = NULL, updated_at = ? WHERE id = ?",
                [head.space, head.threshold, json.dumps(metrics) if metrics is not None else None, now(), concept_id])
        return self.get(concept_id)

    def set_error(self, concept_id: int, message: str) -> None:
        with self.catalog.write():
            self.catalog.conn.execute("UPDATE concepts SET head_state = 'error', last_error = ?, updated_at = ? "
                                      "WHERE id = ?", [message, now(), concept_id])

    def rename(self, concept_id: int, name: str) -> Concept:
        name = _slug_ok(name)
        with self.catalog.write():
            if self.catalog.scalar("SELECT 1 FROM concepts WHERE name = ? COLLATE NOCASE AND id != ?", [name, concept_id]):
                raise ConceptError(f"a concept named {name!r} exists already")
            self.catalog.conn.execute("UPDATE concepts SET name = ?, updated_at = ? WHERE id = ?",
                                      [name, now(), concept_id])
        return self.get(concept_id)

    def remove(self, concept_id: int) -> None:
        self.get(concept_id)
        with self.catalog.write():
            self.catalog.conn.execute("DELETE FROM concepts WHERE id = ?", [concept_id])
        shutil.rmtree(self.folder(concept_id), ignore_errors=True)

    # -- signals -------------------------------------------------------------------------------------------------------

    def signals(self, photo_id: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.catalog.query(
            "SELECT s.*, c.name, c.kind, c.identifier FROM concept_signals s JOIN concepts c ON c.id = s.concept_id "
            "WHERE s.photo_id = ? ORDER BY s.fired DESC, s.score DESC", [photo_id])]

    def photos_with(self, concept_id: int) -> list[int]:
        return [r["photo_id"] for r in self.catalog.query(
            "SELECT photo_id FROM concept_signals WHERE concept_id = ? AND fired = 1 ORDER BY photo_id", [concept_id])]


def softmax_p1(logits: np.ndarray) -> np.ndarray:
    """p(class 1) of (n, 2) logits, stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)
