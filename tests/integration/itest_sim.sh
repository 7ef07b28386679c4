#!/usr/bin/env bash
# fl-sim end to end in CI, against real coordinators and PostgreSQL:
# 1. bad options are refused before any service starts, with the reason;
# 2. 50 devices, 3 rounds of the 2NN on Fashion-MNIST with misbehaving devices, dropouts and
#    network faults injected: test accuracy rises, every round produced a version, the
#    coordinator's refusals of the injected bad updates are counted by reason, and every round's
#    coordinator breakdown and the initial model's score are reported (every evaluation checks
#    the coordinator's signature);
# 3. the same --seed gives the same rounds (accuracy, loss, participants) with 1 and 3 threads;
# 3b. an async (FedBuff) run with intermittent devices: one row per buffer of exactly K updates;
# 4. a run whose rounds produce no version exits non-zero and says why;
# 5. two runs with --url against one running coordinator both succeed (pg_virtualenv only);
# 4b. a cohort run: labels, conditions, evaluation of every version in the summary.
#   itest_sim.sh FL_SIM FL_COORDINATOR
set -euo pipefail
sim=$1
coord=$2
out=$(mktemp -d)
coord_pid=
cleanup() {
  if [ -n "$coord_pid" ]; then kill "$coord_pid" 2>/dev/null || true; wait "$coord_pid" || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

db_args=()
# Under pg_virtualenv the PG* variables name a cluster; otherwise fl-sim starts its own.
if [ -n "${PGPORT:-}" ]; then db_args=(--database-url=); fi
run=(--coordinator-bin "$coord" "${db_args[@]}")

# ---- 1. options checked up front --------------------------------------------------------
# Refused with exit status 2 and the reason, before PostgreSQL or the coordinator start (the
# coordinator given does not even exist).
refused() {
  local want=$1 rc=0 log
  shift
  log=$("$sim" --devices 50 --coordinator-bin /nonexistent --out "$out/refused" "$@" 2>&1) || rc=$?
  [ "$rc" -eq 2 ] || fail "fl-sim $* exited $rc, want 2: $log"
  grep -qF -- "$want" <<<"$log" || fail "fl-sim $*: no '$want' in: $log"
  if grep -q "starting" <<<"$log"; then fail "fl-sim $* started services: $log"; fi
}
refused "--lr must be in" --lr -1
refused "--participants 60 exceeds --devices 50" --participants 60
refused "output layer has 7 units" --layers dense:32,relu,dense:7
refused "--over-selection must be in" --over-selection 0.5
refused "--min-participants" --participants 10 --min-participants 11

# ---- 2. the fleet at work ---------------------------------------------------------------
"$sim" --devices 50 --rounds 3 --samples-per-device 200 --model 2nn --lr 0.05 \
  --bad-devices 0.2 --bad-kinds poison,unclipped,badsig,replay --dropout 0.05 --net-fail 0.02 \
  --over-selection 1.5 --deadline 20 --out "$out/main" "${run[@]}" | tee "$out/log"

csv="$out/main/rounds.csv"
rows=$(($(wc -l <"$csv") - 1))
[ "$rows" -eq 3 ] || fail "$rows rounds in the CSV, want 3"
first=$(awk -F, 'NR==2 {print $2}' "$csv")
last=$(awk -F, 'NR==4 {print $2}' "$csv")
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b > a && b > 0.6) }' ||
  fail "accuracy did not rise: $first -> $last"
grep -q "refused: norm_exceeded" "$out/log" || fail "no norm refusals counted"
grep -q "refused: bad_signature" "$out/log" || fail "no signature refusals"
grep -q "refused: replayed_nonce" "$out/log" || fail "no replay refusals"
[ -s "$out/main/accuracy.svg" ] || fail "no plot"
# Every round's breakdown from the coordinator's /metrics: 3 rounds, each with check-ins served.
n=$(grep -cE "^  coordinator: checkin [1-9][0-9]* x" "$out/log" || true)
[ "$n" -eq 3 ] || fail "$n coordinator breakdown lines, want 3"
# The untrained model is scored first (its accuracy is near chance for 10 classes).
grep -qE "^initial model \(version 1\): accuracy 0\.[0-2]" "$out/log" ||
  fail "no initial-model score near chance"

# ---- 3. the seed decides, not the threads -----------------------------------------------
# Device seeds used to follow enrollment order, which the thread count changes. Updates are
# summed in arrival order in float, hence the small tolerance; different example orders move
# accuracy and loss by far more.
for t in 1 3; do
  "$sim" --devices 20 --rounds 2 --samples-per-device 100 --seed 7 --threads "$t" --deadline 30 \
    --out "$out/threads$t" "${run[@]}" >"$out/threads$t.log" 2>&1 ||
    { cat "$out/threads$t.log"; fail "the run with $t threads failed"; }
done
paste -d, "$out/threads1/rounds.csv" "$out/threads3/rounds.csv" | awk -F, -v n=12 '
  NR == 1 { next }
  { rows++
    if ($1 != $(n+1) || $5 != $(n+5)) { print "round/participants differ: " $0; bad = 1 }
    for (c = 2; c <= 3; c++) {
      d = $c - $(n+c); if (d < 0) d = -d
      if (d > 5e-4) { print "column " c " differs: " $c " vs " $(n+c); bad = 1 }
    } }
  END { exit bad || rows != 2 }' || fail "--threads 1 and --threads 3 gave different rounds"

# ---- 3b. asynchronous rounds with intermittent devices ----------------------------------
# FedBuff buffers of 5 from 20 continuously training devices, half of them going offline:
# one CSV row per buffer, each with exactly 5 updates, offline periods counted.
"$sim" --devices 20 --rounds 4 --samples-per-device 100 --mode async --buffer-size 5 \
  --max-staleness 3 --offline-share 0.5 --offline-mean 1 --deadline 30 --out "$out/async" \
  "${run[@]}" >"$out/async.log" 2>&1 || { cat "$out/async.log"; fail "the async run failed"; }
awk -F, 'NR > 1 { rows++; if ($5 != 5) bad = 1 } END { exit bad || rows != 4 }' \
  "$out/async/rounds.csv" || { cat "$out/async/rounds.csv"; fail "async buffers are not 4 x 5"; }
grep -qE "offline periods +[1-9]" "$out/async.log" || { cat "$out/async.log"; fail "no offline periods"; }
refused "--buffer-size needs --mode async" --buffer-size 5

# ---- 4. no version: a failed run --------------------------------------------------------
# 18 of 20 devices sign their updates wrongly: the round cannot reach its minimum of 10.
rc=0
"$sim" --devices 20 --rounds 2 --samples-per-device 100 --bad-devices 0.9 --bad-kinds badsig \
  --deadline 10 --out "$out/noversion" "${run[@]}" >"$out/noversion.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || { cat "$out/noversion.log"; fail "a run without a version exited 0"; }
grep -qE "round 1 ended without a new version: abandoned with [0-2] updates? accepted, fewer than the 10 needed" \
  "$out/noversion.log" || { cat "$out/noversion.log"; fail "no reason given"; }
grep -q "refused by the coordinator: bad_signature x " "$out/noversion.log" ||
  { cat "$out/noversion.log"; fail "the refusals are not named"; }
if grep -q "^round 2/2" "$out/noversion.log"; then fail "the run went on after a round without a version"; fi
# Every device drops out: nothing is uploaded at all.
rc=0
"$sim" --devices 10 --rounds 1 --samples-per-device 100 --dropout 1 --deadline 5 \
  --out "$out/alldrop" "${run[@]}" >"$out/alldrop.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || { cat "$out/alldrop.log"; fail "a run where every device failed exited 0"; }
grep -q "every device failed round 1 (0 failed, 10 dropped out)" "$out/alldrop.log" ||
  { cat "$out/alldrop.log"; fail "no reason given"; }

# ---- 4b. training cohorts and federated evaluation -----------------------------------------
# Half the fleet at site a, charging 70% of the time: only those train; every new version is
# evaluated by the devices of the cohort and the summary shows the coordinator's aggregate.
OPENBLAS_NUM_THREADS=1 "$sim" --devices 40 --rounds 3 --participants 5 --samples-per-device 100 \
  --labels site=a:0.5,site=b:0.5 --conditions charging:0.7 \
  --cohort '{"labels":{"site":"a"},"conditions":["charging"]}' --eval-share 1 --eval-by site \
  --deadline 30 --out "$out/cohort" "${run[@]}" >"$out/cohort.log" 2>&1 ||
  { cat "$out/cohort.log"; fail "the cohort run failed"; }
grep -q 'federated evaluation *version [0-9]*, [1-9][0-9]* devices' "$out/cohort.log" ||
  { cat "$out/cohort.log"; fail "no federated evaluation in the summary"; }
grep -q '^ *loss  *[0-9.]*, ' "$out/cohort.log" || fail "no evaluated loss in the summary"

# ---- 5. --url twice against one coordinator ---------------------------------------------
if [ -z "${PGPORT:-}" ]; then
  echo "SKIP: --url twice needs a PostgreSQL (pg_virtualenv)"
else
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  FL_ADMIN_TOKEN=$token OPENBLAS_NUM_THREADS=1 "$coord" --listen="127.0.0.1:$port" \
    --signing-key="$out/coordinator-key.pem" --database-url= --checkin-interval=500 --tick=50 \
    >"$out/coordinator.log" 2>&1 &
  coord_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
  done
  for i in 1 2; do
    FL_ADMIN_TOKEN=$token "$sim" --url "http://127.0.0.1:$port" --devices 10 --rounds 1 \
      --samples-per-device 100 --deadline 30 --out "$out/url$i" >"$out/url$i.log" 2>&1 ||
      { cat "$out/url$i.log"; tail -20 "$out/coordinator.log"; fail "run $i with --url failed"; }
  done
  grep -h '^model ' "$out/url1.log" "$out/url2.log"
  # A name given twice is refused by the coordinator, and fl-sim says so.
  rc=0
  for i in 3 4; do
    FL_ADMIN_TOKEN=$token "$sim" --url "http://127.0.0.1:$port" --devices 10 --rounds 1 \
      --model-name "itest twice" --samples-per-device 100 --deadline 30 --out "$out/url$i" \
      >"$out/url$i.log" 2>&1 || rc=$?
  done
  [ "$rc" -ne 0 ] && grep -q 'cannot create the model "itest twice"' "$out/url4.log" ||
    { cat "$out/url4.log"; fail "a repeated --model-name was not refused clearly"; }
fi
echo "PASS: accuracy $first -> $last"
