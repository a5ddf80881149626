"""Icons and the stylesheet, loaded by path from the app's resources folder (optional: the app works without it,
falling back to the style's own icons).

Where that folder is depends on how the app was installed (see `resources_dir`): a wheel carries it inside the
package as `myvlm_desktop/_resources/` (setup.py copies the repository's `resources/` there), a PyInstaller build
next to its executables, and a source checkout or an editable install has the repository's `resources/`.
"""

from __future__ import annotations

import logging
import sys
from functools import cache
from pathlib import Path

from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication, QStyle

log = logging.getLogger(__name__)

APP_ICON = "myvlm-desktop.svg"
STYLESHEET = "style.qss"


def resource_dirs() -> list[Path]:
    """Where the resources may be, first found wins: a PyInstaller bundle's, the installed package's own copy,
    then the repository's `resources/` beside the package (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    out = []
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        out.append(Path(frozen) / "resources")
    out += [here / "_resources", here.parent / "resources"]
    return out


def resources_dir() -> Path | None:
    """The resources folder this copy of the app uses, or None when it has none."""
    for d in resource_dirs():
        if (d / APP_ICON).is_file():
            return d
    return None


def resource_path(name: str) -> Path | None:
    d = resources_dir()
    if d is None:
        return None
    p = d / name
    return p if p.is_file() else None


@cache
def app_icon() -> QIcon:
    """The app icon: our SVG, else the theme's icon by name, else the style's generic computer icon."""
    p = resource_path(APP_ICON)
    if p is not None:
        icon = QIcon(str(p))
        if QGuiApplication.instance() is not None:   # loading a bitmap needs the application object
            for png in sorted(p.parent.glob("hicolor/*/apps/myvlm-desktop.png")):
                icon.addFile(str(png))  # exact bitmaps for small sizes, and an icon even without Qt's SVG plugin
        if not icon.isNull():
            return icon
    icon = QIcon.fromTheme("myvlm-desktop")
    if not icon.isNull():
        return icon
    return QApplication.style().standardIcon(QStyle.StandardPixmap.SP_ComputerIcon)


def stylesheet() -> str:
    p = resource_path(STYLESHEET)
    if p is None:
        return ""
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        log.warning("cannot read stylesheet %s: %s", p, exc)
        return ""


def themed_icon(names: str | tuple[str, ...], fallback: QStyle.StandardPixmap) -> QIcon:
    """A freedesktop theme icon when the desktop has one, else a standard icon of the current style."""
    for name in (names,) if isinstance(names, str) else names:
        icon = QIcon.fromTheme(name)
        if not icon.isNull():
            return icon
    return QApplication.style().standardIcon(fallback)


@cache
def icon(name: str, fallback_theme: str | tuple[str, ...] = (),
         fallback: QStyle.StandardPixmap = QStyle.StandardPixmap.SP_FileIcon) -> QIcon:
    """One of our icons (`resources/icons/NAME.svg`), else the desktop theme's, else the style's."""
    p = resource_path(f"icons/{name}.svg")
    if p is not None:
        i = QIcon(str(p))
        if not i.isNull():
            return i
    return themed_icon(fallback_theme or name, fallback)
