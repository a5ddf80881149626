"""SmolVLM (`Idefics3ForConditionalGeneration`, SmolLM2 language model) with the MyVLM concept layer.

Where the concept goes: after the connector, the vision→language projector, as for LLaVA (their shared prompt and loss
plumbing is vlm_base.DecoderVlmWrapper), at the norm of the first image token. For SmolVLM-256M/500M: SigLIP-B/16 at 512
px → 32 × 32 = 1024 patches of 768 (after `post_layernorm`) → the connector's pixel shuffle (scale 4) → 64 positions of
768·16 = 12288 → one linear → 64 tokens of 576 (256M) or 960 (500M); the concept token makes 65.

Each photo is one view, the whole photo resized to a 512 px square: SmolVLM's "global image", without the 512 px
tiles its processor would add for large photos (a caption of the whole photo needs no tiles, and 64 image tokens keep
a CPU caption cheap). The prompt wraps the image tokens as the processor does for one untiled image:
`<fake_token_around_image><global-img>` + 65 × `<image>` + `<fake_token_around_image>`.

The regulariser reads the language model's self-attention rows of the concept tokens, as for LLaVA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from engine.models.vlm.concept_layer import ConceptLayer, match_first_token_norm
from engine.models.vlm.vlm_base import DecoderVlmWrapper, GenerationSettings

END_OF_UTTERANCE = "<end_of_utterance>"


def smolvlm_prompt(question: str) -> str:
    """SmolVLM-Instruct's chat layout for one untiled image followed by a question."""
    image = "<fake_token_around_image><global-img><image><fake_token_around_image>"
    return f"<|im_start|>User:{image}{question}{END_OF_UTTERANCE}\nAssistant:"


class SmolVlmWrapper(DecoderVlmWrapper):
    model_class = "Idefics3ForConditionalGeneration"
    family = "smolvlm"

    def __init__(self, model, processor, spec, checkpoint, device, dtype):
        super().__init__(model, processor, spec, checkpoint, device, dtype)   # then the plumbing on Idefics3's modules
        cfg = model.config
        vcfg = cfg.vision_config
        self.image_token_id = cfg.image_token_id
        self.image_side = vcfg.image_size                                                  # 512
        self.n_visual_tokens = (vcfg.image_size // vcfg.patch_size) ** 2 // cfg.scale_factor ** 2   # 64
        inner = model.model
        self.vision_tower = inner.vision_model
        self.projector = inner.connector
        self.language_model = inner.text_model
        self.concept_layer = ConceptLayer(cfg.text_config.hidden_size, match_first_token_norm).to(device)  # 576
        self.concept_layer.attach(self.projector)
        for layer in self.language_model.layers:
            layer.self_attn.register_forward_hook(self._capture_probs)
        self._concept_positions: torch.Tensor | None = None   # (B, k) positions of the concept tokens

    # -- prompts ------------------------------------------------------------------------------------------------
    def chat_prompt(self, question: str) -> str:
        return smolvlm_prompt(question)

    def _answer_ids(self, answer: str) -> list[int]:
        """" answer<end_of_utterance>": how SmolVLM ends its turn (and what stops generation)."""
        return (self.tokenizer(" " + answer, add_special_tokens=False).input_ids
                + [self.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)])

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=40)   # greedy, as SmolVLM's own examples

    # -- inputs -------------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(B, 3, 512, 512): each photo squashed to the square global view, normalised by the image processor."""
        side = self.image_side
        squares = [im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC) for im in images]
        pixels = self.processor.image_processor([[sq] for sq in squares], do_resize=False, do_image_splitting=False,
                                                return_tensors="pt").pixel_values
        if pixels.dim() == 5:           # (B, images per sample, 3, H, W): one image each
            pixels = pixels[:, 0]
        return pixels.to(self.device, self.dtype)

    @torch.no_grad()
    def visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 1024, 768): SigLIP's output after `post_layernorm`, before the connector where the concept goes."""
        return self.vision_tower(pixel_values=pixels).last_hidden_state
