"""Captions and answers, stored with concept placeholders so that a rename never needs a model.

A caption is kept as a template: "{{concept:3}} throwing a ball on the beach". Rendering puts in the concept's
name as it is now (for a person concept, the linked person's name), so renaming Alex re-renders every caption and
answer at once. A named person who is no concept yet is kept as "{{person:7}}" (instant names, before training).
Generated captions come in two kinds, `original` (the plain VLM) and `personalised` (with the concept layer, or
`instant`: named from recognition before the concept's embedding is trained, which the trained caption replaces);
the user's own text (`user`) wins everywhere and generation never overwrites it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from engine.errors import NotFound
from engine.storage.catalog import Catalog, now

# The stored kinds (catalog data and `--json` values: "personalised" keeps the spelling schema 1 wrote; names in
# the code say "personalize")
ORIGINAL, PERSONALIZED, USER = "original", "personalised", "user"
GENERATED_KINDS = (ORIGINAL, PERSONALIZED)
PRIORITY = (USER, PERSONALIZED, ORIGINAL)  # which caption a photo shows

PLACEHOLDER = re.compile(r"\{\{concept:(\d+)\}\}")
PERSON_PLACEHOLDER = re.compile(r"\{\{person:(\d+)\}\}")
ANY_PLACEHOLDER = re.compile(r"(\{\{(?:concept|person):\d+\}\})")
UNKNOWN_PERSON, UNKNOWN_THING = "someone", "something"


def placeholder(concept_id: int) -> str:
    return f"{{{{concept:{int(concept_id)}}}}}"


def person_placeholder(person_id: int) -> str:
    return f"{{{{person:{int(person_id)}}}}}"


def person_ids(template: str) -> list[int]:
    """The people a template names by person placeholder, in order, without repeats."""
    return list(dict.fromkeys(int(m) for m in PERSON_PLACEHOLDER.findall(template)))


def placeholder_ids(template: str) -> list[int]:
    """The concept ids a template mentions, in order, without repeats."""
    return list(dict.fromkeys(int(m) for m in PLACEHOLDER.findall(template)))


def to_template(text: str, identifiers: Mapping[str, int | str], *, case_sensitive: bool = False) -> str:
    """Turn identifier words ("sks", a person's identifier) in generated text into placeholders (a concept id, or
    a ready placeholder such as a person's).

    Whole words only; possessives keep their ending ("sks's" -> "{{concept:3}}'s"); the longest identifier wins
    where two overlap ("Anne Helene" before "Anne"); placeholders already in the text are left alone.
    """
    words = sorted(((k.strip(), v if isinstance(v, str) else int(v)) for k, v in identifiers.items()
                    if k and k.strip()),
                   key=lambda kv: -len(kv[0]))
    if not words:
        return text
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in key.split()) for key, _ in words)
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", 0 if case_sensitive else re.IGNORECASE)
    lookup = {_fold_key(k, case_sensitive): cid for k, cid in words}

    def swap(m: re.Match[str]) -> str:
        cid = lookup.get(_fold_key(m.group(0), case_sensitive))
        return m.group(0) if cid is None else cid if isinstance(cid, str) else placeholder(cid)

    # leave existing placeholders untouched: substitute only in the text between them
    parts = ANY_PLACEHOLDER.split(text)
    return "".join(p if ANY_PLACEHOLDER.fullmatch(p) else pattern.sub(swap, p) for p in parts)


def _fold_key(text: str, case_sensitive: bool) -> str:
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


def concept_names(catalog: Catalog, ids: Iterable[int] | None = None) -> dict[int, tuple[str, str]]:
    """concept id -> (kind, display name); a person concept shows its person's current name."""
    sql = ("SELECT c.id, c.kind, COALESCE(pe.name, c.name) AS name FROM concepts c "
           "LEFT JOIN people pe ON pe.id = c.person_id")
    if ids is None:
        rows = catalog.query(sql)
    else:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        rows = []
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            rows += catalog.query(f"{sql} WHERE c.id IN ({','.join('?' * len(chunk))})", chunk)
    return {r["id"]: (r["kind"], r["name"]) for r in rows}


def person_names(catalog: Catalog, ids: Iterable[int] | None = None) -> dict[int, str]:
    """person id -> name, for the named people (an unnamed or forgotten person renders as "someone")."""
    rows = catalog.query("SELECT id, name FROM people WHERE name IS NOT NULL")
    wanted = None if ids is None else {int(i) for i in ids}
    return {r["id"]: r["name"] for r in rows if wanted is None or r["id"] in wanted}


def render_with(template: str, names: Mapping[int, tuple[str, str]], people: Mapping[int, str] | None = None
                ) -> str:
    """Render against a prepared id -> (kind, name) map (bulk work: search documents) and person id -> name."""
    def name(m: re.Match[str]) -> str:
        found = names.get(int(m.group(1)))
        return found[1] if found else UNKNOWN_PERSON

    text = PLACEHOLDER.sub(name, template)
    if "{{person:" in text:
        text = PERSON_PLACEHOLDER.sub(lambda m: (people or {}).get(int(m.group(1))) or UNKNOWN_PERSON, text)
    return text


def _names(catalog: Catalog, templates: Iterable[str]) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """What rendering these templates needs: their concepts' and people's names."""
    templates = list(templates)
    concepts = concept_names(catalog, [c for t in templates for c in placeholder_ids(t)])
    people = [p for t in templates for p in person_ids(t)]
    return concepts, (person_names(catalog, people) if people else {})


class CaptionStore:
    """Captions and Q&A of one library (one per thread, like the catalog)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- writing -------------------------------------------------------------------------------------------------

    def put_generated(self, photo_id: int, generated: Any) -> None:
        """Store what the captioner wrote (a personalize.generated.GeneratedText): the personalised caption where it
        named a concept (trained, or recognised before training), else the original one."""
        named = generated.personalized or generated.instant
        self.put_caption(photo_id, PERSONALIZED if named else ORIGINAL, generated.template, model=generated.model,
                         prompt=generated.prompt or None, concept_ids=generated.concepts, instant=generated.instant)

    def put_caption(self, photo_id: int, kind: str, template: str, *, model: str, prompt: str | None = None,
                    concept_ids: Sequence[int] = (), instant: bool = False) -> None:
        """Store a generated caption; it replaces the photo's previous one of that kind (never the user's text).
        `instant`: a personalised caption named from recognition, before training (personalize/instant.py)."""
        if kind not in GENERATED_KINDS:
            raise ValueError(f"a generated caption is {' or '.join(GENERATED_KINDS)}, not {kind!r}")
        self._check_photo(photo_id)
        ts = now()
        with self.catalog.write():
            self.catalog.conn.execute(
                "INSERT INTO captions(photo_id, kind, template, model, prompt, concepts, instant, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(photo_id, kind) DO UPDATE SET template = "
                "excluded.template, model = excluded.model, prompt = excluded.prompt, concepts = excluded.concepts, "
                "instant = excluded.instant, created_at = excluded.created_at, updated_at = excluded.updated_at",
                [photo_id, kind, template, model, prompt, _ids_json(concept_ids, template), int(instant), ts, ts])

    def drop_generated(self, photo_id: int, kind: str) -> None:
        """Forget a generated caption that no longer holds (e.g. the concept it named is no longer recognised)."""
        if kind not in GENERATED_KINDS:
            raise ValueError(f"a generated caption is {' or '.join(GENERATED_KINDS)}, not {kind!r}")
        with self.catalog.write():
            self.catalog.conn.execute("DELETE FROM captions WHERE photo_id = ? AND kind = ?", [photo_id, kind])

    def put_user_caption(self, photo_id: int, text: str) -> None:
        """The user's own caption: shown and searched instead of generated ones, never overwritten by them.

        Kept as typed; concept names written exactly as they are now become placeholders, so a later rename
        follows. Empty text removes the user's caption (the generated one shows again)."""
        self._check_photo(photo_id)
        text = text.strip()
        with self.catalog.write():
            if not text:
                self.catalog.conn.execute("DELETE FROM captions WHERE photo_id = ? AND kind = ?", [photo_id, USER])
                return
            template = self._names_to_placeholders(text)
            ts = now()
            self.catalog.conn.execute(
                "INSERT INTO captions(photo_id, kind, template, typed, concepts, created_at, updated_at) "
                "VALUES (?, 'user', ?, ?, ?, ?, ?) ON CONFLICT(photo_id, kind) DO UPDATE SET template = "
                "excluded.template, typed = excluded.typed, concepts = excluded.concepts, "
                "updated_at = excluded.updated_at",
                [photo_id, template, text, _ids_json((), template), ts, ts])

    def put_answer(self, photo_id: int, question: str, answer_template: str, *, model: str,
                   concept_ids: Sequence[int] = (), instant: bool = False) -> None:
        """Store an answer; asking the same question about the same photo again replaces it. Names of concepts
        typed in the question ("What is Alex wearing?") become placeholders, so the question follows renames too.
        `instant`: the names came from recognition in the prompt, not from a trained embedding."""
        self._check_photo(photo_id)
        with self.catalog.write():
            question = self._names_to_placeholders(question)
            self.catalog.conn.execute(
                "INSERT INTO qa(photo_id, question, answer, model, concepts, instant, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(photo_id, question) DO UPDATE SET answer = excluded.answer, "
                "model = excluded.model, concepts = excluded.concepts, instant = excluded.instant, "
                "created_at = excluded.created_at",
                [photo_id, question, answer_template, model,
                 _ids_json(concept_ids, question + " " + answer_template), int(instant), now()])

    # -- reading -------------------------------------------------------------------------------------------------

    def render(self, template: str) -> str:
        """Today's text of a template; a concept that no longer exists reads "someone"."""
        return render_with(template, *_names(self.catalog, [template])) if "{{" in template else template

    def caption(self, photo_id: int) -> str | None:
        """The caption to show: the user's, else the personalised one, else the original one."""
        return self.best_captions([photo_id]).get(photo_id)

    def best_captions(self, photo_ids: Sequence[int]) -> dict[int, str]:
        """photo id -> caption to show, for many photos in a few queries (search results, grids)."""
        ids = sorted({int(i) for i in photo_ids})
        best: dict[int, tuple[int, str]] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for r in self.catalog.query(
                    f"SELECT photo_id, kind, template FROM captions WHERE photo_id IN ({','.join('?' * len(chunk))})",
                    chunk):
                rank = PRIORITY.index(r["kind"])
                if r["photo_id"] not in best or rank < best[r["photo_id"]][0]:
                    best[r["photo_id"]] = (rank, r["template"])
        names = _names(self.catalog, [t for _, t in best.values()])
        return {pid: render_with(t, *names) for pid, (_, t) in best.items()}

    def captions(self, photo_id: int) -> list[dict[str, Any]]:
        """Every caption of a photo, rendered, the one shown first."""
        rows = self.catalog.query("SELECT * FROM captions WHERE photo_id = ?", [photo_id])
        rows = sorted(rows, key=lambda r: PRIORITY.index(r["kind"]))
        names = _names(self.catalog, [r["template"] for r in rows])
        return [{"id": r["id"], "kind": r["kind"], "text": render_with(r["template"], *names),
                 "template": r["template"], "typed": r["typed"], "model": r["model"], "prompt": r["prompt"],
                 "concepts": json.loads(r["concepts"]), "created": r["created_at"], "updated": r["updated_at"],
                 "edited": r["kind"] == USER, "instant": bool(r["instant"])} for r in rows]

    def answers(self, photo_id: int) -> list[dict[str, Any]]:
        """Every stored answer about a photo, rendered, oldest question first."""
        rows = self.catalog.query("SELECT * FROM qa WHERE photo_id = ? ORDER BY id", [photo_id])
        names = _names(self.catalog, [r["question"] + r["answer"] for r in rows])
        return [{"id": r["id"], "question": render_with(r["question"], *names),
                 "answer": render_with(r["answer"], *names), "template": r["answer"], "model": r["model"],
                 "concepts": json.loads(r["concepts"]), "created": r["created_at"], "instant": bool(r["instant"])}
                for r in rows]

    def _names_to_placeholders(self, text: str) -> str:
        """Concept names written exactly as they are now (case and all) become placeholders."""
        names = {name: cid for cid, (_, name) in concept_names(self.catalog).items()}
        return to_template(text, names, case_sensitive=True)

    def _check_photo(self, photo_id: int) -> None:
        if not self.catalog.scalar("SELECT 1 FROM photos WHERE id = ?", [photo_id]):
            raise NotFound(f"no photo with id {photo_id}")


def _ids_json(concept_ids: Sequence[int], template: str) -> str:
    """The concepts present: the ones the caller names plus the ones the text mentions."""
    return json.dumps(list(dict.fromkeys([int(c) for c in concept_ids] + placeholder_ids(template))))
