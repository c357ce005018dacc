"""What a new user meets at the command line: help with examples, errors on a line of their own,
`/image` refused at once on a text-only bundle, and an explicit `--device cuda` that cannot be had
said loudly (or refused with --strict-device)."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from mmedge.cli import build_parser, main
from mmedge.export import export_model
from mmedge.models.tiny import build_tiny_llm

NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.fixture(scope="module")
def llm_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    export_model(str(build_tiny_llm(root / "hf", arch="llama")), root / "bundle", progress=False)
    return root / "bundle"


@pytest.mark.parametrize("command", ["export", "run", "chat", "info", "bench", "classify", "embed",
                                     "index", "search", "eval", "serve"])
def test_every_command_has_examples_in_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"mmedge {command}" in out.split("examples:")[1]


def test_chat_help_lists_the_commands_typed_at_its_prompt(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = capsys.readouterr().out
    for typed in ("/image PATH", "/reset", "/quit"):
        assert typed in out


def test_an_error_after_a_progress_bar_starts_on_its_own_line(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"],
                                                    "model_type": "nosuch"}))
    assert main(["export", str(folder), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "export" in err.split("error:")[0]          # the bar was drawn first...
    assert "\nerror: " in err                          # ...and the error begins a new line
    assert "Traceback" not in err


def test_image_on_a_text_only_bundle_is_refused_when_attached(llm_bundle, tmp_path, monkeypatch, capsys):
    import mmedge
    from mmedge.cli.chat import chat_loop

    lines = iter([f"/image {tmp_path / 'x.png'}", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    chat_loop(mmedge.load(llm_bundle), max_new_tokens=2)
    err = capsys.readouterr().err
    assert "text-only" in err and "attached" not in err


def test_image_longest_edge_typed_wrong_is_refused_clearly(llm_bundle, capsys):
    """--image-longest-edge: a text-only bundle and a value out of range are errors that say why;
    a non-number is argparse's usage error. (Its effect on SmolVLM: test_export_smolvlm.py.)"""
    assert main(["run", str(llm_bundle), "-p", "hi", "--image-longest-edge", "1024"]) == 2
    err = capsys.readouterr().err
    assert "error: image_longest_edge was given but this bundle is text-only" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as done:
        main(["run", str(llm_bundle), "-p", "hi", "--image-longest-edge", "big"])
    assert done.value.code == 2 and "invalid int value: 'big'" in capsys.readouterr().err


@pytest.mark.skipif(not NO_CUDA, reason="this onnxruntime has CUDA: nothing to fall back from")
def test_an_explicit_cuda_request_that_cannot_be_met_is_loud(llm_bundle, capsys):
    assert main(["run", str(llm_bundle), "-p", "hi", "--max-new-tokens", "2", "--device", "cuda"]) == 0
    assert "warning: CUDA was requested" in capsys.readouterr().err
    assert main(["run", str(llm_bundle), "-p", "hi", "--device", "cuda", "--strict-device"]) == 2
    assert "error: CUDA was requested" in capsys.readouterr().err
    assert main(["bench", str(llm_bundle), "--device", "cuda", "--strict-device"]) == 2
    # auto is not a request for CUDA: no warning.
    assert main(["run", str(llm_bundle), "-p", "hi", "--max-new-tokens", "2"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_parser_builds_every_command():
    parser, commands = build_parser()
    assert set(commands) == {"export", "run", "chat", "info", "bench", "classify", "embed", "index",
                             "search", "eval", "serve"}
