"""The `mmedge` command line: export, run, chat, info, bench, eval, and for CLIP/SigLIP bundles
classify, embed, index and search.

Every command but `export` uses only the runtime (no torch). Errors a user can fix are printed as
one message (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from . import __version__
from .errors import MMEdgeError

EPILOG = """examples:
  mmedge export HuggingFaceTB/SmolLM2-135M-Instruct -o smollm2/ --quant int4
  mmedge export ./llava-folder -o llava/              # local Hugging Face folder
  mmedge export model.gguf -o bundle/                 # GGUF (dequantized, then re-exported)
  mmedge run llava/ --image photo.jpg --prompt "What is in front of me?"
  mmedge chat llava/                                  # /image PATH attaches an image
  mmedge info llava/
  mmedge bench llava/ --image photo.jpg --json
  mmedge export openai/clip-vit-base-patch32 -o clip/     # CLIP or SigLIP: image + text towers
  mmedge classify clip/ photo.jpg --labels "door,staircase,wall"
  mmedge embed clip/ photos/ -o photos.npy            # rows listed in photos.rows.txt
  mmedge index clip/ photos.sqlite photos/ && mmedge search clip/ photos.sqlite "a red door"
  mmedge export mmedge-tiny-vlm -o tiny-vlm/ --quant int4   # mmedge's own reference VLM
  mmedge eval tiny-vlm/ --scenes 50                   # accuracy on held-out generated scenes
"""

CLIP_EPILOG = """examples:
  mmedge classify clip/ photo.jpg --labels "door,staircase,wall"
  mmedge classify clip/ photo.jpg --labels "cat,dog" --template "a photo of a {}." \\
      --template "a blurry photo of a {}." --json
  mmedge embed clip/ photos/ extra.jpg -o photos.npy   # folders are searched recursively
  mmedge embed clip/ --text "a red door" --text "a staircase" -o texts.npy
  mmedge index clip/ photos.sqlite photos/            # re-run to add only new or changed files
  mmedge search clip/ photos.sqlite "a red door" -k 5
  mmedge search clip/ photos.sqlite --image query.jpg --json
  mmedge search clip/ photos.sqlite "a red door" -k 8 --show hits.png   # contact sheet
"""


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (default: auto = CUDA if available, else CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    _add_device_args(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")
    p.add_argument("--system", default=None, help="system prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmedge", description="Run small vision-language models on this device.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mmedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a Hugging Face model or GGUF file to a bundle",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id (owner/name), local HF folder, or .gguf file")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--quant", default="fp32", choices=["fp32", "fp16", "int8", "int4"],
                   help="decoder precision (default fp32; int8 and int4 keep 8/4-bit weights in "
                        "blocks of 32; int4 is smallest, and fastest with --requantize)")
    p.add_argument("--vision-quant", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="vision graph precision (default fp32)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check vs torch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--requantize", action="store_true",
                   help="int4: round-to-nearest again even where weights already lie on a GGUF "
                        "Q4/Q8 grid (a .gguf file or a model built from one) instead of keeping "
                        "it (faster decode, answers drift further from the original)")

    p = sub.add_parser("run", help="answer one prompt, streaming",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-i", "--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--stats", action="store_true", help="print stage timings afterwards")
    _add_generation_args(p)

    p = sub.add_parser("chat", help="multi-turn chat in the terminal (/image PATH, /reset, /quit)")
    p.add_argument("bundle")
    _add_generation_args(p)

    p = sub.add_parser("info", help="what a bundle holds: graphs, shapes, precision, checksums")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="per-stage timings and memory of a bundle")
    p.add_argument("bundle")
    p.add_argument("-i", "--image", default=None, help="image file (default: a synthetic 640x480 "
                                                       "frame for vision bundles)")
    p.add_argument("-p", "--prompt", default=None)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    _add_device_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("classify", help="zero-shot classification of an image (CLIP/SigLIP bundles)",
                       epilog=CLIP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("image")
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "door,staircase,wall"')
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help='prompt with {} for the label (repeatable; averaged as in CLIP\'s zero-shot '
                        'recipe; default "a photo of a {}.")')
    p.add_argument("--json", action="store_true")
    _add_device_args(p)

    p = sub.add_parser("embed", help="embed images or texts into a .npy file (CLIP/SigLIP bundles)",
                       epilog=CLIP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("paths", nargs="*", help="image files or folders (searched recursively)")
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument("-o", "--output", required=True,
                   help="the .npy to write: float32 [rows, dim], L2-normalized; the row order "
                        "(paths or texts) goes to <output stem>.rows.txt")
    p.add_argument("--batch-size", type=int, default=8)
    _add_device_args(p)

    p = sub.add_parser("index", help="add image files to a search index (SQLite; incremental)",
                       epilog=CLIP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("db", help="the index file (created if missing), e.g. photos.sqlite")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--batch-size", type=int, default=8)
    _add_device_args(p)

    p = sub.add_parser("search", help="the indexed images closest to a text or an image",
                       epilog=CLIP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("db", help="an index written by `mmedge index` with the same bundle")
    p.add_argument("query", nargs="?", default=None, help="what to look for, in words")
    p.add_argument("--image", default=None, help="search by this image instead of a text")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--show", default=None, metavar="PNG",
                   help="also write a contact sheet of the query and the hits to this PNG")
    p.add_argument("--json", action="store_true")
    _add_device_args(p)

    p = sub.add_parser("eval", help="accuracy on held-out generated scenes (any VLM or CLIP bundle)",
                       epilog="""examples:
  mmedge export mmedge-tiny-vlm -o tiny-vlm/ && mmedge eval tiny-vlm/ --scenes 50
  mmedge export mmedge-tiny-clip -o tiny-clip/ && mmedge eval tiny-clip/ --scenes 500 --json
  mmedge eval tiny-vlm/ --answers answers.jsonl    # every question, reference and answer

VLMs: exact-match accuracy per question kind (colour, shape, count, position, word).
CLIP/SigLIP: zero-shot accuracy (colour, shape, count) and text-to-image recall@1/@5.
The scenes come from mmedge.scenes' held-out series: the same on every machine.""",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes to grade (default 50)")
    p.add_argument("--answers", default=None, metavar="JSONL",
                   help="VLMs: write each question, its reference answer and the model's to this file")
    p.add_argument("--json", action="store_true")
    _add_device_args(p)
    return parser


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=args.stop)


def _load(args: argparse.Namespace):
    from .model import load

    model = load(args.bundle, device=args.device, threads=args.threads)
    wants_clip = args.command in ("classify", "embed", "index", "search")
    if wants_clip != (model.bundle.family == "clip"):
        need = "a CLIP/SigLIP bundle" if wants_clip else "a language or vision-language model"
        raise MMEdgeError(f"`mmedge {args.command}` needs {need}; {args.bundle} holds a "
                          f"'{model.bundle.family}' model.")
    print(f"[mmedge] {model.device.note}", file=sys.stderr)
    return model


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


def cmd_run(args: argparse.Namespace) -> None:
    from .image import load_image

    images = [load_image(path) for path in args.image]
    model = _load(args)
    for chunk in model.generate(args.prompt, images, system=args.system, stream=True,
                                **_generation_kwargs(args)):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        from .benchmark import format_stats

        print(format_stats(model.last_stats), file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from .chat import chat_loop

    chat_loop(_load(args), system=args.system, **_generation_kwargs(args))


def cmd_info(args: argparse.Namespace) -> None:
    from .info import bundle_info, format_info

    info = bundle_info(args.bundle)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmark import bench_bundle, format_bench
    from .bundle import open_bundle

    if open_bundle(args.bundle, verify=False).family == "clip":
        raise MMEdgeError("`mmedge bench` measures generation; it does not cover CLIP/SigLIP "
                          "bundles yet (time `mmedge embed` instead).")

    result = bench_bundle(args.bundle, image=args.image, prompt=args.prompt,
                          new_tokens=args.new_tokens, runs=args.runs, device=args.device,
                          threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))


def cmd_classify(args: argparse.Namespace) -> None:
    labels = [label.strip() for label in args.labels.split(",")]
    model = _load(args)
    ranked = model.classify(args.image, labels, templates=args.template or ("a photo of a {}.",))
    if args.json:
        print(json.dumps([{"label": label, "probability": prob} for label, prob in ranked], indent=2))
        return
    width = max(len("label"), *(len(label) for label, _ in ranked))
    print(f"{'label':<{width}}  probability")
    for label, prob in ranked:
        print(f"{label:<{width}}  {prob:11.4f}  {'#' * round(prob * 30)}")


def cmd_embed(args: argparse.Namespace) -> None:
    from pathlib import Path

    import numpy as np

    from .errors import ImageError

    if bool(args.paths) == bool(args.text):
        raise MMEdgeError("Give image files/folders or --text, not both and not neither.")
    out = Path(args.output)
    if out.suffix != ".npy":
        raise MMEdgeError(f"-o {out}: the output must be a .npy file.")
    from .index import progress_bar, image_files

    found, not_images = image_files(args.paths)
    files, skipped = [str(f) for f in found], [str(f) for f in not_images]
    model = _load(args)
    if args.text:
        embeds, rows = model.embed_texts(args.text), list(args.text)
    else:
        parts, rows = [], []
        with progress_bar(True, len(files), "embed") as bar:   # only on a terminal
            bar.set_postfix(skipped=len(skipped), refresh=False)
            for start in range(0, len(files), args.batch_size):
                batch = files[start:start + args.batch_size]
                try:
                    parts.append(model.embed_images(batch, batch_size=args.batch_size))
                    rows += batch
                except ImageError:   # find the unreadable ones, keep the rest
                    for f in batch:
                        try:
                            parts.append(model.embed_images([f]))
                            rows.append(f)
                        except ImageError as e:
                            skipped.append(f"{f} ({e})")
                bar.update(len(batch))
                bar.set_postfix(skipped=len(skipped), refresh=False)
        if not rows:
            raise MMEdgeError("No image could be read; nothing was written."
                              + "".join(f"\n  skipped {s}" for s in skipped))
        embeds = np.concatenate(parts)
    np.save(out, embeds.astype(np.float32))
    rows_file = out.with_suffix(".rows.txt")
    rows_file.write_text("".join(row.replace("\n", " ") + "\n" for row in rows))
    print(f"wrote {out} ({embeds.shape[0]} x {embeds.shape[1]}) and {rows_file}")
    if skipped:
        print(f"skipped {len(skipped)} file(s) that are not readable images:", file=sys.stderr)
        for s in skipped:
            print(f"  {s}", file=sys.stderr)


def cmd_index(args: argparse.Namespace) -> None:
    from .index import ImageIndex

    with ImageIndex(args.db, _load(args)) as index:
        report = index.update(args.paths, batch_size=args.batch_size, progress=True)
        print(f"{args.db}: {len(index)} images ({report.added} added, {report.changed} changed, "
              f"{report.unchanged} unchanged, {report.removed} removed)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} file(s):", file=sys.stderr)
        for path, why in report.skipped:
            print(f"  {path}: {why}", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .index import ImageIndex

    if (args.query is None) == (args.image is None):
        raise MMEdgeError("Give a query text or --image PATH (one of them).")
    if not Path(args.db).is_file():
        raise MMEdgeError(f"{args.db} does not exist; build it with `mmedge index`.")
    if args.show and Path(args.show).suffix.lower() != ".png":
        raise MMEdgeError(f"--show {args.show}: the contact sheet is a PNG; name it *.png.")
    query = args.query if args.image is None else Path(args.image)
    with ImageIndex(args.db, _load(args)) as index:
        hits = index.search(query, k=args.k)
    if args.show:
        from .contact_sheet import write_contact_sheet

        print(f"wrote {write_contact_sheet(args.show, hits, query)}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"path": path, "cosine": score} for path, score in hits], indent=2))
        return
    for path, score in hits:
        print(f"{score:7.4f}  {path}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_bundle, format_figures
    from .model import load

    if args.scenes < 1:
        raise MMEdgeError("--scenes must be at least 1.")
    model = load(args.bundle, device=args.device, threads=args.threads)
    print(f"[mmedge] {model.device.note}", file=sys.stderr)
    figures = evaluate_bundle(model, args.scenes, answers_path=args.answers)
    print(json.dumps(figures, indent=2) if args.json else format_figures(figures))


COMMANDS = {"export": cmd_export, "run": cmd_run, "chat": cmd_chat, "info": cmd_info,
            "bench": cmd_bench, "classify": cmd_classify, "embed": cmd_embed,
            "index": cmd_index, "search": cmd_search, "eval": cmd_eval}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except MMEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
