"""Settings: folders, the library, the device, the face backend, the captioning model, the models each feature
needs (the model manager's table, with Download / Cancel / Remove / Import / Verify: see models_page.py),
thresholds, appearance.

Library settings live in the catalog (the CLI's `myvlm settings` sees the same); the device and the theme are
per-user app settings (QSettings). Reading the doctor's report and saving run on an engine thread; model downloads
and the other model jobs on a thread of their own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.api import Library

from .models_page import ModelsPanel
from .tasks import EngineThread, user_message

log = logging.getLogger(__name__)

FACE_BACKENDS = [("auto", "Automatic (InsightFace when a pack is installed, else dlib)"), ("dlib", "dlib (CC0)"),
                 ("dlib-cnn", "dlib CNN detector (slower, finds more faces)"),
                 ("insightface", "InsightFace buffalo_l (non-commercial licence)")]
CLIP_MODELS = [("ViT-B-32", "OpenCLIP ViT-B-32 (light, default)"),
               ("DFN5B-CLIP-ViT-H-14-378", "DFN5B ViT-H-14 (the paper's, large)")]
DEVICES = [("", "Automatic (the GPU when there is one)"), ("cpu", "CPU"), ("cuda", "NVIDIA GPU (CUDA)"),
           ("mps", "Apple GPU (Metal)")]
THEMES = [("system", "Like the system"), ("light", "Light"), ("dark", "Dark")]


def load_settings(lib: Library) -> dict[str, Any]:
    """What the dialog shows (engine thread: the doctor looks at the model caches and the GPU)."""
    from engine.doctor import report
    from engine.personalize.specs import resolve_vlm_name
    from engine.personalize.vlm import VLM_SPECS

    cat = lib.catalog
    return {
        "folders": [{"id": f.id, "path": f.path, "status": f.status} for f in lib.folders()],
        "face_backend": cat.get_setting("face_backend") or "auto",
        "vlm": resolve_vlm_name(cat),   # with no setting: the captioner that fits this computer
        "clip_model": cat.get_setting("clip_model") or "ViT-B-32",
        "watch_polling": bool(cat.get_setting("watch_polling", False)),
        "instant_names": bool(cat.get_setting("instant_names", True)),
        "preview_cache_bytes": int(cat.get_setting("preview_cache_bytes") or 2 * 1024**3),
        "vlms": [(s.key, s.title, s.license, s.tiny) for s in VLM_SPECS.values()],
        "doctor": report(lib.paths),
        "library": str(lib.paths.root),
    }


def save_settings(lib: Library, changes: dict[str, Any], remove_folders: list[int]) -> dict[str, Any]:
    """Store changed library settings; switching the VLM marks embeddings of the other model stale."""
    cat = lib.catalog
    for key, value in changes.items():
        if key == "vlm":
            from engine.personalize.vlm import resolve_spec

            resolve_spec(str(value))  # refuses an unknown model with a message
        cat.set_setting(key, value)
    if "vlm" in changes:
        lib.personalizer().refresh_states()
    removed = 0
    for fid in remove_folders:
        removed += cat.remove_folder(fid)
    return {"removed_photos": removed}


def model_rows(doctor: dict[str, Any]) -> list[dict[str, Any]]:
    """The model manager's rows (one dict per model: state, size, licence, where, what to do) in the doctor's
    report."""
    return list(doctor.get("models", {}).get("catalogue", []))


MODELS_TABLE_CHROME_PX = 64  # the dialog's width around the models table: margins, the tab frame, the table's frame


class SettingsDialog(QDialog):
    libraryChosen = Signal(str)  # another library folder to open

    def __init__(self, engine: EngineThread, settings: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Settings")
        self.engine = engine
        self.qsettings = settings
        self.data: dict[str, Any] | None = None
        self.removed: list[int] = []
        self.added: list[str] = []
        self.saved = False
        self.resize(760, 560)
        lay = QVBoxLayout(self)
        self.tabs = QTabWidget()
        lay.addWidget(self.tabs, 1)
        self.loading = QLabel("Looking at this computer's models and devices…")
        lay.addWidget(self.loading)

        # -- library and folders
        lib_tab = QWidget()
        ll = QVBoxLayout(lib_tab)
        ll.addWidget(QLabel("<b>Photo folders</b> (watched: new, changed and removed photos are noticed by "
                            "themselves; the files are never changed)"))
        self.folder_list = QListWidget()
        self.folder_list.setObjectName("settingsFolders")
        ll.addWidget(self.folder_list, 1)
        row = QHBoxLayout()
        add = QPushButton("Add Folder…")
        add.clicked.connect(self._add_folder)
        self.remove_button = QPushButton("Stop Watching")
        self.remove_button.setToolTip("The app forgets the folder's photos; the files themselves stay untouched")
        self.remove_button.clicked.connect(self._remove_folder)
        row.addWidget(add)
        row.addWidget(self.remove_button)
        row.addStretch(1)
        ll.addLayout(row)
        self.polling = QCheckBox("Check folders by polling (for network shares, whose changes are not reported)")
        ll.addWidget(self.polling)
        ll.addSpacing(8)
        ll.addWidget(QLabel("<b>Library</b> (thumbnails, faces, captions: everything the app learns)"))
        lib_row = QHBoxLayout()
        self.library_label = QLabel()
        self.library_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lib_row.addWidget(self.library_label, 1)
        other = QPushButton("Open Another Library…")
        other.clicked.connect(self._choose_library)
        lib_row.addWidget(other)
        from .library_tools import LibraryTools

        self.library_tools = LibraryTools(self, lib_row)  # Back Up…, Move Library… (off the GUI thread)
        ll.addLayout(lib_row)
        self.tabs.addTab(lib_tab, "Library")

        # -- models and device
        models_tab = QWidget()
        ml = QVBoxLayout(models_tab)
        form = QFormLayout()
        self.device = QComboBox()
        for key, text in DEVICES:
            self.device.addItem(text, key)
        self.device_info = QLabel()
        self.device_info.setWordWrap(True)
        form.addRow("Device", self.device)
        form.addRow("", self.device_info)
        self.face_backend = QComboBox()
        for key, text in FACE_BACKENDS:
            self.face_backend.addItem(text, key)
        form.addRow("Faces", self.face_backend)
        self.vlm = QComboBox()
        self.vlm.setObjectName("vlmCombo")
        form.addRow("Captions and questions", self.vlm)
        self.instant_names = QCheckBox("Use names as soon as people and things are recognised, before teaching")
        self.instant_names.setToolTip("Captions and answers name the people and things the app recognised, marked "
                                      "\"named from recognition\"; teaching the captioner replaces them.")
        form.addRow("", self.instant_names)
        self.clip = QComboBox()
        for key, text in CLIP_MODELS:
            self.clip.addItem(text, key)
        form.addRow("Search and things", self.clip)
        ml.addLayout(form)
        ml.addWidget(QLabel("<b>Models on this computer</b>"))
        self.model_panel = ModelsPanel()
        self.models = self.model_panel.tree
        self.model_fix = self.model_panel.detail
        ml.addWidget(self.model_panel, 1)
        note = QLabel("Nothing is downloaded unless you click Download. Hugging Face models go to the Hugging Face "
                      "cache (HF_HOME), face packs into this library's models folder.")
        note.setWordWrap(True)
        note.setObjectName("pageSummary")
        ml.addWidget(note)
        self.tabs.addTab(models_tab, "Models")

        # -- thresholds and appearance
        other_tab = QWidget()
        ol = QFormLayout(other_tab)
        self.preview_cache = QSpinBox()
        self.preview_cache.setRange(100, 200_000)
        self.preview_cache.setSingleStep(500)
        self.preview_cache.setSuffix(" MB")
        ol.addRow("Preview cache", self.preview_cache)
        self.theme = QComboBox()
        self.theme.setObjectName("themeCombo")
        for key, text in THEMES:
            self.theme.addItem(text, key)
        ol.addRow("Appearance", self.theme)
        self.tabs.addTab(other_tab, "General")

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.save)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self.buttons.button(QDialogButtonBox.StandardButton.Save).setEnabled(False)
        self.tabs.setEnabled(False)

        theme = self.qsettings.value("theme", "system") if self.qsettings is not None else "system"
        self.theme.setCurrentIndex(max(0, self.theme.findData(theme)))
        device = self.qsettings.value("device", "") if self.qsettings is not None else ""
        self.device.setCurrentIndex(max(0, self.device.findData(device or "")))
        engine.call(load_settings, self._on_loaded, self._on_failed, label="settings")

    def _on_loaded(self, data: dict[str, Any]) -> None:
        self.data = data
        self.loading.hide()
        self.tabs.setEnabled(True)
        self.buttons.button(QDialogButtonBox.StandardButton.Save).setEnabled(True)
        for f in data["folders"]:
            item = QListWidgetItem(f["path"] + ("  (offline)" if f["status"] == "offline" else ""))
            item.setData(Qt.ItemDataRole.UserRole, f["id"])
            self.folder_list.addItem(item)
        self.polling.setChecked(data["watch_polling"])
        self.instant_names.setChecked(data["instant_names"])
        self.library_label.setText(data["library"])
        cap = data["doctor"].get("captioners") or {}
        rec = cap.get("recommended") or {}
        self.device_info.setText(f"This computer: {cap.get('hardware_text', '?')}"
                                 + (f"\nRecommended captioner here: {rec['title']} ({rec['reason']})" if rec else ""))
        self.device_info.setObjectName("deviceInfo")
        self.face_backend.setCurrentIndex(max(0, self.face_backend.findData(data["face_backend"])))
        for key, title, licence, tiny in data["vlms"]:
            self.vlm.addItem(f"{title} — {licence}" + (" (recommended here)" if key == rec.get("vlm") else ""), key)
        i = self.vlm.findData(data["vlm"])
        if i < 0:
            self.vlm.addItem(data["vlm"], data["vlm"])
            i = self.vlm.count() - 1
        self.vlm.setCurrentIndex(i)
        self.clip.setCurrentIndex(max(0, self.clip.findData(data["clip_model"])))
        self.preview_cache.setValue(int(data["preview_cache_bytes"] / 1024**2))
        self.model_panel.set_library(data["library"])
        self.model_panel.set_estimates(cap.get("estimates") or {})
        self.model_panel.set_rows(model_rows(data["doctor"]))
        self._fit_models_table()

    def _fit_models_table(self) -> None:
        """Widen the dialog (within the screen) until every column of the models table shows its text in full."""
        tree = self.models
        need = sum(max(tree.sizeHintForColumn(c), tree.header().sectionSizeHint(c)) for c in range(tree.columnCount()))
        need += MODELS_TABLE_CHROME_PX + tree.verticalScrollBar().sizeHint().width()
        screen = self.screen()
        room = screen.availableGeometry().width() - 40 if screen is not None else need
        if need > self.width():
            self.resize(min(room, need), self.height())

    def _on_failed(self, exc: BaseException) -> None:
        self.loading.setText(f"Settings could not be read: {user_message(exc)}")

    def done(self, result: int) -> None:
        """Closing stops a model download (what arrived is kept: Download resumes it next time)."""
        self.model_panel.shutdown()
        super().done(result)

    def _add_folder(self) -> None:
        start = os.path.expanduser("~")
        path = QFileDialog.getExistingDirectory(self, "Add a Folder of Photos", start)
        if path:
            self.added.append(path)
            self.folder_list.addItem(QListWidgetItem(path + "  (new)"))

    def _remove_folder(self) -> None:
        item = self.folder_list.currentItem()
        if item is None:
            return
        fid = item.data(Qt.ItemDataRole.UserRole)
        if fid is not None:
            self.removed.append(int(fid))
        self.folder_list.takeItem(self.folder_list.row(item))

    def _choose_library(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open or Make a Library", str(Path.home()))
        if path:
            self.libraryChosen.emit(path)
            self.reject()

    def changes(self) -> dict[str, Any]:
        if self.data is None:
            return {}
        out: dict[str, Any] = {}
        for key, widget in (("face_backend", self.face_backend), ("vlm", self.vlm), ("clip_model", self.clip)):
            value = widget.currentData()
            if value != self.data[key]:
                out[key] = value
        if self.polling.isChecked() != self.data["watch_polling"]:
            out["watch_polling"] = self.polling.isChecked()
        if self.instant_names.isChecked() != self.data["instant_names"]:
            out["instant_names"] = self.instant_names.isChecked()
        cache = self.preview_cache.value() * 1024**2
        if abs(cache - self.data["preview_cache_bytes"]) >= 1024**2:
            out["preview_cache_bytes"] = cache
        return out

    def save(self) -> None:
        if self.qsettings is not None:
            self.qsettings.setValue("theme", self.theme.currentData())
            self.qsettings.setValue("device", self.device.currentData() or "")
        changes, removed = self.changes(), list(self.removed)
        if removed and QMessageBox.question(
                self, "Stop Watching Folders",
                "The app forgets the photos of the folders you removed (names, captions and faces in them). "
                "The files themselves stay untouched. Go on?") != QMessageBox.StandardButton.Yes:
            return
        self.saved = True
        self.engine.call(lambda lib: save_settings(lib, changes, removed), lambda _r: self.accept(),
                         self._on_save_failed, label="save settings")

    def _on_save_failed(self, exc: BaseException) -> None:
        from .widgets import show_error

        show_error(self, "Settings Not Saved", user_message(exc))
