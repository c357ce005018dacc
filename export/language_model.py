"""The language-model half every bundle shares: decoder graph, embedding graph, text section.

Family recipes hand it an HF causal-LM folder (for a VLM, the text model split out of the
checkpoint by `split_text_model`) and the torch model whose input embeddings become `embed.onnx`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmedge.errors import UnsupportedModelError

from .context import ExportContext
from .decoder import build_decoder
from .embed import build_embed
from .text_spec import build_text_spec

SUPPORTED_TEXT_MODELS = ("llama", "qwen2", "mistral")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json", "added_tokens.json")


def split_text_model(text_model: Any, lm_head: Any, text_config: Any, target: Path,
                     tokenizer_folder: Path) -> Path:
    """Save a VLM's text model (the decoder stack without its head) + LM head as a standalone
    causal-LM folder with the checkpoint's tokenizer files, for the decoder builder."""
    from transformers import AutoModelForCausalLM

    causal = AutoModelForCausalLM.from_config(text_config)
    causal.model.load_state_dict(text_model.state_dict())
    causal.lm_head.load_state_dict(lm_head.state_dict())
    causal.config.architectures = [type(causal).__name__]
    target.mkdir(parents=True, exist_ok=True)
    causal.save_pretrained(str(target))
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).exists():
            (target / name).write_bytes((tokenizer_folder / name).read_bytes())
    return target


def export_language_model(ctx: ExportContext, lm_folder: Path, causal_lm: Any,
                          text_config: dict[str, Any],
                          supported: tuple[str, ...] = SUPPORTED_TEXT_MODELS) -> None:
    """`supported`: the text model types this caller's decoder folder may hold (a Qwen-VL recipe
    hands the builder its own text model type)."""
    model_type = text_config.get("model_type")
    if model_type not in supported:
        raise UnsupportedModelError(f"The text model is '{model_type}'; mmedge supports "
                                    f"{', '.join(supported)}.")
    ctx.step("decoder graph")
    # Any checkpoint, not only a .gguf import, may hold weights dequantized from GGUF (a LLaVA built
    # around one, as mmedge-tiny-vlm is): grid reuse detects the grid per weight, exactly, and leaves
    # every other weight to the builder's quantization.
    decoder = build_decoder(lm_folder, ctx.out_dir, ctx.precision, reuse_grid=not ctx.requantize)
    ctx.step("embedding graph")
    table = causal_lm.get_input_embeddings().weight.detach().float().numpy()
    head = causal_lm.get_output_embeddings().weight.detach().float().numpy()
    tied = head.shape == table.shape and bool((head == table).all())
    embed = build_embed(ctx.out_dir, table, ctx.precision, tied)
    ctx.manifest.setdefault("components", {}).update({"embed": embed, "decoder": decoder})
    heads = text_config["num_attention_heads"]
    hidden = text_config["hidden_size"]
    ctx.manifest["decoder"] = {
        "model_type": model_type,
        "num_layers": text_config["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_kv_heads": text_config.get("num_key_value_heads") or heads,
        "head_dim": text_config.get("head_dim") or hidden // heads,
        "hidden_size": hidden,
        "vocab_size": table.shape[0],
        "tied_embeddings": tied,
        "kv_cache": "shared past/present buffer (GroupQueryAttention)",
    }
    ctx.manifest.setdefault("quantization", {})["decoder"] = ctx.precision
    ctx.manifest["quantization"]["embed"] = embed["storage"]
    ctx.manifest["text"] = build_text_spec(ctx.source.folder, ctx.out_dir, ctx.source.config,
                                           text_config)
