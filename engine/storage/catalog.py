"""The catalog: one SQLite database (`library.db`) that is the single source of truth of a library.

Several processes (the GUI, a `myvlm` CLI) may open one library at once. WAL mode lets readers run while one
writer writes; every write transaction starts with ``BEGIN IMMEDIATE`` so a second writer waits on the busy
timeout instead of failing with "database is locked" when it upgrades a read to a write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlite_utils

from engine.errors import InvalidInput, UserError
from engine.storage import paths as P
from engine.storage.library_folder import LibraryPaths

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 120_000

# Photo states. `offline` is not stored on photos: it is derived from their folder, so that an unplugged drive
# never changes what the catalog knows about its photos.
PENDING, OK, ERROR, UNSUPPORTED, GONE = "pending", "ok", "error", "unsupported", "gone"
OFFLINE = "offline"
FOLDER_ONLINE, FOLDER_OFFLINE = "online", "offline"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------------------------
# Schema: forward-only migrations, numbered by PRAGMA user_version. Later issues append to MIGRATIONS.
#
# sqlite-utils sets up what it can say plainly: new plain tables (create_table), added columns (add_column) and the
# full-text index with its sync triggers (enable_fts). The tables of migrations 1-6 stay hand-written SQL: nearly
# every one needs what sqlite-utils cannot express (ON DELETE CASCADE / SET NULL, WITHOUT ROWID, CHECK,
# AUTOINCREMENT, partial and NOCASE unique indexes), the SQL keeps each column's comment beside it, and rewriting a
# shipped table would give new libraries other constraints than upgraded ones (migration 7's add_column differs
# from its first ALTER TABLE text only in quoting the column name: PRAGMA table_info is identical). Triggers are SQL too
# (sqlite-utils has no trigger API beyond FTS's). Reads and the hot writes (scanner inserts, stage marks) are
# prepared statements: sqlite-utils' insert/upsert re-read the table's shape on every call, 4-27x slower per row
# (bench/bench_sqlite_utils.py, bench/README.md).

def _m1_foundation(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE folders (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,                 -- display text
            path_bytes BLOB NOT NULL UNIQUE,    -- exact OS path
            status TEXT NOT NULL DEFAULT 'online',
            added_at TEXT NOT NULL,
            last_scan_at TEXT,
            last_error TEXT
        );
        CREATE TABLE photos (
            id INTEGER PRIMARY KEY,
            folder_id INTEGER NOT NULL REFERENCES folders(id),
            path TEXT NOT NULL,
            path_bytes BLOB NOT NULL UNIQUE,
            name TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'image', -- image | video | raw | other
            content_hash TEXT,
            size INTEGER,
            mtime_ns INTEGER,
            width INTEGER,                      -- displayed size: after EXIF orientation
            height INTEGER,
            orientation INTEGER,                -- EXIF orientation tag, 1..8
            format TEXT,
            date_taken TEXT,
            date_source TEXT,                   -- exif | file
            user_rotation INTEGER NOT NULL DEFAULT 0,  -- degrees clockwise on top of EXIF; the file is never touched
            status TEXT NOT NULL DEFAULT 'pending',
            last_error TEXT,
            added_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            gone_at TEXT
        );
        CREATE INDEX photos_hash ON photos(content_hash);
        CREATE INDEX photos_folder ON photos(folder_id);
        CREATE INDEX photos_status ON photos(status);
        CREATE INDEX photos_date ON photos(date_taken);
        CREATE TABLE stage_status (
            photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
            stage TEXT NOT NULL,
            state TEXT NOT NULL,                -- done | error
            version INTEGER NOT NULL,
            error TEXT,
            runs INTEGER NOT NULL DEFAULT 0,    -- times the stage's work was really done (not shared from a duplicate)
            updated_at TEXT NOT NULL,
            PRIMARY KEY (photo_id, stage)
        ) WITHOUT ROWID;
        CREATE INDEX stage_status_stage ON stage_status(stage, state);
        CREATE TABLE settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """
    )


def _m2_faces(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE people (
            id INTEGER PRIMARY KEY,
            name TEXT,                          -- NULL: an unnamed cluster waiting for "Who is this?"
            hidden INTEGER NOT NULL DEFAULT 0,  -- strangers the user does not want to see
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX people_name ON people(name COLLATE NOCASE) WHERE name IS NOT NULL;
        CREATE TABLE faces (
            id INTEGER PRIMARY KEY,
            photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
            backend TEXT NOT NULL,              -- embedding space; embeddings of different backends never mix
            x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,  -- displayed frame, full size
            landmarks BLOB,                     -- (5, 2) float32, displayed frame
            score REAL NOT NULL,
            quality INTEGER NOT NULL DEFAULT 0, -- big and sharp enough to found a cluster
            embedding BLOB,                     -- float32, L2-normalised; NULL once forgotten
            person_id INTEGER REFERENCES people(id) ON DELETE SET NULL,
            state TEXT NOT NULL DEFAULT 'unknown',  -- unknown | suggested | confirmed | rejected | ignored
            similarity REAL,                    -- of a suggestion
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX faces_photo ON faces(photo_id);
        CREATE INDEX faces_person ON faces(person_id);
        CREATE INDEX faces_backend_state ON faces(backend, state);
        CREATE TABLE face_rejections (          -- "not this person", remembered forever
            face_id INTEGER NOT NULL REFERENCES faces(id) ON DELETE CASCADE,
            person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            PRIMARY KEY (face_id, person_id)
        ) WITHOUT ROWID;
        """
    )


def _m3_clip_and_concepts(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE clip_embeddings (
            photo_id INTEGER PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE,
            model TEXT NOT NULL,                -- embedding space (model/weights); spaces never mix
            embedding BLOB NOT NULL             -- float32, L2-normalised
        );
        CREATE INDEX clip_embeddings_model ON clip_embeddings(model);
        CREATE TABLE concepts (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('person', 'object')),
            name TEXT NOT NULL,                 -- what the user sees ("Bella", "my red mug")
            identifier TEXT NOT NULL,           -- the word used in prompts and captions
            person_id INTEGER REFERENCES people(id) ON DELETE CASCADE,
            head_state TEXT NOT NULL DEFAULT 'untrained',   -- untrained | ready | stale | error
            head_revision INTEGER NOT NULL DEFAULT 0,       -- bumped at every (re)training: signals follow it
            head_space TEXT,                    -- embedding space the head was trained in (face backend / CLIP)
            threshold REAL,
            metrics TEXT,                       -- JSON: precision/recall on held-out photos
            embedding_state TEXT NOT NULL DEFAULT 'untrained',  -- the MyVLM concept embedding (personalisation)
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX concepts_name ON concepts(name COLLATE NOCASE);
        CREATE UNIQUE INDEX concepts_person ON concepts(person_id) WHERE person_id IS NOT NULL;
        CREATE TABLE concept_examples (         -- the photos that define a concept
            id INTEGER PRIMARY KEY,
            concept_id INTEGER NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            photo_id INTEGER REFERENCES photos(id) ON DELETE CASCADE,  -- an album photo...
            path TEXT,                          -- ...or an imported image kept in the library
            role TEXT NOT NULL DEFAULT 'positive',  -- positive | negative
            captions TEXT,                      -- JSON list of target captions (research layout, review screen)
            created_at TEXT NOT NULL
        );
        CREATE INDEX concept_examples_concept ON concept_examples(concept_id);
        CREATE TABLE concept_signals (          -- what each head says about each photo
            photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
            concept_id INTEGER NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
            revision INTEGER NOT NULL,          -- the head revision that produced it
            score REAL NOT NULL,                -- object: p(concept); person: 1 - distance of the best face
            fired INTEGER NOT NULL,
            face_id INTEGER REFERENCES faces(id) ON DELETE SET NULL,  -- people: which face matched
            PRIMARY KEY (photo_id, concept_id)
        ) WITHOUT ROWID;
        CREATE INDEX concept_signals_concept ON concept_signals(concept_id, fired);
        """
    )


def _m4_captions_and_search(db: sqlite_utils.Database) -> None:
    """Captions and Q&A (stored with {{concept:ID}} placeholders) and the search index.

    One document per photo (search_docs) feeds an FTS5 index kept in sync by triggers. Whatever changes what a
    document says (a rename, a merge, a face assigned, a caption) marks the photo in search_dirty; the searcher
    rebuilds just those documents before it queries (engine/domain/search/documents.py). `tags` holds entity tokens
    (zzperson<ID>, zzconcept<ID>) so name filters run through the same index and a rename finds its documents.
    """
    db.executescript(
        """
        CREATE TABLE captions (
            id INTEGER PRIMARY KEY,
            photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('original', 'personalised', 'user')),
            template TEXT NOT NULL,             -- text with {{concept:ID}} placeholders, rendered with today's names
            typed TEXT,                         -- 'user': the text exactly as the user typed it
            model TEXT,                         -- NULL for the user's own text
            prompt TEXT,
            concepts TEXT NOT NULL DEFAULT '[]',  -- JSON list of the ids of the concepts present
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX captions_photo_kind ON captions(photo_id, kind);
        CREATE TABLE qa (
            id INTEGER PRIMARY KEY,
            photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
            question TEXT NOT NULL,             -- may hold placeholders too
            answer TEXT NOT NULL,               -- template, as captions
            model TEXT NOT NULL,
            concepts TEXT NOT NULL DEFAULT '[]',
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX qa_photo_question ON qa(photo_id, question);
        CREATE TABLE photo_places (             -- EXIF GPS and its reverse-geocoded place, per file version
            photo_id INTEGER PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE,
            content_hash TEXT,
            latitude REAL,
            longitude REAL,
            place TEXT
        );
        CREATE TABLE search_docs (              -- rowid = photo id = rowid in search_docs_fts
            photo_id INTEGER PRIMARY KEY,
            captions TEXT NOT NULL DEFAULT '',
            names TEXT NOT NULL DEFAULT '',     -- people and concept names and aliases
            qa TEXT NOT NULL DEFAULT '',
            folder TEXT NOT NULL DEFAULT '',    -- words of the folders below the watched one (`folder:` filters)
            file TEXT NOT NULL DEFAULT '',      -- words of the file name
            place TEXT NOT NULL DEFAULT '',
            date TEXT NOT NULL DEFAULT '',      -- year, month, season
            tags TEXT NOT NULL DEFAULT ''       -- entity tokens: never matched by typed words
        );
        CREATE TABLE search_dirty (photo_id INTEGER NOT NULL);  -- repeats allowed: trigger INSERTs never conflict
        CREATE INDEX search_dirty_photo ON search_dirty(photo_id);
        CREATE TABLE search_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO search_state(key, value) VALUES ('names_version', 0);
        CREATE TABLE search_clip_log (          -- photos whose CLIP embedding or date changed, in order: in-memory
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- copies catch up by reading what came after their last seq
            photo_id INTEGER NOT NULL
        );
        INSERT INTO search_dirty(photo_id) SELECT id FROM photos;
        """
    )
    db["search_docs"].enable_fts(["captions", "names", "qa", "folder", "file", "place", "date", "tags"],
                                 tokenize="porter unicode61 remove_diacritics 2", create_triggers=True)
    # bm25 weights, in column order: captions and names count most
    db.execute("INSERT INTO search_docs_fts(search_docs_fts, rank) VALUES ('rank', 'bm25(6.0, 6.0, 2.0, 1.0, 1.0, 1.5, 1.0, 0.0)')")
    # plain INSERTs: an upsert's conflict clause would override an OR IGNORE inside its triggers
    dirty = "INSERT INTO search_dirty(photo_id)"
    tagged = "SELECT rowid FROM search_docs_fts WHERE search_docs_fts MATCH 'tags : {prefix}' || {id}"
    names = "UPDATE search_state SET value = value + 1 WHERE key = 'names_version';"
    clip_log = "INSERT INTO search_clip_log(photo_id)"
    bake = ("UPDATE {table} SET {col} = replace({col}, '{{{{concept:' || OLD.id || '}}}}', "
            "CASE OLD.kind WHEN 'person' THEN 'someone' ELSE 'something' END) "
            "WHERE instr({col}, '{{{{concept:' || OLD.id || '}}}}') > 0;")
    triggers = {
        "photos_search_ai": f"AFTER INSERT ON photos BEGIN {dirty} VALUES (NEW.id); END",
        "photos_search_au": "AFTER UPDATE OF path, name, folder_id, date_taken, status, kind, content_hash ON photos "
                            f"BEGIN {dirty} VALUES (NEW.id); END",
        "photos_search_ad": "AFTER DELETE ON photos BEGIN DELETE FROM search_docs WHERE photo_id = OLD.id; "
                            "DELETE FROM search_dirty WHERE photo_id = OLD.id; END",
        "faces_search_ai": f"AFTER INSERT ON faces WHEN NEW.person_id IS NOT NULL BEGIN {dirty} VALUES (NEW.photo_id); END",
        "faces_search_au": f"AFTER UPDATE OF person_id, state ON faces BEGIN {dirty} VALUES (NEW.photo_id); END",
        "faces_search_ad": f"AFTER DELETE ON faces WHEN OLD.person_id IS NOT NULL BEGIN {dirty} VALUES (OLD.photo_id); END",
        "people_search_ai": f"AFTER INSERT ON people BEGIN {names} END",
        "people_search_au": f"AFTER UPDATE OF name ON people BEGIN {names} "
                            f"{dirty} SELECT photo_id FROM faces WHERE person_id = NEW.id; "
                            f"{dirty} {tagged.format(prefix='zzperson', id='NEW.id')}; END",
        "people_search_bd": f"BEFORE DELETE ON people BEGIN {names} "
                            f"{dirty} SELECT photo_id FROM faces WHERE person_id = OLD.id; "
                            f"{dirty} {tagged.format(prefix='zzperson', id='OLD.id')}; END",
        "concepts_search_ai": f"AFTER INSERT ON concepts BEGIN {names} END",
        "concepts_search_au": f"AFTER UPDATE OF name, identifier, person_id ON concepts BEGIN {names} "
                              f"{dirty} {tagged.format(prefix='zzconcept', id='NEW.id')}; END",
        # a deleted concept's placeholders become "someone"/"something" for good: its id may be reused later
        "concepts_search_ad": f"AFTER DELETE ON concepts BEGIN {names} "
                              f"{dirty} {tagged.format(prefix='zzconcept', id='OLD.id')}; "
                              + bake.format(table="captions", col="template")
                              + bake.format(table="qa", col="question")
                              + bake.format(table="qa", col="answer") + " END",
        "concept_examples_search_ai": f"AFTER INSERT ON concept_examples WHEN NEW.photo_id IS NOT NULL BEGIN "
                                      f"{dirty} VALUES (NEW.photo_id); END",
        "concept_examples_search_ad": f"AFTER DELETE ON concept_examples WHEN OLD.photo_id IS NOT NULL BEGIN "
                                      f"{dirty} VALUES (OLD.photo_id); END",
        # signals: only a change of `fired` changes a document (retraining rewrites every signal of a concept)
        "concept_signals_search_bi": "BEFORE INSERT ON concept_signals WHEN NEW.fired != coalesce((SELECT fired "
                                     "FROM concept_signals WHERE photo_id = NEW.photo_id AND concept_id = "
                                     f"NEW.concept_id), 0) BEGIN {dirty} VALUES (NEW.photo_id); END",
        "concept_signals_search_au": "AFTER UPDATE OF fired ON concept_signals WHEN OLD.fired != NEW.fired BEGIN "
                                     f"{dirty} VALUES (NEW.photo_id); END",
        "concept_signals_search_ad": f"AFTER DELETE ON concept_signals WHEN OLD.fired BEGIN {dirty} VALUES "
                                     "(OLD.photo_id); END",
        "clip_search_ai": f"AFTER INSERT ON clip_embeddings BEGIN {clip_log} VALUES (NEW.photo_id); END",
        "clip_search_au": f"AFTER UPDATE ON clip_embeddings BEGIN {clip_log} VALUES (NEW.photo_id); END",
        "clip_search_ad": f"AFTER DELETE ON clip_embeddings BEGIN {clip_log} VALUES (OLD.photo_id); END",
        "photos_search_date": f"AFTER UPDATE OF date_taken ON photos BEGIN {clip_log} VALUES (NEW.id); END",
    }
    for table in ("captions", "qa"):
        triggers[f"{table}_search_ai"] = f"AFTER INSERT ON {table} BEGIN {dirty} VALUES (NEW.photo_id); END"
        triggers[f"{table}_search_au"] = f"AFTER UPDATE ON {table} BEGIN {dirty} VALUES (NEW.photo_id); END"
        triggers[f"{table}_search_ad"] = f"AFTER DELETE ON {table} BEGIN {dirty} VALUES (OLD.photo_id); END"
    for name, body in triggers.items():
        db.execute(f"CREATE TRIGGER {name} {body}")


def _m5_stage_claims(db: sqlite_utils.Database) -> None:
    """Which run is working on a photo's stage (engine/storage/claims.py): two runs on one library never do it twice."""
    db.executescript(
        """
        CREATE TABLE stage_claims (
            photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
            stage TEXT NOT NULL,
            token TEXT NOT NULL,                -- the run holding the claim
            pid INTEGER NOT NULL,               -- its process ...
            host TEXT NOT NULL,                 -- ... on this machine ...
            started REAL NOT NULL,              -- ... started at this time (a reused pid is another process)
            expires REAL NOT NULL,              -- unix time; the run pushes it forward while it works
            PRIMARY KEY (photo_id, stage)
        ) WITHOUT ROWID;
        CREATE INDEX stage_claims_token ON stage_claims(token);
        """
    )


def _m6_faces_log(db: sqlite_utils.Database) -> None:
    """What changed for face clustering, in order (engine/domain/face_clustering.py): a clusterer kept in memory catches
    up by reading the entries after its last seq, so placing k new faces reads O(k) rows, not every face."""
    db.executescript(
        """
        CREATE TABLE faces_log (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            face_id INTEGER,                    -- a face row or its rejections changed (or it went)
            person_id INTEGER                   -- a person's name or hidden flag changed (or it went)
        );
        CREATE TRIGGER faces_log_ai AFTER INSERT ON faces BEGIN INSERT INTO faces_log(face_id) VALUES (NEW.id); END;
        CREATE TRIGGER faces_log_au AFTER UPDATE OF photo_id, backend, quality, embedding, person_id, state ON faces
            BEGIN INSERT INTO faces_log(face_id) VALUES (NEW.id); END;
        CREATE TRIGGER faces_log_ad AFTER DELETE ON faces BEGIN INSERT INTO faces_log(face_id) VALUES (OLD.id); END;
        CREATE TRIGGER face_rejections_log_ai AFTER INSERT ON face_rejections
            BEGIN INSERT INTO faces_log(face_id) VALUES (NEW.face_id); END;
        CREATE TRIGGER face_rejections_log_ad AFTER DELETE ON face_rejections
            BEGIN INSERT INTO faces_log(face_id) VALUES (OLD.face_id); END;
        CREATE TRIGGER people_log_ai AFTER INSERT ON people BEGIN INSERT INTO faces_log(person_id) VALUES (NEW.id); END;
        CREATE TRIGGER people_log_au AFTER UPDATE OF name, hidden ON people
            BEGIN INSERT INTO faces_log(person_id) VALUES (NEW.id); END;
        CREATE TRIGGER people_log_ad AFTER DELETE ON people BEGIN INSERT INTO faces_log(person_id) VALUES (OLD.id); END;
        """
    )


def _m7_instant_names(db: sqlite_utils.Database) -> None:
    """Captions and answers named from recognition before training (engine/domain/personalize/instant.py) are marked; they
    may name a person who is no concept yet as {{person:ID}}, which a forgotten person's row leaves as "someone"."""
    bake = ("UPDATE {table} SET {col} = replace({col}, '{{{{person:' || OLD.id || '}}}}', 'someone') "
            "WHERE instr({col}, '{{{{person:' || OLD.id || '}}}}') > 0;")
    for table in ("captions", "qa"):
        db[table].add_column("instant", int, not_null_default=0)
    db.execute("CREATE TRIGGER people_placeholders_bd BEFORE DELETE ON people BEGIN "
               + bake.format(table="captions", col="template") + bake.format(table="qa", col="question")
               + bake.format(table="qa", col="answer") + " END")


# The change feed (Catalog.changes_since): every write that changes what a view shows of a photo (its row, faces,
# captions, answers, concept signals, stage state, place, the names it shows) appends the photo's id here, by
# trigger, so the writes of every connection and process are seen. photo_id NULL: "everything" (a folder went
# offline or came back). Old rows are trimmed by a trigger: the newest CHANGES_KEPT stay, so a reader that fell
# further behind is told to read everything again.
CHANGES_KEPT = 200_000
CHANGES_TRIM_EVERY = 10_000   # trimming in steps: one DELETE of a step's rows per CHANGES_TRIM_EVERY changes


def _m8_change_feed(db: sqlite_utils.Database) -> None:
    """The photo change feed. sqlite-utils makes the table (a plain rowid key: rows are only ever trimmed from the
    old end, so seq never goes back); triggers are hand-written SQL, which sqlite-utils has no API for."""
    db.create_table("photo_changes", {"seq": int, "photo_id": int}, pk="seq")
    log_new = "INSERT INTO photo_changes(photo_id) VALUES (NEW.{c});"
    log_old = "INSERT INTO photo_changes(photo_id) VALUES (OLD.{c});"
    triggers = {
        "photos_changes_ai": "AFTER INSERT ON photos BEGIN " + log_new.format(c="id") + " END",
        # the columns a view shows (not size, mtime_ns or updated_at alone)
        "photos_changes_au": "AFTER UPDATE OF folder_id, path, name, kind, content_hash, width, height, orientation, "
                             "format, date_taken, user_rotation, status, last_error, gone_at ON photos BEGIN "
                             + log_new.format(c="id") + " END",
        "photos_changes_ad": "AFTER DELETE ON photos BEGIN " + log_old.format(c="id") + " END",
        "folders_changes_au": "AFTER UPDATE OF status ON folders WHEN OLD.status != NEW.status BEGIN "
                              "INSERT INTO photo_changes(photo_id) VALUES (NULL); END",
        # a name shows on the photos of the person's faces, in captions and answers naming them or their concept
        "people_changes_au": "AFTER UPDATE OF name, hidden ON people BEGIN "
                             "INSERT INTO photo_changes(photo_id) SELECT DISTINCT photo_id FROM faces "
                             "WHERE person_id = NEW.id; "
                             + "".join(f"INSERT INTO photo_changes(photo_id) SELECT photo_id FROM {t} WHERE "
                                       f"instr({col}, '{{{{person:' || NEW.id || '}}}}') > 0; "
                                       for t, col in (("captions", "template"), ("qa", "answer")))
                             + "END",
        "concepts_changes_au": "AFTER UPDATE OF name, identifier ON concepts BEGIN "
                               "INSERT INTO photo_changes(photo_id) SELECT photo_id FROM concept_signals "
                               "WHERE concept_id = NEW.id AND fired; "
                               "INSERT INTO photo_changes(photo_id) SELECT photo_id FROM concept_examples "
                               "WHERE concept_id = NEW.id AND photo_id IS NOT NULL; "
                               + "".join(f"INSERT INTO photo_changes(photo_id) SELECT photo_id FROM {t} WHERE "
                                         f"instr({col}, '{{{{concept:' || NEW.id || '}}}}') > 0; "
                                         for t, col in (("captions", "template"), ("qa", "answer")))
                               + "END",
        "photo_changes_trim": f"AFTER INSERT ON photo_changes WHEN NEW.seq % {CHANGES_TRIM_EVERY} = 0 BEGIN "
                              f"DELETE FROM photo_changes WHERE seq <= NEW.seq - {CHANGES_KEPT}; END",
    }
    # concept signals: a view shows the concepts that fired (with their score), so only a signal that fires or
    # fired counts; retraining rewrites every signal of a concept, and most never fire
    fired_before = ("coalesce((SELECT fired FROM concept_signals WHERE photo_id = NEW.photo_id AND concept_id = "
                    "NEW.concept_id), 0)")
    triggers["concept_signals_changes_bi"] = (f"BEFORE INSERT ON concept_signals WHEN NEW.fired OR {fired_before} "
                                              f"BEGIN {log_new.format(c='photo_id')} END")
    triggers["concept_signals_changes_au"] = (f"AFTER UPDATE ON concept_signals WHEN OLD.fired OR NEW.fired "
                                              f"BEGIN {log_new.format(c='photo_id')} END")
    triggers["concept_signals_changes_ad"] = (f"AFTER DELETE ON concept_signals WHEN OLD.fired "
                                              f"BEGIN {log_old.format(c='photo_id')} END")
    for table in ("faces", "captions", "qa", "concept_examples", "stage_status", "photo_places"):
        when_new = " WHEN NEW.photo_id IS NOT NULL" if table == "concept_examples" else ""
        when_old = " WHEN OLD.photo_id IS NOT NULL" if table == "concept_examples" else ""
        triggers[f"{table}_changes_ai"] = f"AFTER INSERT ON {table}{when_new} BEGIN {log_new.format(c='photo_id')} END"
        triggers[f"{table}_changes_au"] = f"AFTER UPDATE ON {table}{when_new} BEGIN {log_new.format(c='photo_id')} END"
        triggers[f"{table}_changes_ad"] = f"AFTER DELETE ON {table}{when_old} BEGIN {log_old.format(c='photo_id')} END"
    for name, body in triggers.items():
        db.execute(f"CREATE TRIGGER {name} {body}")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_foundation, _m2_faces, _m3_clip_and_concepts, _m4_captions_and_search, _m5_stage_claims, _m6_faces_log,
    _m7_instant_names, _m8_change_feed,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(UserError, RuntimeError):
    """The catalog was written by a newer version of the app; the message says so."""


class DiskFull(UserError, OSError):
    """The disk (or quota) holding the library is full. Nothing half-written is kept: the catalog rolled back,
    temporary files were removed, and the work not stored is simply still to do, so the same command resumes
    once there is room. The message says what could not be written and what to do."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


_DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full", "storagefull")
SQLITE_FULL = 13


def is_disk_full(exc: BaseException | None) -> bool:
    """True for every way "the disk is full" reaches us: an OSError (ENOSPC, EDQUOT), SQLite's SQLITE_FULL, or a
    library that wraps the OS error in its own exception (safetensors says "StorageFull"), also as a cause."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        if any(w in str(exc).lower() for w in _DISK_FULL_WORDS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def disk_full(where: str, exc: BaseException | None = None) -> DiskFull:
    """The error to raise when `where` (e.g. "the thumbnail of /a/b.jpg") could not be written: disk full."""
    if isinstance(exc, DiskFull):
        return exc
    detail = f" ({exc})" if exc is not None and str(exc) else ""
    return DiskFull(f"The disk holding the library is full: {where} could not be written{detail}. Free some "
                    "space (or move the library to a bigger disk), then run again: nothing written so far is "
                    "lost, and the work resumes where it stopped.")


# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Folder:
    id: int
    path: str
    path_bytes: bytes
    status: str
    added_at: str
    last_scan_at: str | None
    last_error: str | None

    @property
    def fs_path(self) -> str:
        return P.to_fs(self.path_bytes)


@dataclass
class Photo:
    id: int
    folder_id: int
    path: str
    path_bytes: bytes
    name: str
    kind: str
    content_hash: str | None
    size: int | None
    mtime_ns: int | None
    width: int | None
    height: int | None
    orientation: int | None
    format: str | None
    date_taken: str | None
    date_source: str | None
    user_rotation: int
    status: str
    last_error: str | None
    added_at: str
    updated_at: str
    gone_at: str | None
    folder_status: str = FOLDER_ONLINE

    @property
    def fs_path(self) -> str:
        return P.to_fs(self.path_bytes)

    @property
    def effective_status(self) -> str:
        """What the user sees: photos of an unplugged folder are offline, whatever they were."""
        if self.folder_status == FOLDER_OFFLINE and self.status != GONE:
            return OFFLINE
        return self.status

    def to_json(self) -> dict[str, Any]:
        """Stable JSON shape of `myvlm photos --json` (documented in docs/cli-json.md)."""
        return {
            "id": self.id,
            "path": self.path,
            "name": self.name,
            "folder_id": self.folder_id,
            "kind": self.kind,
            "status": self.effective_status,
            "error": self.last_error,
            "content_hash": self.content_hash,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "width": self.width,
            "height": self.height,
            "orientation": self.orientation,
            "user_rotation": self.user_rotation,
            "format": self.format,
            "date_taken": self.date_taken,
            "date_source": self.date_source,
            "added_at": self.added_at,
            "gone_at": self.gone_at,
        }


_PHOTO_COLUMNS = [f for f in Photo.__dataclass_fields__ if f != "folder_status"]
_PHOTO_SELECT = ", ".join(f"p.{c}" for c in _PHOTO_COLUMNS) + ", f.status AS folder_status"


def _photo(row: sqlite3.Row) -> Photo:
    return Photo(**{k: row[k] for k in row.keys()})



@dataclass(frozen=True)
class Changes:
    """What changed since a token (Catalog.changes_since). `token`: pass it to the next call. `photo_ids`: the
    photos whose row or derived data changed, each once, in the order of their first change; None: too many or
    unknown (no token yet, the log was trimmed past it, the catalog was replaced): read everything again."""
    token: int
    photo_ids: tuple[int, ...] | None


class Catalog:
    """One connection to a library's catalog. Open one per thread; they coordinate through SQLite."""

    def __init__(self, paths: LibraryPaths, *, readonly: bool = False):
        self.paths = paths
        paths.ensure()
        conn = sqlite3.connect(paths.db, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._thread = threading.get_ident()
        self._depth = 0
        if not readonly:
            self._migrate()

    # -- plumbing -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction. Takes the write lock up front (waits, never fails, while another writer holds it)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.db
            finally:
                self._depth -= 1
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise disk_full(f"the catalog {self.paths.db}", exc) from exc
            raise
        self._depth = 1
        try:
            yield self.db
        except BaseException as exc:
            self._rollback()
            if is_disk_full(exc) and not isinstance(exc, DiskFull):
                raise disk_full(f"the catalog {self.paths.db}", exc) from exc
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:   # e.g. SQLITE_FULL at commit: the transaction is rolled back, not kept
                self._rollback()
                if is_disk_full(exc):
                    raise disk_full(f"the catalog {self.paths.db}", exc) from exc
                raise
        finally:
            self._depth = 0

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def query(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @property
    def schema_version(self) -> int:
        return int(self.scalar("PRAGMA user_version"))

    def _migrate(self) -> None:
        if self.schema_version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.paths.db} was written by a newer MyVLM Desktop (schema {self.schema_version}, this version "
                f"knows {SCHEMA_VERSION}). Update the app, or choose another library with --library."
            )
        if self.schema_version == SCHEMA_VERSION:
            return
        with self.write():
            current = self.schema_version  # re-read under the lock: another process may have migrated meanwhile
            for number in range(current + 1, SCHEMA_VERSION + 1):
                log.info("migrating catalog %s to schema %d", self.paths.db, number)
                MIGRATIONS[number - 1](self.db)
                self.conn.execute(f"PRAGMA user_version = {number}")

    def changes_since(self, token: int | None, *, limit: int = 10_000) -> Changes:
        """The photos changed since `token` was handed out, by any connection or process (the feed's triggers log
        every write). Reads only the feed's rows after `token`: cheap enough to ask every second. More than
        `limit` distinct photos answer None, as does a token the feed no longer covers."""
        last = self.scalar("SELECT max(seq) FROM photo_changes") or 0
        if token is None or token > last:   # no token yet, or another catalog (a restored backup): read everything
            return Changes(last, None)
        if token == last:
            return Changes(last, ())
        first = self.scalar("SELECT min(seq) FROM photo_changes") or 0
        if token < first - 1 or last - token > CHANGES_KEPT:   # trimmed past the token
            return Changes(last, None)
        ids: dict[int, None] = {}
        for (photo_id,) in self.conn.execute("SELECT photo_id FROM photo_changes WHERE seq > ? AND seq <= ?",
                                             [token, last]):
            if photo_id is None:
                return Changes(last, None)
            ids[photo_id] = None
            if len(ids) > limit:
                return Changes(last, None)
        return Changes(last, tuple(ids))

    def integrity_check(self) -> str:
        return str(self.scalar("PRAGMA integrity_check"))

    # -- settings ---------------------------------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        value = self.scalar("SELECT value FROM settings WHERE key = ?", [key])
        return default if value is None else json.loads(value)

    def set_setting(self, key: str, value: Any) -> None:
        with self.write():
            self.db["settings"].upsert({"key": key, "value": json.dumps(value)}, pk="key")

    # -- folders ----------------------------------------------------------------------------------------------------

    def folders(self) -> list[Folder]:
        return [Folder(**dict(r)) for r in self.query("SELECT * FROM folders ORDER BY path_bytes")]

    def folder(self, folder_id: int) -> Folder | None:
        rows = self.query("SELECT * FROM folders WHERE id = ?", [folder_id])
        return Folder(**dict(rows[0])) if rows else None

    def folder_for(self, path: P.PathLike) -> Folder | None:
        """The watched folder that contains `path` (or is it)."""
        pb = P.normalize(path)
        for f in self.folders():
            if P.is_within(pb, f.path_bytes):
                return f
        return None

    def add_folder(self, path: P.PathLike) -> Folder:
        """Watch a folder. A folder inside a watched one is already covered; a parent absorbs watched children."""
        pb = P.normalize(path)
        with self.write():
            existing = self.folder_for(pb)
            if existing is not None:
                return existing
            cur = self.conn.execute(
                "INSERT INTO folders(path, path_bytes, status, added_at) VALUES (?, ?, 'online', ?)",
                [P.display(pb), pb, now()],
            )
            new_id = cur.lastrowid
            for child in self.folders():
                if child.id != new_id and P.is_within(child.path_bytes, pb):
                    self.conn.execute("UPDATE photos SET folder_id = ? WHERE folder_id = ?", [new_id, child.id])
                    self.conn.execute("DELETE FROM folders WHERE id = ?", [child.id])
        folder = self.folder(new_id)
        assert folder is not None
        return folder

    def remove_folder(self, folder_id: int) -> int:
        """Stop watching a folder and forget its photos and everything derived from them. Returns photos removed."""
        with self.write():
            n = self.conn.execute("DELETE FROM photos WHERE folder_id = ?", [folder_id]).rowcount
            self.conn.execute("DELETE FROM folders WHERE id = ?", [folder_id])
        return n

    def set_folder_state(self, folder_id: int, status: str, error: str | None = None, scanned: bool = False) -> None:
        with self.write():
            if scanned:
                self.conn.execute(
                    "UPDATE folders SET status = ?, last_error = ?, last_scan_at = ? WHERE id = ?",
                    [status, error, now(), folder_id],
                )
            else:
                self.conn.execute("UPDATE folders SET status = ?, last_error = ? WHERE id = ?", [status, error, folder_id])

    # -- photos -----------------------------------------------------------------------------------------------------

    def photo(self, photo_id: int) -> Photo | None:
        rows = self.query(
            f"SELECT {_PHOTO_SELECT} FROM photos p JOIN folders f ON f.id = p.folder_id WHERE p.id = ?", [photo_id]
        )
        return _photo(rows[0]) if rows else None

    def photo_by_path(self, path: P.PathLike) -> Photo | None:
        rows = self.query(
            f"SELECT {_PHOTO_SELECT} FROM photos p JOIN folders f ON f.id = p.folder_id WHERE p.path_bytes = ?",
            [P.normalize(path)],
        )
        return _photo(rows[0]) if rows else None

    def photos(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        folder_id: int | None = None,
        errors_only: bool = False,
        order: str = "path",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Photo]:
        where, params = ["1"], []
        if status == OFFLINE:
            where.append("f.status = 'offline' AND p.status != 'gone'")
        elif status is not None:
            where.append("p.status = ? AND (f.status = 'online' OR p.status = 'gone')")
            params.append(status)
        if kind is not None:
            where.append("p.kind = ?")
            params.append(kind)
        if folder_id is not None:
            where.append("p.folder_id = ?")
            params.append(folder_id)
        if errors_only:
            where.append(
                "(p.last_error IS NOT NULL OR EXISTS (SELECT 1 FROM stage_status s WHERE s.photo_id = p.id AND s.state = 'error'))"
            )
        order_sql = {"path": "p.path_bytes", "date": "p.date_taken, p.path_bytes", "id": "p.id"}[order]
        sql = f"SELECT {_PHOTO_SELECT} FROM photos p JOIN folders f ON f.id = p.folder_id WHERE {' AND '.join(where)} ORDER BY {order_sql}"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        return [_photo(r) for r in self.query(sql, params)]

    def set_user_rotation(self, photo_id: int, degrees: int) -> None:
        if degrees % 90:
            raise InvalidInput("rotation must be a multiple of 90 degrees")
        with self.write():
            self.conn.execute(
                "UPDATE photos SET user_rotation = ?, updated_at = ? WHERE id = ?", [degrees % 360, now(), photo_id]
            )

    def purge_gone(self) -> int:
        """Forget photos marked gone, with everything derived from them (the user asked for it)."""
        with self.write():
            return self.conn.execute("DELETE FROM photos WHERE status = 'gone'").rowcount

    # -- stage status -----------------------------------------------------------------------------------------------

    def stage_rows(self, photo_id: int) -> dict[str, sqlite3.Row]:
        return {r["stage"]: r for r in self.query("SELECT * FROM stage_status WHERE photo_id = ?", [photo_id])}

    def pending_for_stage(
        self, stage: str, version: int, requires: Iterable[str] = (), *, retry_errors: bool = False
    ) -> list[sqlite3.Row]:
        """Photos a stage still has to process: never done, done by an older stage version, or (on request) failed."""
        requires = list(requires)
        req_sql = "".join(
            f" AND EXISTS (SELECT 1 FROM stage_status r{i} WHERE r{i}.photo_id = p.id AND r{i}.stage = ? AND r{i}.state = 'done')"
            for i, _ in enumerate(requires)
        )
        retry_sql = " OR s.state = 'error'" if retry_errors else ""
        sql = f"""
            SELECT p.id, p.path_bytes, p.content_hash, p.name FROM photos p JOIN folders f ON f.id = p.folder_id
            LEFT JOIN stage_status s ON s.photo_id = p.id AND s.stage = ?
            WHERE p.kind = 'image' AND p.status IN ('pending', 'ok', 'error') AND f.status = 'online'
              AND p.content_hash IS NOT NULL
              AND (s.photo_id IS NULL OR s.version != ?{retry_sql}){req_sql}
            ORDER BY p.id
        """
        return self.query(sql, [stage, version, *requires])

    def done_for_hash(self, stage: str, version: int, content_hash: str) -> int | None:
        """A photo with this content whose stage result can be shared (duplicates run models once)."""
        return self.scalar(
            """SELECT s.photo_id FROM stage_status s JOIN photos p ON p.id = s.photo_id
               WHERE p.content_hash = ? AND s.stage = ? AND s.version = ? AND s.state = 'done' LIMIT 1""",
            [content_hash, stage, version],
        )

    def stage_done(self, photo_id: int, stage: str, version: int) -> bool:
        """Is this photo's stage done at this version (e.g. by another run, while this one worked on it)?"""
        return bool(self.scalar("SELECT 1 FROM stage_status WHERE photo_id = ? AND stage = ? AND version = ? "
                                "AND state = 'done'", [photo_id, stage, version]))

    def mark_stage(
        self, photo_id: int, stage: str, version: int, state: str, error: str | None = None, ran: bool = True
    ) -> None:
        self.conn.execute(
            """INSERT INTO stage_status(photo_id, stage, state, version, error, runs, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(photo_id, stage) DO UPDATE SET state = excluded.state, version = excluded.version,
                   error = excluded.error, runs = stage_status.runs + excluded.runs, updated_at = excluded.updated_at""",
            [photo_id, stage, state, version, error, int(ran), now()],
        )

    def reset_stages(self, photo_ids: Iterable[int], stages: Iterable[str] | None = None) -> None:
        """Forget stage results so the pipeline redoes them ("redo all", or a file changed in place)."""
        ids = list(photo_ids)
        with self.write():
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                if stages is None:
                    self.conn.execute(f"DELETE FROM stage_status WHERE photo_id IN ({marks})", chunk)
                else:
                    st = list(stages)
                    self.conn.execute(
                        f"DELETE FROM stage_status WHERE photo_id IN ({marks}) AND stage IN ({','.join('?' * len(st))})",
                        chunk + st,
                    )

    def reset_stage_everywhere(self, stage: str) -> None:
        with self.write():
            self.conn.execute("DELETE FROM stage_status WHERE stage = ?", [stage])

    # -- summaries --------------------------------------------------------------------------------------------------

    def _stage_counts(self, stages: list[tuple[str, int, tuple[str, ...]]]) -> dict[str, dict[str, int]]:
        """Each stage's done / errors / blocked / pending in one pass over the processable photos and their stage
        rows (was one query per stage with correlated sub-queries per photo, 3x slower: bench/bench_status.py).
        Each photo is reduced to (no content hash, one code): bit i set when stage i is done at its current version,
        bit k + i when it failed there (k stages); the few distinct pairs are counted, and every stage's numbers
        follow from them. SQLite integers hold the code for up to 31 stages.

        Blocked: the file could not be read (no content hash), or a stage it needs failed on it (an unreadable
        picture fails the thumbnail stage), and this stage has neither done nor failed it. Not pending: errors."""
        if not stages:
            return {}
        k = len(stages)
        bit = "CASE s.stage " + " ".join("WHEN ? THEN (s.version = ?) << ?" for _ in stages) + " ELSE 0 END"
        params: list[Any] = []
        for i, (name, version, _) in enumerate(stages):
            params += [name, version, i]
        groups = self.query(
            f"""SELECT nohash, code, COUNT(*) AS n FROM (
                    SELECT p.content_hash IS NULL AS nohash,
                           IFNULL(SUM(({bit}) << (CASE s.state WHEN 'done' THEN 0 WHEN 'error' THEN {k} ELSE 64 END)),
                                  0) AS code
                    FROM photos p JOIN folders f ON f.id = p.folder_id
                    LEFT JOIN stage_status s ON s.photo_id = p.id
                    WHERE p.kind = 'image' AND p.status IN ('pending','ok','error') AND f.status = 'online'
                    GROUP BY p.id)
                GROUP BY nohash, code""",
            params,
        )
        eligible = sum(g["n"] for g in groups)
        index = {name: i for i, (name, _, _) in enumerate(stages)}
        out = {}
        for i, (name, _, _) in enumerate(stages):
            me = (1 << i) | (1 << (k + i))                                  # done or failed at its version
            needs = sum(1 << (k + index[a]) for a in _stage_ancestors(name, stages))   # a stage it needs failed
            done = sum(g["n"] for g in groups if g["code"] >> i & 1)
            err = sum(g["n"] for g in groups if g["code"] >> (k + i) & 1)
            blocked = sum(g["n"] for g in groups if not g["code"] & me and (g["nohash"] or g["code"] & needs))
            out[name] = {"done": done, "errors": err, "blocked": blocked,
                         "pending": max(0, eligible - done - err - blocked)}
        return out

    def status_summary(self, stages: Iterable[tuple[str, int] | tuple[str, int, Iterable[str]]] = ()) -> dict[str, Any]:
        """Counts for `myvlm status` and the GUI status bar (shape documented in docs/cli-json.md)."""
        counts = {s: 0 for s in (PENDING, OK, ERROR, UNSUPPORTED, GONE, OFFLINE)}
        folders = self.folders()
        offline = {f.id for f in folders if f.status == "offline"}
        live: dict[int, int] = {}
        # One pass over the photos, by folder and status: the library's counts and each folder's.
        for r in self.query("SELECT folder_id, status, COUNT(*) AS n FROM photos GROUP BY status, folder_id"):
            st = OFFLINE if r["folder_id"] in offline and r["status"] != GONE else r["status"]
            counts[st] = counts.get(st, 0) + r["n"]
            if r["status"] != GONE:
                live[r["folder_id"]] = live.get(r["folder_id"], 0) + r["n"]
        folders = [
            {"id": f.id, "path": f.path, "status": f.status, "photos": live.get(f.id, 0),
             "last_scan_at": f.last_scan_at, "error": f.last_error}
            for f in folders
        ]
        stages = [(s[0], s[1], tuple(s[2]) if len(s) > 2 else ()) for s in stages]   # (name, version[, requires])
        stage_info = self._stage_counts(stages)
        errors = [
            {"id": r["id"], "path": r["path"], "error": r["last_error"]}
            for r in self.query("SELECT id, path, last_error FROM photos WHERE last_error IS NOT NULL ORDER BY path_bytes")
        ]
        return {
            "library": str(self.paths.root),
            "schema_version": self.schema_version,
            "photos": {"total": sum(counts.values()), **counts},
            "folders": folders,
            "stages": stage_info,
            "errors": errors,
        }


def _stage_ancestors(name: str, stages: list[tuple[str, int, tuple[str, ...]]]) -> list[str]:
    """Every stage `name` needs, directly or through another (thumbnail for faces, then for concepts...)."""
    requires = {n: r for n, _, r in stages}
    out: list[str] = []
    todo = list(requires.get(name, ()))
    while todo:
        r = todo.pop()
        if r not in out and r in requires:
            out.append(r)
            todo.extend(requires[r])
    return out
