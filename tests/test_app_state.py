"""The window's Qt-free state (myvlm_desktop/state.py): each event fires once per real change, never for an equal
value, and the state module imports neither Qt nor the rest of the GUI."""

from __future__ import annotations

import ast
from pathlib import Path

from myvlm_desktop.state import LIBRARY, PEOPLE, PERSON, SEARCH, AppState


def record(state: AppState) -> list[tuple[str, object]]:
    seen: list[tuple[str, object]] = []
    for name in ("view", "previous_view", "selection", "search_text", "search_chips", "busy", "indexing", "indexing_paused",
                 "cancelling"):
        getattr(state.events, name).connect(lambda new, _old=None, n=name: seen.append((n, new)))
    return seen


def test_each_field_fires_once_per_real_change() -> None:
    s = AppState()
    seen = record(s)
    s.view = (LIBRARY, None)          # equal to the default: nothing
    s.selection = ()
    s.indexing = False
    assert seen == []
    s.view = (PERSON, 3)
    s.view = (PERSON, 3)
    s.selection = (1, 2)
    s.selection = (1, 2)
    s.indexing = True
    s.indexing = True
    s.search_chips = (("Bella", "thing", ""),)
    s.search_chips = (("Bella", "thing", ""),)
    assert seen == [("view", (PERSON, 3)), ("selection", (1, 2)), ("indexing", True),
                    ("search_chips", (("Bella", "thing", ""),))]


def test_busy_flags_add_replace_and_clear() -> None:
    s = AppState()
    seen = record(s)
    s.set_busy("learn:Bella", "Learning Bella…")
    s.set_busy("retrain:4", "Retraining…")
    assert s.busy_text == "Retraining…" and s.is_busy("learn:Bella")
    s.set_busy("learn:Bella", None)
    assert s.busy == (("retrain:4", "Retraining…"),) and not s.is_busy("learn:Bella")
    s.set_busy("learn:Bella", None)   # not running: no change, no event
    s.set_busy("retrain:4", None)
    assert s.busy == () and s.busy_text == ""
    assert [n for n, _ in seen] == ["busy"] * 4


def test_show_keeps_the_view_to_return_to_after_a_search() -> None:
    s = AppState()
    seen = record(s)
    assert s.show(PERSON, 7) is True
    assert s.show(PERSON, 7) is False             # already shown: no event
    assert s.show(SEARCH, "beach") is True
    assert s.show(SEARCH, "beach cake") is True
    assert s.previous_view == (PERSON, 7)         # searching does not overwrite where to go back to
    assert s.show(PEOPLE) is True
    assert s.kind == PEOPLE and s.key is None
    assert seen == [("view", (PERSON, 7)), ("previous_view", (PERSON, 7)), ("view", (SEARCH, "beach")),
                    ("view", (SEARCH, "beach cake")), ("view", (PEOPLE, None))]


def test_state_module_is_qt_free_and_imports_no_gui_module() -> None:
    import myvlm_desktop.state as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) if n.level == 0}
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not relative
    assert not any(m.startswith(("PySide6", "PyQt", "qtpy", "myvlm_desktop", "engine")) for m in imported), imported
