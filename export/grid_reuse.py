"""Keep a checkpoint's own quantization grid instead of quantizing it a second time.

A model imported from GGUF arrives dequantized: every Q4_1 block of 32 weights holds at most 16
equally spaced values (w = m + d*q), every Q8_0 block at most 255 (w = d*q). Quantizing those
weights again with round-to-nearest int4 moves most of them off their grid and compounds the
error (measured on SmolLM2-135M: greedy answers drift from the fp32 reference within a few
tokens). This module detects, block by block, weights that already lie on a 4-bit affine or an
8-bit symmetric grid and writes them into MatMulNBits exactly. A weight is reused only if every
one of its blocks reconstructs within `REL_TOL` of its largest magnitude; otherwise the
builder's own quantization stays.

4-bit: the grid's zero point -m/d is fractional, and ONNX Runtime's fast MatMulNBits kernels
take only integer zero points (a float one drops to a dequantize-everything path, ~20x slower).
So the integer part z goes into MatMulNBits and the fractional part f is subtracted after it:
    A @ W = MatMulNBits(A; q, d, z) - (blocksum(A) @ C),   C[b, n] = d[n, b] * f[n, b]
where blocksum(A) sums each 32-wide block of A's features: a [.., K/32] x [K/32, N] product,
3% of the main one for K = 576. 8-bit: the op's implicit zero point 128 is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from mmedge.errors import ExportError

BLOCK = 32
REL_TOL = 1e-5


def _blocks(weight: np.ndarray) -> np.ndarray:
    """MatMul weight [K, N] -> [N, K/BLOCK, BLOCK] (blocks run along K, as MatMulNBits packs)."""
    k, n = weight.shape
    return np.ascontiguousarray(weight.T, dtype=np.float64).reshape(n, k // BLOCK, BLOCK)


def _close(recon: np.ndarray, blocks: np.ndarray) -> bool:
    scale = np.abs(blocks).max(axis=-1, keepdims=True) + 1e-30
    return bool((np.abs(recon - blocks) <= REL_TOL * scale).all())


def affine4(weight: np.ndarray):
    """(packed uint8 [N, nb, 16], scales [N, nb], integer zero points uint8 [N, nb], fractional
    zero-point correction C [nb, N]) if every block of `weight` holds values m + d*q with q in
    0..15 (GGUF Q4_1, Q4_0), else None."""
    if weight.shape[0] % BLOCK:
        return None
    blocks = _blocks(weight)
    low, high = blocks.min(axis=-1), blocks.max(axis=-1)
    step = (high - low) / 15.0
    flat = step == 0
    # A constant block: q = 1, zero point 0, scale = the value.
    step_safe = np.where(flat, 1.0, step)
    q = np.where(flat[..., None], 1.0, np.rint((blocks - low[..., None]) / step_safe[..., None]))
    q = np.clip(q, 0, 15)
    scales = np.where(flat, low, step)
    zero = np.where(flat, 0.0, -low / step_safe)
    if not _close((q - zero[..., None]) * scales[..., None], blocks):
        return None
    zero_int = np.clip(np.rint(zero), 0, 15)
    correction = (scales * (zero - zero_int)).T          # [nb, N]
    q = q.astype(np.uint8)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    zint = zero_int.astype(np.uint8)                      # packed two per byte along blocks
    if zint.shape[1] % 2:
        zint = np.concatenate([zint, np.zeros_like(zint[:, :1])], axis=1)
    zp_packed = zint[:, 0::2] | (zint[:, 1::2] << 4)
    return packed, scales.astype(np.float32), zp_packed, correction.astype(np.float32)


def symmetric8(weight: np.ndarray, exact: bool = True):
    """(packed uint8 [N, nb, 32], scales [N, nb]) if every block holds values d*q with integer q
    in -127..127 (GGUF Q8_0), else None. Stored as q + 128 (MatMulNBits' default zero point).
    exact=False rounds any weight to that grid (round-to-nearest, d = max |w| / 127 per block)."""
    if weight.shape[0] % BLOCK:
        return None
    blocks = _blocks(weight)
    step = np.abs(blocks).max(axis=-1) / 127.0
    step_safe = np.where(step == 0, 1.0, step)
    q = np.clip(np.rint(blocks / step_safe[..., None]), -127, 127)
    if exact and not _close(q * step[..., None], blocks):
        return None
    return (q + 128).astype(np.uint8), step.astype(np.float32)


def eight_bit_blocks(quantized: Path, reference: Path) -> dict[str, int]:
    """Rewrite every 4-bit MatMulNBits of the graph at `quantized` as 8-bit blocks of 32 (symmetric,
    round-to-nearest) from the float weights of the same builder's graph at `reference`. With the
    builder's accuracy level 4 the activations are quantized to int8 per block of 32 features of
    each token, so no token's range sets another's scale. Returns counts. A 4-bit node that cannot
    be rewritten is refused (an "int8" bundle with 4-bit layers in it would be a silent lie)."""
    model = onnx.load(str(quantized))
    float_weights = _float_weights(onnx.load(str(reference)))
    inits = {i.name: i for i in model.graph.initializer}
    counts = {"int8_blocks": 0}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        weight = float_weights.get(node.name.removesuffix("_Q4")) if node.name.endswith("_Q4") else None
        found = symmetric8(weight, exact=False) if weight is not None else None
        if found is None or (len(node.input) > 3 and node.input[3]):
            raise ExportError(f"int8: the 4-bit MatMul {node.name!r} has no matching float weight in the "
                              f"builder's fp32 graph, so it cannot be made 8-bit. Export with --quant "
                              f"int4 or fp32 instead.")
        packed, scales = found
        _set(inits, node.input[1], packed)
        _set(inits, node.input[2], scales.reshape(inits[node.input[2]].dims))
        for a in node.attribute:
            if a.name == "bits":
                a.CopyFrom(helper.make_attribute("bits", 8))
        counts["int8_blocks"] += 1
    _save(model, quantized)
    return counts


def _float_weights(float_model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """MatMul node name -> its float weight [K, N], for the MatMuls whose weight is an initializer."""
    inits = {i.name: i for i in float_model.graph.initializer}
    return {n.name: numpy_helper.to_array(inits[n.input[1]]) for n in float_model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits}


def _save(model: onnx.ModelProto, path: Path) -> None:
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def reuse_grids(quantized: Path, reference: Path) -> dict[str, int]:
    """Rewrite the MatMulNBits weights of the graph at `quantized` from the float MatMul weights of
    the same builder's graph at `reference` wherever they lie on a grid. Returns counts."""
    model = onnx.load(str(quantized))
    float_weights = _float_weights(onnx.load(str(reference)))
    inits = {i.name: i for i in model.graph.initializer}
    counts = {"affine4": 0, "symmetric8": 0, "requantized": 0}
    block_sums: dict[str, str] = {}      # activation -> its block sums, shared by its consumers
    extra_nodes: list[onnx.NodeProto] = []
    for node in list(model.graph.node):
        if node.op_type != "MatMulNBits" or not node.name.endswith("_Q4"):
            continue
        weight = float_weights.get(node.name[: -len("_Q4")])
        if weight is None:
            counts["requantized"] += 1
            continue
        attrs = {a.name: a for a in node.attribute}
        if (found := affine4(weight)) is not None:
            packed, scales, zp_packed, correction = found
            _set(inits, node.input[1], packed)
            _set(inits, node.input[2], scales.reshape(inits[node.input[2]].dims))
            zp_name = node.input[1] + "_grid_zero_points"
            model.graph.initializer.append(numpy_helper.from_array(zp_packed.reshape(-1), zp_name))
            while len(node.input) < 4:
                node.input.append("")
            node.input[3] = zp_name
            extra_nodes += _subtract_correction(model, node, correction, block_sums)
            counts["affine4"] += 1
        elif (found := symmetric8(weight)) is not None:
            packed, scales = found
            _set(inits, node.input[1], packed)
            _set(inits, node.input[2], scales.reshape(inits[node.input[2]].dims))
            attrs["bits"].CopyFrom(helper.make_attribute("bits", 8))
            counts["symmetric8"] += 1
        else:
            counts["requantized"] += 1
    model.graph.node.extend(extra_nodes)
    _toposort(model.graph)
    _save(model, quantized)
    return counts


def _set(inits: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    tensor = numpy_helper.from_array(value, name)
    inits[name].CopyFrom(tensor)


def _subtract_correction(model: onnx.ModelProto, node: onnx.NodeProto, correction: np.ndarray,
                         block_sums: dict[str, str]) -> list[onnx.NodeProto]:
    """Rewire `node` so its consumers see MatMulNBits(...) - blocksum(A) @ correction."""
    activation, output = node.input[0], node.output[0]
    nb = correction.shape[0]
    new: list[onnx.NodeProto] = []
    if activation not in block_sums:
        # blocksum(A) = A @ I, with I[k, b] = 1 where feature k lies in block b: one small MatMul
        # (K x K/32) rather than a Reshape + ReduceSum pair, i.e. one node fewer per activation.
        # I depends only on K: one initializer per K for the whole graph (one per activation was
        # 12.5 MB of identical 0/1 matrices in SmolLM2-135M's int4 bundle).
        ind_name, summed = f"grid/block_indicator_K{nb * BLOCK}", f"{node.name}/grid/block_sums"
        if not any(i.name == ind_name for i in model.graph.initializer):
            indicator = np.kron(np.eye(nb, dtype=np.float32), np.ones((BLOCK, 1), dtype=np.float32))
            model.graph.initializer.append(numpy_helper.from_array(indicator, ind_name))
        new.append(helper.make_node("MatMul", [activation, ind_name], [summed], name=summed))
        block_sums[activation] = summed
    weight = f"{node.name}/grid/correction"
    model.graph.initializer.append(numpy_helper.from_array(correction, weight))
    raw, fix = f"{node.name}/grid/raw", f"{node.name}/grid/fix"
    node.output[0] = raw
    new += [helper.make_node("MatMul", [block_sums[activation], weight], [fix], name=fix),
            helper.make_node("Sub", [raw, fix], [output], name=f"{node.name}/grid/sub")]
    return new


def _toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so every input is produced before it is used (ONNX requires it); Kahn's
    algorithm, keeping the original order among nodes that are ready together."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    nodes = list(graph.node)
    waiting_on = [sum(1 for i in set(n.input) if i not in available) for n in nodes]
    consumers: dict[str, list[int]] = {}
    for index, n in enumerate(nodes):
        for name in set(n.input) - available:
            consumers.setdefault(name, []).append(index)
    ready = [i for i, count in enumerate(waiting_on) if count == 0]
    ordered = []
    while ready:
        index = ready.pop(0)
        ordered.append(nodes[index])
        for name in nodes[index].output:
            for consumer in consumers.get(name, []):
                waiting_on[consumer] -= 1
                if waiting_on[consumer] == 0:
                    ready.append(consumer)
    if len(ordered) != len(nodes):
        raise ValueError("graph has a cycle or a missing input")
    del graph.node[:]
    graph.node.extend(ordered)
