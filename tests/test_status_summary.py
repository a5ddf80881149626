"""Catalog.status_summary's stage counts (one pass over the photos and their stage rows) against the per-stage
correlated queries they replaced, kept here as the oracle, on catalogs with photos in every state."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.storage.catalog import Catalog, _stage_ancestors, now
from engine.storage.library_folder import LibraryPaths

# The pipeline's stages and what each needs (engine/pipeline/*.py); versions vary per example.
STAGES = [("thumbnail", ()), ("faces", ("thumbnail",)), ("clip", ("thumbnail",)), ("concepts", ("faces",)),
          ("captions", ("concepts",))]


def old_blocked_for_stage(cat: Catalog, stage: str, version: int, ancestors: list[str], versions: dict[str, int]) -> int:
    """The query status_summary ran per stage before issue 21 (verbatim)."""
    failed = " OR ".join("(r.stage = ? AND r.version = ?)" for _ in ancestors) or "0"
    params: list[Any] = [stage, version]
    for a in ancestors:
        params += [a, versions[a]]
    return int(cat.scalar(
        f"""SELECT COUNT(*) FROM photos p JOIN folders f ON f.id = p.folder_id
            WHERE p.kind = 'image' AND p.status IN ('pending','ok','error') AND f.status = 'online'
              AND NOT EXISTS (SELECT 1 FROM stage_status s WHERE s.photo_id = p.id AND s.stage = ? AND s.version = ?
                              AND s.state IN ('done', 'error'))
              AND (p.content_hash IS NULL OR EXISTS (SELECT 1 FROM stage_status r WHERE r.photo_id = p.id
                                                      AND r.state = 'error' AND ({failed})))""",
        params) or 0)


def old_status_summary(cat: Catalog, stages) -> dict[str, Any]:
    """status_summary as it was before issue 21 (verbatim but for `cat` in place of `self`)."""
    counts = {s: 0 for s in ("pending", "ok", "error", "unsupported", "gone", "offline")}
    for r in cat.query(
        """SELECT CASE WHEN f.status = 'offline' AND p.status != 'gone' THEN 'offline' ELSE p.status END AS st,
                  COUNT(*) AS n
           FROM photos p JOIN folders f ON f.id = p.folder_id GROUP BY st"""
    ):
        counts[r["st"]] = r["n"]
    folders = []
    for f in cat.folders():
        n = cat.scalar("SELECT COUNT(*) FROM photos WHERE folder_id = ? AND status != 'gone'", [f.id])
        folders.append(
            {"id": f.id, "path": f.path, "status": f.status, "photos": n, "last_scan_at": f.last_scan_at,
             "error": f.last_error}
        )
    stage_info = {}
    eligible = cat.scalar(
        """SELECT COUNT(*) FROM photos p JOIN folders f ON f.id = p.folder_id
           WHERE p.kind = 'image' AND p.status IN ('pending','ok','error') AND f.status = 'online'"""
    )
    stages = [(s[0], s[1], tuple(s[2]) if len(s) > 2 else ()) for s in stages]
    versions = {name: version for name, version, _ in stages}
    for name, version, _ in stages:
        row = cat.query(
            """SELECT SUM(s.state = 'done' AND s.version = ?) AS done, SUM(s.state = 'error' AND s.version = ?) AS err
               FROM stage_status s JOIN photos p ON p.id = s.photo_id JOIN folders f ON f.id = p.folder_id
               WHERE s.stage = ? AND p.kind = 'image' AND p.status IN ('pending','ok','error') AND f.status = 'online'""",
            [version, version, name],
        )[0]
        done, err = row["done"] or 0, row["err"] or 0
        blocked = old_blocked_for_stage(cat, name, version, _stage_ancestors(name, stages), versions)
        stage_info[name] = {"done": done, "errors": err, "blocked": blocked,
                            "pending": max(0, eligible - done - err - blocked)}
    errors = [
        {"id": r["id"], "path": r["path"], "error": r["last_error"]}
        for r in cat.query("SELECT id, path, last_error FROM photos WHERE last_error IS NOT NULL ORDER BY path_bytes")
    ]
    return {
        "library": str(cat.paths.root),
        "schema_version": cat.schema_version,
        "photos": {"total": sum(counts.values()), **counts},
        "folders": folders,
        "stages": stage_info,
        "errors": errors,
    }


def fill(cat: Catalog, folders: list[str], photos: list[tuple], stage_rows: list[tuple]) -> None:
    """Replace the catalog's folders, photos and stage rows with these."""
    ts = now()
    with cat.write():
        cat.conn.execute("DELETE FROM stage_status")
        cat.conn.execute("DELETE FROM photos")
        cat.conn.execute("DELETE FROM folders")
        cat.conn.executemany(
            "INSERT INTO folders(id, path, path_bytes, status, added_at, last_scan_at, last_error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(i + 1, f"/album{i}", f"/album{i}".encode(), status, ts, ts if i % 2 else None,
              "not mounted" if status == "offline" else None) for i, status in enumerate(folders)])
        cat.conn.executemany(
            "INSERT INTO photos(id, folder_id, path, path_bytes, name, kind, content_hash, status, last_error, "
            "added_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(i + 1, folder + 1, f"/album{folder}/p{i}.jpg", f"/album{folder}/p{i}.jpg".encode(), f"p{i}.jpg", kind,
              f"h{i % 7}" if hashed else None, status, "cannot read" if status == "error" else None, ts, ts)
             for i, (folder, kind, hashed, status) in enumerate(photos)])
        cat.conn.executemany(
            "INSERT INTO stage_status(photo_id, stage, state, version, runs, updated_at) VALUES (?, ?, ?, ?, 1, ?)",
            [(photo + 1, stage, state, version, ts) for photo, stage, state, version in stage_rows])


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Catalog:
    c = Catalog(LibraryPaths(tmp_path_factory.mktemp("status") / "lib"))
    yield c
    c.close()


@st.composite
def catalogs(draw):
    folders = draw(st.lists(st.sampled_from(["online", "offline"]), min_size=1, max_size=3))
    photos = draw(st.lists(st.tuples(
        st.integers(0, len(folders) - 1),
        st.sampled_from(["image", "image", "image", "video", "raw"]),
        st.booleans() | st.just(True),                                       # content hash (False: unreadable)
        st.sampled_from(["pending", "ok", "ok", "error", "gone", "unsupported"]),
    ), min_size=8, max_size=40))
    versions = {name: draw(st.integers(1, 3)) for name, _ in STAGES}
    pipeline_like = draw(st.booleans())   # a stage runs only where what it needs is done: many photos blocked
    rows = []
    for photo in range(len(photos)):
        done = set()
        for name, requires in STAGES:
            current, old = versions[name], versions[name] % 3 + 1           # mostly the current version
            row = draw(st.none() | st.tuples(st.sampled_from(["done", "done", "error"]),
                                             st.sampled_from([current, current, old])))
            if row is None or (pipeline_like and not done.issuperset(requires)):
                continue
            rows.append((photo, name, row[0], row[1]))
            if row == ("done", current):
                done.add(name)
    # Which stages the caller asks about: all or a subset (requires may name a stage not asked about). None asked:
    # test_no_stages.
    asked = draw(st.lists(st.sampled_from(STAGES), unique_by=lambda s: s[0], min_size=1,
                          max_size=len(STAGES)))
    with_requires = draw(st.booleans())
    stages = [(n, versions[n], r) if with_requires else (n, versions[n]) for n, r in asked]
    return folders, photos, rows, stages


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(catalogs())
def test_status_summary_matches_the_old_queries(cat, example):
    folders, photos, rows, stages = example
    fill(cat, folders, photos, rows)
    assert cat.status_summary(stages) == old_status_summary(cat, stages)


def test_every_count_kind_is_exercised(cat):
    """A hand-made catalog where each stage number is non-zero, so the comparison above cannot pass on zeros."""
    photos = [(0, "image", True, "ok")] * 4 + [(0, "image", False, "error"), (0, "video", True, "ok"),
                                               (1, "image", True, "ok"), (0, "image", True, "gone")]
    rows = [(0, "thumbnail", "done", 1), (0, "faces", "done", 2),          # done everywhere it ran
            (1, "thumbnail", "error", 1),                                   # thumbnail failed: faces/concepts blocked
            (2, "thumbnail", "done", 1), (2, "faces", "error", 2),         # faces failed: concepts blocked
            (3, "thumbnail", "done", 1), (3, "faces", "done", 1)]          # faces done by an old version: pending
    fill(cat, ["online", "offline"], photos, rows)
    stages = [("thumbnail", 1, ()), ("faces", 2, ("thumbnail",)), ("concepts", 1, ("faces",))]
    got = cat.status_summary(stages)
    assert got == old_status_summary(cat, stages)
    assert got["stages"] == {
        "thumbnail": {"done": 3, "errors": 1, "blocked": 1, "pending": 0},   # photo 4: no content hash
        "faces": {"done": 1, "errors": 1, "blocked": 2, "pending": 1},
        "concepts": {"done": 0, "errors": 0, "blocked": 3, "pending": 2},
    }
    assert [f["photos"] for f in got["folders"]] == [6, 1]
    assert got["photos"]["offline"] == 1 and got["photos"]["gone"] == 1


def test_no_stages(cat):
    fill(cat, ["online"], [(0, "image", True, "ok"), (0, "image", False, "pending")], [(0, "thumbnail", "done", 1)])
    got = cat.status_summary()
    assert got == old_status_summary(cat, ()) and got["stages"] == {} and got["photos"]["total"] == 2
