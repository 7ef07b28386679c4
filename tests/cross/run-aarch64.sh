#!/usr/bin/env bash
# Cross-builds the lean client for aarch64 (FL_LEAN=ON, cmake/toolchain-aarch64.cmake), runs its
# unit tests under qemu-aarch64, then two fl-gateway rounds of the sensor model, the aarch64
# gateway under qemu against a native coordinator and a throwaway PostgreSQL (pg_virtualenv),
# over plain HTTP and over MQTT (a real Mosquitto broker and fl-mqtt-bridge), driven by the
# native build's itest_gateway_lean (docs/PORTING.md).
#
#   bash tests/cross/run-aarch64.sh [NATIVE_BUILD_DIR]   # default build-test; run from anywhere
#
# Needs deploy/install-deps.sh's cross packages (FL_CROSS=1). The unit tests run on the mini
# Criterion of tests/cross/mini-criterion (-DFL_MINI_CRITERION=ON): libcriterion-dev:arm64
# cannot be installed beside the amd64 one. Programs run under `qemu-aarch64 -L /`, the
# multiarch loader of libc6:arm64 (cmake/toolchain-aarch64.cmake says why not the cross
# toolchain's: with it every forked test child hung). Test timeouts are scaled by
# FL_MINI_CRITERION_TIMEOUT_SCALE (default 10 here).
# Environment: FL_CROSS_BUILD_DIR (build-aarch64), FL_JOBS (nproc), FL_CROSS_ROUND=0 skips the
# gateway round (no PostgreSQL needed), FL_CROSS_EXCLUDE a ctest -E regex of unit tests left
# out (tests/run.sh leaves out test_train_smoke: 4-5 minutes under qemu).
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=$PWD
NATIVE=${1:-build-test}
CROSS=${FL_CROSS_BUILD_DIR:-build-aarch64}
case $CROSS in /*) ;; *) CROSS=$SRC/$CROSS ;; esac # absolute: the round runs elsewhere
JOBS=${FL_JOBS:-$(nproc)}
TRIPLE=aarch64-linux-gnu
start=$(date +%s)

for tool in $TRIPLE-gcc qemu-aarch64 protoc-c; do
  command -v "$tool" >/dev/null || {
    echo "run-aarch64: $tool is missing: FL_CROSS=1 bash deploy/install-deps.sh installs it" >&2
    exit 1
  }
done
for dev in libssl-dev libprotobuf-c-dev zlib1g-dev libmosquitto-dev; do
  dpkg -s "$dev:arm64" >/dev/null 2>&1 || {
    echo "run-aarch64: $dev:arm64 is missing: FL_CROSS=1 bash deploy/install-deps.sh installs it" >&2
    exit 1
  }
done

# --- cross build and unit tests under qemu ---------------------------------------------------
cmake -S . -B "$CROSS" -DCMAKE_TOOLCHAIN_FILE="$SRC/cmake/toolchain-aarch64.cmake" -DFL_LEAN=ON \
  -DCMAKE_BUILD_TYPE=MinSizeRel -DFL_MINI_CRITERION=ON >/dev/null
cmake --build "$CROSS" -j "$JOBS"
file "$CROSS/client/fl-gateway" | grep -q 'ARM aarch64' || {
  echo "run-aarch64: $CROSS/client/fl-gateway is not an aarch64 binary" >&2
  exit 1
}
status=0
# ctest starts each test program through CMAKE_CROSSCOMPILING_EMULATOR (qemu-aarch64).
export FL_MINI_CRITERION_TIMEOUT_SCALE=${FL_MINI_CRITERION_TIMEOUT_SCALE:-10}
exclude=()
if [ -n "${FL_CROSS_EXCLUDE:-}" ]; then exclude=(-E "$FL_CROSS_EXCLUDE"); fi
ctest --test-dir "$CROSS" -L unit "${exclude[@]}" --output-on-failure -j "$JOBS" --timeout 3600 ||
  status=1

# --- a gateway round: the aarch64 fl-gateway against the native coordinator -----------------
if [ "${FL_CROSS_ROUND:-1}" != 0 ]; then
  cmake -S . -B "$NATIVE" >/dev/null
  cmake --build "$NATIVE" -j "$JOBS" --target fl-coordinator itest_gateway_lean # + fl-mqtt-bridge
  FL_LEAN_GATEWAY="$CROSS/client/fl-gateway" \
    FL_LEAN_RUNNER="qemu-aarch64 -L /" \
    pg_virtualenv -t "$NATIVE/tests/cross/itest_gateway_lean" --verbose --jobs 1 || status=1
fi
echo "run-aarch64: $(($(date +%s) - start)) s, status $status"
exit $status
