"""Qwen3-VL's DeepStack in the builder's decoder graph.

Qwen3-VL feeds the LLM more than the image tokens' embeddings: features from three vision layers
(the tower's `deepstack_visual_indexes`) are added to the hidden states at the image positions
after each of the first three decoder layers (transformers' `Qwen3VLTextModel._deepstack_process`).
onnxruntime-genai's builder writes Qwen3-VL's text decoder (GroupQueryAttention, interleaved M-RoPE,
MatMulNBits) without that step, so this adds it: an input `deepstack_embeds` float [layers, batch,
sequence, hidden] (the features at image positions, zeros elsewhere; the runtime fills it), and
after decoder layer i < layers an Add of its slice i. The Add goes on the skip input of the next
layer's SkipSimplifiedLayerNormalization (the MLP's output), whose residual output is then
residual + mlp + deepstack: layer i's output plus the features, as transformers computes.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from mmedge.errors import ExportError

INPUT = "deepstack_embeds"


def add_deepstack_input(decoder_path: Path, layers: int) -> int:
    """Rewrite the decoder graph at `decoder_path` in place (its external weights untouched);
    return `layers`."""
    model = onnx.load(str(decoder_path), load_external_data=False)
    graph = model.graph
    embeds = next((i for i in graph.input if i.name == "inputs_embeds"), None)
    if embeds is None:
        raise ExportError("the decoder graph has no inputs_embeds; cannot add DeepStack.")
    dims = embeds.type.tensor_type.shape.dim
    shape = [layers] + [d.dim_param or d.dim_value for d in dims]
    graph.input.append(helper.make_tensor_value_info(INPUT, embeds.type.tensor_type.elem_type, shape))
    by_name = {node.name: node for node in graph.node}
    new_nodes = []
    for layer in range(layers):
        target = (by_name.get(f"/model/layers.{layer + 1}/input_layernorm/SkipLayerNorm")
                  or by_name.get(f"/model/layers.{layer + 1}/final_norm_layernorm/SkipLayerNorm"))
        if target is None or target.op_type != "SkipSimplifiedLayerNormalization":
            raise ExportError(f"the decoder graph has no SkipSimplifiedLayerNormalization after "
                              f"layer {layer}; the builder's graph changed, DeepStack cannot be added.")
        prefix = f"/model/deepstack.{layer}"
        index = helper.make_tensor(f"{prefix}/index", TensorProto.INT64, [], [layer])
        graph.initializer.append(index)
        new_nodes.append(helper.make_node("Gather", [INPUT, index.name], [f"{prefix}/slice"],
                                          name=f"{prefix}/Gather", axis=0))
        new_nodes.append(helper.make_node("Add", [target.input[1], f"{prefix}/slice"],
                                          [f"{prefix}/output_0"], name=f"{prefix}/Add"))
        target.input[1] = f"{prefix}/output_0"
    # ONNX wants nodes in topological order: each Gather + Add goes right before its consumer.
    nodes = list(graph.node)
    for pair_start in range(0, len(new_nodes), 2):
        gather, add = new_nodes[pair_start], new_nodes[pair_start + 1]
        consumer = next(i for i, n in enumerate(nodes) if add.output[0] in n.input)
        nodes[consumer:consumer] = [gather, add]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(decoder_path))
    return layers
