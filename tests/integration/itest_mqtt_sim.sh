#!/usr/bin/env bash
# fl-sim over MQTT in CI (docs/MQTT.md): a real Mosquitto broker configured by
# deploy/mosquitto/gen-config.sh with an account per device, fl-sim starting its coordinator
# and fl-mqtt-bridge (--bridge-bin), 20 devices, 2 rounds of logistic regression on the
# synthetic data set: every round produces a version, every upload is acknowledged, nothing
# is refused, and the bridge carried the requests. Bad --transport/--broker values are refused
# before anything starts.
#   itest_mqtt_sim.sh FL_SIM FL_COORDINATOR FL_MQTT_BRIDGE GEN_CONFIG
set -euo pipefail
sim=$1 coord=$2 bridge=$3 gen=$4
out=$(mktemp -d)
broker_pid=
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" || true; fi
  rm -rf "$out"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

refused() {
  local want=$1 rc=0 log
  shift
  log=$("$sim" --devices 5 --coordinator-bin /nonexistent --out "$out/refused" "$@" 2>&1) || rc=$?
  [ "$rc" -eq 2 ] || fail "fl-sim $* exited $rc, want 2: $log"
  grep -qF -- "$want" <<<"$log" || fail "fl-sim $*: no '$want' in: $log"
}
refused "unknown --transport" --transport carrier-pigeon
refused "--broker must be" --transport mqtt --broker http://127.0.0.1:1
refused "account prefix" --transport mqtt --broker mqtt://127.0.0.1:1
refused "go with --transport mqtt" --broker mqtt://sim-@127.0.0.1:1

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
{ echo "bridge fl-bridge bridge-pw"
  for i in $(seq 0 19); do printf 'device sim-%05d device-pw\n' "$i"; done
} | bash "$gen" "$out/broker" --port "$port" --bind 127.0.0.1 >/dev/null
mosquitto -c "$out/broker/mosquitto.conf" >"$out/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done

db_args=()
if [ -n "${PGPORT:-}" ]; then db_args=(--database-url=); fi
log=$out/sim.log
FL_MQTT_BRIDGE_PASSWORD=bridge-pw FL_SIM_MQTT_PASSWORD=device-pw OPENBLAS_NUM_THREADS=1 \
  "$sim" --devices 20 --rounds 2 --dataset synthetic --model logreg --transport mqtt \
  --broker "mqtt://sim-@127.0.0.1:$port" --bridge-bin "$bridge" --coordinator-bin "$coord" \
  "${db_args[@]}" --keep-work-dir --work-dir "$out/work" --out "$out/res" >"$log" 2>&1 ||
  { tail -30 "$log"; fail "fl-sim over MQTT exited non-zero"; }
grep -qE "rounds with a new version +2 of 2" "$log" || fail "not every round made a version: $(tail -20 "$log")"
grep -qE "uploads acknowledged +40$" "$log" || fail "not 40 acknowledged uploads: $(grep uploads "$log")"
grep -qE "refused requests +0$" "$log" || fail "requests refused: $(grep -A5 refused "$log")"
grep -q "event=stop requests=" "$out/work/bridge.log" || fail "the bridge did not stop cleanly"
n=$(sed -n 's/.*event=stop requests=\([0-9]*\).*/\1/p' "$out/work/bridge.log")
# Every device enrolls, checks in and uploads in both rounds (20 x (1 + 2 x 2)), and each round's
# base is downloaded at least once: fl-sim's devices share one model store (fl_model_store), so
# a device whose version another already verified does not download it again.
[ "$n" -ge 102 ] || fail "the bridge forwarded $n requests, want >= 102 (20 x (enroll + 2 x (check-in + upload)) + 2 downloads)"
echo "itest_mqtt_sim: ok (bridge forwarded $n requests)"
