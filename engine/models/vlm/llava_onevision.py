"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`, Qwen2-0.5B) with the MyVLM concept layer.

The same layout as LLaVA-1.6 (llava.py), which this wrapper reuses: SigLIP so400m/14 at 384 px → its last layer,
all positions kept (`vision_feature_select_strategy="full"`): 27 × 27 = 729 patches of 1152 → the two-linear
projector → 729 tokens of 896, where the concept layer appends its token at the norm of the first image token
(729 → 730). As for LLaVA, each photo is one base view (the whole photo resized to 384 px), without any-res tiles
or newline tokens, and the regulariser reads Qwen2's self-attention rows of the concept tokens.

The frozen tower's output is everything before the token, so the trainer may cache it per augmented view.
"""

from __future__ import annotations

from engine.models.vlm.llava import LlavaWrapper
from engine.models.vlm.vlm_base import GenerationSettings

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def qwen_prompt(question: str) -> str:
    """Qwen2's chat layout, which LLaVA-OneVision was tuned with: the image, then the question, in the user turn."""
    return f"{IM_START}user\n<image>\n{question}{IM_END}\n{IM_START}assistant\n"


class LlavaOnevisionWrapper(LlavaWrapper):
    family = "llava-onevision"
    model_class = "LlavaOnevisionForConditionalGeneration"

    def chat_prompt(self, question: str) -> str:
        return qwen_prompt(question)

    def _answer_ids(self, answer: str) -> list[int]:
        """The answer, then `<|im_end|>`: how Qwen2 ends its turn (and what stops generation)."""
        return (self.tokenizer(answer, add_special_tokens=False).input_ids
                + [self.tokenizer.convert_tokens_to_ids(IM_END)])

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=40)   # greedy: a 0.5B model wanders when sampled
