"""`myvlm concept ...` end to end, as a script would use it (random-weight CLIP: no weights can be downloaded here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .conftest import myvlm


def test_concept_commands(tmp_path: Path, test_data: Path):
    album = tmp_path / "album"
    album.mkdir()
    for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
        shutil.copy(test_data / "face_recognition" / name, album / name)
    for name in ("spiff.jpg", "spiff_2.jpg", "snow.jpg", "sunset.jpg", "skagen.jpg"):
        shutil.copy(test_data / "kphotoalbum" / name, album / name)
    lib = tmp_path / "lib"
    # without CLIP weights the app still works, and says what is missing
    out = json.loads(myvlm("index", str(album), "--json", "--no-progress", library=lib).stdout)
    assert "hf download" in out["pipeline"]["stages"]["clip"]["unavailable"]
    res = myvlm("concept", "add-object", "Spiff", str(album / "spiff.jpg"), library=lib, check=False)
    assert res.returncode == 2 and "CLIP" in res.stderr
    # nothing half-made is left: no concept is listed, and the same command works once CLIP is there
    assert json.loads(myvlm("concept", "list", "--json", library=lib).stdout) == []

    myvlm("settings", "clip_weights", "random", library=lib)
    myvlm("index", "--no-progress", library=lib)
    concept = json.loads(myvlm("concept", "add-object", "Spiff", str(album / "spiff.jpg"), str(album / "spiff_2.jpg"),
                               "--json", library=lib).stdout)
    assert concept["kind"] == "object" and concept["identifier"] == "sks" and concept["head"]["state"] == "ready"
    assert concept["head"]["metrics"]["method"] == "leave-one-out"
    signals = json.loads(myvlm("concept", "detect", str(album / "spiff.jpg"), "--json", library=lib).stdout)
    assert signals[0]["name"] == "Spiff" and signals[0]["fired"] is True  # its own training photo
    # a name already used (in any case) ADDS the photos to that thing and retrains it, as the app does
    # (Library.teach_thing; the command line used to refuse the name)
    again = json.loads(myvlm("concept", "add-object", "spiff", str(album / "snow.jpg"), "--json", library=lib).stdout)
    assert (again["id"], again["name"], again["head"]["state"]) == (concept["id"], "Spiff", "ready")
    assert again["head"]["revision"] > concept["head"]["revision"]
    assert [(c["name"], c["examples"]) for c in json.loads(myvlm("concept", "list", "--json", library=lib).stdout)] \
        == [("Spiff", 3)]

    people = json.loads(myvlm("people", "--json", library=lib).stdout)
    obama = people[0]["id"]
    res = myvlm("concept", "add-person", str(obama), library=lib, check=False)
    assert res.returncode == 2 and "has no name yet" in res.stderr
    myvlm("name", str(obama), "Barack Obama", library=lib)
    res = myvlm("train", "Nobody", "--vlm", "tiny-blip2", library=lib, check=False)
    assert res.returncode == 2 and "myvlm concept list" in res.stderr and "myvlm people" in res.stderr
    # `train NAME` for a named person without a concept makes it, as the app's Teach the captioner does
    res = myvlm("train", "Barack Obama", "--vlm", "tiny-blip2", "--steps", "1", library=lib)
    assert "had no concept yet" in res.stderr and "trained on tiny-blip2" in res.stdout
    text = myvlm("concept", "add-person", str(obama), library=lib).stdout
    assert "Barack Obama (person" in text and "found in 3 photo(s)" in text
    listed = json.loads(myvlm("concept", "list", "--json", library=lib).stdout)
    assert [(c["name"], c["kind"]) for c in listed] == [("Barack Obama", "person"), ("Spiff", "object")]
    assert next(c for c in listed if c["name"] == "Barack Obama")["photos"] == 3
    biden = json.loads(myvlm("concept", "detect", str(album / "biden.jpg"), "--json", library=lib).stdout)
    assert not any(s["fired"] and s["name"] == "Barack Obama" for s in biden)
    ob = json.loads(myvlm("concept", "detect", str(album / "obama2.jpg"), "--json", library=lib).stdout)
    hit = next(s for s in ob if s["name"] == "Barack Obama")
    assert hit["fired"] and hit["face_id"] is not None  # which face matched

    # the research layout imports
    research = tmp_path / "research" / "mug"
    research.mkdir(parents=True)
    shutil.copy(album / "snow.jpg", research / "1.jpg")
    (research / "captions.json").write_text(json.dumps({"1.jpg": ["sks on a snowy table"]}))
    assert "imported" in myvlm("concept", "import", str(research), "--name", "Mug", library=lib).stdout
    assert "Mug" in myvlm("concept", "list", library=lib).stdout
