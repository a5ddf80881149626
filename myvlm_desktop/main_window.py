"""The main window: the sidebar (Library, People, Things, Searches), the photo grid or a page in the middle, the
detail pane on the right, and what the app is doing in the status bar.

A shell of views: what is shown, selected, searched and running lives in the Qt-free `state.AppState`; every action
is declared once in `actions.py`; what the window does lives in `window/` (following the catalog, people, things,
a photo's actions, search, indexing and watching, the full view). The window reads only through `engine.library` and
`engine.read_models`, never the catalog itself.

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
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QItemSelectionModel, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QMainWindow, QMenu, QMessageBox

from engine import read_models
from engine.library import APP_NAME, OK, FolderNotFound, Library, Photo, default_library_path, default_pictures_path

from . import actions
from .folders import FolderListModel
from .grid import DEFAULT_THUMB_PX, MAX_THUMB_PX, MIN_THUMB_PX, PhotoGridModel, PhotoRole
from .indexing import IndexRunner
from .qt_compat import install_none_refcount_guard, item_data
from .resources import app_icon
from .search import SearchController
from .sidebar import CONCEPT, FOLDER, LIBRARY, PEOPLE, PERSON, SEARCH, THINGS
from .state import PHOTOS, AppState
from .tasks import EngineThread, user_message
from .things_page import concept_info
from .thumbnails import FaceCropLoader, ThumbnailLoader
from .training import TrainingRunner
from .widgets import PERSON_CHIP, THING_CHIP, show_error
from .window import session
from .window.catalog_follow import CatalogFollower
from .window.full_view import FullViewFlow
from .window.indexing_flow import IndexingFlow
from .window.layout import build_ui
from .window.people_actions import PeopleActions
from .window.photo_actions import PhotoActions
from .window.prompts import Prompts, about_html
from .window.search_flow import SearchFlow
from .window.stages_popup import count
from .window.thing_actions import ThingActions

log = logging.getLogger(__name__)


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
        self.state = AppState()
        self._settings = settings
        self._watch_enabled = watch
        self._stages = list(stages) if stages else None
        self._closing = False
        self._newest_first = True
        self._status: dict[str, Any] = {"folders": [], "errors": [], "stages": {}}
        self._all_photos: list[Photo] = []
        self._by_id: dict[int, Photo] = {}
        self._problems_sized = False
        self._names: list[str] = []
        self.auto_index = auto_index   # also: naming someone re-captions their photos at once
        self.prompts = Prompts()

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
        self.actions_thread = EngineThread(self.library_root, self.options, name="actions", parent=self)
        self.models_thread = EngineThread(self.library_root, self.options, name="models", parent=self)
        self.reader_thread = EngineThread(self.library_root, self.options, name="reader", parent=self)
        self.search = SearchController(self.library_root, self.options, self)
        self.trainer = TrainingRunner(self.library_root, self.options, self)

        # what the window does, one controller per concern (window/)
        self.follow = CatalogFollower(self)
        self.people = PeopleActions(self)
        self.things = ThingActions(self)
        self.photo_actions = PhotoActions(self)
        self.full = FullViewFlow(self)
        self.search_flow = SearchFlow(self)
        self.indexing_flow = IndexingFlow(self)
        self.search.results.connect(self.search_flow.on_results)
        self.trainer.progress.connect(self.things.on_training_progress)
        self.trainer.finished.connect(self.things.on_training_finished)

        actions.build_actions(self)
        build_ui(self)
        actions.build_menus(self)
        self.state.events.busy.connect(self._show_busy)
        self.models_thread.busyChanged.connect(lambda _b: self._show_busy(self.state.busy))
        session.restore(self)
        self.refresh_now()
        self.follow.poll_timer.start()
        self.indexing_flow.sync_state()
        if self.library.folders():
            self.search.warm_up()
            if auto_index:
                QTimer.singleShot(0, self.start_indexing)  # resume whatever the last session left undone
            elif watch:
                QTimer.singleShot(0, self.indexing_flow.start_watching)

    # -- construction ----------------------------------------------------------------------------------------------

    def _dpr(self) -> float:
        screen = self.screen()
        return screen.devicePixelRatio() if screen is not None else 1.0

    def _show_busy(self, busy: tuple[tuple[str, str], ...]) -> None:
        if busy:
            self.busy_label.setText(self.state.busy_text)
        self.busy_label.setVisible(bool(busy))

    # -- reading the catalog (through window/catalog_follow.py) ----------------------------------------------------

    def refresh(self) -> None:
        """Re-read what changed (on the reader thread) and update the views in place."""
        self.follow.refresh()

    def refresh_now(self) -> None:
        self.follow.refresh_now()

    @property
    def refreshing(self) -> bool:
        """A catalog read is on its way (tests wait for it)."""
        return self.follow.reading

    @property
    def refresh_ms(self) -> list[float]:
        return self.follow.refresh_ms

    def failed(self, title: str) -> Any:
        """A callback for a failed change: the error in words."""
        def failed(exc: BaseException) -> None:
            if not self._closing:
                show_error(self, title, user_message(exc))
        return failed

    def shown_photos(self) -> list[Photo]:
        """The photos of the current view, in grid order."""
        kind, key = self.state.view
        if kind == SEARCH:
            out = self.search_flow.outcome
            return [] if out is None else [self._by_id[i] for i in out.ids if i in self._by_id]
        ok = [p for p in self._all_photos if p.status == OK]
        if kind == FOLDER:
            ok = [p for p in ok if p.folder_id == key]
        elif kind in (PERSON, CONCEPT, PHOTOS):
            ids = (read_models.person_photo_ids(self.library, key) if kind == PERSON else
                   read_models.concept_photo_ids(self.library, key) if kind == CONCEPT else set(key))
            ok = [p for p in ok if p.id in ids]
        if self._newest_first:
            ok.reverse()
        return ok

    def sidebar_target(self) -> tuple[str, Any]:
        kind, key = self.state.view
        return (LIBRARY, None) if kind == PHOTOS else (kind, key)

    def refresh_view_content(self, changed: set[int] | None = None, in_place: bool = False) -> None:
        """Show the current view's photos and header. `changed`: only these photos changed (the info pane is
        reloaded only if it shows one of them); None: anything may have. `in_place`: no photo moved in date order,
        so the changed photos' rows are updated where they are when the view's membership allows."""
        kind, key = self.state.view
        months = self.group_months_action.isChecked() and kind != SEARCH
        self.grid_model.group_by_month = months
        self.scrubber.setVisible(months)
        self.grid_view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff if months
                                                  else Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        out = self.search_flow.outcome
        # no photo changed: the grid shows what it showed; a few changed in place: those rows only
        if changed is None or changed and not (in_place and self.follow.replace_rows(changed)):
            self.grid_model.set_photos(self.shown_photos(), out.why if kind == SEARCH and out else None)
        self.person_header.setVisible(kind == PERSON)
        self.concept_header.setVisible(kind == CONCEPT)
        self.search_header.setVisible(kind == SEARCH)
        if kind == PERSON:
            page = read_models.person_page(self.library, key)
            if page is None:
                self.state.view = (PEOPLE, None)
            else:
                self.person_header.set_person(page.person, page.faces, page.photos, page.targets)
        elif kind == CONCEPT:
            try:
                self.concept_header.set_info(concept_info(self.library, self.library.concept(key)))
            except (LookupError, ValueError):
                self.state.view = (THINGS, None)
        self._update_grid_empty()
        shown = self.detail.photo
        if changed is None or (shown is not None and shown.id in changed):
            self.on_selection()
        else:
            self.update_summary()

    def _update_grid_empty(self) -> None:
        kind = self.state.kind
        if self.grid_model.rowCount():
            self.grid_stack.setCurrentIndex(0)
            return
        if kind == SEARCH:
            text = self.search_flow.empty_text()
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

    def show_center(self) -> None:
        if self.full.showing:
            return
        kind = self.state.kind
        if not self._status["folders"] and kind not in (PEOPLE, THINGS):
            self.center.setCurrentWidget(self.empty_page)
        else:
            self.center.setCurrentWidget({PEOPLE: self.people_page, THINGS: self.things_page}.get(kind, self.grid_page))
        # the info pane belongs to the photos: shown beside a grid, not beside the People or Things overview
        show = self.detail_action.isChecked() and self.center.currentWidget() is self.grid_page
        if show != self.detail.isVisible():
            self.detail.setVisible(show)
            if show:
                self.on_selection()

    def update_summary(self) -> None:
        status, n, kind = self._status, self.grid_model.rowCount(), self.state.kind
        folders = len(status["folders"])
        offline = sum(1 for f in status["folders"] if f["status"] == "offline")
        if not folders:
            text = "No folders yet"
        elif kind == SEARCH:
            text = f"{count(n, 'photo')} found"
        else:
            text = count(n, "photo")
            if kind == LIBRARY:
                text += f" in {count(folders, 'folder')}"
            if offline:
                text += f" · {offline} offline"
        selected = len(self.grid_view.selectionModel().selectedIndexes())
        if selected > 1:
            text += f" · {selected:,} selected"
        self.summary_label.setText(text)

    def update_problems_button(self) -> None:
        n = self.problems.count()
        self.problems_button.setVisible(n > 0)
        self.problems_button.setText(count(n, "problem"))
        tip = "\n".join(f"{os.path.basename(e['path'])}: {e['error']}" for e in self.problems.errors()[:10])
        if n > 10:
            tip += f"\n… and {n - 10} more"
        self.problems_button.setToolTip(tip + "\n\nClick to show the Problems panel" if n else "")

    def error_count(self) -> int:
        return self.problems.count()

    # -- navigation --------------------------------------------------------------------------------------------------

    def navigate(self, kind: str, key: Any = None) -> None:
        """Show a view: library / folder / people / person / things / concept / search / photos."""
        kind = {PERSON_CHIP: PERSON, THING_CHIP: CONCEPT}.get(kind, kind)
        if kind == SEARCH:
            self.search_edit.setText(str(key))
            self.search_flow.on_enter()
            return
        self.full.close()
        if kind != SEARCH and self.search_edit.text():
            self.search_edit.blockSignals(True)
            self.search_edit.clear()
            self.search_edit.blockSignals(False)
            self.state.search_text = ""
        changed = self.state.view != (kind, key)
        if changed:
            self.clear_grid_selection()
        self.state.show(kind, key)
        self.sidebar.select(*self.sidebar_target())
        if kind == PEOPLE:
            self.people.load_page()
        elif kind == THINGS:
            self.things.load_page()
        self.refresh_view_content()
        if changed:
            self.grid_view.scrollToTop()
        self.show_center()
        self.update_summary()

    @property
    def view(self) -> tuple[str, Any]:
        return self.state.view

    def clear_grid_selection(self) -> None:
        """Another page starts with nothing selected: photos it shares with the last page would otherwise stay
        selected (the grid updates in place), and the info pane would go on saying "3 photos selected"."""
        self.grid_view.selectionModel().clear()

    def show_photo_ids(self, ids: list[int]) -> None:
        self.navigate(PHOTOS, tuple(ids))

    # -- selection and the info pane ---------------------------------------------------------------------------------

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

    def on_selection(self) -> None:
        selected = self.selected_photo_ids()
        self.state.selection = tuple(selected)
        if self._closing or not self.detail.isVisible() and not self.full.showing:
            self.update_summary()
            return
        photo = self.current_photo() if len(selected) == 1 else None
        if photo is None:
            self.detail.show_photo(None, len(selected))
        else:
            self._show_detail(photo, reload_image=True)
        self.update_summary()

    def _show_detail(self, photo: Photo, reload_image: bool = True) -> None:
        info = read_models.photo_info(self.library, photo.id)
        self.detail.show_photo(photo, faces=info.faces, captions=info.captions, answers=info.answers,
                               concepts=info.concepts, can_locate=info.can_locate, reload_image=reload_image)

    def reload_detail(self) -> None:
        photo = self.detail.photo
        if photo is not None:
            self._show_detail(self._by_id.get(photo.id, photo), reload_image=False)

    def eventFilter(self, obj: Any, event: Any) -> bool:
        if event.type() == QEvent.Type.KeyPress:
            key = event.key()
            if obj is self.grid_view and key in (Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter):
                self.full.open()
                return True
            if obj is self.search_edit and key == Qt.Key.Key_Escape:
                self.search_edit.clear()
                self.grid_view.setFocus()
                return True
            if obj is self.search_edit and key == Qt.Key.Key_Down:
                self.grid_view.setFocus()
                if self.grid_model.rowCount() and not self.grid_view.currentIndex().isValid():
                    self.select_photo(self.grid_model.photo(0).id)
                return True
        return super().eventFilter(obj, event)

    def grid_menu(self, pos: Any) -> None:
        ids = self.selected_photo_ids()
        if not ids:
            return
        menu = QMenu(self)
        if len(ids) == 1:
            menu.addAction("Full View", self.full.open)
            menu.addAction(self.rotate_left_action)
            menu.addAction(self.rotate_right_action)
            menu.addSeparator()
        menu.addAction(self.name_thing_action)
        menu.exec(self.grid_view.viewport().mapToGlobal(pos))

    def search_chip_texts(self) -> list[str]:
        return self.search_chips.texts()

    # -- folders and indexing ------------------------------------------------------------------------------------------

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
        self.state.view = (LIBRARY, None)
        self.refresh_now()
        self.search.warm_up()
        self.start_indexing()
        if self.indexing_flow.watcher is not None:
            self.indexing_flow.watcher.refresh()
        return True

    @property
    def indexing(self) -> bool:
        return self.indexer.running

    def start_indexing(self, scan: bool = True, stages: list[str] | None = None) -> None:
        self.indexing_flow.start_indexing(scan, stages)

    # -- view options --------------------------------------------------------------------------------------------------

    def set_newest_first(self, on: bool) -> None:
        if on != self._newest_first:
            self._newest_first = on
            self.refresh_view_content()

    def set_group_by_month(self, on: bool) -> None:
        self.refresh_view_content()
        self.grid_view.viewport().update()

    def set_detail_visible(self, on: bool) -> None:
        if self.full.showing:
            self.full.detail_was_visible = on
            return
        self.show_center()

    def set_thumb_size(self, px: int) -> None:
        px = max(MIN_THUMB_PX, min(MAX_THUMB_PX, int(px)))
        if self.zoom_slider.value() != px:
            self.zoom_slider.setValue(px)  # comes back here through valueChanged
            return
        self.grid_view.set_thumb_px(px)
        self.loader.set_target_px(round(px * self._dpr()))
        self.grid_model.thumbnails_changed()

    def zoom_step(self, direction: int) -> None:
        self.set_thumb_size(self.zoom_slider.value() + 32 * direction)

    def set_theme(self, theme: str) -> None:
        from .theme import apply_theme

        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, theme)
        if self._settings is not None:
            self._settings.setValue("theme", theme)
        self.theme_actions.get(theme, self.theme_actions["system"]).setChecked(True)

    def toggle_problems(self) -> None:
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

    # -- dialogs -------------------------------------------------------------------------------------------------------

    def open_settings(self) -> QDialog:
        from .settings_dialog import SettingsDialog

        dlg = SettingsDialog(self.actions_thread, self._settings, self)
        dlg.libraryChosen.connect(self.libraryChangeRequested)
        # a download may unblock waiting stages
        dlg.model_panel.modelsChanged.connect(self.indexing_flow.on_models_changed)

        def accepted() -> None:
            for path in dlg.added:
                self.add_folder(path)
            self.set_theme(dlg.theme.currentData())
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
        return about_html(self.library_root)

    def about(self) -> None:
        QMessageBox.about(self, f"About {APP_NAME}", self.about_text())

    def bring_to_front(self, message: dict[str, Any] | None = None) -> None:
        """Another start on this library: show this window (and add the folder it was asked to open)."""
        self.showNormal() if self.isMinimized() else self.show()
        self.raise_()
        self.activateWindow()
        album = (message or {}).get("album")
        if album:
            self.add_folder(album)

    # -- closing -------------------------------------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:
            event.accept()
            return
        self._closing = True
        self.follow.stop()
        session.save(self)
        self.hide()  # feels instant; the work in flight finishes below
        self.indexing_flow.stop_watching()
        for worker in (self.trainer, self.indexer, self.search, self.actions_thread, self.models_thread,
                       self.reader_thread):
            worker.shutdown()
        self.things.close_dialogs()
        for loader in (self.loader, self.face_loader, self.detail.loader, self.full_view.loader):
            loader.shutdown()
        self.library.close()
        event.accept()
        super().closeEvent(event)


__all__ = ["MainWindow"]
