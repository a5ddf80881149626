"""Does MyVLM personalisation work? The paper's measurements on the small BLIP-2 pre-trained on the synthetic world.

This runs `bench/bench_myvlm_world.py` end to end with the project's real code: object heads
(`train_linear_head`) over the small model's own frozen vision features decide which photos show a concept, and
`ConceptTrainer` learns each concept's embedding from 4 photos. It fails when the personalised captioner stops
naming the concepts (recall), starts changing the captions of other photos (preservation), or no longer beats
renaming the class word in the original caption, which cannot tell your toy from another toy (correct naming).
See bench/README.md for what each number means and what the benchmark does not show.

Issue 6's acceptance test. It is not in the CI suite (`tests/`) yet because it FAILS on today's world model:
recall 0.68 (0.88 with the concept given), preservation 0.88, correct naming 0.22 against the baseline's 0.73,
multi-concept recall 0.00 (bench/README.md, 2026-11-26, on the checkpoint pre-trained without the Q-Former slot
head). It moves into tests/ when it passes; the thresholds below are the issue's and stay.
Run: `.venv/bin/python -m pytest bench/world/acceptance_test.py -q`
"""

from __future__ import annotations

import pytest
import torch

from bench.bench_myvlm_world import CHECKPOINT, BenchConfig, run

MIN_RECALL = 0.85          # issue 6; the paper reports 87-96 %
MIN_PRESERVATION = 0.98    # issue 6


@pytest.fixture(scope="module")
def report():
    assert (CHECKPOINT / "model.safetensors").exists(), "run: .venv/bin/python bench/world/pretrain.py blip2"
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    # the benchmark's own settings, without the extra variants (the ablations run in `bench/`, not in CI)
    cfg = BenchConfig(ablation=False, no_rescale_variant=False, paper_gain_variant=False)
    return run(cfg, log=lambda *a: None)


def test_concepts_are_named_on_new_photos(report):
    m = report["myvlm"]
    assert m["recall"] >= MIN_RECALL, (m["recall_per_concept"], m["examples"])
    assert len(report["concepts"]) >= 5
    assert report["images"]["heldout_positive"] >= 5 * 20


def test_other_photos_keep_their_captions(report):
    assert report["myvlm"]["preservation"] >= MIN_PRESERVATION, report["head"]


def test_beats_replacing_the_class_word(report):
    m, b = report["myvlm"], report["replace_class_word"]
    # the baseline renames whichever toy the caption mentions first; MyVLM must name *the* toy
    assert m["correct_naming"] > b["correct_naming"], (m["correct_naming"], b["correct_naming"])
    assert m["recall"] >= MIN_RECALL > 0


def test_rest_of_the_caption_stays_right(report):
    original = report["original_model_on_concept_images"]["scene_accuracy"]
    personalised = report["myvlm"]["personalised_caption_accuracy"]["scene_accuracy"]
    assert personalised >= original - 0.05, (personalised, original)


def test_two_concepts_in_one_photo(report):
    # reported, with a floor well below the single-concept recall: two tokens share the Q-Former's attention
    assert report["myvlm"]["multi_concept_recall_given"] >= 0.5, report["myvlm"]["multi_concept_recall_given"]
