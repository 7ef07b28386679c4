#!/usr/bin/env bash
# Runs the benchmarks whose figures are in benches/RESULTS.md and prints their tables.
#
#   bash benches/run.sh [aggregate] [ingest] [client] [scaling] [fleet]   (default: all but fleet)
#
# Builds a Release tree in $BUILD (default build-bench), then:
#   aggregate  bench_aggregate: fold vs memory bandwidth vs Flower's numpy algorithm, N=1000 x
#              P=100k and P=1M; decode cost per encoding
#   ingest     bench_ingest against a real fl-coordinator and a throwaway PostgreSQL
#              (pg_virtualenv -t): 100k-parameter float32 and int8 updates
#   client     bench_client: libflclient size, peak RSS of a round, bytes per update, epoch time
#   scaling    aggregation time over N and P; ingest throughput over devices and parameters
#   profile    where ingest time goes: the coordinator's CPU per update by step, a perf profile
#              of the coordinator and PostgreSQL during the timed part, pg_stat_statements
#   compare    before/after the optimisations: the coordinator and bench_aggregate built at
#              $BASE_REV (default 939019e, the first measurement) against this tree, alternated
#   fleet      fl-sim, 1000 devices x 3 rounds (the Fleet section; about 2 minutes)
# Each bench takes well under a few minutes; all of them together about 5 (fleet: +2).
# Set OPENBLAS_* as for the rest of the project: bench_aggregate unsets OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE for the numpy command alone.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
K=${K:-16}                 # concurrent connections of the ingest load generator
DEVICES=${DEVICES:-2000}   # devices (= updates per round) for ingest
ROUNDS=${ROUNDS:-2}

SECTIONS=("$@")
if [ ${#SECTIONS[@]} -eq 0 ]; then
  SECTIONS=(aggregate ingest client scaling)
fi
has() {
  local s
  for s in "${SECTIONS[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

# The complete output also goes to benches/logs/run-<UTC time>.txt (not in git, see .gitignore):
# the logs benches/RESULTS.md quotes from are made this way.
LOGS=${LOGS:-$ROOT/benches/logs}
mkdir -p "$LOGS"
LOG=$LOGS/run-$(date -u '+%Y-%m-%dT%H%MZ').txt
exec > >(tee "$LOG") 2>&1
echo "# log: $LOG"
echo "# fleetlearn benchmarks, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)"
echo "# $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
     "$(free -g | awk '/Mem:/ {print $2}') GB RAM; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-}"

set -e
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFL_BUILD_TESTS=OFF >/dev/null
TARGETS=(fl-coordinator flclient bench_aggregate bench_ingest bench_client)
has fleet && TARGETS+=(fl-sim)
cmake --build "$BUILD" -j"$(nproc)" --target "${TARGETS[@]}" >/dev/null
set +e
B=$BUILD/benches
run() { # prints the exact command, then runs it
  echo; echo "\$ $*"
  "$@"
}

if has aggregate; then
  run "$B/bench_aggregate" -n 1000 -p 100000 -r 9
  run "$B/bench_aggregate" -n 1000 -p 1000000 -r 5 --no-decode
fi

if has client; then
  run "$B/bench_client"
fi

ingest() { # one bench_ingest under its own throwaway PostgreSQL cluster (one retry)
  echo; echo "\$ pg_virtualenv -t $B/bench_ingest $*"
  local try
  for try in 1 2; do
    pg_virtualenv -t "$B/bench_ingest" "$@" 2> >(grep -v '^20..-' >&2) | grep -v '^20..-' &&
      return 0
    echo "(bench_ingest failed, attempt $try)"
  done
  return 1
}

if has ingest; then
  ingest -d "$DEVICES" -k "$K" -r "$ROUNDS" -e float32
  ingest -d "$DEVICES" -k "$K" -r "$ROUNDS" -e int8
fi

if has scaling; then
  echo; echo "## scaling: aggregation time over N and P"
  echo "(\$ $B/bench_aggregate -n N -p P -r 5 --no-flower --no-decode; the fold row: wall ms (CPU ms))"
  for p in 100000 1000000; do
    for n in 250 500 1000 2000; do
      "$B/bench_aggregate" -n "$n" -p "$p" -r 5 --no-flower --no-decode |
        awk -v n="$n" -v p="$p" -F'|' '/fold \(fl__tensor_fold/ {print "N=" n " P=" p ":" $3}'
    done
  done
  echo; echo "## scaling: ingest over devices (P=100k float32, 1 round) and parameters (1000 devices)"
  for d in 500 1000 2000 4000; do
    ingest -d "$d" -k "$K" -r 1 -e float32 | grep -E '^\$ |^## ingest|accepted updates/s|latency|CPU per'
  done
  for p in 25000 50000 200000 400000; do
    ingest -d 1000 -k "$K" -r 1 -e float32 -p "$p" | grep -E '^\$ |^## ingest|accepted updates/s|latency|CPU per'
  done
fi

if has profile; then
  PERF=$(mktemp)
  run env FL_BENCH_PERF="$PERF" FL_BENCH_PGSS=1 pg_virtualenv -t \
    -o shared_preload_libraries=pg_stat_statements -o pg_stat_statements.track_planning=on \
    "$B/bench_ingest" -d "$DEVICES" -k "$K" -r "$ROUNDS" 2>&1 | grep -v '^20..-'
  echo; echo "\$ perf report --sort pid,dso -g none (first timed round), summed by process kind and library"
  perf report -i "$PERF" --no-children --sort pid,dso --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' |
    awk '{k = ($2 ~ /postgres/ ? "PostgreSQL" : "coordinator"); a[k "  " $3] += $1}
         END {for (x in a) printf "%6.2f%%  %s\n", a[x], x}' | sort -rn | head -14
  echo; echo "\$ perf report --sort dso,sym -g none | head -25"
  perf report -i "$PERF" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -25
  rm -f "$PERF"
fi

if has compare; then
  BASE_REV=${BASE_REV:-939019e}
  SRC=$(mktemp -d)
  git -C "$ROOT" archive "$BASE_REV" | tar -x -C "$SRC"
  cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DFL_BUILD_TESTS=OFF >/dev/null
  cmake --build "$SRC/build" -j"$(nproc)" --target fl-coordinator bench_aggregate >/dev/null
  echo; echo "## compare: decode cost per encoding at $BASE_REV, then now"
  run "$SRC/build/benches/bench_aggregate" --decode-only -r 5 | grep -E '^\$|^\|'
  run "$B/bench_aggregate" --decode-only -r 5 | grep -E '^\$|^\|'
  for i in 1 2; do
    for c in "$SRC/build/server/fl-coordinator" "$BUILD/server/fl-coordinator"; do
      ingest -d "$DEVICES" -k "$K" -r "$ROUNDS" --coordinator "$c" |
        grep -E '^\$ |^## ingest|accepted updates/s|latency|CPU'
    done
  done
  rm -rf "$SRC"
fi

if has fleet; then
  SIM=$BUILD/sim/fl-sim
  OUT=$(mktemp -d)
  echo; echo "\$ $SIM --devices 1000 --rounds 3 --model 2nn --samples-per-device 60 --epochs 1 --batch 10 --out $OUT"
  "$SIM" --devices 1000 --rounds 3 --model 2nn --samples-per-device 60 --epochs 1 --batch 10 \
    --out "$OUT"
  rm -rf "$OUT"
fi
