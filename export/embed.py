"""The token-embedding graph: `input_ids` [batch, seq] -> `inputs_embeds` [batch, seq, hidden].

Built directly with onnx.helper (one Gather), so it needs no tracing. When the model ties its
input embeddings to the LM head and the decoder keeps that head in fp32, the embedding graph
reads the very bytes of the decoder's `lm_head` weight in `decoder.onnx.data` (a Gather along
axis 1 of the [hidden, vocab] matrix, then a Transpose) instead of storing a second copy: on
SmolLM2-135M that saves 113 MB of a 540 MB bundle. Otherwise the table is stored on its own, in
fp16 for quantized bundles (the decoder's quantization error dominates) and fp32 for fp32 ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_utils import graph_signature

EMBED_FILE = "embed.onnx"
_OPSET = [helper.make_opsetid("", 21)]


def build_embed(out_dir: Path, table: np.ndarray, precision: str, tied: bool) -> dict:
    """Write `embed.onnx` into `out_dir` (next to `decoder.onnx`) and return its manifest entry.

    `table` is the [vocab, hidden] input-embedding matrix, `tied` whether the LM head shares it.
    """
    vocab, hidden = table.shape
    shared = _tied_lm_head(out_dir, vocab, hidden) if tied and precision == "fp32" else None
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                        ["batch", "sequence", hidden])
    if shared is not None:
        # lm_head weight is [hidden, vocab]: gather columns -> [hidden, batch, seq] -> transpose.
        nodes = [helper.make_node("Gather", ["weight", "input_ids"], ["columns"], axis=1),
                 helper.make_node("Transpose", ["columns"], ["inputs_embeds"], perm=[1, 2, 0])]
        init = shared
        stored = "shared with the decoder's lm_head"
    else:
        dtype = np.float32 if precision == "fp32" else np.float16
        init = numpy_helper.from_array(np.ascontiguousarray(table, dtype=dtype), "weight")
        gather_out = "inputs_embeds" if dtype == np.float32 else "gathered"
        nodes = [helper.make_node("Gather", ["weight", "input_ids"], [gather_out], axis=0)]
        if dtype != np.float32:
            nodes.append(helper.make_node("Cast", ["gathered"], ["inputs_embeds"],
                                          to=TensorProto.FLOAT))
        stored = np.dtype(dtype).name
    graph = helper.make_graph(nodes, "embed", [ids], [out], [init])
    model = helper.make_model(graph, opset_imports=_OPSET, producer_name="mmedge")
    path = out_dir / EMBED_FILE
    if shared is not None or init.ByteSize() < (1 << 30):
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        location=EMBED_FILE + ".data", size_threshold=1024)
    return {"file": EMBED_FILE, "precision": "fp32" if shared is not None else stored,
            "storage": stored, **graph_signature(model)}


def _tied_lm_head(out_dir: Path, vocab: int, hidden: int) -> onnx.TensorProto | None:
    """An initializer named 'weight' pointing at the fp32 lm_head weight inside the decoder's
    external data file, or None when the decoder holds no such tensor."""
    decoder = onnx.load(str(out_dir / "decoder.onnx"), load_external_data=False)
    consumers = {n.input[1]: n for n in decoder.graph.node if n.op_type == "MatMul"}
    for init in decoder.graph.initializer:
        node = consumers.get(init.name)
        if node is None or node.output[0] != "logits" or list(init.dims) != [hidden, vocab]:
            continue
        if init.data_type != TensorProto.FLOAT or init.data_location != TensorProto.EXTERNAL:
            return None
        ref = TensorProto()
        ref.CopyFrom(init)
        ref.name = "weight"
        return ref
    return None
