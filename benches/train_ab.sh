#!/bin/bash
# The learning work before and after a change to the kernels, side by side in one run:
# benches/bench_train.c compiled twice, against common/'s model, layer and tensor sources of
# git revision BASE and of the work tree, with the same flags (-O3, OpenBLAS, one thread), then
# run alternately ROUNDS times (the machine is shared: alternation spreads its noise over both).
# First compares the two builds' gradients of the first batch, then prints each run's
# lines tagged base/new. Usage: train_ab.sh BASE [ROUNDS (3)] [REPS (7)]
set -eu
base=$1 rounds=${2:-3} reps=${3:-7}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d /tmp/train-ab.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
srcs="model.c layers.c tensor.c mem.c rng.c err.c gemm_portable.c"
build() { # $1 = directory holding common/
  (cd "$1/common" && gcc -std=c11 -O3 -DNDEBUG -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DFL_HAVE_BLAS=1 -I. -Iinclude \
    $(pkg-config --cflags openblas libprotobuf-c openssl) \
    -o "$1/bench_train" "$root/benches/bench_train.c" $srcs \
    $(pkg-config --libs openblas libprotobuf-c openssl) -lm)
}
mkdir -p "$tmp/base" "$tmp/new"
git -C "$root" archive "$base" common | tar -x -C "$tmp/base"
cp -r "$root/common" "$tmp/new/"
build "$tmp/base"
build "$tmp/new"
# Same arithmetic? The first batch's gradient at the initial weights, element by element.
for v in base new; do
  mkdir -p "$tmp/$v/grad"
  FL_BENCH_GRAD_DIR="$tmp/$v/grad" "$tmp/$v/bench_train" all 1 > /dev/null
done
for m in cnn 2nn; do
  python3 - "$tmp/base/grad/$m.grad" "$tmp/new/grad/$m.grad" "$m" << 'PY'
import array, math, sys
a, b = (array.array("f", open(f, "rb").read()) for f in sys.argv[1:3])
d = [abs(x - y) for x, y in zip(a, b)]
amax = max(abs(x) for x in a)
rel = math.sqrt(sum(t * t for t in d)) / math.sqrt(sum(x * x for x in a))
print(f"{sys.argv[3]} first-batch gradient, {len(a)} parameters: "
      f"{sum(t != 0 for t in d)} differ, max |diff| {max(d):.3g} "
      f"({max(d) / amax:.3g} of max |grad|), relative L2 {rel:.3g}")
PY
done
echo "base $(git -C "$root" rev-parse --short "$base"), new: work tree; $(uptime)"
for r in $(seq 1 "$rounds"); do
  for v in base new; do
    "$tmp/$v/bench_train" all "$reps" | sed "s/^/$v  /"
  done
done
echo "$(uptime)"
