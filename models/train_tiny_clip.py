"""Train mmedge-tiny-clip on generated scenes, on the CPU: a supervised image tower, then locked-image
contrastive tuning (LiT, Zhai et al. 2022).

    python -m mmedge.models.train_tiny_clip [--pretrain-steps 1600] [--steps 2000] [--out DIR]

1. The vision tower learns the generator's labels (every colour+shape pair, colour+position pair and
   the object count present, binary cross-entropy through a linear head on the pooled output).
2. The tower is then locked; its pooled outputs are computed once, and the visual projection, the
   text tower and the logit scale learn CLIP's contrastive objective on generated captions.

Why not contrastive from scratch, as CLIP is: measured here, 1600 steps of it (34 min, hard-negative
captions included) left the tower at 44% zero-shot shape accuracy and 34% for a linear probe of the
layer the VLM reads (chance 20%), while the supervised tower reads shape at ~90% after the same
number of smaller steps in 6 minutes. Colour alone tells a batch's scenes apart, so the contrastive
signal for shape is thin; LiT is the published recipe for exactly this: a pretrained image tower,
locked, and a text tower taught to meet it.

The contrastive loss is CLIP's symmetric cross-entropy, except that a caption counts every image in
the batch it is true of as a positive (partial captions such as "a photo of a star." fit many scenes),
judged from the facts the generator knows (`mmedge.scenes.facts`), and that every image also brings
a hard negative: a caption of the same scene with one object's shape (or colour) swapped for one the
scene lacks, so the text tower must tell shape words apart.

Seeded end to end (scenes, initial weights, batch order, captions): the same command gives the same
weights on the same machine and library versions. Writes an HF folder (fp16 weights, tokenizer,
preprocessor) and `training.json` with the settings, minutes taken and the held-out figures measured
on the saved (fp16-rounded) weights; with the default --out it also refreshes weights/SHA256SUMS.
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

from mmedge.evaluation import quality as evaluate
from mmedge.evaluation import scenes

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


def hard_negative(scene: scenes.Scene, rng: random.Random) -> tuple[str, frozenset]:
    """A short caption false of `scene` by one attribute, with the facts it claims: one object's shape
    replaced by a shape the scene lacks (two times in three) or its colour by an absent colour."""
    o = rng.choice(scene.objects)
    shape, colour = o.shape, o.colour
    if rng.random() < 2 / 3:
        shape = rng.choice([x for x in scenes.SHAPES if x not in {p.shape for p in scene.objects}])
    else:
        colour = rng.choice([x for x in scenes.COLOURS if x not in {p.colour for p in scene.objects}])
    phrase = scenes.with_article(f"{colour} {shape}")
    return rng.choice([
        (f"a photo of {phrase}.", frozenset({("object", colour, shape)})),
        (f"{phrase}.", frozenset({("object", colour, shape)})),
        (f"a photo of a {shape}.", frozenset({("shape", shape)})),
        (f"{phrase} {scenes.POSITION_PHRASES[o.position]}.", frozenset({("object_at", colour, shape, o.position)})),
    ])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     claims: list[frozenset], batch_facts: list[frozenset]) -> torch.Tensor:
    """image [B, dim] and text [T, dim] embeddings, normalized; claims[t] true of batch_facts[b]."""
    logits = logit_scale.exp() * text @ image.T
    # A caption's positives are all the batch's images it is true of ("a photo of a star." fits every
    # scene with a star): counting those as negatives, as plain CLIP would, would teach the towers to
    # ignore shape, which full captions never need (their colours alone tell scenes apart).
    # Hard negatives may be true of no image in the batch: they only enter the image-to-text side.
    true_of = torch.tensor([[claim <= f for f in batch_facts] for claim in claims], dtype=torch.float32)
    has_image = true_of.sum(dim=1) > 0
    text_target = true_of[has_image] / true_of[has_image].sum(dim=1, keepdim=True)
    image_target = true_of.T / true_of.T.sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-text_target * F.log_softmax(logits[has_image], 1), 1).mean()
                  + torch.sum(-image_target * F.log_softmax(logits.T, 1), 1).mean())


# What the tower is pretrained to recognize: each colour+shape pair, each colour+position pair, the count.
TOWER_LABELS = ([("object", c, s) for c in scenes.COLOURS for s in scenes.SHAPES]
                + [("colour_at", c, p) for c in scenes.COLOURS for p in scenes.POSITIONS]
                + [("count", n) for n in range(1, 5)])


def tower_targets(scene_list: list[scenes.Scene]) -> torch.Tensor:
    """[scenes, len(TOWER_LABELS)] 0/1: which labels each scene shows."""
    index = {label: i for i, label in enumerate(TOWER_LABELS)}
    out = torch.zeros(len(scene_list), len(TOWER_LABELS))
    for row, s in enumerate(scene_list):
        for o in s.objects:
            out[row, index[("object", o.colour, o.shape)]] = 1
            out[row, index[("colour_at", o.colour, o.position)]] = 1
        out[row, index[("count", len(s.objects))]] = 1
    return out


def cosine_schedule(opt, steps: int):
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def pretrain_tower(model: CLIPModel, pixels: torch.Tensor, targets: torch.Tensor, steps: int, batch: int,
                   lr: float, rng: random.Random) -> list[dict]:
    """Stage 1: the vision tower (and a linear head, discarded after) learns `targets`."""
    tower = model.vision_model
    head = torch.nn.Linear(tower.config.hidden_size, targets.shape[1])
    opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
    sched = cosine_schedule(opt, steps)
    log = []
    bar = tqdm(range(steps), desc="1/2 tower (supervised)", unit="step")
    for step in bar:
        idx = rng.sample(range(len(pixels)), batch)
        loss = F.binary_cross_entropy_with_logits(head(tower(pixels[idx]).pooler_output), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 5)})
    return log


@torch.no_grad()
def pooled_outputs(model: CLIPModel, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model.vision_model(pixels[i:i + batch]).pooler_output for i in range(0, len(pixels), batch)])


def tune_contrastive(model: CLIPModel, tokenizer, train: list[scenes.Scene], pooled: torch.Tensor,
                     steps: int, batch: int, lr: float, rng: random.Random) -> list[dict]:
    """Stage 2 (LiT): the locked tower's pooled outputs; the projection, text tower and scale learn."""
    scene_facts = [scenes.facts(s) for s in train]
    for p in model.vision_model.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embedding" not in n]
    rest = [p for p in params if all(p is not d for d in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sched = cosine_schedule(opt, steps)
    log = []
    bar = tqdm(range(steps), desc="2/2 text tower (contrastive, tower locked)", unit="step")
    for step in bar:
        idx = rng.sample(range(len(train)), batch)
        captions, claims = zip(*([caption_for(train[i], rng) for i in idx] + [hard_negative(train[i], rng) for i in idx]))
        ids = tokenizer(list(captions), padding=True, return_tensors="pt")["input_ids"]
        image = F.normalize(model.visual_projection(pooled[idx]), dim=-1)
        text = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        loss = contrastive_loss(image, text, model.logit_scale, list(claims), [scene_facts[i] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 50 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(loss.item(), 4)})
    return log


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
    ap.add_argument("--pretrain-steps", type=int, default=1600, help="stage 1: supervised tower steps")
    ap.add_argument("--pretrain-batch", type=int, default=128)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000, help="stage 2: contrastive steps, tower locked")
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

    tower_log = pretrain_tower(model, pixels, tower_targets(train), args.pretrain_steps, args.pretrain_batch,
                               args.pretrain_lr, rng)
    model.vision_model.eval()
    pooled = pooled_outputs(model, pixels)
    text_log = tune_contrastive(model, tokenizer, train, pooled, args.steps, args.batch, args.lr, rng)
    minutes = (time.time() - started) / 60

    reference.save_clip(model, tokenizer, args.out)
    saved = CLIPModel.from_pretrained(str(args.out), dtype=torch.float32).eval()   # the fp16-rounded weights
    figures = evaluate.clip_metrics(*torch_embedders(saved, tokenizer, processor), evaluate.held_out(args.held_out))
    record = {"model": "mmedge-tiny-clip", "command": "python -m mmedge.models.train_tiny_clip "
              + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
              "settings": vars(args) | {"out": str(args.out)}, "parameters": sum(p.numel() for p in saved.parameters()),
              "minutes": round(minutes, 1), "torch": torch.__version__, "held_out": figures,
              "tower_loss_log": tower_log, "contrastive_loss_log": text_log}
    reference.save_training_record(args.out, reference.CLIP_DIR, record)


if __name__ == "__main__":
    main()
