"""Concept-embedding training and batched captioning on the tiny presets (CPU), against naive baselines.

- Training step: ours (concept signals computed once, before training) vs. a naive loop that recomputes the
  concept signal of every batch image at every step with the concept head (here: the real CLIP ViT-B-32
  architecture with random weights, as `ConceptDetector` would run it), both in fp32. Time per step and peak RSS.
- Captioning: the wrapper's batched generation (photos grouped by concept-token count) vs. one photo at a time.

Prints a table; ratios are baseline / ours (higher is better). Run: `.venv/bin/python bench/bench_personalize.py`.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import (
    ConceptToTrain,
    ConceptTrainer,
    TrainingConfig,
    TrainingExample,
    augment_view,
)
from engine.models.vlm.auto import load_vlm


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)) for _ in range(n)]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_training(preset: str, models: Path, steps: int = 20) -> dict:
    w = load_vlm(preset, models_dir=models)
    prompt = w.training_prompt("caption", "sks")
    examples = [TrainingExample(img, [1], [(prompt, "sks on the beach")]) for img in _images(4)]
    cfg = TrainingConfig(steps=steps, seed=0)

    # ours
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        ConceptTrainer(w, EmbeddingStore(Path(d)), cfg).train([ConceptToTrain(1, "sks")], examples)
        ours = (time.perf_counter() - t) / steps
    peak_ours = _peak_mb()

    # naive: the concept head runs on every image of every batch at every step
    import open_clip

    clip, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    clip.eval()
    head = torch.nn.Linear(512, 2)
    w.set_concepts({1: torch.nn.functional.normalize(torch.rand(w.concept_dim), dim=0)}, trainable=True)
    param = w.concept_layer.values
    opt = torch.optim.AdamW([param], lr=cfg.lr, weight_decay=cfg.weight_decay)
    t = time.perf_counter()
    for step in range(steps):
        rng = np.random.default_rng([cfg.seed, step])
        views = [augment_view(e.image, rng, cfg) for e in examples]
        with torch.no_grad():
            feats = clip.encode_image(torch.stack([preprocess(e.image) for e in examples]))
            fired = head(torch.nn.functional.normalize(feats, dim=-1)).softmax(-1)[:, 1] >= 0.0  # always fires
        concepts = [[1] if f else [] for f in fired.tolist()]
        parts = w.training_loss(w.preprocess(views), [prompt] * 4, ["sks on the beach"] * 4, concepts, 0.04)
        opt.zero_grad()
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_([param], cfg.clip_norm)
        opt.step()
    naive = (time.perf_counter() - t) / steps
    param.requires_grad_(False)
    return {"preset": preset, "ours_s": ours, "naive_s": naive, "ratio": naive / ours, "peak_mb": peak_ours}


def bench_training_on_previews(preset: str, models: Path, steps: int = 10) -> dict:
    """Training from the app's 1440 px previews: views augmented from copies shrunk to twice the model's input
    (ours) against augmenting the previews themselves (before 2026-11-26), same seed, same process."""
    w = load_vlm(preset, models_dir=models)
    prompt = w.training_prompt("caption", "sks")
    rng = np.random.default_rng(2)
    photos = [Image.fromarray(rng.integers(0, 255, (1080, 1440, 3), dtype=np.uint8)) for _ in range(4)]
    examples = [TrainingExample(img, [1], [(prompt, "sks on the beach")]) for img in photos]
    times = {}
    for name, shrink in (("ours", True), ("full", False)):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            ConceptTrainer(w, EmbeddingStore(Path(d)), TrainingConfig(steps=steps, seed=0, shrink=shrink)).train(
                [ConceptToTrain(1, "sks")], examples)
            times[name] = (time.perf_counter() - t) / steps
    return {"preset": preset, "ours_s": times["ours"], "full_s": times["full"], "ratio": times["full"] / times["ours"]}


def bench_captioning(preset: str, models: Path, n: int = 32) -> dict:
    w = load_vlm(preset, models_dir=models)
    w.set_concepts({1: torch.rand(w.concept_dim), 2: torch.rand(w.concept_dim)})
    imgs = _images(n, 1)
    concepts = [[1] if i % 3 == 0 else ([1, 2] if i % 3 == 1 else []) for i in range(n)]
    prompts = [""] * n
    w.generate(imgs[:2], prompts[:2], concepts[:2])   # warm-up
    t = time.perf_counter()
    for i in range(n):
        w.generate([imgs[i]], [prompts[i]], [concepts[i]])
    one = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, 16):
        w.generate(imgs[i:i + 16], prompts[i:i + 16], concepts[i:i + 16])
    batched = time.perf_counter() - t
    return {"preset": preset, "one_per_s": n / one, "batched_per_s": n / batched, "ratio": one / batched}


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        models = Path(d)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32")
        print(f"{'training step':<22}{'ours s/step':>12}{'naive s/step':>14}{'speed-up':>10}{'peak RSS MB':>13}")
        for preset in ("tiny-blip2", "tiny-llava"):
            r = bench_training(preset, models)
            print(f"{r['preset']:<22}{r['ours_s']:>12.4f}{r['naive_s']:>14.4f}{r['ratio']:>9.2f}x{r['peak_mb']:>13.0f}")
        print(f"\n{'training, 1440 px':<22}{'ours s/step':>12}{'full s/step':>14}{'speed-up':>10}")
        for preset in ("tiny-blip2", "tiny-llava"):
            r = bench_training_on_previews(preset, models)
            print(f"{r['preset']:<22}{r['ours_s']:>12.4f}{r['full_s']:>14.4f}{r['ratio']:>9.2f}x")
        print(f"\n{'captioning (32 photos)':<22}{'batched/s':>12}{'one-by-one/s':>14}{'speed-up':>10}")
        for preset in ("tiny-blip2", "tiny-llava"):
            r = bench_captioning(preset, models)
            print(f"{r['preset']:<22}{r['batched_per_s']:>12.1f}{r['one_per_s']:>14.1f}{r['ratio']:>9.2f}x")


if __name__ == "__main__":
    main()
