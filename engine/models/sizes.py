"""Approximate download sizes of the catalogue's models, and how sizes are written for people. No imports: the
model manager's catalogue and the VLM table's "not on this machine" messages (personalize/specs.py) share it."""

from __future__ import annotations

# approximate download sizes, from the repositories' listings (the weights in the format that is fetched)
SIZES = {
    "ViT-B-32": 605_000_000, "DFN5B-CLIP-ViT-H-14-378": 3_950_000_000,
    "blip2": 15_800_000_000, "blip2-opt": 15_000_000_000, "llava": 14_100_000_000,
    "smolvlm-256m": 513_000_000, "smolvlm-500m": 1_015_000_000, "llava-ov-0.5b": 1_790_000_000,   # bf16 / fp16
    "qwen2-vl-2b": 4_420_000_000, "qwen2.5-vl-3b": 7_510_000_000,                                     # bf16
}
SIZES["minigpt-v2"] = 13_500_000_000   # its hub part: Llama-2-7b-chat-hf's safetensors (fp16)


def human(n: int | None) -> str:
    """"15.8 GB", "605.0 MB", "?" for an unknown size."""
    if n is None:
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def download_size_text(name: str) -> str:
    """"about 15.8 GB": the catalogue's download size of a model, for messages (one table of sizes)."""
    size = SIZES.get(name)
    return f"about {human(size)}" if size else "unknown size"
