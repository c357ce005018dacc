"""Train mmedge-tiny-clip: contrastive (CLIP) pretraining on generated scenes, on the CPU.

    python -m mmedge.models.train_tiny_clip [--steps 1000] [--batch 256] [--out DIR]

Seeded end to end (scenes, initial weights, batch order, captions): the same command gives the same
weights on the same machine and library versions. Writes an HF folder (fp16 weights, tokenizer,
preprocessor) and `training.json` with the settings, minutes taken and the held-out figures measured
on the saved (fp16-rounded) weights; with the default --out it also refreshes weights/SHA256SUMS.

The loss is CLIP's symmetric cross-entropy, except that a caption counts every image in the batch it
is true of as a positive (partial captions such as "a photo of a star." fit many scenes), judged
from the facts the generator knows (`mmedge.scenes.facts`).
"""
from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import CLIPModel

from mmedge import evaluate, scenes

from . import reference


def pixel_tensor(images, processor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(processor(images=images, return_tensors="np")["pixel_values"]))


def render_dataset(count: int, seed: int, processor, desc: str) -> tuple[list[scenes.Scene], torch.Tensor]:
    """`count` scenes of series `seed` and their preprocessed pixels (what the exported model sees)."""
    out_scenes, pixels = [], []
    for start in tqdm(range(0, count, 256), desc=desc, unit="x256 scenes"):
        chunk = scenes.scenes(min(256, count - start), seed, start)
        pixels.append(pixel_tensor([s.image for s in chunk], processor))
        for s in chunk:
            s._image = None          # keep only the pixels in memory
        out_scenes.extend(chunk)
    return out_scenes, torch.cat(pixels)


def caption_for(scene: scenes.Scene, rng: random.Random) -> tuple[str, frozenset]:
    """40% full descriptions, 60% partial ones; with the facts each claims."""
    if rng.random() < 0.4:
        return scene.caption(rng), scenes.facts(scene)
    return rng.choice(scenes.short_captions(scene, rng))


def contrastive_loss(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, claims: list[frozenset],
                     batch_facts: list[frozenset]) -> torch.Tensor:
    image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    text = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    logits = model.logit_scale.exp() * text @ image.T
    # A caption's positives are all the batch's images it is true of ("a photo of a star." fits every
    # scene with a star): counting those as negatives, as plain CLIP would, teaches the tower to ignore
    # shape, which full captions never need (their colours alone tell scenes apart).
    true_of = torch.tensor([[claim <= f for f in batch_facts] for claim in claims], dtype=torch.float32)
    text_target = true_of / true_of.sum(dim=1, keepdim=True)
    image_target = true_of.T / true_of.T.sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-text_target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-image_target * F.log_softmax(logits.T, 1), 1).mean())


def torch_embedders(model: CLIPModel, tokenizer, processor):
    @torch.no_grad()
    def embed_images(images):
        return F.normalize(model.get_image_features(pixel_values=pixel_tensor(images, processor)).pooler_output,
                           dim=-1).numpy()

    @torch.no_grad()
    def embed_texts(texts):
        ids = tokenizer(list(texts), padding=True, return_tensors="pt")["input_ids"]
        return F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1).numpy()

    return embed_images, embed_texts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmedge.models.train_tiny_clip", description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=20000, help="training scenes (rendered once)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=reference.CLIP_DIR)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    started = time.time()
    tokenizer = reference.build_clip_tokenizer()
    processor = reference.clip_image_processor()
    model = CLIPModel(reference.clip_config(len(tokenizer))).train()
    train, pixels = render_dataset(args.scenes, scenes.TRAIN_SEED, processor, "rendering")
    scene_facts = [scenes.facts(s) for s in train]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    log = []
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for step in bar:
        idx = rng.sample(range(len(train)), args.batch)
        captions, claims = zip(*(caption_for(train[i], rng) for i in idx))
        ids = tokenizer(list(captions), padding=True, return_tensors="pt")["input_ids"]
        loss = contrastive_loss(model, pixels[idx], ids, list(claims), [scene_facts[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0 or step == args.steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
    minutes = (time.time() - started) / 60

    reference.save_clip(model, tokenizer, args.out)
    saved = CLIPModel.from_pretrained(str(args.out), dtype=torch.float32).eval()   # the fp16-rounded weights
    figures = evaluate.clip_metrics(*torch_embedders(saved, tokenizer, processor), evaluate.held_out(args.held_out))
    record = {"model": "mmedge-tiny-clip", "command": "python -m mmedge.models.train_tiny_clip "
              + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
              "settings": vars(args) | {"out": str(args.out)}, "parameters": sum(p.numel() for p in saved.parameters()),
              "minutes": round(minutes, 1), "torch": torch.__version__, "held_out": figures, "loss_log": log}
    reference.save_training_record(args.out, reference.CLIP_DIR, record)


if __name__ == "__main__":
    main()
