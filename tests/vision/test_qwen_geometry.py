"""mmedge.vision.layouts.qwen_geometry against transformers itself: the Pillow image processor of
Qwen2-VL (its defaults, explicit min/max pixels, and Qwen3-VL-4B's preprocessor_config from
../shared/fixtures) on images of many sizes, and tiny seeded Qwen2-VL / Qwen2.5-VL / Qwen3-VL models
whose real modules (vision rotary, window index, position-embedding interpolation, get_rope_index,
the vision towers' forward through hooks) give the reference values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import vision_utils  # noqa: E402
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_pil  # noqa: E402

from mmedge.errors import ImageError  # noqa: E402
from mmedge.vision.layouts import qwen_geometry as qg  # noqa: E402

QWEN3_FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf" / "qwen3-vl-4b-instruct"
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655

# (width, height): landscape, portrait, strips, exactly a merged patch, tiny ones that min_pixels
# scales up, large ones that max_pixels scales down, odd sizes, the largest allowed aspect ratio
SIZES = [(640, 480), (480, 640), (333, 1000), (1000, 333), (56, 56), (224, 224), (1, 1), (3, 7), (10, 2),
         (29, 13), (200, 1), (1, 150), (2000, 1500), (1023, 2047), (997, 61)]


def picture(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7919 + height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * 3 + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8))


def preprocess(image: Image.Image, processor, height: int, width: int) -> np.ndarray:
    """What the Pil processor does to one RGB image: Pillow resize of the uint8 image with its
    resample filter, rescale in float64 cast to float32, normalize in float32; [3, H, W]."""
    resized = Image.fromarray(np.asarray(image.convert("RGB"))).resize((width, height), resample=processor.resample)
    x = np.asarray(resized).transpose(2, 0, 1)
    x = (x.astype(np.float64) * processor.rescale_factor).astype(np.float32)
    mean = np.asarray(processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def qwen3_processor():
    if not QWEN3_FIXTURE.is_dir():
        pytest.skip(f"needs the shared fixtures at {QWEN3_FIXTURE}")
    return hf_pil.Qwen2VLImageProcessorPil.from_pretrained(QWEN3_FIXTURE)


PROCESSORS = {
    "qwen2vl-default": lambda: hf_pil.Qwen2VLImageProcessorPil(),
    "qwen2vl-minmax": lambda: hf_pil.Qwen2VLImageProcessorPil(min_pixels=128 * 28 * 28, max_pixels=256 * 28 * 28),
    "qwen3vl-4b": qwen3_processor,
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_resize_and_pixel_values_equal_the_processor(name):
    processor = PROCESSORS[name]()
    patch, merge, temporal = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    lo, hi = processor.size.shortest_edge, processor.size.longest_edge
    sizes = SIZES if name != "qwen3vl-4b" else SIZES + [(4000, 100), (90, 2000)]
    for width, height in sizes:
        image = picture(width, height)
        out = processor(images=[image], return_tensors="np")
        h, w = qg.smart_resize(height, width, patch * merge, lo, hi)
        assert out["image_grid_thw"].tolist() == [[1, h // patch, w // patch]], (name, width, height)
        rows = qg.flat_pixel_values(preprocess(image, processor, h, w), patch, temporal, merge)
        ref = out["pixel_values"]
        assert rows.dtype == np.float32 and rows.shape == ref.shape, (name, width, height)
        assert np.abs(rows - ref).max() <= 1e-6, (name, width, height)


def test_smart_resize_equals_transformers_on_a_sweep():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 5000, size=(1500, 2)).tolist() + [[1, 1], [1, 200], [200, 1], [14, 14], [28, 28],
                                                              [42, 42], [13, 43], [4096, 4096], [8000, 40]]
    settings = [(28, 56 * 56, 28 * 28 * 1280), (28, 4 * 28 * 28, 16384 * 28 * 28), (28, 784, 784),
                (32, 65536, 16777216), (32, 1024, 1024), (32, 1, 32 * 32 * 10), (28, 128 * 784, 256 * 784)]
    for factor, lo, hi in settings:
        for height, width in sizes:
            if max(height, width) / min(height, width) > 200:
                continue
            assert qg.smart_resize(height, width, factor, lo, hi) == hf_pil.smart_resize(
                height, width, factor=factor, min_pixels=lo, max_pixels=hi), (height, width, factor, lo, hi)


def test_smart_resize_refuses_what_cannot_be_resized():
    with pytest.raises(ValueError):  # transformers refuses it too
        hf_pil.smart_resize(1, 201)
    with pytest.raises(ImageError, match="aspect ratio of 201.0"):
        qg.smart_resize(1, 201, 28, 3136, 1003520)
    with pytest.raises(ImageError, match="aspect ratio"):
        qg.smart_resize(4020, 20, 32, 65536, 16777216)
    assert qg.smart_resize(1, 200, 28, 3136, 1003520) == hf_pil.smart_resize(1, 200)
    with pytest.raises(ImageError, match=r"max_pixels=783 .*smallest allowed value is 784"):
        qg.smart_resize(100, 100, 28, 1, 783)
    with pytest.raises(ImageError, match="smallest allowed value is 1024"):
        qg.smart_resize(100, 100, 32, 1, 1000)
    with pytest.raises(ImageError, match="min_pixels=5000 is larger than max_pixels=4000"):
        qg.smart_resize(100, 100, 28, 5000, 4000)
    with pytest.raises(ImageError, match="at least 1 pixel"):
        qg.smart_resize(0, 100, 28, 3136, 1003520)
    with pytest.raises(ImageError, match="min_pixels"):  # transformers would return a 0-pixel side
        qg.smart_resize(10, 100, 28, 0, 1003520)


def test_merge_order_is_the_patch_embedding_order():
    """A stride-patch conv over the image, flattened row by row, then merge_order, equals the tower's
    Conv3d patch embedding of the processor's rows (the still frame repeated over time)."""
    torch.manual_seed(0)
    patch, merge, temporal = 14, 2, 2
    embed = torch.nn.Conv3d(3, 16, kernel_size=(temporal, patch, patch), stride=(temporal, patch, patch), bias=False)
    pixels = np.random.default_rng(1).standard_normal((3, 6 * patch, 10 * patch)).astype(np.float32)
    rows = torch.from_numpy(qg.flat_pixel_values(pixels, patch, temporal, merge))
    with torch.no_grad():
        ref = embed(rows.view(-1, 3, temporal, patch, patch)).view(-1, 16).numpy()
        conv = torch.nn.functional.conv2d(torch.from_numpy(pixels)[None], embed.weight.sum(2), stride=patch)[0]
    raster = conv.numpy().reshape(16, -1).T
    np.testing.assert_allclose(qg.merge_order(raster, 6, 10, merge), ref, atol=1e-5)
    np.testing.assert_array_equal(qg.unmerge_order(qg.merge_order(raster, 6, 10, merge), 6, 10, merge), raster)
    ids = np.arange(24)
    assert qg.merge_order(ids, 4, 6, 2)[:8].tolist() == [0, 1, 6, 7, 2, 3, 8, 9]
    with pytest.raises(ValueError):
        qg.merge_order(np.arange(15), 3, 5, 2)


# --- tiny seeded models ------------------------------------------------------------------------

TEXT = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1)


@pytest.fixture(scope="module")
def models():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel, Qwen2VLConfig, Qwen2VLModel, Qwen3VLConfig, Qwen3VLModel
    torch.manual_seed(0)
    built = {
        "qwen2": Qwen2VLModel(Qwen2VLConfig(
            text_config=dict(TEXT, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                    "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2))),
        "qwen2_5": Qwen2_5_VLModel(Qwen2_5_VLConfig(
            text_config=dict(TEXT, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                    "mrope_section": [2, 3, 3]}),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                               window_size=112, fullatt_block_indexes=[1]))),
        "qwen3": Qwen3VLModel(Qwen3VLConfig(
            text_config=dict(TEXT, head_dim=16),
            vision_config=dict(depth=1, hidden_size=64, intermediate_size=64, num_heads=4, out_hidden_size=32,
                               num_position_embeddings=64, deepstack_visual_indexes=[0]))),
    }
    return {k: m.eval() for k, m in built.items()}


def _head_dim(visual) -> int:
    """Qwen2-VL's vision width is embed_dim (its hidden_size is the LLM's); the later ones' is hidden_size."""
    c = visual.config
    return (c.embed_dim if hasattr(c, "embed_dim") else c.hidden_size) // c.num_heads


def _run_tower(visual, grid):
    """Forward one image through the tower, capturing what its first block is given and the rotary's
    own output (hooks: the real forward computes them)."""
    seen = {}
    t, h, w = grid
    dim = visual.patch_embed.proj.weight[0].numel()
    pixels = torch.from_numpy(np.random.default_rng(h * 31 + w).standard_normal((t * h * w, dim)).astype(np.float32))
    hooks = [visual.blocks[0].register_forward_pre_hook(
                 lambda mod, args, kwargs: seen.update(block0=(args, kwargs)), with_kwargs=True),
             visual.rotary_pos_emb.register_forward_hook(lambda mod, args, out: seen.update(rotary=out)),
             visual.patch_embed.register_forward_hook(lambda mod, args, out: seen.update(patches=out))]
    try:
        with torch.no_grad():
            visual(pixels, grid_thw=torch.tensor([grid]))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


GRIDS = [(1, 2, 2), (1, 4, 6), (1, 6, 4), (1, 8, 8), (1, 10, 14), (1, 16, 8), (1, 2, 22), (1, 18, 12)]


@pytest.mark.parametrize("gen", ["qwen2", "qwen2_5", "qwen3"])
def test_vision_rotary_equals_the_towers(models, gen):
    visual = models[gen].visual
    merge, head_dim = visual.config.spatial_merge_size, _head_dim(visual)
    theta = visual.config.rope_parameters["rope_theta"]
    for grid in GRIDS:
        cos, sin = qg.vision_rotary(grid[1], grid[2], merge, head_dim, theta)
        assert cos.dtype == sin.dtype == np.float32 and cos.shape == (grid[1] * grid[2], head_dim)
        seen = _run_tower(visual, grid)
        ref_cos, ref_sin = (x.numpy() for x in seen["rotary"])  # the processor's patch order
        np.testing.assert_array_max_ulp(cos, ref_cos, maxulp=1)
        np.testing.assert_array_max_ulp(sin, ref_sin, maxulp=1)
        given_cos, given_sin = (x.numpy() for x in seen["block0"][1]["position_embeddings"])
        if gen == "qwen2_5":  # the blocks see them in window order
            index, _ = qg.window_index(grid[1], grid[2], merge, visual.config.window_size, visual.config.patch_size)
            cos, sin = qg.window_permute(cos, index, merge), qg.window_permute(sin, index, merge)
        np.testing.assert_array_max_ulp(cos, given_cos, maxulp=1)
        np.testing.assert_array_max_ulp(sin, given_sin, maxulp=1)
    # an ordinary head size and theta, directly against the rotary module
    width = {"embed_dim": 1280} if gen == "qwen2" else {"hidden_size": 1280}
    rotary = type(visual.rotary_pos_emb)(type(visual.config)(num_heads=16, **width))
    cos, sin = qg.vision_rotary(36, 50, 2, 80)
    ref = rotary(torch.zeros(1), vision_utils.get_vision_position_ids(torch.tensor([[1, 36, 50]]), 2))
    np.testing.assert_array_max_ulp(cos, ref[0].numpy(), maxulp=1)
    np.testing.assert_array_max_ulp(sin, ref[1].numpy(), maxulp=1)


WINDOW_GRIDS = [(2, 2), (4, 4), (8, 8), (16, 16), (10, 14), (6, 18), (18, 6), (22, 2), (2, 30), (34, 26),
                (12, 20)]


def test_window_index_equals_transformers(models):
    visual = models["qwen2_5"].visual
    cfg = visual.config
    merge = cfg.spatial_merge_size
    for gh, gw in WINDOW_GRIDS:
        for window_size in (cfg.window_size, 56, 224):
            index, ids = qg.window_index(gh, gw, merge, window_size, cfg.patch_size)
            ref_index, cu = vision_utils.get_vision_window_index(torch.tensor([[1, gh, gw]]), merge, window_size,
                                                                 cfg.patch_size)
            assert index.dtype == ids.dtype == np.int64
            np.testing.assert_array_equal(index, ref_index.numpy())
            cu = cu.numpy()
            np.testing.assert_array_equal(ids, np.repeat(np.arange(len(cu) - 1), np.diff(cu)))
            assert sorted(index.tolist()) == list(range(gh * gw // merge**2))
        seen = _run_tower(visual, (1, gh, gw))  # block 0 is windowed: its segments are the windows
        cu = seen["block0"][1]["cu_seqlens"].numpy()
        _, ids = qg.window_index(gh, gw, merge, cfg.window_size, cfg.patch_size)
        np.testing.assert_array_equal(ids, np.repeat(np.arange(len(cu) - 1), np.diff(cu)))


@pytest.mark.parametrize("side", [8, 48])
def test_pos_embed_interpolation_equals_qwen3(models, side):
    visual = models["qwen3"].visual
    merge = visual.config.spatial_merge_size
    if side != visual.num_grid_per_side:
        torch.manual_seed(side)
        table = torch.randn(side * side, visual.config.hidden_size)
    else:
        table = visual.pos_embed.weight.detach()
    for _, gh, gw in GRIDS + [(1, 48, 48), (1, 64, 30), (1, 2, 96)]:  # up- and downsampling the table
        index, weight = qg.pos_embed_interpolation(gh, gw, merge, side)
        assert index.dtype == np.int64 and weight.dtype == np.float32 and index.shape == (4, gh * gw)
        ref_index, ref_weight = vision_utils.get_vision_interpolation_indices_and_weights(
            torch.tensor([[1, gh, gw]]), side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=merge)
        np.testing.assert_array_equal(index, ref_index.numpy().T)
        np.testing.assert_array_equal(weight, ref_weight.numpy().T)
        ours = np.einsum("kn,knd->nd", weight, table.numpy()[index])
        ref = (table[ref_index] * ref_weight[:, :, None]).sum(1).numpy()
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
        if side == visual.num_grid_per_side and gh * gw <= 500:  # what the real forward adds to the patches
            seen = _run_tower(visual, (1, gh, gw))
            added = (seen["block0"][0][0] - seen["patches"]).numpy()
            np.testing.assert_allclose(ours, added, rtol=0, atol=1e-6 * np.abs(ours).max() + 1e-6)


def _image(grid, merge):
    return [VISION_START] + [IMAGE_PAD] * (grid[0] * grid[1] * grid[2] // merge**2) + [VISION_END]


SEQUENCES = {
    "text only": ([1, 2, 3, 4, 5, 6, 7], []),
    "one image": ([10, 11] + _image((1, 4, 6), 2) + [12, 13, 14], [(1, 4, 6)]),
    "two images": ([10] + _image((1, 8, 4), 2) + [20, 21, 22] + _image((1, 6, 10), 2) + [30, 31],
                   [(1, 8, 4), (1, 6, 10)]),
    "image first": (_image((1, 2, 2), 2) + [40, 41], [(1, 2, 2)]),
    "image last": ([50] * 5 + _image((1, 36, 50), 2), [(1, 36, 50)]),
}


@pytest.mark.parametrize("gen", ["qwen2", "qwen2_5", "qwen3"])
def test_rope_positions_equal_get_rope_index(models, gen):
    model = models[gen]
    merge = model.config.vision_config.spatial_merge_size
    assert model.config.image_token_id == IMAGE_PAD
    for name, (ids, grids) in SEQUENCES.items():
        positions = qg.rope_positions(ids, grids, IMAGE_PAD, merge)
        input_ids = torch.tensor([ids])
        types = (input_ids == IMAGE_PAD).int()  # as the processor's mm_token_type_ids: 1 at image tokens
        ref, delta = model.get_rope_index(input_ids, mm_token_type_ids=types,
                                          image_grid_thw=torch.tensor(grids) if grids else None)
        assert positions.dtype == np.int64 and positions.shape == (3, len(ids)), name
        np.testing.assert_array_equal(positions, ref[:, 0].numpy(), err_msg=f"{gen}: {name}")
        assert qg.rope_delta(positions, len(ids)) == int(delta[0, 0]), name
    with pytest.raises(ValueError):
        qg.rope_positions(_image((1, 4, 4), 2), [(1, 4, 6)], IMAGE_PAD, merge)
    with pytest.raises(ValueError):
        qg.rope_positions(_image((1, 4, 4), 2), [], IMAGE_PAD, merge)
    with pytest.raises(ValueError):
        qg.rope_positions([1, 2], [(1, 4, 4)], IMAGE_PAD, merge)


def test_fixture_geometry_is_qwen3_4b():
    if not QWEN3_FIXTURE.is_dir():
        pytest.skip(f"needs the shared fixtures at {QWEN3_FIXTURE}")
    vision = json.loads((QWEN3_FIXTURE / "config.json").read_text())["vision_config"]
    side = int(vision["num_position_embeddings"] ** 0.5)
    head_dim = vision["hidden_size"] // vision["num_heads"]
    cos, _ = qg.vision_rotary(30, 40, vision["spatial_merge_size"], head_dim)
    index, weight = qg.pos_embed_interpolation(30, 40, vision["spatial_merge_size"], side)
    assert cos.shape == (1200, 64) and index.max() < side * side
    np.testing.assert_allclose(weight.sum(0), 1, atol=1e-6)


@pytest.mark.parametrize("grid", [(2, 2), (6, 10), (34, 46)])
def test_patch_positions_equal_get_vision_position_ids(grid):
    expected = vision_utils.get_vision_position_ids(torch.tensor([[1, *grid]]), 2).numpy()
    np.testing.assert_array_equal(qg.patch_positions(*grid, 2), expected)
