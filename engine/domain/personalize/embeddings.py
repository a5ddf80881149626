"""Concept embeddings on disk: one safetensors file per concept, VLM checkpoint and task.

An embedding is only meaningful for the VLM it was trained on, so every file records the checkpoint; asking for
another checkpoint finds nothing (the concept is "stale" for that VLM until retrained), and switching back finds the
old file again. A file also carries the optimiser's moments and the step, so a killed training resumes from its last
checkpoint, and the values at every checkpoint step, so the research `.pt` format can be exported with its history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from engine.domain.concepts.registry import ConceptError
from engine.domain.concepts.research import (
    EMBEDDINGS_PREFIX,
    RESEARCH_EMBEDDINGS_DIR,
    export_research_concept_embeddings,
    load_imported_embeddings,
    parse_research_embeddings_name,
    research_embeddings_checkpoints,
)
from engine.errors import NotFound
from engine.models.vlm.specs import CAPTION, CONCEPT_DIM, VLM_SPECS
from engine.storage.catalog import disk_full, is_disk_full

log = logging.getLogger(__name__)

FORMAT = "myvlm-concept-embedding/1"
RESEARCH_TASK = {CAPTION: "captioning", "vqa": "vqa"}   # our task names → the reference code's file names
# Research file stems (after `concept_embeddings_`) per VLM key and task, where they are not "<key>_<task>": the
# first is written, all are read. MiniGPT-v2's reference files carry its type and task names.
RESEARCH_STEMS = {("minigpt-v2", CAPTION): ("MINIGPT_V2_CAPTIONING", "minigpt-v2_captioning",
                                            "minigpt_v2_captioning")}


def research_stems(vlm: str, task: str) -> tuple[str, ...]:
    return RESEARCH_STEMS.get((vlm, task), (f"{vlm}_{RESEARCH_TASK.get(task, task)}",))


def checkpoint_slug(checkpoint: str) -> str:
    """A file-name-safe, stable name for a checkpoint (a repo id, a preset, or a folder path)."""
    if Path(checkpoint).is_absolute():   # a folder: its name plus a hash of the whole path
        digest = hashlib.blake2b(checkpoint.encode(), digest_size=4).hexdigest()
        return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', Path(checkpoint).name)[:48]}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", checkpoint.replace("/", "--")).strip("-")[:80] or "model"


class EmbeddingFileError(ConceptError):
    """A concept-embedding file that cannot be used (truncated, overwritten, not ours); the message names it."""


@dataclass
class ConceptEmbedding:
    concept_id: int
    checkpoint: str
    family: str
    task: str
    identifier: str
    values: np.ndarray                  # (1, D) float32, the latest values
    keys: np.ndarray                    # (k, Dk): what the concept was recognised by during training
    step: int
    steps_total: int
    history: dict[int, np.ndarray] = field(default_factory=dict)   # checkpoint step → (1, D) values
    adam: dict[str, np.ndarray] = field(default_factory=dict)      # exp_avg, exp_avg_sq (1, D)
    adam_step: int = 0
    settings: dict = field(default_factory=dict)                   # lr, λ, seed, trained-with concepts ...
    source: str = "trained"              # trained | research-import
    updated: str = ""

    @property
    def complete(self) -> bool:
        return self.step >= self.steps_total


class EmbeddingStore:
    """Reads and writes the embedding files of the concepts in `concepts_dir/<id>/`."""

    def __init__(self, concepts_dir: Path):
        self.root = Path(concepts_dir)

    def path(self, concept_id: int, checkpoint: str, task: str) -> Path:
        return self.root / str(concept_id) / f"embedding-{checkpoint_slug(checkpoint)}-{task}.safetensors"

    def save(self, emb: ConceptEmbedding) -> Path:
        path = self.path(emb.concept_id, emb.checkpoint, emb.task)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"values": np.ascontiguousarray(emb.values, dtype=np.float32).reshape(1, -1),
                   "keys": np.ascontiguousarray(np.atleast_2d(emb.keys), dtype=np.float32)}
        for step, v in emb.history.items():
            tensors[f"history.{step}"] = np.ascontiguousarray(v, dtype=np.float32).reshape(1, -1)
        for name, v in emb.adam.items():
            tensors[f"adam.{name}"] = np.ascontiguousarray(v, dtype=np.float32).reshape(1, -1)
        meta = {"format": FORMAT, "checkpoint": emb.checkpoint, "family": emb.family, "task": emb.task,
                "identifier": emb.identifier, "concept_id": str(emb.concept_id), "step": str(emb.step),
                "steps_total": str(emb.steps_total), "adam_step": str(emb.adam_step),
                "settings": json.dumps(emb.settings), "source": emb.source,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(path)   # atomic: a kill mid-write keeps the previous checkpoint
        except BaseException as exc:
            tmp.unlink(missing_ok=True)   # never leave a half-written file behind (a full disk, an interrupt)
            if is_disk_full(exc):
                raise disk_full(f"the concept embedding checkpoint {path.name} (step {emb.step})", exc) from exc
            raise
        return path

    def load(self, concept_id: int, checkpoint: str, task: str) -> ConceptEmbedding | None:
        """The concept's embedding for this checkpoint and task, or None. A damaged file counts as none (with a
        warning): the concept is untrained for this VLM again, and teaching it rewrites the file."""
        path = self.path(concept_id, checkpoint, task)
        try:
            if path.exists():
                return self.read(path)
            return self._imported(concept_id, checkpoint, task)
        except ConceptError as exc:
            log.warning("concept %s: %s", concept_id, exc)
            return None

    def read(self, path: Path) -> ConceptEmbedding:
        """One embedding file, checked; EmbeddingFileError saying what is wrong otherwise."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, not {FORMAT!r}")
            history = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("history.")}
            adam = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("adam.")}
            emb = ConceptEmbedding(
                concept_id=int(meta["concept_id"]), checkpoint=meta["checkpoint"], family=meta["family"],
                task=meta["task"], identifier=meta.get("identifier", ""), values=tensors["values"],
                keys=tensors["keys"], step=int(meta["step"]), steps_total=int(meta["steps_total"]),
                history=dict(sorted(history.items())), adam=adam, adam_step=int(meta.get("adam_step", 0)),
                settings=json.loads(meta.get("settings") or "{}"), source=meta.get("source", "trained"),
                updated=meta.get("updated", ""))
            _check(emb)
        except Exception as exc:  # noqa: BLE001 - SafetensorError, a missing key, a wrong shape: all "damaged"
            raise EmbeddingFileError(f"concept embedding {path.name} is damaged and was not used ({type(exc).__name__}"
                                     f": {exc}); teach the concept again to rewrite it") from None
        return emb

    def _imported(self, concept_id: int, checkpoint: str, task: str) -> ConceptEmbedding | None:
        """Embeddings that came with a research concept folder and fit this checkpoint: named for its family and the
        task (any of the reference's spellings, `parse_research_embeddings_name`), of its concept width, and for the
        paper's families (BLIP-2, LLaVA, MiniGPT-v2) only on the checkpoint the paper trained them on. A file of the
        family at another width belongs to another size (SmolVLM-256M's beside -500M's) and is passed over."""
        folder = self.root / str(concept_id) / RESEARCH_EMBEDDINGS_DIR
        key = next((k for k, s in VLM_SPECS.items() if s.checkpoint == checkpoint), None)
        if key is None or not folder.is_dir() or key not in research_embeddings_checkpoints(VLM_SPECS[key].family):
            return None
        family = VLM_SPECS[key].family
        for path in sorted(folder.glob(f"{EMBEDDINGS_PREFIX}*.safetensors")):
            if parse_research_embeddings_name(path.name) != (family, task):
                continue
            steps = load_imported_embeddings(path)
            last = max(steps)
            if CONCEPT_DIM.get(key, steps[last]["values"].shape[1]) != steps[last]["values"].shape[1]:
                continue
            emb = ConceptEmbedding(concept_id, checkpoint, family, task, "", steps[last]["values"][:1],
                                   np.atleast_2d(steps[last]["keys"]), last, last,
                                   history={s: e["values"][:1] for s, e in steps.items()}, source="research-import")
            try:
                _check(emb)
            except (ValueError, TypeError) as exc:
                raise EmbeddingFileError(f"imported concept embedding {path.name} cannot be used ({exc}); import "
                                         f"the research concept again") from None
            return emb
        return None

    def for_checkpoint(self, checkpoint: str, task: str, concept_ids: list[int] | None = None
                       ) -> dict[int, ConceptEmbedding]:
        """The complete embeddings usable with this checkpoint and task, by concept id."""
        out: dict[int, ConceptEmbedding] = {}
        ids = concept_ids
        if ids is None:
            ids = [int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()] \
                if self.root.exists() else []
        for cid in ids:
            emb = self.load(cid, checkpoint, task)
            if emb is not None and emb.complete:
                out[cid] = emb
        return out

    def other_checkpoints(self, concept_id: int) -> list[str]:
        """Checkpoints this concept has embeddings for (to tell a user which VLM it was trained on)."""
        folder = self.root / str(concept_id)
        found = []
        for p in sorted(folder.glob("embedding-*.safetensors")) if folder.exists() else []:
            try:
                found.append(self.read(p).checkpoint)
            except Exception as exc:  # noqa: BLE001 - a damaged file is reported by `load`, not here
                log.warning("unreadable concept embedding %s: %s", p, exc)
        return sorted(set(found))

    def state(self, concept_id: int, checkpoint: str, task: str) -> str:
        """ready / partial (an unfinished run) / stale (trained on another VLM) / untrained, for `checkpoint`."""
        emb = self.load(concept_id, checkpoint, task)
        if emb is not None:
            return "ready" if emb.complete else "partial"
        return "stale" if self.other_checkpoints(concept_id) else "untrained"

    def remove(self, concept_id: int, checkpoint: str, task: str) -> None:
        self.path(concept_id, checkpoint, task).unlink(missing_ok=True)

    def export_research(self, concept_id: int, checkpoint: str, task: str, out_dir: Path, vlm_name: str) -> Path:
        """Write `concept_embeddings_<vlm>_<task>.pt` ({step: {"keys", "values"}}) for the reference code."""
        emb = self.load(concept_id, checkpoint, task)
        if emb is None:
            raise NotFound(f"concept {concept_id} has no {task} embedding for {checkpoint}")
        steps = {s: {"keys": emb.keys, "values": v} for s, v in (emb.history or {emb.step: emb.values}).items()}
        name = f"{EMBEDDINGS_PREFIX}{research_stems(vlm_name, task)[0]}.pt"
        return export_research_concept_embeddings(Path(out_dir) / name, steps)


def _check(emb: ConceptEmbedding) -> None:
    """What a VLM needs of an embedding: (1, D) finite float32 values, the same D in history and optimiser state."""
    values = emb.values
    if values.dtype != np.float32 or values.ndim != 2 or values.shape[0] != 1 or values.shape[1] < 1:
        raise ValueError(f"values are {values.dtype} {values.shape}, not float32 (1, D)")
    if not isinstance(emb.settings, dict):
        raise TypeError("settings are not a mapping")
    if emb.step < 0 or emb.steps_total < 0:
        raise ValueError(f"step {emb.step} of {emb.steps_total}")
    for name, arr in [("values", values), *((f"history.{k}", v) for k, v in emb.history.items()),
                      *((f"adam.{k}", v) for k, v in emb.adam.items())]:
        if arr.shape != values.shape or arr.dtype != np.float32:
            raise ValueError(f"{name} is {arr.dtype} {arr.shape}, not float32 {values.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} holds NaN or infinite values")


def as_numpy(x) -> np.ndarray:
    return np.asarray(x.detach().float().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
