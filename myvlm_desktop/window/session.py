"""What the window remembers between sessions (QSettings): its geometry, docks and splitter, the thumbnail size,
the grid's order and month headers, whether the info pane shows, the theme, and this library's recent searches."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow


def _on(value: object) -> bool:
    return str(value).lower() != "false"


def restore(w: MainWindow) -> None:
    s = w._settings
    theme = "system"
    if s is not None:
        for key, put in (("mainWindow/geometry", w.restoreGeometry), ("mainWindow/state", w.restoreState),
                         ("mainWindow/splitter", w.splitter.restoreState)):
            value = s.value(key)
            if value is not None:
                put(value)
        px = s.value("grid/thumbPx")
        if px is not None:
            try:
                w.zoom_slider.setValue(int(px))
            except (TypeError, ValueError):
                pass
        w.newest_first_action.setChecked(_on(s.value("grid/newestFirst", "true")))
        w.group_months_action.setChecked(_on(s.value("grid/months", "true")))
        w.detail_action.setChecked(_on(s.value("mainWindow/detail", "true")))
        searches = s.value(w.search_flow.searches_key(), [])
        w.search_flow.recent = [str(x) for x in (searches if isinstance(searches, list) else [searches]) if x]
        theme = str(s.value("theme", "system"))
    w.theme_actions.get(theme, w.theme_actions["system"]).setChecked(True)
    w.detail.setVisible(w.detail_action.isChecked())
    w.problems.hide()
    w.sidebar.set_searches(w.search_flow.recent)


def save(w: MainWindow) -> None:
    s = w._settings
    if s is None:
        return
    s.setValue("mainWindow/geometry", w.saveGeometry())
    s.setValue("mainWindow/state", w.saveState())
    if not w.full.showing:
        s.setValue("mainWindow/splitter", w.splitter.saveState())
    s.setValue("grid/thumbPx", w.zoom_slider.value())
    s.setValue("grid/newestFirst", w._newest_first)
    s.setValue("grid/months", w.group_months_action.isChecked())
    s.setValue("mainWindow/detail", w.detail_action.isChecked())
