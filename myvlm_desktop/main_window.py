"""The main window: the sidebar (Library, People, Things, Searches), the photo grid or a page in the middle, the
detail pane on the right, and what the app is doing in the status bar.

The GUI thread only reads the catalog (quick queries) and paints. Everything slow happens elsewhere:
- indexing (scan + every stage, models included) in the worker process (`IndexRunner`);
- the user's changes (naming, merging, captions, rotation) on the "actions" engine thread;
- model calls (questions, naming a thing, preparing training targets) on the "models" engine thread;
- search on its own thread (`SearchController`), training on a QThread (`TrainingRunner`);
- thumbnails, face crops and previews on small thread pools; folder watching on the engine watcher's threads.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QItemSelectionModel,
    QObject,
    QSettings,
    QSize,
    QStringListModel,
    Qt,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSplitter,
    QStackedWidget,
    QStyle,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine import __version__
from engine.api import FolderNotFound, Library
from engine.catalog import OK, Photo
from engine.library import APP_NAME, default_library_path, default_pictures_path
from engine.pipeline import ProgressEvent

from .detail import DetailPane, FaceBox
from .folders import FolderCounts, FolderListModel
from .grid import (
    DEFAULT_THUMB_PX,
    MAX_THUMB_PX,
    MIN_THUMB_PX,
    DateScrubber,
    PhotoGridModel,
    PhotoGridView,
    PhotoRole,
)
from .indexing import SCAN, IndexResult, IndexRunner
from .people_page import PeopleData, PeoplePage, PersonHeader, load_people
from .problems import ProblemsDock
from .qt_compat import install_none_refcount_guard, item_data
from .resources import app_icon, themed_icon
from .search import SearchController, SearchOutcome
from .sidebar import CONCEPT, FOLDER, LIBRARY, PEOPLE, PERSON, SEARCH, THINGS, Sidebar
from .tasks import EngineThread, user_message
from .things_page import (
    ConceptHeader,
    NameThingPrompt,
    ThingsData,
    ThingsPage,
    concept_info,
    load_things,
)
from .thumbnails import FaceCropLoader, ThumbnailLoader
from .training import TeachDialog, TrainingOutcome, TrainingRunner, fmt_seconds
from .viewer import FullView
from .widgets import PERSON_CHIP, THING_CHIP, ChipBar, show_error

log = logging.getLogger(__name__)

STAGE_LABELS = {SCAN: "Looking for photos", "thumbnail": "Making thumbnails", "faces": "Finding faces",
                "clip": "Understanding pictures", "concepts": "Recognising people and things",
                "captions": "Writing captions"}
STAGE_ORDER = [SCAN, "thumbnail", "faces", "clip", "concepts", "captions"]
LIVE_REFRESH_MS = 1500  # while indexing, show newly ready photos this often
CATALOG_POLL_MS = 1000  # ask this often whether another process (e.g. `myvlm index`) changed the catalog
MAX_RECENT_SEARCHES = 8


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage.replace("_", " ").capitalize())


def _count(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {plural or word + 's'}"


def finished_text(unavailable: dict[str, str]) -> str:
    """The status bar after a run: "Up to date" only when every stage could run (its tooltip says why not)."""
    if not unavailable:
        return "Up to date"
    return f"Indexed · {_count(len(unavailable), 'step')} can't run here"


def ask_name(parent: QWidget, title: str, prompt: str, names: list[str], text: str = "") -> str | None:
    """A small dialog: a name, with completion over the names already used. None: cancelled."""
    dlg = QDialog(parent)
    dlg.setWindowTitle(title)
    lay = QVBoxLayout(dlg)
    label = QLabel(prompt)
    label.setWordWrap(True)
    lay.addWidget(label)
    edit = QLineEdit(text)
    completer = QCompleter(QStringListModel(names, dlg), edit)
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    edit.setCompleter(completer)
    lay.addWidget(edit)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dlg.accept)
    buttons.rejected.connect(dlg.reject)
    lay.addWidget(buttons)
    dlg.resize(380, 10)
    if dlg.exec() == QDialog.DialogCode.Accepted and edit.text().strip():
        return " ".join(edit.text().split())
    return None


def confirm(parent: QWidget, title: str, text: str) -> bool:
    return QMessageBox.question(parent, title, text) == QMessageBox.StandardButton.Yes


class Prompts:
    """The questions the window asks the user; tests replace them."""

    ask_name = staticmethod(ask_name)
    confirm = staticmethod(confirm)
    name_thing = staticmethod(NameThingPrompt.ask)


@dataclass
class CatalogView:
    """What the window shows, read in one go (on the reader thread)."""

    status: dict[str, Any]
    photos: list[Photo]
    named: list[dict[str, Any]]
    unnamed_groups: int
    things: list[dict[str, Any]]


def read_catalog(lib: Library) -> CatalogView:
    cat = lib.catalog
    named = [dict(r) for r in cat.query(
        "SELECT pe.id, pe.name, COUNT(DISTINCT f.photo_id) AS photos FROM people pe "
        "LEFT JOIN faces f ON f.person_id = pe.id WHERE pe.name IS NOT NULL AND pe.hidden = 0 "
        "GROUP BY pe.id ORDER BY pe.name COLLATE NOCASE")]
    faces = {r["person_id"]: r["id"] for r in cat.query(
        "SELECT person_id, id FROM (SELECT f.person_id, f.id, ROW_NUMBER() OVER (PARTITION BY f.person_id "
        "ORDER BY f.state = 'confirmed' DESC, f.score * f.w DESC, f.id) AS n FROM faces f JOIN people pe "
        "ON pe.id = f.person_id WHERE pe.name IS NOT NULL) WHERE n = 1")}
    for p in named:
        p["face"] = faces.get(p["id"])
    things = [dict(r) for r in cat.query(
        "SELECT c.id, c.name, (SELECT COUNT(*) FROM (SELECT s.photo_id FROM concept_signals s WHERE s.concept_id = "
        "c.id AND s.fired = 1 UNION SELECT e.photo_id FROM concept_examples e WHERE e.concept_id = c.id AND "
        "e.photo_id IS NOT NULL)) AS photos FROM concepts c WHERE c.kind = 'object' ORDER BY c.name COLLATE NOCASE")]
    return CatalogView(lib.status(), lib.photos(order="date"), named,
                       int(cat.scalar("SELECT COUNT(*) FROM people WHERE name IS NULL AND hidden = 0") or 0), things)


class _WatchBridge(QObject):
    updated = Signal(object)  # engine.watch.WatchUpdate, from the watcher's thread


class StagesPopup(QFrame):
    """Per-stage progress: what each stage has done in this run, and why a stage cannot run here."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, Qt.WindowType.Popup)
        self.setObjectName("stagesPopup")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(12, 10, 12, 10)
        self.grid.setHorizontalSpacing(10)
        self.rows: dict[str, tuple[QLabel, QProgressBar, QLabel]] = {}

    def set_events(self, events: dict[str, ProgressEvent], status: dict[str, Any] | None) -> None:
        stages = (status or {}).get("stages", {})
        names = [s for s in STAGE_ORDER if s in events or s in stages or s == SCAN]
        names += [s for s in list(events) + list(stages) if s not in names]
        for i, name in enumerate(names):
            if name not in self.rows:
                label, bar, text = QLabel(stage_label(name)), QProgressBar(), QLabel()
                bar.setFixedWidth(140)
                bar.setMaximumHeight(12)
                bar.setTextVisible(False)
                text.setWordWrap(True)
                text.setMaximumWidth(360)
                self.rows[name] = (label, bar, text)
                self.grid.addWidget(label, i, 0)
                self.grid.addWidget(bar, i, 1)
                self.grid.addWidget(text, i, 2)
            label, bar, text = self.rows[name]
            ev = events.get(name)
            st = stages.get(name, {})
            if ev is not None and ev.state == "unavailable":
                bar.setRange(0, 1)
                bar.setValue(0)
                text.setText(f"not available here: {ev.current}")
            elif ev is not None and ev.total > 0:
                bar.setRange(0, ev.total)
                bar.setValue(min(ev.done, ev.total))
                state = {"finished": "done", "paused": "paused", "cancelled": "stopped"}.get(ev.state, "")
                text.setText(f"{ev.done:,} of {ev.total:,}" + (f" · {state}" if state else "")
                             + (f" · {_count(ev.errors, 'problem')}" if ev.errors else ""))
            elif st:
                done, pending = int(st.get("done", 0)), int(st.get("pending", 0))
                total = done + pending + int(st.get("error", 0))
                bar.setRange(0, max(1, total))
                bar.setValue(done)
                reason = st.get("unavailable")
                text.setText(f"not available here: {reason}" if reason else
                             (f"{done:,} of {total:,} done" if pending else "up to date"))
            else:
                bar.setRange(0, 1)
                bar.setValue(1 if name == SCAN and ev is not None and ev.state == "finished" else 0)
                text.setText("waiting" if ev is None else f"{ev.done:,} files")
        self.adjustSize()

    def texts(self) -> dict[str, str]:
        return {name: row[2].text() for name, row in self.rows.items()}


class MainWindow(QMainWindow):
    libraryChangeRequested = Signal(str)

    def __init__(self, library_root: str | os.PathLike | None = None, *, auto_index: bool = True,
                 settings: QSettings | None = None, options: dict[str, Any] | None = None, watch: bool = True,
                 stages: list[str] | None = None):
        super().__init__()
        install_none_refcount_guard()
        self.options = {k: v for k, v in (options or {}).items() if v}
        self.library = Library(Path(library_root) if library_root else default_library_path())
        self.library.options.update(self.options)
        self.library_root = self.library.paths.root
        self._settings = settings
        self._watch_enabled = watch
        self._stages = list(stages) if stages else None
        self._closing = False
        self._index_again: dict[str, Any] | None = None
        self._view: tuple[str, Any] = (LIBRARY, None)
        self._previous_view: tuple[str, Any] = (LIBRARY, None)
        self._newest_first = True
        self._last_event: ProgressEvent | None = None
        self._status: dict[str, Any] = {"folders": [], "errors": [], "stages": {}}
        self._all_photos: list[Photo] = []
        self._by_id: dict[int, Photo] = {}
        self._problems_sized = False
        self._people_data: PeopleData | None = None
        self._things_data: ThingsData | None = None
        self._names: list[str] = []
        self._search: SearchOutcome | None = None
        self._recent_searches: list[str] = []
        self._asking = False
        self._locating: Any = None   # the stop Event of a running "Where is …?"
        self._busy_things: set[str] = set()
        self._teach_dialogs: dict[int, TeachDialog] = {}
        self._indexed_once = False
        self.watcher: Any = None
        self.prompts = Prompts()
        self.refresh_ms: list[float] = []  # how long each catalog refresh took (diagnostics, bench)

        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(app_icon())
        self.setObjectName("mainWindow")
        self.resize(1280, 800)
        self.setUnifiedTitleAndToolBarOnMac(True)

        dpr = self._dpr()
        self.loader = ThumbnailLoader(self.library.paths, round(DEFAULT_THUMB_PX * dpr), parent=self)
        self.face_loader = FaceCropLoader(self.library.paths, round(96 * dpr), parent=self)
        self.grid_model = PhotoGridModel(self.loader, self)
        self.folder_model = FolderListModel(self)
        self.indexer = IndexRunner(self.library_root, self, options=self.options)
        self.indexer.started.connect(self._on_index_started)
        self.indexer.progress.connect(self._on_index_progress)
        self.indexer.finished.connect(self._on_index_finished)
        self.indexer.pausedChanged.connect(self._on_paused_changed)
        self.actions_thread = EngineThread(self.library_root, self.options, name="actions", parent=self)
        self.models_thread = EngineThread(self.library_root, self.options, name="models", parent=self)
        self.reader_thread = EngineThread(self.library_root, self.options, name="reader", parent=self)
        self._reading = False
        self._read_again = False
        self._read_started = 0.0
        self.models_thread.busyChanged.connect(lambda _b: self._update_busy())
        self.search = SearchController(self.library_root, self.options, self)
        self.search.results.connect(self._on_search_results)
        self.trainer = TrainingRunner(self.library_root, self.options, self)
        self.trainer.progress.connect(self._on_training_progress)
        self.trainer.finished.connect(self._on_training_finished)
        self._watch_bridge = _WatchBridge(self)
        self._watch_bridge.updated.connect(self._on_watch_update)

        self._live_refresh = QTimer(self)
        self._live_refresh.setSingleShot(True)
        self._live_interval_ms = LIVE_REFRESH_MS
        self._live_refresh.timeout.connect(self.refresh)
        self._catalog_version = self.library.catalog_version()
        self._catalog_poll = QTimer(self)
        self._catalog_poll.setInterval(CATALOG_POLL_MS)
        self._catalog_poll.timeout.connect(self._poll_catalog)

        self._build_actions()
        self._build_ui()
        self._build_menus()
        self._restore_settings()
        self.refresh_now()
        self._catalog_poll.start()
        self._update_actions()
        self._auto_index = auto_index   # also: naming someone re-captions their photos at once
        if self.library.folders():
            self.search.warm_up()
            if auto_index:
                QTimer.singleShot(0, self.start_indexing)  # resume whatever the last session left undone
            elif watch:
                QTimer.singleShot(0, self._start_watching)

    # -- construction -----------------------------------------------------------------------------------------------

    def _dpr(self) -> float:
        screen = self.screen()
        return screen.devicePixelRatio() if screen is not None else 1.0

    def _action(self, text: str, slot: Any = None, shortcut: Any = None, tip: str = "", icon: Any = None,
                checkable: bool = False, checked: bool = False) -> QAction:
        a = QAction(text, self)
        if icon is not None:
            a.setIcon(icon)
        if shortcut is not None:
            a.setShortcut(shortcut if isinstance(shortcut, QKeySequence) else QKeySequence(shortcut))
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.setCheckable(checkable)
        a.setChecked(checked)
        if slot is not None:
            if checkable:
                a.toggled.connect(slot)
            else:
                a.triggered.connect(lambda _checked=False: slot())  # not slot(checked): start_indexing(False)
        return a

    def _build_actions(self) -> None:
        sp = QStyle.StandardPixmap
        self.add_folder_action = self._action("&Add Folder…", self.choose_folder, QKeySequence.StandardKey.Open,
                                              "Watch a folder of photos (its subfolders too)",
                                              themed_icon("folder-new", sp.SP_FileDialogNewFolder))
        self.index_action = self._action("&Index Now", self.start_indexing, "F5",
                                         "Look for new, changed and removed photos and process them",
                                         themed_icon(("view-refresh", "system-search"), sp.SP_BrowserReload))
        self.pause_action = self._action("&Pause Indexing", self.toggle_pause, None,
                                         "Hold indexing (models stop using the computer) until resumed",
                                         themed_icon("media-playback-pause", sp.SP_MediaPause))
        self.cancel_action = self._action("&Stop Indexing", self.cancel_indexing, None,
                                          "Stop after the photos in progress; the next run picks up where this one "
                                          "ended", themed_icon("process-stop", sp.SP_BrowserStop))
        self.settings_action = self._action("&Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        self.settings_action.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.find_action = self._action("&Find…", self.focus_search, QKeySequence.StandardKey.Find,
                                        "Search your photos by names, words and dates")
        self.rotate_left_action = self._action("Rotate &Left", lambda: self.rotate_current(-90), "Ctrl+Shift+R")
        self.rotate_right_action = self._action("Rotate &Right", lambda: self.rotate_current(90), "Ctrl+R")
        self.newest_first_action = self._action("&Newest First", self.set_newest_first, checkable=True, checked=True)
        self.group_months_action = self._action("Show &Months", self.set_group_by_month, checkable=True,
                                                checked=True)
        self.detail_action = self._action("Show &Info", self.set_detail_visible, "Ctrl+I", checkable=True,
                                          checked=True)
        self.full_view_action = self._action("&Full View", self.toggle_full_view, None)
        self.zoom_in_action = self._action("Zoom &In", lambda: self._zoom_step(1), QKeySequence.StandardKey.ZoomIn)
        self.zoom_out_action = self._action("Zoom &Out", lambda: self._zoom_step(-1),
                                            QKeySequence.StandardKey.ZoomOut)
        self.people_action = self._action("&People", lambda: self.navigate(PEOPLE, None), "Ctrl+1")
        self.things_action = self._action("&Things", lambda: self.navigate(THINGS, None), "Ctrl+2")
        self.library_action = self._action("&All Photos", lambda: self.navigate(LIBRARY, None), "Ctrl+0")
        self.name_thing_action = self._action("&Name This Thing…", self.name_thing, "Ctrl+T",
                                              "Teach the app a pet or a thing from the selected photos")
        self.about_action = self._action(f"&About {APP_NAME}", self.about)
        self.theme_group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for key, text in (("system", "Like the &System"), ("light", "&Light"), ("dark", "&Dark")):
            a = self._action(text, checkable=True)
            a.setData(key)
            self.theme_group.addAction(a)
            self.theme_actions[key] = a
        self.theme_group.triggered.connect(lambda a: self.set_theme(a.data()))

    def _build_ui(self) -> None:
        self.sidebar = Sidebar(self.folder_model, self.face_loader)
        self.sidebar.navigated.connect(self.navigate)
        self.sidebar.personDropped.connect(self.merge_people)
        self.folder_view = self.sidebar.folder_view

        # the grid page: a header (person, thing, search), the grid with its date scrubber, or an empty state
        self.grid_view = PhotoGridView()
        self.grid_view.setModel(self.grid_model)
        self.grid_view.zoomRequested.connect(self._zoom_step)
        self.grid_view.doubleClicked.connect(lambda _i: self.open_full_view())
        self.grid_view.selectionModel().selectionChanged.connect(lambda *_: self._on_selection())
        self.grid_view.selectionModel().currentChanged.connect(lambda *_: self._on_selection())
        self.grid_view.installEventFilter(self)
        self.grid_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.grid_view.customContextMenuRequested.connect(self._grid_menu)
        self.scrubber = DateScrubber(self.grid_view)
        self.grid_empty = QLabel()
        self.grid_empty.setObjectName("gridEmpty")
        self.grid_empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.grid_empty.setWordWrap(True)
        self.grid_empty.setTextFormat(Qt.TextFormat.RichText)
        grid_row = QWidget()
        gl = QHBoxLayout(grid_row)
        gl.setContentsMargins(0, 0, 0, 0)
        gl.setSpacing(0)
        gl.addWidget(self.grid_view, 1)
        gl.addWidget(self.scrubber)
        self.grid_stack = QStackedWidget()
        self.grid_stack.addWidget(grid_row)
        self.grid_stack.addWidget(self.grid_empty)
        self.person_header = PersonHeader(self.face_loader)
        self.person_header.renameRequested.connect(self.rename_person)
        self.person_header.teachRequested.connect(lambda pid: self.teach(person_id=pid))
        self.person_header.hideRequested.connect(self.hide_person)
        self.person_header.forgetRequested.connect(self.forget_person)
        self.person_header.rejectFaces.connect(self.reject_faces)
        self.person_header.moveFaces.connect(self.move_faces)
        self.person_header.nameRequested.connect(self.name_group)
        self.concept_header = ConceptHeader()
        self.concept_header.teachRequested.connect(lambda cid: self.teach(concept_id=cid))
        self.concept_header.retrainRequested.connect(self.retrain_concept)
        self.concept_header.renameRequested.connect(self.rename_concept)
        self.concept_header.removeRequested.connect(self.remove_concept)
        self.search_header = QWidget()
        self.search_header.setObjectName("searchHeader")
        sh = QVBoxLayout(self.search_header)
        sh.setContentsMargins(14, 8, 14, 6)
        self.search_title = QLabel()
        self.search_title.setObjectName("pageSummary")
        self.search_title.setWordWrap(True)
        self.search_chips = ChipBar()
        self.search_chips.activated.connect(self._on_chip)
        self.search_notes = QLabel()
        self.search_notes.setObjectName("searchNotes")
        self.search_notes.setWordWrap(True)
        sh.addWidget(self.search_chips)
        sh.addWidget(self.search_title)
        sh.addWidget(self.search_notes)
        self.grid_page = QWidget()
        self.grid_page.setObjectName("gridPage")
        gp = QVBoxLayout(self.grid_page)
        gp.setContentsMargins(0, 0, 0, 0)
        gp.setSpacing(0)
        for w in (self.person_header, self.concept_header, self.search_header):
            gp.addWidget(w)
            w.hide()
        gp.addWidget(self.grid_stack, 1)

        self.people_page = PeoplePage(self.face_loader)
        self.people_page.nameRequested.connect(self.name_group)
        self.people_page.rejectRequested.connect(self.reject_suggestion)
        self.people_page.hideRequested.connect(lambda gid: self.hide_person(gid, True))
        self.people_page.hideSmallRequested.connect(self.hide_small_groups)
        self.people_page.mergeRequested.connect(self.merge_people)
        self.people_page.openRequested.connect(lambda pid: self.navigate(PERSON, pid))
        self.people_page.showHiddenChanged.connect(lambda _on: self.load_people_page())
        self.person_header.set_completer(self.people_page.names_model)
        self.things_page = ThingsPage(self.loader)
        self.things_page.openRequested.connect(lambda cid: self.navigate(CONCEPT, cid))
        self.things_page.nameRequested.connect(self.name_thing)
        self.things_page.nameSuggestion.connect(self.name_thing)
        self.things_page.showSuggestion.connect(self._show_photo_ids)
        self.full_view = FullView(self.library.paths)
        self.full_view.closeRequested.connect(self.close_full_view)
        self.full_view.stepRequested.connect(self._full_view_step)

        self.empty_page = self._make_empty_page()
        self.center = QStackedWidget()
        self.center.setObjectName("center")
        for page in (self.empty_page, self.grid_page, self.people_page, self.things_page, self.full_view):
            self.center.addWidget(page)

        self.detail = DetailPane(self, self.library.paths)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("mainSplitter")
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self.center)
        splitter.addWidget(self.detail)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 0)
        splitter.setSizes([230, 730, 320])
        splitter.setCollapsible(1, False)
        self.setCentralWidget(splitter)
        self.splitter = splitter

        # toolbar: folders, indexing | search | size
        tb = QToolBar("Main")
        tb.setObjectName("mainToolBar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        tb.setIconSize(QSize(18, 18))
        tb.addAction(self.add_folder_action)
        tb.addAction(self.index_action)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        tb.addWidget(spacer)
        self.search_edit = QLineEdit()
        self.search_edit.setObjectName("searchEdit")
        self.search_edit.setPlaceholderText("Search: names, things, words, places, 2019…  (Ctrl+F)")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.setMinimumWidth(300)
        self.search_edit.setMaximumWidth(460)
        self.search_edit.textChanged.connect(self._on_search_text)
        self.search_edit.returnPressed.connect(self._on_search_enter)
        self.search_edit.installEventFilter(self)
        self._search_names = QStringListModel(self)
        completer = QCompleter(self._search_names, self.search_edit)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchStartsWith)
        completer.setCompletionMode(QCompleter.CompletionMode.InlineCompletion)
        self.search_edit.setCompleter(completer)
        tb.addWidget(self.search_edit)
        spacer2 = QWidget()
        spacer2.setFixedWidth(16)
        tb.addWidget(spacer2)
        self.zoom_slider = QSlider(Qt.Orientation.Horizontal)
        self.zoom_slider.setObjectName("zoomSlider")
        self.zoom_slider.setRange(MIN_THUMB_PX, MAX_THUMB_PX)
        self.zoom_slider.setSingleStep(16)
        self.zoom_slider.setPageStep(32)
        self.zoom_slider.setValue(DEFAULT_THUMB_PX)
        self.zoom_slider.setFixedWidth(120)
        self.zoom_slider.setToolTip("Thumbnail size (Ctrl + mouse wheel)")
        self.zoom_slider.valueChanged.connect(self.set_thumb_size)
        tb.addWidget(QLabel("Size "))
        tb.addWidget(self.zoom_slider)
        self.addToolBar(tb)
        self.toolbar = tb

        # problems dock, hidden until asked for
        self.problems = ProblemsDock(self)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.problems)
        self.problems.hide()
        self.problems_action = self.problems.toggleViewAction()
        self.problems_action.setText("&Problems")

        # status bar: summary | problems | training | stage, progress, pause, stop
        sb = self.statusBar()
        sb.setObjectName("statusBar")
        sb.setSizeGripEnabled(True)
        self.summary_label = QLabel()
        self.summary_label.setObjectName("summaryLabel")
        sb.addWidget(self.summary_label, 1)
        self.problems_button = QToolButton()
        self.problems_button.setObjectName("problemsButton")
        self.problems_button.setAutoRaise(True)
        self.problems_button.setIcon(themed_icon("dialog-warning", QStyle.StandardPixmap.SP_MessageBoxWarning))
        self.problems_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.problems_button.clicked.connect(self._toggle_problems)
        self.problems_button.hide()
        sb.addPermanentWidget(self.problems_button)
        self.busy_label = QLabel()
        self.busy_label.setObjectName("busyLabel")
        self.busy_label.hide()
        sb.addPermanentWidget(self.busy_label)
        self.training_button = QToolButton()
        self.training_button.setObjectName("trainingButton")
        self.training_button.setAutoRaise(True)
        self.training_button.setToolTip("Teaching the captioner: click to see it")
        self.training_button.clicked.connect(self._show_training)
        self.training_button.hide()
        sb.addPermanentWidget(self.training_button)
        self.stage_label = QToolButton()
        self.stage_label.setObjectName("stageLabel")
        self.stage_label.setAutoRaise(True)
        self.stage_label.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.stage_label.clicked.connect(self.show_stages)
        sb.addPermanentWidget(self.stage_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("progressBar")
        self.progress_bar.setFixedWidth(160)
        self.progress_bar.setMaximumHeight(16)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        sb.addPermanentWidget(self.progress_bar)
        self.pause_button = QToolButton()
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.setDefaultAction(self.pause_action)
        self.pause_button.setAutoRaise(True)
        self.pause_button.hide()
        sb.addPermanentWidget(self.pause_button)
        self.cancel_button = QToolButton()
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setDefaultAction(self.cancel_action)
        self.cancel_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.cancel_button.setAutoRaise(True)
        self.cancel_button.hide()
        sb.addPermanentWidget(self.cancel_button)
        self.stages_popup = StagesPopup(self)

    def _make_empty_page(self) -> QWidget:
        page = QWidget()
        page.setObjectName("emptyPage")
        lay = QVBoxLayout(page)
        lay.addStretch(2)
        icon = QLabel()
        icon.setPixmap(app_icon().pixmap(96, 96))
        icon.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title = QLabel("Your photos, on your computer")
        title.setObjectName("emptyTitle")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text = QLabel("Add a folder of photos to get started. MyVLM Desktop never changes or uploads your files;\n"
                      "everything it learns stays in its library on this computer.")
        text.setObjectName("emptyText")
        text.setAlignment(Qt.AlignmentFlag.AlignCenter)
        text.setWordWrap(True)
        button = QPushButton(self.add_folder_action.icon(), "Add Folder…")
        button.setObjectName("emptyAddButton")
        button.clicked.connect(self.add_folder_action.trigger)
        button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        for w in (icon, title, text):
            lay.addWidget(w)
        lay.addSpacing(8)
        lay.addWidget(button, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addStretch(3)
        return page

    def _build_menus(self) -> None:
        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.add_folder_action)
        m.addSeparator()
        for a in (self.index_action, self.pause_action, self.cancel_action):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.settings_action)
        m.addSeparator()
        m.addAction(self.quit_action)
        m = mb.addMenu("&Edit")
        m.addAction(self.find_action)
        m.addSeparator()
        m.addAction(self.rotate_left_action)
        m.addAction(self.rotate_right_action)
        m = mb.addMenu("&View")
        for a in (self.library_action, self.people_action, self.things_action):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.newest_first_action)
        m.addAction(self.group_months_action)
        m.addAction(self.detail_action)
        m.addAction(self.full_view_action)
        m.addSeparator()
        m.addAction(self.zoom_in_action)
        m.addAction(self.zoom_out_action)
        m.addSeparator()
        themes = m.addMenu("&Appearance")
        for a in self.theme_actions.values():
            themes.addAction(a)
        m.addAction(self.problems_action)
        m = mb.addMenu("&Things")
        m.addAction(self.name_thing_action)
        m = mb.addMenu("&Help")
        m.addAction(self.about_action)
        for a in (self.find_action, self.full_view_action):
            self.addAction(a)

    def _restore_settings(self) -> None:
        s = self._settings
        theme = "system"
        if s is not None:
            geometry = s.value("mainWindow/geometry")
            if geometry is not None:
                self.restoreGeometry(geometry)
            state = s.value("mainWindow/state")
            if state is not None:
                self.restoreState(state)
            splitter = s.value("mainWindow/splitter")
            if splitter is not None:
                self.splitter.restoreState(splitter)
            px = s.value("grid/thumbPx")
            if px is not None:
                try:
                    self.zoom_slider.setValue(int(px))
                except (TypeError, ValueError):
                    pass
            self.newest_first_action.setChecked(str(s.value("grid/newestFirst", "true")).lower() != "false")
            self.group_months_action.setChecked(str(s.value("grid/months", "true")).lower() != "false")
            self.detail_action.setChecked(str(s.value("mainWindow/detail", "true")).lower() != "false")
            searches = s.value(self._searches_key(), [])
            self._recent_searches = [str(x) for x in (searches if isinstance(searches, list) else [searches]) if x]
            theme = str(s.value("theme", "system"))
        self.theme_actions.get(theme, self.theme_actions["system"]).setChecked(True)
        self.detail.setVisible(self.detail_action.isChecked())
        self.problems.hide()
        self.sidebar.set_searches(self._recent_searches)

    def _searches_key(self) -> str:
        import hashlib

        return "searches/" + hashlib.sha1(str(self.library_root).encode()).hexdigest()[:12]

    # -- reading the catalog (quick queries only) -------------------------------------------------------------------

    def shown_photos(self) -> list[Photo]:
        """The photos of the current view, in grid order."""
        kind, key = self._view
        if kind == SEARCH:
            if self._search is None:
                return []
            return [self._by_id[i] for i in self._search.ids if i in self._by_id]
        ok = [p for p in self._all_photos if p.status == OK]
        if kind == FOLDER:
            ok = [p for p in ok if p.folder_id == key]
        elif kind == PERSON:
            ids = {r["photo_id"] for r in self.library.catalog.query(
                "SELECT DISTINCT photo_id FROM faces WHERE person_id = ?", [key])}
            ok = [p for p in ok if p.id in ids]
        elif kind == CONCEPT:
            reg = self.library.concepts()
            ids = set(reg.photos_with(key)) | {e["photo_id"] for e in reg.examples(key) if e.get("photo_id")}
            ok = [p for p in ok if p.id in ids]
        elif kind == "photos":
            wanted = set(key)
            ok = [p for p in ok if p.id in wanted]
        if self._newest_first:
            ok.reverse()
        return ok

    @Slot()
    def refresh(self) -> None:
        """Re-read folders, photos, people, things and problems (on the reader thread: for a big library the read
        takes longer than a frame) and update the views in place when the answer comes."""
        if self._closing:
            return
        self._live_refresh.stop()
        if self._reading:
            self._read_again = True
            return
        self._reading = True
        self._read_started = time.perf_counter()
        self.reader_thread.call(read_catalog, self._on_catalog_read, self._on_catalog_read_failed,
                                label="read the catalog")

    def refresh_now(self) -> None:
        """The same, read on the GUI thread at once (start-up, a folder just added)."""
        if self._closing:
            return
        self._live_refresh.stop()
        self._read_started = time.perf_counter()
        self._apply_catalog(read_catalog(self.library))

    @property
    def refreshing(self) -> bool:
        """A catalog read is on its way (tests wait for it)."""
        return self._reading

    def _reload_pages(self) -> None:
        """After the library changed: the People or Things page on show is rebuilt, a search on show run again."""
        kind, _ = self._view
        if kind == PEOPLE:
            self.load_people_page()
        elif kind == THINGS:
            self.load_things_page()
        elif kind == SEARCH:
            self.search.refresh()

    @Slot()
    def _poll_catalog(self) -> None:
        """Follow the catalog: when another process (a `myvlm index` in a terminal, the indexing process) or one
        of the window's own threads committed, read it again and update what is shown in place (the grid keeps
        its scroll and selection; pages rebuild only when their content changed)."""
        if self._closing:
            return
        version = self.library.catalog_version()
        if version == self._catalog_version:
            return
        self._catalog_version = version
        if self._live_refresh.isActive():
            return  # a re-read is already on its way (indexing in the app)
        self.refresh()
        self._reload_pages()

    def _on_catalog_read(self, data: CatalogView) -> None:
        self._reading = False
        if self._closing:
            return
        self._apply_catalog(data)
        if self._read_again:
            self._read_again = False
            self.refresh()

    def _on_catalog_read_failed(self, exc: BaseException) -> None:
        self._reading = False
        log.warning("reading the catalog failed: %s", user_message(exc))
        if self._read_again and not self._closing:
            self._read_again = False
            self.refresh()

    def _apply_catalog(self, data: CatalogView) -> None:
        started = time.perf_counter()
        status = self._status = data.status
        self._all_photos = data.photos
        self._by_id = {p.id: p for p in self._all_photos}
        counts: dict[int | None, FolderCounts] = {None: FolderCounts()}
        for p in self._all_photos:
            c = counts.setdefault(p.folder_id, FolderCounts())
            if p.status == OK:
                c.photos += 1
                counts[None].photos += 1
            if p.last_error is not None:
                c.problems += 1
                counts[None].problems += 1
        self.folder_model.set_status(status, counts)
        kind, key = self._view
        if kind == FOLDER and self.folder_model.row_of(key) is None:
            self._view = (LIBRARY, None)  # that folder is no longer watched
        self.sidebar.set_people(data.named, data.unnamed_groups)
        self.sidebar.set_things(data.things)
        self._names = [p["name"] for p in data.named] + [t["name"] for t in data.things]
        self._search_names.setStringList(self._names)
        self.sidebar.select(*self._sidebar_target())
        self._refresh_view_content()
        self.problems.set_errors(status["errors"])
        self._update_problems_button()
        self._update_summary(status)
        self._show_center()
        apply_ms = (time.perf_counter() - started) * 1000
        self.refresh_ms.append(apply_ms)
        # Big libraries: refresh less often while indexing, so reading the catalog stays a small share of the time.
        total_ms = (time.perf_counter() - self._read_started) * 1000
        self._live_interval_ms = max(LIVE_REFRESH_MS, int(10 * total_ms))

    def _sidebar_target(self) -> tuple[str, Any]:
        kind, key = self._view
        return (LIBRARY, None) if kind == "photos" else (kind, key)

    def _refresh_view_content(self) -> None:
        kind, key = self._view
        self.grid_model.group_by_month = self.group_months_action.isChecked() and kind != SEARCH
        scrubber = self.group_months_action.isChecked() and kind != SEARCH
        self.scrubber.setVisible(scrubber)
        self.grid_view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff if scrubber
                                                  else Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.grid_model.set_photos(self.shown_photos(), self._search.why if kind == SEARCH and self._search else None)
        self.person_header.setVisible(kind == PERSON)
        self.concept_header.setVisible(kind == CONCEPT)
        self.search_header.setVisible(kind == SEARCH)
        if kind == PERSON:
            self._fill_person_header(key)
        elif kind == CONCEPT:
            self._fill_concept_header(key)
        self._update_grid_empty()
        self._on_selection()

    def _fill_person_header(self, person_id: int) -> None:
        people = self.library.people()
        try:
            person = people.person(person_id)
        except ValueError:
            self._view = (PEOPLE, None)
            return
        faces = [f for f in people.faces_of(person_id) if f["state"] != "ignored"]
        photos = len({f["photo_id"] for f in faces})
        targets = [(p["id"], p["name"]) for p in people.people(named=True)]
        self.person_header.set_person(person, faces, photos, targets)

    def _fill_concept_header(self, concept_id: int) -> None:
        try:
            c = self.library.concepts().get(concept_id)
        except ValueError:
            self._view = (THINGS, None)
            return
        self.concept_header.set_info(concept_info(self.library, c))

    def _update_grid_empty(self) -> None:
        kind, _key = self._view
        if self.grid_model.rowCount():
            self.grid_stack.setCurrentIndex(0)
            return
        if kind == SEARCH:
            text = self._search_empty_text()
        elif kind == PERSON:
            text = "No photo of them is ready to show yet."
        elif kind == CONCEPT:
            text = "No photo shows it yet: it is recognised in photos once its training is done."
        elif self.indexing:
            text = "<h3>Getting your photos ready…</h3>Thumbnails appear here as they are made."
        else:
            text = "<h3>No photos here</h3>This folder has no photo the app can show (see Problems, if any)."
        self.grid_empty.setText(text)
        self.grid_stack.setCurrentIndex(1)

    def _search_empty_text(self) -> str:
        out = self._search
        q = _html(self.search.text.strip())
        if out is None:
            return "Searching…"
        if out.error:
            return f"<h3>The search failed</h3>{_html(out.error)}"
        tips = ["a name: " + ", ".join(_html(n) for n in self._names[:4]) if self._names else
                "a person's name, once you named them under People",
                "words from captions (“beach”, “birthday cake”)", "a year or a month (“2019”, “July 2021”)",
                "<code>folder:holidays</code>"]
        notes = "".join(f"<br><i>{_html(n)}</i>" for n in out.notes)
        return (f"<h3>No photo matches “{q}”</h3>Try {', '.join(tips[:-1])}, or {tips[-1]}."
                f"{notes}")

    def _show_center(self) -> None:
        if self.center.currentWidget() is self.full_view:
            return
        kind, _ = self._view
        if not self._status["folders"] and kind not in (PEOPLE, THINGS):
            self.center.setCurrentWidget(self.empty_page)
        elif kind == PEOPLE:
            self.center.setCurrentWidget(self.people_page)
        elif kind == THINGS:
            self.center.setCurrentWidget(self.things_page)
        else:
            self.center.setCurrentWidget(self.grid_page)
        # the info pane belongs to the photos: shown beside a grid, not beside the People or Things overview
        show = self.detail_action.isChecked() and self.center.currentWidget() is self.grid_page
        if show != self.detail.isVisible():
            self.detail.setVisible(show)
            if show:
                self._on_selection()

    def _update_summary(self, status: dict[str, Any]) -> None:
        n = self.grid_model.rowCount()
        folders = len(status["folders"])
        offline = sum(1 for f in status["folders"] if f["status"] == "offline")
        kind, _ = self._view
        if not folders:
            text = "No folders yet"
        elif kind == SEARCH:
            text = f"{_count(n, 'photo')} found"
        else:
            text = f"{_count(n, 'photo')}"
            if kind == LIBRARY:
                text += f" in {_count(folders, 'folder')}"
            if offline:
                text += f" · {offline} offline"
        selected = len(self.grid_view.selectionModel().selectedIndexes())
        if selected > 1:
            text += f" · {selected:,} selected"
        self.summary_label.setText(text)

    def _update_problems_button(self) -> None:
        n = self.problems.count()
        self.problems_button.setVisible(n > 0)
        self.problems_button.setText(_count(n, "problem"))
        errors = self.problems.errors()
        tip = "\n".join(f"{os.path.basename(e['path'])}: {e['error']}" for e in errors[:10])
        if n > 10:
            tip += f"\n… and {n - 10} more"
        self.problems_button.setToolTip(tip + "\n\nClick to show the Problems panel" if n else "")

    def error_count(self) -> int:
        return self.problems.count()

    # -- navigation ---------------------------------------------------------------------------------------------------

    @Slot(str, object)
    def navigate(self, kind: str, key: Any = None) -> None:
        """Show a view: library / folder / people / person / things / concept / search."""
        if kind == PERSON_CHIP:
            kind = PERSON
        elif kind == THING_CHIP:
            kind = CONCEPT
        if kind == SEARCH:
            self.search_edit.setText(str(key))
            self._on_search_enter()
            return
        if self.center.currentWidget() is self.full_view:
            self.close_full_view()
        if self._view[0] != SEARCH and kind != SEARCH:
            self._previous_view = self._view
        if kind != SEARCH and self.search_edit.text():
            self.search_edit.blockSignals(True)
            self.search_edit.clear()
            self.search_edit.blockSignals(False)
        changed = self._view != (kind, key)
        if changed:
            self._clear_grid_selection()
        self._view = (kind, key)
        self.sidebar.select(*self._sidebar_target())
        if kind == PEOPLE:
            self.load_people_page()
        elif kind == THINGS:
            self.load_things_page()
        self._refresh_view_content()
        if changed:
            self.grid_view.scrollToTop()
        self._show_center()
        self._update_summary(self._status)

    @property
    def view(self) -> tuple[str, Any]:
        return self._view

    def _clear_grid_selection(self) -> None:
        """Another page starts with nothing selected: photos it shares with the last page would otherwise stay
        selected (the grid updates in place), and the info pane would go on saying "3 photos selected"."""
        self.grid_view.selectionModel().clear()

    def _show_photo_ids(self, ids: list[int]) -> None:
        self.navigate("photos", tuple(ids))

    def load_people_page(self) -> None:
        hidden = self.people_page.show_hidden.isChecked()
        self.actions_thread.call(lambda lib: load_people(lib, include_hidden=hidden), self._on_people_loaded,
                                 self._failed("People could not be read"), label="people page")

    def _on_people_loaded(self, data: PeopleData) -> None:
        if data == self._people_data and self.people_page.data is not None:
            return  # unchanged: keep the cards as they are (a name being typed, the scroll position)
        self._people_data = data
        self.people_page.set_data(data)

    def load_things_page(self) -> None:
        self.models_thread.call(load_things, self._on_things_loaded, self._failed("Things could not be read"),
                                label="things page")

    def _on_things_loaded(self, data: ThingsData) -> None:
        if data == self._things_data and self.things_page.data is not None:
            return  # unchanged: keep the page as it is
        self._things_data = data
        self.things_page.set_data(data)

    def _after_change(self, message: str = "") -> Any:
        """A callback for a finished change: show it everywhere."""
        def done(_result: Any = None) -> None:
            if self._closing:
                return
            if message:
                self.statusBar().showMessage(message, 6000)
            self.refresh()
            self._reload_pages()
        return done

    def _failed(self, title: str) -> Any:
        def failed(exc: BaseException) -> None:
            if not self._closing:
                show_error(self, title, user_message(exc))
        return failed

    # -- selection, detail, full view ---------------------------------------------------------------------------------

    def current_photo(self) -> Photo | None:
        idx = self.grid_view.currentIndex()
        if not idx.isValid() or not self.grid_view.selectionModel().isSelected(idx):
            rows = self.grid_view.selectionModel().selectedIndexes()
            if not rows:
                return None
            idx = rows[0]
        return item_data(idx, PhotoRole)

    def selected_photo_ids(self) -> list[int]:
        return [item_data(i, PhotoRole).id for i in self.grid_view.selectionModel().selectedIndexes()]

    def select_photo(self, photo_id: int) -> bool:
        row = self.grid_model.row_of(photo_id)
        if row is None:
            return False
        idx = self.grid_model.index(row)
        self.grid_view.selectionModel().setCurrentIndex(idx, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.grid_view.scrollTo(idx)
        return True

    def _on_selection(self) -> None:
        if self._closing or not self.detail.isVisible() and self.center.currentWidget() is not self.full_view:
            self._update_summary(self._status)
            return
        selected = self.selected_photo_ids()
        photo = self.current_photo() if len(selected) == 1 else None
        if photo is None:
            self.detail.show_photo(None, len(selected))
        else:
            self._show_detail(photo, reload_image=True)
        self._update_summary(self._status)

    def _show_detail(self, photo: Photo, reload_image: bool = True) -> None:
        lib = self.library
        self.detail.show_photo(photo, faces=lib.people().faces_in_photo(photo.id),
                               captions=lib.captions().captions(photo.id), answers=lib.captions().answers(photo.id),
                               concepts=lib.concepts().signals(photo.id), can_locate=lib.can_locate(),
                               reload_image=reload_image)

    def _reload_detail(self) -> None:
        photo = self.detail.photo
        if photo is not None:
            photo = self._by_id.get(photo.id, photo)
            self._show_detail(photo, reload_image=False)

    def open_full_view(self) -> None:
        photo = self.current_photo()
        if photo is None:
            if self.grid_model.rowCount() == 0:
                return
            self.select_photo(self.grid_model.photo(0).id)
            photo = self.current_photo()
        if photo is None:
            return
        self._detail_was_visible = self.detail.isVisible()
        self.sidebar.hide()
        self.detail.hide()
        self.center.setCurrentWidget(self.full_view)
        self._show_full(photo)
        self.full_view.setFocus()

    def _show_full(self, photo: Photo) -> None:
        faces = [FaceBox(f["id"], f["x"], f["y"], f["w"], f["h"], f.get("person_id"), f.get("person_name"),
                         f.get("state", "")) for f in self.library.people().faces_in_photo(photo.id)
                 if f.get("state") != "ignored"]
        row = self.grid_model.row_of(photo.id)
        position = f"{(row or 0) + 1:,} of {self.grid_model.rowCount():,}"
        self.full_view.show_photo(photo, faces, self.library.captions().caption(photo.id) or "", position)

    def close_full_view(self) -> None:
        if self.center.currentWidget() is not self.full_view:
            return
        self.sidebar.show()
        self.detail.setVisible(getattr(self, "_detail_was_visible", True))
        self._show_center()
        if self.center.currentWidget() is self.full_view:
            self.center.setCurrentWidget(self.grid_page)
        self.grid_view.setFocus()
        self._on_selection()

    def toggle_full_view(self) -> None:
        if self.center.currentWidget() is self.full_view:
            self.close_full_view()
        else:
            self.open_full_view()

    def _full_view_step(self, step: int) -> None:
        photo = self.full_view.photo
        if photo is None:
            return
        row = self.grid_model.row_of(photo.id)
        if row is None:
            return
        new = max(0, min(self.grid_model.rowCount() - 1, row + step))
        if new != row:
            p = self.grid_model.photo(new)
            self.select_photo(p.id)
            self._show_full(p)

    def eventFilter(self, obj: Any, event: Any) -> bool:
        from PySide6.QtCore import QEvent

        if event.type() == QEvent.Type.KeyPress:
            if obj is self.grid_view and event.key() == Qt.Key.Key_Space:
                self.open_full_view()
                return True
            if obj is self.grid_view and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.open_full_view()
                return True
            if obj is self.search_edit and event.key() == Qt.Key.Key_Escape:
                self.search_edit.clear()
                self.grid_view.setFocus()
                return True
            if obj is self.search_edit and event.key() == Qt.Key.Key_Down:
                self.grid_view.setFocus()
                if self.grid_model.rowCount() and not self.grid_view.currentIndex().isValid():
                    self.select_photo(self.grid_model.photo(0).id)
                return True
        return super().eventFilter(obj, event)

    def _grid_menu(self, pos: Any) -> None:
        ids = self.selected_photo_ids()
        if not ids:
            return
        menu = QMenu(self)
        if len(ids) == 1:
            menu.addAction("Full View", self.open_full_view)
            menu.addAction(self.rotate_left_action)
            menu.addAction(self.rotate_right_action)
            menu.addSeparator()
        menu.addAction(self.name_thing_action)
        menu.exec(self.grid_view.viewport().mapToGlobal(pos))

    # -- the detail pane's actions (DetailActions) ---------------------------------------------------------------------

    def save_caption(self, photo_id: int, text: str) -> None:
        self.actions_thread.call(lambda lib: lib.captions().put_user_caption(photo_id, text),
                                 lambda _r: (self._reload_detail(), self.search.refresh(),
                                             self.statusBar().showMessage("Caption saved", 4000)),
                                 self._failed("The caption was not saved"), label="save caption")

    def ask_question(self, photo_id: int, question: str) -> None:
        if self._asking:
            return
        self._asking = True
        self.detail.set_asking(True, "Thinking… (the first question loads the model: this can take a while)")

        def ask(lib: Library) -> dict[str, Any]:
            g = lib.personalizer().ask(photo_id, question)
            store = lib.captions()
            store.put_answer(photo_id, question, g.template, model=g.model, concept_ids=g.concepts,
                             instant=g.instant)
            return {"answer": store.render(g.template), "model": g.model}

        def done(result: dict[str, Any]) -> None:
            self._asking = False
            self.detail.set_asking(False, "")
            self.detail.ask_edit.clear()
            self._reload_detail()
            self.search.refresh()

        def failed(exc: BaseException) -> None:
            self._asking = False
            self.detail.set_asking(False, "")
            self._failed("No Answer")(exc)

        self.models_thread.call(ask, done, failed, label="ask")

    def locate_concept(self, photo_id: int, concept_id: int, name: str) -> None:
        """ "Where is Bella?": MiniGPT-v2's box, asked on the models thread; Stop ends it at the next word."""
        import threading

        if self._locating is not None:
            return
        stop = threading.Event()
        self._locating = stop
        self.detail.set_locating(True, f"Looking for {name}… (the first time loads the model: this can take a "
                                       "while)")

        def find(lib: Library) -> dict[str, Any]:
            from engine.personalize.locate import locate

            return locate(lib.personalizer(), photo_id, concept_id, cancel=stop).as_dict()

        def done(result: dict[str, Any]) -> None:
            self._locating = None
            self.detail.set_locating(False, "")
            self.detail.show_location(photo_id, name, result)

        def failed(exc: BaseException) -> None:
            from engine.personalize.locate import CannotLocate
            from engine.personalize.minigpt_v2 import LocateCancelled

            self._locating = None
            if isinstance(exc, LocateCancelled):
                self.detail.set_locating(False, "Stopped.")
            elif isinstance(exc, CannotLocate):   # not an error: this library's captioner has no boxes
                self.detail.set_locating(False, str(exc) + ".")
            else:
                self.detail.set_locating(False, "")
                self._failed("Not Found")(exc)

        self.models_thread.call(find, done, failed, label=f"locate {name}")

    def stop_locating(self) -> None:
        if self._locating is not None:
            self._locating.set()
            self.detail.where_status.setText("Stopping…")

    def rotate_current(self, degrees: int) -> None:
        photo = self.current_photo()
        if photo is None:
            return
        self.actions_thread.call(lambda lib: lib.rotate(photo.id, degrees),
                                 lambda _r: (self.refresh(), self._on_selection(), self.start_indexing(scan=False)),
                                 self._failed("The photo was not turned"), label="rotate")

    def face_menu(self, face: FaceBox, photo: Photo, global_pos: Any) -> None:
        menu = QMenu(self)
        if face.person_id and face.name:
            menu.addAction(f"Show {face.name}", lambda: self.navigate(PERSON, face.person_id))
            menu.addAction(f"Not {face.name}", lambda: self.reject_faces([face.face_id], face.person_id))
            if face.state == "suggested":
                menu.addAction(f"Yes, {face.name}", lambda: self._people_call(
                    lambda lib: lib.people().confirm(face.face_id), f"Confirmed {face.name}"))
        else:
            menu.addAction("Who Is This?…", lambda: self._name_face(face))
            if face.person_id:
                menu.addAction("Show This Group", lambda: self.navigate(PERSON, face.person_id))
        menu.addSeparator()
        menu.addAction("Not a Face to Track", lambda: self._people_call(
            lambda lib: lib.people().ignore_face(face.face_id), "The face is ignored"))
        menu.exec(global_pos)

    def _name_face(self, face: FaceBox) -> None:
        name = self.prompts.ask_name(self, "Who Is This?", "Type a name (a name you already use adds this face "
                                     "to that person).", self._person_names())
        if not name:
            return
        if face.person_id:
            self.name_group(face.person_id, name, [face.face_id])  # the one face the user looked at
        else:
            self._people_call(lambda lib: lib.people().create(name, [face.face_id]), f"Named {name}")

    def _person_names(self) -> list[str]:
        rows = self.library.catalog.query("SELECT name FROM people WHERE name IS NOT NULL ORDER BY name COLLATE NOCASE")
        return [r["name"] for r in rows]

    # -- people ---------------------------------------------------------------------------------------------------------

    def _people_call(self, fn: Any, message: str, after: Any = None) -> None:
        done = self._after_change(message)

        def finished(result: Any) -> None:
            done(result)
            if after is not None:
                after(result)
            self._reload_detail()

        self.actions_thread.call(fn, finished, self._failed("That did not work"), label=message)

    def name_group(self, group_id: int, name: str, face_ids: list[int] | None = None) -> None:
        """`face_ids`: the faces the user saw; naming confirms those (None: the group as it stands)."""
        name = " ".join(name.split())
        if not name:
            return

        def after(person_id: int) -> None:
            if self._view == (PERSON, group_id) and person_id != group_id:
                self.navigate(PERSON, person_id)  # merged into someone else: show them
            if self._auto_index:   # their photos' captions use the name now (engine/personalize/instant.py)
                self.start_indexing(scan=False, stages=["captions"])

        shown = list(face_ids) if face_ids else None
        self._people_call(lambda lib: lib.people().name(group_id, name, shown), f"Named {name}", after)

    def reject_suggestion(self, group_id: int, person_id: int) -> None:
        self._people_call(lambda lib: lib.reject_suggestion(group_id, person_id), "Noted: not them")

    def hide_person(self, person_id: int, hidden: bool = True) -> None:
        def after(_r: Any) -> None:
            if hidden and self._view == (PERSON, person_id):
                self.navigate(PEOPLE, None)
        self._people_call(lambda lib: lib.people().hide(person_id, hidden), "Hidden" if hidden else "Shown again",
                          after)

    def hide_small_groups(self, max_faces: int) -> None:
        self._people_call(lambda lib: len(lib.people().hide_small(max_faces)),
                          f"Hid every unnamed group of up to {max_faces} faces")

    def merge_people(self, source_id: int, target_id: int) -> None:
        self._people_call(lambda lib: lib.people().merge(target_id, [source_id]), "Merged")

    def rename_person(self, person_id: int) -> None:
        current = self.library.people().person(person_id).get("name") or ""
        name = self.prompts.ask_name(self, "Rename", "A new name (a name you already use merges the two).",
                                     self._person_names(), current)
        if name and name != current:
            self.name_group(person_id, name)

    def forget_person(self, person_id: int) -> None:
        name = self.library.people().person(person_id).get("name") or "this group"
        if not self.prompts.confirm(self, "Forget This Person",
                                    f"Forget {name}? Their name and face data are deleted from the library; the "
                                    "photos stay. This cannot be undone."):
            return
        self._people_call(lambda lib: lib.people().forget(person_id), f"Forgot {name}",
                          lambda _r: self.navigate(PEOPLE, None))

    def reject_faces(self, face_ids: list[int], person_id: int) -> None:
        def reject(lib: Library) -> int:
            people = lib.people()
            with lib.catalog.write():
                for fid in face_ids:
                    people.reject(fid, person_id)
            return len(face_ids)
        self._people_call(reject, "Noted: not them")

    def move_faces(self, face_ids: list[int], person_id: int) -> None:
        self._people_call(lambda lib: lib.people().move_faces(face_ids, person_id), "Moved")

    # -- things -------------------------------------------------------------------------------------------------------

    def name_thing(self, photo_ids: list[int] | None = None) -> None:
        ids = list(photo_ids) if photo_ids else self.selected_photo_ids()
        if not ids:
            show_error(self, "Select Photos First", "Select a few photos that show the thing (4 are plenty; Ctrl+click "
                       "to pick several), then choose Name This Thing… again.")
            return
        names = [r["name"] for r in self.library.catalog.query(
            "SELECT name FROM concepts WHERE kind = 'object' ORDER BY name COLLATE NOCASE")]
        name = self.prompts.name_thing(self, len(ids), names)
        if not name:
            return

        def learn(lib: Library) -> int:
            reg = lib.concepts()
            existing = next((c for c in reg.list("object") if c.name.casefold() == name.casefold()), None)
            if existing is None:  # made with its head, or not at all: no half-made thing in the list
                return reg.add_object_trained(name, ids, lib.train_concept_head).id
            reg.add_examples(existing.id, ids)
            lib.train_concept_head(existing.id)
            return existing.id

        self._set_busy(f"learn:{name}", f"Learning {name}…")

        def done(cid: int) -> None:
            self._set_busy(f"learn:{name}", None)
            self._after_change(f"Learnt {name}")(cid)
            self.navigate(CONCEPT, cid)

        def failed(exc: BaseException) -> None:
            self._set_busy(f"learn:{name}", None)
            self.refresh()
            self._failed(f"{name} Was Not Learnt")(exc)

        self.models_thread.call(learn, done, failed, label=f"learn {name}")

    def retrain_concept(self, concept_id: int) -> None:
        self._set_busy(f"retrain:{concept_id}", "Retraining…")

        def done(_c: Any) -> None:
            self._set_busy(f"retrain:{concept_id}", None)
            self._after_change("Retrained")(None)

        def failed(exc: BaseException) -> None:
            self._set_busy(f"retrain:{concept_id}", None)
            self._failed("Not Retrained")(exc)

        self.models_thread.call(lambda lib: lib.train_concept_head(concept_id), done, failed, label="retrain")

    def rename_concept(self, concept_id: int) -> None:
        current = self.library.concepts().get(concept_id).name
        name = self.prompts.ask_name(self, "Rename", "A new name:", [], current)
        if name and name != current:
            self._people_call(lambda lib: lib.concepts().rename(concept_id, name), f"Renamed {name}")

    def remove_concept(self, concept_id: int) -> None:
        name = self.library.concepts().get(concept_id).name
        if not self.prompts.confirm(self, "Forget This Thing", f"Forget {name}? What the app learnt about it is "
                                    "deleted; your photos stay."):
            return
        self._people_call(lambda lib: lib.concepts().remove(concept_id), f"Forgot {name}",
                          lambda _r: self.navigate(THINGS, None))

    def _set_busy(self, key: str, text: str | None) -> None:
        if text is None:
            self._busy_things.discard(key)
        else:
            self._busy_things.add(key)
            self.busy_label.setText(text)
        self._update_busy()

    def _update_busy(self) -> None:
        self.busy_label.setVisible(bool(self._busy_things))

    # -- personalise ---------------------------------------------------------------------------------------------------

    def teach(self, concept_id: int | None = None, person_id: int | None = None) -> TeachDialog:
        if person_id is not None and concept_id is None:
            c = self.library.concepts().for_person(person_id)
            concept_id = c.id if c is not None else None
        if concept_id is not None and concept_id in self._teach_dialogs:
            dlg = self._teach_dialogs[concept_id]
            dlg.show()
            dlg.raise_()
            return dlg
        if concept_id is not None:
            title = self.library.concepts().get(concept_id).name
        else:
            title = self.library.people().person(person_id).get("name") or "this person"
        dlg = TeachDialog(self.trainer, self.models_thread, self.loader, title=title, concept_id=concept_id,
                          person_id=person_id, parent=self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        dlg.finished.connect(lambda _r, d=dlg: self._teach_closed(d))
        if concept_id is not None:
            self._teach_dialogs[concept_id] = dlg
        dlg.show()
        dlg.prepare()
        return dlg

    def _teach_closed(self, dlg: TeachDialog) -> None:
        if not (self.trainer.running and self.trainer.concept_id == dlg.concept_id):
            self._teach_dialogs.pop(dlg.concept_id, None) if dlg.concept_id is not None else None
            dlg.deleteLater()

    def _show_training(self) -> None:
        cid = self.trainer.concept_id
        if cid is not None and cid in self._teach_dialogs:
            self._teach_dialogs[cid].show()
            self._teach_dialogs[cid].raise_()

    @Slot(object)
    def _on_training_progress(self, p: Any) -> None:
        cid = self.trainer.concept_id
        if cid is not None:
            dlg = self._teach_dialogs.get(cid)
            if dlg is None and cid not in self._teach_dialogs:
                pass
        name = ""
        if cid is not None:
            try:
                name = self.library.concepts().get(cid).name
            except ValueError:
                pass
        self.training_button.setText(f"Teaching {name} · {p.step * 100 // max(1, p.steps)}% · "
                                     f"{fmt_seconds(p.eta_s)} left")
        self.training_button.show()

    @Slot(object)
    def _on_training_finished(self, outcome: TrainingOutcome) -> None:
        self.training_button.hide()
        if outcome.concept_id is not None:
            # the dialog got its answer already; a closed one is not kept
            dlg = self._teach_dialogs.get(outcome.concept_id)
            if dlg is not None and not dlg.isVisible():
                self._teach_dialogs.pop(outcome.concept_id, None)
                dlg.deleteLater()
        if self._closing:
            return
        if outcome.ok:
            self.statusBar().showMessage("Captioner taught: re-captioning the photos it is in", 8000)
            self.start_indexing(scan=False, stages=["captions"])
        self.refresh()

    # -- search ---------------------------------------------------------------------------------------------------------

    def focus_search(self) -> None:
        if self.center.currentWidget() is self.full_view:
            self.close_full_view()
        self.search_edit.setFocus()
        self.search_edit.selectAll()

    def _on_search_text(self, text: str) -> None:
        if not text.strip():
            self.search.search("")
            if self._view[0] == SEARCH:
                self._search = None
                self.navigate(*self._previous_view)
            return
        if self._view[0] != SEARCH:
            self._previous_view = self._view
            self._clear_grid_selection()
            self._view = (SEARCH, text)
            self._search = None
            self._refresh_view_content()
            self._show_center()
        self._view = (SEARCH, text)
        self.sidebar.select(SEARCH, text)  # the person or folder searched from is no longer what is shown
        self.search_title.setText("Searching…")
        self.search.search(text)

    def _on_search_enter(self) -> None:
        text = " ".join(self.search_edit.text().split())
        if not text:
            return
        self.search.search(text, immediately=True)
        if text in self._recent_searches:
            self._recent_searches.remove(text)
        self._recent_searches.insert(0, text)
        del self._recent_searches[MAX_RECENT_SEARCHES:]
        if self._settings is not None:
            self._settings.setValue(self._searches_key(), self._recent_searches)
        self.sidebar.set_searches(self._recent_searches)
        self.sidebar.select(SEARCH, text)

    @Slot(object)
    def _on_search_results(self, out: SearchOutcome) -> None:
        if self._closing or self._view[0] != SEARCH or out.text != self.search.text:
            return
        self._search = out
        self._view = (SEARCH, out.text)
        chips = []
        for name, kind, typed in out.names:
            tip = f"Read “{typed}” as {name}" if typed else f"Only photos with {name}"
            chips.append((name + (f" (for “{typed}”)" if typed else ""), PERSON_CHIP if kind == "person"
                          else THING_CHIP, name, tip))
        self.search_chips.set_chips(chips)
        n = len([i for i in out.ids if i in self._by_id])
        self.search_title.setText("" if not n else f"{_count(n, 'photo')} found · hover over a photo to see why")
        self.search_notes.setText(" ".join(out.notes))
        self.search_notes.setVisible(bool(out.notes))
        self._refresh_view_content()
        self._show_center()
        self._update_summary(self._status)

    def _on_chip(self, kind: str, key: Any) -> None:
        if kind in (PERSON_CHIP, THING_CHIP):
            cat = self.library.catalog
            if kind == PERSON_CHIP:
                pid = cat.scalar("SELECT id FROM people WHERE name = ? COLLATE NOCASE", [key])
                if pid is not None:
                    self.navigate(PERSON, pid)
                    return
            cid = cat.scalar("SELECT id FROM concepts WHERE name = ? COLLATE NOCASE", [key])
            if cid is not None:
                self.navigate(CONCEPT, cid)

    def search_chip_texts(self) -> list[str]:
        return self.search_chips.texts()

    # -- folders --------------------------------------------------------------------------------------------------------

    @Slot()
    def choose_folder(self) -> None:
        """The "Add Folder…" action: ask for a folder, then watch and index it."""
        start = default_pictures_path()
        path = QFileDialog.getExistingDirectory(self, "Add a Folder of Photos", str(start) if start.is_dir() else "")
        if path:
            self.add_folder(path)

    def add_folder(self, path: str | os.PathLike) -> bool:
        try:
            folder = self.library.add_folder(path)
        except (FolderNotFound, ValueError) as exc:
            QMessageBox.warning(self, "Cannot Add Folder", str(exc))
            return False
        log.info("GUI: watching %s", folder.path)
        self._view = (LIBRARY, None)
        self.refresh_now()
        self.search.warm_up()
        self.start_indexing()
        if self.watcher is not None:
            self.watcher.refresh()
        return True

    # -- indexing -------------------------------------------------------------------------------------------------------

    @property
    def indexing(self) -> bool:
        return self.indexer.running

    @Slot()
    def start_indexing(self, scan: bool = True, stages: list[str] | None = None) -> None:
        if self._closing:
            return
        stages = stages or self._stages
        if self.indexer.running:
            # e.g. a folder was added meanwhile: go again when this run ends (a scan covers everything)
            if self._index_again is None or scan:
                self._index_again = {"scan": scan or bool(self._index_again and self._index_again["scan"]),
                                     "stages": None if not stages else stages}
            return
        self._index_again = None
        self.indexer.start(scan=scan, stages=stages)

    @Slot()
    def cancel_indexing(self) -> None:
        if not self.indexer.running:
            return
        self._index_again = None
        self.indexer.cancel()
        self.stage_label.setText("Stopping after the photos in progress…")
        self._update_actions()

    @Slot()
    def toggle_pause(self) -> None:
        if not self.indexer.running:
            return
        if self.indexer.paused:
            self.indexer.resume()
        else:
            self.indexer.pause()

    def _on_paused_changed(self, paused: bool) -> None:
        self._update_actions()
        if paused:
            self.stage_label.setText(self.stage_label.text().split(" · paused")[0] + " · paused")

    @Slot()
    def _on_index_started(self) -> None:
        self.stage_label.setText("Starting…")
        self.progress_bar.setRange(0, 0)
        self.progress_bar.show()
        self.cancel_button.show()
        self.pause_button.show()
        self._update_actions()

    @Slot(object)
    def _on_index_progress(self, ev: ProgressEvent) -> None:
        if self._closing:
            return
        self._last_event = ev
        if self.stages_popup.isVisible():
            self.stages_popup.set_events(self.indexer.stage_events, self._status)
        if self.indexer.cancelling or ev.state == "unavailable":
            return
        label = stage_label(ev.stage)
        if ev.total > 0:
            self.progress_bar.setRange(0, ev.total)
            self.progress_bar.setValue(min(ev.done, ev.total))
            text = f"{label} · {ev.done:,} of {ev.total:,}"
        else:
            self.progress_bar.setRange(0, 0)
            text = f"{label}…"
        if ev.errors:
            text += f" · {_count(ev.errors, 'problem')}"
        if ev.state == "paused" or self.indexer.paused:
            text += " · paused"
        self.stage_label.setText(text)
        self.stage_label.setToolTip((ev.current + "\n\n" if ev.current else "") + "Click for every stage")
        if ev.stage != SCAN and not self._live_refresh.isActive():
            # new thumbnails are ready: show them soon (the very first ones at once), not on every event
            self._live_refresh.start(300 if self.grid_model.rowCount() == 0 else self._live_interval_ms)

    @Slot(object)
    def _on_index_finished(self, result: IndexResult) -> None:
        if self._closing:
            return
        self.progress_bar.hide()
        self.cancel_button.hide()
        self.pause_button.hide()
        self.loader.forget_failures()
        self.face_loader.forget_failures()
        self.refresh()
        if result.error:
            self.stage_label.setText("Indexing failed")
            self.stage_label.setToolTip(result.error)
            show_error(self, "Indexing Stopped", f"Indexing stopped with a problem: {result.error}. What was done is "
                       "kept; Index Now tries again.")
        elif result.cancelled:
            self.stage_label.setText("Stopped · the rest is done next time")
            self.stage_label.setToolTip("")
        else:
            self.stage_label.setText(finished_text(result.unavailable))
            tip = f"Indexed in {result.seconds:.1f} s"
            if result.unavailable:
                tip += "\n\nNot available here:\n" + "\n".join(f"{stage_label(s)}: {why}"
                                                               for s, why in result.unavailable.items())
            self.stage_label.setToolTip(tip + "\n\nClick for every stage")
        self._update_actions()
        self._reload_pages()
        self._reload_detail()
        if not self._indexed_once:
            self._indexed_once = True
            if self._watch_enabled:
                self._start_watching()
        if self._index_again is not None:
            again, self._index_again = self._index_again, None
            QTimer.singleShot(0, lambda: self.start_indexing(scan=again["scan"], stages=again["stages"]))

    def _update_actions(self) -> None:
        running = self.indexer.running
        self.index_action.setEnabled(not running)
        self.cancel_action.setEnabled(running and not self.indexer.cancelling)
        self.pause_action.setEnabled(running and not self.indexer.cancelling)
        paused = self.indexer.paused
        self.pause_action.setText("&Resume Indexing" if paused else "&Pause Indexing")
        self.pause_action.setIcon(themed_icon("media-playback-start" if paused else "media-playback-pause",
                                              QStyle.StandardPixmap.SP_MediaPlay if paused
                                              else QStyle.StandardPixmap.SP_MediaPause))

    def show_stages(self) -> None:
        self.stages_popup.set_events(self.indexer.stage_events, self._status)
        pos = self.stage_label.mapToGlobal(self.stage_label.rect().topLeft())
        self.stages_popup.move(max(0, pos.x() + self.stage_label.width() - self.stages_popup.width()),
                               max(0, pos.y() - self.stages_popup.height() - 4))
        self.stages_popup.show()

    # -- models arriving ------------------------------------------------------------------------------------------------

    def stages_waiting_for_models(self) -> dict[str, str]:
        """The stages that could not run here, stage -> why (their weights are missing, as a rule): what the last
        catalog read says, and what the current or last indexing run reported."""
        waiting: dict[str, str] = {}
        for name, st in (self._status.get("stages") or {}).items():
            if isinstance(st, dict) and st.get("unavailable"):
                waiting[name] = str(st["unavailable"])
        last = self.indexer.last_result
        if last is not None:
            waiting.update(last.unavailable)
        for name, ev in self.indexer.stage_events.items():
            if ev.state == "unavailable":
                waiting[name] = ev.current
        if self._stages is not None:  # a window opened with `stages=` runs only those
            waiting = {name: why for name, why in waiting.items() if name in self._stages}
        return waiting

    @Slot(list)
    def on_models_changed(self, rows: list | None = None) -> None:
        """Settings ▸ Models downloaded, imported or removed a model. The stages that were waiting for weights are
        asked again (off the GUI thread) whether they can run; if one can, the pipeline runs again the way Index Now
        runs it, without the rescan (the files did not change): mode "missing" does the waiting work and nothing
        that is done already. A run in progress is followed by that one."""
        if self._closing:
            return
        waiting = self.stages_waiting_for_models()
        if not waiting:
            return

        def check(lib: Library) -> dict[str, str | None]:
            return {name: st.get("unavailable") for name, st in lib.status()["stages"].items()}

        def checked(now: dict[str, str | None]) -> None:
            if self._closing:
                return
            order = dict.fromkeys(STAGE_ORDER + sorted(waiting))  # pipeline order, then any other stage
            ready = [name for name in order if name in waiting and name in now and not now[name]]
            if not ready:
                return
            log.info("GUI: models changed; %s can run now: indexing again", ", ".join(ready))
            self.statusBar().showMessage(f"{', '.join(stage_label(s) for s in ready)}: the model is here, "
                                         "indexing again", 8000)
            self.start_indexing(scan=False)

        def failed(exc: BaseException) -> None:
            log.warning("cannot check the stages after a model change: %s", user_message(exc))

        self.reader_thread.call(check, checked, failed, label="check the stages' models")

    # -- watching -------------------------------------------------------------------------------------------------------

    def _start_watching(self) -> None:
        if self.watcher is not None or self._closing or not self.library.folders():
            return
        from engine.watch import FolderWatcher

        try:
            self.watcher = FolderWatcher(self.library_root, open_library=type(self.library), run_pipeline=False,
                                         on_update=self._watch_bridge.updated.emit).start(wait_ready=False)
        except Exception as exc:  # noqa: BLE001 - watching is a convenience: Index Now still works
            log.warning("cannot watch the folders: %s", exc)
            self.watcher = None

    @Slot(object)
    def _on_watch_update(self, update: Any) -> None:
        if self._closing:
            return
        scan = update.scan
        if scan.touched or scan.offline or update.check:
            self.refresh()
            if scan.touched:
                self.start_indexing(scan=False)

    # -- view -----------------------------------------------------------------------------------------------------------

    @Slot(bool)
    def set_newest_first(self, on: bool) -> None:
        if on == self._newest_first:
            return
        self._newest_first = on
        self._refresh_view_content()

    def set_group_by_month(self, on: bool) -> None:
        self._refresh_view_content()
        self.grid_view.viewport().update()

    def set_detail_visible(self, on: bool) -> None:
        if self.center.currentWidget() is self.full_view:
            self._detail_was_visible = on
            return
        self._show_center()

    @Slot(int)
    def set_thumb_size(self, px: int) -> None:
        px = max(MIN_THUMB_PX, min(MAX_THUMB_PX, int(px)))
        if self.zoom_slider.value() != px:
            self.zoom_slider.setValue(px)  # comes back here through valueChanged
            return
        self.grid_view.set_thumb_px(px)
        self.loader.set_target_px(round(px * self._dpr()))
        self.grid_model.thumbnails_changed()

    def _zoom_step(self, direction: int) -> None:
        self.set_thumb_size(self.zoom_slider.value() + 32 * direction)

    def set_theme(self, theme: str) -> None:
        from .theme import apply_theme

        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, theme)
        if self._settings is not None:
            self._settings.setValue("theme", theme)
        self.theme_actions.get(theme, self.theme_actions["system"]).setChecked(True)

    def _toggle_problems(self) -> None:
        self.show_problems(not self.problems.isVisible())

    def show_problems(self, show: bool = True) -> None:
        if not show:
            self.problems.hide()
            return
        first = not self._problems_sized
        self.problems.show()
        self.problems.raise_()
        if first and self.problems.isFloating() is False:
            self.resizeDocks([self.problems], [150], Qt.Orientation.Vertical)
            self._problems_sized = True

    def open_settings(self) -> QDialog:
        from .settings_dialog import SettingsDialog

        dlg = SettingsDialog(self.actions_thread, self._settings, self)
        dlg.libraryChosen.connect(self.libraryChangeRequested)
        dlg.model_panel.modelsChanged.connect(self.on_models_changed)  # a download may unblock waiting stages

        def accepted() -> None:
            for path in dlg.added:
                self.add_folder(path)
            theme = dlg.theme.currentData()
            self.set_theme(theme)
            device = dlg.device.currentData() or None
            if device != self.options.get("device"):
                self.statusBar().showMessage("The device is used from the next start of the app", 8000)
            self.refresh()
            if dlg.removed or dlg.changes():
                self.start_indexing()

        dlg.accepted.connect(accepted)
        dlg.open()
        return dlg

    def about_text(self) -> str:
        from engine.doctor import DLIB_FILES, HUB_MODELS

        rows = "".join(f"<tr><td>{_html(repo)}</td><td>{_html(purpose)}</td><td>{_html(lic)}</td></tr>"
                       for repo, purpose, lic in HUB_MODELS)
        return (f"<h3>{APP_NAME} {__version__}</h3>"
                "<p>A local, private photo album that learns your people, pets and things and captions them by "
                "name (MyVLM, Alaluf et al., ECCV 2024). Nothing leaves this computer.</p>"
                f"<p>Library: <code>{_html(str(self.library_root))}</code></p>"
                "<p><b>Models and their licences</b></p><table cellspacing=4>"
                "<tr><th align=left>Model</th><th align=left>For</th><th align=left>Licence</th></tr>"
                f"<tr><td>dlib face models ({len(DLIB_FILES)} files)</td><td>faces (default)</td><td>CC0</td></tr>"
                "<tr><td>InsightFace buffalo_l / buffalo_s / antelopev2</td><td>faces (optional)</td>"
                "<td>non-commercial research only</td></tr>"
                f"{rows}</table>"
                "<p>Settings ▸ Models shows which of them this computer has.</p>")

    def about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}", self.about_text())

    # -- single instance ------------------------------------------------------------------------------------------------

    def bring_to_front(self, message: dict[str, Any] | None = None) -> None:
        """Another start on this library: show this window (and add the folder it was asked to open)."""
        self.showNormal() if self.isMinimized() else self.show()
        self.raise_()
        self.activateWindow()
        album = (message or {}).get("album")
        if album:
            self.add_folder(album)

    # -- closing --------------------------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:
            event.accept()
            return
        self._closing = True
        self._live_refresh.stop()
        self._catalog_poll.stop()
        if self._settings is not None:
            s = self._settings
            s.setValue("mainWindow/geometry", self.saveGeometry())
            s.setValue("mainWindow/state", self.saveState())
            if self.center.currentWidget() is not self.full_view:
                s.setValue("mainWindow/splitter", self.splitter.saveState())
            s.setValue("grid/thumbPx", self.zoom_slider.value())
            s.setValue("grid/newestFirst", self._newest_first)
            s.setValue("grid/months", self.group_months_action.isChecked())
            s.setValue("mainWindow/detail", self.detail_action.isChecked())
        self.hide()  # feels instant; the work in flight finishes below
        if self.watcher is not None:
            self.watcher.stop(timeout=10)
            self.watcher = None
        self.trainer.shutdown()
        self.indexer.shutdown()
        self.search.shutdown()
        self.actions_thread.shutdown()
        self.models_thread.shutdown()
        self.reader_thread.shutdown()
        for dlg in list(self._teach_dialogs.values()):
            dlg.close()
        self.loader.shutdown()
        self.face_loader.shutdown()
        self.detail.loader.shutdown()
        self.full_view.loader.shutdown()
        self.library.close()
        event.accept()
        super().closeEvent(event)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
