"""Small helpers shared by the exporters: a graph's signature for the manifest, and a quiet
torch.onnx export."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import onnx

_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
           onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64",
           onnx.TensorProto.INT32: "int32", onnx.TensorProto.UINT8: "uint8"}


def _describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": _DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
            "shape": shape}


def graph_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs with dtypes and shapes; symbolic dims appear as their names."""
    return {"inputs": [_describe(v) for v in model.graph.input],
            "outputs": [_describe(v) for v in model.graph.output]}


@contextmanager
def quiet_torch_export() -> Iterator[None]:
    """Keep torch.onnx's exporter chatter (missing torchvision ops, deprecations inside torch)
    out of an export's output: none of it is actionable for the user. Errors still surface."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
