"""Shared fixtures. Real test photos come from scripts/fetch_test_data.py (run by `make test`)."""

from __future__ import annotations

import json
import os
import shutil
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
# The times the app remembers after real use (engine/models/vlm/estimates.py) go to this run's own file, not the
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
    from engine.library import Library

    lib = Library(library_dir)
    yield lib
    lib.close()


def myvlm(*args: str, library: Path | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real `myvlm` CLI in a subprocess (as a user would): forked from the fork server below where it can
    be, else started afresh."""
    argv = (["--library", str(library)] if library is not None else []) + list(args)
    res = None if kw else _fork_server().run(argv)
    if res is None:
        res = subprocess.run([sys.executable, "-m", "myvlm_cli", *argv], capture_output=True, text=True, cwd=ROOT,
                             **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"myvlm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


# -- the fork server: `myvlm` commands without paying for torch's import each time ---------------------------------
# A CLI test runs many commands, and each fresh interpreter spent 1-3 s importing torch and transformers before doing
# anything. The server is an interpreter that has imported them (and nothing else has run in it); each command is a
# child forked from it, so it is still a process of its own, with its own state, exit status and output (its stdout
# and stderr are files), started as the `myvlm` console script starts: `sys.exit(myvlm_cli.main.main(argv))`, and
# ended as an interpreter ends (other threads awaited, atexit run, output flushed) but for unloading its modules. A child
# gets the test's environment; the variables read while importing (the hub's, torch's, HOME, ...) must be those the
# server started with, else (or with subprocess options) the command gets a fresh interpreter. MYVLM_TEST_FORK=0
# turns the server off.
_SERVER = r"""
import atexit, json, os, sys, threading
import myvlm_cli.main
import torch, transformers  # noqa: F401 - the slow imports, done once
replies = os.fdopen(os.dup(1), "w")
def serve():
    for line in sys.stdin.buffer:
        request = json.loads(line)
        sys.stdout.flush(); sys.stderr.flush(); replies.flush()
        pid = os.fork()
        if pid == 0:
            return request
        replies.write(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])) + "\n")
        replies.flush()
    return None
request = serve()
if request is not None:   # the forked child: one command
    replies.close()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    sys.stdin = open(os.devnull)
    for target, path in ((1, request["out"]), (2, request["err"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [myvlm_cli.main.__file__, *request["argv"]]
    try:
        code = myvlm_cli.main.main(request["argv"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    # the interpreter's exit, less tearing down its modules (1.8 s with torch loaded, and nothing a command sees)
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
"""


class _ForkServer:
    def __init__(self) -> None:
        import threading

        self.env = _STARTING_ENV   # not the environment of the test that happens to start it
        self.lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="myvlm-fork-"))
        self.proc = None
        if self.env.get("MYVLM_TEST_FORK", "1") != "0" and hasattr(os, "fork"):
            self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT, env=self.env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def run(self, argv: list[str]) -> subprocess.CompletedProcess | None:
        """The command's result, or None where the server cannot run it (then the caller starts a process)."""
        env = dict(os.environ)
        if self.proc is None or self.proc.poll() is not None or _comparable(env) != _comparable(self.env):
            return None
        with self.lock:
            out, err = self.tmp / "stdout", self.tmp / "stderr"
            try:
                request = {"argv": argv, "env": env, "out": str(out), "err": str(err)}
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
                reply = self.proc.stdout.readline()
            except OSError:
                return None
            if not reply:
                return None
            return subprocess.CompletedProcess([sys.executable, "-m", "myvlm_cli", *argv], json.loads(reply),
                                               out.read_text(), err.read_text())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


_STARTING_ENV = dict(os.environ)   # the session's, with the thread settings above


# what torch, transformers, the hub and myvlm_cli may read as they are imported (PySide6, imported later by
# pytest-qt, sets a variable of its own: the whole environment would never match)
_READ_AT_IMPORT = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "TOKENIZERS", "TORCH", "PYTORCH", "OMP_", "MKL_", "CUDA",
                   "HOME", "XDG_", "PYTHON", "LD_", "MYVLM_", "TMP", "TEMP")


def _comparable(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment a forked command could see stale."""
    return {k: v for k, v in env.items() if k.startswith(_READ_AT_IMPORT)}


_server: _ForkServer | None = None


def _fork_server() -> _ForkServer:
    global _server
    if _server is None:
        _server = _ForkServer()
    return _server


def pytest_sessionfinish(session):
    if _server is not None:
        _server.close()


# -- scheduling `make test` on two workers ------------------------------------------------------------------------
# `--dist loadfile` hands out one test file at a time, in xdist's order (most tests first), so the suite's wall time
# was the last long file to start, not half the work: at the last CI, 7 min 51 s on two workers for 13 min 47 s on
# one. Here a long test that shares no module fixture is a unit of its own, and the units start heaviest first (a
# long one started last keeps one worker busy while the other idles). Heaviest first, in seconds on the full run at
# load 12 (and on the idle machine where known; only the order matters): a new slow test belongs in this list, a
# file with its own costly module fixture as a whole. Anything not listed follows in the order collected. xdist
# gives each worker two units to start (the 1st and 3rd to one, the 2nd and 4th to the other), then the next one as
# a worker's queue runs low: the first four are ordered so that the two starts are about even.
HEAVIEST_FIRST = [
    "tests/test_personalize.py::test_personalized_caption_and_answer_end_to_end_through_the_cli",  # 98 idle, 150
    "tests/test_world.py::test_blip2_personalized_captions_name_the_concept_on_new_photos",        # 84 idle, 685
    "tests/test_world.py::test_one_appended_token_can_steer_the_blip2_world_model",                # 212
    "tests/test_world.py::test_llava_personalized_answers_beat_asking_about_the_class_word",       # 54 idle, 402
    "tests/test_concurrent_index.py",                                                              # 377
    "tests/test_bad_models.py",                                                                    # 486 (now 165)
    "tests/test_faults.py",                                                                        # 164
    "tests/test_faces_stage.py",                                                                   # 162
    "tests/test_concepts.py",                                                                      # 142
    "tests/test_concept_cli.py",                                                                   # 140
    "tests/test_privacy.py",                                                                       # 138
    "tests/test_cli.py",                                                                           # 134
    "tests/test_pipeline.py",                                                                      # 142 + 205 (now 31)
    "tests/test_scanner.py",                                                                       # 114
    "tests/test_faces_real.py",                                                                    # 107
    "tests/test_face_head.py",                                                                     # 97
    "tests/test_gui_flows.py",                                                                     # 80
    "tests/test_object_head.py",                                                                   # 77
]
_OWN_UNIT = frozenset(n for n in HEAVIEST_FIRST if "::" in n)


def _unit(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or the test itself where HEAVIEST_FIRST names it."""
    base = nodeid.split("[", 1)[0]
    return base if base in _OWN_UNIT else nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    """Heaviest units first (a stable sort: the rest keep their order); every worker sorts alike. Only on
    xdist's workers: a run in one process keeps the files' own order."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the tests HEAVIEST_FIRST names split off their files, in the collected order."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeaviestFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

        def schedule(self) -> None:
            self.config.option.loadscopereorder = False   # the collection is already heaviest first
            super().schedule()

    return HeaviestFirst(config, log)
