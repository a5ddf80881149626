"""The MyVLM person head: a person's reference face embeddings, and which photos show them.

The paper's head (docs/method.md §2) needs no training: it is the concept's reference face embeddings, one per training
image, and it fires on an image when the smallest cosine distance from any face detected in it to any reference is
at most a threshold (0.675 for ArcFace buffalo_l in the paper; here `backend.thresholds.concept_distance`, calibrated
per face backend). Every face of an image is matched on its own, and the best face says which face matched.

Here a person's references come from the faces the user CONFIRMED as that person (their word is final), in the
embedding space of the library's face backend, chosen to be diverse (farthest-point selection, see
`select_references`). References can also come from image files (a research-layout concept folder, a few portraits
dropped on the app): `references_from_images` detects the faces and applies the paper's multi-face rule.

Everything works on L2-normalised float32 rows; a distance is always 1 - cos.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.domain.concepts.registry import PERSON, ConceptError, Head
from engine.models.faces.backends import FaceBackend
from engine.storage.catalog import Catalog
from engine.storage.vectors import from_blob

log = logging.getLogger(__name__)

REFERENCES = "references"  # the person head's one tensor: (k, D) unit rows
DEFAULT_MAX_REFS = 5  # the paper uses one reference per training image, ~4 images


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 rows of unit L2 norm (all-zero rows stay zero)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Choosing references
# ----------------------------------------------------------------------------------------------------------------------


def one_face_per_image(groups: Sequence[np.ndarray]) -> list[int | None]:
    """The paper's multi-face rule: which face of each training image is the concept.

    groups[i] is (m_i, D): the embeddings of the faces found in image i. An image with one face keeps it; an image
    with several keeps the face nearest (min cosine distance) to the faces of the single-face images; an image
    without faces keeps nothing (None). When no image has a single face, a multi-face image keeps the face that is
    closest, summed over the other images, to each other image's nearest face (the one identity the images share).
    Returns, per image, the index of the face kept, or None.
    """
    groups = [_unit_rows(g) if len(g) else np.zeros((0, 1), np.float32) for g in groups]
    singles = [g[0] for g in groups if len(g) == 1]
    anchor = np.stack(singles) if singles else None
    out: list[int | None] = []
    for i, g in enumerate(groups):
        if len(g) == 0:
            out.append(None)
        elif len(g) == 1:
            out.append(0)
        elif anchor is not None:
            out.append(int(np.argmin((1.0 - g @ anchor.T).min(axis=1))))
        else:
            cost = np.zeros(len(g), np.float32)
            for j, other in enumerate(groups):
                if j != i and len(other):
                    cost += (1.0 - g @ other.T).min(axis=1)
            out.append(int(np.argmin(cost)))
    return out


def select_references(embeddings: np.ndarray, max_refs: int = DEFAULT_MAX_REFS) -> list[int]:
    """Diverse references: farthest-point selection on cosine distance, at most `max_refs` rows of (n, D).

    Starts from the row closest to the centroid (the most typical face), then repeatedly adds the row farthest from
    everything chosen so far, so the references span the person's looks (ages, glasses, light, pose) instead of
    repeating one. Rows identical to a chosen one (duplicate photos) are never added. Returns row indices in the
    order chosen.
    """
    if max_refs < 1:
        raise ConceptError("a person head needs at least one reference (max_refs >= 1)")
    e = _unit_rows(embeddings)
    if len(e) == 0:
        return []
    centroid = _unit_rows(e.mean(axis=0))[0]
    first = int(np.argmin(1.0 - e @ centroid))
    chosen = [first]
    nearest = 1.0 - e @ e[first]  # (n,) distance of each row to its nearest chosen row
    while len(chosen) < min(max_refs, len(e)):
        nxt = int(np.argmax(nearest))
        if nearest[nxt] <= 1e-6:  # only duplicates of chosen faces are left
            break
        chosen.append(nxt)
        nearest = np.minimum(nearest, 1.0 - e @ e[nxt])
    return chosen


# ----------------------------------------------------------------------------------------------------------------------
# Building a head
# ----------------------------------------------------------------------------------------------------------------------


def build_person_head(catalog: Catalog, person_id: int, backend: FaceBackend,
                      max_refs: int = DEFAULT_MAX_REFS) -> tuple[Head, dict[str, Any]]:
    """The person head of a named person, from their confirmed faces in `backend`'s embedding space.

    References: the person's CONFIRMED faces that have an embedding of `backend.key`, one per photo, at most
    `max_refs`, chosen by `select_references` (diverse). The paper's rule "a training image with several faces keeps
    only the face that matches the single-face images" is implied by confirmed faces: the user said which face is
    the person, and the catalog keeps at most one face per person per photo (clustering, People.move_faces and
    People.merge all enforce it). It is still applied here (`one_face_per_image`), should a photo ever hold two.

    Threshold: `backend.thresholds.concept_distance`. Returns (head, metrics); metrics hold the references chosen
    and how the head does on the album's other confirmed faces: `held_out` = the person's confirmed faces not used
    as references (recall), `others` = faces confirmed as someone else (false-positive rate), and their distances.

    Raises ConceptError with what to do: unknown person, no confirmed faces ("confirm some faces of NAME first"),
    or confirmed faces from another face backend only ("re-run the faces stage").
    """
    rows = catalog.query("SELECT name FROM people WHERE id = ?", [person_id])
    if not rows:
        raise ConceptError(f"no person with id {person_id}")
    name = rows[0]["name"] or f"person {person_id}"
    faces = catalog.query(
        "SELECT id, photo_id, backend, embedding FROM faces WHERE person_id = ? AND state = 'confirmed' ORDER BY id",
        [person_id])
    if not faces:
        raise ConceptError(f"{name} has no confirmed faces: confirm some faces of {name} first "
                           f"(name the group, or confirm faces in their photos)")
    usable = [f for f in faces if f["embedding"] is not None and f["backend"] == backend.key]
    if not usable:
        spaces = sorted({f["backend"] for f in faces if f["embedding"] is not None})
        if spaces:
            raise ConceptError(
                f"{name}'s confirmed faces were embedded by another face backend ({', '.join(spaces)}), not by "
                f"{backend.key}: re-run the faces stage (`myvlm index`) so they are embedded with {backend.key}")
        raise ConceptError(f"{name}'s confirmed faces have no face data left (forgotten): confirm some faces of "
                           f"{name} first")
    vecs = _unit_rows(np.stack([from_blob(f["embedding"]) for f in usable]))
    if vecs.shape[1] != backend.embedding_dim:
        raise ConceptError(f"{name}'s faces are {vecs.shape[1]}-d but {backend.key} embeds {backend.embedding_dim}-d: "
                           f"re-run the faces stage (`myvlm index`)")

    # One face per photo (see the docstring: a safeguard, confirmed faces already are).
    by_photo: dict[int, list[int]] = {}
    for i, f in enumerate(usable):
        by_photo.setdefault(f["photo_id"], []).append(i)
    photo_rows = list(by_photo.values())
    kept = one_face_per_image([vecs[r] for r in photo_rows])
    candidates = [rows_[k] for rows_, k in zip(photo_rows, kept, strict=True) if k is not None]
    dropped = len(usable) - len(candidates)
    if dropped:
        log.warning("%s: %d confirmed faces share a photo with another of theirs; kept the best match", name, dropped)

    order = select_references(vecs[candidates], max_refs)
    ref_rows = [candidates[i] for i in order]
    refs = vecs[ref_rows]
    threshold = float(backend.thresholds.concept_distance)
    head = Head(PERSON, backend.key, threshold, {REFERENCES: refs})

    metrics: dict[str, Any] = {
        "references": len(ref_rows),
        "reference_face_ids": [int(usable[r]["id"]) for r in ref_rows],
        "reference_photo_ids": [int(usable[r]["photo_id"]) for r in ref_rows],
        "confirmed_faces": len(usable),
        "other_space_faces": len(faces) - len(usable),
        "threshold": threshold,
        "space": backend.key,
        "reference_spread": float((1.0 - refs @ refs.T).max()) if len(refs) > 1 else 0.0,
    }
    ref_set = set(ref_rows)
    held = [i for i in range(len(usable)) if i not in ref_set]
    if held:
        d = (1.0 - vecs[held] @ refs.T).min(axis=1)
        metrics["held_out"] = {"faces": len(held), "recall": float((d <= threshold).mean()),
                               "max_distance": float(d.max()), "median_distance": float(np.median(d))}
    others = catalog.query(
        "SELECT embedding FROM faces WHERE state = 'confirmed' AND person_id IS NOT NULL AND person_id != ? "
        "AND backend = ? AND embedding IS NOT NULL", [person_id, backend.key])
    if others:
        o = _unit_rows(np.stack([from_blob(r["embedding"]) for r in others]))
        d = (1.0 - o @ refs.T).min(axis=1)
        metrics["others"] = {"faces": len(others), "false_positive_rate": float((d <= threshold).mean()),
                             "min_distance": float(d.min())}
    return head, metrics


def references_from_images(backend: FaceBackend, images: Iterable[np.ndarray | str | Path]
                           ) -> tuple[np.ndarray, list[int | None], list[int]]:
    """Reference embeddings from training images, as the paper makes them: one face per image.

    Each image ((H, W, 3) uint8 RGB array, or a file decoded like the pipeline's previews: upright, at most 1440 px)
    goes through `backend` with the faces stage's gates (`thresholds.keep`); an image with several faces keeps only
    the face nearest the single-face images' faces (`one_face_per_image`); an image without a face gives nothing.
    Returns (references (k, D) unit rows, per image the index of the face kept among its detections or None,
    per image the number of faces detected).
    """
    from engine.ingest.images import decode

    groups: list[np.ndarray] = []
    counts: list[int] = []
    for img in images:
        if not isinstance(img, np.ndarray):
            img = np.asarray(decode(str(img), max_side=1440).image)
        faces = [f for f in backend.detect(img) if backend.thresholds.keep(f)]
        groups.append(backend.embed(img, faces) if faces else np.zeros((0, backend.embedding_dim), np.float32))
        counts.append(len(faces))
    kept = one_face_per_image(groups)
    refs = [groups[i][k] for i, k in enumerate(kept) if k is not None]
    return (_unit_rows(np.stack(refs)) if refs else np.zeros((0, backend.embedding_dim), np.float32)), kept, counts


def build_person_head_from_images(backend: FaceBackend, images: Sequence[np.ndarray | str | Path],
                                  max_refs: int | None = None) -> tuple[Head, dict[str, Any]]:
    """A person head from image files or arrays (research-layout folders, imported portraits).

    One reference per image with a face (the paper), multi-face images filtered (`references_from_images`); with
    `max_refs`, the diverse subset (`select_references`). Raises ConceptError when no image shows a face.
    """
    refs, kept, counts = references_from_images(backend, images)
    if len(refs) == 0:
        raise ConceptError(f"no face found in any of the {len(counts)} images: a person concept needs photos in which "
                           f"their face is visible")
    if max_refs is not None:
        refs = refs[select_references(refs, max_refs)]
    threshold = float(backend.thresholds.concept_distance)
    metrics = {"references": len(refs), "images": len(counts), "faces_per_image": counts,
               "kept_face_index": kept, "threshold": threshold, "space": backend.key}
    return Head(PERSON, backend.key, threshold, {REFERENCES: refs}), metrics


# ----------------------------------------------------------------------------------------------------------------------
# Running a head
# ----------------------------------------------------------------------------------------------------------------------


def person_head_signals(head: Head, faces_by_photo: Mapping[int, Sequence[tuple[int, np.ndarray]]],
                        threshold: float | None = None) -> dict[int, tuple[float, bool, int | None]]:
    """What a person head says about photos: {photo_id: (score, fired, face_id)}.

    faces_by_photo: {photo_id: [(face_id, embedding), ...]} with embeddings in the head's space. Each face is
    matched on its own: its distance is the min cosine distance to any reference; the photo's best face is the one
    with the smallest distance; score = 1 - that distance; fired = distance <= threshold (the head's unless given);
    face_id = the best face, the one that matched when fired. A photo with no faces gets (0.0, False, None), i.e. as
    if its best face were orthogonal to every reference. One matrix product over all faces of all photos.
    """
    if head.kind != PERSON or REFERENCES not in head.tensors:
        raise ConceptError(f"not a person head (kind {head.kind!r}, tensors {sorted(head.tensors)})")
    refs = _unit_rows(head.tensors[REFERENCES])
    t = float(head.threshold if threshold is None else threshold)
    out: dict[int, tuple[float, bool, int | None]] = {}
    photo_ids, counts, face_ids, vecs = [], [], [], []
    for pid, faces in faces_by_photo.items():
        if not faces:
            out[int(pid)] = (0.0, False, None)
            continue
        photo_ids.append(int(pid))
        counts.append(len(faces))
        for fid, emb in faces:
            face_ids.append(int(fid))
            vecs.append(np.asarray(emb, dtype=np.float32).reshape(-1))
    if not vecs:
        return out
    dims = {len(v) for v in vecs}
    if dims != {refs.shape[1]}:
        raise ConceptError(f"face embeddings are {sorted(dims)}-d but the head's references are {refs.shape[1]}-d "
                           f"(space {head.space!r}): faces of another backend cannot be matched")
    e = _unit_rows(np.stack(vecs))  # (N, D)
    dist = (1.0 - e @ refs.T).min(axis=1)  # (N,): each face on its own, nearest reference
    seg = np.repeat(np.arange(len(counts)), counts)  # (N,) photo index of each face, grouped
    order = np.lexsort((dist, seg))  # by photo, then distance: each photo's first row is its best face
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    best = order[starts]
    for pid, b in zip(photo_ids, best, strict=True):
        d = float(dist[b])
        out[pid] = (1.0 - d, bool(d <= t), face_ids[b])
    return out


def load_faces_by_photo(catalog: Catalog, space: str, photo_ids: Iterable[int] | None = None
                        ) -> dict[int, list[tuple[int, np.ndarray]]]:
    """{photo_id: [(face_id, embedding), ...]} of the faces in embedding space `space` (a face backend key), for
    `person_head_signals`. Faces without an embedding (forgotten) and faces the user ignored (not worth tracking:
    posters, crowds) are left out. photo_ids: only those photos (each listed, possibly with no faces); None: every
    photo with a face."""
    sql = ("SELECT id, photo_id, embedding FROM faces WHERE backend = ? AND embedding IS NOT NULL "
           "AND state != 'ignored'")
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    if photo_ids is None:
        rows = catalog.query(sql + " ORDER BY photo_id, id", [space])
    else:
        ids = [int(p) for p in photo_ids]
        out = {p: [] for p in ids}
        rows = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows += catalog.query(sql + f" AND photo_id IN ({','.join('?' * len(chunk))}) ORDER BY photo_id, id",
                                  [space, *chunk])
    for r in rows:
        out.setdefault(r["photo_id"], []).append((r["id"], from_blob(r["embedding"])))
    return out
