"""The change feed (Library.changes_since): which photos changed since a token, by this process or another one.

Every write goes through the real engine calls (scan, pipeline, rotate, caption, clustering, naming); the feed
must name exactly the photos written, each once, and say "read everything" where it cannot know.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlite_utils

from engine.domain.face_clustering import FaceClusterer
from engine.domain.people import People
from engine.library import Changes, Library
from engine.models.faces.backends import FaceThresholds
from engine.storage.catalog import CHANGES_KEPT, MIGRATIONS, SCHEMA_VERSION, Catalog, now
from engine.storage.library_folder import LibraryPaths
from engine.storage.vectors import to_blob

from .conftest import ROOT
from .helpers import write_jpeg

DIM, BACKEND = 16, "test-space"
TH = FaceThresholds(cluster_distance=0.35, suggest_distance=0.5, concept_distance=0.45, min_face_px=20,
                    found_min_px=40, min_score=0.0, found_min_score=0.0)


def changed(library: Library, token: int) -> tuple[int, set[int] | None]:
    c = library.changes_since(token)
    assert isinstance(c, Changes) and c.token >= token
    if c.photo_ids is not None:
        assert len(c.photo_ids) == len(set(c.photo_ids))   # coalesced: each photo once
    return c.token, None if c.photo_ids is None else set(c.photo_ids)


@pytest.fixture
def indexed(library: Library, tmp_path: Path) -> tuple[Library, list[int], int]:
    """Five photos scanned and thumbnailed; returns the library, the photo ids and the token after that."""
    album = tmp_path / "album"
    for i in range(5):
        write_jpeg(album / f"{i}.jpg", seed=i, width=96, height=64)
    first = library.changes_since(None)
    assert first.photo_ids is None   # no token yet: read everything
    library.add_folder(album)
    library.scan()
    ids = [p.id for p in library.photos(order="id")]
    token, seen = changed(library, first.token)
    assert seen == set(ids)
    library.process(stages=["thumbnail"])
    token, seen = changed(library, token)
    assert seen == set(ids)   # stage state is a photo's derived data
    assert changed(library, token) == (token, set())   # nothing new: the same token, no photos
    return library, ids, token


def test_user_actions_name_exactly_their_photos(indexed):
    library, ids, token = indexed
    a, b, *faced = ids
    library.rotate(a, 90)
    token, seen = changed(library, token)
    assert seen == {a}
    for _ in range(50):   # a photo changed many times appears once
        library.rotate(a, 90)
    token, seen = changed(library, token)
    assert seen == {a}
    library.captions().put_user_caption(b, "a red bicycle")
    token, seen = changed(library, token)
    assert seen == {b}
    # faces of one person on the last three photos: clustering founds the group, naming it touches exactly them
    rng = np.random.default_rng(0)
    centre = rng.normal(size=DIM)
    ts = now()
    with library.catalog.write():
        for pid in faced:
            v = centre / np.linalg.norm(centre) + rng.normal(scale=0.02, size=DIM)
            library.catalog.conn.execute(
                "INSERT INTO faces(photo_id, backend, x, y, w, h, score, quality, embedding, state, created_at, "
                "updated_at) VALUES (?, ?, 5, 5, 50, 50, 0.9, 1, ?, 'unknown', ?, ?)",
                [pid, BACKEND, to_blob((v / np.linalg.norm(v)).astype(np.float32)), ts, ts])
    token, seen = changed(library, token)
    assert seen == set(faced)
    assert FaceClusterer(library.catalog, BACKEND, DIM, TH).run().founded_people == 1
    token, seen = changed(library, token)
    assert seen == set(faced)
    person = library.catalog.scalar("SELECT person_id FROM faces LIMIT 1")
    People(library.catalog).name(person, "Alex")
    token, seen = changed(library, token)
    assert seen == set(faced)
    People(library.catalog).name(person, "Alexandra")   # a rename: the photos showing the name
    token, seen = changed(library, token)
    assert seen == set(faced)
    assert changed(library, token) == (token, set())


def test_concept_signals_count_where_they_fire(indexed):
    """Retraining rewrites every signal of a concept; a view shows only the concepts that fired on a photo."""
    library, ids, token = indexed
    concept = library.concepts().add_object("mug", [ids[4]])
    token, seen = changed(library, token)
    assert seen == {ids[4]}   # its example photo
    write = ("INSERT OR REPLACE INTO concept_signals(photo_id, concept_id, revision, score, fired) "
             "VALUES (?, ?, ?, ?, ?)")
    with library.catalog.write():
        library.catalog.conn.executemany(write, [(pid, concept.id, 1, 0.1, int(pid == ids[0])) for pid in ids])
    token, seen = changed(library, token)
    assert seen == {ids[0]}
    with library.catalog.write():   # a retrain: ids[0] stops firing, ids[1] starts, the rest stay quiet
        library.catalog.conn.executemany(write, [(pid, concept.id, 2, 0.2, int(pid == ids[1])) for pid in ids])
    token, seen = changed(library, token)
    assert seen == {ids[0], ids[1]}
    library.concepts().rename(concept.id, "cup")   # the name shows where it fired and on its examples
    token, seen = changed(library, token)
    assert seen == {ids[1], ids[4]}


def test_another_process_writes_are_seen(indexed):
    library, ids, token = indexed
    code = ("import sys; from pathlib import Path\n"
            "from engine.storage.catalog import Catalog; from engine.storage.library_folder import LibraryPaths\n"
            "with Catalog(LibraryPaths(Path(sys.argv[1]))) as cat: cat.set_user_rotation(int(sys.argv[2]), 180)")
    subprocess.run([sys.executable, "-c", code, str(library.paths.root), str(ids[2])], check=True, cwd=ROOT)
    token, seen = changed(library, token)
    assert seen == {ids[2]}
    assert library.catalog.photo(ids[2]).user_rotation == 180


def test_folder_offline_trim_and_limits_say_read_everything(indexed):
    library, ids, token = indexed
    folder = library.folders()[0]
    library.catalog.set_folder_state(folder.id, "offline")   # every photo's status changes: no list
    token, seen = changed(library, token)
    assert seen is None
    library.catalog.set_folder_state(folder.id, "offline")   # no change, no entry
    assert changed(library, token) == (token, set())
    # more photos than the caller wants listed
    for pid in ids:
        library.rotate(pid, 90)
    assert library.catalog.changes_since(token, limit=len(ids) - 1).photo_ids is None
    assert set(library.catalog.changes_since(token, limit=len(ids)).photo_ids) == set(ids)
    # the log keeps the newest CHANGES_KEPT rows; a token older than the trim gets None, a recent one its photos
    old = token
    with library.catalog.write():
        library.catalog.conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO photo_changes(photo_id) SELECT ? FROM n", [CHANGES_KEPT + 20_000, ids[0]])
    kept = library.catalog.scalar("SELECT COUNT(*) FROM photo_changes")
    assert CHANGES_KEPT <= kept < CHANGES_KEPT + 10_000   # trimmed in steps of 10,000
    token, seen = changed(library, old)
    assert seen is None
    library.rotate(ids[1], 90)
    assert changed(library, token)[1] == {ids[1]}
    # a token from another catalog (ahead of this one, e.g. before a backup was restored): read everything
    assert library.changes_since(token + 10**9).photo_ids is None


def test_migration_from_schema_7_keeps_everything(tmp_path: Path):
    paths = LibraryPaths(tmp_path / "lib")
    paths.ensure()
    conn = sqlite3.connect(paths.db, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for number, migrate in enumerate(MIGRATIONS[:7], start=1):
        migrate(db)
        conn.execute(f"PRAGMA user_version = {number}")
    ts = now()
    conn.execute("INSERT INTO folders(path, path_bytes, added_at) VALUES ('/a', X'2f61', ?)", [ts])
    conn.execute("INSERT INTO photos(folder_id, path, path_bytes, name, status, added_at, updated_at) "
                 "VALUES (1, '/a/1.jpg', X'2f612f312e6a7067', '1.jpg', 'ok', ?, ?)", [ts, ts])
    conn.execute("INSERT INTO people(name, created_at, updated_at) VALUES ('Alex', ?, ?)", [ts, ts])
    conn.execute("INSERT INTO faces(photo_id, backend, x, y, w, h, score, person_id, state, created_at, updated_at) "
                 "VALUES (1, 'b', 1, 2, 3, 4, 0.9, 1, 'confirmed', ?, ?)", [ts, ts])
    conn.execute("INSERT INTO captions(photo_id, kind, template, typed, created_at, updated_at) "
                 "VALUES (1, 'user', 'hello', 'hello', ?, ?)", [ts, ts])
    conn.execute("INSERT INTO settings(key, value) VALUES ('vlm', '\"blip2\"')")
    tables = [t for t in db.table_names() if not t.startswith("search_docs_fts")]
    before = {t: conn.execute(f"SELECT * FROM [{t}]").fetchall() for t in tables}
    conn.close()
    with Catalog(paths) as cat:
        assert cat.schema_version == SCHEMA_VERSION == 8
        assert cat.integrity_check() == "ok"
        assert {t: [tuple(r) for r in cat.conn.execute(f"SELECT * FROM [{t}]")] for t in tables} == before
        assert cat.changes_since(0) == Changes(0, ())   # an empty feed: nothing changed since the migration
        cat.set_user_rotation(1, 90)
        assert cat.changes_since(0) == Changes(1, (1,))
