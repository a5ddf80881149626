"""Packaging: the wheel and sdist build offline, the wheel installs and runs outside the source tree, the desktop
entry is valid and the icons match their SVG, and the PyInstaller launchers dispatch as the frozen app needs.

The build runs `python -m build --no-isolation` (an isolated build would download setuptools) on a copy of the
checkout, the way a release is made: the sdist first, then the wheel built from the unpacked sdist, so a file the
sdist forgets breaks the wheel too. The wheel goes into a fresh virtual environment with `--no-deps`; that
environment sees this environment's site-packages through a `.pth` line placed after its own (the dependencies are
reused, nothing is downloaded, and the editable install of the checkout stays invisible there: a plain path line
does not run the `.pth` hooks of the folder it adds).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from engine import __version__

ROOT = Path(__file__).resolve().parent.parent
RESOURCE_FILES = ["myvlm-desktop.svg", "myvlm-desktop.desktop", "style.qss", "myvlm-desktop.ico",
                  "myvlm-desktop.icns", "icons/photos.svg", "hicolor/16x16/apps/myvlm-desktop.png",
                  "hicolor/256x256/apps/myvlm-desktop.png"]
ICON_SIZES = (16, 22, 24, 32, 48, 64, 128, 256)


def _checkout_files() -> list[str]:
    """The files of a clean checkout (tracked, plus new files git does not ignore); without git, the tree minus
    what .gitignore names."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]
    skip = {".venv", ".git", ".cache", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
    return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and not p.name.endswith(".pyc")
            and ".egg-info" not in str(p)]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYVLM_LIBRARY", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp / "config"), XDG_DATA_HOME=str(tmp / "data"),
               PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                             f"{res.stderr[-5000:]}")
    return res


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    for rel in _checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    out = tmp / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=tmp, env=_env(tmp))
    sdists, wheels = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return {"sdist": sdists[0], "wheel": wheels[0], "tmp": tmp}


def test_sdist_holds_the_sources_resources_and_licence(dists):
    sdist = dists["sdist"]
    assert sdist.name == f"myvlm_desktop-{__version__}.tar.gz"
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        pkg_info = tf.extractfile(f"myvlm_desktop-{__version__}/PKG-INFO").read().decode()
    for must in ["README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in", "Makefile",
                 "packaging/myvlm-desktop.spec", "packaging/README.md", "packaging/launchers/launch_gui.py",
                 "myvlm_cli/main.py", "engine/admin/backup.py", "myvlm_cli/backup.py", "myvlm_desktop/app.py",
                 "myvlm_desktop/resources.py", "scripts/fetch_test_data.py", "scripts/render_icons.py",
                 "tests/conftest.py", "tests/test_packaging.py", "docs/cli-json.md",
                 *(f"resources/{f}" for f in RESOURCE_FILES)]:
        assert must in names, must
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith((".venv", ".cache"))]
    assert f"Version: {__version__}" in pkg_info and "License-Expression: MIT" in pkg_info


def test_wheel_installs_into_a_fresh_environment_and_runs(dists, tmp_path: Path):
    wheel = dists["wheel"]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"myvlm_desktop-{__version__}.dist-info/entry_points.txt").decode()
    for f in RESOURCE_FILES:
        assert f"myvlm_desktop/_resources/{f}" in names, f
    assert "engine/admin/backup.py" in names and "myvlm_desktop/app.py" in names
    assert not [n for n in names if n.startswith(("tests/", "resources/", "bench/")) or "__pycache__" in n]
    assert "myvlm = myvlm_cli.main:main" in entry_points and "myvlm-desktop = myvlm_desktop.app:main" in entry_points
    assert f"myvlm_desktop-{__version__}.dist-info/licenses/LICENSE" in names

    env = _env(tmp_path)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
                .stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_project_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel], tmp_path, env)

    work = tmp_path / "elsewhere"   # not the checkout: nothing may come from the source tree
    work.mkdir()
    assert _run([venv / "bin" / "myvlm", "--version"], work, env).stdout.strip() == f"myvlm {__version__}"
    assert _run([venv / "bin" / "myvlm-desktop", "--version"], work, env).stdout.strip() \
        == f"myvlm-desktop {__version__}"
    rep = json.loads(_run([venv / "bin" / "myvlm", "--library", tmp_path / "lib", "doctor", "--json"], work,
                          env).stdout)
    assert rep["myvlm_desktop"] == __version__ and rep["library"] == str(tmp_path / "lib")
    assert rep["models"]["dlib_face"]["state"] == "present"

    probe = (
        "import json, engine, myvlm_desktop\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from myvlm_desktop.resources import app_icon, resources_dir, stylesheet\n"
        "print(json.dumps({'engine': engine.__file__, 'app': myvlm_desktop.__file__, 'res': str(resources_dir()),"
        " 'icon': not app_icon().isNull(), 'qss': '#photoGrid' in stylesheet()}))\n")
    got = json.loads(_run([py, "-c", probe], work, env).stdout.strip().splitlines()[-1])
    installed = site.resolve()
    assert Path(got["engine"]).resolve().is_relative_to(installed), got
    assert Path(got["app"]).resolve().is_relative_to(installed), got
    assert Path(got["res"]).resolve() == installed / "myvlm_desktop" / "_resources"
    assert got["icon"] and got["qss"]
    for f in RESOURCE_FILES:
        assert (installed / "myvlm_desktop" / "_resources" / f).is_file(), f


def test_desktop_entry_is_valid():
    path = ROOT / "resources" / "myvlm-desktop.desktop"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("[Desktop Entry]\n") and text.endswith("\n")
    entry = configparser.ConfigParser(interpolation=None, strict=True)
    entry.optionxform = str   # keys are case-sensitive
    entry.read_string(text)
    assert entry.sections() == ["Desktop Entry"]
    d = entry["Desktop Entry"]
    known = {"Type", "Version", "Name", "GenericName", "NoDisplay", "Comment", "Icon", "Hidden", "OnlyShowIn",
             "NotShowIn", "DBusActivatable", "TryExec", "Exec", "Path", "Terminal", "Actions", "MimeType",
             "Categories", "Implements", "Keywords", "StartupNotify", "StartupWMClass", "URL", "PrefersNonDefaultGPU",
             "SingleMainWindow"}
    assert set(d) <= known, set(d) - known
    assert d["Type"] == "Application" and d["Name"] and d["Version"] in {"1.0", "1.1", "1.2", "1.3", "1.4", "1.5"}
    gui_scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["gui-scripts"]
    assert d["Exec"].split()[0] == d["TryExec"] and d["Exec"].split()[0] in gui_scripts   # the installed command
    assert d["Terminal"] == "false" and d["StartupNotify"] in ("true", "false")
    assert d["StartupWMClass"] == "myvlm-desktop"   # QApplication.setDesktopFileName (myvlm_desktop/app.py)
    # a registered main category, lists end with ';', the icon is a theme name we ship at every size
    assert d["Categories"].endswith(";") and d["Keywords"].endswith(";")
    assert {"AudioVideo", "Audio", "Video", "Development", "Education", "Game", "Graphics", "Network", "Office",
            "Science", "Settings", "System", "Utility"} & set(d["Categories"].split(";")[:-1])
    assert "/" not in d["Icon"] and not d["Icon"].endswith((".png", ".svg"))
    assert (ROOT / "resources" / f"{d['Icon']}.svg").is_file()
    for size in ICON_SIZES:
        assert (ROOT / "resources" / "hicolor" / f"{size}x{size}" / "apps" / f"{d['Icon']}.png").is_file(), size
    validator = shutil.which("desktop-file-validate")   # desktop-file-utils, where installed: the reference check
    if validator:
        res = subprocess.run([validator, str(path)], capture_output=True, text=True)
        assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_icon_bitmaps_match_the_svg():
    from PIL import Image

    for size in ICON_SIZES:
        im = Image.open(ROOT / "resources" / "hicolor" / f"{size}x{size}" / "apps" / "myvlm-desktop.png")
        assert im.size == (size, size) and im.mode == "RGBA"
        assert im.getpixel((0, 0))[3] == 0 and im.getpixel((size // 2, size // 2))[3] == 255  # shaped, opaque body
    ico = Image.open(ROOT / "resources" / "myvlm-desktop.ico")
    assert {(16, 16), (32, 32), (256, 256)} <= set(ico.info["sizes"])
    assert Image.open(ROOT / "resources" / "myvlm-desktop.icns").size == (1024, 1024)
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_icons.py"), "--check"],
                         capture_output=True, text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert res.returncode == 0, res.stderr


def test_pyinstaller_launchers_start_both_programs_and_the_indexing_worker(tmp_path: Path):
    env = _env(tmp_path)
    launchers = ROOT / "packaging" / "launchers"
    spec = (ROOT / "packaging" / "myvlm-desktop.spec").read_text()
    compile(spec, "myvlm-desktop.spec", "exec")
    for script in ("launch_gui.py", "launch_cli.py"):
        assert f'"{script}"' in spec and (launchers / script).is_file()
    assert _run([sys.executable, launchers / "launch_cli.py", "--version"], ROOT, env).stdout.strip() \
        == f"myvlm {__version__}"
    assert _run([sys.executable, launchers / "launch_gui.py", "--version"], ROOT, env).stdout.strip() \
        == f"myvlm-desktop {__version__}"
    # the app starts its worker as `sys.executable -m myvlm_desktop.index_worker`; frozen, that is this launcher
    out = _run([sys.executable, launchers / "launch_gui.py", "-m", "myvlm_desktop.index_worker", "--help"],
               ROOT, env).stdout
    assert "--library" in out and "--options" in out
