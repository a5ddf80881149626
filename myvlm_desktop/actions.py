"""Every action of the main window, declared once: its text, shortcut, tip, icon, whether it is a toggle, what it
calls and when it is enabled. `build_actions` makes the QActions and `build_menus` the menu bar from this table;
the window, toolbar, context menus and buttons share the same QAction objects (as MusicBrainz Picard's main window
keeps its actions in one registry). `ActionSpec.enabled` reads the Qt-free `AppState`, so an action follows the
state's events instead of being switched on and off by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QStyle

from engine.library import APP_NAME

from .resources import themed_icon
from .state import LIBRARY, PEOPLE, THINGS, AppState

if TYPE_CHECKING:
    from .main_window import MainWindow

SP = QStyle.StandardPixmap
Key = QKeySequence.StandardKey


@dataclass(frozen=True)
class ActionSpec:
    id: str                                            # the window's attribute: window.<id> is the QAction
    text: str
    call: Callable[[MainWindow], Any] | Callable[[MainWindow, bool], Any] | None  # (window) or (window, checked)
    shortcut: str | QKeySequence.StandardKey | None = None
    tip: str = ""
    icon: tuple[str | tuple[str, ...], QStyle.StandardPixmap] | None = None  # (theme icon names, fallback)
    checkable: bool = False
    checked: bool = False
    enabled: Callable[[AppState], bool] | None = None  # None: always
    role: QAction.MenuRole | None = None               # where macOS puts it (the app menu)


def _idle(s: AppState) -> bool:
    return not s.indexing


def _running(s: AppState) -> bool:
    return s.indexing and not s.cancelling


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("add_folder_action", "&Add Folder…", lambda w: w.choose_folder(), Key.Open,
               "Watch a folder of photos (its subfolders too)", ("folder-new", SP.SP_FileDialogNewFolder)),
    ActionSpec("index_action", "&Index Now", lambda w: w.indexing_flow.start_indexing(), "F5",
               "Look for new, changed and removed photos and process them",
               (("view-refresh", "system-search"), SP.SP_BrowserReload), enabled=_idle),
    ActionSpec("pause_action", "&Pause Indexing", lambda w: w.indexing_flow.toggle_pause(), None,
               "Hold indexing (models stop using the computer) until resumed",
               ("media-playback-pause", SP.SP_MediaPause), enabled=_running),
    ActionSpec("cancel_action", "&Stop Indexing", lambda w: w.indexing_flow.cancel_indexing(), None,
               "Stop after the photos in progress; the next run picks up where this one ended",
               ("process-stop", SP.SP_BrowserStop), enabled=_running),
    ActionSpec("settings_action", "&Settings…", lambda w: w.open_settings(), Key.Preferences,
               role=QAction.MenuRole.PreferencesRole),
    ActionSpec("quit_action", "&Quit", lambda w: w.close(), Key.Quit, role=QAction.MenuRole.QuitRole),
    ActionSpec("find_action", "&Find…", lambda w: w.search_flow.focus_search(), Key.Find,
               "Search your photos by names, words and dates"),
    ActionSpec("rotate_left_action", "Rotate &Left", lambda w: w.photo_actions.rotate_current(-90), "Ctrl+Shift+R"),
    ActionSpec("rotate_right_action", "Rotate &Right", lambda w: w.photo_actions.rotate_current(90), "Ctrl+R"),
    ActionSpec("newest_first_action", "&Newest First", lambda w, on: w.set_newest_first(on), checkable=True,
               checked=True),
    ActionSpec("group_months_action", "Show &Months", lambda w, on: w.set_group_by_month(on), checkable=True,
               checked=True),
    ActionSpec("detail_action", "Show &Info", lambda w, on: w.set_detail_visible(on), "Ctrl+I", checkable=True,
               checked=True),
    ActionSpec("full_view_action", "&Full View", lambda w: w.full.toggle()),
    ActionSpec("zoom_in_action", "Zoom &In", lambda w: w.zoom_step(1), Key.ZoomIn),
    ActionSpec("zoom_out_action", "Zoom &Out", lambda w: w.zoom_step(-1), Key.ZoomOut),
    ActionSpec("people_action", "&People", lambda w: w.navigate(PEOPLE, None), "Ctrl+1"),
    ActionSpec("things_action", "&Things", lambda w: w.navigate(THINGS, None), "Ctrl+2"),
    ActionSpec("library_action", "&All Photos", lambda w: w.navigate(LIBRARY, None), "Ctrl+0"),
    ActionSpec("name_thing_action", "&Name This Thing…", lambda w: w.things.name_thing(), "Ctrl+T",
               "Teach the app a pet or a thing from the selected photos"),
    ActionSpec("about_action", f"&About {APP_NAME}", lambda w: w.about(), role=QAction.MenuRole.AboutRole),
)

THEMES = (("system", "Like the &System"), ("light", "&Light"), ("dark", "&Dark"))

# The menu bar: (title, action ids; None is a separator; "themes" the Appearance submenu, "problems" the dock's).
MENUS: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    ("&File", ("add_folder_action", None, "index_action", "pause_action", "cancel_action", None, "settings_action",
               None, "quit_action")),
    ("&Edit", ("find_action", None, "rotate_left_action", "rotate_right_action")),
    ("&View", ("library_action", "people_action", "things_action", None, "newest_first_action",
               "group_months_action", "detail_action", "full_view_action", None, "zoom_in_action", "zoom_out_action",
               None, "themes", "problems_action")),
    ("&Things", ("name_thing_action",)),
    ("&Help", ("about_action",)),
)
WINDOW_SHORTCUTS = ("find_action", "full_view_action")  # work even while the menu bar is hidden (full view)


def make_action(parent: Any, spec: ActionSpec, window: MainWindow) -> QAction:
    a = QAction(spec.text, parent)
    if spec.icon is not None:
        a.setIcon(themed_icon(*spec.icon))
    if spec.shortcut is not None:
        a.setShortcut(spec.shortcut if isinstance(spec.shortcut, QKeySequence) else QKeySequence(spec.shortcut))
    if spec.tip:
        a.setToolTip(spec.tip)
        a.setStatusTip(spec.tip)
    a.setCheckable(spec.checkable)
    a.setChecked(spec.checked)
    if spec.role is not None:
        a.setMenuRole(spec.role)
    call = spec.call
    if call is not None:
        if spec.checkable:
            a.toggled.connect(lambda on, c=call: c(window, on))
        else:
            a.triggered.connect(lambda _checked=False, c=call: c(window))
    return a


def build_actions(window: MainWindow) -> dict[str, QAction]:
    """Make every declared action as `window.<id>`, the theme group as `window.theme_actions`, and keep their
    enabled state following `window.state`."""
    actions = {spec.id: make_action(window, spec, window) for spec in ACTIONS}
    for name, a in actions.items():
        setattr(window, name, a)
    window.theme_group = QActionGroup(window)
    window.theme_actions = {}
    for key, text in THEMES:
        a = QAction(text, window)
        a.setCheckable(True)
        a.setData(key)
        window.theme_group.addAction(a)
        window.theme_actions[key] = a
    window.theme_group.triggered.connect(lambda a: window.set_theme(a.data()))

    def update_enabled(*_: Any) -> None:
        for spec in ACTIONS:
            if spec.enabled is not None:
                actions[spec.id].setEnabled(spec.enabled(window.state))

    window.state.events.indexing.connect(update_enabled)
    window.state.events.cancelling.connect(update_enabled)
    update_enabled()
    return actions


def build_menus(window: MainWindow) -> None:
    mb = window.menuBar()
    for title, ids in MENUS:
        menu = mb.addMenu(title)
        for name in ids:
            if name is None:
                menu.addSeparator()
            elif name == "themes":
                themes = menu.addMenu("&Appearance")
                for a in window.theme_actions.values():
                    themes.addAction(a)
            else:
                menu.addAction(getattr(window, name))
    for name in WINDOW_SHORTCUTS:
        window.addAction(getattr(window, name))
