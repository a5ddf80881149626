"""Build and pre-train the world's small VLMs: a BLIP-2 (flan-T5 layout) and a LLaVA-NeXT (vicuna layout).

The models are the real transformers classes (`Blip2ForConditionalGeneration`, `LlavaNextForConditionalGeneration`)
at tiny sizes, with word-level tokenizers built here over the world's vocabulary. Each run is reproducible from a
seed (world stream + torch seed, one CPU thread) and writes a checkpoint folder that loads exactly like a real one:

    model.save_pretrained(folder)  +  processor.save_pretrained(folder)   (safetensors)
    Blip2ForConditionalGeneration.from_pretrained(folder), Blip2Processor.from_pretrained(folder)

Input layouts are the ones the project's wrappers use (engine/models/vlm/blip2.py, llava.py):

* BLIP-2 / T5: encoder input = `num_query_tokens` `<image>` placeholders, then the tokenised prompt (no prompt:
  just `</s>`), as `processor(images=..., text=[""] * B)` builds it; labels = `tokenizer(captions).input_ids`
  (each ends with `</s>`), padding -> -100; the decoder starts from `<pad>` (T5's decoder_start_token_id).
  Captioning = `model.generate(**inputs, do_sample=False)`.
* LLaVA: "{SYSTEM} USER: <image>\\n{question} ASSISTANT:" with one `<image>` placeholder per visual token of the
  single base view (vision tower -> hidden_states[vision_feature_layer] -> drop CLS -> projector), the answer after
  it and `</s>`. Pre-training packs up to three question turns per image in the vicuna v1 multi-turn format
  ("... ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"); the first turn is exactly the wrapper's single-turn layout.

Besides the language-model loss, pre-training adds training-only auxiliary heads (not saved), because a rendered
world gives labels for free and a tiny model on one CPU thread needs them to learn in minutes, not hours:
* a linear probe on the vision encoder's *pooled* output predicting which backgrounds, class+colour pairs,
  patterns, detail colours, accessories and named figures are in the picture. Like CLIP's image embedding this
  makes the pooled feature informative, which MyVLM's object heads read. (In LLaVA the LM reads layer -2, so the
  last layer and the pooled output are trained by this loss alone, as CLIP's are by its contrastive loss.)
* a per-patch head on the patch tokens the language side reads (class / colour / pattern of the object covering
  each patch): shapes are learnt several times faster than from captions alone;
* BLIP-2, off by default (`--slot-weight`): a head on the Q-Former's query outputs predicting the background and,
  per slot (left / middle / right), the object's class, colour and name. It sped up short CPU runs, but it binds
  each query to a place in the picture, and such a Q-Former hardly hears MyVLM's appended token, which has no
  place: on the checkpoint trained with it, even free keys and values for the token in every cross-attention
  (`steerability.py`) could not make it say the identifier on its own training photos. Trained without it on the
  GPU, the captions are as good and the token is heard (bench/README.md).

Usage (one thread, reproducible):
    .venv/bin/python bench/world/pretrain.py all            # both, one after the other (~45 min)
    .venv/bin/python bench/world/pretrain.py blip2          # -> bench/world/models/blip2-world/
    .venv/bin/python bench/world/pretrain.py llava          # -> bench/world/models/llava-world/
    .venv/bin/python bench/world/pretrain.py eval blip2     # re-measure a saved checkpoint

The committed blip2-world was trained on a GPU (one H200, 390 s beside two other variants; bench/README.md), then
stored in float16 and measured here on a CPU:
    bench/world/pretrain_gpu.sh OUT 390 "--vision-hidden 160 --vision-layers 6 --text-layers 3" ...  # on the GPU
    .venv/bin/python bench/world/pretrain.py half blip2 --out FOLDER    # float16 weights (half the bytes)
    .venv/bin/python bench/world/pretrain.py eval blip2 --out FOLDER    # measure; adds to pretrain_report.json
On a GPU the data workers draw the scenes, so a run depends on (seed, workers) and on the GPU's arithmetic; the
one-thread CPU recipe (`--steps N --batch 128 --vision-hidden 160 ...`) is the bit-for-bit reproducible one.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if __package__ in (None, ""):   # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.world.world import (
    ACCESSORIES,
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    CONCEPTS,
    DETAIL_COLOURS,
    IDENTIFIERS,
    NAMED,
    PATTERNS,
    CaptionAccuracy,
    SceneMeta,
    World,
    generic_caption,
    normalise_answer,
    parse_caption,
    score_caption,
    vqa_pairs,
    words,
)

HERE = Path(__file__).resolve().parent
MODELS = HERE / "models"
BLIP2_DIR = MODELS / "blip2-world"
LLAVA_DIR = MODELS / "llava-world"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKEN = "<image>"
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")


def vicuna_prompt(question: str) -> str:
    """The llava_v1 single-turn prompt; the answer follows after a space, then `</s>`."""
    return f"{SYSTEM} USER: <image>\n{question} ASSISTANT:"


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------------------------
TOKEN_PATTERN = r"'s\b|'|[.,?!:]|\n|[^\s.,?!:'\n]+"   # = world.words(): the pre-tokenizer and the world agree


def build_tokenizer(style: str, extra_text: str = ""):
    """A word-level `PreTrainedTokenizerFast` over the world's vocabulary, with `<image>` as a special token.

    style "t5": pad 0, eos 1, unk 2, and `</s>` appended to every text (as T5's tokenizer does).
    style "llama": unk 0, bos 1, eos 2, pad 3, and `<s>` prepended (as Llama's tokenizer does).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import WordLevel
    from transformers import AddedToken, PreTrainedTokenizerFast

    if style == "t5":
        specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    elif style == "llama":
        specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    else:
        raise ValueError(style)
    vocab: dict[str, int] = {}
    for tok in [*specials.values(), IMAGE_TOKEN, *World.vocabulary(), *words(extra_text)]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="removed", invert=True)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)   # words joined by spaces; " ," -> ","
    if style == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", vocab["</s>"])])
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **specials)
    # `<image>` is an added special token, as in the real BLIP-2/LLaVA tokenizers; deliberately no `image_token`
    # attribute: Blip2Processor then uses its own AddedToken("<image>") (which it finds already in the vocabulary).
    fast.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    assert fast.convert_tokens_to_ids(IMAGE_TOKEN) == vocab[IMAGE_TOKEN] and len(fast) == len(vocab)
    return fast


def check_vocabulary(tokenizer, texts) -> None:
    unk = tokenizer.unk_token_id
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False).input_ids
        if unk in ids:
            raise AssertionError(f"out-of-vocabulary word in {t!r}")


# ---------------------------------------------------------------------------------------------------------------
# Model builders
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Blip2Sizes:
    image_size: int = 96
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 4
    heads: int = 4
    qformer_hidden: int = 128
    qformer_layers: int = 3
    num_query_tokens: int = 32
    text_hidden: int = 128
    text_layers: int = 2


@dataclass
class LlavaSizes:
    image_size: int = 96
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 4
    heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_intermediate: int = 320


def build_blip2(sizes: Blip2Sizes, seed: int):
    """A fresh BLIP-2 (ViT + Q-Former + flan-T5 layout) and its processor."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        T5Config,
    )
    from transformers.models.blip_2.configuration_blip_2 import (
        Blip2QFormerConfig,
        Blip2VisionConfig,
    )

    tokenizer = build_tokenizer("t5")
    s = sizes
    text = T5Config(vocab_size=len(tokenizer), d_model=s.text_hidden, d_kv=s.text_hidden // s.heads,
                    d_ff=2 * s.text_hidden, num_layers=s.text_layers, num_decoder_layers=s.text_layers,
                    num_heads=s.heads, relative_attention_num_buckets=16, relative_attention_max_distance=64,
                    feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False,
                    decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=s.vision_hidden, intermediate_size=4 * s.vision_hidden,
                                        num_hidden_layers=s.vision_layers, num_attention_heads=s.heads,
                                        image_size=s.image_size, patch_size=s.patch_size,
                                        initializer_range=0.02),   # BLIP-2's default 1e-10 never trains
        qformer_config=Blip2QFormerConfig(vocab_size=64, hidden_size=s.qformer_hidden,
                                          num_hidden_layers=s.qformer_layers, num_attention_heads=s.heads,
                                          intermediate_size=4 * s.qformer_hidden,
                                          encoder_hidden_size=s.vision_hidden, cross_attention_frequency=1,
                                          max_position_embeddings=64, hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0),
        text_config=text.to_dict() | {"model_type": "t5"},
        num_query_tokens=s.num_query_tokens,
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        # transformers initialises the queries to zeros: identical queries would never diverge
        model.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
        # T5's untied lm_head starts at std 1 (initial loss ~70 at this width); start it at d_model^-1/2 instead
        model.language_model.lm_head.weight.normal_(0.0, s.text_hidden ** -0.5)
    gen = model.generation_config
    gen.decoder_start_token_id = tokenizer.pad_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.max_new_tokens = 32
    image_processor = BlipImageProcessor(size={"height": s.image_size, "width": s.image_size},
                                         image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=s.num_query_tokens)
    return model, processor


def build_llava(sizes: LlavaSizes, seed: int):
    """A fresh LLaVA-NeXT (CLIP ViT + two-linear projector + Llama) and its processor."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = build_tokenizer("llama", extra_text=vicuna_prompt("") + " USER:")
    s = sizes
    side = s.image_size
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=s.vision_hidden, intermediate_size=4 * s.vision_hidden,
                                       num_hidden_layers=s.vision_layers, num_attention_heads=s.heads,
                                       image_size=s.image_size, patch_size=s.patch_size,
                                       projection_dim=s.vision_hidden),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=s.text_hidden,
                                intermediate_size=s.text_intermediate, num_hidden_layers=s.text_layers,
                                num_attention_heads=s.heads, num_key_value_heads=s.heads,
                                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                tie_word_embeddings=False),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=[[side, side], [side, 2 * side], [2 * side, side], [2 * side, 2 * side]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.max_new_tokens = 32
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_grid_pinpoints=config.image_grid_pinpoints, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=s.patch_size,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------
def uint8_pixels(images: list[Image.Image]) -> torch.Tensor:
    """(B, H, W, 3) uint8: what a batch carries from a data worker to the GPU (a quarter of float32's bytes)."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), np.uint8) for im in images]))


def normalise_pixels(u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float, normalised like the image processors, on u8's device."""
    x = u8.float().div(255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN, device=u8.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=u8.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def fast_pixels(images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) normalised like the image processors (the images are already at the model's size).

    Checked against the real processors at the start of every run (`check_pixels`), so training sees exactly
    what inference sees, without the processors' per-call overhead.
    """
    return normalise_pixels(uint8_pixels(images))


def processor_pixels(processor, images: list[Image.Image]) -> torch.Tensor:
    """The processor's pixels; for LLaVA-NeXT the base view only (`pixel_values[:, 0]`), as the wrapper uses."""
    px = processor.image_processor(images, return_tensors="pt").pixel_values
    return px[:, 0] if px.dim() == 5 else px


def check_pixels(processor, images: list[Image.Image]) -> float:
    diff = (processor_pixels(processor, images) - fast_pixels(images)).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"fast pixel path differs from the image processor by {diff}")
    return diff


ATTRIBUTES = ([f"bg:{b}" for b in BACKGROUNDS] + [f"cc:{c}:{k}" for c in CLASSES for k in COLOURS]
              + [f"cp:{c}:{p}" for c in CLASSES for p in PATTERNS[1:]]
              + [f"cd:{c}:{d}" for c in CLASSES for d in DETAIL_COLOURS]
              + [f"ca:{c}:{a}" for c in ("teddy", "doll") for a in ACCESSORIES[1:]]
              + [f"named:{n}" for n in NAMED])
ATTR_INDEX = {a: i for i, a in enumerate(ATTRIBUTES)}


def attribute_targets(metas: list[SceneMeta]) -> torch.Tensor:
    """Multi-hot (B, len(ATTRIBUTES)): what is in each picture, for the pooled-feature probe."""
    y = torch.zeros(len(metas), len(ATTRIBUTES))
    for i, m in enumerate(metas):
        keys = [f"bg:{m.background}"]
        for o in m.objects:
            inst = o.instance
            keys.append(f"cc:{inst.cls}:{inst.colour}")
            if inst.pattern != "plain":
                keys += [f"cp:{inst.cls}:{inst.pattern}", f"cd:{inst.cls}:{inst.detail}"]
            if inst.accessory != "none":
                keys.append(f"ca:{inst.cls}:{inst.accessory}")
                keys.append(f"cd:{inst.cls}:{inst.detail}")
            if o.name:
                keys.append(f"named:{o.name}")
        for k in keys:
            y[i, ATTR_INDEX[k]] = 1.0
    return y


PATCH_CLASSES = ("none", *CLASSES)
PATCH_COLOURS = ("none", *COLOURS)
PATCH_PATTERNS = ("none", *PATTERNS)
DENSE_OUT = len(PATCH_CLASSES) + len(PATCH_COLOURS) + len(PATCH_PATTERNS)


def patch_targets(scenes, patch: int) -> torch.Tensor:
    """(B, P, 3) per-patch labels (class, colour, pattern) of the object covering >= 1/4 of the patch, else none."""
    out = []
    for sc in scenes:
        m = sc.object_map
        g = m.shape[0] // patch
        cells = m[:g * patch, :g * patch].reshape(g, patch, g, patch).transpose(0, 2, 1, 3).reshape(g * g, -1)
        counts = np.stack([(cells == k).sum(1) for k in range(len(sc.meta.objects) + 1)], 1)
        counts[:, 0] = 0
        idx = np.where(counts.max(1) * 4 >= patch * patch, counts.argmax(1), 0)
        table = [(0, 0, 0)] + [(PATCH_CLASSES.index(o.cls), PATCH_COLOURS.index(o.colour),
                                PATCH_PATTERNS.index(o.instance.pattern)) for o in sc.meta.objects]
        out.append(np.asarray(table)[idx])
    return torch.from_numpy(np.stack(out)).long()


def dense_loss(head: torch.nn.Module, patch_tokens: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-patch cross-entropy: which object class / colour / pattern covers each patch (y: `patch_targets`).

    Dense labels come free with a rendered world; they teach the ViT shapes far faster than captions alone.
    """
    logits = head(patch_tokens)
    a, b = len(PATCH_CLASSES), len(PATCH_CLASSES) + len(PATCH_COLOURS)
    return (F.cross_entropy(logits[..., :a].flatten(0, 1), y[..., 0].flatten())
            + F.cross_entropy(logits[..., a:b].flatten(0, 1), y[..., 1].flatten())
            + F.cross_entropy(logits[..., b:].flatten(0, 1), y[..., 2].flatten()))


SLOT_OUT = len(PATCH_CLASSES) + len(PATCH_COLOURS) + 1 + len(NAMED)


def slot_targets(metas: list[SceneMeta]) -> torch.Tensor:
    """(B, 3, 3): for the left/middle/right slot, the object's class, colour and named-figure index (0 = none)."""
    y = torch.zeros(len(metas), 3, 3, dtype=torch.long)
    names = list(NAMED)
    for i, m in enumerate(metas):
        for o in m.objects:
            j = ("left", "middle", "right").index(o.slot)
            y[i, j] = torch.tensor([PATCH_CLASSES.index(o.cls), PATCH_COLOURS.index(o.colour),
                                    names.index(o.name) + 1 if o.name else 0])
    return y


def background_targets(metas: list[SceneMeta]) -> torch.Tensor:
    return torch.tensor([list(BACKGROUNDS).index(m.background) for m in metas])


def slot_loss(head: torch.nn.Module, query_output: torch.Tensor, y: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """From all Q-Former outputs together: the background, and what stands in each slot. Teaches the queries to
    keep the objects apart (without it, multi-object captions mix up classes) and not to drop the background.

    (The real BLIP-2 pre-trains its Q-Former with losses of its own before captioning; this played that part.)
    Off by default since 2026-11-26: it ties each query to a slot, and MyVLM's appended token has none.
    """
    out = head(query_output.flatten(1))
    logits = out[:, :3 * SLOT_OUT].view(len(y), 3, SLOT_OUT)
    a, b = len(PATCH_CLASSES), len(PATCH_CLASSES) + len(PATCH_COLOURS)
    return (F.cross_entropy(logits[..., :a].flatten(0, 1), y[..., 0].flatten())
            + F.cross_entropy(logits[..., a:b].flatten(0, 1), y[..., 1].flatten())
            + F.cross_entropy(logits[..., b:].flatten(0, 1), y[..., 2].flatten())
            + F.cross_entropy(out[:, 3 * SLOT_OUT:], bg))


def probe_loss(head: torch.nn.Module, pooled: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the attribute probe (y: `attribute_targets`), summed over attributes, averaged
    over images."""
    return F.binary_cross_entropy_with_logits(head(pooled), y, reduction="sum") / len(y)


# -- object looks: a CLIP-like contrast between the pooled feature and a description of each object's look ----------
LOOK_FIELDS = (CLASSES, tuple(COLOURS), PATTERNS, ("none", *DETAIL_COLOURS), ACCESSORIES)
LOOK_IN = sum(len(f) for f in LOOK_FIELDS)


def look_key(inst) -> tuple:
    return (inst.cls, inst.colour, inst.pattern, inst.detail or "none", inst.accessory)


def look_onehot(keys: list[tuple]) -> torch.Tensor:
    """(L, LOOK_IN): one one-hot block per look field."""
    x = torch.zeros(len(keys), LOOK_IN)
    for i, k in enumerate(keys):
        off = 0
        for field_values, v in zip(LOOK_FIELDS, k):
            x[i, off + field_values.index(v)] = 1.0
            off += len(field_values)
    return x


def near_look(key: tuple, rng: np.random.Generator) -> tuple:
    """The same look with one of colour / pattern / detail colour / accessory changed."""
    cls, colour, pattern, detail, acc = key
    while True:
        what = int(rng.integers(4))
        if what == 0:
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        elif what == 1:
            pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        elif what == 2:
            detail = LOOK_FIELDS[3][1 + int(rng.integers(len(DETAIL_COLOURS)))]
        else:
            acc = ACCESSORIES[int(rng.integers(len(ACCESSORIES)))]
        new = (cls, colour, pattern, detail, acc)
        if new != key:
            return new


class LookEncoder(torch.nn.Module):
    """Embeds an object's look (class, colour, pattern, detail colour, accessory) into the pooled-feature space."""

    def __init__(self, dim: int, hidden: int = 192):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(LOOK_IN, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = torch.nn.Parameter(torch.tensor(-5.0))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(onehot), dim=-1)


def look_targets(metas: list[SceneMeta], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The looks a batch is contrasted against: every object's look and three near misses of each (one attribute
    off). Returns (their one-hot descriptions (L, LOOK_IN), which image holds which (B, L))."""
    present = [{look_key(o.instance) for o in m.objects} for m in metas]
    keys = sorted(set().union(*present))
    keys = sorted(set(keys) | {near_look(k, rng) for k in keys for _ in range(3)})
    y = torch.tensor([[1.0 if k in p else 0.0 for k in keys] for p in present])           # (B, L)
    return look_onehot(keys), y


def look_loss(encoder: LookEncoder, pooled: torch.Tensor, onehot: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Is this exact look in the picture? Sigmoid contrast (as SigLIP) of every image against the looks of
    `look_targets`, so that the pooled feature binds the attributes of one object together. That is what a 4-shot
    linear head needs to tell one toy from another; CLIP's image embedding does it for real photos. The looks of
    the benchmark's personal concepts never occur."""
    emb = encoder(onehot)                                                                 # (L, D)
    logits = F.normalize(pooled, dim=-1) @ emb.T * encoder.logit_scale.exp() + encoder.bias
    return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / len(y)


def blip2_inputs(processor, images: list[Image.Image], fast: bool = True) -> dict:
    """Exactly what `processor(images=..., text=[""] * B, return_tensors="pt", padding=True)` returns."""
    if not fast:
        return dict(processor(images=images, text=[""] * len(images), return_tensors="pt", padding=True))
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * processor.num_query_tokens + tok("").input_ids
    input_ids = torch.tensor([ids] * len(images))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": fast_pixels(images)}


def blip2_labels(tokenizer, captions: list[str]) -> torch.Tensor:
    enc = tokenizer(captions, padding=True, return_tensors="pt")
    return enc.input_ids.masked_fill(enc.attention_mask == 0, -100)


def blip2_batch(scenes, tokenizer, patch: int, wording: np.random.Generator, look_rng: np.random.Generator
                ) -> dict[str, torch.Tensor]:
    """One pre-training batch, every target computed where the scenes are drawn (a data worker on a GPU run)."""
    metas = [sc.meta for sc in scenes]
    look_onehot_, look_y = look_targets(metas, look_rng)
    return {"pixels": uint8_pixels([sc.image for sc in scenes]),                      # (B, H, W, 3) uint8
            "labels": blip2_labels(tokenizer, [generic_caption(m, wording) for m in metas]),
            "attributes": attribute_targets(metas), "patches": patch_targets(scenes, patch),
            "slots": slot_targets(metas), "background": background_targets(metas),
            "look_onehot": look_onehot_, "look_y": look_y}


class BatchStream(torch.utils.data.IterableDataset):
    """Endless pre-training batches. Each DataLoader worker k draws its own world stream (seed k) and wording /
    near-miss generators, so a run is a pure function of (seed, workers); workers=0 is one stream in-process."""

    def __init__(self, seed: int, batch: int, make_batch):
        self.seed, self.batch, self.make_batch = seed, batch, make_batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k = info.id if info else 0
        stream = World(self.seed).pretrain_scenes(seed=k)
        wording = np.random.default_rng([self.seed, 7, k])
        look_rng = np.random.default_rng([self.seed, 13, k])
        while True:
            yield self.make_batch([next(stream) for _ in range(self.batch)], wording, look_rng)


def batch_loader(dataset: BatchStream, workers: int, device: str):
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None, pin_memory=device != "cpu",
                                         persistent_workers=bool(workers))
    for batch in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def blip2_caption(model, processor, images: list[Image.Image], max_new_tokens: int = 32, fast: bool = False,
                  batch: int = 64) -> list[str]:
    """Greedy captions, no prompt: the contract's captioning call."""
    out: list[str] = []
    for i in range(0, len(images), batch):
        inputs = blip2_inputs(processor, images[i:i + batch], fast=fast)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        out += processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [o.strip() for o in out]


def llava_visual_features(model, pixels: torch.Tensor):
    """The single base view through the tower, the configured layer, minus CLS, the projector.

    Returns (projected (B, n_visual, D_text), selected tower features (B, n_visual, D_vision), pooled output).
    """
    cfg = model.config
    out = model.model.vision_tower(pixels, output_hidden_states=True, return_dict=True)
    feats = out.hidden_states[cfg.vision_feature_layer]
    if cfg.vision_feature_select_strategy == "default":
        feats = feats[:, 1:]
    return model.model.multi_modal_projector(feats), feats, out.pooler_output


def llava_sequence(tokenizer, n_visual: int, turns: list[tuple[str, str | None]]) -> tuple[list[int], list[int]]:
    """Token ids and labels for one image: turn 1 is the wrapper's layout; later turns follow vicuna v1."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    eos = tokenizer.eos_token_id
    before, after = vicuna_prompt(turns[0][0]).split(IMAGE_TOKEN, 1)
    ids = tokenizer(before).input_ids + [image_id] * n_visual + tokenizer(after, add_special_tokens=False).input_ids
    labels = [-100] * len(ids)
    for k, (question, answer) in enumerate(turns):
        if k > 0:
            q = tokenizer(f"USER: {question} ASSISTANT:", add_special_tokens=False).input_ids
            ids += q
            labels += [-100] * len(q)
        if answer is None:
            break
        tail = tokenizer(" " + answer, add_special_tokens=False).input_ids + [eos]
        ids += tail
        labels += tail
    return ids, labels


def llava_batch(model, tokenizer, pixels: torch.Tensor, conversations: list[list[tuple[str, str | None]]],
                left_pad: bool):
    """inputs_embeds (visual features scattered at the placeholders), attention mask, labels, and the tower's
    (selected patch features, pooled output) for the auxiliary losses."""
    feats, patch_feats, pooled = llava_visual_features(model, pixels)
    rows = [llava_sequence(tokenizer, feats.shape[1], conv) for conv in conversations]
    width = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    labels = torch.full((B, width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        sl = slice(width - len(ids), width) if left_pad else slice(0, len(ids))
        input_ids[i, sl] = torch.tensor(ids)
        mask[i, sl] = 1
        labels[i, sl] = torch.tensor(lab)
    embeds = model.get_input_embeddings()(input_ids)
    flat = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
    placeholder = model.model.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=flat)
    embeds = embeds.masked_scatter(placeholder, flat)
    return embeds, mask, labels, (patch_feats, pooled)


@torch.no_grad()
def llava_answer(model, processor, images: list[Image.Image], questions: list[str], max_new_tokens: int = 32,
                 batch: int = 32) -> list[str]:
    """Greedy answers in the wrapper's single-turn layout (left padding)."""
    tok = processor.tokenizer
    out: list[str] = []
    for i in range(0, len(images), batch):
        pixels = processor_pixels(processor, images[i:i + batch])
        embeds, mask, _, _ = llava_batch(model, tok, pixels, [[(q, None)] for q in questions[i:i + batch]],
                                         left_pad=True)
        ids = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(ids, skip_special_tokens=True)
    return [o.strip() for o in out]


@torch.no_grad()
def pooled_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The frozen vision encoder's pooled output (post-layernorm CLS): what MyVLM's object heads read here."""
    if hasattr(model, "vision_model"):                       # BLIP-2
        return model.vision_model(pixel_values=pixel_values).pooler_output
    return model.model.vision_tower(pixel_values).pooler_output   # LLaVA-NeXT's CLIP tower


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    steps: int
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 150
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    clip: float = 1.0
    aux_weight: float = 0.05
    dense_weight: float = 20.0     # x aux_weight = 1.0 for the per-patch loss
    look_weight: float = 10.0      # x aux_weight = 0.5 for the look contrast (BLIP-2)
    slot_weight: float = 0.0       # the Q-Former slot loss (BLIP-2); off: it makes MyVLM's token unheard
    seed: int = 0
    log_every: int = 50
    device: str = "cpu"
    workers: int = 0              # DataLoader workers drawing scenes (0: in-process, bit-for-bit reproducible)
    time_budget: float = 0.0      # > 0: train for this many seconds; the cosine runs over time, not `steps`
    checkpoint_every: float = 0.0  # > 0: save the checkpoint folder this often (seconds), for runs that may be cut


def lr_at(step: int, s: TrainSettings, progress: float | None = None) -> float:
    """Warmup over `warmup` steps, then a cosine to min_lr_ratio over the run (progress in [0, 1]: the share of
    steps done, or of the time budget spent)."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup) if progress is None else progress
    t = min(1.0, max(0.0, t))
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(params, s: TrainSettings) -> torch.optim.Optimizer:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.98))


def train_loop(name: str, model, aux_head, step_loss, batches, s: TrainSettings, log, save=None) -> dict:
    """The shared loop: warmup + cosine AdamW, gradient clipping, a log line every `log_every` steps.

    With a time budget the run ends when the budget is spent (the cosine follows the clock) and reports the steps
    it made; `save()` is called every `checkpoint_every` seconds so that a run cut short still leaves weights.
    """
    params = [p for p in [*model.parameters(), *aux_head.parameters()] if p.requires_grad]
    opt = make_optimizer(params, s)
    model.train()
    t0 = last_save = time.time()
    hist: dict[str, list[float]] = defaultdict(list)
    step = 0
    while True:
        el = time.time() - t0
        progress = el / s.time_budget if s.time_budget else None
        if (progress is not None and progress >= 1.0) or (progress is None and step >= s.steps):
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s, progress)
        lm, aux = step_loss(next(batches))
        loss = lm + s.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.clip)
        opt.step()
        step += 1
        if step % s.log_every == 0 or step == 1:
            hist["lm"].append(lm.item())        # a sync with the device: only on logged steps
            hist["aux"].append(aux.item())
            el = time.time() - t0
            left = (s.time_budget - el) if s.time_budget else el / step * (s.steps - step)
            log(f"[{name}] step {step}{'' if s.time_budget else f'/{s.steps}'}  lm {hist['lm'][-1]:.4f}  "
                f"aux {hist['aux'][-1]:.4f}  lr {lr_at(step - 1, s, progress):.2e}  {el:.0f}s (eta {left:.0f}s)")
        if save and s.checkpoint_every and time.time() - last_save >= s.checkpoint_every:
            model.eval()
            save(step)
            model.train()
            last_save = time.time()
    model.eval()
    return {"train_seconds": round(time.time() - t0, 1), "steps_done": step,
            "final_lm_loss": round(float(np.mean(hist["lm"][-3:])), 4),
            "final_aux_loss": round(float(np.mean(hist["aux"][-3:])), 4)}


def folder_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6, 2)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def pretrain_blip2(out: Path, s: TrainSettings, sizes: Blip2Sizes, log=print, evaluate: bool = True) -> dict:
    torch.manual_seed(s.seed)
    world = World(s.seed)
    model, processor = build_blip2(sizes, s.seed)
    tok = processor.tokenizer
    probe_scenes = world.heldout_scenes(8, seed=999)
    check_pixels(processor, [sc.image for sc in probe_scenes])
    ref = blip2_inputs(processor, [sc.image for sc in probe_scenes], fast=False)
    fast = blip2_inputs(processor, [sc.image for sc in probe_scenes], fast=True)
    assert torch.equal(ref["input_ids"], fast["input_ids"]), "input layout differs from the processor's"
    aux_head = torch.nn.ModuleList([torch.nn.Linear(sizes.vision_hidden, len(ATTRIBUTES)),
                                    torch.nn.Linear(sizes.vision_hidden, DENSE_OUT),
                                    torch.nn.Linear(sizes.num_query_tokens * sizes.qformer_hidden,
                                                    3 * SLOT_OUT + len(BACKGROUNDS)),
                                    LookEncoder(sizes.vision_hidden)])
    model.to(s.device)
    aux_head.to(s.device)
    wording = np.random.default_rng([s.seed, 7])
    log(f"[blip2] {n_params(model) / 1e6:.2f}M parameters; "
        f"{f'{s.time_budget:.0f} s' if s.time_budget else f'{s.steps} steps'} of {s.batch} on {s.device}")
    check_vocabulary(tok, [generic_caption(sc.meta, wording) for sc in world.heldout_scenes(500, seed=998)])
    prompt = blip2_inputs(processor, [probe_scenes[0].image])["input_ids"].to(s.device)            # (1, Q + 1)
    batches = batch_loader(BatchStream(s.seed, s.batch, lambda sc, wr, lr: blip2_batch(sc, tok, sizes.patch_size,
                                                                                        wr, lr)),
                           s.workers, s.device)

    def step_loss(b):
        pixels = normalise_pixels(b["pixels"])
        ids = prompt.expand(len(pixels), -1)
        outp = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=b["labels"])
        vis = outp.vision_outputs
        aux = probe_loss(aux_head[0], vis.pooler_output, b["attributes"])
        aux = aux + s.dense_weight * dense_loss(aux_head[1], vis.last_hidden_state[:, 1:], b["patches"])
        if s.slot_weight:
            aux = aux + s.slot_weight * slot_loss(aux_head[2], outp.qformer_outputs.last_hidden_state, b["slots"],
                                                b["background"])
        if s.look_weight:
            aux = aux + s.look_weight * look_loss(aux_head[3], vis.pooler_output, b["look_onehot"], b["look_y"])
        return outp.loss, aux

    def report_of(train: dict) -> dict:
        return {"model": "blip2-world", "architecture": "Blip2ForConditionalGeneration (flan-T5 layout)",
                "seed": s.seed, "steps": train.get("steps_done", s.steps), "batch": s.batch, "settings": asdict(s),
                "sizes": asdict(sizes), "parameters": n_params(model), **train,
                "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                "device": torch.cuda.get_device_name() if s.device.startswith("cuda") else "cpu"}

    def save(step: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "pretrain_report.json").write_text(json.dumps(report_of({"steps_done": step, "partial": True}),
                                                             indent=2) + "\n")
        log(f"[blip2] saved step {step} to {out}")

    train = train_loop("blip2", model, aux_head, step_loss, batches, s, log, save)
    model.to("cpu")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = report_of(train)
    if evaluate:
        report |= evaluate_blip2(out, log=log)
    report["folder_mb"] = folder_mb(out)
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def pretrain_llava(out: Path, s: TrainSettings, sizes: LlavaSizes, log=print, turns: int = 3) -> dict:
    torch.manual_seed(s.seed)
    world = World(s.seed)
    model, processor = build_llava(sizes, s.seed)
    tok = processor.tokenizer
    probe = world.heldout_scenes(8, seed=999)
    check_pixels(processor, [sc.image for sc in probe])
    aux_head = torch.nn.ModuleList([torch.nn.Linear(sizes.vision_hidden, len(ATTRIBUTES)),
                                    torch.nn.Linear(sizes.vision_hidden, DENSE_OUT)])
    stream = world.pretrain_scenes(seed=1)
    qrng = np.random.default_rng([s.seed, 11])
    log(f"[llava] {n_params(model) / 1e6:.2f}M parameters; {s.steps} steps of {s.batch}")
    check_vocabulary(tok, [f"{q} {a}" for _ in range(300) for q, a, _k in sample_turns(next(stream).meta, qrng, 9)])

    def scene_batches():
        while True:
            yield [next(stream) for _ in range(s.batch)]

    def step_loss(scenes):
        pixels = fast_pixels([sc.image for sc in scenes])
        convs = [[(q, a) for q, a, _k in sample_turns(sc.meta, qrng, turns)] for sc in scenes]
        embeds, mask, labels, (patch_feats, pooled) = llava_batch(model, tok, pixels, convs, left_pad=False)
        outp = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        aux = probe_loss(aux_head[0], pooled, attribute_targets([sc.meta for sc in scenes]))
        aux = aux + s.dense_weight * dense_loss(aux_head[1], patch_feats, patch_targets(scenes, sizes.patch_size))
        return outp.loss, aux

    train = train_loop("llava", model, aux_head, step_loss, scene_batches(), s, log)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = {"model": "llava-world", "architecture": "LlavaNextForConditionalGeneration (CLIP + vicuna layout)",
              "seed": s.seed, "steps": s.steps, "batch": s.batch, "turns_per_image": turns, "settings": asdict(s),
              "sizes": asdict(sizes), "parameters": n_params(model), **train, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine()}
    report |= evaluate_llava(out, log=log)
    report["folder_mb"] = folder_mb(out)
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# How often each question family is asked in LLaVA pre-training (the rest of vqa_pairs' families weigh 1).
QA_WEIGHTS = {"caption": 3.0, "caption_of": 3.0, "colour": 2.0, "where": 2.0, "is_there": 0.25}


def sample_turns(meta: SceneMeta, rng: np.random.Generator, k: int) -> list[tuple[str, str, str]]:
    """k distinct (question, answer, kind) turns for one image, families weighted by QA_WEIGHTS."""
    pairs = vqa_pairs(meta, rng=rng)
    w = np.array([QA_WEIGHTS.get(p.kind, 1.0) for p in pairs])
    idx = rng.choice(len(pairs), size=min(k, len(pairs)), replace=False, p=w / w.sum())
    return [(pairs[i].question, pairs[i].answer, pairs[i].kind) for i in idx]


# ---------------------------------------------------------------------------------------------------------------
# Evaluation (on the saved folder, through from_pretrained: the checkpoint contract)
# ---------------------------------------------------------------------------------------------------------------
def load_blip2(folder: Path):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    model = Blip2ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    processor = Blip2Processor.from_pretrained(folder, local_files_only=True)
    return model, processor


def load_llava(folder: Path):
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(folder, dtype=torch.float32,
                                                              local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor


def store_half(folder: Path, log=print) -> None:
    """Rewrite the folder's weights in float16 (half the bytes of a test fixture). The project's wrappers load them
    in float32 on a CPU, and everything this folder reports is measured after this step, on the stored weights."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    before = path.stat().st_size
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float16"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    log(f"{path}: {before / 1e6:.1f} MB -> {path.stat().st_size / 1e6:.1f} MB (float16)")


def evaluate_blip2(folder: Path, n: int = 300, seed: int = 0, log=print, examples: int = 8) -> dict:
    """Held-out scene/object accuracy, plus how the base model talks about the (never seen) personal concepts."""
    model, processor = load_blip2(folder)
    world = World(seed)
    t0 = time.time()
    scenes = world.heldout_scenes(n, seed=0)
    caps = blip2_caption(model, processor, [sc.image for sc in scenes])
    acc = CaptionAccuracy()
    for c, sc in zip(caps, scenes):
        acc.add(score_caption(c, sc.meta))
    concept = concept_report(world, lambda ims: blip2_caption(model, processor, ims))
    concept["pooled_feature_head_4_shots"] = concept_separability(model, processor, world)
    res = {"heldout": acc.as_dict(), "personal_concepts_base_model": concept,
           "eval_seconds": round(time.time() - t0, 1),
           "examples": [{"truth": sc.caption, "generated": c} for sc, c in zip(scenes[:examples], caps)]}
    log(f"[blip2] held-out: {json.dumps(res['heldout'])}")
    log(f"[blip2] concepts, base model: {json.dumps(concept)}")
    return res


def concept_report(world: World, caption_fn, per_concept: int = 20) -> dict:
    """On images of the personal concepts: does the base model describe them generically (class word + colour)
    and never by an identifier? (It never saw them; a name here would make personalisation look easier.)"""
    generic_ok = named = total = 0
    for key in CONCEPTS:
        scenes = world.concept_images(key, per_concept, seed=12345)
        caps = caption_fn([sc.image for sc in scenes])
        for c, sc in zip(caps, scenes):
            obj = sc.meta.object_for(key)
            generic_ok += (obj.cls, obj.colour) in [(p.cls, p.colour) for p in parse_caption(c).phrases]
            named += bool(set(words(c)) & set(IDENTIFIERS))
            total += 1
    return {"images": total, "concept_described_generically": round(generic_ok / total, 4),
            "any_identifier_said": round(named / total, 4)}


def concept_separability(model, processor, world: World, n_train: int = 4, n_test: int = 30) -> dict:
    """Can a linear head on the frozen pooled feature pick out each personal concept? (What MyVLM's object heads
    do.) Per concept: logistic regression on n_train concept images vs 40 negatives that hold a same-class
    distractor; balanced accuracy on fresh concept images and on fresh same-class / hard (one-attribute-off)
    negatives. A rough guide for the benchmark, not the engine's head."""
    res = {}
    for key in CONCEPTS:
        pos = world.concept_images(key, n_train + n_test, seed=77)
        neg = world.negative_images(40 + n_test, seed=77, concept=key)
        hard = world.negative_images(n_test, seed=78, concept=key, hard=True)
        def f(scenes):
            return F.normalize(pooled_features(model, processor_pixels(processor, [x.image for x in scenes])), dim=-1)
        fp, fn, fh = f(pos), f(neg), f(hard)
        x = torch.cat([fp[:n_train], fn[:40]])
        y = torch.cat([torch.ones(n_train), torch.zeros(40)]).long()
        head = torch.nn.Linear(x.shape[1], 2)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.01)
        w = torch.tensor([1.0, 40 / n_train])
        with torch.enable_grad():
            for _ in range(300):
                loss = F.cross_entropy(head(x), y, weight=w)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            tp = (head(fp[n_train:]).argmax(1) == 1).float().mean().item()
            tn = (head(fn[40:]).argmax(1) == 0).float().mean().item()
            th = (head(fh).argmax(1) == 0).float().mean().item()
        res[key] = {"positives": round(tp, 3), "negatives": round(tn, 3), "hard_negatives": round(th, 3)}
    mean = {k: round(float(np.mean([r[k] for r in res.values()])), 3) for k in next(iter(res.values()))}
    return {"mean": mean, "per_concept": res}


def evaluate_llava(folder: Path, n: int = 200, seed: int = 0, log=print, per_image: int = 4) -> dict:
    """Held-out VQA accuracy (exact match after normalisation), per question family and overall."""
    model, processor = load_llava(folder)
    world = World(seed)
    t0 = time.time()
    scenes = world.heldout_scenes(n, seed=1)
    rng = np.random.default_rng([seed, 5])
    images, questions, answers, kinds, metas = [], [], [], [], []
    for sc in scenes:
        pairs = vqa_pairs(sc.meta)
        for i in rng.choice(len(pairs), size=min(per_image, len(pairs)), replace=False):
            images.append(sc.image)
            questions.append(pairs[i].question)
            answers.append(pairs[i].answer)
            kinds.append(pairs[i].kind)
            metas.append(sc.meta)
    got = llava_answer(model, processor, images, questions)
    by_kind: dict[str, list[int]] = defaultdict(list)
    cap = CaptionAccuracy()
    for g, a, k, m in zip(got, answers, kinds, metas):
        by_kind[k].append(int(normalise_answer(g) == normalise_answer(a)))
        if k == "caption":
            cap.add(score_caption(g, m))
    all_ok = [x for v in by_kind.values() for x in v]
    # captions through the captioning prompt, on fresh scenes
    cscenes = world.heldout_scenes(100, seed=2)
    ccaps = llava_answer(model, processor, [sc.image for sc in cscenes], ["Please caption this image."] * 100)
    for c, sc in zip(ccaps, cscenes):
        cap.add(score_caption(c, sc.meta))
    concept = concept_report(world, lambda ims: llava_answer(model, processor, ims,
                                                             ["Please caption this image."] * len(ims)),
                             per_concept=10)
    concept["pooled_feature_head_4_shots"] = concept_separability(model, processor, world)
    res = {"heldout_vqa": {"questions": len(all_ok), "accuracy": round(float(np.mean(all_ok)), 4),
                           "by_kind": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_kind.items())}},
           "heldout_captions": cap.as_dict(), "personal_concepts_base_model": concept,
           "eval_seconds": round(time.time() - t0, 1),
           "examples": [{"question": q, "truth": a, "generated": g}
                        for q, a, g in list(zip(questions, answers, got))[:10]]}
    log(f"[llava] held-out VQA: {json.dumps(res['heldout_vqa'])}")
    log(f"[llava] captions: {json.dumps(res['heldout_captions'])}")
    log(f"[llava] concepts, base model: {json.dumps(concept)}")
    return res


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["all", "blip2", "llava", "eval", "half"])
    ap.add_argument("model", nargs="?", choices=["blip2", "llava"], help="with eval: which checkpoint")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="images per step (blip2 32, llava 16)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = reproducible, bit for bit)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU run (with --workers)")
    ap.add_argument("--workers", type=int, default=0, help="data workers drawing the scenes (0: in-process)")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="BLIP-2: train for this many seconds instead of --steps (the lr cosine follows the clock)")
    ap.add_argument("--checkpoint-every", type=float, default=0.0, help="save the folder every N seconds")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--look-weight", type=float, default=10.0)
    ap.add_argument("--vision-hidden", type=int, default=Blip2Sizes.vision_hidden)
    ap.add_argument("--vision-layers", type=int, default=Blip2Sizes.vision_layers)
    ap.add_argument("--text-layers", type=int, default=Blip2Sizes.text_layers)
    ap.add_argument("--qformer-hidden", type=int, default=Blip2Sizes.qformer_hidden)
    ap.add_argument("--qformer-layers", type=int, default=Blip2Sizes.qformer_layers)
    ap.add_argument("--slot-weight", type=float, default=0.0,
                    help="BLIP-2: weight of the Q-Former slot loss (default 0, off; the old checkpoints used 20)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation (run `eval` later)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.what == "half":
        store_half(args.out or (BLIP2_DIR if args.model == "blip2" else LLAVA_DIR), log)
        return 0
    if args.what == "eval":
        folder = args.out or (BLIP2_DIR if args.model == "blip2" else LLAVA_DIR)
        res = evaluate_blip2(folder) if args.model == "blip2" else evaluate_llava(folder)
        print(json.dumps({k: v for k, v in res.items() if k != "examples"}, indent=2))
        report_path = folder / "pretrain_report.json"
        if report_path.exists():   # a run trained elsewhere with --no-eval: its report gains the measurements
            report = json.loads(report_path.read_text()) | res
            report.pop("partial", None)
            report["folder_mb"] = folder_mb(folder)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if args.what == "all" and args.out:
        ap.error("--out names one checkpoint folder: use it with blip2 or llava")
    if args.what in ("all", "blip2"):
        s = TrainSettings(steps=args.steps or 2400, batch=args.batch or 32, lr=args.lr, seed=args.seed,
                          warmup=args.warmup, look_weight=args.look_weight, device=args.device,
                          workers=args.workers, time_budget=args.time_budget,
                          checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                          slot_weight=args.slot_weight)
        sizes = Blip2Sizes(vision_hidden=args.vision_hidden, vision_layers=args.vision_layers,
                           text_layers=args.text_layers, qformer_hidden=args.qformer_hidden,
                           qformer_layers=args.qformer_layers)
        rep = pretrain_blip2(args.out or BLIP2_DIR, s, sizes, log, evaluate=not args.no_eval)
        print(json.dumps({k: v for k, v in rep.items() if k not in ("examples", "settings")}, indent=2))
    if args.what in ("all", "llava"):
        s = TrainSettings(steps=args.steps or 2400, batch=args.batch or 16, lr=args.lr, seed=args.seed)
        rep = pretrain_llava(args.out or LLAVA_DIR, s, LlavaSizes(), log)
        print(json.dumps({k: v for k, v in rep.items() if k not in ("examples", "settings")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
