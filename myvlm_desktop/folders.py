"""The watched folders: a list model over `Library.status()["folders"]`, with an "All photos" row on top."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QRectF,
    QSize,
    Qt,
)
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QIcon,
    QPainter,
    QPainterPath,
    QPalette,
    QPixmap,
)
from PySide6.QtWidgets import (
    QListView,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

from engine.library import FOLDER_OFFLINE

from .qt_compat import item_data
from .resources import icon, themed_icon

FolderIdRole = Qt.ItemDataRole.UserRole + 1  # folder id, or None for "All photos"
SubtitleRole = Qt.ItemDataRole.UserRole + 2
OfflineRole = Qt.ItemDataRole.UserRole + 3
BoldRole = Qt.ItemDataRole.UserRole + 4       # draw the title bold (a section's "all" row)

_Index = QModelIndex | QPersistentModelIndex


@dataclass
class FolderCounts:
    photos: int = 0    # ready to show (status ok)
    problems: int = 0  # photos the engine could not read


@dataclass(frozen=True)
class FolderRow:
    id: int | None
    name: str
    path: str
    status: str
    files: int  # every file the catalog lists there (photos, problems, videos, not yet processed)
    photos: int = 0
    problems: int = 0
    last_scan_at: str | None = None
    error: str | None = None

    @property
    def offline(self) -> bool:
        return self.status == FOLDER_OFFLINE


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


class FolderListModel(QAbstractListModel):
    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self._rows: list[FolderRow] = []
        self._folder_icon = icon("folder", "folder-pictures", QStyle.StandardPixmap.SP_DirIcon)
        self._offline_icon = themed_icon(("folder-remote", "network-offline"), QStyle.StandardPixmap.SP_DriveNetIcon)
        self._all_icon = icon("photos", ("view-grid", "image-x-generic"), QStyle.StandardPixmap.SP_DirHomeIcon)

    def set_status(self, status: dict[str, Any], counts: dict[int | None, FolderCounts] | None = None) -> None:
        """Rows from `Library.status()` and per-folder counts (key None: all folders); updated in place when only
        counts or states changed."""
        counts = counts or {}
        folders = status.get("folders", [])
        everything = counts.get(None, FolderCounts())
        rows = [FolderRow(None, "All photos", "", "online", sum(f["photos"] for f in folders), everything.photos,
                          everything.problems)]
        for f in folders:
            name = os.path.basename(f["path"].rstrip("/")) or f["path"]
            c = counts.get(f["id"], FolderCounts())
            rows.append(FolderRow(f["id"], name, f["path"], f["status"], f["photos"], c.photos, c.problems,
                                  f.get("last_scan_at"), f.get("error")))
        if [r.id for r in rows] == [r.id for r in self._rows]:
            self._rows = rows
            self.dataChanged.emit(self.index(0), self.index(len(rows) - 1))
        else:
            self.beginResetModel()
            self._rows = rows
            self.endResetModel()

    def folder_rows(self) -> list[FolderRow]:
        return [r for r in self._rows if r.id is not None]

    def row_of(self, folder_id: int | None) -> int | None:
        for i, r in enumerate(self._rows):
            if r.id == folder_id:
                return i
        return None

    def rowCount(self, parent: _Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self._rows)

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._rows):
            return None
        r = self._rows[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return r.name
        if role == SubtitleRole:
            parts = [_count(r.photos, "photo")]
            if r.problems:
                parts.append(_count(r.problems, "problem"))
            if r.offline:
                parts.append("offline")
            return " · ".join(parts)
        if role == Qt.ItemDataRole.DecorationRole:
            if r.id is None:
                return self._all_icon
            return self._offline_icon if r.offline else self._folder_icon
        if role == FolderIdRole:
            return r.id
        if role == OfflineRole:
            return r.offline
        if role == BoldRole:
            return r.id is None
        if role == Qt.ItemDataRole.ToolTipRole:
            if r.id is None:
                return f"All photos of the watched folders ({_count(r.files, 'file')} found)"
            lines = [r.path, "offline" if r.offline else "online", f"{_count(r.files, 'file')} found"]
            if r.last_scan_at:
                lines.append(f"last scanned {r.last_scan_at.replace('T', ' ')[:19]} UTC")
            if r.error:
                lines.append(r.error)
            return "\n".join(lines)
        return None


class FolderDelegate(QStyledItemDelegate):
    """Icon, the folder's name, and a grey line with its photo count and state."""

    PAD = 6
    ICON = 24

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        fm = QFontMetrics(option.font)
        return QSize(180, max(self.ICON, 2 * fm.height() + 2) + 2 * self.PAD)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hovered = bool(option.state & QStyle.StateFlag.State_MouseOver)
        group = (QPalette.ColorGroup.Active if option.state & QStyle.StateFlag.State_Active
                 else QPalette.ColorGroup.Inactive)
        if selected or hovered:
            color = QColor(option.palette.color(group, QPalette.ColorRole.Highlight))
            if not selected:
                color.setAlpha(40)
            path = QPainterPath()
            path.addRoundedRect(QRectF(option.rect.adjusted(2, 1, -2, -1)), 6, 6)
            painter.fillPath(path, color)
        rect: QRect = option.rect.adjusted(self.PAD, self.PAD, -self.PAD, -self.PAD)
        icon = item_data(index, Qt.ItemDataRole.DecorationRole)
        offline = bool(item_data(index, OfflineRole))
        icon_rect = QRect(rect.left(), rect.center().y() - self.ICON // 2, self.ICON, self.ICON)
        if isinstance(icon, QPixmap) and not icon.isNull():  # a face: round, like every people app
            clip = QPainterPath()
            clip.addEllipse(QRectF(icon_rect))
            painter.save()
            painter.setClipPath(clip)
            painter.drawPixmap(icon_rect, icon)
            painter.restore()
        elif isinstance(icon, QIcon) and not icon.isNull():
            mode = icon.Mode.Disabled if offline else icon.Mode.Normal
            icon.paint(painter, icon_rect, Qt.AlignmentFlag.AlignCenter, mode)
        text_rect = rect.adjusted(self.ICON + self.PAD + 2, 0, 0, 0)
        text_role = QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text
        title_font = QFont(option.font)
        title_font.setBold(bool(item_data(index, BoldRole)))
        fm = QFontMetrics(title_font)
        half = text_rect.height() // 2
        painter.setFont(title_font)
        painter.setPen(option.palette.color(QPalette.ColorGroup.Disabled if offline and not selected else group,
                                            text_role))
        title = fm.elidedText(item_data(index, Qt.ItemDataRole.DisplayRole) or "", Qt.TextElideMode.ElideMiddle,
                              text_rect.width())
        painter.drawText(QRect(text_rect.left(), text_rect.top(), text_rect.width(), half),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom, title)
        sub_font = QFont(option.font)
        sub_font.setPointSizeF(max(6.0, option.font.pointSizeF() * 0.88))
        painter.setFont(sub_font)
        sub_color = QColor(option.palette.color(group, text_role))
        sub_color.setAlphaF(0.85 if selected else 0.6)
        painter.setPen(sub_color)
        painter.drawText(QRect(text_rect.left(), text_rect.top() + half + 1, text_rect.width(), half),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, item_data(index, SubtitleRole) or "")
        painter.restore()


class FolderListView(QListView):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("folderList")
        self.setItemDelegate(FolderDelegate(self))
        self.setUniformItemSizes(True)
        self.setEditTriggers(QListView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
