#!/usr/bin/env bash
# Runs the fuzz harnesses of tests/fuzz/ (atheris: coverage-guided, libFuzzer's engine) for a budget
# each, and fails if any of them finds something: an exception that is not mmedge's own, a crash, a
# hang past 20 s on one input, or memory past 3 GB.
#
#   bash scripts/fuzz.sh [--runs N] [--seconds S] [HARNESS ...]
#
# HARNESS: image, manifest, chat_template, index (default: all). Each stops at N inputs or S seconds,
# whichever comes first (default: 100000 inputs, no time limit). Sets up .venv as scripts/env.sh
# does (MMEDGE_VENV elsewhere), installs the `fuzz` extra of pyproject.toml (atheris) into it, and
# works under build/fuzz/ (MMEDGE_FUZZ_WORK): the tiny bundles the harnesses feed (built once, ~30 s
# each), each harness's growing corpus/, findings/ (the inputs that failed: turn each into a pytest
# test with the fix) and logs/. A summary line per harness says runs, seconds and findings.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
runs=100000
seconds=0
harnesses=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) harnesses+=("$1"); shift ;;
  esac
done
[ ${#harnesses[@]} -gt 0 ] || harnesses=(image manifest chat_template index)

source scripts/env.sh >/dev/null
PY="${MMEDGE_VENV:-$ROOT/.venv}/bin/python"
# The `fuzz` extra, read from pyproject.toml so that the two never disagree.
mapfile -t fuzz_deps < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["fuzz"]))')
"$PY" -m pip install -q --disable-pip-version-check "${fuzz_deps[@]}"

export MMEDGE_FUZZ_WORK="${MMEDGE_FUZZ_WORK:-$ROOT/build/fuzz}"
failed=()
for name in "${harnesses[@]}"; do
  script="tests/fuzz/fuzz_${name}.py"
  [ -f "$script" ] || { echo "no harness $script" >&2; exit 2; }
  corpus="$MMEDGE_FUZZ_WORK/corpus/$name"
  findings="$MMEDGE_FUZZ_WORK/findings/$name"
  log="$MMEDGE_FUZZ_WORK/logs/$name.log"
  mkdir -p "$corpus" "$findings" "$(dirname "$log")"
  start=$(date +%s)
  status=0
  # -timeout: seconds one input may take; -rss_limit_mb: the whole process; -max_len: the longest
  # input (a manifest is ~5 KB, an index file ~40 KB).
  "$PY" "$script" "$corpus" -runs="$runs" -max_total_time="$seconds" -timeout=20 \
      -rss_limit_mb=3072 -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/" \
      >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  done_runs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  if [ "$status" -ne 0 ]; then
    failed+=("$name")
    echo "[fuzz] $name: FINDING after ${done_runs:-?} inputs, ${elapsed}s (exit $status); log $log:" >&2
    grep -a -B2 -A25 -m1 -E "Uncaught Python exception|ERROR: libFuzzer|deadly signal|timeout after|out-of-memory" "$log" >&2 || tail -40 "$log" >&2
    ls -1 "$findings" >&2
  else
    echo "[fuzz] $name: ${done_runs:-?} inputs in ${elapsed}s, no findings (corpus $(ls "$corpus" | wc -l) inputs)"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] findings in: ${failed[*]}" >&2
  exit 1
fi
