"""What the user does with one photo, from the info pane or the grid (`detail.DetailActions`): save a caption, ask
a question, "Where is Bella?", rotate, the menu of a face box. Model calls run on the "models" engine thread,
changes on the "actions" thread."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import QMenu

from engine.errors import Cancelled
from engine.library import Photo
from myvlm_desktop.detail import FaceBox
from myvlm_desktop.sidebar import PERSON

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow


class PhotoActions:
    def __init__(self, window: MainWindow):
        self.w = window
        self.asking = False
        self.locating: threading.Event | None = None   # the stop Event of a running "Where is …?"

    # the info pane also asks for these two, which the window does
    def open_full_view(self) -> None:
        self.w.full.open()

    def navigate(self, kind: str, key: Any) -> None:
        self.w.navigate(kind, key)

    def save_caption(self, photo_id: int, text: str) -> None:
        w = self.w
        w.actions_thread.call(lambda lib: lib.save_caption(photo_id, text),
                              lambda _r: (w.reload_detail(), w.search.refresh(),
                                          w.statusBar().showMessage("Caption saved", 4000)),
                              w.failed("The caption was not saved"), label="save caption")

    def ask_question(self, photo_id: int, question: str) -> None:
        w = self.w
        if self.asking:
            return
        self.asking = True
        w.detail.set_asking(True, "Thinking… (the first question loads the model: this can take a while)")

        def done(_result: dict[str, Any]) -> None:
            self.asking = False
            w.detail.set_asking(False, "")
            w.detail.ask_edit.clear()
            w.reload_detail()
            w.search.refresh()

        def failed(exc: BaseException) -> None:
            self.asking = False
            w.detail.set_asking(False, "")
            w.failed("No Answer")(exc)

        w.models_thread.call(lambda lib: lib.ask(photo_id, question), done, failed, label="ask")

    def locate_concept(self, photo_id: int, concept_id: int, name: str) -> None:
        """ "Where is Bella?": MiniGPT-v2's box, asked on the models thread; Stop ends it at the next word."""
        w = self.w
        if self.locating is not None:
            return
        stop = self.locating = threading.Event()
        w.detail.set_locating(True, f"Looking for {name}… (the first time loads the model: this can take a while)")

        def done(result: dict[str, Any]) -> None:
            self.locating = None
            if "cannot" in result:   # not an error: this library's captioner has no boxes
                w.detail.set_locating(False, result["cannot"] + ".")
                return
            w.detail.set_locating(False, "")
            w.detail.show_location(photo_id, name, result)

        def failed(exc: BaseException) -> None:
            self.locating = None
            if isinstance(exc, Cancelled):
                w.detail.set_locating(False, "Stopped.")
            else:
                w.detail.set_locating(False, "")
                w.failed("Not Found")(exc)

        w.models_thread.call(lambda lib: lib.locate(photo_id, concept_id, cancel=stop), done, failed,
                             label=f"locate {name}")

    def stop_locating(self) -> None:
        if self.locating is not None:
            self.locating.set()
            self.w.detail.where_status.setText("Stopping…")

    def rotate_current(self, degrees: int) -> None:
        w = self.w
        photo = w.current_photo()
        if photo is None:
            return
        w.actions_thread.call(lambda lib: lib.rotate(photo.id, degrees),
                              lambda _r: (w.refresh(), w.on_selection(),
                                          w.indexing_flow.start_indexing(scan=False)),
                              w.failed("The photo was not turned"), label="rotate")

    def face_menu(self, face: FaceBox, photo: Photo, global_pos: Any) -> None:
        w, people = self.w, self.w.people
        menu = QMenu(w)
        if face.person_id and face.name:
            menu.addAction(f"Show {face.name}", lambda: w.navigate(PERSON, face.person_id))
            menu.addAction(f"Not {face.name}", lambda: people.reject_faces([face.face_id], face.person_id))
            if face.state == "suggested":
                menu.addAction(f"Yes, {face.name}", lambda: people.confirm_face(face.face_id, face.name))
        else:
            menu.addAction("Who Is This?…", lambda: people.name_face(face.face_id, face.person_id))
            if face.person_id:
                menu.addAction("Show This Group", lambda: w.navigate(PERSON, face.person_id))
        menu.addSeparator()
        menu.addAction("Not a Face to Track", lambda: people.ignore_face(face.face_id))
        menu.exec(global_pos)
