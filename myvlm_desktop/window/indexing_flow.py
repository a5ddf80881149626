"""Indexing and watching, as the window shows them: start (a run asked for during another goes next), pause,
stop; the status bar's stage, progress and buttons; the stages popup; indexing again when a model arrives; and
the folder watcher (its news comes from its own threads through a Qt signal). The app state's `indexing`,
`indexing_paused` and `cancelling` follow the index runner, and the actions follow the state."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QStyle

from engine.library import Library, ProgressEvent
from myvlm_desktop.indexing import SCAN, IndexResult
from myvlm_desktop.resources import themed_icon
from myvlm_desktop.tasks import user_message
from myvlm_desktop.widgets import show_error

from .stages_popup import STAGE_ORDER, count, finished_text, stage_label

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow

log = logging.getLogger(__name__)


class _WatchBridge(QObject):
    updated = Signal(object)  # engine.ingest.watch.WatchUpdate, from the watcher's thread


class IndexingFlow:
    def __init__(self, window: MainWindow):
        self.w = window
        self.index_again: dict[str, Any] | None = None
        self.indexed_once = False
        self.watcher: Any = None
        self.last_event: ProgressEvent | None = None
        indexer = window.indexer
        indexer.started.connect(self.on_started)
        indexer.progress.connect(self.on_progress)
        indexer.finished.connect(self.on_finished)
        indexer.pausedChanged.connect(self.on_paused_changed)
        self._bridge = _WatchBridge(window)
        self._bridge.updated.connect(self.on_watch_update)
        window.state.events.indexing_paused.connect(self._show_paused)

    def sync_state(self) -> None:
        """The app state follows the runner (the actions follow the state)."""
        state, indexer = self.w.state, self.w.indexer
        state.indexing = indexer.running
        state.cancelling = indexer.running and indexer.cancelling
        state.indexing_paused = indexer.running and indexer.paused

    def _show_paused(self, paused: bool) -> None:
        a = self.w.pause_action
        a.setText("&Resume Indexing" if paused else "&Pause Indexing")
        a.setIcon(themed_icon("media-playback-start" if paused else "media-playback-pause",
                              QStyle.StandardPixmap.SP_MediaPlay if paused else QStyle.StandardPixmap.SP_MediaPause))

    def start_indexing(self, scan: bool = True, stages: list[str] | None = None) -> None:
        w = self.w
        if w._closing:
            return
        stages = stages or w._stages
        if w.indexer.running:
            # e.g. a folder was added meanwhile: go again when this run ends (a scan covers everything)
            if self.index_again is None or scan:
                self.index_again = {"scan": scan or bool(self.index_again and self.index_again["scan"]),
                                    "stages": None if not stages else stages}
            return
        self.index_again = None
        w.indexer.start(scan=scan, stages=stages)

    def cancel_indexing(self) -> None:
        w = self.w
        if not w.indexer.running:
            return
        self.index_again = None
        w.indexer.cancel()
        w.stage_label.setText("Stopping after the photos in progress…")
        self.sync_state()

    def toggle_pause(self) -> None:
        indexer = self.w.indexer
        if not indexer.running:
            return
        if indexer.paused:
            indexer.resume()
        else:
            indexer.pause()

    def on_paused_changed(self, paused: bool) -> None:
        self.sync_state()
        if paused:
            label = self.w.stage_label
            label.setText(label.text().split(" · paused")[0] + " · paused")

    def on_started(self) -> None:
        w = self.w
        w.stage_label.setText("Starting…")
        w.progress_bar.setRange(0, 0)
        w.progress_bar.show()
        w.cancel_button.show()
        w.pause_button.show()
        self.sync_state()

    def on_progress(self, ev: ProgressEvent) -> None:
        w = self.w
        if w._closing:
            return
        self.last_event = ev
        if w.stages_popup.isVisible():
            w.stages_popup.set_events(w.indexer.stage_events, w._status)
        if w.indexer.cancelling or ev.state == "unavailable":
            return
        label = stage_label(ev.stage)
        if ev.total > 0:
            w.progress_bar.setRange(0, ev.total)
            w.progress_bar.setValue(min(ev.done, ev.total))
            text = f"{label} · {ev.done:,} of {ev.total:,}"
        else:
            w.progress_bar.setRange(0, 0)
            text = f"{label}…"
        if ev.errors:
            text += f" · {count(ev.errors, 'problem')}"
        if ev.state == "paused" or w.indexer.paused:
            text += " · paused"
        w.stage_label.setText(text)
        w.stage_label.setToolTip((ev.current + "\n\n" if ev.current else "") + "Click for every stage")
        if ev.stage != SCAN:
            w.follow.refresh_soon(first=w.grid_model.rowCount() == 0)

    def on_finished(self, result: IndexResult) -> None:
        w = self.w
        if w._closing:
            return
        w.progress_bar.hide()
        w.cancel_button.hide()
        w.pause_button.hide()
        w.loader.forget_failures()
        w.face_loader.forget_failures()
        w.refresh()
        if result.error:
            w.stage_label.setText("Indexing failed")
            w.stage_label.setToolTip(result.error)
            show_error(w, "Indexing Stopped", f"Indexing stopped with a problem: {result.error}. What was done is "
                       "kept; Index Now tries again.")
        elif result.cancelled:
            w.stage_label.setText("Stopped · the rest is done next time")
            w.stage_label.setToolTip("")
        else:
            w.stage_label.setText(finished_text(result.unavailable))
            tip = f"Indexed in {result.seconds:.1f} s"
            if result.unavailable:
                tip += "\n\nNot available here:\n" + "\n".join(f"{stage_label(s)}: {why}"
                                                               for s, why in result.unavailable.items())
            w.stage_label.setToolTip(tip + "\n\nClick for every stage")
        self.sync_state()
        w.follow.reload_pages()
        w.reload_detail()
        if not self.indexed_once:
            self.indexed_once = True
            if w._watch_enabled:
                self.start_watching()
        if self.index_again is not None:
            again, self.index_again = self.index_again, None
            QTimer.singleShot(0, lambda: self.start_indexing(scan=again["scan"], stages=again["stages"]))

    def show_stages(self) -> None:
        w = self.w
        w.stages_popup.set_events(w.indexer.stage_events, w._status)
        pos = w.stage_label.mapToGlobal(w.stage_label.rect().topLeft())
        w.stages_popup.move(max(0, pos.x() + w.stage_label.width() - w.stages_popup.width()),
                            max(0, pos.y() - w.stages_popup.height() - 4))
        w.stages_popup.show()

    # -- models arriving -------------------------------------------------------------------------------------------

    def stages_waiting_for_models(self) -> dict[str, str]:
        """The stages that could not run here, stage -> why (their weights are missing, as a rule): what the last
        catalog read says, and what the current or last indexing run reported."""
        w = self.w
        waiting: dict[str, str] = {}
        for name, st in (w._status.get("stages") or {}).items():
            if isinstance(st, dict) and st.get("unavailable"):
                waiting[name] = str(st["unavailable"])
        last = w.indexer.last_result
        if last is not None:
            waiting.update(last.unavailable)
        for name, ev in w.indexer.stage_events.items():
            if ev.state == "unavailable":
                waiting[name] = ev.current
        if w._stages is not None:  # a window opened with `stages=` runs only those
            waiting = {name: why for name, why in waiting.items() if name in w._stages}
        return waiting

    def on_models_changed(self, rows: list | None = None) -> None:
        """Settings ▸ Models downloaded, imported or removed a model. The stages that were waiting for weights are
        asked again (off the GUI thread) whether they can run; if one can, the pipeline runs again the way Index Now
        runs it, without the rescan (the files did not change): mode "missing" does the waiting work and nothing
        that is done already. A run in progress is followed by that one."""
        w = self.w
        if w._closing:
            return
        waiting = self.stages_waiting_for_models()
        if not waiting:
            return

        def check(lib: Library) -> dict[str, str | None]:
            return {name: st.get("unavailable") for name, st in lib.status()["stages"].items()}

        def checked(now: dict[str, str | None]) -> None:
            if w._closing:
                return
            order = dict.fromkeys(STAGE_ORDER + sorted(waiting))  # pipeline order, then any other stage
            ready = [name for name in order if name in waiting and name in now and not now[name]]
            if not ready:
                return
            log.info("GUI: models changed; %s can run now: indexing again", ", ".join(ready))
            w.statusBar().showMessage(f"{', '.join(stage_label(s) for s in ready)}: the model is here, "
                                      "indexing again", 8000)
            self.start_indexing(scan=False)

        def failed(exc: BaseException) -> None:
            log.warning("cannot check the stages after a model change: %s", user_message(exc))

        w.reader_thread.call(check, checked, failed, label="check the stages' models")

    # -- watching --------------------------------------------------------------------------------------------------

    def start_watching(self) -> None:
        w = self.w
        if self.watcher is not None or w._closing or not w.library.folders():
            return
        try:
            self.watcher = w.library.watch_folders(self._bridge.updated.emit)
        except Exception as exc:  # noqa: BLE001 - watching is a convenience: Index Now still works
            log.warning("cannot watch the folders: %s", exc)
            self.watcher = None

    def on_watch_update(self, update: Any) -> None:
        if self.w._closing:
            return
        scan = update.scan
        if scan.touched or scan.offline or update.check:
            self.w.refresh()
            if scan.touched:
                self.start_indexing(scan=False)

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop(timeout=10)
            self.watcher = None
