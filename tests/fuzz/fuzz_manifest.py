"""Fuzz harness: untrusted `manifest.json` bytes through bundle opening.

The bundle is a real tiny LLaVA export (built once into the fuzz work folder); each input is
written as the manifest of a folder whose other files are hard links to it. Half the inputs are
raw bytes (the seed is the real manifest, which libFuzzer mutates as bytes); the other half start
from the real manifest and apply a few structured edits from the bytes (delete a key, replace a
value by another JSON value, point a path elsewhere), which reach the checks behind the JSON
parser far more often. Each manifest goes through `open_bundle` (with or without checksums) and
what the runtime builds from the manifest without opening a graph: the image preprocessor, the
patch-embedding weights and the chat template; one input in 256 also loads the whole bundle
with `mmedge.load` (tokenizer, ONNX Runtime sessions: ~0.15 s).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from _harness import Bytes, dump, instrumented, json_value, linked_copy, main, tiny_llava_bundle

with instrumented(__name__ == "__main__"):
    import mmedge
    from mmedge.bundle import open_bundle
    from mmedge.text import ChatTemplate
    from mmedge.vision.inputs import VisionInput

STATE: dict[str, Any] = {}
# Strings worth putting where a path or a name goes.
WORDS = ["vision.onnx", "embed.onnx", "decoder.onnx", "decoder.onnx.data", "tokenizer.json",
         "patch_embedding.safetensors", "manifest.json", "../tokenizer.json", "/etc/passwd", "",
         ".", "..", "sub/../tokenizer.json", "a\\b", "C:x", "bfloat16", "float16", "float32",
         "llava", "llm", "clip", "patch_tokens", "pixel_values", "file", "inputs", "dtype"]


def setup(work: Path) -> None:
    if STATE:
        return
    real = tiny_llava_bundle(work)
    STATE["real"] = json.loads((real / "manifest.json").read_text())
    STATE["folder"] = linked_copy(real, work / "manifest-target")


def seeds() -> list[bytes]:
    real = dump(STATE["real"])
    return [b"\x00" + real, b"\x01" + real[:200], b"\x02\x00", b"\x03\x05\x01\x02\x03\x04\x05",
            b"\x00{}", b"\x00[]", b'\x00{"format_version": 1}']


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into `value` (dicts and lists), for the structured edits."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _edit(manifest: dict[str, Any], b: Bytes) -> dict[str, Any]:
    manifest = json.loads(json.dumps(manifest))
    for _ in range(1 + b.int(4)):
        paths = _paths(manifest)[1:]
        if not paths:
            break
        path = paths[b.int(len(paths))]
        parent = manifest
        for key in path[:-1]:
            parent = parent[key]
        op = b.int(4)
        if op == 0:
            del parent[path[-1]]
        elif op == 1:
            parent[path[-1]] = json_value(b, 1, WORDS)
        elif op == 2:
            parent[path[-1]] = b.choice(WORDS)
        elif isinstance(parent, dict):
            parent[b.choice(WORDS)] = parent[path[-1]]
    return manifest


def one_input(data: bytes) -> None:
    b = Bytes(data)
    flags = b.byte()
    if flags & 1:
        manifest = _edit(STATE["real"], b)
        raw = json.dumps(manifest, allow_nan=True).encode()
    else:
        raw = b.rest()
    folder: Path = STATE["folder"]
    (folder / "manifest.json").write_bytes(raw)
    bundle = open_bundle(folder, verify=flags & 6 == 6)   # BundleError: allowed
    m = bundle.manifest
    # What the runtime builds from the manifest before it opens any graph (cheap, so always).
    text = bundle.text
    ChatTemplate(text.get("chat_template"), text.get("special_tokens"))
    if bundle.image is not None:
        VisionInput(folder, m, "patch_tokens")
    # 1 in 256: the whole load (ONNX Runtime sessions, the 3.5 MB tokenizer: ~0.15 s).
    if flags == 0xFF:
        mmedge.load(folder, verify=False)

if __name__ == "__main__":
    main(sys.modules[__name__])
