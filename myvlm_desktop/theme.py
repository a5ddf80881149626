"""Light and dark palettes (Fusion style), or the platform's own look.

The stylesheet takes its colours from the palette, so it follows whichever is active.
"""

from __future__ import annotations

from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

SYSTEM, LIGHT, DARK = "system", "light", "dark"

_original: tuple[str, QPalette] | None = None


def _dark() -> QPalette:
    p = QPalette()
    c = QColor
    roles = QPalette.ColorRole
    p.setColor(roles.Window, c(37, 38, 41))
    p.setColor(roles.WindowText, c(230, 230, 232))
    p.setColor(roles.Base, c(27, 28, 30))
    p.setColor(roles.AlternateBase, c(44, 45, 49))
    p.setColor(roles.ToolTipBase, c(52, 53, 58))
    p.setColor(roles.ToolTipText, c(235, 235, 235))
    p.setColor(roles.PlaceholderText, c(140, 140, 146))
    p.setColor(roles.Text, c(230, 230, 232))
    p.setColor(roles.Button, c(50, 51, 55))
    p.setColor(roles.ButtonText, c(230, 230, 232))
    p.setColor(roles.BrightText, c(255, 90, 90))
    p.setColor(roles.Light, c(70, 71, 76))
    p.setColor(roles.Midlight, c(58, 59, 63))
    p.setColor(roles.Mid, c(120, 121, 128))
    p.setColor(roles.Dark, c(20, 20, 22))
    p.setColor(roles.Shadow, c(0, 0, 0))
    p.setColor(roles.Highlight, c(61, 133, 214))
    p.setColor(roles.HighlightedText, c(255, 255, 255))
    p.setColor(roles.Link, c(110, 170, 240))
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, c(120, 121, 126))
    return p


def _light() -> QPalette:
    p = QPalette()
    c = QColor
    roles = QPalette.ColorRole
    p.setColor(roles.Window, c(242, 242, 244))
    p.setColor(roles.WindowText, c(28, 28, 30))
    p.setColor(roles.Base, c(255, 255, 255))
    p.setColor(roles.AlternateBase, c(246, 246, 248))
    p.setColor(roles.ToolTipBase, c(255, 255, 240))
    p.setColor(roles.ToolTipText, c(28, 28, 30))
    p.setColor(roles.PlaceholderText, c(140, 140, 146))
    p.setColor(roles.Text, c(28, 28, 30))
    p.setColor(roles.Button, c(236, 236, 239))
    p.setColor(roles.ButtonText, c(28, 28, 30))
    p.setColor(roles.Light, c(255, 255, 255))
    p.setColor(roles.Midlight, c(228, 228, 232))
    p.setColor(roles.Mid, c(150, 150, 158))
    p.setColor(roles.Dark, c(160, 160, 166))
    p.setColor(roles.Highlight, c(48, 120, 206))
    p.setColor(roles.HighlightedText, c(255, 255, 255))
    p.setColor(roles.Link, c(30, 100, 200))
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, c(160, 160, 166))
    return p


def apply_theme(app: QApplication, theme: str) -> str:
    """Apply "system", "light" or "dark"; returns the theme applied."""
    global _original
    if _original is None:
        _original = (app.style().name(), QPalette(app.palette()))
    applied = theme if theme in (LIGHT, DARK) else SYSTEM
    if applied == SYSTEM:
        style = QStyleFactory.create(_original[0])
        if style is not None:
            app.setStyle(style)
        app.setPalette(_original[1])
    else:
        app.setStyle(QStyleFactory.create("Fusion"))
        app.setPalette(_dark() if theme == DARK else _light())
    # the stylesheet's palette(...) colours are resolved when it is set: set it again for the new palette
    qss = app.styleSheet()
    if qss:
        app.setStyleSheet("")
        app.setStyleSheet(qss)
    return applied


def is_dark(palette: QPalette | None = None) -> bool:
    pal = palette or QGuiApplication.palette()
    return pal.color(QPalette.ColorRole.Window).lightness() < 128
