"""Fixtures of the server tests: the tiny VLM (int4) and tiny CLIP bundles, exported once, loaded
once, and a server around them (helpers in _serving.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'mmedge[serve]')")

import mmedge  # noqa: E402

from _serving import serving  # noqa: E402


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    from mmedge.export import export_model

    root = tmp_path_factory.mktemp("serve-bundles")
    out = {"tiny-vlm": root / "tiny-vlm", "tiny-clip": root / "tiny-clip"}
    export_model("mmedge-tiny-vlm", out["tiny-vlm"], precision="int4", progress=False)
    export_model("mmedge-tiny-clip", out["tiny-clip"], precision="fp32", progress=False)
    return out


@pytest.fixture(scope="session")
def loaded(bundles):
    """The bundles loaded once with mmedge.load (parallel=2), shared by the servers below."""
    return {"tiny-vlm": mmedge.load(bundles["tiny-vlm"], device="cpu", parallel=2),
            "tiny-clip": mmedge.load(bundles["tiny-clip"], device="cpu")}


@pytest.fixture(scope="session")
def server(loaded):
    """One server for most tests: both models, 2 generations at once, no key."""
    with serving(loaded, parallel=2) as running:
        yield running
