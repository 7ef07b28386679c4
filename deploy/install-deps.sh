#!/usr/bin/env bash
# Installs fleetlearn's build, test and run-time dependencies from Debian 12 packages.
# Idempotent: when every package is already installed it does nothing (no apt-get update).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git ca-certificates
  libmicrohttpd-dev libprotobuf-c-dev protobuf-c-compiler
  libssl-dev libopenblas-dev libpq-dev postgresql postgresql-common
  libcriterion-dev libcurl4-openssl-dev libjansson-dev zlib1g-dev
  libsodium-dev  # the coordinator's Ed25519 verification of device requests (server/auth/keys.c)
  dataset-fashion-mnist
  python3 python3-numpy gnuplot-nox
  # MQTT (docs/MQTT.md): libmosquitto for fl_transport_mqtt and fl-mqtt-bridge (FL_WITH_MQTT), the
  # broker and mosquitto_passwd for deploy/mosquitto/gen-config.sh and itest_mqtt, the clients for
  # looking at a broker by hand
  libmosquitto-dev mosquitto mosquitto-clients
  clang-format  # tests/run.sh: the formatting check of changed C lines (.ci/check-format.sh)
  clang  # tests/fuzz/run.sh: libFuzzer harnesses (-fsanitize=fuzzer comes with clang)
  # deploy/: image test (podman build, debootstrap base), two-replica test behind nginx, chart/compose checks
  podman debootstrap nginx curl python3-yaml
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev  # deploy/helm/render (helm is not in Debian)
  libjs-chart.js  # the dashboard's charts: copied from /usr/share/javascript/chart.js into share/fleetlearn/ui
  # tests/e2e: the dashboard in headless Chromium (playwright-core 1.49 from npm, which needs Node >= 18
  # like Debian 12's nodejs, drives Debian's chromium)
  chromium
  prometheus  # promtool: check metrics on /metrics, check and test the rules in deploy/prometheus
  time  # tests/cross/itest_gateway_lean.c: the gateway's peak RSS (/usr/bin/time -f %M)
)
# tests/cross/run-aarch64.sh (docs/PORTING.md): the lean client cross-built for aarch64 with
# Debian's cross toolchain and multiarch -dev packages, run under qemu-user. Not Criterion for
# arm64: it is not co-installable with the amd64 one (the unit tests use the mini runner of
# tests/cross/mini-criterion there). The :arm64 names need `dpkg --add-architecture arm64`,
# done below. Only with FL_CROSS=1 (tests/run.sh asks for them unless FL_CROSS=0, and runs
# the step where they are installed).
if [ "${FL_CROSS:-0}" = 1 ]; then
  PACKAGES+=(
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user file
    libssl-dev:arm64 libprotobuf-c-dev:arm64 zlib1g-dev:arm64 libmosquitto-dev:arm64
  )
fi

# Node.js and npm for tests/e2e: Debian's only where the machine has none. A machine that
# already has Node.js from elsewhere (NodeSource's nodejs bundles npm) must keep it: Debian's
# npm package conflicts with that nodejs, and apt would refuse the whole install.
if ! command -v node >/dev/null 2>&1; then PACKAGES+=(nodejs); fi
if ! command -v npm >/dev/null 2>&1; then PACKAGES+=(npm); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
if printf '%s\n' "${missing[@]}" | grep -q ':arm64$' &&
  ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64 # before the update, so that it fetches arm64's lists
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
