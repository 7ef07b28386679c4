#!/usr/bin/env bash
# The operator dashboard end to end (issue 19), against a real coordinator and PostgreSQL
# (pg_virtualenv's PG* variables) that served a small fleet (fl-sim --url):
# 1. the static route: Content-Types, security headers, ETag and 304, GET only, no way out of
#    the directory, /ui redirects to ui/;
# 2. `promtool check metrics` on the coordinator's /metrics after the rounds;
# 3. dashboard.test.mjs in headless Chromium (playwright-core from tests/e2e/package-lock.json)
#    for an admin, an operator and a viewer token, directly and under a path prefix.
# Screenshots go to ARTIFACTS (the build tree), never into the sources.
# 4. the install rule: `cmake --install` of server/ puts the files in <prefix>/share/fleetlearn/ui,
#    where the installed coordinator finds them by itself; --ui-dir names another directory;
#    a symbolic link in the directory is not followed.
# The browser reaches the coordinator directly, through deploy/nginx's template, and under a
# path prefix (/fleet/ on a second nginx server block proxying to the same upstream).
#   run.sh FL_SIM FL_COORDINATOR ARTIFACTS BUILD_DIR
set -euo pipefail
sim=$1
coord=$2
art=$3
build=$4
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mktemp -d)
chmod 0755 "$out" # nginx's workers read their temp directories under it
coord_pid=
pids=()
cleanup() {
  for p in "${pids[@]}" $coord_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$out"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  [ -f "$out/coordinator.log" ] && tail -30 "$out/coordinator.log"
  exit 1
}
[ -n "${PGPORT:-}" ] || { echo "SKIP: needs a PostgreSQL (run under pg_virtualenv)"; exit 77; }
nginx=$(command -v nginx || echo /usr/sbin/nginx)
for t in node npm promtool /usr/bin/chromium "$nginx"; do
  command -v "$t" >/dev/null || fail "$t is missing (bash deploy/install-deps.sh)"
done
mkdir -p "$art"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
base="http://127.0.0.1:$port"
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
# No --ui-dir: the build tree's share/fleetlearn/ui is found beside the executable, as an
# installed coordinator finds <prefix>/share/fleetlearn/ui.
FL_ADMIN_TOKEN=$token OPENBLAS_NUM_THREADS=1 "$coord" --listen="127.0.0.1:$port" \
  --signing-key="$out/coordinator-key.pem" --database-url= --checkin-interval=500 --tick=50 \
  >"$out/coordinator.log" 2>&1 &
coord_pid=$!
for _ in $(seq 100); do
  curl -sf "$base/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "$base/readyz" >/dev/null || fail "the coordinator did not become ready"

# ---- 1. the static route --------------------------------------------------------------
hdr() { curl -s -o /dev/null -D - "$@" | tr -d '\r'; }
status() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
h=$(hdr "$base/ui/")
grep -q '^HTTP/1.1 200' <<<"$h" || fail "/ui/: $h"
grep -qi '^content-type: text/html; charset=utf-8$' <<<"$h" || fail "/ui/ content type: $h"
grep -qi "^content-security-policy: default-src 'self'; script-src 'self';.*frame-ancestors 'none'$" <<<"$h" ||
  fail "/ui/ CSP: $h"
grep -qi '^x-content-type-options: nosniff$' <<<"$h" || fail "/ui/ nosniff: $h"
grep -qi '^cache-control: no-cache$' <<<"$h" || fail "/ui/ cache-control: $h"
etag=$(sed -n 's/^[Ee][Tt][Aa][Gg]: //p' <<<"$h")
[ -n "$etag" ] || fail "/ui/ has no ETag"
[ "$(status -H "If-None-Match: $etag" "$base/ui/index.html")" = 304 ] || fail "no 304 for its ETag"
[ "$(status -H 'If-None-Match: "0000"' "$base/ui/index.html")" = 200 ] || fail "a 304 for another ETag"
for f in app.js:text/javascript pages.js:text/javascript style.css:text/css vendor/chart.min.js:text/javascript; do
  hdr "$base/ui/${f%%:*}" | grep -qi "^content-type: ${f#*:}; charset=utf-8$" || fail "${f%%:*}: wrong type"
done
cmp -s <(curl -s "$base/ui/vendor/chart.min.js") /usr/share/javascript/chart.js/chart.min.js ||
  fail "vendor/chart.min.js is not Debian's Chart.js"
# No way out of the directory, no dotfiles, no guessed types, GET only.
for p in /ui/../admin/v1/info /ui/..%2f..%2fetc/passwd /ui/%2e%2e/x.js /ui/.hidden.js \
  /ui//etc/passwd.txt /ui/vendor/../index.html /ui/nope.js /ui/index.htm /ui/vendor/ \
  "/ui/a;b.js" /ui/a~b.js /ui/x.sh /ui/%69ndex.html; do
  c=$(status --path-as-is "$base$p")
  [ "$c" = 404 ] || fail "$p answered $c, want 404"
done
[ "$(status -X POST "$base/ui/index.html")" = 405 ] || fail "POST /ui/index.html is not 405"
h=$(hdr "$base/ui")
grep -q '^HTTP/1.1 308' <<<"$h" && grep -qi '^location: ui/$' <<<"$h" || fail "/ui: $h"

# ---- 4. installed, --ui-dir, symbolic links -------------------------------------------
cmake --install "$build/server" --prefix "$out/prefix" >/dev/null || fail "cmake --install"
ui="$out/prefix/share/fleetlearn/ui"
[ -f "$ui/index.html" ] && [ -f "$ui/vendor/chart.min.js" ] || fail "the install has no dashboard"
ln -s /etc/passwd "$ui/leak.txt"
mkdir -p "$out/alt"
echo "<!doctype html><title>alt</title>" >"$out/alt/index.html"
start_other() { # the installed coordinator on port $1, with further arguments
  local p=$1
  shift
  FL_ADMIN_TOKEN=$token "$out/prefix/bin/fl-coordinator" --listen="127.0.0.1:$p" --database-url= \
    --signing-key="$out/coordinator-key.pem" "$@" >>"$out/installed.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/readyz" >/dev/null && return; sleep 0.1; done
  fail "the installed coordinator did not start: $(tail -5 "$out/installed.log")"
}
p2=$(free_port)
start_other "$p2"
cmp -s <(curl -s "http://127.0.0.1:$p2/ui/") "$root/server/ui/index.html" ||
  fail "the installed coordinator does not serve <prefix>/share/fleetlearn/ui"
[ "$(status "http://127.0.0.1:$p2/ui/leak.txt")" = 404 ] || fail "a symbolic link was followed"
p3=$(free_port)
start_other "$p3" --ui-dir="$out/alt"
[ "$(curl -s "http://127.0.0.1:$p3/ui/")" = "$(cat "$out/alt/index.html")" ] || fail "--ui-dir is not used"
[ "$(status "http://127.0.0.1:$p3/ui/app.js")" = 404 ] || fail "--ui-dir: app.js from elsewhere"
for p in "${pids[@]}"; do kill "$p"; wait "$p" || true; done
pids=()

# ---- nginx: deploy's template, and a path prefix in front of the same upstream --------
lb_port=$(free_port)
pfx_port=$(free_port)
mkdir -p "$out/nginx/conf.d" "$out/nginx/tmp"
sed -e "s/\${FL_COORDINATOR_1}/127.0.0.1:$port/; s/\${FL_COORDINATOR_2}/127.0.0.1:$port/" \
  -e "s/\${FL_LB_PORT}/127.0.0.1:$lb_port/" "$root/deploy/nginx/templates/fleetlearn.conf.template" \
  >"$out/nginx/conf.d/fleetlearn.conf"
if grep -q '\${' "$out/nginx/conf.d/fleetlearn.conf"; then fail "a placeholder of the nginx template is left"; fi
cat >"$out/nginx/conf.d/prefix.conf" <<NGINX
server {
    listen 127.0.0.1:$pfx_port;
    location /fleet/ {
        proxy_pass http://fl_coordinators/;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$host;
    }
}
NGINX
cat >"$out/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $out/nginx/nginx.pid;
error_log $out/nginx.err warn;
events { worker_connections 256; }
http {
    client_body_temp_path $out/nginx/tmp/body;
    proxy_temp_path $out/nginx/tmp/proxy;
    fastcgi_temp_path $out/nginx/tmp/fastcgi;
    uwsgi_temp_path $out/nginx/tmp/uwsgi;
    scgi_temp_path $out/nginx/tmp/scgi;
    include $out/nginx/conf.d/*.conf;
}
NGINX
"$nginx" -e "$out/nginx.err" -p "$out/nginx" -c "$out/nginx/nginx.conf" -g 'daemon off;' \
  >/dev/null 2>>"$out/nginx.err" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$pfx_port/fleet/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$lb_port/ui/" >/dev/null || fail "nginx: $(cat "$out/nginx.err")"
curl -sf "http://127.0.0.1:$pfx_port/fleet/ui/" >/dev/null || fail "nginx /fleet/: $(cat "$out/nginx.err")"

# ---- the fleet ------------------------------------------------------------------------
FL_ADMIN_TOKEN=$token "$sim" --url "$base" --devices 12 --rounds 3 --participants 6 \
  --dataset synthetic --samples-per-device 60 --deadline 30 --bad-devices 0.2 --bad-kinds badsig \
  --model-name e2e --out "$out/sim" >"$out/sim.log" 2>&1 || { cat "$out/sim.log"; fail "fl-sim failed"; }

admin() { curl -sf -H "Authorization: Bearer $token" "$@"; }
mk_token() {
  admin -X POST -d "{\"role\":\"$1\",\"name\":\"e2e $1\"}" "$base/admin/v1/tokens" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}
viewer=$(mk_token viewer)
operator=$(mk_token operator)
model=$(admin "$base/admin/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["models"][-1]["model_id"])')
latest=$(admin "$base/admin/v1/models" | python3 -c 'import json, sys; print(json.load(sys.stdin)["models"][-1]["latest_version"])')
admin -X POST -d "{\"model_id\":$model,\"name\":\"stable\",\"version\":1}" "$base/admin/v1/channels" >/dev/null ||
  fail "channel"
admin -X POST -d "{\"model_id\":$model,\"version\":$latest,\"channel\":\"stable\",\"percent\":10}" \
  "$base/admin/v1/rollouts" >/dev/null || fail "rollout"

# A round left open (no device checks in any more): the open-round gauges and the page's table.
round=$(admin -X POST -d '{"participants":5,"deadline_s":3600}' "$base/admin/v1/models/$model/plans" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["round_id"])') || fail "plan"

# ---- 2. promtool on /metrics ----------------------------------------------------------
curl -sf "$base/metrics" >"$out/metrics.txt" || fail "no /metrics"
promtool check metrics <"$out/metrics.txt" || fail "promtool check metrics"
metric() { awk -v n="$1" '$1 == n { print $2 }' "$out/metrics.txt"; }
active=$(admin "$base/admin/v1/devices" | python3 -c 'import json, sys; print(sum(d["state"] == "active" for d in json.load(sys.stdin)["devices"]))')
[ "$(metric 'fl_devices{state="active"}')" = "$active" ] || fail "fl_devices{state=active} is not $active"
[ "$(metric fl_fleet_gauges_up)" = 1 ] || fail "fl_fleet_gauges_up is not 1"
open_rounds=$(admin "$base/admin/v1/rounds" | python3 -c 'import json, sys; print(sum(r["state"] == "open" for r in json.load(sys.stdin)["rounds"]))')
[ "$open_rounds" -ge 1 ] && [ "$(metric fl_rounds_open)" = "$open_rounds" ] ||
  fail "fl_rounds_open is $(metric fl_rounds_open), the API lists $open_rounds open: $(admin "$base/admin/v1/rounds")"
[ "$(metric "fl_round_target{model_id=\"$model\",round_id=\"$round\"}")" = 5 ] || fail "fl_round_target"
[ "$(metric "fl_round_accepted{model_id=\"$model\",round_id=\"$round\"}")" = 0 ] || fail "fl_round_accepted"
[ "$(metric 'fl_build_info{version="'"$("$coord" --version | awk '{print $NF}')"'"}')" = 1 ] ||
  fail "no fl_build_info with the coordinator's version"
[ "$(metric fl_commit_batch_size_count)" = "$(metric fl_commit_batches_total)" ] || fail "batch sizes"
[ "$(metric fl_commit_batch_size_sum)" = "$(metric fl_commit_updates_total)" ] || fail "batch size sum"
awk '$1 == "process_cpu_seconds_total" && $2 > 0 { ok = 1 } $1 == "process_resident_memory_bytes" &&
  $2 > 1e6 { ok2 = 1 } END { exit !(ok && ok2) }' "$out/metrics.txt" || fail "process metrics"

# ---- 3. the browser -------------------------------------------------------------------
# npm ci in the build tree: the sources keep only package.json and the lock file.
work="$art/node"
mkdir -p "$work"
cp "$here/package.json" "$here/package-lock.json" "$here/dashboard.test.mjs" "$work/"
(cd "$work" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error) || fail "npm ci"
FL_E2E_URL=$base FL_E2E_LB="http://127.0.0.1:$lb_port" \
  FL_E2E_PREFIXED="http://127.0.0.1:$pfx_port/fleet/ui/" FL_E2E_ADMIN=$token FL_E2E_OPERATOR=$operator FL_E2E_VIEWER=$viewer \
  FL_E2E_MODEL=$model FL_E2E_ROUND=$round FL_E2E_ARTIFACTS=$art node "$work/dashboard.test.mjs" || fail "dashboard test"
echo "PASS: dashboard end to end (screenshots in $art)"
