"""A library is one folder holding everything the app derives from the user's albums.

The albums themselves are never written to; all derived data (catalog, thumbnails, previews, models, concept
files, logs) lives here, so a library can be backed up or moved as one folder.
"""

from __future__ import annotations

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
    """`$MYVLM_LIBRARY`, else the platform's user data folder (e.g. ~/.local/share/myvlm-desktop/library)."""
    env = os.environ.get(ENV_LIBRARY)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_SLUG, appauthor=False)) / "library"


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


def setup_logging(paths: LibraryPaths, level: int = logging.INFO) -> None:
    """Attach a rotating log file inside the library (idempotent per library)."""
    target = paths.log_file.resolve()
    if target in _log_handlers:
        return
    handler = logging.handlers.RotatingFileHandler(target, maxBytes=5 * 1024 * 1024, backupCount=3, encoding="utf-8")
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
