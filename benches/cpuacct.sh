#!/bin/bash
# cpuacct.sh NAME CMD...: runs CMD in its own cpuacct cgroup; prints CPU seconds by command name
# (sampled every 0.5 s from /proc) and the cgroup's total.
name=$1; shift
cg=/sys/fs/cgroup/cpuacct/fl-$name-$$
mkdir -p $cg
tck=$(getconf CLK_TCK)
( echo $BASHPID > $cg/tasks; exec "$@" ) &
main=$!
declare -A cpu comm
while kill -0 $main 2>/dev/null; do
  for p in $(cat $cg/cgroup.procs 2>/dev/null); do
    read -r -a st < /proc/$p/stat 2>/dev/null || continue
    c=$(cat /proc/$p/comm 2>/dev/null)
    # fields after the comm: utime is 14, stime 15 (1-based); comm has no spaces here
    cpu[$p]=$(( ${st[13]} + ${st[14]} )); comm[$p]=$c
  done
  sleep 0.5
done
wait $main
declare -A by
for p in "${!cpu[@]}"; do
  c=${comm[$p]}; case $c in postgres|postmaster) c=postgres;; esac
  by[$c]=$(( ${by[$c]:-0} + ${cpu[$p]} ))
done
for c in "${!by[@]}"; do printf "  cpu %-16s %7.1f s\n" "$c" "$(echo "${by[$c]} / $tck" | bc -l)"; done
printf "  cpu total (cgroup)  %7.1f s\n" "$(echo "$(cat $cg/cpuacct.usage) / 1000000000" | bc -l)"
rmdir $cg 2>/dev/null
