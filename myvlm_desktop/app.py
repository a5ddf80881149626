"""`myvlm-desktop`: start the desktop app."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from engine import __version__
from engine.catalog import SchemaTooNew
from engine.library import APP_NAME, APP_SLUG, ENV_LIBRARY

from .qt_compat import install_none_refcount_guard
from .resources import app_icon, stylesheet

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=APP_SLUG, description=f"{APP_NAME}: a local, private photo album.")
    p.add_argument("--library", metavar="PATH", type=Path, default=None,
                   help=f"library folder to open (default: ${ENV_LIBRARY}, else the user data folder)")
    p.add_argument("--no-index", action="store_true",
                   help="do not start indexing on start (by default unfinished work resumes)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _exec_with_sigint(app: QApplication) -> int:
    """Run the event loop; Ctrl-C in the terminal closes the windows cleanly instead of killing mid-write.

    Python only sees signals while it runs, so a timer gives it the GIL a few times a second.
    """
    previous = signal.signal(signal.SIGINT, lambda *_: app.closeAllWindows())
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(250)
    try:
        return app.exec()
    finally:
        timer.stop()
        timer.deleteLater()
        signal.signal(signal.SIGINT, previous)


def set_application_names() -> None:
    """Names used by QSettings, the window manager (matches the .desktop file) and dialogs. Before QApplication."""
    QApplication.setApplicationName(APP_SLUG)
    QApplication.setApplicationDisplayName(APP_NAME)
    QApplication.setOrganizationName(APP_SLUG)
    QApplication.setApplicationVersion(__version__)
    QApplication.setDesktopFileName(APP_SLUG)


def configure_application(app: QApplication) -> None:
    """The app icon and our stylesheet (when the resources are there); the bindings' bug guard."""
    install_none_refcount_guard()
    app.setWindowIcon(app_icon())
    qss = stylesheet()
    if qss and app.styleSheet() != qss:
        app.setStyleSheet(qss)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, qt_args = build_parser().parse_known_args(argv)

    set_application_names()
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else APP_SLUG, *qt_args])
    assert isinstance(app, QApplication)
    configure_application(app)

    from .main_window import MainWindow  # after QApplication: widgets need it

    try:
        window = MainWindow(args.library, auto_index=not args.no_index, settings=QSettings())
    except SchemaTooNew as exc:
        QMessageBox.critical(None, APP_NAME, str(exc))
        return 1
    except OSError as exc:
        QMessageBox.critical(None, APP_NAME, f"Cannot open the library: {exc}")
        return 1
    window.show()
    return _exec_with_sigint(app)


if __name__ == "__main__":
    sys.exit(main())
