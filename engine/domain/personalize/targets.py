"""Training targets for people who write no captions (docs/method.md §10).

The original VLM captions each training photo; the subject phrase that refers to the concept ("a man", "a small
brown dog") is rewritten into the identifier; a few close variants follow; the user reviews them before training.
For LLaVA VQA the original VLM answers generic questions about the photo with the concept's class word ("the man"),
and the class word in the answer becomes the identifier.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

PERSON_WORDS = ("man", "woman", "boy", "girl", "person", "lady", "guy", "child", "kid", "baby", "toddler",
                "gentleman", "teenager", "teen", "player", "men", "women", "people")
PET_AND_THING_WORDS = ("dog", "puppy", "cat", "kitten", "bird", "horse", "rabbit", "bunny", "toy", "plush", "doll",
                       "figure", "figurine", "teddy", "bear", "ball", "mug", "cup", "bottle", "bag", "backpack",
                       "box", "car", "bike", "bicycle", "hat", "shoe", "shoes", "chair", "lamp", "plant", "vase",
                       "statue", "sculpture", "guitar", "book", "clock", "pillow", "cushion", "robot", "animal", "pet")
DETERMINERS = ("a", "an", "the", "one", "this", "that", "his", "her", "their", "my", "some")
# words that end a subject phrase: verbs and prepositions commonly following it in captions
STOP_WORDS = {"is", "are", "was", "with", "in", "on", "at", "by", "of", "and", "sitting", "standing", "holding",
              "wearing", "playing", "lying", "laying", "walking", "running", "looking", "smiling", "posing", "next",
              "near", "under", "behind", "from", "to", "that", "who", "while", "as"}

PERSON_QUESTIONS = (
    "What is {c} wearing in the image?",
    "What color shirt is {c} wearing?",
    "What is {c} doing in the image?",
    "Where is {c} in the image?",
    "Describe what {c} is wearing.",
    "Where is {c} positioned from left to right in the image?",
    "What does {c}'s hair look like?",
    "What is {c}'s facial expression?",
    "Is there anything unique about {c} in the image?",
)
OBJECT_QUESTIONS = (
    "What color is {c}?",
    "Where is {c} in the image?",
    "Where is {c} positioned in the image?",
    "Is {c} the main subject of the image?",
    "What is {c} interacting with?",
    "What is the texture of {c}?",
    "What materials is {c} made of?",
    "Is {c} large or small in the image?",
    "Is {c} close to the camera or far away?",
)


@dataclass
class TargetSet:
    """The proposed targets for one training photo."""

    captions: list[str]                      # personalised caption variants
    sources: list[str]                       # the original captions they came from
    needs_review: bool = False               # no subject phrase was found: the user should check them
    qa: list[tuple[str, str]] = field(default_factory=list)


def class_words_for(kind: str, name: str = "") -> tuple[str, ...]:
    """The nouns that may refer to a concept: people words for a person; for a thing, its name's words first."""
    if kind == "person":
        return PERSON_WORDS
    own = tuple(w for w in re.findall(r"[a-z]+", name.lower()) if len(w) > 2)
    return own + tuple(w for w in PET_AND_THING_WORDS if w not in own)


def pick_class_word(captions: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The candidate noun that most training captions use (they all show the concept)."""
    counts: Counter[str] = Counter()
    for cap in captions:
        words = set(re.findall(r"[a-z]+", cap.lower()))
        for c in candidates:
            if c in words:
                counts[c] += 1
    if not counts:
        return None
    best = max(counts.values())
    return next(c for c in candidates if counts.get(c) == best)


def _subject_re(class_word: str) -> re.Pattern[str]:
    """determiner + up to three modifiers + the class word (plural too), not crossing a verb or preposition."""
    det = "|".join(DETERMINERS)
    stop = "|".join(sorted(STOP_WORDS))
    modifier = rf"(?!(?:{stop})\b)[\w'-]+"
    return re.compile(rf"\b(?:(?:{det})\s+)?(?:{modifier}\s+){{0,3}}?{re.escape(class_word)}(?:s|es)?\b",
                      re.IGNORECASE)


def rewrite_subject(caption: str, class_word: str, identifier: str) -> str | None:
    """The caption with its first phrase naming `class_word` replaced by `identifier`; None if there is none."""
    m = _subject_re(class_word).search(caption)
    if not m:
        return None
    out = caption[:m.start()] + identifier + caption[m.end():]
    return re.sub(r"\s+", " ", out).strip()   # the identifier keeps its own spelling, also first in the caption


def variants(personal: str, identifier: str) -> list[str]:
    """A few close variants of one personalised caption (the paper trains on several captions per image)."""
    base = personal.rstrip(". ")
    out = [base]
    lowered = base[:1].lower() + base[1:] if not base.startswith(identifier) else base
    out.append(f"a photo of {lowered}")
    if base.lower().startswith(identifier.lower() + " "):
        rest = base[len(identifier) + 1:]
        if not rest.startswith(("is ", "are ")) and rest.split(" ", 1)[0].endswith("ing"):
            out.append(f"{identifier} is {rest}")
    return list(dict.fromkeys(out))


def caption_targets(originals: Sequence[str], class_word: str | None, identifier: str, max_variants: int = 4
                    ) -> TargetSet:
    """Personalised targets from one photo's original captions."""
    found: list[str] = []
    used: list[str] = []
    for cap in dict.fromkeys(c.strip() for c in originals if c and c.strip()):
        rewritten = rewrite_subject(cap, class_word, identifier) if class_word else None
        if rewritten:
            found.append(rewritten)
            used.append(cap)
    if found:
        out: list[str] = []
        for f in found:
            out.extend(variants(f, identifier))
        return TargetSet(list(dict.fromkeys(out))[:max_variants], used)
    # nothing names the concept: say so, and offer the plainest honest target
    first = next((c.strip() for c in originals if c and c.strip()), "")
    text = f"{identifier} in {first[:1].lower() + first[1:]}" if first else identifier
    return TargetSet([text], [first] if first else [], needs_review=True)


def questions_for(kind: str, subject: str) -> list[str]:
    return [q.format(c=subject) for q in (PERSON_QUESTIONS if kind == "person" else OBJECT_QUESTIONS)]


def personalize_answer(answer: str, class_word: str | None, identifier: str) -> str:
    """'The man is wearing a hat' → 'Alex is wearing a hat'; an answer without the class word stays as is."""
    if class_word:
        out = rewrite_subject(answer, class_word, identifier)
        if out:
            return out
    return answer.strip()
