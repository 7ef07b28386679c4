#!/bin/bash
# Robustness table of benches/RESULTS.md ("Robust aggregators under in-bound attacks"), one seed.
# Usage: robust.sh BIN_DIR OUT_DIR [AGGREGATOR...]  (default: fedavg median trimmed krum)
#  BIN_DIR holds fl-sim and fl-coordinator's directory is BIN_DIR/../server; OUT_DIR gets
#  OUT_DIR/AGG-KIND-PCT/{log.txt,rounds.csv} and OUT_DIR/summary.txt (benches/logs/ is not in git).
#  Fashion-MNIST 2NN, 20 devices x 300 IID examples, all participating every round (min 20),
#  E=1 B=10 lr 0.05, clip_norm 10, 10 rounds. Attackers: ATTACKS below ("KIND:FRACTION").
#  trimmed: trim_fraction 0.3 (6 per side of 20); krum: byzantine 6 (30% of 20).
set -u
bin=$1 out=$2
shift 2
aggs=${*:-fedavg median trimmed krum}
ATTACKS=${ATTACKS:-"none:0 signflip:0.2 signflip:0.3 scaled:0.3 lie:0.3 labelflip:0.3 noise:0.3"}
ROUNDS=${ROUNDS:-10}
mkdir -p "$out"
for agg in $aggs; do
  case $agg in
    fedavg) aargs="--aggregator fedavg" ;;
    median) aargs="--aggregator median" ;;
    trimmed) aargs="--aggregator trimmed_mean --trim-fraction 0.3" ;;
    krum) aargs="--aggregator krum --byzantine 6" ;;
    multikrum) aargs="--aggregator multi_krum --byzantine 6 --krum-select 10" ;;
    *) echo "unknown aggregator $agg"; continue ;;
  esac
  for at in $ATTACKS; do
    kind=${at%%:*} frac=${at##*:}
    run="$agg-$kind-$frac"
    bargs="--bad-devices $frac"
    [ "$kind" != none ] && bargs="$bargs --bad-kinds $kind"
    mkdir -p "$out/$run"
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$bin/fl-sim" --devices 20 --participants 20 --min-participants 20 --over-selection 1 \
      --samples-per-device 300 --model 2nn --rounds "$ROUNDS" --epochs 1 --batch 10 --lr 0.05 \
      --clip-norm 10 --deadline 120 --partition iid --seed 1 $aargs $bargs \
      --coordinator-bin "$bin/../server/fl-coordinator" --out "$out/$run" > "$out/$run/log.txt" 2>&1
    rc=$?
    end=$(date +%s)
    last=$(awk -F, 'NR > 1 && $2 != "nan" { a = $2; r = $1 } END { printf "%.4f (round %d)", a, r }' \
      "$out/$run/rounds.csv" 2>/dev/null)
    echo "$agg $kind $frac exit $rc wall $((end - start)) s final $last" | tee -a "$out/summary.txt"
  done
done
