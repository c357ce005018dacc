#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer: configures build/sanitize
# with MMEDGE_SANITIZE=ON (CPU only: mmedge_core and the standalone checks in csrc/tests, no Python
# module), builds it and runs the checks with ctest. Needs cmake, GCC or Clang, and OpenMP for the
# threaded paths; not Python or pybind11. CI runs it after scripts/test.sh.
#   MMEDGE_JOBS   parallel build jobs (default 2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build/sanitize"
JOBS="${MMEDGE_JOBS:-2}"
command -v cmake >/dev/null || { echo "sanitize: cmake not found on PATH" >&2; exit 1; }
start=$SECONDS

# RelWithDebInfo: optimized like the wheel's kernels (-O2), with line numbers in the reports.
cmake -S "$ROOT" -B "$BUILD" --log-level=WARNING \
  -DMMEDGE_CUDA=OFF -DMMEDGE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD" --parallel "$JOBS"
built=$SECONDS

# The checks' output goes to build/sanitize/ctest.out; on a failure it is printed, with the
# sanitizer's report.
if ! ctest --test-dir "$BUILD" --verbose >"$BUILD/ctest.out" 2>&1; then
  cat "$BUILD/ctest.out"
  echo "sanitize: FAILED after $((SECONDS - start)) s" >&2
  exit 1
fi
# One summary line per SIMD variant (the check runs once for each, see csrc/tests/CMakeLists.txt).
grep -o 'kernel_check: .*' "$BUILD/ctest.out" | sed 's/^/sanitize: /' || true
echo "sanitize: ASan+UBSan passed [build $((built - start)) s, total $((SECONDS - start)) s]"
