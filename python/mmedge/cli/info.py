"""`mmedge info`: what a bundle holds (graphs, shapes, precision, checksums, parity at export)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmedge.bundle import open_bundle
from mmedge.errors import BundleError


def bundle_info(root: str | Path) -> dict[str, Any]:
    """The manifest's essentials plus whether every file still matches its checksum."""
    try:
        bundle = open_bundle(root, verify=True)
        verified, problem = True, None
    except BundleError as e:
        # Show what we can of a damaged bundle, and say what is wrong with it.
        bundle = open_bundle(root, verify=False)
        verified, problem = False, str(e)
    m = bundle.manifest
    return {
        "bundle": str(bundle.root), "format_version": m["format_version"], "family": m["family"],
        "source": m.get("exporter", {}).get("source"), "mmedge": m.get("exporter", {}).get("mmedge"),
        "quantization": m.get("quantization", {}),
        "components": {name: {"file": c["file"], "precision": c.get("precision"),
                              "inputs": c["inputs"], "outputs": c["outputs"]}
                       for name, c in m["components"].items()},
        "image": m.get("image"), "decoder": m.get("decoder"), "clip": m.get("clip"),
        "context_length": m["text"]["context_length"],
        "files": m["files"], "verified": verified, "problem": problem,
        "parity": m.get("exporter", {}).get("parity"),
    }


def _shape(io: dict[str, Any]) -> str:
    return f"{io['name']} {io['dtype']}[{', '.join(str(d) for d in io['shape'])}]"


def format_info(info: dict[str, Any]) -> str:
    lines = [f"bundle     {info['bundle']}",
             f"family     {info['family']}   (format {info['format_version']}, exported by mmedge "
             f"{info['mmedge']} from {info['source']})",
             f"context    {info['context_length']} tokens",
             "precision  " + ", ".join(f"{k} {v}" for k, v in info["quantization"].items())]
    if info.get("clip"):
        c = info["clip"]
        lines.append(f"embedding  {c['kind']}, {c['embed_dim']} dims, logit scale "
                     f"{c['logit_scale']:.4g}, bias {c['logit_bias']:.4g}")
    im = info["image"] or {}
    if "num_image_tokens" in im:
        lines.append(f"image      {im['processor']} preprocessing to {im['image_size'][0]}x"
                     f"{im['image_size'][1]}, {im['num_image_tokens']} tokens per image "
                     f"({im['image_token']})")
    elif im.get("layout") == "idefics3":
        split = (f"split into {im['max_image_size']['longest_edge']}px tiles + a global view"
                 if im["do_image_splitting"] else "one tile")
        lines.append(f"image      longest edge to {im['size']['longest_edge']}px, {split}, "
                     f"{im['tokens_per_tile']} tokens per tile ({im['image_token']})")
    elif im.get("layout") == "qwen2vl":
        factor = im["patch_size"] * im["merge_size"]
        lines.append(f"image      {im['generation']}: resized to multiples of {factor}px within "
                     f"{im['min_pixels']}-{im['max_pixels']} pixels (--max-pixels), one token per "
                     f"{factor}x{factor} block ({im['image_token']})")
    elif im.get("layout"):
        lines.append(f"image      {im['layout']} layout, {im['image_size'][0]}x{im['image_size'][1]} "
                     f"tiles ({im.get('image_token', '')})")
    if info["image"] and "patch_embedding" in info["image"]:
        pe = info["image"]["patch_embedding"]
        tokens = pe["num_tokens"] if pe["num_tokens"] is not None else "per-image"
        lines.append(f"patches    {tokens} tokens x {pe['dim']} from {pe['patch_size']}px patches, "
                     f"by mmedge's patch-embedding kernel ({pe['file']})")
    lines.append("graphs")
    for name, comp in info["components"].items():
        ins = comp["inputs"]
        lines.append(f"  {name:<8} {comp['file']} ({comp['precision']})")
        lines.append("           in:  " + "; ".join(_shape(i) for i in ins[:3])
                     + (f"; ... {len(ins) - 3} more" if len(ins) > 3 else ""))
        lines.append("           out: " + "; ".join(_shape(o) for o in comp["outputs"][:2])
                     + (f"; ... {len(comp['outputs']) - 2} more" if len(comp["outputs"]) > 2 else ""))
    lines.append("files")
    for rel, f in info["files"].items():
        lines.append(f"  {rel:<28} {f['size'] / 1e6:9.1f} MB  sha256 {f['sha256'][:16]}...")
    lines.append("checksums  " + ("all files match" if info["verified"] else f"FAILED: {info['problem']}"))
    parity = info.get("parity")
    if parity and "image_cosine" in parity:
        lines.append(f"parity     vs torch at export: lowest cosine image {parity['image_cosine']:.6f}, "
                     f"text {parity['text_cosine']:.6f}; max probability diff "
                     f"{parity['max_prob_diff']:.3g}")
    elif parity:
        lines.append(f"parity     vs torch at export: max logit diff {parity['max_logit_diff']:.3g} "
                     f"(logits up to {parity['logit_scale']:.3g}), greedy "
                     f"{parity['greedy_tokens_agreeing']}/{parity['greedy_tokens_compared']} tokens identical")
    return "\n".join(lines)
