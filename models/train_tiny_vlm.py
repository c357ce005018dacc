"""Train mmedge-tiny-vlm: LLaVA-style alignment between the tiny CLIP's tower and SmolLM2-135M-Instruct.

    python -m mmedge.models.train_tiny_vlm [--samples 19200] [--batch 16] [--lora-rank 8] [--out DIR]

What learns: the MLP projector (192 -> 576 -> 576, 0.44 M parameters), the vision tower (mmedge-tiny-clip's,
layer -2, 25 patch tokens; 1.8 M, in stage 1 only) and rank-8 LoRA adapters in the LLM's attention
projections (0.92 M). SmolLM2's own weights stay frozen. Two stages:
1. Grounded pre-alignment (--align-steps, about two minutes): every image token is regressed onto the
   frozen LLM's own input embeddings of the words for what its patch shows (" red" + " star" where an
   object covers it, " background" elsewhere; the generator knows where it drew each object), so the
   LLM's first view of an image is a bag of words it already reads. The tower learns here too
   (--tower-align-lr): the contrastive tower reads a patch's shape for 70% of object patches, the
   tuned one for 97.5%. It is then frozen and rounded to fp16, as it is committed.
2. The language-model loss, through the projector and the LoRA adapters: each sample is one user turn
   in the bundle's own chat template (an image, then a question about the scene or "Describe the
   image.") and the loss is the cross-entropy on the answer tokens and the closing <|im_end|> only.
   Without adapters the frozen LLM does not bind "the star" to the star's colour; with them it does.
Options measured and left off by default (see models/weights/README.md): --tower-lr (the tower keeps
learning in stage 2), --align-weight (stage 1's loss kept on during stage 2), --multi-turn (a
conversation per scene, three to five answers per forward pass) and --max-image-rms (a penalty on the
projector's output scale).

What makes this fit on 2 CPU cores: the tower is frozen in stage 2, so its features are computed once
per scene; sequences are short (25 image tokens, ~45 in all); logits are computed at the answer
positions only (the 49k-row lm_head is most of a position's cost); and a batch is either all questions
or all descriptions, so short question rows are not padded to a caption's length. Everything runs in
fp32 (bfloat16 autocast was measured 1.5-3x slower than fp32 on this CPU with torch 2.13).

Writes `projector.safetensors`, `vision_tower.safetensors` (fp16), `lora.safetensors` and
`training.json` (settings, minutes, held-out exact-match per question kind, measured by greedy
generation with transformers on the assembled fp32 model with the adapters folded in, and how well the
image tokens read as their words before and after stage 2).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import LlavaForConditionalGeneration

from mmedge.evaluation import quality as evaluate
from mmedge.evaluation import scenes

from . import lora
from . import reference
from . import tiny
from .train_tiny_clip import pixel_tensor

DESCRIBE = "Describe the image."
DESCRIBE_SHARE = 0.15


def chat_prompt(tokenizer, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=tiny.LLAVA_CHAT_TEMPLATE)


@torch.no_grad()
def patch_features(model: LlavaForConditionalGeneration, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The tower's output at the LLaVA feature layer, class token dropped: [n, 25, 192] (no gradient)."""
    return torch.cat([tower_features(model, pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def tower_features(model: LlavaForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """`patch_features` for one batch, with a gradient when the tower learns (--tower-align-lr, --tower-lr)."""
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    return hidden[reference.VISION_FEATURE_LAYER][:, 1:]


def sample_turns(scene: scenes.Scene, rng: random.Random, describe: bool, multi_turn: bool) -> list[tuple[str, str]]:
    """(question, answer) turns of one training sample about `scene`: one question, as the bundle is
    asked at run time, or (multi_turn) a conversation of one colour, shape or position question per
    object, the count and the sign's word, in random order. One question per object, because a
    question names the attributes it does not ask ("What colour is the star?"), and a second question
    about the same object could be answered from the first's text."""
    if describe:
        return [(DESCRIBE, scene.caption())]
    if not multi_turn:
        q = rng.choice(scene.questions())
        return [(q.question, q.answer)]
    questions = [scenes.object_question(o, rng.choice(("colour", "shape", "position")), rng)
                 for o in scene.objects]
    questions.append(scenes.scene_question(scene, "count", rng))
    if scene.word is not None:
        questions.append(scenes.scene_question(scene, "word", rng))
    rng.shuffle(questions)
    return [(q.question, q.answer) for q in questions]


class Batcher:
    """Token ids, image slots and answer positions for a batch of conversations (right-padded)."""

    def __init__(self, tokenizer, n_image_tokens: int):
        self.tokenizer = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids(tiny.IMAGE_TOKEN)
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.n_image_tokens = n_image_tokens

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, conversations: list[list[tuple[str, str]]]):
        rows, targets = [], []   # targets: (row, start of an answer, its ids)
        for conversation in conversations:
            row: list[int] = []
            for turn, (question, answer) in enumerate(conversation):
                if turn == 0:     # the image and the first question: the bundle's own prompt
                    for t in self._ids(chat_prompt(self.tokenizer, question)):
                        row.extend([t] * self.n_image_tokens if t == self.image_id else [t])
                else:             # what the template renders after an assistant turn
                    row.extend(self._ids(f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"))
                answer_ids = self._ids(answer) + [self.end]
                targets.append((len(rows), len(row), answer_ids))
                row.extend(answer_ids)
            rows.append(row)
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        # Position p predicts token p + 1: the logits that score answer token k sit one place before it.
        rows_idx = torch.tensor([i for i, start, a in targets for _ in a])
        cols_idx = torch.tensor([start - 1 + k for _, start, a in targets for k in range(len(a))])
        labels = torch.tensor([t for _, _, a in targets for t in a])
        return ids, mask, (rows_idx, cols_idx), labels


# Grounded pre-alignment (before the language-model loss; --align-steps): each image token is first
# regressed onto the frozen LLM's own input embeddings of the words for what its patch shows, " red" +
# " star" where an object covers it, " background" elsewhere. The scenes' geometry is known, so the
# targets are exact, and this stage needs no pass through the LLM (seconds). The LLM then starts
# from image tokens that already read like words, instead of the projector's random init.
BACKGROUND_WORD = "background"
COVER_SAMPLES = 6        # a patch is sampled on a 6 x 6 grid of points
MIN_COVER = 0.2          # the share of those points an object must cover to name the patch
ALIGN_SCENES_PER_STEP = 20   # every patch of 20 scenes: 500 tokens a step


def patch_words(scene: scenes.Scene, grid: int) -> list[tuple[str, ...]]:
    """For each patch of a `grid` x `grid` tokenization (row-major), the words its token is aligned
    to: the colour and shape of the object covering most of it, or the background word."""
    placed = scenes.object_placements(scene)
    offsets = (np.arange(COVER_SAMPLES) + 0.5) / COVER_SAMPLES
    words = []
    for py in range(grid):
        for px in range(grid):
            xs = (px + offsets[None, :]) / grid
            ys = (py + offsets[:, None]) / grid
            cover = [float(((xs - cx) ** 2 + (ys - cy) ** 2 <= r * r).mean()) for cx, cy, r in placed]
            best = int(np.argmax(cover)) if cover else -1
            if best >= 0 and cover[best] >= MIN_COVER:
                words.append((scene.objects[best].colour, scene.objects[best].shape))
            else:
                words.append((BACKGROUND_WORD,))
    return words


def alignment_targets(model, tokenizer, scene_list: list[scenes.Scene], grid: int):
    """([scenes, grid * grid, hidden] target embeddings, [scenes, grid * grid] colour index or -1,
    the same for shape): the sum of each patch's words' input embeddings (with a leading space, as
    the words appear in running text; each is one token in SmolLM2's vocabulary)."""
    table = model.get_input_embeddings().weight.detach()
    vocab = list(scenes.COLOURS) + list(scenes.SHAPES) + [BACKGROUND_WORD]
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in vocab}
    emb = {w: table[i].mean(0) for w, i in ids.items()}
    targets = torch.zeros(len(scene_list), grid * grid, table.shape[1])
    colour = torch.full((len(scene_list), grid * grid), -1, dtype=torch.long)
    shape = torch.full_like(colour, -1)
    for n, s in enumerate(scene_list):
        for k, words in enumerate(patch_words(s, grid)):
            targets[n, k] = sum(emb[w] for w in words)
            if len(words) == 2:
                colour[n, k] = list(scenes.COLOURS).index(words[0])
                shape[n, k] = scenes.SHAPES.index(words[1])
    readout = torch.stack([emb[w] for w in vocab])
    return targets, colour, shape, readout


def align_image_tokens(encode, n_scenes: int, targets, params, steps: int, scenes_per_step: int, seed: int) -> list[dict]:
    """Regress every image token of `scenes_per_step` random scenes (`encode(indices)` -> [b, patches,
    hidden]) onto its target embedding (mean squared error relative to the targets' mean square),
    training `params` (AdamW parameter groups, cosine schedule); returns the loss log."""
    g = torch.Generator().manual_seed(seed)
    scale = targets.pow(2).mean()
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    log, running = [], None
    for step in tqdm(range(steps), desc="aligning image tokens to words", unit="step"):
        idx = torch.randint(n_scenes, (scenes_per_step,), generator=g)
        loss = F.mse_loss(encode(idx), targets[idx]) / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            log.append({"step": step, "relative_mse": round(running, 4)})
    return log


@torch.no_grad()
def word_readout(tokens, colour, shape, readout) -> dict[str, float]:
    """How often an object patch's image token ([n, patches, hidden]) is nearest (dot product, among
    the scene vocabulary's colour and shape words) to its own colour and shape: whether the words are
    in the tokens."""
    scores = tokens @ readout.T                               # [n, patches, vocabulary]
    n_col = len(scenes.COLOURS)
    got_colour = scores[..., :n_col].argmax(-1)
    got_shape = scores[..., n_col:n_col + len(scenes.SHAPES)].argmax(-1)
    on = colour >= 0
    return {"colour": round(100 * (got_colour[on] == colour[on]).float().mean().item(), 1),
            "shape": round(100 * (got_shape[on] == shape[on]).float().mean().item(), 1),
            "object_patches": int(on.sum())}


# The first projector, trained on cross-entropy alone, emitted image embeddings of RMS 9.2 where
# SmolLM2's token embeddings have 0.13, and the int8 (dynamically quantized) decoder lost the prompt
# beside them. --max-image-rms R makes every image embedding above RMS R pay this quadratic penalty.
RMS_PENALTY = 0.05


def answer_loss(model: LlavaForConditionalGeneration, features: torch.Tensor, ids, mask, where, labels,
                max_image_rms: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy on the answers, the image-embedding RMS penalty; 0 when max_image_rms is 0)."""
    image = model.model.multi_modal_projector(features)                    # fp32, the trained part
    embeds = model.get_input_embeddings()(ids)
    slots = ids == model.config.image_token_id
    embeds = embeds.masked_scatter(slots[..., None], image.reshape(-1, image.shape[-1]))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    rms = image.pow(2).mean(-1).sqrt()
    penalty = RMS_PENALTY * F.relu(rms - max_image_rms).pow(2).mean() if max_image_rms > 0 else rms.new_zeros(())
    return F.cross_entropy(model.lm_head(hidden[where]), labels), penalty


def torch_answerer(model: LlavaForConditionalGeneration, tokenizer, processor, max_new_tokens: int = 12):
    """Greedy answers from transformers on the assembled fp32 model: the reference bundles are graded against."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    @torch.no_grad()
    def answer(image, question: str) -> str:
        text = chat_prompt(tokenizer, question).replace(
            tiny.IMAGE_TOKEN, tiny.IMAGE_TOKEN * model.config.image_seq_length)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(input_ids=ids, pixel_values=pixel_tensor([image], processor), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=end, pad_token_id=end)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return answer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmedge.models.train_tiny_vlm", description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=8000, help="training scenes (rendered once)")
    ap.add_argument("--samples", type=int, default=19200, help="training conversations seen (a scene's questions, or a description)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="the projector's learning rate")
    ap.add_argument("--held-out", type=int, default=100, help="held-out scenes graded at the end")
    ap.add_argument("--multi-turn", action="store_true",
                    help="train on conversations (a question per object, the count, the word) instead of one question")
    ap.add_argument("--max-image-rms", type=float, default=0.0,
                    help="penalize image embeddings above this RMS (0: no penalty)")
    ap.add_argument("--align-steps", type=int, default=3000,
                    help="grounded pre-alignment steps before the language-model loss (0: none)")
    ap.add_argument("--align-lr", type=float, default=3e-3)
    ap.add_argument("--align-weight", type=float, default=0.0,
                    help="keep the alignment loss on during the language-model loss, this weight")
    ap.add_argument("--tower-align-lr", type=float, default=1e-3,
                    help="the vision tower learns in the pre-alignment at this rate (0: frozen)")
    ap.add_argument("--tower-lr", type=float, default=0.0,
                    help="the vision tower learns with the language-model loss at this rate (0: frozen)")
    ap.add_argument("--lora-rank", type=int, default=8,
                    help="LoRA rank in the LLM's attention projections (0: the LLM stays frozen)")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip", type=Path, default=reference.CLIP_DIR, help="the trained tiny CLIP folder")
    ap.add_argument("--out", type=Path, default=reference.VLM_DIR)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    started = time.time()
    model = reference.smollm2_llava(reference.load_clip(args.clip))
    torch.manual_seed(args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    projector = model.model.multi_modal_projector
    tower = model.model.vision_tower
    for layer in (projector.linear_1, projector.linear_2):   # LLaVA's default init, seeded here
        torch.nn.init.normal_(layer.weight, std=0.02)
        torch.nn.init.zeros_(layer.bias)
        layer.requires_grad_(True)
    tune_tower = args.tower_align_lr > 0 or args.tower_lr > 0    # then it is committed too
    tower.requires_grad_(tune_tower)
    adapters = lora.attach(model.model.language_model, args.lora_rank, 2.0 * args.lora_rank) if args.lora_rank else []
    tokenizer = tiny.load_tokenizer(tiny.IMAGE_TOKEN)
    processor = reference.clip_image_processor()
    batcher = Batcher(tokenizer, model.config.image_seq_length)

    train = scenes.scenes(args.scenes, scenes.TRAIN_SEED)
    pixels = torch.cat([pixel_tensor([s.image for s in train[i:i + 256]], processor)
                        for i in tqdm(range(0, len(train), 256), desc="rendering", unit="x256 scenes")])
    for s in train:
        s._image = None
    # A frozen tower's features are computed once per scene (`features`); a learning one runs on
    # every batch (`features` is None while it learns).
    features = None if tune_tower else patch_features(model, pixels)

    def image_features(idx) -> torch.Tensor:
        return tower_features(model, pixels[idx]) if features is None else features[idx]

    grid = reference.IMAGE_SIZE // reference.PATCH_SIZE
    held = evaluate.held_out(args.held_out)
    held_pixels = pixel_tensor([s.image for s in held], processor)

    def held_tokens() -> torch.Tensor:
        with torch.no_grad():
            return projector(patch_features(model, held_pixels))

    alignment = {}
    targets = None
    if args.align_steps > 0 or args.align_weight > 0:
        targets, _, _, readout = alignment_targets(model, tokenizer, train, grid)
        target_scale = targets.pow(2).mean()
        _, colour, shape, _ = alignment_targets(model, tokenizer, held, grid)
    if args.align_steps > 0:
        groups = [{"params": list(projector.parameters()), "lr": args.align_lr}]
        if args.tower_align_lr > 0:
            groups.append({"params": list(tower.parameters()), "lr": args.tower_align_lr})
        alignment["log"] = align_image_tokens(lambda idx: projector(image_features(idx)), len(train), targets,
                                              groups, args.align_steps, ALIGN_SCENES_PER_STEP, args.seed)
        alignment["held_out_readout"] = word_readout(held_tokens(), colour, shape, readout)
        print(f"word readout of held-out object patches after alignment: {alignment['held_out_readout']}")

    steps = args.samples // args.batch
    groups = [{"params": list(projector.parameters()), "lr": args.lr}]
    if args.tower_lr > 0:
        groups.append({"params": list(tower.parameters()), "lr": args.tower_lr})
    elif tune_tower:   # only the pre-alignment tuned it: fixed from here on, in its committed fp16
        tower.requires_grad_(False)
        tower.half().float()
        features = patch_features(model, pixels)
    if adapters:
        groups.append({"params": adapters, "lr": args.lora_lr})
    trained = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    log, running = [], None
    bar = tqdm(range(steps), desc="training projector" + (" + tower" if args.tower_lr > 0 else "")
               + (" + LoRA" if adapters else ""), unit="step")
    for step in bar:
        idx = [rng.randrange(len(train)) for _ in range(args.batch)]
        describe = rng.random() < DESCRIBE_SHARE
        batch = batcher([sample_turns(train[i], rng, describe, args.multi_turn) for i in idx])
        feats = image_features(idx)
        answers, penalty = answer_loss(model, feats, *batch, max_image_rms=args.max_image_rms)
        loss = answers + penalty
        if args.align_weight > 0:
            loss = loss + args.align_weight * F.mse_loss(projector(feats), targets[idx]) / target_scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        sched.step()
        running = answers.item() if running is None else 0.95 * running + 0.05 * answers.item()
        bar.set_postfix(loss=f"{running:.3f}", rms_penalty=f"{penalty.item():.3f}")
        if step % 25 == 0 or step == steps - 1:
            log.append({"step": step, "loss": round(running, 4), "rms_penalty": round(penalty.item(), 4)})
    minutes = (time.time() - started) / 60

    # What is committed is what gets graded: the tower rounded to fp16 as the tiny CLIP is stored,
    # the adapters folded into the LLM's weights as build_tiny_vlm folds them.
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(reference.projector_state(model), str(args.out / reference.PROJECTOR_FILE))
    for stale in (reference.TOWER_FILE, reference.LORA_FILE):
        (args.out / stale).unlink(missing_ok=True)
    if tune_tower:
        tower.half().float()
        save_file(reference.tower_state(model), str(args.out / reference.TOWER_FILE))
    if adapters:
        save_file(lora.state(model.model.language_model), str(args.out / reference.LORA_FILE))
        lora.unwrap(model.model.language_model)
    model.eval()
    if targets is not None:   # how much of the words the language-model loss left in the tokens
        alignment["held_out_readout_after_training"] = word_readout(held_tokens(), colour, shape, readout)
    with torch.no_grad():
        image_rms = projector(image_features(list(range(min(256, len(train)))))).pow(2).mean(-1).sqrt().mean().item()
        token_rms = model.get_input_embeddings().weight.pow(2).mean(-1).sqrt().mean().item()
    n_questions = sum(1 for _ in evaluate.vlm_questions(held))
    with tqdm(total=n_questions, desc="held-out questions", unit="q") as progress:
        report = evaluate.vlm_metrics(torch_answerer(model, tokenizer, processor), held, progress)
    record = {"model": "mmedge-tiny-vlm", "command": "python -m mmedge.models.train_tiny_vlm "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": vars(args) | {"out": str(args.out), "clip": str(args.clip)},
              "trained_parameters": sum(p.numel() for p in trained),
              "image_embedding_rms": {"max_before_penalty": args.max_image_rms, "penalty_weight": RMS_PENALTY,
                                      "measured_mean": round(image_rms, 3),
                                      "token_embedding_rms": round(token_rms, 3)},
              "alignment": alignment, "minutes": round(minutes, 1), "torch": torch.__version__, "held_out": report.summary(),
              "loss_log": log}
    reference.save_training_record(args.out, reference.VLM_DIR, record)


if __name__ == "__main__":
    main()
