#!/usr/bin/env bash
# README's main job: a simulated fleet of 1000 devices training the 2NN on Fashion-MNIST
# against a real coordinator and a throwaway PostgreSQL, on a fresh Debian 12 machine.
#   bash deploy/quickstart.sh                 # 1000 devices, 5 rounds
#   bash deploy/quickstart.sh --rounds 20     # any fl-sim option is passed through
#   bash deploy/quickstart.sh --devices 10000 # 6 examples each: Fashion-MNIST has 60000
# Output: a progress display, a summary table, fl-sim-out/rounds.csv and accuracy.svg/.png.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

BUILD=${FL_BUILD_DIR:-build-release}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFL_BUILD_TESTS=OFF -DFL_BUILD_BENCHES=OFF \
  >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target fl-sim fl-coordinator

# 60 examples per device, or as many as the 60000 of Fashion-MNIST's training set give each of
# more than 1000 devices, unless --samples-per-device says otherwise.
# A round's deadline grows with the fleet beyond 1000 devices (60 s per 1000) unless --deadline
# says otherwise: the coordinator takes uploads at a rate, not all at once.
devices=1000 per= deadline=
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --devices=*) devices=${args[i]#*=} ;;
    --devices) devices=${args[i + 1]:-1000} ;;
    --samples-per-device | --samples-per-device=*) per=given ;;
    --deadline | --deadline=*) deadline=given ;;
  esac
done
[[ $devices =~ ^[0-9]+$ && $devices -gt 0 ]] || { echo "quickstart: bad --devices" >&2; exit 2; }
if [[ -z $per ]]; then
  per=$((60000 / devices < 60 ? 60000 / devices : 60))
  set -- --samples-per-device "$per" "$@"
fi
if [[ -z $deadline && $devices -gt 1000 ]]; then
  set -- --deadline $((devices * 60 / 1000)) "$@"
fi
# Each exchange in flight holds a socket and a device's state file may be open beside it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

exec "$BUILD/sim/fl-sim" --devices 1000 --rounds 5 --model 2nn --dataset fmnist \
  --partition iid --epochs 1 --batch 10 --lr 0.05 \
  --coordinator-bin "$BUILD/server/fl-coordinator" --out fl-sim-out "$@"
