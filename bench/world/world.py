"""A deterministic synthetic world of small photos, captions and questions, for a VLM small enough to train here.

No pretrained vision-language model can be downloaded on our machines, so to show that MyVLM *works* (not just runs)
we pre-train a tiny BLIP-2 and a tiny LLaVA on this world and personalise them. The world is designed for that:

* **Scenes**: a background (beach, grass, snow, room, street, forest) and one to three objects standing in three
  slots (left, middle, right). Six object classes with very different silhouettes (ball, box, mug, car, teddy,
  doll), eight colours, and optional instance details (a pattern in a second colour: stripes, dots or checks; a hat
  or a bow for teddies and dolls). Objects are ~28 px in a 96 px image, with a dark outline, so a patch-8 ViT can
  tell the shapes apart.
* **Captions** come from a small grammar with varied wording and class synonyms ("a red ball and a blue toy on the
  beach", "a photo of a red ball next to a blue plush at the beach"); objects are listed left to right. Generic
  captions only say colour + class, never the details.
* **Named figures** (`NAMED`): twelve fixed, distinctive instances that the pre-training captions call by a name or
  a rare token ("sks", "bella", ...). They exist so that the language model already *knows* those words as noun
  phrases; personalisation then only has to link a new appearance to a known word.
* **Personal concepts** (`CONCEPTS`): eight other distinctive instances, never shown in pre-training (pre-training
  objects that share their class, colour, detail colour and pattern are rejected). Scenes for the benchmark put
  same-class distractors next to them, so naming the right one takes seeing its details.

Everything is a pure function of the seeds (numpy PCG64 + Pillow drawing): the same seed gives the same pixels.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
SLOTS = ("left", "middle", "right")
SLOT_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}

# Main colours (what captions say) and detail colours (patterns and accessories: never said in a generic caption).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 38), "blue": (38, 84, 222), "green": (34, 166, 60), "yellow": (248, 214, 36),
    "purple": (128, 52, 182), "pink": (250, 128, 196), "orange": (250, 134, 12), "black": (28, 28, 30),
}
DETAIL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, "white": (246, 246, 246)}
PATTERNS = ("plain", "stripes", "dots", "checks")
PATTERN_WORDS = {"plain": "plain", "stripes": "striped", "dots": "dotted", "checks": "checked"}
ACCESSORIES = ("none", "hat", "bow")
FIGURE_CLASSES = ("teddy", "doll")   # the classes that can wear an accessory

# Class key -> caption words; the first is the canonical class word (what a user would call it).
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "ball": ("ball",),
    "box": ("box", "crate"),
    "mug": ("mug", "cup"),
    "car": ("car",),
    "teddy": ("toy", "plush", "teddy"),
    "doll": ("doll", "figure", "figurine"),
}
CLASSES = tuple(CLASS_WORDS)
SYNONYM_WEIGHTS = {1: (1.0,), 2: (0.7, 0.3), 3: (0.6, 0.25, 0.15)}

# Background key -> caption phrases (first = canonical).
BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "beach": ("on the beach", "at the beach", "on the sand"),
    "grass": ("on the grass", "in the grass", "on the lawn"),
    "snow": ("in the snow", "on the snow"),
    "room": ("in a room", "in the room", "indoors"),
    "street": ("on the street", "on the road"),
    "forest": ("in the forest", "in the woods"),
}
PREFIXES = ("", "a photo of ", "a picture of ")
PREFIX_WEIGHTS = (0.6, 0.2, 0.2)
NUMBER_WORDS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class Instance:
    """How one object looks. `detail` is the colour of its pattern/accessory (None for a plain object)."""

    cls: str
    colour: str
    pattern: str = "plain"
    detail: str | None = None
    accessory: str = "none"

    @property
    def look_key(self) -> tuple:
        """What makes an instance recognisable: class, colour, detail colour, pattern (accessory aside)."""
        return (self.cls, self.colour, self.detail, self.pattern)


@dataclass(frozen=True)
class Concept:
    """A personal concept (or a pre-training named figure): one fixed instance and the word class it belongs to."""

    key: str
    instance: Instance

    @property
    def cls(self) -> str:
        return self.instance.cls

    @property
    def class_word(self) -> str:
        """The canonical class word generic captions use most for it ("toy" for a teddy)."""
        return CLASS_WORDS[self.instance.cls][0]


# The words the pre-trained language model knows as names of particular figures. Rare tokens as in the paper's
# "sks", and proper names as a user would give. Any of them can serve as a personal concept's identifier later.
RARE_TOKENS = ("sks", "pll", "vxn", "qmy", "zbt", "kro")
PROPER_NAMES = ("bella", "alex", "sam", "max", "luna", "coco")
IDENTIFIERS = RARE_TOKENS + PROPER_NAMES

NAMED: dict[str, Concept] = {c.key: c for c in [
    Concept("sks", Instance("teddy", "yellow", "stripes", "red")),
    Concept("pll", Instance("doll", "purple", "dots", "yellow", "hat")),
    Concept("vxn", Instance("ball", "green", "checks", "white")),
    Concept("qmy", Instance("mug", "orange", "stripes", "blue")),
    Concept("zbt", Instance("car", "blue", "stripes", "white")),
    Concept("kro", Instance("box", "red", "dots", "yellow")),
    Concept("bella", Instance("teddy", "pink", "dots", "white", "bow")),
    Concept("alex", Instance("doll", "blue", "checks", "red")),
    Concept("sam", Instance("doll", "green", "stripes", "pink", "bow")),
    Concept("max", Instance("teddy", "black", "checks", "orange", "hat")),
    Concept("luna", Instance("ball", "purple", "stripes", "yellow")),
    Concept("coco", Instance("mug", "yellow", "dots", "black")),
]}

# Personal concepts for the benchmark: never in pre-training. Each differs from every named figure of its class in
# at least two of colour / detail colour / pattern / accessory.
CONCEPTS: dict[str, Concept] = {c.key: c for c in [
    Concept("blue_dotted_teddy", Instance("teddy", "blue", "dots", "yellow", "bow")),
    Concept("red_checked_doll", Instance("doll", "red", "checks", "white", "hat")),
    Concept("pink_checked_mug", Instance("mug", "pink", "checks", "green")),
    Concept("black_striped_car", Instance("car", "black", "stripes", "yellow")),
    Concept("red_striped_ball", Instance("ball", "red", "stripes", "white")),
    Concept("purple_checked_box", Instance("box", "purple", "checks", "pink")),
    Concept("green_striped_teddy", Instance("teddy", "green", "stripes", "white", "hat")),
    Concept("yellow_striped_doll", Instance("doll", "yellow", "stripes", "blue", "bow")),
]}
RESERVED_LOOKS = {c.instance.look_key for c in (*NAMED.values(), *CONCEPTS.values())}


# ---------------------------------------------------------------------------------------------------------------
# Scene metadata
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SceneObject:
    instance: Instance
    slot: str                              # left | middle | right
    box: tuple[int, int, int, int]         # x0, y0, x1, y1 in pixels
    concept: str | None = None             # key in CONCEPTS if this is a personal concept
    name: str | None = None                # key in NAMED if this is a pre-training named figure

    @property
    def cls(self) -> str:
        return self.instance.cls

    @property
    def colour(self) -> str:
        return self.instance.colour

    @property
    def class_word(self) -> str:
        return CLASS_WORDS[self.instance.cls][0]


@dataclass
class SceneMeta:
    background: str
    objects: list[SceneObject]             # left to right

    @property
    def concepts(self) -> list[str]:
        return [o.concept for o in self.objects if o.concept]

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects if o.name]

    def object_for(self, concept: str) -> SceneObject | None:
        return next((o for o in self.objects if o.concept == concept or o.name == concept), None)


MIRRORED_SLOTS = {"left": "right", "middle": "middle", "right": "left"}


def mirrored(meta: SceneMeta, size: int = IMAGE_SIZE) -> SceneMeta:
    """The scene of the mirrored picture: objects in reverse order, left and right slots swapped. Captions list
    objects left to right, so a mirrored view has its own captions (what the trainer's flip augmentation needs)."""
    return SceneMeta(meta.background, [
        SceneObject(o.instance, MIRRORED_SLOTS[o.slot], (size - o.box[2], o.box[1], size - o.box[0], o.box[3]),
                    o.concept, o.name) for o in reversed(meta.objects)])


@dataclass
class Scene:
    """One picture: unpacks as `image, caption, meta` (caption = the canonical generic caption)."""

    image: Image.Image
    caption: str
    meta: SceneMeta
    object_map: np.ndarray | None = field(default=None, repr=False)   # 0 = background, i + 1 = objects[i]

    def __iter__(self) -> Iterator:
        return iter((self.image, self.caption, self.meta))


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
SKIN = (238, 196, 156)
OUTLINE = (32, 30, 34)
WHEEL = (22, 22, 24)


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    return rng.normal(0.0, sigma, shape).astype(np.float32)


def _fill(img: np.ndarray, y0: int, y1: int, colour, rng, sigma: float = 5.0) -> None:
    img[y0:y1] = np.asarray(colour, np.float32) + _noise(rng, img[y0:y1].shape, sigma)


def _paint_beach(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.26, 0.34))
    shore = horizon + int(h * rng.uniform(0.12, 0.18))
    _fill(img, 0, horizon, (150, 200, 242), rng, 3)
    _fill(img, horizon, shore, (40, 118, 188), rng, 4)
    phase = rng.integers(0, 4)
    for y in range(horizon + phase, shore, 4):   # wave crests
        img[y, :] = img[y, :] * 0.6 + np.array([200, 225, 245]) * 0.4
    _fill(img, shore, h, (226, 202, 146), rng, 9)   # sand grain
    return img


def _paint_grass(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.22, 0.32))
    _fill(img, 0, horizon, (160, 206, 246), rng, 3)
    _fill(img, horizon, h, (84, 152, 58), rng, 6)
    for _ in range(110):   # blades
        x = int(rng.integers(0, w))
        y = int(rng.integers(horizon, h))
        ln = int(rng.integers(2, 6))
        img[max(horizon, y - ln):y, x] = (50, 110, 36) if rng.random() < 0.6 else (128, 190, 86)
    return img


def _paint_snow(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * rng.uniform(0.26, 0.36))
    _fill(img, 0, horizon, (196, 206, 222), rng, 3)
    # a distant mountain ridge, white over grey
    xs = np.arange(w)
    ridge = horizon - (np.abs(((xs + rng.integers(0, w)) % 48) - 24) * rng.uniform(0.3, 0.6)).astype(int)
    for x in xs:
        img[max(0, ridge[x]):horizon, x] = (226, 230, 238)
    _fill(img, horizon, h, (242, 245, 250), rng, 4)
    speck = rng.random((h - horizon, w)) < 0.06
    img[horizon:][speck] = (184, 200, 226)
    return img


def _paint_room(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    floor = int(h * rng.uniform(0.56, 0.66))
    wall = np.array([(222, 206, 172), (200, 214, 200), (214, 196, 206)][rng.integers(0, 3)], np.float32)
    _fill(img, 0, floor, wall, rng, 3)
    wx = int(rng.integers(4, w - 36))   # a window with a cross
    img[8:floor - 12, wx:wx + 30] = (150, 200, 240)
    img[8:floor - 12, wx + 14:wx + 16] = (250, 250, 250)
    img[(8 + floor - 12) // 2:(8 + floor - 12) // 2 + 2, wx:wx + 30] = (250, 250, 250)
    _fill(img, floor, h, (142, 94, 54), rng, 5)
    for y in range(floor + int(rng.integers(2, 6)), h, 6):   # planks
        img[y, :] = (98, 62, 34)
    return img


def _paint_street(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    sky = int(h * rng.uniform(0.14, 0.22))
    walk = int(h * rng.uniform(0.42, 0.5))
    _fill(img, 0, sky, (160, 204, 240), rng, 3)
    x = 0
    while x < w:   # buildings
        bw = int(rng.integers(14, 28))
        colour = [(176, 96, 80), (150, 150, 160), (196, 180, 150)][rng.integers(0, 3)]
        _fill(img[:, x:x + bw], sky // 2 + int(rng.integers(0, sky // 2 + 1)), walk, colour, rng, 3)
        x += bw
    _fill(img, walk, walk + 8, (190, 190, 186), rng, 3)
    _fill(img, walk + 8, h, (96, 96, 102), rng, 5)
    lane = walk + 8 + (h - walk - 8) // 3
    off = int(rng.integers(0, 16))
    for x0 in range(-off, w, 16):
        img[lane:lane + 2, max(0, x0):max(0, x0 + 8)] = (240, 240, 236)
    return img


def _paint_forest(rng, h, w):
    img = np.zeros((h, w, 3), np.float32)
    ground = int(h * rng.uniform(0.5, 0.6))
    _fill(img, 0, ground, (26, 80, 38), rng, 5)
    for _ in range(int(rng.integers(4, 7))):   # trunks
        x = int(rng.integers(0, w - 6))
        img[int(h * 0.18):ground, x:x + int(rng.integers(4, 8))] = (84, 56, 30)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(10):   # canopy blobs
        cx, cy, r = rng.integers(0, w), rng.integers(0, int(h * 0.3)), rng.integers(8, 16)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (40, 104, 46)
    _fill(img, ground, h, (104, 78, 46), rng, 8)
    leaves = rng.random((h - ground, w)) < 0.05
    img[ground:][leaves] = (196, 120, 40)
    return img


PAINTERS = {"beach": _paint_beach, "grass": _paint_grass, "snow": _paint_snow, "room": _paint_room,
            "street": _paint_street, "forest": _paint_forest}


def _pattern(pattern: str, s: int, phase: int) -> np.ndarray:
    """Where the detail colour goes inside the object box (bool s×s)."""
    yy, xx = np.mgrid[0:s, 0:s]
    # Sparse enough that the main colour stays the dominant one (stripes 1/3, dots 1/9, checks 9/25 of the area).
    if pattern == "stripes":
        return (yy + phase) % 6 < 2
    if pattern == "dots":
        return (((yy + phase) % 6) < 2) & (((xx + phase) % 6) < 2)
    if pattern == "checks":   # a tartan-like grid of thin lines
        return ((yy + phase) % 5 == 0) | ((xx + phase) % 5 == 0)
    return np.zeros((s, s), bool)


def _draw_object(inst: Instance, s: int, rng: np.random.Generator):
    """The object in its own s×s box: (rgb float array, alpha bool mask)."""
    body = Image.new("L", (s, s), 0)      # main colour + pattern
    acc = Image.new("L", (s, s), 0)       # accessory, detail colour
    skin = Image.new("L", (s, s), 0)      # doll's head and arms
    dark = Image.new("L", (s, s), 0)      # wheels, eyes, lines (drawn last)
    b, a, k, d = (ImageDraw.Draw(m) for m in (body, acc, skin, dark))

    def P(*xy):  # fractions of s -> pixels
        return [round(v * s) for v in xy]

    c = inst.cls
    if c == "ball":
        b.ellipse(P(0.1, 0.16, 0.9, 0.96), fill=255)
    elif c == "box":
        b.rectangle(P(0.1, 0.22, 0.9, 0.97), fill=255)
        d.line(P(0.1, 0.4, 0.9, 0.4), fill=255, width=1)
    elif c == "mug":
        b.rounded_rectangle(P(0.1, 0.2, 0.68, 0.97), radius=max(2, s // 10), fill=255)
        b.ellipse(P(0.52, 0.36, 0.94, 0.8), outline=255, width=max(2, s // 9))
    elif c == "car":
        b.rounded_rectangle(P(0.02, 0.5, 0.98, 0.84), radius=max(2, s // 12), fill=255)
        b.polygon(P(0.22, 0.52, 0.32, 0.28, 0.7, 0.28, 0.82, 0.52), fill=255)
        for cx in (0.27, 0.73):
            d.ellipse(P(cx - 0.13, 0.74, cx + 0.13, 1.0), fill=255)
    elif c == "teddy":
        b.ellipse(P(0.18, 0.48, 0.82, 0.99), fill=255)
        b.ellipse(P(0.27, 0.14, 0.73, 0.56), fill=255)
        b.ellipse(P(0.2, 0.08, 0.4, 0.28), fill=255)
        b.ellipse(P(0.6, 0.08, 0.8, 0.28), fill=255)
        for ex in (0.41, 0.59):
            d.point(P(ex, 0.33), fill=255)
        if inst.accessory == "hat":
            a.polygon(P(0.36, 0.2, 0.64, 0.2, 0.5, 0.0), fill=255)
        elif inst.accessory == "bow":
            a.polygon(P(0.34, 0.5, 0.5, 0.58, 0.34, 0.66), fill=255)
            a.polygon(P(0.66, 0.5, 0.5, 0.58, 0.66, 0.66), fill=255)
    elif c == "doll":
        b.polygon(P(0.38, 0.4, 0.62, 0.4, 0.88, 0.98, 0.12, 0.98), fill=255)
        k.ellipse(P(0.33, 0.1, 0.67, 0.42), fill=255)
        k.line(P(0.42, 0.48, 0.16, 0.66), fill=255, width=max(2, s // 14))
        k.line(P(0.58, 0.48, 0.84, 0.66), fill=255, width=max(2, s // 14))
        for ex in (0.44, 0.56):
            d.point(P(ex, 0.25), fill=255)
        if inst.accessory == "hat":
            a.polygon(P(0.28, 0.18, 0.72, 0.18, 0.5, 0.0), fill=255)
        elif inst.accessory == "bow":
            a.polygon(P(0.32, 0.36, 0.5, 0.44, 0.32, 0.52), fill=255)
            a.polygon(P(0.68, 0.36, 0.5, 0.44, 0.68, 0.52), fill=255)
    else:
        raise ValueError(f"unknown class {c!r}")

    mb, ma, mk, md = (np.asarray(m) > 0 for m in (body, acc, skin, dark))
    shade = rng.uniform(0.88, 1.08)
    main = np.asarray(COLOURS[inst.colour], np.float32) * shade
    rgb = np.empty((s, s, 3), np.float32)
    rgb[:] = main
    if inst.detail is not None:
        detail = np.asarray(DETAIL_COLOURS[inst.detail], np.float32) * shade
        rgb[_pattern(inst.pattern, s, int(rng.integers(0, 6))) & mb] = detail
        rgb[ma] = detail
    rgb[mk & ~mb] = SKIN
    rgb[md] = WHEEL if c == "car" else OUTLINE
    solid = mb | ma | mk | md
    grown = solid.copy()   # one-pixel dark outline around the whole silhouette
    grown[1:] |= solid[:-1]
    grown[:-1] |= solid[1:]
    grown[:, 1:] |= solid[:, :-1]
    grown[:, :-1] |= solid[:, 1:]
    rgb[grown & ~solid] = OUTLINE
    return rgb, grown


def render(meta: SceneMeta, rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[Image.Image, np.ndarray]:
    """Paint the background, then each object in its box; mild brightness change and sensor noise.

    Returns the image and its object map (uint8 H×W: 0 = background, i + 1 = meta.objects[i]).
    """
    img = PAINTERS[meta.background](rng, size, size)
    labels = np.zeros((size, size), np.uint8)
    for i, obj in enumerate(meta.objects):
        x0, y0, x1, y1 = obj.box
        s = x1 - x0
        rgb, alpha = _draw_object(obj.instance, s, rng)
        img[y0:y1, x0:x1][alpha] = rgb[alpha]
        labels[y0:y1, x0:x1][alpha] = i + 1
    img = img * rng.uniform(0.92, 1.08) + _noise(rng, img.shape, 3.0)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"), labels


# ---------------------------------------------------------------------------------------------------------------
# Captions and questions
# ---------------------------------------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"'s\b|'|[.,?!:]|\n|[^\s.,?!:'\n]+")


def words(text: str) -> list[str]:
    """The word-level tokenisation the world's tokenizers use: lower case, punctuation and possessives apart."""
    return _TOKEN_RE.findall(text.lower())


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(options: Sequence[str], rng: np.random.Generator | None, weights: Sequence[float] | None = None) -> str:
    if rng is None or len(options) == 1:
        return options[0]
    p = np.asarray(weights if weights is not None else [1.0] * len(options), float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def noun_phrase(obj: SceneObject, identifiers: dict[str, str] | None = None,
                rng: np.random.Generator | None = None) -> str:
    """'a red ball'; a named figure by its name; a personal concept by its identifier when one is given."""
    if identifiers and obj.concept in identifiers:
        return identifiers[obj.concept]
    if obj.name:
        return obj.name
    syn = CLASS_WORDS[obj.cls]
    return f"{_article(obj.colour)} {obj.colour} {_pick(syn, rng, SYNONYM_WEIGHTS[len(syn)])}"


def _join(nps: list[str], rng: np.random.Generator | None) -> str:
    if len(nps) == 1:
        return nps[0]
    if len(nps) == 2:
        return f"{nps[0]} {_pick(('and', 'next to'), rng, (0.7, 0.3))} {nps[1]}"
    return f"{', '.join(nps[:-1])} and {nps[-1]}"


def personalized_caption(meta: SceneMeta, identifiers: dict[str, str] | None,
                         rng: np.random.Generator | None = None) -> str:
    """The caption with each personal concept in `identifiers` (concept key -> word) called by its identifier.

    rng None gives the canonical wording (what a well-trained captioner says greedily); an rng gives a random
    variant of the grammar (prefix, connective, class synonyms, background phrase).
    """
    nps = [noun_phrase(o, identifiers, rng) for o in meta.objects]
    where = _pick(BACKGROUNDS[meta.background], rng)
    return f"{_pick(PREFIXES, rng, PREFIX_WEIGHTS)}{_join(nps, rng)} {where}"


def generic_caption(meta: SceneMeta, rng: np.random.Generator | None = None) -> str:
    """What the un-personalised model should say: class words for personal concepts, names for named figures."""
    return personalized_caption(meta, None, rng)


def caption_variants(meta: SceneMeta, identifiers: dict[str, str] | None, n: int, seed: int = 0) -> list[str]:
    """Up to n distinct wordings (canonical first): several targets per training image, as the paper uses."""
    rng = np.random.default_rng(seed)
    out = [personalized_caption(meta, identifiers)]
    for _ in range(20 * n):
        if len(out) >= n:
            break
        c = personalized_caption(meta, identifiers, rng)
        if c not in out:
            out.append(c)
    return out


def _subject(obj: SceneObject, identifiers: dict[str, str] | None) -> str:
    if identifiers and obj.concept in identifiers:
        return identifiers[obj.concept]
    if obj.name:
        return obj.name
    return f"the {obj.class_word}"


# Object questions, including the forms the app's VQA augmentation asks (engine/domain/personalize/targets.py).
COLOUR_QUESTIONS = ("What colour is {c}?", "What color is {c}?")
WHERE_QUESTIONS = ("Where is {c}?", "Where is {c} in the image?", "Where is {c} positioned in the image?")
PATTERN_QUESTIONS = ("What pattern does {c} have?", "What is the texture of {c}?")
NEXT_QUESTIONS = ("What is next to {c}?", "What is {c} next to?")
KIND_QUESTIONS = ("What is {c}?",)
SCENE_QUESTIONS = ("Where was this photo taken?", "Where is this?")
CAPTION_PROMPT = "Please caption this image."
CAPTION_OF_PROMPT = "Please caption this image of {c}."


@dataclass(frozen=True)
class QA:
    """One question about a scene; unpacks as (question, answer)."""

    question: str
    answer: str
    kind: str          # caption, caption_of, scene, count, is_there, slot, colour, where, pattern, next, kind

    def __iter__(self) -> Iterator[str]:
        return iter((self.question, self.answer))


def vqa_pairs(meta: SceneMeta, identifiers: dict[str, str] | None = None,
              rng: np.random.Generator | None = None) -> list[QA]:
    """All the questions this scene answers, with their answers (canonical wording when rng is None).

    Questions about "the <class>" are only asked when that class is unique in the scene; named figures and
    personal concepts (with an identifier) are asked about by name. Answers are short ("red", "on the left",
    "a red ball"); the caption prompts are answered with the caption.
    """
    qa = [QA(_pick(SCENE_QUESTIONS, rng), BACKGROUNDS[meta.background][0], "scene"),
          QA("How many objects are there?", NUMBER_WORDS[len(meta.objects)], "count")]
    counts = Counter(o.cls for o in meta.objects)
    for cls in CLASSES:
        word = CLASS_WORDS[cls][0]
        qa.append(QA(f"Is there {_article(word)} {word} in the image?", "yes" if counts[cls] else "no", "is_there"))
    for slot in SLOTS:
        obj = next((o for o in meta.objects if o.slot == slot), None)
        qa.append(QA(f"What is {SLOT_PHRASES[slot]}?", noun_phrase(obj, identifiers) if obj else "nothing", "slot"))
    for i, obj in enumerate(meta.objects):
        named = bool(obj.name or (identifiers and obj.concept in identifiers))
        if not named and counts[obj.cls] > 1:
            continue
        c = _subject(obj, identifiers)
        qa.append(QA(_pick(COLOUR_QUESTIONS, rng).format(c=c), obj.colour, "colour"))
        qa.append(QA(_pick(WHERE_QUESTIONS, rng).format(c=c), SLOT_PHRASES[obj.slot], "where"))
        qa.append(QA(_pick(PATTERN_QUESTIONS, rng).format(c=c), PATTERN_WORDS[obj.instance.pattern], "pattern"))
        others = [noun_phrase(o, identifiers) for j, o in enumerate(meta.objects) if abs(j - i) == 1]
        qa.append(QA(_pick(NEXT_QUESTIONS, rng).format(c=c), " and ".join(others) if others else "nothing", "next"))
        if named:
            qa.append(QA(KIND_QUESTIONS[0].format(c=c), f"{_article(obj.class_word)} {obj.class_word}", "kind"))
            qa.append(QA(CAPTION_OF_PROMPT.format(c=c), personalized_caption(meta, identifiers, rng), "caption_of"))
    qa.append(QA(CAPTION_PROMPT, personalized_caption(meta, identifiers, rng), "caption"))
    return qa


def normalise_answer(text: str) -> str:
    return " ".join(w for w in words(text) if w not in ".,!?")


# ---------------------------------------------------------------------------------------------------------------
# Parsing captions back (scene and object accuracy)
# ---------------------------------------------------------------------------------------------------------------
_SYNONYM_TO_CLASS = {w: c for c, ws in CLASS_WORDS.items() for w in ws}
_SCENE_PHRASES = sorted(((tuple(words(p)), bg) for bg, ps in BACKGROUNDS.items() for p in ps),
                        key=lambda t: -len(t[0]))
_PREFIX_WORDS = [tuple(words(p)) for p in PREFIXES if p] + [("there", "is"), ("there", "are")]


@dataclass(frozen=True)
class NounPhrase:
    name: str | None = None        # a name or identifier
    cls: str | None = None
    colour: str | None = None
    raw: str = ""

    @property
    def key(self) -> tuple:
        return ("name", self.name) if self.name else ("thing", self.cls, self.colour)


@dataclass
class ParsedCaption:
    scene: str | None
    phrases: list[NounPhrase]


def parse_caption(caption: str, names: Sequence[str] = IDENTIFIERS) -> ParsedCaption:
    """Read a caption of the grammar back: its background and its noun phrases, left to right."""
    toks = [t for t in words(caption) if t not in (".", "!")]
    for p in _PREFIX_WORDS:
        if tuple(toks[:len(p)]) == p:
            toks = toks[len(p):]
            break
    scene = None
    for phrase, bg in _SCENE_PHRASES:
        n = len(phrase)
        if len(toks) >= n and tuple(toks[-n:]) == phrase:
            scene, toks = bg, toks[:-n]
            break
    chunks, cur, i = [], [], 0
    while i < len(toks):
        t = toks[i]
        if t in (",", "and", "beside", "with"):   # the last two: world v2's subject-centric captions
            chunks.append(cur)
            cur = []
        elif t == "sitting":                      # world v2: "sks sitting next to a red ball"
            pass
        elif t == "next" and i + 1 < len(toks) and toks[i + 1] == "to":
            chunks.append(cur)
            cur = []
            i += 1
        else:
            cur.append(t)
        i += 1
    chunks.append(cur)
    phrases = []
    known = set(names)
    for ch in (c for c in chunks if c):
        raw = " ".join(ch)
        if len(ch) == 1 and ch[0] in known:
            phrases.append(NounPhrase(name=ch[0], raw=raw))
            continue
        cls = next((_SYNONYM_TO_CLASS[w] for w in ch if w in _SYNONYM_TO_CLASS), None)
        colour = next((w for w in ch if w in COLOURS), None)
        name = next((w for w in ch if w in known), None) if cls is None else None
        phrases.append(NounPhrase(name=name, cls=cls, colour=colour, raw=raw))
    return ParsedCaption(scene, phrases)


@dataclass
class CaptionScore:
    scene_ok: bool
    objects_ok: bool               # the noun phrases are exactly the expected ones (as a multiset)
    order_ok: bool                 # ... and in left-to-right order
    objects_expected: int
    objects_found: int             # expected objects the caption names right (class + colour, or the name)
    phrases: int                   # noun phrases in the caption
    classes_found: int             # expected generic objects whose class is named (shape accuracy)
    colours_found: int             # expected generic objects whose colour is named with a thing
    generic_expected: int
    names_expected: int            # named figures / identifiers expected
    names_found: int
    identifiers: dict[str, dict] = field(default_factory=dict)   # concept -> {present, in_place}
    stray_identifiers: list[str] = field(default_factory=list)   # identifier words for concepts not in the image

    @property
    def correct(self) -> bool:
        return self.scene_ok and self.objects_ok


def _expected(meta: SceneMeta, identifiers: dict[str, str] | None) -> list[NounPhrase]:
    out = []
    for o in meta.objects:
        if identifiers and o.concept in identifiers:
            out.append(NounPhrase(name=identifiers[o.concept]))
        elif o.name:
            out.append(NounPhrase(name=o.name))
        else:
            out.append(NounPhrase(cls=o.cls, colour=o.colour))
    return out


def _overlap(a: list, b: list) -> int:
    return sum((Counter(a) & Counter(b)).values())


def score_caption(caption: str, meta: SceneMeta, identifiers: dict[str, str] | None = None) -> CaptionScore:
    """Score a generated caption against the scene (generic, or personalised with concept key -> identifier).

    Scene: the background phrase is right. Objects: each expected object is named with its class and colour (or
    by its name / identifier). For personalised captions, `identifiers` reports per concept whether the identifier
    is in the caption and whether it stands at the concept's place in the left-to-right list.
    """
    names = tuple(dict.fromkeys([*IDENTIFIERS, *(identifiers or {}).values()]))
    parsed = parse_caption(caption, names)
    expected = _expected(meta, identifiers)
    got = [p.key for p in parsed.phrases]
    want = [e.key for e in expected]
    generic = [e for e in expected if e.name is None]
    got_things = [p for p in parsed.phrases if p.name is None]
    tokens = set(words(caption))
    ident_report = {}
    for key, word in (identifiers or {}).items():
        idx = next((i for i, o in enumerate(meta.objects) if o.concept == key), None)
        if idx is None:
            continue
        in_place = len(parsed.phrases) == len(expected) and parsed.phrases[idx].name == word
        ident_report[key] = {"present": word in tokens, "in_place": in_place}
    present_concepts = set(meta.concepts)
    stray = [w for k, w in (identifiers or {}).items() if k not in present_concepts and w in tokens]
    return CaptionScore(
        scene_ok=parsed.scene == meta.background,
        objects_ok=Counter(got) == Counter(want),
        order_ok=got == want,
        objects_expected=len(want),
        objects_found=_overlap(got, want),
        phrases=len(got),
        classes_found=_overlap([p.cls for p in got_things], [e.cls for e in generic]),
        colours_found=_overlap([(p.colour) for p in got_things], [e.colour for e in generic]),
        generic_expected=len(generic),
        names_expected=len(expected) - len(generic),
        names_found=_overlap([p.name for p in parsed.phrases if p.name], [e.name for e in expected if e.name]),
        identifiers=ident_report,
        stray_identifiers=stray,
    )


def naming(caption: str, meta: SceneMeta, concept: str, identifier: str,
           names: Sequence[str] = IDENTIFIERS) -> dict[str, bool]:
    """Does the caption name *this* concept (issue 18's "correct naming", which measures binding, not the whole
    object list)? Order-free, so it reads left-to-right and subject-centric captions alike:

    - present: the identifier is in the caption;
    - also_generic: the concept is also described as a generic object ("sks and a blue toy" for a scene with one
      blue toy: a same-class phrase more than the other same-class objects account for);
    - on_distractor: a same-class distractor's phrase is missing, its place taken by the identifier;
    - correct: present, and neither of the others.
    """
    obj = meta.object_for(concept)
    parsed = parse_caption(caption, tuple(dict.fromkeys([*names, identifier])))
    others = Counter(o.colour for o in meta.objects if o is not obj and o.cls == obj.cls and not o.name
                     and not o.concept)
    said = Counter(p.colour for p in parsed.phrases if p.name is None and p.cls == obj.cls)
    present = identifier in words(caption)
    also_generic = bool(said - others)
    on_distractor = present and bool(others - said)
    return {"present": present, "also_generic": also_generic, "on_distractor": on_distractor,
            "correct": present and not also_generic and not on_distractor}


@dataclass
class CaptionAccuracy:
    """Aggregate of many CaptionScores: the numbers the pre-training report and the benchmark print."""

    n: int = 0
    scene: int = 0
    objects_exact: int = 0
    correct: int = 0
    objects_expected: int = 0
    objects_found: int = 0
    generic_expected: int = 0
    classes_found: int = 0
    colours_found: int = 0
    names_expected: int = 0
    names_found: int = 0

    def add(self, s: CaptionScore) -> None:
        self.n += 1
        self.scene += s.scene_ok
        self.objects_exact += s.objects_ok
        self.correct += s.correct
        for f in ("objects_expected", "objects_found", "generic_expected", "classes_found", "colours_found",
                  "names_expected", "names_found"):
            setattr(self, f, getattr(self, f) + getattr(s, f))

    def as_dict(self) -> dict[str, float]:
        def r(a, b):
            return round(a / b, 4) if b else None
        return {"images": self.n, "scene_accuracy": r(self.scene, self.n),
                "object_accuracy": r(self.objects_found, self.objects_expected),
                "shape_accuracy": r(self.classes_found, self.generic_expected),
                "colour_accuracy": r(self.colours_found, self.generic_expected),
                "name_accuracy": r(self.names_found, self.names_expected),
                "objects_exact": r(self.objects_exact, self.n),
                "caption_correct": r(self.correct, self.n)}


# ---------------------------------------------------------------------------------------------------------------
# The world: seeded scene sampling
# ---------------------------------------------------------------------------------------------------------------
STREAM_PRETRAIN, STREAM_HELDOUT, STREAM_CONCEPT, STREAM_NEGATIVE, STREAM_MULTI = 1, 2, 3, 4, 5


class World:
    """Seeded scene sampling. Every public sampler takes a seed and is a pure function of (world seed, seed)."""

    def __init__(self, seed: int = 0, size: int = IMAGE_SIZE, snap: int | None = 8):
        self.seed = int(seed)
        self.size = size
        self.snap = snap
        self.concepts = CONCEPTS
        self.named = NAMED

    # -- randomness -----------------------------------------------------------------------------------------------
    def rng(self, stream: int, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, *keys])

    @staticmethod
    def class_word(concept: str) -> str:
        return CONCEPTS[concept].class_word

    # -- instances ------------------------------------------------------------------------------------------------
    def random_instance(self, rng: np.random.Generator, cls: str | None = None, special_prob: float = 0.5,
                        avoid: set | None = None) -> Instance:
        """A generic object: plain, or with a random pattern/accessory; never the look of a named or personal one."""
        avoid = RESERVED_LOOKS if avoid is None else avoid
        while True:
            c = cls or CLASSES[int(rng.integers(len(CLASSES)))]
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            pattern, detail, accessory = "plain", None, "none"
            if rng.random() < special_prob:
                pattern = PATTERNS[1 + int(rng.integers(3))]
            if c in FIGURE_CLASSES and rng.random() < special_prob:
                accessory = ACCESSORIES[1 + int(rng.integers(2))]
            if pattern != "plain" or accessory != "none":
                others = [d for d in DETAIL_COLOURS if d != colour]
                detail = others[int(rng.integers(len(others)))]
            inst = Instance(c, colour, pattern, detail, accessory)
            if inst.look_key not in avoid:
                return inst

    def near_miss(self, concept: str, rng: np.random.Generator) -> Instance:
        """A same-class object that differs from the concept in exactly one of colour/detail/pattern/accessory."""
        base = CONCEPTS[concept].instance
        while True:
            what = ["colour", "detail", "pattern"] + (["accessory"] if base.cls in FIGURE_CLASSES else [])
            w = what[int(rng.integers(len(what)))]
            if w == "colour":
                vals = [c for c in COLOURS if c not in (base.colour, base.detail)]
            elif w == "detail":
                vals = [c for c in DETAIL_COLOURS if c not in (base.colour, base.detail)]
            elif w == "pattern":
                vals = [p for p in PATTERNS[1:] if p != base.pattern]
            else:
                vals = [a for a in ACCESSORIES if a != base.accessory]
            inst = Instance(**{**base.__dict__, w: vals[int(rng.integers(len(vals)))]})
            reserved = inst.look_key in RESERVED_LOOKS and inst.look_key != base.look_key
            if not reserved and all(inst != c.instance for c in (*NAMED.values(), *CONCEPTS.values())):
                return inst

    # -- scenes ---------------------------------------------------------------------------------------------------
    def scene(self, rng: np.random.Generator, *, background: str | None = None, n_objects: int | None = None,
              concepts: Sequence[str] = (), distractors: int = 0, named_prob: float = 0.0,
              special_prob: float = 0.5, extra: Sequence[Instance] = ()) -> Scene:
        """One scene.

        concepts: personal concepts to place; distractors: how many extra random objects share a placed
        concept's class; extra: more instances to place (e.g. a near miss); named_prob: chance of one named figure
        (the pre-training mix); the rest are random generic objects. At most three objects, in random slots.
        """
        bg = background or list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
        placed: list[tuple[Instance, str | None, str | None]] = [(CONCEPTS[c].instance, c, None) for c in concepts]
        for i in range(distractors):
            cls = CONCEPTS[concepts[i % len(concepts)]].cls
            placed.append((self.random_instance(rng, cls, special_prob), None, None))
        placed += [(inst, None, None) for inst in extra]
        if named_prob and rng.random() < named_prob:
            key = list(NAMED)[int(rng.integers(len(NAMED)))]
            placed.append((NAMED[key].instance, None, key))
        if len(placed) > 3:
            raise ValueError("at most three objects fit in a scene")
        n = n_objects if n_objects is not None else int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
        n = min(3, max(n, len(placed)))
        while len(placed) < n:
            placed.append((self.random_instance(rng, None, special_prob), None, None))
        order = rng.permutation(len(placed))
        slots = sorted(rng.choice(3, size=len(placed), replace=False).tolist())
        objects = []
        for slot_idx, p_idx in zip(slots, order):
            inst, concept, name = placed[int(p_idx)]
            if self.snap:
                s = self.size // 3
                x0 = slot_idx * s
                y1 = self.size - self.snap * int(rng.integers(0, 3))
            else:
                s = int(rng.integers(26, 32))
                cx = (slot_idx + 0.5) * self.size / 3 + rng.integers(-2, 3)
                x0 = int(np.clip(round(cx - s / 2), 0, self.size - s))
                y1 = int(rng.integers(int(self.size * 0.82), int(self.size * 0.97)))
            objects.append(SceneObject(inst, SLOTS[slot_idx], (x0, y1 - s, x0 + s, y1), concept, name))
        meta = SceneMeta(bg, objects)
        image, object_map = render(meta, rng, self.size)
        return Scene(image, generic_caption(meta), meta, object_map)

    # -- data sets ------------------------------------------------------------------------------------------------
    def pretrain_scene(self, rng: np.random.Generator) -> Scene:
        """The pre-training mix: random generic scenes; a quarter of them hold one named figure."""
        return self.scene(rng, named_prob=0.3)

    def pretrain_scenes(self, seed: int = 0) -> Iterator[Scene]:
        """An endless pre-training stream."""
        rng = self.rng(STREAM_PRETRAIN, seed)
        while True:
            yield self.pretrain_scene(rng)

    def heldout_scenes(self, n: int, seed: int = 0) -> list[Scene]:
        """Fresh scenes from the pre-training distribution (another random stream), for accuracy."""
        rng = self.rng(STREAM_HELDOUT, seed)
        return [self.pretrain_scene(rng) for _ in range(n)]

    def concept_images(self, concept: str, n: int, seed: int = 0, *, distractor_prob: float = 0.5,
                       background: str | None = None) -> list[Scene]:
        """Scenes with the concept; with distractor_prob, another object of the same class stands beside it."""
        rng = self.rng(STREAM_CONCEPT, list(CONCEPTS).index(concept), seed)
        out = []
        for _ in range(n):
            d = int(rng.random() < distractor_prob)
            out.append(self.scene(rng, concepts=[concept], distractors=d, background=background))
        return out

    def negative_images(self, n: int, seed: int = 0, *, concept: str | None = None, same_class: bool = True,
                        hard: bool = False, named_prob: float = 0.0) -> list[Scene]:
        """Scenes without any personal concept. With `concept` and same_class, each holds a random object of the
        concept's class; with hard, a near miss instead (the concept with one attribute changed)."""
        key = list(CONCEPTS).index(concept) if concept else 99
        rng = self.rng(STREAM_NEGATIVE, key, seed)
        out = []
        for _ in range(n):
            extra: list[Instance] = []
            if concept and hard:
                extra = [self.near_miss(concept, rng)]
            elif concept and same_class:
                extra = [self.random_instance(rng, CONCEPTS[concept].cls)]
            out.append(self.scene(rng, extra=extra, named_prob=named_prob))
        return out

    def multi_concept_images(self, concepts: Sequence[str], n: int, seed: int = 0, *,
                             distractors: int = 0) -> list[Scene]:
        """Scenes holding all the given concepts (two or three), optionally with same-class distractors."""
        key = sum((list(CONCEPTS).index(c) + 1) * 10 ** i for i, c in enumerate(concepts))
        rng = self.rng(STREAM_MULTI, key, seed)
        return [self.scene(rng, concepts=list(concepts), distractors=distractors) for _ in range(n)]

    # -- language -------------------------------------------------------------------------------------------------
    @staticmethod
    def vocabulary() -> list[str]:
        """Every word the world's captions, questions and answers can use (for building tokenizers)."""
        texts = [*PREFIXES, "and next to , nothing yes no a an the this image photo", *NUMBER_WORDS,
                 *(p for ps in BACKGROUNDS.values() for p in ps), *SLOT_PHRASES.values(),
                 *PATTERN_WORDS.values(), *COLOURS, *DETAIL_COLOURS, *(w for ws in CLASS_WORDS.values() for w in ws),
                 *IDENTIFIERS, *COLOUR_QUESTIONS, *WHERE_QUESTIONS, *PATTERN_QUESTIONS, *NEXT_QUESTIONS,
                 *KIND_QUESTIONS, *SCENE_QUESTIONS, CAPTION_PROMPT, CAPTION_OF_PROMPT, "How many objects are there?",
                 "Is there in the image?", *(f"What is {p}?" for p in SLOT_PHRASES.values())]
        vocab: list[str] = []
        for t in texts:
            for w in words(t.replace("{c}", "")):
                if w not in vocab:
                    vocab.append(w)
        return vocab
