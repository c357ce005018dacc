"""Where a model comes from: a Hugging Face hub id, a local HF folder, a GGUF file, or the name of one
of mmedge's own reference models (`mmedge-tiny-clip`, `mmedge-tiny-vlm`, see mmedge.models.reference).

Every source is turned into a local HF folder (config.json, safetensors weights, tokenizer files)
that the family recipes read. A GGUF file is dequantized by transformers into fp32 and written
out as such a folder, so the rest of the exporter (and its torch reference) sees an ordinary
checkpoint. Remote code is never enabled, and pickled checkpoints (`*.bin`, `*.pt`) are refused:
only safetensors are read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmedge.errors import ExportError, UnsupportedModelError

# Files a snapshot needs; weights only as safetensors.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]
REFERENCE_MODELS = ("mmedge-tiny-clip", "mmedge-tiny-vlm")   # = mmedge.models.reference.NAMES


@dataclass
class Source:
    folder: Path              # local HF folder
    config: dict[str, Any]
    description: str          # what the user passed, for the manifest


# A Hugging Face repo id: "owner/name", each part letters, digits, '-', '_', '.', at most 96
# characters, not starting or ending with '-' or '.', no '--' or '..' (the hub's own rule).
_HUB_PART = r"(?!.*(--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")


def looks_like_hub_id(model: str) -> bool:
    """True for `owner/name`; False for anything that reads as a path (`nosuch/`, `./x`, `/abs/x`,
    `a/b/c`, `x.gguf`), which therefore never goes to the hub."""
    return bool(_HUB_ID.fullmatch(model)) and not model.lower().endswith(".gguf")


def resolve(model: str, workdir: Path) -> Source:
    """Turn MODEL (hub id, folder, or .gguf file) into a local HF folder under `workdir`."""
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ExportError(f"The GGUF file {path} does not exist"
                              + (" (it is a folder)" if path.is_dir() else "")
                              + f" (looked at {path.absolute()}). Check the path.")
        folder = gguf_to_folder(path, workdir / "from-gguf")
        return Source(folder, _read_config(folder), f"gguf:{path.name}")
    if path.exists():
        if not path.is_dir():
            raise ExportError(f"{path} is neither a folder with config.json nor a .gguf file.")
        return Source(path, _read_config(path), str(path))
    if model in REFERENCE_MODELS:
        from mmedge.models import reference   # the committed weights, assembled into an HF folder

        folder = reference.build(model, workdir / model)
        return Source(folder, _read_config(folder), f"mmedge:{model}")
    if looks_like_hub_id(model):
        folder = _download(model, workdir / "hub")
        return Source(folder, _read_config(folder), f"hf:{model}")
    if "/" in model or "\\" in model or model.startswith(("~", ".")):
        raise ExportError(f"The folder {path} does not exist (looked at {path.absolute()}). Pass "
                          f"a local Hugging Face model folder, a .gguf file, or a hub id "
                          f"(owner/name).")
    raise ExportError(f"'{model}' is not a local folder or file (nothing is at "
                      f"{path.absolute()}), a .gguf file, a Hugging Face hub id (owner/name), or "
                      f"one of mmedge's reference models ({', '.join(REFERENCE_MODELS)}).")


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ExportError(f"{folder} has no config.json; point at a Hugging Face model folder "
                          f"(config.json + *.safetensors + tokenizer files) or a .gguf file.")
    config = json.loads(config_path.read_text())
    if config.get("auto_map"):
        # We never run a repository's own Python code; say so rather than silently ignoring it.
        archs = config.get("architectures") or ["?"]
        raise UnsupportedModelError(
            f"{folder} defines its model in custom code ({archs[0]}, auto_map); mmedge does not run "
            f"remote code. Use a checkpoint of a standard transformers architecture.")
    if not list(folder.glob("*.safetensors")):
        if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
            raise ExportError(f"{folder} has only pickled weights (*.bin/*.pt), which mmedge does not "
                              f"load. Convert them to safetensors first.")
        raise ExportError(f"{folder} has no *.safetensors weights.")
    return config


def _download(repo_id: str, target: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - comes with transformers
        raise ExportError("huggingface_hub is needed to download models: "
                          "pip install 'mmedge[export]'") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS,
                                      local_dir=str(target / repo_id.replace("/", "--"))))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise ExportError(f"Could not download '{repo_id}' from the Hugging Face Hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}). No local folder "
                          f"{Path(repo_id).absolute()} exists either. If you are offline, "
                          f"pass a local folder or a .gguf file instead.") from None


def gguf_to_folder(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint into an fp32 HF folder (weights, config, tokenizer with its
    chat template)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise UnsupportedModelError(f"transformers cannot read {gguf.name}: {e}") from None
    # A GGUF-loaded model is flagged as quantized and refuses save_pretrained; rebuild a plain one
    # from its config and the dequantized fp32 weights.
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["architectures"] = [type(model).__name__]
    config = AutoConfig.for_model(**{k: v for k, v in config_dict.items() if k != "model_type"},
                                  model_type=config_dict["model_type"])
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    target.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target
