#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the dependencies, checks the
# formatting of the C lines changed since the recorded baseline (.ci/check-format.sh), builds
# with AddressSanitizer + UBSan and runs the unit tests, then the integration tests against a
# real coordinator and a throwaway PostgreSQL cluster (pg_virtualenv) that lives only for this
# run. It also builds the tree as README's "Building by hand" does (Release, -O3, where GCC's
# -Wformat-truncation and friends see more) and runs that build's unit tests, so that a Release
# build cannot break unnoticed; that costs about a minute or two of the 2-core budget.
#
#   bash tests/run.sh            # everything
#   FL_TEST_LABEL=unit bash tests/run.sh   # one label only (unit | integration | fuzz)
#   FL_RELEASE=0 / FL_FORMAT=0   # skip the Release build / the formatting check
#   FL_FUZZ=0                    # skip the fuzzing step (tests/fuzz/run.sh: six libFuzzer
#                                # harnesses, FL_FUZZ_SECONDS = 60 each, about 7 minutes)
#   FL_TEST_LABEL=cross          # the aarch64 step alone (tests/cross/run-aarch64.sh: the lean
#                                # client cross-built, its unit tests and a gateway round under
#                                # qemu-aarch64, about 3-4 minutes); it runs only where its
#                                # packages are installed (tests/run.sh installs them unless
#                                # FL_CROSS=0, which skips the step)
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
# The aarch64 step's cross toolchain, qemu-user and arm64 -dev packages (about 100 MB): a
# second call, so that a mirror without arm64 costs only that step, not the run.
if [ "${FL_CROSS:-1}" != 0 ]; then
  FL_CROSS=1 bash deploy/install-deps.sh || echo "install-deps: the cross packages could not be installed"
fi

BUILD=${FL_BUILD_DIR:-build-test}
RELEASE_BUILD=${FL_RELEASE_BUILD_DIR:-build-release}
JOBS=${FL_JOBS:-$(nproc)}
label=${FL_TEST_LABEL:-}
status=0

if [ "${FL_FORMAT:-1}" != 0 ]; then
  bash .ci/check-format.sh || status=1
fi

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFL_SANITIZE=ON >/dev/null
cmake --build "$BUILD" -j "$JOBS"
if [ "${FL_RELEASE:-1}" != 0 ] && { [ -z "$label" ] || [ "$label" = unit ]; }; then
  # README's build type with the tests in it (benches too: they are part of a default build).
  cmake -S . -B "$RELEASE_BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$RELEASE_BUILD" -j "$JOBS"
fi

# LeakSanitizer is part of ASan: leaks fail the tests. OpenBLAS keeps its thread pool alive
# until exit; one thread is enough for tests and keeps timings steady on 2 cores.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1

if [ -z "$label" ] || [ "$label" = unit ]; then
  ctest --test-dir "$BUILD" -L unit --output-on-failure -j "$JOBS" || status=1
  if [ "${FL_RELEASE:-1}" != 0 ]; then
    # The unit tests again, optimised and without sanitizers (undefined behaviour the
    # optimiser exploits shows here). The deploy checks do not depend on the build type.
    echo "unit tests of the Release build ($RELEASE_BUILD):"
    ctest --test-dir "$RELEASE_BUILD" -L unit -LE deploy --output-on-failure -j "$JOBS" || status=1
  fi
fi
if [ "${FL_FUZZ:-1}" != 0 ] && { [ -z "$label" ] || [ "$label" = fuzz ]; }; then
  # Own tree (clang, coverage instrumentation); zero crashes, leaks and memory-limit hits.
  bash tests/fuzz/run.sh || status=1
fi
if [ -z "$label" ] || [ "$label" = integration ]; then
  if ctest --test-dir "$BUILD" -L integration -N | grep -q "Total Tests: [1-9]"; then
    # -t: the cluster lives in a temporary directory even as root, and is dropped afterwards.
    pg_virtualenv -t ctest --test-dir "$BUILD" -L integration --output-on-failure -j 1 || status=1
  else
    echo "no integration tests registered"
  fi
fi
if [ "${FL_CROSS:-}" != 0 ] && { [ -z "$label" ] || [ "$label" = cross ]; }; then
  cross_ready=1
  for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
    command -v "$tool" >/dev/null || cross_ready=0
  done
  for dev in libssl-dev libprotobuf-c-dev zlib1g-dev libmosquitto-dev; do
    dpkg -s "$dev:arm64" >/dev/null 2>&1 || cross_ready=0
  done
  if [ $cross_ready = 1 ]; then
    # test_train_smoke is left out here (4-5 minutes under qemu, the gradient checks and the
    # gateway's round train on aarch64 too); run-aarch64.sh by hand runs it.
    FL_JOBS=$JOBS FL_CROSS_EXCLUDE='^unit\.test_train_smoke$' bash tests/cross/run-aarch64.sh "$BUILD" ||
      status=1
  else
    echo "aarch64 step skipped: its packages are not installed (FL_CROSS=1 bash deploy/install-deps.sh)"
  fi
fi
exit $status
