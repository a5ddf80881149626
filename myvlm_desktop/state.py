"""The app's state, without Qt: what is shown, what is selected, what is searched, and what is running.

napari keeps its viewer's state in `components/` and lets the `_qt/` views follow its events; this module plays that
part for the main window. Each field is a psygnal evented dataclass field: assigning a value emits
`state.events.<field>(new, old)` once, and only when the value really changed (an equal value emits nothing), so
views can observe the state without re-painting on every assignment. Values are immutable (tuples) for that reason:
a mutated list would change without an event.

Tested as plain Python (tests/test_app_state.py); the views subscribe in `main_window.py`, `actions.py` and
`window/` (busy label, actions' enabled state, the pause action, the search chips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psygnal import evented

# The view kinds, as the sidebar names them (the sidebar owns the rows; this module must not import Qt views).
LIBRARY, FOLDER, PEOPLE, PERSON, THINGS, CONCEPT, SEARCH, PHOTOS = (
    "library", "folder", "people", "person", "things", "concept", "search", "photos")

View = tuple[str, Any]  # (kind, key): ("person", 3), ("search", "beach"), ("photos", (1, 2, 5)) ...


@evented
@dataclass
class AppState:
    """What the window shows and does. Assign to change; subscribe with `state.events.<field>.connect(fn)`."""

    view: View = (LIBRARY, None)
    previous_view: View = (LIBRARY, None)   # where clearing the search goes back to
    selection: tuple[int, ...] = ()         # photo ids selected in the grid
    search_text: str = ""
    search_chips: tuple[tuple[str, str, str], ...] = ()  # (display name, "person" / "thing", typed) understood
    busy: tuple[tuple[str, str], ...] = ()  # (key, text) of each user task in flight ("learn:Bella", ...)
    indexing: bool = False
    indexing_paused: bool = False  # (psygnal reserves the name "paused")
    cancelling: bool = False

    # -- busy flags ---------------------------------------------------------------------------------------------

    def set_busy(self, key: str, text: str | None) -> None:
        """Mark a task running (`text` says what it does) or done (`text` None). The latest text comes last."""
        rest = tuple(b for b in self.busy if b[0] != key)
        self.busy = rest if text is None else (*rest, (key, text))

    def is_busy(self, key: str) -> bool:
        return any(b[0] == key for b in self.busy)

    @property
    def busy_text(self) -> str:
        """What the status bar says about the running tasks: the latest one's text ("" when none runs)."""
        return self.busy[-1][1] if self.busy else ""

    # -- navigation ---------------------------------------------------------------------------------------------

    def show(self, kind: str, key: Any = None) -> bool:
        """Show a view; the view a search started from is kept, for when the search is cleared. True: it changed."""
        new = (kind, key)
        if new == self.view:
            return False
        if self.view[0] != SEARCH:
            self.previous_view = self.view
        self.view = new
        return True

    @property
    def kind(self) -> str:
        return self.view[0]

    @property
    def key(self) -> Any:
        return self.view[1]
