"""World v2's BLIP-2 (issue 18, item 6): world v1's checkpoint taught v2's language on one CPU core.

No GPU was lent when this was made, so instead of pre-training from scratch (390 s on an H200) the committed
`blip2-world` is fine-tuned on world v2's pre-training mix (`world2.py`: subject-centric captions, 0–2 of 30 named
figures, fresh words that name no look) for a wall-clock budget on one thread. The pictures are world v1's, which
its vision encoder already sees perfectly (and its look contrast already tells the new figures apart), so the
encoder stays frozen (a step then costs ~40 % less) and only the Q-Former, the projection and the T5 learn; the
auxiliary heads of `pretrain.py`, which trained the encoder, are not needed. The tokenizer grows by v2's words
(world v1's ids stay); each new word's embedding starts at the mean of the v1 names' embeddings (plus noise), so it
enters as "a name" and training tells the names apart. The personal concepts' looks never occur, as in v1.

    .venv/bin/python bench/world/pretrain_v2.py --time-budget 2400 --checkpoint-every 300   # -> models/blip2-world2
    .venv/bin/python bench/world/pretrain_v2.py eval                                        # re-measure it

The folder is saved every `--checkpoint-every` seconds (a cut-off keeps the last), then stored in float16 and
measured on held-out v2 scenes (`pretrain_report.json`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):   # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.world import pretrain as P
from bench.world import world as W
from bench.world import world2 as V

OUT = P.MODELS / "blip2-world2"


def grown_tokenizer(v1_tokenizer):
    """The word-level tokenizer over v2's vocabulary; v1's words keep their ids."""
    new_words = [w for w in V.World2.vocabulary() if w not in W.World.vocabulary()]
    tok = P.build_tokenizer("t5", extra_text=" ".join(new_words))
    old = v1_tokenizer.get_vocab()
    assert all(tok.convert_tokens_to_ids(w) == i for w, i in old.items()), "v1's token ids moved"
    return tok, new_words


def grow_embeddings(model, tok, new_words: list[str], seed: int) -> None:
    """Resize the T5's embeddings to the new vocabulary; new rows start at the mean of v1's name rows (+ noise)."""
    lm = model.language_model
    old_n = lm.get_input_embeddings().weight.shape[0]
    lm.resize_token_embeddings(len(tok), mean_resizing=False)
    model.config.text_config.vocab_size = len(tok)
    gen = torch.Generator().manual_seed(seed)
    name_ids = [tok.convert_tokens_to_ids(n) for n in W.IDENTIFIERS]
    with torch.no_grad():
        for emb in {id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings())}.values():
            w = emb.weight
            mean, spread = w[name_ids].mean(0), w[name_ids].std(0)
            for word in new_words:
                i = tok.convert_tokens_to_ids(word)
                assert i >= old_n
                w[i] = mean + 0.5 * spread * torch.randn(w.shape[1], generator=gen)


def batches(seed: int, batch: int, tok):
    """Endless (pixels, labels) batches of v2 pre-training scenes, each caption in a random wording."""
    stream = V.World2(seed).pretrain_scenes(seed=0)
    wording = np.random.default_rng([seed, 7])
    while True:
        scenes = [next(stream) for _ in range(batch)]
        yield {"pixels": P.uint8_pixels([sc.image for sc in scenes]),
               "labels": P.blip2_labels(tok, [V.generic_caption(sc.meta, wording) for sc in scenes])}


def finetune(out: Path, s: P.TrainSettings, source: Path = P.BLIP2_DIR, log=print) -> dict:
    torch.manual_seed(s.seed)
    model, processor = P.load_blip2(source)
    tok, new_words = grown_tokenizer(processor.tokenizer)
    grow_embeddings(model, tok, new_words, s.seed)
    processor.tokenizer = tok
    model.vision_model.requires_grad_(False)
    world = V.World2(s.seed)
    P.check_vocabulary(tok, [V.caption_variants(sc.meta, {}, 3, seed=i)[-1]
                             for i, sc in enumerate(world.heldout_scenes(300, seed=998))])
    probe = world.heldout_scenes(2, seed=999)
    prompt = P.blip2_inputs(processor, [probe[0].image])["input_ids"]
    log(f"[blip2-world2] {P.n_params(model) / 1e6:.2f}M parameters, vocabulary {len(tok)} (+{len(new_words)}); "
        f"{s.time_budget:.0f} s of batches of {s.batch} on {torch.get_num_threads()} thread(s)")

    def step_loss(b):
        pixels = P.normalise_pixels(b["pixels"])
        ids = prompt.expand(len(pixels), -1)
        outp = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, labels=b["labels"])
        return outp.loss, torch.zeros(())

    def report_of(train: dict) -> dict:
        return {"model": "blip2-world2", "architecture": "Blip2ForConditionalGeneration (flan-T5 layout)",
                "recipe": f"fine-tuned from {source.name} on world v2 (bench/world/pretrain_v2.py)",
                "seed": s.seed, "batch": s.batch, "settings": asdict(s), "parameters": P.n_params(model),
                "vocabulary": len(tok), **train, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "machine": platform.machine(), "device": "cpu"}

    def save(step: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "pretrain_report.json").write_text(json.dumps(report_of({"steps_done": step, "partial": True}),
                                                             indent=2) + "\n")
        log(f"[blip2-world2] saved step {step} to {out}")

    train = P.train_loop("blip2-world2", model, torch.nn.ModuleList(), step_loss, batches(s.seed, s.batch, tok), s,
                         log, save)
    save(train["steps_done"])
    P.store_half(out, log)
    report = report_of(train) | evaluate(out, log=log)
    report["folder_mb"] = P.folder_mb(out)
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def evaluate(folder: Path, n: int = 300, log=print, examples: int = 8) -> dict:
    """Held-out v2 scenes: scene, objects and names right (order-free); and the base model on the personal
    concepts: described generically, never by a name."""
    model, processor = P.load_blip2(folder)
    world = V.World2(0)
    t0 = time.time()
    scenes = world.heldout_scenes(n, seed=0)
    caps = P.blip2_caption(model, processor, [sc.image for sc in scenes])
    acc = W.CaptionAccuracy()
    for c, sc in zip(caps, scenes):
        acc.add(V.score_caption(c, sc.meta))
    named = [o.name for sc in scenes for o in sc.meta.objects if o.name in V.NAMED2]
    concept_scenes = [sc for key in W.CONCEPTS for sc in world.concept_images(key, 10, seed=12345)]
    ccaps = P.blip2_caption(model, processor, [sc.image for sc in concept_scenes])
    cacc = W.CaptionAccuracy()
    for c, sc in zip(ccaps, concept_scenes):
        cacc.add(V.score_caption(c, sc.meta))
    stray = np.mean([any(w in V.ALL_NAMES for w in W.words(c)) for c in ccaps])
    res = {"heldout": acc.as_dict(), "heldout_named_figures": len(named),
           "personal_concepts_base_model": {"caption_accuracy": cacc.as_dict(), "says_a_name": float(stray)},
           "eval_seconds": round(time.time() - t0, 1),
           "examples": [{"truth": sc.caption, "generated": c} for sc, c in zip(scenes[:examples], caps)]}
    log(f"[blip2-world2] held-out: {json.dumps(res['heldout'])}")
    log(f"[blip2-world2] concepts, base model: {json.dumps(res['personal_concepts_base_model'])}")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="train", choices=["train", "eval"])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--time-budget", type=float, default=2400.0)
    ap.add_argument("--checkpoint-every", type=float, default=300.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.what == "eval":
        res = evaluate(args.out, log=log)
        path = args.out / "pretrain_report.json"
        report = (json.loads(path.read_text()) if path.exists() else {}) | res
        report.pop("partial", None)
        report["folder_mb"] = P.folder_mb(args.out)
        path.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    s = P.TrainSettings(steps=10 ** 9, batch=args.batch, lr=args.lr, seed=args.seed, warmup=args.warmup,
                        time_budget=args.time_budget, checkpoint_every=args.checkpoint_every, log_every=50)
    rep = finetune(args.out, s, log=log)
    print(json.dumps({k: v for k, v in rep.items() if k not in ("examples", "settings")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
