#!/usr/bin/env bash
# Proves that deploy/Dockerfile makes a working coordinator image, on a machine without a Docker
# engine (Debian's podman, debootstrap; `podman run` is not needed):
#   1. a Debian 12 base: debootstrap --variant=minbase from the mirror in the machine's apt
#      sources, slimmed like the official -slim images; the tarball is cached (FL_IMAGE_CACHE,
#      default /var/cache/fleetlearn) and imported as debian:bookworm and debian:bookworm-slim;
#   2. podman build --isolation chroot of deploy/Dockerfile (never pulls from a registry);
#   3. the runtime image's size, checked against FL_IMAGE_MAX_MB (default 150);
#   4. the image is mounted read-only (podman image mount); fl-coordinator is started from it
#      with chroot the way a container runtime would: the image's user, environment, working
#      directory and entrypoint, secrets bind-mounted at /run/secrets, a writable volume at the
#      working directory, PostgreSQL on the host's loopback (PG* variables, e.g. pg_virtualenv);
#   5. the image's HEALTHCHECK command runs inside the image and must pass;
#   6. fl-sim (from the host build) runs a short fleet against it: every round must close with
#      every acknowledged update (tests/integration/deploy_check_rounds.py); SIGTERM stops it;
#   7. restarted with a mounted certificate (FL_TLS_CERT/KEY): HTTPS, and the HEALTHCHECK too.
#
#   pg_virtualenv deploy/test-image.sh --fl-sim build/sim/fl-sim
#
# Exit 0: passed; 77 with a line "SKIPPED: <why>" when podman or debootstrap (or root, which
# both need here) is missing; anything else: failed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FL_SIM=${FL_SIM:-}
CACHE=${FL_IMAGE_CACHE:-/var/cache/fleetlearn}
IMAGE=${FL_IMAGE:-localhost/fleetlearn/coordinator:test}
MAX_MB=${FL_IMAGE_MAX_MB:-150}
DEVICES=${FL_IMAGE_DEVICES:-6}
ROUNDS=${FL_IMAGE_ROUNDS:-2}
# Changing how the base is made changes this, which invalidates the cached tarball.
ROOTFS_RECIPE=2

while [ $# -gt 0 ]; do
  case "$1" in
    --fl-sim) FL_SIM=$2; shift 2 ;;
    --fl-sim=*) FL_SIM=${1#*=}; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "test-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

skip() { echo "SKIPPED: $*"; exit 77; }
die() { echo "test-image: FAILED: $*" >&2; exit 1; }
say() { printf '[test-image %5ss] %s\n' "$SECONDS" "$*"; }

command -v podman >/dev/null || skip "podman is not installed (apt-get install podman)"
command -v debootstrap >/dev/null || skip "debootstrap is not installed (apt-get install debootstrap)"
[ "$(id -u)" -eq 0 ] || skip "needs root (podman build --isolation chroot, chroot, mounts)"
[ -n "$FL_SIM" ] && [ -x "$FL_SIM" ] || die "no fl-sim executable (--fl-sim PATH)"
FL_SIM=$(realpath "$FL_SIM")
for t in curl python3 psql openssl; do command -v $t >/dev/null || die "$t is missing"; done
[ -n "${PGPORT:-}${PGHOST:-}" ] || die "no PostgreSQL: run under pg_virtualenv or set PGHOST/PGPORT/PGUSER/PGPASSWORD"

# --- the Debian mirror, from the machine's apt sources --------------------------------------
# Prints "URI FILE" for the first enabled deb source of the suite bookworm (deb822 .sources
# files, then one-line .list files).
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v file="$f" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && suites ~ /(^| )bookworm( |$)/ && enabled != "no" && uri != "")
          { print uri, file; found = 1; exit }
        types = suites = uri = ""; enabled = "yes"
      }
      BEGIN { enabled = "yes" }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^Types:/ { sub(/^Types:[ \t]*/, ""); types = $0 }
      /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
      /^URIs:/ { uri = $2 }
      /^Enabled:/ { enabled = tolower($2) }
      END { if (!found) flush() }' "$f" | head -n1 | grep . && return 0
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -E 's/\[[^]]*\]//' "$f" | awk -v file="$f" '$1 == "deb" && $3 == "bookworm" { print $2, file; exit }' | grep . && return 0
  done
  return 1
}

read -r MIRROR MIRROR_FILE < <(find_mirror) || die "no deb source for bookworm in /etc/apt/sources.list*"
say "Debian mirror $MIRROR (from $MIRROR_FILE)"

# --- 1. base rootfs (cached) ------------------------------------------------------------------
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one builder of the cache at a time; also serialises concurrent runs of this test
KEY=$(printf '%s\n' "$ROOTFS_RECIPE" "$MIRROR" "$(sha256sum "$MIRROR_FILE")" | sha256sum | cut -c1-16)
TARBALL=$CACHE/debian-bookworm-minbase-$KEY.tar
t0=$SECONDS
if [ ! -s "$TARBALL" ]; then
  say "debootstrap --variant=minbase bookworm (cache $TARBALL)"
  stage=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  cleanup_stage() { rm -rf "$stage"; }
  trap cleanup_stage EXIT
  # Two tries: a mirror hiccup should not fail the test.
  for try in 1 2; do
    if debootstrap --variant=minbase bookworm "$stage/root" "$MIRROR" >"$stage/debootstrap.log" 2>&1; then
      break
    fi
    tail -n 30 "$stage/debootstrap.log" >&2
    [ "$try" -lt 2 ] || die "debootstrap failed"
    say "debootstrap failed, once more"
    rm -rf "$stage/root"
  done
  r=$stage/root
  # The machine's own apt sources, so that apt-get in the Dockerfile reaches the same mirror
  # (and the security suite when the machine has it).
  rm -f "$r/etc/apt/sources.list"
  cp "$MIRROR_FILE" "$r/etc/apt/sources.list.d/"
  # Slim like the official -slim images: no documentation, manuals or translations in this
  # image nor in what apt installs later (copyright files stay), no apt caches.
  cat >"$r/etc/dpkg/dpkg.cfg.d/fleetlearn-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$r/etc/apt/apt.conf.d/fleetlearn-slim" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r/usr/share/man/"* "$r/usr/share/info/"* "$r/usr/share/groff/"* "$r/usr/share/lintian/"*
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$r/var/lib/apt/lists/"* "$r/var/cache/apt/"*.bin "$r/var/cache/apt/archives/"*.deb \
         "$r/var/log/"*.log "$r/var/log/apt/"* "$r/debootstrap"
  # The container runtime provides these.
  : >"$r/etc/resolv.conf"
  rm -f "$r/etc/hostname"
  tar --numeric-owner -C "$r" -cf "$stage/rootfs.tar" .
  mv "$stage/rootfs.tar" "$TARBALL"
  rm -rf "$stage"
  trap - EXIT
fi
t_rootfs=$((SECONDS - t0))
say "base rootfs $(du -m "$TARBALL" | cut -f1) MB ready in ${t_rootfs}s"

# Import as debian:bookworm (build stage) and debian:bookworm-slim (runtime stage) unless the
# images already come from this tarball (the label), which keeps podman's layer cache valid.
for tag in localhost/debian:bookworm localhost/debian:bookworm-slim; do
  have=$(podman image inspect --format '{{index .Labels "org.fleetlearn.rootfs"}}' "$tag" 2>/dev/null || true)
  if [ "$have" != "$KEY" ]; then
    say "podman import $tag"
    podman import --change "LABEL org.fleetlearn.rootfs=$KEY" --change 'CMD ["/bin/bash"]' \
      "$TARBALL" "$tag" >"$CACHE/last-import.log" 2>&1 ||
      { cat "$CACHE/last-import.log" >&2; die "podman import failed"; }
  fi
done
base_bytes=$(podman image inspect --format '{{.Size}}' localhost/debian:bookworm-slim)

# --- 2. build -----------------------------------------------------------------------------------
t0=$SECONDS
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
say "podman build -f deploy/Dockerfile -t $IMAGE"
podman build --isolation chroot --format docker --pull=never \
  --build-arg BUILD_IMAGE=localhost/debian:bookworm \
  --build-arg RUNTIME_IMAGE=localhost/debian:bookworm-slim \
  --ignorefile "$ROOT/deploy/Dockerfile.dockerignore" \
  -f "$ROOT/deploy/Dockerfile" -t "$IMAGE" "$ROOT" >"$CACHE/last-build.log" 2>&1 ||
  { tail -n 40 "$CACHE/last-build.log" >&2; die "podman build failed (log $CACHE/last-build.log)"; }
t_build=$((SECONDS - t0))
# The previous build of this tag, now untagged, is not kept (its build-stage layers are: cache).
if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true
fi

# --- 3. size --------------------------------------------------------------------------------------
bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
mb=$(( (bytes + 524288) / 1048576 ))
say "runtime image size: ${mb} MB (${bytes} bytes; base ${base_bytes} bytes; limit ${MAX_MB} MB); built in ${t_build}s"
echo "IMAGE_SIZE_MB=$mb"
[ "$mb" -lt "$MAX_MB" ] || die "image is ${mb} MB, limit ${MAX_MB} MB"

# --- 4. start the coordinator from the image ----------------------------------------------------
WORK=$(mktemp -d /tmp/fl-image-test.XXXXXX)
DB=fl_image_test_$$
MNT=
MOUNTS=()
COORD_PID=
cleanup() {
  local rc=$?
  if [ -n "$COORD_PID" ] && kill -0 "$COORD_PID" 2>/dev/null; then
    kill "$COORD_PID" 2>/dev/null || true
    wait "$COORD_PID" 2>/dev/null || true
  fi
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" || true; done
  [ -z "$MNT" ] || podman image unmount "$IMAGE" >/dev/null 2>&1 || true
  dropdb --if-exists "$DB" 2>/dev/null || true
  if [ $rc -ne 0 ] && [ -f "$WORK/coordinator.log" ]; then
    echo "--- coordinator log (last 40 lines) ---" >&2
    tail -n 40 "$WORK/coordinator.log" >&2
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# The image's configuration, as a container runtime reads it.
podman image inspect "$IMAGE" >"$WORK/inspect.json"
python3 - "$WORK/inspect.json" "$WORK" <<'EOF'
import json, shlex, sys
img = json.load(open(sys.argv[1]))[0]
cfg = img.get("Config") or {}
out = sys.argv[2]
hc = cfg.get("Healthcheck") or img.get("Healthcheck") or img.get("HealthCheck") or {}
test = hc.get("Test") or []
if not test or test[0] not in ("CMD", "CMD-SHELL"):
    sys.exit("image has no HEALTHCHECK (build with --format docker)")
health = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
user = cfg.get("User") or ""
if user in ("", "0", "root") or user.startswith("0:") or user.startswith("root"):
    sys.exit("image runs as root (User=%r)" % user)
with open(out + "/image.env", "w") as f:
    for e in cfg.get("Env") or []:
        f.write(e + "\n")
with open(out + "/image.sh", "w") as f:
    f.write("IMG_USER=%s\n" % shlex.quote(user))
    f.write("IMG_WORKDIR=%s\n" % shlex.quote(cfg.get("WorkingDir") or "/"))
    f.write("IMG_CMD=(%s)\n" % " ".join(shlex.quote(a) for a in (cfg.get("Entrypoint") or []) + (cfg.get("Cmd") or [])))
    f.write("IMG_HEALTH=(%s)\n" % " ".join(shlex.quote(a) for a in health))
    f.write("IMG_PORTS=%s\n" % shlex.quote(" ".join(sorted((cfg.get("ExposedPorts") or {}).keys()))))
EOF
# shellcheck disable=SC1091
. "$WORK/image.sh"
say "image user $IMG_USER, workdir $IMG_WORKDIR, ports $IMG_PORTS, entrypoint+cmd: ${IMG_CMD[*]}"
uid=${IMG_USER%%:*}
gid=${IMG_USER#*:}; [ "$gid" != "$IMG_USER" ] || gid=$uid
case "$uid$gid" in *[!0-9]*) die "image USER must be numeric uid:gid, got $IMG_USER" ;; esac

MNT=$(podman image mount "$IMAGE")
[ -x "$MNT/usr/local/bin/fl-coordinator" ] || die "no /usr/local/bin/fl-coordinator in the image"
# What a container runtime mounts: /proc, /dev, /sys; the secrets; a volume at the workdir.
# (Bind mounts on the read-only image mount: the image itself is never changed.)
mkdir -p "$WORK/secrets" "$WORK/volume"
bind() { mount --bind "$1" "$MNT$2"; MOUNTS+=("$MNT$2"); }
mount -t proc proc "$MNT/proc"; MOUNTS+=("$MNT/proc")
bind /dev /dev
bind /sys /sys
bind "$WORK/secrets" /run/secrets
bind "$WORK/volume" "$IMG_WORKDIR"
chown "$uid:$gid" "$WORK/secrets" "$WORK/volume"
chmod 0750 "$WORK/volume"
mapfile -t IMG_ENV <"$WORK/image.env"
# The secrets come from deploy/compose.yaml's init-secrets command, run inside the image as its
# user on the volume (twice: the second run must keep them), then mounted where the image's
# FL_ADMIN_TOKEN_FILE and FL_SIGNING_KEY point.
python3 - "$ROOT/deploy/compose.yaml" >"$WORK/init-secrets.sh" <<'EOF'
import sys, yaml
svc = yaml.safe_load(open(sys.argv[1]))["services"]["init-secrets"]
assert svc["entrypoint"] == ["/bin/sh", "-c"], svc["entrypoint"]
print(svc["command"][0].replace("$$", "$"))
EOF
init_secrets() {
  env -i "${IMG_ENV[@]}" chroot --userspec="$uid:$gid" "$MNT" /bin/sh -c "$(cat "$WORK/init-secrets.sh")" 9>&-
}
init_secrets >/dev/null || die "compose.yaml's init-secrets failed in the image"
sums=$(cd "$WORK/volume" && sha256sum admin-token signing-key.pem db-password)
init_secrets >/dev/null || die "compose.yaml's init-secrets failed on its second run"
[ "$sums" = "$(cd "$WORK/volume" && sha256sum admin-token signing-key.pem db-password)" ] ||
  die "init-secrets replaced existing secrets"
openssl pkey -in "$WORK/volume/signing-key.pem" -noout 2>/dev/null ||
  die "init-secrets wrote a signing key that OpenSSL cannot read"
ADMIN_TOKEN=$(cat "$WORK/volume/admin-token")
[ ${#ADMIN_TOKEN} -eq 64 ] || die "init-secrets wrote a bad admin token"
install -o "$uid" -g "$gid" -m 0400 "$WORK/volume/admin-token" "$WORK/secrets/fl_admin_token"
install -o "$uid" -g "$gid" -m 0400 "$WORK/volume/signing-key.pem" "$WORK/secrets/fl_signing_key"
find "$WORK/volume" -mindepth 1 -delete
chmod 0750 "$WORK/volume"

createdb "$DB"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
# Loopback TCP: the host's Unix socket directory is not inside the image.
DBURL="host=127.0.0.1 port=${PGPORT:-5432} user=${PGUSER:-postgres} dbname=$DB"
[ -z "${PGPASSWORD:-}" ] || DBURL="$DBURL password=$PGPASSWORD"
# `env -i`: the coordinator sees only the image's environment and what is set here.
run_in_image() {
  env -i "${IMG_ENV[@]}" HOME="$IMG_WORKDIR" "$@"
}
t0=$SECONDS
say "starting fl-coordinator from the image on $URL"
# Not through a shell function: $! must be the coordinator's own pid (env, chroot and sh exec).
# 9>&-: the cache lock stays with this script.
env -i "${IMG_ENV[@]}" HOME="$IMG_WORKDIR" FL_LISTEN=127.0.0.1:$PORT FL_DATABASE_URL="$DBURL" \
  FL_REPLICA_ID=image-test \
  chroot --userspec="$uid:$gid" "$MNT" /bin/sh -c 'cd "$0" && exec "$@"' "$IMG_WORKDIR" "${IMG_CMD[@]}" \
  >"$WORK/coordinator.log" 2>"$WORK/coordinator.stderr" 9>&- &
COORD_PID=$!
for _ in $(seq 1 150); do
  curl -fsS -o /dev/null "$URL/readyz" 2>/dev/null && break
  kill -0 "$COORD_PID" 2>/dev/null || { cat "$WORK/coordinator.stderr" >&2; die "fl-coordinator exited at start"; }
  sleep 0.2
done
curl -fsS -o /dev/null "$URL/readyz" || die "fl-coordinator not ready after 30 s"
say "ready in $((SECONDS - t0))s"
# Logs go to stdout: the structured log lines are in the stdout file, nothing in stderr.
grep -q ' event=' "$WORK/coordinator.log" || die "no structured log line on stdout"
[ ! -s "$WORK/coordinator.stderr" ] || { cat "$WORK/coordinator.stderr" >&2; die "fl-coordinator wrote to stderr"; }
# The bootstrap admin token came from the secret file: it must work and must not be printed.
grep -q "$ADMIN_TOKEN" "$WORK/coordinator.log" && die "the admin token appears in the log"
curl -fsS -o /dev/null -H "Authorization: Bearer $ADMIN_TOKEN" "$URL/admin/v1/models" ||
  die "the admin token from /run/secrets/fl_admin_token is not accepted"
# It signs with the mounted key, not with one of its own.
pub=$(openssl pkey -in "$WORK/secrets/fl_signing_key" -pubout -outform DER 2>/dev/null | tail -c 32 | od -An -tx1 | tr -d ' \n')
grep -q "event=signing_key_loaded public_key=$pub" "$WORK/coordinator.log" ||
  die "the coordinator does not use the signing key mounted at /run/secrets/fl_signing_key"
[ -z "$(ls -A "$WORK/volume")" ] || say "note: the coordinator wrote to its volume: $(ls -A "$WORK/volume")"

# --- 5. the image's HEALTHCHECK, run inside the image ------------------------------------------
run_in_image FL_LISTEN=127.0.0.1:$PORT chroot --userspec="$uid:$gid" "$MNT" "${IMG_HEALTH[@]}" ||
  die "the image's HEALTHCHECK command failed"
say "HEALTHCHECK passed"

# --- 6. a short fleet against the coordinator in the image --------------------------------------
t0=$SECONDS
say "fl-sim: $DEVICES devices, $ROUNDS rounds"
(cd "$WORK" && "$FL_SIM" --url "$URL" --admin-token "$ADMIN_TOKEN" --devices "$DEVICES" \
   --rounds "$ROUNDS" --dataset synthetic --model logreg --deadline 60 --threads 2 \
   --out "$WORK/sim-out") >"$WORK/sim.log" 2>&1 9>&- ||
  { cat "$WORK/sim.log" >&2; die "fl-sim failed against the coordinator in the image"; }
t_fleet=$((SECONDS - t0))
python3 "$ROOT/tests/integration/deploy_check_rounds.py" --url "$URL" --token "$ADMIN_TOKEN" \
  --rounds "$ROUNDS" --sim-log "$WORK/sim.log" --metrics "$URL" ||
  { cat "$WORK/sim.log" >&2; die "round check failed"; }

# A graceful stop on SIGTERM, as `docker stop` does.
stop_coordinator() {
  kill -TERM "$COORD_PID"
  for _ in $(seq 1 100); do kill -0 "$COORD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$COORD_PID" 2>/dev/null && die "fl-coordinator did not stop within 10 s of SIGTERM"
  wait "$COORD_PID" || die "fl-coordinator exited with status $? on SIGTERM"
  COORD_PID=
}
stop_coordinator

# --- 7. HTTPS from mounted certificate files; the HEALTHCHECK follows FL_TLS_CERT ------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=fl-coordinator -addext subjectAltName=IP:127.0.0.1 -keyout "$WORK/secrets/tls.key" -out "$WORK/secrets/tls.crt" 2>/dev/null
chown "$uid:$gid" "$WORK/secrets/tls.key" "$WORK/secrets/tls.crt"
chmod 0400 "$WORK/secrets/tls.key"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i "${IMG_ENV[@]}" HOME="$IMG_WORKDIR" FL_LISTEN=127.0.0.1:$PORT FL_DATABASE_URL="$DBURL" \
  FL_REPLICA_ID=image-test-tls FL_TLS_CERT=/run/secrets/tls.crt FL_TLS_KEY=/run/secrets/tls.key \
  chroot --userspec="$uid:$gid" "$MNT" /bin/sh -c 'cd "$0" && exec "$@"' "$IMG_WORKDIR" "${IMG_CMD[@]}" \
  >"$WORK/coordinator.log" 2>"$WORK/coordinator.stderr" 9>&- &
COORD_PID=$!
for _ in $(seq 1 150); do
  curl -fsS --cacert "$WORK/secrets/tls.crt" -o /dev/null "https://127.0.0.1:$PORT/readyz" 2>/dev/null && break
  kill -0 "$COORD_PID" 2>/dev/null || die "fl-coordinator with TLS exited at start"
  sleep 0.2
done
curl -fsS --cacert "$WORK/secrets/tls.crt" -o /dev/null "https://127.0.0.1:$PORT/readyz" ||
  die "no HTTPS with the mounted certificate"
run_in_image FL_LISTEN=127.0.0.1:$PORT FL_TLS_CERT=/run/secrets/tls.crt \
  chroot --userspec="$uid:$gid" "$MNT" "${IMG_HEALTH[@]}" || die "the HEALTHCHECK fails with TLS on"
say "HTTPS with the mounted certificate and the HEALTHCHECK over HTTPS passed"
stop_coordinator
# And the HEALTHCHECK notices a coordinator that is gone.
if run_in_image FL_LISTEN=127.0.0.1:$PORT FL_TLS_CERT=/run/secrets/tls.crt \
     chroot --userspec="$uid:$gid" "$MNT" "${IMG_HEALTH[@]}" 2>/dev/null; then
  die "the HEALTHCHECK passes with no coordinator running"
fi
say "times: base ${t_rootfs}s, build ${t_build}s, fleet ${t_fleet}s, total ${SECONDS}s"
echo "test-image: PASSED (image $IMAGE, ${mb} MB)"
