#!/usr/bin/env bash
# README's main job: a simulated fleet of 1000 devices training the 2NN on Fashion-MNIST
# against a real coordinator and a throwaway PostgreSQL, on a fresh Debian 12 machine.
#   bash deploy/quickstart.sh                 # 1000 devices, 5 rounds
#   bash deploy/quickstart.sh --rounds 20     # any fl-sim option is passed through
# Output: a progress display, a summary table, fl-sim-out/rounds.csv and accuracy.svg/.png.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

BUILD=${FL_BUILD_DIR:-build-release}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFL_BUILD_TESTS=OFF -DFL_BUILD_BENCHES=OFF \
  >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target fl-sim fl-coordinator

exec "$BUILD/sim/fl-sim" --devices 1000 --rounds 5 --model 2nn --dataset fmnist \
  --partition iid --samples-per-device 60 --epochs 1 --batch 10 --lr 0.05 \
  --coordinator-bin "$BUILD/server/fl-coordinator" --out fl-sim-out "$@"
