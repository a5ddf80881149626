"""Tiny random-weight checkpoints of the real architectures, for tests and CPU benchmarks.

No model hub is reachable from CI, so each supported architecture can be written out as a small checkpoint folder
(config, safetensors weights, a word-level tokenizer built here, the image processor) and then loaded through the very
same `from_pretrained` path as the real checkpoints. Nothing in the wrappers knows it is talking to a tiny model.
Building is deterministic for a seed, so two machines get bit-identical tiny models.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# A small caption vocabulary: enough words that generated text is readable, few enough that the model stays tiny.
WORDS = ["a", "an", "the", "of", "and", "with", "in", "on", "at", "to", "from", "by", "is", "are", "wearing", "holding", "sitting", "standing", "playing", "throwing", "running", "walking", "looking", "smiling", "next", "near", "front", "behind", "left", "right", "middle", "top", "bottom", "small", "large", "big", "little", "old", "young", "man", "woman", "boy", "girl", "child", "person", "people", "dog", "cat", "puppy", "ball", "toy", "mug", "cup", "box", "bag", "hat", "shirt", "dress", "car", "bike", "tree", "beach", "grass", "snow", "room", "table", "chair", "sofa", "bed", "street", "park", "water", "sea", "sky", "field", "garden", "kitchen", "window", "door", "wall", "floor", "red", "blue", "green", "yellow", "white", "black", "brown", "pink", "orange", "purple", "grey", "gray", "striped", "dotted", "plush", "doll", "figure", "what", "where", "who", "how", "colour", "color", "doing", "image", "photo", "picture", "this", "that", "it", "its", "his", "her", "their", "there", "one", "two", "three", "please", "caption", "describe", "question", "answer", "yes", "no", "sks", "pll", "vxn", "qmy", "zbt", "kro", "dwu", "tje", "alex", "bella", "sam"]
PUNCT = [".", ",", "?", "!", "'s", "'"]


@dataclass(frozen=True)
class TinyPreset:
    key: str
    family: str        # "blip2" | "llava"
    text: str          # "t5" | "opt" | "llama"
    title: str


TINY_PRESETS = {
    "tiny-blip2": TinyPreset("tiny-blip2", "blip2", "t5", "Tiny BLIP-2 (flan-t5 layout, random weights)"),
    "tiny-blip2-opt": TinyPreset("tiny-blip2-opt", "blip2", "opt", "Tiny BLIP-2 (OPT layout, random weights)"),
    "tiny-llava": TinyPreset("tiny-llava", "llava", "llama", "Tiny LLaVA-1.6 (vicuna layout, random weights)"),
}


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
    else:
        build_tiny_llava(tmp, seed=seed)
    _save_json(tmp / "myvlm_preset.json", {"preset": key, "seed": seed})
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race; its folder is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder
