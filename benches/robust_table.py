#!/usr/bin/python3
"""Markdown table of benches/robust.sh's runs (benches/RESULTS.md, "Robust aggregators under
in-bound attacks").

Usage: robust_table.py OUT_DIR VARIANT [ROUNDS]
Reads OUT_DIR/VARIANT-AGG-KIND-FRACTION-sSEED/rounds.csv and prints one row per attack and
fraction, one column per aggregator: the test accuracy after round ROUNDS (default: the last
round of the longest run), the mean over the seeds that reached it, with +- half the range
over seeds when there are several; the seeds column says how many. A run that has not reached
ROUNDS is left out (a cell no run reached is "-").
"""
import csv
import os
import re
import sys

AGGS = ["fedavg", "median", "trimmed", "krum", "multikrum", "bulyan"]
TITLES = {"fedavg": "FedAvg", "median": "median", "trimmed": "trimmed mean",
          "krum": "Krum", "multikrum": "Multi-Krum", "bulyan": "Bulyan"}
KINDS = ["none", "signflip", "scaled", "lie", "labelflip", "noise"]


def main():
    out, variant = sys.argv[1], sys.argv[2]
    want = int(sys.argv[3]) if len(sys.argv) > 3 else None
    pat = re.compile(rf"^{re.escape(variant)}-([a-z]+)-([a-z]+)-([0-9.]+)-s(\d+)$")
    acc = {}  # (kind, frac) -> agg -> {seed: accuracy by round}
    for name in sorted(os.listdir(out)):
        m = pat.match(name)
        path = os.path.join(out, name, "rounds.csv")
        if m is None or not os.path.exists(path):
            continue
        agg, kind, frac, seed = m.group(1), m.group(2), m.group(3), int(m.group(4))
        with open(path) as f:
            rounds = {int(r["round"]): float(r["test_accuracy"]) for r in csv.DictReader(f)}
        acc.setdefault((kind, frac), {}).setdefault(agg, {})[seed] = rounds
    if want is None:
        want = max(max(r) for by_agg in acc.values() for s in by_agg.values()
                   for r in s.values() if r)
    aggs = [a for a in AGGS if any(a in by_agg for by_agg in acc.values())]
    print("| attack | seeds | " + " | ".join(TITLES[a] for a in aggs) + " |")
    print("|---|---:|" + "---:|" * len(aggs))
    for kind, frac in sorted(acc, key=lambda k: (KINDS.index(k[0]), float(k[1]))):
        cells, seeds = [], set()
        for a in aggs:
            vals = [r[want] for r in acc[(kind, frac)].get(a, {}).values() if want in r]
            seeds.update(s for s, r in acc[(kind, frac)].get(a, {}).items() if want in r)
            if not vals:
                cells.append("-")
                continue
            mean = 100 * sum(vals) / len(vals)
            cell = f"{mean:.2f}%"
            if len(vals) > 1:
                cell += f" ±{50 * (max(vals) - min(vals)):.2f}"
            cells.append(f"**{cell}**" if mean < 50 else cell)
        label = "none" if kind == "none" else f"{kind} {round(100 * float(frac))}%"
        print(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
