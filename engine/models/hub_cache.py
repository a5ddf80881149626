"""Is a Hugging Face repo in the local cache at all? Asked before importing huggingface_hub's download code.

`huggingface_hub.file_download` pulls in its HTTP stack (about half a second); `myvlm status` asks every stage
whether it can run, and on most machines the answer is "the weights were never downloaded", which one directory
look-up says. Only when the repo's cache folder exists does the caller ask huggingface_hub for the exact file.
"""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses now (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants  # the constants alone are light

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_in_cache(repo_id: str) -> bool:
    """True when some snapshot of `repo_id` (a model repo) was ever downloaded into the hub cache."""
    folder = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    return os.path.isdir(folder / "snapshots")
