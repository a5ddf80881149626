"""Thumbnails for the grid, read off the GUI thread.

The thumbnail stage keeps a ~256 px JPEG per content hash in the library. Reading one is a few milliseconds, but
thousands of them are not, so `ThumbnailLoader` reads them on a small private thread pool: QImageReader decodes
the JPEG already scaled to the cell size, the result comes back to the GUI thread as a QImage (QPixmaps belong to
the GUI thread) and is kept in a size-bounded LRU cache of pixmaps. Requests are served newest first, so after a
fast scroll the photos now on screen load before the ones scrolled past.

HiDPI: the loader's target is in device pixels (cell size × the screen's ratio). When that is bigger than the
stored thumbnail, the ~1440 px preview is read instead (scaled while decoding, so no slower), if the preview cache
still holds it. `FaceCropLoader` serves the faces stage's crops the same way.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QImage, QImageReader, QPixmap, QTransform

from engine.library import THUMB_SIZE, ImageCache, LibraryPaths, crop_path

ThumbKey = tuple[str, int]  # (content hash, user rotation in degrees clockwise)

MAX_PENDING = 600  # requests beyond this (long since scrolled past) are dropped; they are asked again when seen
DEFAULT_CACHE_BYTES = 192 * 1024 * 1024


def read_thumbnail(path: str, rotation: int, target: int) -> QImage:
    """The cached thumbnail scaled to fit `target` device pixels, rotated by the user's rotation; null on failure.

    Runs on worker threads: QImage and QImageReader are safe there (QPixmap is not).
    """
    reader = QImageReader(path)
    reader.setAutoTransform(False)  # the thumbnail is stored upright already
    size = reader.size()
    if size.isValid() and (size.width() > target or size.height() > target):
        reader.setScaledSize(size.scaled(QSize(target, target), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return image
    if rotation % 360:
        image = image.transformed(QTransform().rotate(rotation % 360), Qt.TransformationMode.SmoothTransformation)
    return image


class _Bridge(QObject):
    """Carries results from pool threads to the GUI thread (queued connection)."""

    loaded = Signal(object, int, QImage)  # key, generation, image (null when the file could not be read)


class _LoadTask(QRunnable):
    def __init__(self, loader: ThumbnailLoader):
        super().__init__()
        self._loader = loader
        self.setAutoDelete(True)

    def run(self) -> None:
        request = self._loader._take()
        if request is None:
            return
        key, paths, generation, target = request
        image = QImage()
        for path in paths:
            try:
                image = read_thumbnail(path, key[1], target)
            except Exception:  # noqa: BLE001 - a bad file is a failed thumbnail, never a crash
                image = QImage()
            if not image.isNull():
                break
        self._loader._bridge.loaded.emit(key, generation, image)


class ThumbnailLoader(QObject):
    """Asynchronous, cached thumbnails by (content hash, rotation). Use from the GUI thread only.

    `pixmap(key)` answers from the cache; `request(key)` queues a read; `ready(key)` says it arrived (or failed:
    then `failed(key)` is true until `forget_failures()`).
    """

    ready = Signal(object)

    def __init__(self, paths: LibraryPaths, target_px: int = 160, *, threads: int = 2,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, parent: QObject | None = None):
        super().__init__(parent)
        self._images = ImageCache(paths)
        self._target = max(16, int(target_px))
        self._cache: OrderedDict[ThumbKey, QPixmap] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._failed: set[ThumbKey] = set()
        self._requested: set[ThumbKey] = set()  # queued or being read
        self._pending: OrderedDict[ThumbKey, tuple[ThumbKey, tuple[str, ...], int, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self._closed = False
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max(1, threads))
        self._pool.setExpiryTimeout(5000)
        self._bridge = _Bridge(self)
        self._bridge.loaded.connect(self._on_loaded, Qt.ConnectionType.QueuedConnection)
        self.loads = 0  # thumbnails read so far (for tests and diagnostics)

    # -- queries ----------------------------------------------------------------------------------------------------

    @property
    def target_px(self) -> int:
        return self._target

    def thumb_path(self, content_hash: str) -> Path:
        return self._images.thumb_path(content_hash)

    def paths_for(self, key: ThumbKey) -> tuple[str, ...]:
        """Files to try, best first: the preview when the cell is bigger than a thumbnail (HiDPI, big zoom)."""
        thumb = str(self.thumb_path(key[0]))
        if self._target > THUMB_SIZE:
            return (str(self._images.preview_path(key[0])), thumb)
        return (thumb,)

    def pixmap(self, key: ThumbKey) -> QPixmap | None:
        pm = self._cache.get(key)
        if pm is not None:
            self._cache.move_to_end(key)
        return pm

    def failed(self, key: ThumbKey) -> bool:
        return key in self._failed

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    # -- requests ---------------------------------------------------------------------------------------------------

    def request(self, key: ThumbKey) -> None:
        """Queue a read unless it is cached, queued, or failed already."""
        if self._closed or key in self._cache or key in self._failed:
            return
        with self._lock:
            if key in self._requested:
                if key in self._pending:
                    self._pending.move_to_end(key)  # still wanted: serve it sooner
                return
            self._requested.add(key)
            self._pending[key] = (key, self.paths_for(key), self._generation, self._target)
            while len(self._pending) > MAX_PENDING:
                old, _ = self._pending.popitem(last=False)
                self._requested.discard(old)
        self._pool.start(_LoadTask(self))

    def _take(self) -> tuple[ThumbKey, tuple[str, ...], int, int] | None:
        """Newest request first (pool threads)."""
        with self._lock:
            if not self._pending:
                return None
            _, request = self._pending.popitem(last=True)
            return request

    @Slot(object, int, QImage)
    def _on_loaded(self, key: ThumbKey, generation: int, image: QImage) -> None:
        with self._lock:
            if generation != self._generation:
                return  # read for an older size; a new request is on its way
            self._requested.discard(key)
        if self._closed:
            return
        self.loads += 1
        if image.isNull():
            self._failed.add(key)
        else:
            self._store(key, QPixmap.fromImage(image))
        self.ready.emit(key)

    def _store(self, key: ThumbKey, pm: QPixmap) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= _bytes(old)
        self._cache[key] = pm
        self._cache_bytes += _bytes(pm)
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= _bytes(evicted)

    # -- control ----------------------------------------------------------------------------------------------------

    def set_target_px(self, px: int) -> None:
        """New cell size: drop what was read for the old one (stale reads in flight are ignored)."""
        px = max(16, int(px))
        if px == self._target:
            return
        self._target = px
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._pending.clear()
            self._requested.clear()
        self._cache.clear()
        self._cache_bytes = 0
        self._failed.clear()

    def forget(self, keys: set[ThumbKey]) -> None:
        """Drop cached entries (a thumbnail was re-made) and failures for these keys."""
        for key in keys:
            pm = self._cache.pop(key, None)
            if pm is not None:
                self._cache_bytes -= _bytes(pm)
            self._failed.discard(key)

    def forget_failures(self) -> None:
        """Try failed thumbnails again (after indexing made them)."""
        self._failed.clear()

    def shutdown(self, wait_ms: int = -1) -> bool:
        """Stop: drop queued reads and wait for the ones in flight. Returns False when the wait timed out."""
        self._closed = True
        with self._lock:
            self._generation += 1
            self._pending.clear()
            self._requested.clear()
        self._pool.clear()
        return self._pool.waitForDone(wait_ms)


def _bytes(pm: QPixmap) -> int:
    return max(1, pm.width() * pm.height() * 4)


class FaceCropLoader(ThumbnailLoader):
    """The faces stage's crops (160 px, one per face id), read and cached like thumbnails. Key: (str(face id), 0)."""

    def __init__(self, paths: LibraryPaths, target_px: int = 96, *, parent: QObject | None = None):
        super().__init__(paths, target_px, threads=1, cache_bytes=32 * 1024 * 1024, parent=parent)
        self._faces_dir = str(paths.faces)

    def paths_for(self, key: ThumbKey) -> tuple[str, ...]:
        return (crop_path(self._faces_dir, int(key[0])),)

    @staticmethod
    def key(face_id: int) -> ThumbKey:
        return (str(int(face_id)), 0)
