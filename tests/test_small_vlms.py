"""The small captioner families (SmolVLM / Idefics3, LLaVA-OneVision / Qwen2 and Qwen2-VL) with the MyVLM concept
layer, on their tiny random-weight presets: the tests BLIP-2 and LLaVA-1.6 get in test_personalize.py.

The presets are the real transformers architectures with small configs, loaded through the same wrapper code as the
real checkpoints (no hub is reachable here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.domain.concepts.research import load_research_concept_embeddings
from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import ConceptToTrain, ConceptTrainer, TrainingConfig, TrainingExample
from engine.models.vlm.auto import VLM_SPECS, GenerationSettings, load_vlm, resolve_spec
from engine.models.vlm.specs import CONCEPT_DIM

from .helpers import stop_at_step

PRESETS = ["tiny-smolvlm", "tiny-llava-ov", "tiny-qwen2-vl", "tiny-qwen2.5-vl"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module", params=PRESETS)
def wrapper(request, models_dir):
    return load_vlm(request.param, models_dir=models_dir)


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def _reference(w):
    """The same checkpoint loaded plainly by transformers (no concept layer, no hooks), and its own path from
    pixels to the language model's image tokens."""
    from transformers import (
        AutoModelForImageTextToText,
        Idefics3ForConditionalGeneration,
        LlavaOnevisionForConditionalGeneration,
    )

    folder = w.model.config._name_or_path
    if w.family == "smolvlm":
        ref = Idefics3ForConditionalGeneration.from_pretrained(folder).eval()
        return ref, lambda px: torch.stack(ref.model.get_image_features(px[:, None]).pooler_output)
    if w.family == "qwen2-vl":   # the processor's flat patches of all images and their grids (Qwen2-VL or 2.5)
        ref = AutoModelForImageTextToText.from_pretrained(folder).eval()
        return ref, lambda px: torch.stack(ref.model.get_image_features(
            px.reshape(-1, px.shape[-1]), torch.tensor([w.grid] * px.shape[0])).pooler_output)
    ref = LlavaOnevisionForConditionalGeneration.from_pretrained(folder).eval()
    return ref, lambda px: ref.model.multi_modal_projector(
        ref.model.vision_tower(px, output_hidden_states=True).hidden_states[ref.config.vision_feature_layer])


def test_no_concept_is_bit_identical_to_the_unwrapped_model(wrapper):
    w = wrapper
    assert w.concept_dim == CONCEPT_DIM[w.spec.key]      # the width research imports are checked against
    w.set_concepts({3: torch.randn(w.concept_dim), 8: torch.randn(w.concept_dim)})
    pixels = w.preprocess(_images(3))
    ref, ref_image_tokens = _reference(w)
    with torch.no_grad():
        ours = w._visual_features(pixels)
        assert ours.shape[1] == w.n_visual_tokens
        assert torch.equal(ours, ref_image_tokens(pixels))
        embeds, mask, _ = w._embed(pixels, [w.chat_prompt("what is this?")] * 3, left_pad=True)
        assert torch.equal(w.model(inputs_embeds=embeds, attention_mask=mask).logits,
                           ref(inputs_embeds=embeds, attention_mask=mask).logits)
    # generation with concepts known but none fired equals generation with no concept values at all
    a = w.caption(_images(3))
    w.set_concepts({})
    assert w.caption(_images(3)) == a


def test_concept_tokens_follow_the_projector_at_the_first_image_tokens_norm(wrapper):
    w = wrapper
    values = {5: torch.randn(w.concept_dim) * 7, 2: torch.randn(w.concept_dim) * 3}
    w.set_concepts(values)
    with torch.no_grad(), w._active([[5, 2], [2, 5]]):
        extended = w._visual_features(w.preprocess(_images(2)))
    assert extended.shape[1] == w.n_visual_tokens + 2
    appended = extended[:, w.n_visual_tokens:]
    first = extended[:, 0].norm(dim=-1)
    assert torch.allclose(appended.norm(dim=-1), first[:, None].expand(2, 2), rtol=1e-4)
    unit = {c: torch.nn.functional.normalize(v, dim=-1) for c, v in values.items()}
    # ascending concept id: 2 then 5, whatever order the signals came in
    assert torch.allclose(torch.nn.functional.normalize(appended[0, 0], dim=-1), unit[2], atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(appended[1, 1], dim=-1), unit[5], atol=1e-5)
    # and the prompt carries one image placeholder per token, the concept tokens last
    with torch.no_grad(), w._active([[5, 2], [2, 5]]):
        embeds, _, _ = w._embed(w.preprocess(_images(2)), [w.chat_prompt("hi")] * 2, left_pad=True)
    assert w._concept_positions.shape == (2, 2)


def test_gradients_reach_only_the_concept_values_and_the_regulariser_reads_the_lm_attention(wrapper):
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
    assert parts.reg > 0 and len(parts.attention) == len(w.language_model.layers)
    pos = w._concept_positions
    expected = sum(lam * (p[b, :, pos[b], :] ** 2).mean() for p in parts.attention for b in range(p.shape[0]))
    # two of the three images carry the concept: the regulariser of that group is weighted 2/3
    assert torch.allclose(parts.reg, expected * 2 / 3, rtol=1e-4)
    w.concept_layer.values.grad = None
    w.concept_layer.values.requires_grad_(False)


@pytest.mark.parametrize("preset", PRESETS)
def test_loss_falls_checkpoints_round_trip_and_export_for_research(preset, models_dir, tmp_path):
    w = load_vlm(preset, models_dir=models_dir)
    store = EmbeddingStore(tmp_path / "concepts")
    losses: list[float] = []
    prompt = w.training_prompt("caption", "sks")
    # one target per photo and no augmentation: every step sees the same batch, so the loss moves only by learning
    examples = [TrainingExample(img, [7], [(prompt, "sks on the beach")]) for img in _images(4, 1)]
    out = ConceptTrainer(w, store, TrainingConfig(steps=16, augment=False, seed=3, checkpoint_every=10)).train(
        [ConceptToTrain(7, "sks")], examples, progress=lambda p: losses.append(p.lm_loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) and losses[-1] < losses[0] - 1e-3, losses
    emb = out[7]
    assert emb.complete and emb.step == 16 and sorted(emb.history) == [10, 16]
    assert emb.checkpoint == w.checkpoint and emb.family == w.family
    assert np.array_equal(emb.values[0], w.concept_layer.value(7).numpy())
    assert store.load(7, "Salesforce/blip2-flan-t5-xl", "caption") is None
    pt = store.export_research(7, w.checkpoint, "caption", tmp_path / "out", w.family)
    assert pt.name == f"concept_embeddings_{w.family}_captioning.pt"
    steps = load_research_concept_embeddings(pt)
    assert sorted(steps) == [10, 16] and np.array_equal(steps[16]["values"], emb.values)
    # the trained token changes what the model says about that photo (and only where it fired)
    w.set_concepts({7: torch.from_numpy(emb.values[0])})
    plain, _personal = w.caption(_images(2, 1), concepts=[[], [7]])
    assert plain == w.caption(_images(1, 1))[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_cancel_and_resume_continue_exactly_where_the_run_stopped(preset, models_dir, tmp_path):
    from engine.domain.concepts.object_head import TrainingCancelled

    w = load_vlm(preset, models_dir=models_dir)
    prompt = w.training_prompt("caption", "sks")
    examples = [TrainingExample(img, [7], [(prompt, "sks on the beach"), (prompt, "a photo of sks on the left")])
                for img in _images(3, 2)]
    cfg = TrainingConfig(steps=12, seed=5, batch_size=2, feature_views=3, checkpoint_every=5)
    full = ConceptTrainer(w, EmbeddingStore(tmp_path / "a"), cfg).train([ConceptToTrain(7, "sks")], examples)
    assert full[7].settings["feature_views"] == 3
    store = EmbeddingStore(tmp_path / "b")
    seen: list[int] = []
    progress, stop = stop_at_step(7, seen)
    with pytest.raises(TrainingCancelled):
        ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], examples, progress=progress, cancel=stop)
    assert store.load(7, w.checkpoint, "caption").step == 7
    resumed = ConceptTrainer(w, store, cfg).train([ConceptToTrain(7, "sks")], examples,
                                                  progress=lambda p: seen.append(p.step))
    assert seen[7] == 8
    assert np.allclose(resumed[7].values, full[7].values, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_vqa_trains_on_question_answer_pairs_and_answers(preset, models_dir, tmp_path):
    w = load_vlm(preset, models_dir=models_dir)
    ex = [TrainingExample(img, [3], [("What is sks wearing?", "sks is wearing a red hat")]) for img in _images(3)]
    out = ConceptTrainer(w, EmbeddingStore(tmp_path), TrainingConfig(steps=3)).train(
        [ConceptToTrain(3, "sks")], ex, task="vqa")
    assert out[3].task == "vqa" and out[3].settings["reg_lambda"] == 10.0
    w.set_concepts({3: torch.from_numpy(out[3].values[0])})
    answers = w.answer(_images(2), ["What is sks wearing?"] * 2, concepts=[[3], []])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_the_small_captioners_are_in_the_catalogue_and_their_folders_are_recognised(models_dir):
    from engine.models.downloads import CAPTIONS, catalogue

    entries = {e.name: e for e in catalogue()}
    for key, repo in [("smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct"),
                      ("smolvlm-500m", "HuggingFaceTB/SmolVLM-500M-Instruct"),
                      ("llava-ov-0.5b", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")]:
        e = entries[key]
        assert e.feature == CAPTIONS and e.repo_id == repo and e.licence == "Apache-2.0"
        assert 0 < e.size_bytes < 2.5e9 and "questions" in e.purpose
        assert VLM_SPECS[key].params_b < 1
    # the concept widths research imports are checked against are the real configs' (tiny.py copies them)
    from engine.models.vlm.tiny import LLAVA_OV_05B, QWEN2_VL_2B, QWEN25_VL_3B, SMOLVLM_256M, SMOLVLM_500M

    for key, sizes in [("smolvlm-256m", SMOLVLM_256M), ("smolvlm-500m", SMOLVLM_500M),
                       ("llava-ov-0.5b", LLAVA_OV_05B), ("qwen2-vl-2b", QWEN2_VL_2B),
                       ("qwen2.5-vl-3b", QWEN25_VL_3B)]:
        assert CONCEPT_DIM[key] == sizes.text_hidden
    # Qwen2-VL-2B, for computers with more memory: 2.2 B parameters, 4.4 GB in bf16
    e = entries["qwen2-vl-2b"]
    assert e.feature == CAPTIONS and e.repo_id == "Qwen/Qwen2-VL-2B-Instruct" and e.licence == "Apache-2.0"
    assert 4e9 < e.size_bytes < 5e9 and "questions" in e.purpose and VLM_SPECS["qwen2-vl-2b"].family == "qwen2-vl"
    # Qwen2.5-VL-3B: the same wrapper; 7.5 GB, and its weights are for non-commercial use only
    e = entries["qwen2.5-vl-3b"]
    assert e.repo_id == "Qwen/Qwen2.5-VL-3B-Instruct" and "non-commercial" in e.licence and 7e9 < e.size_bytes < 8e9
    # a checkpoint folder given by path is recognised by its config's model type
    for preset, family in [("tiny-smolvlm", "smolvlm"), ("tiny-llava-ov", "llava-onevision"),
                           ("tiny-qwen2-vl", "qwen2-vl"), ("tiny-qwen2.5-vl", "qwen2-vl")]:
        folder = load_vlm(preset, models_dir=models_dir).model.config._name_or_path
        spec, _ = resolve_spec(folder)
        assert spec.family == family and "vqa" in spec.tasks


@pytest.fixture(scope="module", params=["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def qwen(request, models_dir):
    return load_vlm(request.param, models_dir=models_dir)


def test_qwen2_vl_without_concepts_is_the_processors_own_layout_and_m_rope_positions(qwen):
    """Our prompt, patches and M-RoPE positions give the very logits of the model run on the processor's inputs."""
    w = qwen
    w.set_concepts({3: torch.randn(w.concept_dim)})
    side = w.view_side
    squares = [im.resize((side, side), Image.Resampling.BICUBIC) for im in _images(2)]
    texts = [w.chat_prompt("what is this?")] * 2
    ref_inputs = w.processor(images=squares, text=texts, return_tensors="pt")
    with torch.no_grad():
        ref = w.model(**ref_inputs).logits
        embeds, mask, _ = w._embed(w.preprocess(_images(2)), texts, left_pad=True)
        assert torch.equal(w._rope_inputs[0], ref_inputs.input_ids)
        assert torch.equal(w._rope_inputs[1], ref_inputs.mm_token_type_ids)
        ours = w.model(inputs_embeds=embeds, attention_mask=mask, position_ids=w.rope_positions(mask)).logits
    assert torch.equal(ours, ref)


def test_qwen2_vl_concept_token_takes_the_text_position_after_vision_end_in_training_and_generation(qwen):
    w = qwen
    w.set_concepts({5: torch.randn(w.concept_dim)})
    images = _images(2, 4)
    texts = [w.chat_prompt("hi"), w.chat_prompt("what is this dog doing?")]   # different lengths: left padding
    with torch.no_grad(), w._active([[5], [5]]):
        _, mask, _ = w._embed(w.preprocess(images), texts, left_pad=True)
    positions = w.rope_positions(mask)                                          # (3, B, T)
    input_ids, types = w._rope_inputs
    side = w.grid[1] // 2                                                       # image tokens per row and column
    for b in range(2):
        end = int((input_ids[b] == w.vision_end_id).nonzero()[0])
        concept = int(w._concept_positions[b, 0])
        assert concept == end + 1 and input_ids[b, concept] == w.image_token_id and types[b, concept] == 0
        image = (types[b] == 1).nonzero().flatten()
        assert len(image) == w.n_visual_tokens and int(image[-1]) == end - 1
        start = int(positions[0, b, image[0]])
        # image tokens: (t, row, col) on the grid; <|vision_end|> is text right after the largest grid position
        assert positions[:, b, image[-1]].tolist() == [start, start + side - 1, start + side - 1]
        assert positions[:, b, end].tolist() == [start + side] * 3
        # the concept token and the question after it: text positions counting on (the same in all three sections)
        assert positions[:, b, concept].tolist() == [start + side + 1] * 3
        assert positions[:, b, concept + 1].tolist() == [start + side + 2] * 3
    # generation runs on the same positions, and the new tokens continue from the last one
    seen: list[torch.Tensor] = []
    hook = w.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        w.generate(images, ["hi", "what is this dog doing?"], concepts=[[5], [5]],
                   settings=GenerationSettings(max_new_tokens=2))
    finally:
        hook.remove()
    first, second = seen[0][-3:], seen[1][-3:]                                  # generate prepends text positions
    assert torch.equal(first[:, mask.bool()], positions[:, mask.bool()])
    assert torch.equal(second[..., 0], first[..., -1] + 1)
