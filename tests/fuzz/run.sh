#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, clang, ASan + UBSan) in a tree of their own and
# runs each for a bounded time from the committed seed corpus (tests/fuzz/corpus/<harness>/,
# copied so that the repository's corpus stays small), after replaying the inputs of defects
# found before (tests/fuzz/regress/<harness>/). Any crash, leak, timeout or memory
# limit hit fails the run; the reproducer is left in the build tree (crash-*, leak-*, oom-*).
#
#   bash tests/fuzz/run.sh                 # every harness, FL_FUZZ_SECONDS (60) each
#   bash tests/fuzz/run.sh fuzz_codec ...  # only these
#   bash tests/fuzz/run.sh --seeds         # rewrite tests/fuzz/corpus from fl-fuzz-seeds
#
# FL_FUZZ_BUILD_DIR (build-fuzz), FL_FUZZ_SECONDS, FL_JOBS. The memory limits are what make
# the memory blow-up class visible: a decoder that allocates far beyond its input's size
# (malloc_limit, one allocation) or keeps it (rss_limit) is a failure like a crash.
set -euo pipefail
cd "$(dirname "$0")/../.."

BUILD=${FL_FUZZ_BUILD_DIR:-build-fuzz}
SECONDS_EACH=${FL_FUZZ_SECONDS:-60}
JOBS=${FL_JOBS:-$(nproc)}
ALL=(fuzz_envelope fuzz_codec fuzz_model fuzz_client fuzz_idx fuzz_csv)

CC=${FL_FUZZ_CC:-clang} cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFL_SANITIZE=ON -DFL_FUZZ=ON -DFL_BUILD_TESTS=OFF -DFL_BUILD_BENCHES=OFF >/dev/null
cmake --build "$BUILD" -j "$JOBS" --target fl-fuzz-seeds "${ALL[@]}"
bin=$BUILD/tests/fuzz

if [ "${1:-}" = --seeds ]; then
  rm -rf tests/fuzz/corpus
  "$bin/fl-fuzz-seeds" tests/fuzz/corpus
  echo "fuzz: seeds written to tests/fuzz/corpus"
  exit 0
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1

# Inputs up to 1 MiB: the envelope and codec harnesses must reach sizes where a decoder that
# allocates a multiple of its input shows (-malloc_limit_mb), the others read small files.
max_len() {
  case $1 in
    fuzz_envelope | fuzz_codec) echo 1048576 ;;
    *) echo 65536 ;;
  esac
}

status=0
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=("${ALL[@]}")
for h in "${harnesses[@]}"; do
  name=${h#fuzz_}
  work=$bin/work/$name
  rm -rf "$work"
  mkdir -p "$work/corpus" "$work/artifacts"
  cp tests/fuzz/corpus/"$name"/* "$work/corpus/"
  # Inputs of defects found before (tests/fuzz/regress/<name>/): each must pass, once.
  if compgen -G "tests/fuzz/regress/$name/*" >/dev/null; then
    if ! "$bin/$h" -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=256 \
        tests/fuzz/regress/"$name"/* >"$work/regress.log" 2>&1; then
      echo "fuzz: $h FAILED on a regression input (log: $work/regress.log)"
      grep -E "ERROR|SUMMARY|Running:|invariant" "$work/regress.log" | head -20
      status=1
      continue
    fi
  fi
  echo "fuzz: $h for ${SECONDS_EACH}s"
  if "$bin/$h" -max_total_time="$SECONDS_EACH" -max_len="$(max_len "$h")" -timeout=30 \
      -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1; then
    grep -E "^stat::number_of_executed_units|^#[0-9]+ *DONE" "$work/log" | tail -2 || true
  else
    echo "fuzz: $h FAILED (log: $work/log, reproducer in $work/artifacts/)"
    tail -40 "$work/log"
    status=1
  fi
done
exit $status
