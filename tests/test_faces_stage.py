"""The faces stage on real faces (dlib), through the real pipeline: identities survive re-runs, duplicates,
forgetting and a switch of backend; `myvlm people --json` has the documented shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.library import Library
from engine.pipeline.faces import same_face

from .conftest import myvlm
from .test_face_backends import write_tiny_arcface

PORTRAITS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


@pytest.fixture
def album(test_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "album"
    root.mkdir()
    for name in PORTRAITS:
        shutil.copy(test_data / "face_recognition" / name, root / name)
    return root


def _faces(lib: Library) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in lib.photos():
        out[p.name] = lib.people().faces_in_photo(p.id)
    return out


def _index(lib: Library, album: Path) -> None:
    lib.add_folder(album)
    lib.scan()
    lib.process()


def test_portraits_cluster_and_rerun_keeps_identity(library: Library, album: Path):
    _index(library, album)
    faces = _faces(library)
    assert all(len(f) == 1 for f in faces.values())  # one face per portrait
    obama = {faces[n][0]["person_id"] for n in PORTRAITS[:3]}
    assert len(obama) == 1 and None not in obama
    assert faces["biden.jpg"][0]["person_id"] not in obama
    assert (library.paths.faces / f"{faces['obama.jpg'][0]['id']}.jpg").exists()  # crop for the GUI
    pid = obama.pop()
    library.people().name(pid, "Barack Obama")
    # redo everything: the same faces are found at the same places and keep ids, person and state
    library.process(mode="all")
    again = _faces(library)
    for n in PORTRAITS:
        assert [f["id"] for f in again[n]] == [f["id"] for f in faces[n]]
    assert {again[n][0]["person_name"] for n in PORTRAITS[:3]} == {"Barack Obama"}
    assert {again[n][0]["state"] for n in PORTRAITS[:3]} == {"confirmed"}


def test_duplicate_photo_shares_faces(library: Library, album: Path):
    shutil.copy(album / "obama.jpg", album / "copy.jpg")
    _index(library, album)
    faces = _faces(library)
    assert len(faces["copy.jpg"]) == 1 and faces["copy.jpg"][0]["id"] != faces["obama.jpg"][0]["id"]
    runs = library.catalog.query(
        "SELECT p.name, s.runs FROM stage_status s JOIN photos p ON p.id = s.photo_id WHERE s.stage = 'faces' "
        "AND p.name IN ('copy.jpg', 'obama.jpg')")
    assert sum(r["runs"] for r in runs) == 1  # detected once


def test_forgotten_faces_are_not_recognised_again(library: Library, album: Path):
    _index(library, album)
    faces = _faces(library)
    pid = faces["obama.jpg"][0]["person_id"]
    assert library.people().forget(pid) == 3
    library.process(mode="all")
    after = _faces(library)
    for n in PORTRAITS[:3]:
        (f,) = after[n]
        assert f["state"] == "ignored" and f["embedding"] is None and f["person_id"] is None
    assert library.people().people(include_hidden=True) == []  # Biden alone founds nobody


def test_backend_switch_reembeds_and_keeps_people(library: Library, album: Path, test_data: Path, tmp_path: Path):
    _index(library, album)
    faces = _faces(library)
    pid = faces["obama.jpg"][0]["person_id"]
    library.people().name(pid, "Barack Obama")
    # an InsightFace-format pack: the real SCRFD detector and a tiny recogniser of ArcFace's signature whose
    # embeddings are meaningless (no real recognition pack can be installed here)
    pack = tmp_path / "tiny-pack"
    pack.mkdir()
    shutil.copy(test_data / "scrfd" / "scrfd.onnx", pack / "det.onnx")
    write_tiny_arcface(pack / "rec.onnx")
    library.options["face_backend"] = str(pack)
    report = library.process()
    assert report.stages["faces"].processed == 4  # a new embedding space: every photo again
    after = _faces(library)
    for n in PORTRAITS:
        assert len(after[n]) == 1, after[n]  # the same face, matched across detectors, not a second one
        assert after[n][0]["id"] == faces[n][0]["id"]
        assert after[n][0]["backend"] != faces[n][0]["backend"]
    keys = {r["backend"] for r in library.catalog.query("SELECT backend FROM faces WHERE state != 'ignored'")}
    assert keys == {after["obama.jpg"][0]["backend"]}  # embeddings of different backends never mix
    assert {after[n][0]["person_name"] for n in PORTRAITS[:3]} == {"Barack Obama"}  # the user's work is kept


def test_same_face_rule():
    assert same_face((0, 0, 100, 100), (10, 10, 100, 100), True) > 0.5
    assert same_face((0, 0, 100, 100), (60, 60, 100, 100), True) == 0
    # dlib's square box vs SCRFD's taller box of the same face (measured on obama2.jpg: IoU 0.53 ... 0.76)
    assert same_face((171, 290, 268, 269), (202, 233, 279, 400), False) > 0
    assert same_face((171, 290, 268, 269), (202, 233, 279, 400), True) > 0
    assert same_face((0, 0, 100, 100), (90, 0, 100, 100), False) == 0  # a neighbour, not the same face


def test_people_cli_json(tmp_path: Path, album: Path):
    lib = tmp_path / "lib"
    myvlm("index", str(album), "--no-progress", library=lib)
    people = json.loads(myvlm("people", "--json", library=lib).stdout)
    assert len(people) == 1
    p = people[0]
    assert set(p) >= {"id", "name", "hidden", "faces"} and p["name"] is None and p["hidden"] is False
    assert len(p["faces"]) == 3
    f = p["faces"][0]
    assert set(f) == {"id", "photo", "bbox", "score", "state"} and len(f["bbox"]) == 4
    assert Path(f["photo"]).is_absolute() and Path(f["photo"]).name.startswith("obama")
    myvlm("name", str(p["id"]), "Barack Obama", library=lib)
    named = json.loads(myvlm("people", "--json", library=lib).stdout)
    assert named[0]["name"] == "Barack Obama" and {f["state"] for f in named[0]["faces"]} == {"confirmed"}
    faces = json.loads(myvlm("faces", f["photo"], "--json", library=lib).stdout)
    assert faces[0]["person"] == "Barack Obama"
    res = myvlm("reject", str(f["id"]), str(p["id"]), library=lib)
    assert "will not be suggested" in res.stdout
    assert len(json.loads(myvlm("people", "--json", library=lib).stdout)[0]["faces"]) == 2
    myvlm("hide", str(p["id"]), library=lib)
    assert json.loads(myvlm("people", "--json", library=lib).stdout) == []
    assert len(json.loads(myvlm("people", "--json", "--all", library=lib).stdout)) == 1
    bad = myvlm("merge", "999", "1", library=lib, check=False)
    assert bad.returncode == 2 and "no person with id 999" in bad.stderr
    assert "re-clustered" in myvlm("recluster", library=lib).stdout
    # the rejected face stays away from the person after a full re-cluster
    assert len(json.loads(myvlm("people", "--json", "--all", library=lib).stdout)[0]["faces"]) == 2
