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
    with pytest.raises(UnsupportedModelError, match="LlavaForConditionalGeneration"):
        export_model(str(folder), tmp_path / "out", progress=False)


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
