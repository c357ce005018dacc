"""Checks the native extension `mmedge._C` as built by CMakeLists.txt: it imports, carries the
package's version, and reports its CUDA build and devices truthfully. Also checks that
`mmedge.native` reports a missing extension instead of failing.

Tests that need `_C` skip when it is not built (a source-tree run without `pip install .`).
Kernel tests do not live here. CI says which build it is testing with MMEDGE_EXPECT_CUDA_BUILD (0: the
MMEDGE_CUDA=OFF install of scripts/cpu_only_build.sh; 1: the default build where nvcc is on PATH).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import mmedge
from mmedge.native import native_info


@pytest.fixture(scope="module")
def C() -> ModuleType:
    return pytest.importorskip("mmedge._C", reason="mmedge._C is not built; run `pip install .`")


def test_version_matches_package(C: ModuleType) -> None:
    assert C.__version__ == mmedge.__version__


def test_reports_cuda_build_and_devices(C: ModuleType) -> None:
    assert isinstance(C.built_with_cuda, bool)
    count = C.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    assert C.cuda_available() is (count > 0)
    if not C.built_with_cuda:
        assert count == 0
    print(f"mmedge._C {C.__version__}: built_with_cuda={C.built_with_cuda}, cuda devices={count}")


def test_built_with_cuda_as_ci_expects(C: ModuleType) -> None:
    # A build that silently came out without (or with) CUDA, or an installed copy shadowing the one
    # under test, fails here instead of passing the CPU tests unnoticed.
    expected = os.environ.get("MMEDGE_EXPECT_CUDA_BUILD")
    if expected not in ("0", "1"):
        pytest.skip("MMEDGE_EXPECT_CUDA_BUILD (0 or 1) is not set; CI sets it")
    assert C.built_with_cuda is (expected == "1"), (
        f"{C.__file__} has built_with_cuda={C.built_with_cuda}, "
        f"MMEDGE_EXPECT_CUDA_BUILD={expected}")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine may have a GPU")
def test_no_cuda_device_without_gpu(C: ModuleType) -> None:
    # Without a driver or GPU the CUDA build must answer 0, not crash or raise.
    assert C.cuda_device_count() == 0
    assert C.cuda_available() is False


def test_native_info_describes_extension(C: ModuleType) -> None:
    assert native_info() == {
        "available": True,
        "version": C.__version__,
        "built_with_cuda": C.built_with_cuda,
        "cuda_available": C.cuda_available(),
        "device_count": C.cuda_device_count(),
    }


def test_native_info_without_extension(tmp_path: Path) -> None:
    # A copy of the imported package with the compiled extension left out, as in a source tree.
    package = Path(mmedge.__file__).parent
    shutil.copytree(
        package,
        tmp_path / "mmedge",
        ignore=shutil.ignore_patterns("_C.so", "_C.*.so", "_C.*.pyd", "__pycache__"),
    )
    script = (
        "import json, mmedge, mmedge.native; "
        "print(json.dumps({'file': mmedge.__file__, 'info': mmedge.native.native_info()}))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    if not Path(result["file"]).is_relative_to(tmp_path):
        pytest.skip(f"an installed mmedge shadows PYTHONPATH here ({result['file']})")
    info = result["info"]
    assert info["available"] is False
    assert "not built" in info["reason"] and "pip install ." in info["reason"]
