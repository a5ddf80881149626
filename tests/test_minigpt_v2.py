"""MiniGPT-v2 on its tiny random-weight preset: the same parts as the real model (a Blip2VisionModel ViT whose position
embeddings are interpolated at load, the projection over 4 neighbouring tokens, a Llama whose LoRA comes from an
official-format `minigptv2_checkpoint.pth`), loaded through the same code as the real weights.

Captions, training (loss falls, resume), "where is …?" boxes through the engine, `myvlm locate` and the app; the box
parser on well-formed and malformed answers; the official checkpoint's key mapping; a hostile pickle; the research
embedding format.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.domain.concepts.research import load_research_concept_embeddings
from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import ConceptToTrain, ConceptTrainer, TrainingConfig, TrainingExample
from engine.models.vlm.auto import VlmWeightsMissing, load_vlm
from engine.models.vlm.minigpt_v2 import (
    OFFICIAL_CHECKPOINT,
    LocateCancelled,
    MiniGptV2Config,
    parse_box,
    write_official_checkpoint,
)
from engine.models.vlm.tiny import ensure_tiny_checkpoint

from .helpers import stop_at_step

PRESET = "tiny-minigpt-v2"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def wrapper(models_dir):
    return load_vlm(PRESET, models_dir=models_dir)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


# -- the parts ------------------------------------------------------------------------------------------------------

def test_the_parts_are_minigpt_v2s_and_the_vit_is_interpolated_to_its_image_size(wrapper):
    from safetensors.torch import load_file

    w = wrapper
    folder = Path(w.model.language_model.config._name_or_path).parent
    cfg = MiniGptV2Config.read(folder)
    vcfg = w.vision_tower.config
    assert vcfg.image_size == cfg.image_size == 64 and vcfg.patch_size == 8
    assert w.n_visual_tokens == (64 // 8) ** 2 // 4 == 16
    assert w.projector.in_features == 4 * vcfg.hidden_size and w.concept_dim == w.projector.out_features
    # the saved ViT ran at 32 px (4 × 4 patches); its position embeddings were interpolated bicubically to 8 × 8
    saved = load_file(str(folder / "vision" / "model.safetensors"))["embeddings.position_embedding"]
    grid = saved[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    got = w.vision_tower.embeddings.position_embedding
    assert got.shape == (1, 65, vcfg.hidden_size)
    assert torch.allclose(got[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 64, -1), atol=1e-6)
    assert torch.equal(got[:, :1], saved[:, :1])
    # MiniGPT-v2's frozen ln_vision (weight 1, bias 0) sits where BLIP-2's trained post_layernorm was
    ln = w.vision_tower.post_layernorm
    assert torch.equal(ln.weight, torch.ones_like(ln.weight)) and torch.equal(ln.bias, torch.zeros_like(ln.bias))
    # 4 neighbouring tokens concatenated: group j holds patch tokens 4j..4j+3 (the CLS token dropped)
    pixels = w.preprocess(_images(2))
    assert pixels.shape[-2:] == (64, 64)
    with torch.no_grad():
        tokens = w.vision_tower(pixel_values=pixels).last_hidden_state[:, 1:]
        feats = w.visual_features(pixels)
    assert feats.shape == (2, 16, 4 * vcfg.hidden_size)
    assert torch.equal(feats[:, 3, vcfg.hidden_size:2 * vcfg.hidden_size], tokens[:, 13])


def test_the_official_checkpoint_maps_projection_and_lora_weights(models_dir, tmp_path):
    """A checkpoint written with the official key names (peft's `.default` adapter infix too) is mapped: the
    projection copied, each LoRA pair merged as W + alpha/r · B·A, other layers untouched."""
    from transformers import LlamaForCausalLM

    tiny = ensure_tiny_checkpoint(PRESET, models_dir / "tiny")
    folder = tmp_path / "copy"
    shutil.copytree(tiny, folder)
    cfg = MiniGptV2Config.read(folder)
    base = LlamaForCausalLM.from_pretrained(folder / "llama").eval()
    torch.manual_seed(11)
    proj = torch.nn.Linear(4 * 32, 64)
    lora = {(1, "q_proj"): (torch.randn(8, 64), torch.randn(64, 8)),
            (0, "v_proj"): (torch.randn(8, 64), torch.randn(64, 8))}
    write_official_checkpoint(folder / OFFICIAL_CHECKPOINT, proj, lora, default_adapter=True)
    w = load_vlm(str(folder), models_dir=models_dir, dtype="fp32")
    assert w.family == "minigpt-v2"
    assert torch.equal(w.projector.weight, proj.weight) and torch.equal(w.projector.bias, proj.bias)
    layers, base_layers = w.language_model.layers, base.model.layers
    for (i, target), (a, b) in lora.items():
        want = getattr(base_layers[i].self_attn, target).weight + (cfg.lora_alpha / 8) * (b @ a)
        assert torch.allclose(getattr(layers[i].self_attn, target).weight, want, atol=1e-5)
    assert torch.equal(layers[0].self_attn.q_proj.weight, base_layers[0].self_attn.q_proj.weight)
    assert torch.equal(layers[1].self_attn.k_proj.weight, base_layers[1].self_attn.k_proj.weight)
    # a file without the projection is not a MiniGPT-v2 checkpoint: one sentence
    torch.save({"model": {"something.else": torch.zeros(2)}}, folder / OFFICIAL_CHECKPOINT)
    from engine.models.files import ModelLoadError

    with pytest.raises(ModelLoadError, match="no llama_proj weights"):
        load_vlm(str(folder), models_dir=models_dir, dtype="fp32")


class _Hostile:
    def __reduce__(self):
        return (os.system, (f"touch {_Hostile.target}",))


def test_a_checkpoint_with_code_in_it_is_refused_in_one_sentence(models_dir, tmp_path):
    from engine.models.files import ModelLoadError

    tiny = ensure_tiny_checkpoint(PRESET, models_dir / "tiny")
    folder = tmp_path / "hostile"
    shutil.copytree(tiny, folder)
    _Hostile.target = str(tmp_path / "pwned")
    with (folder / OFFICIAL_CHECKPOINT).open("wb") as f:
        pickle.dump({"model": {"llama_proj.weight": _Hostile()}}, f)
    with pytest.raises(ModelLoadError) as err:
        load_vlm(str(folder), models_dir=models_dir, dtype="fp32")
    text = str(err.value)
    assert OFFICIAL_CHECKPOINT in text and "refused, not run" in text and "\n" not in text
    assert not (tmp_path / "pwned").exists()


def test_the_real_model_names_its_three_missing_parts(tmp_path):
    with pytest.raises(VlmWeightsMissing) as err:
        load_vlm("minigpt-v2", models_dir=tmp_path)
    text = str(err.value)
    for part in ("meta-llama/Llama-2-7b-chat-hf", "token", "myvlm models get blip2", OFFICIAL_CHECKPOINT):
        assert part in text


# -- the concept layer ----------------------------------------------------------------------------------------------

def test_no_concept_is_bit_identical_and_the_token_follows_llama_proj_at_the_mean_norm(wrapper):
    w = wrapper
    images = _images(3)
    pixels = w.preprocess(images)
    w.set_concepts({})
    with torch.no_grad():
        feats = w.visual_features(pixels)
        plain_tokens = torch.nn.functional.linear(feats, w.projector.weight, w.projector.bias)
    before = w.caption(images)
    w.set_concepts({3: torch.randn(w.concept_dim), 8: torch.randn(w.concept_dim)})
    with torch.no_grad():
        assert torch.equal(w._visual_features(pixels), plain_tokens)      # known, not fired: the hook is a no-op
    assert w.caption(images) == before
    values = {5: torch.randn(w.concept_dim) * 7, 2: torch.randn(w.concept_dim) * 3}
    w.set_concepts(values)
    with torch.no_grad(), w._active([[5, 2], [2, 5]]):
        extended = w._visual_features(pixels[:2])
    assert extended.shape[1] == w.n_visual_tokens + 2
    mean = plain_tokens[:2].norm(dim=-1).mean(dim=1)
    assert torch.allclose(extended[:, 16:].norm(dim=-1), mean[:, None].expand(2, 2), rtol=1e-4)
    unit = torch.nn.functional.normalize(values[2], dim=-1)
    assert torch.allclose(torch.nn.functional.normalize(extended[1, 16], dim=-1), unit, atol=1e-5)
    w.set_concepts({})


def test_gradients_reach_only_the_concept_values_through_the_lm_attention_regulariser(wrapper):
    w = wrapper
    w.set_concepts({4: torch.randn(w.concept_dim)}, trainable=True)
    pixels = w.preprocess(_images(3))
    prompt = w.training_prompt("caption", "sks")
    assert prompt == "[caption] A short image caption of sks:"
    assert w.chat_prompt(prompt) == "[INST] <Img><ImageHere></Img> [caption] A short image caption of sks: [/INST]"
    assert w.chat_prompt("What is sks doing?") == "[INST] <Img><ImageHere></Img> [vqa] What is sks doing? [/INST]"
    parts = w.training_loss(pixels, [prompt] * 3, ["sks on the beach", "a dog", "sks with a ball"],
                            [[4], [], [4]], 1.0)
    parts.total.backward()
    assert w.concept_layer.values.grad is not None and w.concept_layer.values.grad.abs().sum() > 0
    assert all(p.grad is None for p in w.model.parameters())
    assert parts.reg > 0 and len(parts.attention) == len(w.language_model.layers)
    w.concept_layer.values.grad = None
    w.set_concepts({})


def test_training_lowers_the_loss_resumes_and_exports_the_research_format(wrapper, tmp_path):
    from engine.domain.concepts.object_head import TrainingCancelled
    from engine.domain.personalize.training import DEFAULT_LAMBDA

    w = wrapper
    assert DEFAULT_LAMBDA[("minigpt-v2", "caption")] == 1.0      # the reference code's λ for MiniGPT-v2
    prompt = w.training_prompt("caption", "sks")
    examples = [TrainingExample(img, [7], [(prompt, "sks on the beach")]) for img in _images(3, 1)]
    cfg = TrainingConfig(steps=10, augment=False, seed=3, checkpoint_every=4)
    losses: list[float] = []
    full = ConceptTrainer(w, EmbeddingStore(tmp_path / "a"), cfg).train(
        [ConceptToTrain(7, "sks")], examples, progress=lambda p: losses.append(p.lm_loss))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) and losses[-1] < losses[0] - 1e-3, losses
    assert full[7].family == "minigpt-v2" and sorted(full[7].history) == [4, 8, 10]
    store = EmbeddingStore(tmp_path / "b")
    seen: list[int] = []
    progress, stop = stop_at_step(5, seen)
    with pytest.raises(TrainingCancelled):
        ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], examples, progress=progress, cancel=stop)
    resumed = ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], examples)
    assert np.allclose(resumed[7].values, full[7].values, atol=1e-6)
    # research export under the reference's name, then imported back with a research concept folder
    pt = store.export_research(7, w.checkpoint, "caption", tmp_path / "out", w.family)
    assert pt.name == "concept_embeddings_MINIGPT_V2_CAPTIONING.pt"
    steps = load_research_concept_embeddings(pt)
    assert sorted(steps) == [4, 5, 8, 10] and np.array_equal(steps[10]["values"], resumed[7].values)
    # the trained token changes what the model says where it fired, and nothing elsewhere
    w.set_concepts({7: torch.from_numpy(resumed[7].values[0])})
    plain, personal = w.caption(_images(2, 1), concepts=[[], [7]], identifiers=[None, "sks"])
    assert plain == w.caption(_images(1, 1))[0]
    w.set_concepts({})


def test_research_embeddings_of_minigpt_v2_import_for_the_real_checkpoint(library, tmp_path):
    from engine.domain.concepts.research import export_research_concept_embeddings, import_research_concept
    from engine.models.vlm.auto import VLM_SPECS

    folder = tmp_path / "sks_mug"
    folder.mkdir()
    for i in range(2):
        _images(1, i)[0].save(folder / f"{i}.jpg")
    (folder / "captions.json").write_text(json.dumps({"0.jpg": ["sks on a table"], "1.jpg": ["sks in a kitchen"]}))
    values = np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float32)
    export_research_concept_embeddings(folder / "concept_embeddings_MINIGPT_V2_CAPTIONING.pt",
                                       {200: {"keys": np.zeros((1, 2), np.float32), "values": values}})
    concept = import_research_concept(library.concepts(), folder)
    store = EmbeddingStore(library.catalog.paths.concepts)
    emb = store.load(concept.id, VLM_SPECS["minigpt-v2"].checkpoint, "caption")
    assert emb is not None and emb.source == "research-import" and emb.step == 200
    assert np.array_equal(emb.values, values)
    out = store.export_research(concept.id, emb.checkpoint, "caption", tmp_path / "again", "minigpt-v2")
    assert np.array_equal(load_research_concept_embeddings(out)[200]["values"], values)


# -- boxes ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, box", [
    ("{<10><20><50><80>}", (64, 96, 320, 384)),
    ("<p>sks</p> {<0><0><100><100>}", (0, 0, 640, 480)),
    ("{ <10> <20> <50> <80> } and {<1><1><2><2>}", (64, 96, 320, 384)),     # the first box
])
def test_well_formed_boxes_become_pixels_of_the_photo(text, box):
    found = parse_box(text, 640, 480)
    assert found.box == box and found.raw == text and not found.reason


@pytest.mark.parametrize("text", [
    "", "a dog on the beach", "<10><20><50><80>", "{<10><20><50>}", "{<10><20><50><80>",
    "{<10><20><150><80>}", "{<50><20><10><80>}", "{<10><80><50><20>}", "{<10><20><10><80>}",
    "{<a><b><c><d>}", "{<-1><2><3><4>}", "{<10.5><20><50><80>}",
])
def test_malformed_answers_are_no_box(text):
    found = parse_box(text, 640, 480)
    assert found.box is None and found.reason and found.raw == text


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("{}<> 0123456789-.abc")), max_size=40),
       width=st.integers(1, 5000), height=st.integers(1, 5000))
def test_any_text_gives_a_box_inside_the_photo_or_no_box(text, width, height):
    found = parse_box(text, width, height)
    if found.box is not None:
        x1, y1, x2, y2 = found.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    else:
        assert found.reason


def test_locate_asks_refer_with_the_token_and_can_be_cancelled(wrapper):
    import threading

    w = wrapper
    w.set_concepts({7: torch.randn(w.concept_dim)})
    image = _images(1, 4)[0]
    found = w.locate(image, "sks", [7], size=(640, 480))
    assert found.raw == w.generate([image], [w.refer_prompt("sks")], [[7]])[0]
    assert found == parse_box(found.raw, 640, 480)
    stop = threading.Event()
    stop.set()
    with pytest.raises(LocateCancelled):
        w.locate(image, "sks", [7], cancel=stop)
    assert w._cancel is None
    w.set_concepts({})


# -- "where is …?" through myvlm and the app -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def bella_library(tmp_path_factory) -> dict:
    """Four photos, tiny MiniGPT-v2 as the library's captioner, and a thing "Bella" recognised in two of them and
    taught for a few steps. Its recognition is written as the concepts stage writes it (heads are tested elsewhere)."""
    from engine.domain.personalize.training import TrainingConfig as Cfg
    from engine.library import Library

    from .helpers import write_jpeg

    root = tmp_path_factory.mktemp("bella")
    album = root / "album"
    album.mkdir()
    for i in range(4):
        write_jpeg(album / f"{i}.jpg", seed=i)
    lib_root = root / "library"
    with Library(lib_root) as lib:
        lib.catalog.set_setting("vlm", PRESET)
        lib.add_folder(album)
        lib.scan()
        lib.process(stages=["thumbnail"])
        ids = {Path(p.path).name: p.id for p in lib.photos()}
        bella = lib.concepts().add_object("Bella", [ids["0.jpg"], ids["1.jpg"]])
        with lib.catalog.write():
            for name in ("0.jpg", "1.jpg"):
                lib.catalog.conn.execute(
                    "INSERT INTO concept_signals(photo_id, concept_id, revision, score, fired, face_id) "
                    "VALUES (?, ?, ?, 0.9, 1, NULL)", [ids[name], bella.id, bella.head_revision])
        pers = lib.personalizer()
        pers.prepare_targets("Bella")
        pers.train(["Bella"], config=Cfg(steps=3, augment=False))
        from engine.domain.personalize.locate import locate

        expected = locate(pers, ids["0.jpg"], "Bella").as_dict()
        elsewhere = locate(pers, ids["2.jpg"], "bella").as_dict()
    return {"root": lib_root, "album": album, "ids": ids, "bella": bella.id, "expected": expected,
            "elsewhere": elsewhere}


def test_myvlm_locate_prints_the_box_or_null_as_json(bella_library, capsys):
    from myvlm_cli.main import main

    from .conftest import myvlm

    lib, album = bella_library["root"], bella_library["album"]
    expected = bella_library["expected"]
    assert expected["raw"] and (expected["box"] is None) == bool(expected.get("reason"))
    # a real `myvlm` process, as a user runs it
    out = json.loads(myvlm("locate", str(album / "0.jpg"), "Bella", library=lib).stdout)
    assert out == expected            # the same greedy answer as in-process, parsed the same way
    assert out["photo"] == str(album / "0.jpg") and out["concept"] == "Bella"
    if out["box"] is not None:
        x1, y1, x2, y2 = out["box"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    # Bella is not recognised in 2.jpg: no box, no guess (the model is not asked)
    other = bella_library["elsewhere"]
    assert other["box"] is None and other["raw"] == "" and "not recognised" in other["reason"]

    def run(*args: str) -> tuple[int, str, str]:   # the same CLI in this process (cheaper than a subprocess)
        capsys.readouterr()
        rc = main(["--library", str(lib), *args])
        got = capsys.readouterr()
        return rc, got.out, got.err

    # a captioner without boxes says which one has them; an unknown name says where to look
    rc, _, err = run("locate", str(album / "0.jpg"), "Bella", "--vlm", "tiny-blip2")
    assert rc == 2 and "only MiniGPT-v2 can" in err and "Traceback" not in err
    rc, _, err = run("locate", str(album / "0.jpg"), "Nobody")
    assert rc == 2 and "no concept or named person 'Nobody'" in err
    # and it captions, by name where Bella fired
    rc, text, _ = run("caption", str(album / "0.jpg"), "--json", "--no-store")
    cap = json.loads(text)
    assert rc == 0 and cap["personalised"] and cap["model"] == PRESET
    assert cap["prompt"] == "[caption] A short image caption of sks:"


def test_where_is_bella_in_the_app_draws_the_box_or_says_no_box(qtbot, qapp, bella_library, tmp_path):
    from PySide6.QtCore import QSettings, Qt

    from myvlm_desktop import app as app_module
    from myvlm_desktop.main_window import MainWindow
    from myvlm_desktop.widgets import set_error_sink

    errors: list = []
    set_error_sink(lambda title, text: errors.append((title, text)))
    lib_root = tmp_path / "library"
    shutil.copytree(bella_library["root"], lib_root, ignore=shutil.ignore_patterns("logs"))
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(tmp_path / "config"))
    app_module.configure_application(qapp)
    w = MainWindow(lib_root, auto_index=False, watch=False, stages=["thumbnail"])
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    try:
        d = w.detail
        assert w.select_photo(bella_library["ids"]["0.jpg"])
        qtbot.waitUntil(d.canvas.has_image, timeout=60_000)
        assert [b.text() for b in d.where_buttons] == ["Where is Bella?"]
        qtbot.mouseClick(d.where_buttons[0], Qt.MouseButton.LeftButton)
        assert d.where_stop.isVisible() and not d.where_buttons[0].isEnabled()     # busy, off the GUI thread
        assert "Looking for Bella" in d.where_status.text()
        qtbot.waitUntil(lambda: w.photo_actions.locating is None and not w.models_thread.busy, timeout=120_000)
        expected = bella_library["expected"]
        if expected["box"] is None:
            assert d.canvas.found is None and d.where_status.text().startswith("No box for Bella")
        else:
            assert d.canvas.found is not None and "yellow box" in d.where_status.text()
        assert not d.where_stop.isVisible() and d.where_buttons[0].isEnabled()
        # a well-formed answer is drawn over the photo, inside it; a malformed one draws nothing
        d.show_location(d.photo.id, "Bella", parse_box("{<10><20><50><80>}", 320, 240).as_dict())
        r = d.canvas.found_rect()
        assert not r.isEmpty() and d.canvas.image_rect().toRectF().adjusted(-1, -1, 1, 1).contains(r)
        assert abs(r.width() / d.canvas.image_rect().width() - 0.4) < 0.01
        d.canvas.grab()   # paints the box and its name without error
        d.show_location(d.photo.id, "Bella", parse_box("{<50><20><10><80>}", 320, 240).as_dict())
        assert d.canvas.found is None and "No box for Bella" in d.where_status.text()
        # a photo without Bella has no button; with a captioner that cannot point, no photo offers one (and the
        # engine says plainly why if asked anyway)
        assert w.select_photo(bella_library["ids"]["2.jpg"])
        qtbot.waitUntil(lambda: d.photo is not None and d.photo.id == bella_library["ids"]["2.jpg"], timeout=60_000)
        assert d.where_buttons == [] and not d.where_bar.isVisible()
        assert w.select_photo(bella_library["ids"]["1.jpg"])
        qtbot.waitUntil(lambda: len(d.where_buttons) == 1, timeout=60_000)
        w.library.catalog.set_setting("vlm", "tiny-blip2")
        assert w.select_photo(bella_library["ids"]["2.jpg"]) and w.select_photo(bella_library["ids"]["1.jpg"])
        qtbot.waitUntil(lambda: d.photo is not None and d.photo.id == bella_library["ids"]["1.jpg"], timeout=60_000)
        assert d.where_buttons == [] and not d.where_bar.isVisible()
        w.photo_actions.locate_concept(bella_library["ids"]["1.jpg"], bella_library["bella"], "Bella")
        qtbot.waitUntil(lambda: w.photo_actions.locating is None, timeout=60_000)
        assert "only MiniGPT-v2 can" in d.where_status.text() and d.canvas.found is None
        assert not errors
    finally:
        w.close()
        set_error_sink(None)


# -- getting it: the gated Llama 2, the official checkpoint ---------------------------------------------------------

def test_llama_2_is_gated_the_manager_says_why_and_asks_for_a_token(tmp_path, monkeypatch, capsys):
    import getpass

    from huggingface_hub import constants

    from engine.models.downloads import ModelManager, TokenRequired
    from myvlm_cli.main import main

    from .fake_hub import FakeHub

    repo = "meta-llama/Llama-2-7b-chat-hf"
    from safetensors.torch import save

    weights = save({"w": torch.arange(20_000, dtype=torch.float32)})
    with FakeHub() as hub:
        hub.add_repo(repo, {"config.json": b'{"model_type": "llama"}', "tokenizer_config.json": b"{}",
                            "tokenizer.model": b"sp", "model.safetensors": weights})
        hub.gated[repo] = "hf_secret"
        for name, value in (("HOME", tmp_path / "home"), ("HF_HOME", tmp_path / "hf"), ("HF_ENDPOINT", hub.url)):
            monkeypatch.setenv(name, str(value))
        for name in ("HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        models = tmp_path / "library" / "models"
        with pytest.raises(TokenRequired) as err:
            ModelManager(models).get("minigpt-v2")
        text = str(err.value)
        assert "gated" in text and "accepted their licence" in text and "huggingface.co/settings/tokens" in text
        cdn_path = "/cdn/" + hashlib.sha256(weights).hexdigest()
        assert not hub.gets(cdn_path)
        # the CLI asks for the token on the terminal (not echoed), and only the hub ever sees it
        asked: list[str] = []
        monkeypatch.setattr("sys.stdin.isatty", lambda: True)
        monkeypatch.setattr(getpass, "getpass", lambda prompt="": asked.append(prompt) or "hf_wrong")
        rc = main(["--library", str(tmp_path / "library"), "models", "get", "minigpt-v2", "--no-progress"])
        assert rc == 1 and len(asked) == 1 and "was not let in" in capsys.readouterr().err
        monkeypatch.setattr(getpass, "getpass", lambda prompt="": "hf_secret")
        rc = main(["--library", str(tmp_path / "library"), "models", "get", "minigpt-v2", "--no-progress"])
        assert rc == 0 and ModelManager(models).state("minigpt-v2") == "present"
        cdn = hub.gets(cdn_path)
        assert cdn and all("authorization" not in r.headers for r in cdn)
        assert any(r.headers.get("authorization") == "Bearer hf_secret" for r in hub.requests
                   if r.path.startswith("/api/models/"))


def test_the_official_checkpoint_is_imported_after_a_check(models_dir, tmp_path):
    from engine.models.downloads import ModelError, ModelManager

    tiny = ensure_tiny_checkpoint(PRESET, models_dir / "tiny")
    models = tmp_path / "models"
    mm = ModelManager(models, cache_dir=tmp_path / "cache", offline=True)
    got = mm.import_folder("minigpt-v2", tiny / OFFICIAL_CHECKPOINT)
    dest = models / "minigpt-v2" / OFFICIAL_CHECKPOINT
    assert got.path == str(dest) and dest.read_bytes() == (tiny / OFFICIAL_CHECKPOINT).read_bytes()
    _Hostile.target = str(tmp_path / "pwned")
    hostile = tmp_path / "hostile.pth"
    with hostile.open("wb") as f:
        pickle.dump({"model": {"llama_proj.weight": _Hostile()}}, f)
    with pytest.raises(ModelError, match="refused, not run"):
        mm.import_folder("minigpt-v2", hostile)
    other = tmp_path / "other.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, other)
    with pytest.raises(ModelError, match="not a MiniGPT-v2 checkpoint"):
        mm.import_folder("minigpt-v2", other)
    assert not (tmp_path / "pwned").exists() and dest.read_bytes() == (tiny / OFFICIAL_CHECKPOINT).read_bytes()


def test_the_real_layout_loads_blip2s_vit_llama_and_the_checkpoint_from_the_models_folder(models_dir, tmp_path):
    """The real model's parts where the model manager puts them (tiny weights): a whole BLIP-2 checkpoint (its
    `vision_model.*` taken, at 448 px), the Llama folder, <models>/minigpt-v2/minigptv2_checkpoint.pth."""
    from transformers import Blip2ForConditionalGeneration

    from engine.models.vlm.checkpoints import checkpoint_folder
    from engine.models.vlm.minigpt_v2 import MiniGptV2Wrapper
    from engine.models.vlm.specs import VLM_SPECS
    from engine.models.vlm.tiny import build_tiny_blip2

    tiny = ensure_tiny_checkpoint(PRESET, models_dir / "tiny")
    models = tmp_path / "models"
    blip = build_tiny_blip2(models / "Salesforce--blip2-flan-t5-xl", image_size=32, patch_size=8)
    shutil.copytree(tiny / "llama", models / "meta-llama--Llama-2-7b-chat-hf")
    spec = VLM_SPECS["minigpt-v2"]
    with pytest.raises(VlmWeightsMissing, match=OFFICIAL_CHECKPOINT):
        checkpoint_folder(spec, spec.checkpoint, models)
    (models / "minigpt-v2").mkdir()
    shutil.copy(tiny / OFFICIAL_CHECKPOINT, models / "minigpt-v2" / OFFICIAL_CHECKPOINT)
    folder = checkpoint_folder(spec, spec.checkpoint, models)
    assert folder == models / "minigpt-v2"
    w = MiniGptV2Wrapper.load(folder, spec, spec.checkpoint, torch.device("cpu"), torch.float32)
    assert w.checkpoint == "Vision-CAIR/MiniGPT-v2" and w.vision_tower.config.image_size == 448
    assert w.n_visual_tokens == (448 // 8) ** 2 // 4
    ref = Blip2ForConditionalGeneration.from_pretrained(blip).vision_model
    ours, theirs = w.vision_tower.encoder.layers[1].self_attn.qkv, ref.encoder.layers[1].self_attn.qkv
    assert torch.equal(ours.weight, theirs.weight)
    ln = w.vision_tower.post_layernorm          # MiniGPT-v2's frozen ln_vision, not BLIP-2's trained norm
    assert torch.equal(ln.weight, torch.ones(32)) and torch.equal(ln.bias, torch.zeros(32)) and ln.eps == 1e-5
    assert w.vision_tower.embeddings.position_embedding.shape == (1, 1 + 56 * 56, 32)
    caption = w.caption(_images(1), settings=w.generation_settings().__class__(max_new_tokens=3))
    assert len(caption) == 1 and isinstance(caption[0], str)
