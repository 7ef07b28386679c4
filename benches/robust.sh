#!/bin/bash
# Robustness table of benches/RESULTS.md ("Robust aggregators under in-bound attacks").
# Usage: robust.sh BIN_DIR OUT_DIR [AGGREGATOR...]
#   AGGREGATOR: fedavg median trimmed krum multikrum bulyan (default: all six)
#  BIN_DIR holds fl-sim and fl-coordinator's directory is BIN_DIR/../server; OUT_DIR gets
#  OUT_DIR/VARIANT-AGG-KIND-FRACTION-sSEED/{log.txt,rounds.csv} and OUT_DIR/summary.txt
#  (benches/logs/ is not in git). A run whose rounds.csv has all its rounds is not run again,
#  so an interrupted matrix resumes where it stopped.
# Environment:
#  VARIANT  2nn (default): Fashion-MNIST 2NN, DEVICES (30) x 300 IID examples, all
#           participating every round, E=1 B=10 lr 0.05, clip_norm 10, ROUNDS (10).
#           cnn: NIID-Bench's simple CNN on Dir(0.5) over all 60,000 images, 10 parties, E=10
#           B=64 lr 0.01 momentum 0.9 weight decay 1e-5, no update clipping (benches/niid.sh),
#           ROUNDS (default 5 here, NIID-Bench runs 50).
#  SEEDS    seeds to run, blank-separated ("1"); the seed draws data, partition and attackers.
#  ATTACKS  "KIND:FRACTION ..." (default none:0 and each in-bound attack at 0.1 0.2 0.3).
# Aggregator parameters follow the fleet size n: trimmed_mean trims 30% per side; krum and
# multi_krum assume f = floor(0.3 n) (multi_krum averages m = n - f); bulyan needs n >= 4f + 3,
# so it assumes the largest f <= floor(0.3 n) that allows (6 of 30: fewer than 9 attackers).
set -u
bin=$1 out=$2
shift 2
aggs=${*:-fedavg median trimmed krum multikrum bulyan}
VARIANT=${VARIANT:-2nn}
SEEDS=${SEEDS:-1}
kinds="signflip scaled lie labelflip noise"
default_attacks="none:0"
for k in $kinds; do
  for p in 0.1 0.2 0.3; do default_attacks="$default_attacks $k:$p"; done
done
ATTACKS=${ATTACKS:-$default_attacks}
case $VARIANT in
  2nn)
    n=${DEVICES:-30}
    ROUNDS=${ROUNDS:-10}
    vargs="--devices $n --participants $n --min-participants $n --samples-per-device 300
      --model 2nn --epochs 1 --batch 10 --lr 0.05 --clip-norm 10 --deadline 120 --partition iid"
    ;;
  cnn)
    n=10
    ROUNDS=${ROUNDS:-5}
    vargs="--devices $n --participants $n --min-participants $n --samples-per-device 0
      --partition dirichlet:0.5 --model cnn --epochs 10 --batch 64 --lr 0.01 --momentum 0.9
      --weight-decay 1e-5 --clip-norm 0 --deadline 7200"
    ;;
  *)
    echo "unknown VARIANT $VARIANT" >&2
    exit 2
    ;;
esac
f=$((n * 3 / 10))
fb=$(((n - 3) / 4))
[ $fb -gt $f ] && fb=$f
mkdir -p "$out"
for seed in $SEEDS; do
  for agg in $aggs; do
    case $agg in
      fedavg) aargs="--aggregator fedavg" ;;
      median) aargs="--aggregator median" ;;
      trimmed) aargs="--aggregator trimmed_mean --trim-fraction 0.3" ;;
      krum) aargs="--aggregator krum --byzantine $f" ;;
      multikrum) aargs="--aggregator multi_krum --byzantine $f --krum-select $((n - f))" ;;
      bulyan) aargs="--aggregator bulyan --byzantine $fb" ;;
      *)
        echo "unknown aggregator $agg" >&2
        continue
        ;;
    esac
    for at in $ATTACKS; do
      kind=${at%%:*} frac=${at##*:}
      run="$VARIANT-$agg-$kind-$frac-s$seed"
      if [ -f "$out/$run/rounds.csv" ] &&
        [ "$(awk -F, 'NR > 1 { r = $1 } END { print r + 0 }' "$out/$run/rounds.csv")" -ge "$ROUNDS" ]; then
        continue
      fi
      bargs="--bad-devices $frac"
      [ "$kind" != none ] && bargs="$bargs --bad-kinds $kind"
      mkdir -p "$out/$run"
      start=$(date +%s)
      # shellcheck disable=SC2086
      "$bin/fl-sim" $vargs --over-selection 1 --rounds "$ROUNDS" --seed "$seed" $aargs $bargs \
        --coordinator-bin "$bin/../server/fl-coordinator" --out "$out/$run" \
        > "$out/$run/log.txt" 2>&1
      rc=$?
      end=$(date +%s)
      last=$(awk -F, 'NR > 1 && $2 != "nan" { a = $2; r = $1 } END { printf "%.4f (round %d)", a, r }' \
        "$out/$run/rounds.csv" 2>/dev/null)
      echo "$VARIANT seed $seed $agg $kind $frac exit $rc wall $((end - start)) s final $last" |
        tee -a "$out/summary.txt"
    done
  done
done
