"""Reusing a checkpoint's own quantization grid (export/grid_reuse.py): detection on synthetic
Q4_1- and Q8_0-style weights, refusal of ordinary float weights, and a real ONNX Runtime run of
the rewritten MatMulNBits (+ fractional zero-point correction) against the float MatMul. Also the
int8 decoder's rewrite (8-bit blocks from any float weight), on a batch whose tokens differ in
range by 1000x, the case ONNX Runtime's per-tensor dynamic quantization loses."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmedge.errors import ExportError
from mmedge.export.grid_reuse import affine4, eight_bit_blocks, reuse_grids, symmetric8

K, N = 96, 40


def q4_1_weight(rng) -> np.ndarray:
    """[K, N] weights as GGUF Q4_1 stores them: per 32-block along K, m + d*q, d and m in fp16."""
    blocks = rng.normal(size=(N, K // 32, 32))
    low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    d = ((high - low) / 15).astype(np.float16).astype(np.float64)
    m = low.astype(np.float16).astype(np.float64)
    q = np.clip(np.rint((blocks - m) / d), 0, 15)
    return (m + d * q).astype(np.float32).reshape(N, K).T.copy()


def q8_0_weight(rng) -> np.ndarray:
    blocks = rng.normal(size=(N, K // 32, 32))
    d = (np.abs(blocks).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float64)
    return (d * np.clip(np.rint(blocks / d), -127, 127)).astype(np.float32).reshape(N, K).T.copy()


def test_detection():
    rng = np.random.default_rng(0)
    assert affine4(q4_1_weight(rng)) is not None
    assert symmetric8(q8_0_weight(rng)) is not None
    plain = rng.normal(size=(K, N)).astype(np.float32)
    assert affine4(plain) is None and symmetric8(plain) is None
    assert affine4(rng.normal(size=(K + 1, N)).astype(np.float32)) is None  # K not a block multiple


def _graphs(tmp_path, weight: np.ndarray):
    """The same one-MatMul model as float (`ref.onnx`) and as a builder-style MatMulNBits node
    named like the builder's (`q.onnx`, RTN-quantized placeholder weights)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])
    float_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer/MatMul")], "g", [x], [y],
        [numpy_helper.from_array(weight, "w")])
    nb = K // 32
    q_graph = helper.make_graph(
        [helper.make_node("MatMulNBits", ["x", "w_Q4", "w_scales"], ["y"], name="/layer/MatMul_Q4",
                          domain="com.microsoft", K=K, N=N, bits=4, block_size=32,
                          accuracy_level=4)],
        "g", [x], [y],
        [numpy_helper.from_array(np.zeros((N, nb, 16), np.uint8), "w_Q4"),
         numpy_helper.from_array(np.ones((N, nb), np.float32), "w_scales")])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    ref, q = tmp_path / "ref.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(float_graph, opset_imports=opsets[:1]), str(ref))
    onnx.save(helper.make_model(q_graph, opset_imports=opsets), str(q))
    return ref, q


@pytest.mark.parametrize("kind", ["affine4", "symmetric8"])
def test_rewritten_graph_matches_float(tmp_path, kind):
    rng = np.random.default_rng(1)
    weight = q4_1_weight(rng) if kind == "affine4" else q8_0_weight(rng)
    ref, q = _graphs(tmp_path, weight)
    counts = reuse_grids(q, ref)
    assert counts[kind] == 1 and counts["requantized"] == 0
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    expected = x @ weight
    run = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # accuracy level 4 quantizes activations to int8: the error is that of the activations only
    scale = np.abs(expected).max()
    assert np.abs(run - expected).max() <= 0.02 * scale


def test_float_weights_are_left_to_the_builder(tmp_path):
    weight = np.random.default_rng(2).normal(size=(K, N)).astype(np.float32)
    ref, q = _graphs(tmp_path, weight)
    assert reuse_grids(q, ref) == {"affine4": 0, "symmetric8": 0, "requantized": 1}


def test_eight_bit_blocks_keep_every_token(tmp_path):
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(K, N)).astype(np.float32)
    ref, q = _graphs(tmp_path, weight)
    assert eight_bit_blocks(q, ref) == {"int8_blocks": 1}
    node = onnx.load(str(q)).graph.node[0]
    assert {a.name: a.i for a in node.attribute}["bits"] == 8
    # One token a thousand times larger than the others (a LLaVA's image token next to text): each
    # token keeps its own activation scale, so the small ones stay within 8-bit error of float.
    x = rng.normal(size=(1, 6, K)).astype(np.float32)
    x[0, 0] *= 1000
    expected = x @ weight
    run = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for t in range(6):
        scale = np.abs(expected[0, t]).max()
        assert np.abs(run[0, t] - expected[0, t]).max() <= 0.03 * scale, t


def test_eight_bit_blocks_refuse_a_weight_they_cannot_rewrite(tmp_path):
    weight = np.random.default_rng(4).normal(size=(K, N)).astype(np.float32)
    ref, q = _graphs(tmp_path, weight)
    float_model = onnx.load(str(ref))
    float_model.graph.node[0].name = "/another/MatMul"       # no float twin for /layer/MatMul_Q4
    onnx.save(float_model, str(ref))
    with pytest.raises(ExportError, match="MatMul_Q4.*--quant int4 or fp32"):
        eight_bit_blocks(q, ref)
