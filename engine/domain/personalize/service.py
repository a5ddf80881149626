"""Personalisation for a library: targets, training, and personalised captions and answers of album photos.

This is where the catalog meets the VLM wrapper: which concepts fired on a photo (the concept heads' stored
signals), which of them have an embedding for the loaded VLM, which photos teach a concept and with what targets.
One `Personalizer` per thread (it holds a catalog); the VLM is loaded lazily, once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.domain.concepts.object_head import TrainingCancelled
from engine.domain.concepts.registry import PERSON, Concept, ConceptError, ConceptRegistry, photo_not_indexed
from engine.domain.concepts.research import VQA_FILE
from engine.domain.personalize import instant
from engine.domain.personalize.embeddings import EmbeddingStore
from engine.domain.personalize.generated import GeneratedText  # noqa: F401 - re-exported
from engine.domain.personalize.lease import training_lease
from engine.domain.personalize.targets import (
    TargetSet,
    caption_targets,
    class_words_for,
    personalize_answer,
    pick_class_word,
    questions_for,
)
from engine.domain.personalize.training import ConceptToTrain, ConceptTrainer, TrainingConfig, TrainingExample
from engine.models.hardware import resolve_vlm_name
from engine.models.vlm.auto import CAPTION, VQA, GenerationSettings, VlmWrapper, load_vlm
from engine.progress import ProgressFn, report
from engine.storage import paths as P
from engine.storage.catalog import Catalog, now

log = logging.getLogger(__name__)

VQA_TARGETS_FILE = "vqa_targets.json"   # concepts/<id>/: {example_id: [[question, answer], ...]}


@dataclass
class ExampleTargets:
    example_id: int
    label: str
    captions: list[str]
    needs_review: bool = False
    sources: list[str] = field(default_factory=list)
    qa: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"example_id": self.example_id, "image": self.label, "captions": self.captions,
                "needs_review": self.needs_review, "from": self.sources, "qa": self.qa}


class Personalizer:
    def __init__(self, catalog: Catalog, vlm: str | None = None, *, device: str | None = None,
                 wrapper: VlmWrapper | None = None):
        self.catalog = catalog
        self.registry = ConceptRegistry(catalog)
        self.store = EmbeddingStore(catalog.paths.concepts)
        self.vlm_name = resolve_vlm_name(catalog, vlm)
        self.device = device
        self._wrapper = wrapper
        self._loaded_task: str | None = None
        self._cache = None

    # -- the model ----------------------------------------------------------------------------------------------
    @property
    def wrapper(self) -> VlmWrapper:
        if self._wrapper is None:
            self._wrapper = shared_wrapper(self.vlm_name, self.catalog.paths.models, self.device)
        return self._wrapper

    @property
    def checkpoint(self) -> str:
        return self.wrapper.checkpoint

    def _use_embeddings(self, task: str) -> dict[int, Concept]:
        """Put every complete embedding for this VLM (and task, else captioning) into the concept layer."""
        concepts = {c.id: c for c in self.registry.list()}
        embs = self.store.for_checkpoint(self.checkpoint, task, list(concepts))
        if task != CAPTION:   # a captioning embedding still names the concept in answers
            for cid, e in self.store.for_checkpoint(self.checkpoint, CAPTION, list(concepts)).items():
                embs.setdefault(cid, e)
        self.wrapper.set_concepts({cid: torch.from_numpy(e.values[0].copy()) for cid, e in embs.items()})
        self._loaded_task = task
        return {cid: concepts[cid] for cid in embs}

    # -- images and signals -------------------------------------------------------------------------------------
    def _image_cache(self):
        if self._cache is None:
            from engine.ingest.image_cache import ImageCache

            self._cache = ImageCache(self.catalog.paths)
        return self._cache

    def photo_image(self, photo_id: int) -> Image.Image:
        row = self.catalog.query("SELECT path_bytes, content_hash, user_rotation FROM photos WHERE id = ?",
                                 [photo_id])
        if not row:
            raise ConceptError(f"no photo {photo_id}")
        r = row[0]
        if not r["content_hash"]:
            raise photo_not_indexed(photo_id)
        return self._image_cache().preview(P.to_fs(r["path_bytes"]), r["content_hash"],
                                           int(r["user_rotation"] or 0)).convert("RGB")

    def fired(self, photo_ids: Sequence[int]) -> dict[int, list[int]]:
        """Concepts whose current head fired on each photo (signals of an older head revision do not count)."""
        out: dict[int, list[int]] = {p: [] for p in photo_ids}
        if not photo_ids:
            return out
        marks = ",".join("?" * len(photo_ids))
        for r in self.catalog.query(
                f"SELECT s.photo_id, s.concept_id FROM concept_signals s JOIN concepts c ON c.id = s.concept_id "
                f"WHERE s.fired = 1 AND s.revision = c.head_revision AND s.photo_id IN ({marks}) "
                f"ORDER BY s.concept_id", list(photo_ids)):
            out[r["photo_id"]].append(r["concept_id"])
        return out

    def _example_image(self, concept_id: int, row: dict[str, Any]) -> tuple[Image.Image, str]:
        if row.get("photo_id") is not None:
            return self.photo_image(int(row["photo_id"])), P.display(row["path_bytes"])
        path = Path(row["path"])
        if not path.is_absolute():
            path = self.registry.folder(concept_id) / path
        if not path.exists():
            raise ConceptError(f"the training image {path} is missing")
        from engine.ingest.images import decode

        return decode(str(path), max_side=1024).image.convert("RGB"), path.name

    # -- targets ------------------------------------------------------------------------------------------------
    def _vqa_file(self, concept_id: int) -> Path:
        return self.registry.folder(concept_id) / VQA_TARGETS_FILE

    def _stored_qa(self, concept: Concept, rows: list[dict[str, Any]]) -> dict[int, list[list[str]]]:
        path = self._vqa_file(concept.id)
        out: dict[int, list[list[str]]] = {}
        if path.exists():
            out = {int(k): v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        imported = self.registry.folder(concept.id) / VQA_FILE   # research layout, keyed by image file name
        if imported.exists():
            by_name = json.loads(imported.read_text(encoding="utf-8"))
            for r in rows:
                if r.get("path") and Path(r["path"]).name in by_name:
                    out.setdefault(r["id"], by_name[Path(r["path"]).name])
        return out

    def targets(self, concept: int | str, task: str = CAPTION) -> list[ExampleTargets]:
        """What each training photo of a concept will be trained on, as stored."""
        c = self.registry.get(concept)
        rows = self.registry.examples(c.id)
        qa = self._stored_qa(c, rows) if task == VQA else {}
        out = []
        for r in rows:
            label = P.display(r["path_bytes"]) if r.get("path_bytes") else Path(r["path"] or "").name
            caps = json.loads(r["captions"]) if r.get("captions") else []
            out.append(ExampleTargets(r["id"], label, caps, qa=qa.get(r["id"], [])))
        return out

    def set_targets(self, example_id: int, captions: Sequence[str]) -> None:
        """The user's reviewed captions for one training photo (they win over generated ones)."""
        caps = [c.strip() for c in captions if c and c.strip()]
        if not caps:
            raise ConceptError("give at least one caption")
        with self.catalog.write():
            self.catalog.conn.execute("UPDATE concept_examples SET captions = ? WHERE id = ?",
                                      [json.dumps(caps), example_id])

    def prepare_targets(self, concept: int | str, task: str = CAPTION, regenerate: bool = False,
                        progress: ProgressFn | None = None) -> list[ExampleTargets]:
        """Caption the training photos with the original VLM and personalise the captions (and, for VQA, the
        generic questions' answers); photos that already have targets keep them unless `regenerate`. `progress`
        gets Progress("captions", photos captioned, photos to caption)."""
        c = self.registry.get(concept)
        rows = self.registry.examples(c.id)
        if not rows:
            raise ConceptError(f"{c.name} has no training photos")
        w = self.wrapper
        todo = [r for r in rows if regenerate or not r.get("captions")]
        images = {r["id"]: self._example_image(c.id, r)[0] for r in todo}
        originals: dict[int, list[str]] = {}
        for i, r in enumerate(todo):
            img = images[r["id"]]
            greedy = w.caption([img], prompt=w.caption_prompt(None))[0]
            beams = w.generate([img], [w.caption_prompt(None)], None,   # a second wording, for variety
                               GenerationSettings(num_beams=3)) if w.family == "blip2" else []
            originals[r["id"]] = [greedy, *beams]
            report(progress, "captions", i + 1, len(todo))
        candidates = class_words_for(c.kind, c.name)
        class_word = pick_class_word([t for caps in originals.values() for t in caps], candidates)
        results: dict[int, TargetSet] = {}
        for r in todo:
            results[r["id"]] = caption_targets(originals[r["id"]], class_word, c.identifier)
        with self.catalog.write():
            for rid, ts in results.items():
                self.catalog.conn.execute("UPDATE concept_examples SET captions = ? WHERE id = ?",
                                          [json.dumps(ts.captions), rid])
        if task == VQA:
            self._prepare_vqa(c, rows, class_word, regenerate)
        out = self.targets(c.id, task)
        for t in out:
            if t.example_id in results:
                t.needs_review = results[t.example_id].needs_review
                t.sources = results[t.example_id].sources
        return out

    def _prepare_vqa(self, c: Concept, rows: list[dict[str, Any]], class_word: str | None, regenerate: bool
                     ) -> None:
        """Generic questions asked with the class word, answered by the original VLM, then personalised."""
        stored = {} if regenerate else self._stored_qa(c, rows)
        subject = f"the {class_word}" if class_word else ("the person" if c.kind == PERSON else "the object")
        generic = questions_for(c.kind, subject)
        personal = questions_for(c.kind, c.identifier)
        w = self.wrapper
        for r in rows:
            if r["id"] in stored:
                continue
            img = self._example_image(c.id, r)[0]
            answers = w.answer([img] * len(generic), generic)   # no concept tokens: the original model
            stored[r["id"]] = [[q, personalize_answer(a, class_word, c.identifier)]
                               for q, a in zip(personal, answers) if a.strip()]
        path = self._vqa_file(c.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(k): v for k, v in stored.items()}, indent=1, ensure_ascii=False),
                        encoding="utf-8")

    # -- training -----------------------------------------------------------------------------------------------
    def _keys(self, c: Concept, example_photo_ids: list[int | None]) -> np.ndarray:
        """What the concept was recognised by: a person's reference faces; an object's head scores."""
        head = self.registry.head(c.id)
        if c.kind == PERSON and head is not None and "references" in head.tensors:
            return head.tensors["references"].astype(np.float32)
        scores = []
        for pid in example_photo_ids:
            s = self.catalog.scalar("SELECT score FROM concept_signals WHERE photo_id = ? AND concept_id = ?",
                                    [pid, c.id]) if pid is not None else None
            scores.append(1.0 if s is None else float(s))
        return np.asarray(scores, dtype=np.float32).reshape(-1, 1)

    def training_set(self, concepts: Sequence[Concept], task: str) -> tuple[list[ConceptToTrain],
                                                                            list[TrainingExample]]:
        w = self.wrapper
        ids = {c.id for c in concepts}
        todo: list[ConceptToTrain] = []
        examples: list[TrainingExample] = []
        for c in concepts:
            rows = self.registry.examples(c.id)
            if not rows:
                raise ConceptError(f"{c.name} has no training photos")
            fired = self.fired([r["photo_id"] for r in rows if r.get("photo_id") is not None])
            qa = self._stored_qa(c, rows) if task == VQA else {}
            todo.append(ConceptToTrain(c.id, c.identifier, self._keys(c, [r.get("photo_id") for r in rows])))
            prompt = w.training_prompt(task, c.identifier)
            for r in rows:
                caps = json.loads(r["captions"]) if r.get("captions") else []
                pairs = [(prompt, t) for t in caps]
                if task == VQA:
                    pairs += [(q, a) for q, a in qa.get(r["id"], [])]
                if not pairs:
                    continue
                image, label = self._example_image(c.id, r)
                # the concept itself (the user says it is there) plus the other concepts of this run that fired
                present = sorted({c.id} | (set(fired.get(r["photo_id"], [])) & ids))
                examples.append(TrainingExample(image, present, pairs, label))
        return todo, examples

    def train(self, concepts: Sequence[int | str], task: str = CAPTION, config: TrainingConfig | None = None,
              progress=None, cancel=None, prepare: bool = True, resume: bool = True):
        """Train the concepts' embeddings together on the library's VLM; targets are prepared first if missing."""
        found = [self.registry.get(c) for c in concepts]
        if prepare:
            for c in found:
                if any(not t.captions for t in self.targets(c.id, task)) or (
                        task == VQA and not self._vqa_file(c.id).exists()
                        and not (self.registry.folder(c.id) / VQA_FILE).exists()):
                    self.prepare_targets(c.id, task)
        todo, examples = self.training_set(found, task)
        trainer = ConceptTrainer(self.wrapper, self.store, config)
        # the lease first, then the mark: a library opened while this runs sees a live lease and leaves the mark
        with training_lease(self.registry.folder(c.id) for c in found):
            return self._train_marked(found, trainer, todo, examples, task, progress, cancel, resume)

    def _train_marked(self, found: list[Concept], trainer: ConceptTrainer, todo, examples, task: str, progress,
                      cancel, resume: bool):
        with self.catalog.write():
            self.catalog.conn.executemany("UPDATE concepts SET embedding_state = 'training', updated_at = ? "
                                          "WHERE id = ?", [[now(), c.id] for c in found])
        try:
            result = trainer.train(todo, examples, task, progress=progress, cancel=cancel, resume=resume)
        except BaseException as exc:
            # stopped on purpose (Stop, Ctrl-C): partial or untrained. Anything else (out of memory, a full disk,
            # a bug) is a failed job, with its message; its last checkpoint is kept and teaching again resumes.
            stopped = isinstance(exc, (TrainingCancelled, KeyboardInterrupt))
            partial = any(self.store.load(c.id, self.checkpoint, task) for c in found)
            state = ("partial" if partial else "untrained") if stopped else "failed"
            error = None if stopped and partial else (str(exc) or type(exc).__name__)[:500]
            try:
                with self.catalog.write():
                    self.catalog.conn.executemany(
                        "UPDATE concepts SET embedding_state = ?, last_error = ?, updated_at = ? WHERE id = ?",
                        [[state, error, now(), c.id] for c in found])
            except Exception:  # e.g. the disk is full: the training's own error is the one to show
                log.exception("could not record the training's end")
            raise
        self._loaded_task = None
        with self.catalog.write():
            self.catalog.conn.executemany("UPDATE concepts SET embedding_state = 'ready', last_error = NULL, "
                                          "updated_at = ? WHERE id = ?", [[now(), c.id] for c in found])
            # personalised captions of the photos these concepts appear in are out of date now
            for c in found:
                self.catalog.conn.execute(
                    "DELETE FROM stage_status WHERE stage = 'captions' AND photo_id IN "
                    "(SELECT photo_id FROM concept_signals WHERE concept_id = ? AND fired = 1)", [c.id])
        return result

    def embedding_state(self, concept: Concept, task: str = CAPTION, checkpoint: str | None = None) -> str:
        """ready / partial (an unfinished run) / stale (trained on another VLM) / untrained — for this VLM."""
        return self.store.state(concept.id, checkpoint or self.checkpoint, task)

    def refresh_states(self) -> dict[int, str]:
        """Write each concept's embedding state for the library's VLM (after switching VLMs: trained → stale),
        without loading the model."""
        from engine.models.vlm.auto import resolve_spec

        checkpoint = resolve_spec(self.vlm_name)[1]
        states = {c.id: self.embedding_state(c, CAPTION, checkpoint) for c in self.registry.list()}
        with self.catalog.write():
            self.catalog.conn.executemany("UPDATE concepts SET embedding_state = ?, updated_at = ? WHERE id = ?",
                                          [[st, now(), cid] for cid, st in states.items()])
        return states

    # -- inference ----------------------------------------------------------------------------------------------
    def caption_images(self, images: Sequence[Image.Image], fired: Sequence[Sequence[int]],
                       personalized: bool = True) -> list[GeneratedText]:
        """Captions of a batch; images with fired, trained concepts get their tokens (and the per-VLM prompt)."""
        with self.wrapper.lock:
            known = self._use_embeddings(CAPTION) if personalized else {}
            return caption_with(self.wrapper, images, fired, known)

    def caption(self, photo_id: int, personalized: bool = True) -> GeneratedText:
        """A photo's caption: personalised where a trained concept fired, else named from recognition (instant
        names, when on), else the original."""
        image = self.photo_image(photo_id)
        g = self.caption_images([image], [self.fired([photo_id])[photo_id]], personalized)[0]
        if personalized and not g.personalized and instant.enabled(self.catalog):
            scene = instant.scenes(self.catalog, [photo_id])[photo_id]
            with self.wrapper.lock:
                named = instant.instant_captions(self.wrapper, [image], [scene], [g.text])[0]
            return named or g
        return g

    def ask(self, photo_id: int, question: str) -> GeneratedText:
        """Answer a question about a photo; concept names in the question become the model's identifiers. People
        and things recognised here without a trained embedding are named in the prompt (instant names) for the
        instruction-following VLMs."""
        from engine.domain.captions import to_template

        w = self.wrapper
        task = VQA if VQA in w.spec.tasks else CAPTION
        with w.lock:
            known = self._use_embeddings(task)
        fired = [c for c in self.fired([photo_id])[photo_id] if c in known]
        scene = instant.Scene(photo_id)
        if instant.follows_instructions(w.family) and instant.enabled(self.catalog):
            scene = instant.scenes(self.catalog, [photo_id])[photo_id]
            scene.seen = [s for s in scene.seen if s.concept_id not in fired]
        q = question
        for cid in fired:   # "What is Alex's dog doing?" → the identifier the embedding was trained with
            c = known[cid]
            for name in {c.name, c.identifier} - {""}:
                q = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", c.identifier, q, flags=re.IGNORECASE)
        image = self.photo_image(photo_id)
        original = self.catalog.scalar("SELECT template FROM captions WHERE photo_id = ? AND kind = 'original'",
                                       [photo_id]) or ""   # says "a man" or "a woman", for the context sentence
        prompt = instant.instructed_prompt(scene, q, original) if scene.seen else q
        with w.lock:
            known = self._use_embeddings(task)
            text = w.answer([image], [prompt], [fired])[0]
        idmap = {known[c].identifier: c for c in fired}
        template = to_template(text, idmap)
        if scene.seen:
            template = instant.names_to_placeholders(scene, template)
        named = [s for s in scene.seen if s.placeholder in template]   # the answer used a name it was told
        ids = fired + [s.concept_id for s in named if s.concept_id is not None]
        return GeneratedText(text, template, list(dict.fromkeys(ids)), w.checkpoint, prompt, bool(fired),
                             instant=bool(named))



_WRAPPERS: dict[tuple[str, str, str | None], VlmWrapper] = {}
_WRAPPERS_LOCK = threading.Lock()


def shared_wrapper(name: str, models_dir: Path, device: str | None = None) -> VlmWrapper:
    """One loaded VLM per process, however many front doors and stages ask for it."""
    key = (name, str(models_dir), device)
    with _WRAPPERS_LOCK:
        if key not in _WRAPPERS:
            _WRAPPERS[key] = load_vlm(name, models_dir=models_dir, device=device)
        return _WRAPPERS[key]


def caption_with(w: VlmWrapper, images: Sequence[Image.Image], fired: Sequence[Sequence[int]],
                 known: dict[int, Concept]) -> list[GeneratedText]:
    """Personalised captions where trained concepts fired, original captions elsewhere (no catalog access)."""
    from engine.domain.captions import to_template

    use = [[c for c in f if c in known] for f in fired]
    prompts = [w.caption_prompt(" and ".join(known[c].identifier for c in u) if u else None) for u in use]
    texts = w.generate(list(images), prompts, use)
    out = []
    for t, u, p in zip(texts, use, prompts):
        idmap = {known[c].identifier: c for c in u}
        out.append(GeneratedText(t, to_template(t, idmap), u, w.checkpoint, p, bool(u)))
    return out
