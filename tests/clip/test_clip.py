"""CLIP and SigLIP bundles: tiny seeded `CLIPModel` / `SiglipModel` checkpoints (hidden 32, 2 layers,
32x32 images in 8x8 patches) exported and run by mmedge, compared with transformers.

Both use the real openai/clip-vit-base-patch32 tokenizer from the shared fixtures (no network). Real
SigLIP checkpoints ship a SentencePiece tokenizer that is not available offline, so the tiny SigLIP
model takes the CLIP tokenizer with SigLIP's own text handling: sequences padded to max_length (64,
the model's position count), no attention mask, last-position pooling. That exercises every SigLIP
code path of the exporter and runtime; only the tokenizer model differs from a real checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmedge  # noqa: E402
from mmedge.bundle import write_manifest  # noqa: E402
from mmedge.cli import main as cli_main  # noqa: E402
from mmedge.errors import ExportError, PromptError  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.export.vision import quantize_vision  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT.parent / "shared" / "fixtures" / "hf" / "clip-vit-base-patch32"
if not TOKENIZER_DIR.is_dir():
    pytest.skip(f"the CLIP tokenizer fixture {TOKENIZER_DIR} is absent", allow_module_level=True)

KINDS = ("clip", "siglip")
TEXTS = ["a photo of a cat.", "a red door", "Staircase!", "x",
         "a very long caption about stairs and doors and walls " * 12]   # > 77 tokens: truncated
LABELS = ["door", "staircase", "wall", "a cat sitting on a chair"]
FP32_MIN_COSINE = 0.99999
# Measured against the fp32 bundle on these tiny models (seeds 0-3 of both kinds, IMAGES and TEXTS
# below, LABELS for probabilities): lowest cosine fp16 0.9999993 (image and text), int8 0.99950
# (image) / 0.99938 (text); largest label-probability difference fp16 8.5e-4, int8 0.0164. The fp32
# bundles reach cosine >= 0.9999999 and probabilities within 4e-7 of transformers. The bounds below
# leave a margin of 3x or more over the worst seed.
QUANT_MIN_COSINE = {"fp16": 0.99999, "int8": 0.998}
QUANT_MAX_PROB_DIFF = {"fp16": 3e-3, "int8": 0.05}


def build_tiny(kind: str, out: Path, seed: int = 0) -> Path:
    """A seeded random CLIPModel or SiglipModel saved as a HF folder with the CLIP tokenizer."""
    torch.manual_seed(seed)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(tower, image_size=32, patch_size=8)
    text = dict(tower, vocab_size=49408)
    if kind == "clip":
        config = transformers.CLIPConfig(text_config=dict(text, max_position_embeddings=77),
                                         vision_config=vision, projection_dim=16)
        model = transformers.CLIPModel(config)
        preprocessor = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
                        "crop_size": {"height": 32, "width": 32}}
    else:
        config = transformers.SiglipConfig(
            text_config=dict(text, max_position_embeddings=64, projection_size=32),
            vision_config=vision)
        model = transformers.SiglipModel(config)
        with torch.no_grad():  # SigLIP initializes both to 0; give the sigmoid something to do
            model.logit_scale.fill_(float(np.log(10.0)))
            model.logit_bias.fill_(-2.0)
        preprocessor = {"image_processor_type": "SiglipImageProcessor",
                        "size": {"height": 32, "width": 32}}
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    for f in TOKENIZER_DIR.iterdir():
        if f.name not in ("config.json", "preprocessor_config.json"):
            shutil.copy(f, out / f.name)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return out


def scene(seed: int, size=(97, 61)) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[10:40, 20:60] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


IMAGES = [scene(0), scene(1, (40, 120)), scene(2, (64, 64))]


@pytest.fixture(scope="module", params=KINDS)
def exported(request, tmp_path_factory):
    kind = request.param
    root = tmp_path_factory.mktemp(f"{kind}")
    folder = build_tiny(kind, root / "hf")
    manifest = export_model(str(folder), root / "bundle", progress=False)
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    return kind, root / "bundle", manifest, reference, processor


def hf_text_inputs(kind: str, processor, texts):
    if kind == "clip":
        return processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return processor.tokenizer(texts, padding="max_length", max_length=64, truncation=True,
                               return_tensors="pt")


def hf_embeddings(kind, reference, processor, images, texts):
    """transformers' normalized image and text embeddings, as its forward computes them."""
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    ids = hf_text_inputs(kind, processor, texts)["input_ids"]
    with torch.no_grad():
        out = reference(input_ids=ids, pixel_values=pixels)
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_tokens_and_pixels_match_processor(exported):
    kind, bundle, _, _, processor = exported
    model = mmedge.load(bundle, device="cpu")
    expected = hf_text_inputs(kind, processor, TEXTS)["input_ids"].numpy()
    np.testing.assert_array_equal(model.tokenize(TEXTS), expected)
    pixels = processor.image_processor(IMAGES, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(model.preprocess(IMAGES), pixels, atol=1e-5)


def test_embeddings_match_transformers(exported):
    kind, bundle, _, reference, processor = exported
    model = mmedge.load(bundle, device="cpu")
    assert type(model).__name__ == "ClipModel" and model.kind == kind
    ref_image, ref_text, _ = hf_embeddings(kind, reference, processor, IMAGES, TEXTS)
    image = model.embed_images(IMAGES, batch_size=2)   # two batches: 2 + 1
    text = model.embed_texts(TEXTS)
    assert image.shape == ref_image.shape and text.shape == ref_text.shape
    assert image.dtype == text.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image, axis=-1), 1, atol=1e-5)
    assert cosines(image, ref_image).min() >= FP32_MIN_COSINE
    assert cosines(text, ref_text).min() >= FP32_MIN_COSINE


def test_classify_matches_transformers(exported):
    kind, bundle, _, reference, processor = exported
    model = mmedge.load(bundle, device="cpu")
    prompts = [f"a photo of a {label}." for label in LABELS]
    _, _, out = hf_embeddings(kind, reference, processor, IMAGES[:1], prompts)
    logits = out.logits_per_image[0]
    expected = (logits.softmax(-1) if kind == "clip" else logits.sigmoid()).numpy()
    ranked = model.classify(IMAGES[0], LABELS)
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    got = dict(ranked)
    np.testing.assert_allclose([got[label] for label in LABELS], expected, atol=1e-4)
    if kind == "clip":
        assert abs(sum(got.values()) - 1) < 1e-6


def test_templates_are_averaged(exported):
    """Several templates: normalized text embeddings averaged per label, renormalized."""
    kind, bundle, _, reference, processor = exported
    model = mmedge.load(bundle, device="cpu")
    templates = ["a photo of a {}.", "a drawing of the {}", "{}"]
    prompts = [t.format(label) for label in LABELS for t in templates]
    image, text, _ = hf_embeddings(kind, reference, processor, IMAGES[:1], prompts)
    labels = text.reshape(len(LABELS), len(templates), -1).mean(1)
    labels /= np.linalg.norm(labels, axis=-1, keepdims=True)
    scale = reference.logit_scale.exp().item()
    logits = torch.tensor(scale * labels @ image[0])
    if kind == "clip":
        expected = logits.softmax(-1).numpy()
    else:
        expected = (logits + reference.logit_bias.item()).sigmoid().numpy()
    got = dict(model.classify(IMAGES[0], LABELS, templates=templates))
    np.testing.assert_allclose([got[label] for label in LABELS], expected, atol=1e-4)


def test_manifest(exported):
    kind, bundle, manifest, reference, _ = exported
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
    assert (text["max_length"], text["padding"]) == ((77, "longest") if kind == "clip"
                                                     else (64, "max_length"))
    parity = manifest["exporter"]["parity"]
    assert min(parity["image_cosine"], parity["text_cosine"]) >= FP32_MIN_COSINE
    assert parity["max_prob_diff"] < 1e-4
    assert manifest["quantization"] == {"image": "fp32", "text": "fp32"}


def test_bad_labels_and_templates(exported):
    _, bundle, _, _, _ = exported
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


def test_image_embedding_cache(exported):
    _, bundle, _, _, _ = exported
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
def test_quantized_towers_within_bounds(exported, tmp_path, precision):
    """Both towers quantized (as `--quant` does) against the fp32 bundle's embeddings."""
    kind, bundle, manifest, _, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    for name in ("image", "text"):
        path = copy / manifest["components"][name]["file"]
        quantize_vision(bundle / path.name, path, precision)
    write_manifest(copy, manifest)
    fp32, quant = mmedge.load(bundle, device="cpu"), mmedge.load(copy, device="cpu")
    assert cosines(quant.embed_images(IMAGES), fp32.embed_images(IMAGES)).min() >= QUANT_MIN_COSINE[precision]
    assert cosines(quant.embed_texts(TEXTS), fp32.embed_texts(TEXTS)).min() >= QUANT_MIN_COSINE[precision]
    for image in IMAGES:
        ours, ref = dict(quant.classify(image, LABELS)), dict(fp32.classify(image, LABELS))
        assert max(abs(ours[label] - ref[label]) for label in LABELS) <= QUANT_MAX_PROB_DIFF[precision]


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
    kind, bundle, _, _, _ = exported
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    IMAGES[0].save(photos / "a.png")
    IMAGES[1].save(photos / "sub" / "b.jpg")
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")

    assert cli_main(["classify", str(bundle), str(photos / "a.png"), "--labels", "door, wall,stairs",
                     "--json", "--device", "cpu"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert sorted(r["label"] for r in ranked) == ["door", "stairs", "wall"]
    assert cli_main(["classify", str(bundle), str(photos / "a.png"), "--labels", "door,stairs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["label", "probability"] and len(table) == 3
    assert cli_main(["classify", str(bundle), str(photos / "a.png"), "--labels", "door,door"]) == 2
    assert "duplicated: 'door'" in capsys.readouterr().err

    out = tmp_path / "emb.npy"
    assert cli_main(["embed", str(bundle), str(photos), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "notes.txt" in err and "broken.jpg" in err
    rows = (tmp_path / "emb.rows.txt").read_text().splitlines()
    assert rows == [str(photos / "a.png"), str(photos / "sub" / "b.jpg")]
    model = mmedge.load(bundle, device="cpu")
    np.testing.assert_allclose(np.load(out), model.embed_images(rows), atol=1e-6)
    assert cli_main(["embed", str(bundle), "--text", "a door", "--text", "x", "-o", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), model.embed_texts(["a door", "x"]), atol=1e-6)
    assert cli_main(["run", str(bundle), "-p", "hi"]) == 2
    assert "holds a 'clip' model" in capsys.readouterr().err


def test_runtime_does_not_import_torch(exported, tmp_path):
    _, bundle, _, _, _ = exported
    image = tmp_path / "a.png"
    IMAGES[0].save(image)
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'python')!r}); import mmedge; "
            f"m = mmedge.load({str(bundle)!r}, device='cpu'); m.classify({str(image)!r}, ['a', 'b']); "
            f"m.embed_texts(['x']); "
            f"bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers')]; "
            f"assert not bad, bad; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_index_incremental_resumable_and_search(exported, tmp_path, capsys):
    from mmedge.clip.index import ImageIndex

    _, bundle, manifest, _, _ = exported
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
        text = model.embed_texts(["a red door"])[0]
        hits = index.search("a red door", k=3)
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
    assert cli_main(["search", str(bundle), str(db), "a red door", "-k", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert cli_main(["search", str(other), str(db), "a red door"]) == 2


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws its bar."""

    def isatty(self) -> bool:
        return True


def test_progress_bars(exported, tmp_path, monkeypatch):
    """`index` and `embed` draw a bar (files done / total, skipped files in the postfix) on a
    terminal only; progress=False draws none."""
    from mmedge.clip.index import ImageIndex

    _, bundle, _, _, _ = exported
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
    from mmedge.clip.index import ImageIndex

    _, bundle, _, _, _ = exported
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
    assert cli_main(["search", str(bundle), str(db), "a red door", "-k", "5",
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
