"""`myvlm doctor`: what this install can do, and for everything it cannot, what to do about it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sqlite3
import sys
from pathlib import Path
from typing import Any

from . import __version__, images
from .library import LibraryPaths

PACKAGES = [
    "torch", "torchvision", "transformers", "accelerate", "open_clip_torch", "insightface", "onnxruntime",
    "dlib-bin", "face-recognition-models", "faiss-cpu", "sqlite-utils", "watchdog", "Pillow", "pillow-heif",
    "numpy", "PySide6", "platformdirs", "tqdm",
]

DLIB_FILES = {
    "shape_predictor_5_face_landmarks.dat": "5-point face alignment",
    "dlib_face_recognition_resnet_model_v1.dat": "128-d face embeddings (ResNet)",
    "mmod_human_face_detector.dat": "CNN face detector (optional)",
}
INSIGHTFACE_PACKS = ["buffalo_l", "buffalo_s", "antelopev2"]
HUB_MODELS = [
    # (repo id, what it is for, licence)
    ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "semantic search and object heads (light default CLIP)", "MIT"),
    ("apple/DFN5B-CLIP-ViT-H-14-378", "semantic search and object heads (high-quality CLIP, as in the paper)",
     "Apple sample code licence"),
    ("Salesforce/blip2-flan-t5-xl", "personalised captions (BLIP-2, as in the paper)", "MIT"),
    ("llava-hf/llava-v1.6-vicuna-7b-hf", "personalised captions and questions (LLaVA-1.6)", "Llama 2 community licence"),
]


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


def _dlib_models() -> dict[str, Any]:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return {"state": "missing", "fix": "pip install face-recognition-models (part of the default install)"}
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = {name: (folder / name).exists() for name in DLIB_FILES}
    dlib_ok = importlib.util.find_spec("dlib") is not None
    state = "present" if all(files.values()) and dlib_ok else "partial"
    return {"state": state, "path": str(folder), "files": files, "dlib": dlib_ok, "licence": "CC0",
            "fix": None if state == "present" else "reinstall: pip install --force-reinstall dlib-bin face-recognition-models"}


def _insightface_packs(paths: LibraryPaths | None) -> list[dict[str, Any]]:
    roots = []
    if paths is not None:
        roots.append(paths.models / "insightface")
    roots.append(Path.home() / ".insightface" / "models")
    out = []
    for pack in INSIGHTFACE_PACKS:
        found = next((r / pack for r in roots if (r / pack).is_dir() and any((r / pack).glob("*.onnx"))), None)
        out.append({
            "name": pack, "state": "present" if found else "missing", "path": str(found) if found else None,
            "licence": "InsightFace: non-commercial research only",
            "fix": None if found else (
                f"optional (dlib is used without it): unpack {pack}.zip into {roots[0] / pack}"),
        })
    return out


def _hub_models() -> list[dict[str, Any]]:
    out = []
    try:
        from huggingface_hub import scan_cache_dir

        cached = {r.repo_id: r for r in scan_cache_dir().repos}
    except Exception:  # noqa: BLE001 - no cache yet
        cached = {}
    for repo, purpose, licence in HUB_MODELS:
        r = cached.get(repo)
        out.append({
            "name": repo, "purpose": purpose, "licence": licence,
            "state": "present" if r is not None else "missing",
            "size_mb": round(r.size_on_disk / 1e6) if r is not None else None,
            "fix": None if r is not None else (
                f"download it on a machine with internet (`huggingface-cli download {repo}`) into the Hugging Face "
                "cache (HF_HOME); an in-app model manager comes with a later release"),
        })
    return out


def report(paths: LibraryPaths | None = None) -> dict[str, Any]:
    return {
        "myvlm_desktop": __version__,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in PACKAGES},
        "device": _device(),
        "formats": {"heif": images.HEIF_SUPPORTED, "avif": images.AVIF_SUPPORTED},
        "library": str(paths.root) if paths else None,
        "models": {
            "dlib_face": _dlib_models(),
            "insightface_packs": _insightface_packs(paths),
            "hub": _hub_models(),
        },
    }
