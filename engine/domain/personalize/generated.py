"""What the personalised captioner returns for one photo: the text, its template and where it came from. Its own
module, below the personalizer (service.py) and instant names (instant.py), which both make it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GeneratedText:
    text: str                 # rendered with the identifiers the model used
    template: str             # with {{concept:ID}} placeholders, for the caption store
    concepts: list[int]       # the concepts whose tokens were appended
    model: str
    prompt: str
    personalized: bool
    instant: bool = False     # named from recognition before training (instant.py), not by a concept embedding

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "concepts": self.concepts, "model": self.model, "prompt": self.prompt,
                "personalised": self.personalized,  # the --json key as released
                "instant": self.instant}
