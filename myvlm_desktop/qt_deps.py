"""Before the first window: are the system libraries Qt's X11 platform plugin needs on this Linux computer?

PySide6's wheels bring Qt but not the X11 helper libraries its `xcb` plugin links against; on a fresh desktop
`libxcb-cursor0` (needed since Qt 6.5) is the one usually missing, and Qt then aborts with "Could not load the Qt
platform plugin 'xcb'" and a core dump. This module asks the dynamic loader for each library first and, when some
are missing, says in one message which packages to install on the common distributions.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SystemLibrary:
    """A shared library the xcb plugin loads, and the package that provides it on each distribution."""

    soname: str
    debian: str     # Debian, Ubuntu, Mint
    fedora: str     # Fedora, RHEL
    arch: str       # Arch, Manjaro
    opensuse: str


# What Qt 6's libqxcb.so links against (`ldd` of the plugin PySide6 ships), the core X11 libraries last.
XCB_PLUGIN_LIBRARIES = (
    SystemLibrary("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor", "xcb-util-cursor", "libxcb-cursor0"),
    SystemLibrary("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm", "xcb-util-wm", "libxcb-icccm4"),
    SystemLibrary("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms", "xcb-util-keysyms", "libxcb-keysyms1"),
    SystemLibrary("libxcb-image.so.0", "libxcb-image0", "xcb-util-image", "xcb-util-image", "libxcb-image0"),
    SystemLibrary("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil", "xcb-util-renderutil",
                  "libxcb-render-util0"),
    SystemLibrary("libxcb-util.so.1", "libxcb-util1", "xcb-util", "xcb-util", "libxcb-util1"),
    SystemLibrary("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11", "libxkbcommon-x11",
                  "libxkbcommon-x11-0"),
    SystemLibrary("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon", "libxkbcommon", "libxkbcommon0"),
    SystemLibrary("libxcb-randr.so.0", "libxcb-randr0", "libxcb", "libxcb", "libxcb-randr0"),
    SystemLibrary("libxcb-shape.so.0", "libxcb-shape0", "libxcb", "libxcb", "libxcb-shape0"),
    SystemLibrary("libxcb-shm.so.0", "libxcb-shm0", "libxcb", "libxcb", "libxcb-shm0"),
    SystemLibrary("libxcb-sync.so.1", "libxcb-sync1", "libxcb", "libxcb", "libxcb-sync1"),
    SystemLibrary("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb", "libxcb", "libxcb-xfixes0"),
    SystemLibrary("libxcb-render.so.0", "libxcb-render0", "libxcb", "libxcb", "libxcb-render0"),
    SystemLibrary("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb", "libxcb", "libxcb-xkb1"),
    SystemLibrary("libxcb.so.1", "libxcb1", "libxcb", "libxcb", "libxcb1"),
    SystemLibrary("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb", "libx11", "libX11-xcb1"),
)


def loader_finds(soname: str) -> bool:
    """Can the dynamic loader open this exact library (the search Qt's plugin loading will do)?"""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def uses_xcb(environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Will Qt try its X11 plugin first? Not on macOS/Windows, not when another platform is asked for
    (offscreen for the tests, wayland), and not in a Wayland session, where Qt 6 starts on Wayland."""
    if not platform.startswith("linux"):
        return False
    asked = environ.get("QT_QPA_PLATFORM", "").strip()
    if asked:
        return asked.split(";")[0].split(":")[0] == "xcb"
    return not (environ.get("XDG_SESSION_TYPE") == "wayland" and environ.get("WAYLAND_DISPLAY"))


def missing_xcb_libraries(finds: Callable[[str], bool] | None = None) -> list[SystemLibrary]:
    finds = finds or loader_finds
    return [lib for lib in XCB_PLUGIN_LIBRARIES if not finds(lib.soname)]


def _packages(missing: list[SystemLibrary], distro: str) -> str:
    return " ".join(dict.fromkeys(getattr(lib, distro) for lib in missing))


def install_message(missing: list[SystemLibrary]) -> str:
    """What to install, as commands for the common distributions: one message, no Qt abort."""
    return (
        "MyVLM Desktop cannot open its window: Qt's X11 platform (xcb) needs system libraries that are missing here: "
        f"{', '.join(lib.soname for lib in missing)}.\n"
        "Install them, then start the app again (`make run`):\n"
        f"  Debian, Ubuntu:  sudo apt-get install {_packages(missing, 'debian')}\n"
        f"  Fedora:          sudo dnf install {_packages(missing, 'fedora')}\n"
        f"  Arch:            sudo pacman -S {_packages(missing, 'arch')}\n"
        f"  openSUSE:        sudo zypper install {_packages(missing, 'opensuse')}\n"
        "The command line (.venv/bin/myvlm) works without them.")


def display_libraries_problem(environ: Mapping[str, str] | None = None, platform: str = sys.platform,
                              finds: Callable[[str], bool] | None = None) -> str | None:
    """The message to print instead of starting Qt, or None when the window can open (as far as libraries go)."""
    if not uses_xcb(os.environ if environ is None else environ, platform):
        return None
    missing = missing_xcb_libraries(finds)
    return install_message(missing) if missing else None
