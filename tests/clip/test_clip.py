"""CLIP and SigLIP bundles: tiny seeded `CLIPModel` / `SiglipModel` checkpoints (hidden 32, 2 layers,
32x32 images in 8x8 patches) exported and run by mmedge, compared with transformers.

Two tokenizers:

- "scene": mmedge-tiny-clip's word-level tokenizer (the scene vocabulary, 98 tokens, committed in
  models/weights/mmedge-tiny-clip/), so every test here runs in a bare checkout. Its
  model_max_length (48) is below both towers' position counts, so the bundles truncate at 48.
- "openai": the real openai/clip-vit-base-patch32 tokenizer (byte-level BPE, 49408 tokens, 77) from
  the shared fixtures, ../shared/fixtures/hf/. The tests that depend on the tokenizer (tokens,
  embeddings, probabilities, templates, the manifest, quantized towers) run with it too where the
  fixture exists, and skip it where it does not; the rest do not depend on the tokenizer.

Real SigLIP checkpoints ship a SentencePiece tokenizer that is not available offline, so the tiny
SigLIP model takes these tokenizers with SigLIP's own text handling: sequences padded to
max_length, no attention mask, last-position pooling. That exercises every SigLIP code path of the
exporter and runtime; only the tokenizer model differs from a real checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokenizers
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmedge  # noqa: E402
from mmedge.bundle import write_manifest  # noqa: E402
from mmedge.cli import main as cli_main  # noqa: E402
from mmedge.clip.index import ImageIndex  # noqa: E402
from mmedge.clip.model import UnknownWordsWarning, unknown_token  # noqa: E402
from mmedge.errors import ExportError, PromptError  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.export.vision import quantize_vision  # noqa: E402
from mmedge.models.reference import CLIP_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OPENAI_TOKENIZER_DIR = ROOT.parent / "shared" / "fixtures" / "hf" / "clip-vit-base-patch32"
HAVE_OPENAI_TOKENIZER = OPENAI_TOKENIZER_DIR.is_dir()
NO_OPENAI_TOKENIZER = f"the CLIP tokenizer fixture {OPENAI_TOKENIZER_DIR} is absent"

KINDS = ("clip", "siglip")
TOKENIZERS = ("scene", "openai")
POSITIONS = {"clip": 77, "siglip": 64}     # the text towers' max_position_embeddings
# What each bundle must truncate at: the tokenizer's model_max_length where it is shorter.
MAX_LENGTH = {("clip", "scene"): 48, ("siglip", "scene"): 48,
              ("clip", "openai"): 77, ("siglip", "openai"): 64}
TEXTS = {
    "scene": ["a photo of a red circle.", "a blue square", "Triangle!", "x", "a photo of a cat.",
              "a big green star on the left of a small yellow diamond " * 6],   # > 48 tokens
    "openai": ["a photo of a cat.", "a red door", "Staircase!", "x",
               "a very long caption about stairs and doors and walls " * 12],   # > 77 tokens
}
LABELS = {"scene": ["circle", "red square", "triangle", "a star on the left"],
          "openai": ["door", "staircase", "wall", "a cat sitting on a chair"]}
# Measured by `python tests/clip/test_clip.py` (measure_quantized below: seeds 0-3 of both kinds and
# both tokenizers, IMAGES, TEXTS, LABELS; 2 cores, AVX-512), worst over the seeds.
# fp32 bundle against transformers: lowest cosine 0.99999988 (1 - cos is float32 rounding), largest
# label-probability difference 4.8e-7 (classify) and 7.6e-7 (the export's own parity figure); the
# bounds leave margins of 8x and 13x.
FP32_MIN_COSINE = 0.999999
FP32_MAX_PROB_DIFF = 1e-5
# Quantized towers against the fp32 bundle, lowest cosine (image / text) and largest
# label-probability difference:
#   openai tokenizer: fp16 0.9999991 / 0.9999993, 8.2e-4;  int8 0.99950 / 0.99938, 0.0164
#   scene tokenizer:  fp16 0.9999992 / 0.9999995, 9.5e-4;  int8 0.99959 / 0.99858 (clip, seed 0), 0.0148
# The bounds leave a margin of 3x or more in 1 - cosine and in probability, except int8 text with
# the scene tokenizer (2.1x: 1.4e-3 measured, 3e-3 allowed).
QUANT_MIN_COSINE = {"fp16": 0.999997, "int8": 0.997}
QUANT_MAX_PROB_DIFF = {"fp16": 3e-3, "int8": 0.05}


def copy_tokenizer(tokenizer: str, out: Path) -> None:
    if tokenizer == "scene":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(CLIP_DIR / name, out / name)
        return
    if not HAVE_OPENAI_TOKENIZER:
        pytest.skip(NO_OPENAI_TOKENIZER)
    for f in OPENAI_TOKENIZER_DIR.iterdir():
        if f.name not in ("config.json", "preprocessor_config.json"):
            shutil.copy(f, out / f.name)


def build_tiny(kind: str, out: Path, seed: int = 0, tokenizer: str = "scene") -> Path:
    """A seeded random CLIPModel or SiglipModel saved as a HF folder with `tokenizer`."""
    torch.manual_seed(seed)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(tower, image_size=32, patch_size=8)
    if tokenizer == "scene":
        # mmedge-tiny-clip's ids: [PAD] 0, [BOS] 2, [EOS] 3 (CLIP pools at the first [EOS]).
        vocab = tokenizers.Tokenizer.from_file(str(CLIP_DIR / "tokenizer.json")).get_vocab_size()
        text = dict(tower, vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    else:
        text = dict(tower, vocab_size=49408)
    text["max_position_embeddings"] = POSITIONS[kind]
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
        model = transformers.CLIPModel(config)
        preprocessor = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
                        "crop_size": {"height": 32, "width": 32}}
    else:
        config = transformers.SiglipConfig(text_config=dict(text, projection_size=32),
                                           vision_config=vision)
        model = transformers.SiglipModel(config)
        with torch.no_grad():  # SigLIP initializes both to 0; give the sigmoid something to do
            model.logit_scale.fill_(float(np.log(10.0)))
            model.logit_bias.fill_(-2.0)
        preprocessor = {"image_processor_type": "SiglipImageProcessor",
                        "size": {"height": 32, "width": 32}}
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    copy_tokenizer(tokenizer, out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return out


def scene(seed: int, size=(97, 61)) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[10:40, 20:60] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGES = [scene(0), scene(1, (40, 120)), scene(2, (64, 64))]


@dataclasses.dataclass
class Exported:
    kind: str
    tokenizer: str
    bundle: Path
    manifest: dict
    reference: Any       # the transformers model
    processor: Any       # its AutoProcessor

    @property
    def texts(self) -> list[str]:
        return TEXTS[self.tokenizer]

    @property
    def labels(self) -> list[str]:
        return LABELS[self.tokenizer]


@pytest.mark.parametrize("kind", KINDS)
def test_image_processor_nested_in_processor_config_exports(tmp_path, kind, export_tiny):
    """A folder as transformers 5 saves it: the image processor inside processor_config.json."""
    folder = build_tiny(kind, tmp_path / "hf")
    nested = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()
    (folder / "processor_config.json").write_text(json.dumps({"image_processor": nested}))
    manifest = export_model(str(folder), tmp_path / "bundle", parity=False, progress=False)
    assert manifest["image"] == export_tiny(kind, "scene").manifest["image"]


@pytest.fixture(scope="module")
def export_tiny(tmp_path_factory):
    """Builds and exports each (kind, tokenizer) once for the whole module."""
    done: dict[tuple[str, str], Exported] = {}

    def get(kind: str, tokenizer: str) -> Exported:
        if (kind, tokenizer) not in done:
            root = tmp_path_factory.mktemp(f"{kind}-{tokenizer}")
            folder = build_tiny(kind, root / "hf", tokenizer=tokenizer)
            manifest = export_model(str(folder), root / "bundle", progress=False)
            reference = transformers.AutoModel.from_pretrained(folder).eval()
            processor = transformers.AutoProcessor.from_pretrained(folder)
            done[kind, tokenizer] = Exported(kind, tokenizer, root / "bundle", manifest, reference, processor)
        return done[kind, tokenizer]

    return get


@pytest.fixture(scope="module", params=KINDS)
def exported(request, export_tiny) -> Exported:
    """Both kinds with the scene tokenizer: for what does not depend on the tokenizer."""
    return export_tiny(request.param, "scene")


@pytest.fixture(scope="module", params=[(k, t) for t in TOKENIZERS for k in KINDS],
                ids=lambda p: "-".join(p))
def exported_any(request, export_tiny) -> Exported:
    """Both kinds with both tokenizers (the openai one only where the shared fixture exists)."""
    if request.param[1] == "openai" and not HAVE_OPENAI_TOKENIZER:
        pytest.skip(NO_OPENAI_TOKENIZER)
    return export_tiny(*request.param)


def hf_text_inputs(e: Exported, texts):
    if e.kind == "clip":
        return e.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return e.processor.tokenizer(texts, padding="max_length", max_length=MAX_LENGTH[e.kind, e.tokenizer],
                                 truncation=True, return_tensors="pt")


def hf_embeddings(e: Exported, images, texts):
    """transformers' normalized image and text embeddings, as its forward computes them."""
    pixels = e.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    ids = hf_text_inputs(e, texts)["input_ids"]
    with torch.no_grad():
        out = e.reference(input_ids=ids, pixel_values=pixels)
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_tokens_and_pixels_match_processor(exported_any):
    e = exported_any
    model = mmedge.load(e.bundle, device="cpu")
    expected = hf_text_inputs(e, e.texts)["input_ids"].numpy()
    assert expected.shape[1] == MAX_LENGTH[e.kind, e.tokenizer]   # the long text is truncated
    np.testing.assert_array_equal(model.tokenize(e.texts), expected)
    pixels = e.processor.image_processor(IMAGES, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(model.preprocess(IMAGES), pixels, atol=1e-5)


def test_embeddings_match_transformers(exported_any):
    e = exported_any
    model = mmedge.load(e.bundle, device="cpu")
    assert type(model).__name__ == "ClipModel" and model.kind == e.kind
    ref_image, ref_text, _ = hf_embeddings(e, IMAGES, e.texts)
    image = model.embed_images(IMAGES, batch_size=2)   # two batches: 2 + 1
    text = model.embed_texts(e.texts)
    assert image.shape == ref_image.shape and text.shape == ref_text.shape
    assert image.dtype == text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image, axis=-1), 1, atol=1e-5)
    assert cosines(image, ref_image).min() >= FP32_MIN_COSINE
    assert cosines(text, ref_text).min() >= FP32_MIN_COSINE


def test_classify_matches_transformers(exported_any):
    e = exported_any
    model = mmedge.load(e.bundle, device="cpu")
    prompts = [f"a photo of a {label}." for label in e.labels]
    _, _, out = hf_embeddings(e, IMAGES[:1], prompts)
    logits = out.logits_per_image[0]
    expected = (logits.softmax(-1) if e.kind == "clip" else logits.sigmoid()).numpy()
    ranked = model.classify(IMAGES[0], e.labels)
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    got = dict(ranked)
    np.testing.assert_allclose([got[label] for label in e.labels], expected, atol=FP32_MAX_PROB_DIFF)
    if e.kind == "clip":
        assert abs(sum(got.values()) - 1) < 1e-6


def test_templates_are_averaged(exported_any):
    """Several templates: normalized text embeddings averaged per label, renormalized."""
    e = exported_any
    model = mmedge.load(e.bundle, device="cpu")
    templates = ["a photo of a {}.", "a drawing of the {}", "{}"]
    prompts = [t.format(label) for label in e.labels for t in templates]
    image, text, _ = hf_embeddings(e, IMAGES[:1], prompts)
    labels = text.reshape(len(e.labels), len(templates), -1).mean(1)
    labels /= np.linalg.norm(labels, axis=-1, keepdims=True)
    scale = e.reference.logit_scale.exp().item()
    logits = torch.tensor(scale * labels @ image[0])
    if e.kind == "clip":
        expected = logits.softmax(-1).numpy()
    else:
        expected = (logits + e.reference.logit_bias.item()).sigmoid().numpy()
    got = dict(model.classify(IMAGES[0], e.labels, templates=templates))
    np.testing.assert_allclose([got[label] for label in e.labels], expected, atol=FP32_MAX_PROB_DIFF)


def test_manifest(exported_any):
    e = exported_any
    kind, bundle, manifest, reference = e.kind, e.bundle, e.manifest, e.reference
    assert manifest["family"] == "clip"
    components = manifest["components"]
    # The image graph starts after the patch embedding (4x4 patches of 8 px, + CLIP's class token);
    # its weights are in the bundle for the runtime's kernel.
    tokens = 16 + (kind == "clip")
    width = reference.config.vision_config.hidden_size
    assert components["image"]["inputs"][0] == {"name": "patch_tokens", "dtype": "float32",
                                                "shape": ["batch", tokens, width]}
    patch = manifest["image"]["patch_embedding"]
    assert (patch["num_tokens"], patch["dim"], patch["patch_size"]) == (tokens, width, 8)
    assert patch["file"] in json.loads((bundle / "manifest.json").read_text())["files"]
    assert set(patch["tensors"]) == {"weight", "position_embedding", "class_embedding" if kind == "clip" else "bias"}
    assert components["image"]["outputs"][0]["shape"][0] == "batch"
    assert components["text"]["inputs"] == [{"name": "input_ids", "dtype": "int64",
                                             "shape": ["batch", "seq"]}]
    assert components["text"]["outputs"][0]["shape"][0] == "batch"
    clip = manifest["clip"]
    assert clip["kind"] == kind
    assert clip["logit_scale"] == pytest.approx(reference.logit_scale.exp().item())
    assert clip["logit_bias"] == (pytest.approx(-2.0) if kind == "siglip" else 0.0)
    text = manifest["text"]
    assert (text["max_length"], text["padding"]) == (MAX_LENGTH[kind, e.tokenizer],
                                                     "longest" if kind == "clip" else "max_length")
    assert text["pad_token_id"] == e.processor.tokenizer.pad_token_id
    parity = manifest["exporter"]["parity"]
    assert min(parity["image_cosine"], parity["text_cosine"]) >= FP32_MIN_COSINE
    assert parity["max_prob_diff"] < FP32_MAX_PROB_DIFF
    assert manifest["quantization"] == {"image": "fp32", "text": "fp32"}


def test_bad_labels_and_templates(exported):
    bundle = exported.bundle
    model = mmedge.load(bundle, device="cpu")
    with pytest.raises(PromptError, match="No labels"):
        model.classify(IMAGES[0], [])
    with pytest.raises(PromptError, match="duplicated: 'door', 'wall'"):
        model.classify(IMAGES[0], ["door", "wall", "door", "stairs", "wall"])
    with pytest.raises(PromptError, match="non-empty"):
        model.classify(IMAGES[0], ["door", "  "])
    with pytest.raises(PromptError, match="list of strings"):
        model.classify(IMAGES[0], "door,wall")
    with pytest.raises(PromptError, match="exactly one"):
        model.classify(IMAGES[0], ["door"], templates=["a photo"])


@pytest.fixture
def no_unknown_words_warning():
    """Makes an UnknownWordsWarning an error inside the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordsWarning)
        yield


def test_unknown_labels_and_queries_warn(exported, tmp_path):
    """The scene tokenizer maps every word outside its vocabulary to [UNK]: labels made of such
    words all get the same embedding, and the same score, which the model must say."""
    model = mmedge.load(exported.bundle, device="cpu")
    expected = r"in 2 of 2 labels: 'door'; 'staircase'\. .*'\[UNK\]'"
    with pytest.warns(UnknownWordsWarning, match=expected) as caught:
        ranked = model.classify(IMAGES[0], ["door", "staircase"])
    assert len(caught) == 1 and caught[0].filename == __file__   # one warning, at the caller's line
    assert ranked[0][1] == pytest.approx(ranked[1][1])            # why: both read as "[UNK]"
    # Mostly: more than half of the word tokens; punctuation is not a word.
    with pytest.warns(UnknownWordsWarning, match=r"in 2 of 4 labels: 'door\.' \(door\); "
                                                 r"'a staircase banister' \(staircase, banister\)\. "):
        model.classify(IMAGES[0], ["circle", "door.", "a staircase banister", "big red door"])
    with pytest.warns(UnknownWordsWarning, match=r"in 1 of 3 texts: 'a cat sitting' \(cat, sitting\)\. "):
        model.embed_texts(["a cat sitting", "a cat", "a red circle"], warn_unknown=True)   # half is not most
    with ImageIndex(tmp_path / "photos.sqlite", model) as index, \
            pytest.warns(UnknownWordsWarning, match=r"in 1 of 1 texts: 'a staircase banister'") as caught:
        index.search("a staircase banister")
    assert caught[0].filename == __file__
    with pytest.warns(UnknownWordsWarning, match=r"1 of 1 labels: 'door'"):
        model.label_embeddings(["door"], templates=["a photo of a {}.", "{}"])   # the label is judged
    assert model.unknown_words("a photo of a cat, door.") == (["cat", "door"], 6)
    assert model.mostly_unknown("a cat") is None and model.mostly_unknown("big red door") is None
    assert model.mostly_unknown("x!") == ["x"]


def test_known_labels_do_not_warn(exported, tmp_path, no_unknown_words_warning):
    model = mmedge.load(exported.bundle, device="cpu")
    ranked = dict(model.classify(IMAGES[0], ["circle", "red square", "a star on the left", "big red door"]))
    assert len(set(ranked.values())) == 4
    model.embed_texts(["a photo of a blue triangle.", "Two Stars!", "?"], warn_unknown=True)
    model.embed_texts(["a staircase banister"])        # embeds as asked: no warning by default
    with ImageIndex(tmp_path / "known.sqlite", model) as index:
        index.search("a green diamond", k=1)
    assert model.unknown_words("a green diamond") == ([], 3)


def test_byte_level_bpe_never_warns(export_tiny, no_unknown_words_warning):
    """Real CLIP's tokenizer is byte-level BPE: no word is unknown. Its unk token is its end token
    "<|endoftext|>"; typed literally it is not an unknown word."""
    if not HAVE_OPENAI_TOKENIZER:
        pytest.skip(NO_OPENAI_TOKENIZER)
    model = mmedge.load(export_tiny("clip", "openai").bundle, device="cpu")
    assert model._unknown == ("<|endoftext|>", 49407)
    model.classify(IMAGES[0], ["door", "staircase", "Treppenhaus", "階段", "<|endoftext|>"])
    pieces = model.tokenize(["a zxqvw door"]).shape[1] - 2      # BPE pieces, start/end tokens aside
    assert model.unknown_words("a zxqvw door <|endoftext|>") == ([], pieces) and pieces > 3


def test_unknown_token_of_each_tokenizer_model():
    """The unknown token is read from the tokenizer's model, whatever its type, never assumed."""
    vocab = {"<unk>": 0, "door": 1, "<s>": 2}
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    word_piece = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="<unk>"))
    unigram = tokenizers.Tokenizer(tokenizers.models.Unigram([("<s>", 0.0), ("<unk>", 0.0), ("door", -1.0)],
                                                             unk_id=1))
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    assert unknown_token(word_level) == unknown_token(word_piece) == ("<unk>", 0)
    assert unknown_token(unigram) == ("<unk>", 1)
    assert unknown_token(bpe) is None
    assert unknown_token(tokenizers.Tokenizer.from_file(str(CLIP_DIR / "tokenizer.json"))) == ("[UNK]", 1)


def test_cli_warns_about_unknown_labels_and_queries(exported, tmp_path, capsys):
    bundle = exported.bundle
    image = tmp_path / "a.png"
    IMAGES[0].save(image)
    assert cli_main(["classify", str(bundle), str(image), "--labels", "door,staircase,circle", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 3          # stdout stays the JSON alone
    warned = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "in 2 of 3 labels: 'door'; 'staircase'." in warned[0]
    assert cli_main(["classify", str(bundle), str(image), "--labels", "circle,red star"]) == 0
    assert "warning:" not in capsys.readouterr().err

    db = tmp_path / "photos.sqlite"
    assert cli_main(["index", str(bundle), str(db), str(image)]) == 0
    capsys.readouterr()
    assert cli_main(["search", str(bundle), str(db), "a staircase banister"]) == 0
    assert "warning: Mostly unknown words in 1 of 1 texts: 'a staircase banister'" in capsys.readouterr().err
    assert cli_main(["search", str(bundle), str(db), "a red circle"]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_image_embedding_cache(exported):
    bundle = exported.bundle
    model = mmedge.load(bundle, device="cpu")
    runs = []
    session = model._image

    class Counting:
        def run(self, *args, **kwargs):
            runs.append(args[1]["patch_tokens"].shape[0])
            return session.run(*args, **kwargs)

    model._image = Counting()
    first = model.embed_images(IMAGES)
    again = model.embed_images([np.asarray(IMAGES[1]), IMAGES[2], IMAGES[0], scene(9)])
    assert runs == [3, 2]    # the array of IMAGES[1] is new pixels-wise; IMAGES[2], [0] are cached
    np.testing.assert_array_equal(again[1:3], first[[2, 0]])
    np.testing.assert_allclose(again[0], first[1], atol=1e-6)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantized_towers_within_bounds(exported_any, tmp_path, precision):
    """Both towers quantized (as `--quant` does) against the fp32 bundle's embeddings."""
    e = exported_any
    bundle, manifest, texts, labels = e.bundle, e.manifest, e.texts, e.labels
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    for name in ("image", "text"):
        path = copy / manifest["components"][name]["file"]
        quantize_vision(bundle / path.name, path, precision)
    write_manifest(copy, manifest)
    fp32, quant = mmedge.load(bundle, device="cpu"), mmedge.load(copy, device="cpu")
    assert cosines(quant.embed_images(IMAGES), fp32.embed_images(IMAGES)).min() >= QUANT_MIN_COSINE[precision]
    assert cosines(quant.embed_texts(texts), fp32.embed_texts(texts)).min() >= QUANT_MIN_COSINE[precision]
    for image in IMAGES:
        ours, ref = dict(quant.classify(image, labels)), dict(fp32.classify(image, labels))
        assert max(abs(ours[label] - ref[label]) for label in labels) <= QUANT_MAX_PROB_DIFF[precision]


def test_int8_export_end_to_end(tmp_path):
    folder = build_tiny("clip", tmp_path / "hf", seed=1)
    manifest = export_model(str(folder), tmp_path / "bundle", precision="int8", progress=False)
    assert manifest["quantization"] == {"image": "int8", "text": "int8"}
    assert {c["precision"] for c in manifest["components"].values()} == {"int8"}
    parity = manifest["exporter"]["parity"]
    assert min(parity["image_cosine"], parity["text_cosine"]) >= QUANT_MIN_COSINE["int8"]
    with pytest.raises(ExportError, match="int4"):
        export_model(str(folder), tmp_path / "bad", precision="int4", progress=False)
    assert not (tmp_path / "bad").exists()


def test_cli_classify_and_embed(exported, tmp_path, capsys):
    bundle = exported.bundle
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    IMAGES[0].save(photos / "a.png")
    IMAGES[1].save(photos / "sub" / "b.jpg")
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")

    assert cli_main(["classify", str(bundle), str(photos / "a.png"), "--labels", "circle, square,red star",
                     "--json", "--device", "cpu"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert sorted(r["label"] for r in ranked) == ["circle", "red star", "square"]
    assert cli_main(["classify", str(bundle), str(photos / "a.png"), "--labels", "circle,triangle"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["label", "probability"] and len(table) == 3
    assert cli_main(["classify", str(bundle), str(photos / "a.png"), "--labels", "star,star"]) == 2
    assert "duplicated: 'star'" in capsys.readouterr().err

    out = tmp_path / "emb.npy"
    assert cli_main(["embed", str(bundle), str(photos), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "notes.txt" in err and "broken.jpg" in err
    rows = (tmp_path / "emb.rows.txt").read_text().splitlines()
    assert rows == [str(photos / "a.png"), str(photos / "sub" / "b.jpg")]
    model = mmedge.load(bundle, device="cpu")
    np.testing.assert_allclose(np.load(out), model.embed_images(rows), atol=1e-6)
    assert cli_main(["embed", str(bundle), "--text", "a blue square", "--text", "two stars",
                     "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), model.embed_texts(["a blue square", "two stars"]), atol=1e-6)
    assert cli_main(["run", str(bundle), "-p", "hi"]) == 2
    assert "holds a 'clip' model" in capsys.readouterr().err


def test_runtime_does_not_import_torch(exported, tmp_path):
    bundle = exported.bundle
    image = tmp_path / "a.png"
    IMAGES[0].save(image)
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'python')!r}); import mmedge; "
            f"m = mmedge.load({str(bundle)!r}, device='cpu'); "
            f"m.classify({str(image)!r}, ['circle', 'square']); "
            f"m.embed_texts(['a red star']); "
            f"bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers')]; "
            f"assert not bad, bad; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_index_incremental_resumable_and_search(exported, tmp_path, capsys):
    bundle, manifest = exported.bundle, exported.manifest
    model = mmedge.load(bundle, device="cpu")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    names = [photos / "a.png", photos / "sub" / "b.png", photos / "c.jpg"]
    for image, name in zip(IMAGES, names):
        image.save(name)
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.png").write_bytes(b"not a png")
    db = tmp_path / "photos.sqlite"

    # Interrupted after the first batch (one file per batch): that batch is committed.
    def interrupt(done, total):
        raise KeyboardInterrupt

    with ImageIndex(db, model) as index, pytest.raises(KeyboardInterrupt):
        index.update([photos], batch_size=1, progress=interrupt)
    with ImageIndex(db, model) as index:
        assert len(index) == 1
        report = index.update([photos], batch_size=2)
        assert (report.added, report.unchanged, report.changed, report.removed) == (2, 1, 0, 0)
        assert {Path(p).name for p, _ in report.skipped} == {"notes.txt", "broken.png"}
        assert len(index) == 3

        embeds = model.embed_images(names)
        hits = index.search(IMAGES[1], k=2)
        assert hits[0][0] == str(names[1].resolve()) and hits[0][1] == pytest.approx(1, abs=1e-5)
        text = model.embed_texts(["a red circle"])[0]
        hits = index.search("a red circle", k=3)
        expected = np.argsort(-(embeds @ text))
        assert [p for p, _ in hits] == [str(names[i].resolve()) for i in expected]
        np.testing.assert_allclose([s for _, s in hits], (embeds @ text)[expected], atol=1e-6)

        IMAGES[2].save(names[0])            # content changed
        names[1].unlink()                   # removed
        os.utime(names[2], ns=(1, 1))       # touched only: same bytes, no new embedding
        report = index.update([photos])
        assert (report.added, report.changed, report.unchanged, report.removed) == (0, 1, 1, 1)
        assert len(index) == 2
        assert index.search(IMAGES[2], k=1)[0][1] == pytest.approx(1, abs=1e-5)

    # Another bundle (here the int8 copy) refuses the index.
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    quantize_vision(bundle / "image.onnx", other / "image.onnx", "int8")
    write_manifest(other, manifest)
    with pytest.raises(mmedge.MMEdgeError, match="built by another bundle"):
        ImageIndex(db, mmedge.load(other, device="cpu"))

    assert cli_main(["index", str(bundle), str(db), str(photos)]) == 0
    assert "2 images (0 added, 0 changed, 2 unchanged, 0 removed)" in capsys.readouterr().out
    assert cli_main(["search", str(bundle), str(db), "a red circle", "-k", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert cli_main(["search", str(other), str(db), "a red circle"]) == 2


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


def test_progress_bars(exported, tmp_path, monkeypatch):
    """`index` and `embed` draw a bar (files done / total, skipped files in the postfix) on a
    terminal only; progress=False draws none."""
    bundle = exported.bundle
    model = mmedge.load(bundle, device="cpu")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(IMAGES):
        image.save(photos / f"{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    (photos / "notes.txt").write_text("not an image")

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with ImageIndex(tmp_path / "a.sqlite", model) as index:
        index.update([photos], batch_size=2)
    bar = terminal.getvalue()
    assert "index" in bar and "4/4" in bar and "skipped=2" in bar

    terminal.seek(0)
    terminal.truncate()
    with ImageIndex(tmp_path / "b.sqlite", model) as index:
        index.update([photos], progress=False)
    assert cli_main(["embed", str(bundle), str(photos), "-o", str(tmp_path / "e.npy")]) == 0
    out = terminal.getvalue()
    assert "index" not in out and "embed" in out and "4/4" in out and "skipped=2" in out

    monkeypatch.setattr(sys, "stderr", io.StringIO())   # not a terminal: no bar
    assert cli_main(["embed", str(bundle), str(photos), "-o", str(tmp_path / "e.npy")]) == 0
    assert "4/4" not in sys.stderr.getvalue()


def test_search_contact_sheet(exported, tmp_path, capsys):
    from mmedge.clip.contact_sheet import CAPTION_HEIGHT, COLUMNS, TILE, sheet_size
    bundle = exported.bundle
    photos = tmp_path / "photos"
    photos.mkdir()
    solid = [Image.new("RGB", (50, 40), color) for color in ((255, 0, 0), (0, 0, 255))]
    names = []
    for i, image in enumerate([*IMAGES, *solid]):
        names.append(photos / f"{i}.png")
        image.save(names[-1])
    db = tmp_path / "photos.sqlite"
    with ImageIndex(db, mmedge.load(bundle, device="cpu")) as index:
        index.update([photos], progress=False)
    names[3].write_bytes(b"broken now")   # indexed, then unreadable: a grey tile
    names[4].unlink()                      # indexed, then gone: a grey tile

    sheet_path = tmp_path / "out" / "hits.png"
    assert cli_main(["search", str(bundle), str(db), "a red circle", "-k", "5",
                     "--show", str(sheet_path)]) == 0
    assert "hits.png" in capsys.readouterr().err
    sheet = np.asarray(Image.open(sheet_path).convert("RGB")).astype(int)
    assert COLUMNS == 4 and sheet_size(5) == (4 * TILE, 2 * (TILE + CAPTION_HEIGHT))
    assert sheet.shape == (2 * (TILE + CAPTION_HEIGHT), 4 * TILE, 3)

    def tile(i):
        y, x = (i // 4) * (TILE + CAPTION_HEIGHT), (i % 4) * TILE
        return sheet[y:y + TILE, x:x + TILE]

    tiles = [tile(i) for i in range(6)]
    grey = [i for i in range(1, 6) if (tiles[i][TILE // 2, 10] == 160).all()]
    assert len(grey) == 2                 # the broken and the missing file, drawn, not an error
    for a in range(6):
        for b in range(a + 1, 6):         # every tile differs; thumbnails by far
            assert (tiles[a] != tiles[b]).any(), (a, b)
            if a not in grey or b not in grey:
                assert np.abs(tiles[a] - tiles[b]).mean() > 1, (a, b)
    captions = sheet[TILE:TILE + CAPTION_HEIGHT]
    assert (captions < 128).any()         # captions are drawn

    assert cli_main(["search", str(bundle), str(db), "--image", str(names[0]), "-k", "1",
                     "--show", str(tmp_path / "one.png")]) == 0
    one = np.asarray(Image.open(tmp_path / "one.png").convert("RGB"))
    assert one.shape == (TILE + CAPTION_HEIGHT, 2 * TILE, 3)
    assert cli_main(["search", str(bundle), str(db), "x", "--show", str(tmp_path / "a.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err


def measure_quantized(seeds: range = range(4)) -> None:
    """Prints the figures behind QUANT_MIN_COSINE and QUANT_MAX_PROB_DIFF: fp16 and int8 towers
    against the fp32 bundle, for every kind, tokenizer and seed (a few minutes on 2 cores)."""
    import tempfile

    warnings.simplefilter("ignore")
    for tokenizer in TOKENIZERS:
        if tokenizer == "openai" and not HAVE_OPENAI_TOKENIZER:
            print(f"{tokenizer}: skipped, {NO_OPENAI_TOKENIZER}")
            continue
        worst: dict[str, list[float]] = {}
        for kind in KINDS:
            for seed in seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    root = Path(tmp)
                    folder = build_tiny(kind, root / "hf", seed=seed, tokenizer=tokenizer)
                    manifest = export_model(str(folder), root / "fp32", progress=False)
                    fp32 = mmedge.load(root / "fp32", device="cpu")
                    e = Exported(kind, tokenizer, root / "fp32", manifest,
                                 transformers.AutoModel.from_pretrained(folder).eval(),
                                 transformers.AutoProcessor.from_pretrained(folder))
                    ref_image, ref_text, _ = hf_embeddings(e, IMAGES, e.texts)
                    _, _, out = hf_embeddings(e, IMAGES[:1], [f"a photo of a {x}." for x in e.labels])
                    logits = out.logits_per_image[0]
                    expected = (logits.softmax(-1) if kind == "clip" else logits.sigmoid()).numpy()
                    got = dict(fp32.classify(IMAGES[0], e.labels))
                    fp32_figures = (cosines(fp32.embed_images(IMAGES), ref_image).min(),
                                    cosines(fp32.embed_texts(e.texts), ref_text).min(),
                                    max(abs(got[x] - p) for x, p in zip(e.labels, expected)),
                                    manifest["exporter"]["parity"]["max_prob_diff"])
                    w = worst.setdefault("fp32", [1.0, 1.0, 0.0, 0.0])
                    w[:] = (min(w[0], fp32_figures[0]), min(w[1], fp32_figures[1]),
                            max(w[2], fp32_figures[2]), max(w[3], fp32_figures[3]))
                    print(f"{tokenizer} {kind} seed {seed} fp32 vs transformers: cosine image "
                          f"{fp32_figures[0]:.8f} text {fp32_figures[1]:.8f}, prob diff "
                          f"{fp32_figures[2]:.1e}, export's parity prob diff {fp32_figures[3]:.1e}")
                    for precision in ("fp16", "int8"):
                        shutil.copytree(root / "fp32", root / precision)
                        for name in ("image", "text"):
                            file = manifest["components"][name]["file"]
                            quantize_vision(root / "fp32" / file, root / precision / file, precision)
                        write_manifest(root / precision, manifest)
                        quant = mmedge.load(root / precision, device="cpu")
                        image = cosines(quant.embed_images(IMAGES), fp32.embed_images(IMAGES)).min()
                        text = cosines(quant.embed_texts(e.texts), fp32.embed_texts(e.texts)).min()
                        prob = max(abs(dict(quant.classify(im, e.labels))[label]
                                       - dict(fp32.classify(im, e.labels))[label])
                                   for im in IMAGES for label in e.labels)
                        w = worst.setdefault(precision, [1.0, 1.0, 0.0])
                        w[:] = min(w[0], image), min(w[1], text), max(w[2], prob)
                        print(f"{tokenizer} {kind} seed {seed} {precision}: cosine image {image:.7f} "
                              f"text {text:.7f}, prob diff {prob:.2e}", flush=True)
        image, text, prob, parity = worst.pop("fp32")
        print(f"worst {tokenizer} fp32 vs transformers: cosine image {image:.8f} text {text:.8f}, prob "
              f"diff {prob:.1e}, export's parity prob diff {parity:.1e} (bounds {FP32_MIN_COSINE}, "
              f"{FP32_MAX_PROB_DIFF})")
        for precision, (image, text, prob) in worst.items():
            print(f"worst {tokenizer} {precision}: cosine image {image:.7f} text {text:.7f}, "
                  f"prob diff {prob:.2e} (bounds {QUANT_MIN_COSINE[precision]}, "
                  f"{QUANT_MAX_PROB_DIFF[precision]})")


if __name__ == "__main__":
    measure_quantized()


def test_contact_sheet_reads_hits_through_mmedges_loader(tmp_path):
    from PIL import Image

    from mmedge.clip.contact_sheet import MISSING, TILE, write_contact_sheet

    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((1, 4000, 3), 200, dtype=np.uint8)).save(strip)   # shrinks to 0 rows
    eps = tmp_path / "doc.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")  # never Ghostscript
    out = write_contact_sheet(tmp_path / "hits.png", [(str(strip), 0.9), (str(eps), 0.8),
                                                        (str(tmp_path / "gone.png"), 0.7)], "a query")
    sheet = np.asarray(Image.open(out).convert("RGB"))
    # Tiles 2 and 3 (the EPS file and the missing one) are the grey "unreadable"/"missing" boxes.
    for column in (2, 3):
        assert tuple(sheet[TILE // 2 + 40, column * TILE + TILE // 2]) == MISSING[:3]
