"""Shared fixtures. Real test photos come from scripts/fetch_test_data.py (run by `make test`)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# One math thread per process (torch reads these when imported; the CLI subprocesses inherit them): the test models
# are tiny, and on a busy 2-core machine a second thread spin-waits on a core someone else holds. Measured at load 8:
# 20 training steps of tiny-blip2 took 47 s with 2 threads, 3.1 s with 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# The times the app remembers after real use (engine/personalize/estimates.py) go to this run's own file, not the
# user's data folder, so the estimates a test sees do not depend on what ran on this machine before.
os.environ.setdefault("MYVLM_TIMINGS", os.path.join(tempfile.mkdtemp(prefix="myvlm-timings-"), "timings.json"))

# Hypothesis' default 200 ms deadline per example is a wall-clock limit a busy machine trips (reported as Flaky);
# tests assert behaviour, and pytest's timeout (pyproject.toml) catches hangs.
settings.register_profile("myvlm", deadline=None)
settings.load_profile("myvlm")

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = Path(os.environ.get("MYVLM_TEST_DATA", ROOT / ".cache" / "test-data"))


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real photos; fetched on first use if `make test` did not fetch them already."""
    needed = ["kphotoalbum/index.xml", "face_recognition/obama.jpg", "scrfd/scrfd.onnx", "insightface/t1.jpg"]
    if not all((TEST_DATA / n).exists() for n in needed):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_test_data.py")], check=True)
    return TEST_DATA


@pytest.fixture
def kphotoalbum(test_data: Path) -> Path:
    return test_data / "kphotoalbum"


@pytest.fixture
def library_dir(tmp_path: Path) -> Path:
    return tmp_path / "library"


@pytest.fixture
def library(library_dir: Path):
    from engine.api import Library

    lib = Library(library_dir)
    yield lib
    lib.close()


def myvlm(*args: str, library: Path | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real `myvlm` CLI in a subprocess (as a user would)."""
    cmd = [sys.executable, "-m", "engine.cli"]
    if library is not None:
        cmd += ["--library", str(library)]
    cmd += list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"myvlm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res
