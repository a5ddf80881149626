"""What the user does with people: name a group or a face, say "not them", hide, merge, rename, forget, move faces;
and the People page's data. Each change runs on the window's "actions" engine thread and is shown everywhere when
it is done."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine import read_models
from myvlm_desktop.people_page import PeopleData, load_people
from myvlm_desktop.sidebar import PEOPLE, PERSON

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow


class PeopleActions:
    def __init__(self, window: MainWindow):
        self.w = window
        self._data: PeopleData | None = None

    # -- the People page -----------------------------------------------------------------------------------------

    def load_page(self) -> None:
        w = self.w
        hidden = w.people_page.show_hidden.isChecked()
        w.actions_thread.call(lambda lib: load_people(lib, include_hidden=hidden), self._on_loaded,
                              w.failed("People could not be read"), label="people page")

    def _on_loaded(self, data: PeopleData) -> None:
        if data == self._data and self.w.people_page.data is not None:
            return  # unchanged: keep the cards as they are (a name being typed, the scroll position)
        self._data = data
        self.w.people_page.set_data(data)

    # -- changes ---------------------------------------------------------------------------------------------------

    def call(self, fn: Any, message: str, after: Any = None) -> None:
        """Run a change on the actions thread; when done, say `message`, show it everywhere, then `after(result)`."""
        w = self.w
        done = w.follow.after_change(message)

        def finished(result: Any) -> None:
            done(result)
            if after is not None:
                after(result)
            w.reload_detail()

        w.actions_thread.call(fn, finished, w.failed("That did not work"), label=message)

    def person_names(self) -> list[str]:
        return read_models.person_names(self.w.library)

    def name_face(self, face_id: int, group_id: int | None) -> None:
        """"Who is this?" on one face: a name already used adds the face to that person."""
        name = self.w.prompts.ask_name(self.w, "Who Is This?", "Type a name (a name you already use adds this face "
                                       "to that person).", self.person_names())
        if not name:
            return
        if group_id:
            self.name_group(group_id, name, [face_id])  # the one face the user looked at
        else:
            self.call(lambda lib: lib.name_face(face_id, name), f"Named {name}")

    def name_group(self, group_id: int, name: str, face_ids: list[int] | None = None) -> None:
        """`face_ids`: the faces the user saw; naming confirms those (None: the group as it stands)."""
        name = " ".join(name.split())
        if not name:
            return
        w = self.w

        def after(person_id: int) -> None:
            if w.state.view == (PERSON, group_id) and person_id != group_id:
                w.navigate(PERSON, person_id)  # merged into someone else: show them
            if w.auto_index:   # their photos' captions use the name now (engine/domain/personalize/instant.py)
                w.indexing_flow.start_indexing(scan=False, stages=["captions"])

        shown = list(face_ids) if face_ids else None
        self.call(lambda lib: lib.name_person(group_id, name, shown), f"Named {name}", after)

    def reject_suggestion(self, group_id: int, person_id: int) -> None:
        self.call(lambda lib: lib.reject_suggestion(group_id, person_id), "Noted: not them")

    def hide_person(self, person_id: int, hidden: bool = True) -> None:
        def after(_r: Any) -> None:
            if hidden and self.w.state.view == (PERSON, person_id):
                self.w.navigate(PEOPLE, None)
        self.call(lambda lib: lib.hide_person(person_id, hidden), "Hidden" if hidden else "Shown again", after)

    def hide_small_groups(self, max_faces: int) -> None:
        self.call(lambda lib: len(lib.hide_small_groups(max_faces)),
                  f"Hid every unnamed group of up to {max_faces} faces")

    def merge_people(self, source_id: int, target_id: int) -> None:
        self.call(lambda lib: lib.merge_people(target_id, [source_id]), "Merged")

    def rename_person(self, person_id: int) -> None:
        current = read_models.person_name(self.w.library, person_id) or ""
        name = self.w.prompts.ask_name(self.w, "Rename", "A new name (a name you already use merges the two).",
                                       self.person_names(), current)
        if name and name != current:
            self.name_group(person_id, name)

    def forget_person(self, person_id: int) -> None:
        name = read_models.person_name(self.w.library, person_id) or "this group"
        if not self.w.prompts.confirm(self.w, "Forget This Person",
                                      f"Forget {name}? Their name and face data are deleted from the library; the "
                                      "photos stay. This cannot be undone."):
            return
        self.call(lambda lib: lib.forget_person(person_id), f"Forgot {name}",
                  lambda _r: self.w.navigate(PEOPLE, None))

    def reject_faces(self, face_ids: list[int], person_id: int) -> None:
        ids = list(face_ids)
        self.call(lambda lib: lib.reject_faces(ids, person_id), "Noted: not them")

    def move_faces(self, face_ids: list[int], person_id: int) -> None:
        self.call(lambda lib: lib.move_faces(face_ids, person_id), "Moved")

    def confirm_face(self, face_id: int, name: str) -> None:
        self.call(lambda lib: lib.confirm_face(face_id), f"Confirmed {name}")

    def ignore_face(self, face_id: int) -> None:
        self.call(lambda lib: lib.ignore_face(face_id), "The face is ignored")
