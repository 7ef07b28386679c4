#!/usr/bin/env bash
# Two fl-coordinator replicas behind nginx serve one fleet against one PostgreSQL database.
#
#   1. a fresh database; one signing key and one bootstrap admin token shared by both replicas
#      (as the Secret of the Helm chart and the secrets of deploy/compose.yaml are);
#   2. both replicas start at the same moment, so that both try the migrations: exactly one
#      applies them (the other waits on the migration lock and finds nothing to do);
#   3. nginx, configured from deploy/nginx/templates/fleetlearn.conf.template (the same file
#      deploy/compose.yaml gives the nginx container), listens in front of them;
#   4. fl-sim runs a fleet through nginx;
#   5. tests/integration/deploy_check_rounds.py: every round closed exactly once (one version
#      per round, one chain of versions; the replicas' closed-round counters add up to the
#      rounds), the rounds' accepted counts and the replicas' acknowledged counters equal the
#      uploads the fleet was acknowledged, and both replicas acknowledged uploads; nginx's log
#      shows uploads passed to both.
#
#   pg_virtualenv deploy/test-replicas.sh --coordinator build/server/fl-coordinator \
#                                         --fl-sim build/sim/fl-sim
#
# Exit 0: passed; 77 with a line "SKIPPED: <why>" when nginx is not installed; else failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COORD=${FL_COORDINATOR_BIN:-}
FL_SIM=${FL_SIM:-}
DEVICES=${FL_REPLICAS_DEVICES:-60}
ROUNDS=${FL_REPLICAS_ROUNDS:-5}
# Data and model of the fleet (fl-sim options); e.g. "--dataset fmnist --model 2nn" to measure
# the database growth per version of a 199,210-parameter model.
SIM_ARGS=${FL_REPLICAS_SIM_ARGS:---dataset synthetic --model logreg}
# With N > 0: replica B is killed (SIGKILL, a crash) once N rounds have closed; the fleet must
# finish through the survivor, every round still closed once, no acknowledged update lost.
KILL_AFTER=${FL_REPLICAS_KILL_AFTER_ROUND:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) COORD=$2; shift 2 ;;
    --fl-sim) FL_SIM=$2; shift 2 ;;
    --devices) DEVICES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --sim-args) SIM_ARGS=$2; shift 2 ;;
    --kill-after-round) KILL_AFTER=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "test-replicas: unknown argument $1" >&2; exit 2 ;;
  esac
done

skip() { echo "SKIPPED: $*"; exit 77; }
die() { echo "test-replicas: FAILED: $*" >&2; exit 1; }
say() { printf '[test-replicas %4ss] %s\n' "$SECONDS" "$*"; }

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || skip "nginx is not installed (apt-get install nginx)"
[ -n "$COORD" ] && [ -x "$COORD" ] || die "no fl-coordinator executable (--coordinator PATH)"
[ -n "$FL_SIM" ] && [ -x "$FL_SIM" ] || die "no fl-sim executable (--fl-sim PATH)"
COORD=$(realpath "$COORD")
FL_SIM=$(realpath "$FL_SIM")
for t in curl python3 createdb openssl; do command -v $t >/dev/null || die "$t is missing"; done
[ -n "${PGPORT:-}${PGHOST:-}" ] || die "no PostgreSQL: run under pg_virtualenv or set the PG* variables"

WORK=$(mktemp -d /tmp/fl-replicas-test.XXXXXX)
chmod 0755 "$WORK"   # nginx's workers (nobody) read their temp directories under it
DB=fl_replicas_test_$$
PIDS=()
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  dropdb --if-exists "$DB" 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    for f in "$WORK"/replica-*.log "$WORK/nginx.err"; do
      [ -f "$f" ] || continue
      echo "--- $(basename "$f") (last 25 lines) ---" >&2
      tail -n 25 "$f" >&2
    done
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() {  # URL PID NAME
  local i
  for i in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || die "$3 exited at start"
    sleep 0.2
  done
  die "$3 not ready after 30 s"
}

# --- 1. database and shared secrets ------------------------------------------------------------
createdb "$DB"
ADMIN_TOKEN=$(openssl rand -hex 32)
printf '%s\n' "$ADMIN_TOKEN" >"$WORK/admin-token"
openssl genpkey -algorithm ed25519 -out "$WORK/signing-key.pem" 2>/dev/null
chmod 0600 "$WORK/admin-token" "$WORK/signing-key.pem"

# --- 2. two replicas, started together ---------------------------------------------------------
PORT_A=$(free_port); PORT_B=$(free_port); PORT_LB=$(free_port)
while [ "$PORT_B" = "$PORT_A" ]; do PORT_B=$(free_port); done
while [ "$PORT_LB" = "$PORT_A" ] || [ "$PORT_LB" = "$PORT_B" ]; do PORT_LB=$(free_port); done
start_replica() {  # NAME PORT
  FL_DATABASE_URL="dbname=$DB" FL_ADMIN_TOKEN_FILE="$WORK/admin-token" \
  FL_SIGNING_KEY="$WORK/signing-key.pem" FL_REPLICA_ID="$1" FL_LISTEN="127.0.0.1:$2" \
  OPENBLAS_NUM_THREADS=1 \
    "$COORD" --tick=50 --checkin-interval=500 >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
}
start_replica replica-a "$PORT_A"
start_replica replica-b "$PORT_B"
wait_ready "http://127.0.0.1:$PORT_A/readyz" "${PIDS[0]}" replica-a
wait_ready "http://127.0.0.1:$PORT_B/readyz" "${PIDS[1]}" replica-b
say "replicas ready on :$PORT_A and :$PORT_B (database $DB)"
applied=$(cat "$WORK"/replica-*.log | grep -c 'event=migration_applied' || true)
applied_a=$(grep -c 'event=migration_applied' "$WORK/replica-a.log" || true)
applied_b=$(grep -c 'event=migration_applied' "$WORK/replica-b.log" || true)
[ "$applied" -ge 1 ] || die "no migration was applied"
[ "$applied_a" -eq 0 ] || [ "$applied_b" -eq 0 ] ||
  die "both replicas applied migrations ($applied_a and $applied_b)"
say "migrations: $applied applied, all by one replica"

# --- 3. nginx from the committed template ------------------------------------------------------
mkdir -p "$WORK/nginx/conf.d" "$WORK/nginx/tmp"
FL_COORDINATOR_1=127.0.0.1:$PORT_A FL_COORDINATOR_2=127.0.0.1:$PORT_B FL_LB_PORT=127.0.0.1:$PORT_LB \
python3 - "$ROOT/deploy/nginx/templates/fleetlearn.conf.template" "$WORK/nginx/conf.d/fleetlearn.conf" <<'EOF'
import os, re, sys
text = open(sys.argv[1]).read()
names = ("FL_COORDINATOR_1", "FL_COORDINATOR_2", "FL_LB_PORT")
out = re.sub(r"\$\{(FL_[A-Z0-9_]+)\}", lambda m: os.environ[m.group(1)] if m.group(1) in names else sys.exit("unknown placeholder " + m.group(0)), text)
open(sys.argv[2], "w").write(out)
EOF
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    include $WORK/nginx/conf.d/*.conf;
}
EOF
"$NGINX" -t -q -e "$WORK/nginx.err" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" ||
  die "nginx rejects the configuration rendered from deploy/nginx/templates"
"$NGINX" -e "$WORK/nginx.err" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' \
  >"$WORK/nginx.access" 2>>"$WORK/nginx.err" &
PIDS+=($!)
LB=http://127.0.0.1:$PORT_LB
wait_ready "$LB/lb-healthz" "${PIDS[2]}" nginx
wait_ready "$LB/readyz" "${PIDS[2]}" "nginx -> replicas"
say "nginx on :$PORT_LB"

# --- 4. the fleet, through nginx -----------------------------------------------------------------
t0=$SECONDS
say "fl-sim: $DEVICES devices, $ROUNDS rounds through the load balancer"
(cd "$WORK" && exec "$FL_SIM" --url "$LB" --admin-token "$ADMIN_TOKEN" --devices "$DEVICES" \
   --rounds "$ROUNDS" $SIM_ARGS --deadline 60 --threads 2 \
   --out "$WORK/sim-out") >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
if [ "$KILL_AFTER" -gt 0 ]; then
  closed_rounds() {
    curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT_A/admin/v1/rounds" 2>/dev/null |
      python3 -c 'import json,sys; print(sum(r["state"] == "closed" for r in json.load(sys.stdin).get("rounds") or []))' 2>/dev/null ||
      echo 0
  }
  while [ "$(closed_rounds)" -lt "$KILL_AFTER" ]; do
    kill -0 "$SIM_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${PIDS[1]}"
  say "replica-b killed (SIGKILL) after $(closed_rounds) closed rounds"
fi
wait "$SIM_PID" || { cat "$WORK/sim.log" >&2; die "fl-sim failed through the load balancer"; }
say "fleet done in $((SECONDS - t0))s"

# --- 5. checks ---------------------------------------------------------------------------------
if [ "$KILL_AFTER" -gt 0 ]; then
  # The dead replica's counters are gone; uploads it committed but could not acknowledge count
  # in the rounds without being acknowledged to the fleet (accepted >= acknowledged).
  check_args=(--crashed-replica)
else
  check_args=(--metrics "http://127.0.0.1:$PORT_A" --metrics "http://127.0.0.1:$PORT_B" --all-replicas-serve)
fi
python3 "$ROOT/tests/integration/deploy_check_rounds.py" --url "$LB" --token "$ADMIN_TOKEN" \
  --rounds "$ROUNDS" --sim-log "$WORK/sim.log" "${check_args[@]}" ||
  { tail -n 30 "$WORK/sim.log" >&2; die "round check failed"; }
[ "$KILL_AFTER" -eq 0 ] || say "requests nginx passed on to the survivor after a failure: $(grep -c 'upstream=[^ ]*, ' "$WORK/nginx.access" || true)"
finished=$(cat "$WORK"/replica-*.log | grep 'event=round_finished' | grep -c 'outcome=closed' || true)
say "round_finished (closed) log lines across both replicas: $finished"
[ "$finished" -eq "$ROUNDS" ] || die "$finished round closes logged, expected $ROUNDS"
for p in "$PORT_A" "$PORT_B"; do
  n=$(grep '"POST /v1/updates' "$WORK/nginx.access" | grep -c "upstream=127.0.0.1:$p " || true)
  say "nginx passed $n uploads to :$p"
  [ "$n" -gt 0 ] || die "nginx passed no upload to :$p"
done
# Database growth, for sizing (docs/DEPLOY.md): bytes per table, model versions, partials.
psql -X -d "$DB" -At -F ' ' -c "
  SELECT 'db_bytes', pg_database_size(current_database())
  UNION ALL SELECT 'table_bytes ' || c.relname, pg_total_relation_size(c.oid) FROM pg_class c
    WHERE c.relname IN ('versions', 'partials', 'acceptances', 'rounds', 'devices', 'nonces')
  UNION ALL SELECT 'versions', count(*) FROM versions
  UNION ALL SELECT 'version_weight_bytes', coalesce(max(octet_length(weights)), 0) FROM versions
  UNION ALL SELECT 'partials', count(*) FROM partials
  UNION ALL SELECT 'acceptances', count(*) FROM acceptances" | sed 's/^/[test-replicas] db: /'
echo "test-replicas: PASSED"
