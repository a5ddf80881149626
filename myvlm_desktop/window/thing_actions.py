"""What the user does with things (a pet, an object): name one from photos, retrain, rename, forget; the Things
page's data; and teaching the captioner a person or a thing (the Teach dialogs and the training in the status bar).
Model work runs on the window's "models" engine thread; while it runs, the app state's busy flags say so."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt

from engine import read_models
from myvlm_desktop.sidebar import CONCEPT, THINGS
from myvlm_desktop.things_page import ThingsData, load_things
from myvlm_desktop.training import TeachDialog, TrainingOutcome, fmt_seconds
from myvlm_desktop.widgets import show_error

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow


class ThingActions:
    def __init__(self, window: MainWindow):
        self.w = window
        self._data: ThingsData | None = None
        self.teach_dialogs: dict[int, TeachDialog] = {}

    # -- the Things page -------------------------------------------------------------------------------------------

    def load_page(self) -> None:
        self.w.models_thread.call(load_things, self._on_loaded, self.w.failed("Things could not be read"),
                                  label="things page")

    def _on_loaded(self, data: ThingsData) -> None:
        if data == self._data and self.w.things_page.data is not None:
            return  # unchanged: keep the page as it is
        self._data = data
        self.w.things_page.set_data(data)

    # -- changes ---------------------------------------------------------------------------------------------------

    def name_thing(self, photo_ids: list[int] | None = None) -> None:
        w = self.w
        ids = list(photo_ids) if photo_ids else w.selected_photo_ids()
        if not ids:
            show_error(w, "Select Photos First", "Select a few photos that show the thing (4 are plenty; Ctrl+click "
                       "to pick several), then choose Name This Thing… again.")
            return
        name = w.prompts.name_thing(w, len(ids), read_models.thing_names(w.library))
        if not name:
            return
        busy = f"learn:{name}"
        w.state.set_busy(busy, f"Learning {name}…")

        def done(cid: int) -> None:
            w.state.set_busy(busy, None)
            w.follow.after_change(f"Learnt {name}")(cid)
            w.navigate(CONCEPT, cid)

        def failed(exc: BaseException) -> None:
            w.state.set_busy(busy, None)
            w.refresh()
            w.failed(f"{name} Was Not Learnt")(exc)

        w.models_thread.call(lambda lib: lib.teach_thing(name, ids), done, failed, label=f"learn {name}")

    def retrain_concept(self, concept_id: int) -> None:
        w = self.w
        busy = f"retrain:{concept_id}"
        w.state.set_busy(busy, "Retraining…")

        def done(_c: Any) -> None:
            w.state.set_busy(busy, None)
            w.follow.after_change("Retrained")(None)

        def failed(exc: BaseException) -> None:
            w.state.set_busy(busy, None)
            w.failed("Not Retrained")(exc)

        w.models_thread.call(lambda lib: lib.train_concept_head(concept_id), done, failed, label="retrain")

    def rename_concept(self, concept_id: int) -> None:
        current = self.w.library.concept(concept_id).name
        name = self.w.prompts.ask_name(self.w, "Rename", "A new name:", [], current)
        if name and name != current:
            self.w.people.call(lambda lib: lib.rename_concept(concept_id, name), f"Renamed {name}")

    def remove_concept(self, concept_id: int) -> None:
        name = self.w.library.concept(concept_id).name
        if not self.w.prompts.confirm(self.w, "Forget This Thing", f"Forget {name}? What the app learnt about it is "
                                      "deleted; your photos stay."):
            return
        self.w.people.call(lambda lib: lib.remove_concept(concept_id), f"Forgot {name}",
                           lambda _r: self.w.navigate(THINGS, None))

    # -- teaching the captioner ------------------------------------------------------------------------------------

    def teach(self, concept_id: int | None = None, person_id: int | None = None) -> TeachDialog:
        w = self.w
        if person_id is not None and concept_id is None:
            concept_id = read_models.person_concept_id(w.library, person_id)
        if concept_id is not None and concept_id in self.teach_dialogs:
            dlg = self.teach_dialogs[concept_id]
            dlg.show()
            dlg.raise_()
            return dlg
        if concept_id is not None:
            title = w.library.concept(concept_id).name
        else:
            title = read_models.person_name(w.library, person_id) or "this person"
        dlg = TeachDialog(w.trainer, w.models_thread, w.loader, title=title, concept_id=concept_id,
                          person_id=person_id, parent=w)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        dlg.finished.connect(lambda _r, d=dlg: self._closed(d))
        if concept_id is not None:
            self.teach_dialogs[concept_id] = dlg
        dlg.show()
        dlg.prepare()
        return dlg

    def _closed(self, dlg: TeachDialog) -> None:
        trainer = self.w.trainer
        if not (trainer.running and trainer.concept_id == dlg.concept_id):
            if dlg.concept_id is not None:
                self.teach_dialogs.pop(dlg.concept_id, None)
            dlg.deleteLater()

    def show_training(self) -> None:
        cid = self.w.trainer.concept_id
        if cid is not None and cid in self.teach_dialogs:
            self.teach_dialogs[cid].show()
            self.teach_dialogs[cid].raise_()

    def on_training_progress(self, p: Any) -> None:
        w = self.w
        cid = w.trainer.concept_id
        name = ""
        if cid is not None:
            try:
                name = w.library.concept(cid).name
            except (LookupError, ValueError):
                pass
        w.training_button.setText(f"Teaching {name} · {p.step * 100 // max(1, p.steps)}% · "
                                  f"{fmt_seconds(p.eta_s)} left")
        w.training_button.show()

    def on_training_finished(self, outcome: TrainingOutcome) -> None:
        w = self.w
        w.training_button.hide()
        if outcome.concept_id is not None:
            # the dialog got its answer already; a closed one is not kept
            dlg = self.teach_dialogs.get(outcome.concept_id)
            if dlg is not None and not dlg.isVisible():
                self.teach_dialogs.pop(outcome.concept_id, None)
                dlg.deleteLater()
        if w._closing:
            return
        if outcome.ok:
            w.statusBar().showMessage("Captioner taught: re-captioning the photos it is in", 8000)
            w.indexing_flow.start_indexing(scan=False, stages=["captions"])
        w.refresh()

    def close_dialogs(self) -> None:
        for dlg in list(self.teach_dialogs.values()):
            dlg.close()
