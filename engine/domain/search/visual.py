"""The picture side of search: CLIP text-to-image similarity, and the floor under which it is noise.

Image embeddings are the CLIP stage's (clip_embeddings, one L2-normalised float32 blob per photo and model). They
are read once into one matrix per library and model, shared by every searcher in the process; afterwards only the
rows the catalog's change log names are read again. A full load is saved in the library folder (search/), so the
next process maps it from disk and catches up from the log instead of reading every embedding again. Text
embeddings of queries are cached, so a repeated query costs no model forward.

The floor: cosine similarity between a text and an image says little by itself, and every model has its own
scale. Below the floor a photo is not returned on looks alone; a model without a known floor does not search by
looks at all (better nothing than noise). `choose_floor` picks one from similarities of matching and unrelated
pairs; the `search_clip_floor` setting overrides (a number, or {model key: number}).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine import settings
from engine.storage.catalog import Catalog
from engine.storage.vectors import stack_blobs

# Provisional: typical cosine ranges of these models between a short phrase and a photo it describes vs. one it
# does not (matching pairs ~0.28-0.35, unrelated ~0.10-0.20). To be measured with choose_floor on labelled photos
# once the weights are on a machine; until then the setting overrides per library.
CLIP_FLOORS: dict[str, float] = {
    "ViT-B-32/laion2b_s34b_b79k": 0.25,
    "DFN5B-CLIP-ViT-H-14-378/dfn5b": 0.22,
}
PROMPT = "a photo of {}"
GATHER_FRACTION = 8  # a filter keeping under 1/8 of the photos: copy just those rows out, else scan all
COARSE_MIN = 20_000  # photos from which full scans take the coarse pass first
COARSE_DIM = 128
COARSE_KEEP = 4_000  # candidates of the coarse pass scored exactly
EXACT_EXTRA = 4_000  # photos the bound may add to the coarse pass's best; beyond, its best stand
BOUND_SLACK = 1e-4  # float32 rounding in the bound: score a photo exactly when its bound comes this close
SAVED_DIR = "search"  # in the library folder: the matrix saved by the last full load, memory-mapped by the next
SAVED_CHECKS = 16  # rows compared with the catalog before a saved matrix is trusted

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """What search needs of an encoder: ClipEncoder, or a stand-in in tests and benchmarks."""

    key: str
    dim: int

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def floor_for(catalog: Catalog, key: str) -> float | None:
    setting = settings.read(catalog, "search_clip_floor")
    if isinstance(setting, (int, float)) and not isinstance(setting, bool):
        return float(setting)
    if isinstance(setting, dict) and isinstance(setting.get(key), (int, float)):
        return float(setting[key])
    return CLIP_FLOORS.get(key)


def choose_floor(matching: np.ndarray, unrelated: np.ndarray, max_false_rate: float = 0.01) -> dict[str, float]:
    """The lowest similarity that lets at most `max_false_rate` of unrelated pairs through, and what it keeps."""
    unrelated = np.asarray(unrelated, dtype=np.float64).ravel()
    matching = np.asarray(matching, dtype=np.float64).ravel()
    floor = float(np.quantile(unrelated, 1.0 - max_false_rate)) if unrelated.size else 0.0
    return {"floor": floor, "false_rate": float((unrelated >= floor).mean()) if unrelated.size else 0.0,
            "recall": float((matching >= floor).mean()) if matching.size else 0.0}


def date_key(value: str | None) -> int:
    """An ISO timestamp as a sortable integer (2019-07-14T10:00:00 -> 20190714100000); NO_DATE when there is none."""
    digits = "".join(ch for ch in (value or "")[:19] if ch.isdigit())
    return int(digits.ljust(14, "0")) if len(digits) >= 8 else NO_DATE


NO_DATE = -1
# date_key in SQL, for 100,000 rows at once: digits of the first 19 characters, padded to 14
DATE_KEY_SQL = ("coalesce(CAST(substr(replace(replace(replace(substr(p.date_taken, 1, 19), '-', ''), 'T', ''), ':', '')"
                " || '000000', 1, 14) AS INTEGER), -1)")


class ImageMatrix:
    """One library's image embeddings in one model's space, in memory, kept current from the catalog's change log
    (search_clip_log: embeddings and dates that changed, in order), so a running clip stage costs each search only
    the rows it changed.

    Scoring is exact cosine similarity. Above COARSE_MIN photos a full scan first scores a 128-d projection onto
    the embeddings' principal directions (a quarter of the memory traffic, which is what a scan costs) and then
    re-scores the best COARSE_KEEP candidates exactly, and then every other photo whose upper bound (projected
    score + the norm of what the projection leaves out, by Cauchy-Schwarz) still reaches the k-th best exact score,
    when those are at most EXACT_EXTRA: then the results are the exact top k. When the query lies far outside the
    projection's directions the bound prunes nothing, and the coarse pass's best stand: approximate, at the speed of
    a quarter of the memory traffic. Filtered scans over few photos are exact from the start.
    """

    def __init__(self, key: str, dim: int):
        self.key, self.dim = key, dim
        self.lock = threading.Lock()
        self.seq = -1  # last change-log entry applied
        self._clear(0)

    def _clear(self, capacity: int) -> None:
        self.vecs = np.zeros((capacity, self.dim), np.float32)
        self.ids = np.full(capacity, -1, np.int64)
        self.dates = np.full(capacity, NO_DATE, np.int64)
        self.live = np.zeros(capacity, bool)
        self.row: dict[int, int] = {}
        self.n = 0  # rows in use (live or freed)
        self.basis: np.ndarray | None = None  # (dim, COARSE_DIM) principal directions
        self.proj: np.ndarray | None = None  # (capacity, COARSE_DIM)
        self.resid: np.ndarray | None = None  # (capacity,) norm of each embedding outside the projection
        self._buffer: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.row)

    # -- keeping up -------------------------------------------------------------------------------------------------

    def sync(self, catalog: Catalog) -> None:
        last = catalog.scalar("SELECT max(seq) FROM search_clip_log") or 0
        if last == self.seq:
            return
        first = catalog.scalar("SELECT min(seq) FROM search_clip_log") or 0
        opened = self.seq < 0 and self._open_saved(catalog, first)   # a new process: map what the last one saved
        changed: list[int] = []
        if self.seq >= 0 and first <= self.seq + 1:
            changed = [r[0] for r in catalog.query(
                "SELECT DISTINCT photo_id FROM search_clip_log WHERE seq > ? AND seq <= ?", [self.seq, last])]
        full = self.seq < 0 or first > self.seq + 1 or len(changed) > max(5000, len(self) // 4)
        if not full:
            for i in range(0, len(changed), 500):
                self._apply(catalog, changed[i : i + 500])
            full = opened and not self._agrees(catalog)   # e.g. a restored backup under an old saved matrix
        if full:
            self._load_all(catalog)
        self.seq = last
        if full:
            self._save(catalog)

    def _rows(self, catalog: Catalog, where: str = "", params: tuple = ()) -> list:
        return catalog.query(
            f"SELECT ce.photo_id, ce.embedding, {DATE_KEY_SQL} AS date_key FROM clip_embeddings ce "
            f"JOIN photos p ON p.id = ce.photo_id WHERE ce.model = ? {where}", [self.key, *params])

    def _load_all(self, catalog: Catalog) -> None:
        rows = [r for r in self._rows(catalog) if len(r["embedding"]) == self.dim * 4]
        self._clear(len(rows))
        if rows:
            self.vecs[:] = stack_blobs([r["embedding"] for r in rows], self.dim)
            self.ids[:] = [r["photo_id"] for r in rows]
            self.dates[:] = np.fromiter((r["date_key"] for r in rows), dtype=np.int64, count=len(rows))
            self.live[:] = True
            self.n = len(rows)
            self.row = {int(pid): i for i, pid in enumerate(self.ids)}
        if self.n >= COARSE_MIN:
            self._fit_coarse()

    def _apply(self, catalog: Catalog, photo_ids: list[int]) -> None:
        found = {r["photo_id"]: r for r in self._rows(
            catalog, f"AND ce.photo_id IN ({','.join('?' * len(photo_ids))})", tuple(photo_ids))
            if len(r["embedding"]) == self.dim * 4}
        for pid in photo_ids:
            r, row = found.get(pid), self.row.get(pid)
            if r is None:
                if row is not None:  # embedding deleted (or now of another model)
                    self.live[row] = False
                    del self.row[pid]
                continue
            if row is None:
                row = self._append(pid)
            vec = np.frombuffer(r["embedding"], dtype=np.float32)
            self.vecs[row] = vec
            self.dates[row] = r["date_key"]
            self.live[row] = True
            if self.proj is not None:
                self.proj[row] = vec @ self.basis
                self.resid[row] = _residual_norms(vec[None], self.proj[row][None])[0]

    def _append(self, pid: int) -> int:
        if self.n == len(self.ids):  # grow by a quarter
            extra = max(64, len(self.ids) // 4)
            self.vecs = np.concatenate([self.vecs, np.zeros((extra, self.dim), np.float32)])
            self.ids = np.concatenate([self.ids, np.full(extra, -1, np.int64)])
            self.dates = np.concatenate([self.dates, np.full(extra, NO_DATE, np.int64)])
            self.live = np.concatenate([self.live, np.zeros(extra, bool)])
            if self.proj is not None:
                self.proj = np.concatenate([self.proj, np.zeros((extra, self.proj.shape[1]), np.float32)])
                self.resid = np.concatenate([self.resid, np.zeros(extra, np.float32)])
        row = self.n
        self.n += 1
        self.ids[row] = pid
        self.row[pid] = row
        return row

    def _fit_coarse(self) -> None:
        """Principal directions of (a sample of) the embeddings, and every embedding projected onto them."""
        rng = np.random.default_rng(0)
        sample = self.vecs[: self.n][rng.choice(self.n, size=min(self.n, 20_000), replace=False)]
        _, eigvecs = np.linalg.eigh(sample.T @ sample)
        self.basis = np.ascontiguousarray(eigvecs[:, ::-1][:, :COARSE_DIM], dtype=np.float32)
        self.proj = np.zeros((len(self.ids), COARSE_DIM), np.float32)
        self.resid = np.zeros(len(self.ids), np.float32)
        for i in range(0, self.n, 65_536):  # in slices: a (1,000,000, 512) temporary would double the memory
            part = self.vecs[i : min(self.n, i + 65_536)]
            self.proj[i : i + len(part)] = part @ self.basis
            self.resid[i : i + len(part)] = _residual_norms(part, self.proj[i : i + len(part)])

    # -- saved between processes ---------------------------------------------------------------------------------
    # The first query of a process would read every embedding from the catalog and fit the projection (seconds at
    # 100,000 photos). A full load saves the arrays as .npy files in the library folder; the next process maps
    # them (np.load mmap_mode="c": pages are read when a scan touches them, a changed row is copied privately) and
    # catches up from search_clip_log as a running process does. It is a cache: anything odd means a full load.

    def _saved_dir(self, catalog: Catalog) -> Path:
        return catalog.paths.root / SAVED_DIR / hashlib.sha1(self.key.encode()).hexdigest()[:16]

    def _save(self, catalog: Catalog) -> None:
        folder = self._saved_dir(catalog)
        n, tag = self.n, f"{self.seq}-{os.getpid()}"
        if n == 0:   # nothing to map (a library without pictures searched by looks keeps no folder for it)
            return
        arrays = {"vecs": self.vecs[:n], "ids": self.ids[:n], "dates": self.dates[:n]}
        if self.proj is not None:
            arrays.update(proj=self.proj[:n], resid=self.resid[:n], basis=self.basis)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, arr in arrays.items():
                np.save(folder / f"{name}-{tag}.npy", np.ascontiguousarray(arr))
            meta = {"key": self.key, "dim": self.dim, "seq": self.seq, "n": n, "tag": tag, "arrays": sorted(arrays)}
            (folder / f"meta-{tag}.tmp").write_text(json.dumps(meta))
            os.replace(folder / f"meta-{tag}.tmp", folder / "meta.json")
            for old in folder.iterdir():   # earlier saves (a process mapping them keeps its pages until it ends)
                if old.name != "meta.json" and not old.name.endswith(f"-{tag}.npy"):
                    old.unlink(missing_ok=True)
        except OSError as exc:   # e.g. the disk is full: searching goes on, the next process loads in full
            log.warning("could not save the search matrix in %s: %s", folder, exc)

    def _open_saved(self, catalog: Catalog, first_seq: int) -> bool:
        folder = self._saved_dir(catalog)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta["key"] != self.key or meta["dim"] != self.dim or first_seq > meta["seq"] + 1:
                return False   # another space, or the log no longer reaches back to the save
            arrays = {name: np.load(folder / f"{name}-{meta['tag']}.npy", mmap_mode="c") for name in meta["arrays"]}
        except (OSError, ValueError, KeyError, TypeError):
            return False
        n = int(meta["n"])
        if arrays["vecs"].shape != (n, self.dim) or len(arrays["ids"]) != n or len(arrays["dates"]) != n:
            return False
        self._clear(0)
        self.vecs, self.n = arrays["vecs"], n
        self.ids, self.dates = np.array(arrays["ids"]), np.array(arrays["dates"])
        self.live = np.ones(n, bool)
        self.row = {int(pid): i for i, pid in enumerate(self.ids)}
        if "proj" in arrays:
            self.proj, self.resid, self.basis = arrays["proj"], np.array(arrays["resid"]), np.array(arrays["basis"])
        self.seq = int(meta["seq"])
        return True

    def _agrees(self, catalog: Catalog) -> bool:
        """The catalog holds as many embeddings of this space as the matrix, and a sample of them byte for byte
        (an embedding of the wrong size, never written by the clip stage, only costs full loads)."""
        count = catalog.scalar("SELECT COUNT(*) FROM clip_embeddings WHERE model = ?", [self.key])
        if count != len(self):
            return False
        live = np.flatnonzero(self.live[: self.n])
        for row in live[np.linspace(0, len(live) - 1, min(SAVED_CHECKS, len(live))).astype(int)] if len(live) else []:
            blob = catalog.scalar("SELECT embedding FROM clip_embeddings WHERE photo_id = ? AND model = ?",
                                  [int(self.ids[row]), self.key])
            if blob is None or blob != self.vecs[row].tobytes():
                return False
        return True

    # -- searching --------------------------------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, floor: float, among: np.ndarray | None = None,
               dates: Callable[[np.ndarray], np.ndarray] | None = None) -> list[tuple[int, float]]:
        """The k photos most like `query` with similarity >= floor, best first, as (photo id, similarity);
        only photos in `among` (ids) and whose date key passes `dates`, when given."""
        n = self.n
        mask = self.live[:n].copy()
        if dates is not None:
            mask &= dates(self.dates[:n])
        if among is not None:
            if len(among) < 1000:
                rows = np.fromiter((self.row.get(int(i), -1) for i in among), dtype=np.int64, count=len(among))
                keep = np.zeros(n, bool)
                keep[rows[rows >= 0]] = True
            else:
                keep = np.isin(self.ids[:n], among)
            mask &= keep
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            return []
        few = len(rows) * GATHER_FRACTION < n
        if self.proj is not None and len(rows) > COARSE_KEEP:  # many: a coarse pass, then exact on the best
            small_query = self.basis.T @ query
            query_rest = float(np.sqrt(max(0.0, float(query @ query) - float(small_query @ small_query))))
            if few:
                allowed = rows
                coarse = _dot(self.proj[rows], small_query)
            else:
                allowed = None
                coarse = _dot(self.proj[:n], small_query)
                coarse[~mask] = -np.inf
            best = np.argpartition(-coarse, COARSE_KEEP - 1)[:COARSE_KEEP]
            rows = best if allowed is None else allowed[best]
            sims = _dot(self._take(rows), query)
            # any other photo may still beat the k-th best: score those whose bound reaches it (none, usually)
            above = np.sort(sims[sims >= floor])
            reach = max(floor, float(above[-k])) if len(above) >= k else floor
            bound = coarse + (self.resid[allowed] if allowed is not None else self.resid[:n]) * query_rest
            bound[best] = -np.inf
            more = np.flatnonzero(bound >= reach - BOUND_SLACK)
            if len(more) > EXACT_EXTRA:
                # the projection says little about this query: scoring them all would cost a full scan (2 GB at a
                # million photos), so the coarse pass's best stand (approximate; bench/README.md, bench_search)
                pass
            elif len(more):
                more = more if allowed is None else allowed[more]
                rows = np.concatenate([rows, more])
                sims = np.concatenate([sims, _dot(self.vecs[more], query)])
        elif few:  # score just them, exactly
            sims = _dot(self._take(rows), query)
        else:
            sims = _dot(self.vecs[:n], query)[rows]
        ok = np.flatnonzero(sims >= floor)
        if len(ok) > k:
            ok = ok[np.argpartition(-sims[ok], k - 1)[:k]]
        ok = ok[np.argsort(-sims[ok], kind="stable")]
        return [(int(self.ids[rows[i]]), float(sims[i])) for i in ok]

    def _take(self, rows: np.ndarray) -> np.ndarray:
        """These rows' vectors, copied into a buffer kept between searches (fresh memory costs page faults)."""
        if self._buffer is None or len(self._buffer) < len(rows):
            self._buffer = np.empty((max(len(rows), COARSE_KEEP), self.dim), np.float32)
        out = self._buffer[: len(rows)]
        np.take(self.vecs, rows, axis=0, out=out)
        return out


def _residual_norms(vecs: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """|v - B B^T v| for each row: what the projection leaves out (the basis is orthonormal)."""
    rest = (np.einsum("ij,ij->i", vecs, vecs, dtype=np.float64)
            - np.einsum("ij,ij->i", proj, proj, dtype=np.float64))
    return np.sqrt(np.maximum(rest, 0.0)).astype(np.float32)


def _dot(matrix: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """matrix @ vec on one core: on a 2-core machine that is busy, BLAS threads waiting for each other cost more
    than a second core brings (measured: bench/README.md)."""
    return np.einsum("ij,j->i", matrix, vec.astype(np.float32, copy=False))


_matrices: dict[tuple[str, str], ImageMatrix] = {}
_matrices_lock = threading.Lock()


def image_matrix(catalog: Catalog, key: str, dim: int) -> ImageMatrix:
    """This library's image embeddings in `key`'s space, brought up to date (shared by the whole process)."""
    with _matrices_lock:
        matrix = _matrices.get((str(catalog.paths.db), key))
        if matrix is None or matrix.dim != dim:
            matrix = _matrices[(str(catalog.paths.db), key)] = ImageMatrix(key, dim)
    with matrix.lock:
        matrix.sync(catalog)
    return matrix


class TextCache:
    """Query text -> normalised embedding, most recent first; remembers how long the model took."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.last_forward_s: float | None = None  # None: the last lookup was a cache hit

    def embed(self, encoder: Any, text: str) -> np.ndarray:
        key = (encoder.key, text)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.last_forward_s = None
                return self._items[key]
        start = time.perf_counter()
        vec = np.asarray(encoder.encode_texts([PROMPT.format(text)]), dtype=np.float32).reshape(-1)
        self.last_forward_s = time.perf_counter() - start
        norm = float(np.linalg.norm(vec))
        vec = vec / norm if norm > 0 else vec
        with self._lock:
            self._items[key] = vec
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return vec


TEXT_CACHE = TextCache()
