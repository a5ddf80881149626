"""`make run` on a Linux desktop without Qt's X11 libraries: one message with the install line, not Qt's abort."""

from __future__ import annotations

import subprocess

import pytest

from myvlm_desktop import app
from myvlm_desktop.qt_deps import display_libraries_problem, loader_finds, uses_xcb

from .conftest import ROOT

X11_DESKTOP = {"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"}


def without(*sonames: str):
    """A loader that finds every library but these (a fresh desktop lacks libxcb-cursor0)."""
    return lambda soname: soname not in sonames


def test_missing_cursor_library_gives_the_install_line_for_each_distribution():
    msg = display_libraries_problem(X11_DESKTOP, "linux", without("libxcb-cursor.so.0"))
    assert msg is not None and "libxcb-cursor.so.0" in msg
    assert "sudo apt-get install libxcb-cursor0\n" in msg
    assert "sudo dnf install xcb-util-cursor\n" in msg
    assert "sudo pacman -S xcb-util-cursor\n" in msg
    assert "sudo zypper install libxcb-cursor0\n" in msg


def test_several_missing_libraries_are_one_command_without_repeats():
    msg = display_libraries_problem(X11_DESKTOP, "linux", without("libxcb-randr.so.0", "libxcb-shm.so.0",
                                                                   "libxcb-icccm.so.4"))
    assert "sudo apt-get install libxcb-icccm4 libxcb-randr0 libxcb-shm0\n" in msg
    assert "sudo dnf install xcb-util-wm libxcb\n" in msg   # one package holds both core extensions


def test_nothing_to_say_when_everything_is_there_or_xcb_is_not_used():
    assert display_libraries_problem(X11_DESKTOP, "linux", lambda soname: True) is None
    nothing = without("libxcb-cursor.so.0")
    assert display_libraries_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux", nothing) is None
    assert display_libraries_problem({"QT_QPA_PLATFORM": "wayland"}, "linux", nothing) is None
    assert display_libraries_problem({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}, "linux",
                                     nothing) is None
    assert display_libraries_problem(X11_DESKTOP, "darwin", nothing) is None
    assert uses_xcb({"QT_QPA_PLATFORM": "xcb:nograb"}, "linux")


def test_the_real_loader_check():
    assert loader_finds("libc.so.6")
    assert not loader_finds("libmyvlm-no-such-library.so.0")


def test_app_prints_the_message_and_exits_before_qt_starts(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path):
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr("myvlm_desktop.qt_deps.loader_finds", without("libxcb-cursor.so.0"))
    monkeypatch.setattr(app, "QApplication", None)   # any use of Qt past the check would raise
    assert app.main(["--library", str(tmp_path / "lib")]) == 1
    assert "sudo apt-get install libxcb-cursor0" in capsys.readouterr().err
    assert not (tmp_path / "lib").exists()


def test_make_run_echoes_one_command_line():
    out = subprocess.run(["make", "-n", "run", "ALBUM=/photos/2019"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    lines = [ln.strip() for ln in out.splitlines()]
    assert "\\" not in lines and not any(ln.endswith("\\") for ln in lines)
    run = [ln for ln in lines if "myvlm-desktop" in ln]
    assert run == ['env -u QT_QPA_PLATFORM .venv/bin/myvlm-desktop  --album "/photos/2019"']
