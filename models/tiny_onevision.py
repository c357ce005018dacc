"""A tiny seeded LLaVA-OneVision checkpoint (`LlavaOnevisionForConditionalGeneration`) for tests.

No real OneVision config is stored here (the Hub is out of reach), so this is transformers' own
default `LlavaOnevisionConfig` (SigLIP tower, vision_feature_layer -1, strategy "full", gelu MLP
projector, "anyres_max_9", a 6x6 grid of pinpoints in multiples of the tile size) shrunk: the
SigLIP tower is 2 layers of width 32 at 40 px with 8-px patches (5x5 = 25 tokens a tile, an odd
side like the real 27x27), the pinpoints are the default ones scaled from 384 to 40 px (40..240),
and the text model is the tiny Qwen2 of `models.tiny`. The tokenizer is the real SmolLM2 one plus
"<image>" and "<video>"; the folder carries a LlavaOnevisionProcessor (with the Pillow image
processor, the one AutoImageProcessor picks without torchvision) and a chat template, so
`AutoProcessor.from_pretrained` loads it like a downloaded checkpoint.

Not here: anything the runtime imports (this needs torch and transformers), and export code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)

from .tiny import (IMAGE_TOKEN, LLAVA_CHAT_TEMPLATE, _padded, _silence_unused_rows, load_tokenizer,
                   tiny_text_config, tiny_vision_config)

VIDEO_TOKEN = "<video>"
TILE = 40
PATCH = 8
# transformers' default pinpoints: every (h, w) in {1..6} x {1..6} tiles of 384 px.
GRID = 6


class LlavaOnevisionProcessorWithoutVideo(LlavaOnevisionProcessor):
    """transformers' LlavaOnevisionProcessor, buildable without torchvision.

    transformers 5.24 refuses to build a LlavaOnevisionProcessor where torchvision is missing,
    even with video_processor=None (its video processor's base class is then a dummy, and the
    argument check fails on it). This subclass only lets video_processor be None; images and
    the prompt expansion run transformers' own code unchanged. `save_processor` writes the files
    of a plain LlavaOnevisionProcessor (what AutoProcessor loads where torchvision is installed).
    """

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def load_processor(folder: str | Path) -> LlavaOnevisionProcessorWithoutVideo:
    """The processor `build_tiny_onevision` saved (AutoProcessor needs torchvision for this one)."""
    import json

    from transformers import AutoTokenizer

    folder = Path(folder)
    kwargs = json.loads((folder / "processor_config.json").read_text())
    keep = ("num_image_tokens", "vision_feature_select_strategy", "image_token", "video_token",
            "vision_aspect_ratio")
    template = (folder / "chat_template.jinja").read_text()
    return LlavaOnevisionProcessorWithoutVideo(
        image_processor=LlavaOnevisionImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder), video_processor=None,
        chat_template=template, **{k: kwargs[k] for k in keep if k in kwargs})


def pinpoints(tile: int = TILE, grid: int = GRID) -> list[list[int]]:
    return [[tile * r, tile * c] for r in range(1, grid + 1) for c in range(1, grid + 1)]


def tiny_onevision_model(vocab_size: int, image_token_id: int, video_token_id: int, seed: int = 0, *,
                         tile: int = TILE, patch: int = PATCH,
                         vision_aspect_ratio: str = "anyres_max_9") -> LlavaOnevisionForConditionalGeneration:
    vision = tiny_vision_config("siglip", image_size=tile, patch_size=patch)
    text = tiny_text_config("qwen2", vocab_size)
    config = LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        video_token_index=video_token_id, image_grid_pinpoints=pinpoints(tile),
        vision_aspect_ratio=vision_aspect_ratio, tie_word_embeddings=text.tie_word_embeddings)
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(config).eval()


def image_processor(tile: int = TILE) -> LlavaOnevisionImageProcessorPil:
    # The real checkpoints' values (llava-hf/llava-onevision-qwen2-*-ov-hf): SigLIP's mean/std,
    # bicubic, pad on, the tile as size; the pinpoints scaled to the tile.
    return LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints(tile), resample=3,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True)


def build_tiny_onevision(out_dir: str | Path, seed: int = 0, *,
                         vision_aspect_ratio: str = "anyres_max_9") -> Path:
    """Save the tiny seeded OneVision (see the module doc) with its processor to `out_dir`."""
    tok = load_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    image_id, video_id = tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.convert_tokens_to_ids(VIDEO_TOKEN)
    model = tiny_onevision_model(_padded(len(tok)), image_id, video_id, seed,
                                 vision_aspect_ratio=vision_aspect_ratio)
    _silence_unused_rows(model, len(tok), image_id)
    with torch.no_grad():  # the video token never appears in an image prompt; keep it silent too
        model.get_input_embeddings().weight[video_id] = 0.0
        model.get_output_embeddings().weight[video_id] = 0.0
    vc = model.config.vision_config
    processor = LlavaOnevisionProcessorWithoutVideo(
        image_processor=image_processor(vc.image_size), tokenizer=tok, video_processor=None,
        num_image_tokens=(vc.image_size // vc.patch_size) ** 2,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        chat_template=LLAVA_CHAT_TEMPLATE, image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN,
        vision_aspect_ratio=vision_aspect_ratio)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(processor, out)
    return out


def save_processor(processor: LlavaOnevisionProcessorWithoutVideo, out: Path) -> None:
    """What `LlavaOnevisionProcessor.save_pretrained` writes in transformers 5 (it cannot run here:
    it saves every sub-processor, and there is no video processor): the tokenizer, the chat
    template, processor_config.json with the image processor nested in it; plus
    preprocessor_config.json, which 4.x checkpoints (most of the Hub) carry."""
    import json

    processor.tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(processor.chat_template)
    entry = {"processor_class": "LlavaOnevisionProcessor",
             "image_processor": processor.image_processor.to_dict(),
             "num_image_tokens": processor.num_image_tokens,
             "vision_feature_select_strategy": processor.vision_feature_select_strategy,
             "image_token": processor.image_token, "video_token": processor.video_token,
             "vision_aspect_ratio": processor.vision_aspect_ratio}
    (out / "processor_config.json").write_text(json.dumps(entry, indent=2) + "\n")
    processor.image_processor.save_pretrained(out)
