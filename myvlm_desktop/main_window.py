"""The main window: watched folders on the left, the photo grid in the middle, indexing progress at the bottom.

Everything slow happens elsewhere: scanning and the pipeline on `IndexRunner`'s thread, thumbnail reads on the
`ThumbnailLoader` pool. The GUI thread only reads the catalog (a quick query) and paints.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QSettings, QSize, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
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

from .folders import FolderCounts, FolderIdRole, FolderListModel, FolderListView
from .grid import DEFAULT_THUMB_PX, MAX_THUMB_PX, MIN_THUMB_PX, PhotoGridModel, PhotoGridView
from .indexing import SCAN, IndexResult, IndexRunner
from .problems import ProblemsDock
from .qt_compat import install_none_refcount_guard, item_data
from .resources import app_icon, themed_icon
from .thumbnails import ThumbnailLoader

log = logging.getLogger(__name__)

STAGE_LABELS = {SCAN: "Looking for photos", "thumbnail": "Making thumbnails"}
LIVE_REFRESH_MS = 1500  # while indexing, show newly ready photos this often


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage.replace("_", " ").capitalize())


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


class MainWindow(QMainWindow):
    def __init__(self, library_root: str | os.PathLike | None = None, *, auto_index: bool = True,
                 settings: QSettings | None = None):
        super().__init__()
        install_none_refcount_guard()
        self.library = Library(Path(library_root) if library_root else default_library_path())
        self.library_root = self.library.paths.root
        self._settings = settings
        self._closing = False
        self._index_again = False
        self._folder_filter: int | None = None
        self._newest_first = True
        self._last_event: ProgressEvent | None = None
        self._status: dict[str, Any] = {"folders": [], "errors": []}
        self._all_photos: list[Photo] = []
        self._problems_sized = False

        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(app_icon())
        self.setObjectName("mainWindow")
        self.resize(1180, 760)
        self.setUnifiedTitleAndToolBarOnMac(True)

        self.loader = ThumbnailLoader(self.library.paths, DEFAULT_THUMB_PX * self._dpr(), parent=self)
        self.grid_model = PhotoGridModel(self.loader, self)
        self.folder_model = FolderListModel(self)
        self.indexer = IndexRunner(self.library_root, self)
        self.indexer.started.connect(self._on_index_started)
        self.indexer.progress.connect(self._on_index_progress)
        self.indexer.finished.connect(self._on_index_finished)

        self._live_refresh = QTimer(self)
        self._live_refresh.setSingleShot(True)
        self._live_interval_ms = LIVE_REFRESH_MS
        self._live_refresh.timeout.connect(self.refresh)

        self._build_actions()
        self._build_ui()
        self._build_menus()
        self._restore_geometry()
        self.refresh()
        self._update_actions()
        if auto_index and self.library.folders():
            QTimer.singleShot(0, self.start_indexing)  # resume whatever the last session left undone

    # -- construction -----------------------------------------------------------------------------------------------

    def _dpr(self) -> float:
        screen = self.screen()
        return screen.devicePixelRatio() if screen is not None else 1.0

    def _build_actions(self) -> None:
        sp = QStyle.StandardPixmap
        self.add_folder_action = QAction(themed_icon("folder-new", sp.SP_FileDialogNewFolder), "&Add Folder…", self)
        self.add_folder_action.setShortcut(QKeySequence.StandardKey.Open)
        self.add_folder_action.setToolTip("Watch a folder of photos (its subfolders too)")
        self.add_folder_action.triggered.connect(self.choose_folder)

        self.index_action = QAction(themed_icon(("view-refresh", "system-search"), sp.SP_BrowserReload),
                                    "&Index Now", self)
        self.index_action.setShortcut(QKeySequence.StandardKey.Refresh)
        self.index_action.setToolTip("Look for new, changed and removed photos and process them")
        self.index_action.triggered.connect(self.start_indexing)

        self.cancel_action = QAction(themed_icon("process-stop", sp.SP_BrowserStop), "&Stop Indexing", self)
        self.cancel_action.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        self.cancel_action.setToolTip("Stop after the photos in progress; the next run picks up where this one ended")
        self.cancel_action.triggered.connect(self.cancel_indexing)

        self.quit_action = QAction("&Quit", self)
        self.quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.close)

        self.newest_first_action = QAction("&Newest First", self, checkable=True, checked=True)
        self.newest_first_action.toggled.connect(self.set_newest_first)
        self.zoom_in_action = QAction("Zoom &In", self)
        self.zoom_in_action.setShortcut(QKeySequence.StandardKey.ZoomIn)
        self.zoom_in_action.triggered.connect(lambda: self._zoom_step(1))
        self.zoom_out_action = QAction("Zoom &Out", self)
        self.zoom_out_action.setShortcut(QKeySequence.StandardKey.ZoomOut)
        self.zoom_out_action.triggered.connect(lambda: self._zoom_step(-1))

        self.about_action = QAction(f"&About {APP_NAME}", self)
        self.about_action.triggered.connect(self._about)

    def _build_ui(self) -> None:
        # left: watched folders
        self.folder_view = FolderListView()
        self.folder_view.setModel(self.folder_model)
        self.folder_view.selectionModel().currentChanged.connect(self._on_folder_selected)
        add_button = QPushButton(self.add_folder_action.icon(), "Add Folder…")
        add_button.setObjectName("addFolderButton")
        add_button.clicked.connect(self.add_folder_action.trigger)
        sidebar = QWidget()
        sidebar.setObjectName("sidebar")
        side = QVBoxLayout(sidebar)
        side.setContentsMargins(8, 8, 4, 8)
        side.setSpacing(6)
        heading = QLabel("Folders")
        heading.setObjectName("sidebarHeading")
        side.addWidget(heading)
        side.addWidget(self.folder_view, 1)
        side.addWidget(add_button)

        # centre: the grid, or a welcome page while nothing is watched
        self.grid_view = PhotoGridView()
        self.grid_view.setModel(self.grid_model)
        self.grid_view.zoomRequested.connect(self._zoom_step)
        self.empty_page = self._make_empty_page()
        self.center = QStackedWidget()
        self.center.addWidget(self.empty_page)
        self.center.addWidget(self.grid_view)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setObjectName("mainSplitter")
        splitter.addWidget(sidebar)
        splitter.addWidget(self.center)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([240, 940])
        splitter.setChildrenCollapsible(False)
        self.setCentralWidget(splitter)
        self.splitter = splitter

        # toolbar
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
        self.zoom_slider = QSlider(Qt.Orientation.Horizontal)
        self.zoom_slider.setObjectName("zoomSlider")
        self.zoom_slider.setRange(MIN_THUMB_PX, MAX_THUMB_PX)
        self.zoom_slider.setSingleStep(16)
        self.zoom_slider.setPageStep(32)
        self.zoom_slider.setValue(DEFAULT_THUMB_PX)
        self.zoom_slider.setFixedWidth(140)
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

        # status bar: summary | problems | stage, progress, stop
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
        self.stage_label = QLabel()
        self.stage_label.setObjectName("stageLabel")
        sb.addPermanentWidget(self.stage_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("progressBar")
        self.progress_bar.setFixedWidth(180)
        self.progress_bar.setMaximumHeight(16)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        sb.addPermanentWidget(self.progress_bar)
        self.cancel_button = QToolButton()
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setDefaultAction(self.cancel_action)
        self.cancel_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.cancel_button.setAutoRaise(True)
        self.cancel_button.hide()
        sb.addPermanentWidget(self.cancel_button)

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
        file_menu = mb.addMenu("&File")
        file_menu.addAction(self.add_folder_action)
        file_menu.addSeparator()
        file_menu.addAction(self.index_action)
        file_menu.addAction(self.cancel_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        view_menu = mb.addMenu("&View")
        view_menu.addAction(self.newest_first_action)
        view_menu.addSeparator()
        view_menu.addAction(self.zoom_in_action)
        view_menu.addAction(self.zoom_out_action)
        view_menu.addSeparator()
        view_menu.addAction(self.problems_action)
        help_menu = mb.addMenu("&Help")
        help_menu.addAction(self.about_action)

    def _restore_geometry(self) -> None:
        if self._settings is None:
            return
        geometry = self._settings.value("mainWindow/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self._settings.value("mainWindow/state")
        if state is not None:
            self.restoreState(state)
        self.problems.hide()

    # -- reading the catalog (quick queries only) -------------------------------------------------------------------

    def shown_photos(self) -> list[Photo]:
        """Photos with thumbnails (status ok), by date taken; those of an offline folder too, drawn dimmed."""
        photos = [p for p in self._all_photos
                  if p.status == OK and (self._folder_filter is None or p.folder_id == self._folder_filter)]
        if self._newest_first:
            photos.reverse()
        return photos

    @Slot()
    def refresh(self) -> None:
        """Re-read folders, photos and problems from the catalog and update the views in place."""
        if self._closing:
            return
        self._live_refresh.stop()
        started = time.perf_counter()
        status = self._status = self.library.status()
        self._all_photos = self.library.photos(order="date")
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
        if self._folder_filter is not None and self.folder_model.row_of(self._folder_filter) is None:
            self._folder_filter = None  # that folder is no longer watched (absorbed by a parent folder)
        self._select_folder_row(self._folder_filter)
        self.grid_model.set_photos(self.shown_photos())
        self.problems.set_errors(status["errors"])
        self._update_problems_button()
        self._update_summary(status)
        self.center.setCurrentWidget(self.grid_view if status["folders"] else self.empty_page)
        # Big libraries: refresh less often while indexing, so reading the catalog stays a small share of the time.
        took_ms = (time.perf_counter() - started) * 1000
        self._live_interval_ms = max(LIVE_REFRESH_MS, int(20 * took_ms))

    def _select_folder_row(self, folder_id: int | None) -> None:
        row = self.folder_model.row_of(folder_id)
        if row is None:
            return
        idx = self.folder_model.index(row)
        if self.folder_view.currentIndex() != idx:
            self.folder_view.selectionModel().setCurrentIndex(
                idx, QItemSelectionModel.SelectionFlag.ClearAndSelect)

    def _update_summary(self, status: dict[str, Any]) -> None:
        n = self.grid_model.rowCount()
        folders = len(status["folders"])
        offline = sum(1 for f in status["folders"] if f["status"] == "offline")
        if not folders:
            text = "No folders yet"
        else:
            text = f"{_count(n, 'photo')}"
            if self._folder_filter is None:
                text += f" in {_count(folders, 'folder')}"
            if offline:
                text += f" · {offline} offline"
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

    # -- folders ----------------------------------------------------------------------------------------------------

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
        self._folder_filter = None
        self.refresh()
        self.start_indexing()
        return True

    @Slot(QModelIndex, QModelIndex)
    def _on_folder_selected(self, current: QModelIndex, previous: QModelIndex) -> None:
        folder_id = item_data(current, FolderIdRole)
        if folder_id == self._folder_filter:
            return
        self._folder_filter = folder_id
        self.grid_model.set_photos(self.shown_photos())
        self.grid_view.scrollToTop()
        self._update_summary(self._status)

    # -- indexing ---------------------------------------------------------------------------------------------------

    @property
    def indexing(self) -> bool:
        return self.indexer.running

    @Slot()
    def start_indexing(self) -> None:
        if self._closing:
            return
        if self.indexer.running:
            self._index_again = True  # e.g. a folder was added meanwhile: go again when this run ends
            return
        self._index_again = False
        self.indexer.start()

    @Slot()
    def cancel_indexing(self) -> None:
        if not self.indexer.running:
            return
        self._index_again = False
        self.indexer.cancel()
        self.stage_label.setText("Stopping after the photos in progress…")
        self.cancel_action.setEnabled(False)

    @Slot()
    def _on_index_started(self) -> None:
        self.stage_label.setText(f"{stage_label(SCAN)}…")
        self.progress_bar.setRange(0, 0)
        self.progress_bar.show()
        self.cancel_button.show()
        self._update_actions()

    @Slot(object)
    def _on_index_progress(self, ev: ProgressEvent) -> None:
        if self._closing:
            return
        self._last_event = ev
        if self.indexer.cancelling:
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
        if ev.state == "paused":
            text += " · paused"
        self.stage_label.setText(text)
        self.stage_label.setToolTip(ev.current)
        if ev.stage != SCAN and not self._live_refresh.isActive():
            # new thumbnails are ready: show them soon (the very first ones at once), not on every event
            self._live_refresh.start(300 if self.grid_model.rowCount() == 0 else self._live_interval_ms)

    @Slot(object)
    def _on_index_finished(self, result: IndexResult) -> None:
        if self._closing:
            return
        self.progress_bar.hide()
        self.cancel_button.hide()
        self.loader.forget_failures()
        self.refresh()
        if result.error:
            self.stage_label.setText("Indexing failed")
            self.stage_label.setToolTip(result.error)
            self.statusBar().showMessage(f"Indexing failed: {result.error}", 15000)
        elif result.cancelled:
            self.stage_label.setText("Stopped · the rest is done next time")
            self.stage_label.setToolTip("")
        else:
            self.stage_label.setText("Up to date")
            self.stage_label.setToolTip(f"Indexed in {result.seconds:.1f} s")
        self._update_actions()
        if self._index_again:
            QTimer.singleShot(0, self.start_indexing)

    def _update_actions(self) -> None:
        running = self.indexer.running
        self.index_action.setEnabled(not running)
        self.cancel_action.setEnabled(running and not self.indexer.cancelling)

    # -- view -------------------------------------------------------------------------------------------------------

    @Slot(bool)
    def set_newest_first(self, on: bool) -> None:
        if on == self._newest_first:
            return
        self._newest_first = on
        self.grid_model.set_photos(self.shown_photos())

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

    def _about(self) -> None:
        QMessageBox.about(
            self, f"About {APP_NAME}",
            f"<h3>{APP_NAME} {__version__}</h3>"
            "<p>A local, private photo album that learns your people, pets and things and captions them by name.</p>"
            f"<p>Library: <code>{self.library_root}</code></p>",
        )

    # -- closing ----------------------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:
            event.accept()
            return
        self._closing = True
        self._live_refresh.stop()
        if self._settings is not None:
            self._settings.setValue("mainWindow/geometry", self.saveGeometry())
            self._settings.setValue("mainWindow/state", self.saveState())
        self.hide()  # feels instant; the photos in flight finish below
        self.indexer.shutdown()
        self.loader.shutdown()
        self.library.close()
        event.accept()
        super().closeEvent(event)
