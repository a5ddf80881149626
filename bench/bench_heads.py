#!/usr/bin/env python3
"""Benchmark: object concept heads, training and detection.

(a) Training one head, ViT-B-32 with RANDOM weights (no weights can be downloaded here; the forward costs the same),
    on CPU, over real photos (the KPhotoAlbum demo album: 4 positives, the other photos as negatives), all decoded
    and shrunk to 512 px in memory before any timing, the model loaded before any timing:
      paper    the paper's way: at every step a batch of 16 freshly augmented images (8 random views of the
               positives + 8 negatives, each randomly flipped and rotated by up to ±30°) goes through the frozen
               CLIP image encoder, then one step of the linear head (cross-entropy, AdamW 1e-3 / wd 0.01, cosine
               schedule, grad clip 0.1). `--paper-steps` (default 20) steps are timed after one untimed warm-up
               step and extrapolated to 500.
      ours     engine.domain.concepts.object_head: `augment` 16 views of each positive once, one batched encode
               (64 images), then `train_linear_head`: 500 steps on the cached features. Negatives are the
               photos' stored embeddings (the clip stage computed them for search anyway): not timed here; a
               second row adds encoding them, as if the album had none stored.
    Target (issue): ours ≥ 20× faster than the paper's way.

(b) Detection of 10 object heads over 10,000 photos' stored embeddings (random unit vectors, 512-d, written as
    float32 blobs into a real catalog; heads trained on synthetic clusters so some photos fire):
      loop        per photo, per head: logits = W @ x + b, softmax (numpy), the embeddings already in memory
      vectorised  one (10000, 512) @ (512, 20) matmul and a 2-way softmax per head, embeddings already in memory
      score_heads engine.domain.concepts.object_head.score_heads: the logit differences, one (10000, 512) @ (512, 10)
      detector    engine.domain.concepts.detect.ConceptDetector(catalog): compute() (reads the embeddings from SQLite,
                  scores, builds signals) and run() (compute + store the signals), when that module exists
    All methods must agree (max |Δp| < 1e-5; same photos fire). Target (issue): detection under a second.

    .venv/bin/python bench/bench_heads.py            # full
    .venv/bin/python bench/bench_heads.py --quick    # 5 paper steps, 4 views, 2,000 photos
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.domain.concepts.object_head import (
    ObjectHeadConfig,
    augment,
    score,
    score_heads,
    train_linear_head,
)
from engine.domain.concepts.registry import Head, softmax_p1
from engine.models.clip import RANDOM, ClipEncoder

DATA = Path(os.environ.get("MYVLM_TEST_DATA", ROOT / ".cache" / "test-data"))
TARGET_TRAIN = 20.0
TARGET_DETECT_S = 1.0
WORK_SIDE = 512


def load_photos() -> list[tuple[str, Image.Image]]:
    album = DATA / "kphotoalbum"
    files = sorted(p for p in album.rglob("*.jpg"))
    if len(files) < 8:
        sys.exit(f"need the test photos in {album}: run `make test-data` (scripts/fetch_test_data.py)")
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        img.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BICUBIC)
        out.append((f.name, img))
    return out


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- (a) training ---------------------------------------------------------------------------------------------------

def paper_training(enc: ClipEncoder, pos: list[Image.Image], neg: list[Image.Image], steps: int,
                   cfg: ObjectHeadConfig) -> tuple[float, np.ndarray, np.ndarray]:
    """The paper's loop; returns (seconds per step over `steps` timed steps, weight, bias)."""
    import torch

    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = torch.nn.Linear(enc.dim, 2)
    with torch.no_grad():
        head.weight.copy_(torch.empty(2, enc.dim).uniform_(-enc.dim ** -0.5, enc.dim ** -0.5, generator=gen))
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.final_lr)
    half = cfg.batch_size // 2
    targets = torch.cat([torch.ones(half, dtype=torch.long), torch.zeros(cfg.batch_size - half, dtype=torch.long)])
    preprocess = enc.preprocess

    def one_view(img: Image.Image) -> Image.Image:
        return augment(img, 2, rng, cfg.max_rotation, cfg.flip)[1]  # a fresh random flip + rotation

    def step() -> None:
        imgs = [one_view(pos[i]) for i in rng.integers(0, len(pos), half)]
        imgs += [one_view(neg[i]) for i in rng.integers(0, len(neg), cfg.batch_size - half)]
        pixels = torch.stack([preprocess(im) for im in imgs])
        feats = torch.from_numpy(enc.encode_pixels(pixels))  # frozen CLIP, L2-normalised
        loss = torch.nn.functional.cross_entropy(head(feats), targets)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()

    step()  # warm-up, untimed
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - t0) / steps
    return per_step, head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()


def our_training(enc: ClipEncoder, pos: list[Image.Image], neg_feats: np.ndarray,
                 cfg: ObjectHeadConfig) -> tuple[dict[str, float], np.ndarray, np.ndarray, np.ndarray, dict]:
    t0 = time.perf_counter()
    views = []
    for k, img in enumerate(pos):
        views += augment(img, cfg.views, np.random.default_rng([cfg.seed, k]), cfg.max_rotation, cfg.flip)
    t1 = time.perf_counter()
    feats = enc.encode_images(views).reshape(len(pos), cfg.views, enc.dim)
    t2 = time.perf_counter()
    w, b, info = train_linear_head(feats, neg_feats, cfg)
    t3 = time.perf_counter()
    return {"augment": t1 - t0, "encode": t2 - t1, "train": t3 - t2, "total": t3 - t0}, feats, w, b, info


def bench_training(args: argparse.Namespace) -> dict:
    import torch

    photos = load_photos()
    by_name = dict(photos)
    pos_names = [n for n in ("grand_canyon_1.jpg", "grand_canyon_2.jpg", "grand_canyon_3.jpg", "skagen.jpg")
                 if n in by_name][:4]
    if len(pos_names) < 4:
        pos_names = [n for n, _ in photos[:4]]
    pos = [by_name[n] for n in pos_names]
    neg = [img for n, img in photos if n not in pos_names]
    cfg = ObjectHeadConfig(views=args.views)
    enc = ClipEncoder("ViT-B-32", RANDOM, device="cpu")
    enc.load()
    print(f"\n(a) training one head: ViT-B-32 random weights on CPU ({torch.get_num_threads()} torch threads), "
          f"{len(pos)} positives, {len(neg)} negative photos; load average {load_avg()}")

    t0 = time.perf_counter()
    neg_feats = enc.encode_images(neg)  # the clip stage's stored embeddings, in the app
    neg_encode = time.perf_counter() - t0

    times, feats, w, b, info = our_training(enc, pos, neg_feats, cfg)
    per_step, pw, pb = paper_training(enc, pos, neg, args.paper_steps, cfg)
    paper_total = per_step * cfg.steps

    # checks: ours learned its positives; view 0 is the un-augmented photo
    plain = enc.encode_images(pos)
    np.testing.assert_allclose(feats[:, 0], plain, atol=2e-3)
    assert info["train_positive_accuracy"] == 1.0, info
    p_ours = score(w, b, plain)
    assert np.all(p_ours >= cfg.threshold), p_ours

    rows = [
        (f"paper: CLIP forward of 16 augmented images every step ({args.paper_steps} steps timed, × {cfg.steps // args.paper_steps if cfg.steps % args.paper_steps == 0 else cfg.steps / args.paper_steps:g})",
         paper_total, 1.0),
        (f"ours: {cfg.views} views × {len(pos)} positives encoded once + {cfg.steps} steps on cached features",
         times["total"], paper_total / times["total"]),
        ("ours + encoding the negatives too (an album without stored embeddings)",
         times["total"] + neg_encode, paper_total / (times["total"] + neg_encode)),
    ]
    print("\n| method | seconds (500 steps) | vs paper |\n|---|---:|---:|")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.2f} | {'**' if ratio >= TARGET_TRAIN and ratio != 1.0 else ''}{ratio:.1f}×"
              f"{'**' if ratio >= TARGET_TRAIN and ratio != 1.0 else ''} |")
    print(f"\nours, split: augment {times['augment']:.2f} s, encode {cfg.views * len(pos)} views {times['encode']:.2f} s, "
          f"500 steps {times['train']:.2f} s; paper: {per_step:.3f} s per step; "
          f"negatives encode ({len(neg)} photos) {neg_encode:.2f} s")
    print(f"ours fires on its positives: p = {', '.join(f'{p:.3f}' for p in p_ours)}; "
          f"paper's head after {args.paper_steps + 1} steps: p = "
          f"{', '.join(f'{p:.3f}' for p in score(pw, pb, plain))} (random weights: no meaning beyond 'it runs')")
    ratio = paper_total / times["total"]
    print(f"target ≥ {TARGET_TRAIN:g}×: {'met' if ratio >= TARGET_TRAIN else 'NOT met'} ({ratio:.1f}×)")
    return {"paper_per_step_s": per_step, "paper_500_s": paper_total, "paper_steps_timed": args.paper_steps,
            "ours": times, "negatives_encode_s": neg_encode, "ratio": ratio, "views": cfg.views,
            "positives": len(pos), "negatives": len(neg), "load_average": load_avg()}


# -- (b) detection --------------------------------------------------------------------------------------------------

def make_embeddings(n: int, k: int, dim: int, per_head: int, rng: np.random.Generator):
    """Random unit vectors; for each head a direction c_j and `per_head` photos planted near it (cos ≈ 0.9)."""
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    planted = rng.choice(n, size=(k, per_head), replace=False) if k * per_head <= n else np.zeros((k, 0), int)
    for j in range(k):
        x = 0.9 * centres[j] + emb[planted[j]] * 0.43
        emb[planted[j]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return emb, centres, planted


def make_catalog(root: Path, emb: np.ndarray, space: str):
    from engine.storage.catalog import Catalog, now
    from engine.storage.library_folder import LibraryPaths
    from engine.storage.vectors import to_blob

    n = len(emb)
    cat = Catalog(LibraryPaths(root))
    ts = now()
    with cat.write():
        fid = cat.conn.execute("INSERT INTO folders(path, path_bytes, added_at) VALUES (?, ?, ?)",
                               ["/bench", b"/bench", ts]).lastrowid
        cat.conn.executemany(
            "INSERT INTO photos(id, folder_id, path, path_bytes, name, content_hash, status, added_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'ok', ?, ?)",
            [(i + 1, fid, f"/bench/{i}.jpg", f"/bench/{i}.jpg".encode(), f"{i}.jpg", f"{i:064x}", ts, ts)
             for i in range(n)])
        cat.conn.executemany("INSERT INTO clip_embeddings(photo_id, model, embedding) VALUES (?, ?, ?)",
                             [(i + 1, space, to_blob(emb[i])) for i in range(n)])
    return cat, np.arange(1, n + 1, dtype=np.int64)


def confident_heads(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heads as confident as a good head on real features: p(concept) = sigmoid(20·cos(x, c_j) − 14), i.e. fires
    from cos 0.7 on, and p ≈ 1e-6 for an unrelated photo (|cos| ≈ 0.04 in 512-d)."""
    k, dim = centres.shape
    W = np.zeros((k, 2, dim), np.float32)
    W[:, 1] = 10 * centres
    W[:, 0] = -10 * centres
    B = np.tile(np.array([7.0, -7.0], np.float32), (k, 1))
    return W, B


def weak_heads(emb: np.ndarray, planted: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Heads trained the paper's way (train_linear_head) on 4 planted photos (+ jitter) vs 150 random photos. On random
    unit vectors a 500-step head stays unsure (p ≈ 0.5 ± 0.2 for unrelated photos), so nearly every (photo, head)
    pair clears the detector's 0.05 storage floor: the worst case for storing signals."""
    dim = emb.shape[1]
    weights, biases = [], []
    for j in range(k):
        pos = emb[planted[j][:4]][:, None, :] + rng.normal(size=(4, 8, dim)).astype(np.float32) * 0.02
        neg = emb[rng.choice(len(emb), 150, replace=False)]
        w, b, _ = train_linear_head(pos, neg, ObjectHeadConfig(seed=j))
        weights.append(w)
        biases.append(b)
    return np.stack(weights), np.stack(biases)


def time_best(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_detection(args: argparse.Namespace) -> dict:
    from engine.domain.concepts.registry import ConceptRegistry

    try:
        from engine.domain.concepts.detect import ConceptDetector
    except ImportError:
        ConceptDetector = None

    n, k, dim, space = args.photos, args.heads, 512, "ViT-B-32/random"
    rng = np.random.default_rng(0)
    emb, centres, planted = make_embeddings(n, k, dim, 50, rng)
    head_sets = {"confident": confident_heads(centres), "weak": weak_heads(emb, planted, k, rng)}
    tmp = Path(tempfile.mkdtemp(prefix="bench-heads-"))
    out: dict = {"photos": n, "heads": k, "detector": ConceptDetector is not None, "load_average": load_avg()}
    print(f"\n(b) detection: {k} object heads over {n:,} photos' stored embeddings ({dim}-d, random unit vectors, "
          f"50 photos planted near each head's direction); load average {load_avg()}")
    try:
        cat, ids = make_catalog(tmp / "library", emb, space)
        reg = ConceptRegistry(cat)
        cids = [reg.add_object(f"thing {j}", [int(ids[planted[j][0]])]).id for j in range(k)]
        for label, (W, B) in head_sets.items():
            for j, cid in enumerate(cids):
                reg.save_head(cid, Head("object", space, 0.5, {"classifier.weight": W[j], "classifier.bias": B[j]}))

            def loop(W=W, B=B) -> np.ndarray:
                res = np.empty((n, k), np.float32)
                for i in range(n):
                    x = emb[i]
                    for j in range(k):
                        z = W[j] @ x + B[j]
                        e = np.exp(z - z.max())
                        res[i, j] = e[1] / e.sum()
                return res

            def vectorised(W=W, B=B) -> np.ndarray:
                logits = emb @ W.reshape(2 * k, dim).T + B.reshape(-1)  # (n, 2k): one matmul
                return np.stack([softmax_p1(logits[:, 2 * j : 2 * j + 2]) for j in range(k)], axis=1)

            t_loop, p_loop = time_best(loop, 1)
            t_vec, ref = time_best(vectorised, args.reps)
            t_heads, p_heads = time_best(lambda W=W, B=B: score_heads(W, B, emb), args.reps)
            for name, p in (("loop", p_loop), ("score_heads", p_heads)):
                err = float(np.abs(p - ref).max())
                assert err < 1e-5, (name, err)
            fired = int((ref >= 0.5).sum())
            above_floor = int((ref >= 0.05).sum())
            table = [("loop: per photo, per head (numpy, in memory)", t_loop),
                     (f"vectorised: one ({n}, {dim}) @ ({dim}, {2 * k}) matmul + softmax (in memory)", t_vec),
                     (f"`score_heads`: logit differences, ({n}, {dim}) @ ({dim}, {k}) (in memory)", t_heads)]
            if ConceptDetector is not None:
                det = ConceptDetector(cat)
                t_c, (_, signals, _) = time_best(det.compute, args.reps)
                t_r, _ = time_best(det.run, max(1, args.reps // 2))
                # the detector agrees: same photos fire, same scores, all stored
                assert sum(s.fired for s in signals) == fired, (sum(s.fired for s in signals), fired)
                got = {(s.photo_id, s.concept_id): s.score for s in signals}
                for j, cid in enumerate(cids):
                    for i in np.nonzero(ref[:, j] >= 0.05)[0][:50]:
                        assert abs(got[(int(ids[i]), cid)] - ref[i, j]) < 1e-5
                assert cat.scalar("SELECT COUNT(*) FROM concept_signals WHERE fired = 1") == fired
                table += [("ConceptDetector.compute(): SQLite read + scoring + Signal objects", t_c),
                          ("ConceptDetector.run(): compute + store the signals", t_r)]
            print(f"\n{label} heads: {fired:,} (photo, head) pairs fire; {above_floor:,} of {n * k:,} pairs have "
                  f"p ≥ 0.05 (the detector stores those)")
            print("\n| method | seconds | vs loop |\n|---|---:|---:|")
            for name, sec in table:
                print(f"| {name} | {sec:.4f} | {t_loop / sec:.0f}× |")
            worst = max(sec for _, sec in table[1:])
            print(f"target < {TARGET_DETECT_S:g} s: {'met' if worst < TARGET_DETECT_S else 'NOT met'} "
                  f"(slowest of ours {worst:.3f} s)")
            out[label] = {"fired": fired, "stored": above_floor, "seconds": dict(table)}
        if ConceptDetector is None:
            print("engine.domain.concepts.detect.ConceptDetector is absent: only our vectorised functions were timed")
        cat.close()
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 paper steps, 4 views, 2,000 photos")
    ap.add_argument("--paper-steps", type=int, default=20, help="paper-way steps timed (extrapolated to 500)")
    ap.add_argument("--views", type=int, default=16, help="augmented views per positive (ours)")
    ap.add_argument("--photos", type=int, default=10_000, help="photos for detection")
    ap.add_argument("--heads", type=int, default=10, help="object heads for detection")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each fast detection method (best taken)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--skip-detection", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()
    if args.quick:
        args.paper_steps, args.views, args.photos = 5, 4, 2000
    out: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    if not args.skip_training:
        out["training"] = bench_training(args)
    if not args.skip_detection:
        out["detection"] = bench_detection(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
