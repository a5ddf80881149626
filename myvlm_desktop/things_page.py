"""Things: your pets and objects (object concepts), suggestions of recurring things to name, and a concept's page.

Naming a thing: select a few photos of it in the grid (4 is plenty), Things ▸ Name This Thing…; its head trains on
an engine thread in seconds. Data is read on an engine thread (`load_things`: engine.read_models) and shown here;
actions go out as signals to the main window.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QSize, QStringListModel, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.library import Photo
from engine.read_models import ThingInfo, ThingsData, thing_info, things_page

from .grid import thumb_key
from .thumbnails import ThumbKey, ThumbnailLoader
from .widgets import FlowLayout, fit_to_width, heading

log = logging.getLogger(__name__)

TILE_PX = 120


# the page's data: engine.read_models.things_page, run on an engine thread (suggestions compare CLIP embeddings)
load_things = things_page
concept_info = thing_info


def metrics_text(info: ThingInfo) -> str:
    m = info.metrics or {}
    if info.head_state == "error":
        return f"Training failed: {info.error or 'unknown error'}"
    if info.head_state == "untrained":
        return "Not trained yet"
    p, r = m.get("precision"), m.get("recall")
    if p is None and r is None:
        held = m.get("held_out") or {}
        if "recall" in held:
            return f"Recall {held['recall']:.0%} on {held['faces']} faces it did not learn from"
        return "Trained" + (" (out of date: retrain)" if info.head_state == "stale" else "")
    parts = []
    if p is not None:
        parts.append(f"precision {p:.0%}")
    if r is not None:
        parts.append(f"recall {r:.0%}")
    text = "Recognised with " + " and ".join(parts) + " on photos it did not train on"
    if info.head_state == "stale":
        text += " · new examples: retrain"
    return text


def embedding_text(state: str) -> str:
    return {"ready": "Captions use its name", "partial": "Captioner training unfinished: teach again to continue",
            "stale": "Captioner taught on another model: teach again", "training": "Teaching the captioner…",
            "failed": "Teaching the captioner failed: teach again to continue"
            }.get(state, "The captioner does not know it yet")


class ThumbTile(QToolButton):
    """A photo thumbnail with a title under it (a thing, a suggestion)."""

    def __init__(self, loader: ThumbnailLoader, photo: Photo | None, text: str, px: int = TILE_PX,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.loader, self.photo, self.px = loader, photo, px
        self.setObjectName("thingTile")
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
        self.setIconSize(QSize(px, px))
        self.setFixedWidth(px + 24)
        self.setAutoRaise(True)
        self.setText(text)
        self.key: ThumbKey | None = thumb_key(photo) if photo is not None else None
        blank = QPixmap(px, px)
        blank.fill(Qt.GlobalColor.transparent)
        self.setIcon(QIcon(blank))  # the size it will have, before the thumbnail arrives
        self.refresh()

    def refresh(self, key: ThumbKey | None = None) -> None:
        if key is not None and key != self.key:
            return
        pm = self.loader.pixmap(self.key) if self.key else None
        if pm is None:
            if self.key:
                self.loader.request(self.key)
        else:
            self.setIcon(pm)


class NameThingDialog(QDialog):
    """"Name this thing…": a name (an existing thing's name adds these photos to it)."""

    def __init__(self, count: int, names: list[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Name This Thing")
        lay = QVBoxLayout(self)
        text = QLabel(f"What do these {count} photos show? A pet, a toy, a car, a mug…<br>"
                      "<span style='color:gray'>The app learns to recognise it in seconds, then finds it in your "
                      "other photos. A name you already use adds these photos to that thing.</span>")
        text.setWordWrap(True)
        lay.addWidget(text)
        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("thingName")
        self.name_edit.setPlaceholderText("Bella, my red bike, grandma's teapot…")
        completer = QCompleter(QStringListModel(names, self), self.name_edit)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.name_edit.setCompleter(completer)
        lay.addWidget(self.name_edit)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Learn It")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self.name_edit.textChanged.connect(
            lambda t: self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(bool(t.strip())))
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(False)
        fit_to_width(self, 440)

    def name(self) -> str:
        return " ".join(self.name_edit.text().split())


class ThingsPage(QScrollArea):
    openRequested = Signal(int)              # concept id
    nameRequested = Signal()                 # "Name this thing…" with the grid's selection
    nameSuggestion = Signal(list)            # photo ids of a suggestion
    showSuggestion = Signal(list)

    def __init__(self, loader: ThumbnailLoader, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("thingsPage")
        self.loader = loader
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.data: ThingsData | None = None
        self.tiles: list[ThumbTile] = []
        self.rows: list[QWidget] = []
        loader.ready.connect(self._on_ready)
        body = QWidget()
        body.setObjectName("pageBody")
        lay = QVBoxLayout(body)
        lay.setContentsMargins(20, 16, 20, 20)
        lay.setSpacing(10)
        top = QHBoxLayout()
        title = QLabel("Things")
        title.setObjectName("pageTitle")
        top.addWidget(title)
        top.addStretch(1)
        self.name_button = QPushButton("Name This Thing…")
        self.name_button.setObjectName("nameThingButton")
        self.name_button.clicked.connect(self.nameRequested)
        top.addWidget(self.name_button)
        lay.addLayout(top)
        self.summary = QLabel()
        self.summary.setObjectName("pageSummary")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        self.things_box = QWidget()
        self.things_layout = FlowLayout(self.things_box, spacing=10)
        lay.addWidget(self.things_box)
        self.suggest_heading = heading("Worth naming? Things that keep coming back")
        lay.addWidget(self.suggest_heading)
        self.suggest_note = QLabel()
        self.suggest_note.setObjectName("pageSummary")
        self.suggest_note.setWordWrap(True)
        lay.addWidget(self.suggest_note)
        self.suggest_box = QVBoxLayout()
        lay.addLayout(self.suggest_box)
        lay.addStretch(1)
        self.setWidget(body)

    def set_data(self, data: ThingsData) -> None:
        self.data = data
        for w in self.tiles + self.rows:
            w.setParent(None)
            w.deleteLater()
        self.tiles, self.rows = [], []
        while self.things_layout.count():
            self.things_layout.takeAt(0)
        for t in data.things:
            tile = ThumbTile(self.loader, t.cover, f"{t.name}\n{t.photos:,} photo{'s' if t.photos != 1 else ''}")
            tile.setToolTip(f"{t.name}: {metrics_text(t)}. {embedding_text(t.embedding_state)}.")
            tile.clicked.connect(lambda _=False, cid=t.id: self.openRequested.emit(cid))
            self.things_layout.addWidget(tile)
            tile.show()
            self.tiles.append(tile)
        self.things_box.setVisible(bool(data.things))
        if data.things:
            self.summary.setText(f"{len(data.things)} thing{'s' if len(data.things) != 1 else ''} the app "
                                 "recognises. To add one, select a few photos of it (4 are plenty) and choose "
                                 "Name This Thing…")
        else:
            self.summary.setText("Pets, toys, a car, a favourite mug: select a few photos of one in your library "
                                 "(4 are plenty), then choose Name This Thing…. The app learns it in seconds and "
                                 "finds it everywhere.")
        for s in data.suggestions:
            row = QFrame()
            row.setObjectName("suggestionRow")
            row.setFrameShape(QFrame.Shape.StyledPanel)
            h = QHBoxLayout(row)
            for p in s.samples:
                tile = ThumbTile(self.loader, p, "", px=72)
                tile.clicked.connect(lambda _=False, ids=s.photo_ids: self.showSuggestion.emit(ids))
                h.addWidget(tile)
                self.tiles.append(tile)
            text = QLabel(f"<b>{len(s.photo_ids)} photos</b> of this, taken on {s.days} different days.")
            text.setWordWrap(True)
            h.addWidget(text, 1)
            button = QPushButton("Name It…")
            button.clicked.connect(lambda _=False, ids=s.photo_ids: self.nameSuggestion.emit(ids))
            h.addWidget(button)
            self.suggest_box.addWidget(row)
            self.rows.append(row)
        self.suggest_note.setText(data.suggestions_note)
        self.suggest_note.setVisible(bool(data.suggestions_note))

    def _on_ready(self, key: ThumbKey) -> None:
        for t in self.tiles:
            t.refresh(key)


class ConceptHeader(QWidget):
    """Above the grid on a thing's page: name, how well it is recognised, and what to do next."""

    teachRequested = Signal(int)
    retrainRequested = Signal(int)
    renameRequested = Signal(int)
    removeRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("conceptHeader")
        self.info: ThingInfo | None = None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(14, 10, 14, 8)
        texts = QVBoxLayout()
        self.title = QLabel()
        self.title.setObjectName("pageTitle")
        self.metrics = QLabel()
        self.metrics.setObjectName("pageSummary")
        self.metrics.setWordWrap(True)
        self.embedding = QLabel()
        self.embedding.setObjectName("pageSummary")
        texts.addWidget(self.title)
        texts.addWidget(self.metrics)
        texts.addWidget(self.embedding)
        lay.addLayout(texts, 1)
        self.teach_button = QPushButton("Teach the Captioner…")
        self.teach_button.setObjectName("teachButton")
        self.teach_button.clicked.connect(lambda: self.info and self.teachRequested.emit(self.info.id))
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.setToolTip("Learn it again from its photos (after adding photos)")
        self.retrain_button.clicked.connect(lambda: self.info and self.retrainRequested.emit(self.info.id))
        more = QToolButton()
        more.setText("⋯")
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(more)
        menu.addAction("Rename…", lambda: self.info and self.renameRequested.emit(self.info.id))
        menu.addSeparator()
        menu.addAction("Forget This Thing…", lambda: self.info and self.removeRequested.emit(self.info.id))
        more.setMenu(menu)
        for w in (self.teach_button, self.retrain_button, more):
            lay.addWidget(w, 0, Qt.AlignmentFlag.AlignTop)

    def set_info(self, info: ThingInfo) -> None:
        self.info = info
        self.title.setText(info.name)
        self.metrics.setText(f"{info.photos:,} photos ({info.examples} you marked) · {metrics_text(info)}")
        self.embedding.setText(embedding_text(info.embedding_state))
        self.retrain_button.setVisible(info.kind == "object")


class NameThingPrompt:
    """Opens `NameThingDialog` and returns the name (None: cancelled). Tests replace `ask`."""

    @staticmethod
    def ask(parent: QWidget, count: int, names: list[str]) -> str | None:
        dlg = NameThingDialog(count, names, parent)
        if dlg.exec() == QDialog.DialogCode.Accepted and dlg.name():
            return dlg.name()
        return None

