"""`myvlm-desktop`: start the desktop app.

One app per library: a second start on the same library brings the running window to the front (and hands it
`--album`) instead of opening a second one. The first start of a new library asks which folders to watch,
offering the Pictures folder; `--album PATH` (what `make run ALBUM=PATH` passes) skips that question.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication, QDialog, QMessageBox

from engine import __version__
from engine.library import APP_NAME, APP_SLUG, ENV_LIBRARY, SchemaTooNew, default_library_path, follow_moves

from .qt_compat import install_none_refcount_guard
from .qt_deps import display_libraries_problem
from .resources import app_icon, stylesheet

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=APP_SLUG, description=f"{APP_NAME}: a local, private photo album.")
    p.add_argument("--library", metavar="PATH", type=Path, default=None,
                   help=f"library folder to open (default: ${ENV_LIBRARY}, else the last one used, else the user "
                        "data folder)")
    p.add_argument("--album", metavar="PATH", action="append", default=[],
                   help="a photo folder to watch and open (repeatable); skips the first-run question")
    p.add_argument("--no-index", action="store_true",
                   help="do not start indexing on start (by default unfinished work resumes)")
    p.add_argument("--face-backend", metavar="NAME", help="face backend for this session (dlib, insightface, …)")
    p.add_argument("--vlm", metavar="NAME", help="captioning model for this session (blip2, llava, tiny-blip2, …)")
    p.add_argument("--device", metavar="NAME", help="cpu, cuda or mps (default: the Settings choice, else automatic)")
    p.add_argument("--theme", choices=["system", "light", "dark"], help="appearance for this session")
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


def configure_application(app: QApplication, theme: str | None = None) -> None:
    """The app icon, the palette and our stylesheet (when the resources are there); the bindings' bug guard."""
    install_none_refcount_guard()
    app.setWindowIcon(app_icon())
    if theme:
        from .theme import apply_theme

        apply_theme(app, theme)
    qss = stylesheet()
    if qss and app.styleSheet() != qss:
        app.setStyleSheet(qss)


def install_error_dialogs() -> None:
    """An exception nobody caught is logged with its traceback and shown as a sentence, never as a traceback."""
    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        log.error("unexpected error:\n%s", "".join(traceback.format_exception(kind, exc, tb)))
        from .tasks import user_message
        from .widgets import show_error

        try:
            show_error(QApplication.activeWindow(), "Something Went Wrong", user_message(exc))
        except Exception:
            log.debug("the error dialog failed too", exc_info=True)

    sys.excepthook = hook


def tune_gc() -> int:
    """Freeze what start-up made (the engine, torch and Qt wrappers: a few hundred thousand objects) out of the
    garbage collector's full passes. Those passes hold the interpreter lock for ~100 ms over that many objects,
    a visible hitch while the window refreshes a big library; frozen, they are skipped. Returns objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def first_run(library: Path, settings: QSettings) -> tuple[Path, list[str]] | None:
    """Ask for folders (Pictures offered) and the library location. None: the user cancelled."""
    from .first_run import FirstRunDialog

    dlg = FirstRunDialog(library)
    if dlg.exec() != QDialog.DialogCode.Accepted:
        return None
    return dlg.library, dlg.chosen_folders()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, qt_args = build_parser().parse_known_args(argv)
    problem = display_libraries_problem()
    if problem:   # say what to install, instead of Qt's abort and core dump
        print(problem, file=sys.stderr)
        return 1

    set_application_names()
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else APP_SLUG, *qt_args])
    assert isinstance(app, QApplication)
    settings = QSettings()
    configure_application(app, args.theme or str(settings.value("theme", "system")))
    install_error_dialogs()

    library = args.library
    if library is None:
        last = settings.value("library")
        library = follow_moves(Path(str(last))) if last and not _env_library() else default_library_path()
    library = Path(library).expanduser().absolute()
    albums = [str(Path(a).expanduser().absolute()) for a in args.album]

    from .single_instance import InstanceServer, send_to_running

    if send_to_running(library, {"raise": True, "album": albums[0] if albums else None}):
        log.info("%s is open already on %s: brought it to the front", APP_NAME, library)
        print(f"{APP_NAME} is already open on {library}: brought it to the front.", file=sys.stderr)
        return 0

    from .main_window import MainWindow  # after QApplication: widgets need it

    new_library = not (library / "library.db").exists()
    if new_library and not albums:
        chosen = first_run(library, settings)
        if chosen is None:
            return 0
        library, albums = chosen
    options = {"face_backend": args.face_backend, "vlm": args.vlm,
               "device": args.device or (str(settings.value("device", "")) or None)}
    server = InstanceServer(library)
    server.listen()
    try:
        window = MainWindow(library, auto_index=not args.no_index, settings=settings, options=options)
    except SchemaTooNew as exc:
        QMessageBox.critical(None, APP_NAME, str(exc))
        return 1
    except OSError as exc:
        QMessageBox.critical(None, APP_NAME, f"Cannot open the library: {exc}")
        return 1
    settings.setValue("library", str(library))
    server.messageReceived.connect(window.bring_to_front)
    windows = [window]

    def switch_library(path: str) -> None:
        """Settings ▸ Open Another Library…: close this window, open the other library in a new one."""
        old = windows[-1]
        target = Path(path).expanduser().absolute()
        if target == old.library_root:
            return
        old.close()
        server.close()
        new_server = InstanceServer(target)
        new_server.listen()
        new = MainWindow(target, settings=settings, options=options)
        new_server.messageReceived.connect(new.bring_to_front)
        new.libraryChangeRequested.connect(switch_library)
        settings.setValue("library", str(target))
        windows.append(new)
        new.show()

    window.libraryChangeRequested.connect(switch_library)
    for album in albums:
        window.add_folder(album)
    window.show()
    QTimer.singleShot(500, tune_gc)  # after the first paint
    try:
        return _exec_with_sigint(app)
    finally:
        server.close()


def _env_library() -> bool:
    import os

    return bool(os.environ.get(ENV_LIBRARY))


if __name__ == "__main__":
    sys.exit(main())
