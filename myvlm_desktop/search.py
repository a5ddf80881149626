"""Search as you type: queries run on a search thread of their own (its own engine `Library`, whose searcher keeps
its name index warm), the latest query wins, and the answer comes back as photo ids with the "why" of each, the
names the query was understood to mean (shown as chips) and notes in words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from engine.library import Library

from .tasks import EngineThread, user_message

log = logging.getLogger(__name__)

DEBOUNCE_MS = 150
LIMIT = 500


@dataclass
class SearchOutcome:
    text: str
    ids: list[int] = field(default_factory=list)
    why: dict[int, str] = field(default_factory=dict)
    names: list[tuple[str, str, str]] = field(default_factory=list)  # (display name, kind, typed)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    ms: float = 0.0
    empty_query: bool = False


def run_search(lib: Library, text: str, limit: int = LIMIT) -> SearchOutcome:
    resp = lib.search(text, limit=limit)
    out = SearchOutcome(text, notes=list(resp.notes), ms=float(resp.timings.get("total_ms") or 0.0),
                        empty_query=resp.query.empty)
    for r in resp.results:
        out.ids.append(r.photo_id)
        out.why[r.photo_id] = r.why
    for m in resp.query.names:
        out.names.append((m.name, m.entities[0].kind if m.entities else "person", m.typed if m.fuzzy else ""))
    return out


class SearchController(QObject):
    """`search(text)` debounced; `results(SearchOutcome)` for the latest text only."""

    results = Signal(object)
    busyChanged = Signal(bool)

    def __init__(self, library_root: Path, options: dict[str, Any], parent: QObject | None = None):
        super().__init__(parent)
        self.thread = EngineThread(library_root, options, name="search", parent=self)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._fire)
        self._pending = ""
        self._latest = 0
        self._in_flight = False
        self.text = ""
        self.last: SearchOutcome | None = None

    def search(self, text: str, immediately: bool = False) -> None:
        self.text = text
        self._pending = text
        if immediately:
            self._timer.stop()
            self._fire()
        else:
            self._timer.start()

    def refresh(self) -> None:
        """Run the current query again (the library changed)."""
        if self.text.strip():
            self.search(self.text, immediately=True)

    def _fire(self) -> None:
        text = self._pending
        self._latest += 1
        seq = self._latest
        if not self._in_flight:
            self.busyChanged.emit(True)
        self._in_flight = True
        self.thread.call(lambda lib: run_search(lib, text), lambda out, s=seq: self._done(s, out),
                         lambda exc, s=seq, t=text: self._done(s, SearchOutcome(t, error=user_message(exc))),
                         label="search")

    def _done(self, seq: int, out: SearchOutcome) -> None:
        if seq != self._latest:
            return  # a newer query is on its way
        self._in_flight = False
        self.busyChanged.emit(False)
        self.last = out
        self.results.emit(out)

    def warm_up(self) -> None:
        """Build the search documents and name index now, in the background (the first query is then quick)."""
        self.thread.call(lambda lib: lib.warm_up_search(), label="search warm-up")

    def shutdown(self) -> None:
        self._timer.stop()
        self.thread.shutdown(10_000)
