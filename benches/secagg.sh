#!/bin/bash
# secagg.sh BUILD OUT [DEVICES [ROUNDS]]: plain FedAvg and SecAgg+ back to back with the
# quick-start learning settings (2NN, Fashion-MNIST IID, 60 examples per device, E=1 B=10
# lr 0.05, clip 1 in both runs), and a table per round of both: accuracy, participants, wall
# time, fl-sim CPU per device round, coordinator and PostgreSQL CPU, bytes per device.
#
#   OPENBLAS_NUM_THREADS=1 nice -n 5 bash benches/secagg.sh build-rel benches/logs/secagg 1000 3
#
# SECAGG (T:K, default 16:30), DROP (--secagg-drop, default 1.25% in each of the four phases:
# 5% in all) and DEADLINE (seconds per phase, default 40) change the SecAgg+ run. The
# coordinator's CPU is utime + stime of its process (all threads); PostgreSQL's the sum over
# the postmaster and its backends; both sampled every 0.2 s and taken at the line fl-sim
# prints when a round has its version. Bytes are fl-sim's request and answer
# bodies (rounds.csv) divided by the fleet size. Both runs use fl-sim's default
# --max-inflight: a SecAgg device waiting for its next phase is parked in a long poll that the
# cap does not count, and its training slot is free once its masked input is acknowledged.
#
# SIM_OPTS adds fl-sim options to both runs. PGSS=1 runs both against one PostgreSQL cluster of the script's own (in OUT/pg, Unix socket
# only) with pg_stat_statements, a database per run, and writes each run's costliest
# statements to OUT/NAME.pgss; PERF=1 also records the coordinator with perf (OUT/NAME.perf).
set -u
build=${1:?usage: secagg.sh BUILD OUT [DEVICES [ROUNDS]]}
out=${2:?usage: secagg.sh BUILD OUT [DEVICES [ROUNDS]]}
n=${3:-1000}
rounds=${4:-3}
sa=${SECAGG:-16:30}
drop=${DROP:-keys:0.0125,shares:0.0125,masked:0.0125,unmask:0.0125}
deadline=${DEADLINE:-40}
tck=$(getconf CLK_TCK)
export OPENBLAS_NUM_THREADS=1
mkdir -p "$out"
out=$(cd "$out" && pwd)

pgdir="" pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
pgrun() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "${PGSS:-0}" = 1 ]; then
  pgdir=$out/pg
  rm -rf "$pgdir" && mkdir -p "$pgdir" && { [ "$(id -u)" != 0 ] || chown postgres "$pgdir"; }
  pgrun "$pgbin"/initdb -D "$pgdir/data" -A trust -U postgres >/dev/null || exit 1
  cat >>"$pgdir/data/postgresql.conf" <<EOC
listen_addresses = ''
unix_socket_directories = '$pgdir'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = top
pg_stat_statements.max = 2000
max_connections = 200
EOC
  pgrun "$pgbin"/pg_ctl -D "$pgdir/data" -l "$pgdir/log" -w start >/dev/null || exit 1
  trap 'pgrun "$pgbin"/pg_ctl -D "$pgdir/data" -m fast stop >/dev/null' EXIT
fi
pgq() { "$pgbin"/psql -X -q -A -h "$pgdir" -U postgres -d "${2:-postgres}" -c "$1"; }
[ -z "$pgdir" ] || pgq "CREATE EXTENSION pg_stat_statements" || exit 1

# utime + stime (+ cutime + cstime with $2 = 1) of pid $1 in clock ticks; empty when gone.
ticks() {
  local s
  s=$(cat /proc/"$1"/stat 2>/dev/null) || return 0
  s=${s##*) }
  local -a f
  read -r -a f <<<"$s"
  # after the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
  echo $((f[11] + f[12] + ${2:-0} * (f[13] + f[14])))
}

# PostgreSQL's ticks so far: the last sample of each of its processes seen (the postmaster
# and its backends; a backend's exit does not show in the postmaster's cutime here).
declare -A pgt
pg_ticks() { # $1 postmaster; into pgsum (not in a subshell: pgt lives on)
  local c x t=0
  for c in "$1" $(pgrep -P "$1"); do
    x=$(ticks "$c" 0)
    [ -n "$x" ] && pgt[$c]=$x
  done
  for c in "${!pgt[@]}"; do t=$((t + pgt[$c])); done
  pgsum=$t
}

# The postmaster of the throwaway PostgreSQL whose socket directory coordinator $1 uses.
find_pm() {
  local dir p
  dir=$({ tr '\0' '\n' </proc/"$1"/cmdline; } 2>/dev/null | sed -n 's/^--database-url=host=\([^ ]*\).*/\1/p')
  [ -n "$dir" ] || return 0
  for p in $(pgrep -x postgres); do
    if { tr '\0' ' ' </proc/"$p"/cmdline; } 2>/dev/null | grep -q -- "-D $dir/data "; then
      echo "$p"
      return
    fi
  done
}

points='^initial model|^round [0-9]+/[0-9]+: accuracy|^fl-sim: round [0-9]+ ended without a new version'

run() { # name, then fl-sim's extra options
  local name=$1
  shift
  local log=$out/$name.log cpu=$out/$name.cpu
  local -a db=()
  : >"$cpu"
  if [ -n "$pgdir" ]; then
    pgq "CREATE DATABASE $name" && pgq "SELECT pg_stat_statements_reset()" >/dev/null || exit 1
    db=(--database-url "host=$pgdir user=postgres dbname=$name")
  fi
  stdbuf -oL "$build"/sim/fl-sim --devices "$n" --rounds "$rounds" --model 2nn --dataset fmnist \
    --partition iid --samples-per-device 60 --epochs 1 --batch 10 --lr 0.05 --clip-norm 1 \
    --seed 1 --coordinator-bin "$build"/server/fl-coordinator \
    --out "$out/$name" "${db[@]}" ${SIM_OPTS:-} "$@" \
    >"$log" 2>&1 &
  local sim=$! coord="" pm="" seen=0 k x c=0 p=0
  pgt=()
  while kill -0 "$sim" 2>/dev/null; do
    [ -z "$coord" ] && coord=$(pgrep -P "$sim" -x fl-coordinator)
    [ -z "$pm" ] && [ -n "$coord" ] && pm=$(find_pm "$coord")
    [ -z "$pm" ] && [ -n "$coord" ] && [ -n "$pgdir" ] && pm=$(head -1 "$pgdir/data/postmaster.pid")
    if [ -n "$coord" ] && [ "${PERF:-0}" = 1 ] && [ -z "${perfpid:-}" ]; then
      perf record -e cpu-clock -F 199 -g -p "$coord" -o "$out/$name.perf" >/dev/null 2>&1 &
      perfpid=$!
    fi
    # the latest sample while they run: after the last round they stop before it is read
    if [ -n "$pm" ]; then
      x=$(ticks "$coord") && [ -n "$x" ] && c=$x
      pg_ticks "$pm"
      p=$pgsum
    fi
    # one line per point: initial model (0), then each round that has its version or ended
    # without one (abandoned: fl-sim stops there)
    k=$(grep -c -E "$points" "$log" 2>/dev/null)
    if [ "${k:-0}" -gt "$seen" ] && [ -n "$pm" ]; then
      echo "$seen $c $p" >>"$cpu"
      seen=$k
    fi
    sleep 0.2
  done
  wait "$sim" || echo "secagg.sh: fl-sim $name exited with $?, see $log" >&2
  if [ -n "${perfpid:-}" ]; then
    kill -INT "$perfpid" 2>/dev/null
    wait "$perfpid" 2>/dev/null
    perfpid=""
  fi
  if [ -n "$pgdir" ]; then
    pgq "SELECT calls, round(total_exec_time::numeric / 1000, 2) AS exec_s,
           round((total_exec_time / greatest(calls, 1))::numeric, 3) AS ms_per_call,
           left(regexp_replace(query, '\s+', ' ', 'g'), 140) AS query
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$name')
         ORDER BY total_exec_time DESC LIMIT 25" >"$out/$name.pgss"
  fi
}

run fedavg
run secagg --deadline "$deadline" --secure-aggregation "$sa" --secagg-drop "$drop"

printf '\n%d devices, %d rounds; SecAgg+ %s, drop %s, phase deadline %d s\n' "$n" "$rounds" \
  "$sa" "$drop" "$deadline"
echo "| run | round | accuracy | participants | wall s | fl-sim CPU ms / device round | coordinator CPU s | PostgreSQL CPU s | KB up / device | KB down / device |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for name in fedavg secagg; do
  # fl-sim's CPU line per round, "-" for a round without uploads (it prints none then)
  mapfile -t simcpu < <(awk '/^round [0-9]+\/[0-9]+: [0-9]+\/[0-9]+ devices done/ { sub(/\/.*/, "", $2); r = $2 }
    /fl-sim CPU: [0-9.]* ms per device round/ { c[r] = $3 }
    END { for (i = 1; i <= r; i++) print (i in c) ? c[i] : "-" }' "$out/$name.log")
  awk -F, -v n="$n" -v tck="$tck" -v name="$name" -v sc="${simcpu[*]}" '
    FILENAME ~ /[.]cpu$/ { c[$1] = $2; p[$1] = $3; next }
    FNR == 1 { next } # the CSV header
    {
      split(sc, s, " ")
      r = $1
      # a round without a version (abandoned) has no accuracy; CPU is taken where fl-sim said so
      acc = $2 ~ /^[0-9.]+$/ ? sprintf("%.4f", $2) : "abandoned"
      cc = r in c && (r - 1) in c ? sprintf("%.2f", (c[r] - c[r - 1]) / tck) : "-"
      pc = r in p && (r - 1) in p ? sprintf("%.2f", (p[r] - p[r - 1]) / tck) : "-"
      printf "| %s | %d | %s | %d | %.1f | %s | %s | %s | %.0f | %.0f |\n", name, r, acc, $5,
        $9, s[r] != "" ? s[r] : "-", cc, pc, $7 / n / 1024, $8 / n / 1024
    }' FS=' ' "$out/$name.cpu" FS=, "$out/$name/rounds.csv"
done
