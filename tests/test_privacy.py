"""Privacy: the whole app runs with the network blocked and never even tries to use it.

With the Hugging Face hub's offline switches *unset* (so the hub library would be allowed to go online: only our
own code keeps it from doing so) and its telemetry left enabled:

- in this process: the socket module is patched for the whole run (tests/netguard.py) while the library indexes
  an album (thumbnails, dlib faces, CLIP with random weights, concept heads, captions by the tiny BLIP-2 preset),
  trains an object head and a person's head, teaches the captioner a concept, captions, answers and searches;
  the hub's telemetry entry points are watched too;
- in subprocesses: the real `myvlm` command line with a sitecustomize.py on PYTHONPATH that installs the same
  guard in every Python process and writes each attempt to a file: `myvlm index` (all stages), then `name`,
  `concept add-person`, `concept add-object`, `train`, `caption`, `ask`, `search`, `status` and `check`;
- the model manager connects only when asked: listing models (`myvlm models`, `--json`) and `myvlm doctor` make
  no connection; `myvlm models get` does try (refused here), and every attempt is its own.

Each test also connects on purpose and sees the guard catch it, so a silent guard cannot pass them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.domain.personalize.training import TrainingConfig
from engine.library import Library

from . import netguard
from .conftest import ROOT

ALBUM = [("face_recognition", "obama.jpg"), ("face_recognition", "obama2.jpg"), ("face_recognition", "obama3.jpg"),
         ("face_recognition", "biden.jpg"), ("kphotoalbum", "spiff.jpg"), ("kphotoalbum", "spiff_2.jpg"),
         ("kphotoalbum", "snow.jpg"), ("kphotoalbum", "sunset.jpg")]
# switches that would keep the hub library offline or quiet on its own: unset, so that only our code is tested
HUB_SWITCHES = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                "DISABLE_TELEMETRY", "DO_NOT_TRACK", "HF_HUB_DISABLE_IMPLICIT_TOKEN"]


@pytest.fixture
def album(tmp_path: Path, test_data: Path) -> Path:
    root = tmp_path / "album"
    root.mkdir()
    for folder, name in ALBUM:   # at most 640 px: the models see no less, and a busy CPU gets through sooner
        with Image.open(test_data / folder / name) as im:
            im = im.convert("RGB")
            im.thumbnail((640, 640), Image.Resampling.LANCZOS)
            im.save(root / name, "JPEG", quality=92)
    return root


def _settings(library: Path) -> None:
    with Library(library) as lib:
        for key, value in (("face_backend", "dlib"), ("clip_weights", "random")):
            lib.catalog.set_setting(key, value)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch):
    """The socket module blocked and recorded in this process; hub telemetry recorded; offline switches unset."""
    for name in HUB_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    import huggingface_hub.constants as hub_constants
    from huggingface_hub.utils import _telemetry

    # read from the environment when huggingface_hub was first imported: set them as an online machine has them
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", False)
    seen: dict[str, list] = {"attempts": [], "local": [], "telemetry": []}

    def record(entry: dict) -> None:
        seen["attempts" if entry["event"] == "attempt" else "local"].append(entry)

    def telemetry(name: str):
        def called(*args, **kwargs):
            seen["telemetry"].append({"call": name, "args": repr(args)[:200], "where": netguard._where()})
        return called

    # send_telemetry() looks these up at call time, however its callers imported it; so does the agent detection
    # that building the hub's request headers does (it fetches a registry from the hub once a day)
    monkeypatch.setattr(_telemetry, "_start_telemetry_thread", telemetry("start telemetry thread"))
    monkeypatch.setattr(_telemetry, "_send_telemetry_in_thread", telemetry("send telemetry"))
    try:   # huggingface_hub ≥ 2.x
        from huggingface_hub.utils import _detect_agent
    except ImportError:
        pass
    else:
        monkeypatch.setattr(_detect_agent, "_fetch_registry", telemetry("fetch agent registry"))
    undo = netguard.install(record)
    try:
        yield seen
    finally:
        undo()


def _assert_guard_catches(seen: dict) -> None:
    """The guard is live: a deliberate connection and a deliberate name lookup are both caught."""
    before = len(seen["attempts"])
    with pytest.raises(OSError):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(OSError):
        socket.getaddrinfo("huggingface.co", 443)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(OSError):
            s.connect(("127.0.0.1", 9))
    finally:
        s.close()
    assert len(seen["attempts"]) == before + 3


def test_whole_pipeline_in_process_makes_no_connection(guard: dict, album: Path, tmp_path: Path):
    from huggingface_hub.utils import send_telemetry

    library = tmp_path / "library"
    _settings(library)
    with Library(library) as lib:
        lib.options["vlm"] = "tiny-blip2"
        lib.add_folder(album)
        scan = lib.scan()
        assert scan.new == len(ALBUM)
        report = lib.process()
        for name, st in report.stages.items():
            assert st.unavailable is None and st.errors == 0, (name, st)
            assert st.processed + st.shared == len(ALBUM), name
        ids = {p.name: p.id for p in lib.photos()}
        # concept heads: a thing (CLIP) and a person (faces)
        spiff = lib.concepts().add_object("Spiff", [ids["spiff.jpg"]])
        lib.train_concept_head(spiff.id)
        group = next(p for p in lib.people().people(named=False) if len(lib.people().faces_of(p["id"])) >= 3)
        person = lib.people().name(group["id"], "Barack")
        barack = lib.person_concept(person)
        assert barack.head_state == "ready"
        # the captioner learns the thing, captions and answers by name
        pers = lib.personalizer()
        trained = pers.train([spiff.id], config=TrainingConfig(steps=3))
        assert trained[spiff.id].step == 3
        caption = pers.caption(ids["spiff.jpg"])
        assert caption.model == "tiny-blip2" and caption.text
        assert pers.ask(ids["spiff.jpg"], "What is Spiff doing?").text is not None
        again = lib.process()   # the photos Spiff is in are captioned again
        assert again.stages["captions"].processed >= 1
        for query in ("Spiff", "Barack", "snow", "a dog on the beach"):
            lib.search(query)
        assert lib.search("Barack").results
    assert guard["attempts"] == [], json.dumps(guard["attempts"], indent=1)
    assert guard["telemetry"] == [], guard["telemetry"]
    assert guard["local"] == [], guard["local"]
    # the watches are live: hub telemetry, allowed by the settings above, would have been seen
    send_telemetry("privacy-test")
    assert [t["call"] for t in guard["telemetry"]] == ["start telemetry thread"]
    _assert_guard_catches(guard)


SITECUSTOMIZE = """\
import sys
sys.path.insert(0, {root!r})
from tests.netguard import install_from_env
install_from_env()
"""

# several commands of the real command line in one interpreter: each is `myvlm ARGS` exactly (myvlm_cli.main.main),
# without paying for a Python start-up per command. "{group}" stands for the face group `myvlm people` lists.
DRIVER = """\
import contextlib, io, json, sys
from myvlm_cli.main import main
library, commands = sys.argv[1], json.loads(sys.argv[2])
results, group = [], None
for argv in commands:
    if group is None and any("{group}" in a for a in argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["--library", library, "people", "--json"])
        group = next(p for p in json.loads(out.getvalue()) if len(p["faces"]) >= 3)["id"]
    argv = [a.replace("{group}", str(group)) for a in argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--library", library, *argv])
    results.append({"argv": argv, "code": code, "stdout": out.getvalue()})
print("RESULTS " + json.dumps(results))
"""


def _drive(env: dict[str, str], library: Path, commands: list[list[str]]) -> dict[str, dict]:
    """Run the commands through DRIVER in one guarded subprocess; each must succeed. Results by command."""
    res = subprocess.run([sys.executable, "-c", DRIVER, str(library), json.dumps(commands)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0 and "RESULTS " in res.stdout, res.stderr[-3000:]
    results = json.loads(res.stdout.rsplit("RESULTS ", 1)[1])
    failed = [(r["argv"], r["code"]) for r in results if r["code"] != 0]
    assert not failed, (failed, res.stderr[-3000:])
    return {" ".join(c): r for c, r in zip(commands, results, strict=True)}


def _guarded_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    site = tmp_path / "netguard-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(root=str(ROOT)))
    log = tmp_path / "netguard.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in HUB_SWITCHES}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env[netguard.ENV_LOG] = str(log)
    return env, log


def test_command_line_in_subprocesses_makes_no_connection(album: Path, tmp_path: Path):
    env, log = _guarded_env(tmp_path)
    library = tmp_path / "library"
    _settings(library)

    def run(args: list[str]) -> subprocess.CompletedProcess:
        res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, f"{args[3:]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res

    cli = [sys.executable, "-m", "myvlm_cli", "--library", str(library)]
    out = json.loads(run([*cli, "--vlm", "tiny-blip2", "index", str(album), "--json", "--no-progress"]).stdout)
    for name, st in out["pipeline"]["stages"].items():
        assert st["unavailable"] is None and st["errors"] == 0 and st["processed"] == len(ALBUM), (name, st)
    spiff = str(album / "spiff.jpg")
    commands = [
        ["name", "{group}", "Barack"],
        ["concept", "add-person", "{group}"],                 # a person's head (faces)
        ["--vlm", "tiny-blip2", "train", "Barack", "--steps", "2", "--json"],   # their photos become the examples
        ["concept", "add-object", "Spiff", spiff],            # a thing's head (CLIP)
        ["--vlm", "tiny-blip2", "train", "Spiff", "--steps", "3", "--json"],
        ["--vlm", "tiny-blip2", "caption", spiff, "--json"],
        ["--vlm", "tiny-blip2", "ask", spiff, "What is Spiff doing?", "--json"],
        ["search", "Barack in the snow", "--json"],
        ["status", "--json"],
        ["check", "--json"],
    ]
    results = _drive(env, library, commands)
    assert json.loads(results["check --json"]["stdout"])["ok"]   # `myvlm check`: the library is whole
    assert json.loads(results["--vlm tiny-blip2 caption " + spiff + " --json"]["stdout"])["model"] == "tiny-blip2"

    entries = netguard.read_log(log)
    installed = {e["pid"] for e in entries if e["event"] == "installed"}
    assert len(installed) >= 2, "the guard did not run in every process"
    attempts = [e for e in entries if e["event"] != "installed"]
    assert attempts == [], json.dumps(attempts, indent=1)

    # the guard is live in a subprocess too
    probe_code = ("import socket\ntry:\n    socket.create_connection(('huggingface.co', 443), timeout=1)\n"
                  "except OSError as e:\n    print('blocked', e)")
    probe = subprocess.run([sys.executable, "-c", probe_code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert "blocked" in probe.stdout, probe.stderr
    assert [e["call"] for e in netguard.read_log(log) if e["event"] == "attempt"] == ["socket.create_connection"]


def test_listing_models_makes_no_connection_and_only_getting_one_does(tmp_path: Path):
    """The model manager may connect, and only when asked: `myvlm models` (the table, and as JSON) and `myvlm
    doctor` look at the disk only; `myvlm models get` is the one that goes to the hub (refused here, with a clear
    message), and every connection it tries is its own."""
    env, log = _guarded_env(tmp_path)
    library = tmp_path / "library"
    results = _drive(env, library, [["models"], ["models", "--json"], ["doctor", "--json"]])
    listed = json.loads(results["models --json"]["stdout"])
    assert {m["name"] for m in listed["models"]} >= {"dlib", "ViT-B-32", "blip2"}
    assert "ViT-B-32" in results["models"]["stdout"]
    entries = netguard.read_log(log)
    assert [e["event"] for e in entries] == ["installed"], json.dumps(entries, indent=1)

    got = subprocess.run([sys.executable, "-m", "myvlm_cli", "--library", str(library), "models", "get", "ViT-B-32",
                          "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                         check=False)
    assert got.returncode != 0 and "Traceback" not in got.stderr, got.stderr[-3000:]
    assert "cannot reach the model hub" in got.stderr
    attempts = [e for e in netguard.read_log(log) if e["event"] == "attempt"]
    assert attempts and all("downloads.py" in e["where"] for e in attempts), json.dumps(attempts, indent=1)
