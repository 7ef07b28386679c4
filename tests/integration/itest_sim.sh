#!/usr/bin/env bash
# fl-sim end to end in CI: 50 devices, 3 rounds of the 2NN on Fashion-MNIST against a real
# coordinator, with misbehaving devices, dropouts and network faults injected. Passes when
# test accuracy rises, every round produced a version, the coordinator's refusals of the
# injected bad updates are counted by reason, and every round's coordinator breakdown and the
# initial model's score are reported. (Every evaluation checks the coordinator's signature.)
#   itest_sim.sh FL_SIM FL_COORDINATOR
set -euo pipefail
sim=$1
coord=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

db_args=()
# Under pg_virtualenv the PG* variables name a cluster; otherwise fl-sim starts its own.
if [ -n "${PGPORT:-}" ]; then db_args=(--database-url=); fi

"$sim" --devices 50 --rounds 3 --samples-per-device 200 --model 2nn --lr 0.05 \
  --bad-devices 0.2 --bad-kinds poison,unclipped,badsig,replay --dropout 0.05 --net-fail 0.02 \
  --deadline 20 --coordinator-bin "$coord" --out "$out" "${db_args[@]}" | tee "$out/log"

csv="$out/rounds.csv"
rows=$(($(wc -l <"$csv") - 1))
[ "$rows" -eq 3 ] || { echo "FAIL: $rows rounds in the CSV, want 3"; exit 1; }
first=$(awk -F, 'NR==2 {print $2}' "$csv")
last=$(awk -F, 'NR==4 {print $2}' "$csv")
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b > a && b > 0.6) }' ||
  { echo "FAIL: accuracy did not rise: $first -> $last"; exit 1; }
grep -q "refused: norm_exceeded" "$out/log" || { echo "FAIL: no norm refusals counted"; exit 1; }
grep -q "refused: bad_signature" "$out/log" || { echo "FAIL: no signature refusals"; exit 1; }
grep -q "refused: replayed_nonce" "$out/log" || { echo "FAIL: no replay refusals"; exit 1; }
[ -s "$out/accuracy.svg" ] || { echo "FAIL: no plot"; exit 1; }
# Every round's breakdown from the coordinator's /metrics: 3 rounds, each with check-ins served.
n=$(grep -cE "^  coordinator: checkin [1-9][0-9]* x" "$out/log" || true)
[ "$n" -eq 3 ] || { echo "FAIL: $n coordinator breakdown lines, want 3"; exit 1; }
# The untrained model is scored first (its accuracy is near chance for 10 classes).
grep -qE "^initial model \(version 1\): accuracy 0\.[0-2]" "$out/log" ||
  { echo "FAIL: no initial-model score near chance"; exit 1; }
echo "PASS: accuracy $first -> $last"
