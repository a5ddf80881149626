"""The photo grid: a list model over catalog `Photo` rows, a delegate that draws square cells, and the view.

The model holds plain `Photo` objects read from the catalog (no database access in `data()`), asks the
`ThumbnailLoader` for thumbnails only when the view paints a cell, and updates in place (rows inserted or removed,
not a reset) so a refresh during indexing keeps the scroll position and the selection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QRectF,
    QSize,
    Qt,
    Signal,
)
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QPainter,
    QPainterPath,
    QPalette,
    QPen,
    QPixmap,
    QPolygon,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

from engine.library import FOLDER_OFFLINE, Photo

from .qt_compat import item_data
from .thumbnails import ThumbKey, ThumbnailLoader

PhotoRole = Qt.ItemDataRole.UserRole + 1      # the Photo
ThumbStateRole = Qt.ItemDataRole.UserRole + 2  # "loaded", "loading" or "failed"
PhotoIdRole = Qt.ItemDataRole.UserRole + 3
WhyRole = Qt.ItemDataRole.UserRole + 4         # why a search found this photo
MonthRole = Qt.ItemDataRole.UserRole + 5       # "May 2021" on the first photo of a month (sorted by date), else None

CELL_PADDING = 6
GROW_AT_MOST = 0.25  # a cell may be this much wider than asked before the row takes one more column
DEFAULT_THUMB_PX = 160
MIN_THUMB_PX, MAX_THUMB_PX = 80, 320

_Index = QModelIndex | QPersistentModelIndex


def thumb_key(photo: Photo) -> ThumbKey:
    return (photo.content_hash or "", int(photo.user_rotation or 0) % 360)


class PhotoGridModel(QAbstractListModel):
    def __init__(self, loader: ThumbnailLoader, parent: Any = None):
        super().__init__(parent)
        self._loader = loader
        self._photos: list[Photo] = []
        self._rows_by_key: dict[ThumbKey, list[int]] = {}
        self._row_by_id: dict[int, int] = {}
        self._why: dict[int, str] = {}
        self._month_rows: dict[int, str] = {}
        self.group_by_month = True
        loader.ready.connect(self._on_thumbnail_ready)

    # -- Qt model API -----------------------------------------------------------------------------------------------

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._photos)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._photos):
            return None
        photo = self._photos[index.row()]
        if role == Qt.ItemDataRole.DecorationRole:
            key = thumb_key(photo)
            pm = self._loader.pixmap(key)
            if pm is None:
                self._loader.request(key)  # the view paints this cell: it is worth reading
            return pm
        if role == ThumbStateRole:
            key = thumb_key(photo)
            if self._loader.pixmap(key) is not None:
                return "loaded"
            return "failed" if self._loader.failed(key) else "loading"
        if role == PhotoRole:
            return photo
        if role == PhotoIdRole:
            return photo.id
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(photo, self._why.get(photo.id))
        if role == WhyRole:
            return self._why.get(photo.id)
        if role == MonthRole:
            return self._month_rows.get(index.row()) if self.group_by_month else None
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return photo.name
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemNeverHasChildren

    # -- reading ----------------------------------------------------------------------------------------------------

    def photos(self) -> list[Photo]:
        return list(self._photos)

    def photo(self, row: int) -> Photo:
        return self._photos[row]

    def row_of(self, photo_id: int) -> int | None:
        return self._row_by_id.get(photo_id)

    # -- updating ---------------------------------------------------------------------------------------------------

    def months(self) -> list[tuple[int, str]]:
        """(first row, "May 2021") of every month, in row order (photos sorted by date)."""
        return sorted(self._month_rows.items())

    def set_photos(self, photos: Sequence[Photo], why: dict[int, str] | None = None) -> None:
        """Show these photos, in this order. Rows that stay keep their place: removed and new rows are
        removed/inserted in runs, so views keep scroll position and selection. `why`: photo id -> why a search
        found it (shown on hover)."""
        self._why = dict(why or {})
        new = list(photos)
        old = self._photos
        if old and len(old) == len(new) and all(a.id == b.id for a, b in zip(old, new, strict=True)):
            # the same photos in the same order (the common case while indexing): only changed rows repaint
            changed_rows = [r for r, (a, b) in enumerate(zip(old, new, strict=True)) if a is not b and a != b]
            self._photos = new
            if changed_rows:
                self._reindex()
                self.dataChanged.emit(self.index(min(changed_rows)), self.index(max(changed_rows)))
            return
        new_ids = {p.id: p for p in new}
        if not old or not new:
            self.beginResetModel()
            self._photos = new
            self._reindex()
            self.endResetModel()
            return
        old_ids = {p.id for p in old}
        kept_in_new_order = [p.id for p in new if p.id in old_ids]
        kept_in_old_order = [p.id for p in old if p.id in new_ids]
        if kept_in_new_order != kept_in_old_order:
            # Rows that stay changed their relative order (e.g. the sort order flipped): start over.
            self.beginResetModel()
            self._photos = new
            self._reindex()
            self.endResetModel()
            return

        # 1. remove rows that went away, from the bottom up, in contiguous runs
        row = len(old) - 1
        while row >= 0:
            if old[row].id in new_ids:
                row -= 1
                continue
            end = row
            while row >= 0 and old[row].id not in new_ids:
                row -= 1
            self.beginRemoveRows(QModelIndex(), row + 1, end)
            del self._photos[row + 1 : end + 1]
            self.endRemoveRows()

        # 2. insert new rows, from the top down, in contiguous runs; now self._photos is a subsequence of `new`
        i = 0
        while i < len(new):
            if new[i].id in old_ids:
                i += 1
                continue
            start = i
            while i < len(new) and new[i].id not in old_ids:
                i += 1
            self.beginInsertRows(QModelIndex(), start, i - 1)
            self._photos[start:start] = new[start:i]
            self.endInsertRows()

        # 3. rows that stayed may carry new data (rotation, date, a re-made thumbnail)
        # (thumbnails are keyed by content hash and rotation, so a changed photo simply asks for its new key)
        changed_rows = [r for r, (current, fresh) in enumerate(zip(self._photos, new, strict=True))
                        if current is not fresh and current != fresh]
        self._photos = new
        self._reindex()
        if changed_rows:
            self.dataChanged.emit(self.index(min(changed_rows)), self.index(max(changed_rows)))

    def replace_rows(self, photos: Sequence[Photo]) -> list[int]:
        """New data for photos already shown, each kept in its row (a photo turned or re-thumbnailed: the change
        feed's case). Only those rows are re-keyed and repainted, not every row as `set_photos` re-indexes. The
        caller keeps the order: a photo whose date (month) changed goes through `set_photos`. Returns the rows."""
        rows = []
        for p in photos:
            r = self._row_by_id.get(p.id)
            if r is None or self._photos[r] == p:
                continue
            old_key, new_key = thumb_key(self._photos[r]), thumb_key(p)
            if old_key != new_key:
                same = self._rows_by_key.get(old_key, [])
                if r in same:
                    same.remove(r)
                if not same:
                    self._rows_by_key.pop(old_key, None)
                self._rows_by_key.setdefault(new_key, []).append(r)
            self._photos[r] = p
            rows.append(r)
        for r in rows:
            self.dataChanged.emit(self.index(r), self.index(r))
        return rows

    def _reindex(self) -> None:
        self._rows_by_key = {}
        self._row_by_id = {}
        self._month_rows = {}
        previous = None
        for r, p in enumerate(self._photos):
            self._rows_by_key.setdefault(thumb_key(p), []).append(r)
            self._row_by_id[p.id] = r
            month = (p.date_taken or "")[:7]
            if month != previous:
                self._month_rows[r] = month_label(month)
                previous = month

    def thumbnails_changed(self) -> None:
        """The loader's cache was cleared (new cell size): repaint every cell."""
        if self._photos:
            self.dataChanged.emit(self.index(0), self.index(len(self._photos) - 1),
                                  [Qt.ItemDataRole.DecorationRole, ThumbStateRole])

    def _on_thumbnail_ready(self, key: ThumbKey) -> None:
        roles = [Qt.ItemDataRole.DecorationRole, ThumbStateRole]
        for r in self._rows_by_key.get(key, ()):
            idx = self.index(r)
            self.dataChanged.emit(idx, idx, roles)


MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")


def month_label(month: str) -> str:
    """"2021-05" -> "May 2021"; no date -> "No date"."""
    try:
        year, m = month.split("-")
        return f"{MONTH_NAMES[int(m) - 1]} {int(year)}"
    except (ValueError, IndexError):
        return "No date"


def _tooltip(p: Photo, why: str | None = None) -> str:
    lines = [f"<b>{_html(p.name)}</b>"]
    if why:
        lines.append(f"<i>Found by: {_html(why)}</i>")
    if p.date_taken:
        lines.append(p.date_taken.replace("T", " ") + (" (file date)" if p.date_source == "file" else ""))
    if p.width and p.height:
        lines.append(f"{p.width} × {p.height}" + (f" · {p.format}" if p.format else ""))
    lines.append(f"<span style='color:gray'>{_html(p.path)}</span>")
    if p.folder_status == FOLDER_OFFLINE:
        lines.append("<i>offline: its folder is not reachable now</i>")
    return "<br>".join(lines)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ThumbnailDelegate(QStyledItemDelegate):
    """Square cells: the thumbnail centred and fitted, a soft placeholder until it is read, a rounded selection."""

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.thumb_px = DEFAULT_THUMB_PX
        self.cell = QSize(DEFAULT_THUMB_PX + 2 * CELL_PADDING, DEFAULT_THUMB_PX + 2 * CELL_PADDING)

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        return self.cell

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        pal: QPalette = option.palette
        cell: QRect = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hovered = bool(option.state & QStyle.StateFlag.State_MouseOver)
        side = self.thumb_px
        inner = QRect(0, 0, min(side, cell.width() - 2 * CELL_PADDING), min(side, cell.height() - 2 * CELL_PADDING))
        inner.moveCenter(cell.center())
        pm = item_data(index, Qt.ItemDataRole.DecorationRole)
        photo: Photo | None = item_data(index, PhotoRole)
        loaded = isinstance(pm, QPixmap) and not pm.isNull()
        if loaded:
            dpr = pm.devicePixelRatio() or 1.0
            size = QSize(round(pm.width() / dpr), round(pm.height() / dpr))
            size = size.scaled(inner.size(), Qt.AspectRatioMode.KeepAspectRatio)
            target = QRect(0, 0, size.width(), size.height())
            target.moveCenter(inner.center())
        else:
            target = self._placeholder_rect(inner)
        if selected or hovered:
            color = QColor(pal.color(QPalette.ColorRole.Highlight))
            color.setAlpha(110 if selected else 40)
            path = QPainterPath()
            path.addRoundedRect(QRectF(target.adjusted(-5, -5, 5, 5)), 7, 7)
            painter.fillPath(path, color)

        if loaded:
            if photo is not None and photo.folder_status == FOLDER_OFFLINE:
                painter.setOpacity(0.45)
            painter.drawPixmap(target, pm)
            painter.setOpacity(1.0)
        else:
            failed = item_data(index, ThumbStateRole) == "failed"
            self._placeholder(painter, target, pal, failed)
        month = item_data(index, MonthRole)
        if month:
            self._month_badge(painter, target, month, option)
        painter.restore()

    @staticmethod
    def _month_badge(painter: QPainter, target: QRect, text: str, option: QStyleOptionViewItem) -> None:
        """The month a run of photos starts, on its first photo: a dark pill, readable on any picture."""
        font = QFont(option.font)
        font.setBold(True)
        font.setPointSizeF(max(7.0, option.font.pointSizeF() * 0.85))
        fm = QFontMetrics(font)
        w = min(target.width() - 8, fm.horizontalAdvance(text) + 12)
        pill = QRect(target.left() + 4, target.top() + 4, max(0, w), fm.height() + 4)
        path = QPainterPath()
        path.addRoundedRect(QRectF(pill), pill.height() / 2, pill.height() / 2)
        painter.fillPath(path, QColor(0, 0, 0, 150))
        painter.setFont(font)
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(pill, Qt.AlignmentFlag.AlignCenter, fm.elidedText(text, Qt.TextElideMode.ElideRight,
                                                                            pill.width() - 8))

    @staticmethod
    def _placeholder_rect(inner: QRect) -> QRect:
        box = QRect(0, 0, inner.width(), inner.height() * 3 // 4)  # the shape of most photos
        box.moveCenter(inner.center())
        return box

    @staticmethod
    def _placeholder(painter: QPainter, box: QRect, pal: QPalette, failed: bool) -> None:
        base = QColor(pal.color(QPalette.ColorRole.Mid))
        base.setAlpha(60)
        path = QPainterPath()
        path.addRoundedRect(box, 6, 6)
        painter.fillPath(path, base)
        glyph = QColor(pal.color(QPalette.ColorRole.Mid))
        glyph.setAlpha(140)
        painter.setPen(QPen(glyph, 2))
        s = min(box.width(), box.height()) // 4
        c = box.center()
        if failed:  # a crossed frame: there is no thumbnail to show
            r = QRect(c.x() - s, c.y() - s, 2 * s, 2 * s)
            painter.drawRoundedRect(r, 3, 3)
            painter.drawLine(r.topLeft(), r.bottomRight())
        else:  # hills under a sun: a photo is on its way
            painter.drawEllipse(c.x() + s // 2, c.y() - s, s // 2, s // 2)
            painter.drawPolyline(QPolygon([c + QPoint(-s, s // 2), c + QPoint(-s // 3, -s // 3),
                                           c + QPoint(s // 4, s // 4), c + QPoint(s // 2, 0), c + QPoint(s, s // 2)]))


def fitted_cell_px(width: int, wanted: int) -> int:
    """The side of square cells that fill `width` exactly, as close to `wanted` as columns allow: one more column
    of slightly smaller cells rather than wide gaps (the cells of a row share at most a quarter of a cell between
    them; a thumbnail is never drawn larger than asked, so it never looks blurred)."""
    columns = max(1, math.ceil(width / wanted - GROW_AT_MOST))
    return max(1, width // columns)


class PhotoGridView(QListView):
    """A QListView in icon mode laid out as a uniform grid: cheap for tens of thousands of photos."""

    zoomRequested = Signal(int)  # +1 / -1 (Ctrl + wheel)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("photoGrid")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setMovement(QListView.Movement.Static)  # after the view mode: a static flow layout, not free icons
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setLayoutMode(QListView.LayoutMode.SinglePass)
        self.setUniformItemSizes(True)
        self.setSpacing(0)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setSelectionRectVisible(True)
        self.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setMouseTracking(True)
        self.setDragEnabled(False)
        self.delegate = ThumbnailDelegate(self)
        self.setItemDelegate(self.delegate)
        self.set_thumb_px(DEFAULT_THUMB_PX)

    def set_thumb_px(self, px: int) -> None:
        self.delegate.thumb_px = px
        self.setIconSize(QSize(px, px))
        self._update_grid()
        self.viewport().update()

    def _update_grid(self) -> None:
        """Square cells that fill the width evenly (no ragged gap on the right, no wide gaps between columns)."""
        # width without the vertical scroll bar, whether it shows or not: no relayout loop when it comes and goes
        scroll_bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent, None, self)
        avail = self.contentsRect().width() - scroll_bar
        avail -= 2  # the flow wraps when a cell would touch the right edge
        side = fitted_cell_px(avail, self.delegate.thumb_px + 2 * CELL_PADDING)
        cell = QSize(side, side)
        if cell != self.delegate.cell or cell != self.gridSize():
            self.delegate.cell = cell
            self.setGridSize(cell)
            self.verticalScrollBar().setSingleStep(max(20, side // 3))

    def resizeEvent(self, event: Any) -> None:
        self._update_grid()
        super().resizeEvent(event)

    def wheelEvent(self, event: Any) -> None:
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            delta = event.angleDelta().y()
            if delta:
                self.zoomRequested.emit(1 if delta > 0 else -1)
            event.accept()
            return
        super().wheelEvent(event)


class DateScrubber(QWidget):
    """A thin strip beside the grid: years and months along the height; click or drag to jump there.

    Positions are the scroll bar's: a row's place is its grid line over all grid lines (uniform cells)."""

    WIDTH = 46

    def __init__(self, view: PhotoGridView, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("dateScrubber")
        self.view = view
        self.setFixedWidth(self.WIDTH)
        self.setMouseTracking(True)
        self.setToolTip("Drag to move through the months")
        self._hover_y: int | None = None
        self._dragging = False
        bar = view.verticalScrollBar()
        bar.valueChanged.connect(self.update)
        bar.rangeChanged.connect(lambda *_: self.update())
        model = view.model()
        if model is not None:
            for sig in (model.modelReset, model.rowsInserted, model.rowsRemoved):
                sig.connect(self.update)

    def _model(self) -> PhotoGridModel | None:
        m = self.view.model()
        return m if isinstance(m, PhotoGridModel) else None

    def _columns(self) -> int:
        grid = self.view.gridSize()
        return max(1, self.view.viewport().width() // max(1, grid.width()))

    def _fraction_of_row(self, row: int, rows: int) -> float:
        cols = self._columns()
        lines = max(1, (rows + cols - 1) // cols)
        return (row // cols) / lines

    def marks(self) -> list[tuple[float, str, bool]]:
        """(fraction of the height, label, is a new year) for each month."""
        m = self._model()
        if m is None or m.rowCount() == 0:
            return []
        rows = m.rowCount()
        return [(self._fraction_of_row(r, rows), label, i == 0 or label.split()[-1] != prev.split()[-1])
                for i, ((r, label), (_, prev)) in enumerate(zip(m.months(), [(0, "")] + m.months()))]

    def _label_at(self, y: int) -> str:
        frac = y / max(1, self.height())
        label = ""
        for f, text, _ in self.marks():
            if f <= frac + 1e-9:
                label = text
            else:
                break
        return label

    def jump_to(self, y: int) -> None:
        m = self._model()
        if m is None or m.rowCount() == 0:
            return
        bar = self.view.verticalScrollBar()
        frac = min(1.0, max(0.0, y / max(1, self.height())))
        bar.setValue(round(frac * (bar.maximum() + bar.pageStep())) - 0)

    def mousePressEvent(self, event: Any) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._dragging = True
            self.jump_to(int(event.position().y()))
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: Any) -> None:
        self._hover_y = int(event.position().y())
        if self._dragging:
            self.jump_to(self._hover_y)
        self.update()

    def mouseReleaseEvent(self, event: Any) -> None:
        self._dragging = False
        super().mouseReleaseEvent(event)

    def leaveEvent(self, event: Any) -> None:
        self._hover_y = None
        self.update()
        super().leaveEvent(event)

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pal = self.palette()
        h = self.height()
        text_color = QColor(pal.color(QPalette.ColorRole.WindowText))
        faint = QColor(text_color)
        faint.setAlpha(90)
        font = QFont(self.font())
        font.setPointSizeF(max(6.5, self.font().pointSizeF() * 0.8))
        painter.setFont(font)
        fm = QFontMetrics(font)
        last_y = -100
        for frac, label, new_year in self.marks():
            y = int(frac * h)
            painter.setPen(QPen(faint, 1))
            painter.drawLine(self.width() - (14 if new_year else 7), y, self.width() - 2, y)
            if new_year and y - last_y > fm.height() + 2:
                painter.setPen(text_color)
                painter.drawText(QRect(2, y, self.width() - 16, fm.height()), Qt.AlignmentFlag.AlignRight,
                                 label.split()[-1])
                last_y = y
        bar = self.view.verticalScrollBar()
        span = bar.maximum() + bar.pageStep()
        if span > 0:  # where the view is now
            top = int(bar.value() / span * h)
            height = max(6, int(bar.pageStep() / span * h))
            color = QColor(pal.color(QPalette.ColorRole.Highlight))
            color.setAlpha(70)
            painter.fillRect(QRect(self.width() - 5, top, 4, height), color)
        if self._hover_y is not None:
            label = self._label_at(self._hover_y)
            parts = label.split()
            if len(parts) == 2:
                label = f"{parts[0][:3]} {parts[1]}"
            if label:
                w = fm.horizontalAdvance(label) + 10
                box = QRect(max(0, self.width() - w - 2), max(0, min(h - fm.height() - 4, self._hover_y - 10)), w,
                            fm.height() + 4)
                path = QPainterPath()
                path.addRoundedRect(QRectF(box), 4, 4)
                painter.fillPath(path, pal.color(QPalette.ColorRole.ToolTipBase))
                painter.setPen(pal.color(QPalette.ColorRole.ToolTipText))
                painter.drawText(box, Qt.AlignmentFlag.AlignCenter, label)
        painter.end()
