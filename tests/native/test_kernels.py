"""The native kernels of `mmedge._C` (csrc/patch_embed.cpp, csrc/attention.cpp) against float64
numpy references, through `mmedge.kernels`.

- patch embedding: the resized + cropped pixels equal PIL's `Image.resize(..., BICUBIC)` exactly
  (identity projection, no rescale/normalize), the normalized values equal `ImagePreprocessor`'s,
  and the projection (+ bias, class token, positions) matches a float64 conv;
- attention: non-causal, causal, GQA ratios 1/3/8, head dims 64..128, masks, 1-token sequences,
  decode against a preallocated cache up to 8k keys, strided layouts;
- the bindings reject wrong dtypes, shapes and layouts with an error naming the argument.
Tolerances are per op, `atol + rtol * |ref|` (STYLE.md #5). CUDA kernels are compared with the CPU
ones and skip without a GPU. Everything skips when `_C` is not built.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

_C = pytest.importorskip("mmedge._C", reason="mmedge._C is not built; run `pip install .`")

from mmedge import kernels  # noqa: E402
from mmedge.vision.preprocess import ImagePreprocessor, center_crop, resize_output_size  # noqa: E402

# Per-op tolerances (atol, rtol) of the float32 kernels against float64 references.
TOL = {
    "patch_embed": (2e-5, 1e-4),  # K = 3 P^2 <= 768 float32 products per token
    "attention": (2e-5, 1e-4),    # online softmax + float32 dot products over <= 8k keys
}

CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def assert_close(got: np.ndarray, ref: np.ndarray, op: str) -> None:
    atol, rtol = TOL[op]
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    bound = atol + rtol * np.abs(ref)
    bad = np.argwhere(~(err <= bound))
    if len(bad):
        first = [f"{tuple(i)}: got {got[tuple(i)]!r} ref {ref[tuple(i)]!r}" for i in bad[:5]]
        pytest.fail(f"{op}: {len(bad)} of {ref.size} values off (max err {err.max():.3g}); "
                    + "; ".join(first))


# ---- patch embedding ------------------------------------------------------------------------------

def clip_spec(size: int, patch: int, crop: int | None = None, *, rescale=True, normalize=True) -> dict:
    crop = crop or size
    return {"processor": "clip", "do_convert_rgb": True, "do_resize": True,
            "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": crop, "width": crop}, "do_rescale": rescale,
            "rescale_factor": 1 / 255, "do_normalize": normalize, "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD, "image_size": [crop, crop], "patch_size": patch}


def siglip_spec(height: int, width: int, patch: int, *, rescale=True, normalize=True) -> dict:
    return {"processor": "siglip", "do_convert_rgb": True, "do_resize": True,
            "size": {"height": height, "width": width}, "resample": 3, "do_center_crop": False,
            "crop_size": None, "do_rescale": rescale, "rescale_factor": 1 / 255,
            "do_normalize": normalize, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
            "image_size": [height, width], "patch_size": patch}


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth content plus noise: bicubic overshoot then hits the uint8 clipping in both passes.
    y, x = np.mgrid[0:h, 0:w]
    base = 127 + 120 * np.sin(x[..., None] * 0.05 + y[..., None] * 0.03 + np.arange(3))
    return np.clip(base + rng.integers(-60, 60, (h, w, 3)), 0, 255).astype(np.uint8)


def identity_weights(patch: int) -> dict:
    k = 3 * patch * patch
    return {"weight": np.eye(k, dtype=np.float32).reshape(k, 3, patch, patch)}


def patches_of(pixel_values: np.ndarray, patch: int) -> np.ndarray:
    """[3, H, W] -> [patches, 3 * P * P], patches row-major, each flattened [c][i][j] like the conv
    (stride P, leftover rows and columns dropped)."""
    c, h, w = pixel_values.shape
    h, w = h // patch * patch, w // patch * patch
    x = pixel_values[:, :h, :w].reshape(c, h // patch, patch, w // patch, patch)
    return x.transpose(1, 3, 0, 2, 4).reshape((h // patch) * (w // patch), c * patch * patch)


FRAMES = [(1, 1), (2, 3), (7, 5), (33, 17), (17, 33), (224, 224), (13, 500), (480, 640),
          (1080, 1920), (1920, 1080), (500, 400), (301, 387)]


@pytest.mark.parametrize("hw", FRAMES, ids=[f"{h}x{w}" for h, w in FRAMES])
@pytest.mark.parametrize("family", ["clip224", "siglip384"])
def test_resized_pixels_equal_pil(hw, family):
    """Identity projection, no rescale/normalize: the tokens are the cropped pixels, PIL's exactly."""
    patch = 16
    spec = (clip_spec(224, patch, rescale=False, normalize=False) if family == "clip224"
            else siglip_spec(384, 384, patch, rescale=False, normalize=False))
    img = frame(*hw)
    tokens = kernels.patch_embed(img, spec, identity_weights(patch))
    # Straight from PIL and the crop rule, without ImagePreprocessor.
    rh, rw = resize_output_size(hw[0], hw[1], spec["size"])
    pil = np.asarray(Image.fromarray(img).resize((rw, rh), Image.Resampling.BICUBIC))
    if spec["do_center_crop"]:
        pil = center_crop(pil, spec["crop_size"]["height"], spec["crop_size"]["width"])
    expected = patches_of(pil.transpose(2, 0, 1).astype(np.float32), patch)
    assert np.abs(tokens - expected).max() == 0


def test_resize_pass_order_sweep():
    """Random sizes up and down on each axis, including the cases where Pillow (13+) resamples
    vertically first; P = 1 and an identity projection make the tokens the pixels."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        (fh, fw), (h, w) = rng.integers(5, 160, 2), rng.integers(5, 160, 2)
        img = frame(int(fh), int(fw), seed=int(fh * fw))
        tokens = kernels.patch_embed(img, siglip_spec(int(h), int(w), 1, rescale=False,
                                                      normalize=False), identity_weights(1))
        pil = np.asarray(Image.fromarray(img).resize((int(w), int(h)), Image.Resampling.BICUBIC))
        assert np.abs(tokens - pil.reshape(-1, 3)).max() == 0, ((fh, fw), (h, w))


@pytest.mark.parametrize("hw", [(7, 5), (480, 640), (1080, 1920), (300, 200)],
                         ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("spec", [clip_spec(224, 14), clip_spec(336, 14), siglip_spec(224, 224, 16),
                                  siglip_spec(64, 96, 8)],
                         ids=["clip224", "clip336", "siglip224", "siglip64x96"])
def test_normalized_values_match_image_preprocessor(hw, spec):
    patch = spec["patch_size"]
    img = frame(*hw, seed=1)
    tokens = kernels.patch_embed(img, spec, identity_weights(patch))
    ref = patches_of(ImagePreprocessor(spec).preprocess_one(Image.fromarray(img)), patch)
    assert np.abs(tokens - ref).max() <= 1e-5


def test_crop_larger_than_resize_pads_with_zero_pixels():
    # shortest edge 40, crop 48: transformers zero-pads the uint8 image before normalizing.
    spec = clip_spec(40, 8, crop=48)
    img = frame(30, 70, seed=2)
    tokens = kernels.patch_embed(img, spec, identity_weights(8))
    ref = patches_of(ImagePreprocessor(spec).preprocess_one(Image.fromarray(img)), 8)
    assert np.abs(tokens - ref).max() <= 1e-5


def random_tower_weights(patch: int, dim: int, tokens: int, *, bias: bool, cls: bool, seed=3):
    rng = np.random.default_rng(seed)
    w = {"weight": (rng.standard_normal((dim, 3, patch, patch)) * 0.02).astype(np.float32)}
    if bias:
        w["bias"] = rng.standard_normal(dim).astype(np.float32)
    if cls:
        w["class_embedding"] = rng.standard_normal(dim).astype(np.float32)
    w["position_embedding"] = rng.standard_normal((tokens + cls, dim)).astype(np.float32)
    return w


@pytest.mark.parametrize("family,hw,dim,size,patch", [
    ("clip", (480, 640), 96, 224, 14), ("clip", (1080, 1920), 64, 224, 14),
    ("siglip", (333, 517), 72, 224, 16), ("siglip", (1, 1), 40, 224, 16),
    ("siglip", (480, 640), 48, 384, 14)])  # 384 / 14: 27 x 27 patches, 6 rows/columns unused
def test_projection_matches_float64_conv(family, hw, dim, size, patch):
    spec = clip_spec(size, patch) if family == "clip" else siglip_spec(size, size, patch)
    n_patches = (size // patch) ** 2
    cls = family == "clip"
    w = random_tower_weights(patch, dim, n_patches, bias=not cls, cls=cls)
    img = frame(*hw, seed=4)
    tokens = kernels.patch_embed(img, spec, w)
    x = patches_of(ImagePreprocessor(spec).preprocess_one(Image.fromarray(img)), patch)
    ref = x.astype(np.float64) @ w["weight"].reshape(dim, -1).T.astype(np.float64)
    if "bias" in w:
        ref += w["bias"]
    if cls:
        ref = np.concatenate([w["class_embedding"][None].astype(np.float64), ref])
    ref += w["position_embedding"]
    assert_close(tokens, ref, "patch_embed")


def test_patch_embed_out_threads_and_strided_frame():
    spec = siglip_spec(64, 64, 8)
    w = random_tower_weights(8, 48, 64, bias=True, cls=False)
    big = frame(200, 300, seed=5)
    view = big[10:190, 20:260]  # strided rows, packed pixels
    expected = kernels.patch_embed(np.ascontiguousarray(view), spec, w)
    out = np.full((64, 48), np.nan, dtype=np.float32)
    got = kernels.patch_embed(view, spec, w, out=out, num_threads=1)
    assert got is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(kernels.patch_embed(view, spec, w, num_threads=2), expected)


def test_patch_embed_rejects_bad_arguments():
    spec = siglip_spec(32, 32, 8)
    w = random_tower_weights(8, 16, 16, bias=True, cls=False)
    img = frame(40, 50)
    with pytest.raises(TypeError, match="'frame'.*uint8"):
        kernels.patch_embed(img.astype(np.float32), spec, w)
    with pytest.raises(ValueError, match="'frame'"):
        kernels.patch_embed(img[..., :2], spec, w)
    with pytest.raises(ValueError, match="'frame'"):
        kernels.patch_embed(img[:, ::2], spec, w)  # pixels not packed
    with pytest.raises(TypeError, match="'weight'.*float32"):
        kernels.patch_embed(img, spec, {**w, "weight": w["weight"].astype(np.float64)})
    with pytest.raises(ValueError, match="'weight'.*C-contiguous"):
        kernels.patch_embed(img, spec, {**w, "weight": np.asfortranarray(w["weight"])})
    with pytest.raises(ValueError, match="'weight'"):
        kernels.patch_embed(img, spec, {**w, "weight": w["weight"][:, :2]})
    with pytest.raises(ValueError, match="'bias'"):
        kernels.patch_embed(img, spec, {**w, "bias": w["bias"][:-1]})
    with pytest.raises(ValueError, match="'position_embedding'"):
        kernels.patch_embed(img, spec, {**w, "position_embedding": w["position_embedding"][1:]})
    with pytest.raises(ValueError, match="'image_size'"):
        kernels.patch_embed(img, siglip_spec(6, 32, 8), w)
    read_only = np.zeros((16, 16), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="'out'.*read-only"):
        kernels.patch_embed(img, spec, w, out=read_only)
    with pytest.raises(ValueError, match="BICUBIC"):
        kernels.patch_embed(img, {**spec, "resample": 2}, w)


# ---- attention -----------------------------------------------------------------------------------

def attention_ref(q, k, v, *, mask=None, causal=False, scale=None, kv_len=None):
    """float64 softmax(q k^T * scale + mask) v with GQA, a cache prefix and bottom-right causality."""
    kv_len = k.shape[2] if kv_len is None else kv_len
    group = q.shape[1] // k.shape[1]
    k = np.repeat(k[:, :, :kv_len].astype(np.float64), group, axis=1)
    v = np.repeat(v[:, :, :kv_len].astype(np.float64), group, axis=1)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = q.astype(np.float64) @ k.transpose(0, 1, 3, 2) * scale
    if mask is not None:
        s = s + mask[..., :kv_len]
    if causal:
        t, n = q.shape[2], kv_len
        s = np.where(np.arange(n)[None, :] <= np.arange(t)[:, None] + n - t, s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    den = p.sum(-1, keepdims=True)
    return np.where(den > 0, p @ v / np.where(den > 0, den, 1), 0.0)


def qkv(b, h, hkv, t, n, d, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, h, t, d), dtype=np.float32),
            rng.standard_normal((b, hkv, n, d), dtype=np.float32),
            rng.standard_normal((b, hkv, n, d), dtype=np.float32))


@pytest.mark.parametrize("d", [64, 80, 96, 128])
@pytest.mark.parametrize("heads,kv_heads", [(6, 6), (6, 2), (8, 1)], ids=["mha", "gqa3", "gqa8"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_prefill(d, heads, kv_heads, causal):
    q, k, v = qkv(2, heads, kv_heads, 77, 77, d, seed=d + heads)
    out = kernels.attention(q, k, v, causal=causal)
    assert_close(out, attention_ref(q, k, v, causal=causal), "attention")


@pytest.mark.parametrize("t,n", [(1, 1), (1, 2), (3, 1), (5, 200), (197, 197), (130, 577)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_lengths(t, n, causal):
    q, k, v = qkv(1, 3, 3, t, n, 64, seed=t * 1000 + n)
    out = kernels.attention(q, k, v, causal=causal, scale=0.3)
    assert_close(out, attention_ref(q, k, v, causal=causal, scale=0.3), "attention")


@pytest.mark.parametrize("shape", ["2d", "batch", "heads", "full", "wider"])
def test_attention_masks(shape):
    b, h, hkv, t, n = 2, 6, 3, 20, 90
    q, k, v = qkv(b, h, hkv, t, n, 64, seed=7)
    rng = np.random.default_rng(8)
    lead = {"2d": (), "batch": (b, 1), "heads": (1, h), "full": (b, h), "wider": (1, 1)}[shape]
    cols = n + 13 if shape == "wider" else n
    mask = rng.standard_normal(lead + (t, cols)).astype(np.float32)
    mask[rng.random(mask.shape) < 0.3] = -np.inf
    mask[..., 0] = 0.0  # every query keeps a key
    out = kernels.attention(q, k, v, mask=mask, kv_len=n, causal=shape == "full")
    assert_close(out, attention_ref(q, k, v, mask=mask, causal=shape == "full"), "attention")


def test_attention_fully_masked_row_is_zero():
    q, k, v = qkv(1, 2, 2, 4, 10, 64)
    mask = np.zeros((4, 10), np.float32)
    mask[2] = -np.inf
    out = kernels.attention(q, k, v, mask=mask)
    assert np.all(out[:, :, 2] == 0)
    assert_close(out, attention_ref(q, k, v, mask=mask), "attention")


@pytest.mark.parametrize("heads,kv_heads,capacity", [(9, 3, 300), (8, 1, 8192), (4, 4, 4096)])
def test_attention_decode_with_preallocated_cache(heads, kv_heads, capacity):
    """Prefill a few tokens, then decode one token at a time into a preallocated cache, reusing
    `out` and `scratch`: each step equals the reference over the cache's first kv_len rows."""
    d, prompt = 64, 5
    rng = np.random.default_rng(heads * capacity)
    k_cache = np.zeros((1, kv_heads, capacity, d), np.float32)
    v_cache = np.zeros_like(k_cache)
    fill = capacity - 3 if capacity > 1000 else prompt  # long caches: jump near the end
    k_cache[:, :, :fill] = rng.standard_normal((1, kv_heads, fill, d))
    v_cache[:, :, :fill] = rng.standard_normal((1, kv_heads, fill, d))
    out = np.empty((1, heads, 1, d), np.float32)
    scratch = np.empty(kernels.attention_scratch_size(1, heads, kv_heads, 1, d), np.float32)
    for pos in range(fill, fill + 3):
        k_cache[:, :, pos] = rng.standard_normal((1, kv_heads, d))
        v_cache[:, :, pos] = rng.standard_normal((1, kv_heads, d))
        q = rng.standard_normal((1, heads, 1, d), dtype=np.float32)
        got = kernels.attention(q, k_cache, v_cache, kv_len=pos + 1, causal=True, out=out,
                                scratch=scratch)
        assert got is out
        assert_close(out, attention_ref(q, k_cache, v_cache, kv_len=pos + 1), "attention")


def test_attention_long_prefix_chunk():
    # 16 new queries against 8k keys, causal (chunked prefill): the queries are the last 16.
    q, k, v = qkv(1, 4, 2, 16, 8192, 64, seed=9)
    out = kernels.attention(q, k, v, causal=True)
    assert_close(out, attention_ref(q, k, v, causal=True), "attention")


def test_attention_strided_bshd_layout_and_threads():
    b, t, h, hkv, d = 2, 33, 6, 2, 96
    rng = np.random.default_rng(10)
    q_bshd = rng.standard_normal((b, t, h, d), dtype=np.float32)
    k_bshd = rng.standard_normal((b, t, hkv, d), dtype=np.float32)
    v_bshd = rng.standard_normal((b, t, hkv, d), dtype=np.float32)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_bshd, k_bshd, v_bshd))
    out_bshd = np.empty_like(q_bshd)
    kernels.attention(q, k, v, causal=True, out=out_bshd.transpose(0, 2, 1, 3))
    ref = attention_ref(q, k, v, causal=True)
    assert_close(out_bshd.transpose(0, 2, 1, 3), ref, "attention")
    one = kernels.attention(np.ascontiguousarray(q), k, v, causal=True, num_threads=1)
    np.testing.assert_array_equal(one, out_bshd.transpose(0, 2, 1, 3))


def test_attention_rejects_bad_arguments():
    q, k, v = qkv(1, 4, 2, 5, 9, 64)
    with pytest.raises(TypeError, match="'q'.*float32"):
        kernels.attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="'k'.*numpy"):
        kernels.attention(q, k.tolist(), v)
    with pytest.raises(ValueError, match="'q'.*4 dimensions"):
        kernels.attention(q[0], k, v, out=np.empty((1, 4, 5, 64), np.float32))
    with pytest.raises(ValueError, match="'k'.*head_dim"):
        kernels.attention(q, k[..., :32], v)
    with pytest.raises(ValueError, match="'k'.*divide"):
        kernels.attention(q, *qkv(1, 3, 3, 5, 9, 64)[1:])
    with pytest.raises(ValueError, match="'v'"):
        kernels.attention(q, k, v[:, :, :4])
    with pytest.raises(ValueError, match="'out'"):
        kernels.attention(q, k, v, out=np.empty((1, 4, 5, 32), np.float32))
    with pytest.raises(ValueError, match="'out'.*last axis"):
        kernels.attention(q, k, v, out=np.empty((1, 4, 5, 128), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="'q'.*last axis"):
        kernels.attention(np.asfortranarray(q), k, v)
    with pytest.raises(ValueError, match="'mask'"):
        kernels.attention(q, k, v, mask=np.zeros((5, 8), np.float32))
    with pytest.raises(TypeError, match="'mask'.*float32"):
        kernels.attention(q, k, v, mask=np.zeros((5, 9), bool))
    with pytest.raises(ValueError, match="'kv_len'"):
        kernels.attention(q, k, v, kv_len=10)
    with pytest.raises(ValueError, match="'scratch'"):
        kernels.attention(q, k, v, scratch=np.empty(3, np.float32))


# ---- every SIMD variant -----------------------------------------------------------------------------

_SIMD_CHILD = """
import sys, numpy as np
from mmedge import _C
from mmedge import kernels
q, k, v, pixels, w = (np.load(sys.argv[1] + name + ".npy") for name in ("q", "k", "v", "pixels", "w"))
np.save(sys.argv[1] + "attn.npy", kernels.attention(q, k, v, causal=True))
np.save(sys.argv[1] + "patch.npy", _C.patch_embed(pixels, 40, 40, 40, 40, True, 1 / 255, False,
                                                  [0.0] * 3, [1.0] * 3, w))
print(_C.cpu_simd_isa())
"""


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_simd_variants_match_the_reference(isa, tmp_path):
    """MMEDGE_SIMD caps the instruction set: the AVX2 and portable loops are checked here too."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 6, 37, 64), dtype=np.float32)
    k, v = (rng.standard_normal((1, 2, 37, 64), dtype=np.float32) for _ in range(2))
    pixels = frame(40, 40, seed=6)
    w = rng.standard_normal((24, 3, 8, 8), dtype=np.float32)
    for name, a in (("q", q), ("k", k), ("v", v), ("pixels", pixels), ("w", w)):
        np.save(tmp_path / f"{name}.npy", a)
    child = subprocess.run([sys.executable, "-c", _SIMD_CHILD, str(tmp_path) + "/"], check=True,
                           capture_output=True, text=True, env=os.environ | {"MMEDGE_SIMD": isa})
    order = ["generic", "avx2", "avx512"]
    assert order.index(child.stdout.strip()) <= order.index(isa), child.stdout
    assert_close(np.load(tmp_path / "attn.npy"), attention_ref(q, k, v, causal=True), "attention")
    x = pixels.astype(np.float64) / 255
    assert_close(np.load(tmp_path / "patch.npy"), patches_of(x.transpose(2, 0, 1), 8)
                 @ w.reshape(24, -1).T.astype(np.float64), "patch_embed")


# ---- CUDA, compared with the CPU reference --------------------------------------------------------

needs_gpu = pytest.mark.skipif(not (_C.built_with_cuda and _C.cuda_available()),
                               reason="needs a CUDA build of mmedge._C and a GPU")


def test_pillow12_pass_order_is_horizontal_first():
    # Pillow < 13 always resampled horizontally first; the flag reproduces that order.
    img = frame(300, 200, seed=12)
    tokens = _C.patch_embed(img, 224, 224, 224, 224, False, 1.0, False, [0.0] * 3, [1.0] * 3,
                            identity_weights(1)["weight"], pillow13_pass_order=False)
    wide = Image.fromarray(img).resize((224, 300), Image.Resampling.BICUBIC)
    two_pass = np.asarray(wide.resize((224, 224), Image.Resampling.BICUBIC))
    assert np.abs(tokens - two_pass.reshape(-1, 3)).max() == 0


@needs_gpu
@pytest.mark.parametrize("hw", [(480, 640), (1080, 1920), (300, 200), (7, 5)],
                         ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_cuda_patch_embed_matches_cpu(hw, family):
    spec = clip_spec(224, 14) if family == "clip" else siglip_spec(224, 224, 16)
    patch, cls = spec["patch_size"], family == "clip"
    w = random_tower_weights(patch, 64, (224 // patch) ** 2, bias=not cls, cls=cls)
    img = frame(*hw, seed=13)
    cpu = kernels.patch_embed(img, spec, w)
    (rh, rw), (ih, iw) = kernels.patch_embed_geometry(hw, spec)
    pre = ImagePreprocessor(spec)
    gpu = _C.patch_embed_cuda_host(img, rh, rw, ih, iw, pre.do_rescale, pre.rescale_factor,
                                   pre.do_normalize, pre.mean.tolist(), pre.std.tolist(),
                                   w["weight"], bias=w.get("bias"),
                                   class_embedding=w.get("class_embedding"),
                                   position_embedding=w["position_embedding"])
    assert_close(gpu, cpu.astype(np.float64), "patch_embed")
    # The pixels themselves: identity projection, exact.
    ident = identity_weights(patch)["weight"]
    raw = dict(do_rescale=False, rescale_factor=1.0, do_normalize=False, mean=[0.0] * 3,
               std=[1.0] * 3)
    np.testing.assert_array_equal(
        _C.patch_embed_cuda_host(img, rh, rw, ih, iw, weight=ident, **raw),
        _C.patch_embed(img, rh, rw, ih, iw, weight=ident, **raw))


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("d,heads,kv_heads,t,n,causal", [
    (64, 12, 12, 197, 197, False), (128, 9, 3, 1, 4096, True), (80, 8, 1, 33, 100, True),
    (96, 6, 2, 5, 77, False)])
def test_cuda_attention_matches_cpu(dtype, d, heads, kv_heads, t, n, causal):
    q, k, v = qkv(1, heads, kv_heads, t, n, d, seed=d + n)
    ref = attention_ref(q, k, v, causal=causal)
    if dtype == "float32":
        got = _C.attention_cuda_host(q, k, v, np.empty_like(q), causal=causal)
        assert_close(got, ref, "attention")
        return
    # Low precision: inputs rounded to the dtype; the error must stay within a few times what
    # rounding the inputs alone costs (STYLE.md #5), measured against the float64 reference.
    if dtype == "float16":
        lo = [x.astype(np.float16) for x in (q, k, v)]
        back = [x.astype(np.float32) for x in lo]
        got = _C.attention_cuda_host(*lo, np.empty(q.shape, np.float16), causal=causal)
        got = got.astype(np.float32)
    else:
        def bits(x):  # round to nearest even bfloat16, as uint16 bit patterns
            u = x.view(np.uint32)
            return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        lo = [bits(x) for x in (q, k, v)]
        back = [(x.astype(np.uint32) << 16).view(np.float32) for x in lo]
        out = _C.attention_cuda_host(*lo, np.empty(q.shape, np.uint16), causal=causal)
        got = (out.astype(np.uint32) << 16).view(np.float32)
    rounding = np.abs(attention_ref(*back, causal=causal) - ref).max()
    eps = {"float16": 2 ** -10, "bfloat16": 2 ** -7}[dtype]
    assert np.abs(got - ref).max() <= 3 * rounding + 2 * eps


@pytest.mark.skipif(_C.built_with_cuda, reason="checks the CPU-only build's answer")
def test_cuda_entry_points_say_cuda_is_missing():
    q, k, v = qkv(1, 2, 2, 3, 3, 64)
    with pytest.raises(RuntimeError, match="no CUDA"):
        _C.attention_cuda_host(q, k, v, np.empty_like(q))
