"""Captions stage: the original caption of every photo, and a personalised one where trained concepts appear.

Photos go through the VLM in batches (one forward pass per group of photos with the same number of concept tokens).
Captions are stored with concept placeholders, so renaming a person needs no model. Training a concept clears this
stage's status for the photos it appears in, so the next run re-captions just those; so do naming a person and
training a thing's head, whose photos then get a caption named from recognition (personalize/instant.py) until the
concept's embedding is trained. Without the VLM's weights the
stage is skipped with the reason and the rest of the pipeline goes on.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from engine.domain.concepts.registry import ConceptRegistry
from engine.models.files import ModelLoadError, vlm_quick_problem
from engine.models.hardware import resolve_vlm_name
from engine.models.vlm.checkpoints import checkpoint_folder
from engine.models.vlm.specs import CAPTION, VlmError, resolve_spec
from engine.pipeline.runner import Job, Stage, StageUnavailable
from engine.pipeline.thumbnails import ImageCache
from engine.storage.catalog import Catalog

if TYPE_CHECKING:   # the model code (torch, transformers) is imported when captions are made, not to ask status
    from engine.domain.personalize.service import GeneratedText

CODE_VERSION = 1


class CaptionStage(Stage):
    name = "captions"
    requires = ("concepts",)
    workers = 1          # the model uses every core (or the GPU) itself
    batch_size = 8

    def __init__(self) -> None:
        self.version = CODE_VERSION
        self._option: str | None = None
        self._device: str | None = None
        self._name = ""
        self._models_dir = None
        self._cache: ImageCache | None = None
        self._fired: dict[int, list[int]] = {}
        self._rotation: dict[int, int] = {}
        self._known: dict = {}
        self._scenes: dict = {}

    def configure(self, vlm: str | None = None, device: str | None = None, **_: object) -> None:
        self._option, self._device = vlm, device

    def setup(self, catalog: Catalog) -> None:
        self._name = resolve_vlm_name(catalog, self._option)
        self._models_dir = catalog.paths.models
        self._cache = ImageCache(catalog.paths)
        try:
            _spec, checkpoint = resolve_spec(self._name)
        except VlmError:
            checkpoint = self._name
        self.version = zlib.crc32(f"{CODE_VERSION}:{checkpoint}".encode()) & 0x7FFFFFFF

    def unavailable(self, catalog: Catalog) -> str | None:
        """Missing weights, or safetensors whose header does not match their size (a cheap check, no torch)."""
        try:
            spec, checkpoint = resolve_spec(self._name)
            if not spec.tiny:
                return vlm_quick_problem(spec, checkpoint_folder(spec, checkpoint, catalog.paths.models))
        except VlmError as exc:
            return str(exc)
        return None

    def before_work(self, catalog: Catalog, jobs: list[Job]) -> None:
        from engine.domain.personalize.embeddings import EmbeddingStore
        from engine.domain.personalize.service import Personalizer, shared_wrapper

        try:
            wrapper = shared_wrapper(self._name, self._models_dir, self._device)
        except (ModelLoadError, VlmError) as exc:  # e.g. a pickle refused: this stage waits, the others go on
            raise StageUnavailable(str(exc)) from exc
        p = Personalizer(catalog, self._name, wrapper=wrapper)
        ids = [j.photo_id for j in jobs]
        self._fired = p.fired(ids)
        self._rotation = {r["id"]: int(r["user_rotation"] or 0) for r in catalog.query(
            f"SELECT id, user_rotation FROM photos WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else {}
        concepts = {c.id: c for c in ConceptRegistry(catalog).list()}
        embs = EmbeddingStore(catalog.paths.concepts).for_checkpoint(wrapper.checkpoint, CAPTION, list(concepts))
        import torch

        with wrapper.lock:
            wrapper.set_concepts({cid: torch.from_numpy(e.values[0].copy()) for cid, e in embs.items()})
        self._known = {cid: concepts[cid] for cid in embs}
        from engine.domain.personalize import instant

        self._scenes = instant.scenes(catalog, ids) if instant.enabled(catalog) else {}

    def process_batch(self, jobs: list[Job]) -> list[list[GeneratedText] | Exception]:
        from engine.domain.personalize.instant import Scene, instant_captions
        from engine.domain.personalize.service import caption_with, shared_wrapper

        assert self._cache is not None
        wrapper = shared_wrapper(self._name, self._models_dir, self._device)
        out: list = [RuntimeError("not processed")] * len(jobs)
        images, ok = [], []
        for i, job in enumerate(jobs):
            try:
                images.append(self._cache.preview(job.fs_path, job.content_hash,
                                                  self._rotation.get(job.photo_id, 0)).convert("RGB"))
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - that photo's error
                out[i] = exc
        if not images:
            return out
        fired = [self._fired.get(jobs[i].photo_id, []) for i in ok]
        original = caption_with(wrapper, images, [[] for _ in images], {})
        personal_idx = [n for n, f in enumerate(fired) if any(c in self._known for c in f)]
        personal = caption_with(wrapper, [images[n] for n in personal_idx], [fired[n] for n in personal_idx],
                                self._known) if personal_idx else []
        by_n = dict(zip(personal_idx, personal))
        # no trained concept fired: name the recognised people and things from recognition instead
        scenes = [self._scenes.get(jobs[i].photo_id) or Scene(jobs[i].photo_id) for i in ok]
        rest = [n for n in range(len(ok)) if n not in by_n and scenes[n].seen]
        if rest:
            named = instant_captions(wrapper, [images[n] for n in rest], [scenes[n] for n in rest],
                                     [original[n].text for n in rest])
            by_n.update((n, g) for n, g in zip(rest, named) if g is not None)
        for n, i in enumerate(ok):
            out[i] = [original[n]] + ([by_n[n]] if n in by_n else [])
        return out

    def process(self, job: Job) -> list[GeneratedText]:
        result = self.process_batch([job])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def commit(self, catalog: Catalog, job: Job, result: list[GeneratedText]) -> None:
        from engine.domain.captions import PERSONALIZED, CaptionStore

        store = CaptionStore(catalog)
        for g in result:
            store.put_generated(job.photo_id, g)
        if not any(g.personalized or g.instant for g in result):   # nobody named here (any more): no stale name
            store.drop_generated(job.photo_id, PERSONALIZED)
