"""The synthetic world (bench/world/world.py) and its pre-trained BLIP-2 / LLaVA checkpoints (bench/world/models/).

Fast: the generator is deterministic, its captions and answers parse back, personal concepts stay out of
pre-training, and the committed checkpoints load through `from_pretrained` and still see and speak.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from bench.world import pretrain as P
from bench.world.world import (
    CONCEPTS,
    IDENTIFIERS,
    NAMED,
    World,
    caption_variants,
    generic_caption,
    mirrored,
    normalise_answer,
    parse_caption,
    personalized_caption,
    score_caption,
    vqa_pairs,
    words,
)

# Measured on the committed checkpoints (see bench/world/README.md), minus a margin.
BLIP2_MIN_SCENE, BLIP2_MIN_OBJECTS = 0.95, 0.95   # measured 1.00 and 1.00 on 300 held-out scenes
LLAVA_MIN_SCENE = 0.9   # the scene question: measured 1.00 (all questions: 0.66)


def _pixels(scenes) -> bytes:
    return b"".join(np.asarray(sc.image).tobytes() for sc in scenes)


def test_generator_is_deterministic_per_seed():
    a = World(3).heldout_scenes(6, seed=1)
    b = World(3).heldout_scenes(6, seed=1)
    assert _pixels(a) == _pixels(b)
    assert [sc.caption for sc in a] == [sc.caption for sc in b]
    assert _pixels(a) != _pixels(World(4).heldout_scenes(6, seed=1))
    assert _pixels(a) != _pixels(World(3).heldout_scenes(6, seed=2))
    c1 = World(0).concept_images("blue_dotted_teddy", 3, seed=5)
    c2 = World(0).concept_images("blue_dotted_teddy", 3, seed=5)
    assert _pixels(c1) == _pixels(c2)
    image, caption, meta = a[0]
    assert image.size == (96, 96) and image.mode == "RGB" and caption == generic_caption(meta)


def test_captions_parse_back_in_every_wording():
    world = World(0)
    rng = np.random.default_rng(0)
    ids = {k: IDENTIFIERS[i] for i, k in enumerate(CONCEPTS)}
    scenes = world.heldout_scenes(150, seed=3) + world.multi_concept_images(
        ["blue_dotted_teddy", "red_checked_doll"], 20, distractors=1)
    for sc in scenes:
        for cap in [sc.caption, generic_caption(sc.meta, rng)]:
            s = score_caption(cap, sc.meta)
            assert s.correct and s.objects_found == s.objects_expected, cap
        for cap in caption_variants(sc.meta, ids, 3, seed=1):
            s = score_caption(cap, sc.meta, ids)
            assert s.correct, cap
            assert all(v["present"] and v["in_place"] for v in s.identifiers.values()), cap
        # the generic caption, scored as if personalised, misses the identifiers
        s = score_caption(sc.caption, sc.meta, ids)
        assert all(not v["present"] for v in s.identifiers.values())
    # a wrong caption is scored wrong
    sc = scenes[0]
    wrong_bg = "on the beach" if sc.meta.background != "beach" else "in the snow"
    bad = score_caption(f"a red ball {wrong_bg}", sc.meta)
    assert not bad.scene_ok


def test_personalized_caption_replaces_only_the_concept():
    world = World(0)
    for sc in world.concept_images("red_checked_doll", 20, seed=0):
        cap = personalized_caption(sc.meta, {"red_checked_doll": "sks"})
        assert words(cap).count("sks") == 1
        gen = parse_caption(sc.caption).phrases
        per = parse_caption(cap).phrases
        idx = next(i for i, o in enumerate(sc.meta.objects) if o.concept == "red_checked_doll")
        assert per[idx].name == "sks" and gen[idx].cls == "doll" and gen[idx].colour == "red"
        assert [p for i, p in enumerate(per) if i != idx] == [p for i, p in enumerate(gen) if i != idx]


def test_mirrored_scene_describes_the_mirrored_picture():
    """The trainer's flip needs the mirrored picture's caption: objects in reverse order, where they now stand."""
    world = World(0)
    for sc in world.concept_images("red_checked_doll", 12, seed=0) + world.heldout_scenes(12, seed=5):
        m = mirrored(sc.meta)
        assert mirrored(m) == sc.meta
        flipped_map = sc.object_map[:, ::-1]                       # object_map: 0 background, i + 1 objects[i]
        n = len(sc.meta.objects)
        for j, obj in enumerate(m.objects):
            x0, y0, x1, y1 = obj.box
            ys, xs = np.nonzero(flipped_map == n - j)              # the same object, seen in the mirror
            assert len(xs) and x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
        assert [o.slot for o in m.objects] == sorted((o.slot for o in m.objects), key=("left", "middle", "right").index)
        cap = personalized_caption(m, {"red_checked_doll": "sks"})
        assert parse_caption(cap).phrases == parse_caption(personalized_caption(sc.meta, {"red_checked_doll": "sks"})
                                                           ).phrases[::-1]


def test_vqa_answers_follow_the_scene():
    world = World(0)
    for sc in world.heldout_scenes(50, seed=4):
        pairs = vqa_pairs(sc.meta)
        kinds = Counter(p.kind for p in pairs)
        assert kinds["caption"] == 1 and kinds["scene"] == 1 and kinds["slot"] == 3
        for q, a in pairs:
            assert q.endswith(("?", ".")) and a
        count = next(p.answer for p in pairs if p.kind == "count")
        assert count == ["zero", "one", "two", "three"][len(sc.meta.objects)]
    sc = world.concept_images("black_striped_car", 1, seed=0)[0]
    pairs = {p.question: p.answer for p in vqa_pairs(sc.meta, {"black_striped_car": "bella"})}
    obj = sc.meta.object_for("black_striped_car")
    assert pairs["What colour is bella?"] == "black"
    assert pairs["Where is bella?"] == {"left": "on the left", "middle": "in the middle",
                                        "right": "on the right"}[obj.slot]
    assert pairs["What is bella?"] == "a car"


def test_personal_concepts_stay_out_of_pretraining():
    world = World(0)
    concept_looks = {c.instance.look_key for c in CONCEPTS.values()}
    seen_named = Counter()
    for sc in world.heldout_scenes(1500, seed=7):
        for o in sc.meta.objects:
            assert o.concept is None and o.instance.look_key not in concept_looks
            if o.name:
                seen_named[o.name] += 1
                assert o.instance == NAMED[o.name].instance
    assert set(seen_named) == set(NAMED)      # the LM meets every identifier word in pre-training
    # concept scenes hold the concept (and same-class distractors); negatives hold none
    for key, concept in CONCEPTS.items():
        pos = world.concept_images(key, 12, seed=1)
        assert all(sc.meta.concepts == [key] for sc in pos)
        assert any(sum(o.cls == concept.cls for o in sc.meta.objects) > 1 for sc in pos)
        for sc in world.negative_images(6, seed=1, concept=key):
            assert not sc.meta.concepts and any(o.cls == concept.cls for o in sc.meta.objects)
        for sc in world.negative_images(6, seed=1, concept=key, hard=True):
            near = [o.instance for o in sc.meta.objects if o.cls == concept.cls]
            assert not sc.meta.concepts and near
            diffs = [sum(getattr(i, f) != getattr(concept.instance, f)
                         for f in ("colour", "detail", "pattern", "accessory")) for i in near]
            assert 1 in diffs


def test_tokenizer_covers_the_world_and_the_processor_layout():
    tok = P.build_tokenizer("t5")
    world = World(0)
    texts = []
    for sc in world.heldout_scenes(40, seed=9):
        texts += caption_variants(sc.meta, {"x": "sks"}, 3) + [f"{q} {a}" for q, a in vqa_pairs(sc.meta)]
    P.check_vocabulary(tok, texts)
    assert tok.decode(tok("a photo of sks, a red ball and a blue toy on the beach").input_ids,
                      skip_special_tokens=True) == "a photo of sks, a red ball and a blue toy on the beach"


@pytest.fixture(scope="module")
def blip2():
    assert (P.BLIP2_DIR / "model.safetensors").exists(), "run: .venv/bin/python bench/world/pretrain.py blip2"
    return P.load_blip2(P.BLIP2_DIR)


def test_blip2_world_checkpoint_loads_and_captions(blip2):
    model, processor = blip2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    scenes = World(0).heldout_scenes(40, seed=0)
    images = [sc.image for sc in scenes]
    inputs = processor(images=images, text=[""] * len(images), return_tensors="pt", padding=True)
    n_q = model.config.num_query_tokens
    assert inputs["input_ids"].shape == (len(images), n_q + 1)
    assert (inputs["input_ids"][:, :n_q] == model.config.image_token_id).all()
    assert (inputs["input_ids"][:, n_q] == processor.tokenizer.eos_token_id).all()
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    caps = processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    scores = [score_caption(c, sc.meta) for c, sc in zip(caps, scenes)]
    scene_acc = np.mean([s.scene_ok for s in scores])
    obj_acc = sum(s.objects_found for s in scores) / sum(s.objects_expected for s in scores)
    assert scene_acc >= BLIP2_MIN_SCENE, list(zip(caps, [sc.caption for sc in scenes]))
    assert obj_acc >= BLIP2_MIN_OBJECTS, list(zip(caps, [sc.caption for sc in scenes]))
    report = json.loads((P.BLIP2_DIR / "pretrain_report.json").read_text())
    assert report["heldout"]["scene_accuracy"] >= BLIP2_MIN_SCENE
    # the pooled vision feature the object heads read
    feats = P.pooled_features(model, inputs["pixel_values"])
    assert feats.shape == (len(images), model.config.vision_config.hidden_size)


def test_llava_world_checkpoint_answers_through_the_project_wrapper(tmp_path):
    from engine.models.vlm.auto import GenerationSettings, load_vlm

    assert (P.LLAVA_DIR / "model.safetensors").exists(), "run: .venv/bin/python bench/world/pretrain.py llava"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    w = load_vlm(str(P.LLAVA_DIR), models_dir=tmp_path, dtype="float32")
    assert w.family == "llava"
    scenes = World(0).heldout_scenes(20, seed=5)
    answers = w.generate([sc.image for sc in scenes], ["Where was this photo taken?"] * len(scenes), None,
                         GenerationSettings(max_new_tokens=8))
    truth = [next(q.answer for q in vqa_pairs(sc.meta) if q.kind == "scene") for sc in scenes]
    acc = np.mean([normalise_answer(a) == normalise_answer(t) for a, t in zip(answers, truth)])
    assert acc >= LLAVA_MIN_SCENE, list(zip(answers, truth))


def test_llava_personalized_answers_beat_asking_about_the_class_word():
    """Issue 6's VQA measurement (bench/bench_myvlm_world.py --llava-vqa): on new photos of 6 concepts, "What colour
    is sks?" with sks's learned token appended beats the same model without the token, and the original model asked
    about "the toy" (which cannot say which toy). Measured 0.57 against 0.37 and 0.44 (480 questions)."""
    from bench.bench_myvlm_world import BenchConfig, run_llava_vqa

    torch.set_num_threads(min(2, torch.get_num_threads()))
    r = run_llava_vqa(BenchConfig(ablation=False, no_rescale_variant=False, paper_gain_variant=False), log=None)
    assert r["questions"] >= 400
    mine, bare, word = (r[k]["accuracy"] for k in ("myvlm", "without_token", "replace_class_word"))
    assert mine > word + 0.05 and mine > bare + 0.1, (mine, word, bare)
    # the token carries what the concept looks like: colour and pattern are where the class word cannot tell
    assert r["myvlm"]["by_kind"]["colour"] > r["without_token"]["by_kind"]["colour"] + 0.3
    assert r["myvlm"]["by_kind"]["pattern"] > r["replace_class_word"]["by_kind"]["pattern"] + 0.1


def test_blip2_personalized_captions_name_the_concept_on_new_photos():
    """Issue 6's caption benchmark, the part that holds today (bench/bench_myvlm_world.py; the whole acceptance
    test, bench/world/acceptance_test.py, still fails on naming the right toy and on preservation): from 4 photos,
    with the paper's recipe through the project's heads, trainer and wrapper, the personalised small BLIP-2 says
    the concept's identifier on most new photos of it when the concept is given, and keeps the scene right.
    Measured 0.88 recall given and scene accuracy 0.97 (120 photos of 6 concepts); 0.33 on the checkpoint with
    the Q-Former slot head, which this would catch."""
    from bench.bench_myvlm_world import BenchConfig, run

    torch.set_num_threads(min(2, torch.get_num_threads()))
    # the recipe these numbers were measured with: rotated views with mirrored edges. The trainer now fills them
    # black as the reference does (issue 18); this world model never saw black corners, and they cost it recall
    # (concept given 0.87 -> 0.58 on 60 photos; bench/README.md), so world v1's test keeps its own fill
    r = run(BenchConfig(ablation=False, no_rescale_variant=False, paper_gain_variant=False, caption_others=False,
                        rotation_fill="mirror"), log=None)
    m = r["myvlm"]
    assert r["images"]["heldout_positive"] >= 100 and len(r["concepts"]) >= 5
    assert m["recall_concept_given"] >= 0.8, m["recall_per_concept"]
    assert m["recall"] > 0.5, (m["recall"], r["head"])          # the heads deciding (measured 0.68)
    original = r["original_model_on_concept_images"]["scene_accuracy"]
    assert m["personalized_caption_accuracy"]["scene_accuracy"] >= original - 0.05


def test_one_appended_token_can_steer_the_blip2_world_model():
    """bench/world/steerability.py on one calibration concept: free keys and values for the appended position fit
    the personalised captions of its 4 training photos down to the wording's own uncertainty, and the model then
    names it on (nearly) all of them. A pre-training that ties the Q-Former's queries to places fails this (loss 1.28 against
    0.32 on the old checkpoint)."""
    from bench.world.steerability import probe

    torch.set_num_threads(min(2, torch.get_num_threads()))
    r = probe(P.BLIP2_DIR, "calibration", steps=300, heldout=8, concepts=["green_striped_teddy"], modes=("free_kv",),
              log=None)
    row = r["concepts"][0]
    assert row["free_kv"]["loss"] < row["generic_caption_loss"] + 0.15, row
    assert row["free_kv"]["train_recall"] >= 0.75, row                # measured 1.00 (4 photos)


# -- world v2 (issue 18): subject-centric captions, 30 named figures, fresh identifiers ---------------------------
def test_world2_scenes_hold_up_to_two_named_figures_and_captions_put_names_first():
    from bench.world import world2 as V

    world = V.World2(0)
    scenes = world.heldout_scenes(400, seed=1)
    assert _pixels(scenes[:5]) == _pixels(V.World2(0).heldout_scenes(5, seed=1))
    counts = Counter(sum(o.name in V.NAMED2 for o in sc.meta.objects) for sc in scenes)
    assert set(counts) == {0, 1, 2} and counts[2] > 30
    seen = {o.name for sc in scenes for o in sc.meta.objects if o.name in V.NAMED2}
    assert len(V.NAMED2) == 30 and len(seen) >= 28
    free = [sc for sc in scenes if any(o.name in V.FRESH for o in sc.meta.objects)]
    assert 0.08 < len(free) / len(scenes) < 0.25                   # a fresh word calls one ordinary object
    for sc in scenes:
        for o in sc.meta.objects:
            assert o.concept is None
            if o.name in V.NAMED2:
                assert o.instance == V.NAMED2[o.name].instance
            elif o.name is None:
                assert o.instance.look_key not in V.RESERVED_LOOKS2
        names = [o.name for o in sc.meta.objects if o.name]
        toks = words(sc.caption)
        if names:   # the names come first, left to right
            assert toks[:len(names) * 2 - 1:2] == names, sc.caption
        s = V.score_caption(sc.caption, sc.meta)
        assert s.correct, sc.caption


def test_world2_personalized_captions_replace_the_concept_and_naming_tells_binding():
    from bench.world import world2 as V
    from bench.world.world import naming

    world = V.World2(0)
    ids = V.identifiers(["red_checked_doll"])
    assert ids == {"red_checked_doll": "zqx"} and "zqx" not in NAMED
    for sc in world.concept_images("red_checked_doll", 20, seed=0):
        caps = V.caption_variants(sc.meta, ids, 3, seed=1)
        assert all(parse_caption(c, V.ALL_NAMES).phrases[0].name == "zqx" for c in caps), caps   # the subject
        for cap in caps:
            assert naming(cap, sc.meta, "red_checked_doll", "zqx", V.ALL_NAMES)["correct"], cap
            assert V.score_caption(cap, sc.meta, ids).correct, cap
        generic = naming(sc.caption, sc.meta, "red_checked_doll", "zqx", V.ALL_NAMES)
        assert not generic["present"] and generic["also_generic"] and not generic["correct"]
    # the three ways to be wrong, on a scene with the concept and a same-class distractor of another colour
    sc = next(s for s in world.concept_images("red_checked_doll", 40, seed=3)
              if any(o.cls == "doll" and o.colour != "red" and not o.concept for o in s.meta.objects))
    other = next(o for o in sc.meta.objects if o.cls == "doll" and not o.concept).colour
    from bench.world.world import BACKGROUNDS

    tail = BACKGROUNDS[sc.meta.background][0]
    right = naming(f"zqx next to a {other} doll {tail}", sc.meta, "red_checked_doll", "zqx", V.ALL_NAMES)
    extra = naming(f"zqx next to a red doll and a {other} doll {tail}", sc.meta, "red_checked_doll", "zqx",
                   V.ALL_NAMES)
    swapped = naming(f"zqx next to a red doll {tail}", sc.meta, "red_checked_doll", "zqx", V.ALL_NAMES)
    assert right["correct"]
    assert extra["also_generic"] and not extra["correct"]
    assert swapped["on_distractor"] and not swapped["correct"]


def test_blip2_world2_checkpoint_speaks_v2_and_the_concept_layer_is_a_no_op(tmp_path):
    """The committed world v2 model (bench/world/pretrain_v2.py) captions held-out v2 scenes in v2's language,
    and the project's wrapper with concepts known but none fired gives exactly the plain transformers model's
    captions (issue 18, decision 1a: the layer's own no-op is exact)."""
    from bench.world import world2 as V
    from engine.models.vlm.auto import GenerationSettings, load_vlm

    folder = P.MODELS / "blip2-world2"
    assert (folder / "model.safetensors").exists(), "run: .venv/bin/python bench/world/pretrain_v2.py"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    scenes = V.World2(0).heldout_scenes(24, seed=3)
    images = [sc.image for sc in scenes]
    model, processor = P.load_blip2(folder)
    plain = P.blip2_caption(model, processor, images, max_new_tokens=30, fast=False)
    w = load_vlm(str(folder), models_dir=tmp_path, dtype="float32")
    w.set_concepts({0: torch.randn(w.concept_dim), 1: torch.randn(w.concept_dim)})
    ours = w.generate(images, [""] * len(images), [[]] * len(images), GenerationSettings(max_new_tokens=30))
    assert ours == plain
    scores = [V.score_caption(c, sc.meta) for c, sc in zip(plain, scenes)]
    assert np.mean([s.scene_ok for s in scores]) >= 0.95, list(zip(plain, [sc.caption for sc in scenes]))
    report = json.loads((folder / "pretrain_report.json").read_text())
    assert report["heldout"]["scene_accuracy"] >= 0.95
