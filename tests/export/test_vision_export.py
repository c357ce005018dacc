"""Vision tower + projector export: ORT output against transformers' own `get_image_features`.

Covers CLIP (CLS token) and SigLIP (none) towers, a single `vision_feature_layer` and a list of them
(concatenated), both select strategies, batch 1 and 3 through one graph exported at batch 2, and the
fp16 / int8 copies. Each model is a tiny seeded LLaVA saved to disk and reloaded, as a user's would be.
The graphs start after the patch embedding; the runtime's path to them (camera frames through the
patch-embedding kernel, mmedge.vision_input) is checked against the full graph from the pixels.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from mmedge import kernels
from mmedge.errors import ExportError, UnsupportedModelError
from mmedge.export import patch_embedding, vision
from mmedge.export.preprocessing import image_spec_from_hf
from mmedge.models import tiny
from mmedge.vision.inputs import VisionInput

CASES = [  # (tower, vision_feature_layer, select strategy)
    ("clip", -2, "default"),
    ("clip", [-2, -1], "full"),
    ("siglip", -2, "full"),
    ("siglip", [-2, -1], "default"),
]


def _case_id(case) -> str:
    tower, layer, strategy = case
    return f"{tower}-{layer if isinstance(layer, int) else '+'.join(map(str, layer))}-{strategy}"


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict:
    """case -> (model reloaded from its HF folder, vision.onnx path, export_vision's returned info)."""
    out = {}
    root = tmp_path_factory.mktemp("vision_export")
    for case in CASES:
        tower, layer, strategy = case
        name = _case_id(case)
        hf_dir = tiny.build_tiny_llava(root / name, vision=tower, text="llama", seed=0,
                                       vision_feature_layer=layer, vision_feature_select_strategy=strategy)
        model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
        onnx_path = root / name / "vision.onnx"
        out[name] = (model, onnx_path, vision.export_vision(model, onnx_path))
    return out


def _pixels(batch: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_transformers(exported, case, batch):
    model, onnx_path, _ = exported[_case_id(case)]
    parity = vision.vision_parity(model, onnx_path, _pixels(batch, seed=batch))
    assert parity["max_abs_diff"] < 1e-4, parity
    assert parity["cosine"] > 0.99999, parity


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_io_description(exported, case):
    model, onnx_path, info = exported[_case_id(case)]
    tower, layer, strategy = case
    patches = (32 // 8) ** 2
    expected_tokens = patches + (tower == "clip") - (strategy == "default")
    assert info["num_image_tokens"] == expected_tokens == model.config.image_seq_length
    width = model.config.vision_config.hidden_size
    assert info["inputs"] == [{"name": "patch_tokens", "dtype": "float32",
                               "shape": ["batch", patches + (tower == "clip"), width]}]
    assert info["outputs"] == [{"name": "image_features", "dtype": "float32",
                                "shape": ["batch", expected_tokens, model.config.text_config.hidden_size]}]
    graph = onnx.load(str(onnx_path)).graph  # what a runtime sees, independent of export_vision's summary
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_processor_agrees_on_token_count(exported):
    """The saved LlavaProcessor expands "<image>" to exactly the number of rows the graph emits."""
    from PIL import Image

    for case in CASES:
        model, onnx_path, info = exported[_case_id(case)]
        processor = transformers.AutoProcessor.from_pretrained(onnx_path.parent)
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
        prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
        batch = processor(images=image, text=prompt, return_tensors="np")
        n = int((batch["input_ids"] == model.config.image_token_id).sum())
        assert n == info["num_image_tokens"], _case_id(case)
        parity = vision.vision_parity(model, onnx_path, batch["pixel_values"])
        assert parity["max_abs_diff"] < 1e-4, parity


def test_unused_final_layer_is_dropped(exported):
    """vision_feature_layer=-2 never reads the last encoder layer: one attention block, not two."""
    ops = lambda name: [n.op_type for n in onnx.load(str(exported[name][1])).graph.node]
    assert ops("clip--2-default").count("Attention") == 1
    assert ops("clip--2+-1-full").count("Attention") == 2


@pytest.mark.parametrize("precision, max_rel, min_cos", [("fp16", 5e-3, 0.9999), ("int8", 0.1, 0.999)])
def test_quantized_copies(exported, tmp_path, precision, max_rel, min_cos):
    model, onnx_path, _ = exported["clip--2-default"]
    out = vision.quantize_vision(onnx_path, tmp_path / f"vision_{precision}.onnx", precision)
    pixels = torch.from_numpy(_pixels(2, seed=7))
    tokens = patch_embedding.torch_patch_tokens(model, pixels).numpy()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"patch_tokens": tokens})[0]
    ref = vision.torch_image_features(model, pixels)
    diff = vision.compare(ref, got)
    assert diff["max_abs_diff"] < max_rel * np.abs(ref).max(), diff
    assert diff["cosine"] > min_cos, diff
    assert diff["max_abs_diff"] > 1e-6, "the lower-precision copy is bit-identical: nothing was converted"
    weight_types = {t.data_type for t in onnx.load(str(out)).graph.initializer}
    assert {"fp16": onnx.TensorProto.FLOAT16, "int8": onnx.TensorProto.INT8}[precision] in weight_types


def test_external_data_and_older_opset(exported, tmp_path):
    """Weights in `vision.onnx.data` beside the graph; opset 18 (no fused Attention op) still matches."""
    model, _, _ = exported["siglip--2+-1-default"]
    out = tmp_path / "vision.onnx"
    vision.export_vision(model, out, opset=18, external_data=True)
    graph = onnx.load(str(out), load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {"vision.onnx.data"}
    assert (tmp_path / "vision.onnx.data").stat().st_size > 50_000  # the encoder layers' and projector's weights
    assert "Attention" not in {n.op_type for n in graph.node}
    parity = vision.vision_parity(model, out, _pixels(2, seed=5))
    assert parity["max_abs_diff"] < 1e-4 and parity["cosine"] > 0.99999, parity


FRAMES = [(37, 53), (240, 320), (481, 640), (8, 300)]   # odd, camera-like, tiny-and-wide frames


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernel_path_matches_full_graph(exported, case, tmp_path):
    """Frames -> patch-embedding kernel -> the bundle's graph equals the full graph (patch conv
    included) on the preprocessed pixels: cosine >= 0.99999 per feature vector in fp32."""
    model, onnx_path, _ = exported[_case_id(case)]
    full = tmp_path / "full.onnx"
    info = vision.export_vision(model, full, tokens_input=False)
    assert info["inputs"][0]["name"] == "pixel_values"
    spec = image_spec_from_hf(json.loads((onnx_path.parent / "preprocessor_config.json").read_text()),
                              model.config.vision_config.to_dict())
    spec["patch_embedding"] = patch_embedding.save_patch_weights(model, tmp_path, vision.image_size(model))
    manifest = {"image": spec, "files": {spec["patch_embedding"]["file"]: {}}}
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in FRAMES]
    reference = ort.InferenceSession(str(full), providers=["CPUExecutionProvider"])
    split = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    paths = ["numpy"] + (["kernel"] if kernels.available() else [])
    for path in paths:
        runtime = VisionInput(tmp_path, manifest, "patch_tokens", prefer_kernel=path == "kernel")
        assert runtime.path == path
        expected = reference.run(None, {"pixel_values": runtime.preprocessor(frames)})[0]
        got = split.run(None, runtime(frames))[0]
        diff = vision.compare(expected, got)
        assert diff["cosine"] >= 0.99999 and diff["max_abs_diff"] < 1e-4, (path, diff)
    # A graph with the patch conv inside (a hand-made bundle) is fed the preprocessed pixels.
    pixels = VisionInput(tmp_path, manifest, "pixel_values")
    assert pixels.path == "pixels"
    np.testing.assert_array_equal(pixels(frames)["pixel_values"], pixels.preprocessor(frames))


def test_rejects_non_llava(exported):
    model, onnx_path, _ = exported["clip--2-default"]
    with pytest.raises(UnsupportedModelError, match="LlavaForConditionalGeneration"):
        vision.export_vision(model.model.language_model, onnx_path.parent / "bad.onnx")
    with pytest.raises(ExportError, match="precision"):
        vision.quantize_vision(onnx_path, onnx_path.parent / "bad.onnx", "int3")
