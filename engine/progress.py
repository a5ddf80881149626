"""The engine's one progress contract: every long operation reports `Progress(phase, done, total, detail)`.

A long operation takes `progress: ProgressFn | None` and `cancel: threading.Event | None`, calls
`progress(Progress(...))` as it goes, and checks `cancel` (engine.errors.raise_if_cancelled) between units of work.
Operations with more to say (the pipeline's per-stage state, a training's loss) report a subclass of `Progress`,
so a plain progress bar can show any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """`phase`: what is being done ("scan", "files", "training", ...); `total` None while not yet known."""

    phase: str
    done: int
    total: int | None
    detail: str = ""

    @property
    def fraction(self) -> float | None:
        """done / total in [0, 1], or None when the total is not known."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


ProgressFn = Callable[[Progress], None]


def report(progress: ProgressFn | None, phase: str, done: int, total: int | None, detail: str = "") -> None:
    """Call `progress` when there is one (long operations take it as optional)."""
    if progress is not None:
        progress(Progress(phase, done, total, detail))


__all__ = ["Progress", "ProgressFn", "report"]
