"""The sidebar: Library (all photos and the watched folders), People, Things and Searches, one list per section.

Selecting a row anywhere navigates (`navigated(kind, key)`); one row is selected in the whole sidebar at a time.
Dropping a face group (dragged from the People page) on a person merges it into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QListView,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from .folders import (
    BoldRole,
    FolderDelegate,
    FolderListModel,
    FolderListView,
    OfflineRole,
    SubtitleRole,
)
from .people_page import dropped_person
from .qt_compat import item_data
from .resources import icon
from .thumbnails import FaceCropLoader, ThumbKey

KindRole = Qt.ItemDataRole.UserRole + 20
KeyRole = Qt.ItemDataRole.UserRole + 21

LIBRARY, FOLDER, PEOPLE, PERSON, THINGS, CONCEPT, SEARCH = (
    "library", "folder", "people", "person", "things", "concept", "search")

_Index = QModelIndex | QPersistentModelIndex


@dataclass(frozen=True)
class NavRow:
    kind: str
    key: Any
    title: str
    subtitle: str = ""
    icon: QIcon | None = None
    face: int | None = None  # a face id whose crop is the icon
    bold: bool = False


class NavListModel(QAbstractListModel):
    def __init__(self, faces: FaceCropLoader | None = None, parent: Any = None):
        super().__init__(parent)
        self._rows: list[NavRow] = []
        self._faces = faces
        if faces is not None:
            faces.ready.connect(self._on_face)

    def set_rows(self, rows: list[NavRow]) -> None:
        if [(r.kind, r.key) for r in rows] == [(r.kind, r.key) for r in self._rows]:
            self._rows = rows
            if rows:
                self.dataChanged.emit(self.index(0), self.index(len(rows) - 1))
            return
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def rows(self) -> list[NavRow]:
        return list(self._rows)

    def row_of(self, kind: str, key: Any) -> int | None:
        for i, r in enumerate(self._rows):
            if r.kind == kind and r.key == key:
                return i
        return None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        r = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return r.title
        if role == SubtitleRole:
            return r.subtitle
        if role == Qt.ItemDataRole.DecorationRole:
            if r.face is not None and self._faces is not None:
                key = FaceCropLoader.key(r.face)
                pm = self._faces.pixmap(key)
                if pm is None:
                    self._faces.request(key)
                else:
                    return pm
            return r.icon
        if role == BoldRole:
            return r.bold
        if role == OfflineRole:
            return False
        if role == KindRole:
            return r.kind
        if role == KeyRole:
            return r.key
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{r.title}\n{r.subtitle}" if r.subtitle else r.title
        return None

    def _on_face(self, key: ThumbKey) -> None:
        for i, r in enumerate(self._rows):
            if r.face is not None and FaceCropLoader.key(r.face) == key:
                self.dataChanged.emit(self.index(i), self.index(i), [Qt.ItemDataRole.DecorationRole])


class SidebarList(QListView):
    """A list as tall as its rows (the sidebar scrolls as a whole)."""

    personDropped = Signal(int, int)  # dragged person/group id, target person id

    def __init__(self, object_name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(object_name)
        self.setProperty("sidebarList", True)
        self.setItemDelegate(FolderDelegate(self))
        self.setUniformItemSizes(True)
        self.setEditTriggers(QListView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAcceptDrops(True)
        self.setDropIndicatorShown(True)

    def setModel(self, model: Any) -> None:
        super().setModel(model)
        for sig in (model.modelReset, model.rowsInserted, model.rowsRemoved):
            sig.connect(self.updateGeometry)

    def sizeHint(self) -> QSize:
        model = self.model()
        n = model.rowCount() if model is not None else 0
        row = self.sizeHintForRow(0) if n else 0
        return QSize(200, n * row + 2)

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()

    def _drop_target(self, event: Any) -> int | None:
        index = self.indexAt(event.position().toPoint())
        if not index.isValid() or item_data(index, KindRole) != PERSON:
            return None
        return item_data(index, KeyRole)

    def dragEnterEvent(self, event: Any) -> None:
        if dropped_person(event) is not None:
            event.acceptProposedAction()

    def dragMoveEvent(self, event: Any) -> None:
        target = self._drop_target(event)
        if target is not None and dropped_person(event) not in (None, target):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: Any) -> None:
        target, source = self._drop_target(event), dropped_person(event)
        if target is not None and source is not None and source != target:
            self.personDropped.emit(source, target)
            event.acceptProposedAction()


class Sidebar(QScrollArea):
    navigated = Signal(str, object)  # kind, key
    personDropped = Signal(int, int)

    def __init__(self, folder_model: FolderListModel, faces: FaceCropLoader, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        body.setObjectName("sidebarBody")
        lay = QVBoxLayout(body)
        lay.setContentsMargins(8, 8, 4, 8)
        lay.setSpacing(2)
        self.folder_view = FolderListView()
        self.folder_view.setModel(folder_model)
        self.folder_view.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.folder_view.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.folder_view.sizeHint = lambda: QSize(200, folder_model.rowCount() * max(
            1, self.folder_view.sizeHintForRow(0)) + 2)  # type: ignore[method-assign]
        self.folder_view.minimumSizeHint = self.folder_view.sizeHint  # type: ignore[method-assign]
        for sig in (folder_model.modelReset, folder_model.rowsInserted, folder_model.rowsRemoved):
            sig.connect(self.folder_view.updateGeometry)
        self.people_model = NavListModel(faces, self)
        self.things_model = NavListModel(None, self)
        self.search_model = NavListModel(None, self)
        self.people_view = SidebarList("peopleList")
        self.people_view.setModel(self.people_model)
        self.people_view.personDropped.connect(self.personDropped)
        self.things_view = SidebarList("thingsList")
        self.things_view.setModel(self.things_model)
        self.search_view = SidebarList("searchList")
        self.search_view.setModel(self.search_model)
        self.headings: dict[str, QLabel] = {}
        for title, view in (("Library", self.folder_view), ("People", self.people_view),
                            ("Things", self.things_view), ("Searches", self.search_view)):
            h = QLabel(title)
            h.setObjectName("sidebarHeading")
            self.headings[title] = h
            lay.addWidget(h)
            lay.addWidget(view)
            lay.addSpacing(6)
        lay.addStretch(1)
        self.setWidget(body)
        self.views: list[QListView] = [self.folder_view, self.people_view, self.things_view, self.search_view]
        for view in self.views:
            view.selectionModel().currentChanged.connect(lambda cur, _prev, v=view: self._on_current(v, cur))
            view.clicked.connect(lambda idx, v=view: self._on_current(v, idx, force=True))
        self._current: tuple[str, Any] | None = None
        self._people_icon = icon("people", ("system-users", "user-identity"), QStyle.StandardPixmap.SP_DirHomeIcon)
        self._things_icon = icon("things", ("tag", "emblem-favorite"),
                                 QStyle.StandardPixmap.SP_FileDialogDetailedView)
        self._search_icon = icon("search", ("edit-find", "system-search"),
                                 QStyle.StandardPixmap.SP_FileDialogContentsView)

    # -- content ----------------------------------------------------------------------------------------------------

    def set_people(self, named: list[dict[str, Any]], unnamed_groups: int) -> None:
        rows = [NavRow(PEOPLE, None, "People", f"{unnamed_groups:,} group{'s' if unnamed_groups != 1 else ''} "
                       "to name" if unnamed_groups else f"{len(named):,} named", self._people_icon, bold=True)]
        for p in named:
            rows.append(NavRow(PERSON, p["id"], p["name"], f"{p['photos']:,} photo{'s' if p['photos'] != 1 else ''}",
                               self._people_icon, p.get("face")))
        self.people_model.set_rows(rows)

    def set_things(self, things: list[dict[str, Any]]) -> None:
        rows = [NavRow(THINGS, None, "Things", f"{len(things):,} named" if things else "pets and things",
                       self._things_icon, bold=True)]
        for t in things:
            rows.append(NavRow(CONCEPT, t["id"], t["name"], f"{t['photos']:,} photo{'s' if t['photos'] != 1 else ''}",
                               self._things_icon))
        self.things_model.set_rows(rows)

    def set_searches(self, searches: list[str]) -> None:
        self.search_model.set_rows([NavRow(SEARCH, s, s, "", self._search_icon) for s in searches])
        self.headings["Searches"].setVisible(bool(searches))
        self.search_view.setVisible(bool(searches))

    # -- selection --------------------------------------------------------------------------------------------------

    def _on_current(self, view: QListView, index: QModelIndex, force: bool = False) -> None:
        if not index.isValid():
            return
        for other in self.views:
            if other is not view and other.selectionModel().hasSelection():
                other.selectionModel().blockSignals(True)
                other.selectionModel().clear()
                other.selectionModel().blockSignals(False)
                other.viewport().update()
        if view is self.folder_view:
            from .folders import FolderIdRole

            folder_id = item_data(index, FolderIdRole)
            target = (LIBRARY, None) if folder_id is None else (FOLDER, folder_id)
        else:
            target = (item_data(index, KindRole), item_data(index, KeyRole))
        if target != self._current or force:
            self._current = target
            self.navigated.emit(*target)

    def select(self, kind: str, key: Any) -> None:
        """Show `kind/key` as selected without navigating again."""
        self._current = (kind, key)
        view, row = self._find(kind, key)
        for other in self.views:
            other.selectionModel().blockSignals(True)
            if other is not view:
                other.selectionModel().clear()
            other.selectionModel().blockSignals(False)
            other.viewport().update()
        if view is None or row is None:
            return
        model = view.model()
        view.selectionModel().blockSignals(True)
        view.selectionModel().setCurrentIndex(model.index(row, 0), QItemSelectionModel.SelectionFlag.ClearAndSelect)
        view.selectionModel().blockSignals(False)
        view.viewport().update()

    def _find(self, kind: str, key: Any) -> tuple[QListView | None, int | None]:
        if kind in (LIBRARY, FOLDER):
            model = self.folder_view.model()
            row = model.row_of(None if kind == LIBRARY else key)
            return self.folder_view, row
        for view, model in ((self.people_view, self.people_model), (self.things_view, self.things_model),
                            (self.search_view, self.search_model)):
            row = model.row_of(kind, key)
            if row is not None:
                return view, row
        return None, None

    @property
    def current(self) -> tuple[str, Any] | None:
        return self._current
