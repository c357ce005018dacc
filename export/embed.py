"""The token-embedding graph: `input_ids` [batch, seq] -> `inputs_embeds` [batch, seq, hidden].

Built directly with onnx.helper, so it needs no tracing. The table is the largest tensor of a small
model (SmolLM2-135M: 49152 x 576, 113 MB in fp32), so it is stored only once where it can be:

  tied embeddings, the decoder's lm_head in fp32 or fp16 (MatMul [hidden, vocab]): the graph reads
      those very bytes in `decoder.onnx.data` (Gather along axis 1, Transpose, Cast for fp16);
  tied embeddings, a quantized lm_head (MatMulNBits, 4 or 8 bits, integer or no zero points): the
      graph reads the lm_head's packed blocks and scales in `decoder.onnx.data` through ONNX
      Runtime's GatherBlockQuantized (com.microsoft), which gathers rows of the same block layout
      as MatMulNBits (onnxruntime-genai's builder does the same for its `shared_embeddings`). From
      the SmolLM2 GGUF the lm_head keeps the file's Q8_0 grid (grid_reuse.py), so the rows it
      gathers equal the fp32 table exactly;
  otherwise (untied, or an lm_head whose grid has a fractional zero point): its own table in
      `embed.onnx`, fp32 for fp32 bundles, fp16 for fp16 ones, and 8-bit symmetric blocks of 32 for
      int8/int4 ones (GatherBlockQuantized again; exact for a table on a GGUF Q8_0 grid).

Every table is checked after it is written: the graph is run over the whole vocabulary and
compared with the fp32 table; the difference goes into the manifest (`table_error`), and a
difference no quantization could explain (a layout mistake) fails the export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mmedge.errors import ExportError

from .grid_reuse import BLOCK, symmetric8
from .onnx_utils import graph_signature

EMBED_FILE = "embed.onnx"
_OPSET = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
# |table - gathered| / |table| (RMS over the whole table) above this is a bug, not rounding:
# 4-bit symmetric blocks of 32 give about 0.1, 8-bit about 0.005, a wrong layout about 1.4.
_MAX_REL_RMS = 0.25


def build_embed(out_dir: Path, table: np.ndarray, precision: str, tied: bool) -> dict:
    """Write `embed.onnx` into `out_dir` (next to `decoder.onnx`) and return its manifest entry.

    `table` is the [vocab, hidden] input-embedding matrix, `tied` whether the LM head shares it.
    """
    vocab, hidden = table.shape
    built = _from_lm_head(out_dir, vocab, hidden) if tied else None
    if built is None:
        built = _own_table(table, precision)
    nodes, inits, precision_name, storage = built
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    out = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT,
                                        ["batch", "sequence", hidden])
    graph = helper.make_graph(nodes, "embed", [ids], [out], inits)
    model = helper.make_model(graph, opset_imports=_OPSET, producer_name="mmedge")
    path = out_dir / EMBED_FILE
    inline = sum(i.ByteSize() for i in inits if i.data_location != TensorProto.EXTERNAL)
    if inline < (1 << 30):
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        location=EMBED_FILE + ".data", size_threshold=1024)
    error = table_error(path, table)
    if error["rel_rms"] > _MAX_REL_RMS:
        raise ExportError(f"The embedding graph ({storage}) gives rows that differ from the "
                          f"model's table by {error['rel_rms']:.3f} (relative RMS): this is a bug "
                          f"in mmedge's export, please report it. Exporting with --quant fp32 "
                          f"avoids this code path.")
    return {"file": EMBED_FILE, "precision": precision_name, "storage": storage,
            "table_error": error, **graph_signature(model)}


def table_error(path: Path, table: np.ndarray, chunk: int = 8192) -> dict[str, float]:
    """Run the embedding graph at `path` over every token id and compare with `table` (fp32):
    the largest absolute difference and the RMS difference relative to the table's RMS."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst, squared = 0.0, 0.0
    for start in range(0, table.shape[0], chunk):
        ids = np.arange(start, min(start + chunk, table.shape[0]), dtype=np.int64)[None]
        diff = session.run(None, {"input_ids": ids})[0][0].astype(np.float64) - table[ids[0]]
        worst = max(worst, float(np.abs(diff).max()))
        squared += float((diff * diff).sum())
    norm = float(np.sqrt((table.astype(np.float64) ** 2).sum())) or 1.0
    return {"max_abs": worst, "rel_rms": float(np.sqrt(squared)) / norm}


_Built = tuple[list[onnx.NodeProto], list[onnx.TensorProto], str, str]


def _own_table(table: np.ndarray, precision: str) -> _Built:
    """A Gather over the table stored in embed.onnx itself."""
    if precision in ("int8", "int4") and table.shape[1] % BLOCK == 0:
        packed, scales = symmetric8(table.T, exact=False)   # blocks of 32 along hidden, per row
        vocab, hidden = table.shape
        inits = [numpy_helper.from_array(packed.reshape(vocab, hidden), "weight"),
                 numpy_helper.from_array(scales, "weight_scales")]
        nodes = [_gather_blocks("weight", "weight_scales", None, bits=8, block_size=BLOCK,
                                out="inputs_embeds")]
        return nodes, inits, "int8", "int8 blocks of 32"
    dtype = np.float32 if precision == "fp32" else np.float16
    init = numpy_helper.from_array(np.ascontiguousarray(table, dtype=dtype), "weight")
    gather_out = "inputs_embeds" if dtype == np.float32 else "gathered"
    nodes = [helper.make_node("Gather", ["weight", "input_ids"], [gather_out], axis=0)]
    if dtype != np.float32:
        nodes.append(helper.make_node("Cast", ["gathered"], ["inputs_embeds"], to=TensorProto.FLOAT))
    name = np.dtype(dtype).name
    return nodes, [init], name, name


def _gather_blocks(data: str, scales: str, zero_points: str | None, bits: int, block_size: int,
                   out: str) -> onnx.NodeProto:
    inputs = [data, "input_ids", scales] + ([zero_points] if zero_points else [])
    return helper.make_node("GatherBlockQuantized", inputs, [out], domain="com.microsoft",
                            gather_axis=0, quantize_axis=1, block_size=block_size, bits=bits)


def _alias(init: onnx.TensorProto, name: str, dims: list[int]) -> onnx.TensorProto:
    """`init` under another name and shape: for an external tensor, a reference to the same bytes
    of the decoder's data file (nothing is copied); a small inline one is copied."""
    ref = TensorProto()
    ref.CopyFrom(init)
    ref.name = name
    del ref.dims[:]
    ref.dims.extend(dims)
    return ref


def _from_lm_head(out_dir: Path, vocab: int, hidden: int) -> _Built | None:
    """Nodes and initializers that read the decoder's lm_head weight as the embedding table, or
    None when the decoder's lm_head cannot be read that way (see the module docstring)."""
    decoder = onnx.load(str(out_dir / "decoder.onnx"), load_external_data=False)
    inits = {i.name: i for i in decoder.graph.initializer}
    head = next((n for n in decoder.graph.node if "logits" in n.output), None)
    if head is None:
        return None
    if head.op_type == "Cast" and head.input[0]:   # an fp16 graph may cast its logits
        head = next((n for n in decoder.graph.node if head.input[0] in n.output), None)
        if head is None:
            return None
    if head.op_type == "MatMul":
        weight = inits.get(head.input[1])
        if (weight is None or list(weight.dims) != [hidden, vocab]
                or weight.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16)
                or weight.data_location != TensorProto.EXTERNAL):
            return None
        # lm_head weight is [hidden, vocab]: gather columns -> [hidden, batch, seq] -> transpose.
        fp16 = weight.data_type == TensorProto.FLOAT16
        nodes = [helper.make_node("Gather", ["weight", "input_ids"], ["columns"], axis=1),
                 helper.make_node("Transpose", ["columns"], ["rows" if fp16 else "inputs_embeds"],
                                  perm=[1, 2, 0])]
        if fp16:
            nodes.append(helper.make_node("Cast", ["rows"], ["inputs_embeds"], to=TensorProto.FLOAT))
        kind = "fp16" if fp16 else "fp32"
        return (nodes, [_alias(weight, "weight", [hidden, vocab])], kind,
                "shared with the decoder's lm_head" + (" (fp16)" if fp16 else ""))
    if head.op_type == "MatMulNBits" and head.domain == "com.microsoft":
        return _from_matmul_nbits(head, inits, vocab, hidden)
    return None


def _from_matmul_nbits(head: onnx.NodeProto, inits: dict[str, onnx.TensorProto], vocab: int,
                       hidden: int) -> _Built | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    bits, block_size = attrs.get("bits", 4), attrs.get("block_size")
    if (attrs.get("K") != hidden or attrs.get("N") != vocab or bits not in (4, 8)
            or not block_size or hidden % block_size):
        return None
    # inputs: A, B, scales, zero_points, g_idx, bias; only the first four may be used here.
    extra = [name for name in head.input[4:] if name]
    b, scales = inits.get(head.input[1]), inits.get(head.input[2])
    zp_name = head.input[3] if len(head.input) > 3 and head.input[3] else None
    zero_points = inits.get(zp_name) if zp_name else None
    if extra or b is None or scales is None or (zp_name and zero_points is None):
        return None
    if b.data_type != TensorProto.UINT8 or (zero_points is not None
                                            and zero_points.data_type != TensorProto.UINT8):
        return None   # float zero points: GatherBlockQuantized takes only packed integer ones
    if scales.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        return None
    blocks = hidden // block_size
    # MatMulNBits B is [N, blocks, block_size * bits / 8]: row n's packed bytes, contiguous, which is
    # GatherBlockQuantized's uint8 data [vocab, hidden * bits / 8] (two 4-bit values per byte, low
    # nibble first, in both ops). Scales [N * blocks] -> [vocab, blocks]; 4-bit zero points are
    # packed two per byte along the blocks in both ops.
    new = [_alias(b, "weight", [vocab, hidden * bits // 8]),
           _alias(scales, "weight_scales", [vocab, blocks])]
    if zero_points is not None:
        new.append(_alias(zero_points, "weight_zero_points",
                          [vocab, blocks if bits == 8 else (blocks + 1) // 2]))
    fp16 = scales.data_type == TensorProto.FLOAT16
    nodes = [_gather_blocks("weight", "weight_scales", "weight_zero_points" if zero_points else None,
                            bits=bits, block_size=block_size,
                            out="rows" if fp16 else "inputs_embeds")]
    if fp16:
        nodes.append(helper.make_node("Cast", ["rows"], ["inputs_embeds"], to=TensorProto.FLOAT))
    return nodes, new, f"int{bits}", (f"shared with the decoder's lm_head ({bits}-bit blocks of "
                                      f"{block_size})")
