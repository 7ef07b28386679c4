#!/bin/bash
# mqtt.sh NAME [fl-sim args...]: the Fleet round of benches/RESULTS.md (1000 devices, 2NN) over
# MQTT: a Mosquitto broker configured by deploy/mosquitto/gen-config.sh on a free loopback port
# with an account per device, fl-sim starting its coordinator and one fl-mqtt-bridge
# (--bridge-bin), every device on its own broker account. ROUNDS (3), DEVICES (1000).
# Writes benches/logs/mqtt/NAME.log, NAME/rounds.csv and the broker's files in NAME-broker/;
# prints the per-round lines like fleet-f1k.sh. FL_SIM, FL_BRIDGE: the binaries (default
# build-bench/...). With TRANSPORT=http the same run goes over HTTP (the comparison).
set -euo pipefail
name=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build-bench}
logs=$root/benches/logs/mqtt
devices=${DEVICES:-1000}
mkdir -p "$logs"
rm -rf "${logs:?}/$name" "$logs/$name-broker"
args=(--devices "$devices" --rounds "${ROUNDS:-3}" --model 2nn --samples-per-device 60 --epochs 1
      --batch 10 --out "$logs/$name")
broker_pid=
if [ "${TRANSPORT:-mqtt}" = mqtt ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  pw=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  bpw=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  { echo "bridge fl-bridge $bpw"
    for ((i = 0; i < devices; i++)); do printf 'device sim-%05d %s\n' "$i" "$pw"; done
  } | bash "$root/deploy/mosquitto/gen-config.sh" "$logs/$name-broker" --port "$port" --bind 127.0.0.1 >/dev/null
  mosquitto -c "$logs/$name-broker/mosquitto.conf" >"$logs/$name-broker/broker.log" 2>&1 &
  broker_pid=$!
  trap 'kill $broker_pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  export FL_MQTT_BRIDGE_PASSWORD=$bpw FL_SIM_MQTT_PASSWORD=$pw
  args+=(--transport mqtt --broker "mqtt://sim-@127.0.0.1:$port"
         --bridge-bin "${FL_BRIDGE:-$build/server/mqtt/fl-mqtt-bridge}")
fi
"${FL_SIM:-$build/sim/fl-sim}" "${args[@]}" "$@" >"$logs/$name.log" 2>&1 || {
  tail -20 "$logs/$name.log"; exit 1; }
echo "== $name ${TRANSPORT:-mqtt} $* (load $(cut -d' ' -f1 /proc/loadavg))"
grep -E "coordinator:|round .*: acc|mean round|bytes up" "$logs/$name.log" | sed 's/loss.*participants,/,/'
if [ -n "$broker_pid" ]; then # utime + stime of the broker over the whole run, in seconds
  echo "  broker CPU $(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f s", ($14 + $15) / hz}' "/proc/$broker_pid/stat")"
fi
