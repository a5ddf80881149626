"""The full view (Space or Enter in the grid): one photo over the whole window with its named face boxes and
caption; arrows step through the grid's photos, Escape goes back to the grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import read_models
from engine.library import Photo
from myvlm_desktop.detail import FaceBox

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow


class FullViewFlow:
    def __init__(self, window: MainWindow):
        self.w = window
        self.detail_was_visible = True

    @property
    def showing(self) -> bool:
        return self.w.center.currentWidget() is self.w.full_view

    def open(self) -> None:
        w = self.w
        photo = w.current_photo()
        if photo is None:
            if w.grid_model.rowCount() == 0:
                return
            w.select_photo(w.grid_model.photo(0).id)
            photo = w.current_photo()
        if photo is None:
            return
        self.detail_was_visible = w.detail.isVisible()
        w.sidebar.hide()
        w.detail.hide()
        w.center.setCurrentWidget(w.full_view)
        self.show(photo)
        w.full_view.setFocus()

    def show(self, photo: Photo) -> None:
        w = self.w
        info = read_models.photo_info(w.library, photo.id)
        faces = [FaceBox(f["id"], f["x"], f["y"], f["w"], f["h"], f.get("person_id"), f.get("person_name"),
                         f.get("state", "")) for f in info.faces if f.get("state") != "ignored"]
        row = w.grid_model.row_of(photo.id)
        position = f"{(row or 0) + 1:,} of {w.grid_model.rowCount():,}"
        w.full_view.show_photo(photo, faces, info.caption, position)

    def close(self) -> None:
        w = self.w
        if not self.showing:
            return
        w.sidebar.show()
        w.detail.setVisible(self.detail_was_visible)
        w.show_center()
        if self.showing:
            w.center.setCurrentWidget(w.grid_page)
        w.grid_view.setFocus()
        w.on_selection()

    def toggle(self) -> None:
        if self.showing:
            self.close()
        else:
            self.open()

    def step(self, step: int) -> None:
        w = self.w
        photo = w.full_view.photo
        if photo is None:
            return
        row = w.grid_model.row_of(photo.id)
        if row is None:
            return
        new = max(0, min(w.grid_model.rowCount() - 1, row + step))
        if new != row:
            p = w.grid_model.photo(new)
            w.select_photo(p.id)
            self.show(p)
