"""CLIP image and text embeddings (open_clip), behind one small interface.

Weights come only from places the user put them: the Hugging Face cache (downloaded on the user's request) or a
local file. Nothing here downloads; when weights are missing, `ClipWeightsMissing` says exactly what to get.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine import settings
from engine.errors import InvalidInput, UserError
from engine.settings import SETTINGS

log = logging.getLogger(__name__)

RANDOM = "random"  # random weights: tests and benchmarks only, never mixed with real embeddings (own key)


@dataclass(frozen=True)
class ClipModelSpec:
    name: str  # what users and settings call it
    arch: str  # open_clip architecture
    tag: str  # open_clip pretrained tag
    hub_id: str  # Hugging Face repository holding the weights
    dim: int
    licence: str


CLIP_MODELS = {
    "ViT-B-32": ClipModelSpec("ViT-B-32", "ViT-B-32", "laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", 512,
                              "MIT"),
    "DFN5B-CLIP-ViT-H-14-378": ClipModelSpec("DFN5B-CLIP-ViT-H-14-378", "ViT-H-14-378-quickgelu", "dfn5b",
                                             "apple/DFN5B-CLIP-ViT-H-14-378", 1024, "Apple sample code licence"),
}
DEFAULT_MODEL = SETTINGS["clip_model"].default  # the `clip_model` setting's default, declared once
FEW_TEXTS = 4  # a search's query: encoded on one thread (1,442 ms with 2 busy threads vs 94 ms with one, measured)


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's math threads for one call, restored after: a single query gains nothing from more, and on a busy
    machine OpenMP threads waiting for each other cost far more (bench/README.md, bench_search)."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipWeightsMissing(UserError, RuntimeError):
    """The model's weights are not on this machine; the message says how to get them."""


def find_cached_weights(spec: ClipModelSpec) -> Path | None:
    """The weights file in the Hugging Face cache (honours HF_HOME), without touching the network."""
    from engine.models.hub_cache import repo_in_cache

    if not repo_in_cache(spec.hub_id):   # never downloaded: no need to load huggingface_hub's download code
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers and open_clip
        return None
    for filename in HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(spec.hub_id, filename)
        if isinstance(found, str) and Path(found).exists():
            return Path(found)
    return None


class ClipEncoder:
    """Normalised CLIP embeddings of images and texts. Loads lazily, once; thread-safe."""

    def __init__(self, model: str = DEFAULT_MODEL, weights: str | Path | None = None, device: str | None = None,
                 batch_size: int = 16):
        if model not in CLIP_MODELS:
            raise InvalidInput(f"unknown CLIP model {model!r}; known: {', '.join(CLIP_MODELS)}")
        self.spec = CLIP_MODELS[model]
        self.weights = weights  # None: the Hugging Face cache; RANDOM; or a local weights file
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._model = None
        self._preprocess = None
        self._tokenizer = None

    @property
    def key(self) -> str:
        """Identifies the embedding space: embeddings of different keys never mix."""
        source = RANDOM if self.weights == RANDOM else self.spec.tag
        return f"{self.spec.name}/{source}"

    @property
    def dim(self) -> int:
        return self.spec.dim

    def weights_file(self) -> Path | None:
        if self.weights == RANDOM:
            return None
        if self.weights is not None:
            return Path(self.weights)
        return find_cached_weights(self.spec)

    def missing_reason(self) -> str | None:
        """Why this encoder cannot run here, in words for the user, or None when it can: weights not on this
        computer, or a safetensors file whose header does not match its size (a cheap check, no torch)."""
        absent = self._absent_reason()
        path = self.weights_file()
        if absent or path is None:
            return absent
        from engine.models.files import cannot_load, quick_problem, repair_hint

        problem = quick_problem(path)
        if problem:
            what, where, name = self._load_terms(path)
            return str(cannot_load(what, f"{path.name} {problem}", repair_hint(name, where)))
        return None

    def _absent_reason(self) -> str | None:
        if self.weights == RANDOM:
            return None
        path = self.weights_file()
        if path is None:
            return (f"CLIP weights for {self.spec.name} are not downloaded ({self.spec.hub_id} on the Hugging Face hub, "
                    f"licence: {self.spec.licence}). Download them on a machine with internet "
                    f"(`myvlm models get {self.spec.name}` or `hf download {self.spec.hub_id}`) or set clip_weights "
                    "to a local file; search by image content and object recognition wait until then.")
        if not path.exists():
            return f"CLIP weights file {path} does not exist"
        return None

    def _load_terms(self, path: Path) -> tuple[str, Path, str | None]:
        """(what, where, `myvlm models` name) for the load-failure sentence: a local file is repaired by hand."""
        return f"the CLIP model {self.spec.name}", path, (self.spec.name if self.weights is None else None)

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import open_clip
            import torch

            reason = self._absent_reason()  # damaged weights: checked_load below says so, as ModelLoadError
            if reason:
                raise ClipWeightsMissing(reason)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            pretrained = None if self.weights == RANDOM else str(self.weights_file())
            if self.weights == RANDOM:
                torch.manual_seed(0)  # the same random model in every process: reproducible tests
            with contextlib.ExitStack() as guard:
                if pretrained is not None:  # damaged weights or a refused pickle: one sentence, not a traceback
                    from engine.models.files import checked_load

                    guard.enter_context(checked_load(*self._load_terms(Path(pretrained))))
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.spec.arch, pretrained=pretrained, device=device,
                    precision="fp16" if device == "cuda" else "fp32")
            model.eval()
            self._model, self._preprocess = model, preprocess
            self._tokenizer = open_clip.get_tokenizer(self.spec.arch)
            self.device = device
            log.info("CLIP %s loaded on %s", self.key, device)

    @property
    def preprocess(self):
        self.load()
        return self._preprocess

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        import torch

        self.load()
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self._preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]])
            out.append(self.encode_pixels(batch))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_pixels(self, batch) -> np.ndarray:
        """Already preprocessed pixels (n, 3, H, W) -> (n, dim) normalised embeddings."""
        import torch

        self.load()
        with torch.no_grad():
            feats = self._model.encode_image(batch.to(self.device, dtype=next(self._model.parameters()).dtype))
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self.load()
        few = len(texts) <= FEW_TEXTS and str(self.device).startswith("cpu")
        with torch.no_grad(), (torch_threads(1) if few else contextlib.nullcontext()):
            tokens = self._tokenizer(list(texts)).to(self.device)
            feats = torch.nn.functional.normalize(self._model.encode_text(tokens).float(), dim=-1)
        return feats.cpu().numpy().astype(np.float32)


_encoders: dict[tuple[str, str | None], ClipEncoder] = {}


def resolve_encoder(catalog: settings.SettingsStore, model: str | None = None,
                    weights: str | None = None) -> ClipEncoder:
    """The library's CLIP encoder (its `clip_model` / `clip_weights` settings unless given), one per process: a
    model loads once however many stages, heads and searches ask."""
    model = model or settings.read(catalog, "clip_model")
    weights = weights or settings.read(catalog, "clip_weights")  # a local weights file, or "random" (tests)
    key = (model, weights)
    if key not in _encoders:
        _encoders[key] = ClipEncoder(model, weights)
    return _encoders[key]
