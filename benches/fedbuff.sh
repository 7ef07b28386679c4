#!/bin/bash
# FedBuff against synchronous rounds with half of the fleet intermittently offline
# (benches/RESULTS.md, "Asynchronous rounds"). Usage: fedbuff.sh BIN_DIR OUT_DIR [RUN...]
#  (default: sync async). BIN_DIR holds sim/fl-sim and server/fl-coordinator (a Release tree);
#  OUT_DIR/RUN/{log.txt,rounds.csv} and OUT_DIR/summary.txt (benches/logs/ is not in git).
#  Both: 100 devices x 100 Fashion-MNIST examples (IID), logistic regression, E=1 B=10 lr 0.05,
#  40 versions of 20 updates each; --offline-share 0.5: half of the devices, with probability
#  1/2 after taking a task and after finishing one, go offline for an exponential period of
#  mean 10 s. sync: 20 participants (26 tasks), first come first served, deadline 30 s, closes
#  at 20 or at the deadline with 10. async: buffer_size 20, max_staleness 4, every device may
#  hold a task. sync40, async40: the same with 40 devices (a round needs half of the fleet).
#  sync-slow, async-slow: 100 devices, and 30% of them stragglers whose uploads take a
#  lognormal delay of median 3 s (heterogeneous devices, FedBuff's setting).
set -u
bin=$1 out=$2
shift 2
runs=${*:-sync async}
common="--samples-per-device 100 --model logreg --rounds 40 --epochs 1 --batch 10
  --lr 0.05 --clip-norm 0 --partition iid --offline-share 0.5 --offline-mean 10 --seed 1
  --threads 1 --train-threads 1 --coordinator-bin $bin/server/fl-coordinator"
for run in $runs; do
  case $run in
    sync) args="--devices 100 --participants 20 --selection-window 0 --deadline 30" ;;
    async) args="--devices 100 --mode async --buffer-size 20 --max-staleness 4 --deadline 30" ;;
    sync40) args="--devices 40 --participants 20 --selection-window 0 --deadline 30" ;;
    async40) args="--devices 40 --mode async --buffer-size 20 --max-staleness 4 --deadline 30" ;;
    sync-slow) args="--devices 100 --participants 20 --selection-window 0 --deadline 30
      --stragglers 0.3 --straggler-ms 3000" ;;
    async-slow) args="--devices 100 --mode async --buffer-size 20 --max-staleness 4 --deadline 30
      --stragglers 0.3 --straggler-ms 3000" ;;
    *) echo "unknown run $run"; continue ;;
  esac
  mkdir -p "$out/$run"
  start=$(date +%s)
  # shellcheck disable=SC2086
  OPENBLAS_NUM_THREADS=1 nice -n 10 "$bin/sim/fl-sim" $common $args --out "$out/$run" \
    > "$out/$run/log.txt" 2>&1
  rc=$?
  end=$(date +%s)
  # rounds.csv: round,accuracy,...,seconds: accuracy against the cumulated round time.
  curve=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "seconds") s = i; next }
    { t += $s; if ($1 % 10 == 0) printf "r%d %.4f @ %.0f s; ", $1 , $2, t }' \
    "$out/$run/rounds.csv")
  echo "$run exit $rc wall $((end - start)) s: $curve" | tee -a "$out/summary.txt"
done
