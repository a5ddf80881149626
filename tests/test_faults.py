"""Faults: kills, a full disk, two programs writing at once, a GPU out of memory. The library survives them all.

- `kill -9` of `myvlm index` while it finds faces and again during a caption batch, of `myvlm train` after its
  first checkpoint: the next run resumes, nothing is lost or done twice, and the library passes `myvlm check`
  (engine/admin/integrity.py: SQLite's integrity check plus the catalog's invariants); a resumed training ends on exactly
  the embedding of an uninterrupted one.
- A full disk, injected (OSError ENOSPC from the writes the code really makes: the thumbnail's JPEG, the checkpoint's
  safetensors file) and real (a small tmpfs, in a user and mount namespace): a clear message that says the disk is
  full and what to do, no half-written file, a whole database, and after freeing space the same command finishes.
- The desktop app's indexing process and its engine thread, and a `myvlm` command line, writing one library at
  once for seconds: never "database is locked".
- CUDA out of memory during training (torch.OutOfMemoryError injected into the training step, on the CPU): a clear
  message, the job marked failed, and the library (and the app's dialog) keeps working.

The album is small (4 photos with faces and 4 generated ones; 8 more for the indexing kill, so that captions
take two batches), the captioner is the tiny random-weight BLIP-2 preset, and trainings are a few steps long.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.admin.integrity import check_library
from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import TrainingConfig, TrainingOutOfMemory
from engine.library import Library
from engine.models.vlm.auto import VlmWrapper, resolve_spec
from engine.storage.catalog import DiskFull
from myvlm_cli.main import main as cli_main

from .conftest import ROOT
from .helpers import album_snapshot, write_jpeg

FACES = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"]
GENERATED = 4              # beside the faces, in album/people: the indexed library most tests start from
MORE = 8                   # album/more: only the kill test indexes these too (two caption batches of 8)
N_BASE = len(FACES) + GENERATED
N_PHOTOS = N_BASE + MORE
STEPS = 50                 # `myvlm train` checkpoints every 25 steps and at the end: 25 steps to kill it in
VLM = "tiny-blip2"
WAIT_S = 240
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}   # one thread: bit-reproducible training
# `myvlm` whose captions stage runs its first batch, then hangs in the next until killed: a kill -9 that lands
# during a caption batch on any machine, however fast
SECOND_CAPTION_BATCH_HANGS = """
import itertools, sys, time
from engine.pipeline.captions import CaptionStage
calls = itertools.count()
original = CaptionStage.process_batch
def process_batch(self, jobs):
    if next(calls) > 0:
        time.sleep(3600)
    return original(self, jobs)
CaptionStage.process_batch = process_batch
from myvlm_cli.main import main
sys.exit(main(sys.argv[1:]))
"""


# -- helpers ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def one_thread():
    """Torch on one thread, as in the subprocesses: the same arithmetic, so embeddings can be compared exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli(*args: str) -> int:
    """`myvlm ARGS` in this process (myvlm_cli.main.main), leaving this process's signal handlers as they were."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return cli_main(list(args))
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def ro_query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the catalog of a running process without disturbing it (read-only connection)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []


def done_count(db: Path, stage: str) -> int:
    rows = ro_query(db, "SELECT COUNT(*) FROM stage_status WHERE stage = ? AND state = 'done'", (stage,))
    return rows[0][0] if rows else 0


def wait_for(proc: subprocess.Popen, condition, what: str, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended before {what}: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL


def assert_whole(root: Path) -> dict:
    with Library(root) as lib:
        rep = check_library(lib.catalog)
    assert rep.ok, rep.to_json()
    return rep.to_json()


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def copy_library(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("logs"))
    return dst


def embedding_path(root: Path, concept_id: int) -> Path:
    return EmbeddingStore(root / "concepts").path(concept_id, resolve_spec(VLM)[1], "caption")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, test_data: Path) -> dict:
    """An indexed album (captions left to do: they are slow on a CPU) with a named person made a concept, the
    captioner's training targets written."""
    root = tmp_path_factory.mktemp("faults")
    album = root / "album"
    (album / "people").mkdir(parents=True)
    for name in FACES:   # at most 640 px: faces still big enough to found a group, training views cheap to make
        with Image.open(test_data / "face_recognition" / name) as im:
            im.convert("RGB").resize(_fit(im.size, 640), Image.Resampling.LANCZOS).save(
                album / "people" / f"a_{name}", "JPEG", quality=92)
    for i in range(GENERATED):
        write_jpeg(album / "people" / f"g_{i:02d}.jpg", seed=100 + i)
    for i in range(MORE):
        write_jpeg(album / "more" / f"m_{i:02d}.jpg", seed=200 + i)
    library = root / "library"
    with Library(library) as lib:
        lib.catalog.set_setting("face_backend", "dlib")
        lib.catalog.set_setting("vlm", VLM)
        lib.add_folder(album / "people")
        lib.scan()
        report = lib.process(stages=["thumbnail", "faces", "clip", "concepts"])
        assert report.stages["concepts"].processed == N_BASE and report.stages["clip"].unavailable
        group = next(p for p in lib.people().people(named=False) if len(lib.people().faces_of(p["id"])) >= 3)
        person = lib.people().name(group["id"], "Barack")
        concept = lib.person_concept(person)
        lib.personalizer().prepare_targets(concept.id)
        ids = {p.name: p.id for p in lib.photos()}
    return {"album": album, "people": album / "people", "library": library, "concept": concept.id,
            "person": person, "ids": ids}


@pytest.fixture
def lib_copy(base: dict, tmp_path: Path) -> Path:
    return copy_library(base["library"], tmp_path / "library")


# -- kill -9 -------------------------------------------------------------------------------------------------------

def test_kill_while_finding_faces_and_during_a_caption_batch_loses_nothing(base: dict, tmp_path: Path):
    album = base["album"]
    before = album_snapshot(album)
    library = tmp_path / "library"
    with Library(library) as lib:
        lib.catalog.set_setting("face_backend", "dlib")
    db = library / "library.db"
    cmd = [sys.executable, "-m", "myvlm_cli", "--library", str(library), "--vlm", VLM, "index", str(album),
           "--no-progress"]

    # 1. killed while finding faces
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: done_count(db, "faces") >= 2, "two photos' faces were stored")
    kill9(proc)
    faces_done = dict(ro_query(db, "SELECT photo_id, updated_at FROM stage_status WHERE stage = 'faces' "
                                   "AND state = 'done'"))
    faces_rows = ro_query(db, "SELECT id, photo_id, x, y, created_at FROM faces ORDER BY id")
    assert 2 <= len(faces_done) < N_PHOTOS
    assert done_count(db, "captions") == 0
    assert_whole(library)   # a kill -9 leaves a whole database behind (the WAL is recovered on open)

    # 2. killed during a caption batch: after the first batch (8 photos) was stored, while the next one runs (held
    # there by the driver: on an idle machine the tiny captioner finishes a batch within one commit interval, so
    # both batches were stored together before the kill could land)
    slow = [sys.executable, "-c", SECOND_CAPTION_BATCH_HANGS, *cmd[3:]]
    proc = subprocess.Popen(slow, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(proc, lambda: done_count(db, "captions") >= 8, "the first caption batch was stored")
    kill9(proc)
    captions_done = dict(ro_query(db, "SELECT photo_id, updated_at FROM stage_status WHERE stage = 'captions' "
                                      "AND state = 'done'"))
    captions_rows = ro_query(db, "SELECT id, photo_id, template, updated_at FROM captions ORDER BY id")
    assert 8 <= len(captions_done) < N_PHOTOS
    assert_whole(library)

    # 3. runs to the end
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    report = assert_whole(library)
    with Library(library) as lib:
        lib.options["vlm"] = VLM
        st = lib.catalog.status_summary(lib.stage_versions())
        assert st["photos"]["ok"] == N_PHOTOS
        for stage in ("thumbnail", "faces", "concepts", "captions"):
            assert st["stages"][stage] == {"done": N_PHOTOS, "errors": 0, "blocked": 0, "pending": 0}, stage
        q = lib.catalog.query
        # nothing was done twice: every photo's stages ran at most once (0: taken from files a killed run wrote)
        assert q("SELECT stage, photo_id, runs FROM stage_status WHERE runs > 1") == []
        # nothing done before a kill was redone: same stored faces, same captions, same timestamps
        for pid, updated in faces_done.items():
            assert q("SELECT updated_at FROM stage_status WHERE photo_id = ? AND stage = 'faces'",
                     [pid])[0][0] == updated
        assert all(tuple(r) in {tuple(x) for x in q("SELECT id, photo_id, x, y, created_at FROM faces")}
                   for r in faces_rows if r[1] in faces_done)
        for pid, updated in captions_done.items():
            assert q("SELECT updated_at FROM stage_status WHERE photo_id = ? AND stage = 'captions'",
                     [pid])[0][0] == updated
        now_captions = {tuple(r) for r in q("SELECT id, photo_id, template, updated_at FROM captions")}
        assert all(tuple(r) in now_captions for r in captions_rows if r[1] in captions_done)
        # every photo indexed once: one original caption each, no face stored twice (the integrity check)
        assert tuple(q("SELECT COUNT(*), COUNT(DISTINCT photo_id) FROM captions WHERE kind = 'original'")[0]) == \
            (N_PHOTOS, N_PHOTOS)
    assert report["counts"]["captions"] == N_PHOTOS
    assert album_snapshot(album) == before   # the album itself is never written to


def test_kill_during_training_resumes_from_its_checkpoint_exactly(base: dict, lib_copy: Path, tmp_path: Path):
    cid = base["concept"]
    # the embedding an uninterrupted run ends on (one thread, as the command line below runs)
    with one_thread(), Library(copy_library(base["library"], tmp_path / "reference")) as lib:
        reference = lib.personalizer().train([cid], config=TrainingConfig(steps=STEPS))[cid].values.copy()
    ckpt = embedding_path(lib_copy, cid)
    store = EmbeddingStore(lib_copy / "concepts")
    cmd = [sys.executable, "-m", "myvlm_cli", "--library", str(lib_copy), "train", "Barack", "--vlm", VLM,
           "--steps", str(STEPS), "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(proc, ckpt.exists, "the first checkpoint was written")
    kill9(proc)
    partial = store.load(cid, resolve_spec(VLM)[1], "caption")
    assert partial.step == 25 and not partial.complete
    assert not list(ckpt.parent.glob("*.tmp"))
    report = assert_whole(lib_copy)
    # opening the library saw that no process holds the training any more: not "training" forever, but partial
    assert any("Barack was interrupted" in n for n in report["notes"]), report["notes"]
    with Library(lib_copy) as lib:
        killed = lib.concepts().get(cid)
    assert killed.embedding_state == "partial" and "interrupted" in killed.last_error

    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=WAIT_S, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)[0]["steps"] == STEPS
    log_text = (lib_copy / "logs" / "myvlm.log").read_text()
    assert f"resuming concepts [{cid}] at step 25 of {STEPS}" in log_text   # not from step 0
    final = store.load(cid, resolve_spec(VLM)[1], "caption")
    assert final.complete and sorted(final.history) == [25, STEPS]
    np.testing.assert_allclose(final.values, reference, rtol=0, atol=1e-6)   # exact resume
    assert_whole(lib_copy)
    with Library(lib_copy) as lib:
        done = lib.concepts().get(cid)
    assert done.embedding_state == "ready" and done.last_error is None


# -- a full disk -----------------------------------------------------------------------------------------------------

def test_disk_full_while_writing_thumbnails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    album = tmp_path / "album"
    for i in range(8):
        write_jpeg(album / f"{i:02d}.jpg", seed=i, width=640, height=480)
    library = tmp_path / "library"
    lock = threading.Lock()
    writes = {"n": 0, "full": True}
    real_save = Image.Image.save

    def save(self, fp, format=None, **params):
        # the thumbnail stage writes each photo's preview and thumbnail through PIL into a temporary file:
        # after three photos, the disk is full (a few bytes get written first, as on a real disk)
        with lock:
            writes["n"] += 1
            full = writes["full"] and writes["n"] > 6
        if full:
            if hasattr(fp, "write"):
                fp.write(b"\xff\xd8\xff\xe0 half a JPEG")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", save)
    rc = cli("--library", str(library), "index", str(album), "--stage", "thumbnail", "--no-progress")
    err = capsys.readouterr().err
    assert rc == 1
    assert "The disk holding the library is full" in err and "No space left on device" in err
    assert "Free some space" in err and "Traceback" not in err
    lib_thumbs = [library / "thumbs", library / "previews"]
    assert not [f for d in lib_thumbs for f in d.rglob(".tmp-*")]   # no half-written file left behind
    for d in lib_thumbs:
        for f in d.rglob("*.jpg"):
            Image.open(f).load()   # what is there is whole
    assert_whole(library)
    with Library(library) as lib:
        photos = lib.photos()
        done = dict(lib.catalog.query("SELECT photo_id, updated_at FROM stage_status WHERE stage = 'thumbnail'"))
        assert 1 <= len(done) < 8
        # not the photos' fault: no per-photo error, they are simply still to do
        assert all(p.last_error is None for p in photos)
        assert {p.status for p in photos if p.id not in done} == {"pending"}

    writes["full"] = False   # space freed
    assert cli("--library", str(library), "index", "--stage", "thumbnail", "--no-progress") == 0
    assert_whole(library)
    with Library(library) as lib:
        assert {p.status for p in lib.photos()} == {"ok"}
        rows = lib.catalog.query("SELECT photo_id, updated_at, runs FROM stage_status WHERE stage = 'thumbnail'")
        assert len(rows) == 8 and max(r["runs"] for r in rows) == 1
        assert all(r["updated_at"] == done[r["photo_id"]] for r in rows if r["photo_id"] in done)


def test_disk_full_while_saving_a_training_checkpoint(base: dict, lib_copy: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    from engine.domain.personalize import embeddings

    cid = base["concept"]
    real_save_file = embeddings.save_file
    calls = {"n": 0, "full": True}

    def save_file(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["full"] and calls["n"] == 2:   # the step-4 checkpoint: part of it is written, then the disk is full
            Path(filename).write_bytes(b"\x00" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(embeddings, "save_file", save_file)
    config = TrainingConfig(steps=6, checkpoint_every=2)   # checkpoints at steps 2, 4, 6
    with Library(lib_copy) as lib, pytest.raises(DiskFull) as failed:
        lib.personalizer(VLM).train([cid], config=config)
    message = str(failed.value)
    assert message.startswith("The disk holding the library is full: the concept embedding checkpoint")
    assert "(step 4)" in message and "No space left on device" in message and "Free some space" in message
    ckpt = embedding_path(lib_copy, cid)
    assert not list(ckpt.parent.glob("*.tmp"))   # no half-written file
    kept = EmbeddingStore(lib_copy / "concepts").load(cid, resolve_spec(VLM)[1], "caption")
    assert kept.step == 2   # the previous checkpoint is intact
    assert_whole(lib_copy)
    with Library(lib_copy) as lib:
        concept = lib.concepts().get(cid)
        assert concept.embedding_state == "failed" and concept.last_error == message

    calls["full"] = False   # space freed: teaching again resumes from step 2
    steps: list[int] = []
    with Library(lib_copy) as lib:
        lib.personalizer(VLM).train([cid], config=config, progress=lambda p: steps.append(p.step))
        concept = lib.concepts().get(cid)
        assert concept.embedding_state == "ready" and concept.last_error is None
    assert steps == [3, 4, 5, 6]
    final = EmbeddingStore(lib_copy / "concepts").load(cid, resolve_spec(VLM)[1], "caption")
    assert final.complete and sorted(final.history) == [2, 4, 6]
    assert_whole(lib_copy)


TMPFS_SCRIPT = """\
set -u
mount -t tmpfs -o size=2200k tmpfs "$LIB" || exit 90
mount -t tmpfs -o size=64k tmpfs "$CKPT" || exit 91
"$PY" -m myvlm_cli --library "$LIB" index "$ALBUM" --stage thumbnail --no-progress \
    >"$OUT/index1.out" 2>"$OUT/index1.err"
echo $? >"$OUT/index1.rc"
mount -o remount,size=64m "$LIB" || exit 92
"$PY" -c "$AFTER" "$LIB" "$CKPT" >"$OUT/after.out" 2>"$OUT/after.err"
"""

# after "freeing space": `myvlm check`, `myvlm index`, `myvlm check` (myvlm_cli.main.main, in one interpreter), then a
# checkpoint saved on the other, still tiny disk
AFTER = """\
import json, os, sys
import numpy as np
from engine.storage.catalog import DiskFull
from myvlm_cli.main import main
from engine.domain.personalize.embeddings import ConceptEmbedding, EmbeddingStore
library, ckpt = sys.argv[1], sys.argv[2]
for argv in (["check", "--json"], ["index", "--stage", "thumbnail", "--no-progress"], ["check", "--json"]):
    print("COMMAND", json.dumps(argv), flush=True)
    print("RC", main(["--library", library, *argv]), flush=True)
store = EmbeddingStore(ckpt)
emb = ConceptEmbedding(1, "tiny-blip2", "blip2", "caption", "sks", np.ones((1, 100_000), np.float32),
                       np.ones((1, 1), np.float32), 25, 50)
try:
    store.save(emb)
    print("saved")
except DiskFull as exc:
    print("DISKFULL", exc)
print("LEFT", sorted(os.listdir(os.path.join(ckpt, "1"))))
"""


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_a_really_full_disk_while_indexing_and_checkpointing(tmp_path: Path):
    """A real, 2 MB tmpfs as the library's disk (mounted in a user and mount namespace: no root needed)."""
    if not _namespaces_work():
        pytest.skip("unprivileged user and mount namespaces are not available here (`unshare -rm`): the injected "
                    "ENOSPC tests above cover the same code")
    album = tmp_path / "album"
    for i in range(10):
        write_jpeg(album / f"{i:02d}.jpg", seed=i, width=1600, height=1200)   # ≈ 300 KB previews: 2 MB fill up
    library, ckpt, out = tmp_path / "library", tmp_path / "ckpt", tmp_path / "out"
    for d in (library, ckpt, out):
        d.mkdir()
    env = {**ENV, "PY": sys.executable, "LIB": str(library), "ALBUM": str(album), "OUT": str(out),
           "CKPT": str(ckpt), "AFTER": AFTER}
    res = subprocess.run(["unshare", "-rm", "sh", "-c", TMPFS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=WAIT_S, check=False)
    assert res.returncode == 0, (res.returncode, res.stderr)

    def read(name: str) -> str:
        return (out / name).read_text()

    assert read("index1.rc").strip() == "1", read("index1.err")
    err = read("index1.err")
    assert "myvlm: The disk holding the library is full" in err and "Traceback" not in err, err
    after = read("after.out")
    outputs = after.split("COMMAND ")[1:]
    assert len(outputs) == 3, after + read("after.err")
    first, index, second = (o.split("\n", 1)[1] for o in outputs)
    assert first.rstrip().endswith("RC 0") and index.strip().endswith("RC 0"), after + read("after.err")
    first = json.loads(first.rsplit("RC", 1)[0])
    assert first["ok"] and first["temp_files"] == [], first   # whole after the failure, no half-written file
    second = json.loads(second.split("RC", 1)[0])
    assert second["ok"] and second["counts"]["stages"]["thumbnail"] == {"done": 10, "errors": 0}
    assert "DISKFULL The disk holding the library is full" in after and "No space left on device" in after
    assert "LEFT []" in after   # the half-written checkpoint was removed


# -- the desktop app and the command line at once -----------------------------------------------------------------

CLI_WRITER = """\
import json, os, sys, time, io, contextlib
from myvlm_cli.main import main
library, stop, photos, person, concept = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
progress = stop + ".progress"
codes, errors, i = [], [], 0
while not os.path.exists(stop):
    for argv in ([["caption-edit", str(p), f"written by the command line {i}"] for p in photos]
                 + [["rename", person, f"Barack {i % 3}"], ["concept", "train", concept]]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                codes.append(main(["--library", library, *argv]))
            except Exception as exc:
                codes.append(repr(exc))
        if err.getvalue().strip():
            errors.append(err.getvalue()[-500:])
    i += 1
    with open(progress, "w") as fh:
        fh.write(str(i))
print("RESULT " + json.dumps({"iterations": i, "codes": codes, "errors": errors}))
"""


def test_app_and_command_line_write_one_library_at_once(qtbot, base: dict, lib_copy: Path, tmp_path: Path):
    from PySide6.QtCore import QTimer

    from myvlm_desktop.indexing import IndexRunner
    from myvlm_desktop.tasks import EngineThread

    photos = list(base["ids"].values())
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", CLI_WRITER, str(lib_copy), str(stop), json.dumps(photos[:4]),
                               str(base["person"]), str(base["concept"])],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    options = {"vlm": VLM, "face_backend": "dlib"}
    runner = IndexRunner(lib_copy, options=options)
    engine = EngineThread(lib_copy, options, name="actions")
    results, failures, answers = [], [], []
    runner.finished.connect(results.append)
    count = iter(range(10**6))

    def gui_write() -> None:   # what the window does on the user's edits (a busy user): on its engine thread
        n = next(count)

        def write(lib: Library, n: int = n) -> int:
            for k in range(4):
                lib.captions().put_user_caption(photos[4 + k], f"written by the app {n}")
            lib.catalog.set_setting("grid_zoom_test", n)
            return n
        if engine.pending() < 50:
            engine.call(write, answers.append, failures.append, label="edit")

    timer = QTimer()
    timer.timeout.connect(gui_write)
    timer.start(5)
    progress = tmp_path / "stop.progress"

    def writer_rounds() -> int:
        try:
            return int(progress.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    try:
        started = time.monotonic()
        # indexing runs one after the other until the command line has written for six rounds meanwhile
        while writer_rounds() < 6 or len(results) < 2:
            assert writer.poll() is None, writer.communicate()[1][-3000:]
            # redo the thumbnails and concept signals of every photo, as "Redo all" does (the faces are written
            # meanwhile by the command line's renames and head trainings; captions would only add CPU time)
            assert runner.start(scan=True, mode="all", stages=["thumbnail", "concepts"])
            qtbot.waitUntil(lambda: not runner.running, timeout=WAIT_S * 1000)
            assert time.monotonic() - started < 4 * WAIT_S  # a bound on the loop, not a speed limit
        stop.write_text("stop")
        out, err = writer.communicate(timeout=WAIT_S)
    finally:
        timer.stop()
        stop.write_text("stop")
        if writer.poll() is None:
            writer.kill()
        engine.shutdown()
        runner.shutdown()
    qtbot.waitUntil(lambda: not engine.busy, timeout=WAIT_S * 1000)
    summary = json.loads(out.rsplit("RESULT ", 1)[1])
    assert writer.returncode == 0, err[-3000:]
    assert summary["iterations"] >= 6 and set(summary["codes"]) == {0}, summary
    assert len(results) >= 2
    assert not any("locked" in e for e in summary["errors"]), summary["errors"]
    assert "locked" not in err
    assert failures == [] and len(answers) >= 20, failures
    for r in results:
        assert r.error is None and not r.cancelled and r.errors == 0, r
        assert r.pipeline["stages"]["thumbnail"]["processed"] == N_BASE
    assert_whole(lib_copy)
    with Library(lib_copy) as lib:
        assert all(lib.captions().caption(p).startswith("written by the app") for p in photos[4:8])
        assert all(lib.captions().caption(p).startswith("written by the command line") for p in photos[:4])


# -- out of GPU memory ----------------------------------------------------------------------------------------------

def inject_out_of_memory(monkeypatch: pytest.MonkeyPatch, at_step: int) -> dict:
    """The training step's forward pass raises CUDA's out-of-memory error at `at_step` (1-based), while `on`."""
    real = VlmWrapper.training_loss
    state = {"on": True, "calls": 0}

    def training_loss(self, *args, **kwargs):
        state["calls"] += 1
        if state["on"] and state["calls"] == at_step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 7.79 GiB of which 1.02 GiB is free.")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VlmWrapper, "training_loss", training_loss)
    return state


def test_out_of_memory_during_training_fails_the_job_and_the_library_keeps_working(
        base: dict, lib_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    cid = base["concept"]
    # the command line: a clear message, exit status 1, the job marked failed
    oom = inject_out_of_memory(monkeypatch, at_step=2)
    rc = cli("--library", str(lib_copy), "train", "Barack", "--vlm", VLM, "--steps", "3")
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    message = err.split("myvlm: ", 1)[1]
    assert "out of GPU memory" in message and "step 2 of 3" in message
    assert "smaller batch" in message and "CPU" in message and "close other apps" in message
    assert "nothing was lost" in message
    with Library(lib_copy) as lib:
        concept = lib.concepts().get(cid)
        assert concept.embedding_state == "failed" and "out of GPU memory" in concept.last_error
    assert_whole(lib_copy)

    # the engine: out of memory after a checkpoint keeps it, and teaching again continues from it
    oom = inject_out_of_memory(monkeypatch, at_step=3)
    config = TrainingConfig(steps=4, checkpoint_every=2)
    with Library(lib_copy) as lib:
        pers = lib.personalizer(VLM)
        with pytest.raises(TrainingOutOfMemory, match=r"the last checkpoint \(step 2\) is kept"):
            pers.train([cid], config=config)
        assert lib.concepts().get(cid).embedding_state == "failed"
        oom["on"] = False
        # the library keeps working: a caption, an indexing run, and the training itself
        assert pers.caption(base["ids"]["a_obama.jpg"]).model == VLM
        report = lib.process(mode="all", stages=["thumbnail", "concepts"])
        assert report.stages["thumbnail"].processed == N_BASE and report.stages["thumbnail"].errors == 0
        steps: list[int] = []
        pers.train([cid], config=config, progress=lambda p: steps.append(p.step))
        assert steps == [3, 4] and lib.concepts().get(cid).embedding_state == "ready"
    photo = str(base["people"] / "a_obama.jpg")
    assert cli("--library", str(lib_copy), "--vlm", VLM, "caption", photo, "--json") == 0
    assert json.loads(capsys.readouterr().out)["model"] == VLM
    assert_whole(lib_copy)


def test_out_of_memory_in_the_app_shows_the_message_and_the_app_keeps_working(
        qtbot, base: dict, lib_copy: Path, monkeypatch: pytest.MonkeyPatch):
    from engine.storage.library_folder import LibraryPaths
    from myvlm_desktop.tasks import EngineThread
    from myvlm_desktop.thumbnails import ThumbnailLoader
    from myvlm_desktop.training import TeachDialog, TrainingRunner

    cid = base["concept"]
    oom = inject_out_of_memory(monkeypatch, at_step=2)
    options = {"vlm": VLM}
    runner = TrainingRunner(lib_copy, options)
    engine = EngineThread(lib_copy, options, name="models")
    loader = ThumbnailLoader(LibraryPaths(lib_copy))
    dlg = TeachDialog(runner, engine, loader, title="Barack", concept_id=cid)
    qtbot.addWidget(dlg)
    try:
        dlg.show()
        dlg.prepare()
        qtbot.waitUntil(lambda: dlg.page == TeachDialog.REVIEW, timeout=WAIT_S * 1000)
        dlg.steps.setValue(3)
        dlg.start_training()
        qtbot.waitUntil(lambda: dlg.outcome is not None, timeout=WAIT_S * 1000)
        outcome = dlg.outcome
        assert not outcome.ok and not outcome.cancelled and "out of GPU memory" in outcome.error
        text = dlg.status.text()
        assert "Training failed" in text and "out of GPU memory" in text and "smaller batch" in text
        assert "Something went wrong" not in text   # a sentence that says what to do, not a crash report
        assert dlg.isVisible() and dlg.page == TeachDialog.TRAINING and not runner.running
        with Library(lib_copy) as lib:
            assert lib.concepts().get(cid).embedding_state == "failed"

        # the app keeps working: its engine thread captions a photo, and teaching again succeeds
        oom["on"] = False
        answers, failures = [], []
        engine.call(lambda lib: lib.personalizer().caption(base["ids"]["a_obama.jpg"]).text, answers.append,
                    failures.append)
        qtbot.waitUntil(lambda: bool(answers or failures), timeout=WAIT_S * 1000)
        assert failures == [] and isinstance(answers[0], str)
        dlg.start_training()
        qtbot.waitUntil(lambda: dlg.outcome is not None and dlg.outcome.ok, timeout=WAIT_S * 1000)
        assert "Done" in dlg.status.text()
        with Library(lib_copy) as lib:
            assert lib.concepts().get(cid).embedding_state == "ready"
    finally:
        runner.shutdown()
        engine.shutdown()
        loader.shutdown()
