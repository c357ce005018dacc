"""The bundle's text section: tokenizer.json, chat template, special tokens, end tokens, context.

Read through transformers' own tokenizer and processor classes at export time, so the runtime
(which has only `tokenizers` and jinja2) gets exactly what transformers would use: the fast
tokenizer's JSON (with its post-processor, i.e. BOS handling), the chat template the processor
applies (a VLM's processor template wins over its tokenizer's), and the generation config's end
tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmedge.errors import ExportError

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:
        raise ExportError(f"Could not load the tokenizer in {folder}: {e}") from None


def special_token_ids(tokenizer, tokens: tuple[str, ...], family: str) -> dict[str, int]:
    """The ids of the prompt tokens a family's image layout needs, refused when the tokenizer
    lacks one (an exporter handed another checkpoint's tokenizer)."""
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}
    unknown = [t for t, i in found.items() if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ExportError(f"the tokenizer has no {', '.join(unknown)} token(s), which {family}'s "
                          "prompt needs; is this the checkpoint's own tokenizer?")
    return found


def _processor_chat_template(folder: Path) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        path = folder / name
        if path.exists():
            text = path.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    processor_config = folder / "processor_config.json"
    if processor_config.exists():
        return json.loads(processor_config.read_text()).get("chat_template")
    return None


def build_text_spec(folder: Path, out_dir: Path, config: dict[str, Any],
                    text_config: dict[str, Any]) -> dict[str, Any]:
    tokenizer = load_tokenizer(folder)
    if not tokenizer.is_fast:
        raise ExportError(f"The tokenizer in {folder} has no fast (tokenizers) version; mmedge's "
                          f"runtime needs tokenizer.json.")
    tokenizer.backend_tokenizer.save(str(out_dir / TOKENIZER_FILE))
    template = _processor_chat_template(folder) or tokenizer.chat_template
    special = {name: getattr(tokenizer, name) for name in
               ("bos_token", "eos_token", "pad_token", "unk_token")
               if getattr(tokenizer, name, None) is not None}
    eos_ids = _eos_ids(folder, config, text_config, tokenizer)
    bos_added = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    return {
        "tokenizer_file": TOKENIZER_FILE,
        "chat_template": template,
        "special_tokens": special,
        "add_bos_token": bool(tokenizer.bos_token_id is not None and bos_added),
        "eos_token_ids": eos_ids,
        "context_length": int(text_config.get("max_position_embeddings", 2048)),
    }


def _eos_ids(folder: Path, config: dict, text_config: dict, tokenizer) -> list[int]:
    """The generation config's end tokens (what transformers' generate stops on), else the
    model config's, else the tokenizer's."""
    candidates: list[Any] = []
    generation = folder / "generation_config.json"
    if generation.exists():
        candidates.append(json.loads(generation.read_text()).get("eos_token_id"))
    candidates += [text_config.get("eos_token_id"), config.get("eos_token_id"),
                   tokenizer.eos_token_id]
    for value in candidates:
        if value is None:
            continue
        ids = value if isinstance(value, list) else [value]
        if ids:
            return [int(i) for i in ids]
    raise ExportError(f"{folder}: no end-of-sequence token is defined anywhere (generation config, "
                      f"model config, tokenizer); generation would never stop.")
