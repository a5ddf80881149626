"""The research entry point: train from a MyVLM concept folder and write the reference code's output files.

Input: `<folder>/` with images and captions.json / captions_augmented.json (+ additional_llava_vqa_data.json for
LLaVA VQA). Every image of the folder shows the concept (that is what the layout means), so the concept counts as
recognised in all of them. Output in `<out>/`: `concept_embeddings_<vlm>_<task>.pt` ({step: {"keys", "values"}}),
`inference_outputs_<vlm>_<task>.json` ({"iteration_N": {image: {prompt: text}}}) and our resumable safetensors
checkpoints under `checkpoints/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.domain.concepts.registry import OBJECT_TOKENS
from engine.domain.concepts.research import (
    IMAGE_SUFFIXES,
    _identifier_in_captions,
    read_research_captions,
    read_research_vqa,
)
from engine.domain.personalize.embeddings import RESEARCH_TASK, EmbeddingStore
from engine.domain.personalize.training import ConceptToTrain, ConceptTrainer, TrainingConfig, TrainingExample
from engine.errors import InvalidInput
from engine.ingest.images import decode
from engine.models.vlm.auto import VQA, load_vlm

CONCEPT_ID = 1   # the one concept of a research run


def _images(folder: Path) -> dict[str, Any]:
    return {p.name: decode(str(p), max_side=1024).image.convert("RGB") for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def run_research_training(folder: Path, out: Path, *, vlm: str, task: str, config: TrainingConfig | None,
                          models_dir: Path, eval_images: Path | None = None, progress=None) -> dict[str, Any]:
    captions = read_research_captions(folder)
    vqa = read_research_vqa(folder) if task == VQA else None
    images = _images(folder)
    if not images:
        raise InvalidInput(f"{folder} holds no images")
    identifier = _identifier_in_captions([c for cs in captions.values() for c in cs],
                                         [folder.name, *OBJECT_TOKENS]) or "sks"
    w = load_vlm(vlm, models_dir=models_dir)
    prompt = w.training_prompt(task, identifier)
    examples = []
    for name, image in images.items():
        pairs = [(prompt, c) for c in captions.get(name, [])]
        if vqa:
            pairs += [(q, a) for q, a in vqa.get(name, [])]
        if pairs:
            examples.append(TrainingExample(image, [CONCEPT_ID], pairs, name))
    if not examples:
        raise InvalidInput(f"no image of {folder} has captions to train on")
    out.mkdir(parents=True, exist_ok=True)
    store = EmbeddingStore(out / "checkpoints")
    keys = np.ones((len(examples), 1), np.float32)   # recognised by the folder itself: p(concept) = 1
    trainer = ConceptTrainer(w, store, config)
    result = trainer.train([ConceptToTrain(CONCEPT_ID, identifier, keys)], examples, task, progress=progress)
    emb = result[CONCEPT_ID]
    vlm_name = w.family
    emb_path = store.export_research(CONCEPT_ID, w.checkpoint, task, out, vlm_name)

    # personalised outputs at every checkpoint, as the reference code's inference script writes them
    targets = _images(eval_images) if eval_images else images
    names = list(targets)
    question = w.default_question(identifier) if task == VQA else None
    prompt_text = question or w.caption_prompt(identifier) or ""
    outputs: dict[str, dict[str, dict[str, str]]] = {}
    for step, values in sorted(emb.history.items()):
        w.set_concepts({CONCEPT_ID: torch.from_numpy(values[0].copy())})
        texts = w.generate([targets[n] for n in names], [prompt_text] * len(names), [[CONCEPT_ID]] * len(names))
        outputs[f"iteration_{step}"] = {n: {prompt_text: t} for n, t in zip(names, texts)}
    out_path = out / f"inference_outputs_{vlm_name}_{RESEARCH_TASK.get(task, task)}.json"
    out_path.write_text(json.dumps(outputs, indent=2, ensure_ascii=False), encoding="utf-8")
    return {"embeddings": str(emb_path), "outputs": str(out_path), "identifier": identifier, "steps": emb.step,
            "checkpoints": list(emb.history), "vlm": w.checkpoint, "task": task}
