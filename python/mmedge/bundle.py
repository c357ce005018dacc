"""The bundle: a directory holding ONNX graphs, a tokenizer and `manifest.json`.

This module owns the manifest format: what its fields are, how files are checksummed, and how a
bundle is verified before anything in it is loaded. It never loads a graph itself, and it never
reads pickles (a bundle holds only ONNX, JSON, tokenizer and safetensors files).

Format (FORMAT_VERSION 1), the fields a runtime relies on:
    format_version   int; a bundle newer than this runtime is refused
    family           "llm" (decoder-only); a vision-language family (vision tower + projector +
                     decoder): "llava" (LLaVA-1.5, interleave), "idefics3" (SmolVLM),
                     "llava_onevision"; or "clip" (CLIP/SigLIP image + text towers, see mmedge.clip)
    components       {name: {"file": ..., "inputs": [...], "outputs": [...], "precision": ...}}
                     names: "vision", "embed", "decoder"; "image", "text" for "clip"
    image            "layout" (how an image becomes tiles and tokens, see mmedge.vision.layouts;
                     "single" when absent), preprocessing parameters (see mmedge.vision.preprocess) and "patch_embedding":
                     {file, num_tokens, dim, patch_size, tensors}, the weights the runtime's
                     patch-embedding kernel turns frames into the image graph's `patch_tokens`
                     with (see mmedge.vision.inputs); VLM and CLIP bundles only.
                     "llava_onevision" adds "image_newline": {file, dim}, the safetensors file
                     of the vector that ends each row of an image's features (its path is
                     checked like patch_embedding's)
    text             tokenizer file, chat template, special tokens, context length
    decoder          num_layers, num_kv_heads, head_dim, hidden_size, vocab_size, kv_dtype
    clip             ("clip" family) kind, embed_dim, logit_scale (the multiplier), logit_bias
    quantization     {"decoder": "int4", "vision": "fp32", ...}
    files            {relative path: {"sha256": ..., "size": ...}} for every file but the manifest
    exporter         {"mmedge": version, "source": ..., "parity": {...}}

Bundles come from people and programs mmedge does not control, so `open_bundle` checks, with or
without checksums, everything that would otherwise fail later as a KeyError or reach outside the
bundle: the manifest's types, every path it names (symlinks followed: a link may point anywhere
inside the bundle, nowhere outside it), the graphs' external data and their input/output dtypes.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
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
    """Read and check a bundle before anything in it is loaded.

    Refuses with a BundleError naming the file or field, whether or not `verify` is set:
    a manifest that is not the format above (a missing field or one of the wrong type, an unknown
    family, a component the family needs missing); a path in it (files, components, the
    tokenizer, the patch embedding) that is absolute or leaves the bundle, directly or through a
    symlink (symlinks that stay inside the bundle are followed: the checksums cover what they point
    at); an ONNX graph whose external data lies outside the bundle or in a file the manifest does
    not list (read from the graph's own initializers, without loading any weight); a graph input or
    output in bfloat16, which this runtime cannot feed or read. With `verify`, also a missing file
    and one whose size or sha256 differs from the manifest. A bundle from a newer format is refused.
    """
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
    real_root = root.resolve()
    _inside(root, real_root, MANIFEST_NAME, MANIFEST_NAME)
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path} is not a regular file. Re-run `mmedge export`.")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is {manifest_path.stat().st_size} bytes, more than the "
                          f"{MAX_MANIFEST_BYTES} a manifest may have: not an mmedge bundle.")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:   # JSONDecodeError and UnicodeDecodeError included
        raise BundleError(f"{manifest_path} is not valid JSON ({str(e)[:200]}). The bundle is "
                          f"damaged; re-run `mmedge export`.") from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise BundleError(f"{manifest_path} has no format_version: not an mmedge bundle.")
    version = manifest["format_version"]
    if not _is_int(version) or version > FORMAT_VERSION:
        raise BundleError(
            f"{root} uses bundle format {str(version)[:40]}, newer than this mmedge understands "
            f"({FORMAT_VERSION}). Upgrade mmedge (`pip install -U mmedge`) or re-export the model "
            f"with this version.")
    _check_manifest(manifest_path, manifest)
    files = manifest["files"]
    for rel in files:
        _inside(root, real_root, rel, f"files entry {rel!r}")
    for what, rel in _named_files(manifest):
        _inside(root, real_root, rel, what)
        if rel not in files:
            raise BundleError(f"{manifest_path}: {what} names {rel}, which the manifest does not "
                              f"list among its files. The bundle is damaged; re-run `mmedge export`.")
    if verify:
        _verify_files(root, files)
    for name, comp in manifest["components"].items():
        _check_graph(root, real_root, name, comp, files, manifest)
    return Bundle(root=root, manifest=manifest)


# -- the manifest's shape -------------------------------------------------------------------------
# A manifest is JSON an exporter wrote, so a few KB; anything near this is not one.
MAX_MANIFEST_BYTES = 64 << 20
VLM_FAMILIES = ("llava", "idefics3", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
FAMILIES = {"llm": ("embed", "decoder"), "clip": ("image", "text"),
            **{family: ("vision", "embed", "decoder") for family in VLM_FAMILIES}}
# Graph element types the runtime has no path for: numpy has no bfloat16, so ONNX Runtime's
# Python API can neither take nor return such a tensor.
_UNSUPPORTED_DTYPES = {"bfloat16": "bfloat16", "tensor(bfloat16)": "bfloat16"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_manifest(manifest_path: Path, m: dict[str, Any]) -> None:
    """The fields the runtime reads have the types it reads them as (the rest is left alone)."""

    def bad(where: str, want: str, value: Any) -> BundleError:
        got = "missing" if value is _MISSING else f"{type(value).__name__} {_short(value)}"
        return BundleError(f"{manifest_path}: '{where}' must be {want}, got {got}. The bundle is "
                           f"damaged or was not written by `mmedge export`; re-run it.")

    def get(table: dict[str, Any], where: str, key: str, kind: type | tuple[type, ...], want: str,
            optional: bool = False) -> Any:
        value = table.get(key, _MISSING)
        if value is _MISSING and optional:
            return None
        if value is _MISSING or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise bad(f"{where}{key}", want, value)
        return value

    def positive(table: dict[str, Any], where: str, key: str) -> int:
        value = get(table, where, key, int, "a positive integer")
        if value < 1:
            raise bad(f"{where}{key}", "a positive integer", value)
        return value

    family = get(m, "", "family", str, f"one of {sorted(FAMILIES)}")
    if family not in FAMILIES:
        raise bad("family", f"one of {sorted(FAMILIES)} (a newer mmedge may know it)", family)
    components = get(m, "", "components", dict, "a table of graphs")
    for name in FAMILIES[family]:
        if name not in components:
            raise BundleError(f"{manifest_path}: a '{family}' bundle needs a '{name}' component "
                              f"(it has {sorted(components)}). Re-run `mmedge export`.")
    for name, comp in components.items():
        where = f"components.{name}."
        if not isinstance(comp, dict):
            raise bad(where[:-1], "a table with 'file'", comp)
        get(comp, where, "file", str, "a file name")
        get(comp, where, "target", str, "a device name", optional=True)
        for side in ("inputs", "outputs"):
            specs = get(comp, where, side, list, "a list of tensors", optional=True) or []
            for i, spec in enumerate(specs):
                if not isinstance(spec, dict):
                    raise bad(f"{where}{side}[{i}]", "a table with name and dtype", spec)
                tensor = get(spec, f"{where}{side}[{i}].", "name", str, "a tensor name")
                dtype = get(spec, f"{where}{side}[{i}].", "dtype", str, "a dtype name", optional=True)
                if dtype in _UNSUPPORTED_DTYPES:
                    raise _bf16_error(manifest_path.parent, name, tensor, "the manifest")
                get(spec, f"{where}{side}[{i}].", "shape", list, "a list of dims", optional=True)
    files = get(m, "", "files", dict, "a table of files")
    for rel, info in files.items():
        where = f"files.{rel}."
        if not isinstance(info, dict):
            raise bad(where[:-1], "a table with sha256 and size", info)
        digest = get(info, where, "sha256", str, "64 hex digits")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise bad(f"{where}sha256", "64 lowercase hex digits", digest)
        if get(info, where, "size", int, "a size in bytes") < 0:
            raise bad(f"{where}size", "a size in bytes", info["size"])
    text = get(m, "", "text", dict, "a table")
    get(text, "text.", "tokenizer_file", str, "a file name")
    if text.get("chat_template") is not None:
        get(text, "text.", "chat_template", str, "a Jinja template")
    if text.get("special_tokens") is not None:
        get(text, "text.", "special_tokens", dict, "a table of token strings")
    eos = text.get("eos_token_ids")
    if eos is not None and (not isinstance(eos, list) or not all(_is_int(i) for i in eos)):
        raise bad("text.eos_token_ids", "a list of token ids", eos)
    for key in ("exporter", "quantization", "clip"):
        get(m, "", key, dict, "a table", optional=True)
    if family == "llm" or family in VLM_FAMILIES:
        positive(text, "text.", "context_length")
        decoder = get(m, "", "decoder", dict, "a table")
        for key in ("num_layers", "num_kv_heads", "head_dim"):
            positive(decoder, "decoder.", key)
        if decoder.get("kv_dtype") in _UNSUPPORTED_DTYPES:
            raise _bf16_error(manifest_path.parent, "decoder", "its KV cache", "the manifest")
    if family == "clip" or family in VLM_FAMILIES:
        image = get(m, "", "image", dict, "a table of preprocessing parameters")
        patch = get(image, "image.", "patch_embedding", dict, "a table", optional=True)
        if patch is not None:
            get(patch, "image.patch_embedding.", "file", str, "a file name")
            positive(patch, "image.patch_embedding.", "patch_size")
            if image.get("layout") != "qwen2vl":   # Qwen-VL: the token count varies per image
                positive(patch, "image.patch_embedding.", "num_tokens")
        newline = get(image, "image.", "image_newline", dict, "a table", optional=True)
        if newline is not None:
            get(newline, "image.image_newline.", "file", str, "a file name")
        if family in VLM_FAMILIES:
            get(image, "image.", "image_token_id", int, "a token id")
            get(image, "image.", "image_token", str, "the image token's text")
            if get(image, "image.", "layout", str, "a layout name", optional=True) in (None, "single"):
                positive(image, "image.", "num_image_tokens")
    elif m.get("image") is not None:
        raise bad("image", f"absent in a '{family}' bundle (it has no vision graph)", m["image"])


_MISSING = object()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _named_files(m: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, relative path) of every file the runtime opens by name from the manifest."""
    named = [(f"component '{name}'", comp["file"]) for name, comp in m["components"].items()]
    named.append(("text.tokenizer_file", m["text"]["tokenizer_file"]))
    patch = (m.get("image") or {}).get("patch_embedding")
    if patch:
        named.append(("image.patch_embedding", patch["file"]))
    newline = (m.get("image") or {}).get("image_newline")   # LLaVA-OneVision's row marker
    if newline:
        named.append(("image.image_newline", newline["file"]))
    return named


def _bf16_error(root: Path, component: str, tensor: str, source: str) -> BundleError:
    return BundleError(
        f"{root}: {source} gives component '{component}' a bfloat16 tensor ({tensor}). mmedge runs "
        f"graphs through ONNX Runtime's numpy API, which has no bfloat16, so this bundle cannot "
        f"run. Re-export it with `mmedge export MODEL -o DIR --quant fp16` (or fp32).")


# -- paths ----------------------------------------------------------------------------------------
def _bad_form(rel: str) -> str | None:
    """Why `rel` is not a plain relative path inside a folder, or None."""
    if not rel or "\x00" in rel or "\\" in rel:
        return "is empty or holds a NUL or backslash"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return "is absolute"
    if ".." in PurePosixPath(rel).parts:
        return "climbs out with '..'"
    return None


def _inside(root: Path, real_root: Path, rel: str, what: str) -> Path:
    """`root / rel`, refused unless `rel` is a plain relative path that, symlinks followed, stays
    inside the bundle. The path need not exist (checking that is `verify`'s job)."""
    reason = _bad_form(rel)
    if reason is None:
        try:
            target = (root / rel).resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise BundleError(f"{what} ({_short(rel)}) in {root} cannot be resolved ({e}). Re-run "
                              f"`mmedge export`.") from None
        if target != real_root and real_root not in target.parents:
            reason = f"is a symlink (or lies under one) to {target}"
    if reason:
        raise BundleError(f"{what} ({_short(rel)}) is outside the bundle: it {reason}. A bundle "
                          f"may only use files inside its own directory ({root}); refusing it. "
                          f"Copy the real files into the bundle or re-run `mmedge export`.")
    return root / rel


def _verify_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    for rel, info in files.items():
        path = root / rel
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


# -- ONNX graphs, read just enough ----------------------------------------------------------------
# mmedge does not depend on the `onnx` package, and ONNX Runtime checks external data paths only in
# its newer releases (and only when a session opens, with its own message), so the bundle reads the
# few fields it needs from the protobuf wire format itself: every tensor's external_data location
# (initializers, sparse initializers, Constant-style attributes, in subgraphs and functions too) and
# the element type of the graph's inputs and outputs. Weights are skipped over, never read.
_TENSOR, _SPARSE, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _VALUE_INFO = range(8)
# For each message kind: {field number: kind of the embedded message} (onnx.proto's numbers).
_FIELDS = {
    "model": {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
}
_TENSOR_EXTERNAL_DATA, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2
_ONNX_BFLOAT16 = 16


class _WireError(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _WireError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one protobuf message: an int, or a memoryview for
    length-delimited fields (no copy)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if pos > len(buf) or number == 0:
            raise _WireError("a field runs past the end of its message")
        yield number, wire, value


def _string(buf: memoryview) -> str:
    return bytes(buf).decode("utf-8", errors="replace")


def _external_locations(model: memoryview) -> set[str]:
    """Every external_data 'location' in the model, subgraphs and functions included."""
    locations: set[str] = set()
    stack: list[tuple[Any, memoryview]] = [("model", model)]   # no recursion: nesting is untrusted
    while stack:
        kind, buf = stack.pop()
        embedded = _FIELDS.get(kind, {})
        for number, wire, value in _fields(buf):
            if wire != 2:
                continue
            if kind == _TENSOR and number == _TENSOR_EXTERNAL_DATA:
                entry = {n: _string(v) for n, w, v in _fields(value) if w == 2}
                if entry.get(_ENTRY_KEY) == "location":
                    locations.add(entry.get(_ENTRY_VALUE, ""))
            elif number in embedded:
                stack.append((embedded[number], value))
    return locations


def _graph_values(model: memoryview) -> tuple[list[str], list[str]]:
    """(input names, names of inputs and outputs whose element type is bfloat16) of the main graph."""
    inputs, bf16 = [], []
    for number, wire, graph in _fields(model):
        if number != 7 or wire != 2:
            continue
        for field_no, w, info in _fields(graph):
            if field_no not in (11, 12) or w != 2:      # GraphProto.input, .output
                continue
            name, elem = "", None
            for n, wt, v in _fields(info):              # ValueInfoProto
                if n == 1 and wt == 2:
                    name = _string(v)
                elif n == 2 and wt == 2:                # .type: TypeProto.tensor_type.elem_type
                    for n2, w2, tensor in _fields(v):
                        if n2 == 1 and w2 == 2:
                            elem = next((x for n3, w3, x in _fields(tensor) if n3 == 1 and w3 == 0), None)
            if field_no == 11:
                inputs.append(name)
            if elem == _ONNX_BFLOAT16:
                bf16.append(name)
    return inputs, bf16


# The inputs the runtime feeds each component's graph (any one of a set of alternatives): a graph
# without them is another component's, or another tool's.
_GRAPH_INPUTS = {
    "decoder": [("inputs_embeds",), ("attention_mask",), ("past_key_values.0.key",)],
    "embed": [("input_ids",)],
    "text": [("input_ids",)],
    "vision": [("patch_tokens", "pixel_values")],
    "image": [("patch_tokens", "pixel_values")],
}


def _check_graph(root: Path, real_root: Path, name: str, comp: dict[str, Any],
                 files: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Refuses a component's graph whose external data leaves the bundle or is not in the
    manifest's files, whose inputs or outputs are bfloat16, or that lacks the inputs the runtime
    feeds that component (a decoder: one KV-cache pair per layer the manifest counts)."""
    rel = comp["file"]
    path = root / rel
    if not path.is_file():
        return   # missing: `verify` says so, and ONNX Runtime does when it opens the graph
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            view = memoryview(data)
            try:
                locations = _external_locations(view)
                inputs, bf16 = _graph_values(view)
            finally:
                view.release()
    except _WireError as e:
        raise BundleError(f"{rel} in {root} (component '{name}') is not a valid ONNX file ({e}). "
                          f"Re-run `mmedge export`.") from None
    except (OSError, ValueError) as e:   # mmap of an empty file raises ValueError
        raise BundleError(f"{rel} in {root} (component '{name}') cannot be read as an ONNX graph "
                          f"({e}). Re-run `mmedge export`.") from None
    if bf16:
        raise _bf16_error(root, name, ", ".join(bf16[:4]), f"the graph {rel}")
    missing = [" or ".join(alts) for alts in _GRAPH_INPUTS.get(name, [])
               if not any(a in inputs for a in alts)]
    if name == "decoder" and not missing:
        layers = manifest["decoder"]["num_layers"]
        have = sum(1 for i in inputs if i.startswith("past_key_values."))
        # The names the count implies, at most one layer past what the graph has: a damaged count
        # may be 2**31 (a list of it took the fuzzer past 3 GB).
        want = [f"past_key_values.{i}.{kv}" for i in range(min(layers, have // 2 + 1))
                for kv in ("key", "value")]
        missing = [w for w in want if w not in inputs][:2]
        if not missing and have > 2 * layers:
            missing = [f"no more than {2 * layers} past_key_values inputs (decoder.num_layers "
                       f"{layers}; the graph has {have})"]
    if missing:
        raise BundleError(f"{rel} in {root} is not the '{name}' graph the manifest says: it lacks "
                          f"{', '.join(missing)} (its inputs: {', '.join(inputs[:6]) or 'none'}). "
                          f"The bundle is damaged or mixed up; re-run `mmedge export`.")
    for location in sorted(locations):
        what = f"the external data of {rel} (component '{name}')"
        # Stricter than ONNX, which resolves a location against the graph's folder and allows
        # '..' that stays inside: a bundle's graphs name files beside them.
        reason = _bad_form(location)
        if reason:
            raise BundleError(f"{what} ({_short(location)}) is outside the bundle: it {reason}. "
                              f"A graph may only read data files inside its bundle ({root}); "
                              f"refusing it. Re-run `mmedge export`.")
        inner = (PurePosixPath(rel).parent / location).as_posix()
        _inside(root, real_root, inner, what)
        if inner not in files:
            raise BundleError(f"{what} is {location}, which the manifest does not list among its "
                              f"files (so no checksum covers it). Refusing it; re-run `mmedge export`.")
