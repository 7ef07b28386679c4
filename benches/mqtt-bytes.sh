#!/bin/bash
# mqtt-bytes.sh [2nn|sensor]: bytes on the wire of one fl-gateway over HTTP and over MQTT, for
# benches/RESULTS.md. Run under pg_virtualenv:   pg_virtualenv -t bash benches/mqtt-bytes.sh 2nn
# A coordinator, a Mosquitto broker (deploy/mosquitto/gen-config.sh) and fl-mqtt-bridge on
# loopback; each gateway reaches its server through benches/tcp_count.py, which counts the TCP
# payload bytes both ways (the bridge talks to the broker and the coordinator directly, so only
# the device's own link is counted). Per transport: run 1 = enrollment + one round, run 2 = one
# more round with the same state directory (check-in, download of the new base, upload): run 2
# is "a device round". Plain TCP on loopback: TLS would add its handshake per connection to both.
# BUILD: the build tree (build-bench). Logs in benches/logs/mqtt-bytes/.
set -euo pipefail
model=${1:-2nn}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build-bench}
work=$root/benches/logs/mqtt-bytes/$model
rm -rf "$work"; mkdir -p "$work"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

db=flbytes_$$
createdb "$db"
cp=$(free_port) tok=$(hex 32)
FL_ADMIN_TOKEN=$tok OPENBLAS_NUM_THREADS=1 "$build/server/fl-coordinator" --listen=127.0.0.1:$cp \
  --database-url="dbname=$db" --signing-key="$work/signing-key.pem" --tick=50 \
  --checkin-interval=100 >"$work/coordinator.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do curl -sf "http://127.0.0.1:$cp/readyz" >/dev/null && break; sleep 0.1; done
admin() { curl -sf -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' -X "$1" \
  "http://127.0.0.1:$cp$2" -d "$3"; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
case $model in
  2nn) spec='{"input_shape":[784],"layers":[{"type":"dense","units":200},{"type":"relu"},{"type":"dense","units":200},{"type":"relu"},{"type":"dense","units":10}],"loss":"softmax_ce"}'
       dim=784 label=784 ;;
  sensor) spec='{"input_shape":[64],"layers":[{"type":"dense","units":32},{"type":"relu"},{"type":"dense","units":8},{"type":"relu"},{"type":"dense","units":32},{"type":"relu"},{"type":"dense","units":64}],"loss":"mse"}'
       dim=64 label=-1 ;;
  *) echo "mqtt-bytes: 2nn or sensor" >&2; exit 2 ;;
esac
mid=$(admin POST /admin/v1/models "{\"name\":\"bytes-$model\",\"spec\":$spec,\"seed\":1}" | json '["model_id"]')
admin POST "/admin/v1/models/$mid/plans" '{"participants":1,"min_participants":1,"over_selection":1.0,"deadline_s":600,"rounds":50,"clip_norm":10}' >/dev/null
tokens=$(admin POST /admin/v1/enrollment-tokens '{"count":2}')
tok_http=$(echo "$tokens" | json '["tokens"][0]') tok_mqtt=$(echo "$tokens" | json '["tokens"][1]')
python3 - "$work/data.csv" "$dim" "$label" <<'PY'
import random, sys
path, dim, label = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(1)
with open(path, "w") as f:
    for i in range(60):
        row = ["%.4f" % random.random() for _ in range(dim)]
        if label >= 0:
            row.append(str(i % 10))
        f.write(",".join(row) + "\n")
PY

bp=$(free_port) gwpw=$(hex 12) bpw=$(hex 12)
printf 'bridge fl-bridge %s\ndevice gw-mqtt %s\n' "$bpw" "$gwpw" |
  bash "$root/deploy/mosquitto/gen-config.sh" "$work/broker" --port "$bp" --bind 127.0.0.1 >/dev/null
mosquitto -c "$work/broker/mosquitto.conf" >"$work/broker.log" 2>&1 &
pids+=($!)
wait_port "$bp"
FL_MQTT_BRIDGE_PASSWORD=$bpw "$build/server/mqtt/fl-mqtt-bridge" --broker "mqtt://127.0.0.1:$bp" \
  --username fl-bridge --coordinator "http://127.0.0.1:$cp" >"$work/bridge.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q broker_connected "$work/bridge.log" && break; sleep 0.05; done

# run NAME TARGET_PORT URL_HOSTPART [gateway args]: one gateway run through a counting relay.
run() {
  local name=$1 target=$2 scheme=$3; shift 3
  local pp; pp=$(free_port)
  python3 "$root/benches/tcp_count.py" "$pp" "$target" "$work/$name.count" &
  local relay=$!
  wait_port "$pp"
  FL_MQTT_PASSWORD=$gwpw "$build/client/fl-gateway" -s "${scheme/PORT/$pp}" -c "$work/data.csv" \
    -l "$label" -m 0 -n 1 -I "$@" >"$work/$name.out" 2>"$work/$name.err"
  kill -TERM "$relay"; wait "$relay" || true
  grep -q "^round" "$work/$name.out" || { echo "mqtt-bytes: $name uploaded nothing:"; cat "$work/$name.err"; exit 1; }
  sleep 1 # the round closes (1 participant) and the next one opens
  printf '%-22s %s\n' "$name" "$(cat "$work/$name.count")"
}
echo "== mqtt-bytes $model (load $(cut -d' ' -f1 /proc/loadavg))"
run http-enroll+round "$cp" "http://127.0.0.1:PORT" -d "$work/gw-http" -t "$tok_http"
run http-round "$cp" "http://127.0.0.1:PORT" -d "$work/gw-http"
run mqtt-enroll+round "$bp" "mqtt://gw-mqtt@127.0.0.1:PORT" -d "$work/gw-mqtt" -t "$tok_mqtt"
run mqtt-round "$bp" "mqtt://gw-mqtt@127.0.0.1:PORT" -d "$work/gw-mqtt"
dropdb "$db" 2>/dev/null || true
