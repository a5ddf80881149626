"""The captioners at their real sizes on this machine's CPU: seconds per caption, per training step and per concept,
and peak RAM, with BLIP-2 FlanT5-XL (the paper's) as the baseline in the same run.

No hub is reachable, so each family is built from its published config values (engine/models/vlm/tiny.py:
SMOLVLM_256M, SMOLVLM_500M, LLAVA_OV_05B, QWEN2_VL_2B, QWEN25_VL_3B, blip2_flan_t5_xl_parts) with random weights, in
bf16, and wrapped by the same wrapper classes the app loads real checkpoints with. Random weights cost what trained
ones cost: every caption is forced to the same number of new tokens (`--tokens`, default 20).

Each family runs in its own child process, one after the other (never two at once), so that its peak RSS is its
own. Per family:
  * caption: one warm-up, then `--captions` captions at batch 1 and one batch of each size in `--batches`
    (seconds per photo); the real photos of .cache/test-data/kphotoalbum;
  * training step (batch 4): `--steps` steps of the trainer with a fresh view per step (the vision tower at every
    step) and, where the wrapper can, with the feature pool (the tower once per pooled view, then steps that skip
    it); the pool's cost is timed per view;
  * a whole concept: 100 steps plus the pool of 4 photos × `TrainingConfig.feature_views` views;
  * peak RSS of the child (ru_maxrss).
The load average is recorded: the machine may be shared.

Run: `.venv/bin/python bench/bench_captioners.py` (about 10 minutes on 2 cores with BLIP-2; `--families` to pick,
`--quick` for one tiny preset of each family). `--write-estimates` stores the results in
engine/models/vlm/cpu_times.py, where the app reads its CPU estimates from; with `--merge-estimates` the families of
this run replace only their own rows (e.g. `--families qwen2-vl-2b --merge-estimates`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL = ["smolvlm-256m", "smolvlm-500m", "llava-ov-0.5b", "qwen2-vl-2b", "blip2"]
QUICK = ["tiny-smolvlm", "tiny-llava-ov", "tiny-qwen2-vl", "tiny-blip2"]
PHOTOS = ["spiff.jpg", "spiff_2.jpg", "snow.jpg", "sunset.jpg"]
# bf16 weights, activations and the allocator's slack: what must be free before a family is built
NEED_GB = {"blip2": 18.0, "llava-ov-0.5b": 6.0, "smolvlm-500m": 4.0, "smolvlm-256m": 3.0, "qwen2-vl-2b": 8.0,
           "qwen2.5-vl-3b": 11.0}


# -- the child: one family -------------------------------------------------------------------------------------------

def build_wrapper(key: str, models_dir: Path):
    """The wrapper of `key` at its real sizes with random weights (bf16, CPU), or a tiny preset as loaded."""
    import torch

    from engine.models.vlm import tiny
    from engine.models.vlm.auto import VLM_SPECS, load_vlm

    spec = VLM_SPECS[key]
    if spec.tiny:
        return load_vlm(key, models_dir=models_dir, device="cpu", dtype="bf16")
    dtype, cpu = torch.bfloat16, torch.device("cpu")
    if spec.family == "smolvlm":
        from engine.models.vlm.smolvlm import SmolVlmWrapper

        sizes = tiny.SMOLVLM_256M if key == "smolvlm-256m" else tiny.SMOLVLM_500M
        return SmolVlmWrapper(*tiny.smolvlm_parts(sizes, dtype=dtype), spec, spec.checkpoint, cpu, dtype)
    if spec.family == "llava-onevision":
        from engine.models.vlm.llava_onevision import LlavaOnevisionWrapper

        return LlavaOnevisionWrapper(*tiny.llava_onevision_parts(tiny.LLAVA_OV_05B, dtype=dtype), spec,
                                     spec.checkpoint, cpu, dtype)
    if spec.family == "qwen2-vl":
        from engine.models.vlm.qwen2_vl import Qwen2VlWrapper

        sizes, version = (tiny.QWEN2_VL_2B, "2") if key == "qwen2-vl-2b" else (tiny.QWEN25_VL_3B, "2.5")
        return Qwen2VlWrapper(*tiny.qwen2_vl_parts(sizes, dtype=dtype, version=version), spec, spec.checkpoint, cpu,
                              dtype)
    if key == "blip2":
        from engine.models.vlm.blip2 import Blip2Wrapper

        return Blip2Wrapper(*tiny.blip2_flan_t5_xl_parts(dtype=dtype), spec, spec.checkpoint, cpu, dtype)
    raise SystemExit(f"no real-size preset for {key}")


def _photos(n: int):
    from PIL import Image

    folder = ROOT / ".cache" / "test-data" / "kphotoalbum"
    names = [PHOTOS[i % len(PHOTOS)] for i in range(n)]
    return [Image.open(folder / name).convert("RGB") for name in names]


def _fixed_length(tokens: int):
    """Greedy settings that always generate `tokens` new tokens (random weights may say end-of-text at once)."""
    from engine.models.vlm.auto import GenerationSettings

    @dataclass
    class FixedLength(GenerationSettings):
        def kwargs(self) -> dict:
            return super().kwargs() | {"min_new_tokens": self.max_new_tokens}

    return FixedLength(max_new_tokens=tokens)


def time_captions(w, batches: list[int], captions: int, tokens: int) -> dict[str, float]:
    settings = _fixed_length(tokens)
    w.caption(_photos(1), settings=_fixed_length(1))            # warm-up: first-call allocations
    out = {}
    t = time.perf_counter()
    for _ in range(captions):
        w.caption(_photos(1), settings=settings)
    out["caption_b1_s"] = (time.perf_counter() - t) / captions
    for b in batches:
        if b == 1:
            continue
        t = time.perf_counter()
        w.caption(_photos(b), settings=settings)
        out[f"caption_b{b}_s"] = (time.perf_counter() - t) / b
    return out


def time_training(w, steps: int, pool_views: int) -> dict[str, float]:
    """Seconds per step with a fresh view per step, and (where the wrapper can) with the feature pool."""
    from engine.domain.personalize.embeddings import EmbeddingStore
    from engine.domain.personalize.training import (
        ConceptToTrain,
        ConceptTrainer,
        TrainingConfig,
        TrainingExample,
        build_feature_pool,
    )

    prompt = w.training_prompt("caption", "sks")
    examples = [TrainingExample(img, [1], [(prompt, "sks sitting on the sofa in a room")]) for img in _photos(4)]

    def steps_time(cfg: TrainingConfig) -> tuple[float, float]:
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            ConceptTrainer(w, EmbeddingStore(Path(d)), cfg).train(
                [ConceptToTrain(1, "sks")], examples, progress=lambda p: stamps.append(time.perf_counter()))
        # the first step carries one-off costs; later steps are the steady state (with one step, take it)
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else stamps[0] - t0
        return per_step, stamps[0] - t0

    out: dict[str, float] = {}
    out["step_s"], _ = steps_time(TrainingConfig(steps=steps, feature_views=0, checkpoint_every=1000))
    if w.caches_features:
        cfg = TrainingConfig(steps=steps, feature_views=pool_views, checkpoint_every=1000)
        t = time.perf_counter()
        build_feature_pool(w, [e.image for e in examples], cfg)
        out["pool_view_s"] = (time.perf_counter() - t) / (len(examples) * pool_views)
        out["step_cached_s"], _ = steps_time(cfg)
    return out


def concept_seconds(r: dict, steps: int = 100, photos: int = 4) -> float:
    """A whole concept: the pool of `photos` × the default views, then `steps` steps (fresh views without a pool)."""
    from engine.domain.personalize.training import TrainingConfig

    if "step_cached_s" in r:
        return r["pool_view_s"] * photos * TrainingConfig().feature_views + r["step_cached_s"] * steps
    return r["step_s"] * steps


def run_one(key: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    os.environ["MYVLM_THREADS"] = str(args.threads)   # the wrappers leave torch's threads as set here
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        w = build_wrapper(key, Path(d))
        w.record_timings = False   # a benchmark's times are cpu_times.py's, not this computer's remembered ones
        r: dict = {"key": key, "build_s": time.perf_counter() - t,
                   "params_b": sum(p.numel() for p in w.model.parameters()) / 1e9, "dtype": str(w.dtype)}
        r |= time_captions(w, args.batches, args.captions, args.tokens)
        if not args.no_training:
            r |= time_training(w, args.steps, args.pool_views)
            r["concept_s"] = concept_seconds(r)
    r["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    r["load"] = os.getloadavg()
    return r


# -- the parent: one child per family, in turn -----------------------------------------------------------------------

def free_gb() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30


def run_child(key: str, args) -> dict | None:
    need = NEED_GB.get(key, 1.0)
    if free_gb() < need:
        print(f"{key}: skipped, {free_gb():.1f} GB free of the {need:.0f} GB it needs", flush=True)
        return None
    # the baseline is measured once: one caption at batch 1, one training step (a minute each on 2 cores)
    batches, steps = ([1], 1) if key == "blip2" else (args.batches, args.steps)
    cmd = [sys.executable, __file__, "--one", key, "--tokens", str(args.tokens), "--captions", str(args.captions),
           "--steps", str(steps), "--pool-views", str(args.pool_views), "--threads", str(args.threads),
           "--batches", ",".join(map(str, batches))]
    cmd += ["--no-training"] if args.no_training or key in args.caption_only else []
    load_before = os.getloadavg()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"{key}: failed\n{res.stderr[-3000:]}", flush=True)
        return None
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["load_before"] = load_before
    print(f"{key}: {json.dumps(r)}", flush=True)
    return r


def table(results: list[dict], baseline: dict | None) -> str:
    rows = ["| model | params | s/caption b1 | s/photo best batch | s/step (tower every step) | s/step (cached) "
            "| concept, 100 steps | peak RAM | load (1 min) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        batches = {k: v for k, v in r.items() if k.startswith("caption_b")}
        best_key = min(batches, key=batches.get)
        speedup = f" ({baseline['caption_b1_s'] / r['caption_b1_s']:.1f}×)" if baseline and r is not baseline else ""
        step = f"{r['step_s']:.1f}" if "step_s" in r else "–"
        cached = f"{r['step_cached_s']:.2f}" if "step_cached_s" in r else "–"
        concept = f"{r['concept_s'] / 60:.1f} min" if "concept_s" in r else "–"
        rows.append(f"| {r['key']} | {r['params_b']:.2f} B | {r['caption_b1_s']:.2f}{speedup} | "
                    f"{batches[best_key]:.2f} ({best_key.removeprefix('caption_').removesuffix('_s')}) | {step} | "
                    f"{cached} | {concept} | {r['peak_rss_gb']:.1f} GB | {r['load'][0]:.1f} |")
    return "\n".join(rows)


def write_estimates(results: list[dict], path: Path, threads: int, merge: bool = False) -> None:
    """engine/models/vlm/cpu_times.py: what this run measured, as the app's CPU estimates. `merge` keeps the rows
    (and the stamp lines) of the families this run did not measure."""
    keep = ("caption_b1_s", "step_s", "step_cached_s", "pool_view_s", "concept_s", "peak_rss_gb")
    measured = {r["key"]: {k: round(r[k], 3) for k in keep if k in r} for r in results}
    text = path.read_text()
    head, sep, tail = text.partition("MEASURED = ")
    if not sep:
        raise SystemExit(f"{path} has no MEASURED table to replace")
    stamps = ""
    if merge:
        table_text, _, stamps = tail.partition("\n}\n")
        measured = json.loads(table_text + "\n}") | measured
        # an earlier merge's stamp of exactly these families is stale now
        keys = {r["key"] for r in results}
        stamps = "".join(f"{line}\n" for line in stamps.splitlines()
                         if not (": " in line and set(line.rsplit(": ", 1)[1].split(", ")) <= keys))
    stamp = (f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {threads} threads, bf16, load "
             f"{max(r['load'][0] for r in results):.1f}{': ' + ', '.join(r['key'] for r in results) if merge else ''}"
             f"\n")
    path.write_text(head + sep + json.dumps(measured, indent=4) + "\n" + stamps + stamp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(REAL), help="comma-separated VLM keys (real-size presets)")
    ap.add_argument("--quick", action="store_true", help="the tiny presets instead: a smoke test in seconds")
    ap.add_argument("--tokens", type=int, default=20, help="new tokens per caption")
    ap.add_argument("--captions", type=int, default=1, help="timed captions at batch 1")
    ap.add_argument("--batches", default="1,4", help="batch sizes to time")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps")
    ap.add_argument("--pool-views", type=int, default=2, help="views per photo in the timed pool")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--caption-only", default="", help="families timed without training (comma-separated)")
    ap.add_argument("--no-training", action="store_true")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--write-estimates", action="store_true", help="store them in engine/models/vlm/cpu_times.py")
    ap.add_argument("--merge-estimates", action="store_true",
                    help="store them there, keeping the rows of the families this run did not measure")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.caption_only = [k for k in args.caption_only.split(",") if k]
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    keys = QUICK if args.quick else [k for k in args.families.split(",") if k]
    print(f"{os.cpu_count()} CPUs, {args.threads} threads, load {os.getloadavg()[0]:.1f}, {free_gb():.1f} GB free",
          flush=True)
    results = [r for r in (run_child(k, args) for k in keys) if r]
    baseline = next((r for r in results if r["key"] in ("blip2", "tiny-blip2")), None)
    print(table(results, baseline))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if args.write_estimates or args.merge_estimates:
        write_estimates(results, ROOT / "engine" / "personalize" / "cpu_times.py", args.threads,
                        merge=args.merge_estimates)


if __name__ == "__main__":
    main()
