#!/usr/bin/env python3
"""Fetch the real test photos from the package registries into .cache/test-data (git-ignored).

For the test suite only; users never need it. Idempotent: an existing, complete cache is left alone.
  - kphotoalbum/  the KPhotoAlbum demo album (24 real photos + index.xml) from Debian's `kphotoalbum` package
  - face_recognition/  the face_recognition 1.3.0 test images (Obama, Biden) from its PyPI source distribution
  - scrfd/  scrfd.onnx (InsightFace's SCRFD-2.5G face detector, 5 keypoints, 640x640) + the package's LICENSE/README,
            from the `scrfd` 0.3.0 PyPI source distribution (weights are InsightFace's: non-commercial research only)
  - insightface/  t1.jpg (a group photo, 6 faces) from the `insightface` 2.1 PyPI wheel
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MYVLM_TEST_DATA", ROOT / ".cache" / "test-data"))


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_kphotoalbum() -> None:
    target = CACHE / "kphotoalbum"
    if (target / "index.xml").exists() and len(list(target.glob("*.jpg"))) >= 24:
        return
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        sys.exit("fetch_test_data: apt-get and dpkg-deb are needed to fetch the KPhotoAlbum demo album (Debian)")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        os.chmod(tmpdir, 0o777)  # apt's sandbox user must be able to write the download
        res = run(["apt-get", "download", "kphotoalbum"], cwd=tmpdir)
        if res.returncode != 0:
            upd = run(["apt-get", "update", "-qq"])
            if upd.returncode != 0:
                sys.exit(f"fetch_test_data: apt-get update failed (root needed?):\n{upd.stderr}")
            res = run(["apt-get", "download", "kphotoalbum"], cwd=tmpdir)
        debs = glob.glob(str(tmpdir / "kphotoalbum_*.deb"))
        if res.returncode != 0 or not debs:
            sys.exit(f"fetch_test_data: apt-get download kphotoalbum failed:\n{res.stderr}")
        out = tmpdir / "x"
        res = run(["dpkg-deb", "-x", debs[0], str(out)])
        if res.returncode != 0:
            sys.exit(f"fetch_test_data: dpkg-deb failed:\n{res.stderr}")
        demo = out / "usr" / "share" / "kphotoalbum" / "demo"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(demo, target)
    print(f"fetched the KPhotoAlbum demo album into {target}")


def fetch_face_recognition() -> None:
    target = CACHE / "face_recognition"
    if len(list(target.glob("*.jpg"))) >= 4:
        return
    with tempfile.TemporaryDirectory() as tmp:
        res = run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "face-recognition==1.3.0", "-d", tmp])
        archives = glob.glob(os.path.join(tmp, "face_recognition-1.3.0.tar.gz"))
        if res.returncode != 0 or not archives:
            sys.exit(f"fetch_test_data: pip download face-recognition==1.3.0 failed:\n{res.stderr}")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                if "/tests/test_images/" in member.name and member.isfile():
                    data = tar.extractfile(member)
                    if data is not None:
                        (target / os.path.basename(member.name)).write_bytes(data.read())
    print(f"fetched the face_recognition test images into {target}")


def _pip_download(spec: str, dest: str, *, sdist: bool) -> list[str]:
    """`pip download --no-deps` one distribution into dest; the paths of what it wrote (exits on failure)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", dest]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    res = run(cmd + [spec])
    files = sorted(glob.glob(os.path.join(dest, "*")))
    if res.returncode != 0 or not files:
        sys.exit(f"fetch_test_data: pip download {spec} failed:\n{res.stderr}")
    return files


def _write_atomic(target: Path, data: bytes) -> None:
    """Write through a temporary name, so an interrupted fetch never leaves a truncated model or photo."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def fetch_scrfd() -> None:
    """scrfd==0.3.0's source distribution carries models/scrfd.onnx (InsightFace SCRFD-2.5G with keypoints)."""
    target = CACHE / "scrfd"
    if (target / "scrfd.onnx").is_file():
        return
    wanted = {"models/scrfd.onnx": "scrfd.onnx", "LICENSE": "LICENSE", "README.md": "README.md"}
    with tempfile.TemporaryDirectory() as tmp:
        archives = [f for f in _pip_download("scrfd==0.3.0", tmp, sdist=True) if f.endswith(".tar.gz")]
        if not archives:
            sys.exit("fetch_test_data: pip download scrfd==0.3.0 gave no source distribution")
        found: dict[str, bytes] = {}
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if rel in wanted and member.isfile():
                    data = tar.extractfile(member)
                    if data is not None:
                        found[wanted[rel]] = data.read()
    if "scrfd.onnx" not in found:
        sys.exit("fetch_test_data: models/scrfd.onnx is missing from the scrfd 0.3.0 source distribution")
    # the model last: its presence marks a complete fetch
    for name, data in sorted(found.items(), key=lambda kv: kv[0] == "scrfd.onnx"):
        _write_atomic(target / name, data)
    print(f"fetched the SCRFD face detector into {target}")


def fetch_insightface_images() -> None:
    """insightface==2.1's wheel carries insightface/data/images/t1.jpg (the group photo of its README, 6 faces)."""
    target = CACHE / "insightface"
    if (target / "t1.jpg").is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [f for f in _pip_download("insightface==2.1", tmp, sdist=False) if f.endswith(".whl")]
        if not wheels:
            sys.exit("fetch_test_data: pip download insightface==2.1 gave no wheel")
        with zipfile.ZipFile(wheels[0]) as whl:
            try:
                data = whl.read("insightface/data/images/t1.jpg")
            except KeyError:
                sys.exit("fetch_test_data: insightface/data/images/t1.jpg is missing from the insightface 2.1 wheel")
    _write_atomic(target / "t1.jpg", data)
    print(f"fetched InsightFace's t1.jpg into {target}")


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    fetch_kphotoalbum()
    fetch_face_recognition()
    fetch_scrfd()
    fetch_insightface_images()


if __name__ == "__main__":
    main()
