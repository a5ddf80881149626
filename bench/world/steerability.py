"""How far can one appended token steer a small BLIP-2's captions? An upper bound for MyVLM on a checkpoint.

MyVLM changes a frozen VLM's captions only through one token appended to the vision encoder's output; every
Q-Former cross-attention sees it as one more key and value, rescaled to gain × the image tokens' mean norm
(docs/method.md §6). This probe frees that token as far as the layout allows:

- `free_kv`: in every cross-attention the appended position's key and value are free vectors of their own (still
  rescaled the same way): 2 × layers directions instead of one embedding seen through the post-layernorm and
  the projections. An upper bound for any concept embedding.
- `embedding`: the concept embedding itself, fitted by the same loop.

Both are fitted to the personalised captions of a concept's 4 training photos (plain Adam, no augmentation, no
regulariser, so nothing but the layout limits them). Reported per concept: the final loss, and how often the
identifier appears in greedy captions of the 4 training photos and of new photos. The reference is the
un-personalised model's loss on the *generic* captions of the same photos, the wording's own uncertainty: a
model that can be steered gets near it. If even `free_kv` cannot make the model say the identifier on its own
training photos, no concept embedding and no training setting can (bench/README.md, issue 6).

Run: `.venv/bin/python bench/world/steerability.py [--checkpoint DIR] [--concepts calibration|benchmark|all]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import bench_myvlm_world as B
from bench.world import world as W
from engine.models.vlm.auto import load_vlm


class FreeAppendedKV:
    """Hooks that replace the appended position's key and value in every Q-Former cross-attention by free
    vectors, rescaled like the wrapper's own rule (gain × the image positions' mean norm)."""

    def __init__(self, w):
        self.w = w
        self.enabled = False
        self.params: list[torch.nn.Parameter] = []
        for cross in w._cross_attentions:
            for proj in (cross.attention.key, cross.attention.value):
                p = torch.nn.Parameter(torch.zeros(proj.out_features, device=w.device))
                self.params.append(p)
                proj.register_forward_hook(self._hook(p))   # after the wrapper's rescale hook

    def _hook(self, p: torch.nn.Parameter):
        def hook(module, args, out: torch.Tensor):
            n = self.w.n_image_tokens
            if not self.enabled or out.shape[1] <= n:
                return None
            target = out[:, :n].norm(dim=-1, keepdim=True).mean(dim=1, keepdim=True) * self.w.appended_gain
            extra = F.normalize(p, dim=-1).to(out.dtype).expand(out.shape[0], out.shape[1] - n, -1) * target
            return torch.cat([out[:, :n], extra], dim=1)
        return hook

    def reset(self, generator: torch.Generator) -> None:
        with torch.no_grad():
            for p in self.params:
                p.copy_(torch.randn(p.shape, generator=generator).to(p.device))


def fit(w, params, pixels, targets: list[list[str]], steps: int, lr: float, seed: int) -> float:
    """Adam on `params`; each step one caption variant per photo. Returns the mean loss of the last 20 steps."""
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    n = len(targets)
    losses = []
    for _ in range(steps):
        batch = [t[rng.integers(len(t))] for t in targets]
        w.concept_layer.set_active([[0]] * n)
        try:
            loss = w._lm_loss(pixels, [""] * n, batch)
        finally:
            w.concept_layer.set_active(None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses[-20:]))


@torch.no_grad()
def mean_loss(w, pixels, targets: list[list[str]]) -> float:
    return float(np.mean([w._lm_loss(pixels, [""] * len(targets), [t[k] for t in targets]).item()
                          for k in range(min(len(t) for t in targets))]))


MODES = ("free_kv", "embedding")


def probe(checkpoint: Path, which: str = "calibration", steps: int = 300, lr_kv: float = 0.05,
          lr_embedding: float = 1.0, heldout: int = 16, gain: float | None = None, device: str | None = None,
          seed: int = 0, concepts: list[str] | None = None, modes: tuple[str, ...] = MODES, log=print) -> dict:
    """Fit free keys/values and the embedding for each concept of `which` (or just `concepts`); see the module.
    `modes` picks which of the two to fit (the test needs only the upper bound, free_kv: half the time)."""
    log = log or (lambda *a: None)
    torch.manual_seed(seed)
    bench_concepts = list(W.CONCEPTS)[:6]
    calibration = list(W.CONCEPTS)[6:]
    concepts = concepts or {"calibration": calibration, "benchmark": bench_concepts, "all": list(W.CONCEPTS)}[which]
    idents = B._identifiers(bench_concepts)
    idents |= B._identifiers(calibration, taken=set(idents.values()))
    w = load_vlm(str(checkpoint), models_dir=Path(tempfile.mkdtemp(prefix="myvlm-steer-")), device=device,
                 dtype="float32")
    if gain is not None:
        w.appended_gain = gain
    for p in w.model.parameters():
        p.requires_grad_(False)
    free = FreeAppendedKV(w)
    world = W.World(0)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in concepts:
        seeds = (11, 12) if c in calibration else (1, 2)
        train = world.concept_images(c, 4, seed=seeds[0])
        held = world.concept_images(c, heldout, seed=seeds[1])
        pixels = w.preprocess([s.image for s in train])
        personal = [W.caption_variants(s.meta, {c: idents[c]}, 4, seed=k) for k, s in enumerate(train)]
        generic = [W.caption_variants(s.meta, {}, 4, seed=k) for k, s in enumerate(train)]
        w.set_concepts({})
        row = {"concept": c, "identifier": idents[c], "generic_caption_loss": round(mean_loss(w, pixels, generic), 3)}
        for mode in modes:
            t = time.perf_counter()
            w.set_concepts({0: torch.rand(w.concept_layer.dim, generator=gen)}, trainable=(mode == "embedding"))
            free.enabled = mode == "free_kv"
            if free.enabled:
                free.reset(gen)
            params = free.params if free.enabled else [w.concept_layer.values]
            for p in free.params:
                p.requires_grad_(free.enabled)
            loss = fit(w, params, pixels, personal, steps, lr_kv if free.enabled else lr_embedding, seed)
            with torch.no_grad():
                train_caps = B._generate(w, [s.image for s in train], [[0]] * len(train))
                held_caps = B._generate(w, [s.image for s in held], [[0]] * len(held))
            row[mode] = {"loss": round(loss, 3),
                         "train_recall": float(np.mean([B._has(x, idents[c]) for x in train_caps])),
                         "heldout_recall": float(np.mean([B._has(x, idents[c]) for x in held_caps])),
                         "example": {"truth": personal[0][0], "generated": train_caps[0]},
                         "seconds": round(time.perf_counter() - t, 1)}
            free.enabled = False
            log(f"{c:<22} {mode:<10} loss {row[mode]['loss']:.3f} (generic captions {row['generic_caption_loss']:.3f})"
                f"  train recall {row[mode]['train_recall']:.2f}  new photos {row[mode]['heldout_recall']:.2f}")
        rows.append(row)
    summary = {mode: {k: float(np.mean([r[mode][k] for r in rows])) for k in ("loss", "train_recall", "heldout_recall")}
               for mode in modes}
    return {"checkpoint": str(checkpoint), "gain": w.appended_gain, "steps": steps, "concepts": rows,
            "generic_caption_loss": float(np.mean([r["generic_caption_loss"] for r in rows])), "mean": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=B.CHECKPOINT)
    ap.add_argument("--concepts", choices=["calibration", "benchmark", "all"], default="calibration")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--gain", type=float, default=None, help="default: the checkpoint's own")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    r = probe(args.checkpoint, args.concepts, args.steps, gain=args.gain, device=args.device)
    print(json.dumps({"gain": r["gain"], "generic_caption_loss": r["generic_caption_loss"], **r["mean"]}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
