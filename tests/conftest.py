"""Test setup: import `mmedge` from the installed wheel or, failing that, from the source tree.

In the source tree the runtime lives in python/mmedge while `mmedge.export` and `mmedge.models` live in
export/ and models/ at the repository root; appending the root to `mmedge.__path__` makes them resolve.
"""

import sys, pathlib
ROOT = pathlib.Path(__file__).resolve().parents[1]
try:
    import mmedge  # installed wheel
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))
    import mmedge
if not hasattr(mmedge, "_mmedge_source_tree_paths"):
    for sub, name in (("export", "export"), ("models", "models")):
        try:
            __import__(f"mmedge.{name}")
        except ImportError:
            mmedge.__path__.append(str(ROOT))  # makes mmedge.export / mmedge.models resolve to ROOT/export, ROOT/models
    mmedge._mmedge_source_tree_paths = True
