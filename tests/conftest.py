"""Test setup: which `mmedge` the tests import, decided in one place and checked.

The tests run against the installed package (`bash scripts/test.sh` installs it into .venv, with
the native extension). An installed copy whose Python files differ from this source tree is stale:
testing it would test code that is not here, so the run stops and says how to refresh it. Where
mmedge is not installed at all (or `PYTHONPATH=python` puts the source first), the source tree is
imported instead (python/mmedge, with `mmedge.export` and `mmedge.models` from export/ and
models/), without the native extension.
"""

import hashlib
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Where each part of the installed package comes from (pyproject.toml's wheel.packages).
SOURCES = {"": ROOT / "python" / "mmedge", "export": ROOT / "export", "models": ROOT / "models"}


def _python_files(folder: pathlib.Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts and not str(p.relative_to(folder)).startswith(skip)}


def stale_files(installed: pathlib.Path) -> list[str]:
    """Python files in which the installed package and the source tree differ (or that only one has)."""
    differing = []
    for sub, source in SOURCES.items():
        skip = ("export/", "models/") if sub == "" else ()
        here = _python_files(source)
        there = _python_files(installed / sub if sub else installed, skip)
        differing += [f"{sub}/{name}".lstrip("/") for name in sorted(set(here) | set(there))
                      if here.get(name) != there.get(name)]
    return differing


try:
    import mmedge  # the installed package (or python/ first on PYTHONPATH: the source tree)
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))
    import mmedge
_installed = pathlib.Path(mmedge.__file__).resolve().parent
if _installed == SOURCES[""]:
    mmedge.__path__.append(str(ROOT))  # makes mmedge.export / mmedge.models resolve to ROOT/export, ROOT/models
elif _stale := stale_files(_installed):
    pytest.exit(f"The installed mmedge ({_installed}) is not this source tree: "
                f"{len(_stale)} file(s) differ, e.g. {', '.join(_stale[:5])}. Reinstall it with "
                f"`source scripts/env.sh` (or run `bash scripts/test.sh`).", returncode=4)
