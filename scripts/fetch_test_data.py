#!/usr/bin/env python3
"""Fetch the real test photos from the package registries into .cache/test-data (git-ignored).

For the test suite only; users never need it. Idempotent: an existing, complete cache is left alone.
  - kphotoalbum/  the KPhotoAlbum demo album (24 real photos + index.xml) from Debian's `kphotoalbum` package
  - face_recognition/  the face_recognition 1.3.0 test images (Obama, Biden) from its PyPI source distribution
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
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


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    fetch_kphotoalbum()
    fetch_face_recognition()


if __name__ == "__main__":
    main()
