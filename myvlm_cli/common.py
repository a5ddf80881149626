"""What every command group shares: JSON on stdout, whether a stream is a terminal, a rate for progress lines."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # closed, or not a real stream
        return False


def rate_text(done: int, seconds: float, unit: str = "photo") -> str:
    """"4.2 photo/s" over the whole run so far, or "" when there is nothing to say (no time measured yet)."""
    if done <= 0 or seconds <= 0:
        return ""
    return f"{done / seconds:.1f} {unit}/s"

