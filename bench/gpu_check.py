"""GPU check: concept-embedding training steps and batched captioning on the full-size BLIP-2 FlanT5-XL architecture.

The weights are random (no hub here) but every size is the real checkpoint's: ViT-g/14 (39 layers, 1408 wide, 257
tokens), the 12-layer Q-Former with 32 queries, and flan-t5-xl (24+24 layers, d_model 2048). The model is created
directly on the GPU in bf16 and wrapped by the project's `Blip2Wrapper`, so the timed code is the product's.
One command, a few minutes on an H100: `python bench/gpu_check.py`. Prints step time, captions/s and peak memory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(device: torch.device):
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

    from engine.models.vlm.auto import VLM_SPECS
    from engine.models.vlm.blip2 import Blip2Wrapper
    from engine.models.vlm.tiny import WORDS, build_word_tokenizer

    tok = build_word_tokenizer(WORDS, specials={"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
                               append_eos=True)
    text = T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
                    num_heads=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id)
    config = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                        num_attention_heads=16, image_size=224, patch_size=14),
        qformer_config=Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                          intermediate_size=3072, encoder_hidden_size=1408,
                                          cross_attention_frequency=2),
        text_config=text.to_dict() | {"model_type": "t5"}, num_query_tokens=32,
        image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = Blip2ForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.qformer.float()   # as transformers keeps it (_keep_in_fp32_modules)
    model.query_tokens.data = model.query_tokens.data.float()
    processor = Blip2Processor(BlipImageProcessor(size={"height": 224, "width": 224}), tok, num_query_tokens=32)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    return Blip2Wrapper(model, processor, VLM_SPECS["blip2"], "gpu-check/blip2-flan-t5-xl-random", device,
                        torch.bfloat16), params


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU")
        sys.exit(1)
    from engine.domain.personalize.embeddings import EmbeddingStore
    from engine.domain.personalize.training import (
        ConceptToTrain,
        ConceptTrainer,
        TrainingConfig,
        TrainingExample,
    )
    from engine.models.vlm.auto import GenerationSettings

    device = torch.device("cuda")
    t = time.perf_counter()
    w, params = build(device)
    print(f"{torch.cuda.get_device_name()}: built BLIP-2 FlanT5-XL sizes ({params:.2f} B params, bf16) in "
          f"{time.perf_counter() - t:.1f} s; concept dim {w.concept_dim}, {w.n_image_tokens} image tokens")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(64)]
    examples = [TrainingExample(im, [1], [("", "sks sitting on a sofa in a living room")]) for im in images[:4]]

    torch.cuda.reset_peak_memory_stats()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        trainer = ConceptTrainer(w, EmbeddingStore(Path(d)), TrainingConfig(steps=30, seed=0))
        times: list[float] = []
        last = [time.perf_counter()]

        def tick(p):
            torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        trainer.train([ConceptToTrain(1, "sks")], examples, progress=tick)
    step = float(np.median(times[5:]))
    train_peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"training: {step * 1000:.0f} ms/step (median of steps 6-30, batch 4, λ 0.04), "
          f"peak {train_peak:.1f} GiB")

    settings = GenerationSettings(max_new_tokens=30)
    concepts = [[1] if i % 2 else [] for i in range(len(images))]
    for batch in (1, 16, 32):
        torch.cuda.reset_peak_memory_stats()
        w.generate(images[:batch], [""] * batch, concepts[:batch], settings)   # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            w.generate(chunk, [""] * len(chunk), concepts[i:i + batch], settings)
            n += len(chunk)
        torch.cuda.synchronize()
        rate = n / (time.perf_counter() - t)
        print(f"captioning, batch {batch:>2}: {rate:.1f} captions/s (30 new tokens, half the photos personalised), "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
