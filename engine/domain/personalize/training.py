"""Training concept embeddings (docs/method.md §8): only the concept values learn; the VLM stays frozen.

AdamW (lr 1.0, weight decay 1e-4, constant), gradient-norm clip 0.05, batches of 4 images, the VLM's own LM loss
plus λ times the attention regulariser, augmented images (flip, brightness, rotation with black corners, as the
reference's torchvision rotation). Concept signals are computed once on the un-augmented images by the caller and
passed in with each example.

The reference trains one concept at a time. Several concepts in one run train as if each were alone: every step
draws a batch of 4 of *each* concept's own photos and clips each concept's gradient on its own (with one shared
batch and clip, each would see about 4/n photos a step and the concept with the largest gradient would set
everyone's step size).

Where the concept token enters after the vision tower (LLaVA, LLaVA-OneVision, SmolVLM: after the projector), the
frozen tower's output of a view does not depend on the token, so a fixed pool of augmented views per photo
(`feature_views`) goes through the tower once, before the steps, and each step draws its views from the pool: a
step then costs the projector and the language model only. BLIP-2 appends inside its vision encoder and augments
afresh at every step.

Every step draws each concept's batch, augmentation and targets from a generator seeded by (seed, step, concept),
so a run resumed from a checkpoint continues exactly as the uninterrupted run would have. Checkpoints every 25 steps
(and at the last step, and on cancel) hold the values, the optimiser's moments and the history of values.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance

from engine.domain.concepts.object_head import TrainingCancelled, rotate_filled
from engine.domain.personalize.embeddings import ConceptEmbedding, EmbeddingStore, as_numpy
from engine.errors import InvalidInput, UserError
from engine.models.vlm.auto import CAPTION, VQA, VlmWrapper
from engine.models.vlm.concept_layer import init_values
from engine.progress import Progress, ProgressFn

log = logging.getLogger(__name__)

class TrainingOutOfMemory(UserError, RuntimeError):
    """The device ran out of memory during training; the message says what to try. The last checkpoint is kept,
    so teaching again continues from it."""


def out_of_memory_message(exc: BaseException, device: Any, step: int, steps: int, checkpoint_step: int) -> str:
    # torch.OutOfMemoryError is what the CUDA (and MPS) allocators raise; the CPU's says MemoryError / "can't allocate"
    gpu = isinstance(exc, torch.OutOfMemoryError) or getattr(device, "type", str(device)) not in ("cpu", "None")
    where = "out of GPU memory" if gpu else "out of memory"
    kept = (f"the last checkpoint (step {checkpoint_step}) is kept and teaching again continues from it"
            if checkpoint_step else "nothing was lost: teaching again starts over")
    tips = ("try a smaller batch, train on the CPU instead (slower), or close other apps that use the GPU"
            if gpu else "try a smaller batch, or close other apps to free memory")
    return f"Training stopped at step {step} of {steps}: {where} ({type(exc).__name__}). To fix it, {tips}; {kept}."


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


# λ per VLM family and task: the reference code's values (docs/method.md §7)
DEFAULT_LAMBDA = {("blip2", CAPTION): 0.04, ("llava", CAPTION): 0.0075, ("llava", VQA): 10.0}
# The small captioners regularise the same attention as LLaVA (the language model's rows of the concept token)
for _family in ("smolvlm", "llava-onevision", "qwen2-vl"):
    DEFAULT_LAMBDA[(_family, CAPTION)], DEFAULT_LAMBDA[(_family, VQA)] = 0.0075, 10.0
DEFAULT_LAMBDA[("minigpt-v2", CAPTION)] = 1.0   # the reference code's MiniGPT-v2 captioning (REC uses it too)


@dataclass
class TrainingConfig:
    steps: int = 100
    lr: float = 1.0
    weight_decay: float = 1e-4
    clip_norm: float = 0.05
    batch_size: int = 4
    reg_lambda: float | None = None      # None: DEFAULT_LAMBDA for the VLM and task
    checkpoint_every: int = 25
    augment: bool = True
    flip_p: float = 0.5
    brightness: float = 0.6
    max_rotation: float = 45.0
    # What fills the corners a rotation uncovers: "black" as the reference (torchvision's default fill), or
    # "mirror" (the picture mirrored at its edges), which creates phantom copies of objects near the edges; the
    # captions then describe things that are not in the view (measured in bench/README.md).
    rotation_fill: str = "black"
    shrink: bool = True                  # augment copies shrunk to twice the model's input side, not the photos
    # Augmented views per photo whose vision features are computed once, before the steps, and drawn from at each
    # step (wrappers whose token enters after the vision tower: `caches_features`). 0: a fresh view every step.
    feature_views: int = 8
    seed: int = 0

    def lam(self, family: str, task: str) -> float:
        return self.reg_lambda if self.reg_lambda is not None else DEFAULT_LAMBDA.get((family, task), 0.0)


@dataclass
class TrainingExample:
    image: Image.Image
    concept_ids: list[int]               # the concepts whose heads fired on this (un-augmented) image
    pairs: list[tuple[str, str]]         # (prompt, target) choices; one is drawn per step
    label: str = ""                      # for messages
    # What the same choices say of the mirrored photo, where mirroring changes more than the words "left" and
    # "right" (a caption that lists things left to right). None: `mirror_text` of each pair.
    mirrored_pairs: list[tuple[str, str]] | None = None


@dataclass
class ConceptToTrain:
    concept_id: int
    identifier: str
    keys: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.float32))  # what recognises it


@dataclass(frozen=True)
class TrainingProgress(Progress):
    """One optimisation step of a concept embedding: a Progress ("training", step, steps) with the losses and the
    time so far and left (`checkpoint`: this step was saved)."""

    loss: float = 0.0
    lm_loss: float = 0.0
    reg_loss: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float = 0.0
    checkpoint: bool = False

    @property
    def step(self) -> int:
        return self.done

    @property
    def steps(self) -> int:
        return int(self.total or 0)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "steps": self.steps, "loss": self.loss, "lm_loss": self.lm_loss,
                "reg_loss": self.reg_loss, "elapsed_s": self.elapsed_s, "eta_s": self.eta_s,
                "checkpoint": self.checkpoint}


def _is_cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def augment_view(image: Image.Image, rng: np.random.Generator, config: TrainingConfig) -> Image.Image:
    """One training view: horizontal flip (p 0.5), brightness jitter (±0.6), rotation (±45°, black corners)."""
    return augment_view_flipped(image, rng, config)[0]


def augment_view_flipped(image: Image.Image, rng: np.random.Generator, config: TrainingConfig
                         ) -> tuple[Image.Image, bool]:
    """`augment_view`, and whether the view is mirrored (its targets' left and right must be swapped)."""
    view = image.convert("RGB")
    if not config.augment:
        return view, False
    flipped = bool(rng.random() < config.flip_p)
    if flipped:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if config.brightness > 0:
        factor = float(rng.uniform(max(0.0, 1 - config.brightness), 1 + config.brightness))
        view = ImageEnhance.Brightness(view).enhance(factor)
    if config.max_rotation > 0:
        angle = float(rng.uniform(-config.max_rotation, config.max_rotation))
        if abs(angle) > 1e-3:
            view = (rotate_filled(view, angle) if config.rotation_fill == "mirror"
                    else view.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)))
    return view, flipped


# "left"/"right" as sides only: after "on the", "to its", ... or before "-hand", " side", "-most", " of"; not the
# verb ("Alex left the room") nor "right" as "correct".
_SIDES = re.compile(r"\b(?P<pre>(?:on|to|at|from|the|its|his|her|their|my|your|far|upper|lower|top|bottom)\s+)"
                    r"(?P<side>left|right)\b"
                    r"|\b(?P<side2>left|right)(?=-hand\b|-most\b|-side\b| side\b| of\b)", re.IGNORECASE)


def view_pair(example: TrainingExample, k: int, mirrored: bool) -> tuple[str, str]:
    """The k-th (prompt, target) choice of an example, as said of its view (mirrored or not)."""
    if not mirrored:
        return example.pairs[k]
    if example.mirrored_pairs:
        return example.mirrored_pairs[k % len(example.mirrored_pairs)]
    prompt, target = example.pairs[k]
    return mirror_text(prompt), mirror_text(target)


def mirror_text(text: str) -> str:
    """Left and right swapped ("Bella is on the left" → "... on the right"), keeping the case: what a target says of
    a mirrored view. Without it a flipped view teaches the wrong side (measured in bench/README.md)."""
    def other(word: str) -> str:
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    def swap(m: re.Match) -> str:
        if m.group("side"):
            return m.group("pre") + other(m.group("side"))
        return other(m.group("side2"))
    return _SIDES.sub(swap, text)


@dataclass
class FeaturePool:
    """The frozen vision tower's output for a fixed set of augmented views: `features[i, v]` is view v of example i,
    `flipped[i][v]` whether it is mirrored. Built once per training run, so that a step costs only the projector
    and the language model."""

    features: torch.Tensor               # (examples, views, S, D) on the model's device
    flipped: list[list[bool]]

    @property
    def views(self) -> int:
        return self.features.shape[1]


def pool_views(config: TrainingConfig) -> int:
    """Views per photo in the pool: one when nothing is augmented (every view would be the same)."""
    return config.feature_views if config.augment else min(1, config.feature_views)


def build_feature_pool(wrapper: VlmWrapper, images: Sequence[Image.Image], config: TrainingConfig,
                       cancel: threading.Event | None = None) -> FeaturePool:
    """Augment each image `pool_views` times (each view from its own seeded generator, so a resumed run rebuilds
    the same pool) and run the vision tower once per view, a batch at a time."""
    n_views = pool_views(config)
    jobs = [(i, v) for i in range(len(images)) for v in range(n_views)]
    views, flips = [], []
    for i, v in jobs:
        view, flipped = augment_view_flipped(images[i], np.random.default_rng([config.seed, 0xFEA7, i, v]), config)
        views.append(view)
        flips.append(flipped)
    chunks = []
    for start in range(0, len(views), max(1, config.batch_size)):
        if _is_cancelled(cancel):
            raise TrainingCancelled("training cancelled while computing the vision features")
        chunk = views[start:start + max(1, config.batch_size)]
        chunks.append(wrapper.visual_features(wrapper.preprocess(chunk)))
    feats = torch.cat(chunks)
    feats = feats.reshape(len(images), n_views, *feats.shape[1:])
    flipped = [flips[i * n_views:(i + 1) * n_views] for i in range(len(images))]
    return FeaturePool(feats, flipped)


def working_side(wrapper: VlmWrapper) -> int | None:
    """Twice the side of the vision encoder's input (448 px for BLIP-2's 224): every view is resized to the input
    anyway, and a ±45° rotation of a 1440 px preview costs ~30× one of 448 px for the same pixels in the end."""
    vision = getattr(getattr(getattr(wrapper, "model", None), "config", None), "vision_config", None)
    side = getattr(vision, "image_size", None)
    return 2 * int(side) if isinstance(side, int) and side > 0 else None


def shrunk(image: Image.Image, side: int) -> Image.Image:
    """An RGB copy whose longer side is at most `side` (aspect kept; smaller images unchanged)."""
    image = image.convert("RGB")
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


class ConceptTrainer:
    """Trains one or several concepts' embeddings together on a loaded VLM wrapper."""

    def __init__(self, wrapper: VlmWrapper, store: EmbeddingStore, config: TrainingConfig | None = None):
        self.wrapper = wrapper
        self.store = store
        self.config = config or TrainingConfig()

    def _settings(self, task: str, concepts: Sequence[ConceptToTrain]) -> dict[str, Any]:
        c = self.config
        return {"lr": c.lr, "weight_decay": c.weight_decay, "clip_norm": c.clip_norm, "batch_size": c.batch_size,
                "reg_lambda": c.lam(self.wrapper.family, task), "augment": c.augment, "seed": c.seed,
                "rotation_fill": c.rotation_fill,
                "work_side": working_side(self.wrapper) if c.shrink else None,
                "trained_with": sorted(x.concept_id for x in concepts)} | self._pool_setting()

    def _pool_setting(self) -> dict[str, int]:
        """The feature pool's size, part of the resume key; absent for wrappers that cannot cache (so their
        runs from before the pool still resume)."""
        if not self.wrapper.caches_features:
            return {}
        return {"feature_views": pool_views(self.config)}

    def _resume_point(self, concepts: Sequence[ConceptToTrain], task: str, settings: dict[str, Any]
                      ) -> dict[int, ConceptEmbedding] | None:
        """The checkpoints of an unfinished run with the same settings, if every concept of it has one."""
        found = {}
        for c in concepts:
            emb = self.store.load(c.concept_id, self.wrapper.checkpoint, task)
            if (emb is None or emb.source != "trained" or emb.complete or emb.steps_total != self.config.steps
                    or emb.settings != settings):
                return None
            found[c.concept_id] = emb
        if len({e.step for e in found.values()}) != 1:
            return None
        return found

    def train(self, concepts: Sequence[ConceptToTrain], examples: Sequence[TrainingExample], task: str = CAPTION,
              progress: ProgressFn | None = None, cancel: threading.Event | None = None, resume: bool = True
              ) -> dict[int, ConceptEmbedding]:
        """Train; returns the final embeddings by concept id (also saved). Raises TrainingCancelled on cancel,
        after saving a checkpoint of the step reached."""
        cfg, w = self.config, self.wrapper
        if task not in w.spec.tasks:
            raise InvalidInput(f"{w.spec.title} does not do {task!r}; it does {', '.join(w.spec.tasks)}")
        if not concepts:
            raise InvalidInput("no concepts to train")
        ids = sorted(c.concept_id for c in concepts)
        by_id = {c.concept_id: c for c in concepts}
        examples = [e for e in examples if e.pairs]
        for cid in ids:
            if not any(cid in e.concept_ids for e in examples):
                raise InvalidInput(f"concept {cid} ({by_id[cid].identifier}) fired on none of the training images "
                                 f"that have targets: nothing to learn it from")
        settings = self._settings(task, concepts)
        lam = settings["reg_lambda"]
        side = settings["work_side"]
        if side:   # once, before the steps: each step then augments a small copy
            examples = [replace(e, image=shrunk(e.image, side)) for e in examples]
        pool = (build_feature_pool(w, [e.image for e in examples], cfg, cancel)
                if settings.get("feature_views") else None)

        # -- values and optimiser (fresh, or from the last checkpoint of this same run) -------------------------
        start, history = 0, {cid: {} for cid in ids}
        resumed = self._resume_point(concepts, task, settings) if resume else None
        if resumed:
            values = {cid: torch.from_numpy(resumed[cid].values.copy()) for cid in ids}
            start = next(iter(resumed.values())).step
            history = {cid: dict(resumed[cid].history) for cid in ids}
            log.info("resuming concepts %s at step %d of %d", ids, start, cfg.steps)
        else:
            values = {}
            for cid in ids:
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + cid)
                values[cid] = init_values(1, w.concept_dim, gen)[0]
        w.set_concepts(values, trainable=True)
        param = w.concept_layer.values
        opt = torch.optim.AdamW([param], lr=cfg.lr, weight_decay=cfg.weight_decay)
        if resumed:
            first = next(iter(resumed.values()))
            if first.adam and first.adam_step > 0:
                opt.state[param] = {
                    "step": torch.tensor(float(first.adam_step)),
                    "exp_avg": torch.from_numpy(np.concatenate([resumed[c].adam["exp_avg"] for c in ids])
                                                ).to(param.device),
                    "exp_avg_sq": torch.from_numpy(np.concatenate([resumed[c].adam["exp_avg_sq"] for c in ids])
                                                   ).to(param.device),
                }

        def save(step: int) -> None:
            state = opt.state.get(param, {})
            vals = as_numpy(param)
            for row, cid in enumerate(w.concept_layer.concept_ids):
                history[cid][step] = vals[row:row + 1].copy()
                adam = {k: as_numpy(state[k])[row:row + 1] for k in ("exp_avg", "exp_avg_sq") if k in state}
                self.store.save(ConceptEmbedding(
                    concept_id=cid, checkpoint=w.checkpoint, family=w.family, task=task,
                    identifier=by_id[cid].identifier, values=vals[row:row + 1], keys=by_id[cid].keys,
                    step=step, steps_total=cfg.steps, history=history[cid], adam=adam,
                    adam_step=int(state["step"]) if "step" in state else 0, settings=settings))

        t0 = time.perf_counter()
        # each concept's own photos (indices into examples): its batches are drawn from these alone
        own = [[i for i, e in enumerate(examples) if cid in e.concept_ids] for cid in w.concept_layer.concept_ids]
        step = start
        try:
            for step in range(start, cfg.steps):
                if _is_cancelled(cancel):
                    raise TrainingCancelled(f"training cancelled at step {step} of {cfg.steps}")
                opt.zero_grad(set_to_none=True)
                total = lm = reg = 0.0
                for cid, mine in zip(w.concept_layer.concept_ids, own):
                    # one batch per concept, its gradient added as is: a concept whose photos hold no other concept
                    # of the run trains exactly as it would alone
                    rng = np.random.default_rng([cfg.seed, step, cid])
                    part = self._batch_loss(examples, mine, rng, pool, by_id, lam)
                    part.total.backward()
                    total, lm, reg = (total + part.total.item() / len(own), lm + part.lm.item() / len(own),
                                      reg + part.reg.item() / len(own))
                _clip_rows(param, cfg.clip_norm)
                opt.step()
                done = step + 1
                is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
                if is_ckpt:
                    save(done)
                if progress is not None:
                    elapsed = time.perf_counter() - t0
                    rate = elapsed / (done - start)
                    progress(TrainingProgress("training", done, cfg.steps, loss=total, lm_loss=lm, reg_loss=reg,
                                              elapsed_s=elapsed, eta_s=rate * (cfg.steps - done), checkpoint=is_ckpt))
                step = done
        except TrainingCancelled:
            if step > start:
                save(step)
            raise
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            # free what the failed step held before anyone else (captions, the GUI) needs the memory
            opt.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            last = max([start] + [s for s in range(start + 1, step + 1)
                                  if s % cfg.checkpoint_every == 0 or s == cfg.steps])
            message = out_of_memory_message(exc, w.device, step + 1, cfg.steps, last)
            log.error("%s", message)
            raise TrainingOutOfMemory(message) from None   # the cause holds the failed step's tensors: let them go
        finally:
            param.requires_grad_(False)
        return {cid: self.store.load(cid, w.checkpoint, task) for cid in ids}

    def _batch_loss(self, examples: Sequence[TrainingExample], mine: list[int], rng: np.random.Generator,
                    pool: FeaturePool | None, by_id: dict[int, ConceptToTrain], lam: float):
        """The loss of one batch drawn from the examples `mine` (one concept's photos), each with the tokens of
        the run's concepts that fired on it."""
        w, cfg = self.wrapper, self.config
        pick = np.asarray(mine)[rng.choice(len(mine), size=min(cfg.batch_size, len(mine)), replace=False)]
        batch = [examples[i] for i in pick]
        pixels, features = None, None
        if pool is not None:   # views drawn from the pool: the vision tower does not run
            drawn = [int(rng.integers(pool.views)) for _ in pick]
            flips = [pool.flipped[i][v] for i, v in zip(pick, drawn)]
            features = pool.features[torch.as_tensor(pick), torch.as_tensor(drawn)]
        else:
            views, flips = zip(*(augment_view_flipped(e.image, rng, cfg) for e in batch))
            pixels = w.preprocess(list(views))
        picks = [int(rng.integers(len(e.pairs))) for e in batch]
        pairs = [view_pair(e, k, f) for e, k, f in zip(batch, picks, flips)]
        loss_args = (pixels, [p for p, _ in pairs], [t for _, t in pairs],
                     [[c for c in e.concept_ids if c in by_id] for e in batch], lam)
        return (w.training_loss(*loss_args, features=features) if features is not None
                else w.training_loss(*loss_args))


def _clip_rows(param: torch.Tensor, max_norm: float) -> None:
    """Clip each concept's gradient (one row of the values) to `max_norm` on its own, as if trained alone: with
    one concept this is torch's clip_grad_norm_."""
    if param.grad is None:
        return
    grad = param.grad
    norms = grad.reshape(grad.shape[0], -1).norm(dim=1)                      # (concepts,)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(scale.reshape(-1, *([1] * (grad.dim() - 1))))
