"""Where a checkpoint keeps its image processor: `preprocessor_config.json` (transformers 4, most of
the Hub) or nested in `processor_config.json` (what `save_pretrained` of a processor writes in
transformers 5). Both export, to the same manifest; a folder with neither says what to do."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmedge.errors import ExportError  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.export.preprocessing import read_image_processor_config  # noqa: E402
from mmedge.models.tiny import build_tiny_llava  # noqa: E402


def _write(folder, name, value):
    (folder / name).write_text(value if isinstance(value, str) else json.dumps(value))


def test_standalone_file_wins_over_the_nested_entry(tmp_path):
    _write(tmp_path, "preprocessor_config.json", {"size": 1})
    _write(tmp_path, "processor_config.json", {"image_processor": {"size": 2}})
    assert read_image_processor_config(tmp_path) == {"size": 1}
    (tmp_path / "preprocessor_config.json").unlink()
    assert read_image_processor_config(tmp_path) == {"size": 2}


@pytest.mark.parametrize("files, message", [
    ({}, "neither preprocessor_config.json nor processor_config.json"),
    ({"processor_config.json": {"processor_class": "LlavaProcessor"}}, 'no "image_processor" entry'),
    ({"processor_config.json": "{not json"}, "cannot be read as JSON"),
    ({"preprocessor_config.json": "[1, 2]"}, "not an object"),
])
def test_missing_or_broken_configs_say_what_to_do(tmp_path, files, message):
    for name, value in files.items():
        _write(tmp_path, name, value)
    with pytest.raises(ExportError, match=message):
        read_image_processor_config(tmp_path)


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_llava_saved_by_transformers5_exports_like_the_legacy_layout(tmp_path, vision):
    folder = build_tiny_llava(tmp_path / "hf", vision=vision, text="llama", seed=1)
    legacy = export_model(str(folder), tmp_path / "legacy", parity=False, progress=False)
    (folder / "preprocessor_config.json").unlink()
    assert "image_processor" in json.loads((folder / "processor_config.json").read_text())
    nested = export_model(str(folder), tmp_path / "nested", progress=False)
    assert nested["image"] == legacy["image"]
    parity = nested["exporter"]["parity"]
    assert parity["greedy_tokens_agreeing"] == parity["greedy_tokens_compared"]
