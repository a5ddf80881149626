"""Does MyVLM personalisation work? Issue 18's acceptance test, on world v2's small BLIP-2, mean over 3 seeds.

`bench/bench_myvlm_world.py` end to end with the project's real code: object heads (`train_linear_head`) over the
small model's own frozen vision features decide which photos show a concept, and `ConceptTrainer` learns each
concept's embedding from 4 photos; world v2 (`world2.py`) names each concept by a fresh word that names nothing in
pre-training, and its captions put names first, so a name must *replace* the concept's description. Seeds vary the
trainer, the heads and the 4 training photos. See bench/README.md for what each number means.

It stays here, out of the CI suite (`tests/`), while it fails: the measured numbers are in bench/README.md and
in the failures' messages; the thresholds below are the issue's and stay. It moves into tests/ when it passes
(about 15 minutes on an idle 2-core machine: 3 seeds, each with the ablation).
Run: `.venv/bin/python -m pytest bench/world/acceptance_test.py -q`
"""

from __future__ import annotations

import pytest
import torch

from bench.bench_myvlm_world import CHECKPOINT_V2, BenchConfig, run_seeds

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def result():
    assert (CHECKPOINT_V2 / "model.safetensors").exists(), "run: .venv/bin/python bench/world/pretrain_v2.py"
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    cfg = BenchConfig(world="v2", ablation=True, no_rescale_variant=False, paper_gain_variant=False)
    return run_seeds(cfg, SEEDS, log=lambda *a: None)


def mean(result, path: str) -> float:
    return result["summary"][path]["mean"]


def test_concepts_are_named_on_new_photos(result):
    assert mean(result, "myvlm.recall") >= 0.85, result["summary"]["myvlm.recall"]
    assert mean(result, "myvlm.recall_concept_given") >= 0.90, result["summary"]["myvlm.recall_concept_given"]


def test_the_name_is_bound_to_the_concept(result):
    mine, word = mean(result, "myvlm.correct_naming"), mean(result, "replace_class_word.correct_naming")
    assert mine >= 0.80 and mine >= word + 0.2, (mine, word)


def test_two_concepts_in_one_photo(result):
    got = result["summary"]["myvlm.multi_concept_recall_given"]
    assert got["mean"] >= 0.6, got


def test_each_head_is_rarely_wrong_on_other_photos(result):
    # the paper's object heads are wrong on 9.1 % of negatives; the issue asks 2 % of each head
    worst = max(rate for r in result["runs"] for rate in r["head"]["false_positive_rate_per_head"].values())
    per_seed = [r["head"]["false_positive_rate_per_head"] for r in result["runs"]]
    assert mean(result, "head.max_false_positive_rate_per_head") <= 0.02, (worst, per_seed)


def test_rest_of_the_caption_stays_right(result):
    original = mean(result, "original_model_on_concept_images.scene_accuracy")
    personalized = mean(result, "myvlm.personalized_caption_accuracy.scene_accuracy")
    assert personalized >= original - 0.05, (personalized, original)


def test_the_papers_ablation_is_worse(result):
    assert mean(result, "no_reg_no_aug.recall") < mean(result, "myvlm.recall"), (
        result["summary"]["no_reg_no_aug.recall"], result["summary"]["myvlm.recall"])
