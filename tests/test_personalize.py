"""The MyVLM personalisation engine on the tiny presets of BLIP-2 (T5 and OPT) and LLaVA-1.6.

The tiny presets are the real transformers architectures with small configs and random weights, loaded through the
same wrapper code as the real checkpoints (no hub is reachable here).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.domain.concepts.research import load_research_concept_embeddings
from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import (
    ConceptToTrain,
    ConceptTrainer,
    TrainingConfig,
    TrainingExample,
    TrainingProgress,
)
from engine.models.vlm.auto import VlmError, VlmWeightsMissing, load_vlm, resolve_spec

PRESETS = ["tiny-blip2", "tiny-blip2-opt", "tiny-llava"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module", params=PRESETS)
def wrapper(request, models_dir):
    return load_vlm(request.param, models_dir=models_dir)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def _reference_model(w):
    """The same checkpoint loaded plainly by transformers, with no concept layer or hooks."""
    from transformers import (
        Blip2ForConditionalGeneration,
        LlavaNextForConditionalGeneration,
    )

    cls = Blip2ForConditionalGeneration if w.family == "blip2" else LlavaNextForConditionalGeneration
    folder = w.model.config._name_or_path
    return cls.from_pretrained(folder).eval()


def test_no_concept_is_bit_identical_to_the_unwrapped_model(wrapper):
    w = wrapper
    w.set_concepts({3: torch.randn(w.concept_dim), 8: torch.randn(w.concept_dim)})
    pixels = w.preprocess(_images(3))
    ref = _reference_model(w)
    with torch.no_grad():
        if w.family == "blip2":
            ids = torch.tensor([w._prompt_ids("")] * 3)
            ours = w.model(pixel_values=pixels, input_ids=ids, decoder_input_ids=ids[:, :4]
                           if not w.decoder_only else None).logits
            theirs = ref(pixel_values=pixels, input_ids=ids, decoder_input_ids=ids[:, :4]
                         if not w.decoder_only else None).logits
        else:   # one base view: tower → feature layer → projector, then the language model's logits
            ours = w._visual_features(pixels)
            hidden = ref.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            theirs = ref.model.multi_modal_projector(hidden[ref.config.vision_feature_layer][:, 1:])
            assert torch.equal(ours, theirs)
            embeds, mask, _ = w._embed(pixels, ["<image> what is this?"] * 3, left_pad=True)
            ours, theirs = w.model(inputs_embeds=embeds, attention_mask=mask).logits, \
                ref(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.equal(ours, theirs)
    # and generation through the wrapper with concepts known but none fired equals generation with no layer values
    a = w.caption(_images(3))
    w.set_concepts({})
    assert w.caption(_images(3)) == a


def test_concept_tokens_are_appended_normalised_in_stable_order(wrapper):
    w = wrapper
    values = {5: torch.randn(w.concept_dim) * 7, 2: torch.randn(w.concept_dim) * 3}
    w.set_concepts(values)
    seen = {}
    target = (w.model.vision_model.encoder.layers[-1] if w.family == "blip2" else w.projector.linear_2)
    h = target.register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    layer_out = []
    h2 = target.register_forward_hook(lambda m, a, o: layer_out.append(o), prepend=False)
    try:
        pixels = w.preprocess(_images(2))
        with torch.no_grad(), w._active([[5, 2], [2, 5]]):
            if w.family == "blip2":
                w.model.vision_model(pixels)
            else:
                w._visual_features(pixels)
    finally:
        h.remove()
        h2.remove()
    # the concept layer's hook runs first (registered at load), so later hooks see the extended output
    extended = layer_out[-1]
    base = (w.n_image_tokens if w.family == "blip2" else w.n_visual_tokens)
    assert extended.shape[1] == base + 2
    appended = extended[:, base:]
    # ascending concept id: 2 then 5, whatever order the signals came in
    unit = {c: torch.nn.functional.normalize(v, dim=-1) for c, v in values.items()}
    if w.family == "blip2":
        assert torch.allclose(appended[0, 0], unit[2], atol=1e-6) and torch.allclose(appended[1, 1], unit[5], atol=1e-6)
        assert torch.allclose(appended.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    else:  # LLaVA: rescaled to the first image token's norm
        first = extended[:, 0].norm(dim=-1)
        assert torch.allclose(appended.norm(dim=-1), first[:, None].expand(2, 2), rtol=1e-4)
        assert torch.allclose(torch.nn.functional.normalize(appended[0, 0], dim=-1), unit[2], atol=1e-5)


def test_blip2_qformer_rescales_appended_keys_and_values(models_dir):
    w = load_vlm("tiny-blip2", models_dir=models_dir)
    w.set_concepts({1: torch.randn(w.concept_dim) * 50})
    cross = w._cross_attentions[0].attention
    seen = []
    h = cross.key.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad(), w._active([[1]]):
            w.model.generate(pixel_values=w.preprocess(_images(1)), input_ids=torch.tensor([w._prompt_ids("")]),
                             max_new_tokens=2)
    finally:
        h.remove()
    keys = seen[0]
    n = w.n_image_tokens
    target = keys[:, :n].norm(dim=-1).mean()
    assert keys.shape[1] == n + 1
    assert torch.allclose(keys[:, n:].norm(dim=-1), target.expand(1, 1), rtol=1e-4)


def test_gradients_reach_only_the_concept_values_and_the_regulariser_reads_the_right_attention(wrapper):
    w = wrapper
    w.set_concepts({4: torch.randn(w.concept_dim)}, trainable=True)
    pixels = w.preprocess(_images(3))
    prompt = w.training_prompt("caption", "sks")
    lam = 0.5
    parts = w.training_loss(pixels, [prompt] * 3, ["sks on the beach", "a dog", "sks with a ball"],
                            [[4], [], [4]], lam)
    parts.total.backward()
    assert w.concept_layer.values.grad is not None and w.concept_layer.values.grad.abs().sum() > 0
    assert all(p.grad is None for p in w.model.parameters())
    assert parts.reg > 0 and parts.attention
    if w.family == "blip2":
        n, q = w.n_image_tokens, w.num_query_tokens
        for probs in parts.attention:   # (B, H, queries, image + concept positions)
            assert probs.shape[2] == q and probs.shape[3] == n + 1
            assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-5)
        expected = sum(lam * (p[:, :, :q, n:] ** 2).mean() for p in parts.attention)
    else:
        pos = w._concept_positions
        expected = sum(lam * (p[b, :, pos[b], :] ** 2).mean() for p in parts.attention for b in range(p.shape[0]))
        assert len(parts.attention) == len(w.language_model.layers)
    # two of the three images carry the concept: the regulariser of that group is weighted 2/3
    assert torch.allclose(parts.reg, expected * 2 / 3, rtol=1e-4)
    w.concept_layer.values.grad = None
    w.concept_layer.values.requires_grad_(False)


def _examples(w, ident="sks", cid=7, n=4, seed=1):
    prompt = w.training_prompt("caption", ident)
    return [TrainingExample(img, [cid], [(prompt, f"{ident} on the beach"), (prompt, f"a photo of {ident}")])
            for img in _images(n, seed)]


@pytest.mark.parametrize("preset", PRESETS)
def test_loss_falls_and_checkpoints_round_trip(preset, models_dir, tmp_path):
    w = load_vlm(preset, models_dir=models_dir)
    store = EmbeddingStore(tmp_path / "concepts")
    losses = []
    cfg = TrainingConfig(steps=40, augment=False, seed=3)
    # one target per photo and no augmentation: every step sees the same batch, so the loss moves only by learning
    prompt = w.training_prompt("caption", "sks")
    examples = [TrainingExample(img, [7], [(prompt, "sks on the beach")]) for img in _images(4, 1)]
    out = ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], examples,
                                              progress=lambda p: losses.append(p.lm_loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) and losses[-1] < losses[0] - 1e-3, losses
    emb = out[7]
    assert emb.complete and emb.step == 40 and sorted(emb.history) == [25, 40]
    assert emb.checkpoint == w.checkpoint and emb.family == w.family
    # the safetensors checkpoint holds exactly what the concept layer learned
    assert np.array_equal(emb.values[0], w.concept_layer.value(7).numpy())
    again = store.load(7, w.checkpoint, "caption")
    assert np.array_equal(again.values, emb.values) and again.settings["seed"] == 3
    # another VLM checkpoint does not see it (stale until retrained)
    assert store.load(7, "Salesforce/blip2-flan-t5-xl", "caption") is None
    assert store.other_checkpoints(7) == [w.checkpoint]
    # the research format: export and read back with weights_only loading
    pt = store.export_research(7, w.checkpoint, "caption", tmp_path / "out", w.family)
    assert pt.name == f"concept_embeddings_{w.family}_captioning.pt"
    steps = load_research_concept_embeddings(pt)
    assert sorted(steps) == [25, 40] and np.array_equal(steps[40]["values"], emb.values)


def test_several_concepts_train_together_and_each_gets_its_token(models_dir, tmp_path):
    w = load_vlm("tiny-blip2", models_dir=models_dir)
    store = EmbeddingStore(tmp_path / "c")
    prompt = w.training_prompt("caption", "x")
    imgs = _images(6, 4)
    ex = [TrainingExample(imgs[0], [1], [(prompt, "sks on grass")]),
          TrainingExample(imgs[1], [1], [(prompt, "sks on snow")]),
          TrainingExample(imgs[2], [2], [(prompt, "pll in a room")]),
          TrainingExample(imgs[3], [2], [(prompt, "pll on a bed")]),
          TrainingExample(imgs[4], [1, 2], [(prompt, "sks and pll on the beach")])]
    out = ConceptTrainer(w, store, TrainingConfig(steps=12, seed=1)).train(
        [ConceptToTrain(1, "sks"), ConceptToTrain(2, "pll")], ex)
    assert set(out) == {1, 2} and not np.allclose(out[1].values, out[2].values)
    assert out[1].settings["trained_with"] == [1, 2]
    # a batch mixing 0, 1 and 2 concept tokens generates, one group per token count
    texts = w.generate(imgs[:3], [""] * 3, [[], [1], [2, 1]])
    assert len(texts) == 3


def test_cancel_and_resume_continue_exactly_where_the_run_stopped(models_dir, tmp_path):
    from engine.domain.concepts.object_head import TrainingCancelled

    w = load_vlm("tiny-blip2", models_dir=models_dir)
    cfg = TrainingConfig(steps=50, seed=5)
    full = ConceptTrainer(w, EmbeddingStore(tmp_path / "a"), cfg).train([ConceptToTrain(7, "sks")], _examples(w))

    store = EmbeddingStore(tmp_path / "b")
    cancel = threading.Event()
    _seen: list[int] = []

    def stop_at_30(p: TrainingProgress) -> None:
        _seen.append(p.step)
        if p.step >= 30:
            cancel.set()

    with pytest.raises(TrainingCancelled):
        ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], _examples(w), progress=stop_at_30,
                                            cancel=cancel)
    partial = store.load(7, w.checkpoint, "caption")
    assert partial.step == 30 and not partial.complete           # cancel saves the step reached
    resumed = ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], _examples(w),
                                                  progress=lambda p: _seen.append(p.step))
    assert _seen[30] == 31                                       # it went on from step 30, not from 0
    assert np.allclose(resumed[7].values, full[7].values, atol=1e-6)

    # a kill (any other exception) loses only the steps since the last 25-step checkpoint
    store = EmbeddingStore(tmp_path / "c")

    def crash(p):
        if p.step == 40:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], _examples(w), progress=crash)
    assert store.load(7, w.checkpoint, "caption").step == 25
    again = ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], _examples(w))
    assert np.allclose(again[7].values, full[7].values, atol=1e-6)


def test_llava_vqa_trains_on_question_answer_pairs(models_dir, tmp_path):
    w = load_vlm("tiny-llava", models_dir=models_dir)
    ex = [TrainingExample(img, [3], [("What is sks wearing?", "sks is wearing a red hat"),
                                     (w.training_prompt("vqa", "sks"), "sks on the grass")]) for img in _images(4)]
    out = ConceptTrainer(w, EmbeddingStore(tmp_path), TrainingConfig(steps=6)).train(
        [ConceptToTrain(3, "sks")], ex, task="vqa")
    assert out[3].task == "vqa" and out[3].settings["reg_lambda"] == 10.0
    with pytest.raises(ValueError, match="does not do 'vqa'"):
        ConceptTrainer(load_vlm("tiny-blip2", models_dir=models_dir), EmbeddingStore(tmp_path)).train(
            [ConceptToTrain(3, "sks")], ex, task="vqa")


def test_missing_weights_and_unsupported_models_say_what_to_do(models_dir):
    with pytest.raises(VlmWeightsMissing, match="hf download Salesforce/blip2-flan-t5-xl"):
        load_vlm("blip2", models_dir=models_dir)
    with pytest.raises(VlmError, match="unknown VLM"):
        resolve_spec("gpt-17")


def test_targets_rewrite_the_subject_phrase():
    from engine.domain.personalize.targets import (
        caption_targets,
        personalize_answer,
        pick_class_word,
    )

    caps = ["a small brown dog running on the beach", "a dog lying on the grass"]
    word = pick_class_word(caps, ("dog", "cat", "ball"))
    assert word == "dog"
    t = caption_targets([caps[0]], word, "Bella")
    assert t.captions[0] == "Bella running on the beach" and not t.needs_review
    assert "a photo of Bella running on the beach" in t.captions
    assert caption_targets(["a sunset over the sea"], word, "Bella").needs_review
    assert personalize_answer("The man is wearing a blue shirt.", "man", "Alex") == "Alex is wearing a blue shirt."


def test_research_train_writes_the_reference_files(models_dir, tmp_path):
    from engine.domain.personalize.research_run import run_research_training

    folder = tmp_path / "mug"
    folder.mkdir()
    for i, img in enumerate(_images(4)):
        img.save(folder / f"{i}.jpg")
    (folder / "captions.json").write_text(json.dumps({f"{i}.jpg": [f"sks on table {i}"] for i in range(4)}))
    report = run_research_training(folder, tmp_path / "out", vlm="tiny-blip2", task="caption",
                                   config=TrainingConfig(steps=26), models_dir=models_dir)
    assert Path(report["embeddings"]).name == "concept_embeddings_blip2_captioning.pt"
    outputs = json.loads(Path(report["outputs"]).read_text())
    assert sorted(outputs) == ["iteration_25", "iteration_26"]
    assert sorted(outputs["iteration_26"]) == [f"{i}.jpg" for i in range(4)]
    assert report["identifier"] == "sks"


def test_personalized_caption_and_answer_end_to_end_through_the_cli(tmp_path: Path, test_data: Path):
    import shutil

    from .conftest import myvlm

    album = tmp_path / "album"
    album.mkdir()
    for name in ("spiff.jpg", "spiff_2.jpg", "snow.jpg", "sunset.jpg"):
        shutil.copy(test_data / "kphotoalbum" / name, album / name)
    lib = tmp_path / "lib"
    myvlm("settings", "clip_weights", "random", library=lib)
    myvlm("settings", "vlm", "tiny-blip2", library=lib)
    out = json.loads(myvlm("index", str(album), "--json", "--no-progress", library=lib).stdout)
    assert out["pipeline"]["stages"]["captions"]["processed"] == 4        # the album is captioned in batches
    myvlm("concept", "add-object", "Spiff", str(album / "spiff.jpg"), str(album / "spiff_2.jpg"), library=lib)

    targets = json.loads(myvlm("targets", "Spiff", "--generate", "--json", library=lib).stdout)
    assert len(targets) == 2 and all(any("sks" in c for c in t["captions"]) for t in targets)
    myvlm("targets", "Spiff", "--set", str(targets[0]["example_id"]), "sks on the sofa", "sks in a room",
          library=lib)
    edited = json.loads(myvlm("targets", "Spiff", "--json", library=lib).stdout)
    assert edited[0]["captions"] == ["sks on the sofa", "sks in a room"]

    trained = json.loads(myvlm("train", "Spiff", "--steps", "5", "--json", library=lib).stdout)
    assert trained[0]["steps"] == 5 and trained[0]["vlm"] == "tiny-blip2"
    cap = json.loads(myvlm("caption", str(album / "spiff.jpg"), "--json", library=lib).stdout)
    assert cap["personalised"] and cap["concepts"] and cap["model"] == "tiny-blip2"
    plain = json.loads(myvlm("caption", str(album / "sunset.jpg"), "--json", library=lib).stdout)
    assert not plain["personalised"] and plain["concepts"] == []
    ans = json.loads(myvlm("ask", str(album / "spiff.jpg"), "What is Spiff doing?", "--json", library=lib).stdout)
    assert ans["prompt"] == "What is sks doing?" and ans["personalised"]
    # training made the captions of the photos Spiff is in out of date: the next index redoes just those
    again = json.loads(myvlm("index", "--json", "--no-progress", library=lib).stdout)
    signals = json.loads(myvlm("concept", "list", "--json", library=lib).stdout)[0]["photos"]
    assert again["pipeline"]["stages"]["captions"]["processed"] == signals

    exported = myvlm("export-embedding", "Spiff", "--out", str(tmp_path / "export"), library=lib).stdout.strip()
    assert Path(exported).name == "concept_embeddings_blip2_captioning.pt"
    assert sorted(load_research_concept_embeddings(exported)) == [5]
    # switching the VLM: the embedding belongs to the old one
    assert "retrain them" in myvlm("settings", "vlm", "tiny-blip2-opt", library=lib).stdout
    listed = json.loads(myvlm("concept", "list", "--json", library=lib).stdout)
    assert listed[0]["embedding_state"] == "stale"
    myvlm("settings", "vlm", "tiny-blip2", library=lib)
    assert json.loads(myvlm("concept", "list", "--json", library=lib).stdout)[0]["embedding_state"] == "ready"
    assert myvlm("settings", "vlm", "gpt-17", library=lib, check=False).returncode == 2

    res = myvlm("train", "Spiff", "--vlm", "blip2", library=lib, check=False)
    assert res.returncode == 2 and "hf download Salesforce/blip2-flan-t5-xl" in res.stderr


def test_llava_vqa_targets_are_generated_with_the_class_word_and_personalized(library, tmp_path):
    """The desktop flow for VQA: the original LLaVA answers generic questions, the answers name the concept."""
    from engine.domain.concepts.research import import_research_concept
    from engine.domain.personalize.service import Personalizer

    folder = tmp_path / "toy"
    folder.mkdir()
    for i, img in enumerate(_images(3, 7)):
        img.save(folder / f"{i}.jpg")
    (folder / "captions.json").write_text(json.dumps({f"{i}.jpg": [f"sks on a table {i}"] for i in range(3)}))
    concept = import_research_concept(library.concepts(), folder, name="Toy")
    pers = Personalizer(library.catalog, "tiny-llava")
    items = pers.prepare_targets(concept.id, "vqa")
    assert len(items) == 3
    for t in items:
        assert t.captions                                     # the captioning targets are (re)made too
        questions = [q for q, _ in t.qa]
        assert questions and all(concept.identifier in q for q in questions)
        assert "What color is sks?" in questions
    stored = json.loads((library.concepts().folder(concept.id) / "vqa_targets.json").read_text())
    assert len(stored) == 3
    result = pers.train([concept.id], "vqa", TrainingConfig(steps=3))
    assert result[concept.id].task == "vqa" and result[concept.id].step == 3
    assert library.concepts().get(concept.id).embedding_state == "ready"
    assert pers.embedding_state(library.concepts().get(concept.id), "vqa") == "ready"


def test_mirrored_views_get_mirrored_targets(models_dir, tmp_path, monkeypatch):
    """A flipped training view must not be told "Bella is on the left" when she is now on the right."""
    from engine.domain.personalize import training as T

    assert T.mirror_text("Where is sks? On the left, to the left of the car.") == \
        "Where is sks? On the right, to the right of the car."
    assert T.mirror_text("Left-hand side; the RIGHT side") == "Right-hand side; the LEFT side"
    assert T.mirror_text("Alex left the room, that is right") == "Alex left the room, that is right"

    w = load_vlm("tiny-blip2", models_dir=models_dir)
    # images whose left half is red and right half blue: a mirrored view is blue on the left
    half = np.zeros((64, 64, 3), np.uint8)
    half[:, :32] = (220, 30, 30)
    half[:, 32:] = (30, 30, 220)
    image = Image.fromarray(half)
    examples = [TrainingExample(image, [7], [("", "sks on the left")])]
    seen: list[tuple[str, bool]] = []
    real_augment = T.augment_view_flipped

    def spy(img, rng, config):
        view, flipped = real_augment(img, rng, config)
        left_is_blue = np.asarray(view)[:, :8, 2].mean() > np.asarray(view)[:, :8, 0].mean()
        assert left_is_blue == flipped          # the flag says what the view shows
        seen.append(("flip", flipped))
        return view, flipped

    real_loss = w.training_loss

    def capture(pixels, prompts, targets, concepts, lam):
        seen.extend(("target", t) for t in targets)
        return real_loss(pixels, prompts, targets, concepts, lam)

    monkeypatch.setattr(T, "augment_view_flipped", spy)
    monkeypatch.setattr(w, "training_loss", capture)
    cfg = TrainingConfig(steps=8, batch_size=1, brightness=0.0, max_rotation=0.0, checkpoint_every=100)
    ConceptTrainer(w, EmbeddingStore(tmp_path), cfg).train([ConceptToTrain(7, "sks")], examples)
    flips = [v for k, v in seen if k == "flip"]
    targets = [v for k, v in seen if k == "target"]
    assert len(flips) == len(targets) == 8 and any(flips) and not all(flips)
    for flipped, target in zip(flips, targets):
        assert target == ("sks on the right" if flipped else "sks on the left")

    # a caption that lists things left to right brings its own wording of the mirrored photo, and keeps it through
    # the shrinking copy the trainer makes before the steps
    seen.clear()
    listed = [TrainingExample(image, [7], [("", "sks and a blue box")], mirrored_pairs=[("", "a blue box and sks")])]
    ConceptTrainer(w, EmbeddingStore(tmp_path / "listed"), cfg).train([ConceptToTrain(7, "sks")], listed)
    flips = [v for k, v in seen if k == "flip"]
    targets = [v for k, v in seen if k == "target"]
    assert len(targets) == 8 and any(flips) and not all(flips)
    for flipped, target in zip(flips, targets):
        assert target == ("a blue box and sks" if flipped else "sks and a blue box")


def test_training_augments_small_copies_of_big_photos(models_dir, tmp_path, monkeypatch):
    """A 1440 px preview is shrunk once to twice the model's input side before the steps augment it (rotating the
    full photo at every step was most of a CPU step); the photo itself is left as it was."""
    from engine.domain.personalize import training as T

    w = load_vlm("tiny-blip2", models_dir=models_dir)
    side = T.working_side(w)
    assert side == 2 * w.model.config.vision_config.image_size
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 255, (1080, 1440, 3), dtype=np.uint8))
    before = photo.tobytes()
    sizes: list[tuple[int, int]] = []
    real_augment = T.augment_view_flipped

    def spy(img, rng, config):
        sizes.append(img.size)
        return real_augment(img, rng, config)

    monkeypatch.setattr(T, "augment_view_flipped", spy)
    examples = [TrainingExample(photo, [7], [("", "sks on the beach")])]
    ConceptTrainer(w, EmbeddingStore(tmp_path / "a"), TrainingConfig(steps=3, batch_size=1)).train(
        [ConceptToTrain(7, "sks")], examples)
    assert sizes and all(max(s) == side and abs(s[0] / s[1] - 1440 / 1080) < 0.02 for s in sizes), sizes
    assert photo.size == (1440, 1080) and photo.tobytes() == before
    sizes.clear()
    ConceptTrainer(w, EmbeddingStore(tmp_path / "b"), TrainingConfig(steps=2, batch_size=1, shrink=False)).train(
        [ConceptToTrain(7, "sks")], examples)
    assert sizes == [(1440, 1080)] * 2
    # a photo already smaller than the working side is used as it is
    small = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    assert T.shrunk(small, side).size == (50, 40)


def test_concepts_trained_together_train_as_each_would_alone(models_dir, tmp_path):
    """The reference trains one concept at a time. Together, each concept draws a batch of its own photos every
    step and has its gradient clipped on its own: two concepts whose photos do not overlap end exactly where each
    ends trained alone (with one shared batch and clip they would not)."""
    w = load_vlm("tiny-blip2", models_dir=models_dir)
    prompt = w.training_prompt("caption", "x")
    imgs = _images(6, 5)
    ex1 = [TrainingExample(imgs[i], [1], [(prompt, f"sks number {i}")]) for i in range(3)]
    ex2 = [TrainingExample(imgs[i], [2], [(prompt, f"pll number {i}")]) for i in range(3, 6)]
    cfg = TrainingConfig(steps=4, seed=2, batch_size=2, checkpoint_every=100)
    both = ConceptTrainer(w, EmbeddingStore(tmp_path / "both"), cfg).train(
        [ConceptToTrain(1, "sks"), ConceptToTrain(2, "pll")], ex1 + ex2)
    alone1 = ConceptTrainer(w, EmbeddingStore(tmp_path / "a1"), cfg).train([ConceptToTrain(1, "sks")], ex1)
    alone2 = ConceptTrainer(w, EmbeddingStore(tmp_path / "a2"), cfg).train([ConceptToTrain(2, "pll")], ex2)
    assert np.array_equal(both[1].values, alone1[1].values)
    assert np.array_equal(both[2].values, alone2[2].values)


def test_each_concepts_gradient_is_clipped_on_its_own():
    from engine.domain.personalize.training import _clip_rows

    param = torch.nn.Parameter(torch.zeros(3, 4))
    param.grad = torch.tensor([[3.0, 4.0, 0, 0], [0.01, 0, 0, 0], [0, 0, 0, 0]])
    _clip_rows(param, 0.05)
    norms = param.grad.norm(dim=1)
    assert torch.allclose(norms[0], torch.tensor(0.05), atol=1e-6)    # the big one is cut to the clip
    assert torch.allclose(param.grad[1], torch.tensor([0.01, 0, 0, 0]))  # the small one keeps its size
    assert torch.equal(param.grad[2], torch.zeros(4))


def test_rotated_training_views_have_black_corners_like_the_reference():
    """The reference's rotation fills the uncovered corners with black; mirroring the edges (the old fill) puts
    phantom copies of objects near the edges into the view, which the target caption does not mention."""
    from engine.domain.personalize.training import augment_view

    img = Image.new("RGB", (64, 64), (200, 40, 40))
    cfg = TrainingConfig(flip_p=0.0, brightness=0.0, max_rotation=45.0)
    rng = np.random.default_rng(1)
    views = [np.asarray(augment_view(img, rng, cfg)) for _ in range(4)]
    assert all(v.shape == (64, 64, 3) for v in views)
    assert all((v[0, 0] == 0).all() and (v[-1, -1] == 0).all() for v in views)   # angles here: 40, 40, -7, -8°
    assert all((v[32, 32] == (200, 40, 40)).all() for v in views)
    mirrored = np.asarray(augment_view(img, np.random.default_rng(1), TrainingConfig(
        flip_p=0.0, brightness=0.0, rotation_fill="mirror")))
    assert (mirrored[0, 0] == (200, 40, 40)).all()
