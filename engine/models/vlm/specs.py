"""What VLMs there are and where their weights are: no torch, so that `myvlm status`, the settings and the
pipeline's "can this stage run here?" stay fast (the model code is in auto.py, which re-exports these names)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InvalidInput, UserError
from engine.models.sizes import download_size_text

CAPTION, VQA = "caption", "vqa"


class VlmError(UserError, RuntimeError):
    """A VLM cannot be used as asked; the message says why and what to do."""


class VlmWeightsMissing(VlmError):
    pass


class VlmTooLarge(VlmError):
    pass


# MiniGPT-v2 is assembled from three downloads (minigpt_v2.py says why): the gated Llama-2 chat model from the hub,
# the ViT-g of a BLIP-2 checkpoint (the tower BLIP-2 and MiniGPT-v2 share), and the official projection + LoRA file.
MINIGPT_V2_LLAMA = "meta-llama/Llama-2-7b-chat-hf"
MINIGPT_V2_VISION = ("Salesforce/blip2-flan-t5-xl", "Salesforce/blip2-opt-2.7b")
MINIGPT_V2_CHECKPOINT = "minigptv2_checkpoint.pth"
MINIGPT_V2_FOLDER = "minigpt-v2"   # <models>/minigpt-v2/minigptv2_checkpoint.pth
MINIGPT_V2_LICENCE = "Llama 2 Community License; BSD-3-Clause (MiniGPT-4); MIT (BLIP-2's ViT-g)"


@dataclass(frozen=True)
class VlmSpec:
    key: str                 # what users type: --vlm blip2
    family: str              # "blip2" | "llava" | "smolvlm" | "llava-onevision" | "qwen2-vl"
    checkpoint: str          # a Hugging Face repo id, or a tiny preset key
    title: str
    params_b: float          # parameters, billions (for the memory check and the model table)
    license: str
    tasks: tuple[str, ...] = (CAPTION,)
    tiny: bool = False


VLM_SPECS: dict[str, VlmSpec] = {s.key: s for s in [
    VlmSpec("blip2", "blip2", "Salesforce/blip2-flan-t5-xl", "BLIP-2 FlanT5-XL (the paper's)", 3.9, "MIT"),
    VlmSpec("blip2-opt", "blip2", "Salesforce/blip2-opt-2.7b", "BLIP-2 OPT-2.7b", 3.8, "MIT"),
    VlmSpec("llava", "llava", "llava-hf/llava-v1.6-vicuna-7b-hf", "LLaVA-1.6 Vicuna-7B", 7.1,
            "Llama 2 Community License", (CAPTION, VQA)),
    # Small captioners that run on a laptop's CPU (bench/bench_captioners.py measures them beside BLIP-2)
    VlmSpec("smolvlm-256m", "smolvlm", "HuggingFaceTB/SmolVLM-256M-Instruct", "SmolVLM-256M-Instruct", 0.256,
            "Apache-2.0", (CAPTION, VQA)),
    VlmSpec("smolvlm-500m", "smolvlm", "HuggingFaceTB/SmolVLM-500M-Instruct", "SmolVLM-500M-Instruct", 0.507,
            "Apache-2.0", (CAPTION, VQA)),
    VlmSpec("llava-ov-0.5b", "llava-onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
            "LLaVA-OneVision Qwen2-0.5B", 0.894, "Apache-2.0", (CAPTION, VQA)),
    # For users with more memory (a GPU, or 16 GB of RAM): the concept token after the vision merger
    VlmSpec("qwen2-vl-2b", "qwen2-vl", "Qwen/Qwen2-VL-2B-Instruct", "Qwen2-VL-2B-Instruct", 2.21, "Apache-2.0",
            (CAPTION, VQA)),
    # the same wrapper; its weights are under Qwen's research licence (non-commercial use only)
    VlmSpec("qwen2.5-vl-3b", "qwen2-vl", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-3B-Instruct", 3.75,
            "Qwen Research License (non-commercial)", (CAPTION, VQA)),
    VlmSpec("tiny-blip2", "blip2", "tiny-blip2", "Tiny BLIP-2 (random weights, tests)", 0.0001, "MIT", tiny=True),
    VlmSpec("tiny-blip2-opt", "blip2", "tiny-blip2-opt", "Tiny BLIP-2 OPT (random weights, tests)", 0.0001, "MIT",
            tiny=True),
    VlmSpec("tiny-llava", "llava", "tiny-llava", "Tiny LLaVA-1.6 (random weights, tests)", 0.0002, "MIT",
            (CAPTION, VQA), tiny=True),
    VlmSpec("tiny-smolvlm", "smolvlm", "tiny-smolvlm", "Tiny SmolVLM (random weights, tests)", 0.0002,
            "Apache-2.0", (CAPTION, VQA), tiny=True),
    VlmSpec("tiny-llava-ov", "llava-onevision", "tiny-llava-ov", "Tiny LLaVA-OneVision (random weights, tests)",
            0.0002, "Apache-2.0", (CAPTION, VQA), tiny=True),
    VlmSpec("tiny-qwen2-vl", "qwen2-vl", "tiny-qwen2-vl", "Tiny Qwen2-VL (random weights, tests)", 0.0002,
            "Apache-2.0", (CAPTION, VQA), tiny=True),
    VlmSpec("tiny-qwen2.5-vl", "qwen2-vl", "tiny-qwen2.5-vl", "Tiny Qwen2.5-VL (random weights, tests)", 0.0004,
            "Apache-2.0", (CAPTION, VQA), tiny=True),
    # MiniGPT-v2: captions, questions and "where is …?" boxes (minigpt_v2.py), assembled from three downloads
    VlmSpec("minigpt-v2", "minigpt-v2", "Vision-CAIR/MiniGPT-v2", "MiniGPT-v2 (Llama-2-7b-chat)", 7.8,
            MINIGPT_V2_LICENCE, (CAPTION, VQA)),
    VlmSpec("tiny-minigpt-v2", "minigpt-v2", "tiny-minigpt-v2", "Tiny MiniGPT-v2 (random weights, tests)", 0.0002,
            "MIT", (CAPTION, VQA), tiny=True),
]}
# config.json's model_type → family, for checkpoint folders given by path
FAMILY_OF_MODEL_TYPE = {"blip-2": "blip2", "llava_next": "llava", "idefics3": "smolvlm",
                        "llava_onevision": "llava-onevision", "qwen2_vl": "qwen2-vl", "qwen2_5_vl": "qwen2-vl",
                        "minigpt_v2": "minigpt-v2"}
# The width of each VLM's concept token (what the concept layer appends), to check imported research embeddings
CONCEPT_DIM = {"blip2": 1408, "blip2-opt": 1408, "llava": 4096, "minigpt-v2": 4096, "smolvlm-256m": 576,
               "smolvlm-500m": 960, "llava-ov-0.5b": 896, "qwen2-vl-2b": 1536, "qwen2.5-vl-3b": 2048,
               "tiny-blip2": 32, "tiny-blip2-opt": 32, "tiny-llava": 64, "tiny-smolvlm": 64, "tiny-llava-ov": 64,
               "tiny-qwen2-vl": 64, "tiny-qwen2.5-vl": 128}
DEFAULT_VLM = "blip2"
UNSUPPORTED: dict[str, str] = {}   # keys users may type that name a model this app cannot run, and why


def resolve_spec(name: str | Path) -> tuple[VlmSpec, str]:
    """(spec, checkpoint) for a key (`blip2`), a Hugging Face repo id, or a local checkpoint folder."""
    key = str(name)
    if key in UNSUPPORTED:
        raise VlmError(UNSUPPORTED[key])
    if key in VLM_SPECS:
        spec = VLM_SPECS[key]
        return spec, spec.checkpoint
    path = Path(key).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.exists():
            raise VlmError(f"{path} is not a model checkpoint folder (no config.json)")
        model_type = json.loads(cfg.read_text()).get("model_type", "")
        family = FAMILY_OF_MODEL_TYPE.get(model_type)
        if family is None:
            raise VlmError(f"{path}: model type {model_type!r} is not supported; BLIP-2, LLaVA-1.6, SmolVLM "
                           f"(Idefics3), LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL and MiniGPT-v2 are")
        tasks = (CAPTION,) if family == "blip2" else (CAPTION, VQA)
        return VlmSpec(str(path), family, str(path), path.name, 0.0, "see the checkpoint", tasks), str(path.resolve())
    for spec in VLM_SPECS.values():
        if spec.checkpoint == key:
            return spec, key
    raise VlmError(f"unknown VLM {key!r}; choose one of {', '.join(VLM_SPECS)} or give a checkpoint folder")


def check_vlm_setting(value: str) -> None:
    """The `vlm` setting's validation (engine.settings): an unknown model is refused with the list of known ones."""
    try:
        resolve_spec(str(value))
    except VlmError as exc:
        raise InvalidInput(str(exc)) from None


def local_repo(repo_id: str, models_dir: Path) -> Path | None:
    """A hub repository's folder on this machine (<models>/org--name, or the Hugging Face cache), or None."""
    local = models_dir / repo_id.replace("/", "--")
    if (local / "config.json").exists():
        return local
    try:
        from engine.models.hub_cache import repo_in_cache

        if not repo_in_cache(repo_id):
            return None
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, or a cache that cannot be read: not here
        return None


def minigpt_v2_parts(models_dir: Path) -> dict[str, Path]:
    """MiniGPT-v2's three parts on this machine: {"vision", "language_model", "checkpoint"}; VlmWeightsMissing
    names each missing part and how to get it."""
    llama = local_repo(MINIGPT_V2_LLAMA, models_dir)
    vision = next((p for p in (local_repo(r, models_dir) for r in MINIGPT_V2_VISION) if p is not None), None)
    pth = models_dir / MINIGPT_V2_FOLDER / MINIGPT_V2_CHECKPOINT
    missing = []
    if llama is None:
        missing.append(f"Llama-2-7b-chat ({MINIGPT_V2_LLAMA}, {download_size_text('minigpt-v2')}; a gated model: "
                       f"accept Meta's licence on huggingface.co, then `myvlm models get minigpt-v2` asks for your "
                       f"Hugging Face token)")
    if vision is None:
        missing.append(f"the ViT-g vision tower, which comes with BLIP-2 (`myvlm models get blip2`, "
                       f"{download_size_text('blip2')})")
    if not pth.is_file():
        missing.append(f"the official {MINIGPT_V2_CHECKPOINT} (projection and LoRA weights, linked from the "
                       f"MiniGPT-4 project's README on GitHub): `myvlm models import minigpt-v2 "
                       f"PATH/{MINIGPT_V2_CHECKPOINT}` checks it and puts it at {pth}")
    if missing:
        raise VlmWeightsMissing("MiniGPT-v2 needs three parts and this machine lacks " + "; ".join(missing)
                                + ". Nothing is downloaded without your say-so.")
    return {"vision": vision, "language_model": llama, "checkpoint": pth}
