"""Damaged models: a cut-short safetensors file or a pickle that is not plain weights, in the captioning model's
folder or the CLIP weights. Each is refused with one sentence (never a traceback, never run), the stage that needs
it is unavailable while `index` does the rest, and `models import`/`verify` refuse what would not load.

The models are the real BLIP-2 architecture with tiny random weights (`build_tiny_blip2`), damaged here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine.models.downloads import ModelError, ModelManager
from engine.models.files import ModelLoadError, folder_problem, load_problem, quick_problem
from engine.models.vlm.tiny import build_tiny_blip2

from .conftest import myvlm


class _Payload:
    """A pickled object that would create a file if it were ever unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """good: the tiny BLIP-2 as written; cut: model.safetensors cut in half; pickle: pytorch_model.bin instead,
    holding an object weights_only refuses."""
    root = tmp_path_factory.mktemp("checkpoints")
    good = build_tiny_blip2(root / "good")
    cut = root / "cut"
    shutil.copytree(good, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    pickled = root / "pickle"
    shutil.copytree(good, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weight": _Payload(root / "PAYLOAD-RAN")}, pickled / "pytorch_model.bin")
    return {"good": good, "cut": cut, "pickle": pickled, "marker": root / "PAYLOAD-RAN"}


def _one_sentence(text: str) -> None:
    assert "Traceback" not in text and "Error:" not in text, text
    assert len(text.strip().splitlines()) == 1, text


def test_checks_name_the_file_and_never_run_the_pickle(checkpoints):
    assert folder_problem(checkpoints["good"]) is None
    cut = folder_problem(checkpoints["cut"], quick=True)   # the header check needs no torch
    assert cut.startswith("model.safetensors is cut short")
    assert quick_problem(checkpoints["pickle"] / "pytorch_model.bin") is None   # only the full check opens pickles
    refused = load_problem(checkpoints["pickle"] / "pytorch_model.bin")
    assert "refused, not run" in refused
    assert not checkpoints["marker"].exists()


@pytest.mark.parametrize("damage", ["cut", "pickle"])
def test_loading_a_damaged_captioner_raises_one_sentence(checkpoints, damage, tmp_path):
    from engine.models.vlm.auto import load_vlm

    with pytest.raises(ModelLoadError) as err:
        load_vlm(str(checkpoints[damage]), models_dir=tmp_path, device="cpu")
    _one_sentence(str(err.value))
    assert "cannot be loaded" in str(err.value)
    assert not checkpoints["marker"].exists()


def test_a_damaged_clip_file_is_unavailable_in_one_sentence(tmp_path):
    from engine.models.clip import ClipEncoder

    bad = tmp_path / "open_clip_model.safetensors"
    bad.write_bytes((200).to_bytes(8, "little") + b"{}")   # the header says 200 bytes; the file has 2
    enc = ClipEncoder("ViT-B-32", weights=str(bad))
    reason = enc.missing_reason()
    assert reason and "cut short" in reason and "open_clip_model.safetensors" in reason
    _one_sentence(reason)
    with pytest.raises(ModelLoadError):
        enc.load()


def _album(tmp_path: Path, test_data: Path, n: int = 3) -> Path:
    album = tmp_path / "album"
    album.mkdir()
    for name in ("spiff.jpg", "snow.jpg", "sunset.jpg")[:n]:
        shutil.copy(test_data / "kphotoalbum" / name, album / name)
    return album


@pytest.fixture(scope="module")
def indexed(checkpoints, tmp_path_factory, test_data) -> dict:
    """`myvlm index` of the album with the pickled captioner set (random CLIP), once for the tests below: each
    works on a copy of the library."""
    root = tmp_path_factory.mktemp("indexed")
    album = _album(root, test_data)
    lib = root / "lib"
    myvlm("settings", "clip_weights", "random", library=lib)
    myvlm("settings", "vlm", str(checkpoints["pickle"]), library=lib)
    res = myvlm("index", str(album), "--json", "--no-progress", library=lib, check=False)
    return {"album": album, "lib": lib, "index": res}


def test_index_goes_on_when_the_captioner_does_not_load(checkpoints, indexed, tmp_path):
    res = indexed["index"]
    assert res.returncode == 0, res.stderr
    lib = shutil.copytree(indexed["lib"], tmp_path / "lib")
    _one_sentence_in = json.loads(res.stdout)["pipeline"]["stages"]
    reason = _one_sentence_in["captions"]["unavailable"]
    assert "pytorch_model.bin" in reason and "refused, not run" in reason
    _one_sentence(reason)
    assert _one_sentence_in["clip"]["processed"] == 3 and _one_sentence_in["thumbnail"]["processed"] == 3
    assert "Traceback" not in res.stderr and not checkpoints["marker"].exists()

    # a cut-short file is seen before anything loads, and `status` says so too
    myvlm("settings", "vlm", str(checkpoints["cut"]), library=lib)
    status = json.loads(myvlm("status", "--json", library=lib).stdout)
    assert "model.safetensors is cut short" in status["stages"]["captions"]["unavailable"]


def test_commands_that_need_the_captioner_say_one_sentence(checkpoints, indexed, tmp_path):
    album = indexed["album"]
    assert indexed["index"].returncode == 0, indexed["index"].stderr
    lib = shutil.copytree(indexed["lib"], tmp_path / "lib")
    myvlm("concept", "add-object", "Spiff", str(album / "spiff.jpg"), library=lib)
    photo = str(album / "spiff.jpg")
    for command in (["caption", photo], ["ask", photo, "What is this?"], ["targets", "Spiff", "--generate"],
                    ["train", "Spiff", "--steps", "1"]):
        res = myvlm(*command, library=lib, check=False)
        assert res.returncode != 0, command
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("myvlm:")]
        assert len(lines) == 1 and "refused, not run" in lines[0], (command, res.stderr)
        assert "Traceback" not in res.stderr, (command, res.stderr)
    assert not checkpoints["marker"].exists()


def test_research_train_says_one_sentence(checkpoints, tmp_path, test_data):
    folder = tmp_path / "mug"
    folder.mkdir()
    shutil.copy(test_data / "kphotoalbum" / "snow.jpg", folder / "1.jpg")
    (folder / "captions.json").write_text(json.dumps({"1.jpg": ["sks on a table"]}))
    res = myvlm("research-train", str(folder), "--out", str(tmp_path / "out"), "--vlm", str(checkpoints["cut"]),
                "--steps", "1", library=tmp_path / "lib", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("myvlm: the captioning model")


@pytest.mark.parametrize("damage", ["cut", "pickle"])
def test_import_refuses_weights_that_would_not_load(checkpoints, tmp_path, damage):
    mm = ModelManager(tmp_path / "models", cache_dir=tmp_path / "hub", offline=True)
    with pytest.raises(ModelError) as err:
        mm.import_folder("blip2", checkpoints[damage])
    assert "was not imported" in str(err.value)
    _one_sentence(str(err.value))
    assert mm.state("blip2") == "missing"
    assert not checkpoints["marker"].exists()


def test_verify_finds_a_pickle_that_the_hashes_cannot(checkpoints, tmp_path):
    mm = ModelManager(tmp_path / "models", cache_dir=tmp_path / "hub", offline=True)
    mm.import_folder("blip2", checkpoints["good"])
    assert mm.verify("blip2").ok
    # the cache as an older version left it: the weights are a pickle, stored under its own hash
    snap = Path(mm.status("blip2")[0].where)
    (snap / "model.safetensors").unlink()
    import hashlib

    data = (checkpoints["pickle"] / "pytorch_model.bin").read_bytes()
    blob = mm.repo_dir(mm.entry("blip2")) / "blobs" / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    os.symlink(os.path.relpath(blob, snap), snap / "pytorch_model.bin")
    rep = mm.verify("blip2")
    assert not rep.ok and any("pytorch_model.bin" in p and "refused" in p for p in rep.problems)
    fixed = mm.verify("blip2", fix=True)
    assert fixed.removed == ["pytorch_model.bin"] and not blob.exists()
    assert not checkpoints["marker"].exists()


def test_a_cut_short_model_in_the_cache_is_not_listed_as_present(checkpoints, tmp_path):
    mm = ModelManager(tmp_path / "models", cache_dir=tmp_path / "hub", offline=True)
    mm.import_folder("blip2", checkpoints["good"])
    blob = (Path(mm.status("blip2")[0].where) / "model.safetensors").resolve()
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])   # a disk that filled up, a copy stopped half way
    st = mm.status("blip2")[0]
    assert st.state == "partial" and "model.safetensors is cut short" in st.fix
    assert "`myvlm models verify blip2 --fix`" in st.fix
    assert mm.verify("blip2", fix=True).removed == ["model.safetensors"]


def test_missing_weights_name_the_model_and_its_real_size(tmp_path):
    from engine.models.vlm.auto import VLM_SPECS, VlmWeightsMissing, checkpoint_folder

    with pytest.raises(VlmWeightsMissing) as err:
        checkpoint_folder(VLM_SPECS["blip2"], "Salesforce/blip2-flan-t5-xl-not-here", tmp_path)
    text = str(err.value)
    assert "`myvlm models get blip2`" in text and "about 15.8 GB" in text and "8 GB" not in text.replace("15.8", "")
