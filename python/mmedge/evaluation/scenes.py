"""Generated scenes: the seeded image/caption/question data mmedge's reference models learn and are graded on.

A scene is a small picture of one to four coloured shapes (five shapes, eight colours, three sizes)
in distinct places (left, right, top, bottom, centre) on a noisy neutral background; about a third
also hold a sign with a short printed word. Every scene comes with captions and question/answer
pairs from varied templates, of five kinds: colour, shape, count, position and the sign's word.

Everything is a pure function of (seed, index): the same scene on every machine with the same Pillow,
so training (`mmedge.models.train_*`), `mmedge eval` and the quality-gate tests all draw from one
source. Held-out scenes come from a separate seed (`HELD_OUT_SEED`) never used in training.
Only numpy and Pillow: the runtime uses this for `mmedge eval`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TRAIN_SEED = 1
HELD_OUT_SEED = 1_000_003
SCENE_SIZE = 160           # pixels; the models' processors resize it to their own input size
_SUPERSAMPLE = 3           # drawn at 3x and downsampled: smooth edges, like a camera image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 75, 215), "yellow": (240, 215, 40),
    "orange": (245, 135, 25), "purple": (135, 55, 185), "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
POSITIONS = ("left", "right", "top", "bottom", "centre")
WORDS = ("STOP", "EXIT", "OPEN", "PUSH", "PULL", "SALE", "CAFE", "TAXI", "HELP", "WAIT", "BUS", "GO")
SIZES = {"small": 0.20, "medium": 0.24, "large": 0.28}   # object diameter as a fraction of the scene
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_KINDS = ("colour", "shape", "count", "position", "word")

# Where each region's centre may fall, as fractions of the scene (x0, x1, y0, y1): regions are far
# enough apart that "left of the centre" is never in doubt and objects in distinct regions never touch.
_REGIONS = {
    "left": (0.15, 0.20, 0.40, 0.60), "right": (0.80, 0.85, 0.40, 0.60),
    "top": (0.40, 0.60, 0.15, 0.20), "bottom": (0.40, 0.60, 0.80, 0.85),
    "centre": (0.48, 0.52, 0.48, 0.52),
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "centre": "in the centre"}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Question:
    kind: str          # one of QUESTION_KINDS
    question: str
    answer: str        # the short reference answer (one word or digit)


@dataclass
class Scene:
    seed: int
    index: int
    objects: tuple[SceneObject, ...]
    word: str | None = None            # the sign's word, if the scene has a sign
    sign_position: str | None = None
    background: tuple[int, int, int] = (128, 128, 128)
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = _render(self)
        return self._image

    def caption(self, rng: random.Random | None = None) -> str:
        """A full description; `rng` picks one of several phrasings (None: the canonical one)."""
        return _caption(self, rng)

    def questions(self) -> list[Question]:
        """Every answerable question about the scene, one per kind where the kind applies."""
        return _questions(self, random.Random(f"q/{self.seed}/{self.index}"))


def scene(index: int, seed: int = TRAIN_SEED) -> Scene:
    """Scene number `index` of the series `seed` (deterministic)."""
    rng = random.Random(f"scene/{seed}/{index}")
    n_objects = rng.choice((1, 1, 2, 2, 3, 3, 4))
    has_sign = rng.random() < 0.35 and n_objects < 4
    regions = rng.sample(POSITIONS, n_objects + (1 if has_sign else 0))
    sign_position = regions.pop() if has_sign else None
    # Shapes and colours are distinct within a scene, so "the red object" and "the star" name one thing.
    shapes = rng.sample(SHAPES, n_objects)
    colours = rng.sample(list(COLOURS), n_objects)
    objects = tuple(SceneObject(s, c, rng.choice(list(SIZES)), p) for s, c, p in zip(shapes, colours, regions))
    grey = rng.randint(95, 165)
    background = tuple(int(np.clip(grey + rng.randint(-18, 18), 0, 255)) for _ in range(3))
    return Scene(seed, index, objects, rng.choice(WORDS) if has_sign else None, sign_position, background)


def scenes(count: int, seed: int = TRAIN_SEED, start: int = 0) -> list[Scene]:
    return [scene(i, seed) for i in range(start, start + count)]


# --------------------------------------------------------------------------------------- drawing

@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)   # Pillow's bundled font: the same glyphs everywhere


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        r *= 0.86
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx + r * np.cos(a), cy + r * np.sin(a) + 0.15 * r)
                for a in np.deg2rad([-90, 30, 150])]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else 0.45 * r) * np.cos(a), cy + (r if k % 2 == 0 else 0.45 * r) * np.sin(a))
                for k, a in enumerate(np.deg2rad(np.arange(-90, 270, 36)))]
    raise ValueError(shape)


def _centre(region: str, rng: random.Random, size: int) -> tuple[float, float]:
    x0, x1, y0, y1 = _REGIONS[region]
    return rng.uniform(x0, x1) * size, rng.uniform(y0, y1) * size


def _draw_plan(s: Scene, big: int) -> tuple[random.Random, np.ndarray, bool, list[tuple[float, float, float]]]:
    """The render's random draws up to the objects: (the rng, left where the sign's draws continue it;
    the background's tilt; whether its gradient runs horizontally; each object's (cx, cy, radius) in
    pixels of a `big`-sized canvas)."""
    rng = random.Random(f"render/{s.seed}/{s.index}")
    tilt = np.array([rng.uniform(-25, 25) for _ in range(3)], np.float32)
    horizontal = rng.random() < 0.5
    placed = [(*_centre(obj.position, rng, big), SIZES[obj.size] * big / 2) for obj in s.objects]
    return rng, tilt, horizontal, placed


def object_placements(s: Scene) -> list[tuple[float, float, float]]:
    """Where each of `s.objects` is drawn: (centre x, centre y, radius) as fractions of the scene's side."""
    big = SCENE_SIZE * _SUPERSAMPLE
    return [(cx / big, cy / big, r / big) for cx, cy, r in _draw_plan(s, big)[3]]


def _render(s: Scene) -> Image.Image:
    big = SCENE_SIZE * _SUPERSAMPLE
    rng, tilt, horizontal, placed = _draw_plan(s, big)
    # Background: a soft gradient over the scene's grey, so no two backgrounds are the same flat colour.
    base = np.array(s.background, np.float32)
    ramp = np.linspace(-0.5, 0.5, big, dtype=np.float32)
    grad = ramp[None, :, None] if horizontal else ramp[:, None, None]
    canvas = np.broadcast_to(base + grad * tilt, (big, big, 3))
    img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for obj, (cx, cy, r) in zip(s.objects, placed):
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon(_shape_points(obj.shape, cx, cy, r), fill=colour)
    if s.word is not None:
        cx, cy = _centre(s.sign_position, rng, big)
        font = _font(int(0.13 * big))
        x0, y0, x1, y1 = draw.textbbox((0, 0), s.word, font=font)
        w, h = x1 - x0, y1 - y0
        pad = 0.03 * big
        cx = min(max(cx, w / 2 + pad + 2), big - w / 2 - pad - 2)   # long words stay inside the frame
        draw.rectangle((cx - w / 2 - pad, cy - h / 2 - pad, cx + w / 2 + pad, cy + h / 2 + pad),
                       fill=(245, 245, 235), outline=(30, 30, 30), width=max(1, big // 160))
        draw.text((cx - w / 2 - x0, cy - h / 2 - y0), s.word, font=font, fill=(10, 10, 10))
    small = img.resize((SCENE_SIZE, SCENE_SIZE), Image.Resampling.LANCZOS)
    # Sensor-like noise, seeded per scene.
    noise = np.random.default_rng([s.seed, s.index])
    pixels = np.asarray(small, np.float32) + noise.normal(0, rng.uniform(2, 9), (SCENE_SIZE, SCENE_SIZE, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------ language

def with_article(words: str) -> str:
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


def _object_phrase(obj: SceneObject) -> str:
    return with_article(f"{obj.colour} {obj.shape}")


def _caption(s: Scene, rng: random.Random | None) -> str:
    parts = [f"{_object_phrase(o)} {POSITION_PHRASES[o.position]}" for o in s.objects]
    if s.word is not None:
        parts.append(f"a sign that says {s.word} {POSITION_PHRASES[s.sign_position]}")
    if rng is None:
        return ", ".join(parts) + "."
    rng.shuffle(parts)
    if len(parts) > 1 and rng.random() < 0.5:
        body = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        body = ", ".join(parts)
    n = len(s.objects)
    lead = rng.choice(["", "a picture of ", "an image with ", "there is ",
                       f"{NUMBERS[n]} shape{'s' if n > 1 else ''}: "])
    return (lead + body + ".").strip()


def facts(s: Scene) -> frozenset[tuple]:
    """Everything a caption can claim about the scene; a caption is true of every scene whose facts
    include the caption's own (see `short_captions`)."""
    out = {("count", len(s.objects))}
    for o in s.objects:
        out |= {("shape", o.shape), ("colour", o.colour), ("object", o.colour, o.shape),
                ("object_at", o.colour, o.shape, o.position)}
    if s.word is not None:
        out |= {("word", s.word), ("sign_at", s.word, s.sign_position)}
    return frozenset(out)


def short_captions(s: Scene, rng: random.Random) -> list[tuple[str, frozenset[tuple]]]:
    """Partial descriptions (one object, its shape or colour, the count, the word), each with the facts
    it claims: what zero-shot prompts look like. Shape, the hardest attribute to learn at this
    resolution, is named in most of them."""
    n = len(s.objects)
    o = rng.choice(s.objects)
    obj = frozenset({("object", o.colour, o.shape)})
    out = [(f"a photo of {_object_phrase(o)}.", obj), (f"{_object_phrase(o)}.", obj),
           (f"a photo of {with_article(o.colour)} shape.", frozenset({("colour", o.colour)})),
           (f"a photo of a {o.shape}.", frozenset({("shape", o.shape)})),
           (f"a {o.shape}.", frozenset({("shape", o.shape)})),
           (f"a photo of {NUMBERS[n]} shape{'s' if n > 1 else ''}.", frozenset({("count", n)})),
           (f"{_object_phrase(o)} {POSITION_PHRASES[o.position]}.",
            frozenset({("object_at", o.colour, o.shape, o.position)}))]
    if s.word is not None:
        out.append((f"a sign that says {s.word}.", frozenset({("word", s.word)})))
    return out


_TEMPLATES = {
    "colour": ["What colour is the {shape}?", "What color is the {shape}?",
               "Which colour is the {shape}?", "Tell me the colour of the {shape}."],
    "shape": ["What shape is the {colour} object?", "Which shape is {colour}?",
              "What is the shape of the {colour} thing?", "Name the shape of the {colour} object."],
    "count": ["How many shapes are there?", "How many objects are in the picture?",
              "Count the shapes.", "How many shapes can you see?"],
    "position": ["Where is the {colour} {shape}?", "Where is the {shape}?",
                 "In which part of the image is the {colour} {shape}?"],
    "word": ["What does the sign say?", "What word is written on the sign?", "Read the sign.",
             "What is written on the sign?"],
}


def object_question(obj: SceneObject, kind: str, rng: random.Random) -> Question:
    """A "colour", "shape" or "position" question about one object (naming its other attributes)."""
    answer = {"colour": obj.colour, "shape": obj.shape, "position": obj.position}[kind]
    return Question(kind, rng.choice(_TEMPLATES[kind]).format(shape=obj.shape, colour=obj.colour), answer)


def scene_question(s: Scene, kind: str, rng: random.Random) -> Question:
    """A "count" or "word" question (the latter only for a scene with a sign)."""
    return Question(kind, rng.choice(_TEMPLATES[kind]), str(len(s.objects)) if kind == "count" else s.word)


def _questions(s: Scene, rng: random.Random) -> list[Question]:
    obj = rng.choice(s.objects)
    out = [object_question(obj, "colour", rng), object_question(obj, "shape", rng),
           scene_question(s, "count", rng)]
    if len(s.objects) > 1 or rng.random() < 0.5:
        out.append(object_question(obj, "position", rng))
    if s.word is not None:
        out.append(scene_question(s, "word", rng))
    return out


def normalize_answer(text: str) -> str:
    """What exact match compares: lower case, no punctuation or articles, digits for number words."""
    words = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower()).split()
    words = [w for w in words if w not in ("a", "an", "the", "it", "is", "its")]
    words = [str(NUMBERS.index(w)) if w in NUMBERS else ("centre" if w in ("center", "middle") else w)
             for w in words]
    return " ".join(words)


def main(argv: list[str] | None = None) -> None:
    """`python -m mmedge.scenes -o scene.png`: write one scene and print its caption and questions."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m mmedge.scenes", description=main.__doc__.split(":", 1)[1].strip())
    ap.add_argument("-o", "--output", required=True, help="PNG to write")
    ap.add_argument("--index", type=int, default=0, help="scene number in the series (default 0)")
    ap.add_argument("--series", choices=("held-out", "train"), default="held-out")
    ap.add_argument("--json", action="store_true", help="print the scene's facts as JSON")
    args = ap.parse_args(argv)
    s = scene(args.index, HELD_OUT_SEED if args.series == "held-out" else TRAIN_SEED)
    s.image.save(args.output)
    facts = {"image": args.output, "caption": s.caption(),
             "questions": [{"kind": q.kind, "question": q.question, "answer": q.answer} for q in s.questions()]}
    if args.json:
        print(json.dumps(facts, indent=2))
        return
    print(f"{args.output}: {facts['caption']}")
    for q in facts["questions"]:
        print(f"  [{q['kind']}] {q['question']} -> {q['answer']}")


if __name__ == "__main__":
    main()
