"""Image to first token on a LLaVA-1.5-shaped, SmolVLM-256M-shaped or Qwen2.5-VL-shaped model:
mmedge (three vision/decoder precision pairs; for Qwen2.5-VL fp32 and int8 vision with the int4
decoder, see PRESET_CONFIGS) against transformers
(fp32, PyTorch eager) and, for SmolVLM and Qwen2.5-VL, llama.cpp's multimodal CLI on the same weights, stage by
stage, in one run.

    python bench/bench_image.py [--preset vit-l-14-336|vit-b-16-224|smolvlm-256m|qwen2.5-vl-3b]
                                [--threads 2] [--reps 3] [--new-tokens 64] [--workdir DIR]
                                [--llama-cpp LLAMA_CPP_BUILD_DIR] [--reference FOLDER]

The LLaVA presets use `mmedge.models.tiny.build_llava_shaped`: a CLIP vision tower of real shape
with random (seeded) weights, the LLaVA MLP projector, and the real SmolLM2-135M-Instruct.
"smolvlm-256m" uses `mmedge.models.smolvlm.build_smolvlm_shaped`: SmolVLM-256M-Instruct's real
config and processor (512-px tiles + a global view, 64 tokens a tile) with a random vision tower and
connector around the real SmolLM2-135M-Instruct; `--reference` is the SmolVLM-256M-Instruct
config/tokenizer folder (default ../shared/fixtures/hf/smolvlm-256m-instruct beside the
repository). "qwen2.5-vl-3b" uses `mmedge.models.qwen_vl.build_qwen_vl_shaped`: Qwen2.5-VL-3B's
real vision tower shape (32 blocks x 1280, 112-px windows, full attention in 4 blocks, 2x2 merger)
and processor settings (min/max pixels 3136 / 12845056: the 640x480 frame becomes 644x476, 391
image tokens), all weights random, its merger projecting into a Qwen2.5-0.5B-Instruct-shaped
language model (not the 3B's 2048-wide one); `--reference` is then the Qwen3-VL fixture folder
(tokenizer and chat template; default ../shared/fixtures/hf/qwen3-vl-4b-instruct). The transformers
reference builds its inputs as the Qwen-VL processor does (Qwen2VLImageProcessorPil for the pixels
and grid, <|image_pad|> repeated grid_t*grid_h*grid_w/4 times, M-RoPE positions from its
get_rope_index): the processor class itself needs torchvision. Random vision weights make the
answers meaningless but the speed real. The input is
a 640x480 JPEG (written from `mmedge.benchmark.synthetic_frame`), the prompt "Describe this image
briefly.", greedy, EOS ignored.

Stages: preprocess (JPEG decode + resize/normalize, and for mmedge the patch embedding, fused in its
kernel; for transformers the whole processor call, tokenization included), encode (vision tower +
projector; for mmedge from the patch tokens on), prefill (first decoder forward),
TTFT (call to first token), decode tok/s. Every configuration runs in its own fresh process, one
warm-up then the measured run, alternating within each repetition; medians over repetitions.
An accuracy note compares the int8 vision features with the fp32 ones on the same image.

llama.cpp (`--llama-cpp BUILD`, SmolVLM and Qwen2.5-VL: its converter does not take
transformers-5 LLaVA checkpoints): the HF folder is converted with the tree's own
convert_hf_to_gguf.py (the build folder's parent, or --llama-cpp-src): the text model to f32 then
Q4_0 with llama-quantize, the vision tower + connector (`--mmproj`) to f16. The converter imports
`sentencepiece` before it falls back to the BPE vocabulary, so it must be installed in this
environment (pip install sentencepiece; 0.2.3 was used). llama-mtmd-cli runs a warm-up turn,
/clear, then the measured turn (Qwen2.5-VL: the warm-up in a process of its own); stages come from
its timestamped log (see `_common.llama_mtmd`). For the SmolVLM
preset the script also times mmedge's patch-embedding kernel over one image's tiles, one call per
tile, with 1 and 2 threads.

The HF folder and the bundles are cached in --workdir and re-used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (export_once, find_tool, fmt, llama_convert, llama_mtmd,  # noqa: E402
                     llama_quantize, load_average, markdown_table, medians, run_worker,
                     serve_worker)

PROMPT = "Describe this image briefly."
# the transformers workers' one user turn (an image, then the prompt), as the chat template takes it
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
CONFIGS = (("fp32", "int4"), ("int8", "int4"), ("int8", "int8"))  # (vision, decoder) precision
# Qwen2.5-VL: the int4 decoder with the fp32 and the int8 tower (an int8 decoder adds little for
# an image-bound TTFT and another 3 GB export).
PRESET_CONFIGS = {"qwen2.5-vl-3b": (("fp32", "int4"), ("int8", "int4"))}
STAGES = ("preprocess_ms", "encode_ms", "prefill_ms")
PRESETS = {"vit-l-14-336": "llava", "vit-b-16-224": "llava", "smolvlm-256m": "smolvlm",
           "qwen2.5-vl-3b": "qwen_vl"}
FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures/hf"
DEFAULT_REFERENCE = {"smolvlm": FIXTURES / "smolvlm-256m-instruct",
                     "qwen_vl": FIXTURES / "qwen3-vl-4b-instruct"}
IMAGE_PAD = 151655  # Qwen-VL's <|image_pad|>


# -- workers: one configuration, one fresh process -----------------------------------------------
def _mmedge_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import mmedge

    model = mmedge.load(spec["bundle"], device="cpu", threads=spec["threads"])
    for _ in range(2):  # warm-up, then the measured run
        model.generate(PROMPT, images=[spec["image"]], max_new_tokens=spec["new_tokens"],
                       ignore_eos=True, reuse=False)  # no warm KV prefix, no cached features
    s = model.last_stats
    from PIL import Image

    tiles = len(model.plan_image(Image.open(spec["image"]).convert("RGB")).tiles)
    return {"prompt_tokens": s.prompt_tokens, "image_tokens": s.image_tokens, "tiles": tiles,
            "preprocess_ms": s.preprocess_ms, "encode_ms": s.encode_ms,
            "prefill_ms": s.prefill_ms, "ttft_ms": s.ttft_ms, "decode_tok_s": s.decode_tok_s}


def _transformers_worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["family"] == "qwen_vl":
        return _transformers_qwen_worker(spec)
    import torch
    from PIL import Image
    from transformers import (AutoProcessor, Idefics3ForConditionalGeneration,
                              LlavaForConditionalGeneration)

    torch.set_num_threads(spec["threads"])
    processor = AutoProcessor.from_pretrained(spec["folder"])
    smolvlm = spec["family"] == "smolvlm"
    cls = Idefics3ForConditionalGeneration if smolvlm else LlavaForConditionalGeneration
    model = cls.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    config = model.config
    new_tokens = spec["new_tokens"]

    @torch.inference_mode()
    def run() -> dict[str, Any]:
        started = time.perf_counter()
        image = Image.open(spec["image"]).convert("RGB")
        text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
        inputs = processor(images=image, text=text, return_tensors="pt")
        t_pre = time.perf_counter()
        if smolvlm:  # pixel_values [1, tiles, 3, 512, 512]: all tiles in one batch
            features = model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                pixel_attention_mask=inputs.get("pixel_attention_mask")).pooler_output
        else:
            features = model.model.get_image_features(
                pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy).pooler_output
        features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
        t_enc = time.perf_counter()
        ids = inputs["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        slots = (ids == config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        t_first = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens - 1):  # greedy, EOS ignored
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        t_end = time.perf_counter()
        tiles = inputs["pixel_values"].shape[1] if smolvlm else 1
        return {"prompt_tokens": ids.shape[1], "image_tokens": int(features.shape[0]), "tiles": tiles,
                "preprocess_ms": (t_pre - started) * 1e3, "encode_ms": (t_enc - t_pre) * 1e3,
                "prefill_ms": (t_first - t_enc) * 1e3, "ttft_ms": (t_first - started) * 1e3,
                "decode_tok_s": (new_tokens - 1) / (t_end - t_first)}

    run()  # warm-up
    return run()


def _transformers_qwen_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """transformers' Qwen2_5_VLForConditionalGeneration, inputs built as Qwen2_5_VLProcessor builds
    them (the processor class imports torchvision for its video half, absent here): the chat
    template, Qwen2VLImageProcessorPil for pixel_values / image_grid_thw, each <|image_pad|>
    repeated grid_t * grid_h * grid_w / merge^2 times, then the tokenizer; the M-RoPE positions
    from the model's own get_rope_index (mm_token_type_ids = the image-pad mask), and for each
    decode step the next text position plus the prompt's rope delta, as its generate does."""
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.set_num_threads(spec["threads"])
    folder = Path(spec["folder"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    processor = Qwen2VLImageProcessorPil(**{k: v for k, v in pre.items()
                                           if k not in ("image_processor_type", "processor_class")})
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    merge = model.config.vision_config.spatial_merge_size
    new_tokens = spec["new_tokens"]

    @torch.inference_mode()
    def run() -> dict[str, Any]:
        started = time.perf_counter()
        image = Image.open(spec["image"]).convert("RGB")
        text = tokenizer.apply_chat_template(MESSAGES, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
        vision = processor(images=[image], return_tensors="pt")
        grid = vision["image_grid_thw"]
        head, tail = text.split("<|image_pad|>")
        text = head + "<|image_pad|>" * (int(grid[0].prod()) // merge ** 2) + tail
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        t_pre = time.perf_counter()
        features = model.model.get_image_features(vision["pixel_values"], grid).pooler_output
        features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
        t_enc = time.perf_counter()
        embeds = model.get_input_embeddings()(ids)
        slots = (ids == IMAGE_PAD).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
        positions, delta = model.model.get_rope_index(ids, mm_token_type_ids=(ids == IMAGE_PAD).int(),
                                                      image_grid_thw=grid)
        out = model(inputs_embeds=embeds, position_ids=positions, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        t_first = time.perf_counter()
        past = out.past_key_values
        for step in range(new_tokens - 1):  # greedy, EOS ignored
            pos = (ids.shape[1] + step + delta).view(1, 1, 1).expand(3, 1, 1)
            out = model(input_ids=token, position_ids=pos, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        t_end = time.perf_counter()
        return {"prompt_tokens": ids.shape[1], "image_tokens": int(features.shape[0]), "tiles": 1,
                "preprocess_ms": (t_pre - started) * 1e3, "encode_ms": (t_enc - t_pre) * 1e3,
                "prefill_ms": (t_first - t_enc) * 1e3, "ttft_ms": (t_first - started) * 1e3,
                "decode_tok_s": (new_tokens - 1) / (t_end - t_first)}

    run()  # warm-up
    return run()


def _accuracy_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """int8 vs fp32 vision features of the same image, through the bundles' own vision graphs."""
    import numpy as np

    import mmedge

    feats = {}
    for key in ("fp32", "int8"):
        model = mmedge.load(spec[key], device="cpu", threads=spec["threads"])
        out = model.encode_images([spec["image"]])
        feats[key] = out.reshape(-1, out.shape[-1]).astype(np.float64)
        del model
    a, b = feats["fp32"], feats["int8"]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"max_abs": float(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "max_abs_fp32": float(np.abs(a).max()), "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "cos_all": float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))}


def _patch_embed_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """mmedge's patch-embedding kernel over one image's SmolVLM tiles, one call per tile (as the
    runtime calls it): the frame resized as the idefics3 layout does, the grid tiles as strided
    views of it plus the global view, the real embedding weights of the HF folder."""
    import json
    import statistics

    import numpy as np
    from PIL import Image
    from safetensors import safe_open

    from mmedge import kernels
    from mmedge.vision.layouts.idefics3 import multiple_of_tile, rescale_to_max_len

    folder = Path(spec["folder"])
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    tile = int(pre["max_image_size"]["longest_edge"])
    resample = Image.Resampling(int(pre["resample"]))
    image = Image.open(spec["image"]).convert("RGB")
    image = image.resize(rescale_to_max_len(image.height, image.width, pre["size"]["longest_edge"])[::-1],
                         resample)
    image = image.resize(multiple_of_tile(image.height, image.width, tile)[::-1], resample)
    pixels = np.asarray(image)
    rows, cols = image.height // tile, image.width // tile
    tiles = [pixels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] for r in range(rows) for c in range(cols)]
    tiles.append(np.asarray(image.resize((tile, tile), resample)))
    prefix = "model.vision_model.embeddings."
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        weights = {"weight": np.ascontiguousarray(f.get_tensor(prefix + "patch_embedding.weight"), np.float32),
                   "bias": np.ascontiguousarray(f.get_tensor(prefix + "patch_embedding.bias"), np.float32),
                   "position_embedding": np.ascontiguousarray(
                       f.get_tensor(prefix + "position_embedding.weight"), np.float32)}
    patch = int(weights["weight"].shape[-1])
    tile_spec = {"processor": "siglip", "do_convert_rgb": True, "do_resize": False,
                 "size": {"height": tile, "width": tile}, "resample": int(resample),
                 "do_center_crop": False, "crop_size": None, "do_rescale": pre["do_rescale"],
                 "rescale_factor": pre["rescale_factor"], "do_normalize": pre["do_normalize"],
                 "image_mean": pre["image_mean"], "image_std": pre["image_std"],
                 "image_size": [tile, tile], "patch_size": patch}
    out = np.empty((len(tiles), (tile // patch) ** 2, weights["weight"].shape[0]), np.float32)
    result: dict[str, Any] = {"tiles": len(tiles), "grid": f"{cols}x{rows}"}
    for threads in (1, 2):
        per_tile, totals = [], []
        for rep in range(12):  # 2 warm-up rounds, then 10 measured
            t_start = time.perf_counter()
            times = []
            for i, t in enumerate(tiles):
                t0 = time.perf_counter()
                kernels.patch_embed(t, tile_spec, weights, out=out[i], num_threads=threads)
                times.append(time.perf_counter() - t0)
            if rep >= 2:
                totals.append(time.perf_counter() - t_start)
                per_tile.extend(times)
        result[f"t{threads}_per_tile_ms"] = statistics.median(per_tile) * 1e3
        result[f"t{threads}_all_tiles_ms"] = statistics.median(totals) * 1e3
    # What a batched call could at best give on 2 cores: the tiles split between two Python
    # threads, one kernel thread each (the kernel releases the GIL).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        def half(k: int) -> None:
            for i in range(k, len(tiles), 2):
                kernels.patch_embed(tiles[i], tile_spec, weights, out=out[i], num_threads=1)
        totals = []
        for rep in range(12):
            t_start = time.perf_counter()
            list(pool.map(half, (0, 1)))
            if rep >= 2:
                totals.append(time.perf_counter() - t_start)
    result["split2x1_all_tiles_ms"] = statistics.median(totals) * 1e3
    return result


WORKERS = {"mmedge": _mmedge_worker, "transformers": _transformers_worker,
           "accuracy": _accuracy_worker, "patch_embed": _patch_embed_worker}


# -- the parent ----------------------------------------------------------------------------------
def _prefix(preset: str) -> str:
    """The name the preset's HF folder, bundles and GGUF files share in --workdir."""
    return f"llava-{preset}" if PRESETS[preset] == "llava" else preset


def _prepare_model(workdir: Path, preset: str, reference: Path) -> Path:
    folder = workdir / f"{_prefix(preset)}-hf"
    if not (folder / "config.json").exists():
        partial = workdir / f".{_prefix(preset)}-hf.partial"
        print(f"building the {preset}-shaped model -> {folder}", file=sys.stderr, flush=True)
        if PRESETS[preset] == "llava":
            from mmedge.models.tiny import build_llava_shaped

            build_llava_shaped(partial, vision_preset=preset)
        elif PRESETS[preset] == "qwen_vl":
            from mmedge.models.qwen_vl import build_qwen_vl_shaped

            build_qwen_vl_shaped(partial, reference)
        else:
            from mmedge.models.smolvlm import build_smolvlm_shaped

            build_smolvlm_shaped(partial, reference)
        partial.rename(folder)
    return folder


def _prepare_llama_cpp(args: argparse.Namespace, folder: Path) -> tuple[Path, Path, Path]:
    """(tool folder, text GGUF Q4_0, mmproj GGUF f16) for llama-mtmd-cli, converted once."""
    tools = find_tool(args.llama_cpp, "llama-mtmd-cli")
    if tools is None or not (tools / "llama-quantize").exists():
        sys.exit(f"no llama-mtmd-cli and llama-quantize under {args.llama_cpp} (looked in bin/ and "
                 "the folder itself)")
    source = (args.llama_cpp_src or args.llama_cpp.resolve().parent).resolve()
    if not (source / "convert_hf_to_gguf.py").exists():
        sys.exit(f"no convert_hf_to_gguf.py in {source}; pass the llama.cpp tree as --llama-cpp-src")
    name = args.workdir.expanduser() / _prefix(args.preset)
    print("converting for llama.cpp (text f32 -> Q4_0, mmproj f16)", file=sys.stderr, flush=True)
    text = llama_convert(source, folder, Path(f"{name}-text-f32.gguf"), "f32")
    text = llama_quantize(tools, text, Path(f"{name}-text-Q4_0.gguf"), "Q4_0")
    mmproj = llama_convert(source, folder, Path(f"{name}-mmproj-f16.gguf"), "f16", mmproj=True)
    return tools, text, mmproj


def _prepare_image(workdir: Path) -> Path:
    from PIL import Image

    from mmedge.evaluation.speed import synthetic_frame

    path = workdir / "frame-640x480.jpg"
    if not path.exists():
        Image.fromarray(synthetic_frame(480, 640)).save(path, quality=90)
    return path


def _tokens_per_tile(folder: Path, family: str, image: Path) -> int:
    """Image tokens of one llama.cpp image chunk, for when its log does not count them: SmolVLM's
    image_seq_len a tile; Qwen-VL's one chunk an image, smart_resize's grid / merge^2 (the
    processor's min/max pixels, patch 14 x merge 2)."""
    if family == "smolvlm":
        return json.loads((folder / "processor_config.json").read_text())["image_seq_len"]
    from PIL import Image

    from mmedge.vision.layouts.qwen_geometry import smart_resize

    pre = json.loads((folder / "preprocessor_config.json").read_text())
    factor = pre["patch_size"] * pre["merge_size"]
    width, height = Image.open(image).size
    h, w = smart_resize(height, width, factor, pre["min_pixels"], pre["max_pixels"])
    return (h // factor) * (w // factor)


def _dominant(m: dict[str, float]) -> str:
    stage = max(STAGES, key=lambda k: m[k])
    return f"{stage[:-3]} ({100 * m[stage] / m['ttft_ms']:.0f}%)"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit-l-14-336", choices=tuple(PRESETS))
    parser.add_argument("--reference", type=Path,
                        help="smolvlm-256m: the SmolVLM-256M-Instruct config/tokenizer folder; "
                             "qwen2.5-vl-3b: the Qwen3-VL fixture folder (tokenizer, chat template)")
    parser.add_argument("--llama-cpp", type=Path, metavar="BUILD_DIR",
                        help="smolvlm-256m, qwen2.5-vl-3b: a llama.cpp build folder with "
                             "bin/llama-mtmd-cli and bin/llama-quantize")
    parser.add_argument("--llama-cpp-src", type=Path, metavar="SRC_DIR",
                        help="the llama.cpp tree with convert_hf_to_gguf.py (default: BUILD_DIR/..)")
    parser.add_argument("--engines", default="mmedge,transformers,llama.cpp",
                        help="comma list of the engines to run (default all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmedge-bench"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if serve_worker(args.worker, WORKERS):
        return

    family = PRESETS[args.preset]
    wanted = set(args.engines.split(","))
    workdir = args.workdir.expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    reference = args.reference or DEFAULT_REFERENCE.get(family)
    folder = _prepare_model(workdir, args.preset, reference)
    image = _prepare_image(workdir)
    common = {"threads": args.threads, "image": str(image), "new_tokens": args.new_tokens,
              "family": family}
    engines: list[dict[str, Any]] = []
    if "mmedge" in wanted:
        for vision, decoder in PRESET_CONFIGS.get(args.preset, CONFIGS):
            bundle = export_once(str(folder), workdir / f"{_prefix(args.preset)}-v{vision}-d{decoder}",
                                 decoder, vision)
            engines.append({"name": f"mmedge v{vision} d{decoder}", "engine": "mmedge",
                            "vision": vision, "decoder": decoder, "bundle": str(bundle), **common})
    if "transformers" in wanted:
        engines.append({"name": "transformers fp32", "engine": "transformers", "vision": "fp32",
                        "decoder": "fp32", "folder": str(folder), **common})
    if args.llama_cpp and "llama.cpp" in wanted:
        if family == "llava":
            sys.exit("--llama-cpp: llama.cpp's convert_hf_to_gguf.py --mmproj does not take the "
                     "transformers-5 LLaVA checkpoints of the LLaVA presets; use --preset "
                     "smolvlm-256m or qwen2.5-vl-3b")
        tools, text_gguf, mmproj = _prepare_llama_cpp(args, folder)
        engines.append({"name": "llama.cpp Q4_0", "engine": "llama.cpp", "vision": "f16",
                        "decoder": "Q4_0", "tools": tools, "model": text_gguf, "mmproj": mmproj,
                        "tokens_per_tile": _tokens_per_tile(folder, family, image), **common})
    if not engines:
        sys.exit(f"no engine to run (--engines {args.engines})")

    script = str(Path(__file__).resolve())
    loads = [load_average()]
    results: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for spec in engines:
            print(f"rep {rep + 1}/{args.reps}: {spec['name']}", file=sys.stderr, flush=True)
            if spec["engine"] == "llama.cpp":
                r = llama_mtmd(spec["tools"], spec["model"], spec["mmproj"], image, PROMPT,
                               args.threads, args.new_tokens, spec["tokens_per_tile"],
                               separate_warmup=family == "qwen_vl")
            else:
                r = run_worker(script, spec)
            results.setdefault(spec["name"], []).append(r)
        loads.append(load_average())
    bundles = {e["vision"]: e["bundle"] for e in engines if e["engine"] == "mmedge"}
    accuracy = (run_worker(script, {"name": "accuracy", "engine": "accuracy", "fp32": bundles["fp32"],
                                    "int8": bundles["int8"], **common})
                if "fp32" in bundles and "int8" in bundles else None)
    patch = (run_worker(script, {"name": "patch_embed", "engine": "patch_embed", "folder": str(folder),
                                 **common})
             if family == "smolvlm" and "mmedge" in wanted else None)

    rows = []
    med = {spec["name"]: medians(results[spec["name"]]) for spec in engines}
    for spec in engines:
        m = med[spec["name"]]
        rows.append([spec["engine"], spec["vision"], spec["decoder"], args.threads,
                     fmt(m["preprocess_ms"], 1), fmt(m["encode_ms"]), fmt(m["prefill_ms"]),
                     fmt(m["ttft_ms"]), fmt(m["decode_tok_s"], 1), fmt(m["peak_rss_mb"]),
                     m["image_tokens"], m["tiles"], _dominant(m)])
    print(markdown_table(["engine", "vision", "decoder", "threads", "preprocess ms", "encode ms",
                          "prefill ms", "TTFT ms", "decode tok/s", "peak RSS MB", "image tokens",
                          "tiles", "TTFT dominated by"], rows))
    references = [s["name"] for s in engines if s["engine"] in ("llama.cpp", "transformers")]
    if references:
        print("\nRatios, this run (TTFT and encode: engine / reference, lower is faster; decode: "
              "engine / reference, higher is faster):\n")
        ratio_rows = []
        for ref in references:
            r = med[ref]
            for spec in engines:
                if spec["name"] == ref:
                    continue
                m = med[spec["name"]]
                ratio_rows.append([spec["name"], ref, _ratio(m["ttft_ms"], r["ttft_ms"]),
                                   _ratio(m["encode_ms"], r["encode_ms"]),
                                   _ratio(m["prefill_ms"], r["prefill_ms"]),
                                   _ratio(m["decode_tok_s"], r["decode_tok_s"])])
        print(markdown_table(["engine", "vs", "TTFT", "encode", "prefill", "decode tok/s"], ratio_rows))
    first = results[engines[0]["name"]][0]
    shape = {"llava": f"LLaVA-1.5-shaped {args.preset} (random vision weights) + "
                      "SmolLM2-135M-Instruct",
             "smolvlm": "SmolVLM-256M-shaped (real config and processor, random vision tower + "
                        "connector) + the real SmolLM2-135M-Instruct",
             "qwen_vl": "Qwen2.5-VL-3B vision tower shape and processor (random weights) + a "
                        "Qwen2.5-0.5B-Instruct-shaped language model (random weights)"}[family]
    print(f"\n{shape}; 640x480 JPEG, \"{PROMPT}\"; {args.new_tokens} new tokens, greedy, EOS "
          f"ignored; medians of {args.reps} repetition(s), each configuration in its own process "
          f"after one warm-up, alternating.")
    for spec in engines:
        r = results[spec["name"]][0]
        per_rep = ", ".join(fmt(x["ttft_ms"]) for x in results[spec["name"]])
        prompt = f"prompt {r['prompt_tokens']} tokens, " if "prompt_tokens" in r else ""
        print(f"- {spec['name']}: {prompt}{r['image_tokens']} image tokens in {r['tiles']} tiles; "
              f"TTFT ms per rep {per_rep}")
    if any(s["engine"] == "llama.cpp" for s in engines):
        print("- llama.cpp: llama-mtmd-cli -c 2048, text Q4_0 (llama-quantize defaults) + mmproj f16, "
              "from the same HF folder; its preprocess includes the few text tokens decoded before "
              "the first tile; its image tokens are its tiles x the processor's image_seq_len "
              "(SmolVLM) or smart_resize's grid / 4 for its one Qwen image chunk (the CLI does not "
              "log them); peak RSS of the whole CLI process ("
              + ("the measured turn's: for Qwen the warm-up turn runs in a process of its own, "
                 "see _common.llama_mtmd)" if family == "qwen_vl" else "warm-up turn included)."))
    if accuracy:
        print(f"- int8 vs fp32 vision features (same image, {first['image_tokens']} tokens): max abs "
              f"diff {accuracy['max_abs']:.4g} (max |fp32| {accuracy['max_abs_fp32']:.3g}), mean abs "
              f"diff {accuracy['mean_abs']:.3g}, cosine per token mean {accuracy['cos_mean']:.5f} / "
              f"min {accuracy['cos_min']:.5f}, whole tensor {accuracy['cos_all']:.5f} "
              f"(random vision weights: real checkpoints must be measured on their own)")
    if patch:
        print(f"- mmedge patch-embedding kernel, {patch['tiles']} tiles ({patch['grid']} + global "
              f"view), one call per tile (medians of 10 rounds): 1 thread "
              f"{patch['t1_per_tile_ms']:.2f} ms a tile, {patch['t1_all_tiles_ms']:.1f} ms all "
              f"tiles; 2 threads {patch['t2_per_tile_ms']:.2f} ms a tile, "
              f"{patch['t2_all_tiles_ms']:.1f} ms all tiles; tiles split over 2 Python threads x 1 "
              f"kernel thread {patch['split2x1_all_tiles_ms']:.1f} ms all tiles")
    print(f"- load average (1/5/15 min) before and after each repetition: {' -> '.join(loads)}")


if __name__ == "__main__":
    main()
