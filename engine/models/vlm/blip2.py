"""BLIP-2 (`Blip2ForConditionalGeneration`, flan-t5 or OPT) with the MyVLM concept layer.

Where the concept goes (docs/method.md §6): after the *last* vision-encoder layer's MLP. With a zero residual for the
new position that equals appending `normalize(value)` to that layer's output, before `post_layernorm`, so a forward
hook on the layer does it: 257 → 258 visual tokens for ViT-g/14 at 224 px. The Q-Former's 32 queries then
cross-attend to 258 positions; in every cross-attention the keys and values of the appended positions are rescaled
to the mean norm of the image positions' keys/values (hooks on the key/value projections).

The regulariser reads the cross-attention probabilities of the queries onto the appended positions, captured by a
hook on each cross-attention module (which returns its probabilities under the eager attention implementation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from engine.models.hardware import Placement
from engine.models.vlm.concept_layer import ConceptLayer, keep_unit_norm
from engine.models.vlm.vlm_base import GenerationSettings, VlmSpec, VlmWrapper, seeded


class Blip2Wrapper(VlmWrapper):
    family = "blip2"

    def __init__(self, model, processor, spec, checkpoint, device, dtype):
        super().__init__(model, processor, spec, checkpoint, device, dtype)
        vcfg = model.config.vision_config
        self.n_image_tokens = (vcfg.image_size // vcfg.patch_size) ** 2 + 1   # 257 for ViT-g/14 at 224 px
        self.num_query_tokens = model.config.num_query_tokens                # 32
        self.image_token_id = model.config.image_token_id
        self.decoder_only = bool(model.config.use_decoder_only_language_model)
        # The Q-Former key/value rescale of the appended positions (docs/method.md §6); on by default (the paper's).
        # bench/bench_myvlm_world.py measures what it does on a small model.
        self.rescale_appended = True
        # The rescale's target is gain × that mean norm; the paper's rule is gain 1. A checkpoint may declare its own
        # (`myvlm_appended_gain` in config.json): a 2M-parameter Q-Former attends far more evenly than BLIP-2's,
        # and there one token at the mean norm cannot win enough attention to be heard (bench/README.md).
        self.appended_gain = float(getattr(model.config, "myvlm_appended_gain", 1.0) or 1.0)
        self.concept_layer = ConceptLayer(vcfg.hidden_size, keep_unit_norm).to(device)   # D = 1408 for ViT-g
        self.concept_layer.attach(model.vision_model.encoder.layers[-1])
        self._cross_attentions = [layer.crossattention for layer in model.qformer.encoder.layer
                                  if getattr(layer, "has_cross_attention", False)]
        for cross in self._cross_attentions:
            cross.attention.key.register_forward_hook(self._rescale_appended)
            cross.attention.value.register_forward_hook(self._rescale_appended)
            cross.attention.register_forward_hook(self._capture_probs)

    @classmethod
    def load(cls, folder: Path, spec: VlmSpec, checkpoint: str, device: torch.device, dtype: torch.dtype,
             placement: Placement | None = None) -> Blip2Wrapper:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        from engine.models.files import checked_load, vlm_terms

        what, name = vlm_terms(spec)
        with checked_load(what, folder, name):
            where = placement.from_pretrained_kwargs() if placement else {"device_map": {"": str(device)}}
            model = Blip2ForConditionalGeneration.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                                  **where)
            processor = Blip2Processor.from_pretrained(folder, local_files_only=True)
        return cls(model, processor, spec, checkpoint, device, dtype)

    # -- hooks --------------------------------------------------------------------------------------------------
    def _rescale_appended(self, module, args, out: torch.Tensor):
        """Keys/values (B, S, H·d): positions ≥ n_image take the mean norm of the image positions (× the gain)."""
        n = self.n_image_tokens
        if out.shape[1] <= n or not self.rescale_appended:
            return None
        image = out[:, :n]
        extra = out[:, n:]
        target = image.norm(dim=-1, keepdim=True).mean(dim=1, keepdim=True) * self.appended_gain   # (B, 1, 1)
        extra = extra / extra.norm(dim=-1, keepdim=True).clamp_min(1e-12) * target
        return torch.cat([image, extra], dim=1)

    def _capture_probs(self, module, args, out):
        if self._capture and isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
            self._attentions.append(out[1])                                              # (B, H, Q, S + k)

    @contextlib.contextmanager
    def _training_attention(self):
        qformer = self.model.qformer
        before = qformer.config._attn_implementation
        if before != "eager":
            qformer.set_attn_implementation("eager")
        try:
            yield
        finally:
            if before != "eager":
                qformer.set_attn_implementation(before)

    # -- inputs -------------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        pixels = self.processor.image_processor(rgb, return_tensors="pt").pixel_values
        return pixels.to(self.device, self.dtype)

    def _prompt_ids(self, prompt: str) -> list[int]:
        """The query placeholders first, then the tokenised prompt — the layout Blip2Processor produces."""
        return [self.image_token_id] * self.num_query_tokens + self.tokenizer(prompt).input_ids

    def _pad(self, rows: list[list[int]], left: bool, pad_value: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate(self, pixels: torch.Tensor, prompts: list[str], settings: GenerationSettings) -> list[str]:
        rows = [self._prompt_ids(p) for p in prompts]
        ids, mask = self._pad(rows, left=self.decoder_only, pad_value=self.tokenizer.pad_token_id)
        with seeded(settings.seed, self.device):
            out = self.model.generate(pixel_values=pixels, input_ids=ids, attention_mask=mask, **settings.kwargs())
        if self.decoder_only and out.shape[1] >= ids.shape[1] and torch.equal(out[:, :ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)

    def _lm_loss(self, pixels: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id
        if not self.decoder_only:   # T5: prompt → encoder (after the queries), target → decoder labels
            ids, mask = self._pad([self._prompt_ids(p) for p in prompts], left=False, pad_value=pad)
            target_rows = [self.tokenizer(t).input_ids for t in targets]
            labels, label_mask = self._pad(target_rows, left=False, pad_value=pad)
            labels = labels.masked_fill(label_mask == 0, -100)
            out = self.model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels)
            return out.loss
        # OPT: one sequence [queries][bos prompt][target eos]; only the target positions carry labels. The model
        # compares logits[:, -L:] with labels of length L, so labels span the whole sequence.
        eos = self.tokenizer.eos_token_id
        rows, label_rows = [], []
        for p, t in zip(prompts, targets):
            head = self._prompt_ids(p)
            tail = self.tokenizer(t, add_special_tokens=False).input_ids + [eos]
            rows.append(head + tail)
            label_rows.append([-100] * len(head) + tail)
        ids, mask = self._pad(rows, left=False, pad_value=pad)
        labels, _ = self._pad(label_rows, left=False, pad_value=-100)
        out = self.model(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels)
        return out.loss

    def _regulariser(self, attentions: list[torch.Tensor], k: int, reg_lambda: float) -> torch.Tensor:
        """λ · mean(p[queries → appended positions]²), summed over the Q-Former's cross-attention layers."""
        n, q = self.n_image_tokens, self.num_query_tokens
        terms = [reg_lambda * (p[:, :, :q, n:].float() ** 2).mean() for p in attentions]
        if not terms:
            raise RuntimeError("the Q-Former returned no cross-attention probabilities to regularise")
        return torch.stack(terms).sum()
