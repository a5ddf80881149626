"""Full view (Space): the photo as large as the window allows, its faces, its caption. Arrows move through the
grid's photos; Space, Enter or Escape go back."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from engine.library import LibraryPaths, Photo

from .detail import FaceBox, PhotoCanvas, PreviewLoader


class FullView(QWidget):
    closeRequested = Signal()
    stepRequested = Signal(int)  # -1 / +1

    def __init__(self, paths: LibraryPaths, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("fullView")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)  # the stylesheet's dark backdrop
        self.photo: Photo | None = None
        self.loader = PreviewLoader(paths, self)
        self.loader.loaded.connect(self._on_loaded)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 8, 8, 8)
        self.canvas = PhotoCanvas(min_height=100)
        self.canvas.activated.connect(self.closeRequested)
        lay.addWidget(self.canvas, 1)
        self.caption = QLabel()
        self.caption.setObjectName("fullViewCaption")
        self.caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.caption.setWordWrap(True)
        lay.addWidget(self.caption)
        self._faces: list[FaceBox] = []

    def show_photo(self, photo: Photo, faces: list[FaceBox], caption: str, position: str) -> None:
        self.photo = photo
        self._faces = faces
        w, h = photo.width or 0, photo.height or 0
        frame = QSize(h, w) if int(photo.user_rotation or 0) % 180 else QSize(w, h)
        self.canvas.message = "Loading…"
        self.canvas.set_photo(None, frame, faces)
        self.loader.load(photo)
        self.caption.setText(f"{caption}\n{photo.name} · {position}" if caption else f"{photo.name} · {position}")

    def _on_loaded(self, photo_id: int, image: QImage) -> None:
        if self.photo is None or photo_id != self.photo.id:
            return
        if image.isNull():
            self.canvas.message = "The picture cannot be shown (the file may be offline)."
        self.canvas.set_photo(image if not image.isNull() else None, self.canvas._frame, self._faces)

    def keyPressEvent(self, event: Any) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Escape, Qt.Key.Key_Space, Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.closeRequested.emit()
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Up, Qt.Key.Key_PageUp):
            self.stepRequested.emit(-1)
        elif key in (Qt.Key.Key_Right, Qt.Key.Key_Down, Qt.Key.Key_PageDown):
            self.stepRequested.emit(1)
        else:
            super().keyPressEvent(event)
