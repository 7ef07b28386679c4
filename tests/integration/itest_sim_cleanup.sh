#!/usr/bin/env bash
# fl-sim leaves nothing behind, however it ends (issue 11): a run that starts its own throwaway
# PostgreSQL and coordinator is ended mid-run by SIGTERM, SIGINT, SIGPIPE (its reader goes away:
# `fl-sim | head -1`, and a reader that leaves mid-run), SIGKILL and SIGABRT (a crash: no
# handler runs, the guard of tests/support cleans up). After each, no process of the run (the
# postmaster, the coordinator, the guard) and nothing in its TMPDIR may remain.
#   itest_sim_cleanup.sh FL_SIM FL_COORDINATOR
set -uo pipefail
sim=$1
coord=$2
root=$(mktemp -d /tmp/fl-sim-cleanup-XXXXXX)
# The throwaway cluster runs as `postgres` when we are root: it must reach its directory.
chmod 755 "$root"
failures=0
ulimit -c 0 # SIGABRT: no core file

fail() {
  echo "FAIL [$1]: $2"
  failures=$((failures + 1))
}

# Processes whose command line names the case's directory: fl-sim and its guard (a fork of
# fl-sim: the same command line, --out there), the postmaster (-D in its TMPDIR) and the
# coordinator (--signing-key in its TMPDIR).
procs() {
  pgrep -f -- "$1" || true
}

# Waits until fl-sim is inside its rounds (rounds.csv is opened when they start).
wait_running() {
  local out=$1 i
  for i in $(seq 600); do
    [ -f "$out/rounds.csv" ] && return 0
    sleep 0.2
  done
  return 1
}

# Nothing of the case may remain in its TMPDIR; the guard may need a few seconds after a crash.
check_clean() {
  local name=$1 tmp=$root/$1/tmp i left
  for i in $(seq 150); do
    left=$(procs "$root/$name/")
    if [ -z "$left" ] && [ -z "$(ls -A "$tmp")" ]; then
      echo "ok   [$name]: no process and no directory left"
      return 0
    fi
    sleep 0.2
  done
  fail "$name" "left behind: processes ${left:-none}; files: $(ls -A "$tmp" | tr '\n' ' ')"
  # Clean up after the failure ourselves, so that the next case starts clean.
  [ -n "$left" ] && kill -KILL $left 2>/dev/null
  for d in "$tmp"/fl-sim-pg-*/data; do
    [ -d "$d" ] && su postgres -s /bin/sh -c "pg_ctl -D '$d' -m immediate stop" >/dev/null 2>&1
  done
  rm -rf "${tmp:?}"/*
}

sim_args() { # $1: the case's directory
  echo --dataset synthetic --devices 10 --rounds 100000 --model logreg \
    --coordinator-bin "$coord" --out "$root/$1/out"
}

new_case() { # $1: name; the case's TMPDIR is $root/$1/tmp, its output $root/$1/out
  mkdir -p "$root/$1/tmp" && chmod 755 "$root/$1" "$root/$1/tmp"
}

# A run in the background, stopped with a signal once it is in its rounds.
signal_case() {
  local sig=$1 name=$2 tmp=$root/$2/tmp
  new_case "$name"
  # shellcheck disable=SC2046
  TMPDIR=$tmp "$sim" $(sim_args "$name") >"$root/$name.log" 2>&1 &
  local pid=$!
  if ! wait_running "$root/$name/out"; then
    fail "$name" "the run did not start (log: $root/$name.log)"
    kill -KILL "$pid"
  else
    local n
    n=$(procs "$root/$name/" | wc -l)
    # fl-sim, its guard, the postmaster and the coordinator: the test must see them first.
    [ "$n" -ge 4 ] || fail "$name" "only $n processes of the run before the signal"
    kill -s "$sig" "$pid"
  fi
  wait "$pid" 2>/dev/null
  check_clean "$name"
}

# The reader of fl-sim's output goes away; its next write raises SIGPIPE.
pipe_case() {
  local name=$1 tmp=$root/$1/tmp
  new_case "$name"
  if [ "$name" = "sigpipe-head" ]; then
    # shellcheck disable=SC2046
    TMPDIR=$tmp timeout 300 "$sim" $(sim_args "$name") 2>"$root/$name.log" | head -1 \
      >/dev/null
  else
    # The reader leaves once the rounds run, with the services up.
    # shellcheck disable=SC2046
    TMPDIR=$tmp timeout 300 "$sim" $(sim_args "$name") 2>"$root/$name.log" |
      (wait_running "$root/$name/out"; n=$(procs "$root/$name/" | wc -l)
       [ "$n" -ge 4 ] || echo "only $n processes" >"$root/$name.few")
  fi
  local st=${PIPESTATUS[0]}
  [ "$st" = 124 ] && fail "$name" "fl-sim did not stop on SIGPIPE (killed by timeout)"
  [ -f "$root/$name.few" ] && fail "$name" "$(cat "$root/$name.few") of the run before SIGPIPE"
  check_clean "$name"
}

signal_case TERM sigterm
signal_case INT sigint
pipe_case sigpipe-head
pipe_case sigpipe-midrun
signal_case KILL sigkill
signal_case ABRT sigabrt

if [ "$failures" -eq 0 ]; then
  rm -rf "$root"
  echo "PASS: fl-sim left nothing behind in 6 ways of ending"
  exit 0
fi
echo "FAILED: $failures case(s); logs in $root"
exit 1
