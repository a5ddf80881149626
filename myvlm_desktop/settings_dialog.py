"""Settings: folders, the library, the device, the face backend, the captioning model, the models each feature
needs (the model manager's table, with Download / Cancel / Remove / Import / Verify: see models_page.py),
thresholds, appearance.

Library settings are declared once in engine.settings (key, type, default, help: the CLI's `myvlm settings` lists
the same) and stored in the library; the device and the theme are per-user app settings (QSettings). Reading the
doctor's report and saving run on an engine thread; model downloads and the other model jobs on a thread of their own.
"""

from __future__ import annotations

import json
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
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from engine.library import Library
from engine.read_models import settings_view
from engine.settings import SETTINGS, parse, setting

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


load_settings = settings_view   # what the dialog shows (engine thread: the doctor looks at model caches and the GPU)

# Settings with a widget of their own below; every other declared setting gets a field under General ▸ Advanced.
OWN_WIDGETS = ("face_backend", "vlm", "clip_model", "watch_polling", "instant_names", "preview_cache_bytes")


def save_settings(lib: Library, changes: dict[str, Any], remove_folders: list[int]) -> dict[str, Any]:
    """Store changed library settings (all checked before any is stored; the engine's `set_setting` applies what
    a change implies, e.g. a new VLM makes embeddings of the other model stale) and stop watching folders."""
    for key, value in changes.items():
        setting(key).check(value)   # refuses a value the setting does not take, with a sentence
    for key, value in changes.items():
        lib.set_setting(key, value)
    removed = sum(lib.remove_folder(fid) for fid in remove_folders)
    return {"removed_photos": removed}


def field_text(value: Any) -> str:
    """A setting's value as typed in its field: text as it is, anything else as JSON, nothing for None."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def model_rows(doctor: dict[str, Any]) -> list[dict[str, Any]]:
    """The model manager's rows (one dict per model: state, size, licence, where, what to do) in the doctor's
    report."""
    return list(doctor.get("models", {}).get("catalogue", []))


MODELS_TABLE_CHROME_PX = 64  # the dialog's width around the models table: margins, the tab frame, the table's frame


def _choose(combo: QComboBox, value: Any) -> None:
    """Select `value` in a combo box; a value it does not list (a pack folder, a checkpoint) is added as it is."""
    i = combo.findData(value)
    if i < 0 and value:
        combo.addItem(str(value), value)
        i = combo.count() - 1
    combo.setCurrentIndex(max(0, i))


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
        self.polling.setToolTip(SETTINGS["watch_polling"].help)
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
        self.face_backend.setToolTip(SETTINGS["face_backend"].help)
        form.addRow("Faces", self.face_backend)
        self.vlm = QComboBox()
        self.vlm.setObjectName("vlmCombo")
        self.vlm.setToolTip(SETTINGS["vlm"].help)
        form.addRow("Captions and questions", self.vlm)
        self.instant_names = QCheckBox("Use names as soon as people and things are recognised, before teaching")
        self.instant_names.setToolTip(SETTINGS["instant_names"].help)
        form.addRow("", self.instant_names)
        self.clip = QComboBox()
        for key, text in CLIP_MODELS:
            self.clip.addItem(text, key)
        self.clip.setToolTip(SETTINGS["clip_model"].help)
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
        self.preview_cache.setToolTip(SETTINGS["preview_cache_bytes"].help)
        ol.addRow("Preview cache", self.preview_cache)
        self.theme = QComboBox()
        self.theme.setObjectName("themeCombo")
        for key, text in THEMES:
            self.theme.addItem(text, key)
        ol.addRow("Appearance", self.theme)
        # every other declared library setting, typed as `myvlm settings KEY VALUE` takes it (empty: the default)
        self.fields: dict[str, QWidget] = {"face_backend": self.face_backend, "vlm": self.vlm, "clip_model": self.clip,
                                           "watch_polling": self.polling, "instant_names": self.instant_names,
                                           "preview_cache_bytes": self.preview_cache}
        advanced = [s for key, s in SETTINGS.items() if key not in OWN_WIDGETS]
        if advanced:
            ol.addRow(QLabel("<b>Advanced</b>"))
        for decl in advanced:
            field = QCheckBox(decl.help) if decl.type is bool else QLineEdit()
            field.setObjectName(f"setting_{decl.key}")
            field.setToolTip(decl.help)
            if isinstance(field, QLineEdit):
                field.setPlaceholderText(f"default: {field_text(decl.default) or 'none'}")
            ol.addRow(decl.label or decl.key, field)
            self.fields[decl.key] = field
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
        values = data["settings"]
        self.polling.setChecked(bool(values["watch_polling"]))
        self.instant_names.setChecked(bool(values["instant_names"]))
        self.library_label.setText(data["library"])
        cap = data["doctor"].get("captioners") or {}
        rec = cap.get("recommended") or {}
        self.device_info.setText(f"This computer: {cap.get('hardware_text', '?')}"
                                 + (f"\nRecommended captioner here: {rec['title']} ({rec['reason']})" if rec else ""))
        self.device_info.setObjectName("deviceInfo")
        _choose(self.face_backend, values["face_backend"])
        for key, title, licence, _tiny in data["vlms"]:
            self.vlm.addItem(f"{title} — {licence}" + (" (recommended here)" if key == rec.get("vlm") else ""), key)
        _choose(self.vlm, values["vlm"])
        _choose(self.clip, values["clip_model"])
        self.preview_cache.setValue(int(values["preview_cache_bytes"] / 1024**2))
        for key, field in self.fields.items():
            if key in OWN_WIDGETS:
                continue
            if isinstance(field, QCheckBox):
                field.setChecked(bool(values[key]))
            else:
                field.setText(field_text(values[key]))
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
        """The library settings the user changed: {key: new value}."""
        if self.data is None:
            return {}
        values = self.data["settings"]
        out: dict[str, Any] = {}
        for key, field in self.fields.items():
            if key == "preview_cache_bytes":
                cache = self.preview_cache.value() * 1024**2
                if abs(cache - values[key]) >= 1024**2:
                    out[key] = cache
                continue
            if isinstance(field, QComboBox):
                value = field.currentData()
            elif isinstance(field, QCheckBox):
                value = field.isChecked()
            else:
                text = field.text().strip()
                value = parse(key, text) if text else None
            if value != values[key]:
                out[key] = value
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
