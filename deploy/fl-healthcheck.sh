#!/bin/sh
# The image's HEALTHCHECK (installed as /usr/local/bin/fl-healthcheck): GET /healthz on the
# address of FL_LISTEN, over HTTPS when FL_TLS_CERT is set (without verifying the certificate,
# which is for the service's name: this is the local process). The host follows FL_LISTEN, so
# an IPv6-only listener ("[::]:8080") is probed on ::1 where 127.0.0.1 would find nothing:
#   HOST:PORT, [IPV6]:PORT  that address (a name as it resolves)
#   :PORT, 0.0.0.0:PORT     127.0.0.1 (every IPv4 address)
#   [::]:PORT               ::1 (every IPv6 address)
# FL_LISTEN unset: the coordinator's default, 127.0.0.1:8080. tests/integration/
# deploy_check_config.py runs this with a stand-in curl for each form.
set -eu
listen=${FL_LISTEN:-127.0.0.1:8080}
port=${listen##*:}
host=${listen%:*}
case $host in
  \[*\])
    host=${host#\[}
    host=${host%\]}
    ;;
esac
case $host in
  '' | 0.0.0.0) host=127.0.0.1 ;;
  :: | 0:0:0:0:0:0:0:0) host=::1 ;;
esac
case $host in
  *:*) host="[$host]" ;;
esac
scheme=http
[ -z "${FL_TLS_CERT:-}" ] || scheme=https
exec curl -fsS -g -k --max-time 4 -o /dev/null "$scheme://$host:$port/healthz"
