#!/bin/bash
# Accuracy against epsilon of benches/RESULTS.md ("Differential privacy"), one seed each.
# Usage: dp.sh BIN_DIR OUT_DIR [RUN...]
#  (default: nonprivate z0.5 z1 z2 z0.5-adaptive z1-adaptive z2-adaptive)
#  BIN_DIR holds fl-sim and fl-coordinator's directory is BIN_DIR/../server; OUT_DIR gets
#  OUT_DIR/RUN/{log.txt,rounds.csv} and OUT_DIR/summary.txt (benches/logs/ is not in git).
#  Fashion-MNIST, 1000 devices x 60 IID examples, 100 per round (q = 0.1), logistic
#  regression, E=1 B=10 lr 0.05, clip_norm 1 (adaptive runs: initial clip 1, target quantile
#  0.5, clip lr 0.2, count noise participants/20), ROUNDS rounds (20), delta 1e-5.
set -u
bin=$1 out=$2
shift 2
runs=${*:-nonprivate z0.5 z1 z2 z0.5-adaptive z1-adaptive z2-adaptive}
ROUNDS=${ROUNDS:-20}
mkdir -p "$out"
for run in $runs; do
  case $run in
    nonprivate) dargs="" ;;
    z0.5) dargs="--noise-multiplier 0.5" ;;
    z1) dargs="--noise-multiplier 1" ;;
    z2) dargs="--noise-multiplier 2" ;;
    z0.5-adaptive) dargs="--noise-multiplier 0.5 --clip-quantile 0.5" ;;
    z1-adaptive) dargs="--noise-multiplier 1 --clip-quantile 0.5" ;;
    z2-adaptive) dargs="--noise-multiplier 2 --clip-quantile 0.5" ;;
    *) echo "unknown run $run"; continue ;;
  esac
  mkdir -p "$out/$run"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$bin/fl-sim" --devices 1000 --participants 100 --samples-per-device 60 --model logreg \
    --rounds "$ROUNDS" --epochs 1 --batch 10 --lr 0.05 --clip-norm 1 --deadline 600 \
    --partition iid --seed 1 $dargs --coordinator-bin "$bin/../server/fl-coordinator" \
    --out "$out/$run" > "$out/$run/log.txt" 2>&1
  rc=$?
  end=$(date +%s)
  last=$(awk -F, 'NR > 1 && $2 != "nan" { a = $2; r = $1 } END { printf "%.4f (round %d)", a, r }' \
    "$out/$run/rounds.csv" 2>/dev/null)
  eps=$(grep -o 'privacy.*' "$out/$run/log.txt" | head -1)
  echo "$run exit $rc wall $((end - start)) s final accuracy $last $eps" | tee -a "$out/summary.txt"
done
