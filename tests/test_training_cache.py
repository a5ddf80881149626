"""Training with cached vision features: the frozen vision tower runs once per augmented view of a fixed pool, not
at every step, and the loss is the one the uncached path computes for the same views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import (
    ConceptToTrain,
    ConceptTrainer,
    TrainingConfig,
    TrainingExample,
    build_feature_pool,
)
from engine.models.vlm.auto import load_vlm

from .helpers import stop_at_step

CACHING = ["tiny-smolvlm", "tiny-llava-ov", "tiny-llava"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(n)]


def _examples(w, n=3):
    prompt = w.training_prompt("caption", "sks")
    return [TrainingExample(img, [7], [(prompt, "sks on the beach"), (prompt, "sks in a room")])
            for img in _images(n, 4)]


class TowerCalls:
    """Counts the images that pass through a wrapper's vision tower (a forward hook on it)."""

    def __init__(self, w):
        self.images = 0
        self._handle = w.vision_tower.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs, output):
        pixels = args[0] if args else kwargs["pixel_values"]
        self.images += pixels.shape[0]

    def close(self):
        self._handle.remove()


@pytest.mark.parametrize("preset", CACHING)
def test_cached_features_give_the_loss_of_the_same_views(preset, models_dir):
    w = load_vlm(preset, models_dir=models_dir)
    assert w.caches_features
    w.set_concepts({7: torch.randn(w.concept_dim)}, trainable=True)
    pixels = w.preprocess(_images(3, 1))
    prompts = [w.training_prompt("caption", "sks")] * 3
    targets = ["sks on the beach", "a dog", "sks in a room"]
    concepts = [[7], [], [7]]
    direct = w.training_loss(pixels, prompts, targets, concepts, 0.5)
    direct.total.backward()
    grad_direct = w.concept_layer.values.grad.clone()
    w.concept_layer.values.grad = None
    cached = w.training_loss(None, prompts, targets, concepts, 0.5, features=w.visual_features(pixels))
    cached.total.backward()
    assert torch.equal(cached.lm, direct.lm) and torch.equal(cached.reg, direct.reg)
    assert torch.allclose(w.concept_layer.values.grad, grad_direct, atol=1e-7)
    w.concept_layer.values.grad = None
    w.concept_layer.values.requires_grad_(False)


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-llava-ov"])
def test_the_vision_tower_runs_once_per_view_not_per_step(preset, models_dir, tmp_path):
    w = load_vlm(preset, models_dir=models_dir)
    examples = _examples(w)
    calls = TowerCalls(w)
    try:
        cfg = TrainingConfig(steps=10, batch_size=2, feature_views=4, seed=1)
        out = ConceptTrainer(w, EmbeddingStore(tmp_path / "pool"), cfg).train([ConceptToTrain(7, "sks")], examples)
        assert calls.images == 3 * 4                     # 3 photos × 4 views, whatever the number of steps
        assert out[7].settings["feature_views"] == 4     # part of the resume key
        calls.images = 0
        cfg = TrainingConfig(steps=10, batch_size=2, feature_views=0, seed=1)
        ConceptTrainer(w, EmbeddingStore(tmp_path / "fresh"), cfg).train([ConceptToTrain(7, "sks")], examples)
        assert calls.images == 10 * 2                    # without the pool: every step's batch
    finally:
        calls.close()


def test_the_pool_holds_the_views_the_uncached_path_would_see(models_dir):
    """Pool view v of photo i is the augmentation its seed gives, and its features are the tower's output for it."""
    from engine.domain.personalize.training import augment_view_flipped

    w = load_vlm("tiny-smolvlm", models_dir=models_dir)
    images = _images(2, 5)
    cfg = TrainingConfig(feature_views=3, seed=9)
    pool = build_feature_pool(w, images, cfg)
    assert pool.features.shape[:2] == (2, 3) and len(pool.flipped) == 2
    again = build_feature_pool(w, images, cfg)
    assert torch.equal(pool.features, again.features) and pool.flipped == again.flipped   # a resume rebuilds it
    view, flipped = augment_view_flipped(images[1], np.random.default_rng([9, 0xFEA7, 1, 2]), cfg)
    assert flipped == pool.flipped[1][2]
    assert torch.equal(w.visual_features(w.preprocess([view]))[0], pool.features[1, 2])
    # without augmentation every view is the photo itself: one view per photo is enough
    assert build_feature_pool(w, images, TrainingConfig(augment=False)).views == 1


def test_a_run_with_another_pool_does_not_resume_and_blip2_keeps_its_key(models_dir, tmp_path):
    from engine.domain.concepts.object_head import TrainingCancelled

    w = load_vlm("tiny-smolvlm", models_dir=models_dir)
    store = EmbeddingStore(tmp_path)
    seen: list[int] = []
    progress, stop = stop_at_step(4, seen)
    with pytest.raises(TrainingCancelled):
        ConceptTrainer(w, store, TrainingConfig(steps=8, checkpoint_every=4, feature_views=2)).train(
            [ConceptToTrain(7, "sks")], _examples(w), progress=progress, cancel=stop)
    seen.clear()
    ConceptTrainer(w, store, TrainingConfig(steps=8, checkpoint_every=4, feature_views=3)).train(
        [ConceptToTrain(7, "sks")], _examples(w), progress=lambda p: seen.append(p.step))
    assert seen[0] == 1                                  # a different pool: started over
    # BLIP-2 appends inside its vision encoder: no pool, and its resume key is what it was before the pool
    blip = load_vlm("tiny-blip2", models_dir=models_dir)
    assert not blip.caches_features
    out = ConceptTrainer(blip, EmbeddingStore(tmp_path / "b"), TrainingConfig(steps=2)).train(
        [ConceptToTrain(7, "sks")], _examples(blip))
    assert "feature_views" not in out[7].settings


def test_the_apps_cpu_estimate_of_a_concept_counts_the_pool_and_the_steps(monkeypatch):
    """The app's estimate is the benchmark's measurement: pool views plus cached steps where there is a pool."""
    from engine.models.vlm import cpu_times

    monkeypatch.setattr(cpu_times, "MEASURED", {"a": {"step_s": 9.0, "step_cached_s": 2.0, "pool_view_s": 3.0},
                                                "b": {"step_s": 9.0}})
    assert cpu_times.concept_seconds("a", steps=100, photos=4, views=8) == 3.0 * 32 + 2.0 * 100
    assert cpu_times.concept_seconds("b", steps=100) == 900.0
    assert cpu_times.concept_seconds("unmeasured") is None and cpu_times.cpu_estimate("b") == {"step_s": 9.0}
