"""Personalise: "Teach the captioner" for one person or thing.

1. The dialog asks an engine thread to prepare the training targets (the original VLM captions the concept's
   photos; its words for the subject are replaced by the concept's identifier) and shows them for review.
2. The reviewed targets are trained into the concept embedding by `TrainingJob`, a worker object on a `QThread`
   with its own engine `Library`: a progress bar, a live loss plot, the time left, the device, and Cancel (the
   engine checkpoints every 25 steps and on cancel, so teaching again continues where it stopped).
3. Afterwards the photos the concept appears in are re-captioned in the background (the indexing process's
   captions stage), which the main window starts when `trained` is emitted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QCoreApplication,
    QMargins,
    QObject,
    QPointF,
    QSize,
    Qt,
    Signal,
    Slot,
)
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from engine.library import Library
from engine.read_models import (
    Prepared,
    TargetRow,
    concept_photo_count,
    device_text,
    teaching_targets,
)

from .grid import thumb_key
from .tasks import (
    EngineThread,
    SingleJobThread,
    is_cancelled,
    is_expected,
    user_message,
)
from .thumbnails import ThumbKey, ThumbnailLoader

log = logging.getLogger(__name__)

DEFAULT_STEPS = 100


# -- preparing (engine.read_models.teaching_targets, on an engine thread) --------------------------------------------

prepare_teaching = teaching_targets


# -- training (QThread + worker object) ----------------------------------------------------------------------------

@dataclass
class TrainingOutcome:
    concept_id: int
    ok: bool = False
    cancelled: bool = False
    error: str | None = None
    steps: int = 0
    photos_to_recaption: int = 0
    seconds: float = 0.0


class TrainingJob(QObject):
    """Trains concept embeddings on its thread. `cancel()` is thread-safe."""

    started = Signal(str)      # device, in words
    progress = Signal(object)  # engine TrainingProgress
    finished = Signal(object)  # TrainingOutcome

    def __init__(self, library_root: Path, options: dict[str, Any], concept_id: int, steps: int,
                 edits: dict[int, list[str]] | None = None, task: str = "caption"):
        super().__init__()
        self.root, self.options = Path(library_root), dict(options)
        self.concept_id, self.steps, self.task = concept_id, steps, task
        self.edits = dict(edits or {})
        self.flag = threading.Event()

    def cancel(self) -> None:
        self.flag.set()

    @Slot()
    def run(self) -> None:
        out = TrainingOutcome(self.concept_id)
        started = time.perf_counter()
        lib = None
        try:
            lib = Library(self.root)
            lib.options.update(self.options)
            self.started.emit(device_text(*lib.load_captioner()))
            result = lib.teach_captioner([self.concept_id], self.task, {"steps": self.steps}, edits=self.edits,
                                         progress=self.progress.emit, cancel=self.flag)
            out.ok = True
            out.steps = result[self.concept_id].step if self.concept_id in result else self.steps
            out.photos_to_recaption = concept_photo_count(lib, self.concept_id)
        except Exception as exc:
            if is_cancelled(exc):
                out.cancelled = True
            else:
                if is_expected(exc):   # out of memory, a full disk: the message says it all, no traceback
                    log.error("training failed: %s", exc)
                else:
                    log.exception("training failed")
                out.error = user_message(exc)
        finally:
            if lib is not None:
                lib.close()
            out.seconds = time.perf_counter() - started
            app = QCoreApplication.instance()
            if app is not None:
                self.moveToThread(app.thread())  # deleted on the GUI thread later
            self.finished.emit(out)


class TrainingRunner(SingleJobThread):
    """Owns a training thread: one job at a time."""

    started = Signal(str)
    progress = Signal(object)

    def __init__(self, library_root: Path, options: dict[str, Any], parent: QObject | None = None):
        super().__init__("myvlm-training", shutdown_ms=60_000, parent=parent)
        self.root, self.options = Path(library_root), options
        self.concept_id: int | None = None
        self.last: Any = None  # the latest TrainingProgress

    def start(self, concept_id: int, steps: int, edits: dict[int, list[str]] | None = None) -> bool:
        if self.running:
            return False
        job = TrainingJob(self.root, self.options, concept_id, steps, edits)
        job.started.connect(self.started)
        job.progress.connect(self._on_progress)
        self.concept_id, self.last = concept_id, None
        return self.start_job(job)

    @Slot(object)
    def _on_progress(self, p: Any) -> None:
        self.last = p
        self.progress.emit(p)


# -- the loss plot ------------------------------------------------------------------------------------------------

def make_loss_plot(parent: QWidget | None = None) -> QWidget:
    """QtCharts when the bindings have it, else a small painted plot; both have `add(step, loss)` / `clear()`."""
    try:
        return ChartLossPlot(parent)
    except Exception:  # noqa: BLE001 - QtCharts missing or broken: the painted plot does the job
        return PaintedLossPlot(parent)


class PaintedLossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("lossPlot")
        self.points: list[tuple[int, float]] = []
        self.steps = DEFAULT_STEPS
        self.setMinimumHeight(150)

    def clear(self, steps: int = DEFAULT_STEPS) -> None:
        self.points, self.steps = [], max(1, steps)
        self.update()

    def add(self, step: int, loss: float) -> None:
        self.points.append((step, float(loss)))
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(420, 170)

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        pal = self.palette()
        r = self.rect().adjusted(40, 10, -10, -22)
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        grid = QColor(pal.color(QPalette.ColorRole.Mid))
        grid.setAlpha(80)
        p.setPen(QPen(grid, 1))
        for i in range(5):
            y = r.top() + i * r.height() / 4
            p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
        if self.points:
            lo = min(v for _, v in self.points)
            hi = max(v for _, v in self.points)
            if hi - lo < 1e-6:
                hi, lo = hi + 0.5, lo - 0.5
            path = QPainterPath()
            for i, (s, v) in enumerate(self.points):
                pt = QPointF(r.left() + r.width() * s / self.steps, r.bottom() - r.height() * (v - lo) / (hi - lo))
                path.moveTo(pt) if i == 0 else path.lineTo(pt)
            p.setPen(QPen(pal.color(QPalette.ColorRole.Highlight), 2))
            p.drawPath(path)
            p.setPen(pal.color(QPalette.ColorRole.Text))
            p.drawText(2, r.top() + 10, f"{hi:.2f}")
            p.drawText(2, r.bottom(), f"{lo:.2f}")
        p.setPen(pal.color(QPalette.ColorRole.Text))
        p.drawText(r.left(), self.height() - 6, "step 0")
        p.drawText(r.right() - 60, self.height() - 6, f"step {self.steps}")
        p.end()


class ChartLossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        from PySide6.QtCharts import QChart, QChartView, QLineSeries, QValueAxis

        super().__init__(parent)
        self.setObjectName("lossPlot")
        self.chart = QChart()
        self.chart.legend().hide()
        self.chart.setMargins(QMargins(4, 4, 4, 4))
        self.chart.setBackgroundRoundness(4)
        self.series = QLineSeries()
        self.series.setName("loss")
        self.chart.addSeries(self.series)
        self.ax = QValueAxis()
        self.ax.setTitleText("step")
        self.ax.setLabelFormat("%d")
        self.ay = QValueAxis()
        self.ay.setTitleText("loss")
        self.ay.setLabelFormat("%.2f")
        self.chart.addAxis(self.ax, Qt.AlignmentFlag.AlignBottom)
        self.chart.addAxis(self.ay, Qt.AlignmentFlag.AlignLeft)
        self.series.attachAxis(self.ax)
        self.series.attachAxis(self.ay)
        self.view = QChartView(self.chart)
        self.view.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.view.setMinimumHeight(170)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view)
        self.points: list[tuple[int, float]] = []
        self._apply_palette()
        self.clear()

    def _apply_palette(self) -> None:
        pal = self.palette()
        self.chart.setBackgroundBrush(pal.color(QPalette.ColorRole.Base))
        text = pal.color(QPalette.ColorRole.Text)
        for axis in (self.ax, self.ay):
            axis.setLabelsColor(text)
            axis.setTitleBrush(text)
            grid = QColor(pal.color(QPalette.ColorRole.Mid))
            grid.setAlpha(90)
            axis.setGridLineColor(grid)
        self.series.setPen(QPen(pal.color(QPalette.ColorRole.Highlight), 2))

    def clear(self, steps: int = DEFAULT_STEPS) -> None:
        self.points = []
        self.series.clear()
        self.ax.setRange(0, max(1, steps))
        self.ay.setRange(0, 1)

    def add(self, step: int, loss: float) -> None:
        loss = float(loss)
        self.points.append((step, loss))
        self.series.append(step, loss)
        values = [v for _, v in self.points]
        lo, hi = min(values), max(values)
        pad = max(0.05, (hi - lo) * 0.1)
        self.ay.setRange(max(0.0, lo - pad), hi + pad)


# -- the dialog ---------------------------------------------------------------------------------------------------

@dataclass
class _RowWidgets:
    row: TargetRow
    editor: QPlainTextEdit
    original: list[str] = field(default_factory=list)


def fmt_seconds(s: float) -> str:
    s = max(0, round(s))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class TeachDialog(QDialog):
    """Review the training targets, then teach, watching the loss fall. Closing it while training keeps the
    training going (the status bar shows it; the dialog opens again from there)."""

    trained = Signal(object)  # TrainingOutcome (ok)

    PREPARING, REVIEW, TRAINING = range(3)

    def __init__(self, runner: TrainingRunner, engine: EngineThread, loader: ThumbnailLoader, *, title: str,
                 concept_id: int | None = None, person_id: int | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("teachDialog")
        self.setWindowTitle(f"Teach the Captioner: {title}")
        self.runner, self.engine, self.loader = runner, engine, loader
        self.concept_id, self.person_id = concept_id, person_id
        self.prepared: Prepared | None = None
        self.rows: list[_RowWidgets] = []
        self.thumbs: dict[ThumbKey, QLabel] = {}
        self.outcome: TrainingOutcome | None = None
        self.error: str | None = None
        self.resize(700, 620)
        loader.ready.connect(self._on_thumb)

        lay = QVBoxLayout(self)
        self.intro = QLabel()
        self.intro.setWordWrap(True)
        lay.addWidget(self.intro)
        self.pages = QStackedWidget()
        lay.addWidget(self.pages, 1)

        # 0: preparing
        prep = QWidget()
        pl = QVBoxLayout(prep)
        pl.addStretch(1)
        self.prep_label = QLabel("Writing training captions with the original model…")
        self.prep_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.prep_label.setWordWrap(True)
        pl.addWidget(self.prep_label)
        busy = QProgressBar()
        busy.setRange(0, 0)
        busy.setMaximumWidth(260)
        self.prep_busy = busy
        pl.addWidget(busy, 0, Qt.AlignmentFlag.AlignHCenter)
        pl.addStretch(2)
        self.pages.addWidget(prep)

        # 1: review
        review = QWidget()
        rl = QVBoxLayout(review)
        rl.setContentsMargins(0, 0, 0, 0)
        self.review_area = QScrollArea()
        self.review_area.setWidgetResizable(True)
        self.review_body = QWidget()
        self.review_layout = QVBoxLayout(self.review_body)
        self.review_layout.setSpacing(10)
        self.review_area.setWidget(self.review_body)
        rl.addWidget(self.review_area, 1)
        opts = QHBoxLayout()
        opts.addWidget(QLabel("Training steps"))
        self.steps = QSpinBox()
        self.steps.setObjectName("stepsSpin")
        self.steps.setRange(1, 2000)
        self.steps.setValue(DEFAULT_STEPS)
        self.steps.setToolTip("100 is the paper's setting; a few minutes on a GPU")
        opts.addWidget(self.steps)
        opts.addStretch(1)
        self.device_label = QLabel()
        self.device_label.setObjectName("deviceLabel")
        opts.addWidget(self.device_label)
        rl.addLayout(opts)
        self.pages.addWidget(review)

        # 2: training
        train = QWidget()
        tl = QVBoxLayout(train)
        self.progress = QProgressBar()
        self.progress.setObjectName("trainingProgress")
        tl.addWidget(self.progress)
        self.status = QLabel()
        self.status.setObjectName("trainingStatus")
        self.status.setWordWrap(True)
        tl.addWidget(self.status)
        self.plot = make_loss_plot()
        tl.addWidget(self.plot, 1)
        self.train_device = QLabel()
        self.train_device.setObjectName("deviceLabel")
        tl.addWidget(self.train_device)
        self.pages.addWidget(train)

        buttons = QHBoxLayout()
        self.regenerate_button = QPushButton("Write Again")
        self.regenerate_button.setToolTip("Generate the training captions again (your edits are replaced)")
        self.regenerate_button.clicked.connect(lambda: self.prepare(regenerate=True))
        buttons.addWidget(self.regenerate_button)
        buttons.addStretch(1)
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        self.cancel_button = QPushButton("Stop Training")
        self.cancel_button.setObjectName("stopTraining")
        self.cancel_button.clicked.connect(self.cancel_training)
        self.start_button = QPushButton("Start Teaching")
        self.start_button.setObjectName("startTeaching")
        self.start_button.setDefault(True)
        self.start_button.clicked.connect(self.start_training)
        for b in (self.close_button, self.cancel_button, self.start_button):
            buttons.addWidget(b)
        lay.addLayout(buttons)

        runner.started.connect(self._on_started)
        runner.progress.connect(self._on_progress)
        runner.finished.connect(self._on_finished)
        self._set_page(self.PREPARING)

    # -- pages ------------------------------------------------------------------------------------------------------

    @property
    def page(self) -> int:
        return self.pages.currentIndex()

    def _set_page(self, page: int) -> None:
        self.pages.setCurrentIndex(page)
        training = self.runner.running and self.runner.concept_id == self.concept_id
        self.start_button.setVisible(page == self.REVIEW)
        self.regenerate_button.setVisible(page == self.REVIEW)
        self.cancel_button.setVisible(page == self.TRAINING and training)
        self.close_button.setText("Close" if page != self.REVIEW else "Cancel")
        name = self.prepared.name if self.prepared else "this"
        ident = self.prepared.identifier if self.prepared else ""
        if page == self.PREPARING:
            self.intro.setText("The original model describes each training photo; where it names the subject "
                               f"(“a dog”, “a man”), the name {name} goes in instead.")
        elif page == self.REVIEW:
            self.intro.setText(f"<b>Check what {name} will be learnt from.</b> One caption per line; each should "
                               f"name <b>{ident}</b> and say what the photo shows. Fix anything wrong, then start. "
                               "Photos marked ⚠ had no phrase that could be turned into the name.")
        else:
            self.intro.setText(f"Teaching the captioner to say <b>{name}</b>. Only a small vector for {name} "
                               "learns; the model itself never changes, so photos without them are captioned "
                               "exactly as before.")

    # -- 1. prepare -------------------------------------------------------------------------------------------------

    def prepare(self, regenerate: bool = False) -> None:
        self._set_page(self.PREPARING)
        self.prep_busy.show()
        self.prep_label.setText("Writing training captions with the original model… (the first time, the model "
                                "loads: this can take a while)")
        cid, pid = self.concept_id, self.person_id
        self.engine.call(lambda lib: prepare_teaching(lib, cid, pid, regenerate), self._on_prepared,
                         self._on_prepare_failed, label="prepare targets")

    def _on_prepared(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.concept_id = prepared.concept_id
        self.device_label.setText(f"Runs on the {prepared.device} · model {prepared.vlm}")
        self.train_device.setText(f"Running on the {prepared.device}")
        self._fill_review(prepared.rows)
        if self.runner.running and self.runner.concept_id == self.concept_id:
            self._set_page(self.TRAINING)
        else:
            self._set_page(self.REVIEW)

    def _on_prepare_failed(self, exc: BaseException) -> None:
        self.error = user_message(exc)
        self.prep_busy.hide()
        self.prep_label.setText(f"<b>The training captions could not be written.</b><br>{_html(self.error)}")

    def _fill_review(self, rows: list[TargetRow]) -> None:
        for r in self.rows:
            r.editor.parentWidget().setParent(None)
        self.rows, self.thumbs = [], {}
        while self.review_layout.count():
            item = self.review_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for row in rows:
            box = QFrame()
            box.setObjectName("targetRow")
            box.setFrameShape(QFrame.Shape.StyledPanel)
            h = QHBoxLayout(box)
            thumb = QLabel()
            thumb.setFixedSize(96, 96)
            thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
            if row.photo is not None:
                key = thumb_key(row.photo)
                self.thumbs[key] = thumb
                self._set_thumb(key)
            h.addWidget(thumb)
            v = QVBoxLayout()
            label = QLabel(("⚠ " if row.needs_review else "") + row.label)
            label.setToolTip("No phrase named the subject: check these captions" if row.needs_review else "")
            v.addWidget(label)
            editor = QPlainTextEdit("\n".join(row.captions))
            editor.setObjectName("targetEditor")
            editor.setFixedHeight(70)
            v.addWidget(editor)
            h.addLayout(v, 1)
            self.review_layout.addWidget(box)
            self.rows.append(_RowWidgets(row, editor, list(row.captions)))
        self.review_layout.addStretch(1)

    def _set_thumb(self, key: ThumbKey) -> None:
        label = self.thumbs.get(key)
        if label is None:
            return
        pm = self.loader.pixmap(key)
        if pm is None:
            self.loader.request(key)
        else:
            label.setPixmap(pm.scaled(96, 96, Qt.AspectRatioMode.KeepAspectRatio,
                                      Qt.TransformationMode.SmoothTransformation))

    def _on_thumb(self, key: ThumbKey) -> None:
        self._set_thumb(key)

    def edits(self) -> dict[int, list[str]]:
        """Examples whose captions the user changed: example id -> captions (one per non-empty line)."""
        out = {}
        for r in self.rows:
            lines = [x.strip() for x in r.editor.toPlainText().splitlines() if x.strip()]
            if lines != r.original:
                out[r.row.example_id] = lines
        return out

    # -- 2. train ---------------------------------------------------------------------------------------------------

    def start_training(self) -> None:
        if self.prepared is None:
            return
        edits = self.edits()
        empty = [r.row.label for r in self.rows if r.row.example_id in edits and not edits[r.row.example_id]]
        if empty:
            from .widgets import show_error

            show_error(self, "A Photo Has No Caption", f"Give {empty[0]} at least one caption (or restore it).")
            return
        steps = self.steps.value()
        if not self.runner.start(self.prepared.concept_id, steps, edits):
            from .widgets import show_error

            show_error(self, "Already Teaching", "Another training is running. Wait for it to end, or stop it.")
            return
        self.outcome = None
        self.plot.clear(steps)
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.status.setText("Starting… (loading the model and the photos)")
        self._set_page(self.TRAINING)

    def cancel_training(self) -> None:
        if self.runner.running and self.runner.concept_id == self.concept_id:
            self.runner.cancel()
            self.status.setText("Stopping at the end of this step…")
            self.cancel_button.setEnabled(False)

    @Slot(str)
    def _on_started(self, device: str) -> None:
        if self.runner.concept_id == self.concept_id:
            self.train_device.setText(f"Running on the {device}")

    @Slot(object)
    def _on_progress(self, p: Any) -> None:
        if self.runner.concept_id != self.concept_id:
            return
        self.progress.setRange(0, p.steps)
        self.progress.setValue(p.step)
        self.plot.add(p.step, p.loss)
        self.status.setText(f"Step {p.step} of {p.steps} · loss {p.loss:.3f} · {fmt_seconds(p.elapsed_s)} so far, "
                            f"about {fmt_seconds(p.eta_s)} left")

    @Slot(object)
    def _on_finished(self, outcome: TrainingOutcome) -> None:
        if outcome.concept_id != self.concept_id:
            return
        self.outcome = outcome
        self.cancel_button.setEnabled(True)
        name = self.prepared.name if self.prepared else "it"
        if outcome.ok:
            self.progress.setValue(self.progress.maximum())
            self.status.setText(f"<b>Done.</b> The captioner now knows {name} ({outcome.steps} steps in "
                                f"{fmt_seconds(outcome.seconds)}). The {outcome.photos_to_recaption} photos "
                                f"{name} is in are being captioned again in the background.")
            self.trained.emit(outcome)
        elif outcome.cancelled:
            self.status.setText("Stopped. Teaching again continues from the last checkpoint.")
        else:
            self.status.setText(f"<b>Training failed.</b> {_html(outcome.error or '')}")
        self._set_page(self.TRAINING)

    def closeEvent(self, event: Any) -> None:
        for sig, slot in ((self.runner.started, self._on_started), (self.runner.progress, self._on_progress),
                          (self.runner.finished, self._on_finished)):
            if not (self.runner.running and self.runner.concept_id == self.concept_id):
                try:
                    sig.disconnect(slot)
                except (RuntimeError, TypeError):
                    pass
        super().closeEvent(event)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
