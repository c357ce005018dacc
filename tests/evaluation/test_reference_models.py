"""mmedge's reference models (trained here on generated scenes) and the quality gates they carry.

- The scene generator is deterministic, and its questions are answerable from what it drew.
- The committed weights match weights/SHA256SUMS, and a tampered file is refused.
- mmedge-tiny-clip exported fp32 (run through the patch-embedding kernel) gives the torch model's
  held-out figures; its zero-shot accuracy stays above the gate; int8 stays within a few points.
- mmedge-tiny-vlm exported fp32 answers every held-out question exactly as transformers does on the
  same weights; fp32 accuracy stays above the gate; int8 and int4 stay within a few points of it.

The gates are the figures measured when the models were trained (models/weights/*/training.json and
the issue note) minus a margin; they fail if export, quantization or preprocessing costs accuracy.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import mmedge
from mmedge.evaluation import quality as evaluate
from mmedge.evaluation import scenes

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmedge.errors import ExportError  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.models import reference  # noqa: E402

CLIP_SCENES = 300
VLM_SCENES = 24
# Gates (percent): measured on the fp32 bundle over the same held-out scenes, minus a margin.
# mmedge-tiny-clip fp32 bundle, these 300 scenes (77 one-object scenes for colour and shape): colour
# 100, shape 84.4, count 99.7, recall@1 88.7, recall@5 99.3 (training.json, 1000 scenes: 100 / 86.4
# / 99.5 / 81.6 / 93.2). Shape's margin is wider: one of 77 scenes is 1.3 points.
CLIP_GATES = {"zero_shot_colour": 95.0, "zero_shot_shape": 75.0, "zero_shot_count": 95.0, "recall@5": 95.0}
# mmedge-tiny-vlm fp32 bundle, these 24 scenes (100 questions): colour 95.8, shape 100, count 100,
# position 95.2, word 0, all 91.0 (training.json, 100 scenes: 98 / 98 / 99 / 92.0 / 13.6 / 92.4); the
# gates sit about two questions below (one colour question is 4.2 points here).
VLM_GATES = {"exact_colour": 87.0, "exact_shape": 90.0, "exact_count": 90.0, "exact_position": 85.0,
             "exact_all": 88.0}
# Points below fp32, overall. Measured: clip int8 -0.3 (recall@1; shape +3.9); vlm int8 and int4 0
# (91.0 each: int4 requantizes the LoRA-adapted attention weights, the rest keeps the GGUF grid).
# Before int8/int4 were fixed: int8 1.0 (ONNX Runtime's per-tensor dynamic quantization), int4 9.0
# (round-to-nearest on the dequantized GGUF).
QUANTIZED_MAX_DROP = {"clip-int8": 5.0}
FEW_POINTS = 5.0


# ------------------------------------------------------------------------------------------- scenes

def test_scenes_are_deterministic_and_series_differ():
    a, b = scenes.scene(7), scenes.scene(7)
    assert a.objects == b.objects and a.word == b.word
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.image.size == (scenes.SCENE_SIZE, scenes.SCENE_SIZE) and a.image.mode == "RGB"
    held = [scenes.scene(i, scenes.HELD_OUT_SEED) for i in range(50)]
    train = [scenes.scene(i) for i in range(50)]
    assert sum(h.objects == t.objects for h, t in zip(held, train)) < 5


def test_scene_questions_are_answerable_from_the_scene():
    kinds = set()
    for s in scenes.scenes(300, scenes.HELD_OUT_SEED):
        assert 1 <= len(s.objects) <= 4
        assert len({o.shape for o in s.objects}) == len(s.objects)      # "the star" names one object
        assert len({o.colour for o in s.objects}) == len(s.objects)
        assert len({o.position for o in s.objects} | ({s.sign_position} if s.word else set())) \
            == len(s.objects) + (1 if s.word else 0)
        for q in s.questions():
            kinds.add(q.kind)
            if q.kind == "count":
                assert q.answer == str(len(s.objects))
            elif q.kind == "word":
                assert q.answer == s.word and s.word in s.caption()
            elif q.kind == "colour":
                assert [o.colour for o in s.objects if o.shape in q.question] == [q.answer]
            elif q.kind == "shape":
                assert [o.shape for o in s.objects if o.colour in q.question] == [q.answer]
            else:
                assert q.answer in [o.position for o in s.objects]
    assert kinds == set(scenes.QUESTION_KINDS)


def test_scene_draws_each_object_in_its_colour_and_place():
    for i in range(40):
        s = scenes.scene(i, scenes.HELD_OUT_SEED)
        pixels = np.asarray(s.image, np.float32)
        for obj in s.objects:
            x0, x1, y0, y1 = scenes._REGIONS[obj.position]
            box = pixels[int(y0 * 160) - 6:int(y1 * 160) + 6, int(x0 * 160) - 6:int(x1 * 160) + 6]
            distance = np.linalg.norm(box - np.array(scenes.COLOURS[obj.colour], np.float32), axis=-1)
            assert (distance < 40).sum() >= 20, (i, obj)        # a patch of the object's own colour


def test_object_placements_are_where_the_objects_are_drawn():
    # The VLM's pre-alignment targets come from these placements; a drift from the drawing would
    # teach image tokens the wrong words.
    for i in range(40):
        s = scenes.scene(i, scenes.HELD_OUT_SEED)
        pixels = np.asarray(s.image, np.float32)
        for obj, (cx, cy, r) in zip(s.objects, scenes.object_placements(s)):
            x0, x1, y0, y1 = scenes._REGIONS[obj.position]
            assert x0 <= cx <= x1 and y0 <= cy <= y1 and r == pytest.approx(scenes.SIZES[obj.size] / 2)
            # The pixels of the object's colour around it are centred on the placement (a
            # triangle's centroid sits 0.15 r below it), to a pixel of the 160 (measured: 0.4 at most).
            size = scenes.SCENE_SIZE
            y, x = np.mgrid[0:size, 0:size] + 0.5
            near = (x - cx * size) ** 2 + (y - cy * size) ** 2 <= (1.5 * r * size) ** 2
            own = np.linalg.norm(pixels - np.array(scenes.COLOURS[obj.colour]), axis=-1) < 40
            mask = near & own
            centre = np.array([cx, cy + (0.15 * r if obj.shape == "triangle" else 0.0)]) * size
            assert np.abs(np.array([x[mask].mean(), y[mask].mean()]) - centre).max() < 1.0, (i, obj)


def test_vlm_alignment_targets_name_the_patches_each_object_covers():
    from mmedge.models.train_tiny_vlm import BACKGROUND_WORD, patch_words

    grid = 5
    for i in range(30):
        s = scenes.scene(i, scenes.HELD_OUT_SEED)
        words = patch_words(s, grid)
        assert len(words) == grid * grid
        for obj, (cx, cy, r) in zip(s.objects, scenes.object_placements(s)):
            named = [k for k, w in enumerate(words) if w == (obj.colour, obj.shape)]
            assert named, (i, obj)                        # every object names at least one patch
            for k in named:                               # ... and only patches it overlaps
                px, py = (k % grid + 0.5) / grid, (k // grid + 0.5) / grid
                assert np.hypot(px - cx, py - cy) <= r + 0.5 * np.sqrt(2) / grid, (i, obj, k)
        assert all(w == (BACKGROUND_WORD,) or len(w) == 2 for w in words)


@pytest.mark.parametrize("text,expected", [("Red.", "red"), ("It is red", "red"), ("three", "3"),
                                           ("The center", "centre"), ("STOP!", "stop"), ("4", "4")])
def test_normalize_answer(text, expected):
    assert scenes.normalize_answer(text) == expected


# ------------------------------------------------------------------------------------ the weights

def test_committed_weights_match_their_checksums(tmp_path):
    reference.verify(reference.CLIP_DIR)
    reference.verify(reference.VLM_DIR)
    copy = tmp_path / "weights"
    shutil.copytree(reference.WEIGHTS, copy)
    sums = copy / reference.CHECKSUMS.name
    reference.verify(copy / reference.CLIP_DIR.name, sums)
    with open(copy / reference.VLM_DIR.name / reference.PROJECTOR_FILE, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ExportError, match="does not match its sha256"):
        reference.verify(copy / reference.VLM_DIR.name, sums)
    stray = copy / reference.CLIP_DIR.name / reference.LORA_FILE
    stray.write_bytes(b"not checked")
    with pytest.raises(ExportError, match="not listed"):
        reference.verify(copy / reference.CLIP_DIR.name, sums)
    stray.unlink()
    (copy / reference.CLIP_DIR.name / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="missing"):
        reference.verify(copy / reference.CLIP_DIR.name, sums)


def test_lora_adapters_fold_into_the_plain_layers_they_were_trained_on():
    from torch import nn

    from mmedge.models import lora

    torch.manual_seed(0)
    block = nn.ModuleDict({"self_attn": nn.ModuleDict({"q_proj": nn.Linear(12, 8), "v_proj": nn.Linear(12, 4),
                                                       "gate": nn.Linear(12, 12)})})
    plain = {k: v.clone() for k, v in block.state_dict().items()}
    params = lora.attach(block, rank=2, alpha=4.0)
    assert len(params) == 4                                     # q and v only: "gate" is not a target
    for p in params:
        nn.init.normal_(p, std=0.3)
    x = torch.randn(5, 12)
    adapted = {n: block["self_attn"][n](x) for n in ("q_proj", "v_proj")}
    saved = lora.state(block)

    fresh = nn.ModuleDict({"self_attn": nn.ModuleDict({"q_proj": nn.Linear(12, 8), "v_proj": nn.Linear(12, 4),
                                                       "gate": nn.Linear(12, 12)})})
    fresh.load_state_dict(plain)
    assert lora.merge(fresh, saved) == 2
    for name, want in adapted.items():
        got = fresh["self_attn"][name](x)
        before = nn.functional.linear(x, plain[f"self_attn.{name}.weight"], plain[f"self_attn.{name}.bias"])
        assert torch.allclose(got, want, atol=1e-5), name
        assert (got - before).abs().max() > 0.1, name              # the adapters did change the layer
    lora.unwrap(block)                                           # training folds in place the same way
    assert all(isinstance(block["self_attn"][n], nn.Linear) for n in ("q_proj", "v_proj"))
    assert torch.equal(block["self_attn"]["q_proj"].weight, fresh["self_attn"]["q_proj"].weight)
    with pytest.raises(ValueError, match="not a linear layer"):
        lora.merge(nn.ModuleDict({"self_attn": nn.ModuleDict({"gate": nn.Linear(12, 12)})}), saved)


def test_vlm_training_commits_what_it_graded(tmp_path):
    """A few steps of the real training script: it writes the projector, the tuned tower and the
    adapters, and the checkpoint build_tiny_vlm assembles from them answers as the run graded."""
    from transformers import LlavaForConditionalGeneration

    from mmedge.models import tiny, train_tiny_vlm

    out = tmp_path / "run"
    train_tiny_vlm.main(["--scenes", "40", "--samples", "32", "--batch", "8", "--align-steps", "4",
                         "--held-out", "2", "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {reference.PROJECTOR_FILE, reference.TOWER_FILE,
                                                reference.LORA_FILE, "training.json"}
    record = json.loads((out / "training.json").read_text())
    assert record["trained_parameters"] == 443_520 + 921_600    # projector + rank-8 q/k/v/o adapters

    folder = reference.build_tiny_vlm(tmp_path / "hf", trained_dir=out)
    model = LlavaForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    answer = train_tiny_vlm.torch_answerer(model, tiny.load_tokenizer(tiny.IMAGE_TOKEN),
                                           reference.clip_image_processor())
    assert evaluate.vlm_metrics(answer, evaluate.held_out(2)).summary() == record["held_out"]
    from safetensors.torch import load_file

    saved = load_file(str(out / reference.TOWER_FILE))
    tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v.float()) for k, v in saved.items())
    fc1 = "encoder.layers.0.mlp.fc1.weight"                       # tuned away from the tiny CLIP's
    assert not torch.equal(tower[fc1], reference.load_clip().vision_model.state_dict()[fc1])


# ------------------------------------------------------------------------------------- tiny CLIP

@pytest.fixture(scope="module")
def clip_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-clip")
    out = {}
    for precision in ("fp32", "int8"):
        out[precision] = root / precision
        export_model("mmedge-tiny-clip", out[precision], precision=precision, progress=False)
    return out


@pytest.fixture(scope="module")
def clip_figures(clip_bundles):
    held = evaluate.held_out(CLIP_SCENES)
    out = {}
    for precision, path in clip_bundles.items():
        model = mmedge.load(path, device="cpu")
        out[precision] = evaluate.clip_metrics(model.embed_images, model.embed_texts, held)
    return out


def test_tiny_clip_bundle_gives_the_torch_figures(clip_figures):
    from mmedge.models.train_tiny_clip import torch_embedders

    model = reference.load_clip()
    tokenizer = reference.build_clip_tokenizer()
    expected = evaluate.clip_metrics(*torch_embedders(model, tokenizer, reference.clip_image_processor()),
                                     evaluate.held_out(CLIP_SCENES))
    for key, value in expected.items():
        assert clip_figures["fp32"][key] == pytest.approx(value, abs=0.5), key


def test_tiny_clip_quality_gate(clip_figures):
    print("\ntiny-clip held-out figures:", json.dumps(clip_figures))
    fp32 = clip_figures["fp32"]
    for key, gate in CLIP_GATES.items():
        assert fp32[key] >= gate, (key, fp32[key])
    for key in ("zero_shot_colour", "zero_shot_shape", "zero_shot_count", "recall@5"):
        assert clip_figures["int8"][key] >= fp32[key] - QUANTIZED_MAX_DROP["clip-int8"], key


def test_tiny_clip_classifies_a_scene_out_of_the_box(clip_bundles):
    s = next(s for s in evaluate.held_out(200) if len(s.objects) == 1)
    model = mmedge.load(clip_bundles["fp32"], device="cpu")
    ranked = model.classify(s.image, list(scenes.COLOURS), templates=["a photo of a {} shape."])
    assert ranked[0][0] == s.objects[0].colour


# -------------------------------------------------------------------------------------- tiny VLM

@pytest.fixture(scope="module")
def vlm_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vlm")
    folder = reference.build_tiny_vlm(root / "hf")
    out = {"folder": folder}
    for precision in ("fp32", "int8", "int4"):
        out[precision] = root / precision
        export_model(str(folder), out[precision], precision=precision, progress=False)
    return out


@pytest.fixture(scope="module")
def vlm_reports(vlm_bundles):
    held = evaluate.held_out(VLM_SCENES)
    out = {}
    for precision in ("fp32", "int8", "int4"):
        model = mmedge.load(vlm_bundles[precision], device="cpu")
        out[precision] = evaluate.vlm_metrics(
            lambda image, q: model.generate(q, images=[image], max_new_tokens=12), held)
    return out


def test_tiny_vlm_fp32_bundle_answers_as_transformers(vlm_bundles, vlm_reports):
    from transformers import LlavaForConditionalGeneration

    from mmedge.models import tiny
    from mmedge.models.train_tiny_vlm import torch_answerer

    model = LlavaForConditionalGeneration.from_pretrained(str(vlm_bundles["folder"]), dtype=torch.float32).eval()
    answer = torch_answerer(model, tiny.load_tokenizer(tiny.IMAGE_TOKEN), reference.clip_image_processor())
    expected = evaluate.vlm_metrics(answer, evaluate.held_out(VLM_SCENES))
    got = vlm_reports["fp32"].answers
    assert len(got) == len(expected.answers) > 80
    mismatches = [(e, g) for e, g in zip(expected.answers, got) if e[4].strip() != g[4].strip()]
    assert not mismatches, mismatches[:5]


def test_tiny_vlm_quality_gate(vlm_reports):
    print("\ntiny-vlm held-out figures:", json.dumps({p: r.summary() for p, r in vlm_reports.items()}))
    fp32 = vlm_reports["fp32"].summary()
    for key, gate in VLM_GATES.items():
        assert fp32[key] >= gate, (key, fp32[key])


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_tiny_vlm_quantized_within_a_few_points(vlm_reports, precision):
    fp32, low = vlm_reports["fp32"].summary(), vlm_reports[precision].summary()
    assert low["exact_all"] >= fp32["exact_all"] - FEW_POINTS, (low, fp32)


# ------------------------------------------------------------------------------------- mmedge eval

def test_eval_command_grades_a_clip_bundle(clip_bundles, clip_figures, capsys):
    from mmedge.cli import main

    assert main(["eval", str(clip_bundles["fp32"]), "--scenes", str(CLIP_SCENES), "--json", "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["kind"] == "clip" and figures["scenes"] == CLIP_SCENES
    assert figures["zero_shot_colour"] == pytest.approx(clip_figures["fp32"]["zero_shot_colour"])


def test_eval_command_grades_a_vlm_bundle_and_writes_answers(vlm_bundles, vlm_reports, tmp_path, capsys):
    from mmedge.cli import main

    answers = tmp_path / "answers.jsonl"
    assert main(["eval", str(vlm_bundles["int4"]), "--scenes", "4", "--answers", str(answers)]) == 0
    table = capsys.readouterr().out
    assert "exact_colour" in table and "exact_all" in table
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    expected = [(s.index, q.question, q.answer) for s, q in evaluate.vlm_questions(evaluate.held_out(4))]
    assert [(r["scene"], r["question"], r["reference"]) for r in rows] == expected
    # The same bundle, the same questions: the answers the quality gate saw.
    assert [r["answer"] for r in rows] == [a[4] for a in vlm_reports["int4"].answers[:len(rows)]]


def test_eval_command_refuses_text_only_bundles_and_bad_counts(tmp_path, capsys):
    from mmedge.cli import main
    from mmedge.models.tiny import build_tiny_llm

    bundle = tmp_path / "llm"
    export_model(str(build_tiny_llm(tmp_path / "hf")), bundle, progress=False)
    assert main(["eval", str(bundle), "--scenes", "2"]) == 2
    assert "text-only" in capsys.readouterr().err
    assert main(["eval", str(bundle), "--scenes", "0"]) == 2
    assert "--scenes" in capsys.readouterr().err
