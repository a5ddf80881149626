"""What the captioners cost on a CPU, as measured by bench/bench_captioners.py at the real checkpoints' sizes
(random weights, bf16, 2 threads), so that the app's estimates and the benchmark's table are the same numbers.

`bench/bench_captioners.py --write-estimates` rewrites the MEASURED table below (keep it last in this file).
Keys: seconds per caption at batch 1 (20 new tokens), per training step with the vision tower at every step and
with the cached feature pool, per pooled view, for a whole concept (100 steps, 4 photos), and peak RAM in GB.
"""

from __future__ import annotations


def cpu_estimate(vlm_key: str) -> dict[str, float] | None:
    """The measured CPU costs of a VLM key (e.g. "smolvlm-256m"), or None where it was not measured."""
    return MEASURED.get(vlm_key)


def concept_seconds(vlm_key: str, steps: int = 100, photos: int = 4, views: int = 8) -> float | None:
    """Seconds to teach one concept on this kind of CPU: the feature pool, then the steps."""
    m = MEASURED.get(vlm_key)
    if not m:
        return None
    if "step_cached_s" in m and views > 0:
        return m["pool_view_s"] * photos * views + m["step_cached_s"] * steps
    return m["step_s"] * steps


MEASURED = {
    "smolvlm-256m": {
        "caption_b1_s": 2.047,
        "step_s": 4.98,
        "step_cached_s": 0.914,
        "pool_view_s": 1.011,
        "concept_s": 123.807,
        "peak_rss_gb": 2.016
    },
    "smolvlm-500m": {
        "caption_b1_s": 2.591,
        "step_s": 6.345,
        "step_cached_s": 2.04,
        "pool_view_s": 0.967,
        "concept_s": 234.898,
        "peak_rss_gb": 2.79
    },
    "llava-ov-0.5b": {
        "caption_b1_s": 7.287,
        "step_s": 48.814,
        "step_cached_s": 36.476,
        "pool_view_s": 2.256,
        "concept_s": 3719.808,
        "peak_rss_gb": 17.806
    },
    "blip2": {
        "caption_b1_s": 49.735,
        "step_s": 27.775,
        "concept_s": 2777.54,
        "peak_rss_gb": 8.681
    }
}
# 2026-12-07, 2 CPUs, 2 threads, bf16, load 4.1
