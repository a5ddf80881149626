"""The detail pane: the selected photo large, its faces boxed with names, its captions (editable), and its
questions and answers with an "Ask about this photo" box. "Where is Bella?" beside each recognised concept asks a
VLM that answers with boxes (MiniGPT-v2) and draws its box on the photo.

The pane only shows what it is given (the window reads it: engine.read_models.photo_info) and paints. Changes go
through the main window, which runs them on engine threads: `DetailActions` is the small interface it calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from PySide6.QtCore import (
    QObject,
    QPoint,
    QRect,
    QRectF,
    QRunnable,
    QSize,
    Qt,
    QThreadPool,
    Signal,
    Slot,
)
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QImage,
    QImageReader,
    QKeySequence,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
    QShortcut,
    QTransform,
)
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.library import ImageCache, LibraryPaths, Photo

from .resources import icon
from .widgets import PERSON_CHIP, THING_CHIP, ChipBar, heading, hline

log = logging.getLogger(__name__)


@dataclass
class FaceBox:
    face_id: int
    x: float
    y: float
    w: float
    h: float
    person_id: int | None
    name: str | None
    state: str

    @property
    def label(self) -> str:
        if self.name:
            return self.name if self.state == "confirmed" else f"{self.name}?"
        return "Who is this?"


class DetailActions(Protocol):
    def save_caption(self, photo_id: int, text: str) -> None: ...
    def ask_question(self, photo_id: int, question: str) -> None: ...
    def rotate_current(self, degrees: int) -> None: ...
    def open_full_view(self) -> None: ...
    def face_menu(self, face: FaceBox, photo: Photo, global_pos: QPoint) -> None: ...
    def navigate(self, kind: str, key: Any) -> None: ...
    def locate_concept(self, photo_id: int, concept_id: int, name: str) -> None: ...
    def stop_locating(self) -> None: ...


# -- loading the big picture off the GUI thread -------------------------------------------------------------------

def read_preview(paths: LibraryPaths, photo: Photo, max_side: int) -> QImage:
    """The ~1440 px preview (user rotation applied); rebuilt from the original when the cache dropped it."""
    cache = ImageCache(paths)
    reader = QImageReader(str(cache.preview_path(photo.content_hash or "")))
    reader.setAutoTransform(False)
    size = reader.size()
    if size.isValid() and max(size.width(), size.height()) > max_side:
        reader.setScaledSize(size.scaled(QSize(max_side, max_side), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull() and photo.content_hash:
        pil = cache.preview(photo.fs_path, photo.content_hash, 0).convert("RGB")
        data = pil.tobytes("raw", "RGB")
        image = QImage(data, pil.width, pil.height, 3 * pil.width, QImage.Format.Format_RGB888).copy()
    rotation = int(photo.user_rotation or 0) % 360
    if rotation and not image.isNull():
        image = image.transformed(QTransform().rotate(rotation), Qt.TransformationMode.SmoothTransformation)
    return image


class _PreviewBridge(QObject):
    loaded = Signal(int, int, QImage)  # generation, photo id, image


class _PreviewTask(QRunnable):
    def __init__(self, bridge: _PreviewBridge, paths: LibraryPaths, photo: Photo, generation: int, max_side: int):
        super().__init__()
        self.bridge, self.paths, self.photo, self.generation, self.max_side = bridge, paths, photo, generation, max_side

    def run(self) -> None:
        try:
            image = read_preview(self.paths, self.photo, self.max_side)
        except Exception:
            log.info("no preview for %s", self.photo.path, exc_info=True)
            image = QImage()
        self.bridge.loaded.emit(self.generation, self.photo.id, image)


class PreviewLoader(QObject):
    """One big image at a time; the latest request wins."""

    loaded = Signal(int, QImage)  # photo id, image (null: could not be read)

    def __init__(self, paths: LibraryPaths, parent: QObject | None = None):
        super().__init__(parent)
        self.paths = paths
        self._generation = 0
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._bridge = _PreviewBridge(self)
        self._bridge.loaded.connect(self._on_loaded, Qt.ConnectionType.QueuedConnection)
        self._cache: tuple[tuple[int, str, int], QImage] | None = None

    def load(self, photo: Photo, max_side: int = 1440) -> None:
        self._generation += 1
        key = (photo.id, photo.content_hash or "", int(photo.user_rotation or 0))
        if self._cache is not None and self._cache[0] == key:
            self.loaded.emit(photo.id, self._cache[1])
            return
        self._pool.clear()
        self._pool.start(_PreviewTask(self._bridge, self.paths, photo, self._generation, max_side))

    @Slot(int, int, QImage)
    def _on_loaded(self, generation: int, photo_id: int, image: QImage) -> None:
        if generation != self._generation:
            return
        self.loaded.emit(photo_id, image)

    def remember(self, photo: Photo, image: QImage) -> None:
        self._cache = ((photo.id, photo.content_hash or "", int(photo.user_rotation or 0)), image)

    def shutdown(self) -> None:
        self._generation += 1
        self._pool.clear()
        self._pool.waitForDone(5000)


# -- the picture with its faces -----------------------------------------------------------------------------------

class PhotoCanvas(QWidget):
    """The photo fitted into the widget, faces boxed with their names. Click a face for its menu."""

    faceClicked = Signal(object, QPoint)  # FaceBox, global position
    activated = Signal()  # double click

    def __init__(self, parent: QWidget | None = None, *, min_height: int = 220):
        super().__init__(parent)
        self.setObjectName("photoCanvas")
        self.setMinimumHeight(min_height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self._pixmap: QPixmap | None = None
        self._frame = QSize(0, 0)  # the displayed frame the face boxes are in (full size, rotated)
        self.faces: list[FaceBox] = []
        self.show_faces = True
        self._hover: int | None = None
        self.message = ""
        self.found: tuple[QRectF, str] | None = None   # "Where is …?": a box in frame pixels and its name

    def set_found(self, box: QRectF | None, name: str = "") -> None:
        self.found = (box, name) if box is not None else None
        self.update()

    def found_rect(self) -> QRectF:
        """The found box in widget coordinates (empty when there is none)."""
        if self.found is None:
            return QRectF()
        box = self.found[0]
        return self.face_rect(FaceBox(0, box.x(), box.y(), box.width(), box.height(), None, None, ""))

    def set_photo(self, image: QImage | None, frame: QSize, faces: list[FaceBox]) -> None:
        self._pixmap = QPixmap.fromImage(image) if image is not None and not image.isNull() else None
        self._frame = frame
        self.faces = faces
        self.update()

    def set_faces(self, faces: list[FaceBox]) -> None:
        self.faces = faces
        self.update()

    def has_image(self) -> bool:
        return self._pixmap is not None

    def image_rect(self) -> QRect:
        if self._pixmap is None:
            return QRect()
        size = self._pixmap.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        r = QRect(0, 0, size.width(), size.height())
        r.moveCenter(self.rect().center())
        return r

    def face_rect(self, face: FaceBox) -> QRectF:
        target = self.image_rect()
        if target.isEmpty() or self._frame.width() <= 0 or self._frame.height() <= 0:
            return QRectF()
        sx = target.width() / self._frame.width()
        sy = target.height() / self._frame.height()
        return QRectF(target.left() + face.x * sx, target.top() + face.y * sy, face.w * sx, face.h * sy)

    def _face_at(self, pos: QPoint) -> int | None:
        for i, f in enumerate(self.faces):
            if self.face_rect(f).adjusted(-4, -4, 4, 4).contains(pos):
                return i
        return None

    def mouseMoveEvent(self, event: Any) -> None:
        hover = self._face_at(event.position().toPoint()) if self.show_faces else None
        if hover != self._hover:
            self._hover = hover
            self.setCursor(Qt.CursorShape.PointingHandCursor if hover is not None else Qt.CursorShape.ArrowCursor)
            self.setToolTip(self.faces[hover].label if hover is not None else "")
            self.update()

    def leaveEvent(self, event: Any) -> None:
        self._hover = None
        self.update()

    def mousePressEvent(self, event: Any) -> None:
        i = self._face_at(event.position().toPoint()) if self.show_faces else None
        if i is not None and event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self.faceClicked.emit(self.faces[i], event.globalPosition().toPoint())
            return
        super().mousePressEvent(event)

    def mouseDoubleClickEvent(self, event: Any) -> None:
        self.activated.emit()

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        pal = self.palette()
        if self._pixmap is None:
            p.setPen(pal.color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.WindowText))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.message)
            p.end()
            return
        target = self.image_rect()
        p.drawPixmap(target, self._pixmap)
        if self.found is not None:
            self._paint_found(p)
        if not self.show_faces:
            p.end()
            return
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.9))
        font.setBold(True)
        fm = QFontMetrics(font)
        p.setFont(font)
        accent = QColor(pal.color(QPalette.ColorRole.Highlight))
        placed: list[QRectF] = []
        for i, f in enumerate(self.faces):
            r = self.face_rect(f)
            if r.isEmpty():
                continue
            named = bool(f.name)
            color = accent if named else QColor(255, 255, 255)
            pen = QPen(color, 3 if i == self._hover else 2)
            if not named or f.state == "suggested":
                pen.setStyle(Qt.PenStyle.DashLine)
            p.setPen(QPen(QColor(0, 0, 0, 120), pen.widthF() + 2))
            p.drawRoundedRect(r, 4, 4)
            p.setPen(pen)
            p.drawRoundedRect(r, 4, 4)
            text = f.label
            w = fm.horizontalAdvance(text) + 10
            tag = QRectF(r.center().x() - w / 2, r.bottom() + 3, w, fm.height() + 4)
            if tag.bottom() > target.bottom():
                tag.moveBottom(r.top() - 3)
            tag.moveLeft(max(target.left(), min(tag.left(), target.right() - tag.width())))
            for _ in range(len(placed)):  # names of faces side by side: one under the other, not on top
                clash = next((p for p in placed if p.intersects(tag)), None)
                if clash is None:
                    break
                tag.moveTop(clash.bottom() + 2)
            placed.append(QRectF(tag))
            path = QPainterPath()
            path.addRoundedRect(tag, 4, 4)
            p.fillPath(path, QColor(0, 0, 0, 170) if named else QColor(0, 0, 0, 130))
            p.setPen(QColor(255, 255, 255))
            p.drawText(tag, Qt.AlignmentFlag.AlignCenter, text)
        p.end()

    def _paint_found(self, p: QPainter) -> None:
        r = self.found_rect()
        if r.isEmpty():
            return
        color = QColor(255, 196, 0)
        p.setPen(QPen(QColor(0, 0, 0, 140), 5))
        p.drawRect(r)
        p.setPen(QPen(color, 3))
        p.drawRect(r)
        fm = QFontMetrics(self.font())
        name = self.found[1] if self.found else ""
        tag = QRectF(r.left(), r.top() - fm.height() - 6, fm.horizontalAdvance(name) + 12, fm.height() + 4)
        if tag.top() < self.image_rect().top():
            tag.moveTop(r.top() + 2)
        path = QPainterPath()
        path.addRoundedRect(tag, 4, 4)
        p.fillPath(path, color)
        p.setPen(QColor(0, 0, 0))
        p.drawText(tag, Qt.AlignmentFlag.AlignCenter, name)

    def sizeHint(self) -> QSize:
        return QSize(360, 270)


# -- the pane -----------------------------------------------------------------------------------------------------

class DetailPane(QScrollArea):
    """Everything about the current photo."""

    def __init__(self, actions: DetailActions, paths: LibraryPaths, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("detailPane")
        self.actions = actions
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.photo: Photo | None = None
        self.faces: list[FaceBox] = []
        self.captions: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self._shown_caption = ""
        self.loader = PreviewLoader(paths, self)
        self.loader.loaded.connect(self._on_preview)

        body = QWidget()
        body.setObjectName("detailBody")
        lay = QVBoxLayout(body)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(8)

        self.canvas = PhotoCanvas()
        self.canvas.faceClicked.connect(self._on_face_clicked)
        self.canvas.activated.connect(lambda: self.actions.open_full_view())
        lay.addWidget(self.canvas, 3)

        tools = QHBoxLayout()
        tools.setSpacing(2)
        sp = QStyle.StandardPixmap
        self.rotate_left_button = self._tool(icon("rotate-left", "object-rotate-left", sp.SP_BrowserReload),
                                             "Rotate left (Ctrl+Shift+R); the file is never changed",
                                             lambda: self.actions.rotate_current(-90))
        self.rotate_right_button = self._tool(icon("rotate-right", "object-rotate-right", sp.SP_BrowserReload),
                                              "Rotate right (Ctrl+R); the file is never changed",
                                              lambda: self.actions.rotate_current(90))
        self.full_view_button = self._tool(icon("fullscreen", "view-fullscreen", sp.SP_TitleBarMaxButton),
                                           "Full view (Space)", lambda: self.actions.open_full_view())
        self.faces_button = QToolButton()
        self.faces_button.setText("Faces")
        self.faces_button.setCheckable(True)
        self.faces_button.setChecked(True)
        self.faces_button.setAutoRaise(True)
        self.faces_button.setToolTip("Show face boxes and names")
        self.faces_button.toggled.connect(self._toggle_faces)
        for b in (self.rotate_left_button, self.rotate_right_button, self.full_view_button):
            tools.addWidget(b)
        tools.addStretch(1)
        tools.addWidget(self.faces_button)
        lay.addLayout(tools)

        self.title = QLabel()
        self.title.setObjectName("detailTitle")
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.meta = QLabel()
        self.meta.setObjectName("detailMeta")
        self.meta.setWordWrap(True)
        lay.addWidget(self.title)
        lay.addWidget(self.meta)
        self.who = ChipBar()
        self.who.activated.connect(lambda kind, key: self.actions.navigate(kind, key))
        lay.addWidget(self.who)
        # "Where is Bella?": one button per concept recognised here; the answer is a box drawn on the photo
        self.where_bar = QWidget()
        self.where_bar.setObjectName("whereBar")
        where_row = QHBoxLayout(self.where_bar)
        where_row.setContentsMargins(0, 0, 0, 0)
        where_row.setSpacing(4)
        self.where_buttons: list[QPushButton] = []
        self._where_row = where_row
        self._where_busy = False
        self.where_stop = QPushButton("Stop")
        self.where_stop.setToolTip("Stop looking (the model stops at its next word)")
        self.where_stop.clicked.connect(lambda: self.actions.stop_locating())
        self.where_stop.hide()
        where_row.addStretch(1)
        where_row.addWidget(self.where_stop)
        lay.addWidget(self.where_bar)
        self.where_status = self._small_label("whereStatus")
        lay.addWidget(self.where_status)

        lay.addWidget(hline())
        lay.addWidget(heading("Caption"))
        self.caption_edit = QPlainTextEdit()
        self.caption_edit.setObjectName("captionEdit")
        self.caption_edit.setPlaceholderText("No caption yet. Type one: it is yours, search finds it, and no model "
                                             "ever overwrites it.")
        self.caption_edit.setTabChangesFocus(True)
        self.caption_edit.setFixedHeight(88)
        self.caption_edit.textChanged.connect(self._on_caption_edited)
        lay.addWidget(self.caption_edit)
        row = QHBoxLayout()
        self.caption_note = QLabel()
        self.caption_note.setObjectName("captionNote")
        self.caption_note.setWordWrap(True)
        row.addWidget(self.caption_note, 1)
        self.revert_button = QPushButton("Revert")
        self.revert_button.clicked.connect(self._revert_caption)
        self.save_button = QPushButton("Save")
        self.save_button.setDefault(True)
        self.save_button.setToolTip("Save the caption (Ctrl+Enter)")
        self.save_button.clicked.connect(self._save_caption)
        row.addWidget(self.revert_button)
        row.addWidget(self.save_button)
        lay.addLayout(row)
        save_shortcut = QShortcut(QKeySequence("Ctrl+Return"), self.caption_edit)
        save_shortcut.activated.connect(self._save_caption)
        self.personalized_label = self._small_label("personalizedCaption")
        self.original_label = self._small_label("originalCaption")
        lay.addWidget(self.personalized_label)
        lay.addWidget(self.original_label)

        lay.addWidget(hline())
        lay.addWidget(heading("Questions and answers"))
        self.qa_box = QVBoxLayout()
        self.qa_box.setSpacing(6)
        lay.addLayout(self.qa_box)
        self.qa_empty = self._small_label("qaEmpty")
        self.qa_empty.setText("Ask anything about this photo: “What is Alex wearing?” Names you taught the app "
                              "are understood.")
        lay.addWidget(self.qa_empty)
        ask_row = QHBoxLayout()
        self.ask_edit = QLineEdit()
        self.ask_edit.setObjectName("askEdit")
        self.ask_edit.setPlaceholderText("Ask about this photo…")
        self.ask_edit.setClearButtonEnabled(True)
        self.ask_edit.returnPressed.connect(self._ask)
        self.ask_button = QPushButton("Ask")
        self.ask_button.clicked.connect(self._ask)
        ask_row.addWidget(self.ask_edit, 1)
        ask_row.addWidget(self.ask_button)
        lay.addLayout(ask_row)
        self.ask_status = self._small_label("askStatus")
        lay.addWidget(self.ask_status)
        self.multi_label = QLabel()
        self.multi_label.setObjectName("detailMulti")
        self.multi_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.multi_label.setWordWrap(True)
        self.multi_label.setContentsMargins(8, 80, 8, 8)
        lay.addWidget(self.multi_label)
        lay.addStretch(1)
        self._body = body
        self.setWidget(body)
        self.show_photo(None)

    # -- building -------------------------------------------------------------------------------------------------

    def _tool(self, icon: Any, tip: str, slot: Any) -> QToolButton:
        b = QToolButton()
        b.setIcon(icon)
        b.setToolTip(tip)
        b.setAutoRaise(True)
        b.clicked.connect(slot)
        return b

    @staticmethod
    def _small_label(name: str) -> QLabel:
        label = QLabel()
        label.setObjectName(name)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    def _content_widgets(self) -> list[QWidget]:
        return [w for w in self._body.findChildren(QWidget) if w is not self.multi_label and w.parent() is self._body]

    # -- showing ----------------------------------------------------------------------------------------------------

    def show_photo(self, photo: Photo | None, selected: int = 1, *, faces: list[dict[str, Any]] | None = None,
                   captions: list[dict[str, Any]] | None = None, answers: list[dict[str, Any]] | None = None,
                   concepts: list[dict[str, Any]] | None = None, can_locate: bool = False,
                   reload_image: bool = True) -> None:
        """Show a photo and what the catalog knows about it (the caller read it: quick queries). "Where is …?"
        buttons show only where the library's captioner can answer with a box (`can_locate`)."""
        same = photo is not None and self.photo is not None and photo.id == self.photo.id
        self.photo = photo
        has = photo is not None
        for w in self._content_widgets():
            w.setVisible(has)
        if not has:
            self.multi_label.setVisible(True)
            self.multi_label.setText(f"{selected:,} photos selected.\n\nTo teach the app something they all show, "
                                     "use Things ▸ Name This Thing…" if selected > 1 else
                                     "Select a photo to see it here, with who is in it, its caption, and questions "
                                     "about it.")
            self.canvas.set_photo(None, QSize(), [])
            return
        assert photo is not None
        self.multi_label.setVisible(False)
        self.faces = [FaceBox(f["id"], f["x"], f["y"], f["w"], f["h"], f.get("person_id"), f.get("person_name"),
                              f.get("state", "")) for f in (faces or []) if f.get("state") != "ignored"]
        w, h = photo.width or 0, photo.height or 0
        frame = QSize(h, w) if int(photo.user_rotation or 0) % 180 else QSize(w, h)
        if reload_image or not same:
            self.canvas.message = "Loading…"
            self.canvas.set_photo(None, frame, self.faces)
            self.loader.load(photo)
        else:
            self.canvas._frame = frame
            self.canvas.set_faces(self.faces)
        self.title.setText(photo.name)
        meta = []
        if photo.date_taken:
            meta.append(photo.date_taken.replace("T", " ")[:16] + (" (file date)" if photo.date_source == "file"
                                                                    else ""))
        if photo.width and photo.height:
            meta.append(f"{photo.width} × {photo.height}")
        if photo.user_rotation:
            meta.append(f"turned {int(photo.user_rotation) % 360}°")
        self.meta.setText(" · ".join(meta))
        self.meta.setToolTip(photo.path)
        chips = []
        seen_people = set()
        for f in self.faces:
            if f.person_id and f.name and f.person_id not in seen_people:
                seen_people.add(f.person_id)
                chips.append((f.name, PERSON_CHIP, f.person_id, f"Show every photo of {f.name}"))
        for c in concepts or []:
            if c.get("kind") == "object" and c.get("fired"):
                chips.append((c["name"], THING_CHIP, c["concept_id"], f"{c['name']} (score {c['score']:.2f})"))
        self.who.set_chips(chips)
        if not same:
            self.canvas.set_found(None)
            self.where_status.setText("")
        fired = {c["concept_id"]: c["name"] for c in concepts or [] if c.get("fired")}   # one per concept
        self._set_where_buttons(list(fired.items()) if can_locate else [])
        self.set_texts(captions or [], answers or [], keep_edit=same)

    def set_texts(self, captions: list[dict[str, Any]], answers: list[dict[str, Any]], keep_edit: bool = False
                  ) -> None:
        self.captions, self.answers = captions, answers
        by_kind = {c["kind"]: c for c in captions}
        shown = captions[0]["text"] if captions else ""
        editing = keep_edit and self.caption_edit.toPlainText() != self._shown_caption
        self._shown_caption = shown
        if not editing:
            self.caption_edit.blockSignals(True)
            self.caption_edit.setPlainText(shown)
            self.caption_edit.blockSignals(False)
        kind = captions[0]["kind"] if captions else None
        named = kind == "personalised" and captions[0].get("instant")   # before training: engine/domain/personalize/instant.py
        self.caption_note.setText(INSTANT_NOTE if named else {
            "user": "Your caption", "personalised": "Written by the model, with your names",
            "original": "Written by the model"}.get(kind or "", ""))
        self.caption_note.setToolTip(INSTANT_TIP if named else "")
        self._on_caption_edited()
        pers = by_kind.get("personalised")
        orig = by_kind.get("original")
        self.personalized_label.setVisible(pers is not None and kind != "personalised")
        self.personalized_label.setText(f"<b>Personalised:</b> {_html(pers['text'])}" if pers else "")
        self.personalized_label.setToolTip(INSTANT_TIP if pers and pers.get("instant") else "")
        self.original_label.setVisible(orig is not None and kind != "original")
        self.original_label.setText(f"<b>Original:</b> {_html(orig['text'])}" if orig else "")
        if orig:
            self.original_label.setToolTip(f"{orig.get('model') or ''}")
        while self.qa_box.count():
            item = self.qa_box.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for a in answers:
            marker = f" <i>· {INSTANT_NOTE}</i>" if a.get("instant") else ""
            label = QLabel(f"<b>Q:</b> {_html(a['question'])}<br><b>A:</b> {_html(a['answer'])}{marker}")
            label.setObjectName("qaItem")
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setToolTip(INSTANT_TIP if a.get("instant") else a.get("model") or "")
            self.qa_box.addWidget(label)
        self.qa_empty.setVisible(self.photo is not None and not answers)

    def set_asking(self, busy: bool, status: str = "") -> None:
        self.ask_button.setEnabled(not busy)
        self.ask_edit.setEnabled(not busy)
        self.ask_status.setText(status)

    # -- "Where is …?" -----------------------------------------------------------------------------------------------

    def _set_where_buttons(self, found: list[tuple[int, str]]) -> None:
        for b in self.where_buttons:
            self._where_row.removeWidget(b)
            b.deleteLater()
        self.where_buttons = []
        for i, (concept_id, name) in enumerate(found[:4]):
            b = QPushButton(f"Where is {name}?")
            b.setObjectName("whereButton")
            b.setToolTip(f"Draw a box around {name} (needs a captioner that answers with boxes: MiniGPT-v2)")
            b.clicked.connect(lambda _c=False, cid=concept_id, n=name: self._locate(cid, n))
            b.setEnabled(not self._where_busy)
            self._where_row.insertWidget(i, b)
            self.where_buttons.append(b)
        self.where_bar.setVisible(self.photo is not None and bool(self.where_buttons))

    def _locate(self, concept_id: int, name: str) -> None:
        if self.photo is not None:
            self.canvas.set_found(None)
            self.actions.locate_concept(self.photo.id, concept_id, name)

    def set_locating(self, busy: bool, status: str = "") -> None:
        self._where_busy = busy
        for b in self.where_buttons:
            b.setEnabled(not busy)
        self.where_stop.setVisible(busy)
        self.where_status.setText(status)

    def show_location(self, photo_id: int, name: str, result: dict[str, Any]) -> None:
        """Draw the box a "where is …?" found (pixels of the photo as shown), or say plainly that there is none."""
        if self.photo is None or self.photo.id != photo_id:
            return
        box = result.get("box")
        if box:
            x1, y1, x2, y2 = box
            self.canvas.set_found(QRectF(x1, y1, x2 - x1, y2 - y1), name)
            self.where_status.setText(f"{name} is in the yellow box.")
        else:
            self.canvas.set_found(None)
            why = result.get("reason") or "the model gave no box"
            self.where_status.setText(f"No box for {name}: {why}.")

    def answer_texts(self) -> list[tuple[str, str]]:
        return [(a["question"], a["answer"]) for a in self.answers]

    # -- events -----------------------------------------------------------------------------------------------------

    @Slot(int, QImage)
    def _on_preview(self, photo_id: int, image: QImage) -> None:
        if self.photo is None or photo_id != self.photo.id:
            return
        if image.isNull():
            self.canvas.message = "The picture cannot be shown (the file may be offline)."
        else:
            self.loader.remember(self.photo, image)
        self.canvas.set_photo(image if not image.isNull() else None, self.canvas._frame, self.faces)

    def _toggle_faces(self, on: bool) -> None:
        self.canvas.show_faces = on
        self.canvas.update()

    def _on_face_clicked(self, face: FaceBox, pos: QPoint) -> None:
        if self.photo is not None:
            self.actions.face_menu(face, self.photo, pos)

    def _on_caption_edited(self) -> None:
        dirty = self.caption_edit.toPlainText().strip() != self._shown_caption.strip()
        self.save_button.setVisible(dirty)
        self.revert_button.setVisible(dirty)

    def _revert_caption(self) -> None:
        self.caption_edit.setPlainText(self._shown_caption)

    def _save_caption(self) -> None:
        if self.photo is None:
            return
        text = self.caption_edit.toPlainText().strip()
        if text == self._shown_caption.strip():
            return
        self.actions.save_caption(self.photo.id, text)

    def _ask(self) -> None:
        q = self.ask_edit.text().strip()
        if self.photo is None or not q:
            return
        self.actions.ask_question(self.photo.id, q)


INSTANT_NOTE = "Named from recognition · improves after training"
INSTANT_TIP = ("The app recognised these faces or things and told the captioner their names. Teach the Captioner "
               "(People or Things) for captions that know them from the picture itself; they replace this one.")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

