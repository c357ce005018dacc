"""Where `export_model` may write, and what it leaves on disk (export/output.py, export/sources.py).

Real exports of a tiny seeded Llama (mmedge.models.tiny, fp32, parity skipped where it is not the
point: a few seconds each) into real folders: `--overwrite` replaces only a bundle mmedge wrote and
refuses any other folder without touching it; a failed export leaves the old bundle as it was; `-o`
naming a file and a model path that does not exist are clear errors, not tracebacks or hub
lookups; the bundle's files and folders follow the umask.
"""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from mmedge.bundle import open_bundle
from mmedge.errors import ExportError
from mmedge.export import export_model
from mmedge.export.sources import looks_like_hub_id
from mmedge.models import tiny


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return tiny.build_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "hf", arch="llama", seed=0)


@pytest.fixture(scope="module")
def bundle(hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "bundle"
    export_model(str(hf), out, precision="fp32", parity=False, progress=False)
    return out


@pytest.fixture
def old_bundle(bundle, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(bundle, copy)
    return copy


def _contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _siblings(folder):
    """What an export left beside `folder` (its staging folder, the old bundle set aside)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# -- --overwrite -----------------------------------------------------------------------------------
def test_overwrite_refuses_a_working_folder_and_keeps_its_files(hf, tmp_path):
    work = tmp_path / "scratch"
    (work / "src").mkdir(parents=True)
    (work / "notes.txt").write_text("my notes")
    (work / "src" / "main.py").write_text("print(1)")
    for overwrite in (False, True):
        with pytest.raises(ExportError) as err:
            export_model(str(hf), work, parity=False, progress=False, overwrite=overwrite)
        message = str(err.value)
        assert "not an mmedge bundle" in message and "notes.txt" in message and "src/" in message
        assert "-o a new or empty folder" in message
    assert (work / "notes.txt").read_text() == "my notes"
    assert (work / "src" / "main.py").read_text() == "print(1)"
    assert _siblings(work) == []   # no staging folder left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch"]


def test_overwrite_refuses_a_manifest_without_mmedge_format_marker(hf, tmp_path):
    work = tmp_path / "other-tool-output"
    work.mkdir()
    (work / "manifest.json").write_text('{"name": "someone else\'s manifest", "files": {}}')
    (work / "data.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(ExportError, match="not an mmedge bundle"):
        export_model(str(hf), work, parity=False, progress=False, overwrite=True)
    assert (work / "data.bin").read_bytes() == b"\x00" * 16


def test_overwrite_refuses_a_bundle_holding_a_users_file(hf, old_bundle):
    (old_bundle / "README-mine.md").write_text("keep me")
    (old_bundle / "runs").mkdir()
    (old_bundle / "runs" / "log.txt").write_text("keep me too")
    before = _contents(old_bundle)
    with pytest.raises(ExportError) as err:
        export_model(str(hf), old_bundle, parity=False, progress=False, overwrite=True)
    assert "other files added" in str(err.value)
    assert "README-mine.md" in str(err.value) and "runs/" in str(err.value)
    assert _contents(old_bundle) == before


def test_without_overwrite_an_existing_bundle_is_refused(hf, old_bundle):
    before = _contents(old_bundle)
    with pytest.raises(ExportError, match="--overwrite"):
        export_model(str(hf), old_bundle, parity=False, progress=False)
    assert _contents(old_bundle) == before


def test_overwrite_replaces_a_bundle(hf, old_bundle):
    assert open_bundle(old_bundle).manifest["quantization"]["decoder"] == "fp32"
    export_model(str(hf), old_bundle, precision="int8", parity=False, progress=False,
                 overwrite=True)
    replaced = open_bundle(old_bundle)   # verifies every file against the new manifest
    assert replaced.manifest["quantization"]["decoder"] == "int8"
    assert _siblings(old_bundle) == []   # neither the staging folder nor the old bundle is left


def test_failed_export_keeps_the_old_bundle(hf, old_bundle, tmp_path):
    # A real failure in the middle of the export (the torch model is loaded, the decoder graph is
    # being built): a model folder whose tokenizer files are missing.
    broken = tmp_path / "sources" / "no-tokenizer"
    shutil.copytree(hf, broken)
    for path in broken.glob("tokenizer*"):
        path.unlink()
    before = _contents(old_bundle)
    with pytest.raises(Exception):
        export_model(str(broken), old_bundle, parity=False, progress=False, overwrite=True)
    assert _contents(old_bundle) == before
    open_bundle(old_bundle)
    assert _siblings(old_bundle) == []


def test_export_into_an_empty_current_folder(hf, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    export_model(str(hf), ".", parity=False, progress=False)
    assert open_bundle(here).family == "llm"
    # Replacing the folder the shell stands in is refused, and says what to do instead.
    with pytest.raises(ExportError, match="current folder"):
        export_model(str(hf), ".", parity=False, progress=False, overwrite=True)
    open_bundle(here)


# -- -o naming a file, models that do not exist -----------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_is_a_file(hf, tmp_path, overwrite):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"not a folder")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_model(str(hf), target, parity=False, progress=False, overwrite=overwrite)
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_model(str(hf), target / "bundle", parity=False, progress=False)
    assert target.read_bytes() == b"not a folder"


@pytest.mark.parametrize("model", ["nosuch/", "./nosuch", "ABS/nosuch", "nosuch.gguf",
                                   "nosuch/deeper/model", "../nosuch"])
def test_missing_local_path_says_it_does_not_exist(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = model.replace("ABS", str(tmp_path))
    with pytest.raises(ExportError) as err:
        export_model(model, tmp_path / "out", parity=False, progress=False)
    message = str(err.value)
    assert "does not exist" in message and "Hub" not in message and "download" not in message
    assert not (tmp_path / "out").exists()


def test_only_owner_slash_name_is_a_hub_id():
    for hub_id in ("HuggingFaceTB/SmolLM2-135M-Instruct", "openai/clip-vit-base-patch32",
                   "Qwen/Qwen2.5-0.5B", "a_b/c_d"):
        assert looks_like_hub_id(hub_id), hub_id
    for path in ("nosuch/", "./nosuch", "/abs/nosuch", "nosuch.gguf", "a/b/c", "../x", "a/..",
                 "-a/b", "a--b/c", "owner/name.gguf", "nosuch"):
        assert not looks_like_hub_id(path), path


# -- file modes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644),
                                                        (0o027, 0o750, 0o640)])
def test_bundle_modes_follow_the_umask(hf, tmp_path, umask, dir_mode, file_mode):
    previous = os.umask(umask)
    try:
        # int4: the path through onnxruntime-genai's builder and the grid rewrite, which wrote
        # decoder.onnx.data as 0600 inside a 0700 folder.
        export_model(str(hf), tmp_path / "nested" / "bundle", precision="int4", parity=False,
                     progress=False)
    finally:
        os.umask(previous)
    root = tmp_path / "nested" / "bundle"
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [root, *root.rglob("*")]}
    assert "nested/bundle/decoder.onnx.data" in modes
    want = {name: dir_mode if (tmp_path / name).is_dir() else file_mode for name in modes}
    assert modes == want
    assert stat.S_IMODE((tmp_path / "nested").stat().st_mode) == dir_mode
