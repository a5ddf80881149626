"""The `myvlm` command line as a script would use it: stable JSON, clear messages, exit codes."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from engine import __version__
from engine.progress import Progress
from engine.storage.catalog import SCHEMA_VERSION, Catalog, SchemaTooNew
from engine.storage.library_folder import LibraryPaths
from myvlm_cli.indexing import IndexProgress, status_verdict

from .conftest import myvlm
from .helpers import write_jpeg


@pytest.fixture
def album(tmp_path: Path) -> Path:
    for i in range(3):
        write_jpeg(tmp_path / "album" / f"{i}.jpg", seed=i)
    return tmp_path / "album"


def test_version_and_help():
    assert myvlm("--version").stdout.strip() == f"myvlm {__version__}"
    out = myvlm("--help").stdout
    for cmd in ("index", "watch", "status", "photos", "doctor"):
        assert cmd in out


def test_index_status_photos_json(tmp_path: Path, album: Path):
    lib = tmp_path / "lib"
    out = json.loads(myvlm("index", str(album), "--json", "--no-progress", library=lib).stdout)
    assert out["scan"]["new"] == 3 and out["pipeline"]["stages"]["thumbnail"]["processed"] == 3
    st = json.loads(myvlm("status", "--json", library=lib).stdout)
    assert st["photos"]["ok"] == 3
    assert st["stages"]["thumbnail"] == {"done": 3, "errors": 0, "blocked": 0, "pending": 0, "unavailable": None}
    assert "hf download" in st["stages"]["clip"]["unavailable"]  # no CLIP weights here
    assert st["folders"][0]["path"] == str(album) and st["schema_version"] == SCHEMA_VERSION
    photos = json.loads(myvlm("photos", "--json", library=lib).stdout)
    assert [p["name"] for p in photos] == ["0.jpg", "1.jpg", "2.jpg"]
    assert photos[0]["width"] == 320 and photos[0]["status"] == "ok"
    # a second index run with no path re-indexes the watched folders and finds nothing to do
    again = json.loads(myvlm("index", "--json", "--no-progress", library=lib).stdout)
    assert again["scan"]["new"] == 0 and again["pipeline"]["stages"]["thumbnail"]["processed"] == 0
    # the human-readable forms
    assert "3 ready" in myvlm("status", library=lib).stdout
    assert "0.jpg" in myvlm("photos", library=lib).stdout
    assert (lib / "logs" / "myvlm.log").read_text().count("stage thumbnail") >= 1


def test_index_missing_folder_is_a_clear_error(tmp_path: Path):
    res = myvlm("index", str(tmp_path / "nope"), library=tmp_path / "lib", check=False)
    assert res.returncode == 2 and "not a folder" in res.stderr


def test_index_without_pictures_folder_explains(tmp_path: Path):
    env = {"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "XDG_PICTURES_DIR": str(tmp_path / "none")}
    import os

    res = myvlm("index", library=tmp_path / "lib", env={**os.environ, **env})
    assert "no Pictures folder" in res.stderr


def test_rotate_purge_folders(tmp_path: Path, album: Path):
    lib = tmp_path / "lib"
    myvlm("index", str(album), "--no-progress", library=lib)
    myvlm("rotate", "1", "90", library=lib)
    photo = next(p for p in json.loads(myvlm("photos", "--json", library=lib).stdout) if p["id"] == 1)
    assert photo["user_rotation"] == 90
    (album / "0.jpg").unlink()
    myvlm("index", "--no-progress", library=lib)
    assert json.loads(myvlm("purge", "--json", library=lib).stdout) == {"purged": 1}
    folders = json.loads(myvlm("folders", "--json", library=lib).stdout)
    assert folders[0]["photos"] == 2
    myvlm("folders", "--remove", str(folders[0]["id"]), library=lib)
    assert json.loads(myvlm("folders", "--json", library=lib).stdout) == []
    assert sorted(p.name for p in album.iterdir()) == ["1.jpg", "2.jpg"]  # files untouched


def test_doctor(tmp_path: Path):
    rep = json.loads(myvlm("doctor", "--json", library=tmp_path / "lib").stdout)
    assert rep["myvlm_desktop"] == __version__
    assert rep["packages"]["torch"] and rep["packages"]["sqlite-utils"]
    assert rep["device"]["kind"] in ("cpu", "cuda", "mps")
    assert rep["models"]["dlib_face"]["state"] == "present"  # installs from PyPI with the app
    hub = {m["name"]: m for m in rep["models"]["hub"]}
    blip = hub["Salesforce/blip2-flan-t5-xl"]
    assert blip["state"] in ("present", "missing")
    if blip["state"] == "missing":
        assert "hf download" in blip["fix"]
    text = myvlm("doctor", library=tmp_path / "lib").stdout
    assert "Device:" in text and "Face models (dlib, CC0): present" in text


def test_schema_migrations_and_newer_schema(tmp_path: Path):
    paths = LibraryPaths(tmp_path / "lib")
    with Catalog(paths) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        assert cat.scalar("PRAGMA journal_mode") == "wal"
        assert cat.integrity_check() == "ok"
    conn = sqlite3.connect(paths.db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer MyVLM Desktop"):
        Catalog(paths)
    res = myvlm("status", library=tmp_path / "lib", check=False)
    assert res.returncode == 1 and "newer MyVLM Desktop" in res.stderr


def test_engine_never_imports_qt():
    import subprocess
    import sys

    code = (
        "import pkgutil, importlib, sys, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(k for k in sys.modules if k.startswith(('PySide', 'PyQt', 'shiboken'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- first impressions of the command line (issue 16, item 8) ----------------------------------------------------


def test_index_into_a_pipe_prints_lines_not_bars(tmp_path: Path, album: Path):
    res = myvlm("index", str(album), library=tmp_path / "lib")   # stderr is a pipe here, as in a log or CI
    err = res.stderr
    assert "\r" not in err and "\x1b" not in err and "%|" not in err   # no bar drawn, no escape codes
    assert "thumbnail: 3 to do" in err and "thumbnail: done 3/3 in" in err
    assert "clip: skipped, cannot run here — CLIP weights for ViT-B-32 are not downloaded" in err


def test_bars_on_a_terminal_count_the_rate_from_the_scan_start():
    """The scan's first progress event arrives when its first batch of files is hashed; a bar started then showed
    the whole batch done in microseconds ("scan: 2067614 photo/s")."""
    now = [100.0]
    out = io.StringIO()
    progress = IndexProgress(True, out, terminal=True, clock=lambda: now[0])
    progress.begin("scan")
    now[0] += 10.0
    progress.scan(Progress("scan", 36, 36, "a.jpg"))
    progress.close()
    assert "36/36" in out.getvalue() and "3.6 file/s" in out.getvalue()


def test_plain_progress_lines_say_start_progress_and_end():
    from engine.pipeline.runner import ProgressEvent

    now = [0.0]
    out = io.StringIO()
    progress = IndexProgress(True, out, terminal=False, clock=lambda: now[0], interval_s=30)
    progress.pipeline(ProgressEvent("faces", 0, 100))
    now[0] = 10.0
    progress.pipeline(ProgressEvent("faces", 20, 100))     # within the interval: quiet
    now[0] = 31.0
    progress.pipeline(ProgressEvent("faces", 62, 100, errors=1))
    now[0] = 50.0
    progress.pipeline(ProgressEvent("faces", 100, 100, errors=1, state="finished"))
    progress.pipeline(ProgressEvent("clip", 0, 0, "no weights", state="unavailable"))
    assert out.getvalue().splitlines() == [
        "faces: 100 to do",
        "faces: 62/100 (2.0 photo/s, 1 errors)",
        "faces: done 100/100 in 50.0 s (2.0 photo/s, 1 errors)",
        "clip: skipped, cannot run here — no weights"]


def _status(stages: dict, errors: int = 0) -> dict:
    return {"photos": {"error": errors}, "stages": {
        name: {"done": 3, "errors": 0, "blocked": 0, "pending": pending, "unavailable": why}
        for name, (pending, why) in stages.items()}}


def test_status_says_up_to_date_only_when_every_stage_ran():
    assert status_verdict(_status({"thumbnail": (0, None), "faces": (0, None)})) == "Up to date."
    not_here = status_verdict(_status({"thumbnail": (0, None), "clip": (3, "CLIP weights are not downloaded")}))
    assert not_here.startswith("Not up to date: clip cannot run here") and "Up to date." not in not_here
    assert status_verdict(_status({"thumbnail": (2, None)})) == "Not up to date: 2 photos still to process: myvlm index."
    assert "1 file(s) that cannot be read" in status_verdict(_status({"thumbnail": (0, None)}, errors=1))


def test_status_after_index_without_models_is_not_up_to_date(tmp_path: Path, album: Path):
    lib = tmp_path / "lib"
    myvlm("index", str(album), "--stage", "thumbnail", "--no-progress", library=lib)
    text = myvlm("status", library=lib).stdout
    assert "Not up to date: clip, captions cannot run here" in text and "Up to date." not in text
    assert "stage clip: not available here, 3 photos waiting — CLIP weights" in text


def test_unreadable_files_are_errors_with_their_reason_not_pending(tmp_path: Path, album: Path):
    (album / "noise.jpg").write_bytes(bytes(range(256)) * 20)
    (album / "cut.jpg").write_bytes((album / "0.jpg").read_bytes()[:2000])
    lib = tmp_path / "lib"
    myvlm("index", str(album), "--no-progress", library=lib)
    st = json.loads(myvlm("status", "--json", library=lib).stdout)
    assert st["photos"]["error"] == 2 and st["photos"]["pending"] == 0
    assert st["stages"]["thumbnail"]["errors"] == 2
    for stage in ("faces", "concepts"):   # they need the thumbnail: never pending for these two, blocked
        assert st["stages"][stage]["blocked"] == 2 and st["stages"][stage]["pending"] == 0, stage
    assert st["stages"]["clip"]["blocked"] == 2 and st["stages"]["clip"]["pending"] == 3   # waits for weights
    text = myvlm("status", library=lib).stdout
    assert "stage faces: 3 done, 0 pending, 0 errors, 2 blocked by an earlier error (see Problems)" in text
    assert "cut.jpg: truncated file" in text and "noise.jpg: not an image" in text


def test_concept_suggest_says_clip_is_missing(tmp_path: Path, album: Path):
    lib = tmp_path / "lib"
    myvlm("index", str(album), "--stage", "thumbnail", "--no-progress", library=lib)
    out = myvlm("concept", "suggest", library=lib).stdout
    assert "nothing recurring" not in out
    assert "finding recurring things needs CLIP" in out and "myvlm models get" in out


def test_index_modes_are_the_pipelines():
    """The parser spells the modes out (parsing imports no engine module); they are the pipeline's."""
    from engine.pipeline.runner import ALL, ERRORS, MISSING
    from myvlm_cli.indexing import MODES

    assert MODES == (MISSING, ALL, ERRORS)


def test_errors_user_errors_said_cancels_quiet_bugs_logged(tmp_path: Path, monkeypatch, capsys):
    """One error contract at the top (myvlm_cli.main): a UserError is `myvlm: <message>` (2), a Cancelled exits 130
    saying nothing, anything else is a short sentence on stderr (1) with its traceback in the library's log."""
    from engine.errors import Cancelled, NotFound
    from engine.library import Library
    from myvlm_cli.main import main

    lib = tmp_path / "lib"
    assert main(["--library", str(lib), "faces", "12345"]) == 2
    assert capsys.readouterr().err.startswith("myvlm: no photo '12345' in the catalog")
    for raised, code in ((NotFound("no such thing"), 2), (Cancelled("stopped"), 130), (KeyError("boom"), 1)):
        def purge_gone(self, exc=raised):
            raise exc
        monkeypatch.setattr(Library, "purge_gone", purge_gone)
        assert main(["--library", str(lib), "purge"]) == code
        err = capsys.readouterr().err
        assert {2: "myvlm: no such thing\n", 130: ""}.get(code, err) == err
    assert "myvlm: purge failed: KeyError: 'boom'" in err and "Traceback" not in err
    log = LibraryPaths(lib).log_file.read_text()
    assert "Traceback" in log and "KeyError: 'boom'" in log


def test_settings_are_the_declared_ones(tmp_path: Path, capsys):
    """`myvlm settings` lists engine.settings.SETTINGS (value in use, help) and stores through Library.set_setting,
    which checks the value against its declaration."""
    from engine import settings
    from myvlm_cli.main import main

    lib = ["--library", str(tmp_path / "lib")]
    assert main([*lib, "settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(" = ")[0] for ln in lines] == list(settings.SETTINGS)
    assert f'watch_polling = false    ({settings.SETTINGS["watch_polling"].help})' in lines
    assert main([*lib, "settings", "watch_polling", "true"]) == 0 and capsys.readouterr().out == "watch_polling = true\n"
    assert main([*lib, "settings", "watch_polling"]) == 0 and capsys.readouterr().out == "true\n"
    assert main([*lib, "settings", "watch_polling", "yes"]) == 2
    assert "watch_polling takes true or false" in capsys.readouterr().err
    assert main([*lib, "settings", "colour"]) == 2 and "unknown setting 'colour'" in capsys.readouterr().err
