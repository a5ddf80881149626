"""Searching from the toolbar: typing shows the results as they come (on the search thread, the latest text
wins), Enter keeps the search among the sidebar's recent ones, clearing the text goes back to the view the search
started from, and the chips say which names the query was read as (a click shows that person or thing)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import read_models
from myvlm_desktop.search import SearchOutcome
from myvlm_desktop.sidebar import CONCEPT, PERSON, SEARCH
from myvlm_desktop.widgets import PERSON_CHIP, THING_CHIP

from .prompts import html
from .stages_popup import count

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow

MAX_RECENT_SEARCHES = 8


class SearchFlow:
    def __init__(self, window: MainWindow):
        self.w = window
        self.outcome: SearchOutcome | None = None
        self.recent: list[str] = []
        window.state.events.search_chips.connect(self.show_chips)

    def searches_key(self) -> str:
        import hashlib

        return "searches/" + hashlib.sha1(str(self.w.library_root).encode()).hexdigest()[:12]

    def focus_search(self) -> None:
        w = self.w
        w.full.close()
        w.search_edit.setFocus()
        w.search_edit.selectAll()

    def on_text(self, text: str) -> None:
        w, state = self.w, self.w.state
        state.search_text = text
        if not text.strip():
            w.search.search("")
            if state.kind == SEARCH:
                self.outcome = None
                w.navigate(*state.previous_view)
            return
        if state.kind != SEARCH:
            w.clear_grid_selection()
            state.show(SEARCH, text)
            self.outcome = None
            w.refresh_view_content()
            w.show_center()
        state.show(SEARCH, text)
        w.sidebar.select(SEARCH, text)  # the person or folder searched from is no longer what is shown
        w.search_title.setText("Searching…")
        w.search.search(text)

    def on_enter(self) -> None:
        w = self.w
        text = " ".join(w.search_edit.text().split())
        if not text:
            return
        w.search.search(text, immediately=True)
        if text in self.recent:
            self.recent.remove(text)
        self.recent.insert(0, text)
        del self.recent[MAX_RECENT_SEARCHES:]
        if w._settings is not None:
            w._settings.setValue(self.searches_key(), self.recent)
        w.sidebar.set_searches(self.recent)
        w.sidebar.select(SEARCH, text)

    def on_results(self, out: SearchOutcome) -> None:
        w, state = self.w, self.w.state
        if w._closing or state.kind != SEARCH or out.text != w.search.text:
            return
        self.outcome = out
        state.view = (SEARCH, out.text)
        state.search_chips = tuple(out.names)   # the chip bar follows (show_chips)
        n = len([i for i in out.ids if i in w._by_id])
        w.search_title.setText("" if not n else f"{count(n, 'photo')} found · hover over a photo to see why")
        w.search_notes.setText(" ".join(out.notes))
        w.search_notes.setVisible(bool(out.notes))
        w.refresh_view_content()
        w.show_center()
        w.update_summary()

    def show_chips(self, names: tuple[tuple[str, str, str], ...]) -> None:
        """The names the query was read as, one chip each (observes `state.search_chips`)."""
        chips = []
        for name, kind, typed in names:
            tip = f"Read “{typed}” as {name}" if typed else f"Only photos with {name}"
            chips.append((name + (f" (for “{typed}”)" if typed else ""), PERSON_CHIP if kind == "person"
                          else THING_CHIP, name, tip))
        self.w.search_chips.set_chips(chips)

    def on_chip(self, kind: str, key: Any) -> None:
        lib = self.w.library
        if kind in (PERSON_CHIP, THING_CHIP):
            if kind == PERSON_CHIP:
                pid = read_models.person_id_named(lib, key)
                if pid is not None:
                    self.w.navigate(PERSON, pid)
                    return
            cid = read_models.concept_id_named(lib, key)
            if cid is not None:
                self.w.navigate(CONCEPT, cid)

    def empty_text(self) -> str:
        out, names = self.outcome, self.w._names
        q = html(self.w.search.text.strip())
        if out is None:
            return "Searching…"
        if out.error:
            return f"<h3>The search failed</h3>{html(out.error)}"
        tips = ["a name: " + ", ".join(html(n) for n in names[:4]) if names else
                "a person's name, once you named them under People",
                "words from captions (“beach”, “birthday cake”)", "a year or a month (“2019”, “July 2021”)",
                "<code>folder:holidays</code>"]
        notes = "".join(f"<br><i>{html(n)}</i>" for n in out.notes)
        return f"<h3>No photo matches “{q}”</h3>Try {', '.join(tips[:-1])}, or {tips[-1]}.{notes}"
