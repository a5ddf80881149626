"""Following the catalog: the window shows what the catalog holds, and stays current while indexing runs in another
process, a `myvlm` command changes the library, or the window's own threads commit.

Every read asks the engine's change feed (`Library.changes_since`) which photos changed since the last read and
re-reads only those rows (the grid repaints only them; the info pane reloads only when its photo changed); every
photo is read again only when the feed cannot say (`photo_ids` None: the first read, too many changes, the feed
trimmed) or a folder went on- or offline. The status and the sidebar's people and things are read each time (a few
aggregate queries). Reads run on the window's reader thread: for a big library they take longer than a frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer

from engine import read_models
from engine.library import OK, Library, Photo
from myvlm_desktop.folders import FolderCounts
from myvlm_desktop.sidebar import CONCEPT, FOLDER, LIBRARY, PEOPLE, PERSON, SEARCH, THINGS
from myvlm_desktop.state import PHOTOS
from myvlm_desktop.tasks import user_message

if TYPE_CHECKING:
    from myvlm_desktop.main_window import MainWindow

log = logging.getLogger(__name__)

LIVE_REFRESH_MS = 1500  # while indexing, show newly ready photos this often
CATALOG_POLL_MS = 1000  # ask this often whether another process (e.g. `myvlm index`) changed the catalog


def folder_signature(status: dict[str, Any]) -> tuple[tuple[Any, Any], ...]:
    """Which folders are watched and whether each is online: a change re-reads every photo (a folder going offline
    changes its photos' rows without a change to the photos)."""
    return tuple((f.get("id"), f.get("status")) for f in status.get("folders", ()))


@dataclass
class CatalogUpdate:
    """One read: the feed's token, the status and sidebar rows, and either every photo (`full`) or the rows of the
    photos that changed (None: gone from the catalog)."""

    token: int
    view: read_models.CatalogView
    full: bool
    rows: dict[int, Photo | None] = field(default_factory=dict)


def read_update(lib: Library, token: int | None, folders: tuple[tuple[Any, Any], ...] | None) -> CatalogUpdate:
    """What changed since `token` (the feed's token is taken first, so nothing committed during the read is
    missed next time)."""
    changes = lib.changes_since(token)
    view = read_models.catalog_view(lib, photos=False)
    if changes.photo_ids is None or folders != folder_signature(view.status):
        view.photos = lib.photos(order="date")
        return CatalogUpdate(changes.token, view, True)
    rows = read_models.photos_by_id(lib, changes.photo_ids) if changes.photo_ids else {}
    return CatalogUpdate(changes.token, view, False, rows)


def count_photo(counts: dict[int | None, FolderCounts], photo: Photo | None, sign: int) -> None:
    """Add (+1) or take away (-1) a photo's share of its folder's and the library's counts."""
    if photo is None:
        return
    c = counts.setdefault(photo.folder_id, FolderCounts())
    if photo.status == OK:
        c.photos += sign
        counts[None].photos += sign
    if photo.last_error is not None:
        c.problems += sign
        counts[None].problems += sign


class CatalogFollower:
    """`refresh()` reads on the reader thread, `refresh_now()` on the GUI thread; a poll asks every second whether
    another connection committed (SQLite's data_version: no table read) and refreshes then; while indexing, a timer
    refreshes every `LIVE_REFRESH_MS` or more (ten times the last read's cost, so a big library is not re-read
    back to back)."""

    def __init__(self, window: MainWindow):
        self.w = window
        self.token: int | None = None
        self.counts: dict[int | None, FolderCounts] = {None: FolderCounts()}  # photos and problems per folder
        self.reading = False
        self._read_again = False
        self._read_started = 0.0
        self.refresh_ms: list[float] = []  # how long applying each read took (diagnostics, bench)
        self.live = QTimer(window)
        self.live.setSingleShot(True)
        self.live_interval_ms = LIVE_REFRESH_MS
        self.live.timeout.connect(self.refresh)
        self._version = window.library.catalog_version()
        self.poll_timer = QTimer(window)
        self.poll_timer.setInterval(CATALOG_POLL_MS)
        self.poll_timer.timeout.connect(self.poll)

    def stop(self) -> None:
        self.live.stop()
        self.poll_timer.stop()

    def refresh_soon(self, first: bool) -> None:
        """Indexing made progress: show it soon (the very first photos at once), not on every event."""
        if not self.live.isActive():
            self.live.start(300 if first else self.live_interval_ms)

    def _folders(self) -> tuple[tuple[Any, Any], ...] | None:
        return folder_signature(self.w._status) if self.token is not None else None

    def refresh(self) -> None:
        """Re-read what changed, on the reader thread, and update the views in place when the answer comes."""
        if self.w._closing:
            return
        self.live.stop()
        if self.reading:
            self._read_again = True
            return
        self.reading = True
        self._read_started = time.perf_counter()
        token, folders = self.token, self._folders()
        self.w.reader_thread.call(lambda lib: read_update(lib, token, folders), self._on_read, self._on_read_failed,
                                  label="read the catalog")

    def refresh_now(self) -> None:
        """The same, read on the GUI thread at once (start-up, a folder just added)."""
        if self.w._closing:
            return
        self.live.stop()
        self._read_started = time.perf_counter()
        self.apply(read_update(self.w.library, self.token, self._folders()))

    def reload_pages(self) -> None:
        """After the library changed: the People or Things page on show is rebuilt, a search on show run again."""
        kind = self.w.state.kind
        if kind == PEOPLE:
            self.w.people.load_page()
        elif kind == THINGS:
            self.w.things.load_page()
        elif kind == SEARCH:
            self.w.search.refresh()

    def after_change(self, message: str = "") -> Any:
        """A callback for a finished change: say so, and show it everywhere."""
        def done(_result: Any = None) -> None:
            if self.w._closing:
                return
            if message:
                self.w.statusBar().showMessage(message, 6000)
            self.refresh()
            self.reload_pages()
        return done

    def poll(self) -> None:
        """Follow the catalog: when another process (a `myvlm index` in a terminal, the indexing process) or one
        of the window's own threads committed, read what changed and update what is shown in place (the grid keeps
        its scroll and selection; pages rebuild only when their content changed)."""
        if self.w._closing:
            return
        version = self.w.library.catalog_version()
        if version == self._version:
            return
        self._version = version
        if self.live.isActive():
            return  # a re-read is already on its way (indexing in the app)
        self.refresh()
        self.reload_pages()

    def _on_read(self, update: CatalogUpdate) -> None:
        self.reading = False
        if self.w._closing:
            return
        self.apply(update)
        if self._read_again:
            self._read_again = False
            self.refresh()

    def _on_read_failed(self, exc: BaseException) -> None:
        self.reading = False
        log.warning("reading the catalog failed: %s", user_message(exc))
        if self._read_again and not self.w._closing:
            self._read_again = False
            self.refresh()

    def _patch(self, rows: dict[int, Photo | None]) -> tuple[bool, dict[int | None, FolderCounts]]:
        """Put the changed rows in place and adjust the folder counts by them; re-sort only when a photo came, went
        or moved in date order. Returns (re-sorted, counts)."""
        w = self.w
        by_id, resort, counts = w._by_id, False, self.counts
        for pid, photo in rows.items():
            old = by_id.get(pid)
            count_photo(counts, old, -1)
            count_photo(counts, photo, +1)
            if photo is None:
                resort |= by_id.pop(pid, None) is not None
                continue
            resort |= old is None or read_models.date_order_key(old) != read_models.date_order_key(photo)
            by_id[pid] = photo
        if resort:
            w._all_photos = sorted(by_id.values(), key=read_models.date_order_key)
        elif rows:
            w._all_photos = [by_id[p.id] for p in w._all_photos]
        return resort, counts

    def replace_rows(self, changed: set[int]) -> bool:
        """The changed photos' grid rows, updated where they are, if each stays in the view as it was (a person's or
        a thing's photos may change with their faces: those views are read again). True: done."""
        w = self.w
        kind, key = w.state.view
        fresh = [w._by_id[i] for i in changed if i in w._by_id]
        if kind in (PERSON, CONCEPT) or len(fresh) != len(changed):
            return False
        for p in fresh:
            shown = w.grid_model.row_of(p.id) is not None
            wanted = shown if kind == SEARCH else (p.status == OK and (kind != FOLDER or p.folder_id == key)
                                                   and (kind != PHOTOS or p.id in key))
            if wanted != shown:
                return False
        w.grid_model.replace_rows(fresh)
        return True

    def apply(self, update: CatalogUpdate) -> None:
        w = self.w
        started = time.perf_counter()
        self.token = update.token
        data = update.view
        status = w._status = data.status
        resort = True
        if update.full:
            w._all_photos = data.photos
            w._by_id = {p.id: p for p in w._all_photos}
            self.counts = {None: FolderCounts()}
            for p in w._all_photos:
                count_photo(self.counts, p, +1)
        else:
            resort, _ = self._patch(update.rows)
        w.folder_model.set_status(status, {k: replace(c) for k, c in self.counts.items()})
        kind, key = w.state.view
        if kind == FOLDER and w.folder_model.row_of(key) is None:
            w.state.view = (LIBRARY, None)  # that folder is no longer watched
        w.sidebar.set_people(data.named, data.unnamed_groups)
        w.sidebar.set_things(data.things)
        w._names = [p["name"] for p in data.named] + [t["name"] for t in data.things]
        w.search_names.setStringList(w._names)
        w.sidebar.select(*w.sidebar_target())
        w.refresh_view_content(None if update.full else set(update.rows), in_place=not resort)
        w.problems.set_errors(status["errors"])
        w.update_problems_button()
        w.update_summary()
        w.show_center()
        apply_ms = (time.perf_counter() - started) * 1000
        self.refresh_ms.append(apply_ms)
        # Big libraries: refresh less often while indexing, so reading the catalog stays a small share of the time.
        total_ms = (time.perf_counter() - self._read_started) * 1000
        self.live_interval_ms = max(LIVE_REFRESH_MS, int(10 * total_ms))
