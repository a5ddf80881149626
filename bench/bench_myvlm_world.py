"""Does personalisation work? The paper's measurements on a small BLIP-2 pre-trained on the synthetic world.

For each personal concept (never seen in pre-training): a real object head (the project's `train_linear_head`)
over pooled features of the small model's own frozen vision encoder, and a concept embedding trained by the
project's `ConceptTrainer` from 4 images with personalised targets. Then on held-out images:

- recall: share of captions of concept images that contain the identifier (paper: 87-96 %), end to end (the head
  decides) and with the concept given (the head's errors aside); also on the 4 training photos themselves;
- correct naming (issue 18's, `world.naming`): the identifier is present, the concept is not also described as a
  generic object, and no same-class distractor's description gave way to it;
- preservation: share of captions of images without the concept identical to the un-personalised model's (all
  heads together), and each head's false-positive rate on those images (the paper's object heads: 9.1 %);
- head precision/recall, and scene/object accuracy of the personalised captions (the rest stays right);
- multi-concept recall on images holding two personal concepts (both identifiers);
- baselines on the same images: the class word in the original caption replaced by the identifier, and MyVLM
  without regularisation and augmentation (the paper's ablation).

On world v1 (`world.py`, `blip2-world`) or v2 (`world2.py`, `blip2-world2`: subject-centric captions, fresh
identifiers), over several seeds (`--seeds 3`: trainer and head seed, and the 4 training photos; mean and spread).

Run: `.venv/bin/python bench/bench_myvlm_world.py [--world v2] [--seeds 3] [--json report.json] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.world import world as W
from bench.world import world2 as V
from engine.domain.concepts.object_head import (
    ObjectHeadConfig,
    augment,
    score,
    train_linear_head,
)
from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.training import (
    ConceptToTrain,
    ConceptTrainer,
    TrainingConfig,
    TrainingExample,
)
from engine.models.vlm.auto import VQA, GenerationSettings, VlmWrapper, load_vlm

CHECKPOINT = ROOT / "bench" / "world" / "models" / "blip2-world"
CHECKPOINT_V2 = ROOT / "bench" / "world" / "models" / "blip2-world2"
LLAVA_CHECKPOINT = ROOT / "bench" / "world" / "models" / "llava-world"
PAPER = {"recall": "87.1 % (BLIP-2, all concepts); 95.1 % objects", "replace_class_word_recall": "29.3 % objects",
         "ablation_recall": "25.9 % (no augmentation, no regularisation)",
         "head_false_positive_rate": "9.1 % (object heads: 90.9 % right on negatives)"}


@dataclass
class BenchConfig:
    checkpoint: Path = CHECKPOINT
    concepts: list[str] = field(default_factory=lambda: list(W.CONCEPTS)[:6])
    calibration: list[str] = field(default_factory=lambda: list(W.CONCEPTS)[6:])   # never used for the numbers
    train_images: int = 4
    targets_per_image: int = 4
    heldout_positive: int = 20
    heldout_negative: int = 40
    multi_pairs: int = 3
    multi_images: int = 8
    head_near_negatives: int = 100   # same-class objects, as the app's nearest-neighbour negatives
    head_random_negatives: int = 100  # random scenes, as the app's random album photos
    head_views: int = 8
    head_lr: float | None = None     # None: the project's default (ObjectHeadConfig)
    steps: int = 100
    lr: float = 1.0                   # the project's (and the paper's) defaults; --lr / --no-augment to study them
    augment: bool = True
    ablation: bool = True
    no_rescale_variant: bool = True   # also MyVLM without the Q-Former key/value rescale of docs/method.md §6
    paper_gain_variant: bool = True   # also MyVLM at the paper's rescale gain 1 when the checkpoint declares another
    caption_others: bool = True       # preservation and multi-concept recall: captions of photos without the
                                      # concept and with two (a third of the captioning; CI's test reads neither)
    world_seed: int = 0
    seed: int = 0
    world: str = "v1"                 # "v1": world.py's left-to-right captions; "v2": world2.py's
    rotation_fill: str = "black"      # the trainer's (TrainingConfig.rotation_fill); "mirror" was the old fill
    max_rotation: float = 45.0        # the trainer's (the paper's ±45°)
    # world v2's identifiers: "fresh" (words bound to no look, the issue's design) or "known" (as in v1: the name
    # of a pre-training figure of the same class, which the decoder has learnt to read off a picture)
    v2_identifiers: str = "fresh"

    def __post_init__(self):
        if self.world == "v2" and self.checkpoint == CHECKPOINT:
            self.checkpoint = CHECKPOINT_V2


@dataclass
class WorldKit:
    """What the benchmark needs of a world: its sampler, its caption wordings, the concepts' identifiers and the
    names its parser knows."""

    world: W.World
    caption_variants: object
    identifiers: dict[str, str]
    names: tuple[str, ...]
    score: object
    personalized: object              # the canonical personalised caption of a scene (for the examples)


def world_kit(cfg: BenchConfig) -> WorldKit:
    if cfg.world == "v2":
        idents = (V.identifiers(list(W.CONCEPTS)) if cfg.v2_identifiers == "fresh"
                  else _identifiers(list(W.CONCEPTS)[:6]) | _identifiers(list(W.CONCEPTS)[6:],
                                                                         set(_identifiers(list(W.CONCEPTS)[:6]).values())))
        return WorldKit(V.World2(cfg.world_seed), V.caption_variants, idents, V.ALL_NAMES, V.score_caption,
                        V.personalized_caption)
    return WorldKit(W.World(cfg.world_seed), W.caption_variants, _identifiers(list(W.CONCEPTS)), W.IDENTIFIERS,
                    W.score_caption, W.personalized_caption)


def _identifiers(concepts: list[str], taken: set[str] | None = None) -> dict[str, str]:
    """Each concept is named by a word the language model already knows (as the issue asks): the name of a
    pre-training figure of the same class, rare tokens first ("sks" for a teddy), like a user who calls their dog
    by a common dog's name. A tiny language model ties a name to the kind of thing it names; see bench/README.md."""
    taken = set(taken or ())
    out = {}
    for c in concepts:
        cls = W.CONCEPTS[c].cls
        word = next((n for n in W.IDENTIFIERS if n not in taken and W.NAMED[n].cls == cls), None)
        word = word or next(n for n in W.IDENTIFIERS if n not in taken)
        out[c] = word
        taken.add(word)
    return out


def caption_examples(scenes, concept_index: int, identifiers: dict[str, str], n: int,
                     variants=W.caption_variants) -> list[TrainingExample]:
    """Training examples of one concept: n caption wordings per photo, and the same wordings of the mirrored
    photo for the trainer's flip augmentation (the world's captions list objects left to right, so a mirrored
    view needs more than "left" and "right" swapped)."""
    return [TrainingExample(s.image, [concept_index],
                            [("", t) for t in variants(s.meta, identifiers, n, seed=k)],
                            mirrored_pairs=[("", t) for t in variants(W.mirrored(s.meta), identifiers, n, seed=k)])
            for k, s in enumerate(scenes)]


class Features:
    """Pooled (CLS, post-layernorm) features of the VLM's own frozen vision encoder, L2-normalised."""

    def __init__(self, w: VlmWrapper):
        self.w = w

    @torch.no_grad()
    def __call__(self, images) -> np.ndarray:
        out = []
        for i in range(0, len(images), 64):
            pixels = self.w.preprocess(images[i:i + 64])
            pooled = self.w.model.vision_model(pixels).pooler_output.float()
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)


def _generate(w: VlmWrapper, images, concepts=None) -> list[str]:
    settings = GenerationSettings(max_new_tokens=30)
    out: list[str] = []
    for i in range(0, len(images), 32):
        chunk = images[i:i + 32]
        cons = concepts[i:i + 32] if concepts is not None else None
        out.extend(w.generate(chunk, [""] * len(chunk), cons, settings))
    return out


def _has(caption: str, word: str) -> bool:
    return word in W.words(caption)


def replace_class_word(caption: str, concept: str, identifier: str) -> str:
    """The paper's simplest baseline: the first phrase naming the concept's class becomes the identifier."""
    cls_words = "|".join(W.CLASS_WORDS[W.CONCEPTS[concept].cls])
    colours = "|".join(W.COLOURS)
    pattern = re.compile(rf"\b(?:an?|the)\s+(?:(?:{colours})\s+)?(?:{cls_words})\b")
    return pattern.sub(identifier, caption, count=1)


def run(cfg: BenchConfig, log=print) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    kit = world_kit(cfg)
    world = kit.world
    idents = {c: kit.identifiers[c] for c in cfg.concepts}
    models_dir = Path(tempfile.mkdtemp(prefix="myvlm-bench-"))
    w = load_vlm(str(cfg.checkpoint), models_dir=models_dir, dtype="float32")   # the CPU default, pinned
    feats = Features(w)

    # -- data ------------------------------------------------------------------------------------------------
    # the training photos change with the seed (seed 0: the photos of the earlier reports); the held-out ones do not
    train = {c: world.concept_images(c, cfg.train_images, seed=1 + 1000 * cfg.seed) for c in cfg.concepts}
    pos = {c: world.concept_images(c, cfg.heldout_positive, seed=2) for c in cfg.concepts}
    neg = world.negative_images(cfg.heldout_negative, seed=3)
    neg += [s for c in cfg.concepts for s in world.negative_images(cfg.heldout_negative // len(cfg.concepts),
                                                                     seed=4, concept=c)]
    pairs = [(cfg.concepts[i], cfg.concepts[(i + 1) % len(cfg.concepts)]) for i in range(cfg.multi_pairs)]
    multi = {p: world.multi_concept_images(list(p), cfg.multi_images, seed=5) for p in pairs}

    # -- concept heads over the VLM's own vision features ---------------------------------------------------
    t = time.perf_counter()
    heads = {}
    head_cfg = ObjectHeadConfig(seed=cfg.seed)
    if cfg.head_lr:
        head_cfg.lr = cfg.head_lr
    rng = np.random.default_rng(cfg.seed)
    random_negatives = feats([s.image for s in world.negative_images(cfg.head_random_negatives, seed=7,
                                                                     same_class=False)])
    for c in cfg.concepts:
        views = np.stack([feats(augment(s.image, cfg.head_views, rng)) for s in train[c]])     # (4, V, D)
        near = [s.image for s in world.negative_images(cfg.head_near_negatives, seed=6, concept=c)]
        near += [s.image for o in cfg.concepts if o != c for s in train[o]]
        weight, bias, _ = train_linear_head(views, np.concatenate([feats(near), random_negatives]), head_cfg)
        heads[c] = (weight, bias)
    head_seconds = time.perf_counter() - t

    def signals(scenes) -> list[list[int]]:
        f = feats([s.image for s in scenes])
        fired = np.stack([score(*heads[c], f) >= head_cfg.threshold for c in cfg.concepts], axis=1)
        return [[j for j in range(len(cfg.concepts)) if fired[i, j]] for i in range(len(scenes))]

    # -- concept embeddings -----------------------------------------------------------------------------------
    checkpoint_gain = getattr(w, "appended_gain", 1.0)

    def train_embeddings(train_cfg: TrainingConfig, rescale: bool = True, gain: float | None = None,
                         concepts: list[str] | None = None, train_sets=None) -> dict[int, torch.Tensor]:
        w.rescale_appended = rescale
        w.appended_gain = checkpoint_gain if gain is None else gain
        concepts = concepts or cfg.concepts
        train_sets = train_sets or train
        values = {}
        with tempfile.TemporaryDirectory() as d:
            store = EmbeddingStore(Path(d))
            for j, c in enumerate(concepts):
                examples = caption_examples(train_sets[c], j, {c: idents[c]}, cfg.targets_per_image,
                                            kit.caption_variants)
                emb = ConceptTrainer(w, store, train_cfg).train([ConceptToTrain(j, idents[c])], examples)[j]
                values[j] = torch.from_numpy(emb.values[0].copy())
        return values

    t = time.perf_counter()
    def base_config() -> TrainingConfig:
        return TrainingConfig(steps=cfg.steps, seed=cfg.seed, lr=cfg.lr, augment=cfg.augment,
                              rotation_fill=cfg.rotation_fill, max_rotation=cfg.max_rotation)

    myvlm_values = train_embeddings(base_config())
    train_seconds = time.perf_counter() - t
    variants = {"myvlm": myvlm_values}
    rescale_of = {"myvlm": True, "no_reg_no_aug": True, "no_kv_rescale": False, "paper_gain_1": True}
    gain_of = {"paper_gain_1": 1.0}
    if cfg.paper_gain_variant and checkpoint_gain != 1.0:
        variants["paper_gain_1"] = train_embeddings(base_config(), gain=1.0)
    if cfg.no_rescale_variant:
        variants["no_kv_rescale"] = train_embeddings(base_config(), rescale=False)
    if cfg.ablation:
        variants["no_reg_no_aug"] = train_embeddings(TrainingConfig(steps=cfg.steps, seed=cfg.seed,
                                                                    reg_lambda=0.0, augment=False))

    # -- evaluation -------------------------------------------------------------------------------------------
    t = time.perf_counter()
    all_pos = [(j, c, s) for j, c in enumerate(cfg.concepts) for s in pos[c]]
    pos_scenes = [s for _, _, s in all_pos]
    pos_signals = signals(pos_scenes)
    neg_signals = signals(neg)
    multi_scenes = [(p, s) for p in pairs for s in multi[p]]
    multi_signals = signals([s for _, s in multi_scenes])
    w.set_concepts({})
    base_pos = _generate(w, [s.image for s in pos_scenes])
    base_neg = _generate(w, [s.image for s in neg]) if cfg.caption_others else []

    # head quality
    tp = sum(j in sig for (j, _, _), sig in zip(all_pos, pos_signals))
    fn = len(all_pos) - tp
    fp = sum(len(sig) for sig in neg_signals) + sum(len([x for x in sig if x != j])
                                                    for (j, _, _), sig in zip(all_pos, pos_signals))
    report: dict = {
        "checkpoint": str(cfg.checkpoint.relative_to(ROOT) if cfg.checkpoint.is_relative_to(ROOT) else cfg.checkpoint),
        "concepts": {c: {"identifier": idents[c], "class_word": W.CONCEPTS[c].class_word} for c in cfg.concepts},
        "images": {"train_per_concept": cfg.train_images, "heldout_positive": len(all_pos),
                   "heldout_negative": len(neg), "multi_concept": len(multi_scenes)},
        "head": {"recall": tp / max(1, tp + fn), "precision": tp / max(1, tp + fp),
                 "false_positive_rate_on_negatives": sum(bool(s) for s in neg_signals) / len(neg),
                 # each head alone on the photos without any concept (the paper's 9.1 % is this, per head)
                 "false_positive_rate_per_head": {c: float(np.mean([j in s for s in neg_signals]))
                                                  for j, c in enumerate(cfg.concepts)}},
        "paper": PAPER,
        "appended_gain": checkpoint_gain,
    }

    # baseline: replace the class word in the original caption
    base_hits = [_has(replace_class_word(cap, c, idents[c]), idents[c]) for (j, c, s), cap in zip(all_pos, base_pos)]
    base_naming = [W.naming(replace_class_word(cap, c, idents[c]), s.meta, c, idents[c], kit.names)
                   for (j, c, s), cap in zip(all_pos, base_pos)]
    report["replace_class_word"] = {"recall": float(np.mean(base_hits)),
                                    "correct_naming": float(np.mean([n["correct"] for n in base_naming]))}

    base_acc = W.CaptionAccuracy()
    for (_, _, s), cap in zip(all_pos, base_pos):
        base_acc.add(kit.score(cap, s.meta))
    report["original_model_on_concept_images"] = base_acc.as_dict()

    for name, values in variants.items():
        w.rescale_appended = rescale_of[name]
        w.appended_gain = gain_of.get(name, checkpoint_gain)
        w.set_concepts(values)
        given = _generate(w, [s.image for s in pos_scenes], [[j] for j, _, _ in all_pos])
        e2e = _generate(w, [s.image for s in pos_scenes], pos_signals)
        train_rows = [(j, c, s) for j, c in enumerate(cfg.concepts) for s in train[c]]
        on_train = _generate(w, [s.image for _, _, s in train_rows], [[j] for j, _, _ in train_rows])
        acc = W.CaptionAccuracy()
        named = []
        for (_j, c, s), cap in zip(all_pos, given):
            acc.add(kit.score(cap, s.meta, {c: idents[c]}))
            named.append(W.naming(cap, s.meta, c, idents[c], kit.names))
        named_train = [W.naming(cap, s.meta, c, idents[c], kit.names) for (_, c, s), cap in zip(train_rows, on_train)]
        per_concept = {c: float(np.mean([_has(cap, idents[c]) for (_, cc, _), cap in zip(all_pos, e2e) if cc == c]))
                       for c in cfg.concepts}
        report[name] = {
            "recall": float(np.mean([_has(cap, idents[c]) for (_, c, _), cap in zip(all_pos, e2e)])),
            "recall_concept_given": float(np.mean([_has(cap, idents[c]) for (_, c, _), cap in zip(all_pos, given)])),
            "correct_naming": float(np.mean([n["correct"] for n in named])),
            "also_described_generically": float(np.mean([n["also_generic"] for n in named])),
            "on_a_distractor": float(np.mean([n["on_distractor"] for n in named])),
            "recall_on_training_photos": float(np.mean([n["present"] for n in named_train])),
            "correct_naming_on_training_photos": float(np.mean([n["correct"] for n in named_train])),
            "personalized_caption_accuracy": acc.as_dict(),
            "recall_per_concept": per_concept,
            "examples": [{"truth": kit.personalized(s.meta, {c: idents[c]}), "generated": cap}
                         for (_, c, s), cap in list(zip(all_pos, e2e))[:: max(1, len(all_pos) // 6)]],
        }
        if cfg.caption_others:
            report[name] |= _captions_of_others(w, neg, neg_signals, base_neg, multi_scenes, multi_signals,
                                                [[cfg.concepts.index(a), cfg.concepts.index(b)]
                                                 for (a, b), _ in multi_scenes], idents, kit.names)
    report["seconds"] = {"heads": round(head_seconds, 1), "train_embeddings": round(train_seconds, 1),
                         "evaluate": round(time.perf_counter() - t, 1),
                         "total": round(time.perf_counter() - t_start, 1)}
    return report


def _captions_of_others(w: VlmWrapper, neg, neg_signals, base_neg: list[str], multi_scenes, multi_signals,
                        multi_given_signals, idents: dict[str, str], names=W.IDENTIFIERS) -> dict:
    """Preservation (photos without the concept keep the original caption) and multi-concept recall (both
    identifiers in the caption of a photo holding two concepts), end to end and with both concepts given."""
    neg_caps = _generate(w, [s.image for s in neg], neg_signals)
    multi_images = [s.image for _, s in multi_scenes]
    multi_caps = _generate(w, multi_images, multi_signals)
    multi_given = _generate(w, multi_images, multi_given_signals)

    def both_named(caps: list[str]) -> float:
        return float(np.mean([_has(cap, idents[a]) and _has(cap, idents[b])
                              for ((a, b), _), cap in zip(multi_scenes, caps)]))

    both_right = [W.naming(cap, s.meta, a, idents[a], names)["correct"]
                  and W.naming(cap, s.meta, b, idents[b], names)["correct"]
                  for ((a, b), s), cap in zip(multi_scenes, multi_given)]
    return {"preservation": float(np.mean([a == b for a, b in zip(neg_caps, base_neg)])),
            "multi_concept_recall": both_named(multi_caps), "multi_concept_recall_given": both_named(multi_given),
            "multi_concept_correct_naming_given": float(np.mean(both_right))}


SUMMARY_KEYS = {
    "myvlm": ("recall", "recall_concept_given", "correct_naming", "also_described_generically", "on_a_distractor",
              "recall_on_training_photos", "correct_naming_on_training_photos", "preservation",
              "multi_concept_recall_given", "multi_concept_correct_naming_given"),
    "no_reg_no_aug": ("recall", "recall_concept_given", "correct_naming", "preservation"),
    "replace_class_word": ("recall", "correct_naming"),
}


def _get(report: dict, path: str):
    for part in path.split("."):
        if not isinstance(report, dict) or part not in report:
            return None
        report = report[part]
    return report


def summarise(reports: list[dict]) -> dict[str, dict]:
    """Mean, standard deviation and the per-seed values of the headline numbers over seeded runs."""
    paths = [f"{v}.{k}" for v, keys in SUMMARY_KEYS.items() for k in keys]
    paths += ["myvlm.personalized_caption_accuracy.scene_accuracy", "original_model_on_concept_images.scene_accuracy",
              "head.false_positive_rate_on_negatives", "head.max_false_positive_rate_per_head",
              "head.recall", "head.precision"]
    for r in reports:
        per_head = r["head"].get("false_positive_rate_per_head", {})
        r["head"]["max_false_positive_rate_per_head"] = max(per_head.values()) if per_head else None
    out = {}
    for path in paths:
        values = [_get(r, path) for r in reports]
        if any(v is None for v in values):
            continue
        out[path] = {"mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
                     "values": [round(float(v), 4) for v in values]}
    return out


def run_seeds(cfg: BenchConfig, seeds=(0, 1, 2), log=print) -> dict:
    """The benchmark once per seed (trainer and head seed, and the 4 training photos of each concept)."""
    from dataclasses import replace as dc_replace

    reports = [run(dc_replace(cfg, seed=s), log=log) for s in seeds]
    return {"seeds": list(seeds), "summary": summarise(reports), "runs": reports}


def print_summary(summary: dict[str, dict]) -> None:
    print(f"\n{'mean ± std over seeds':<58}{'mean':>8}{'std':>8}   values")
    for path, m in summary.items():
        print(f"{path:<58}{m['mean']:>8.3f}{m['std']:>8.3f}   {m['values']}")


VQA_KINDS = ("colour", "where", "pattern", "kind")   # questions about the concept with one short right answer


def _concept_questions(meta, concept: str, identifier: str, rng=None) -> list[W.QA]:
    return [q for q in W.vqa_pairs(meta, {concept: identifier}, rng)
            if q.kind in VQA_KINDS and identifier in W.words(q.question)]


def run_llava_vqa(cfg: BenchConfig, checkpoint: Path = LLAVA_CHECKPOINT, log=print) -> dict:
    """Personalised VQA on the small LLaVA: "What colour is sks?", "Where is sks?" on new photos of each concept.

    Each concept's embedding is trained by the project's trainer for VQA (λ 10, docs/method.md §7) from the same
    4 photos, on the world's questions about the concept by its identifier with their answers (several wordings),
    with the paper's augmentation (a mirrored view's "on the left" becomes "on the right"). On held-out photos,
    with the concept given (no heads here), exact-match accuracy per question kind for: MyVLM (the token
    appended), the same model without the token (it does not know which thing "sks" is), and the class-word
    baseline ("What colour is the toy?" to the original model, ambiguous when a same-class distractor stands by).
    """
    torch.manual_seed(cfg.seed)
    world = W.World(cfg.world_seed)
    idents = _identifiers(cfg.concepts)
    w = load_vlm(str(checkpoint), models_dir=Path(tempfile.mkdtemp(prefix="myvlm-bench-vqa-")),
                 dtype="float32")
    train = {c: world.concept_images(c, cfg.train_images, seed=1) for c in cfg.concepts}
    held = [(j, c, s) for j, c in enumerate(cfg.concepts) for s in world.concept_images(c, cfg.heldout_positive,
                                                                                         seed=2)]
    t = time.perf_counter()
    values = {}
    with tempfile.TemporaryDirectory() as d:
        store = EmbeddingStore(Path(d))
        for j, c in enumerate(cfg.concepts):
            examples = []
            for k, s in enumerate(train[c]):
                rng = np.random.default_rng([cfg.seed, j, k])
                qa = {(q.question, q.answer) for _ in range(cfg.targets_per_image)
                      for q in _concept_questions(s.meta, c, idents[c], rng)}
                examples.append(TrainingExample(s.image, [j], sorted(qa)))
            tc = TrainingConfig(steps=cfg.steps, seed=cfg.seed, lr=cfg.lr, augment=cfg.augment)
            emb = ConceptTrainer(w, store, tc).train([ConceptToTrain(j, idents[c])], examples, task=VQA)[j]
            values[j] = torch.from_numpy(emb.values[0].copy())
    train_seconds = time.perf_counter() - t

    rows = [(j, c, s, q) for j, c, s in held for q in _concept_questions(s.meta, c, idents[c])]
    settings = GenerationSettings(max_new_tokens=8)

    def ask(questions, concepts) -> list[str]:
        out: list[str] = []
        for i in range(0, len(rows), 32):
            chunk = rows[i:i + 32]
            out += w.generate([s.image for _, _, s, _ in chunk], questions[i:i + 32],
                              concepts[i:i + 32] if concepts is not None else None, settings)
        return out

    def class_word_question(q: W.QA, c: str) -> str:
        return re.sub(rf"\b{idents[c]}\b", f"the {W.CONCEPTS[c].class_word}", q.question)

    w.set_concepts(values)
    plain = [q.question for *_, q in rows]
    asked = {"myvlm": (plain, [[j] for j, *_ in rows]), "without_token": (plain, None),
             "replace_class_word": ([class_word_question(q, c) for _, c, _, q in rows], None)}
    answers = {name: ask(questions, concepts) for name, (questions, concepts) in asked.items()}
    shown = [i for k in VQA_KINDS for i in [n for n, (*_, q) in enumerate(rows) if q.kind == k][::57][:2]]
    report: dict = {"checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
                    "questions": len(rows), "kinds": list(VQA_KINDS), "train_seconds": round(train_seconds, 1)}
    for name, ans in answers.items():
        right = [W.normalise_answer(a) == W.normalise_answer(q.answer) for a, (*_, q) in zip(ans, rows)]
        by_kind = {k: float(np.mean([r for r, (*_, q) in zip(right, rows) if q.kind == k])) for k in VQA_KINDS}
        report[name] = {"accuracy": float(np.mean(right)), "by_kind": by_kind,
                        "examples": [{"question": asked[name][0][i], "truth": rows[i][3].answer, "answer": ans[i]}
                                     for i in shown]}
    return report


def print_vqa_table(r: dict) -> None:
    print(f"\nLLaVA personalised VQA ({r['questions']} questions about the concepts, concept given):")
    print(f"{'':<22}{'all':>7}" + "".join(f"{k:>9}" for k in r["kinds"]))
    for name in ("myvlm", "without_token", "replace_class_word"):
        m = r[name]
        print(f"{name:<22}{m['accuracy']:>7.3f}" + "".join(f"{m['by_kind'][k]:>9.3f}" for k in r["kinds"]))


GAINS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def calibrate_gain(checkpoint: Path, gains=GAINS, steps: int = 100, n_heldout: int = 16, min_recall: float = 0.9,
                   max_scene_drop: float = 0.1, write: bool = True, log=print) -> dict:
    """Choose the checkpoint's appended-token gain on the calibration concepts (never the benchmark's).

    docs/method.md §6: the paper rescales the appended keys/values to the image tokens' mean norm (gain 1), right for
    BLIP-2's Q-Former. A small one attends more evenly, and one token at the mean norm may not be heard. Of the gains
    that keep the scene (scene accuracy of the personalised captions within max_scene_drop of the original
    model's), the one whose captions name the calibration concepts most often (concept given; the smaller gain
    on a tie) is written to config.json as `myvlm_appended_gain`, where the project's BLIP-2 wrapper reads it for
    training and inference alike. `reaches_min_recall` says whether it names them at least min_recall of the time.
    """
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    world = W.World(0)
    concepts = list(W.CONCEPTS)[6:]
    idents = _identifiers(concepts, taken=set(_identifiers(list(W.CONCEPTS)[:6]).values()))
    w = load_vlm(str(checkpoint), models_dir=Path(tempfile.mkdtemp(prefix="myvlm-cal-")), dtype="float32")
    train = {c: world.concept_images(c, 4, seed=11) for c in concepts}
    held = [(j, c, s) for j, c in enumerate(concepts) for s in world.concept_images(c, n_heldout, seed=12)]
    w.set_concepts({})
    base = W.CaptionAccuracy()
    for (_, _, s), cap in zip(held, _generate(w, [s.image for _, _, s in held])):
        base.add(W.score_caption(cap, s.meta))
    base_scene = base.as_dict()["scene_accuracy"]
    rows, chosen = [], None
    for gain in gains:
        w.appended_gain = gain
        values = {}
        with tempfile.TemporaryDirectory() as d:
            store = EmbeddingStore(Path(d))
            for j, c in enumerate(concepts):
                examples = caption_examples(train[c], j, {c: idents[c]}, 4)
                emb = ConceptTrainer(w, store, TrainingConfig(steps=steps)).train([ConceptToTrain(j, idents[c])],
                                                                                  examples)[j]
                values[j] = torch.from_numpy(emb.values[0].copy())
        w.set_concepts(values)
        caps = _generate(w, [s.image for _, _, s in held], [[j] for j, _, _ in held])
        acc = W.CaptionAccuracy()
        for (_, c, s), cap in zip(held, caps):
            acc.add(W.score_caption(cap, s.meta, {c: idents[c]}))
        recall = float(np.mean([_has(cap, idents[c]) for (_, c, _), cap in zip(held, caps)]))
        scene = acc.as_dict()["scene_accuracy"]
        rows.append({"gain": gain, "recall_concept_given": recall, "scene_accuracy": scene})
        log(f"gain {gain:>4}: recall {recall:.3f}, scene accuracy {scene:.3f} (original model {base_scene:.3f})")
    keeps_scene = [r for r in rows if r["scene_accuracy"] >= base_scene - max_scene_drop]
    best = max(keeps_scene, key=lambda r: (r["recall_concept_given"], -r["gain"]), default=None)
    chosen = best["gain"] if best else None
    result = {"calibration_concepts": concepts, "original_scene_accuracy": base_scene, "tried": rows,
              "chosen_gain": chosen, "reaches_min_recall": bool(best and best["recall_concept_given"] >= min_recall)}
    if write and chosen is not None:
        cfg_path = Path(checkpoint) / "config.json"
        config = json.loads(cfg_path.read_text())
        config["myvlm_appended_gain"] = chosen
        cfg_path.write_text(json.dumps(config, indent=2) + "\n")
        report_path = Path(checkpoint) / "pretrain_report.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            report["appended_gain_calibration"] = result
            report_path.write_text(json.dumps(report, indent=2) + "\n")
    return result


def print_table(r: dict) -> None:
    m, a, b = r["myvlm"], r.get("no_reg_no_aug"), r["replace_class_word"]
    rows = [("recall (identifier in caption, heads decide)", m["recall"], a and a["recall"], b["recall"]),
            ("recall, concept given", m["recall_concept_given"], a and a["recall_concept_given"], None),
            ("correct naming (issue 18: bound to the concept)", m["correct_naming"], a and a["correct_naming"],
             b["correct_naming"]),
            ("recall on the 4 training photos (given)", m["recall_on_training_photos"],
             a and a["recall_on_training_photos"], None),
            ("correct naming on the training photos", m["correct_naming_on_training_photos"],
             a and a["correct_naming_on_training_photos"], None),
            ("preservation (other photos unchanged)", m["preservation"], a and a["preservation"], 1.0),
            ("multi-concept recall (both names)", m["multi_concept_recall"], a and a["multi_concept_recall"], None),
            ("scene accuracy of personalised captions", m["personalized_caption_accuracy"]["scene_accuracy"],
             a and a["personalized_caption_accuracy"]["scene_accuracy"], None)]
    if "no_kv_rescale" in r:
        n = r["no_kv_rescale"]
        print(f"MyVLM without the Q-Former key/value rescale: recall {n['recall']:.3f} (concept given "
              f"{n['recall_concept_given']:.3f}), correct naming {n['correct_naming']:.3f}, preservation "
              f"{n['preservation']:.3f}, multi-concept {n['multi_concept_recall_given']:.3f} (given)")
    if "paper_gain_1" in r:
        n = r["paper_gain_1"]
        print(f"MyVLM at the paper's rescale gain 1 (this checkpoint's: {r['appended_gain']}): "
              f"recall {n['recall']:.3f} (concept given {n['recall_concept_given']:.3f}), correct naming {n['correct_naming']:.3f}, "
              f"preservation {n['preservation']:.3f}")
    print(f"{'':<48}{'MyVLM':>8}{'no reg/aug':>12}{'replace word':>14}")
    for name, x, y, z in rows:
        def f(v):
            return f"{v:.3f}" if isinstance(v, float) else "—"
        print(f"{name:<48}{f(x):>8}{f(y):>12}{f(z):>14}")
    h = r["head"]
    print(f"\nconcept heads: precision {h['precision']:.3f}, recall {h['recall']:.3f}, "
          f"false positives on negatives {h['false_positive_rate_on_negatives']:.3f} (any head); per head "
          + ", ".join(f"{v:.3f}" for v in h["false_positive_rate_per_head"].values()) + " (paper: 0.091)")
    print(f"original model on concept images: {r['original_model_on_concept_images']}")
    print(f"time: {r['seconds']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--quick", action="store_true", help="fewer images, no ablation")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--calibrate", action="store_true",
                    help="choose the checkpoint's appended-token gain on the calibration concepts and write it to "
                         "its config.json (then run the benchmark as usual)")
    ap.add_argument("--lr", type=float, default=1.0, help="concept-embedding learning rate (default: the paper's 1.0)")
    ap.add_argument("--no-augment", action="store_true", help="train the concept embeddings without augmentation")
    ap.add_argument("--llava-vqa", action="store_true",
                    help="personalised VQA on the small LLaVA instead (its own report)")
    ap.add_argument("--world", choices=["v1", "v2"], default="v1",
                    help="v1: world.py and blip2-world; v2: world2.py and blip2-world2 (issue 18)")
    ap.add_argument("--seeds", type=int, default=1, help="run this many seeds (0, 1, ...) and report mean ± std")
    ap.add_argument("--rotation-fill", choices=["black", "mirror"], default="black",
                    help="the trainer's rotation fill (black: the reference's; mirror: the old one)")
    ap.add_argument("--max-rotation", type=float, default=45.0, help="the trainer's rotation range (degrees)")
    ap.add_argument("--v2-identifiers", choices=["fresh", "known"], default="fresh",
                    help="world v2: fresh words (bound to no look) or, as in v1, names of same-class figures")
    ap.add_argument("--no-variants", action="store_true",
                    help="MyVLM, its ablation and the class-word baseline only (no rescale / gain variants)")
    args = ap.parse_args()
    if args.calibrate:
        res = calibrate_gain(args.checkpoint, steps=args.steps)
        print(json.dumps(res, indent=2))
        return
    cfg = BenchConfig(checkpoint=args.checkpoint, steps=args.steps, lr=args.lr, augment=not args.no_augment,
                      world=args.world, rotation_fill=args.rotation_fill, max_rotation=args.max_rotation,
                      v2_identifiers=args.v2_identifiers)
    if args.quick:
        cfg.heldout_positive, cfg.heldout_negative, cfg.ablation = 10, 30, False
    if args.quick or args.no_variants:
        cfg.no_rescale_variant = cfg.paper_gain_variant = False
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.llava_vqa:
        report = run_llava_vqa(cfg)
        print_vqa_table(report)
    elif args.seeds > 1:
        report = run_seeds(cfg, tuple(range(args.seeds)))
        print_summary(report["summary"])
    else:
        report = run(cfg)
        print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
