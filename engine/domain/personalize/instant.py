"""Instant names: captions and answers that use a name the moment it is known, before any embedding is trained.

MyVLM needs a trained concept embedding before the VLM says a name. Until then the app already knows who and what
is in a photo: a named face group (with the face's box) or a thing whose recognition head fired. That is enough for
a training-free caption, the way retrieval-based methods after MyVLM (RAP, PeKit) personalise:

* an instruction-following captioner (every family but BLIP-2) is told in the prompt: "The man on the left is Alex.
  The dog is Bella. Please caption this image." and the names it writes become placeholders;
* BLIP-2 follows no instructions, so its original caption gets the paper's replacement of the class word
  ("a man throwing a ball" -> "Alex throwing a ball"), only where it can be right: one recognised concept of that
  class, and one person (one face) or one such thing in the photo; plurals and two-of-a-kind are left alone.

Such captions are stored as personalised captions marked `instant`: they sit in the slot the trained caption takes,
so training the concept replaces them; they follow renames like every template. Nothing here imports torch: the
people and concept code call `recaption` when a name or a head appears.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine import settings
from engine.domain.captions import person_placeholder, placeholder, to_template
from engine.domain.personalize.generated import GeneratedText
from engine.domain.personalize.targets import PERSON_WORDS, PET_AND_THING_WORDS

if TYPE_CHECKING:
    from PIL import Image

    from engine.storage.catalog import Catalog

BLIP2 = "blip2"                     # the one family that does not follow instructions

SINGULAR_PEOPLE = tuple(w for w in PERSON_WORDS if w not in ("men", "women", "people"))
# words saying there is more than one person: a person's class word is not replaced in such captions
PEOPLE_MANY = {"men", "women", "people", "persons", "children", "kids", "boys", "girls", "guys", "ladies", "babies",
               "players", "couple", "group", "crowd", "family", "team", "friends"}
DETERMINER = r"(?:a|an|the|one|this|that)"
MODIFIER_STOP = {"is", "are", "was", "with", "in", "on", "at", "of", "and", "or", "to", "from", "by", "near"}


def enabled(catalog: Catalog) -> bool:
    return bool(settings.read(catalog, "instant_names"))


def follows_instructions(family: str) -> bool:
    """Chat families read a context sentence; BLIP-2's captioning prompt is empty and its Q-Former ignores text."""
    return family != BLIP2


# -- what the catalog knows about a photo ----------------------------------------------------------------------------

@dataclass
class Seen:
    """One recognised concept in a photo: a named person (by their face) or a thing (by its head)."""

    kind: str                  # "person" | "object"
    name: str
    placeholder: str           # {{person:ID}} or {{concept:ID}}: how the caption store keeps the name
    concept_id: int | None
    where: str | None          # "on the left" / "in the middle" / "on the right" (a face box), or None
    class_word: str | None = None   # "dog" for "Bella the dog"; people get theirs from the caption


@dataclass
class Scene:
    photo_id: int
    seen: list[Seen] = field(default_factory=list)
    faces: int = 0             # every face detected in the photo, named or not


def where_in_photo(x: float, w: float, width: float) -> str:
    """A face box's horizontal place in words (the middle fifth is "in the middle")."""
    centre = (x + w / 2) / max(width, 1.0)
    return "on the left" if centre < 0.4 else "on the right" if centre > 0.6 else "in the middle"


def object_class_word(name: str) -> str | None:
    """The thing's class from its name ("Bella the dog" -> "dog"), if the name says it."""
    words = re.findall(r"[a-z]+", name.lower())
    return next((w for w in reversed(words) if w in PET_AND_THING_WORDS), None)


def scenes(catalog: Catalog, photo_ids: Sequence[int]) -> dict[int, Scene]:
    """Who and what is recognised in each photo, from the catalog alone (no model runs).

    People: faces of a named, visible person (confirmed, or suggested by clustering), and faces a person concept's
    current head fired on. Things: object concepts whose current head fired. Concepts the caller has trained
    embeddings for are included too; the caller decides (a trained concept gets the MyVLM caption instead)."""
    out = {int(p): Scene(int(p)) for p in photo_ids}
    ids = list(out)
    concept_of = {r["person_id"]: r["id"] for r in catalog.query(
        "SELECT id, person_id FROM concepts WHERE person_id IS NOT NULL")}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        marks = ",".join("?" * len(chunk))
        width = {}
        for r in catalog.query(f"SELECT id, width, height, user_rotation FROM photos WHERE id IN ({marks})", chunk):
            w, h = r["width"] or 0, r["height"] or 0
            width[r["id"]] = float(h if (r["user_rotation"] or 0) % 180 else w)
        for r in catalog.query(f"SELECT photo_id, count(*) AS n FROM faces WHERE photo_id IN ({marks}) "
                               "GROUP BY photo_id", chunk):
            out[r["photo_id"]].faces = int(r["n"])
        people: dict[int, dict[int, Any]] = {}   # photo -> person -> face row (the biggest face wins)
        for r in catalog.query(
                f"SELECT f.photo_id, f.x, f.w, f.h, f.person_id, pe.name FROM faces f JOIN people pe ON "
                f"pe.id = f.person_id WHERE f.photo_id IN ({marks}) AND pe.name IS NOT NULL AND pe.hidden = 0 "
                f"AND f.state IN ('confirmed', 'suggested') "
                f"UNION ALL SELECT s.photo_id, f.x, f.w, f.h, pe.id, pe.name FROM concept_signals s "
                f"JOIN concepts c ON c.id = s.concept_id JOIN people pe ON pe.id = c.person_id "
                f"JOIN faces f ON f.id = s.face_id WHERE s.photo_id IN ({marks}) AND s.fired = 1 "
                f"AND s.revision = c.head_revision AND pe.name IS NOT NULL AND pe.hidden = 0", chunk + chunk):
            best = people.setdefault(r["photo_id"], {})
            if r["person_id"] not in best or r["w"] * r["h"] > best[r["person_id"]]["w"] * best[r["person_id"]]["h"]:
                best[r["person_id"]] = r
        for pid, found in people.items():
            for person_id, r in sorted(found.items(), key=lambda kv: kv[1]["x"]):   # left to right
                where = where_in_photo(r["x"], r["w"], width[pid]) if width.get(pid) else None
                out[pid].seen.append(Seen("person", r["name"], person_placeholder(person_id),
                                          concept_of.get(person_id), where))
        for r in catalog.query(
                f"SELECT s.photo_id, c.id, c.name FROM concept_signals s JOIN concepts c ON c.id = s.concept_id "
                f"WHERE s.photo_id IN ({marks}) AND s.fired = 1 AND s.revision = c.head_revision "
                f"AND c.kind = 'object' ORDER BY s.score DESC", chunk):
            out[r["photo_id"]].seen.append(Seen("object", r["name"], placeholder(r["id"]), r["id"], None,
                                                object_class_word(r["name"])))
    return out


# -- instruction-following captioners: the names go into the prompt --------------------------------------------------

def _singular_person_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w in SINGULAR_PEOPLE]


def context(scene: Scene, original: str = "") -> str:
    """"The man on the left is Alex. The dog is Bella." — the class word for a lone person comes from the photo's
    original caption (one face, one person word in it), else "person"."""
    people_words = _singular_person_words(original)
    crowd = set(re.findall(r"[a-z]+", original.lower())) & PEOPLE_MANY
    lone = scene.faces == 1 and len(people_words) == 1 and not crowd
    parts = []
    for s in scene.seen:
        if s.kind == "person":
            noun = people_words[0] if lone else "person"
            parts.append(f"The {noun} {s.where} is {s.name}." if s.where else f"The {noun} is {s.name}.")
        else:
            noun = s.class_word or _lone_thing(original)
            parts.append(f"The {noun} is {s.name}." if noun else f"{s.name} is in this photo.")
    return " ".join(parts)


def _lone_thing(original: str) -> str | None:
    things = [w for w in re.findall(r"[a-z]+", original.lower()) if w in PET_AND_THING_WORDS]
    return things[0] if len(things) == 1 else None


def instructed_prompt(scene: Scene, task_prompt: str, original: str = "") -> str:
    """The prompt an instruction-following VLM gets: who is where, then the caption instruction or question."""
    return f"{context(scene, original)} {task_prompt}".strip()


def names_to_placeholders(scene: Scene, text: str) -> str:
    """The recognised names the model wrote become placeholders (a person's first name alone too, when no other
    recognised person shares it)."""
    names: dict[str, Any] = {s.name: s.placeholder for s in scene.seen}
    firsts = [s.name.split()[0] for s in scene.seen if s.kind == "person" and len(s.name.split()) > 1]
    for s in scene.seen:
        if s.kind == "person" and len(s.name.split()) > 1 and firsts.count(s.name.split()[0]) == 1:
            names.setdefault(s.name.split()[0], s.placeholder)
    return to_template(text, names)


# -- BLIP-2: replace the class word where it can only mean the one recognised concept ---------------------------------

def replace_class_word(caption: str, scene: Scene) -> str | None:
    """The original caption with the one recognised concept's class phrase replaced by its placeholder, or None
    where that could be wrong: two of a kind in the photo or caption, a plural, or no class word to replace."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    people = [s for s in scene.seen if s.kind == "person"]
    things = [s for s in scene.seen if s.kind == "object"]
    out = caption
    done = 0
    if len(people) == 1 and scene.faces == 1 and not words & PEOPLE_MANY:
        found = _singular_person_words(caption)
        if len(found) == 1:
            out, n = _swap(out, found[0], people[0].placeholder)
            done += n
    if len(things) == 1:
        thing = things[0]
        mentioned = [w for w in re.findall(r"[a-z]+", caption.lower()) if w in PET_AND_THING_WORDS]
        word = thing.class_word if thing.class_word else (mentioned[0] if len(mentioned) == 1 else None)
        if word and mentioned.count(word) == 1 and _plural(word) not in words:
            out, n = _swap(out, word, thing.placeholder)
            done += n
    return out if done else None


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")


def _swap(caption: str, word: str, replacement: str) -> tuple[str, int]:
    """"a young man throwing" -> "{{person:1}} throwing": the article and up to two modifiers go with the noun
    (a sentence-initial capital stays on the placeholder's rendered name)."""
    stop = "|".join(sorted(MODIFIER_STOP))
    modifier = rf"(?!(?:{stop})\b)[a-z'-]+"
    pattern = re.compile(rf"\b{DETERMINER}\s+(?:{modifier}\s+){{0,2}}?{re.escape(word)}\b(?!-)|\b{re.escape(word)}\b"
                         rf"(?!-)", re.IGNORECASE)
    return pattern.subn(replacement, caption, count=1)


# -- making them ------------------------------------------------------------------------------------------------------

def instant_captions(w: Any, images: Sequence[Image.Image], scenes_: Sequence[Scene], originals: Sequence[str]
                     ) -> list[GeneratedText | None]:
    """An instant caption per photo (None where no name can be given): one batched generation with the names in
    the prompt for chat families; the class-word replacement of the original caption for BLIP-2."""
    out: list[GeneratedText | None] = [None] * len(images)
    todo = [i for i, s in enumerate(scenes_) if s.seen]
    if not todo:
        return out
    if not follows_instructions(w.family):
        for i in todo:
            template = replace_class_word(originals[i], scenes_[i])
            if template is not None:
                out[i] = _generated(template, scenes_[i], w.checkpoint, "")
        return out
    prompts = [instructed_prompt(scenes_[i], w.caption_prompt(None), originals[i]) for i in todo]
    texts = w.generate([images[i] for i in todo], prompts, None)
    for i, text, prompt in zip(todo, texts, prompts):
        template = names_to_placeholders(scenes_[i], text)
        if template != text:    # the model used a name; otherwise its caption adds nothing to the original
            out[i] = _generated(template, scenes_[i], w.checkpoint, prompt, text)
    return out


def _generated(template: str, scene: Scene, model: str, prompt: str, text: str | None = None) -> GeneratedText:
    ids = [s.concept_id for s in scene.seen if s.concept_id is not None and s.placeholder in template]
    return GeneratedText(text if text is not None else template, template, ids, model, prompt, False, instant=True)


# -- keeping them current ---------------------------------------------------------------------------------------------

def recaption(catalog: Catalog, photo_ids: Iterable[int]) -> int:
    """The captions stage redoes these photos on its next run (a name or a head appeared in them)."""
    ids = sorted({int(p) for p in photo_ids})
    with catalog.write():
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            catalog.conn.execute(f"DELETE FROM stage_status WHERE stage = 'captions' AND photo_id IN "
                                 f"({','.join('?' * len(chunk))})", chunk)
    return len(ids)


def photos_of_person(catalog: Catalog, person_id: int) -> list[int]:
    return [r["photo_id"] for r in catalog.query("SELECT DISTINCT photo_id FROM faces WHERE person_id = ?",
                                                 [person_id])]


def move_person(catalog: Catalog, source_id: int, target_id: int) -> None:
    """Merging people: captions and answers that named the source name the target (inside the caller's write)."""
    old, new = person_placeholder(source_id), person_placeholder(target_id)
    for table, col in (("captions", "template"), ("qa", "question"), ("qa", "answer")):
        catalog.conn.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?) WHERE instr({col}, ?) > 0",
                             [old, new, old])
