"""The base of every VLM wrapper: the one interface MyVLM's trainer and captioner use, and its shared plumbing.

A `VlmWrapper` hides each architecture's plumbing (preprocessing, prompt layout, where the concept layer hooks in,
which attention the regulariser reads) behind the same few calls: `caption`, `answer` and `training_loss`.
`DecoderVlmWrapper` is the plumbing of the families whose language model reads the photo as prompt tokens (all but
BLIP-2). Each family's file (blip2.py, llava.py, smolvlm.py, ...) subclasses one of them and imports only this module
(LLaVA-OneVision, LLaVA's layout, also llava.py); auto.py finds a family's class by name when a model is loaded, so
nothing here imports a family.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from engine.models.vlm.concept_layer import ConceptLayer
from engine.models.vlm.specs import VlmSpec, VlmTooLarge

if TYPE_CHECKING:
    from engine.models.hardware import Placement

log = logging.getLogger(__name__)


@dataclass
class GenerationSettings:
    """docs/method.md §11: BLIP-2 greedy; LLaVA temperature 0.2, top-p 0.7. A seed makes sampling repeatable."""

    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = 0
    num_beams: int = 1

    def kwargs(self) -> dict:
        kw: dict = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, "num_beams": self.num_beams}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        return kw


@dataclass
class LossParts:
    total: torch.Tensor
    lm: torch.Tensor
    reg: torch.Tensor
    attention: list[torch.Tensor] = field(default_factory=list)  # what the regulariser read, for tests and tools


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU — or what the user asked for."""
    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, preferred: str | torch.dtype | None = None) -> torch.dtype:
    """bf16 on GPUs (fp16 on MPS, where bf16 kernels are patchy), fp32 on CPU."""
    if isinstance(preferred, torch.dtype):
        return preferred
    if preferred:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[preferred]
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def check_memory(spec: VlmSpec, device: torch.device, dtype: torch.dtype, quantized_4bit: bool = False,
                 offload: bool = False) -> None:
    """Refuse clearly, before loading, when the weights cannot fit (rather than swapping the machine to death).
    A model split between the GPU and RAM (`offload`, planned by hardware.plan_placement) was checked there."""
    if spec.params_b <= 0 or offload:
        return
    bytes_per = 0.55 if quantized_4bit else torch.finfo(dtype).bits / 8
    need = spec.params_b * 1e9 * bytes_per * 1.15  # weights plus activations and allocator slack
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        where = "GPU memory"
    else:
        import psutil

        free = psutil.virtual_memory().available
        where = "free RAM"
    if need > free:
        raise VlmTooLarge(
            f"{spec.title} needs about {need / 2**30:.1f} GiB of {where} in {str(dtype).removeprefix('torch.')}"
            f"{' (4-bit)' if quantized_4bit else ''}; this machine has {free / 2**30:.1f} GiB free. "
            f"Use a smaller model (e.g. --vlm blip2) or a machine with a GPU.")


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Sampling that repeats for a seed without disturbing the caller's random state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class VlmWrapper(ABC):
    """A frozen VLM with a MyVLM concept layer on it."""

    family: str = ""
    concept_layer: ConceptLayer

    def __init__(self, model, processor, spec: VlmSpec, checkpoint: str, device: torch.device, dtype: torch.dtype):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.spec = spec
        self.checkpoint = checkpoint   # recorded with every concept embedding trained on this model
        self.device = device
        self.dtype = dtype
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._capture = False
        self._attentions: list[torch.Tensor] = []
        # remember how long captions take on this computer (estimates.py); not for the tiny test presets
        self.record_timings = not spec.tiny
        # the concept layer holds per-call state: one caller at a time (GUI request vs. captions stage)
        self.lock = threading.RLock()

    # -- what each architecture provides ------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Pixel tensor (B, 3, H, W) on the model's device."""

    @abstractmethod
    def _generate(self, pixels: torch.Tensor, prompts: list[str], settings: GenerationSettings) -> list[str]:
        """Generate for one group of images that carry the same number of concept tokens (already set active)."""

    @abstractmethod
    def _lm_loss(self, pixels: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """The language-model loss of `targets` for one group (concepts already set active)."""

    @abstractmethod
    def _regulariser(self, attentions: list[torch.Tensor], k: int, reg_lambda: float) -> torch.Tensor:
        """λ-weighted attention penalty on the appended tokens, from the attentions captured in the last forward."""

    @abstractmethod
    def _training_attention(self) -> contextlib.AbstractContextManager:
        """Switch the attention the regulariser reads to an implementation that returns probabilities."""

    # Whether the concept token enters after everything `visual_features` computes, so that the trainer may run the
    # frozen vision tower once per augmented view and reuse its output at every step (`training_loss(features=)`).
    caches_features: bool = False

    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen vision tower's output for pixels, before the module the concept layer hooks."""
        raise NotImplementedError(f"{type(self).__name__} appends its token inside the vision tower")

    def _lm_loss_features(self, features: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """`_lm_loss` from `visual_features` computed earlier."""
        raise NotImplementedError(f"{type(self).__name__} appends its token inside the vision tower")

    def caption_prompt(self, identifier: str | None = None) -> str:
        return ""

    def training_prompt(self, task: str, identifier: str) -> str:
        return ""

    def default_question(self, identifier: str) -> str:
        return f"What is {identifier} doing in the image?"

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings()

    @property
    def concept_dim(self) -> int:
        return self.concept_layer.dim

    @property
    def checkpoint_name(self) -> str:
        return self.checkpoint

    # -- shared plumbing ----------------------------------------------------------------------------------------
    @staticmethod
    def group_by_count(concepts: Sequence[Sequence[int]]) -> dict[int, list[int]]:
        """Image indices grouped by how many concept tokens they carry (one forward pass per group)."""
        groups: dict[int, list[int]] = {}
        for i, ids in enumerate(concepts):
            groups.setdefault(len(set(ids)), []).append(i)
        return groups

    def _known(self, concepts: Sequence[Sequence[int]] | None, n: int) -> list[list[int]]:
        if concepts is None:
            return [[] for _ in range(n)]
        if len(concepts) != n:
            raise ValueError(f"{n} images but concept lists for {len(concepts)}")
        return [sorted({c for c in ids if self.concept_layer.knows(c)}) for ids in concepts]

    @contextlib.contextmanager
    def _active(self, concepts: list[list[int]]) -> Iterator[None]:
        self.concept_layer.set_active(concepts)
        try:
            yield
        finally:
            self.concept_layer.set_active(None)

    @torch.no_grad()
    def generate(self, images: Sequence[Image.Image] | torch.Tensor, prompts: Sequence[str],
                 concepts: Sequence[Sequence[int]] | None = None,
                 settings: GenerationSettings | None = None) -> list[str]:
        """Text for each image; images whose concepts fired get their tokens, the others run untouched."""
        pixels = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        n = pixels.shape[0]
        if len(prompts) != n:
            raise ValueError(f"{n} images but {len(prompts)} prompts")
        settings = settings or self.generation_settings()
        out: list[str] = [""] * n
        with self.lock, cpu_threads(self.device, batch=n > 1):
            started = time.perf_counter()
            concepts = self._known(concepts, n)
            for _k, idx in sorted(self.group_by_count(concepts).items()):
                with self._active([concepts[i] for i in idx]):
                    texts = self._generate(pixels[idx], [prompts[i] for i in idx], settings)
                for i, t in zip(idx, texts):
                    out[i] = t.strip()
            if self.record_timings:
                from engine.models.vlm.estimates import record_captions

                record_captions(self.spec.key, self.device, time.perf_counter() - started, n)
        return out

    def caption(self, images, concepts=None, prompt: str | None = None,
                identifiers: Sequence[str | None] | None = None, settings: GenerationSettings | None = None
                ) -> list[str]:
        """Captions; `prompt` overrides the per-VLM default, which may name the concept (`identifiers`)."""
        n = images.shape[0] if isinstance(images, torch.Tensor) else len(images)
        if prompt is not None:
            prompts = [prompt] * n
        else:
            idents = list(identifiers) if identifiers is not None else [None] * n
            prompts = [self.caption_prompt(i) for i in idents]
        return self.generate(images, prompts, concepts, settings)

    def answer(self, images, questions: Sequence[str], concepts=None, settings: GenerationSettings | None = None
               ) -> list[str]:
        return self.generate(images, list(questions), concepts, settings)

    def training_loss(self, pixels: torch.Tensor | None, prompts: Sequence[str], targets: Sequence[str],
                      concepts: Sequence[Sequence[int]], reg_lambda: float, *,
                      features: torch.Tensor | None = None) -> LossParts:
        """LM loss plus the attention regulariser, averaged over the images (grouped by concept-token count).
        Give `features` (from `visual_features`) instead of pixels to skip the vision tower."""
        if features is not None:
            inputs, lm_loss = features, self._lm_loss_features
        elif pixels is not None:
            inputs, lm_loss = pixels, self._lm_loss
        else:
            raise ValueError("training_loss needs pixels or features")
        n = inputs.shape[0]
        concepts = self._known(concepts, n)
        lm_total = inputs.new_zeros((), dtype=torch.float32)
        reg_total = inputs.new_zeros((), dtype=torch.float32)
        captured: list[torch.Tensor] = []
        with self._training_attention():
            for k, idx in sorted(self.group_by_count(concepts).items()):
                self._attentions = []
                self._capture = k > 0 and reg_lambda > 0
                try:
                    with self._active([concepts[i] for i in idx]):
                        lm = lm_loss(inputs[idx], [prompts[i] for i in idx], [targets[i] for i in idx])
                        reg = (self._regulariser(self._attentions, k, reg_lambda) if self._capture
                               else lm.new_zeros(()))
                finally:
                    self._capture = False
                captured.extend(self._attentions)
                w = len(idx) / n
                lm_total = lm_total + lm.float() * w
                reg_total = reg_total + reg.float() * w
        return LossParts(lm_total + reg_total, lm_total, reg_total, captured)

    def set_concepts(self, values: dict[int, torch.Tensor], trainable: bool = False) -> None:
        self.concept_layer.set_values(values, trainable=trainable)
        self.concept_layer.to(self.device)


class DecoderVlmWrapper(VlmWrapper):
    """A VLM whose language model reads the photo as tokens of its prompt (LLaVA, LLaVA-OneVision, SmolVLM,
    Qwen2-VL, MiniGPT-v2): the projector's output, with the concept tokens appended, replaces the image placeholders;
    the loss is the language model's on the answer; the regulariser reads the language model's attention rows of
    the concept tokens. A family sets up `image_token_id`, `projector`, `language_model` and the concept layer in its
    `__init__` and says its chat layout (`chat_prompt`, `_answer_ids`) and its frozen tower (`visual_features`)."""

    model_class = ""   # transformers' class, by name: `load` takes it from the checkpoint folder

    @classmethod
    def load(cls, folder: Path, spec: VlmSpec, checkpoint: str, device: torch.device, dtype: torch.dtype,
             quantized_4bit: bool = False, placement: Placement | None = None) -> DecoderVlmWrapper:
        import transformers
        from transformers import AutoProcessor

        model_class = getattr(transformers, cls.model_class)
        kwargs: dict = {"dtype": dtype, "device_map": {"": str(device)}, "local_files_only": True}
        if placement is not None:   # a GPU too small for the model: accelerate puts the rest in RAM
            kwargs.update(placement.from_pretrained_kwargs())
        if quantized_4bit:
            from transformers import BitsAndBytesConfig

            # The projector stays in bf16: the concept layer hooks it and gradients flow through it.
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4",
                llm_int8_skip_modules=["multi_modal_projector", "lm_head", "vision_tower"])
        from engine.models.files import checked_load, vlm_terms

        what, name = vlm_terms(spec)
        with checked_load(what, folder, name):
            model = model_class.from_pretrained(folder, **kwargs)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        return cls(model, processor, spec, checkpoint, device, dtype)

    # -- prompts ------------------------------------------------------------------------------------------------
    def caption_prompt(self, identifier: str | None = None) -> str:
        return f"Please caption this image of {identifier}." if identifier else "Please caption this image."

    def training_prompt(self, task: str, identifier: str) -> str:
        return self.caption_prompt(identifier)

    def chat_prompt(self, question: str) -> str:
        """The conversation template around `<image>` and the question that the checkpoint was tuned with."""
        raise NotImplementedError

    # -- hooks --------------------------------------------------------------------------------------------------
    def _capture_probs(self, module, args, out):
        if self._capture and isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
            self._attentions.append(out[1])                                              # (B, H, T, T)

    @contextlib.contextmanager
    def _training_attention(self):
        lm = self.language_model
        before = lm.config._attn_implementation
        if before != "eager":
            lm.set_attn_implementation("eager")
        try:
            yield
        finally:
            if before != "eager":
                lm.set_attn_implementation(before)

    # -- inputs -------------------------------------------------------------------------------------------------
    caches_features = True

    def _visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 576 + k, D): one view through the tower and the projector, where the concept layer appends."""
        return self.projector(self.visual_features(pixels))

    def _answer_ids(self, answer: str) -> list[int]:
        """The target tokens after the prompt, ending as the checkpoint ends a turn."""
        return self.tokenizer(" " + answer, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    def _embed(self, pixels: torch.Tensor, texts: list[str], answers: list[str] | None = None, *, left_pad: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self._embed_projected(self._visual_features(pixels), texts, answers, left_pad=left_pad)

    def _embed_projected(self, feats: torch.Tensor, texts: list[str], answers: list[str] | None = None, *,
                         left_pad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """inputs_embeds, attention_mask and (with answers) labels; the projected image tokens (B, n + k, D)
        scattered in place of one `<image>` placeholder each."""
        n_vis = feats.shape[1]
        k = self.concept_layer.appended
        rows, label_rows = [], []
        for i, text in enumerate(texts):
            before, after = text.split("<image>", 1)
            ids = (self.tokenizer(before).input_ids + [self.image_token_id] * n_vis
                   + self.tokenizer(after, add_special_tokens=False).input_ids)
            labels = [-100] * len(ids)
            if answers is not None:
                tail = self._answer_ids(answers[i])
                ids, labels = ids + tail, labels + tail
            rows.append(ids)
            label_rows.append(labels)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = []
        for i, (r, lr) in enumerate(zip(rows, label_rows)):
            start = width - len(r) if left_pad else 0
            input_ids[i, start:start + len(r)] = torch.tensor(r)
            mask[i, start:start + len(r)] = 1
            labels[i, start:start + len(r)] = torch.tensor(lr)
            image_pos = (input_ids[i] == self.image_token_id).nonzero().flatten()
            positions.append(image_pos[n_vis - k:] if k else image_pos[:0])
        input_ids, mask, labels = input_ids.to(self.device), mask.to(self.device), labels.to(self.device)
        self._concept_positions = torch.stack(positions) if k else None
        embeds = self._embed_with_image_tokens(input_ids, feats)
        return embeds, mask, (labels if answers is not None else None)

    def _embed_with_image_tokens(self, input_ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """The text embeddings with the visual tokens (and appended concept tokens) in the image placeholders.
        input_ids (B, L) with B*n_vis placeholders; feats (B, n_vis, D) → (B, L, D)."""
        embeds = self.model.get_input_embeddings()(input_ids)
        flat = feats.reshape(-1, feats.shape[-1]).to(embeds.device, embeds.dtype)
        placeholder = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        if int(placeholder.sum()) != flat.numel():
            raise RuntimeError(f"{int(placeholder.sum()) // embeds.shape[-1]} image placeholders for "
                               f"{flat.shape[0]} image tokens")
        return embeds.masked_scatter(placeholder, flat)

    def _generate(self, pixels: torch.Tensor, prompts: list[str], settings: GenerationSettings) -> list[str]:
        texts = [self.chat_prompt(p) for p in prompts]
        embeds, mask, _ = self._embed(pixels, texts, left_pad=True)
        with seeded(settings.seed, self.device):
            out = self.model.generate(inputs_embeds=embeds, attention_mask=mask,
                                      pad_token_id=self.tokenizer.pad_token_id, **settings.kwargs())
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _lm_loss(self, pixels: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        return self._lm_loss_features(self.visual_features(pixels), prompts, targets)

    def _lm_loss_features(self, features: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        texts = [self.chat_prompt(p) for p in prompts]
        embeds, mask, labels = self._embed_projected(self.projector(features), texts, targets, left_pad=False)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        return out.loss

    def _regulariser(self, attentions: list[torch.Tensor], k: int, reg_lambda: float) -> torch.Tensor:
        """λ · mean(attention row of each concept token)², summed over layers and images (as the reference)."""
        pos = self._concept_positions
        if pos is None or not attentions:
            raise RuntimeError("the language model returned no attention probabilities to regularise")
        terms = []
        for probs in attentions:                                   # (B, H, T, T) per decoder layer
            for b in range(probs.shape[0]):
                rows = probs[b, :, pos[b], :]                      # (H, k, T): what the concept tokens attend to
                terms.append(reg_lambda * (rows.float() ** 2).mean())
        return torch.stack(terms).sum()


THREAD_ENV = ("MYVLM_THREADS", "OMP_NUM_THREADS")   # set by the user (or the tests): torch's threads are left alone


@contextlib.contextmanager
def cpu_threads(device: torch.device, batch: bool) -> Iterator[None]:
    """torch's math threads for one query (every physical core) or a batch in the background (one core left for
    the window), on the CPU; unchanged where the user set them (hardware.torch_threads)."""
    if device.type != "cpu" or any(os.environ.get(k) for k in THREAD_ENV):
        yield
        return
    from engine.models.hardware import detect, torch_threads

    before, want = torch.get_num_threads(), torch_threads(detect(), batch)
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


