"""Tiny random-weight checkpoints of the real architectures, for tests and CPU benchmarks.

No model hub is reachable from CI, so each supported architecture can be written out as a small checkpoint folder
(config, safetensors weights, a word-level tokenizer built here, the image processor) and then loaded through the very
same `from_pretrained` path as the real checkpoints. Nothing in the wrappers knows it is talking to a tiny model.
Building is deterministic for a seed, so two machines get bit-identical tiny models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# A small caption vocabulary: enough words that generated text is readable, few enough that the model stays tiny.
WORDS = ["a", "an", "the", "of", "and", "with", "in", "on", "at", "to", "from", "by", "is", "are", "wearing", "holding", "sitting", "standing", "playing", "throwing", "running", "walking", "looking", "smiling", "next", "near", "front", "behind", "left", "right", "middle", "top", "bottom", "small", "large", "big", "little", "old", "young", "man", "woman", "boy", "girl", "child", "person", "people", "dog", "cat", "puppy", "ball", "toy", "mug", "cup", "box", "bag", "hat", "shirt", "dress", "car", "bike", "tree", "beach", "grass", "snow", "room", "table", "chair", "sofa", "bed", "street", "park", "water", "sea", "sky", "field", "garden", "kitchen", "window", "door", "wall", "floor", "red", "blue", "green", "yellow", "white", "black", "brown", "pink", "orange", "purple", "grey", "gray", "striped", "dotted", "plush", "doll", "figure", "what", "where", "who", "how", "colour", "color", "doing", "image", "photo", "picture", "this", "that", "it", "its", "his", "her", "their", "there", "one", "two", "three", "please", "caption", "describe", "question", "answer", "yes", "no", "sks", "pll", "vxn", "qmy", "zbt", "kro", "dwu", "tje", "alex", "bella", "sam"]
PUNCT = [".", ",", "?", "!", "'s", "'"]


@dataclass(frozen=True)
class TinyPreset:
    key: str
    family: str        # "blip2" | "llava" | "smolvlm" | "llava-onevision"
    text: str          # "t5" | "opt" | "llama" | "qwen2"
    title: str


TINY_PRESETS = {
    "tiny-blip2": TinyPreset("tiny-blip2", "blip2", "t5", "Tiny BLIP-2 (flan-t5 layout, random weights)"),
    "tiny-blip2-opt": TinyPreset("tiny-blip2-opt", "blip2", "opt", "Tiny BLIP-2 (OPT layout, random weights)"),
    "tiny-llava": TinyPreset("tiny-llava", "llava", "llama", "Tiny LLaVA-1.6 (vicuna layout, random weights)"),
    "tiny-smolvlm": TinyPreset("tiny-smolvlm", "smolvlm", "llama", "Tiny SmolVLM (Idefics3 layout, random weights)"),
    "tiny-llava-ov": TinyPreset("tiny-llava-ov", "llava-onevision", "qwen2",
                                "Tiny LLaVA-OneVision (Qwen2 layout, random weights)"),
    "tiny-minigpt-v2": TinyPreset("tiny-minigpt-v2", "minigpt-v2", "llama",
                                  "Tiny MiniGPT-v2 (ViT, 4-token projection, Llama with LoRA; random weights)"),
    "tiny-qwen2-vl": TinyPreset("tiny-qwen2-vl", "qwen2-vl", "qwen2", "Tiny Qwen2-VL (random weights)"),
    "tiny-qwen2.5-vl": TinyPreset("tiny-qwen2.5-vl", "qwen2-vl", "qwen2.5",
                                  "Tiny Qwen2.5-VL (window attention, random weights)"),
}


@dataclass(frozen=True)
class VlmSizes:
    """The sizes of a vision tower + projector + decoder-only language model. The tiny defaults are for tests;
    the named presets below copy the published checkpoints' config.json values, so that the benchmark can time
    random weights at the real sizes without downloading them."""

    vision_hidden: int = 32
    vision_intermediate: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    scale_factor: int = 2          # Idefics3's pixel shuffle (SmolVLM only)
    text_hidden: int = 64
    text_intermediate: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 0            # 0: the word tokenizer's; else the real vocabulary's size (for the lm_head's cost)
    tie_embeddings: bool = False


# HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512 px (12 × 768), scale 4, SmolLM2-135M (30 × 576, 9/3 heads)
SMOLVLM_256M = VlmSizes(768, 3072, 12, 12, 512, 16, 4, 576, 1536, 30, 9, 3, 49280)
# HuggingFaceTB/SmolVLM-500M-Instruct: the same SigLIP, SmolLM2-360M (32 × 960, 15/5 heads)
SMOLVLM_500M = VlmSizes(768, 3072, 12, 12, 512, 16, 4, 960, 2560, 32, 15, 5, 49280)
# llava-hf/llava-onevision-qwen2-0.5b-ov-hf: SigLIP so400m/14 at 384 px (26 × 1152), Qwen2-0.5B (24 × 896, 14/2 heads)
LLAVA_OV_05B = VlmSizes(1152, 4304, 26, 16, 384, 14, 1, 896, 4864, 24, 14, 2, 151936, tie_embeddings=True)
# Qwen/Qwen2-VL-2B-Instruct: its ViT (32 × 1280, 16 heads, MLP × 4, patch 14, 2 × 2 merge) at the 448 px view the
# wrapper uses, Qwen2-1.5B (28 × 1536, 12/2 heads); image_size is that view's side, scale_factor the spatial merge
QWEN2_VL_2B = VlmSizes(1280, 5120, 32, 16, 448, 14, 2, 1536, 8960, 28, 12, 2, 151936, tie_embeddings=True)
TINY_SMOLVLM = VlmSizes()
TINY_LLAVA_OV = VlmSizes(image_size=56, patch_size=14, scale_factor=1)
# Qwen/Qwen2.5-VL-3B-Instruct: its ViT (32 × 1280, 16 heads, SwiGLU 3420, 112 px windows, full attention in blocks
# 7, 15, 23, 31) at the 448 px view, Qwen2.5-3B (36 × 2048, 16/2 heads)
QWEN25_VL_3B = VlmSizes(1280, 3420, 32, 16, 448, 14, 2, 2048, 11008, 36, 16, 2, 151936, tie_embeddings=True)
TINY_QWEN2_VL = VlmSizes(image_size=56, patch_size=14, scale_factor=2)
# 112 px views in 56 px windows: 4 windows of 2 × 2 image tokens, so that the window order is exercised
TINY_QWEN25_VL = VlmSizes(image_size=112, patch_size=14, scale_factor=2, text_hidden=128, text_intermediate=256)


def build_word_tokenizer(words: list[str], *, specials: dict[str, str], image_token: str = "<image>",
                         append_eos: bool = False):
    """A word-level fast tokenizer: lower-cases, splits punctuation and possessives, knows `<image>`."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in [*specials.values(), image_token, *PUNCT, *words]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"'s\b|'"), behavior="isolated"),
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[.,?!]"), behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ." and " 's"
    if append_eos:  # as T5's tokenizer does
        eos = specials["eos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                           special_tokens=[(eos, vocab[eos])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.add_special_tokens({"additional_special_tokens": [image_token]})
    fast.image_token = image_token
    return fast


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _save_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def build_tiny_blip2(folder: Path, *, text: str = "t5", seed: int = 0, image_size: int = 32, patch_size: int = 8,
                     num_query_tokens: int = 8) -> Path:
    """BLIP-2 with a 2-layer ViT, 2-layer Q-Former (cross-attention in every layer) and a 2-layer T5 or OPT."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        OPTConfig,
        T5Config,
    )
    from transformers.models.blip_2.configuration_blip_2 import (
        Blip2QFormerConfig,
        Blip2VisionConfig,
    )

    if text == "t5":
        tokenizer = build_word_tokenizer(WORDS, specials={"pad_token": "<pad>", "eos_token": "</s>",
                                                          "unk_token": "<unk>"}, append_eos=True)
        text_config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                               num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                               decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                               feed_forward_proj="gated-gelu", dropout_rate=0.0)
    elif text == "opt":
        tokenizer = build_word_tokenizer(WORDS, specials={"pad_token": "<pad>", "bos_token": "</s>",
                                                          "eos_token": "\n", "unk_token": "<unk>"})
        tokenizer.add_bos_token = True
        text_config = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=128,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, dropout=0.0, attention_dropout=0.0)
    else:
        raise ValueError(f"unknown BLIP-2 text model {text!r}: t5 or opt")

    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=image_size, patch_size=patch_size),
        qformer_config=Blip2QFormerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32,
                                          cross_attention_frequency=1, max_position_embeddings=64),
        text_config=text_config.to_dict() | {"model_type": text_config.model_type},
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
    )
    _seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=num_query_tokens)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def blip2_flan_t5_xl_parts(seed: int = 0, dtype=None):
    """(model, processor) of BLIP-2 at Salesforce/blip2-flan-t5-xl's sizes with random weights, for the CPU
    benchmark's baseline: ViT-g/14 at 224 px (39 × 1408), Q-Former (12 × 768, cross-attention every 2nd layer, 32
    queries), Flan-T5-XL (24 + 24 × 2048, 32 heads, vocabulary 32128)."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, T5Config
    from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig

    tokenizer = build_word_tokenizer(WORDS, specials={"pad_token": "<pad>", "eos_token": "</s>",
                                                      "unk_token": "<unk>"}, append_eos=True)
    text_config = T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                           num_heads=32, decoder_start_token_id=tokenizer.pad_token_id,
                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                           tie_word_embeddings=False, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                        num_attention_heads=16, image_size=224, patch_size=14, qkv_bias=True),
        qformer_config=Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, encoder_hidden_size=1408,
                                          cross_attention_frequency=2),
        text_config=text_config.to_dict() | {"model_type": "t5"},
        num_query_tokens=32, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    _seed(seed)
    model = Blip2ForConditionalGeneration._from_config(config, dtype=dtype or torch.float32).eval()
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 224, "width": 224}),
                               tokenizer=tokenizer, num_query_tokens=32)
    return model, processor


def build_tiny_llava(folder: Path, *, seed: int = 0, image_size: int = 56, patch_size: int = 14) -> Path:
    """LLaVA-NeXT with a 2-layer CLIP vision tower, the two-linear projector and a 2-layer Llama."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = build_word_tokenizer(WORDS + ["user", "assistant", "chat", "between", "curious", "human",
                                              "artificial", "intelligence", "gives", "helpful", "detailed",
                                              "polite", "answers", "questions", ":", "\n"],
                                     specials={"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                                               "unk_token": "<unk>"})
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    side = image_size
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                                       projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_index=image_token_id,
        image_grid_pinpoints=[[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    _seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=config.image_grid_pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   patch_size=patch_size, vision_feature_select_strategy="default")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _chat_tokenizer(extra_words: list[str], specials: dict[str, str], extra_specials: list[str]):
    """The word tokenizer with a chat model's turn markers as single special tokens."""
    tokenizer = build_word_tokenizer(WORDS + extra_words, specials=specials)
    tokenizer.add_tokens(extra_specials, special_tokens=True)
    return tokenizer


def _vocab(sizes: VlmSizes, tokenizer) -> int:
    return max(sizes.vocab_size, len(tokenizer))


def smolvlm_parts(sizes: VlmSizes = TINY_SMOLVLM, seed: int = 0, dtype=None):
    """(model, processor) of an Idefics3 (SmolVLM) model with random weights at `sizes`."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig

    tokenizer = _chat_tokenizer(["user", "assistant", ":", "\n"],
                                {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "<end_of_utterance>",
                                 "unk_token": "<unk>"},
                                ["<|im_start|>", "<fake_token_around_image>", "<global-img>"])
    eos = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    s = sizes
    seq_len = (s.image_size // s.patch_size) ** 2 // s.scale_factor ** 2
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(hidden_size=s.vision_hidden, intermediate_size=s.vision_intermediate,
                                           num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
                                           image_size=s.image_size, patch_size=s.patch_size),
        text_config=LlamaConfig(vocab_size=_vocab(s, tokenizer), hidden_size=s.text_hidden,
                                intermediate_size=s.text_intermediate, num_hidden_layers=s.text_layers,
                                num_attention_heads=s.text_heads, num_key_value_heads=s.text_kv_heads,
                                max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=eos),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=s.scale_factor,
        tie_word_embeddings=s.tie_embeddings, pad_token_id=tokenizer.pad_token_id,
    )
    _seed(seed)
    model = Idefics3ForConditionalGeneration._from_config(config, dtype=dtype or torch.float32).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = Idefics3ImageProcessor(size={"longest_edge": s.image_size}, do_image_splitting=False,
                                             max_image_size={"longest_edge": s.image_size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len)
    return model, processor


def llava_onevision_parts(sizes: VlmSizes = TINY_LLAVA_OV, seed: int = 0, dtype=None):
    """(model, processor) of a LLaVA-OneVision model (SigLIP + Qwen2) with random weights at `sizes`."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = _chat_tokenizer(["user", "assistant", "system", "\n"],
                                {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": "<unk>"},
                                ["<|im_start|>", "<video>"])
    s = sizes
    side = s.image_size
    pinpoints = [[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=s.vision_hidden, intermediate_size=s.vision_intermediate,
                                         num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
                                         image_size=side, patch_size=s.patch_size, vision_use_head=False),
        text_config=Qwen2Config(vocab_size=_vocab(s, tokenizer), hidden_size=s.text_hidden,
                                intermediate_size=s.text_intermediate, num_hidden_layers=s.text_layers,
                                num_attention_heads=s.text_heads, num_key_value_heads=s.text_kv_heads,
                                max_position_embeddings=32768, rope_theta=1000000.0,
                                tie_word_embeddings=s.tie_embeddings, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-1, vision_feature_select_strategy="full",
        tie_word_embeddings=s.tie_embeddings,
    )
    _seed(seed)
    model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=dtype or torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = LlavaOnevisionImageProcessor(size={"height": side, "width": side},
                                                   image_grid_pinpoints=pinpoints)
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                        video_processor=LlavaOnevisionVideoProcessor(),
                                        num_image_tokens=(side // s.patch_size) ** 2,
                                        vision_feature_select_strategy="full")
    return model, processor


def qwen2_vl_parts(sizes: VlmSizes = TINY_QWEN2_VL, seed: int = 0, dtype=None, version: str = "2"):
    """(model, processor) of a Qwen2-VL model (its ViT with the 2 × 2 patch merger + Qwen2 with M-RoPE) with random
    weights at `sizes`; `version="2.5"`: Qwen2.5-VL (window attention in the ViT but in every 4th block, SwiGLU,
    RMSNorm). The image processor's pixel budget is pinned to one `image_size` square, so a tiny model sees its small
    views while a real checkpoint's processor keeps its own budget."""
    import torch
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tokenizer = build_word_tokenizer(WORDS + ["user", "assistant", "system", "you", "helpful", "\n"],
                                     specials={"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                                               "unk_token": "<unk>"}, image_token="<|image_pad|>")
    tokenizer.add_tokens(["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"], special_tokens=True)
    s = sizes
    ids = tokenizer.convert_tokens_to_ids
    head_dim = s.text_hidden // s.text_heads
    quarter = head_dim // 16                      # M-RoPE: (t, h, w) sections of the rotary half, [16, 24, 24] at 128
    vision = {"depth": s.vision_layers, "num_heads": s.vision_heads, "patch_size": s.patch_size,
              "spatial_merge_size": s.scale_factor, "temporal_patch_size": 2}
    if version == "2.5":
        prefix = "Qwen2_5_VL"
        full = [i for i in range(s.vision_layers) if i % 8 == 7] or [s.vision_layers - 1]     # (7, 15, 23, 31)
        vision |= {"hidden_size": s.vision_hidden, "intermediate_size": s.vision_intermediate,
                   "out_hidden_size": s.text_hidden, "window_size": min(112, s.image_size // 2),
                   "fullatt_block_indexes": full}
    else:
        prefix = "Qwen2VL"
        vision |= {"embed_dim": s.vision_hidden, "mlp_ratio": s.vision_intermediate // s.vision_hidden,
                   "hidden_size": s.text_hidden}
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision,
        text_config={"vocab_size": _vocab(s, tokenizer), "hidden_size": s.text_hidden,
                     "intermediate_size": s.text_intermediate, "num_hidden_layers": s.text_layers,
                     "num_attention_heads": s.text_heads, "num_key_value_heads": s.text_kv_heads,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                         "mrope_section": [2 * quarter, 3 * quarter, 3 * quarter]},
                     "tie_word_embeddings": s.tie_embeddings, "pad_token_id": tokenizer.pad_token_id,
                     "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=s.tie_embeddings,
    )
    _seed(seed)
    model_class = getattr(transformers, f"{prefix}ForConditionalGeneration")
    model = model_class._from_config(config, dtype=dtype or torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    pixels = s.image_size * s.image_size
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": pixels, "longest_edge": pixels},
                                            patch_size=s.patch_size, merge_size=s.scale_factor)
    processor = getattr(transformers, f"{prefix}Processor")(image_processor=image_processor, tokenizer=tokenizer,
                                                             video_processor=Qwen2VLVideoProcessor())
    return model, processor


def _save_parts(folder: Path, model, processor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _minigpt_v2_markers() -> list[str]:
    """MiniGPT-v2's prompt markers (minigpt_v2.py), special tokens of its tiny word tokenizer."""
    from engine.models.vlm.minigpt_v2 import IMAGE_HERE

    return ["[INST]", "[/INST]", "<Img>", "</Img>", "[caption]", "[refer]", "[vqa]", IMAGE_HERE, ":"]


@dataclass
class TinyMiniGptV2Sizes:
    """A tiny MiniGPT-v2 for tests: a 2-layer ViT saved at 32 px and run at 64 px (so the position embeddings are
    interpolated as the real 224 → 448 px are), groups of 4, a 2-layer Llama with LoRA on q_proj and v_proj."""

    vision_hidden: int = 32
    vision_size: int = 32
    patch_size: int = 8
    image_size: int = 64
    text_hidden: int = 64
    text_layers: int = 2
    lora_r: int = 4
    extra_words: list[str] = field(default_factory=_minigpt_v2_markers)


def build_tiny_minigpt_v2(folder: Path, seed: int = 0, sizes: TinyMiniGptV2Sizes | None = None) -> Path:
    """vision/ (a Blip2VisionModel), llama/ (LlamaForCausalLM + a word tokenizer), minigptv2_checkpoint.pth in the
    official format (random projection and LoRA) and minigpt_v2.json: loaded by `MiniGptV2Wrapper.load` exactly
    as the real parts are."""
    import torch
    from torch import nn
    from transformers import Blip2VisionConfig, Blip2VisionModel, LlamaConfig, LlamaForCausalLM

    from engine.models.vlm.minigpt_v2 import OFFICIAL_CHECKPOINT, MiniGptV2Config, write_official_checkpoint

    s = sizes or TinyMiniGptV2Sizes()
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vision = Blip2VisionModel(Blip2VisionConfig(hidden_size=s.vision_hidden, intermediate_size=2 * s.vision_hidden,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                image_size=s.vision_size, patch_size=s.patch_size))
    vision.save_pretrained(folder / "vision")
    tokenizer = build_word_tokenizer(WORDS, specials={"pad_token": "<pad>", "bos_token": "<s>",
                                                      "eos_token": "</s>", "unk_token": "<unk>"})
    tokenizer.add_tokens(s.extra_words, special_tokens=True)
    tokenizer.add_bos_token = True
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=s.text_hidden,
                                       intermediate_size=2 * s.text_hidden, num_hidden_layers=s.text_layers,
                                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id))
    llm.save_pretrained(folder / "llama")
    tokenizer.save_pretrained(folder / "llama")
    cfg = MiniGptV2Config(image_size=s.image_size, lora_alpha=2.0 * s.lora_r)
    proj = nn.Linear(s.vision_hidden * cfg.group, s.text_hidden)
    lora = {(i, t): (torch.randn(s.lora_r, s.text_hidden) * 0.1, torch.randn(s.text_hidden, s.lora_r) * 0.1)
            for i in range(s.text_layers) for t in cfg.lora_targets}
    write_official_checkpoint(folder / OFFICIAL_CHECKPOINT, proj, lora)
    cfg.write(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "minigpt_v2"}))
    return folder


def ensure_tiny_checkpoint(key: str, root: Path, seed: int = 0) -> Path:
    """The folder of tiny preset `key` under `root`, built on first use (atomically: a kill leaves no half folder)."""
    preset = TINY_PRESETS[key]
    folder = root / f"{key}-seed{seed}"
    if (folder / "config.json").exists():
        return folder
    tmp = root / f".{key}-seed{seed}.{os.getpid()}.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    if preset.family == "blip2":
        build_tiny_blip2(tmp, text=preset.text, seed=seed)
    elif preset.family == "smolvlm":
        _save_parts(tmp, *smolvlm_parts(TINY_SMOLVLM, seed))
    elif preset.family == "llava-onevision":
        _save_parts(tmp, *llava_onevision_parts(TINY_LLAVA_OV, seed))
    elif preset.family == "minigpt-v2":   # its own parts layout and the official .pth (minigpt_v2.py)
        build_tiny_minigpt_v2(tmp, seed=seed)
    elif preset.family == "qwen2-vl" and preset.text == "qwen2.5":
        _save_parts(tmp, *qwen2_vl_parts(TINY_QWEN25_VL, seed, version="2.5"))
    elif preset.family == "qwen2-vl":
        _save_parts(tmp, *qwen2_vl_parts(TINY_QWEN2_VL, seed))
    else:
        build_tiny_llava(tmp, seed=seed)
    _save_json(tmp / "myvlm_preset.json", {"preset": key, "seed": seed})
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its folder is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder
