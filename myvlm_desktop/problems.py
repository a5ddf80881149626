"""The Problems dock: photos the engine could not read, with the reason in words a user can act on."""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QHeaderView,
    QTreeWidget,
    QTreeWidgetItem,
    QWidget,
)

PathRole = Qt.ItemDataRole.UserRole + 1


class ProblemsDock(QDockWidget):
    """Lists `Library.status()["errors"]`: file name, the reason, and the full path as a tooltip."""

    countChanged = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Problems", parent)
        self.setObjectName("problemsDock")
        self.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        self.tree = QTreeWidget(self)
        self.tree.setObjectName("problemsList")
        self.tree.setColumnCount(2)
        self.tree.setHeaderLabels(["File", "Problem"])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.resizeSection(0, 240)
        self.setWidget(self.tree)
        self._errors: list[dict[str, Any]] = []

    def set_errors(self, errors: list[dict[str, Any]]) -> None:
        if errors == self._errors:
            return
        self._errors = list(errors)
        self.tree.clear()
        items = []
        for e in errors:
            path = e.get("path") or ""
            message = e.get("error") or "unknown problem"
            item = QTreeWidgetItem([os.path.basename(path) or path, message])
            item.setToolTip(0, path)
            item.setToolTip(1, message)
            item.setData(0, PathRole, path)
            items.append(item)
        self.tree.addTopLevelItems(items)
        self.setWindowTitle(f"Problems ({len(errors)})" if errors else "Problems")
        self.countChanged.emit(len(errors))

    def count(self) -> int:
        return len(self._errors)

    def errors(self) -> list[dict[str, Any]]:
        return list(self._errors)
