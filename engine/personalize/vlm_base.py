"""The base of every VLM wrapper: the one interface MyVLM's trainer and captioner use, and its shared plumbing.

A `VlmWrapper` hides each architecture's plumbing (preprocessing, prompt layout, where the concept layer hooks in,
which attention the regulariser reads) behind the same few calls: `caption`, `answer` and `training_loss`. Each
family's file (blip2.py, llava.py, ...) subclasses it and imports only this module (and, for the LLaVA-style
families, llava.py); vlm.py finds a family's class by name when a model is loaded, so nothing here imports a family.
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

import torch
from PIL import Image

from .concept_layer import ConceptLayer
from .specs import VlmSpec, VlmTooLarge

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
                from .estimates import record_captions

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


THREAD_ENV = ("MYVLM_THREADS", "OMP_NUM_THREADS")   # set by the user (or the tests): torch's threads are left alone


@contextlib.contextmanager
def cpu_threads(device: torch.device, batch: bool) -> Iterator[None]:
    """torch's math threads for one query (every physical core) or a batch in the background (one core left for
    the window), on the CPU; unchanged where the user set them (hardware.torch_threads)."""
    if device.type != "cpu" or any(os.environ.get(k) for k in THREAD_ENV):
        yield
        return
    from ..hardware import detect, torch_threads

    before, want = torch.get_num_threads(), torch_threads(detect(), batch)
    if want != before:
        torch.set_num_threads(want)
    try:
        yield
    finally:
        if want != before:
            torch.set_num_threads(before)


