"""Small helpers shared by tests: realistic generated photos and album snapshots."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def photo_array(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A photo-like image (gradients, shapes, noise) that differs per seed and has a clear up/down/left/right."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin((x + y) / (17 + seed % 13))
    img = np.stack([r, g, b], axis=-1)
    # an asymmetric block in the top-left third, so flips and rotations are visible
    img[: height // 3, : width // 4] = rng.integers(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def stop_at_step(n: int, seen: list[int]) -> tuple[Callable, threading.Event]:
    """A training progress callback that records each step in `seen`, and the cancel Event it sets once step `n` is
    done (the trainer checks it before the next step, so the run stops with `n` steps done)."""
    stop = threading.Event()

    def progress(p) -> None:
        seen.append(p.step)
        if p.step >= n:
            stop.set()

    return progress, stop


def write_jpeg(path: Path, seed: int, width: int = 320, height: int = 240, **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo_array(seed, width, height)).save(path, "JPEG", quality=90, **save_kw)
    return path


def album_snapshot(root: Path) -> dict[bytes, tuple[str, int, int]]:
    """(sha256, size, mtime_ns) of every file under root, by exact path bytes, without following links."""
    out = {}
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                out[p] = ("link:" + os.fsdecode(os.readlink(p)), 0, st.st_mtime_ns)
                continue
            try:
                digest = hashlib.sha256(Path(os.fsdecode(p)).read_bytes()).hexdigest()
            except OSError:
                digest = "unreadable"
            out[p] = (digest, st.st_size, st.st_mtime_ns)
    return out


def mean_abs_diff(a: Image.Image, b: Image.Image, size: tuple[int, int] = (64, 48)) -> float:
    a2 = np.asarray(a.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    b2 = np.asarray(b.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    return float(np.abs(a2 - b2).mean())
