"""LLaVA-1.6 (`LlavaNextForConditionalGeneration`, vicuna-7b) with the MyVLM concept layer.

Where the concept goes (docs/method.md §6): after the second linear of the vision→language projector, rescaled to the
norm of the first image token: 576 → 577 visual tokens. As in the paper, each image is one 336 px view (the image
processor's base view), without any-res tiling or the newline token, so the wrapper builds the visual features
itself (vision tower → feature layer → projector) and places them at `<image>` placeholders, one placeholder per
visual token including the appended concept tokens — which keeps transformers' placeholder/feature count check.

The regulariser reads the language model's self-attention rows of the concept tokens (docs/method.md §7), captured by
hooks on each decoder layer's attention (which returns probabilities under the eager implementation). That plumbing,
shared with the other families whose language model reads the photo as prompt tokens, is `DecoderVlmWrapper`
(vlm_base.py); this file holds what is LLaVA's: its modules, its view of the photo and its conversation template.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from engine.models.vlm.concept_layer import ConceptLayer, match_first_token_norm
from engine.models.vlm.vlm_base import DecoderVlmWrapper, GenerationSettings

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")


def vicuna_prompt(question: str) -> str:
    """The llava_v1 conversation template that LLaVA-1.6-vicuna was tuned with."""
    return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"


class LlavaWrapper(DecoderVlmWrapper):
    family = "llava"
    model_class = "LlavaNextForConditionalGeneration"   # transformers' class, by name (LLaVA-OneVision shares this
                                                        # wrapper with its own class)

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

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=60, do_sample=True, temperature=0.2, top_p=0.7, seed=0)

    # -- inputs -------------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        pixels = self.processor.image_processor(rgb, return_tensors="pt").pixel_values
        if pixels.dim() == 5:           # (B, views, 3, H, W): keep the base view only
            pixels = pixels[:, 0]
        return pixels.to(self.device, self.dtype)

    @torch.no_grad()
    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 576, D_vision): the frozen tower's selected layer, before the projector where the concept goes; the
        trainer may compute these once per augmented view and reuse them at every step."""
        out = self.vision_tower(pixels, output_hidden_states=True, return_dict=True)
        layers = self.feature_layer if isinstance(self.feature_layer, list) else [self.feature_layer]
        feats = torch.cat([out.hidden_states[i] for i in layers], dim=-1)
        return feats[:, 1:] if self.drop_cls else feats

    def chat_prompt(self, question: str) -> str:
        """The conversation template around `<image>` and the question that the checkpoint was tuned with."""
        return vicuna_prompt(question)
