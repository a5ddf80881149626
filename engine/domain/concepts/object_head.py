"""Object concept heads: the paper's 2-way linear classifier on L2-normalised CLIP image features.

The paper (docs/method.md §3) trains `Linear(D, 2)` on ~4 positives and ~150 negatives with class-balanced
batches of 16, cross-entropy, AdamW (lr 1e-3, wd 0.01), a cosine schedule over 500 steps down to 5e-6, gradient
clipping at 0.1 and flip / ±30° rotation augmentation, running CLIP on the augmented images at every step. It fires
when softmax p(concept) >= 0.5.

Ours, so that training takes seconds on a CPU and needs no web images:
- the CLIP features of a fixed number of augmented views of each positive are computed once (one batched encode)
  and cached (in memory, and on disk in the concept's folder, keyed by the encoder's space); the 500 steps then run
  on cached features only;
- negatives come from the user's own album, from the CLIP embeddings the clip stage already stored: the nearest
  neighbours of the positives that the user did not mark, plus random photos, plus the concept's explicit negative
  examples and, optionally, the images of a negatives folder;
- after training, precision and recall are measured on what training did not see: marked photos beyond the training
  positives and album photos not used as training negatives (leave-one-out over the positives when the user marked
  only a few). Unmarked album photos count as negatives: a photo of the concept the user did not mark would count
  as a false positive, so precision is a lower bound.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.domain.concepts.registry import (
    OBJECT,
    ConceptError,
    ConceptRegistry,
    Head,
    NotIndexedYet,
    photo_not_indexed,
    softmax_p1,
)
from engine.errors import Cancelled
from engine.ingest.images import IMAGE_EXTENSIONS, decode
from engine.progress import Progress, ProgressFn, report
from engine.storage import paths as P
from engine.storage.catalog import Catalog

log = logging.getLogger(__name__)

VIEWS_FILE = "views.safetensors"
AUG_VERSION = 1  # bump when `augment` changes: cached views are recomputed
WORK_SIDE = 512  # images are shrunk to this before augmenting: CLIP sees 224 px anyway
MIN_HELDOUT_SHARE = 0.2  # small albums: keep this share of the candidate negatives for evaluation



class TrainingCancelled(Cancelled):
    """Training stopped because `cancel` was set; nothing was saved."""


@dataclass
class ObjectHeadConfig:
    positives: int = 4  # training positives (the paper's 4); further marked photos are held out for evaluation
    views: int = 16  # augmented views per positive, the un-augmented one included
    steps: int = 500
    batch_size: int = 16  # half positives, half negatives
    lr: float = 1e-3
    weight_decay: float = 0.01
    final_lr: float = 5e-6
    grad_clip: float = 0.1  # max gradient norm
    max_rotation: float = 30.0  # degrees, either way
    flip: bool = True
    threshold: float = 0.5  # fires when p(concept) >= threshold
    near_negatives: int = 100  # nearest unmarked album photos to the positives
    random_negatives: int = 50  # plus this many random album photos
    seed: int = 0


# -- augmentation ----------------------------------------------------------------------------------------------------

def rotate_filled(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate about the centre, same size and scale; the corners the rotation uncovers are filled with the picture
    mirrored at its edges (not black as torchvision's default, and not a zoomed crop, which at ±30° on a 4:3 photo
    keeps only 42 % of the picture and can cut away an off-centre subject)."""
    w, h = img.size
    t = math.radians(degrees)
    c, s = abs(math.cos(t)), abs(math.sin(t))
    px = math.ceil((w * c + h * s - w) / 2) + 2
    py = math.ceil((w * s + h * c - h) / 2) + 2
    padded = Image.fromarray(np.pad(np.asarray(img), ((py, py), (px, px), (0, 0)), mode="symmetric"))
    rotated = padded.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False)
    return rotated.crop((px, py, px + w, py + h))


def augment(image: Image.Image, n: int, rng: np.random.Generator, max_rotation: float = 30.0,
            flip: bool = True) -> list[Image.Image]:
    """`n` views of an image: view 0 is the image itself; the others are randomly flipped (p = 0.5) and rotated by
    up to ±max_rotation degrees, keeping size and scale; the uncovered corners are filled by mirroring the picture
    at its edges, so no empty (black) corners enter the features. Deterministic for a given generator state."""
    image = image.convert("RGB")
    views = [image]
    for _ in range(max(0, n - 1)):
        view = image
        if flip and rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        angle = float(rng.uniform(-max_rotation, max_rotation)) if max_rotation > 0 else 0.0
        if abs(angle) > 1e-3:
            view = rotate_filled(view, angle)
        views.append(view)
    return views[:n] if n > 0 else []


# -- the linear head -------------------------------------------------------------------------------------------------

def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def train_linear_head(pos: np.ndarray, neg: np.ndarray, config: ObjectHeadConfig | None = None,
                      progress: ProgressFn | None = None,
                      cancel: threading.Event | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train `Linear(D, 2)` (class 1 = the concept) on cached features, the paper's way.

    pos: (n_pos, V, D) features of V views of each positive (or (n_pos, D): one view each); neg: (n_neg, D).
    Every step draws a class-balanced batch: batch_size/2 views picked uniformly from all cached positive views and
    batch_size/2 negatives, with replacement. Cross-entropy, AdamW, cosine schedule to `final_lr` over `steps`,
    gradient norm clipped. Deterministic for a given seed (CPU, its own generators; global RNG state untouched).
    progress gets Progress("training", step, steps) every 25 steps and at the end; `cancel` is checked at every step
    and raises TrainingCancelled.
    Returns (weight (2, D) float32, bias (2,) float32, info).
    """
    import torch

    cfg = config or ObjectHeadConfig()
    pos = np.asarray(pos, dtype=np.float32)
    if pos.ndim == 2:
        pos = pos[:, None, :]
    neg = np.asarray(neg, dtype=np.float32)
    if pos.ndim != 3 or pos.shape[0] == 0 or pos.shape[1] == 0:
        raise ValueError("train_linear_head needs at least one positive")
    if neg.ndim != 2 or neg.shape[0] == 0:
        raise ValueError("train_linear_head needs at least one negative")
    dim = pos.shape[2]
    if neg.shape[1] != dim:
        raise ValueError(f"positives have dimension {dim}, negatives {neg.shape[1]}")

    t0 = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    pos_flat = torch.from_numpy(_normalise(pos.reshape(-1, dim)))
    neg_t = torch.from_numpy(_normalise(neg))
    n_pos_b = max(1, cfg.batch_size // 2)
    n_neg_b = max(1, cfg.batch_size - n_pos_b)
    # every batch's indices drawn up front: one generator call instead of 2 × steps
    pos_idx = torch.from_numpy(rng.integers(0, pos_flat.shape[0], size=(cfg.steps, n_pos_b)))
    neg_idx = torch.from_numpy(rng.integers(0, neg_t.shape[0], size=(cfg.steps, n_neg_b)))
    targets = torch.cat([torch.ones(n_pos_b, dtype=torch.long), torch.zeros(n_neg_b, dtype=torch.long)])

    # nn.Linear's default initialisation, U(-1/sqrt(D), 1/sqrt(D)), from our own generator
    bound = 1.0 / math.sqrt(dim)
    weight = torch.nn.Parameter(torch.from_numpy(rng.uniform(-bound, bound, (2, dim)).astype(np.float32)))
    bias = torch.nn.Parameter(torch.from_numpy(rng.uniform(-bound, bound, (2,)).astype(np.float32)))
    params = [weight, bias]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps), eta_min=cfg.final_lr)

    loss_v = float("nan")
    report_every = 25
    threads = torch.get_num_threads()
    # (16, D) @ (D, 2) gains nothing from threads, and on a busy machine OpenMP's hand-offs cost ~15 ms a step
    torch.set_num_threads(1)
    try:
        for step in range(cfg.steps):
            if _cancelled(cancel):
                raise TrainingCancelled(f"cancelled at step {step} of {cfg.steps}")
            x = torch.cat([pos_flat[pos_idx[step]], neg_t[neg_idx[step]]])
            logits = torch.nn.functional.linear(x, weight, bias)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == cfg.steps):
                progress(Progress("training", step + 1, cfg.steps))
        if cfg.steps:
            loss_v = float(loss.detach())
    finally:
        torch.set_num_threads(threads)

    w = weight.detach().numpy().astype(np.float32).copy()
    b = bias.detach().numpy().astype(np.float32).copy()
    p_pos = score(w, b, pos_flat.numpy())
    p_neg = score(w, b, neg_t.numpy())
    info = {
        "steps": cfg.steps,
        "final_loss": loss_v,
        "train_positive_accuracy": float(np.mean(p_pos >= cfg.threshold)),
        "train_negative_accuracy": float(np.mean(p_neg < cfg.threshold)),
        "seconds": time.perf_counter() - t0,
    }
    return w, b, info


def score(weight: np.ndarray, bias: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """p(concept) (n,) of features (n, D) under one head (weight (2, D), bias (2,))."""
    feats = np.asarray(feats, dtype=np.float32).reshape(-1, np.asarray(weight).shape[1])
    return softmax_p1(feats @ np.asarray(weight, np.float32).T + np.asarray(bias, np.float32))


def score_heads(weights: np.ndarray, biases: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """p(concept) (n, k) of features (n, D) under k heads at once (weights (k, 2, D), biases (k, 2)): one matmul.

    Only the logit difference matters for a 2-way softmax: p1 = sigmoid(l1 - l0), so each head is one column."""
    weights = np.asarray(weights, np.float32)
    biases = np.asarray(biases, np.float32)
    if weights.shape[0] == 0:
        return np.zeros((len(feats), 0), np.float32)
    dw = (weights[:, 1, :] - weights[:, 0, :]).T  # (D, k)
    db = biases[:, 1] - biases[:, 0]  # (k,)
    z = np.asarray(feats, np.float32) @ dw + db
    # stable sigmoid
    out = np.empty_like(z)
    posm = z >= 0
    out[posm] = 1.0 / (1.0 + np.exp(-z[posm]))
    ez = np.exp(z[~posm])
    out[~posm] = ez / (1.0 + ez)
    return out


# -- training a concept's head from the library -------------------------------------------------------------------------

@dataclass
class _Example:
    key: str  # identifies the pixels: cache key
    label: str  # for messages
    photo_id: int | None
    load: Callable[[], Image.Image]


def _file_key(path: Path) -> str:
    st = path.stat()
    return "file:" + hashlib.sha1(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:20]


def _open_image(path: Path) -> Image.Image:
    return decode(str(path), max_side=WORK_SIDE * 2).image


def _shrink(img: Image.Image) -> Image.Image:
    img = img.convert("RGB")
    if max(img.size) > WORK_SIDE:
        img = img.copy()
        img.thumbnail((WORK_SIDE, WORK_SIDE), Image.Resampling.BICUBIC)
    return img


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return precision, recall


class ObjectHeadTrainer:
    """Trains an object concept's head from its marked photos and the album's stored CLIP embeddings.

    One per thread (it holds a catalog). Augmented-view features are cached in memory (across calls) and on disk
    in the concept's folder (`views.safetensors`, keyed by the encoder's space and the augmentation settings)."""

    def __init__(self, catalog: Catalog, encoder, config: ObjectHeadConfig | None = None):
        self.catalog = catalog
        self.encoder = encoder
        self.config = config or ObjectHeadConfig()
        self.registry = ConceptRegistry(catalog)
        self._views: dict[str, np.ndarray] = {}  # cache key -> (V, D)
        self._plain: dict[str, np.ndarray] = {}  # cache key -> (D,) of the un-augmented image (negatives folder)
        self._cache = None

    # -- what the concept is made of --------------------------------------------------------------------------------

    @property
    def _image_cache(self):
        if self._cache is None:
            from engine.ingest.image_cache import ImageCache

            self._cache = ImageCache(self.catalog.paths)
        return self._cache

    def _example(self, concept_id: int, row: dict[str, Any]) -> _Example:
        if row.get("photo_id") is not None:
            if row.get("path_bytes") is None or not row.get("content_hash"):
                raise photo_not_indexed(row["photo_id"])
            src, chash, rot = P.to_fs(row["path_bytes"]), row["content_hash"], int(row.get("user_rotation") or 0)
            return _Example(f"photo:{chash}:{rot % 360}", P.display(row["path_bytes"]), int(row["photo_id"]),
                            lambda: self._image_cache.preview(src, chash, rot))
        path = Path(row["path"])
        if not path.is_absolute():
            path = self.registry.folder(concept_id) / path
        if not path.exists():
            raise ConceptError(f"the imported example {path} is missing")
        return _Example(_file_key(path), str(path), None, lambda: _open_image(path))

    def _aug_signature(self) -> str:
        c = self.config
        return f"{self.encoder.key}|v{c.views}|r{c.max_rotation:g}|f{int(c.flip)}|s{c.seed}|a{AUG_VERSION}|w{WORK_SIDE}"

    def _view_features(self, concept_id: int, examples: list[_Example], progress: ProgressFn | None,
                       cancel: threading.Event | None) -> np.ndarray:
        """(n, V, D) features of V augmented views of each example; computed once, then cached."""
        sig = self._aug_signature()
        disk = self._load_disk_views(concept_id, sig)
        todo = [e for e in examples if f"{sig}#{e.key}" not in self._views and e.key not in disk]
        for e in examples:
            if e.key in disk and f"{sig}#{e.key}" not in self._views:
                self._views[f"{sig}#{e.key}"] = disk[e.key]
        V = self.config.views
        for i, e in enumerate(todo):
            if _cancelled(cancel):
                raise TrainingCancelled("cancelled while computing the features of the marked photos")
            report(progress, "views", i, len(todo))
            try:
                full = e.load().convert("RGB")
            except ConceptError:
                raise
            except Exception as exc:
                raise ConceptError(f"cannot read {e.label}: {exc}") from exc
            rng = np.random.default_rng([self.config.seed, zlib.crc32(e.key.encode())])
            views = augment(_shrink(full), V, rng, self.config.max_rotation, self.config.flip)
            if views:
                views[0] = full  # the un-augmented view exactly as the clip stage sees the photo (its preview)
            self._views[f"{sig}#{e.key}"] = self.encoder.encode_images(views).astype(np.float32)
        if todo:
            report(progress, "views", len(todo), len(todo))
        if todo:
            self._save_disk_views(concept_id, sig, {e.key: self._views[f"{sig}#{e.key}"] for e in examples})
        return np.stack([self._views[f"{sig}#{e.key}"] for e in examples])

    def _load_disk_views(self, concept_id: int, sig: str) -> dict[str, np.ndarray]:
        path = self.registry.folder(concept_id) / VIEWS_FILE
        if not path.exists():
            return {}
        try:
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
            if meta.get("signature") != sig:
                return {}
            return dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - a broken cache is recomputed
            log.warning("ignoring the view cache %s: %s", path, exc)
            return {}

    def _save_disk_views(self, concept_id: int, sig: str, views: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save_file

        path = self.registry.folder(concept_id) / VIEWS_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({k: np.ascontiguousarray(v, np.float32) for k, v in views.items()}, str(tmp),
                      metadata={"signature": sig})
            tmp.replace(path)
        except OSError as exc:  # the cache is a nicety
            log.warning("cannot write the view cache %s: %s", path, exc)

    def _folder_features(self, folder: Path, progress: ProgressFn | None, cancel: threading.Event | None
                         ) -> np.ndarray:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ConceptError(f"negatives folder {folder} is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ConceptError(f"negatives folder {folder} holds no images")
        keys = [_file_key(f) for f in files]
        todo = [(f, k) for f, k in zip(files, keys, strict=True) if f"{self.encoder.key}#{k}" not in self._plain]
        bs = 32
        for i in range(0, len(todo), bs):
            if _cancelled(cancel):
                raise TrainingCancelled("cancelled while reading the negatives folder")
            report(progress, "negatives folder", i, len(todo))
            chunk, imgs = [], []
            for f, k in todo[i : i + bs]:
                try:
                    imgs.append(_shrink(_open_image(f)))
                    chunk.append(k)
                except Exception as exc:  # noqa: BLE001 - one unreadable file does not stop training
                    log.warning("negatives folder: skipping %s: %s", f, exc)
            if imgs:
                for k, v in zip(chunk, self.encoder.encode_images(imgs), strict=True):
                    self._plain[f"{self.encoder.key}#{k}"] = v
        got = [self._plain[f"{self.encoder.key}#{k}"] for k in keys if f"{self.encoder.key}#{k}" in self._plain]
        if not got:
            raise ConceptError(f"no image of the negatives folder {folder} could be read")
        return np.stack(got).astype(np.float32)

    # -- training ---------------------------------------------------------------------------------------------------

    def train(self, concept_id: int, negatives_folder: str | os.PathLike | None = None,
              progress: ProgressFn | None = None, cancel: threading.Event | None = None
              ) -> tuple[Head, dict[str, Any]]:
        """Train the concept's head; returns (Head, metrics). The caller stores it with `registry.save_head`.

        progress gets Progress(phase, done, total) with phase "views" / "negatives folder" / "training" /
        "evaluation"; setting `cancel` raises TrainingCancelled."""
        cfg = self.config
        t_start = time.perf_counter()
        concept = self.registry.get(concept_id)
        if concept.kind != OBJECT:
            raise ConceptError(f"{concept.name!r} is a {concept.kind}: only object concepts have a trained head")
        pos_rows = self.registry.examples(concept.id, "positive")
        if not pos_rows:
            raise ConceptError(f"{concept.name!r} has no marked photos: mark at least one photo that shows it")

        ids, album = self._album_matrix()
        id_row = {int(pid): i for i, pid in enumerate(ids)}

        positives = [self._example(concept.id, r) for r in pos_rows]
        # the marked photos, and any copy of them (same content), are never negatives
        pos_hashes = {r["content_hash"] for r in pos_rows if r.get("content_hash")}
        excluded = {int(r["photo_id"]) for r in pos_rows if r.get("photo_id") is not None}
        if pos_hashes:
            hs = sorted(pos_hashes)
            for i in range(0, len(hs), 500):
                chunk = hs[i : i + 500]
                excluded.update(int(r["id"]) for r in self.catalog.query(
                    f"SELECT id FROM photos WHERE content_hash IN ({','.join('?' * len(chunk))})", chunk))

        # explicit negatives: always in training
        explicit: list[np.ndarray] = []
        explicit_ids: set[int] = set()
        to_encode: list[_Example] = []
        for r in self.registry.examples(concept.id, "negative"):
            pid = r.get("photo_id")
            if pid is not None and int(pid) in excluded:
                continue  # marked both ways: positive wins
            if pid is not None and int(pid) in id_row:
                explicit.append(album[id_row[int(pid)]])
                explicit_ids.add(int(pid))
            else:
                to_encode.append(self._example(concept.id, r))
                if pid is not None:
                    explicit_ids.add(int(pid))
        if to_encode:
            imgs = [_shrink(e.load()) for e in to_encode]
            explicit.extend(self.encoder.encode_images(imgs))
        folder_feats = (self._folder_features(Path(negatives_folder), progress, cancel)
                        if negatives_folder is not None else np.zeros((0, album.shape[1]), np.float32))

        # split the marked photos: the first `positives` train, the rest are held out
        n_train = min(cfg.positives, len(positives)) if cfg.positives > 0 else len(positives)
        leave_one_out = cfg.positives <= 0 or len(positives) <= cfg.positives
        train_ex = positives if leave_one_out else positives[:n_train]
        t_views = time.perf_counter()
        views = self._view_features(concept.id, train_ex, progress, cancel)  # (n_train, V, D)
        views_seconds = time.perf_counter() - t_views
        held_feats = np.zeros((0, album.shape[1]), np.float32)
        if not leave_one_out:
            held_feats = self._plain_features(positives[n_train:], id_row, album)

        # album negatives: nearest unmarked neighbours of the positives' mean, plus random others
        cand = np.array([i for i, pid in enumerate(ids) if int(pid) not in excluded and int(pid) not in explicit_ids],
                        dtype=np.int64)
        rng = np.random.default_rng(cfg.seed)
        want = cfg.near_negatives + cfg.random_negatives
        if len(cand) and len(cand) - want < MIN_HELDOUT_SHARE * len(cand):
            # a small album: keep some candidates back, or nothing would be left to measure precision on
            scale = (1 - MIN_HELDOUT_SHARE) * len(cand) / max(1, want)
            n_near, n_rand = int(cfg.near_negatives * scale), int(cfg.random_negatives * scale)
            if n_near + n_rand == 0 and not explicit and not len(folder_feats):
                n_near = 1
        else:
            n_near, n_rand = cfg.near_negatives, cfg.random_negatives
        train_rows = np.zeros(0, np.int64)
        if len(cand):
            centre = _normalise(views[:, 0, :].mean(axis=0))
            sims = album[cand] @ centre
            order = cand[np.argsort(-sims, kind="stable")]
            near = order[:n_near]
            rest = order[n_near:]
            rand = rng.choice(rest, size=min(n_rand, len(rest)), replace=False) if len(rest) and n_rand else rest[:0]
            train_rows = np.concatenate([near, np.sort(rand)])
        held_rows = np.setdiff1d(cand, train_rows)
        negs = [album[train_rows]]
        if explicit:
            negs.append(np.asarray(explicit, np.float32).reshape(-1, album.shape[1]))
        if len(folder_feats):
            negs.append(folder_feats)
        neg_feats = np.concatenate(negs).astype(np.float32)
        if not len(neg_feats):
            raise ConceptError(
                f"{concept.name!r} has nothing to learn what it is not: the album holds no other photos with CLIP "
                "embeddings. Add more photos to the library, or give a negatives folder.")
        held_neg = album[held_rows]

        t_train = time.perf_counter()
        weight, bias, info = train_linear_head(views, neg_feats, cfg, progress, cancel)
        train_seconds = time.perf_counter() - t_train

        # evaluation on what training did not see
        if leave_one_out:
            method = "leave-one-out"
            tp = fp = fn = 0
            n = len(positives)
            if n >= 2:
                for k in range(n):
                    if _cancelled(cancel):
                        raise TrainingCancelled("cancelled during evaluation")
                    report(progress, "evaluation", k, n)
                    rest_views = np.delete(views, k, axis=0)
                    w_k, b_k, _ = train_linear_head(rest_views, neg_feats, cfg, None, cancel)
                    hit = bool(score(w_k, b_k, views[k, 0])[0] >= cfg.threshold)
                    tp += hit
                    fn += not hit
                    if len(held_neg):
                        fp += int(np.sum(score(w_k, b_k, held_neg) >= cfg.threshold))
                report(progress, "evaluation", n, n)
                pos_held = n
            else:
                method = "none"  # one marked photo: nothing to leave out
                pos_held = 0
                if len(held_neg):
                    fp = int(np.sum(score(weight, bias, held_neg) >= cfg.threshold))
            folds = max(1, n if n >= 2 else 1)
            fpr = fp / (folds * len(held_neg)) if len(held_neg) else None
        else:
            method = "heldout"
            p_pos = score(weight, bias, held_feats) if len(held_feats) else np.zeros(0)
            p_neg = score(weight, bias, held_neg) if len(held_neg) else np.zeros(0)
            tp = int(np.sum(p_pos >= cfg.threshold))
            fn = len(p_pos) - tp
            fp = int(np.sum(p_neg >= cfg.threshold))
            pos_held = len(held_feats)
            fpr = fp / len(held_neg) if len(held_neg) else None
        precision, recall = _prf(tp, fp, fn)
        metrics: dict[str, Any] = {
            "precision": precision,
            "recall": recall,
            "false_positive_rate": fpr,
            "positives_heldout": pos_held,
            "negatives_heldout": len(held_neg),
            "method": method,
            "positives_train": len(views),
            "negatives_train": len(neg_feats),
            "negatives_album": len(train_rows),
            "negatives_explicit": len(explicit),
            "negatives_folder": len(folder_feats),
            "views": cfg.views,
            "steps": cfg.steps,
            "threshold": cfg.threshold,
            "train_positive_accuracy": info["train_positive_accuracy"],
            "train_negative_accuracy": info["train_negative_accuracy"],
            "train_seconds": train_seconds,
            "views_seconds": views_seconds,
            "total_seconds": time.perf_counter() - t_start,
            "config": asdict(cfg),
        }
        head = Head(kind=OBJECT, space=self.encoder.key, threshold=cfg.threshold,
                    tensors={"classifier.weight": weight, "classifier.bias": bias})
        log.info("object head for %r: %s positives, %s negatives, precision %s recall %s (%s)", concept.name,
                 len(views), len(neg_feats), precision, recall, method)
        return head, metrics

    def _album_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        from engine.storage.vectors import load_clip_matrix

        ids, album = load_clip_matrix(self.catalog, self.encoder.key, self.encoder.dim)
        if len(ids):
            return ids, np.asarray(album, np.float32)
        other = self.catalog.query("SELECT model, COUNT(*) AS n FROM clip_embeddings GROUP BY model")
        reason = self.encoder.missing_reason()
        msg = f"no photo has a CLIP embedding in {self.encoder.key} yet, and object heads learn from them. "
        in_app = f"pets and things are learned from CLIP features, and no photo has them for {self.encoder.key} yet. "
        if reason:
            msg += reason + " Then run `myvlm index` (the clip stage embeds every photo)."
            in_app += "Download the CLIP model in Settings ▸ Models: the photos get their features at once."
        else:
            msg += "Run `myvlm index` (or `myvlm index --stage clip`) so the clip stage embeds every photo, then train."
            in_app += "Press Index Now so that every photo gets them, then try again."
        if other:
            made = ", ".join(f"{r['model']}: {r['n']}" for r in other)
            msg += f" (Embeddings exist for {made}; the clip_model setting selects another model.)"
            in_app += f" (Features exist for {made}; Settings ▸ Models chooses the model.)"
        raise NotIndexedYet(msg, in_app)

    def _plain_features(self, examples: list[_Example], id_row: dict[int, int], album: np.ndarray) -> np.ndarray:
        """Un-augmented features: the stored embedding for album photos (what detection reads), else encoded."""
        out: list[np.ndarray | None] = []
        missing: list[tuple[int, _Example]] = []
        for e in examples:
            if e.photo_id is not None and e.photo_id in id_row:
                out.append(album[id_row[e.photo_id]])
            else:
                missing.append((len(out), e))
                out.append(None)
        if missing:
            feats = self.encoder.encode_images([_shrink(e.load()) for _, e in missing])
            for (i, _), f in zip(missing, feats, strict=True):
                out[i] = f
        if not out:
            return np.zeros((0, album.shape[1]), np.float32)
        return np.stack(out).astype(np.float32)


__all__ = ["ObjectHeadConfig", "ObjectHeadTrainer", "TrainingCancelled", "augment", "score", "score_heads",
           "train_linear_head"]
