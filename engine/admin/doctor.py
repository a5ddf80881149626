"""`myvlm doctor`: what this install can do, and for everything it cannot, what to do about it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sqlite3
import sys
from typing import Any

from engine import __version__
from engine.ingest import images
from engine.models import downloads as model_manager
from engine.storage.library_folder import LibraryPaths

PACKAGES = [
    "torch", "torchvision", "transformers", "accelerate", "open_clip_torch", "insightface", "onnxruntime",
    "dlib-bin", "face-recognition-models", "faiss-cpu", "sqlite-utils", "watchdog", "Pillow", "pillow-heif",
    "numpy", "PySide6", "platformdirs", "tqdm", "psutil",
]

# The models themselves are catalogued by the model manager (engine/models/downloads.py); these names stay for callers.
DLIB_FILES = model_manager.DLIB_FILES
INSIGHTFACE_PACKS = model_manager.INSIGHTFACE_PACKS


def hub_models() -> list[tuple[str, str, str]]:
    """(repo id, what it is for, licence) of every Hugging Face model in the catalogue."""
    return [(e.repo_id, e.purpose, e.licence) for e in model_manager.catalogue() if e.kind == model_manager.HUB]


def __getattr__(name: str) -> Any:
    if name == "HUB_MODELS":  # computed on use: the catalogue reads the VLM table, which imports torch
        return hub_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _device() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_cores": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(kind="cuda", name=props.name, memory_gb=round(props.total_memory / 1024**3, 1),
                        bf16=bool(torch.cuda.is_bf16_supported()))
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            info.update(kind="mps", name="Apple GPU (Metal)")
        else:
            info.update(kind="cpu", name=platform.processor() or platform.machine())
    except Exception as exc:  # noqa: BLE001
        info.update(kind="cpu", name=platform.machine(), error=f"torch unavailable: {exc}")
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["ram_gb"] = round(pages * page_size / 1024**3, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def captioners(hw: Any = None, memory: Any = None) -> dict[str, Any]:
    """The hardware, the captioner that fits it and why, and each captioner's time per photo and per concept here."""
    from engine.models.hardware import detect, recommend_captioner
    from engine.models.vlm.estimates import estimates
    from engine.models.vlm.specs import VLM_SPECS

    hw = hw or detect()
    rec = recommend_captioner(hw)
    keys = [k for k, s in VLM_SPECS.items() if not s.tiny]
    return {"hardware": hw.as_dict(), "hardware_text": hw.describe(),
            "recommended": {"vlm": rec.vlm, "device": rec.device, "reason": rec.reason,
                            "title": VLM_SPECS[rec.vlm].title},
            "estimates": {k: e.as_dict() | {"detail": e.detail()} for k, e in estimates(keys, hw, memory).items()}}


def report(paths: LibraryPaths | None = None) -> dict[str, Any]:
    return {
        "myvlm_desktop": __version__,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in PACKAGES},
        "device": _device(),
        "captioners": captioners(),
        "formats": {"heif": images.HEIF_SUPPORTED, "avif": images.AVIF_SUPPORTED},
        "library": str(paths.root) if paths else None,
        "models": model_manager.ModelManager(paths.models if paths else None).doctor_rows(),
    }
