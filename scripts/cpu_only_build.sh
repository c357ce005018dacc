#!/usr/bin/env bash
# CI: a CPU-only build of mmedge (MMEDGE_CUDA=OFF) installs and passes the native tests. pip builds
# it (scikit-build-core, build tree build/cpu-only, apart from the default build's) and installs it
# into a temporary directory; pytest then runs tests/native/ (the kernel and native-build tests)
# with that directory first on PYTHONPATH, ahead of the mmedge scripts/test.sh installed into .venv
# (the default build: CUDA where nvcc is found). MMEDGE_EXPECT_CUDA_BUILD=0 has test_native_build.py
# check that the extension under test really is the one built without CUDA.
# Run it after scripts/test.sh (or scripts/env.sh), which makes the virtualenv.
#   MMEDGE_VENV   the virtualenv (default .venv, as scripts/env.sh)
#   MMEDGE_JOBS   parallel build jobs (default 2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMEDGE_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
BUILD="$ROOT/build/cpu-only"
[ -x "$PY" ] || { echo "cpu-only: no virtualenv at $VENV; run scripts/test.sh first" >&2; exit 1; }
start=$SECONDS

SITE="$(mktemp -d "${TMPDIR:-/tmp}/mmedge-cpu-only.XXXXXX")"
trap 'rm -rf "$SITE"' EXIT
mkdir -p "$BUILD"
# The build requirements from the virtualenv when it has them (no download), else pip's isolated
# build environment, as `pip install .` does.
ISOLATION=()
if "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then
  ISOLATION=(--no-build-isolation)
fi
if ! MMEDGE_CUDA=OFF CMAKE_BUILD_PARALLEL_LEVEL="${MMEDGE_JOBS:-2}" "$PY" -m pip install \
    --disable-pip-version-check --no-deps "${ISOLATION[@]}" --target "$SITE" \
    --config-settings=build-dir="$BUILD" "$ROOT" >"$BUILD/pip.log" 2>&1; then
  cat "$BUILD/pip.log"
  echo "cpu-only: the MMEDGE_CUDA=OFF build failed" >&2
  exit 1
fi
built=$SECONDS

cd "$ROOT"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" MMEDGE_EXPECT_CUDA_BUILD=0
# Which mmedge the tests import: the CPU-only install, not .venv's.
"$PY" -c 'import sys, mmedge._C as C; assert C.__file__.startswith(sys.argv[1]), C.__file__' "$SITE"
"$PY" -m pytest -q -p no:cacheprovider tests/native/
echo "cpu-only: MMEDGE_CUDA=OFF build installed and passed the kernel and native-build tests" \
     "[build $((built - start)) s, total $((SECONDS - start)) s]"
