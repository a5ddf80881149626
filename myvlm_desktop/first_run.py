"""The first start: which photo folders (the Pictures folder is offered), and where the library goes."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.library import APP_NAME, default_pictures_path

from .resources import app_icon


class FirstRunDialog(QDialog):
    """Folders to watch (checked items) and the library folder."""

    def __init__(self, library: Path, parent: QWidget | None = None, pictures: Path | None = None):
        super().__init__(parent)
        self.setObjectName("firstRunDialog")
        self.setWindowTitle(f"Welcome to {APP_NAME}")
        self.library = Path(library)
        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        icon = QLabel()
        icon.setPixmap(app_icon().pixmap(64, 64))
        top.addWidget(icon, 0, Qt.AlignmentFlag.AlignTop)
        intro = QLabel("<h3>Your photos, on your computer</h3>"
                       "<p>Choose the folders with your photos. The app reads them, never changes or uploads "
                       "them, and learns the people, pets and things in them. New photos are noticed by "
                       "themselves.</p>")
        intro.setWordWrap(True)
        top.addWidget(intro, 1)
        lay.addLayout(top)
        self.folders = QListWidget()
        self.folders.setObjectName("firstRunFolders")
        lay.addWidget(self.folders, 1)
        pictures = pictures if pictures is not None else default_pictures_path()
        if pictures.is_dir():
            self._add(str(pictures), checked=True)
        row = QHBoxLayout()
        add = QPushButton("Add Folder…")
        add.clicked.connect(self._choose)
        row.addWidget(add)
        row.addStretch(1)
        lay.addLayout(row)
        lib_row = QHBoxLayout()
        self.library_label = QLabel()
        self.library_label.setWordWrap(True)
        self._show_library()
        lib_row.addWidget(self.library_label, 1)
        change = QPushButton("Change…")
        change.clicked.connect(self._choose_library)
        lib_row.addWidget(change)
        lay.addLayout(lib_row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Start")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
        self.resize(560, 420)

    def _add(self, path: str, checked: bool = True) -> None:
        for i in range(self.folders.count()):
            if self.folders.item(i).data(Qt.ItemDataRole.UserRole) == path:
                return
        item = QListWidgetItem(path)
        item.setData(Qt.ItemDataRole.UserRole, path)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.folders.addItem(item)

    def add_folder(self, path: str) -> None:
        self._add(path, True)

    def _choose(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a Folder of Photos", str(Path.home()))
        if path:
            self._add(path)

    def _show_library(self) -> None:
        self.library_label.setText(f"<b>Library:</b> {self.library}<br><span style='color:gray'>Thumbnails, faces "
                                   "and captions are kept here.</span>")

    def _choose_library(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Where Should the Library Go?", str(self.library.parent))
        if path:
            self.library = Path(path)
            self._show_library()

    def chosen_folders(self) -> list[str]:
        return [self.folders.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.folders.count())
                if self.folders.item(i).checkState() == Qt.CheckState.Checked]
