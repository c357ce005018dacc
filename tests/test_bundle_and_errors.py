"""Bad bundles and bad input: each refused with a clear message, through the Python API and the CLI
(exit status 2, no traceback). Uses one tiny exported LLaVA bundle, copied before tampering."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("torch")

import mmedge  # noqa: E402
from mmedge.bundle import FORMAT_VERSION  # noqa: E402
from mmedge.cli import main as cli_main  # noqa: E402
from mmedge.errors import (BundleError, ExportError, ImageError, PromptError,  # noqa: E402
                           UnsupportedModelError)
from mmedge.export import export_model  # noqa: E402
from mmedge.models.tiny import build_tiny_llava  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    folder = build_tiny_llava(root / "hf", vision="clip", text="llama", seed=2)
    export_model(str(folder), root / "bundle", precision="fp32", progress=False)
    return root / "bundle"


@pytest.fixture()
def copy(bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


# -- bundles -------------------------------------------------------------------------------------
def test_missing_bundle_directory(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        mmedge.load(tmp_path / "nope")


def test_missing_file_is_named(copy):
    (copy / "embed.onnx").unlink()
    with pytest.raises(BundleError, match="embed.onnx is missing"):
        mmedge.load(copy)


def test_tampered_file_is_named(copy):
    data = bytearray((copy / "vision.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "vision.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="vision.onnx .*sha256"):
        mmedge.load(copy)


def test_truncated_file_is_named(copy):
    path = copy / "decoder.onnx.data"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BundleError, match="decoder.onnx.data .*bytes"):
        mmedge.load(copy)


def test_patch_embedding_weights_are_checked(copy):
    """A patch-embedding file that is not safetensors, or holds the wrong shapes, is refused by name
    even with checksums skipped (a bundle rewritten with a fresh manifest)."""
    from safetensors.numpy import save_file

    path = copy / "patch_embedding.safetensors"
    path.write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(BundleError, match="patch_embedding.safetensors .*cannot be read"):
        mmedge.load(copy, verify=False)
    dim = _manifest(copy)["image"]["patch_embedding"]["dim"]
    save_file({"weight": np.zeros((dim, 3, 8, 8), np.float32),
               "position_embedding": np.zeros((5, dim), np.float32)}, str(path))
    with pytest.raises(BundleError, match="'position_embedding' is \\(5, "):
        mmedge.load(copy, verify=False)


def test_tokens_graph_without_patch_embedding_entry_is_refused(copy):
    manifest = _manifest(copy)
    del manifest["image"]["patch_embedding"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="takes 'patch_tokens' but the manifest has no patch_embedding"):
        mmedge.load(copy, verify=False)


def test_missing_manifest_means_incomplete(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        mmedge.load(copy)


def test_newer_format_version_refused(copy):
    manifest = _manifest(copy)
    manifest["format_version"] = FORMAT_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer than this mmedge"):
        mmedge.load(copy)


def test_corrupt_manifest(copy):
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        mmedge.load(copy)


def test_manifest_path_escape_refused(copy):
    manifest = _manifest(copy)
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        mmedge.load(copy)


def _rewrite(copy, manifest=None):
    """A fresh manifest (checksums of the files as they now are), as a tamperer would write."""
    from mmedge.bundle import write_manifest

    write_manifest(copy, manifest or _manifest(copy))


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("where, path, words", [
    ("component", "../outside.onnx", "climbs out"),
    ("component", "/etc/passwd", "is absolute"),
    ("tokenizer", "../tokenizer.json", "climbs out"),
    ("tokenizer", "/tmp/tokenizer.json", "is absolute"),
    ("patch", "..\\patch_embedding.safetensors", "backslash"),
])
def test_manifest_paths_leaving_the_bundle_are_refused(copy, verify, where, path, words):
    manifest = _manifest(copy)
    if where == "component":
        manifest["components"]["embed"]["file"] = path
        named = "component 'embed'"
    elif where == "tokenizer":
        manifest["text"]["tokenizer_file"] = path
        named = "text.tokenizer_file"
    else:
        manifest["image"]["patch_embedding"]["file"] = path
        named = "image.patch_embedding"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"{named} .*{words}"):
        mmedge.load(copy, verify=verify)


@pytest.mark.parametrize("verify", [True, False])
def test_symlink_pointing_outside_is_refused(copy, tmp_path, verify):
    """A symlinked tokenizer.json used to load. The manifest is rewritten so its checksums match
    what the link points at: only the link's target gives it away."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(copy / "tokenizer.json", outside / "tokenizer.json")
    (copy / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    _rewrite(copy)
    with pytest.raises(BundleError, match="tokenizer.json.* outside the bundle: it is a symlink"):
        mmedge.load(copy, verify=verify)


def test_symlinked_folder_inside_pointing_outside_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(copy / "vision.onnx", outside / "vision.onnx")
    (copy / "graphs").symlink_to(outside, target_is_directory=True)
    manifest = _manifest(copy)
    manifest["components"]["vision"]["file"] = "graphs/vision.onnx"
    _rewrite(copy, manifest)
    with pytest.raises(BundleError, match="component 'vision' .*outside the bundle: it is a symlink .*elsewhere"):
        mmedge.load(copy, verify=False)


def test_symlinks_inside_the_bundle_and_a_symlinked_bundle_load(copy, tmp_path):
    """Links that stay inside are followed (the checksums cover their targets), and the bundle's
    own directory may be a link (bundles/current -> bundles/v2)."""
    (copy / "store").mkdir()
    shutil.move(copy / "tokenizer.json", copy / "store" / "tokenizer.json")
    (copy / "tokenizer.json").symlink_to("store/tokenizer.json")
    _rewrite(copy)
    link = tmp_path / "current"
    link.symlink_to(copy, target_is_directory=True)
    model = mmedge.load(link)
    assert model.generate("hi", max_new_tokens=2, ignore_eos=True)
    # A changed target is still caught by its checksum.
    (copy / "store" / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match="tokenizer.json in .* bytes"):
        mmedge.load(link)


def _set_external_location(graph, location):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(graph), load_external_data=False)
    changed = 0
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
                changed += 1
    assert changed, "the tiny decoder keeps its weights in external data"
    onnx.save(model, str(graph))


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("location, words", [
    ("../decoder.onnx.data", "climbs out"),
    ("/etc/hostname", "is absolute"),
    ("stray.data", "does not list"),
], ids=["dotdot", "absolute", "unlisted"])
def test_external_data_outside_the_bundle_is_refused(copy, verify, location, words):
    """Read from the graph's own initializers (no weights loaded), before ONNX Runtime sees it."""
    if location == "stray.data":
        shutil.copy(copy / "decoder.onnx.data", copy / "stray.data")
    else:
        shutil.copy(copy / "decoder.onnx.data", copy.parent / "decoder.onnx.data")
    _set_external_location(copy / "decoder.onnx", location)
    _rewrite(copy)
    if location == "stray.data":   # present but not checksummed: the manifest must list it
        manifest = _manifest(copy)
        del manifest["files"]["stray.data"]
        (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"external data of decoder.onnx .*{words}"):
        mmedge.load(copy, verify=verify)


def test_external_data_through_an_outward_symlink_is_refused(copy, tmp_path):
    elsewhere = tmp_path / "weights.data"
    shutil.copy(copy / "decoder.onnx.data", elsewhere)
    (copy / "weights.data").symlink_to(elsewhere)
    _set_external_location(copy / "decoder.onnx", "weights.data")
    _rewrite(copy)   # lists weights.data: refused as a file of the bundle
    with pytest.raises(BundleError, match="files entry 'weights.data' .*outside the bundle: it is a symlink"):
        mmedge.load(copy, verify=False)
    manifest = _manifest(copy)
    del manifest["files"]["weights.data"]   # unlisted: refused as the graph's external data
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="external data of decoder.onnx .*weights.data.* outside "
                                          "the bundle: it is a symlink"):
        mmedge.load(copy, verify=False)


def test_a_graph_that_is_not_onnx_is_refused_at_open(copy):
    (copy / "vision.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(BundleError, match="vision.onnx .*component 'vision'.* not a valid ONNX"):
        mmedge.load(copy, verify=False)
    (copy / "vision.onnx").write_bytes(b"")
    with pytest.raises(BundleError, match="vision.onnx .*cannot be read as an ONNX graph"):
        mmedge.load(copy, verify=False)


def test_bfloat16_in_the_manifest_is_refused(copy):
    manifest = _manifest(copy)
    manifest["components"]["decoder"]["inputs"][2]["dtype"] = "bfloat16"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'decoder' a bfloat16 tensor \\(past_key_values.0.key\\).*"
                                          "--quant fp16"):
        mmedge.load(copy, verify=False)


def test_bfloat16_graph_input_is_refused_even_if_the_manifest_says_float(copy):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["patch_tokens"], ["image_features"])], "bf16",
        [helper.make_tensor_value_info("patch_tokens", TensorProto.BFLOAT16, ["batch", 17, 32])],
        [helper.make_tensor_value_info("image_features", TensorProto.BFLOAT16, ["batch", 17, 32])])
    onnx.save(helper.make_model(graph), str(copy / "vision.onnx"))
    _rewrite(copy)
    assert _manifest(copy)["components"]["vision"]["inputs"][0]["dtype"] == "float32"
    with pytest.raises(BundleError, match="the graph vision.onnx gives component 'vision' a "
                                          "bfloat16 tensor \\(patch_tokens, image_features\\)"):
        mmedge.load(copy)


@pytest.mark.parametrize("verify", [True, False])
def test_a_component_naming_another_components_graph_is_refused(copy, verify):
    """Found by tests/fuzz/fuzz_manifest.py: 'decoder' pointing at vision.onnx passed open_bundle
    and failed in the decoder session with KeyError: 'inputs_embeds'."""
    manifest = _manifest(copy)
    manifest["components"]["decoder"]["file"] = "vision.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="vision.onnx in .* is not the 'decoder' graph the manifest "
                                          "says: it lacks inputs_embeds, attention_mask, "
                                          "past_key_values.0.key \\(its inputs: patch_tokens\\)"):
        mmedge.load(copy, verify=verify)


@pytest.mark.parametrize("layers, words", [(3, "lacks past_key_values.2.key, past_key_values.2.value"),
                                           (2 ** 31, "lacks past_key_values.2.key"),
                                           (1, "no more than 2 past_key_values inputs")])
def test_decoder_layer_count_must_match_the_graph(copy, layers, words):
    """A count above the graph's bound cache inputs that do not exist (an ONNX Runtime error at the
    first token); below it, leaves inputs unbound. 2**31: the fuzzer's finding (the check once
    listed that many input names and ran out of memory)."""
    manifest = _manifest(copy)
    manifest["decoder"]["num_layers"] = layers
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"decoder.onnx .*'decoder' graph .*{words}"):
        mmedge.load(copy, verify=False)


def _drop(table, key):
    del table[key]


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("damage, words", [
    (lambda m: m.update(family=["llava"]), "'family' must be one of"),
    (lambda m: m.update(family="gpt"), "'family' must be one of .*a newer mmedge"),
    (lambda m: m.update(components=[]), "'components' must be a table"),
    (lambda m: _drop(m["components"], "vision"), "'llava' bundle needs a 'vision' component"),
    (lambda m: _drop(m["components"]["embed"], "file"), "'components.embed.file' must be a file name, got missing"),
    (lambda m: m["components"]["embed"].update(file=3), "'components.embed.file' must be a file name, got int"),
    (lambda m: m["components"]["decoder"].update(inputs={}), "'components.decoder.inputs' must be a list"),
    (lambda m: m["components"]["decoder"]["inputs"].append(7), r"'components.decoder.inputs\[6\]' must"),
    (lambda m: m["files"]["embed.onnx"].update(sha256=None), "'files.embed.onnx.sha256' must be 64 hex"),
    (lambda m: m["files"]["embed.onnx"].update(size="312"), "'files.embed.onnx.size' must be a size"),
    (lambda m: m["files"].update({"x": []}), "'files.x' must be a table"),
    (lambda m: _drop(m["text"], "tokenizer_file"), "'text.tokenizer_file' must be a file name, got missing"),
    (lambda m: m["text"].update(context_length="2048"), "'text.context_length' must be a positive integer, got str"),
    (lambda m: m["text"].update(context_length=True), "'text.context_length' must be a positive integer, got bool"),
    (lambda m: m["text"].update(context_length=0), "'text.context_length' must be a positive integer, got int 0"),
    (lambda m: m["text"].update(chat_template=["{{ x }}"]), "'text.chat_template' must be a Jinja"),
    (lambda m: m["text"].update(eos_token_ids=["2"]), "'text.eos_token_ids' must be a list of token ids"),
    (lambda m: m.update(text="tokenizer.json"), "'text' must be a table"),
    (lambda m: _drop(m["decoder"], "num_layers"), "'decoder.num_layers' must be a positive integer, got missing"),
    (lambda m: m.update(decoder=None), "'decoder' must be a table"),
    (lambda m: m.update(exporter=["mmedge"]), "'exporter' must be a table"),
    (lambda m: m.update(image=None), "'image' must be a table"),
    (lambda m: m["image"].update(num_image_tokens=-1), "'image.num_image_tokens' must be a positive"),
    (lambda m: m["image"].update(patch_embedding="patch_embedding.safetensors"), "'image.patch_embedding' must be a table"),
    # Found by tests/fuzz/fuzz_manifest.py: a TypeError from int() in the patch-embedding loader.
    (lambda m: m["image"]["patch_embedding"].update(num_tokens=[17]), "'image.patch_embedding.num_tokens' must be a positive integer, got list"),
    (lambda m: m["image"]["patch_embedding"].update(patch_size="8"), "'image.patch_embedding.patch_size' must be a positive integer, got str"),
    (lambda m: m["text"].update(tokenizer_file="vocab.json"), "text.tokenizer_file names vocab.json, which the manifest does not list"),
])
def test_malformed_manifest_is_a_bundle_error(copy, verify, damage, words):
    """Each was a KeyError, TypeError or AttributeError somewhere in loading, or loaded."""
    manifest = _manifest(copy)
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=words):
        mmedge.load(copy, verify=verify)


def test_vision_input_checks_its_patch_embedding_entry_itself(copy):
    """For a manifest that did not come through open_bundle (the fuzz finding, one layer down)."""
    from mmedge.vision.inputs import VisionInput

    manifest = _manifest(copy)
    manifest["image"]["patch_embedding"]["num_tokens"] = [17]
    with pytest.raises(BundleError, match=r"patch_embedding has num_tokens \[17\], not a token count"):
        VisionInput(copy, manifest, "patch_tokens")
    manifest["image"]["patch_embedding"].update(num_tokens=17, file=["x"])
    with pytest.raises(BundleError, match=r"patch_embedding names \['x'\]"):
        VisionInput(copy, manifest, "patch_tokens")


def test_manifest_that_is_not_utf8_or_too_deep(copy):
    (copy / "manifest.json").write_bytes(b'{"format_version": 1, "family": "\xff"}')
    with pytest.raises(BundleError, match="not valid JSON"):
        mmedge.load(copy)
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        mmedge.load(copy)


# -- prompts and images ----------------------------------------------------------------------------
def test_empty_prompt(bundle):
    model = mmedge.load(bundle)
    with pytest.raises(PromptError, match="empty"):
        model.generate("   ")


def test_prompt_over_context(bundle):
    model = mmedge.load(bundle)
    long_prompt = "word " * (model.context_length + 10)
    with pytest.raises(PromptError, match="context holds"):
        model.generate(long_prompt)


def test_generation_stops_at_context(bundle):
    model = mmedge.load(bundle)
    model.context_length = 64  # the real one (2048) works the same, only slower
    ids = model.prompt_ids(model.build_messages("hi", 0), 0)
    model.generate("hi", max_new_tokens=model.context_length * 2, ignore_eos=True)
    assert model.last_stats.new_tokens == model.context_length - len(ids)
    assert model.last_stats.finish_reason == "context"


def test_placeholder_image_mismatch(bundle):
    model = mmedge.load(bundle)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    with pytest.raises(PromptError, match="1 image placeholder"):
        model.generate(messages=messages, images=[])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (no pixel data needed to trip the size check)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_missing_corrupt_and_bomb_images(bundle, tmp_path):
    model = mmedge.load(bundle)
    with pytest.raises(ImageError):
        model.generate("What is this?", [tmp_path / "missing.jpg"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageError):
        model.generate("What is this?", [bad])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageError):
        model.generate("What is this?", [bomb])


def test_wrong_array_shape(bundle):
    model = mmedge.load(bundle)
    with pytest.raises(ImageError):
        model.generate("What is this?", [np.zeros((4, 4, 7), dtype=np.uint8)])


def test_images_for_text_only_bundle(tmp_path_factory):
    from mmedge.models.tiny import build_tiny_llm

    root = tmp_path_factory.mktemp("llm")
    export_model(str(build_tiny_llm(root / "hf", arch="qwen2")), root / "bundle", progress=False)
    model = mmedge.load(root / "bundle")
    assert not model.accepts_images
    with pytest.raises(PromptError, match="text-only"):
        model.generate("What is this?", [np.zeros((8, 8, 3), dtype=np.uint8)])


# -- export ----------------------------------------------------------------------------------------
def test_unsupported_architecture_lists_supported(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                    "model_type": "gpt2"}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="LlavaForConditionalGeneration") as info:
        export_model(str(folder), tmp_path / "out", progress=False)
    for supported in ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration",
                      "CLIPModel", "Qwen2ForCausalLM"):
        assert supported in str(info.value)
    assert "README" in str(info.value)


def test_remote_code_and_pickles_refused(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["MyModel"],
                                                    "auto_map": {"AutoModel": "x.MyModel"}}))
    with pytest.raises(UnsupportedModelError, match="remote code"):
        export_model(str(folder), tmp_path / "out", progress=False)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ExportError, match="pickled"):
        export_model(str(folder), tmp_path / "out", progress=False)


def test_export_refuses_nonempty_output(bundle, tmp_path):
    with pytest.raises(ExportError, match="not empty"):
        export_model("unused", bundle, progress=False)


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_errors_are_one_line(copy, capsys):
    (copy / "embed.onnx").write_bytes(b"tampered")
    assert cli_main(["run", str(copy), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "embed.onnx" in err and "Traceback" not in err


def test_cli_run_and_info(bundle, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.full((50, 70, 3), 120, dtype=np.uint8)).save(image)
    assert cli_main(["run", str(bundle), "--image", str(image), "--prompt", "What is it?",
                     "--max-new-tokens", "5", "--stats"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "TTFT" in out.err and "CPU" in out.err
    assert cli_main(["info", str(bundle)]) == 0
    info = capsys.readouterr().out
    assert "all files match" in info and "vision" in info and "parity" in info
    assert cli_main(["info", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True


def test_cli_bench_json(bundle, capsys):
    assert cli_main(["bench", str(bundle), "--new-tokens", "4", "--runs", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["median"]["new_tokens"] == 4 and result["median"]["encode_ms"] > 0
    assert result["peak_rss_mb"] > 0


def test_runtime_does_not_import_torch(bundle):
    """The runtime's layering: loading and running a bundle imports neither torch nor the exporter."""
    import os
    import subprocess
    import sys

    code = ("import sys, mmedge; m = mmedge.load(sys.argv[1]); m.generate('hi', max_new_tokens=2); "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers') "
            "or k.startswith('mmedge.export')]; print(bad); sys.exit(1 if bad else 0)")
    env_path = [p for p in sys.path if p]
    result = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=":".join(env_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_chat_multi_turn_with_image(bundle, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from mmedge.cli.chat import chat_loop

    image = tmp_path / "x.png"
    Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8)).save(image)
    lines = iter([f"/image {image}", "What is this?", f"/image {tmp_path / 'missing.png'}",
                  "And now?", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    model = mmedge.load(bundle)
    calls = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw) or original(**kw))
    chat_loop(model, max_new_tokens=3)
    err = capsys.readouterr().err
    assert "attached" in err and "missing.png" in err          # a bad image is reported, not fatal
    assert len(calls) == 2
    second = calls[1]
    assert len(second["images"]) == 1                          # the first turn's image stays
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]


def test_bad_sampling_settings_fail_at_the_call(bundle):
    from mmedge.errors import MMEdgeError

    model = mmedge.load(bundle)
    with pytest.raises(MMEdgeError, match="top_p"):
        model.generate("hi", stream=True, temperature=0.7, top_p=1.5)   # before any iteration
    with pytest.raises(PromptError, match="max_new_tokens"):
        model.generate("hi", max_new_tokens=0)
