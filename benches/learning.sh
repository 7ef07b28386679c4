#!/bin/bash
# Learning-quality runs of benches/RESULTS.md ("Learning quality"), one seed each.
# Usage: learning.sh BIN_DIR OUT_DIR [RUN...]  (default: logreg mlp fedavg-2nn fedsgd-2nn)
#  BIN_DIR holds fl-sim (e.g. build-bench/sim); OUT_DIR is benches/logs/learning for the
#  recorded runs: OUT_DIR/RUN/{log.txt,rounds.csv,accuracy.svg} and OUT_DIR/summary.txt
#  (benches/logs/ is not in git).
#  logreg, mlp: FedAvg on IID Fashion-MNIST, all 60,000 training examples over 10 devices (6,000
#    each), all participating, E=1, B=10, no clipping (lr: logreg 0.05, the best of 0.005, 0.01,
#    0.05 over 30 rounds; mlp 0.05); against Xiao et al. 2017's centralized
#    84.2% (logistic regression) and 87.1% (MLP 784-100-10).
#  fedavg-2nn, fedsgd-2nn: McMahan et al. 2017 on Fashion-MNIST: the 2NN, 100 devices x 600
#    IID examples, all participating; FedAvg E=1 B=10 lr 0.05 against FedSGD E=1 B=600 (the
#    device's whole data) lr 0.2 (FedSGD's larger rate: one step per round).
set -u
bin=$1 out=$2
shift 2
runs=${*:-logreg mlp fedavg-2nn fedsgd-2nn}
for run in $runs; do
  case $run in
    logreg) args="--devices 10 --samples-per-device 0 --model logreg --rounds 30 --epochs 1 --batch 10 --lr 0.05" ;;
    mlp) args="--devices 10 --samples-per-device 0 --model mlp --rounds 30 --epochs 1 --batch 10 --lr 0.05" ;;
    fedavg-2nn) args="--devices 100 --samples-per-device 600 --model 2nn --rounds 50 --epochs 1 --batch 10 --lr 0.05" ;;
    fedsgd-2nn) args="--devices 100 --samples-per-device 600 --model 2nn --rounds 400 --epochs 1 --batch 600 --lr 0.2" ;;
    *) echo "unknown run $run"; continue ;;
  esac
  mkdir -p "$out/$run"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$bin/fl-sim" $args --partition iid --clip-norm 0 --deadline 600 --seed 1 --out "$out/$run" \
    > "$out/$run/log.txt" 2>&1
  rc=$?
  end=$(date +%s)
  best=$(awk -F, 'NR > 1 && $2 > b { b = $2; r = $1 } END { printf "%.4f (round %d)", b, r }' \
    "$out/$run/rounds.csv")
  first80=$(awk -F, 'NR > 1 && $2 >= 0.80 { print $1; exit }' "$out/$run/rounds.csv")
  first85=$(awk -F, 'NR > 1 && $2 >= 0.85 { print $1; exit }' "$out/$run/rounds.csv")
  echo "$run exit $rc wall $((end - start)) s best $best first>=80% round ${first80:--} first>=85% round ${first85:--}" |
    tee -a "$out/summary.txt"
done
