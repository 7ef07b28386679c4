#!/bin/bash
# fleet-f1k.sh NAME [fl-sim args...]: the 1000-device Fleet round of benches/RESULTS.md, 3 rounds
# (ROUNDS=5 for the recorded runs). Writes benches/logs/fleet/NAME.log and NAME/rounds.csv
# (benches/logs/ is not in git) and prints the per-round lines. FL_SIM: the fl-sim binary
# (default: build-bench/sim/fl-sim, as benches/run.sh builds it). For the CPU lines run it under
# benches/cpuacct.sh: cpuacct.sh NAME bash benches/fleet-f1k.sh NAME ...
name=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
logs=$root/benches/logs/fleet
mkdir -p "$logs"
rm -rf "$logs/$name"
"${FL_SIM:-$root/build-bench/sim/fl-sim}" --devices 1000 --rounds ${ROUNDS:-3} --model 2nn --samples-per-device 60 --epochs 1 --batch 10 --out "$logs/$name" "$@" > "$logs/$name.log" 2>&1
echo "== $name $* (load $(cut -d' ' -f1 /proc/loadavg))"
grep -E "coordinator:|round .*: acc|mean round" "$logs/$name.log" | sed 's/loss.*participants,/,/'
