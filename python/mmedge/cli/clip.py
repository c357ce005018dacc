"""The CLIP/SigLIP commands: `mmedge classify`, `embed`, `index` and `search`."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator

from mmedge.cli.common import add_device_args, add_parser, load_bundle
from mmedge.errors import MMEdgeError

CLIP_EXAMPLES = """examples:
  mmedge classify clip/ photo.jpg --labels "door,staircase,wall"      # a real CLIP
  mmedge classify tiny-clip/ scene.png --labels "circle,square,triangle"   # mmedge-tiny-clip: scene words
  mmedge classify clip/ photo.jpg --labels "cat,dog" --template "a photo of a {}." \\
      --template "a blurry photo of a {}." --json
  mmedge embed clip/ photos/ extra.jpg -o photos.npy   # folders are searched recursively
  mmedge embed clip/ --text "a red door" --text "a staircase" -o texts.npy
  mmedge index clip/ photos.sqlite photos/            # re-run to add only new or changed files
  mmedge search clip/ photos.sqlite "a red door" -k 5
  mmedge search clip/ photos.sqlite --image query.jpg --json
  mmedge search clip/ photos.sqlite "a red door" -k 8 --show hits.png   # contact sheet
"""


def register(sub) -> dict:
    p = add_parser(sub, "classify", "zero-shot classification of an image (CLIP/SigLIP bundles)", CLIP_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("image")
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "door,staircase,wall"')
    p.add_argument("--template", action="append", default=None, metavar="TEXT",
                   help='prompt with {} for the label (repeatable; averaged as in CLIP\'s zero-shot '
                        'recipe; default "a photo of a {}.")')
    p.add_argument("--json", action="store_true")
    add_device_args(p)

    p = add_parser(sub, "embed", "embed images or texts into a .npy file (CLIP/SigLIP bundles)", CLIP_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("paths", nargs="*", help="image files or folders (searched recursively)")
    p.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    p.add_argument("-o", "--output", required=True,
                   help="the .npy to write: float32 [rows, dim], L2-normalized; the row order "
                        "(paths or texts) goes to <output stem>.rows.txt")
    p.add_argument("--batch-size", type=int, default=8)
    add_device_args(p)

    p = add_parser(sub, "index", "add image files to a search index (SQLite; incremental)", CLIP_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("db", help="the index file (created if missing), e.g. photos.sqlite")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--batch-size", type=int, default=8)
    add_device_args(p)

    p = add_parser(sub, "search", "the indexed images closest to a text or an image", CLIP_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("db", help="an index written by `mmedge index` with the same bundle")
    p.add_argument("query", nargs="?", default=None, help="what to look for, in words")
    p.add_argument("--image", default=None, help="search by this image instead of a text")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--show", default=None, metavar="PNG",
                   help="also write a contact sheet of the query and the hits to this PNG")
    p.add_argument("--json", action="store_true")
    add_device_args(p)
    return {"classify": cmd_classify, "embed": cmd_embed, "index": cmd_index, "search": cmd_search}


@contextlib.contextmanager
def unknown_words_to_stderr() -> Iterator[None]:
    """Print the model's UnknownWordsWarning (a label or query mostly made of words the tokenizer
    does not know) as one "warning: ..." line on stderr; other warnings go their usual way."""
    from mmedge.clip.model import UnknownWordsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnknownWordsWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, UnknownWordsWarning):
                    print(f"warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def cmd_classify(args: argparse.Namespace) -> None:
    labels = [label.strip() for label in args.labels.split(",")]
    model = load_bundle(args)
    with unknown_words_to_stderr():
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

    from mmedge.errors import ImageError

    if bool(args.paths) == bool(args.text):
        raise MMEdgeError("Give image files/folders or --text, not both and not neither.")
    out = Path(args.output)
    if out.suffix != ".npy":
        raise MMEdgeError(f"-o {out}: the output must be a .npy file.")
    from mmedge.clip.index import progress_bar, image_files

    found, not_images = image_files(args.paths)
    files, skipped = [str(f) for f in found], [str(f) for f in not_images]
    model = load_bundle(args)
    if args.text:
        with unknown_words_to_stderr():
            embeds, rows = model.embed_texts(args.text, warn_unknown=True), list(args.text)
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
    from mmedge.clip.index import ImageIndex

    with ImageIndex(args.db, load_bundle(args)) as index:
        report = index.update(args.paths, batch_size=args.batch_size, progress=True)
        print(f"{args.db}: {len(index)} images ({report.added} added, {report.changed} changed, "
              f"{report.unchanged} unchanged, {report.removed} removed)")
    if report.skipped:
        print(f"skipped {len(report.skipped)} file(s):", file=sys.stderr)
        for path, why in report.skipped:
            print(f"  {path}: {why}", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> None:
    from pathlib import Path

    from mmedge.clip.index import ImageIndex

    if (args.query is None) == (args.image is None):
        raise MMEdgeError("Give a query text or --image PATH (one of them).")
    if not Path(args.db).is_file():
        raise MMEdgeError(f"{args.db} does not exist; build it with `mmedge index`.")
    if args.show and Path(args.show).suffix.lower() != ".png":
        raise MMEdgeError(f"--show {args.show}: the contact sheet is a PNG; name it *.png.")
    query = args.query if args.image is None else Path(args.image)
    with ImageIndex(args.db, load_bundle(args)) as index, unknown_words_to_stderr():
        hits = index.search(query, k=args.k)
    if args.show:
        from mmedge.clip.contact_sheet import write_contact_sheet

        print(f"wrote {write_contact_sheet(args.show, hits, query)}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"path": path, "cosine": score} for path, score in hits], indent=2))
        return
    for path, score in hits:
        print(f"{score:7.4f}  {path}")
