"""Quality measured on held-out generated scenes: the figures behind `mmedge eval` and the quality gates.

Two kinds of model, one source of scenes (`mmedge.scenes`, series `HELD_OUT_SEED`, never trained on):

- CLIP-like (anything that embeds images and texts): zero-shot accuracy for colour and shape (on the
  one-object scenes) and count (all scenes), and text-to-image recall@1/@5 with each scene's caption.
- VLMs (anything that answers a question about an image): exact-match accuracy per question kind
  (colour, shape, count, position, word), after `scenes.normalize_answer`.

The functions take plain callables, so the same code grades an exported bundle (through mmedge's
runtime) and the torch model in the training scripts. numpy only.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from mmedge.evaluation import scenes as sc
from mmedge.errors import MMEdgeError

EmbedImages = Callable[[Sequence[Image.Image]], np.ndarray]   # -> [n, dim], L2-normalized
EmbedTexts = Callable[[Sequence[str]], np.ndarray]
Answer = Callable[[Image.Image, str], str]


def held_out(count: int) -> list[sc.Scene]:
    return sc.scenes(count, seed=sc.HELD_OUT_SEED)


def _plural(n: int) -> str:
    return f"{sc.NUMBERS[n]} shape{'s' if n > 1 else ''}"


# The zero-shot prompts: label -> prompt, per task.
ZERO_SHOT = {
    "colour": {c: f"a photo of {sc.with_article(c)} shape." for c in sc.COLOURS},
    "shape": {s: f"a photo of a {s}." for s in sc.SHAPES},
    "count": {str(n): f"a photo of {_plural(n)}." for n in range(1, 5)},
}


def _truth(task: str, scene: sc.Scene) -> str | None:
    if task == "count":
        return str(len(scene.objects))
    if len(scene.objects) != 1:
        return None                     # colour/shape zero-shot only where the answer is one object's
    return getattr(scene.objects[0], task)


def clip_metrics(embed_images: EmbedImages, embed_texts: EmbedTexts, scene_list: Sequence[sc.Scene],
                 batch_size: int = 64, progress=None) -> dict[str, float]:
    """Zero-shot accuracies and text-to-image recall, in percent, plus the number of scenes behind each.
    `progress` (a tqdm-like bar, optional) is advanced per embedded scene."""
    chunks = []
    for i in range(0, len(scene_list), batch_size):
        batch = scene_list[i:i + batch_size]
        chunks.append(embed_images([s.image for s in batch]))
        if progress is not None:
            progress.update(len(batch))
    images = np.concatenate(chunks)
    out: dict[str, float] = {}
    for task, prompts in ZERO_SHOT.items():
        labels = list(prompts)
        text = embed_texts([prompts[label] for label in labels])
        rows = [(i, _truth(task, s)) for i, s in enumerate(scene_list)]
        rows = [(i, t) for i, t in rows if t is not None]
        predicted = np.argmax(images[[i for i, _ in rows]] @ text.T, axis=1)
        out[f"zero_shot_{task}"] = 100.0 * float(np.mean([labels[p] == t for p, (_, t) in zip(predicted, rows)]))
        out[f"zero_shot_{task}_n"] = len(rows)
    captions = embed_texts([s.caption() for s in scene_list])
    similarity = captions @ images.T                        # [text, image]
    own = similarity[np.arange(len(scene_list)), np.arange(len(scene_list))]
    rank = (similarity > own[:, None]).sum(axis=1)          # images scoring above the caption's own
    for k in (1, 5):
        out[f"recall@{k}"] = 100.0 * float(np.mean(rank < k))
    out["recall_n"] = len(scene_list)
    return out


@dataclass
class VlmReport:
    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    answers: list[tuple[int, str, str, str, str]] = field(default_factory=list)  # scene, kind, q, ref, got

    def accuracy(self) -> dict[str, float]:
        return {kind: 100.0 * self.correct[kind] / self.total[kind] for kind in sc.QUESTION_KINDS
                if self.total[kind]}

    def summary(self) -> dict[str, float]:
        acc = self.accuracy()
        out = {f"exact_{k}": v for k, v in acc.items()}
        out.update({f"exact_{k}_n": self.total[k] for k in acc})
        n = sum(self.total.values())
        out["exact_all"] = 100.0 * sum(self.correct.values()) / n if n else 0.0
        return out


def vlm_questions(scene_list: Sequence[sc.Scene]) -> Iterable[tuple[sc.Scene, sc.Question]]:
    for s in scene_list:
        for q in s.questions():
            yield s, q


def vlm_metrics(answer: Answer, scene_list: Sequence[sc.Scene], progress=None) -> VlmReport:
    """Ask every question of every scene; `progress` (a tqdm-like bar, optional) is advanced per answer."""
    report = VlmReport()
    for s, q in vlm_questions(scene_list):
        got = answer(s.image, q.question)
        report.total[q.kind] += 1
        report.correct[q.kind] += sc.normalize_answer(got) == sc.normalize_answer(q.answer)
        report.answers.append((s.index, q.kind, q.question, q.answer, got))
        if progress is not None:
            progress.update(1)
    return report


def evaluate_bundle(model, n_scenes: int, answers_path: str | None = None, max_new_tokens: int = 12) -> dict:
    """Grade a loaded bundle (`mmedge.load`) on the first `n_scenes` held-out scenes, with a progress bar."""
    import json

    from tqdm import tqdm

    scene_list = held_out(n_scenes)
    if model.bundle.family == "clip":
        with tqdm(total=n_scenes, desc="scenes", unit="scene") as progress:
            figures = clip_metrics(model.embed_images, model.embed_texts, scene_list, progress=progress)
        return {"bundle": str(model.bundle.root), "kind": "clip", "scenes": n_scenes, **figures}
    if not model.accepts_images:
        raise MMEdgeError(f"{model.bundle.root} holds a text-only model; `mmedge eval` grades answers "
                          f"about images (a VLM bundle) or image/text embeddings (a CLIP bundle).")
    n_questions = sum(1 for _ in vlm_questions(scene_list))

    def answer(image, question):
        return model.generate(question, images=[image], max_new_tokens=max_new_tokens)

    with tqdm(total=n_questions, desc="questions", unit="q") as progress:
        report = vlm_metrics(answer, scene_list, progress)
    if answers_path:
        with open(answers_path, "w") as f:
            for scene_index, kind, question, reference, got in report.answers:
                f.write(json.dumps({"scene": scene_index, "kind": kind, "question": question,
                                    "reference": reference, "answer": got}) + "\n")
    return {"bundle": str(model.bundle.root), "kind": "vlm", "scenes": n_scenes, **report.summary()}


def format_figures(figures: dict) -> str:
    """A two-column table: figure, value (percentages with one decimal, counts as integers)."""
    rows = [(k, v) for k, v in figures.items() if k not in ("bundle", "kind", "scenes") and not k.endswith("_n")]
    lines = [f"{figures['bundle']}: {figures['scenes']} held-out scenes", f"{'figure':<18} {'%':>6}  n"]
    for key, value in rows:
        n = figures.get(f"{key}_n", figures.get("recall_n") if key.startswith("recall") else "")
        lines.append(f"{key:<18} {value:6.1f}  {n}")
    return "\n".join(lines)
