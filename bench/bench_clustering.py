#!/usr/bin/env python3
"""Benchmark: face clustering (engine.domain.face_clustering.FaceClusterer) on 100,000 synthetic embeddings, against
scikit-learn's DBSCAN on the same data, with pairwise precision / recall / F1 against the true identities.

Data: L2-normalised embeddings (128-d like dlib's ResNet; --dim 512 for InsightFace's ArcFace) drawn as identity
clusters. Identity centres are a shared mean direction plus random spread (real face embeddings sit in a cone, not
all over the sphere); each face is its identity's centre plus Gaussian noise whose size varies per face (log-normal:
sharp and blurry faces). The noise is set from the backend's cluster_distance so that the median distance between
two faces of one person is --intra x cluster_distance, the median between two people --inter x cluster_distance;
the script prints the resulting distance distributions. Identity sizes follow a power law (a few people in
thousands of photos, most in a handful), plus --singletons strangers seen once; --lookalikes of the people
(relatives) are drawn next to another person, their faces straddling the threshold. Faces arrive shuffled (an
album in date order), one face per photo. The clean 80 % of faces (least noise) are "quality" faces, which may found
people.

Everything goes into a real catalog (a temporary Library; photos and faces rows written with SQL) and runs through
the real FaceClusterer:

  first clustering   n - --incremental faces (99,000) clustered from scratch: FaceClusterer(...) (loads FaceIndex
                     from the catalog) + run()
  incremental        the remaining faces (1,000) arrive in batches (half in batches of 10, half of 1), each batch
                     followed by a run(); runs alternate between two ways of calling it (so background load hits
                     both alike):
                     "kept"   a new FaceClusterer per run on the same catalog connection, as FaceStage.finish in a
                              long-lived pipeline (the app's worker, the watcher): the clustering state lives with
                              the connection and catches up from faces_log, reading O(new faces) rows;
                     "cold"   a new catalog connection per run (a one-shot `myvlm index`): the state is read whole
                     reported as ms per face, the constructor (state load / catch-up) and run() apart; --max-runs
                     runs of each are timed, the rest of the share goes in one last untimed run
  re-cluster         FaceClusterer(...).recluster() over all n faces (= a full clustering from scratch)
  DBSCAN             sklearn.cluster.DBSCAN(eps=cluster_distance, min_samples=3 (= MIN_CLUSTER_SIZE),
                     metric="cosine", algorithm="brute", n_jobs=-1) on the same n vectors (or on a random subsample,
                     ours re-clustered on the same subsample, when n > --dbscan-max)

Pairwise scores count, over all pairs of faces, pairs put together that belong together (contingency table of
true identity x predicted person, not O(n^2)); faces left unclustered (DBSCAN noise, faces without a person) are
singletons. Checks: the kept state's index holds exactly the catalog's faces, and the re-cluster is much better than
chance (F1 > 0.5).

    .venv/bin/python bench/bench_clustering.py             # 100,000 faces, 128-d
    .venv/bin/python bench/bench_clustering.py --quick     # 10,000 faces
    .venv/bin/python bench/bench_clustering.py --dim 512   # ArcFace-like, InsightFace thresholds
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.domain import face_clustering as clustering  # noqa: E402
from engine.domain.face_clustering import MIN_CLUSTER_SIZE, FaceClusterer  # noqa: E402
from engine.library import Library  # noqa: E402
from engine.models.faces.dlib_backend import DLIB_KEY, DLIB_THRESHOLDS  # noqa: E402
from engine.models.faces.insightface_backend import INSIGHTFACE_THRESHOLDS  # noqa: E402
from engine.storage.catalog import Catalog, now  # noqa: E402

CACHE = ROOT / ".cache" / "bench"


# -- synthetic identities -------------------------------------------------------------------------------------------

@dataclass
class Data:
    vecs: np.ndarray  # (n, dim) float32, unit rows, in arrival order
    labels: np.ndarray  # (n,) int64 true identity
    quality: np.ndarray  # (n,) bool
    identities: int
    relatives: np.ndarray  # (identities,) the identity each look-alike was drawn next to, -1 for none


def generate(n: int, dim: int, identities: int, alpha: float, singletons: float, intra: float, inter: float,
             spread: float, lookalikes: float, threshold: float, seed: int) -> Data:
    """intra / inter: median cosine distance between two faces of one identity / between two identities' faces."""
    rng = np.random.default_rng(seed)
    n_single = int(round(n * singletons))
    n_clu = n - n_single
    k = min(identities, n_clu)
    weights = np.arange(1, k + 1, dtype=np.float64) ** -alpha
    sizes = np.maximum(1, np.floor(weights / weights.sum() * n_clu)).astype(np.int64)
    over = int(sizes.sum()) - n_clu
    if over > 0:  # rounding the tiny ones up to 1 overshot: trim the largest
        sizes[0] -= over
    sizes[: n_clu - int(sizes.sum())] += 1  # hand out the remainder to the largest
    labels = np.concatenate([np.repeat(np.arange(k), sizes), k + np.arange(n_single)])
    n_ids = k + n_single
    # Distances on the unit sphere: a centre plus noise of norm s makes cos ~ 1/sqrt((1 + s_a^2)(1 + s_b^2)).
    # Between identities: centre_i = mean + tau * random, cos ~ 1 / (1 + tau^2), so tau^2 = D / (1 - D); the faces'
    # own noise adds to it, so take tau from what is left of `inter` after the intra part.
    s2 = intra / (1.0 - intra)  # median face noise^2 such that two median faces are `intra` apart
    d_centres = max(1e-6, 1.0 - (1.0 - inter) * (1.0 + s2))
    tau = np.sqrt(d_centres / max(1e-6, 1.0 - d_centres))
    mean = rng.standard_normal(dim)
    mean /= np.linalg.norm(mean)
    centres = mean + tau * rng.standard_normal((n_ids, dim)) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Look-alikes (siblings, parent and child): some people's centres sit next to another person's, at a centre
    # distance uniform in [0.3, 1.5] x cluster_distance, so their faces' distances straddle the threshold.
    n_rel = int(round(lookalikes * k))
    relatives = np.zeros(n_ids, dtype=np.int64) - 1
    if n_rel:
        rel = rng.choice(np.arange(1, k), size=min(n_rel, k - 1), replace=False)
        others = np.setdiff1d(np.arange(k), rel)
        parents = rng.choice(others, size=len(rel))
        d_rel = rng.uniform(0.3, 1.5, len(rel)) * threshold
        rho = np.sqrt(d_rel / (1.0 - d_rel))
        c = centres[parents] + rho[:, None] * rng.standard_normal((len(rel), dim)) / np.sqrt(dim)
        centres[rel] = c / np.linalg.norm(c, axis=1, keepdims=True)
        relatives[rel] = parents
    noise = np.sqrt(s2) * np.exp(spread * rng.standard_normal(n))  # per-face noise norm: sharp ... blurry
    vecs = centres[labels] + noise[:, None] * rng.standard_normal((n, dim)) / np.sqrt(dim)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    quality = noise <= np.quantile(noise, 0.8)
    order = rng.permutation(n)  # faces arrive in date order, not by person
    return Data(vecs[order].astype(np.float32), labels[order].astype(np.int64), quality[order], n_ids, relatives)


def distance_stats(d: Data, threshold: float, seed: int, pairs: int = 200_000) -> dict[str, float]:
    """Cosine distances of random same-identity pairs and random different-identity pairs."""
    rng = np.random.default_rng(seed + 1)
    order = np.argsort(d.labels, kind="stable")
    lab = d.labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    counts = np.diff(np.r_[starts, len(lab)])
    multi = counts >= 2
    # same identity: pick an identity weighted by its number of pairs, then two distinct members
    w = (counts * (counts - 1)).astype(np.float64) * multi
    ids = rng.choice(len(counts), size=pairs, p=w / w.sum())
    a = rng.integers(0, counts[ids])
    b = (a + 1 + rng.integers(0, counts[ids] - 1)) % counts[ids]
    ia, ib = order[starts[ids] + a], order[starts[ids] + b]
    same = 1.0 - np.einsum("ij,ij->i", d.vecs[ia], d.vecs[ib])
    ja, jb = rng.integers(0, len(d.labels), pairs), rng.integers(0, len(d.labels), pairs)
    keep = d.labels[ja] != d.labels[jb]
    diff = 1.0 - np.einsum("ij,ij->i", d.vecs[ja[keep]], d.vecs[jb[keep]])
    # look-alikes: random faces of a look-alike and of the person it was drawn next to
    rel = np.flatnonzero(d.relatives >= 0)
    rel_within, rel_median = 0.0, float("nan")
    if len(rel):
        r = rng.choice(rel, size=pairs)
        pos = np.searchsorted(lab, r)  # identity r's first face in `order` (every identity has one)
        pos_p = np.searchsorted(lab, d.relatives[r])
        cnt = counts[np.searchsorted(lab[starts], r)]
        cnt_p = counts[np.searchsorted(lab[starts], d.relatives[r])]
        fa = order[pos + rng.integers(0, cnt)]
        fb = order[pos_p + rng.integers(0, cnt_p)]
        rd = 1.0 - np.einsum("ij,ij->i", d.vecs[fa], d.vecs[fb])
        rel_within, rel_median = float((rd <= threshold).mean()), float(np.median(rd))
    return {
        "lookalike_median": rel_median, "lookalike_within": rel_within,
        "same_median": float(np.median(same)), "same_p90": float(np.quantile(same, 0.9)),
        "same_within": float((same <= threshold).mean()),
        "diff_median": float(np.median(diff)), "diff_p001": float(np.quantile(diff, 0.001)),
        "diff_within": float((diff <= threshold).mean()),
    }


# -- scores ---------------------------------------------------------------------------------------------------------

def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def pairwise_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Pairwise precision / recall / F1 of a clustering (pred < 0: unclustered, a singleton each)."""
    pred = np.asarray(pred, dtype=np.int64).copy()
    noise = pred < 0
    pred[noise] = pred.max(initial=0) + 1 + np.arange(int(noise.sum()))
    _, pred = np.unique(pred, return_inverse=True)
    _, truth = np.unique(truth, return_inverse=True)
    joint = truth.astype(np.int64) * (int(pred.max()) + 1) + pred
    tp = _pairs(np.unique(joint, return_counts=True)[1])
    predicted = _pairs(np.bincount(pred))
    actual = _pairs(np.bincount(truth))
    p = tp / predicted if predicted else 1.0
    r = tp / actual if actual else 1.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "clusters": int(len(np.unique(pred[~noise]))), "clustered": float((~noise).mean())}


def largest_split(truth: np.ndarray, pred: np.ndarray, top: int = 3) -> list[tuple[int, int, float]]:
    """For the `top` largest identities: (faces, people they were spread over, share in the biggest of them)."""
    sizes = np.bincount(truth)
    out = []
    for ident in np.argsort(-sizes, kind="stable")[:top]:
        got = pred[truth == ident]
        got = got[got >= 0]
        counts = np.unique(got, return_counts=True)[1] if len(got) else np.zeros(1, np.int64)
        out.append((int(sizes[ident]), int((counts > 0).sum()), float(counts.max() / sizes[ident])))
    return out


def _split_txt(split: list[tuple[int, int, float]]) -> str:
    return ", ".join(f"{n:,} in {k} ({100 * share:.0f}%)" for n, k, share in split)


# -- the catalog ----------------------------------------------------------------------------------------------------

class Album:
    """A temporary Library whose catalog gets one photo and one face per embedding, written with SQL."""

    def __init__(self, root: Path, backend: str):
        self.lib = Library(root)
        self.cat = self.lib.catalog
        self.backend = backend
        ts = now()
        with self.cat.write():
            self.folder = int(self.cat.conn.execute(
                "INSERT INTO folders(path, path_bytes, status, added_at) VALUES (?, ?, 'online', ?)",
                [str(root / "album"), str(root / "album").encode(), ts]).lastrowid)
        self.face_ids: list[int] = []  # catalog face id of each inserted row, in arrival order

    def add(self, vecs: np.ndarray, quality: np.ndarray) -> np.ndarray:
        """Insert these faces (one new photo each); returns their face ids."""
        ts = now()
        start = len(self.face_ids)
        ids = []
        with self.cat.write():
            conn = self.cat.conn
            for i, (v, q) in enumerate(zip(vecs, quality, strict=True)):
                name = f"IMG_{start + i:06d}.jpg"
                path = f"/album/{name}"
                pid = conn.execute(
                    "INSERT INTO photos(folder_id, path, path_bytes, name, kind, content_hash, status, added_at, "
                    "updated_at) VALUES (?, ?, ?, ?, 'image', ?, 'ok', ?, ?)",
                    [self.folder, path, path.encode(), name, f"{start + i:032x}", ts, ts]).lastrowid
                ids.append(conn.execute(
                    "INSERT INTO faces(photo_id, backend, x, y, w, h, score, quality, embedding, state, created_at, "
                    "updated_at) VALUES (?, ?, 0, 0, 120, 120, 0.9, ?, ?, 'unknown', ?, ?)",
                    [pid, self.backend, int(q), np.ascontiguousarray(v, np.float32).tobytes(), ts, ts]).lastrowid)
        self.face_ids.extend(ids)
        return np.asarray(ids, dtype=np.int64)

    def persons(self) -> np.ndarray:
        """Person of every inserted face, in arrival order (-1: none)."""
        got = {r[0]: r[1] for r in self.cat.conn.execute("SELECT id, person_id FROM faces")}
        return np.array([got[i] if got[i] is not None else -1 for i in self.face_ids], dtype=np.int64)

    def close(self) -> None:
        self.lib.close()


def clusterer(album: Album, dim: int, thresholds, cat: Catalog | None = None) -> tuple[FaceClusterer, float]:
    t0 = time.perf_counter()
    c = FaceClusterer(cat or album.cat, album.backend, dim, thresholds)
    return c, time.perf_counter() - t0


# -- DBSCAN ---------------------------------------------------------------------------------------------------------

def dbscan(vecs: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
    from sklearn.cluster import DBSCAN

    t0 = time.perf_counter()
    labels = DBSCAN(eps=eps, min_samples=MIN_CLUSTER_SIZE, metric="cosine", algorithm="brute",
                    n_jobs=-1).fit_predict(vecs)
    return labels, time.perf_counter() - t0


def profile_top(prof: cProfile.Profile, lines: int = 14) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(lines)
    text = out.getvalue()
    return text[text.find("   ncalls"):].rstrip()


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def rss_gb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    except Exception:  # noqa: BLE001
        return float("nan")


# -- main -----------------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="faces (default 100,000)")
    ap.add_argument("--dim", type=int, default=128, choices=(128, 512),
                    help="128: dlib (DLIB_THRESHOLDS); 512: ArcFace (INSIGHTFACE_THRESHOLDS)")
    ap.add_argument("--identities", type=int, default=0, help="people with 2+ faces (default n / 20)")
    ap.add_argument("--alpha", type=float, default=1.0, help="power law of identity sizes: size ~ rank^-alpha")
    ap.add_argument("--singletons", type=float, default=0.05, help="share of faces of strangers seen once")
    ap.add_argument("--intra", type=float, default=0.6,
                    help="median distance of two faces of one person, in units of cluster_distance (default 0.6)")
    ap.add_argument("--inter", type=float, default=3.0,
                    help="median distance of two people's faces, in units of cluster_distance (default 3.0)")
    ap.add_argument("--spread", type=float, default=0.3, help="log-normal sigma of the per-face noise")
    ap.add_argument("--lookalikes", type=float, default=0.1,
                    help="share of people drawn next to another person (relatives), default 0.1")
    ap.add_argument("--incremental", type=int, default=1000, help="faces added after the first clustering")
    ap.add_argument("--batches", default="10,1", help="batch sizes of the incremental faces (default 10,1)")
    ap.add_argument("--max-runs", type=int, default=8,
                    help="timed incremental runs per mode and batch size (default 8); the other faces of that batch "
                         "size's share are added in one last, untimed run")
    ap.add_argument("--dbscan-max", type=int, default=100_000,
                    help="run DBSCAN on a random subsample of this many faces when n is larger")
    ap.add_argument("--no-dbscan", action="store_true")
    ap.add_argument("--skip-first", action="store_true",
                    help="do not cluster the base faces (mark them looked at), and stop after the incremental runs: "
                         "their cost at sizes where a first clustering takes hours here")
    ap.add_argument("--exact-max", type=int, default=200_000,
                    help="also re-cluster with the exact flat index (the baseline of the inverted file) up to this "
                         "many faces (quadratic: hours at 1,000,000)")
    ap.add_argument("--profile", action="store_true", help="cProfile the re-cluster and one kept-state incremental run")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="10,000 faces, 200 incremental")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON (bench/results/ is git-ignored)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.incremental = min(args.n, 10_000), min(args.incremental, 200)
    batch_sizes = [int(b) for b in args.batches.split(",") if b.strip()]
    thresholds = DLIB_THRESHOLDS if args.dim == 128 else INSIGHTFACE_THRESHOLDS
    key = DLIB_KEY if args.dim == 128 else "insightface:buffalo_l"
    thr = thresholds.cluster_distance
    identities = args.identities or max(1, args.n // 20)

    t0 = time.perf_counter()
    data = generate(args.n, args.dim, identities, args.alpha, args.singletons, min(0.95, args.intra * thr),
                    min(0.98, args.inter * thr), args.spread, args.lookalikes, thr, args.seed)
    gen_s = time.perf_counter() - t0
    st = distance_stats(data, thr, args.seed)
    sizes = np.bincount(data.labels)
    n = args.n
    print(f"{n:,} faces of {data.identities - int(round(n * args.singletons)):,} people + "
          f"{int(round(n * args.singletons)):,} strangers seen once ({int((sizes >= MIN_CLUSTER_SIZE).sum()):,} with "
          f"{MIN_CLUSTER_SIZE}+ faces, largest {sizes.max():,}, {int((sizes == 1).sum()):,} with one face), dim "
          f"{args.dim}, {key} thresholds: cluster_distance {thr}; generated in {gen_s:.1f}s")
    print(f"  same person:  median distance {st['same_median']:.4f}, p90 {st['same_p90']:.4f}, "
          f"{100 * st['same_within']:.1f}% of pairs within cluster_distance")
    print(f"  look-alikes:  median distance {st['lookalike_median']:.4f}, {100 * st['lookalike_within']:.2f}% of "
          f"pairs within cluster_distance ({int((data.relatives >= 0).sum()):,} people drawn next to another)")
    print(f"  two people:   median distance {st['diff_median']:.4f}, p0.1 {st['diff_p001']:.4f}, "
          f"{100 * st['diff_within']:.4f}% of pairs within cluster_distance")
    print(f"  {os.cpu_count()} CPUs; load average {loadavg()}", flush=True)

    rows: list[tuple[str, str, str, str]] = []  # what, seconds, per face, scores
    out: dict = {"n": n, "dim": args.dim, "identities": data.identities, "threshold": thr, "distances": st,
                 "cpus": os.cpu_count()}
    incr = max(0, min(args.incremental, n - 1))
    base = n - incr

    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clustering-", dir=CACHE) as tmp:
        album = Album(Path(tmp) / "library", key)
        t0 = time.perf_counter()
        album.add(data.vecs[:base], data.quality[:base])
        insert_s = time.perf_counter() - t0
        print(f"\ninserted {base:,} photos + faces into the catalog in {insert_s:.1f}s", flush=True)

        # 1. first clustering of the base faces
        c, ctor_s = clusterer(album, args.dim, thresholds)
        if args.skip_first:  # the base faces count as looked at: what the incremental runs cost at this size
            with album.cat.write():
                album.cat.set_setting(c._marker_key(), {"seq": clustering._log_last(album.cat), "pending": []})
            print(f"first clustering skipped (--skip-first): state load {ctor_s:.2f}s; peak RSS {rss_gb():.2f} GB",
                  flush=True)
            rows.append((f"state load of {base:,} faces (first clustering skipped)", f"{ctor_s:.2f}",
                         f"{1000 * ctor_s / base:.3f}", ""))
            out["state_load_s"] = ctor_s
        else:
            rep = c.run()
            first = pairwise_scores(data.labels[:base], album.persons())
            print(f"first clustering of {base:,}: index load {ctor_s:.2f}s + run {rep.seconds:.2f}s; "
                  f"{rep.founded_people:,} people, {rep.joined:,} joined, {rep.deferred:,} deferred; "
                  f"F1 {first['f1']:.3f}", flush=True)
            rows.append((f"first clustering of {base:,} (index load + run)", f"{ctor_s + rep.seconds:.2f}",
                         f"{1000 * (ctor_s + rep.seconds) / base:.3f}", _fmt(first)))
            out["first"] = {"faces": base, "load_s": ctor_s, "run_s": rep.seconds, **rep.to_json(), **first}

        # 2. incremental faces: per batch size, runs alternate between the kept state (same connection) and a cold
        # one (a new connection), so background load hits both alike
        out["incremental"] = []
        shares = np.array_split(np.arange(base, n), len(batch_sizes)) if incr else []
        prof_incr = None
        for bsize, share in zip(batch_sizes, shares, strict=True):
            runs = [share[i:i + bsize] for i in range(0, len(share), bsize)]
            timed_runs = [r for r in runs[: 2 * args.max_runs] if len(r) == bsize]  # alternate: kept, cold, ...
            rest = share[sum(len(r) for r in timed_runs):]
            ctor_t = {"kept": 0.0, "cold": 0.0}
            run_t = {"kept": 0.0, "cold": 0.0}
            timed_faces = {"kept": 0, "cold": 0}
            for j, idx in enumerate(timed_runs + ([rest] if len(rest) else [])):
                timed = j < len(timed_runs)  # the rest goes in one last, untimed run
                mode = "cold" if timed and j % 2 else "kept"
                album.add(data.vecs[idx], data.quality[idx])
                profile = args.profile and timed and mode == "kept" and j >= 2 and prof_incr is None
                if profile:
                    prof_incr = cProfile.Profile()
                    prof_incr.enable()
                cold = Catalog(album.lib.paths) if mode == "cold" else None
                c, ct = clusterer(album, args.dim, thresholds, cold)
                rep = c.run()
                if cold is not None:
                    cold.close()
                if profile:
                    prof_incr.disable()
                if timed:
                    ctor_t[mode] += ct
                    run_t[mode] += rep.seconds
                    timed_faces[mode] += len(idx)
            kept = clusterer(album, args.dim, thresholds)[0]
            in_catalog = {r[0] for r in album.cat.conn.execute("SELECT id FROM faces WHERE embedding IS NOT NULL")}
            assert len(kept.index) == len(in_catalog) and set(kept.faces) == in_catalog
            for mode in ("kept", "cold"):
                tf = timed_faces[mode]
                if not tf:
                    print(f"incremental, batches of {bsize}: {len(share)} faces, too few to time")
                    break
                per = 1000 * (ctor_t[mode] + run_t[mode]) / tf
                load_ms, run_ms = 1000 * ctor_t[mode] / tf, 1000 * run_t[mode] / tf
                print(f"incremental, {mode} state, batches of {bsize}: {tf} faces in {tf // bsize} runs: "
                      f"{per:.2f} ms/face (state {load_ms:.2f} + run {run_ms:.2f})", flush=True)
                what = ("same connection: state kept, catches up from the log" if mode == "kept"
                        else "new connection per run: state read whole")
                rows.append((f"incremental, batches of {bsize}: {what}", f"{ctor_t[mode] + run_t[mode]:.3f}",
                             f"{per:.2f}", f"state {load_ms:.2f} + run {run_ms:.2f} ms/face; {tf} faces"))
                out["incremental"].append({"mode": mode, "batch": bsize, "faces": tf, "load_s": ctor_t[mode],
                                           "run_s": run_t[mode], "ms_per_face": per})
        out["peak_rss_gb_after_incremental"] = rss_gb()
        if args.skip_first:
            album.close()
            print(f"\n{'what':<62} {'seconds':>8} {'ms/face':>8}  notes")
            for what, secs, per, note in rows:
                print(f"{what:<62} {secs:>8} {per:>8}  {note}")
            print(f"peak RSS {rss_gb():.2f} GB; load average now {loadavg()}")
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(out, indent=2))
            return 0
        grown = pairwise_scores(data.labels, album.persons())
        rows.append((f"after the incremental faces: all {n:,}", "", "", _fmt(grown)))
        out["grown"] = grown

        # 3. re-cluster everything
        prof = cProfile.Profile() if args.profile else None
        if prof:
            prof.enable()
        c, ctor_s = clusterer(album, args.dim, thresholds)
        rep = c.recluster()
        if prof:
            prof.disable()
        persons = album.persons()
        full = pairwise_scores(data.labels, persons)
        full["largest"] = largest_split(data.labels, persons)
        print(f"re-cluster of {n:,}: index load {ctor_s:.2f}s + recluster {rep.seconds:.2f}s; "
              f"{rep.founded_people:,} people, F1 {full['f1']:.3f}", flush=True)
        rows.append((f"ours: re-cluster all {n:,} (index load + recluster)", f"{ctor_s + rep.seconds:.2f}",
                     f"{1000 * (ctor_s + rep.seconds) / n:.3f}", _fmt(full)))
        out["recluster"] = {"load_s": ctor_s, "run_s": rep.seconds, **rep.to_json(), **full}
        assert full["f1"] > 0.5, full

        # 3b. the same re-cluster with the exact (flat) index, for the inverted file's cost in F1 and its gain in time
        if clustering.IVF_MIN <= n <= args.exact_max:
            ivf_min = clustering.IVF_MIN
            clustering.IVF_MIN = 10**12
            clustering.forget_state(album.cat, key)
            try:
                c, ctor_s = clusterer(album, args.dim, thresholds)
                rep = c.recluster()
            finally:
                clustering.IVF_MIN = ivf_min
                clustering.forget_state(album.cat, key)
            exact = pairwise_scores(data.labels, album.persons())
            print(f"re-cluster of {n:,} with the exact flat index: load {ctor_s:.2f}s + recluster {rep.seconds:.2f}s; "
                  f"F1 {exact['f1']:.3f}", flush=True)
            rows.append((f"baseline: re-cluster all {n:,} with the exact flat index", f"{ctor_s + rep.seconds:.2f}",
                         f"{1000 * (ctor_s + rep.seconds) / n:.3f}", _fmt(exact)))
            out["recluster_exact"] = {"load_s": ctor_s, "run_s": rep.seconds, **rep.to_json(), **exact}
        out["peak_rss_gb_after_recluster"] = rss_gb()

        # 4. DBSCAN
        if not args.no_dbscan:
            sub = np.arange(n)
            if n > args.dbscan_max:
                sub = np.sort(np.random.default_rng(args.seed + 2).choice(n, args.dbscan_max, replace=False))
            labels, db_s = dbscan(data.vecs[sub], thr)
            db = pairwise_scores(data.labels[sub], labels)
            db["largest"] = largest_split(data.labels[sub], labels)
            what = f"scikit-learn DBSCAN, {len(sub):,} faces{'' if len(sub) == n else ' (random subsample)'}"
            print(f"{what}: {db_s:.2f}s, F1 {db['f1']:.3f}; peak RSS {rss_gb():.1f} GB", flush=True)
            rows.append((what, f"{db_s:.2f}", f"{1000 * db_s / len(sub):.3f}", _fmt(db)))
            out["dbscan"] = {"faces": len(sub), "seconds": db_s, **db}
            if len(sub) < n:  # ours on the same subsample, for comparable scores
                sub_album = Album(Path(tmp) / "sub-library", key)
                sub_album.add(data.vecs[sub], data.quality[sub])
                c, ctor_s = clusterer(sub_album, args.dim, thresholds)
                rep = c.run()
                s = pairwise_scores(data.labels[sub], sub_album.persons())
                rows.append((f"ours on the same {len(sub):,}", f"{ctor_s + rep.seconds:.2f}",
                             f"{1000 * (ctor_s + rep.seconds) / len(sub):.3f}", _fmt(s)))
                out["ours_subsample"] = {"seconds": ctor_s + rep.seconds, **s}
                sub_album.close()
        album.close()

    print(f"\n{'what':<62} {'seconds':>8} {'ms/face':>8}  scores / notes")
    print("-" * 140)
    for what, secs, per, note in rows:
        print(f"{what:<62} {secs:>8} {per:>8}  {note}")
    print("-" * 140)
    print(f"largest identities -> faces in how many people (share in the biggest): ours {_split_txt(full['largest'])}"
          + (f"; DBSCAN {_split_txt(out['dbscan']['largest'])}" if "dbscan" in out else ""))
    if "dbscan" in out:
        same = out.get("ours_subsample") or {"seconds": out["recluster"]["load_s"] + out["recluster"]["run_s"],
                                             "f1": out["recluster"]["f1"]}
        on = f" on the same {out['dbscan']['faces']:,}-face subsample" if "ours_subsample" in out else ""
        print(f"ours vs DBSCAN{on}: DBSCAN time / ours {out['dbscan']['seconds'] / same['seconds']:.2f}x, "
              f"F1 {same['f1']:.3f} vs {out['dbscan']['f1']:.3f}. Load average now {loadavg()}.")
    print(f"peak RSS: {out.get('peak_rss_gb_after_incremental', float('nan')):.2f} GB after the incremental runs, "
          f"{out.get('peak_rss_gb_after_recluster', float('nan')):.2f} GB after the re-clusters, {rss_gb():.2f} GB "
          f"at the end (DBSCAN included). Load average now {loadavg()}.")
    if args.profile:
        print("\ncProfile, re-cluster (by own time):\n" + profile_top(prof))
        if prof_incr is not None:
            print("\ncProfile, one kept-state incremental run (by own time):\n" + profile_top(prof_incr))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def _fmt(s: dict) -> str:
    return (f"P {s['precision']:.3f} R {s['recall']:.3f} F1 {s['f1']:.3f}; {s['clusters']:,} clusters, "
            f"{100 * s['clustered']:.1f}% clustered")


if __name__ == "__main__":
    sys.exit(main())
