#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the dependencies, builds with
# AddressSanitizer + UBSan, runs the unit tests, then the integration tests against a real
# coordinator and a throwaway PostgreSQL cluster (pg_virtualenv) that lives only for this run.
#
#   bash tests/run.sh            # everything
#   FL_TEST_LABEL=unit bash tests/run.sh   # one label only (unit | integration)
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

BUILD=${FL_BUILD_DIR:-build-test}
JOBS=${FL_JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFL_SANITIZE=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS"

# LeakSanitizer is part of ASan: leaks fail the tests. OpenBLAS keeps its thread pool alive
# until exit; one thread is enough for tests and keeps timings steady on 2 cores.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1

label=${FL_TEST_LABEL:-}
status=0
if [ -z "$label" ] || [ "$label" = unit ]; then
  ctest --test-dir "$BUILD" -L unit --output-on-failure -j "$JOBS" || status=1
fi
if [ -z "$label" ] || [ "$label" = integration ]; then
  if ctest --test-dir "$BUILD" -L integration -N | grep -q "Total Tests: [1-9]"; then
    # -t: the cluster lives in a temporary directory even as root, and is dropped afterwards.
    pg_virtualenv -t ctest --test-dir "$BUILD" -L integration --output-on-failure -j 1 || status=1
  else
    echo "no integration tests registered"
  fi
fi
exit $status
