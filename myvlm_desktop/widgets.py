"""Small widgets shared by the views: a flow layout, name chips, headings, and error dialogs in words."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QLabel,
    QLayout,
    QLayoutItem,
    QMessageBox,
    QSizePolicy,
    QToolButton,
    QWidget,
    QWidgetItem,
)

from engine.library import APP_NAME

log = logging.getLogger(__name__)

PERSON_CHIP, THING_CHIP, WORD_CHIP = "person", "thing", "word"


class FlowLayout(QLayout):
    """Lays widgets out left to right, wrapping to the next line (Qt's classic example, simplified)."""

    def __init__(self, parent: QWidget | None = None, spacing: int = 6):
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._spacing = spacing
        self.setContentsMargins(0, 0, 0, 0)

    def addItem(self, item: QLayoutItem) -> None:
        self._items.append(item)

    def addWidget(self, w: QWidget) -> None:
        self.addChildWidget(w)
        self.addItem(QWidgetItem(w))

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:
        return self._items.pop(index) if 0 <= index < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return self._do_layout(QRect(0, 0, width, 0), True)

    def setGeometry(self, rect: QRect) -> None:
        super().setGeometry(rect)
        self._do_layout(rect, False)

    def sizeHint(self) -> QSize:
        return self.minimumSize()

    def minimumSize(self) -> QSize:
        size = QSize()
        for item in self._items:
            size = size.expandedTo(item.minimumSize())
        m = self.contentsMargins()
        return size + QSize(m.left() + m.right(), m.top() + m.bottom())

    def _do_layout(self, rect: QRect, test_only: bool) -> int:
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        x, y, line_h = area.x(), area.y(), 0
        for item in self._items:
            if item.widget() is not None and item.widget().isHidden():
                continue  # hidden on purpose (not merely because the parent is not shown yet)
            hint = item.sizeHint()
            if x + hint.width() > area.right() + 1 and line_h > 0:
                x = area.x()
                y += line_h + self._spacing
                line_h = 0
            if not test_only:
                item.setGeometry(QRect(QPoint(x, y), hint))
            x += hint.width() + self._spacing
            line_h = max(line_h, hint.height())
        return y + line_h - rect.y() + m.bottom()


class Chip(QToolButton):
    """A rounded name tag: a person, a thing, or a word of a search. Clicking it emits `activated`."""

    activated = Signal(str, object)  # kind, key (person id, concept id, text)

    def __init__(self, text: str, kind: str = WORD_CHIP, key: Any = None, tooltip: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.kind, self.key = kind, key
        self.setObjectName(f"chip_{kind}")
        self.setProperty("chipKind", kind)
        self.setText(text)
        self.setToolTip(tooltip or text)
        self.setAutoRaise(False)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.clicked.connect(lambda: self.activated.emit(self.kind, self.key))


class ChipBar(QWidget):
    """A wrapping row of chips."""

    activated = Signal(str, object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("chipBar")
        self._layout = FlowLayout(self, spacing=5)
        self.chips: list[Chip] = []

    def set_chips(self, chips: list[tuple[str, str, Any, str]]) -> None:
        """(text, kind, key, tooltip) per chip."""
        for chip in self.chips:
            self._layout.removeWidget(chip)
            chip.deleteLater()
        self.chips = []
        for text, kind, key, tip in chips:
            chip = Chip(text, kind, key, tip, self)
            chip.activated.connect(self.activated)
            self._layout.addWidget(chip)
            chip.show()
            self.chips.append(chip)
        self.setVisible(bool(chips))
        self.updateGeometry()

    def texts(self) -> list[str]:
        return [c.text() for c in self.chips]


def heading(text: str, object_name: str = "sectionHeading") -> QLabel:
    label = QLabel(text)
    label.setObjectName(object_name)
    return label


def fit_to_width(window: QWidget, width: int) -> None:
    """Give a dialog with wrapped text the height its layout needs at `width`, as its minimum too: a top-level
    window does not ask its layout's height-for-width, so `resize(w, small)` cut wrapped labels to one line."""
    lay = window.layout()
    height = lay.totalHeightForWidth(width) if lay is not None and lay.hasHeightForWidth() else -1
    if height <= 0:
        height = window.sizeHint().height()
    window.setMinimumSize(width, height)
    window.resize(width, height)


def hline() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    line.setObjectName("separator")
    return line


def round_pixmap(pm: QPixmap, side: int) -> QPixmap:
    """A face crop as a circle (device-pixel aware)."""
    dpr = pm.devicePixelRatio() or 1.0
    out = QPixmap(int(side * dpr), int(side * dpr))
    out.setDevicePixelRatio(dpr)
    out.fill(Qt.GlobalColor.transparent)
    p = QPainter(out)
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
    path = QPainterPath()
    path.addEllipse(0, 0, side, side)
    p.setClipPath(path)
    p.drawPixmap(QRect(0, 0, side, side), pm)
    p.end()
    return out


def placeholder_face(side: int, palette: QPalette) -> QPixmap:
    out = QPixmap(side, side)
    out.fill(Qt.GlobalColor.transparent)
    p = QPainter(out)
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    c = QColor(palette.color(QPalette.ColorRole.Mid))
    c.setAlpha(90)
    p.setBrush(c)
    p.setPen(Qt.PenStyle.NoPen)
    p.drawEllipse(0, 0, side, side)
    p.end()
    return out


# -- errors, in words ---------------------------------------------------------------------------------------------

_error_sink: Callable[[str, str], None] | None = None


def set_error_sink(sink: Callable[[str, str], None] | None) -> None:
    """Tests: collect error dialogs instead of showing them (sink(title, text))."""
    global _error_sink
    _error_sink = sink


def show_error(parent: QWidget | None, title: str, text: str) -> None:
    """A clear dialog for an error: a sentence that says what happened and what to do. Never a traceback."""
    log.info("error shown to the user: %s: %s", title, text)
    if _error_sink is not None:
        _error_sink(title, text)
        return
    box = QMessageBox(QMessageBox.Icon.Warning, title or APP_NAME, text, QMessageBox.StandardButton.Ok, parent)
    box.setWindowModality(Qt.WindowModality.WindowModal)
    box.open() if parent is not None and parent.isVisible() else box.exec()
