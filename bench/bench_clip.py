"""CLIP image embedding and image indexing: mmedge (fp32 and int8 bundles) against transformers
(`CLIPModel.get_image_features`, fp32, PyTorch eager) on the CPU.

    python bench/bench_clip.py [--threads 2] [--reps 3] [--n-images 2000] [--workdir DIR]

(from a source checkout, run it with the repository's `python/` on PYTHONPATH and `mmedge.export`
importable, as tests/conftest.py arranges.)

The model has the real openai/clip-vit-base-patch32 shape (its config, tokenizer and preprocessor
config from the shared fixtures) with random seeded weights: the speed is real, the embeddings are
not. Two measurements:

- Image embedding, images/s at batch 1 and batch 8, preprocessing included on both sides, from the
  same decoded 640x480 PIL images: mmedge `embed_images` (its in-memory cache disabled) and, for
  transformers, `CLIPImageProcessor` (and the Pil variant) followed by `get_image_features`. Every
  engine runs in its own fresh process (two warm-up batches, then the measured images), engines
  alternate within each repetition, medians over repetitions; the ratio is against transformers
  fp32 with its faster processor.
- `mmedge index` on a folder of --n-images generated 640x480 JPEGs: images/s and total seconds of
  a fresh index (the whole command: process start, bundle load, JPEG decode, embedding, SQLite), and
  the time of a re-index with nothing changed.

The HF folder, the bundles and the JPEG folder are made once in --workdir and re-used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (serve_worker, export_once, fmt, load_average, markdown_table,  # noqa: E402
                     medians, run_process, run_worker)

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "hf" / "clip-vit-base-patch32"
BATCHES = (1, 8)
EMBED_IMAGES = 32     # images timed per batch size and engine (after one warm-up batch)
SIZE = (640, 480)


# -- setup (once, cached in the workdir) ---------------------------------------------------------
def build_hf_folder(folder: Path, seed: int = 0) -> Path:
    """A CLIPModel of the real clip-vit-base-patch32 config with seeded random weights."""
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    import transformers

    print(f"building {folder}", file=sys.stderr, flush=True)
    torch.manual_seed(seed)
    config = transformers.CLIPConfig.from_pretrained(FIXTURE)
    model = transformers.CLIPModel(config).eval()
    tmp = folder.with_suffix(".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in FIXTURE.iterdir():
        if f.name != "config.json":
            shutil.copy(f, tmp / f.name)
    tmp.rename(folder)
    return folder


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n 640x480 JPEGs of varied content: a smooth random field, a few flat rectangles, noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:05d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"writing {len(missing)} JPEGs into {folder}", file=sys.stderr, flush=True)
    for i in missing:
        rng = np.random.default_rng([seed, i])
        coarse = rng.integers(0, 256, (rng.integers(3, 24), rng.integers(3, 32), 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(SIZE, Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(1, 6)):
            x0, y0 = rng.integers(0, 600), rng.integers(0, 440)
            box = (x0, y0, x0 + rng.integers(20, 300), y0 + rng.integers(20, 240))
            draw.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (SIZE[1], SIZE[0], 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(paths[i], quality=90)
    return paths


# -- workers: one engine, one fresh process -------------------------------------------------------
def _pil_images(spec: dict[str, Any]):
    from PIL import Image

    images = []
    for path in spec["images"]:
        with Image.open(path) as im:
            images.append(im.convert("RGB"))
    return images


def _time_batches(embed, images, batch: int) -> float:
    """images/s of `embed(list of images)` over `images` in batches, after two warm-up batches."""
    for _ in range(2):
        embed(images[:batch])
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        embed(images[i:i + batch])
    return len(images) / (time.perf_counter() - start)


def _mmedge_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import mmedge

    model = mmedge.load(spec["bundle"], device="cpu", threads=spec["threads"])
    model.cache_size = 0   # every image is embedded: no reuse between repetitions or batches
    images = _pil_images(spec)
    return {f"b{b}": _time_batches(lambda ims: model.embed_images(ims, batch_size=b), images, b)
            for b in BATCHES}


def _transformers_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(spec["threads"])
    processor = getattr(transformers, spec["processor"]).from_pretrained(spec["folder"])
    model = transformers.CLIPModel.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    images = _pil_images(spec)

    def embed(ims):
        with torch.inference_mode():
            pixels = processor(images=ims, return_tensors="pt")["pixel_values"]
            out = model.get_image_features(pixel_values=pixels)
            features = out if isinstance(out, torch.Tensor) else out.pooler_output
            return torch.nn.functional.normalize(features, dim=-1)

    return {f"b{b}": _time_batches(embed, images, b) for b in BATCHES}


def _index_run(bundle: Path, db: Path, folder: Path, threads: int) -> float:
    start = time.perf_counter()
    code, out, err, _ = run_process([sys.executable, "-m", "mmedge.cli", "index", str(bundle),
                                     str(db), str(folder), "--device", "cpu", "--threads",
                                     str(threads)])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"mmedge index failed (exit {code}):\n{out[-2000:]}\n{err[-2000:]}")
    return seconds


# -- the parent ----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-images", type=int, default=2000, help="JPEGs in the indexed folder")
    ap.add_argument("--index-bundle", default="fp32", choices=["fp32", "int8"],
                    help="which bundle `mmedge index` runs (default fp32)")
    ap.add_argument("--workdir", default="/tmp/mmedge-bench-clip")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if serve_worker(args.worker, {"mmedge": _mmedge_worker, "transformers": _transformers_worker}):
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    folder = build_hf_folder(work / "hf")
    bundles = {p: export_once(str(folder), work / f"bundle-{p}", p) for p in ("fp32", "int8")}
    photos = work / f"jpeg-{args.n_images}"
    paths = make_images(photos, args.n_images)
    sample = [str(p) for p in paths[:EMBED_IMAGES]]
    if len(sample) < EMBED_IMAGES:
        sample = [str(p) for p in make_images(work / "jpeg-sample", EMBED_IMAGES)]
    if args.reps < 1:   # --reps 0: only prepare the workdir
        return

    engines = {f"mmedge {p}": {"engine": "mmedge", "bundle": str(b)} for p, b in bundles.items()}
    for processor in ("CLIPImageProcessor", "CLIPImageProcessorPil"):
        engines[f"transformers fp32 ({processor})"] = {"engine": "transformers", "folder": str(folder),
                                                       "processor": processor}
    load_before = load_average()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    index_runs: list[dict[str, float]] = []
    for rep in range(args.reps):
        for name, spec in engines.items():
            print(f"rep {rep + 1}/{args.reps}: {name}", file=sys.stderr, flush=True)
            results[name].append(run_worker(__file__, {**spec, "name": name, "images": sample,
                                                       "threads": args.threads}))
        print(f"rep {rep + 1}/{args.reps}: mmedge index ({args.n_images} images)", file=sys.stderr,
              flush=True)
        db = work / "index.sqlite"
        db.unlink(missing_ok=True)
        fresh = _index_run(bundles[args.index_bundle], db, photos, args.threads)
        again = _index_run(bundles[args.index_bundle], db, photos, args.threads)
        index_runs.append({"fresh_s": fresh, "reindex_s": again})
    load_after = load_average()

    med = {name: medians(rows) for name, rows in results.items()}
    hf = {b: max(m[f"b{b}"] for name, m in med.items() if name.startswith("transformers"))
          for b in BATCHES}
    rows = []
    for name, m in med.items():
        rows.append([name, args.threads] + [f"{fmt(m[f'b{b}'], 1)} ({m[f'b{b}'] / hf[b]:.2f}x)"
                                            for b in BATCHES] + [fmt(m["peak_rss_mb"])])
    print(f"\n## CLIP ViT-B/32 image embedding (random weights, real shape), {args.threads} threads, "
          f"{EMBED_IMAGES} 640x480 images per batch size, medians of {args.reps}")
    print(f"load average before {load_before}, after {load_after}\n")
    print(markdown_table(["engine", "threads"] + [f"batch {b} images/s (vs transformers)"
                                                  for b in BATCHES] + ["peak RSS MB"], rows))
    idx = medians(index_runs)
    print(f"\n## `mmedge index` ({args.index_bundle} bundle), {args.n_images} JPEGs 640x480, "
          f"{args.threads} threads, medians of {args.reps}\n")
    print(markdown_table(["run", "seconds", "images/s"],
                         [["fresh index (whole command)", fmt(idx["fresh_s"], 1),
                           fmt(args.n_images / idx["fresh_s"], 1)],
                          ["re-index, nothing changed", fmt(idx["reindex_s"], 2), "—"]]))
    goal = min(med["mmedge fp32"][f"b{b}"] / hf[b] for b in BATCHES)
    print(f"\nGoal (mmedge fp32 >= 2x transformers fp32 at every batch size): "
          f"{'met' if goal >= 2 else 'NOT met'} (lowest ratio {goal:.2f}x).")


if __name__ == "__main__":
    main()
