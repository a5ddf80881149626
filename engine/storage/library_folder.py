"""A library is one folder holding everything the app derives from the user's albums.

The albums themselves are never written to; all derived data (catalog, thumbnails, previews, models, concept
files, logs) lives here, so a library can be backed up or moved as one folder.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "MyVLM Desktop"
APP_SLUG = "myvlm-desktop"
ENV_LIBRARY = "MYVLM_LIBRARY"

log = logging.getLogger(__name__)


def default_library_path() -> Path:
    """`$MYVLM_LIBRARY`, else where `myvlm move-library` last moved the default library (the pointer file, see
    `library_pointer_file`), else the platform's user data folder (e.g. ~/.local/share/myvlm-desktop/library)."""
    env = os.environ.get(ENV_LIBRARY)
    if env:
        return Path(env).expanduser()
    pointed = _read_pointer().get("library")
    if isinstance(pointed, str) and pointed:
        return Path(pointed)
    return platform_library_path()


def platform_library_path() -> Path:
    return Path(platformdirs.user_data_dir(APP_SLUG, appauthor=False)) / "library"


def library_pointer_file() -> Path:
    """The per-user file that says where the default library is once it has been moved (JSON:
    {"library": PATH, "moved": {OLD: NEW, ...}}), beside the app's other per-user settings."""
    return Path(platformdirs.user_config_dir(APP_SLUG, appauthor=False)) / "library.json"


def _read_pointer() -> dict:
    try:
        data = json.loads(library_pointer_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_library_move(old: Path, new: Path, *, make_default: bool) -> Path:
    """Remember that the library at `old` now lives at `new` (and make it the default library when asked).
    Written to a temporary file and renamed, so a crash never leaves half a pointer. Returns the pointer file."""
    data = _read_pointer()
    moved = data.get("moved") if isinstance(data.get("moved"), dict) else {}
    moved = {k: v for k, v in moved.items() if k != str(new)}   # moving back undoes the earlier move
    moved[str(old)] = str(new)
    data["moved"] = moved
    if make_default:
        data["library"] = str(new)
    target = library_pointer_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def follow_moves(path: Path) -> Path:
    """Where a library remembered by its old path (e.g. the desktop app's last-used library) lives now."""
    moved = _read_pointer().get("moved")
    if not isinstance(moved, dict):
        return path
    seen = set()
    current = str(path)
    while current in moved and current not in seen:
        seen.add(current)
        current = str(moved[current])
    return Path(current)


def default_pictures_path() -> Path:
    return Path(platformdirs.user_pictures_dir())


@dataclass(frozen=True)
class LibraryPaths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "library.db"

    @property
    def thumbs(self) -> Path:
        return self.root / "thumbs"

    @property
    def previews(self) -> Path:
        return self.root / "previews"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def concepts(self) -> Path:
        return self.root / "concepts"

    @property
    def faces(self) -> Path:
        return self.root / "faces"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def log_file(self) -> Path:
        return self.logs / "myvlm.log"

    def ensure(self) -> None:
        for d in (self.root, self.thumbs, self.previews, self.faces, self.models, self.concepts, self.logs):
            d.mkdir(parents=True, exist_ok=True)


_log_handlers: dict[Path, logging.Handler] = {}


class _LibraryLogHandler(logging.handlers.RotatingFileHandler):
    """The library's log file. A line that cannot be written because the disk is full is dropped quietly: the
    error that matters reaches the user by itself, and a traceback about the log file would only bury it."""

    def handleError(self, record: logging.LogRecord) -> None:
        import errno
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return
        super().handleError(record)


def setup_logging(paths: LibraryPaths, level: int = logging.INFO) -> None:
    """Attach a rotating log file inside the library (idempotent per library)."""
    target = paths.log_file.resolve()
    if target in _log_handlers:
        return
    handler = _LibraryLogHandler(target, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger("engine")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    _log_handlers[target] = handler


def close_logging(paths: LibraryPaths) -> None:
    handler = _log_handlers.pop(paths.log_file.resolve(), None)
    if handler is not None:
        logging.getLogger("engine").removeHandler(handler)
        handler.close()
