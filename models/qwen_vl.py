"""Seeded random Qwen-VL checkpoints (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) for tests and benchmarks.

- Qwen3-VL: the real Qwen3-VL-4B-Instruct configuration, tokenizer (vocab.json + merges.txt, no
  tokenizer.json, as the Hub copy the fixture came from), chat template and preprocessor settings
  from `../shared/fixtures/hf/qwen3-vl-4b-instruct/`, widths and depths shrunk; everything that
  decides the image layout and positions is kept (16-px patches, 2x2 merge, DeepStack at three
  vision layers, interleaved M-RoPE with the real section proportions, min/max pixels).
- Qwen2-VL, Qwen2.5-VL: no real configuration of theirs is in the fixtures, so these are
  transformers' default configuration of each class (the 7B's shapes), shrunk, with the M-RoPE
  section of the real 2B/3B checkpoints ([16, 24, 24] of 64 rotary pairs, scaled to the tiny head),
  the processor settings the real checkpoints ship (min 3136 / max 12845056 pixels, 14-px patches,
  CLIP mean/std, as `min_pixels`/`max_pixels` keys) and the same Qwen tokenizer and chat template
  (Qwen2/2.5/3 share the vocabulary and the vision tokens).

`build(generation, out, reference)` writes what `save_pretrained` writes plus the tokenizer files,
chat_template.json and preprocessor_config.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch

Generation = Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
GENERATIONS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json",
                    "generation_config.json")
TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
              vision_end_token_id=151653)
# transformers' Qwen2-VL / Qwen2.5-VL checkpoints ship these (Qwen2VLImageProcessor, legacy keys)
QWEN2_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor",
}
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                 rms_norm_eps=1e-6, tie_word_embeddings=False)


def qwen_vl_config(generation: Generation, reference: Path | None = None, *,
                   text: dict | None = None, vision: dict | None = None):
    """The tiny configuration of one generation (see the module doc); `text` / `vision`
    override sizes (a benchmark's real-shaped tower, say)."""
    if generation == "qwen3_vl":
        from transformers import Qwen3VLConfig

        real = json.loads((Path(reference) / "config.json").read_text())
        text_config = {**{k: v for k, v in real["text_config"].items()
                          if k in ("hidden_act", "rms_norm_eps", "rope_theta", "bos_token_id",
                                   "eos_token_id", "attention_bias", "vocab_size")},
                       **TINY_TEXT, "head_dim": 32, "tie_word_embeddings": True,
                       # the real [24, 20, 20] of 64 rotary pairs, for 16 pairs
                       "rope_scaling": {"rope_type": "default", "mrope_interleaved": True,
                                        "mrope_section": [6, 5, 5]},
                       **(text or {})}
        vision_config = {**{k: v for k, v in real["vision_config"].items()
                            if k in ("hidden_act", "in_channels", "patch_size", "spatial_merge_size",
                                     "temporal_patch_size", "num_position_embeddings")},
                         "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                         "out_hidden_size": text_config["hidden_size"],
                         "deepstack_visual_indexes": [0, 1, 3], **(vision or {})}
        return Qwen3VLConfig(text_config=text_config, vision_config=vision_config,
                             tie_word_embeddings=True, **TOKENS)
    text_config = {**TINY_TEXT, "rope_theta": 1000000.0,
                   "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3]},
                   **(text or {})}
    if generation == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision_config = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2,
                         "hidden_size": text_config["hidden_size"], **(vision or {})}
        return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **TOKENS)
    if generation == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        # window 112 px = 4x4 merged tokens: the tiny test images span several windows
        vision_config = {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                         "out_hidden_size": text_config["hidden_size"], "window_size": 112,
                         "fullatt_block_indexes": [1, 3], **(vision or {})}
        return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **TOKENS)
    raise ValueError(f"unknown generation {generation!r}; one of {GENERATIONS}")


def model_class(generation: Generation):
    import transformers

    return getattr(transformers, {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                                  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                  "qwen3_vl": "Qwen3VLForConditionalGeneration"}[generation])


def build(generation: Generation, out: Path, reference: Path, *, seed: int = 0,
          text: dict | None = None, vision: dict | None = None,
          preprocessor: dict | None = None) -> Path:
    """Write a seeded random checkpoint of `generation` into `out`; `reference` is the Qwen3-VL
    fixture folder (tokenizer, chat template; and Qwen3-VL's config and processor settings).
    `preprocessor` overrides preprocessor_config.json keys (e.g. a smaller max_pixels)."""
    out, reference = Path(out), Path(reference)
    torch.manual_seed(seed)
    config = qwen_vl_config(generation, reference, text=text, vision=vision)
    model = model_class(generation)(config).eval()
    with torch.no_grad():   # random init leaves norms at 1: give them spread so bugs show
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight"):
                param.add_(torch.randn_like(param) * 0.1)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    for name in _TOKENIZER_FILES:
        if (reference / name).exists():
            shutil.copyfile(reference / name, out / name)
    if generation == "qwen3_vl":
        processor = json.loads((reference / "preprocessor_config.json").read_text())
    else:
        processor = dict(QWEN2_PREPROCESSOR, processor_class=model_class(generation).__name__
                         .replace("ForConditionalGeneration", "Processor"))
    processor.update(preprocessor or {})
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return out


# Qwen2.5-VL-3B-Instruct's vision tower as its config.json has it (the 3B, 7B and 32B share it
# but for out_hidden_size)
QWEN2_5_VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                            hidden_act="silu", in_channels=3, patch_size=14, spatial_merge_size=2,
                            temporal_patch_size=2, window_size=112, tokens_per_second=2,
                            fullatt_block_indexes=[7, 15, 23, 31])
# Qwen2.5-0.5B-Instruct's language model shape. Its head is 64 wide (32 rotary pairs); the M-RoPE
# section [16, 24, 24] of Qwen2.5-VL's 128-wide head (64 pairs) is halved to [8, 12, 12].
QWEN2_5_0_5B_TEXT = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                         tie_word_embeddings=True, rope_theta=1000000.0,
                         max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu",
                         rope_scaling={"rope_type": "default", "mrope_section": [8, 12, 12]})


def build_qwen_vl_shaped(out: Path, reference: Path, generation: Generation = "qwen2_5_vl", *,
                         seed: int = 0) -> Path:
    """A benchmark-shaped Qwen2.5-VL checkpoint with seeded random weights (speed only: the
    answers are meaningless), written like `build` into `out`; `reference` is the Qwen3-VL fixture
    folder (tokenizer and chat template, shared by the Qwen2/2.5/3 families).

    Real-shaped: the vision tower of Qwen2.5-VL-3B-Instruct (`QWEN2_5_VL_3B_VISION`: 32 blocks,
    1280 wide, gated-SiLU MLP 3420, 16 heads, 14-px patches with a temporal patch of 2, 2x2 merge,
    112-px windows with full attention in blocks 7/15/23/31) and its processor settings (14-px
    patches, min_pixels 3136, max_pixels 12845056, CLIP mean/std). A 640x480 frame is resized by
    smart_resize to 644x476 px: 46x34 = 1564 patches, 23x17 = 391 image tokens after the merger.
    Not real: the language model. It has Qwen2.5-0.5B-Instruct's shape (`QWEN2_5_0_5B_TEXT`: 896
    wide, 24 layers, 14 heads / 2 KV heads, MLP 4864, the 151936 vocabulary, tied embeddings,
    rope_theta 1e6, 32768 positions) with the M-RoPE section halved for its 64-wide head, not
    Qwen2.5-VL-3B's 2048-wide 36-layer one (which would not export quickly on 2 cores); the merger
    therefore projects to 896, not 2048. Only `generation="qwen2_5_vl"` exists for now."""
    if generation != "qwen2_5_vl":
        raise ValueError(f"build_qwen_vl_shaped: only qwen2_5_vl has a shaped preset, not {generation!r}")
    text = dict(QWEN2_5_0_5B_TEXT)
    vision = dict(QWEN2_5_VL_3B_VISION, out_hidden_size=text["hidden_size"])
    out = build(generation, out, reference, seed=seed, text=text, vision=vision,
                preprocessor={"min_pixels": 3136, "max_pixels": 12845056})
    # The top-level config must say the embeddings are tied as well (qwen_vl_config only sets the
    # text config's flag for this generation); keep config.json consistent with what was saved.
    config = json.loads((out / "config.json").read_text())
    if not config.get("tie_word_embeddings", False):
        raise RuntimeError("build_qwen_vl_shaped: the saved config does not tie the embeddings")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a seeded random tiny Qwen-VL checkpoint.")
    parser.add_argument("generation", choices=GENERATIONS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--reference", type=Path,
                        default=Path(__file__).resolve().parents[1].parent / "shared/fixtures/hf/qwen3-vl-4b-instruct")
    args = parser.parse_args()
    print(build(args.generation, args.out, args.reference))
