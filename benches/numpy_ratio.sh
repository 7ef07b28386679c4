#!/usr/bin/env bash
# Issue 14's yardstick: README's quick-start round (deploy/quickstart.sh: 1000 devices, 2NN, 60
# Fashion-MNIST examples each, E=1, B=10, lr 0.05, float32, a real coordinator and a throwaway
# PostgreSQL) and an in-process numpy FedAvg of exactly the same learning work
# (benches/fedavg_numpy.py: the initial weights, data split and settings fl-sim exported with
# --export-learning), back to back, with one BLAS thread on both sides.
#   bash benches/numpy_ratio.sh                # quick start's 5 rounds
#   bash benches/numpy_ratio.sh --rounds 3     # options go to fl-sim (and so to numpy)
# Output: the table below; logs in $OUT (benches/logs/numpy-ratio).
# Round time: the median of rounds 2 and later (round 1 downloads the first model). CPU per
# device round: fl-sim's own threads (getrusage; not the coordinator's or PostgreSQL's), of
# which fl_client_train (per-thread clock: SGD, encoding, hashing, signing the update); numpy's
# process CPU time (the whole learning work, aggregation included) divided by the devices.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benches/logs/numpy-ratio}
rm -rf "$OUT"
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1

echo "fleetlearn: deploy/quickstart.sh $* (log $OUT/fl-sim.log)"
bash deploy/quickstart.sh --out "$OUT/fl-sim" --export-learning "$OUT/learning" "$@" \
  >"$OUT/fl-sim.log" 2>&1 || { tail -20 "$OUT/fl-sim.log"; exit 1; }
echo "numpy: benches/fedavg_numpy.py (log $OUT/numpy.log)"
/usr/bin/python3 benches/fedavg_numpy.py --learning "$OUT/learning" >"$OUT/numpy.json" \
  2>"$OUT/numpy.log" || { cat "$OUT/numpy.log"; exit 1; }

/usr/bin/python3 - "$OUT" <<'PY'
import csv, json, re, statistics, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(out + "/fl-sim/rounds.csv")))
cpu = [tuple(map(float, m)) for m in re.findall(
    r"fl-sim CPU: ([\d.]+) ms per device round .*?training ([\d.]+) ms",
    open(out + "/fl-sim.log").read())]
rss = re.findall(r"peak RSS (\d+) KB", open(out + "/fl-sim.log").read())
npy = json.load(open(out + "/numpy.json"))
later = lambda xs: statistics.median(xs[1:] if len(xs) > 1 else xs)
fl_t = later([float(r["seconds"]) for r in rows])
np_t = later([r["seconds"] for r in npy["rounds"]])
fl_cpu, fl_train = later([c[0] for c in cpu]), later([c[1] for c in cpu])
np_cpu = later([r["cpu_seconds"] for r in npy["rounds"]]) * 1e3 / npy["devices"]
R = len(rows)
print()
print("%d devices, %d rounds, dims %s; medians of rounds 2-%d" % (npy["devices"], R, npy["dims"], R))
print("| | round time | CPU per device round | of which the learning work | accuracy after round %d | loss |" % R)
print("|---|---|---|---|---|---|")
print("| fleetlearn (fl-sim, coordinator, PostgreSQL) | %.2f s | %.2f ms (fl-sim) | %.2f ms (fl_client_train) | %.4f | %.4f |"
      % (fl_t, fl_cpu, fl_train, float(rows[-1]["test_accuracy"]), float(rows[-1]["test_loss"])))
print("| numpy FedAvg, in process | %.2f s | %.2f ms | %.2f ms | %.4f | %.4f |"
      % (np_t, np_cpu, np_cpu, npy["rounds"][-1]["accuracy"], npy["rounds"][-1]["loss"]))
print()
print("ratio fleetlearn / numpy round time: %.2f" % (fl_t / np_t))
print("accuracy per round: fleetlearn %s" % ", ".join(r["test_accuracy"][:6] for r in rows))
print("                    numpy      %s" % ", ".join("%.4f" % r["accuracy"] for r in npy["rounds"]))
print("round times: fleetlearn %s s; numpy %s s" % (", ".join(r["seconds"] for r in rows),
      ", ".join("%.2f" % r["seconds"] for r in npy["rounds"])))
print("fl-sim peak RSS %s KB" % (rss[-1] if rss else "?"))
PY
