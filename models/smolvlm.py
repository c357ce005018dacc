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
