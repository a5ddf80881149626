"""Render the app icon (resources/myvlm-desktop.svg) to the bitmaps desktops and installers want.

    .venv/bin/python scripts/render_icons.py          # writes the files below (commit them)
    .venv/bin/python scripts/render_icons.py --check  # exit 1 when a committed bitmap is missing or stale

- `resources/hicolor/NxN/apps/myvlm-desktop.png` for N in 16 … 256: the freedesktop icon theme layout, so
  `cp -r resources/hicolor ~/.local/share/icons/` installs them; the app also adds them to its window icon,
  which keeps an icon where Qt's SVG plugin is missing (a frozen build that left it out).
- `resources/myvlm-desktop.ico` (Windows, 16 … 256) and `resources/myvlm-desktop.icns` (macOS, 16 … 1024) for the
  PyInstaller spec in packaging/.

Rendering uses Qt's own SVG renderer (QtSvg, part of PySide6) offscreen; no display is needed. `--check` compares
pixels, not bytes (PNG encoders differ between Qt versions), within a small tolerance.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "resources"
SVG = RESOURCES / "myvlm-desktop.svg"
NAME = "myvlm-desktop"
PNG_SIZES = (16, 22, 24, 32, 48, 64, 128, 256)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def png_path(size: int, root: Path = RESOURCES) -> Path:
    return root / "hicolor" / f"{size}x{size}" / "apps" / f"{NAME}.png"


def render(size: int):
    """The SVG drawn into a transparent size×size image, as a Pillow RGBA image."""
    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])  # noqa: F841 - QImage painting needs one
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise SystemExit(f"{SVG} is not an SVG Qt can draw")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buf, "PNG")
    return Image.open(io.BytesIO(bytes(buf.data()))).convert("RGBA")


def write_all() -> list[Path]:
    written = []
    for size in PNG_SIZES:
        out = png_path(size)
        out.parent.mkdir(parents=True, exist_ok=True)
        render(size).save(out, "PNG", optimize=True)
        written.append(out)
    big = render(256)
    ico = RESOURCES / f"{NAME}.ico"
    big.save(ico, "ICO", sizes=[(s, s) for s in ICO_SIZES])
    written.append(ico)
    icns = RESOURCES / f"{NAME}.icns"
    render(1024).save(icns, "ICNS", append_images=[render(s) for s in ICNS_SIZES if s != 1024])
    written.append(icns)
    return written


def stale() -> list[str]:
    """Bitmaps that are missing or no longer look like the SVG."""
    import numpy as np
    from PIL import Image

    problems = []
    for size in PNG_SIZES:
        p = png_path(size)
        if not p.is_file():
            problems.append(f"{p.relative_to(ROOT)} is missing")
            continue
        have = np.asarray(Image.open(p).convert("RGBA"), dtype=np.float32)
        want = np.asarray(render(size), dtype=np.float32)
        if have.shape != want.shape or np.abs(have - want).mean() > 2.0:
            problems.append(f"{p.relative_to(ROOT)} does not match {SVG.name}")
    for ext in ("ico", "icns"):
        p = RESOURCES / f"{NAME}.{ext}"
        if not p.is_file():
            problems.append(f"{p.relative_to(ROOT)} is missing")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the committed bitmaps are up to date")
    args = ap.parse_args(argv)
    if args.check:
        problems = stale()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run: python scripts/render_icons.py", file=sys.stderr)
        return 1 if problems else 0
    for p in write_all():
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
