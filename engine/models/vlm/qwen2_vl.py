"""Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`, `Qwen2_5_VLForConditionalGeneration`) with the
MyVLM concept layer.

Where the concept goes: after the vision merger, Qwen2-VL's vision→language projector, as for LLaVA (their shared
loading, attention capture and regulariser are vlm_base.DecoderVlmWrapper), at the norm of the first image token. Each
photo is one view, the whole photo resized to a 448 px square (or the largest square the image processor's pixel budget
allows): 32 × 32 patches of 14 px (each patch two identical frames deep, as Qwen2-VL embeds a still image) → the ViT
(1280-d for the 2B model) → the merger's 2 × 2 merge and MLP → 16 × 16 = 256 tokens of 1536. Fixed-size views keep a CPU
caption cheap and let a batch of photos be one rectangular tensor (the processor's own dynamic resolution would give
every photo its own token count).

Positions (M-RoPE). Qwen2-VL gives every token three rotary positions (temporal, height, width), computed by the
model's `get_rope_index` from `input_ids`, `mm_token_type_ids` (0 text, 1 image) and `image_grid_thw`: image tokens
get their grid cell (t, row, col) offset by the text before them; text tokens get (p, p, p), p counting on from the
largest image position + 1. An appended token has no grid cell, so it is laid out as text:

    <|im_start|>user\\n<|vision_start|> [n × <|image_pad|>, type 1] <|vision_end|> [k × <|image_pad|>, type 0] question…

The k concept placeholders sit right after `<|vision_end|>` and are typed text (mm_token_type_ids 0), so they take the
next text positions (p, p, p), (p+1, p+1, p+1)… and the question follows them. The merger's output (B, n, D) with the
concept layer's k tokens appended, (B, n + k, D), is scattered into the `<|image_pad|>` placeholders in order: the
n image tokens first, then the k concept tokens. When nothing fired (k = 0) the layout, the positions and so the
outputs are exactly the processor's own.

The frozen tower's output (B, 1024, 1280), before the merger, is what the trainer may cache per augmented view.

Qwen2.5-VL has the same layout and positions; its ViT attends within 112 px windows (but in every 8th block), for
which it reorders the patches window by window, and puts the merged tokens back in raster order after the merger.
Its cached features are in window order, and `MergePerImage` restores the order after merging, as the tower does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn

from engine.models.vlm.concept_layer import ConceptLayer, match_first_token_norm
from engine.models.vlm.vlm_base import DecoderVlmWrapper, GenerationSettings, seeded

VISION = "<|vision_start|><|image_pad|><|vision_end|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"   # Qwen2's chat markers (as in llava_onevision.py, also Qwen2)
SYSTEM = "You are a helpful assistant."
VIEW_SIDE = 448          # px; the square each photo is resized to (32 × 32 patches → 256 image tokens)


def qwen2_vl_prompt(question: str) -> str:
    """Qwen2-VL-Instruct's chat layout: the default system turn, then the image and the question in the user turn."""
    return (f"{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n{VISION}{question}{IM_END}\n"
            f"{IM_START}assistant\n")


class MergePerImage(nn.Module):
    """The merger applied to (B, N, E) patch features, giving (B, N / 4, D): the module the concept layer hooks
    (the merger itself works on the flat (B·N, E) sequence of all images). `order` (N / 4,): Qwen2.5-VL's raster
    order of one image's merged tokens, which leave its merger in window order."""

    def __init__(self, merger: nn.Module, order: torch.Tensor | None = None):
        super().__init__()
        self.merger = merger
        self.order = order

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, n, e = features.shape
        merged = self.merger(features.reshape(b * n, e)).reshape(b, -1, self.merger.mlp[-1].out_features)
        return merged if self.order is None else merged[:, self.order]


def raster_order(vision_config, grid: tuple[int, int, int]) -> torch.Tensor | None:
    """Qwen2.5-VL: the permutation that puts one image's merged tokens back in raster order (the inverse of the
    window order its ViT works in, from transformers' own `get_vision_window_index`); None for Qwen2-VL."""
    if getattr(vision_config, "window_size", None) is None:
        return None
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(torch.tensor([grid]), vision_config.spatial_merge_size,
                                              vision_config.window_size, vision_config.patch_size)
    return torch.argsort(window_index)


class Qwen2VlWrapper(DecoderVlmWrapper):
    family = "qwen2-vl"
    model_class = "AutoModelForImageTextToText"   # Qwen2-VL or Qwen2.5-VL, as the checkpoint's config says

    def __init__(self, model, processor, spec, checkpoint, device, dtype):
        super().__init__(model, processor, spec, checkpoint, device, dtype)   # then the plumbing on Qwen2-VL's modules
        cfg = model.config
        self.image_token_id = cfg.image_token_id
        self.vision_start_id, self.vision_end_id = cfg.vision_start_token_id, cfg.vision_end_token_id
        ip = processor.image_processor
        factor = ip.patch_size * ip.merge_size                                          # 28 px per image token
        budget = ip.size["longest_edge"] if "longest_edge" in ip.size else ip.size["max_pixels"]
        self.view_side = max(factor, min(VIEW_SIDE, int(budget ** 0.5) // factor * factor))   # 448
        self.grid = (1, self.view_side // ip.patch_size, self.view_side // ip.patch_size)   # (t, h, w) = (1, 32, 32)
        self.n_visual_tokens = self.grid[1] * self.grid[2] // ip.merge_size ** 2              # 256
        inner = model.model
        self.vision_tower = inner.visual
        order = raster_order(cfg.vision_config, self.grid)
        self.projector = MergePerImage(inner.visual.merger, None if order is None else order.to(device))
        self.language_model = inner.language_model
        self.concept_layer = ConceptLayer(cfg.text_config.hidden_size, match_first_token_norm).to(device)  # 1536
        self.concept_layer.attach(self.projector)
        for layer in self.language_model.layers:
            layer.self_attn.register_forward_hook(self._capture_probs)
        self._concept_positions: torch.Tensor | None = None   # (B, k) positions of the concept tokens

    # -- prompts ------------------------------------------------------------------------------------------------
    def chat_prompt(self, question: str) -> str:
        return qwen2_vl_prompt(question)

    def _answer_ids(self, answer: str) -> list[int]:
        """The answer, then `<|im_end|>`: how Qwen2 ends its turn (and what stops generation)."""
        return (self.tokenizer(answer, add_special_tokens=False).input_ids
                + [self.tokenizer.convert_tokens_to_ids(IM_END)])

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=40)   # greedy, as Qwen2-VL's own examples

    # -- inputs -------------------------------------------------------------------------------------------------
    def image_grid(self, n: int) -> torch.Tensor:
        """(n, 3) image_grid_thw of n views: (1, 32, 32) patches each."""
        return torch.tensor([self.grid] * n, dtype=torch.long, device=self.device)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 1024, 1176): each photo squashed to the square view and cut into the processor's flattened patches
        (3 channels × 2 frames × 14 × 14), one row of patches per photo so that a batch can be indexed by photo."""
        side = self.view_side
        squares = [im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC) for im in images]
        out = self.processor.image_processor(squares, return_tensors="pt")
        if out.image_grid_thw.tolist() != [list(self.grid)] * len(squares):
            raise RuntimeError(f"the image processor cut the {side} px views into {out.image_grid_thw.tolist()} "
                               f"patches, not {self.grid}")
        return out.pixel_values.reshape(len(squares), -1, out.pixel_values.shape[-1]).to(self.device, self.dtype)

    @torch.no_grad()
    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 1024, 1280): the ViT's last block, before the merger where the concept goes (the tower runs the
        merger too; its output is not used here). Qwen2.5-VL's patches are in its window order."""
        b, n, p = pixels.shape
        out = self.vision_tower(pixels.reshape(b * n, p), grid_thw=self.image_grid(b))
        return out.last_hidden_state.reshape(b, n, -1)

    def _embed_projected(self, feats: torch.Tensor, texts: list[str], answers: list[str] | None = None, *,
                         left_pad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """inputs_embeds, attention_mask and (with answers) labels; the merged image tokens and the concept tokens
        (B, n + k, D) scattered into their placeholders. Also sets `_rope_inputs` (input_ids, mm_token_type_ids)
        for the M-RoPE positions, and `_concept_positions`."""
        k = self.concept_layer.appended
        n_img = feats.shape[1] - k
        tok = self.tokenizer
        rows, type_rows, label_rows = [], [], []
        for i, text in enumerate(texts):
            before, after = text.split(VISION, 1)
            head = tok(before, add_special_tokens=False).input_ids + [self.vision_start_id]
            ids = (head + [self.image_token_id] * n_img + [self.vision_end_id] + [self.image_token_id] * k
                   + tok(after, add_special_tokens=False).input_ids)
            types = [0] * len(head) + [1] * n_img + [0] * (len(ids) - len(head) - n_img)
            labels = [-100] * len(ids)
            if answers is not None:
                tail = self._answer_ids(answers[i])
                ids, labels, types = ids + tail, labels + tail, types + [0] * len(tail)
            rows.append(ids)
            type_rows.append(types)
            label_rows.append(labels)
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        b = len(rows)
        input_ids = torch.full((b, width), pad, dtype=torch.long)
        types = torch.zeros((b, width), dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        positions = []
        for i, (r, t, lr) in enumerate(zip(rows, type_rows, label_rows)):
            start = width - len(r) if left_pad else 0
            input_ids[i, start:start + len(r)] = torch.tensor(r)
            types[i, start:start + len(r)] = torch.tensor(t)
            mask[i, start:start + len(r)] = 1
            labels[i, start:start + len(r)] = torch.tensor(lr)
            end = int((input_ids[i] == self.vision_end_id).nonzero()[0])
            positions.append(torch.arange(end + 1, end + 1 + k))
        input_ids, types = input_ids.to(self.device), types.to(self.device)
        mask, labels = mask.to(self.device), labels.to(self.device)
        self._concept_positions = torch.stack(positions).to(self.device) if k else None
        self._rope_inputs = (input_ids, types)
        embeds = self._embed_with_image_tokens(input_ids, feats)
        return embeds, mask, (labels if answers is not None else None)

    def rope_positions(self, mask: torch.Tensor) -> torch.Tensor:
        """(3, B, T) M-RoPE positions of the last `_embed_projected` batch, from the model's own `get_rope_index`."""
        input_ids, types = self._rope_inputs
        positions, _deltas = self.model.model.get_rope_index(
            input_ids, mm_token_type_ids=types, image_grid_thw=self.image_grid(input_ids.shape[0]),
            attention_mask=mask)
        return positions

    def _generate(self, pixels: torch.Tensor, prompts: list[str], settings: GenerationSettings) -> list[str]:
        texts = [self.chat_prompt(p) for p in prompts]
        embeds, mask, _ = self._embed(pixels, texts, left_pad=True)
        input_ids, types = self._rope_inputs
        # input_ids, token types and the grid go along so that generate computes the same M-RoPE positions
        # (get_rope_index) and carries them on for the new tokens; the embeddings are what the model reads
        with seeded(settings.seed, self.device):
            out = self.model.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=mask,
                                      mm_token_type_ids=types, image_grid_thw=self.image_grid(len(texts)),
                                      pad_token_id=self.tokenizer.pad_token_id, **settings.kwargs())
        return self.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)

    def _lm_loss_features(self, features: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        texts = [self.chat_prompt(p) for p in prompts]
        embeds, mask, labels = self._embed_projected(self.projector(features), texts, targets, left_pad=False)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                         position_ids=self.rope_positions(mask))
        return out.loss
