#!/bin/bash
# coord_rusage.sh: a stand-in for fl-coordinator that reports what the real one cost, for the
# benches' --coordinator option (bench_ingest, fl-sim --coordinator):
#
#   FL_REAL_COORDINATOR=build/server/fl-coordinator FL_RUSAGE_OUT=/tmp/r.txt \
#     bench_ingest ... --coordinator benches/coord_rusage.sh
#
# Runs the coordinator under GNU time, forwards SIGTERM/SIGINT to it, samples its thread count
# (/proc/<pid>/status Threads) every 0.2 s, and appends one line to FL_RUSAGE_OUT when it has
# exited: voluntary and involuntary context switches of all its threads over its whole life
# (wait4's rusage, so threads that have exited count too), CPU seconds, peak RSS, peak threads.
set -u
real=${FL_REAL_COORDINATOR:?set FL_REAL_COORDINATOR to the fl-coordinator binary}
out=${FL_RUSAGE_OUT:-/dev/stderr}
tmp=$(mktemp)
/usr/bin/time -f '%w %c %U %S %M' -o "$tmp" "$real" "$@" &
tp=$!
coord=""
for _ in $(seq 50); do
  coord=$(cat /proc/$tp/task/$tp/children 2>/dev/null | awk '{print $1}')
  [ -n "$coord" ] && break
  sleep 0.02
done
forward() { [ -n "$coord" ] && kill -"$1" "$coord" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward INT' INT
peak=0
while kill -0 "$tp" 2>/dev/null; do
  t=$(awk '/^Threads:/ {print $2}' /proc/"$coord"/status 2>/dev/null)
  [ -n "$t" ] && [ "$t" -gt "$peak" ] && peak=$t
  sleep 0.2
done
wait "$tp"
rc=$?
read -r vol invol user sys rss <"$tmp"
printf 'coordinator voluntary_ctxt_switches=%s involuntary_ctxt_switches=%s cpu_s=%.2f max_rss_kb=%s max_threads=%s\n' \
  "$vol" "$invol" "$(echo "$user + $sys" | bc -l)" "$rss" "$peak" >>"$out"
rm -f "$tmp"
exit $rc
