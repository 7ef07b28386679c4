#!/bin/bash
# NIID-Bench FMNIST (ARCHITECTURE.md s.6) through fl-sim: simple CNN, 10 parties all
# participating, 50 rounds, 10 local epochs, batch 64, SGD lr 0.01 momentum 0.9 weight decay
# 1e-5, FedProx mu 0.01, no update clipping. Usage: niid.sh BIN_DIR OUT_DIR [CONFIG...]
# CONFIG is one of fedavg-iid fedavg-dir fedprox-iid fedprox-dir (default: these four), or
# fedavg-c1 fedavg-c2 fedavg-c3 (fedprox-cK): NIID-Bench's #C=K, `--partition labels:K`.
# FL_NIID_SEED (1) is fl-sim's --seed (data, partitions, faults); a seed other than 1
# writes to CONFIG-sSEED. BIN_DIR holds fl-sim (e.g. build-bench/sim); OUT_DIR is
# benches/logs/niid for the recorded runs: OUT_DIR/RUN/{log.txt,rounds.csv} and
# OUT_DIR/summary.txt (benches/logs/ is not in git).
set -u
bin=$1 out=$2
shift 2
configs=${*:-fedavg-dir fedavg-iid fedprox-dir fedprox-iid}
seed=${FL_NIID_SEED:-1}
for cfg in $configs; do
  case $cfg in
    *-iid) part=iid ;;
    *-dir) part=dirichlet:0.5 ;;
    *-c[1-9]) part=labels:${cfg##*-c} ;;
    *)
      echo "niid.sh: unknown config $cfg" >&2
      exit 2
      ;;
  esac
  run=$cfg
  [ "$seed" = 1 ] || run=$cfg-s$seed
  case $cfg in
    fedprox-*) mu=0.01 ;;
    *) mu=0 ;;
  esac
  mkdir -p "$out/$run"
  start=$(date +%s)
  "$bin/fl-sim" --devices 10 --samples-per-device 0 --partition $part --model cnn \
    --rounds 50 --epochs 10 --batch 64 --lr 0.01 --momentum 0.9 --weight-decay 1e-5 \
    --prox-mu $mu --clip-norm 0 --deadline 7200 --seed "$seed" --out "$out/$run" \
    > "$out/$run/log.txt" 2>&1
  rc=$?
  end=$(date +%s)
  best=$(awk -F, 'NR > 1 && $2 > b { b = $2; r = $1 } END { printf "%.4f (round %d)", b, r }' \
    "$out/$run/rounds.csv")
  echo "$run exit $rc wall $((end - start)) s best test accuracy $best" | tee -a "$out/summary.txt"
done
