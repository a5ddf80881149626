"""Is a library whole? SQLite's own checks plus the catalog's invariants, for `myvlm check` and the fault tests.

A kill, a full disk or two processes writing at once must never leave a library that is wrong in a way the app
cannot see by itself. `check_library` reports:

- problems (the library is damaged; `ok` is False): SQLite's `PRAGMA integrity_check` and foreign keys, the
  search index out of step with its documents, stage results recorded twice or in an unknown state, the same face
  stored twice, a photo that says its thumbnail is done without the thumbnail file, signals of a head revision
  that does not exist yet;
- notes (harmless, for the curious): temporary files left by a write that was killed half-way (the real file was
  never replaced, so nothing is wrong; `clean=True` removes those older than a minute), concepts whose captioner
  training is marked running (another process may be training, or a training was killed: teaching again resumes),
  photos claimed by an indexing run (engine/storage/claims.py), stages that ran more than once on a photo.

`clean=True` also repairs what two indexing runs at once left before runs claimed their photos: every face they
stored twice is kept once (the copy that carries the user's word: confirmed, ignored, or in a named group), its
rejections and concept signals moved onto it, and the groups made only of the dropped copies are deleted; names and
confirmations are never lost. Claims of dead runs are dropped and the run counters reset.

No Qt here; no model is loaded.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.domain.personalize.lease import INTERRUPTED
from engine.storage import claims
from engine.storage.catalog import Catalog

TEMP_PATTERNS = {"thumbs": ".tmp-*", "previews": ".tmp-*", "concepts": "*.tmp"}
STALE_TEMP_S = 60.0


@dataclass
class IntegrityReport:
    sqlite: list[str] = field(default_factory=list)      # PRAGMA integrity_check lines ("ok" when whole)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)   # what `clean` mended in the catalog
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.sqlite == ["ok"] and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "sqlite": self.sqlite, "problems": self.problems, "notes": self.notes,
                "temp_files": self.temp_files, "removed": self.removed, "repaired": self.repaired,
                "counts": self.counts}


def _rows(catalog: Catalog, sql: str, params: list[Any] | None = None) -> list[sqlite3.Row]:
    return catalog.query(sql, params or [])


def check_library(catalog: Catalog, *, files: bool = True, clean: bool = False) -> IntegrityReport:
    rep = IntegrityReport()
    rep.sqlite = [str(r[0]) for r in _rows(catalog, "PRAGMA integrity_check")] or ["no answer"]
    for r in _rows(catalog, "PRAGMA foreign_key_check"):
        rep.problems.append(f"row {r[1]} of table {r[0]} points to a missing row of {r[2]}")
    _search_index(catalog, rep)
    if clean:   # before the invariants: the report says how the library is now
        rep.repaired = repair_concurrent_damage(catalog)
    _invariants(catalog, rep)
    _claims(catalog, rep)
    if files:
        _files(catalog, rep, clean)
    rep.counts = {
        "photos": catalog.scalar("SELECT COUNT(*) FROM photos"),
        "stages": {r["stage"]: {"done": r["done"], "errors": r["errors"]} for r in _rows(
            catalog, "SELECT stage, SUM(state = 'done') AS done, SUM(state = 'error') AS errors "
                     "FROM stage_status GROUP BY stage ORDER BY stage")},
        "faces": catalog.scalar("SELECT COUNT(*) FROM faces"),
        "captions": catalog.scalar("SELECT COUNT(*) FROM captions"),
        "concepts": catalog.scalar("SELECT COUNT(*) FROM concepts"),
    }
    return rep


def _search_index(catalog: Catalog, rep: IntegrityReport) -> None:
    """FTS5's own check of the search index, and (rank 1) that it matches its documents; it reads only, under
    a write lock."""
    if not catalog.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'search_docs_fts'"):
        return
    try:
        with catalog.write():
            catalog.conn.execute("INSERT INTO search_docs_fts(search_docs_fts, rank) VALUES ('integrity-check', 1)")
    except sqlite3.DatabaseError as exc:
        rep.problems.append(f"the search index does not match its documents ({exc}); it can be rebuilt")


def _invariants(catalog: Catalog, rep: IntegrityReport) -> None:
    for r in _rows(catalog, "SELECT stage, state, COUNT(*) AS n FROM stage_status WHERE state NOT IN ('done', 'error') "
                            "GROUP BY stage, state"):
        rep.problems.append(f"{r['n']} {r['stage']} result(s) in an unknown state {r['state']!r}")
    for r in _rows(catalog, "SELECT stage, COUNT(*) AS n FROM stage_status WHERE runs > 1 AND state = 'done' "
                            "GROUP BY stage"):
        # a result is stored once per version: more runs of the same version is work done twice
        rep.notes.append(f"{r['n']} photo(s) had their {r['stage']} stage run more than once "
                         "(myvlm check --clean repairs what it left and resets the count)")
    for r in _rows(catalog, """
            SELECT a.photo_id, COUNT(*) AS n FROM faces a JOIN faces b
              ON a.photo_id = b.photo_id AND a.backend = b.backend AND a.id < b.id
             AND abs(a.x - b.x) < 0.5 AND abs(a.y - b.y) < 0.5 AND abs(a.w - b.w) < 0.5 AND abs(a.h - b.h) < 0.5
             AND a.state != 'ignored' AND b.state != 'ignored'
            GROUP BY a.photo_id"""):
        rep.problems.append(f"photo {r['photo_id']} has the same face stored {r['n'] + 1} times")
    for r in _rows(catalog, "SELECT p.id, p.path FROM photos p JOIN stage_status s ON s.photo_id = p.id "
                            "AND s.stage = 'thumbnail' AND s.state = 'done' WHERE p.status = 'pending' "
                            "OR p.content_hash IS NULL"):
        rep.problems.append(f"{r['path']}: its thumbnail is marked done but the photo is not ready")
    for r in _rows(catalog, "SELECT s.concept_id, COUNT(*) AS n FROM concept_signals s JOIN concepts c "
                            "ON c.id = s.concept_id WHERE s.revision > c.head_revision GROUP BY s.concept_id"):
        rep.problems.append(f"concept {r['concept_id']} has {r['n']} signal(s) from a head it never had")
    for r in _rows(catalog, "SELECT name FROM concepts WHERE embedding_state = 'training'"):
        rep.notes.append(f"the captioner is learning {r['name']} (a training is running)")
    for r in _rows(catalog, "SELECT name FROM concepts WHERE embedding_state != 'training' AND last_error = ?",
                   [INTERRUPTED]):
        rep.notes.append(f"teaching the captioner {r['name']} was interrupted; teaching again continues from its "
                         "last checkpoint")


def _claims(catalog: Catalog, rep: IntegrityReport) -> None:
    """Photos an indexing run holds: being indexed now, or left by a run that died (the next run takes them)."""
    for r in _rows(catalog, "SELECT token, pid, host, started, MIN(expires) AS expires, COUNT(*) AS n "
                            "FROM stage_claims GROUP BY token"):
        if r["expires"] >= time.time() and claims.process_alive(r["pid"], r["host"], r["started"]):
            rep.notes.append(f"{r['n']} photo stage(s) are being indexed by process {r['pid']} on {r['host']}")
        else:
            rep.notes.append(f"{r['n']} photo stage(s) claimed by a run that stopped (process {r['pid']}); the next "
                             "run takes them over")


# -- repairs (clean=True) ------------------------------------------------------------------------------------------

def repair_concurrent_damage(catalog: Catalog) -> list[str]:
    """Mend what two indexing runs at once did before photos were claimed; returns what was done, one line each."""
    done: list[str] = []
    with catalog.write():
        faces, groups, conflicts = _merge_duplicate_faces(catalog)
        if faces:
            done.append(f"{faces} face(s) stored twice removed; {groups} group(s) made only of them removed")
        done.extend(conflicts)
        freed = claims.free_stale_claims(catalog)
        if freed:
            done.append(f"{freed} claim(s) of runs that stopped removed")
        reset = catalog.conn.execute("UPDATE stage_status SET runs = 1 WHERE runs > 1").rowcount
        if reset:
            done.append(f"{reset} stage result(s) no longer counted as run more than once")
    return done


def _duplicate_sets(catalog: Catalog) -> list[list[sqlite3.Row]]:
    """Faces of one photo and backend at the same place (within half a pixel): one face stored several times."""
    sets: list[list[sqlite3.Row]] = []
    by_photo: dict[tuple[int, str], list[list[sqlite3.Row]]] = defaultdict(list)
    for r in _rows(catalog, "SELECT f.id, f.photo_id, f.backend, f.x, f.y, f.w, f.h, f.state, f.person_id, "
                            "p.name IS NOT NULL OR p.hidden = 1 AS kept_group FROM faces f "
                            "LEFT JOIN people p ON p.id = f.person_id ORDER BY f.photo_id, f.backend, f.id"):
        candidates = by_photo[(r["photo_id"], r["backend"])]
        home = next((s for s in candidates if all(abs(s[0][k] - r[k]) < 0.5 for k in "xywh")), None)
        if home is None:
            candidates.append([r])
        else:
            home.append(r)
    for candidates in by_photo.values():
        sets.extend(s for s in candidates if len(s) > 1)
    return sets


def _users_word(face: sqlite3.Row) -> tuple[int | None, bool] | None:
    """What the user said about a face (its person, or that it is ignored), or None when they said nothing."""
    if face["state"] in ("confirmed", "ignored") or face["kept_group"]:
        return face["person_id"], face["state"] == "ignored"
    return None


def _merge_duplicate_faces(catalog: Catalog) -> tuple[int, int, list[str]]:
    """Keep one face of each set; returns (faces removed, groups removed, conflicts left for the user)."""
    sets = _duplicate_sets(catalog)
    if not sets:
        return 0, 0, []
    sizes = {r["person_id"]: r["n"] for r in _rows(
        catalog, "SELECT person_id, COUNT(*) AS n FROM faces WHERE person_id IS NOT NULL GROUP BY person_id")}

    def rank(face: sqlite3.Row) -> tuple:
        # the user's word first, then the bigger (then older) group, then the face stored first
        word = {"confirmed": 0, "ignored": 1}.get(face["state"], 2 if face["kept_group"] else 3)
        person = face["person_id"]
        return word, person is None, -sizes.get(person, 0), person or 0, face["id"]

    removed, touched, conflicts = 0, set(), []
    faces_dir = Path(catalog.paths.root) / "faces"
    for dup in sets:
        keeper, *others = sorted(dup, key=rank)
        kept_word = (keeper["person_id"], keeper["state"] == "ignored")
        for face in others:
            word = _users_word(face)
            if word is not None and word != kept_word:
                conflicts.append(f"photo {face['photo_id']}: faces {keeper['id']} and {face['id']} are one face "
                                 "the user placed differently; both kept for the user to decide")
                continue
            _fold_face(catalog, face, keeper)
            (faces_dir / f"{face['id']}.jpg").unlink(missing_ok=True)
            removed += 1
            if face["person_id"] is not None:
                touched.add(face["person_id"])
    groups = 0
    for pid in touched:   # automatic groups emptied by the repair: nobody named, hid or confirmed them
        groups += catalog.conn.execute(
            "DELETE FROM people WHERE id = ? AND name IS NULL AND hidden = 0 AND NOT EXISTS "
            "(SELECT 1 FROM faces WHERE person_id = people.id)", [pid]).rowcount
    return removed, groups, conflicts


def _fold_face(catalog: Catalog, face: sqlite3.Row, keeper: sqlite3.Row) -> None:
    """Move what hangs on a duplicate face (rejections, concept signals) onto the face kept, then drop it."""
    catalog.conn.execute(
        "INSERT OR IGNORE INTO face_rejections(face_id, person_id, created_at) SELECT ?, person_id, created_at "
        "FROM face_rejections WHERE face_id = ? AND person_id IS NOT ?",
        [keeper["id"], face["id"], keeper["person_id"]])
    catalog.conn.execute("UPDATE concept_signals SET face_id = ? WHERE face_id = ?", [keeper["id"], face["id"]])
    catalog.conn.execute("DELETE FROM faces WHERE id = ?", [face["id"]])


def _files(catalog: Catalog, rep: IntegrityReport, clean: bool) -> None:
    paths = catalog.paths
    thumbs = paths.thumbs
    for r in _rows(catalog, "SELECT p.path, p.content_hash FROM photos p JOIN stage_status s ON s.photo_id = p.id "
                            "AND s.stage = 'thumbnail' AND s.state = 'done' WHERE p.status = 'ok' "
                            "AND p.content_hash IS NOT NULL"):
        h = r["content_hash"]
        if not (thumbs / h[:2] / f"{h}.jpg").exists():
            rep.problems.append(f"{r['path']}: its thumbnail is marked done but the file is missing")
    now = time.time()
    for folder, pattern in TEMP_PATTERNS.items():
        root = Path(paths.root) / folder
        if not root.exists():
            continue
        for f in root.rglob(pattern):
            rep.temp_files.append(str(f))
            try:
                old = now - f.stat().st_mtime > STALE_TEMP_S
            except FileNotFoundError:   # finished meanwhile by a running process
                continue
            if clean and old:
                f.unlink(missing_ok=True)
                rep.removed.append(str(f))
    if rep.temp_files:
        rep.notes.append(f"{len(rep.temp_files)} temporary file(s) left by an interrupted write"
                         + (f"; {len(rep.removed)} removed" if clean else " (myvlm check --clean removes them)"))
