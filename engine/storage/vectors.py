"""Vector indexes: faiss inner product over L2-normalised embeddings (= cosine similarity), keyed by catalog ids.

They are caches: the catalog holds every embedding as a float32 blob, and an index is rebuilt from it at start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

FEW_QUERIES = 64  # searches (and adds, removes) of up to this many vectors run on one thread


def to_blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def from_blob(blob: bytes, dim: int | None = None) -> np.ndarray:
    v = np.frombuffer(blob, dtype=np.float32)
    return v if dim is None else v.reshape(-1, dim)


def stack_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """(n, dim) float32 from n blobs, in one copy."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)


class VectorIndex:
    """Exact inner-product search (faiss IndexFlatIP) with our ids; add, remove and search incrementally."""

    def __init__(self, dim: int):
        self.dim = dim
        import faiss  # here, not at the top: `myvlm status` and friends read blobs but never search

        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        with _threads(1 if len(ids) <= FEW_QUERIES else 0):
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: list[int]) -> None:
        if ids:
            with _threads(1 if len(ids) <= FEW_QUERIES else 0):
                self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def vector(self, id_: int) -> np.ndarray:
        return self.index.reconstruct(int(id_))

    def search(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (n, k); missing neighbours have id -1. A few queries run on one thread: on a
        busy machine OpenMP threads waiting for each other cost more than they bring (bench/README.md)."""
        k = max(1, min(k, len(self))) if len(self) else 1
        vecs = np.ascontiguousarray(vecs, dtype=np.float32).reshape(-1, self.dim)
        with _threads(1 if len(vecs) <= FEW_QUERIES else 0):
            return self.index.search(vecs, k)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """faiss's OpenMP threads for one call (0: leave them), restored after."""
    if not n:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def load_clip_matrix(catalog, model_key: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(photo ids (n,), embeddings (n, dim)) of one CLIP space from the catalog, for vectorised heads."""
    rows = catalog.query("SELECT photo_id, embedding FROM clip_embeddings WHERE model = ? ORDER BY photo_id",
                         [model_key])
    ids = np.fromiter((r["photo_id"] for r in rows), dtype=np.int64, count=len(rows))
    return ids, stack_blobs([r["embedding"] for r in rows], dim)
