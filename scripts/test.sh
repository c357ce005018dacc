#!/usr/bin/env bash
# The test suite, from a fresh clone: sets up .venv (see env.sh), then runs pytest on the installed
# package. Extra arguments go to pytest (e.g. scripts/test.sh -k smollm2).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
python -m pytest -q --durations=15 "$@"
