"""The Models section of Settings: every model each feature can use, its state, and Download / Cancel / Remove /
Import / Verify.

The table comes from the engine's model manager (`engine.models.downloads`). Every manager call (downloads, copies,
hashing, deleting, even re-reading the states afterwards) runs on a worker QThread, one job at a time, so the window
never waits on the disk or the network; progress comes back through a signal. Nothing is downloaded unless the user
clicks Download and confirms; Cancel stops a download after the chunk in flight and keeps what arrived, so Download
resumes it later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.library import (
    HERE_LABEL,
    LibraryPaths,
    ModelManager,
    TokenRequired,
    human_size,
    minutes_text,
    seconds_text,
)

from .tasks import SingleJobThread, is_cancelled, is_expected, user_message

log = logging.getLogger(__name__)

KeyRole = Qt.ItemDataRole.UserRole + 1  # the model's catalogue name on column 0 (UserRole holds what to do)
GET, CANCEL, REMOVE, IMPORT, VERIFY = "get", "cancel", "remove", "import", "verify"


def _human(n: int | None) -> str:
    return human_size(n)


HEADERS = ["Model", "For", "State", "Size", "Time here", "Licence"]
TIME_COLUMN = 4
TIME_TIP = ("Seconds per photo and time to teach a concept (100 steps) on this computer: measured here once the "
            "model has run (marked 'here'), the benchmark's 2-core CPU until then")


def time_text(estimate: dict[str, Any] | None) -> str:
    """'2.0 s · 2 min' (per photo · per concept), 'here: …' once measured on this computer."""
    if not estimate:
        return ""
    photo, concept = estimate.get("photo_s"), estimate.get("concept_s")
    if photo is None and concept is None:
        return "first use"
    text = " · ".join([seconds_text(photo) if photo is not None else "?",
                       minutes_text(concept) if concept is not None else "?"])
    return f"here: {text}" if HERE_LABEL in (estimate.get("photo_source"), estimate.get("concept_source")) else text


def row_texts(row: dict[str, Any], estimate: dict[str, Any] | None = None) -> list[str]:
    """The table's cells for one model: Model, For, State, Size, Time here (captioners), Licence."""
    if row["kind"] == "hub":
        label = row["repo_id"]
    elif row["kind"] == "face_pack":
        label = f"InsightFace {row['name']}"
    else:
        label = row["title"]
    if row["state"] == "present":
        size = _human(row["size_bytes"])
    elif row["state"] == "partial" and row.get("partial_bytes"):
        size = f"{_human(row['partial_bytes'])} of ~{_human(row['approx_bytes'])}"
    else:
        size = f"~{_human(row['approx_bytes'])}"
    use = str(row.get("feature") or row["purpose"]).capitalize() + (", default" if row.get("default") else "")
    # the purpose in full: the For cell's tooltip
    return [label, use, row["state"], size, time_text(estimate), row["licence"]]


# -- the worker ------------------------------------------------------------------------------------------------------

@dataclass
class JobOutcome:
    action: str
    name: str
    ok: bool = False
    cancelled: bool = False
    error: str | None = None
    needs_token: bool = False  # the hub wants the user's access token for this repo (a gated model: Llama 2)
    result: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] | None = None  # the states after the job
    seconds: float = 0.0


class ModelJob(QObject):
    """One manager call on the job's thread, then the fresh states. `cancel()` is thread-safe."""

    progress = Signal(object)  # the model manager's download progress
    finished = Signal(object)  # JobOutcome

    def __init__(self, action: str, name: str, models_dir: Path | None, folder: str | None = None,
                 manager_options: dict[str, Any] | None = None, token: str | None = None):
        super().__init__()
        self.action, self.name, self.folder = action, name, folder
        self.models_dir = models_dir
        self.options = dict(manager_options or {})
        if token:  # this job's only: the token is neither kept by the panel nor written anywhere
            self.options["token"] = token
        self.flag = threading.Event()

    def cancel(self) -> None:
        self.flag.set()

    @Slot()
    def run(self) -> None:
        out = JobOutcome(self.action, self.name)
        started = time.perf_counter()
        mm = None
        try:
            mm = ModelManager(self.models_dir, **self.options)
            if self.action == GET:
                out.result = mm.get(self.name, progress=self.progress.emit, cancel=self.flag).as_dict()
            elif self.action == REMOVE:
                out.result = {"freed_bytes": mm.remove(self.name)}
            elif self.action == IMPORT:
                out.result = mm.import_folder(self.name, self.folder or "", progress=self.progress.emit,
                                              cancel=self.flag).as_dict()
            elif self.action == VERIFY:
                out.result = mm.verify(self.name, progress=self.progress.emit, cancel=self.flag).as_dict()
            out.ok = True
        except Exception as exc:
            if is_cancelled(exc):
                out.cancelled = True
            else:
                out.needs_token = isinstance(exc, TokenRequired)
                if not is_expected(exc):
                    log.exception("model %s of %s failed", self.action, self.name)
                out.error = user_message(exc)
        finally:
            try:
                if mm is not None:
                    out.rows = [s.as_dict() for s in mm.status()]
            except Exception:
                log.exception("model states could not be read")
            out.seconds = time.perf_counter() - started
            app = QCoreApplication.instance()
            if app is not None:
                self.moveToThread(app.thread())  # deleted on the GUI thread later
            self.finished.emit(out)


class ModelJobRunner(SingleJobThread):
    """Owns the model jobs' thread: one job at a time. Shutting down cancels (a download keeps what arrived) and
    waits a little; a job still busy after that (a copy of a large file) is left to finish on its own."""

    progress = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__("myvlm-models", shutdown_ms=5_000, parent=parent)

    def start(self, job: ModelJob) -> bool:
        if self.running:
            return False
        job.progress.connect(self.progress)
        return self.start_job(job, f"myvlm-models-{job.action}")


# -- the panel -------------------------------------------------------------------------------------------------------

def _ask(parent: QWidget, title: str, text: str) -> bool:
    return QMessageBox.question(parent, title, text) == QMessageBox.StandardButton.Yes


def _choose_folder(parent: QWidget, title: str) -> str:
    return QFileDialog.getExistingDirectory(parent, title, str(Path.home()))


def _ask_token(parent: QWidget, title: str, why: str) -> str | None:
    """The user's Hugging Face access token, typed into a password field; None when they cancel."""
    from PySide6.QtWidgets import QInputDialog, QLineEdit

    token, ok = QInputDialog.getText(parent, title, f"{why}.\n\nAccess token:", QLineEdit.EchoMode.Password)
    return token.strip() if ok and token.strip() else None


def _tell(parent: QWidget, title: str, text: str) -> None:
    from .widgets import show_error

    show_error(parent, title, text)


class ModelsPanel(QWidget):
    """The table of models with its buttons and progress bar."""

    modelsChanged = Signal(list)  # the rows after a job changed something

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.models_dir: Path | None = None
        self.manager_options: dict[str, Any] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.estimates: dict[str, dict[str, Any]] = {}   # captioner → its time here (doctor's "captioners")
        self.last: JobOutcome | None = None
        self._token_given = False  # this download already asked for the user's token (a wrong one is not re-asked)
        # what the user is asked and shown: replaceable (tests answer for the user)
        self.confirm: Callable[[QWidget, str, str], bool] = _ask
        self.choose_folder: Callable[[QWidget, str], str] = _choose_folder
        self.tell: Callable[[QWidget, str, str], None] = _tell
        self.ask_token: Callable[[QWidget, str, str], str | None] = _ask_token
        self.runner = ModelJobRunner(self)
        self.runner.progress.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.tree = QTreeWidget()
        self.tree.setObjectName("modelsTree")
        self.tree.setHeaderLabels(HEADERS)
        self.tree.headerItem().setToolTip(TIME_COLUMN, TIME_TIP)
        self.tree.setRootIsDecorated(False)
        header = self.tree.header()
        for col in range(len(HEADERS) - 1):  # every cell in full; the licence takes the rest (its tooltip has it all)
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        # On a narrow screen the licence gives way first: a stretched last section shrinks no further than its
        # size when the stretch began (100 px by default), so it begins small.
        header.setMinimumSectionSize(24)
        header.setStretchLastSection(False)
        header.resizeSection(len(HEADERS) - 1, 24)
        header.setStretchLastSection(True)
        self.tree.currentItemChanged.connect(self._on_current)
        lay.addWidget(self.tree, 1)
        self.detail = QLabel()
        self.detail.setObjectName("modelFix")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.detail)

        buttons = QHBoxLayout()
        self.get_button = QPushButton("Download")
        self.get_button.setToolTip("Download the model from the Hugging Face hub (an unfinished download resumes)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the download; what arrived is kept and Download resumes it")
        self.remove_button = QPushButton("Remove")
        self.import_button = QPushButton("Import from Folder…")
        self.import_button.setToolTip("Copy the model from a folder (e.g. made by `hf download --local-dir` on "
                                      "another computer, or an unpacked face pack)")
        self.verify_button = QPushButton("Verify")
        self.verify_button.setToolTip("Check the model's files against their sizes and hashes")
        for b, slot in ((self.get_button, self.download), (self.cancel_button, self.cancel),
                        (self.remove_button, self.remove), (self.import_button, self.import_folder),
                        (self.verify_button, self.verify)):
            b.clicked.connect(slot)
            buttons.addWidget(b)
        buttons.addStretch(1)
        lay.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setObjectName("modelProgress")
        self.progress.setRange(0, 1000)
        self.progress.hide()
        lay.addWidget(self.progress)
        self.status = QLabel()
        self.status.setObjectName("pageSummary")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self._update_buttons()

    # -- data -------------------------------------------------------------------------------------------------------

    def set_library(self, root: str | Path | None) -> None:
        self.models_dir = LibraryPaths(Path(root)).models if root else None

    def set_estimates(self, estimates: dict[str, dict[str, Any]]) -> None:
        """Each captioner's time per photo and per concept here (engine.admin.doctor.captioners()["estimates"])."""
        self.estimates = dict(estimates or {})
        if self.rows:
            self.set_rows(list(self.rows.values()))

    def set_rows(self, rows: list[dict[str, Any]]) -> None:
        current = self.current_name()
        self.rows = {r["name"]: r for r in rows}
        self.tree.clear()
        for row in rows:
            estimate = self.estimates.get(row["name"])
            item = QTreeWidgetItem(row_texts(row, estimate))
            what = self._what_to_do(row)
            if estimate and estimate.get("detail"):
                what += f"\nOn this computer: {estimate['detail']}."
                item.setToolTip(TIME_COLUMN, estimate["detail"])
            item.setData(0, Qt.ItemDataRole.UserRole, what)
            item.setData(0, KeyRole, row["name"])
            colour = {"present": Qt.GlobalColor.darkGreen, "partial": Qt.GlobalColor.darkYellow}.get(
                row["state"], Qt.GlobalColor.darkRed)
            item.setForeground(2, colour)
            item.setToolTip(0, row.get("where") or "")
            item.setToolTip(1, f"{row['title']}: {row['purpose']}" + ("; used out of the box" if row.get("default")
                                                                      else ""))
            item.setToolTip(len(HEADERS) - 1, row["licence"])
            self.tree.addTopLevelItem(item)
            if row["name"] == current:
                self.tree.setCurrentItem(item)
        self._update_buttons()

    @staticmethod
    def _what_to_do(row: dict[str, Any]) -> str:
        if row.get("fix"):
            return row["fix"]
        where = row.get("where") or ""
        return f"{row['title']}: {row['state']}" + (f" in {where}" if where else "")

    def current_name(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(0, KeyRole) if item is not None else None

    def select(self, name: str) -> None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, KeyRole) == name:
                self.tree.setCurrentItem(item)
                return
        raise KeyError(name)

    def state_of(self, name: str) -> str:
        return self.rows[name]["state"]

    @property
    def busy(self) -> bool:
        return self.runner.running

    # -- actions ----------------------------------------------------------------------------------------------------

    def download(self) -> None:
        row = self._current_row()
        if row is None or self.busy:
            return
        verb = "Resume the download of" if row["state"] == "partial" else "Download"
        text = (f"{verb} {row['title']} ({row['repo_id']}, about {_human(row['approx_bytes'])})?\n\n"
                f"Licence: {row['licence']}.\nIt goes to {row.get('where') or 'its folder'}.")
        if not self.confirm(self, "Download a Model", text):
            return
        self._token_given = False
        self._start(GET, row["name"])

    def cancel(self) -> None:
        if self.busy:
            self.runner.cancel()
            self.status.setText("Stopping… what arrived is kept")
            self.cancel_button.setEnabled(False)

    def remove(self) -> None:
        row = self._current_row()
        if row is None or self.busy:
            return
        if not self.confirm(self, "Remove a Model", f"Delete {row['title']} from this computer "
                                                    f"({_human(row['size_bytes'] or row['partial_bytes'])})?"
                                                    " It can be downloaded again."):
            return
        self._start(REMOVE, row["name"])

    def import_folder(self) -> None:
        row = self._current_row()
        if row is None or self.busy:
            return
        folder = self.choose_folder(self, f"Import {row['title']} from a Folder")
        if folder:
            self._start(IMPORT, row["name"], folder)

    def verify(self) -> None:
        row = self._current_row()
        if row is None or self.busy:
            return
        self._start(VERIFY, row["name"])

    def _current_row(self) -> dict[str, Any] | None:
        name = self.current_name()
        return self.rows.get(name) if name else None

    def _start(self, action: str, name: str, folder: str | None = None, token: str | None = None) -> None:
        job = ModelJob(action, name, self.models_dir, folder, self.manager_options, token)
        if not self.runner.start(job):
            return
        words = {GET: "Connecting to the model hub…", REMOVE: "Removing…", IMPORT: "Copying…",
                 VERIFY: "Checking the files…"}
        self.status.setText(words[action])
        self.progress.setRange(0, 0)  # busy until the first progress report
        self.progress.show()
        self._update_buttons()

    def shutdown(self, timeout_ms: int = 5_000) -> bool:
        return self.runner.shutdown(timeout_ms)

    # -- feedback ---------------------------------------------------------------------------------------------------

    @Slot(object)
    def _on_progress(self, p: Any) -> None:
        if p.total:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(1.0, p.done / p.total)))
        verb = {"listing": "Listing the files", "downloading": "Downloading", "copying": "Copying",
                "verifying": "Checking", "done": "Done"}.get(p.phase, p.phase)
        text = f"{verb} {p.file}".strip()
        if p.total:
            text += f" — {_human(p.done)} of {_human(p.total)}"
        if p.files_total:
            text += f" ({p.files_done}/{p.files_total} files)"
        if p.resumed:
            text += f", resumed from {_human(p.resumed)}"
        self.status.setText(text)

    @Slot(object)
    def _on_finished(self, out: JobOutcome) -> None:
        self.last = out
        self.progress.hide()
        if out.rows is not None:
            self.set_rows(out.rows)
            self.modelsChanged.emit(out.rows)
        title = self.rows.get(out.name, {}).get("title", out.name)
        if out.cancelled:
            self.status.setText(f"{title}: stopped. What arrived is kept; Download resumes it." if out.action == GET
                                else f"{title}: stopped.")
        elif out.needs_token and out.action == GET and not self._token_given:
            # a gated model (Llama 2): say why the hub wants a token, ask for it once, and download with it
            token = self.ask_token(self, f"{title}: Access Token Needed", out.error or "")
            if token:
                self._token_given = True
                self._start(GET, out.name, token=token)
                return
            self.status.setText(f"{title}: not downloaded (the hub needs your access token).")
        elif out.error:
            self.status.setText(f"{title}: {out.error}")
            self.tell(self, "Model Not Changed" if out.action != VERIFY else "Model Not Checked", out.error)
        elif out.action == GET:
            done = "was already here" if out.result.get("already_present") else "is downloaded"
            self.status.setText(f"{title} {done}.")
        elif out.action == REMOVE:
            self.status.setText(f"{title} removed ({_human(out.result.get('freed_bytes'))} freed).")
        elif out.action == IMPORT:
            self.status.setText(f"{title} imported.")
        elif out.action == VERIFY:
            problems = out.result.get("problems") or []
            if out.result.get("ok"):
                self.status.setText(f"{title}: all {len(out.result.get('checked') or [])} files are as they "
                                    "should be.")
            else:
                text = "; ".join(problems) or "not present"
                self.status.setText(f"{title}: {text}")
                self.tell(self, "Model Damaged or Incomplete",
                          f"{title}: {text}. Remove it and download it again.")
        self._update_buttons()

    def _on_current(self, item: QTreeWidgetItem | None, _prev: Any = None) -> None:
        self.detail.setText(item.data(0, Qt.ItemDataRole.UserRole) if item is not None else "")
        self._update_buttons()

    def _update_buttons(self) -> None:
        row = self._current_row()
        busy = self.busy
        state = row["state"] if row else None
        self.get_button.setEnabled(bool(row) and not busy and row["can_get"] and state != "present")
        self.get_button.setText("Resume Download" if state == "partial" else "Download")
        job = self.runner.job
        self.cancel_button.setEnabled(busy and job is not None and job.action in (GET, IMPORT, VERIFY))
        self.remove_button.setEnabled(bool(row) and not busy and row["can_remove"])
        self.import_button.setEnabled(bool(row) and not busy and row["can_import"])
        self.verify_button.setEnabled(bool(row) and not busy and state != "missing")
