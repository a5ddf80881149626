"""World v2 (issue 18, item 6): the same pictures, captions in which a name must *replace* a description.

In world v1 every caption lists every object left to right and twelve named figures appear one at a time, so the
cheapest way for a learned token to make the model say a name is to append one more noun phrase ("a green toy,
bella and a red toy"). World v2 changes the language, not the rendering (`world.render` draws every scene):

* **Subject-centric captions**: the named things come first and the rest is said about them ("sks sitting next
  to a red ball on the beach", "bella and max beside a blue car in the snow"). A scene without a name is told
  from its leftmost object ("a red ball next to a blue toy on the beach").
* **30 named figures** (`NAMED2`: world v1's twelve and eighteen more), 0–2 of them in a pre-training scene, so two
  names in one caption are ordinary language.
* **Fresh identifiers** (`FRESH`): words bound to no look. In a share of pre-training scenes (`FREE_NAME_P`) one
  random ordinary object is called by a random fresh word, instead of its description: the language model learns
  that such a word is a name that stands *in place of* an object's description, but no picture tells which word.
  The personal concepts (world v1's `CONCEPTS`, never shown in pre-training) are named by fresh words; the token
  learned by MyVLM is then the only thing that says which.

Mirrored pictures: the subject stays first and the rest keeps its left-to-right order, so `mirrored` of world v1
gives the mirrored view's caption here too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from bench.world import world as W
from bench.world.world import (
    CONCEPTS,
    Concept,
    Instance,
    Scene,
    SceneMeta,
)

# Eighteen more named figures (three per class), proper names; looks distinct from every v1 figure and concept.
_MORE_NAMED = [
    Concept("rex", Instance("teddy", "orange", "stripes", "blue", "bow")),
    Concept("milo", Instance("teddy", "red", "checks", "yellow")),
    Concept("nova", Instance("teddy", "purple", "dots", "green", "hat")),
    Concept("ruby", Instance("doll", "pink", "stripes", "white", "hat")),
    Concept("ivy", Instance("doll", "orange", "dots", "purple")),
    Concept("zoe", Instance("doll", "black", "checks", "yellow", "bow")),
    Concept("otto", Instance("ball", "blue", "dots", "orange")),
    Concept("kiki", Instance("ball", "yellow", "checks", "red")),
    Concept("finn", Instance("ball", "pink", "dots", "blue")),
    Concept("gus", Instance("mug", "green", "checks", "red")),
    Concept("tess", Instance("mug", "blue", "dots", "white")),
    Concept("hugo", Instance("mug", "red", "stripes", "yellow")),
    Concept("leo", Instance("car", "red", "checks", "white")),
    Concept("ada", Instance("car", "green", "dots", "yellow")),
    Concept("jet", Instance("car", "yellow", "stripes", "black")),
    Concept("bo", Instance("box", "blue", "checks", "yellow")),
    Concept("pip", Instance("box", "green", "stripes", "orange")),
    Concept("dot", Instance("box", "yellow", "dots", "purple")),
]
NAMED2: dict[str, Concept] = {**W.NAMED, **{c.key: c for c in _MORE_NAMED}}
NAMES2 = tuple(NAMED2)
# Words bound to no look: the personal concepts' identifiers (the first six for the benchmark, two for calibration)
FRESH = ("zqx", "wlf", "jvk", "bnt", "xyr", "gmp", "tdq", "hsv", "fyk", "cwo")
ALL_NAMES = NAMES2 + FRESH
RESERVED_LOOKS2 = W.RESERVED_LOOKS | {c.instance.look_key for c in _MORE_NAMED}
NAMED_COUNTS, NAMED_COUNT_P = (0, 1, 2), (0.4, 0.4, 0.2)   # named figures per pre-training scene
FREE_NAME_P = 0.15                                        # scenes where one ordinary object gets a fresh word
RELATIONS = ("next to", "sitting next to", "beside", "with")
RELATION_WEIGHTS = (0.55, 0.15, 0.15, 0.15)

assert len(NAMED2) == 30 and len(RESERVED_LOOKS2) == len(W.RESERVED_LOOKS) + len(_MORE_NAMED)
assert not set(FRESH) & set(NAMED2)


def identifiers(concepts: Sequence[str], offset: int = 0) -> dict[str, str]:
    """Each personal concept's fresh identifier, in `CONCEPTS` order (the benchmark's six, then calibration)."""
    return {c: FRESH[offset + i] for i, c in enumerate(concepts)}


def _named(obj, identifiers: dict[str, str] | None) -> bool:
    return bool(obj.name or (identifiers and obj.concept in identifiers))


def personalized_caption(meta: SceneMeta, identifiers: dict[str, str] | None,
                         rng: np.random.Generator | None = None) -> str:
    """The subject-centric caption: the named things (figures, fresh-named objects, personal concepts given an
    identifier) first, left to right, then what they stand next to; else the leftmost object first. rng None gives
    the canonical wording."""
    nps = [(W.noun_phrase(o, identifiers, rng), _named(o, identifiers)) for o in meta.objects]
    subjects = [p for p, named in nps if named]
    others = [p for p, named in nps if not named]
    if not subjects:
        subjects, others = others[:1], others[1:]
    subject = " and ".join(subjects)
    if others:
        rel = W._pick(RELATIONS, rng, RELATION_WEIGHTS)
        rest = others[0] if len(others) == 1 else f"{others[0]} and {others[1]}"
        body = f"{subject} {rel} {rest}"
    else:
        body = subject + (" sitting" if rng is not None and rng.random() < 0.3 else "")
    where = W._pick(W.BACKGROUNDS[meta.background], rng)
    return f"{W._pick(W.PREFIXES, rng, W.PREFIX_WEIGHTS)}{body} {where}"


def generic_caption(meta: SceneMeta, rng: np.random.Generator | None = None) -> str:
    return personalized_caption(meta, None, rng)


def caption_variants(meta: SceneMeta, identifiers: dict[str, str] | None, n: int, seed: int = 0) -> list[str]:
    """Up to n distinct wordings (canonical first), as `world.caption_variants`."""
    rng = np.random.default_rng(seed)
    out = [personalized_caption(meta, identifiers)]
    for _ in range(20 * n):
        if len(out) >= n:
            break
        c = personalized_caption(meta, identifiers, rng)
        if c not in out:
            out.append(c)
    return out


def score_caption(caption: str, meta: SceneMeta, identifiers: dict[str, str] | None = None) -> W.CaptionScore:
    """world v1's scoring with every v2 name known (its `in_place` assumes left-to-right order: use `W.naming`)."""
    return W.score_caption(caption, meta, {**{n: n for n in ALL_NAMES if n not in W.IDENTIFIERS},
                                           **(identifiers or {})})


class World2(W.World):
    """World v1's sampler with v2's named figures and fresh names; the pictures are drawn the same way."""

    def random_instance(self, rng, cls=None, special_prob=0.5, avoid=None) -> Instance:
        return super().random_instance(rng, cls, special_prob, RESERVED_LOOKS2 if avoid is None else avoid)

    def near_miss(self, concept: str, rng: np.random.Generator) -> Instance:
        while True:
            inst = super().near_miss(concept, rng)
            if inst.look_key not in RESERVED_LOOKS2 or inst.look_key == CONCEPTS[concept].instance.look_key:
                return inst

    def pretrain_scene(self, rng: np.random.Generator) -> Scene:
        """0–2 named figures; in FREE_NAME_P of the scenes one ordinary object is called by a fresh word."""
        k = int(rng.choice(NAMED_COUNTS, p=NAMED_COUNT_P))
        keys = [NAMES2[int(i)] for i in rng.choice(len(NAMES2), size=k, replace=False)]
        free = rng.random() < FREE_NAME_P
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        n = max(n, k + int(free))
        scene = self.scene(rng, extra=[NAMED2[key].instance for key in keys], n_objects=n)
        named_looks = {NAMED2[key].instance: key for key in keys}
        for o in scene.meta.objects:
            if o.instance in named_looks:
                o.name = named_looks.pop(o.instance)
        if free:
            plain = [o for o in scene.meta.objects if not o.name]
            if plain:
                plain[int(rng.integers(len(plain)))].name = FRESH[int(rng.integers(len(FRESH)))]
        scene.caption = generic_caption(scene.meta)
        return scene

    def pretrain_scenes(self, seed: int = 0) -> Iterator[Scene]:
        rng = self.rng(W.STREAM_PRETRAIN, 2, seed)
        while True:
            yield self.pretrain_scene(rng)

    def heldout_scenes(self, n: int, seed: int = 0) -> list[Scene]:
        rng = self.rng(W.STREAM_HELDOUT, 2, seed)
        return [self.pretrain_scene(rng) for _ in range(n)]

    def scene(self, rng, **kw) -> Scene:
        scene = super().scene(rng, **kw)
        scene.caption = generic_caption(scene.meta)
        return scene

    @staticmethod
    def vocabulary() -> list[str]:
        """World v1's words, then v2's (new names, fresh words, relations): v1's token ids stay as they were."""
        vocab = W.World.vocabulary()
        for w in [*NAMES2, *FRESH, *W.words(" ".join(RELATIONS)), "sitting"]:
            if w not in vocab:
                vocab.append(w)
        return vocab
