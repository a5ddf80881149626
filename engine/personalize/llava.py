"""LLaVA-1.6 (`LlavaNextForConditionalGeneration`, vicuna-7b) with the MyVLM concept layer.

Where the concept goes (docs/method.md §6): after the second linear of the vision→language projector, rescaled to the
norm of the first image token: 576 → 577 visual tokens. As in the paper, each image is one 336 px view (the image
processor's base view), without any-res tiling or the newline token, so the wrapper builds the visual features
itself (vision tower → feature layer → projector) and places them at `<image>` placeholders, one placeholder per
visual token including the appended concept tokens — which keeps transformers' placeholder/feature count check.

The regulariser reads the language model's self-attention rows of the concept tokens (docs/method.md §7), captured by
hooks on each decoder layer's attention (which returns probabilities under the eager implementation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..hardware import Placement
from .concept_layer import ConceptLayer, match_first_token_norm
from .vlm_base import GenerationSettings, VlmSpec, VlmWrapper, seeded

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")


def vicuna_prompt(question: str) -> str:
    """The llava_v1 conversation template that LLaVA-1.6-vicuna was tuned with."""
    return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"


class LlavaWrapper(VlmWrapper):
    family = "llava"
    model_class = "LlavaNextForConditionalGeneration"   # transformers' class, by name (families after the projector
                                                        # share this wrapper's loading and training path)

    def __init__(self, model, processor, spec, checkpoint, device, dtype):
        super().__init__(model, processor, spec, checkpoint, device, dtype)
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.feature_layer = cfg.vision_feature_layer
        self.drop_cls = cfg.vision_feature_select_strategy == "default"
        vcfg = cfg.vision_config
        self.n_visual_tokens = (vcfg.image_size // vcfg.patch_size) ** 2          # 576 for CLIP-L/14 at 336 px
        inner = model.model
        self.vision_tower = inner.vision_tower
        self.projector = inner.multi_modal_projector
        self.language_model = inner.language_model
        self.concept_layer = ConceptLayer(cfg.text_config.hidden_size, match_first_token_norm).to(device)  # 4096
        self.concept_layer.attach(self.projector.linear_2)
        for layer in self.language_model.layers:
            layer.self_attn.register_forward_hook(self._capture_probs)
        self._concept_positions: torch.Tensor | None = None   # (B, k) positions of the concept tokens

    @classmethod
    def load(cls, folder: Path, spec: VlmSpec, checkpoint: str, device: torch.device, dtype: torch.dtype,
             quantized_4bit: bool = False, placement: Placement | None = None) -> LlavaWrapper:
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
        from ..model_files import checked_load, vlm_terms

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

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=60, do_sample=True, temperature=0.2, top_p=0.7, seed=0)

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
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        pixels = self.processor.image_processor(rgb, return_tensors="pt").pixel_values
        if pixels.dim() == 5:           # (B, views, 3, H, W): keep the base view only
            pixels = pixels[:, 0]
        return pixels.to(self.device, self.dtype)

    caches_features = True

    @torch.no_grad()
    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 576, D_vision): the frozen tower's selected layer, before the projector where the concept goes; the
        trainer may compute these once per augmented view and reuse them at every step."""
        out = self.vision_tower(pixels, output_hidden_states=True, return_dict=True)
        layers = self.feature_layer if isinstance(self.feature_layer, list) else [self.feature_layer]
        feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        return feats[:, 1:] if self.drop_cls else feats

    def _visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 576 + k, D): one view through the tower and the projector, where the concept layer appends."""
        return self.projector(self.visual_features(pixels))

    def chat_prompt(self, question: str) -> str:
        """The conversation template around `<image>` and the question that the checkpoint was tuned with."""
        return vicuna_prompt(question)

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


