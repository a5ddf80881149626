"""Where a VLM's weights are on this computer: the models folder, the Hugging Face cache, or (for the tiny test
presets) a folder built on first use. No torch at import: the captions stage asks this to say whether it can run."""

from __future__ import annotations

from pathlib import Path

from engine.models.sizes import download_size_text
from engine.models.vlm.specs import MINIGPT_V2_FOLDER, VlmSpec, VlmWeightsMissing, minigpt_v2_parts


def checkpoint_folder(spec: VlmSpec, checkpoint: str, models_dir: Path) -> Path:
    """Where the weights are on disk; tiny presets are built on first use, hub checkpoints must be downloaded."""
    if spec.tiny:
        from engine.models.vlm.tiny import ensure_tiny_checkpoint

        return ensure_tiny_checkpoint(spec.checkpoint, models_dir / "tiny")
    if spec.family == "minigpt-v2" and not Path(checkpoint).is_dir():
        minigpt_v2_parts(models_dir)   # says which of its three parts is missing
        return models_dir / MINIGPT_V2_FOLDER
    path = Path(checkpoint)
    if path.is_dir():
        return path
    local = models_dir / checkpoint.replace("/", "--")
    if (local / "config.json").exists():
        return local
    try:
        from engine.models.hub_cache import repo_in_cache

        if not repo_in_cache(checkpoint):   # never downloaded: say so without loading the download code
            raise FileNotFoundError(checkpoint)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(checkpoint, local_files_only=True))
    except Exception as exc:
        raise VlmWeightsMissing(
            f"the weights of {spec.title} ({checkpoint}, a download of {download_size_text(spec.key)}) are not on "
            f"this machine. Download them with `myvlm models get {spec.key}` (or `hf download {checkpoint} "
            f"--local-dir FOLDER` on a computer with internet, then `myvlm models import {spec.key} FOLDER`), or put "
            f"a checkpoint folder at {local}. Nothing is downloaded without your say-so.") from exc
