"""Settings ▸ Library: "Back Up…" and "Move Library…" (engine/admin/backup.py), run on a worker thread.

Both copy files and can take a while on a big library, so they run on an `EngineThread` of their own with a
progress dialog; the window stays responsive. The photos themselves are never copied, moved or changed.

- Back Up…: a folder is chosen; the catalog (SQLite's online backup: safe while the app indexes), the concept
  files and the face crops go into a new dated backup folder there, with a manifest of checksums. Restoring is
  `myvlm restore BACKUP` (the app must be closed for that, so it is not a button here).
- Move Library…: a folder is chosen; everything in the library is copied there and checked file by file, the
  default library pointer is switched, and the app reopens on the new folder. The old folder is kept (the app
  had it open while copying); the message says where it is, to delete once the new one is fine.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QBoxLayout,
    QFileDialog,
    QMessageBox,
    QProgressDialog,
    QPushButton,
    QWidget,
)

from engine.progress import Progress

from .tasks import EngineThread, is_cancelled, user_message

log = logging.getLogger(__name__)

PHASES = {"catalog": "Copying the catalog…", "files": "Copying files…", "verify": "Checking the copy…"}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


class LibraryTools(QObject):
    """The two buttons and what they do. `dialog` is the Settings dialog: it has `data["library"]` once loaded
    and the `libraryChosen(str)` signal that makes the window reopen on another library."""

    progressed = Signal(str, int, int)   # emitted on the worker thread, delivered on the GUI thread
    finished = Signal(str, object)       # "backup" | "move", the report (tests wait on it)
    failed = Signal(str, str)            # what, the message shown

    def __init__(self, dialog: QWidget, row: QBoxLayout):
        super().__init__(dialog)
        self.dialog = dialog
        self.backup_button = QPushButton("Back Up…")
        self.backup_button.setObjectName("backupLibrary")
        self.backup_button.setToolTip("Save the catalog, names, concepts and faces to a folder of your choice "
                                      "(the photos themselves are not copied)")
        self.backup_button.clicked.connect(self.back_up)
        self.move_button = QPushButton("Move Library…")
        self.move_button.setObjectName("moveLibrary")
        self.move_button.setToolTip("Move the library folder to another place or disk; your photos stay where "
                                    "they are")
        self.move_button.clicked.connect(self.move)
        row.addWidget(self.backup_button)
        row.addWidget(self.move_button)
        # seams for tests and for other front ends: how a folder is chosen, how a question is asked and answered
        self.choose_folder = lambda title, start: QFileDialog.getExistingDirectory(self.dialog, title, start)
        self.confirm = lambda title, text: QMessageBox.question(
            self.dialog, title, text) == QMessageBox.StandardButton.Yes
        self.tell = lambda title, text: QMessageBox.information(self.dialog, title, text)
        self.thread: EngineThread | None = None
        self.progress: QProgressDialog | None = None
        self.cancel_flag: threading.Event | None = None
        self.orphaned = False
        self.progressed.connect(self._on_progress)
        if hasattr(dialog, "finished"):
            dialog.finished.connect(self._on_dialog_closed)

    # -- helpers ------------------------------------------------------------------------------------------------------

    @property
    def library(self) -> Path | None:
        data = getattr(self.dialog, "data", None)
        return Path(data["library"]) if data else None

    @property
    def busy(self) -> bool:
        return self.thread is not None

    def _start(self, what: str, title: str, fn, cancel: threading.Event | None) -> None:
        root = self.library
        assert root is not None
        self.backup_button.setEnabled(False)
        self.move_button.setEnabled(False)
        self.cancel_flag = cancel
        dlg = QProgressDialog(title, "Stop" if cancel is not None else "", 0, 0, self.dialog)
        dlg.setObjectName("libraryToolsProgress")
        dlg.setWindowTitle(title)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAutoClose(False)
        dlg.setAutoReset(False)
        if cancel is not None:
            dlg.canceled.connect(cancel.set)
        else:
            dlg.setCancelButton(None)
        self.progress = dlg
        QTimer.singleShot(300, lambda: dlg.show() if self.progress is dlg else None)   # quick ones: no flash
        self.thread = EngineThread(root, name=f"library-{what}", parent=self)
        self.thread.call(fn, lambda report: self._done(what, report), lambda exc: self._failed(what, exc),
                         label=what)

    def _emit(self, p: Progress | str, done: int = 0, total: int | None = 0) -> None:   # worker thread
        """The engine's progress: a `Progress`, or (phase, done, total) from producers not yet converted."""
        if isinstance(p, Progress):
            p, done, total = p.phase, p.done, p.total
        self.progressed.emit(p, done, total or 0)

    @Slot(str, int, int)
    def _on_progress(self, phase: str, done: int, total: int) -> None:
        if self.progress is None:
            return
        self.progress.setLabelText(PHASES.get(phase, phase))
        self.progress.setMaximum(max(total, 1))
        self.progress.setValue(min(done, max(total, 1)))

    def _on_dialog_closed(self, _result: int = 0) -> None:
        """Settings closed while a copy runs: it finishes on its own (a backup is complete or absent, a move is
        verified before anything switches); its result is only logged, since nothing is left to show it in."""
        if self.thread is None:
            return
        self.orphaned = True
        thread, self.thread = self.thread, None
        thread.shutdown(0)   # runs on, detached from the dialog, until the copy is done (tasks.keep_until_finished)

    def _end(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress.deleteLater()
            self.progress = None
        if self.thread is not None:
            self.thread.shutdown()
            self.thread = None
        self.backup_button.setEnabled(True)
        self.move_button.setEnabled(True)

    def _failed(self, what: str, exc: BaseException) -> None:
        if self.orphaned:
            log.warning("%s (finished after Settings closed) failed: %s", what, user_message(exc))
            return
        self._end()
        if is_cancelled(exc):
            self.failed.emit(what, "")
            return
        from .widgets import show_error

        text = user_message(exc)
        show_error(self.dialog, "Backup Failed" if what == "backup" else "Library Not Moved", text)
        self.failed.emit(what, text)

    def _done(self, what: str, report: Any) -> None:
        if self.orphaned:
            log.info("%s finished after Settings closed: %s", what, report)
            return
        self._end()
        if what == "backup":
            self.tell("Library Backed Up",
                      f"The library was backed up to {report.path} ({report.files} files, {_mb(report.bytes)}).\n\n"
                      "Your photos are not part of it: back them up too. To restore, close the app and run "
                      f"myvlm restore \"{report.path}\".")
        else:
            self.tell("Library Moved",
                      f"The library is now at {report.new}; the app opens it from now on.\n\nThe old folder "
                      f"{report.old} was kept: delete it once you have checked that everything is there.")
        self.finished.emit(what, report)
        if what == "move":
            self.dialog.libraryChosen.emit(report.new)   # the window reopens on the moved library
            self.dialog.reject()

    # -- the buttons --------------------------------------------------------------------------------------------------

    def back_up(self) -> None:
        root = self.library
        if root is None or self.busy:
            return
        dest = self.choose_folder("Back Up the Library Into", str(Path.home()))
        if not dest:
            return
        flag = threading.Event()
        self._start("backup", "Backing Up the Library",
                    lambda lib: lib.backup(dest, progress=self._emit, cancel=flag), flag)

    def move(self) -> None:
        root = self.library
        if root is None or self.busy:
            return
        chosen = self.choose_folder("Move the Library To", str(Path.home()))
        if not chosen:
            return
        target = Path(chosen)
        if target.is_dir() and any(target.iterdir()):
            target = target / root.name   # a folder with things in it: the library goes inside, as a new folder
        if not self.confirm("Move the Library",
                            f"Move the library from {root} to {target}?\n\nEverything the app learned goes with "
                            "it (catalog, faces, concepts, thumbnails, models); your photos stay where they are. "
                            "The app then reopens on the new folder, and the old one is kept until you delete it."):
            return
        self._start("move", "Moving the Library", lambda lib: lib.move_to(target, progress=self._emit), None)
