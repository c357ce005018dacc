"""`mmedge export`: a Hugging Face model, a local folder or a GGUF file -> a bundle (needs the
`export` extra: torch, transformers)."""

from __future__ import annotations

import argparse

from mmedge.cli.common import add_parser
from mmedge.errors import MMEdgeError


def register(sub) -> dict:
    p = add_parser(sub, "export", "export a Hugging Face model or GGUF file to a bundle")
    p.add_argument("model", help="hub id (owner/name), local HF folder, or .gguf file")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--quant", default="fp32", choices=["fp32", "fp16", "int8", "int4"],
                   help="decoder precision (default fp32; int8 and int4 keep 8/4-bit weights in "
                        "blocks of 32; int4 is smallest, and fastest with --requantize)")
    p.add_argument("--vision-quant", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="vision graph precision (default fp32)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check vs torch")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle (only a folder holding an mmedge manifest; "
                        "any other folder is refused)")
    p.add_argument("--requantize", action="store_true",
                   help="int4: round-to-nearest again even where weights already lie on a GGUF "
                        "Q4/Q8 grid (a .gguf file or a model built from one) instead of keeping "
                        "it (faster decode, answers drift further from the original)")
    return {"export": cmd_export}


def cmd_export(args: argparse.Namespace) -> None:
    try:
        from mmedge.export import export_model
    except ImportError as e:
        raise MMEdgeError(f"Exporting needs the export extra ({e.name} is missing): "
                          f"pip install 'mmedge[export]'") from None
    manifest = export_model(args.model, args.output, precision=args.quant,
                            vision_precision=args.vision_quant, parity=not args.no_parity,
                            overwrite=args.overwrite, requantize=args.requantize)
    parity = manifest["exporter"].get("parity")
    if manifest["family"] == "clip":
        print(f"wrote {args.output} (clip, {manifest['quantization']['image']})")
        if parity:
            print(f"parity vs torch: lowest cosine image {parity['image_cosine']:.6f}, text "
                  f"{parity['text_cosine']:.6f}; max probability diff {parity['max_prob_diff']:.3g}")
        return
    print(f"wrote {args.output} ({manifest['family']}, decoder {args.quant})")
    if parity:
        print(f"parity vs torch: max logit diff {parity['max_logit_diff']:.3g}, greedy tokens "
              f"{parity['greedy_tokens_agreeing']}/{parity['greedy_tokens_compared']} identical")
