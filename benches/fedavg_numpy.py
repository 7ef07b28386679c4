#!/usr/bin/python3
"""In-process FedAvg in numpy: the learning work of an fl-sim run, without network, signatures
or database (issue 14's yardstick for benches/numpy_ratio.sh).

It reads what `fl-sim --export-learning DIR` wrote (sim/export.h): the initial weights, the
split of the Fashion-MNIST training set over the devices and the training settings, and runs
the same rounds: every device trains a copy of the global model with minibatch SGD (E epochs,
batch B, learning rate lr, mean softmax cross-entropy, a fresh shuffle per epoch), its delta is
clipped to the L2 bound as libflclient does, and the deltas are averaged weighted by the
devices' example counts. Only the shuffles differ from fl-sim's (numpy's generator, not
libflclient's), so accuracies agree closely, not to the bit.

Prints one JSON object: per round wall and CPU seconds (time.process_time: this process only)
and test accuracy/loss after it.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np


def read_learning(d):
    meta = {}
    with open(os.path.join(d, "learning.txt")) as f:
        for line in f:
            k, _, v = line.strip().partition(" ")
            meta[k] = v
    dims = [int(x) for x in meta["dims"].split(",")]
    params = np.fromfile(os.path.join(d, "params.f32"), dtype="<f4")
    if params.size != int(meta["n_params"]):
        sys.exit("fedavg_numpy: params.f32 holds %d floats, learning.txt says %s" %
                 (params.size, meta["n_params"]))
    split = np.fromfile(os.path.join(d, "split.u32"), dtype="<u4")
    n_dev = int(split[0])
    offsets = split[1:n_dev + 2].astype(np.int64)
    index = split[n_dev + 2:].astype(np.int64)
    if index.size != offsets[-1]:
        sys.exit("fedavg_numpy: split.u32 is truncated")
    return meta, dims, params, offsets, index


def unflatten(flat, dims):
    """fl-sim's layout: per dense layer W [out, in] then b [out]."""
    layers, off = [], 0
    for i in range(len(dims) - 1):
        n_in, n_out = dims[i], dims[i + 1]
        w = flat[off:off + n_out * n_in].reshape(n_out, n_in)
        off += n_out * n_in
        b = flat[off:off + n_out]
        off += n_out
        layers.append((w, b))
    if off != flat.size:
        sys.exit("fedavg_numpy: dims %s do not give %d parameters" % (dims, flat.size))
    return layers


def load_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fmnist(data_dir, part):
    x = load_idx(os.path.join(data_dir, "%s-images-idx3-ubyte.gz" % part))
    y = load_idx(os.path.join(data_dir, "%s-labels-idx1-ubyte.gz" % part))
    return (x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255.0),
            y.astype(np.int64))


def local_sgd(flat, dims, x, y, epochs, batch, lr, rng):
    """Trains a copy of flat on (x, y); returns the trained flat vector."""
    w = flat.copy()
    layers = unflatten(w, dims)  # views into w: updated in place
    n = x.shape[0]
    lr = np.float32(lr)
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            a = [x[idx]]
            for i, (wi, bi) in enumerate(layers):
                z = a[-1] @ wi.T + bi
                if i + 1 < len(layers):
                    np.maximum(z, 0, out=z)
                a.append(z)
            z = a[-1]
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(idx.size), y[idx]] -= 1
            dz = p / np.float32(idx.size)
            for i in range(len(layers) - 1, -1, -1):
                wi, bi = layers[i]
                dw = dz.T @ a[i]
                db = dz.sum(axis=0)
                if i > 0:
                    dz = dz @ wi
                    dz *= a[i] > 0
                wi -= lr * dw
                bi -= lr * db
    return w


def evaluate(flat, dims, x, y):
    layers = unflatten(flat, dims)
    a = x
    for i, (w, b) in enumerate(layers):
        a = a @ w.T + b
        if i + 1 < len(layers):
            np.maximum(a, 0, out=a)
    a = a - a.max(axis=1, keepdims=True)
    logp = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
    loss = float(-logp[np.arange(y.size), y].mean())
    acc = float((a.argmax(axis=1) == y).mean())
    return acc, loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learning", required=True, help="fl-sim --export-learning directory")
    ap.add_argument("--rounds", type=int, default=0, help="rounds (0: fl-sim's)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the shuffles")
    args = ap.parse_args()
    meta, dims, flat, offsets, index = read_learning(args.learning)
    if meta["dataset"] != "fmnist":
        sys.exit("fedavg_numpy: only fmnist")
    xtr, ytr = load_fmnist(meta["data_dir"], "train")
    xte, yte = load_fmnist(meta["data_dir"], "t10k")
    epochs, batch = int(meta["epochs"]), int(meta["batch"])
    lr, clip = float(meta["lr"]), float(meta["clip_norm"])
    server_lr = np.float32(float(meta["server_lr"]))
    rounds = args.rounds or int(meta["rounds"])
    n_dev = offsets.size - 1
    # Each device's examples gathered once, as fl-sim's devices hold theirs.
    dev = [(xtr[index[offsets[k]:offsets[k + 1]]], ytr[index[offsets[k]:offsets[k + 1]]])
           for k in range(n_dev)]
    rng = np.random.default_rng(args.seed)
    acc0, loss0 = evaluate(flat, dims, xte, yte)
    out = {"devices": n_dev, "dims": dims, "initial_accuracy": acc0, "initial_loss": loss0,
           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", ""), "rounds": []}
    for r in range(1, rounds + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        total = np.zeros_like(flat, dtype=np.float64)
        weight = 0
        for x, y in dev:
            delta = local_sgd(flat, dims, x, y, epochs, batch, lr, rng) - flat
            norm = float(np.linalg.norm(delta))
            if clip > 0 and norm > clip:
                delta *= np.float32(clip / norm)
            total += x.shape[0] * delta.astype(np.float64)
            weight += x.shape[0]
        flat = (flat + server_lr * (total / weight).astype(np.float32)).astype(np.float32)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        acc, loss = evaluate(flat, dims, xte, yte)
        out["rounds"].append({"round": r, "seconds": wall, "cpu_seconds": cpu,
                              "accuracy": acc, "loss": loss})
        print("numpy round %d: %.2f s (%.2f CPU-s), accuracy %.4f loss %.4f" %
              (r, wall, cpu, acc, loss), file=sys.stderr)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
