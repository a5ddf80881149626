"""The light commands (status, people, name, search by words) never import the model libraries.

Importing torch (through the captions stage) and huggingface_hub's download code (to ask whether weights are here)
took most of the 3.6 s that `myvlm --version` and the 4.3 s that `status` took (issue 16, item 6); these commands
only read the catalog. What each command imports is a behaviour, checked here in a fresh interpreter; how
long it takes is measured in bench/bench_cli_startup.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, myvlm

MODEL_LIBRARIES = ("torch", "transformers", "open_clip", "insightface", "onnxruntime", "dlib", "cv2")
PROBE = f"""
import json, sys
from myvlm_cli.main import main
rc = main(sys.argv[1:])
print("\\nMODULES " + json.dumps({{"rc": rc, "loaded": [m for m in {MODEL_LIBRARIES!r} if m in sys.modules]}}))
"""


def imports_of(library: Path, *args: str) -> dict:
    """Run one command in a fresh interpreter; its exit code and which model libraries it loaded."""
    res = subprocess.run([sys.executable, "-c", PROBE, "--library", str(library), *args],
                         capture_output=True, text=True, cwd=ROOT)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("MODULES ")), None)
    assert line is not None, f"myvlm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return json.loads(line.removeprefix("MODULES "))


@pytest.fixture(scope="module")
def faces_library(tmp_path_factory: pytest.TempPathFactory, test_data: Path) -> Path:
    """Four real photos of Anne Helene, through the thumbnail and face stages (dlib): one unnamed group."""
    album = tmp_path_factory.mktemp("album")
    source = test_data / "kphotoalbum"
    for name in ("anne_helene.jpg", "CategoryImages/People-Anne_Helene.jpg", "bar55.jpg", "bar55_2.jpg"):
        shutil.copy(source / name, album / Path(name).name)
    library = tmp_path_factory.mktemp("lib") / "library"
    myvlm("index", str(album), "--stage", "thumbnail", "--stage", "faces", "--no-progress", library=library)
    return library


def test_light_commands_load_no_model_library(faces_library: Path):
    people = json.loads(myvlm("people", "--json", library=faces_library).stdout)
    assert people, "the fixture should have found a face group"
    group = people[0]["id"]
    for args in (("status",), ("status", "--json"), ("people",), ("name", str(group), "Anne Helene"),
                 ("search", "Anne Helene"), ("search", "beach")):
        seen = imports_of(faces_library, *args)
        assert seen == {"rc": 0, "loaded": []}, f"myvlm {' '.join(args)}: {seen}"
    assert json.loads(myvlm("people", "--named", "--json", library=faces_library).stdout)[0]["name"] == "Anne Helene"


def test_version_loads_no_model_library(tmp_path: Path):
    res = subprocess.run([sys.executable, "-c", "import sys\nfrom myvlm_cli.main import main\ntry:\n    main(['--version'])\n"
                          f"except SystemExit:\n    pass\nprint([m for m in {MODEL_LIBRARIES!r} if m in sys.modules])"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.strip().splitlines()[-1] == "[]"
