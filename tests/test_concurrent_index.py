"""Two indexing runs on one library at once (issue 16, item 1): two `myvlm index` commands, or the app's folder
watcher and a command, end with what one run gives (the same faces, groups and captions), each photo's stage done
once, and a library `myvlm check` finds whole. A photo's stage is claimed by one run (engine/storage/claims.py); a dead
process's claims are taken over; a library damaged by the old behaviour (every face stored twice) is repaired by
`myvlm check --clean`, keeping every name and confirmation.

Real parts: the real CLI in subprocesses, dlib's face models, the KPhotoAlbum demo photos, the tiny BLIP-2 preset
(random weights) for captions.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine.admin.integrity import check_library
from engine.ingest.watch import FolderWatcher
from engine.library import Library
from engine.storage.claims import ClaimOwner

from .conftest import ROOT, myvlm

# a third of the demo album: two people with three or more photos each, faces nobody else has, no faces at all
SUBSET = ["anne_helene.jpg", "bar55.jpg", "bar55_2.jpg", "cold_water.jpg", "grand_canyon_2.jpg", "jesper.jpg",
          "jesper_2.jpg", "new_wave_2.jpg", "qt-logo.jpg", "snow.jpg"]
VLM = "tiny-blip2"
WAIT_S = 600
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def index_cmd(library: Path, album: Path) -> list[str]:
    return [sys.executable, "-m", "myvlm_cli", "--library", str(library), "--face-backend", "dlib", "--vlm", VLM,
            "index", str(album), "--no-progress", "--json"]


def start_index(library: Path, album: Path) -> subprocess.Popen:
    return subprocess.Popen(index_cmd(library, album), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)["pipeline"]["stages"]


def ro_query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:   # not created yet
        return []
    finally:
        conn.close()


def snapshot(library: Path) -> dict:
    """What a user sees of an indexed library, by photo name (ids differ between libraries)."""
    db = library / "library.db"
    faces = ro_query(db, "SELECT p.name, round(f.x), round(f.y), round(f.w), round(f.h), f.person_id "
                         "FROM faces f JOIN photos p ON p.id = f.photo_id")
    groups: dict[int, set] = {}
    for name, x, y, w, h, pid in faces:
        if pid is not None:
            groups.setdefault(pid, set()).add((name, x, y, w, h))
    return {
        "faces": sorted(f[:5] for f in faces),
        "groups": sorted(sorted(g) for g in groups.values()),
        "people": ro_query(db, "SELECT COUNT(*) FROM people")[0][0],
        "captions": sorted(ro_query(db, "SELECT p.name, c.kind, c.template FROM captions c "
                                        "JOIN photos p ON p.id = c.photo_id")),
        "done": sorted(ro_query(db, "SELECT stage, COUNT(*) FROM stage_status WHERE state = 'done' GROUP BY stage")),
    }


def assert_whole(library: Path) -> None:
    res = myvlm("check", library=library, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    db = library / "library.db"
    assert ro_query(db, "SELECT stage, photo_id, runs FROM stage_status WHERE runs > 1") == []
    assert ro_query(db, "SELECT * FROM stage_claims") == []   # every run gave its claims back


@pytest.fixture(scope="module")
def album(tmp_path_factory: pytest.TempPathFactory, test_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("concurrent") / "album"
    folder.mkdir()
    for name in SUBSET:
        shutil.copy(test_data / "kphotoalbum" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def single(album: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What one run alone makes of the album."""
    library = tmp_path_factory.mktemp("single") / "library"
    finish(start_index(library, album))
    snap = snapshot(library)
    assert len(snap["groups"]) >= 2 and len(snap["faces"]) > len(SUBSET)   # the comparison means something
    assert len(snap["captions"]) == len(SUBSET)
    return {**snap, "library": library}


def same_as_one_run(library: Path, single: dict) -> bool:
    return snapshot(library) == {k: v for k, v in single.items() if k != "library"}


def test_two_index_commands_at_once_equal_one(album: Path, single: dict, tmp_path: Path):
    library = tmp_path / "library"
    procs = [start_index(library, album) for _ in range(2)]
    reports = [finish(p) for p in procs]
    assert same_as_one_run(library, single)
    assert_whole(library)
    for stage in ("faces", "concepts", "captions"):
        # each photo's stage ran in exactly one of the two runs; the other waited for it or did other photos
        ran = sum(r[stage]["processed"] + r[stage]["cached"] for r in reports)
        assert ran == len(SUBSET), (stage, reports)


def test_watcher_and_index_command_at_once_equal_one(album: Path, single: dict, tmp_path: Path):
    library = tmp_path / "library"
    with Library(library) as lib:   # the app's settings: what the watcher's runs use
        lib.catalog.set_setting("face_backend", "dlib")
        lib.catalog.set_setting("vlm", VLM)
        lib.add_folder(album)
    db = library / "library.db"
    proc = start_index(library, album)
    wait_until(lambda: ro_query(db, "SELECT 1 FROM stage_claims WHERE stage = 'faces'"),
               lambda: proc.poll() is None, "the command finding faces")
    updates = []
    watcher = FolderWatcher(library, open_library=Library, on_update=updates.append, debounce=0.2, stable_wait=0.3, max_delay=5.0)
    watcher.start(timeout=WAIT_S)
    try:
        report = finish(proc)
        assert watcher.wait_idle(timeout=WAIT_S, quiet=0.5) and watcher.error is None, watcher.error
    finally:
        watcher.stop()
    startup = next(u for u in updates if u.startup)
    faces = startup.pipeline.stages["faces"]
    # the watcher's run met the command's: it found faces on photos the command had not claimed, or waited
    assert faces.processed + faces.elsewhere > 0, startup.pipeline.to_json()
    assert faces.processed + report["faces"]["processed"] == len(SUBSET)
    assert same_as_one_run(library, single)
    assert_whole(library)


def dead_process_owner() -> ClaimOwner:
    """The identity of a process that ran on this machine and has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return ClaimOwner("dead-run", proc.pid, socket.gethostname(), started)


def claim_all(library: Path, stage: str, owner: ClaimOwner, expires: float, limit: int = -1) -> int:
    """Claims as another run leaves them: every photo's (or the first `limit` photos') stage, expiring then."""
    with Library(library) as lib, lib.catalog.write():
        return lib.catalog.conn.execute(
            "INSERT INTO stage_claims(photo_id, stage, token, pid, host, started, expires) "
            "SELECT id, ?, ?, ?, ?, ?, ? FROM photos ORDER BY id LIMIT ?",
            [stage, owner.token, owner.pid, owner.host, owner.started, expires, limit]).rowcount


def wait_until(condition, still_running, what: str, poll_s: float = 0.05) -> None:
    """Until `condition()`; fails if the work under test stopped first, or after WAIT_S (a hang guard for a busy
    machine, not a speed limit)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert still_running(), f"stopped before {what}"
        assert time.monotonic() < deadline, f"no {what} in {WAIT_S} s: hung?"
        time.sleep(poll_s)


def test_claims_of_a_dead_or_silent_run_are_taken_over(album: Path, tmp_path: Path):
    library = tmp_path / "library"
    with Library(library) as lib:
        lib.catalog.set_setting("face_backend", "dlib")
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail"])
    # a run killed while finding faces (kill -9: it could not give its claims back) ...
    assert claim_all(library, "faces", dead_process_owner(), time.time() + 3600) == len(SUBSET)
    with Library(library) as lib:
        report = lib.process(stages=["faces"])
        assert report.stages["faces"].processed == len(SUBSET) and report.stages["faces"].elsewhere == 0
    # ... and a live process whose run stopped renewing its claims (hung, or on another machine sharing the library)
    live = ClaimOwner("silent-run", os.getppid(), socket.gethostname(), psutil.Process(os.getppid()).create_time())
    assert claim_all(library, "concepts", live, time.time() - 1) == len(SUBSET)
    with Library(library) as lib:
        assert lib.process(stages=["concepts"]).stages["concepts"].processed == len(SUBSET)
        assert check_library(lib.catalog).ok
        assert lib.catalog.query("SELECT * FROM stage_claims") == []


def test_a_paused_run_holds_no_photo_another_run_could_do(album: Path, tmp_path: Path):
    library = tmp_path / "library"
    with Library(library) as lib:
        lib.catalog.set_setting("face_backend", "dlib")
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail"])
    db = library / "library.db"
    events: list = []
    result: dict = {}

    def run() -> None:
        with Library(library) as lib:
            result["pipe"] = pipe = lib.pipeline(["faces"])
            pipe.subscribe(events.append)
            result["report"] = lib.process(pipeline=pipe)

    runner = threading.Thread(target=run, daemon=True)   # a failed test must not hang the session
    runner.start()
    in_flight = 2 * 2   # the faces stage's two workers, two photos each at most
    wait_until(lambda: ro_query(db, "SELECT COUNT(*) FROM stage_claims")[0][0] > in_flight, runner.is_alive,
               "photos claimed but not started", poll_s=0.01)
    result["pipe"].pause()
    try:
        wait_until(lambda: any(e.state == "paused" for e in events), runner.is_alive, "the pause")
        paused_done = ro_query(db, "SELECT COUNT(*) FROM stage_status WHERE stage = 'faces'")[0][0]
        assert paused_done < len(SUBSET)
        assert ro_query(db, "SELECT COUNT(*) FROM stage_claims")[0][0] == 0   # given back while paused
    finally:
        result["pipe"].resume()
    runner.join(WAIT_S)
    assert not runner.is_alive() and result["report"].stages["faces"].processed == len(SUBSET)
    assert ro_query(db, "SELECT COUNT(*) FROM stage_claims")[0][0] == 0


def test_a_run_waits_for_photos_a_live_run_holds_then_finishes(album: Path, tmp_path: Path):
    library = tmp_path / "library"
    with Library(library) as lib:
        lib.catalog.set_setting("face_backend", "dlib")
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail"])
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        owner = ClaimOwner("other-run", holder.pid, socket.gethostname(), psutil.Process(holder.pid).create_time())
        assert claim_all(library, "faces", owner, time.time() + 3600, limit=2) == 2   # the other run holds two
        events: list = []
        result: dict = {}

        def run() -> None:   # a catalog connection belongs to its thread: the run opens its own
            with Library(library) as lib:
                pipe = lib.pipeline(["faces"])
                pipe.subscribe(events.append)
                result["report"] = lib.process(pipeline=pipe)
                result["ok"] = check_library(lib.catalog).ok

        runner = threading.Thread(target=run, daemon=True)   # a failed test must not hang the session
        runner.start()
        wait_until(lambda: any("another indexing run" in e.current for e in events), runner.is_alive,
                   "the wait for the other run")
        time.sleep(1.0)
        assert runner.is_alive()   # it waits while the holder lives, and leaves the holder's two photos alone
        db = library / "library.db"
        assert ro_query(db, "SELECT COUNT(*) FROM stage_status WHERE stage = 'faces'")[0][0] == len(SUBSET) - 2
        holder.kill()              # the other run dies without a word: its two photos are taken over
        holder.wait()
        runner.join(WAIT_S)
        assert not runner.is_alive()
        faces = result["report"].stages["faces"]
        assert faces.processed == len(SUBSET) and faces.elsewhere == 0 and result["ok"]
    finally:
        holder.kill()
        holder.wait()


# -- the roots: a stage's commit and the clustering after it ---------------------------------------------------------

def test_a_photos_faces_committed_by_two_runs_are_stored_once(album: Path, tmp_path: Path):
    """Two runs that both found a photo's faces before either stored them (a claim lost, e.g. a run that hung past
    its expiry) store them once: the commit replaces the photo's faces, it does not append."""
    from engine.pipeline.faces import FaceStage

    with Library(tmp_path / "library") as lib:
        lib.catalog.set_setting("face_backend", "dlib")
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail"])
        cat = lib.catalog
        row = next(r for r in cat.pending_for_stage("faces", 0) if r["name"] == "jesper_2.jpg")
        runs = [FaceStage(), FaceStage()]
        results = []
        for stage in runs:   # both read the photo (no faces yet) and find its faces
            stage.setup(cat)
            job = _job(row)
            stage.before_work(cat, [job])
            results.append(stage.process(job))
        for stage, result in zip(runs, results):
            with cat.write():
                stage.commit(cat, _job(row), result)
        stored = cat.query("SELECT id FROM faces WHERE photo_id = ?", [row["id"]])
        assert len(stored) == len(results[0].faces) >= 1
        assert check_library(cat).ok


def _job(row):
    from engine.pipeline.runner import Job

    return Job(row["id"], row["path_bytes"], row["content_hash"], row["name"])


def _forget_clustering(lib: Library) -> None:
    with lib.catalog.write():
        lib.catalog.conn.execute("UPDATE faces SET person_id = NULL, state = 'unknown', similarity = NULL")
        lib.catalog.conn.execute("DELETE FROM people")
        lib.catalog.conn.execute("DELETE FROM settings WHERE key LIKE 'faces_clustered:%'")


def test_two_runs_clustering_the_same_faces_at_once_make_each_group_once(single: dict, tmp_path: Path):
    from engine.domain.face_clustering import FaceClusterer
    from engine.storage.catalog import Catalog

    library = tmp_path / "library"
    shutil.copytree(single["library"], library, ignore=shutil.ignore_patterns("logs"))
    with Library(library) as lib:
        _forget_clustering(lib)
        backend = lib.face_backend()
        other = Catalog(lib.paths)   # the other run's connection

        def clusterer(cat: Catalog) -> FaceClusterer:
            return FaceClusterer(cat, backend.key, backend.embedding_dim, backend.thresholds)

        mine, theirs = clusterer(lib.catalog), clusterer(other)
        search = mine.index.search
        raced = []

        def search_while_the_other_run_clusters(*args, **kw):
            if not raced:   # the other run places the same faces between this run's search and its writing
                raced.append(theirs.run())
            return search(*args, **kw)

        mine.index.search = search_while_the_other_run_clusters
        mine.run()
        other.close()
        assert raced and raced[0].founded_people >= 2
    snap = snapshot(library)
    assert snap["groups"] == single["groups"] and snap["people"] == single["people"]


# -- a library damaged by older versions --------------------------------------------------------------------------

def store_every_face_twice(lib: Library) -> dict[int, int]:
    """The damage two runs at once did before claims: each run stored every face, and clustered its own copies
    into groups of their own. Returns {original face id: its copy's id}."""
    q, ex = lib.catalog.query, lib.catalog.conn.execute
    copies: dict[int, int] = {}
    with lib.catalog.write():
        twins = {r["id"]: int(ex("INSERT INTO people(name, hidden, created_at, updated_at) "
                                 "SELECT NULL, 0, created_at, updated_at FROM people WHERE id = ?",
                                 [r["id"]]).lastrowid) for r in q("SELECT id FROM people")}
        for r in q("SELECT * FROM faces ORDER BY id"):
            copies[r["id"]] = int(ex(
                "INSERT INTO faces(photo_id, backend, x, y, w, h, landmarks, score, quality, embedding, person_id, "
                "state, similarity, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [r["photo_id"], r["backend"], r["x"], r["y"], r["w"], r["h"], r["landmarks"], r["score"],
                 r["quality"], r["embedding"], twins.get(r["person_id"]), r["state"], r["similarity"],
                 r["created_at"], r["updated_at"]]).lastrowid)
        ex("UPDATE stage_status SET runs = 2 WHERE stage = 'faces'")
    return copies


def test_check_clean_repairs_faces_stored_twice_keeping_names_and_confirmations(single: dict, tmp_path: Path):
    library = tmp_path / "library"
    shutil.copytree(single["library"], library, ignore=shutil.ignore_patterns("logs"))
    with Library(library) as lib:
        people = lib.people()
        first, second = sorted(people.people(named=False), key=lambda p: p["id"])[:2]
        copies = store_every_face_twice(lib)
        twin_of_second = lib.catalog.scalar("SELECT person_id FROM faces WHERE id = ?",
                                            [copies[people.faces_of(second["id"])[0]["id"]]])
        # the user, on the damaged library: names a group, names the copy of another, says "not Jesper" on a
        # copy of a face no group holds
        shown = len(people.faces_of(first["id"])) + len(people.faces_of(twin_of_second))
        jesper = people.name(first["id"], "Jesper")
        anne = people.name(twin_of_second, "Anne Helene")
        loose = lib.catalog.scalar("SELECT id FROM faces WHERE person_id IS NULL ORDER BY id LIMIT 1")
        assert loose is not None
        people.reject(copies[loose], jesper)
        confirmed = sorted(tuple(r) for r in lib.catalog.query(
            "SELECT p.name, round(f.x), round(f.y) FROM faces f JOIN people p ON p.id = f.person_id "
            "WHERE f.state = 'confirmed'"))
        assert len(confirmed) == shown
    res = myvlm("check", library=library, check=False)
    assert res.returncode == 1 and "same face stored" in res.stdout and "more than once" in res.stdout

    res = myvlm("check", "--clean", "--json", library=library, check=False)
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["ok"], out
    assert any("stored twice removed" in line for line in out["repaired"]), out
    assert_whole(library)
    snap = snapshot(library)
    assert snap["faces"] == single["faces"] and snap["groups"] == single["groups"]
    assert snap["people"] == single["people"]   # the groups made of copies are gone; both names are kept
    with Library(library) as lib:
        q = lib.catalog.query
        assert sorted(tuple(r) for r in q(
            "SELECT p.name, round(f.x), round(f.y) FROM faces f JOIN people p ON p.id = f.person_id "
            "WHERE f.state = 'confirmed'")) == confirmed
        assert {r[0] for r in q("SELECT name FROM people WHERE name IS NOT NULL")} == {"Jesper", "Anne Helene"}
        assert [tuple(r) for r in q("SELECT face_id, person_id FROM face_rejections")] == [(loose, jesper)]
        assert lib.people().find("Anne Helene")["id"] == anne
