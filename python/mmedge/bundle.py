"""The bundle: a directory holding ONNX graphs, a tokenizer and `manifest.json`.

This module owns the manifest format: what its fields are, how files are checksummed, and how a
bundle is verified before anything in it is loaded. It never loads a graph itself, and it never
reads pickles (a bundle holds only ONNX, JSON, tokenizer and safetensors files).

Format (FORMAT_VERSION 1), the fields a runtime relies on:
    format_version   int; a bundle newer than this runtime is refused
    family           "llm" (decoder-only), "llava" (vision tower + projector + decoder) or
                     "clip" (CLIP/SigLIP image + text towers, see mmedge.clip)
    components       {name: {"file": ..., "inputs": [...], "outputs": [...], "precision": ...}}
                     names: "vision", "embed", "decoder"; "image", "text" for "clip"
    image            preprocessing parameters (see mmedge.vision.preprocess) and "patch_embedding":
                     {file, num_tokens, dim, patch_size, tensors}, the weights the runtime's
                     patch-embedding kernel turns frames into the image graph's `patch_tokens`
                     with (see mmedge.vision.inputs); VLM and CLIP bundles only
    text             tokenizer file, chat template, special tokens, context length
    decoder          num_layers, num_kv_heads, head_dim, hidden_size, vocab_size, kv_dtype
    clip             ("clip" family) kind, embed_dim, logit_scale (the multiplier), logit_bias
    quantization     {"decoder": "int4", "vision": "fp32", ...}
    files            {relative path: {"sha256": ..., "size": ...}} for every file but the manifest
    exporter         {"mmedge": version, "source": ..., "parity": {...}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmedge.errors import BundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `root` except the manifest, keyed by relative path."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return files


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Fill in the format version and file checksums, then write `manifest.json` last.

    Writing the manifest last (through a temporary name) means an interrupted export never leaves a
    directory that looks like a complete bundle.
    """
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = describe_files(root)
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(root / MANIFEST_NAME)
    return root / MANIFEST_NAME


@dataclass
class Bundle:
    """A verified bundle on disk: its root directory and parsed manifest."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def components(self) -> dict[str, dict[str, Any]]:
        return self.manifest["components"]

    def has(self, component: str) -> bool:
        return component in self.components

    def path_of(self, component: str) -> Path:
        return self.root / self.components[component]["file"]

    @property
    def text(self) -> dict[str, Any]:
        return self.manifest["text"]

    @property
    def image(self) -> dict[str, Any] | None:
        return self.manifest.get("image")


def open_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read and check a bundle. Refuses, naming the file, a bundle that is missing a file, has a
    file whose checksum or size differs from the manifest, or comes from a newer format."""
    root = Path(root)
    if not root.exists():
        raise BundleError(f"No bundle at {root}: the directory does not exist. "
                          f"Create one with `mmedge export MODEL -o {root}`.")
    if not root.is_dir():
        raise BundleError(f"{root} is a file, not a bundle directory. Pass the directory that "
                          f"`mmedge export` wrote (it holds {MANIFEST_NAME}).")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.exists():
        raise BundleError(f"{root} is not a complete bundle: {MANIFEST_NAME} is missing "
                          f"(an interrupted export?). Re-run `mmedge export`.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path} is not valid JSON ({e}). The bundle is damaged; "
                          f"re-run `mmedge export`.") from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise BundleError(f"{manifest_path} has no format_version: not an mmedge bundle.")
    version = manifest["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{root} uses bundle format {version}, newer than this mmedge understands "
            f"({FORMAT_VERSION}). Upgrade mmedge (`pip install -U mmedge`) or re-export the model "
            f"with this version.")
    for key in ("family", "components", "text", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path} lacks the '{key}' field; the bundle is damaged. "
                              f"Re-run `mmedge export`.")
    if verify:
        _verify_files(root, manifest["files"])
    for name, comp in manifest["components"].items():
        if comp["file"] not in manifest["files"]:
            raise BundleError(f"{manifest_path}: component '{name}' names {comp['file']}, which the "
                              f"manifest does not list. The bundle is damaged.")
    return Bundle(root=root, manifest=manifest)


def _verify_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    for rel, info in files.items():
        path = root / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"The manifest names a file outside the bundle ({rel}); refusing it.")
        if not path.is_file():
            raise BundleError(f"The bundle at {root} is incomplete: {rel} is missing. "
                              f"Copy the whole bundle directory or re-run `mmedge export`.")
        size = path.stat().st_size
        if size != info["size"]:
            raise BundleError(f"{rel} in {root} is {size} bytes, the manifest says {info['size']}: "
                              f"the file was changed or truncated. Re-run `mmedge export`.")
        if sha256_file(path) != info["sha256"]:
            raise BundleError(f"{rel} in {root} does not match its sha256 in the manifest: the file "
                              f"was modified or corrupted. Re-run `mmedge export`.")
