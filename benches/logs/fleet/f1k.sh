#!/bin/bash
# f1k.sh NAME [fl-sim args...]: the 1000-device Fleet round, 3 rounds
name=$1; shift
rm -rf /tmp/f1k-$name
/work/main/build-h9r/client/sim/fl-sim --devices 1000 --rounds ${ROUNDS:-3} --model 2nn --samples-per-device 60 --epochs 1 --batch 10 --out /tmp/f1k-$name "$@" > /tmp/f1k-$name.log 2>&1
echo "== $name $* (load $(cut -d' ' -f1 /proc/loadavg))"
grep -E "coordinator:|round .*: acc|mean round" /tmp/f1k-$name.log | sed 's/loss.*participants,/,/'
