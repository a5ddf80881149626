"""People: the unnamed face groups to name (largest first), the people you named, and a person's page.

The page's data is read on an engine thread (`load_people`, i.e. engine.read_models.people_page: suggestions compare
face embeddings) and handed over as plain data; the widgets only show it and say what the user did through signals,
which the main window turns into Library verbs on its action thread.

Merging: "Merge into…" on a group's menu, or drag a group onto another group or onto a person.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from PySide6.QtCore import QMimeData, QPoint, QSize, QStringListModel, Qt, Signal
from PySide6.QtGui import QDrag, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCompleter,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.read_models import MAX_GROUPS_SHOWN, GroupInfo, PeopleData, people_page

from .thumbnails import FaceCropLoader, ThumbKey
from .widgets import FlowLayout, heading, placeholder_face, round_pixmap

log = logging.getLogger(__name__)

PERSON_MIME = "application/x-myvlm-person"
FACE_PX = 56


# -- data (engine.read_models.people_page, run on an engine thread) --------------------------------------------------

load_people = people_page  # the page's data: named people, unnamed groups (largest first), suggestions


# -- pieces ---------------------------------------------------------------------------------------------------------

class FaceStrip(QWidget):
    """A row of round face crops (loaded asynchronously)."""

    def __init__(self, loader: FaceCropLoader, face_ids: list[int], side: int = FACE_PX,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.loader = loader
        self.side = side
        self.labels: dict[ThumbKey, QLabel] = {}
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        for fid in face_ids:
            label = QLabel()
            label.setFixedSize(side, side)
            key = FaceCropLoader.key(fid)
            self.labels[key] = label
            lay.addWidget(label)
            self.refresh(key)
        lay.addStretch(1)

    def refresh(self, key: ThumbKey) -> None:
        label = self.labels.get(key)
        if label is None:
            return
        pm = self.loader.pixmap(key)
        if pm is None:
            self.loader.request(key)
            label.setPixmap(placeholder_face(self.side, self.palette()))
        else:
            label.setPixmap(round_pixmap(pm, self.side))


def _drag_person(source: QWidget, person_id: int, pixmap: QPixmap | None) -> None:
    mime = QMimeData()
    mime.setData(PERSON_MIME, json.dumps({"id": person_id}).encode())
    drag = QDrag(source)
    drag.setMimeData(mime)
    if pixmap is not None and not pixmap.isNull():
        drag.setPixmap(pixmap.scaled(48, 48, Qt.AspectRatioMode.KeepAspectRatio,
                                     Qt.TransformationMode.SmoothTransformation))
    drag.exec(Qt.DropAction.MoveAction)


def dropped_person(event: Any) -> int | None:
    md = event.mimeData()
    if md is None or not md.hasFormat(PERSON_MIME):
        return None
    try:
        return int(json.loads(bytes(md.data(PERSON_MIME).data()).decode())["id"])
    except (ValueError, KeyError, TypeError):
        return None


class GroupCard(QFrame):
    """One unnamed group: sample faces, "Who is this?", "Is this X?" yes/no, hide, and a menu."""

    nameRequested = Signal(int, str, list)    # group id, typed name (an existing name merges), faces shown
    rejectRequested = Signal(int, int)        # group id, person id ("No, this is not X")
    hideRequested = Signal(int)
    mergeRequested = Signal(int, int)         # source id, target id
    openRequested = Signal(int)

    def __init__(self, group: GroupInfo, loader: FaceCropLoader, completer_model: QStringListModel,
                 targets: list[tuple[int, str]], parent: QWidget | None = None):
        super().__init__(parent)
        self.group = group
        self.setObjectName("groupCard")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAcceptDrops(True)
        self._press: QPoint | None = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 8)
        lay.setSpacing(6)
        top = QHBoxLayout()
        self.faces = FaceStrip(loader, group.sample_faces)
        self.faces.setToolTip("Drag onto another group or a person to merge")
        top.addWidget(self.faces, 1)
        count = QLabel(f"{group.faces:,} face{'s' if group.faces != 1 else ''} in {group.photos:,} "
                       f"photo{'s' if group.photos != 1 else ''}")
        count.setObjectName("groupCount")
        top.addWidget(count)
        lay.addLayout(top)

        row = QHBoxLayout()
        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("whoIsThis")
        self.name_edit.setPlaceholderText("Who is this?")
        self.name_edit.setToolTip("Type a name and press Enter. Typing a name you already use merges this group "
                                  "into that person.")
        completer = QCompleter(completer_model, self.name_edit)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.name_edit.setCompleter(completer)
        self.name_edit.returnPressed.connect(self._name)
        self.name_edit.setMaximumWidth(260)
        row.addWidget(self.name_edit)
        self.suggestion_buttons: list[QPushButton] = []
        for pid, name, sim in group.suggestions[:1]:
            ask = QLabel(f"Is this <b>{_html(name)}</b>?")
            ask.setObjectName("isThis")
            ask.setToolTip(f"The faces look alike (similarity {sim:.2f})")
            yes = QPushButton("Yes")
            yes.setObjectName("suggestYes")
            yes.clicked.connect(lambda _=False, n=name: self.nameRequested.emit(self.group.id, n,
                                                                                self.group.face_ids))
            no = QPushButton("No")
            no.setObjectName("suggestNo")
            no.setToolTip(f"Not {name}: never suggested for these faces again")
            no.clicked.connect(lambda _=False, p=pid: self.rejectRequested.emit(self.group.id, p))
            row.addSpacing(10)
            row.addWidget(ask)
            row.addWidget(yes)
            row.addWidget(no)
            self.suggestion_buttons += [yes, no]
        row.addStretch(1)
        hide = QPushButton("Hide")
        hide.setObjectName("hideGroup")
        hide.setToolTip("Strangers: hide this group (new photos of them stay hidden too)")
        hide.clicked.connect(lambda: self.hideRequested.emit(self.group.id))
        row.addWidget(hide)
        more = QToolButton()
        more.setText("⋯")
        more.setObjectName("groupMenuButton")
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(more)
        menu.addAction("Show Photos", lambda: self.openRequested.emit(self.group.id))
        merge = menu.addMenu("Merge Into")
        for tid, tname in targets:
            if tid != group.id:
                merge.addAction(tname, lambda t=tid: self.mergeRequested.emit(self.group.id, t))
        merge.setEnabled(not merge.isEmpty())
        more.setMenu(menu)
        row.addWidget(more)
        lay.addLayout(row)

    def _name(self) -> None:
        text = self.name_edit.text().strip()
        if text:
            self.nameRequested.emit(self.group.id, text, self.group.face_ids)

    # drag this group; drop another onto it
    def mousePressEvent(self, event: Any) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._press = event.position().toPoint()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: Any) -> None:
        if self._press is not None and (event.position().toPoint() - self._press).manhattanLength() > 12:
            self._press = None
            _drag_person(self, self.group.id, self.faces.grab())
        super().mouseMoveEvent(event)

    def dragEnterEvent(self, event: Any) -> None:
        pid = dropped_person(event)
        if pid is not None and pid != self.group.id:
            event.acceptProposedAction()

    def dropEvent(self, event: Any) -> None:
        pid = dropped_person(event)
        if pid is not None and pid != self.group.id:
            self.mergeRequested.emit(pid, self.group.id)
            event.acceptProposedAction()


class PersonTile(QToolButton):
    """A named person: round face and name; click opens the page; drop a group on it to merge."""

    mergeRequested = Signal(int, int)
    openRequested = Signal(int)

    def __init__(self, person: GroupInfo, loader: FaceCropLoader, parent: QWidget | None = None):
        super().__init__(parent)
        self.person = person
        self.loader = loader
        self.setObjectName("personTile")
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
        self.setIconSize(QSize(72, 72))
        self.setFixedWidth(112)
        self.setAutoRaise(True)
        self.setAcceptDrops(True)
        self.setText(f"{person.name}\n{person.photos:,} photo{'s' if person.photos != 1 else ''}")
        self.setToolTip(f"{person.name}: {person.faces:,} faces. Drop a group here to merge it.")
        self.key = FaceCropLoader.key(person.sample_faces[0]) if person.sample_faces else None
        self.refresh()
        self.clicked.connect(lambda: self.openRequested.emit(self.person.id))

    def refresh(self, key: ThumbKey | None = None) -> None:
        if key is not None and key != self.key:
            return
        pm = self.loader.pixmap(self.key) if self.key else None
        if pm is None:
            if self.key:
                self.loader.request(self.key)
            self.setIcon(placeholder_face(72, self.palette()))
        else:
            self.setIcon(round_pixmap(pm, 72))

    def dragEnterEvent(self, event: Any) -> None:
        pid = dropped_person(event)
        if pid is not None and pid != self.person.id:
            event.acceptProposedAction()

    def dropEvent(self, event: Any) -> None:
        pid = dropped_person(event)
        if pid is not None and pid != self.person.id:
            self.mergeRequested.emit(pid, self.person.id)
            event.acceptProposedAction()


class PeoplePage(QScrollArea):
    """The overview: people you named, then the groups waiting for a name, largest first."""

    nameRequested = Signal(int, str, list)
    rejectRequested = Signal(int, int)
    hideRequested = Signal(int)
    hideSmallRequested = Signal(int)
    mergeRequested = Signal(int, int)
    openRequested = Signal(int)
    showHiddenChanged = Signal(bool)

    def __init__(self, loader: FaceCropLoader, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("peoplePage")
        self.loader = loader
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.data: PeopleData | None = None
        self.cards: list[GroupCard] = []
        self.tiles: list[PersonTile] = []
        self.names_model = QStringListModel(self)
        loader.ready.connect(self._on_face_ready)

        body = QWidget()
        body.setObjectName("pageBody")
        self.body_layout = lay = QVBoxLayout(body)
        lay.setContentsMargins(20, 16, 20, 20)
        lay.setSpacing(10)
        top = QHBoxLayout()
        title = QLabel("People")
        title.setObjectName("pageTitle")
        top.addWidget(title)
        top.addStretch(1)
        top.addWidget(QLabel("Hide groups of up to"))
        self.small_spin = QSpinBox()
        self.small_spin.setRange(1, 20)
        self.small_spin.setValue(2)
        self.small_spin.setSuffix(" faces")
        top.addWidget(self.small_spin)
        self.hide_small_button = QPushButton("Hide Small Groups")
        self.hide_small_button.setObjectName("hideSmallButton")
        self.hide_small_button.setToolTip("Strangers in the background: hide every unnamed group this small at once")
        self.hide_small_button.clicked.connect(lambda: self.hideSmallRequested.emit(self.small_spin.value()))
        top.addWidget(self.hide_small_button)
        self.show_hidden = QPushButton("Show Hidden")
        self.show_hidden.setCheckable(True)
        self.show_hidden.toggled.connect(self.showHiddenChanged)
        top.addWidget(self.show_hidden)
        lay.addLayout(top)
        self.summary = QLabel()
        self.summary.setObjectName("pageSummary")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)

        self.named_heading = heading("Your people")
        lay.addWidget(self.named_heading)
        self.tiles_box = QWidget()
        self.tiles_layout = FlowLayout(self.tiles_box, spacing=8)
        lay.addWidget(self.tiles_box)
        self.groups_heading = heading("Who are they? Largest groups first")
        lay.addWidget(self.groups_heading)
        self.cards_box = QVBoxLayout()
        self.cards_box.setSpacing(8)
        lay.addLayout(self.cards_box)
        self.more_label = QLabel()
        self.more_label.setObjectName("pageSummary")
        lay.addWidget(self.more_label)
        lay.addStretch(1)
        self.setWidget(body)

    def set_data(self, data: PeopleData) -> None:
        self.data = data
        self.names_model.setStringList(data.names)
        for w in self.cards + self.tiles:
            w.setParent(None)
            w.deleteLater()
        self.cards, self.tiles = [], []
        while self.tiles_layout.count():
            self.tiles_layout.takeAt(0)
        for p in data.named:
            tile = PersonTile(p, self.loader, self.tiles_box)
            tile.openRequested.connect(self.openRequested)
            tile.mergeRequested.connect(self.mergeRequested)
            self.tiles_layout.addWidget(tile)
            tile.show()
            self.tiles.append(tile)
        self.tiles_box.updateGeometry()
        targets = [(p.id, p.name or "") for p in data.named]
        shown = data.groups[:MAX_GROUPS_SHOWN]
        targets += [(g.id, f"Unnamed group #{g.id} ({g.faces} faces)") for g in shown]
        for g in shown:
            card = GroupCard(g, self.loader, self.names_model, targets)
            card.nameRequested.connect(self.nameRequested)
            card.rejectRequested.connect(self.rejectRequested)
            card.hideRequested.connect(self.hideRequested)
            card.mergeRequested.connect(self.mergeRequested)
            card.openRequested.connect(self.openRequested)
            self.cards_box.addWidget(card)
            self.cards.append(card)
        self.more_label.setText(f"… and {len(data.groups) - len(shown):,} smaller groups. Name or hide these first."
                                if len(data.groups) > len(shown) else "")
        self.named_heading.setVisible(bool(data.named))
        self.tiles_box.setVisible(bool(data.named))
        self.groups_heading.setVisible(bool(data.groups))
        parts = []
        if data.groups:
            parts.append(f"{len(data.groups):,} group{'s' if len(data.groups) != 1 else ''} of faces to name")
        if data.named:
            parts.append(f"{len(data.named):,} {'person' if len(data.named) == 1 else 'people'} named")
        if data.hidden:
            parts.append(f"{data.hidden:,} hidden")
        if not data.groups and not data.named and data.hidden:
            self.summary.setText(f"Every group of faces is hidden ({data.hidden:,} hidden). Show Hidden brings "
                                 "them back.")
        elif not data.groups and not data.named:
            self.summary.setText("No faces yet. Faces are found while photos are indexed; groups of the same face "
                                 "appear here once a face is seen in three photos.")
        else:
            self.summary.setText(" · ".join(parts) + (". Name a group by typing who it is; typing a name you "
                                                      "already use merges it." if data.groups else ""))

    def card(self, group_id: int) -> GroupCard | None:
        return next((c for c in self.cards if c.group.id == group_id), None)

    def _on_face_ready(self, key: ThumbKey) -> None:
        for c in self.cards:
            c.faces.refresh(key)
        for t in self.tiles:
            t.refresh(key)


# -- a person's page header ---------------------------------------------------------------------------------------

class PersonHeader(QWidget):
    """Above the grid on a person's page: face, name, counts, actions, and their faces (reject, move)."""

    renameRequested = Signal(int)
    teachRequested = Signal(int)
    hideRequested = Signal(int, bool)
    forgetRequested = Signal(int)
    rejectFaces = Signal(list, int)       # face ids, person id
    moveFaces = Signal(list, int)         # face ids, target person id
    nameRequested = Signal(int, str, list)  # an unnamed group's page: name it here (faces shown)

    def __init__(self, loader: FaceCropLoader, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("personHeader")
        self.loader = loader
        self.person: dict[str, Any] | None = None
        self.shown_face_ids: list[int] = []
        self.targets: list[tuple[int, str]] = []
        loader.ready.connect(self._on_face_ready)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(14, 10, 14, 6)
        lay.setSpacing(6)
        top = QHBoxLayout()
        self.face = QLabel()
        self.face.setFixedSize(64, 64)
        top.addWidget(self.face)
        names = QVBoxLayout()
        self.title = QLabel()
        self.title.setObjectName("pageTitle")
        self.subtitle = QLabel()
        self.subtitle.setObjectName("pageSummary")
        names.addWidget(self.title)
        names.addWidget(self.subtitle)
        top.addLayout(names, 1)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("Who is this?")
        self.name_edit.setMaximumWidth(220)
        self.name_edit.returnPressed.connect(self._name)
        top.addWidget(self.name_edit)
        self.rename_button = QPushButton("Rename…")
        self.rename_button.clicked.connect(lambda: self.person and self.renameRequested.emit(self.person["id"]))
        self.teach_button = QPushButton("Teach the Captioner…")
        self.teach_button.setObjectName("teachButton")
        self.teach_button.setToolTip("Train captions and answers that call this person by name")
        self.teach_button.clicked.connect(lambda: self.person and self.teachRequested.emit(self.person["id"]))
        more = QToolButton()
        more.setText("⋯")
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(more)
        self.hide_action = menu.addAction("Hide This Person")
        self.hide_action.triggered.connect(
            lambda: self.person and self.hideRequested.emit(self.person["id"], not self.person["hidden"]))
        menu.addSeparator()
        menu.addAction("Forget This Person…",
                       lambda: self.person and self.forgetRequested.emit(self.person["id"]))
        more.setMenu(menu)
        for w in (self.rename_button, self.teach_button, more):
            top.addWidget(w)
        lay.addLayout(top)
        self.faces = QListWidget()
        self.faces.setObjectName("faceStrip")
        self.faces.setViewMode(QListWidget.ViewMode.IconMode)
        self.faces.setFlow(QListWidget.Flow.LeftToRight)
        self.faces.setWrapping(False)
        self.faces.setIconSize(QSize(FACE_PX, FACE_PX))
        self.faces.setGridSize(QSize(FACE_PX + 8, FACE_PX + 8))
        self.faces.setFixedHeight(FACE_PX + 12)
        self.faces.setFrameShape(QFrame.Shape.NoFrame)
        self.faces.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.faces.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.faces.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.faces.setMovement(QListWidget.Movement.Static)
        self.faces.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.faces.customContextMenuRequested.connect(self._face_menu)
        self.faces.setToolTip("Right-click faces that are not this person")
        self.faces.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        lay.addWidget(self.faces)

    def set_person(self, person: dict[str, Any], faces: list[dict[str, Any]], photos: int,
                   targets: list[tuple[int, str]]) -> None:
        self.person = person
        self.targets = targets
        named = bool(person.get("name"))
        self.title.setText(person["name"] or "Unnamed group")
        hidden = " · hidden" if person.get("hidden") else ""
        self.subtitle.setText(f"{photos:,} photo{'s' if photos != 1 else ''} · {len(faces):,} "
                              f"face{'s' if len(faces) != 1 else ''}{hidden}")
        self.name_edit.setVisible(not named)
        self.name_edit.clear()
        self.rename_button.setVisible(named)
        self.teach_button.setVisible(named)
        self.hide_action.setText("Show This Person Again" if person.get("hidden") else "Hide This Person")
        self.faces.clear()
        self.shown_face_ids = [f["id"] for f in faces]  # naming this group confirms these, not faces placed later
        for f in faces[:300]:
            item = QListWidgetItem()
            item.setData(Qt.ItemDataRole.UserRole, f["id"])
            item.setToolTip(f"{f.get('photo_path', '')}\n{f.get('state', '')}")
            self.faces.addItem(item)
            self._refresh_item(item)
        first = faces[0]["id"] if faces else None
        self._face_key = FaceCropLoader.key(first) if first else None
        self._refresh_face()

    def set_completer(self, model: QStringListModel) -> None:
        completer = QCompleter(model, self.name_edit)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.name_edit.setCompleter(completer)

    def _name(self) -> None:
        if self.person and self.name_edit.text().strip():
            self.nameRequested.emit(self.person["id"], self.name_edit.text().strip(), self.shown_face_ids)

    def _refresh_item(self, item: QListWidgetItem) -> None:
        key = FaceCropLoader.key(item.data(Qt.ItemDataRole.UserRole))
        pm = self.loader.pixmap(key)
        if pm is None:
            self.loader.request(key)
            item.setIcon(placeholder_face(FACE_PX, self.palette()))
        else:
            item.setIcon(round_pixmap(pm, FACE_PX))

    def _refresh_face(self) -> None:
        pm = self.loader.pixmap(self._face_key) if self._face_key else None
        if pm is None:
            if self._face_key:
                self.loader.request(self._face_key)
            self.face.setPixmap(placeholder_face(64, self.palette()))
        else:
            self.face.setPixmap(round_pixmap(pm, 64))

    def _on_face_ready(self, key: ThumbKey) -> None:
        if key == getattr(self, "_face_key", None):
            self._refresh_face()
        for i in range(self.faces.count()):
            item = self.faces.item(i)
            if FaceCropLoader.key(item.data(Qt.ItemDataRole.UserRole)) == key:
                self._refresh_item(item)

    def selected_faces(self) -> list[int]:
        return [int(i.data(Qt.ItemDataRole.UserRole)) for i in self.faces.selectedItems()]

    def _face_menu(self, pos: QPoint) -> None:
        item = self.faces.itemAt(pos)
        if item is None or self.person is None:
            return
        if not item.isSelected():
            self.faces.clearSelection()
            item.setSelected(True)
        ids = self.selected_faces()
        who = self.person["name"] or "this group"
        menu = QMenu(self)
        n = len(ids)
        menu.addAction(f"Not {who}" + (f" ({n} faces)" if n > 1 else ""),
                       lambda: self.rejectFaces.emit(ids, self.person["id"]))
        move = menu.addMenu("Move To")
        for tid, tname in self.targets:
            if tid != self.person["id"]:
                move.addAction(tname, lambda t=tid: self.moveFaces.emit(ids, t))
        move.setEnabled(not move.isEmpty())
        menu.exec(self.faces.viewport().mapToGlobal(pos))


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

