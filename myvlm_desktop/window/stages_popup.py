"""What indexing is doing, in words: each stage's label, the status bar's text after a run, and the popup that shows
every stage's progress (and why a stage cannot run here)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QProgressBar, QWidget

from engine.library import ProgressEvent
from myvlm_desktop.indexing import SCAN

STAGE_LABELS = {SCAN: "Looking for photos", "thumbnail": "Making thumbnails", "faces": "Finding faces",
                "clip": "Understanding pictures", "concepts": "Recognising people and things",
                "captions": "Writing captions"}
STAGE_ORDER = [SCAN, "thumbnail", "faces", "clip", "concepts", "captions"]


def stage_label(stage: str) -> str:
    return STAGE_LABELS.get(stage, stage.replace("_", " ").capitalize())


def count(n: int, word: str, plural: str | None = None) -> str:
    """"1 photo", "1,204 photos"."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {plural or word + 's'}"


def finished_text(unavailable: dict[str, str]) -> str:
    """The status bar after a run: "Up to date" only when every stage could run (its tooltip says why not)."""
    if not unavailable:
        return "Up to date"
    return f"Indexed · {count(len(unavailable), 'step')} can't run here"


class StagesPopup(QFrame):
    """Per-stage progress: what each stage has done in this run, and why a stage cannot run here."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, Qt.WindowType.Popup)
        self.setObjectName("stagesPopup")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(12, 10, 12, 10)
        self.grid.setHorizontalSpacing(10)
        self.rows: dict[str, tuple[QLabel, QProgressBar, QLabel]] = {}

    def set_events(self, events: dict[str, ProgressEvent], status: dict[str, Any] | None) -> None:
        stages = (status or {}).get("stages", {})
        names = [s for s in STAGE_ORDER if s in events or s in stages or s == SCAN]
        names += [s for s in list(events) + list(stages) if s not in names]
        for i, name in enumerate(names):
            if name not in self.rows:
                label, bar, text = QLabel(stage_label(name)), QProgressBar(), QLabel()
                bar.setFixedWidth(140)
                bar.setMaximumHeight(12)
                bar.setTextVisible(False)
                text.setWordWrap(True)
                text.setMaximumWidth(360)
                self.rows[name] = (label, bar, text)
                self.grid.addWidget(label, i, 0)
                self.grid.addWidget(bar, i, 1)
                self.grid.addWidget(text, i, 2)
            label, bar, text = self.rows[name]
            ev = events.get(name)
            st = stages.get(name, {})
            if ev is not None and ev.state == "unavailable":
                bar.setRange(0, 1)
                bar.setValue(0)
                text.setText(f"not available here: {ev.current}")
            elif ev is not None and ev.total > 0:
                bar.setRange(0, ev.total)
                bar.setValue(min(ev.done, ev.total))
                state = {"finished": "done", "paused": "paused", "cancelled": "stopped"}.get(ev.state, "")
                text.setText(f"{ev.done:,} of {ev.total:,}" + (f" · {state}" if state else "")
                             + (f" · {count(ev.errors, 'problem')}" if ev.errors else ""))
            elif st:
                done, pending = int(st.get("done", 0)), int(st.get("pending", 0))
                total = done + pending + int(st.get("error", 0))
                bar.setRange(0, max(1, total))
                bar.setValue(done)
                reason = st.get("unavailable")
                text.setText(f"not available here: {reason}" if reason else
                             (f"{done:,} of {total:,} done" if pending else "up to date"))
            else:
                bar.setRange(0, 1)
                bar.setValue(1 if name == SCAN and ev is not None and ev.state == "finished" else 0)
                text.setText("waiting" if ev is None else f"{ev.done:,} files")
        self.adjustSize()

    def texts(self) -> dict[str, str]:
        return {name: row[2].text() for name, row in self.rows.items()}
