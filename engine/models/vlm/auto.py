"""How the vision-language models MyVLM personalises are found and loaded (the "auto" module).

`load_vlm` resolves a key, repo id or folder to its spec (specs.py), finds the weights on disk, plans where the model
goes (hardware.py) and loads the family's wrapper. Families are named, not imported: `VLM_FAMILIES` maps each family
to "module:Class" and `wrapper_class` imports that module when a model of the family is loaded (as transformers'
auto classes do): neither this module nor the wrappers' base (vlm_base.py) imports a family, and a family imports only
the base (LLaVA-OneVision, LLaVA's layout with another language model, also llava.py).

Weights are only ever read from disk (`local_files_only`): nothing leaves the machine unless the user asks the model
manager to download a checkpoint.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch

from engine.models.vlm.checkpoints import checkpoint_folder  # noqa: F401 - re-exported
from engine.models.vlm.specs import (  # noqa: F401 - re-exported: the light part, importable without torch
    CAPTION,
    DEFAULT_VLM,
    UNSUPPORTED,
    VLM_SPECS,
    VQA,
    VlmError,
    VlmSpec,
    VlmTooLarge,
    VlmWeightsMissing,
    resolve_spec,
)
from engine.models.vlm.vlm_base import (  # noqa: F401 - re-exported: the wrappers' base and helpers
    THREAD_ENV,
    GenerationSettings,
    LossParts,
    VlmWrapper,
    check_memory,
    cpu_threads,
    pick_device,
    pick_dtype,
    seeded,
)

log = logging.getLogger(__name__)

# family -> "module:Class", the module relative to this package: imported only when a model of the family loads
VLM_FAMILIES = {
    "blip2": "blip2:Blip2Wrapper",
    "llava": "llava:LlavaWrapper",
    "smolvlm": "smolvlm:SmolVlmWrapper",
    "llava-onevision": "llava_onevision:LlavaOnevisionWrapper",
    "qwen2-vl": "qwen2_vl:Qwen2VlWrapper",
    "minigpt-v2": "minigpt_v2:MiniGptV2Wrapper",
}
# families whose load takes accelerate's device map for a model split between a small GPU and RAM
SPLIT_FAMILIES = ("blip2", "llava", "smolvlm", "llava-onevision")


def wrapper_class(family: str) -> type[VlmWrapper]:
    """The wrapper class of a family, its module imported now (the first model of that family to load pays for it)."""
    try:
        module, name = VLM_FAMILIES[family].split(":")
    except KeyError:
        raise VlmError(f"no wrapper for the VLM family {family!r}; known: {', '.join(VLM_FAMILIES)}") from None
    return getattr(importlib.import_module(f".{module}", __package__), name)


def load_vlm(name: str | Path = DEFAULT_VLM, *, models_dir: Path, device: str | None = None,
             dtype: str | torch.dtype | None = None, quantize: str = "auto") -> VlmWrapper:
    """Load a VLM by key, repo id or folder, on the best device, with a concept layer attached."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # our own progress reporting; no stray bars on stderr
    spec, checkpoint = resolve_spec(name)
    dev = pick_device(device)
    folder = checkpoint_folder(spec, checkpoint, models_dir)
    quant_4bit = False
    if spec.family == "llava" and quantize in ("auto", "4bit") and dev.type == "cuda":
        try:
            import bitsandbytes  # noqa: F401

            quant_4bit = True
        except ImportError:
            if quantize == "4bit":
                raise VlmError("4-bit loading needs the bitsandbytes package") from None
    from engine.models.hardware import detect, plan_placement

    plan = plan_placement(spec.params_b, detect(), dev.type, tiny=spec.tiny, quantized_4bit=quant_4bit)
    dt = pick_dtype(dev, dtype or plan.dtype)
    offload = plan.device_map is not None and dtype is None and spec.family in SPLIT_FAMILIES
    if offload:
        log.info("loading %s split between the GPU and RAM: %s", spec.key, plan.reason)
    check_memory(spec, dev, dt, quant_4bit, offload=offload)
    kwargs: dict = {"placement": plan} if offload else {}   # else every family's load takes the whole-device path
    if quant_4bit:
        kwargs["quantized_4bit"] = True
    return wrapper_class(spec.family).load(folder, spec, checkpoint, dev, dt, **kwargs)
