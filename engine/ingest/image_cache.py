"""Thumbnails and previews on disk, by content hash: one decode per photo gives the ~256 px thumbnail (kept forever)
and the ~1440 px preview (a size-capped cache, rebuilt from the original on demand).

Its own module (not the thumbnail stage's) because the stages, the concept heads, the personaliser and the app's
views all read these files; the thumbnail stage is only the one that writes them in bulk.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image

from engine.ingest.images import apply_user_rotation, decode, probe
from engine.storage.library_folder import LibraryPaths

log = logging.getLogger(__name__)

THUMB_SIZE = 256
PREVIEW_SIZE = 1440
THUMB_QUALITY = 85
PREVIEW_QUALITY = 90


def _shard(root: Path, content_hash: str) -> Path:
    return root / content_hash[:2] / f"{content_hash}.jpg"


def _atomic_save(img: Image.Image, target: Path, quality: int) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written JPEG under the real name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, "JPEG", quality=quality)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@dataclass
class ThumbnailResult:
    width: int
    height: int
    orientation: int
    format: str
    date_taken: str
    date_source: str


class ImageCache:
    """Thumbnails and previews of one library, by content hash."""

    def __init__(self, paths: LibraryPaths):
        self.paths = paths

    def thumb_path(self, content_hash: str) -> Path:
        return _shard(self.paths.thumbs, content_hash)

    def preview_path(self, content_hash: str) -> Path:
        return _shard(self.paths.previews, content_hash)

    def make(self, source: str, content_hash: str) -> ThumbnailResult:
        decoded = decode(source, max_side=PREVIEW_SIZE)
        preview = decoded.image
        thumb = preview.copy()
        thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BICUBIC, reducing_gap=2.0)
        _atomic_save(preview, self.preview_path(content_hash), PREVIEW_QUALITY)
        _atomic_save(thumb, self.thumb_path(content_hash), THUMB_QUALITY)
        return _result(source, decoded.width, decoded.height, decoded.orientation, decoded.format, decoded.date_taken)

    def preview(self, source: str, content_hash: str, user_rotation: int = 0) -> Image.Image:
        """The preview, rebuilt from the original when the cache evicted it; with the user's rotation applied."""
        path = self.preview_path(content_hash)
        try:
            img = Image.open(path)
            img.load()
            os.utime(path)  # LRU: recently used previews are evicted last
        except (FileNotFoundError, OSError):
            self.make(source, content_hash)
            img = Image.open(path)
            img.load()
        return apply_user_rotation(img.convert("RGB"), user_rotation)

    def thumbnail(self, content_hash: str, user_rotation: int = 0) -> Image.Image | None:
        try:
            img = Image.open(self.thumb_path(content_hash))
            img.load()
        except (FileNotFoundError, OSError):
            return None
        return apply_user_rotation(img.convert("RGB"), user_rotation)

    def enforce_preview_cap(self, max_bytes: int) -> int:
        """Evict least recently used previews until the cache fits; returns bytes freed."""
        entries = []
        total = 0
        for shard in self.paths.previews.iterdir() if self.paths.previews.exists() else []:
            if not shard.is_dir():
                continue
            for f in shard.iterdir():
                try:
                    st = f.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, f))
                total += st.st_size
        freed = 0
        if total <= max_bytes:
            return 0
        for _mtime, size, f in sorted(entries):
            if total - freed <= max_bytes:
                break
            try:
                f.unlink()
                freed += size
            except FileNotFoundError:
                pass
        log.info("preview cache: evicted %.1f MB to stay under %.1f MB", freed / 1e6, max_bytes / 1e6)
        return freed


def _file_date(path: str) -> str:
    try:
        return datetime.fromtimestamp(os.stat(path).st_mtime).isoformat(timespec="seconds")
    except OSError:
        return datetime.now().isoformat(timespec="seconds")


def probe_photo(path: str) -> ThumbnailResult:
    """Size, orientation and date taken from the header only (no decode)."""
    return _result(path, *probe(path))


def _result(path: str, width: int, height: int, orientation: int, fmt: str, taken: datetime | None) -> ThumbnailResult:
    """Date taken from EXIF, else the file's modification time (local time, like EXIF)."""
    if taken is not None:
        return ThumbnailResult(width, height, orientation, fmt, taken.isoformat(timespec="seconds"), "exif")
    return ThumbnailResult(width, height, orientation, fmt, _file_date(path), "file")
