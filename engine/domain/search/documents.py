"""The search document of each photo, rebuilt only where something changed.

Triggers (catalog migration 4) put a photo in `search_dirty` whenever what its document says changes: a person
renamed or merged, faces assigned, a concept renamed, a caption or answer stored, the photo moved or dated.
`refresh()` rebuilds just those documents (the FTS5 index follows through its own triggers); the searcher calls it
before each query, so a rename shows in search at once and costs one rebuild per affected photo.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.domain.captions import PRIORITY, USER, concept_names, person_ids, person_names, placeholder_ids, render_with
from engine.domain.concepts.registry import OBJECT_TOKENS
from engine.domain.search import places
from engine.domain.search.dates import date_words
from engine.domain.search.text import path_words
from engine.storage import paths as P
from engine.storage.catalog import BUSY_TIMEOUT_MS, Catalog

log = logging.getLogger(__name__)

BATCH = 1000
CLIP_LOG_KEEP = 100_000  # entries of search_clip_log kept
COLUMNS = ("captions", "names", "qa", "folder", "file", "place", "date", "tags")


def person_tag(person_id: int) -> str:
    return f"zzperson{int(person_id)}"  # the triggers in catalog migration 4 spell it the same way


def concept_tag(concept_id: int) -> str:
    return f"zzconcept{int(concept_id)}"


def is_alias(identifier: str, concept_name: str) -> bool:
    """Is a concept's identifier a second name people type ("Al")? Not when it is the name the concept was created
    with (it goes stale on a rename), nor a rare prompt token such as "sks"."""
    low = identifier.strip().lower()
    rare = low in OBJECT_TOKENS or (low.startswith("sks") and low[3:].isdigit())
    return bool(low) and not rare and low != concept_name.strip().lower()


@dataclass
class _Doc:
    captions: list[str] = field(default_factory=list)
    names: dict[str, None] = field(default_factory=dict)  # ordered set
    qa: list[str] = field(default_factory=list)
    tags: dict[str, None] = field(default_factory=dict)


@dataclass
class _Concept:
    kind: str
    name: str
    identifier: str
    person_id: int | None


@contextlib.contextmanager
def _brief_write(catalog: Catalog, wait_ms: int) -> Iterator[None]:
    """A write transaction that waits at most `wait_ms` for the lock (search must not hang behind the pipeline)."""
    if catalog._depth:  # already inside the caller's transaction
        with catalog.write():
            yield
        return
    catalog.conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
    try:
        with catalog.write():
            catalog.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            yield
    finally:
        catalog.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def pending(catalog: Catalog) -> int:
    return int(catalog.scalar("SELECT COUNT(DISTINCT photo_id) FROM search_dirty"))


def refresh(catalog: Catalog, *, wait_ms: int = 250, batch: int = BATCH) -> bool:
    """Rebuild the documents of every photo marked dirty. False when the write lock stayed busy (try later)."""
    while True:
        ids = [r[0] for r in catalog.query("SELECT DISTINCT photo_id FROM search_dirty ORDER BY photo_id LIMIT ?",
                                           [batch])]
        if not ids:
            return _prune_clip_log(catalog, wait_ms)
        gps = _read_missing_gps(catalog, ids)  # file reads happen outside the write lock
        try:
            with _brief_write(catalog, wait_ms):
                _store_places(catalog, gps)
                # re-read under the lock: a writer may have marked more meanwhile; those stay for the next round
                marks = ",".join("?" * len(ids))
                still = [r[0] for r in catalog.query(
                    f"SELECT DISTINCT photo_id FROM search_dirty WHERE photo_id IN ({marks})", ids)]
                build(catalog, still)
                catalog.conn.execute(f"DELETE FROM search_dirty WHERE photo_id IN ({marks})", ids)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                log.info("search index refresh postponed: %s", exc)
                return False
            raise


def _prune_clip_log(catalog: Catalog, wait_ms: int) -> bool:
    """Forget old entries of the CLIP change log (an in-memory copy that far behind just reloads)."""
    first = catalog.scalar("SELECT min(seq) FROM search_clip_log")  # apart: each is then one b-tree lookup
    last = catalog.scalar("SELECT max(seq) FROM search_clip_log")
    if first is None or last - first < CLIP_LOG_KEEP * 2:
        return True
    try:
        with _brief_write(catalog, wait_ms):
            catalog.conn.execute("DELETE FROM search_clip_log WHERE seq <= ?", [last - CLIP_LOG_KEEP])
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return False
        raise
    return True


def rebuild_all(catalog: Catalog) -> None:
    """Every document anew (after a change of document format)."""
    with catalog.write():
        catalog.conn.execute("INSERT INTO search_dirty(photo_id) SELECT id FROM photos")
    refresh(catalog, wait_ms=BUSY_TIMEOUT_MS)


# -- places --------------------------------------------------------------------------------------------------------

def _read_missing_gps(catalog: Catalog, ids: list[int]) -> dict[int, tuple[str | None, tuple[float, float] | None]]:
    """GPS of the photos whose file version was never read: photo id -> (content hash, (lat, lon) or None)."""
    marks = ",".join("?" * len(ids))
    rows = catalog.query(
        f"""SELECT p.id, p.path_bytes, p.content_hash FROM photos p JOIN folders f ON f.id = p.folder_id
            LEFT JOIN photo_places pl ON pl.photo_id = p.id
            WHERE p.id IN ({marks}) AND p.status != 'gone' AND p.kind IN ('image', 'raw') AND f.status = 'online'
              AND (pl.photo_id IS NULL OR pl.content_hash IS NOT p.content_hash)""", ids)
    out = {}
    for r in rows:
        path = P.to_fs(r["path_bytes"])
        if os.path.exists(path):
            out[r["id"]] = (r["content_hash"], places.read_gps(path))
    return out


def _store_places(catalog: Catalog, gps: dict[int, tuple[str | None, tuple[float, float] | None]]) -> None:
    if not gps:
        return
    located = [(pid, ll) for pid, (_, ll) in gps.items() if ll is not None]
    try:
        names = dict(zip([pid for pid, _ in located], places.name_places([ll for _, ll in located])))
    except Exception as exc:  # noqa: BLE001 - a broken geocoder package must not stop search
        log.warning("reverse geocoding failed: %s", exc)
        names = {}
    catalog.conn.executemany(
        "INSERT INTO photo_places(photo_id, content_hash, latitude, longitude, place) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(photo_id) DO UPDATE SET content_hash = excluded.content_hash, latitude = excluded.latitude, "
        "longitude = excluded.longitude, place = excluded.place",
        [(pid, h, ll[0] if ll else None, ll[1] if ll else None, names.get(pid)) for pid, (h, ll) in gps.items()])


# -- documents -----------------------------------------------------------------------------------------------------

def build(catalog: Catalog, ids: list[int]) -> None:
    """Write the documents of these photos (inside the caller's write transaction)."""
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    photos = {r["id"]: r for r in catalog.query(
        f"""SELECT p.id, p.path, p.name, p.date_taken, p.status, f.path AS folder_path, pl.place, pl.latitude
            FROM photos p JOIN folders f ON f.id = p.folder_id LEFT JOIN photo_places pl ON pl.photo_id = p.id
            WHERE p.id IN ({marks})""", ids)}
    gone = [i for i in ids if i not in photos or photos[i]["status"] == "gone"]
    live = [i for i in ids if i not in gone]
    if gone:
        catalog.conn.execute(f"DELETE FROM search_docs WHERE photo_id IN ({','.join('?' * len(gone))})", gone)
    if not live:
        return
    marks = ",".join("?" * len(live))
    concepts = {r["id"]: _Concept(r["kind"], r["name"], r["identifier"], r["person_id"])
                for r in catalog.query("SELECT id, kind, name, identifier, person_id FROM concepts")}
    display = concept_names(catalog)
    people = person_names(catalog)   # instant names: {{person:ID}} of a named person who is no concept yet
    person_concept = {c.person_id: cid for cid, c in concepts.items() if c.person_id is not None}
    docs: dict[int, _Doc] = defaultdict(_Doc)

    def add_person(doc: _Doc, person_id: int, name: str | None) -> None:
        doc.tags[person_tag(person_id)] = None
        if name:
            doc.names[name] = None
        if person_id in person_concept:
            add_concept(doc, person_concept[person_id], follow=False)

    def add_concept(doc: _Doc, concept_id: int, follow: bool = True) -> None:
        c = concepts.get(concept_id)
        if c is None:
            return
        doc.tags[concept_tag(concept_id)] = None
        doc.names[display[concept_id][1]] = None
        if is_alias(c.identifier, c.name):
            doc.names[c.identifier] = None
        if follow and c.person_id is not None:
            add_person(doc, c.person_id, None)

    for r in catalog.query(
            f"""SELECT DISTINCT fa.photo_id, fa.person_id, pe.name FROM faces fa JOIN people pe ON pe.id = fa.person_id
                WHERE fa.photo_id IN ({marks}) AND fa.state != 'ignored'""", live):
        add_person(docs[r["photo_id"]], r["person_id"], r["name"])
    for r in catalog.query(
            f"""SELECT photo_id, concept_id FROM concept_examples WHERE photo_id IN ({marks}) AND role = 'positive'
                UNION SELECT photo_id, concept_id FROM concept_signals WHERE photo_id IN ({marks}) AND fired = 1""",
            live + live):
        add_concept(docs[r["photo_id"]], r["concept_id"])

    by_photo: dict[int, list] = defaultdict(list)
    for r in catalog.query(f"SELECT photo_id, kind, template, concepts FROM captions WHERE photo_id IN ({marks})", live):
        by_photo[r["photo_id"]].append(r)
    for pid, rows in by_photo.items():
        rows.sort(key=lambda r: PRIORITY.index(r["kind"]))
        if rows[0]["kind"] == USER:
            rows = rows[:1]  # the user's text wins: generated text they corrected is not searched
        doc = docs[pid]
        for r in rows:
            doc.captions.append(render_with(r["template"], display, people))
            for cid in json.loads(r["concepts"]) + placeholder_ids(r["template"]):
                add_concept(doc, cid)
            for person in person_ids(r["template"]):
                add_person(doc, person, people.get(person))
    for r in catalog.query(f"SELECT photo_id, question, answer, concepts FROM qa WHERE photo_id IN ({marks}) "
                           "ORDER BY id", live):
        doc = docs[r["photo_id"]]
        question, answer = render_with(r["question"], display, people), render_with(r["answer"], display, people)
        doc.qa.append(f"{question} {answer}")
        for cid in json.loads(r["concepts"]) + placeholder_ids(r["question"] + r["answer"]):
            add_concept(doc, cid)
        for person in person_ids(r["question"] + r["answer"]):
            add_person(doc, person, people.get(person))

    rows = []
    for pid in live:
        p, doc = photos[pid], docs.get(pid) or _Doc()
        folder, file = _relative(p["path"], p["folder_path"])
        rows.append((pid, "\n".join(doc.captions), "\n".join(doc.names), "\n".join(doc.qa),
                     " ".join(path_words(folder)), " ".join(path_words(file)), p["place"] or "",
                     date_words(p["date_taken"], p["latitude"]), " ".join(doc.tags)))
    catalog.conn.executemany(
        f"INSERT INTO search_docs(photo_id, {', '.join(COLUMNS)}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) "
        "ON CONFLICT(photo_id) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS), rows)


def _relative(path: str, folder: str) -> tuple[str, str]:
    """(folders below the watched one, file name without extension): the words the user chose."""
    rel = path[len(folder):] if path.startswith(folder) else os.path.basename(path)
    head, tail = os.path.split(rel)
    return head, os.path.splitext(tail)[0]
