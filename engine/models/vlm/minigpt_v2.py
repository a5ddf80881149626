"""MiniGPT-v2 (EVA ViT-g → a linear projection of 4 neighbouring tokens → Llama-2-7b-chat with LoRA) with the MyVLM
concept layer, built from transformers parts (transformers has no MiniGPT-v2 class).

The parts and where their weights come from:
  * the vision tower is EVA-CLIP's ViT-g/14 without its last layer: the very tower BLIP-2 freezes, so it is
    transformers' `Blip2VisionModel`, with the weights of a BLIP-2 checkpoint. MiniGPT-v2 runs it at 448 px: the
    position embeddings (16 × 16 patches at 224 px) are interpolated bicubically to 32 × 32 once, at load. Its
    `ln_vision` sits where `Blip2VisionModel.post_layernorm` sits; MiniGPT-v2 keeps it frozen at its initial values
    (weight 1, bias 0), so BLIP-2's trained norm is replaced by that one (or by `ln_vision.*` when the official
    checkpoint carries it).
  * `llama_proj`: 1024 patch tokens of 1408 (the CLS token dropped) → 256 groups of 4 consecutive tokens,
    concatenated to 5632 → one linear → 256 tokens of 4096. Its weights are in the official
    `minigptv2_checkpoint.pth`.
  * Llama-2-7b-chat (`LlamaForCausalLM`, the gated `meta-llama/Llama-2-7b-chat-hf`) with MiniGPT-v2's LoRA on the
    attention's q_proj and v_proj (r 64, alpha 16 in the official configs). The LoRA weights are in the official
    checkpoint; they are merged into the linear layers at load (W += alpha/r · B·A): the language model stays frozen
    here (only the concept embedding trains), so merged weights compute the same function with no adapter code,
    no extra dependency (peft) and no extra cost per token.

Where the concept goes (docs/method.md §6): after `llama_proj`, rescaled to the mean norm of the image tokens:
256 → 257.
The frozen tower and the grouping come before it, so the trainer may cache them per augmented view, as for LLaVA,
with which it shares the prompt, loss and regulariser plumbing (the language model's attention rows of the concept
tokens: vlm_base.DecoderVlmWrapper). REC ("[refer] sks in the image") uses the same captioning embedding, as in the
paper, and answers with a box `{<x1><y1><x2><y2>}` on a 0–100 grid of the whole photo (`parse_box`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from engine.errors import Cancelled
from engine.models.vlm.concept_layer import ConceptLayer, match_mean_token_norm
from engine.models.vlm.vlm_base import DecoderVlmWrapper, GenerationSettings, VlmSpec, seeded

log = logging.getLogger(__name__)

OFFICIAL_CHECKPOINT = "minigptv2_checkpoint.pth"
PARTS_FILE = "minigpt_v2.json"          # a checkpoint folder's parts (tiny presets, assembled folders)
IMAGE_HERE = "<ImageHere>"
GRID = 100                              # boxes are integers on a 0–100 grid of the (squashed) whole image

# "<key>.lora_A.weight" (peft before 0.3) or "<key>.lora_A.default.weight" (peft 0.3 and later)
_LORA_KEY = re.compile(r"^llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.(\w+)\.lora_([AB])"
                       r"(?:\.default)?\.weight$")
_BOX = re.compile(r"\{\s*<\s*(\d{1,3})\s*>\s*<\s*(\d{1,3})\s*>\s*<\s*(\d{1,3})\s*>\s*<\s*(\d{1,3})\s*>\s*\}")


@dataclass
class MiniGptV2Config:
    """The parts of a MiniGPT-v2 checkpoint folder. Paths are relative to the folder (or absolute)."""

    image_size: int = 448               # the ViT's input side; position embeddings are interpolated to it
    group: int = 4                      # neighbouring ViT tokens concatenated before `llama_proj`
    lora_alpha: float = 16.0            # the official configs' alpha (r is read from the weights: 64)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    ln_vision_eps: float = 1e-5         # torch's LayerNorm default, which MiniGPT-v2's ln_vision uses
    vision: str = "vision"              # a BLIP-2 checkpoint folder, or a saved Blip2VisionModel
    language_model: str = "llama"       # a LlamaForCausalLM folder with its tokenizer
    checkpoint: str = OFFICIAL_CHECKPOINT   # projection and LoRA weights, in the official format

    @classmethod
    def read(cls, folder: Path) -> MiniGptV2Config:
        data = json.loads((folder / PARTS_FILE).read_text())
        data["lora_targets"] = tuple(data.get("lora_targets", cls.lora_targets))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def write(self, folder: Path) -> None:
        (folder / PARTS_FILE).write_text(json.dumps(asdict(self), indent=2))


# -- boxes ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Located:
    """What "[refer] …" gave: a box in pixels of the photo (x1, y1, x2, y2), or None with the reason."""

    box: tuple[int, int, int, int] | None
    raw: str
    reason: str = ""

    def as_dict(self) -> dict:
        return {"box": list(self.box) if self.box else None, "raw": self.raw,
                **({"reason": self.reason} if self.reason else {})}


def parse_box(text: str, width: int, height: int) -> Located:
    """The first `{<x1><y1><x2><y2>}` of the model's text, scaled from the 0–100 grid to a width × height photo.
    Anything else (no braces, a value over 100, x2 ≤ x1 or y2 ≤ y1, plain text) is "no box", never an exception."""
    text = text if isinstance(text, str) else ""
    m = _BOX.search(text)
    if m is None:
        return Located(None, text, "the model's answer holds no box")
    x1, y1, x2, y2 = (int(v) for v in m.groups())
    if max(x1, y1, x2, y2) > GRID:
        return Located(None, text, f"the box {m.group(0)} leaves the 0–{GRID} grid")
    if x2 <= x1 or y2 <= y1:
        return Located(None, text, f"the box {m.group(0)} is empty or inverted")
    if width <= 0 or height <= 0:
        return Located(None, text, "the photo has no size")

    def scale(v: int, side: int) -> int:
        return min(side, max(0, round(v * side / GRID)))

    box = (scale(x1, width), scale(y1, height), scale(x2, width), scale(y2, height))
    if box[2] <= box[0] or box[3] <= box[1]:
        return Located(None, text, "the box is smaller than a pixel of this photo")
    return Located(box, text)


# -- the model ------------------------------------------------------------------------------------------------------

@dataclass
class MiniGptV2Processor:
    image_processor: object
    tokenizer: object


class MiniGptV2Model(nn.Module):
    """vision_model → ln (its post_layernorm) → groups of 4 tokens → llama_proj → language_model (a causal LM).
    Calls and `generate` go to the language model, with `inputs_embeds` built by the wrapper."""

    def __init__(self, config: MiniGptV2Config, vision_model: nn.Module, language_model: nn.Module):
        super().__init__()
        self.config = config
        self.vision_model = vision_model
        self.language_model = language_model
        d_vision = vision_model.config.hidden_size
        self.llama_proj = nn.Linear(d_vision * config.group, language_model.config.hidden_size)   # 5632 → 4096

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 448, 448) → (B, 256, 5632): the tower's normed patch tokens, 4 consecutive ones concatenated."""
        hidden = self.vision_model(pixel_values=pixels).last_hidden_state[:, 1:]           # (B, 1024, 1408)
        b, n, d = hidden.shape
        return hidden.reshape(b, n // self.config.group, d * self.config.group)

    def forward(self, **kwargs):
        return self.language_model(**kwargs)

    def generate(self, **kwargs):
        return self.language_model.generate(**kwargs)


def load_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of `minigptv2_checkpoint.pth` ({"model": {...}}), read with weights_only=True: a pickle that
    holds anything but tensors and plain containers is refused before anything in it runs."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("model", data) if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("it holds no MiniGPT-v2 state dict (a mapping of tensors under 'model')")
    return dict(state)


def apply_official_weights(model: MiniGptV2Model, state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Copy the projection (and ln_vision, if present) and merge the LoRA pairs into the language model:
        llama_proj.{weight,bias}                                        → model.llama_proj
        ln_vision.{weight,bias}                                         → vision_model.post_layernorm
        llama_model.base_model.model.model.layers.N.self_attn.P.lora_A[.default].weight   (r, in)
        llama_model.base_model.model.model.layers.N.self_attn.P.lora_B[.default].weight   (out, r)
                                                     → layers[N].self_attn.P.weight += alpha/r · B·A
    Everything else in the file (Llama's own weights, optimiser state) is ignored. Returns counts, for the log."""
    if "llama_proj.weight" not in state:
        raise ValueError("it has no llama_proj weights, so it is not a MiniGPT-v2 checkpoint")
    with torch.no_grad():
        proj = model.llama_proj
        if tuple(state["llama_proj.weight"].shape) != tuple(proj.weight.shape):
            raise ValueError(f"its llama_proj is {tuple(state['llama_proj.weight'].shape)}, this model's "
                             f"{tuple(proj.weight.shape)}")
        proj.weight.copy_(state["llama_proj.weight"])
        if "llama_proj.bias" in state:
            proj.bias.copy_(state["llama_proj.bias"])
        ln = model.vision_model.post_layernorm
        for name in ("weight", "bias"):
            if f"ln_vision.{name}" in state:
                getattr(ln, name).copy_(state[f"ln_vision.{name}"])
        pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            m = _LORA_KEY.match(key)
            if m:
                pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value
        layers = model.language_model.model.layers
        for (i, target), ab in sorted(pairs.items()):
            if set(ab) != {"A", "B"}:
                raise ValueError(f"layer {i} {target} has lora_{next(iter(ab))} without its pair")
            if i >= len(layers) or target not in model.config.lora_targets:
                raise ValueError(f"it has LoRA weights for layer {i} {target}, which this Llama does not have")
            linear = getattr(layers[i].self_attn, target)
            a, b = ab["A"].float(), ab["B"].float()                                   # (r, in), (out, r)
            if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(linear.weight.shape):
                raise ValueError(f"its LoRA for layer {i} {target} has shapes {tuple(a.shape)}, {tuple(b.shape)}")
            delta = (b @ a) * (model.config.lora_alpha / a.shape[0])
            linear.weight.copy_((linear.weight.float() + delta.to(linear.weight.device)).to(linear.weight.dtype))
    return {"lora_pairs": len(pairs), "tensors": len(state)}


def vision_tower(folder: Path, image_size: int, ln_eps: float, dtype: torch.dtype):
    """BLIP-2's ViT-g (from a whole BLIP-2 checkpoint or a saved Blip2VisionModel), position embeddings
    interpolated to `image_size`, its post_layernorm reset to MiniGPT-v2's frozen ln_vision (weight 1, bias 0)."""
    from safetensors import safe_open
    from transformers import Blip2VisionConfig, Blip2VisionModel

    from engine.models.files import weight_files

    config = json.loads((folder / "config.json").read_text())
    whole = config.get("model_type") == "blip-2"
    vcfg = Blip2VisionConfig(**(config["vision_config"] if whole else config))
    prefix = "vision_model." if whole else ""
    state: dict[str, torch.Tensor] = {}
    files = [p for p in weight_files(folder) if p.name.endswith(".safetensors")]
    if not files:
        raise ValueError(f"{folder.name} has no safetensors weights for the vision tower")
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    state[key[len(prefix):]] = f.get_tensor(key)
    source_grid = vcfg.image_size // vcfg.patch_size
    vcfg.image_size = image_size
    grid = image_size // vcfg.patch_size
    pos = state["embeddings.position_embedding"]                                        # (1, 1 + g², D)
    if grid != source_grid:
        cls_pos, patches = pos[:, :1], pos[:, 1:]
        patches = patches.reshape(1, source_grid, source_grid, -1).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
        state["embeddings.position_embedding"] = torch.cat([cls_pos, patches], dim=1)
    state["post_layernorm.weight"] = torch.ones(vcfg.hidden_size)
    state["post_layernorm.bias"] = torch.zeros(vcfg.hidden_size)
    model = Blip2VisionModel(vcfg)
    model.post_layernorm = nn.LayerNorm(vcfg.hidden_size, eps=ln_eps)
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval()


def folder_parts(folder: Path) -> tuple[MiniGptV2Config, dict[str, Path]]:
    """The config and part paths of a folder with `minigpt_v2.json` (tiny presets, assembled copies), else of the
    real model in the models folder above it (Llama-2 and BLIP-2 from the hub cache, the official .pth)."""
    from engine.models.vlm.specs import minigpt_v2_parts

    if (folder / PARTS_FILE).is_file():
        cfg = MiniGptV2Config.read(folder)
        return cfg, {k: folder / getattr(cfg, k) for k in ("vision", "language_model", "checkpoint")}
    return MiniGptV2Config(), minigpt_v2_parts(folder.parent)


def image_processor(side: int):
    """MiniGPT-v2's eval transform: the whole photo resized to a side × side square (bicubic), CLIP's mean/std."""
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": side, "width": side})


def chat_prompt(instruction: str) -> str:
    """MiniGPT-v2's Llama-2 chat layout around the image and a task-tagged instruction."""
    return f"[INST] <Img>{IMAGE_HERE}</Img> {instruction} [/INST]"


class MiniGptV2Wrapper(DecoderVlmWrapper):
    family = "minigpt-v2"
    can_locate = True

    def __init__(self, model: MiniGptV2Model, processor, spec, checkpoint, device, dtype):
        super().__init__(model, processor, spec, checkpoint, device, dtype)
        cfg = model.config
        vcfg = model.vision_model.config
        self.n_visual_tokens = (cfg.image_size // vcfg.patch_size) ** 2 // cfg.group      # 256 at 448 px
        self.vision_tower = model.vision_model
        self.projector = model.llama_proj
        self.language_model = model.language_model.model                                    # LlamaModel
        self.concept_layer = ConceptLayer(model.llama_proj.out_features, match_mean_token_norm).to(device)  # 4096
        self.concept_layer.attach(self.projector)
        for layer in self.language_model.layers:
            layer.self_attn.register_forward_hook(self._capture_probs)
        self._concept_positions: torch.Tensor | None = None
        self._cancel = None   # an Event while `locate` runs
        if self.tokenizer.pad_token_id is None:   # Llama-2 has none; padded positions are masked anyway
            self.tokenizer.pad_token = self.tokenizer.unk_token

    @classmethod
    def load(cls, folder: Path, spec: VlmSpec, checkpoint: str, device: torch.device, dtype: torch.dtype,
             quantized_4bit: bool = False) -> MiniGptV2Wrapper:
        from transformers import AutoTokenizer, LlamaForCausalLM

        from engine.models.files import checked_load, loading, repair_hint, vlm_terms

        what, name = vlm_terms(spec)
        cfg, parts = folder_parts(folder)
        with checked_load(f"{what} (its vision tower)", parts["vision"], name):
            vision = vision_tower(parts["vision"], cfg.image_size, cfg.ln_vision_eps, dtype)
        with checked_load(f"{what} (its language model)", parts["language_model"], name):
            llm = LlamaForCausalLM.from_pretrained(parts["language_model"], dtype=dtype,
                                                   device_map={"": str(device)}, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(parts["language_model"], local_files_only=True)
        model = MiniGptV2Model(cfg, vision, llm).to(device=device, dtype=dtype)
        # checked_load on the .pth: a pickle with code in it is refused with one sentence before anything runs
        with checked_load(f"{what} (its {parts['checkpoint'].name})", parts["checkpoint"], name):
            state = load_official_checkpoint(parts["checkpoint"])
        with loading(f"{what} (its {parts['checkpoint'].name})", repair_hint(name, parts["checkpoint"])):
            counts = apply_official_weights(model, state)
        log.info("MiniGPT-v2: %d LoRA pairs merged from %s", counts["lora_pairs"], parts["checkpoint"])
        processor = MiniGptV2Processor(image_processor(cfg.image_size), tokenizer)
        return cls(model, processor, spec, checkpoint, device, dtype)

    # -- prompts ------------------------------------------------------------------------------------------------
    def caption_prompt(self, identifier: str | None = None) -> str:
        return f"[caption] A short image caption of {identifier}:" if identifier else "[caption] A short image caption:"

    def refer_prompt(self, identifier: str) -> str:
        return f"[refer] {identifier} in the image"


    def chat_prompt(self, question: str) -> str:
        """A plain question is a [vqa] task (in training and in answers alike); tagged prompts stay as they are."""
        tagged = re.match(r"\s*\[[a-z]+\]", question) is not None
        return chat_prompt(question if tagged else f"[vqa] {question}")

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=40)   # greedy, as the reference's validation

    def _answer_ids(self, answer: str) -> list[int]:
        """The answer, then `</s>` (MiniGPT-v2's end symbol, Llama's eos)."""
        return self.tokenizer(answer, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    # -- inputs -------------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        pixels = self.processor.image_processor(rgb, return_tensors="pt").pixel_values
        return pixels.to(self.device, self.dtype)

    @torch.no_grad()
    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 256, 5632): frozen tower, ln_vision, groups of 4 — everything before llama_proj and the concept."""
        return self.model.image_tokens(pixels)

    def _embed_projected(self, feats: torch.Tensor, texts: list[str], answers: list[str] | None = None, *,
                         left_pad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """inputs_embeds (bos, the prompt with the n + k image tokens in place of `<ImageHere>`, the answer),
        attention mask and labels. Llama-2's vocabulary has no spare image token, so the image positions are
        marked in a separate mask rather than by a token id."""
        n_vis = feats.shape[1]
        k = self.concept_layer.appended
        tok = self.tokenizer
        rows: list[list[int]] = []
        label_rows: list[list[int]] = []
        image_starts: list[int] = []
        for i, text in enumerate(texts):
            before, after = text.split(IMAGE_HERE, 1)
            head = tok(before).input_ids                                  # with bos
            ids = head + [tok.pad_token_id] * n_vis + tok(after, add_special_tokens=False).input_ids
            labels = [-100] * len(ids)
            if answers is not None:
                tail = self._answer_ids(answers[i])
                ids, labels = ids + tail, labels + tail
            rows.append(ids)
            label_rows.append(labels)
            image_starts.append(len(head))
        width = max(len(r) for r in rows)
        b = len(rows)
        input_ids = torch.full((b, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        image = torch.zeros((b, width), dtype=torch.bool)
        positions = []
        for i, (r, lr) in enumerate(zip(rows, label_rows)):
            start = width - len(r) if left_pad else 0
            input_ids[i, start:start + len(r)] = torch.tensor(r)
            mask[i, start:start + len(r)] = 1
            labels[i, start:start + len(r)] = torch.tensor(lr)
            first = start + image_starts[i]
            image[i, first:first + n_vis] = True
            positions.append(torch.arange(first + n_vis - k, first + n_vis))
        input_ids, mask, labels, image = (t.to(self.device) for t in (input_ids, mask, labels, image))
        self._concept_positions = torch.stack(positions).to(self.device) if k else None
        embeds = self.model.get_input_embeddings()(input_ids)
        flat = feats.reshape(-1, feats.shape[-1]).to(embeds.device, embeds.dtype)       # (B·(n + k), 4096)
        embeds = embeds.masked_scatter(image.unsqueeze(-1).expand_as(embeds), flat)
        return embeds, mask, (labels if answers is not None else None)

    def _generate(self, pixels: torch.Tensor, prompts: list[str], settings: GenerationSettings) -> list[str]:
        texts = [self.chat_prompt(p) for p in prompts]
        embeds, mask, _ = self._embed(pixels, texts, left_pad=True)
        stop = [_Stop(self._cancel)] if self._cancel is not None else None
        with seeded(settings.seed, self.device):
            out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, stopping_criteria=stop,
                                      pad_token_id=self.tokenizer.pad_token_id, **settings.kwargs())
        if self._cancel is not None and self._cancel.is_set():
            raise LocateCancelled("stopped before the model answered")
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    # -- referring expressions ----------------------------------------------------------------------------------
    def locate(self, image: Image.Image, identifier: str, concepts: Sequence[int] = (),
               size: tuple[int, int] | None = None, cancel=None) -> Located:
        """Where `identifier` is in the image ("[refer] …"), with the concepts that fired appended as for captions;
        the box in pixels of `size` (width, height; the image's own size when not given). `cancel` (an Event)
        stops the generation at the next token (LocateCancelled)."""
        with self.lock:
            self._cancel = cancel
            try:
                text = self.generate([image], [self.refer_prompt(identifier)], [list(concepts)])[0]
            finally:
                self._cancel = None
        w, h = size or image.size
        return parse_box(text, w, h)


class LocateCancelled(Cancelled, RuntimeError):
    """The user stopped a "where is …?" before the model answered."""


class _Stop:
    """A stopping criterion that ends generation once the user's cancel event is set."""

    def __init__(self, event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def write_official_checkpoint(path: Path, proj: nn.Linear, lora: Mapping[tuple[int, str], tuple[torch.Tensor,
                              torch.Tensor]], default_adapter: bool = False) -> None:
    """Save projection and LoRA weights under the official checkpoint's key names ({"model": state dict})."""
    state = {"llama_proj.weight": proj.weight.detach().clone(), "llama_proj.bias": proj.bias.detach().clone()}
    infix = ".default" if default_adapter else ""
    for (i, target), (a, b) in lora.items():
        stem = f"llama_model.base_model.model.model.layers.{i}.self_attn.{target}"
        state[f"{stem}.lora_A{infix}.weight"] = a.clone()
        state[f"{stem}.lora_B{infix}.weight"] = b.clone()
    torch.save({"model": state}, path)
