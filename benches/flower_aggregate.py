#!/usr/bin/python3
"""Flower's FedAvg aggregation in numpy, timed on the data bench_aggregate writes.

The algorithm is flwr/server/strategy/aggregate.py `aggregate` (Flower 1.x), verbatim:
multiply every layer of every result by its sample count, reduce each layer with np.add,
divide by the total sample count.

    flower_aggregate.py DATA_FILE [REPS]

DATA_FILE layout (little-endian): u64 magic, u64 N, u64 P, u64 POOL; int64 sample counts[N];
float32 pool[POOL][P]; float32 the coordinator's result[P]. Update i is pool[i % POOL], as in
bench_aggregate. Prints best_seconds=<best of REPS, wall>, best_cpu_seconds=<best of REPS, process CPU> and max_abs_diff=<|ours - Flower's|max>.
"""
import sys
import time
from functools import reduce

import numpy as np

MAGIC = 0x464C4147475231


def aggregate(results):
    """Compute weighted average (Flower's implementation)."""
    # Calculate the total number of examples used during training
    num_examples_total = sum(num_examples for (_, num_examples) in results)

    # Create a list of weights, each multiplied by the related number of examples
    weighted_weights = [
        [layer * num_examples for layer in weights] for weights, num_examples in results
    ]

    # Compute average weights of each layer
    weights_prime = [
        reduce(np.add, layer_updates) / num_examples_total
        for layer_updates in zip(*weighted_weights)
    ]
    return weights_prime


def main():
    path = sys.argv[1]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with open(path, "rb") as f:
        magic, n, p, pool_n = np.fromfile(f, dtype="<u8", count=4)
        if magic != MAGIC:
            sys.exit("not a bench_aggregate data file")
        n, p, pool_n = int(n), int(p), int(pool_n)
        counts = np.fromfile(f, dtype="<i8", count=n)
        pool = np.fromfile(f, dtype="<f4", count=pool_n * p).reshape(pool_n, p)
        ours = np.fromfile(f, dtype="<f4", count=p)
    # Flower's results: (list of layer arrays, num_examples) per client; one layer here.
    results = [([pool[i % pool_n]], int(counts[i])) for i in range(n)]
    best = best_cpu = float("inf")
    out = None
    for _ in range(reps):
        out = None  # free the previous result first, as a fresh process would not hold it
        t0, c0 = time.perf_counter(), time.process_time()
        out = aggregate(results)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    # numpy 1.24 (Debian 12) returns float64 from the final division by a Python int; the
    # products and the np.add reduction are float32, as in Flower.
    print(f"best_seconds={best:.6f}")
    print(f"best_cpu_seconds={best_cpu:.6f}")
    print(f"result_dtype={out[0].dtype}")
    print(f"max_abs_diff={float(np.max(np.abs(out[0] - ours))):.3e}")
    print(f"updates_per_second={n / best:.1f}")


if __name__ == "__main__":
    main()
