"""What pyproject.toml cannot say: the app's resources (icons, the stylesheet, the desktop entry) ship inside
the `myvlm_desktop` package of a wheel, as `myvlm_desktop/_resources/`.

In the repository they live in `resources/` (shared with packaging/ and the desktop entry); a source checkout and
an editable install read them from there (see myvlm_desktop/resources.py). Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RESOURCES = Path(__file__).resolve().parent / "resources"
PACKAGE_DIR = ("myvlm_desktop", "_resources")


def _resource_files() -> list[Path]:
    return sorted(p for p in RESOURCES.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and not p.name.startswith("."))


class build_py_with_resources(build_py):  # noqa: N801 - setuptools' command naming
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads resources/ from the checkout
        if not RESOURCES.is_dir():
            raise SystemExit(f"{RESOURCES} is missing: the app's icons and stylesheet cannot be packaged")
        for src in _resource_files():
            out = Path(self.build_lib, *PACKAGE_DIR, src.relative_to(RESOURCES))
            self.mkpath(str(out.parent))
            self.copy_file(str(src), str(out))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if getattr(self, "editable_mode", False) else [
            str(Path(self.build_lib, *PACKAGE_DIR, p.relative_to(RESOURCES))) for p in _resource_files()]
        return super().get_outputs(include_bytecode) + extra


setup(cmdclass={"build_py": build_py_with_resources})
