"""The questions the window asks the user (a name, a yes/no; tests replace them through `Prompts`), and the About
box's text."""

from __future__ import annotations

from PySide6.QtCore import QStringListModel, Qt
from PySide6.QtWidgets import (
    QCompleter,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QVBoxLayout,
    QWidget,
)

from engine import __version__, read_models
from engine.library import APP_NAME
from myvlm_desktop.things_page import NameThingPrompt


def ask_name(parent: QWidget, title: str, prompt: str, names: list[str], text: str = "") -> str | None:
    """A small dialog: a name, with completion over the names already used. None: cancelled."""
    dlg = QDialog(parent)
    dlg.setWindowTitle(title)
    lay = QVBoxLayout(dlg)
    label = QLabel(prompt)
    label.setWordWrap(True)
    lay.addWidget(label)
    edit = QLineEdit(text)
    completer = QCompleter(QStringListModel(names, dlg), edit)
    completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    edit.setCompleter(completer)
    lay.addWidget(edit)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
    buttons.accepted.connect(dlg.accept)
    buttons.rejected.connect(dlg.reject)
    lay.addWidget(buttons)
    dlg.resize(380, 10)
    if dlg.exec() == QDialog.DialogCode.Accepted and edit.text().strip():
        return " ".join(edit.text().split())
    return None


def confirm(parent: QWidget, title: str, text: str) -> bool:
    return QMessageBox.question(parent, title, text) == QMessageBox.StandardButton.Yes


class Prompts:
    """The questions the window asks the user; tests replace them."""

    ask_name = staticmethod(ask_name)
    confirm = staticmethod(confirm)
    name_thing = staticmethod(NameThingPrompt.ask)


def html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def about_html(library_root: object) -> str:
    """The About box: the version, what the app does, the library, and every model with its licence."""
    dlib_files, hub_models = read_models.about_models()
    rows = "".join(f"<tr><td>{html(repo)}</td><td>{html(purpose)}</td><td>{html(lic)}</td></tr>"
                   for repo, purpose, lic in hub_models)
    return (f"<h3>{APP_NAME} {__version__}</h3>"
            "<p>A local, private photo album that learns your people, pets and things and captions them by "
            "name (MyVLM, Alaluf et al., ECCV 2024). Nothing leaves this computer.</p>"
            f"<p>Library: <code>{html(str(library_root))}</code></p>"
            "<p><b>Models and their licences</b></p><table cellspacing=4>"
            "<tr><th align=left>Model</th><th align=left>For</th><th align=left>Licence</th></tr>"
            f"<tr><td>dlib face models ({dlib_files} files)</td><td>faces (default)</td><td>CC0</td></tr>"
            "<tr><td>InsightFace buffalo_l / buffalo_s / antelopev2</td><td>faces (optional)</td>"
            "<td>non-commercial research only</td></tr>"
            f"{rows}</table>"
            "<p>Settings ▸ Models shows which of them this computer has.</p>")
