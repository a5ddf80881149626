"""Library backup, restore and move (engine/admin/backup.py, `myvlm backup|restore|move-library`).

A small real library: four real photos indexed (thumbnails, dlib faces), the face group named and made a concept
with its face head, a caption typed by the user, a concept embedding file and an imported research-layout concept
(whose training image lives inside the library). The photos are hashed before and after: they are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine import errors
from engine.admin.backup import (
    MANIFEST,
    BackupError,
    Cancelled,
    backup_library,
    library_in_use,
    move_library,
    restore_library,
    verify_backup,
)
from engine.library import Library
from engine.progress import Progress
from engine.storage.library_folder import LibraryPaths, follow_moves

from .conftest import myvlm
from .helpers import album_snapshot

TABLES = {  # table: its ordering key
    "folders": "id", "photos": "id", "people": "id", "faces": "id", "face_rejections": "face_id, person_id",
    "concepts": "id", "concept_signals": "photo_id, concept_id", "captions": "id", "settings": "key",
}


def make_library(root: Path, album: Path, test_data: Path) -> dict:
    """Index four real photos and give the library everything a backup must keep. Returns what was made."""
    album.mkdir(parents=True, exist_ok=True)
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copy(test_data / "face_recognition" / name, album / name)
    lib = Library(root)
    try:
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail", "faces"])
        people = lib.people()
        group = max(people.people(), key=lambda p: len(people.faces_of(p["id"])))
        pid = people.name(group["id"], "Barack Obama")
        concept = lib.person_concept(pid)
        photo = lib.catalog.photo_by_path(album / "obama2.jpg")
        lib.captions().put_user_caption(photo.id, "Barack Obama at the lectern")
        lib.catalog.set_setting("face_backend", "dlib")

        from engine.domain.personalize.embeddings import ConceptEmbedding, EmbeddingStore

        rng = np.random.default_rng(0)
        emb_path = EmbeddingStore(lib.paths.concepts).save(ConceptEmbedding(
            concept_id=concept.id, checkpoint="tiny-blip2", family="blip2", task="caption", identifier="Barack Obama",
            values=rng.normal(size=(1, 32)).astype(np.float32), keys=rng.normal(size=(3, 16)).astype(np.float32),
            step=5, steps_total=5, history={5: rng.normal(size=(1, 32)).astype(np.float32)}))

        from engine.domain.concepts.research import import_research_concept

        research = root.parent / "research" / "mug"
        research.mkdir(parents=True)
        shutil.copy(test_data / "kphotoalbum" / "snow.jpg", research / "1.jpg")
        (research / "captions.json").write_text(json.dumps({"1.jpg": ["sks on a snowy table"]}))
        mug = import_research_concept(lib.concepts(), research, name="Mug")
        return {"concept": concept.id, "mug": mug.id, "embedding": emb_path, "person": pid}
    finally:
        lib.close()


def dump(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY {key}").fetchall() for t, key in TABLES.items()}
    finally:
        conn.close()


def files_of(root: Path, sub: str) -> dict[str, bytes]:
    base = root / sub
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def example_images(root: Path) -> list[bytes]:
    """The imported training images as the app finds them (engine/domain/personalize/service.py resolves the same way)."""
    conn = sqlite3.connect(root / "library.db")
    try:
        rows = conn.execute("SELECT concept_id, path FROM concept_examples WHERE path IS NOT NULL").fetchall()
    finally:
        conn.close()
    out = []
    for cid, path in rows:
        p = Path(path)
        p = p if p.is_absolute() else root / "concepts" / str(cid) / p
        out.append(p.read_bytes())
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory, test_data: Path):
    base = tmp_path_factory.mktemp("backup-src")
    made = make_library(base / "library", base / "album", test_data)
    return {"root": base / "library", "album": base / "album", **made}


def test_the_library_has_what_a_backup_must_keep(source):
    d = dump(source["root"] / "library.db")
    assert len(d["photos"]) == 4 and any(r[1] == "Barack Obama" for r in d["people"])
    assert {r[2] for r in d["concepts"]} == {"Barack Obama", "Mug"} and d["captions"]
    root = source["root"]
    assert (root / "concepts" / str(source["concept"]) / "head.safetensors").is_file()
    assert source["embedding"].is_file() and list((root / "faces").glob("*.jpg"))
    assert example_images(root)   # the imported image, stored by its absolute path inside the library


def test_round_trip_keeps_rows_and_files_byte_identical(source, tmp_path: Path):
    album_before = album_snapshot(source["album"])
    rep = backup_library(source["root"], tmp_path / "backup", with_thumbnails=True)
    assert Path(rep.path) == tmp_path / "backup" and rep.counts["photos"] == 4
    manifest = json.loads((tmp_path / "backup" / MANIFEST).read_text())
    assert manifest["app_version"] and manifest["with_thumbnails"] is True
    assert all(len(m["sha256"]) == 64 for m in manifest["files"].values())
    assert not any(rel.startswith(("previews/", "models/", "logs/")) for rel in manifest["files"])

    target = tmp_path / "restored"
    res = restore_library(tmp_path / "backup", target)
    assert res.replaced is False and res.thumbnails_to_rebuild == 0
    assert dump(target / "library.db") == dump(source["root"] / "library.db")
    for sub in ("concepts", "faces", "thumbs"):
        assert files_of(target, sub) == files_of(source["root"], sub), sub
    emb = source["embedding"].relative_to(source["root"])
    assert (target / emb).read_bytes() == source["embedding"].read_bytes()
    # the imported training image is found inside the restored library, not the old one
    assert example_images(target) == example_images(source["root"])
    conn = sqlite3.connect(target / "library.db")
    paths = [r[0] for r in conn.execute("SELECT path FROM concept_examples WHERE path IS NOT NULL")]
    conn.close()
    assert paths and all(not Path(p).is_absolute() for p in paths)
    # the restored library opens and works
    with Library(target) as lib:
        st = lib.status()
        assert st["photos"]["ok"] == 4 and st["people"]["named"] == 1
        assert lib.captions().caption(lib.catalog.photo_by_path(source["album"] / "obama2.jpg").id) \
            == "Barack Obama at the lectern"
        from engine.domain.personalize.embeddings import EmbeddingStore

        assert EmbeddingStore(lib.paths.concepts).load(source["concept"], "tiny-blip2", "caption").step == 5
    assert album_snapshot(source["album"]) == album_before


def test_backup_without_thumbnails_rebuilds_them_after_restore(source, tmp_path: Path):
    rep = backup_library(source["root"], tmp_path / "b")
    assert not any(k.startswith("thumbs/") for k in json.loads((tmp_path / "b" / MANIFEST).read_text())["files"])
    res = restore_library(rep.path, tmp_path / "lib")
    assert res.thumbnails_to_rebuild == 4
    with Library(tmp_path / "lib") as lib:
        assert lib.status()["stages"]["thumbnail"]["pending"] == 4
        lib.process(stages=["thumbnail"])
        assert lib.status()["stages"]["thumbnail"]["pending"] == 0
    assert len(list((tmp_path / "lib" / "thumbs").rglob("*.jpg"))) == 4


WRITER = """
import sqlite3, sys, pathlib
db, stop = sys.argv[1], pathlib.Path(sys.argv[2])
conn = sqlite3.connect(db, timeout=30, isolation_level=None)
conn.execute("PRAGMA journal_mode = WAL")
i = 0
while not stop.exists():   # each transaction adds a row and moves the "last" marker: half of one would show
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO settings(key, value) VALUES (?, ?)", [f"w.{i:06d}", str(i)])
    conn.execute("INSERT INTO settings(key, value) VALUES ('w.last', ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [str(i)])
    conn.execute("COMMIT")
    i += 1
conn.close()
"""


def _last_written(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        row = conn.execute("SELECT value FROM settings WHERE key = 'w.last'").fetchone()
    finally:
        conn.close()
    return -1 if row is None else int(json.loads(row[0]))


def test_backup_while_another_process_writes_is_consistent(source, tmp_path: Path):
    lib_root = tmp_path / "busy"
    restore_library(backup_library(source["root"], tmp_path / "seed").path, lib_root)
    db, stop = lib_root / "library.db", tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(stop)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _last_written(db) < 50 and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.02)
        assert library_in_use(lib_root)
        before = _last_written(db)
        reps = [backup_library(lib_root, tmp_path / f"snap{n}") for n in range(3)]
        after = _last_written(db)
    finally:
        stop.touch()
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert after > before   # the writer kept committing while the backups ran
    for rep in reps:
        verify_backup(rep.path)
        conn = sqlite3.connect(Path(rep.path) / "library.db")
        last = int(json.loads(conn.execute("SELECT value FROM settings WHERE key = 'w.last'").fetchone()[0]))
        rows = [int(json.loads(v)) for (v,) in conn.execute(
            "SELECT value FROM settings WHERE key LIKE 'w.0%' ORDER BY key")]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        assert rows == list(range(last + 1))   # every committed transaction, and no half of one
        assert before <= last <= after


def test_a_stopped_backup_leaves_nothing_that_looks_complete(source, tmp_path: Path):
    flag = threading.Event()

    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.phase == "files" and p.done >= 2:
            flag.set()

    with pytest.raises(Cancelled):
        backup_library(source["root"], tmp_path / "b", with_thumbnails=True, progress=progress, cancel=flag)
    assert [p.phase for p in seen[:2]] == ["catalog", "files"] and all(isinstance(p, Progress) for p in seen)
    assert isinstance(Cancelled("x"), errors.Cancelled)   # front doors report it quietly
    assert list(tmp_path.iterdir()) == []   # neither the backup nor its temporary folder
    # what a killed backup leaves (everything but the manifest, which is written last) is refused
    rep = backup_library(source["root"], tmp_path / "b")
    (Path(rep.path) / MANIFEST).unlink()
    with pytest.raises(BackupError, match="not a complete MyVLM backup"):
        restore_library(rep.path, tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


def _corrupt_page(db: Path) -> None:
    """Overwrite the page that holds the photos table with garbage (what a bad sector or a torn copy does)."""
    conn = sqlite3.connect(db)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'photos'").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    start = (root - 1) * page_size
    data[start:start + page_size] = np.random.default_rng(1).integers(0, 256, page_size, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))


def test_a_damaged_backup_is_refused_and_the_library_left_alone(source, tmp_path: Path):
    target = tmp_path / "lib"
    restore_library(backup_library(source["root"], tmp_path / "seed").path, target)
    before_rows, before_concepts = dump(target / "library.db"), files_of(target, "concepts")
    before_db = (target / "library.db").read_bytes()

    rep = backup_library(source["root"], tmp_path / "damaged")
    _corrupt_page(Path(rep.path) / "library.db")
    with pytest.raises(BackupError, match=r"damaged: library.db does not match its checksum"):
        verify_backup(rep.path)
    res = myvlm("restore", rep.path, "--force", "--no-progress", library=target, check=False)
    assert res.returncode == 2 and "does not match its checksum" in res.stderr and "Nothing was restored" in res.stderr

    # the same damage with the manifest made to match: SQLite's integrity check catches it
    manifest = json.loads((Path(rep.path) / MANIFEST).read_text())
    from engine.admin.backup import sha256_file

    digest, size = sha256_file(Path(rep.path) / "library.db")
    manifest["files"]["library.db"] = {"sha256": digest, "size": size}
    (Path(rep.path) / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="integrity check|cannot be read by SQLite"):
        restore_library(rep.path, target, force=True)
    # a missing concept file
    rep2 = backup_library(source["root"], tmp_path / "missing")
    next((Path(rep2.path) / "concepts").rglob("head.safetensors")).unlink()
    with pytest.raises(BackupError, match="head.safetensors is missing"):
        restore_library(rep2.path, target, force=True)

    assert (target / "library.db").read_bytes() == before_db
    assert dump(target / "library.db") == before_rows and files_of(target, "concepts") == before_concepts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged", "lib", "missing", "seed"]  # no leftovers


def test_restore_refuses_to_replace_a_library_without_force(source, tmp_path: Path):
    rep = backup_library(source["root"], tmp_path / "b")
    target = tmp_path / "lib"
    restore_library(rep.path, target)
    with Library(target) as lib:
        lib.captions().put_user_caption(1, "changed after the backup")
        changed = lib.captions().caption(1)
    with pytest.raises(BackupError, match="already holds a library .*--force"):
        restore_library(rep.path, target)
    with Library(target) as lib:   # open elsewhere: refused even with force
        with pytest.raises(BackupError, match="is open"):
            restore_library(rep.path, target, force=True)
        assert lib.captions().caption(1) == changed
    (target / "downloaded-model-stand-in").mkdir()   # a folder that is not only a library is never replaced
    with pytest.raises(BackupError, match="not part of a MyVLM library"):
        restore_library(rep.path, target, force=True)
    (target / "downloaded-model-stand-in").rmdir()
    (target / "models" / "weights.bin").write_bytes(b"w" * 1000)   # downloads survive a restore
    res = restore_library(rep.path, target, force=True)
    assert res.replaced is True
    with Library(target) as lib:
        assert lib.captions().caption(1) != changed
    assert (target / "models" / "weights.bin").read_bytes() == b"w" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "lib"]


def test_cli_backup_and_restore(source, tmp_path: Path):
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "older").mkdir()   # a folder of backups: a new dated one goes inside
    out = json.loads(myvlm("backup", str(backups), "--json", library=source["root"]).stdout)
    assert Path(out["path"]).parent == backups and Path(out["path"]).name.startswith("myvlm-backup-")
    assert out["counts"]["photos"] == 4 and out["with_thumbnails"] is False
    restored = tmp_path / "restored"
    text = myvlm("restore", out["path"], "--library", str(restored), "--no-progress").stdout
    assert "4 photos" in text and "thumbnail(s) will be made again" in text
    with Library(restored) as lib:
        st = lib.status()
    assert st["photos"]["total"] == 4 and st["people"]["named"] == 1 and st["concepts"] == {"object": 1, "person": 1}
    res = myvlm("restore", out["path"], "--no-progress", library=restored, check=False)
    assert res.returncode == 2 and "--force" in res.stderr


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MYVLM_LIBRARY"}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    return env


def test_move_library_keeps_everything_and_never_touches_the_photos(tmp_path: Path, test_data: Path, monkeypatch):
    env = _isolated_env(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MYVLM_LIBRARY", raising=False)
    from engine.storage.library_folder import default_library_path, library_pointer_file

    old = default_library_path()
    assert old == tmp_path / "data" / "myvlm-desktop" / "library"
    made = make_library(old, tmp_path / "album", test_data)
    album_before = album_snapshot(tmp_path / "album")
    rows_before = dump(old / "library.db")
    files_before = {sub: files_of(old, sub) for sub in ("concepts", "faces", "thumbs", "previews")}
    images_before = example_images(old)

    new = tmp_path / "disk2" / "Pictures library"
    with Library(old):   # open in the app: refused, nothing changes
        with pytest.raises(BackupError, match="is open"):
            move_library(old, new)
        assert not new.parent.exists()
    out = json.loads(myvlm("move-library", str(new), "--json", env=env).stdout)
    assert out["default"] is True and out["old_deleted"] is False and Path(out["pointer"]) == library_pointer_file()
    assert dump(new / "library.db") == rows_before
    for sub, files in files_before.items():
        assert files_of(new, sub) == files, sub
    assert example_images(new) == images_before
    assert old.is_dir() and dump(old / "library.db") == rows_before   # kept until you say so
    # the default library is the new one now, for the CLI and the desktop app's remembered library
    st = json.loads(myvlm("status", "--json", env=env).stdout)
    assert st["library"] == str(new) and st["photos"]["ok"] == 4 and st["people"]["named"] == 1
    assert default_library_path() == new and follow_moves(old) == new
    with Library(new) as lib:
        from engine.domain.personalize.embeddings import EmbeddingStore

        assert EmbeddingStore(lib.paths.concepts).load(made["concept"], "tiny-blip2", "caption").step == 5

    # and again, deleting the old folder this time
    newer = tmp_path / "disk3"
    newer.mkdir()   # an empty folder is fine
    text = myvlm("move-library", str(newer), "--delete-old", "--no-progress", env=env).stdout
    assert "was removed" in text and not new.exists()
    assert dump(newer / "library.db") == rows_before and follow_moves(old) == newer
    assert example_images(newer) == images_before   # found inside the library that moved, not the removed one
    assert default_library_path() == newer
    assert album_snapshot(tmp_path / "album") == album_before   # the photos: same bytes, same times, same names


def test_move_refuses_bad_destinations(source, tmp_path: Path):
    lib = tmp_path / "lib"
    restore_library(backup_library(source["root"], tmp_path / "b").path, lib)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    for dest, msg in ((tmp_path / "full", "not an empty folder"), (lib / "inside", "inside one another"),
                      (lib, "already")):
        with pytest.raises(BackupError, match=msg):
            move_library(lib, dest, make_default=False)
    assert (tmp_path / "full" / "x.txt").read_text() == "x" and not (lib / "inside").exists()
    assert LibraryPaths(lib).db.is_file()


def test_settings_backs_up_and_moves_the_library_off_the_gui_thread(qtbot, source, tmp_path: Path, monkeypatch):
    from myvlm_desktop.settings_dialog import SettingsDialog
    from myvlm_desktop.tasks import EngineThread
    from myvlm_desktop.widgets import set_error_sink

    for k, v in _isolated_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    root = tmp_path / "lib"
    restore_library(backup_library(source["root"], tmp_path / "seed").path, root)
    rows = dump(root / "library.db")
    engine = EngineThread(root)
    dlg = SettingsDialog(engine, None)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitUntil(lambda: dlg.data is not None, timeout=60_000)
    tools = dlg.library_tools
    told, errors, chosen = [], [], []
    tools.tell = lambda title, text: told.append(text)
    tools.confirm = lambda title, text: True
    set_error_sink(lambda title, text: errors.append(text))
    dlg.libraryChosen.connect(chosen.append)
    try:
        tools.choose_folder = lambda title, start: str(root / "concepts")   # refused, and said so
        with qtbot.waitSignal(tools.failed, timeout=60_000):
            tools.backup_button.click()
        assert "inside the library itself" in errors[-1] and tools.backup_button.isEnabled()

        (tmp_path / "backups").mkdir()
        tools.choose_folder = lambda title, start: str(tmp_path / "backups")
        with qtbot.waitSignal(tools.finished, timeout=60_000) as sig:
            tools.backup_button.click()
        report = sig.args[1]
        assert Path(report.path).parent == tmp_path / "backups" and verify_backup(report.path)["counts"]["photos"] == 4
        assert "Your photos are not part of it" in told[-1]

        (tmp_path / "disk2").mkdir()
        (tmp_path / "disk2" / "other.txt").write_text("not empty")   # the library goes inside, as a new folder
        tools.choose_folder = lambda title, start: str(tmp_path / "disk2")
        with qtbot.waitSignal(tools.finished, timeout=60_000) as sig:
            tools.move_button.click()
        new = tmp_path / "disk2" / "lib"
        assert sig.args[1].new == str(new) and chosen == [str(new)]   # the window reopens on it
        assert dump(new / "library.db") == rows and files_of(new, "concepts") == files_of(root, "concepts")
        assert root.is_dir() and follow_moves(root) == new   # the old folder is kept; the move is remembered
        assert "was kept" in told[-1] and not errors[1:]

        # Settings closed while a backup runs: it finishes on its own thread, nothing is left half-done
        from myvlm_desktop import tasks

        dlg2 = SettingsDialog(engine, None)
        qtbot.addWidget(dlg2)
        dlg2.show()
        qtbot.waitUntil(lambda: dlg2.data is not None, timeout=60_000)
        (tmp_path / "later").mkdir()
        dlg2.library_tools.choose_folder = lambda title, start: str(tmp_path / "later")
        dlg2.library_tools.backup_button.click()
        dlg2.reject()   # before the worker can report back (that needs this event loop)
        assert dlg2.library_tools.orphaned
        qtbot.waitUntil(lambda: not tasks._orphans, timeout=60_000)
        done = list((tmp_path / "later").iterdir())
        assert len(done) == 1 and verify_backup(done[0])["counts"]["photos"] == 4
    finally:
        set_error_sink(None)
        engine.shutdown()


def test_move_keeps_a_linked_models_folder_as_a_link(source, tmp_path: Path, monkeypatch):
    for k, v in _isolated_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    lib = tmp_path / "lib"
    restore_library(backup_library(source["root"], tmp_path / "b").path, lib)
    shared = tmp_path / "shared-models"   # big downloads kept on another disk, linked into the library
    shared.mkdir()
    (shared / "weights.bin").write_bytes(b"w" * 100)
    shutil.rmtree(lib / "models")
    os.symlink("../shared-models", lib / "models")
    new = tmp_path / "disk2" / "lib"
    rep = move_library(lib, new, delete_old=True)
    assert rep.old_deleted and not lib.exists() and rep.default is False
    assert (new / "models").is_symlink() and (new / "models" / "weights.bin").read_bytes() == b"w" * 100
    assert (shared / "weights.bin").is_file()   # what the link points to is neither copied nor removed


def test_a_backup_carries_no_claim_of_a_run_working_on_the_library(source, tmp_path: Path):
    """A run indexing the library while it is backed up claims photos in the catalog; a restored copy has no such
    run, so it must not inherit them (its own runs would wait minutes for a claim nobody renews)."""
    from engine.storage.claims import ClaimOwner, claim

    live = tmp_path / "live"
    shutil.copytree(source["root"], live)
    with Library(live) as lib:
        photo = lib.photos()[0].id
        with lib.catalog.write():
            mine, _theirs = claim(lib.catalog, ClaimOwner.for_this_run(), "captions", 999, [photo], False)
        assert mine == {photo}
        rep = backup_library(live, tmp_path / "b")
        assert lib.catalog.scalar("SELECT COUNT(*) FROM stage_claims") == 1   # the live run still holds its claim
    restored = tmp_path / "restored"
    restore_library(rep.path, restored)
    conn = sqlite3.connect(restored / "library.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM stage_claims").fetchone()[0] == 0
    finally:
        conn.close()
