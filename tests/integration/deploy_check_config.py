#!/usr/bin/env python3
"""Static checks of deploy/: the Dockerfile, compose.yaml, the nginx template and the Helm chart,
against each other and against the coordinator's real options (`fl-coordinator --help`).

  * versions: `fl-coordinator --version` and the chart's appVersion are the CMake project version;
  * Dockerfile: two stages, slim runtime base, numeric non-root USER, every FL_* variable it
    sets is a coordinator option; its HEALTHCHECK, deploy/fl-healthcheck.sh, probes /healthz
    where FL_LISTEN listens (a stand-in curl per address form; the real one on an IPv6-only
    listener);
  * compose.yaml parses; services, volumes and build paths it names exist; every replica gets
    the same signing key and a distinct replica id; every FL_* variable is an option; the nginx
    template's placeholders are all given by the lb service;
  * the Helm chart renders (deploy/helm/render, Go text/template + Sprig like helm) with the
    default values and with TLS / a database URL Secret / one replica; the manifests are checked
    (selectors, probes on /readyz and /healthz, Secret volumes, resources, PodDisruptionBudget,
    Prometheus annotations, the image's uid); renders that must fail (no signing key, TLS
    without a certificate Secret) fail; every top-level value is documented;
  * the documented commands work as written: every `helm install` in values.yaml's header and
    docs/DEPLOY.md renders with exactly its --set values and the Secrets it names are the ones
    the pods use; docs/DEPLOY.md's `podman build` uses --isolation chroot like test-image.sh.

  deploy_check_config.py --root REPO --coordinator PATH --work DIR

Exit 0: all passed; 1: a check failed; 77 ("SKIPPED: ...") only when the Go toolchain or Sprig
that renders the chart is missing, after every other check passed.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

failures = []
passed = 0


def check(cond, what):
    global passed
    if cond:
        passed += 1
    else:
        failures.append(what)
        print("FAILED: " + what)
    return cond


def project_version(root):
    """The version in the top-level CMakeLists.txt's project(), the only place it is written."""
    text = open(os.path.join(root, "CMakeLists.txt")).read()
    m = re.search(r"^project\(\s*fleetlearn\b[^)]*\bVERSION\s+([0-9]+\.[0-9]+\.[0-9]+)\b", text, re.M)
    check(m is not None, "CMakeLists.txt: project(fleetlearn VERSION x.y.z)")
    return m.group(1) if m else None


def version_checks(root, coordinator, version):
    """fl-coordinator --version and the chart's appVersion both say the CMake project version."""
    out = subprocess.run([coordinator, "--version"], capture_output=True, text=True).stdout
    check(out == "fl-coordinator %s\n" % version,
          "fl-coordinator --version is the project version %s (got %r)" % (version, out))
    chart = yaml.safe_load(open(os.path.join(root, "deploy/helm/fleetlearn/Chart.yaml")))
    app = chart.get("appVersion")
    check(isinstance(app, str) and app == version,
          "Chart.yaml: appVersion %r equals the CMake project version %s" % (app, version))


def coordinator_env(coordinator):
    out = subprocess.run([coordinator, "--help"], capture_output=True, text=True, check=True).stdout
    names = set(re.findall(r"\bFL_[A-Z0-9_]+\b", out))
    return names


# --- Dockerfile ---------------------------------------------------------------------------------
def dockerfile_checks(root, known):
    text = open(os.path.join(root, "deploy/Dockerfile")).read()
    logical = re.sub(r"\\\n", " ", text)
    lines = [l.strip() for l in logical.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, "Dockerfile: multi-stage (>= 2 FROM)")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", logical, re.M))
    runtime = froms[-1].split()[1] if froms else ""
    runtime = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), runtime)
    check(runtime.startswith("debian:bookworm-slim"), "Dockerfile: runtime stage on debian:bookworm-slim (%s)" % runtime)
    users = [l.split()[1] for l in lines if l.upper().startswith("USER ")]
    uid = users[-1].split(":")[0] if users else ""
    check(uid.isdigit() and uid != "0", "Dockerfile: numeric non-root USER (%s)" % users)
    hc = [l for l in lines if l.upper().startswith("HEALTHCHECK ")]
    check(hc and "/usr/local/bin/fl-healthcheck" in hc[0],
          "Dockerfile: HEALTHCHECK runs fl-healthcheck (%s)" % hc)
    check("COPY deploy/fl-healthcheck.sh /usr/local/bin/fl-healthcheck" in lines,
          "Dockerfile: fl-healthcheck is deploy/fl-healthcheck.sh")
    ignore = open(os.path.join(root, "deploy/Dockerfile.dockerignore")).read().split()
    check("!deploy/fl-healthcheck.sh" in ignore,
          "Dockerfile.dockerignore: keeps deploy/fl-healthcheck.sh in the context")
    check(os.access(os.path.join(root, "deploy/fl-healthcheck.sh"), os.X_OK),
          "deploy/fl-healthcheck.sh is executable (COPY keeps the mode)")
    env = {}
    for l in lines:
        if l.upper().startswith("ENV "):
            for k, v in re.findall(r"(\w+)=(\S+)", l[4:]):
                env[k] = v
    unknown = [k for k in env if k.startswith("FL_") and k not in known]
    check(not unknown, "Dockerfile: FL_* variables are coordinator options (unknown: %s)" % unknown)
    check("FL_ADMIN_TOKEN_FILE" in env and "FL_SIGNING_KEY" in env,
          "Dockerfile: admin token and signing key come from files")
    return int(uid) if uid.isdigit() else -1


# --- compose.yaml -------------------------------------------------------------------------------
def healthcheck_checks(root, work):
    """deploy/fl-healthcheck.sh probes /healthz where FL_LISTEN listens: with a stand-in curl for
    each form of the address, then with the real curl against an IPv6-only listener on ::1 (the
    image's probe used to call 127.0.0.1 whatever FL_LISTEN said)."""
    script = os.path.join(root, "deploy/fl-healthcheck.sh")
    fake = os.path.join(work, "fakecurl")
    os.makedirs(fake, exist_ok=True)
    with open(os.path.join(fake, "curl"), "w") as f:
        f.write('#!/bin/sh\nfor a; do last=$a; done\necho "$last"\n')
    os.chmod(os.path.join(fake, "curl"), 0o755)
    cases = [(None, None, "http://127.0.0.1:8080/healthz"),
             ("0.0.0.0:8080", None, "http://127.0.0.1:8080/healthz"),
             (":9000", None, "http://127.0.0.1:9000/healthz"),
             ("[::]:8080", None, "http://[::1]:8080/healthz"),
             ("[::1]:81", None, "http://[::1]:81/healthz"),
             ("[fd00::5]:8080", "/c.pem", "https://[fd00::5]:8080/healthz"),
             ("10.1.2.3:80", None, "http://10.1.2.3:80/healthz"),
             ("coord.example:443", "/c.pem", "https://coord.example:443/healthz")]
    for listen, cert, want in cases:
        env = {k: v for k, v in os.environ.items() if k not in ("FL_LISTEN", "FL_TLS_CERT")}
        env["PATH"] = fake + os.pathsep + env.get("PATH", "")
        if listen is not None:
            env["FL_LISTEN"] = listen
        if cert is not None:
            env["FL_TLS_CERT"] = cert
        out = subprocess.run(["/bin/sh", script], env=env, capture_output=True, text=True)
        check(out.returncode == 0 and out.stdout.strip() == want,
              "fl-healthcheck: FL_LISTEN=%s FL_TLS_CERT=%s probes %s (got %r %r)"
              % (listen, cert, want, out.stdout.strip(), out.stderr.strip()))
    real_ipv6_probe(script)


def real_ipv6_probe(script):
    import http.server
    import socket
    import threading

    class V6(http.server.HTTPServer):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    try:
        srv = V6(("::1", 0), H)
    except OSError as e:
        print("note: no IPv6 loopback here (%s): the real-curl probe is not run" % e)
        return
    port = srv.server_address[1]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    env = {k: v for k, v in os.environ.items() if k != "FL_TLS_CERT"}
    for listen, ok in (("[::]:%d" % port, True), ("0.0.0.0:%d" % port, False)):
        env["FL_LISTEN"] = listen
        rc = subprocess.run(["/bin/sh", script], env=env, capture_output=True).returncode
        check((rc == 0) == ok, "fl-healthcheck against an IPv6-only listener, FL_LISTEN=%s: %s"
              " (exit %d)" % (listen, "passes" if ok else "fails (nothing on IPv4)", rc))
    srv.shutdown()
    srv.server_close()


def compose_checks(root, known):
    deploy = os.path.join(root, "deploy")
    doc = yaml.safe_load(open(os.path.join(deploy, "compose.yaml")))
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    for name in ("postgres", "init-secrets", "coordinator-1", "coordinator-2", "lb"):
        check(name in services, "compose: service %s" % name)
    for name, svc in services.items():
        dep = svc.get("depends_on") or {}
        for d in (dep if isinstance(dep, list) else dep.keys()):
            check(d in services, "compose: %s depends on existing service %s" % (name, d))
        for v in svc.get("volumes") or []:
            src = v.split(":")[0]
            if src.startswith(".") or src.startswith("/"):
                check(os.path.exists(os.path.join(deploy, src)), "compose: %s mounts existing %s" % (name, src))
            else:
                check(src in volumes, "compose: %s uses declared volume %s" % (name, src))
        build = svc.get("build")
        if build:
            ctx = os.path.normpath(os.path.join(deploy, build.get("context", ".")))
            check(os.path.isfile(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))),
                  "compose: %s builds an existing Dockerfile" % name)
    coords = {n: s for n, s in services.items() if n.startswith("coordinator-")}
    check(len(coords) >= 2, "compose: at least two coordinator replicas")
    images = {s.get("image") for s in coords.values()} | {services.get("init-secrets", {}).get("image")}
    check(len(images) == 1, "compose: replicas and init-secrets use one image (%s)" % images)
    ids, keys = set(), set()
    for n, s in coords.items():
        env = s.get("environment") or {}
        unknown = [k for k in env if k.startswith("FL_") and k not in known]
        check(not unknown, "compose: %s FL_* variables are coordinator options (unknown: %s)" % (n, unknown))
        ids.add(env.get("FL_REPLICA_ID"))
        keys.add(env.get("FL_SIGNING_KEY"))
        check(env.get("FL_DATABASE_URL", "").find("host=postgres") >= 0, "compose: %s uses the postgres service" % n)
        check("password=" not in env.get("FL_DATABASE_URL", ""), "compose: %s has no password in its environment" % n)
    check(len(ids) == len(coords) and None not in ids, "compose: distinct FL_REPLICA_ID per replica")
    check(len(keys) == 1 and None not in keys, "compose: one signing key for every replica")
    # nginx: the template's placeholders are the lb service's environment; its servers are the replicas.
    lb = services.get("lb") or {}
    lb_env = lb.get("environment") or {}
    tdir = os.path.join(deploy, "nginx/templates")
    for f in sorted(os.listdir(tdir)):
        text = open(os.path.join(tdir, f)).read()
        body = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        holes = set(re.findall(r"\$\{(\w+)\}", body))
        check(holes and holes <= set(lb_env), "nginx %s: placeholders %s all set by lb" % (f, sorted(holes)))
        upstream_hosts = {str(v).split(":")[0] for k, v in lb_env.items() if k.startswith("FL_COORDINATOR_")}
        check(upstream_hosts == set(coords), "nginx: upstream servers are the replicas (%s)" % sorted(upstream_hosts))


# --- Helm chart ---------------------------------------------------------------------------------
def build_renderer(root, work):
    go = shutil.which("go")
    sprig = "/usr/share/gocode/src/github.com/Masterminds/sprig"
    if not go or not os.path.isdir(sprig):
        return None
    os.makedirs(work, exist_ok=True)
    exe = os.path.join(work, "chart-render")
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=os.path.join(work, "gocache"), GOFLAGS="")
    subprocess.run([go, "build", "-o", exe, os.path.join(root, "deploy/helm/render/main.go")],
                   env=env, check=True)
    return exe


def render(exe, chart, sets, expect_ok=True):
    args = [exe]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args + ["--notes", chart], capture_output=True, text=True)
    if not expect_ok:
        return None, p.returncode, p.stderr
    if p.returncode != 0:
        check(False, "chart renders with %s: %s" % (sets, p.stderr.strip()))
        return None, p.returncode, p.stderr
    manifests, _, notes = p.stdout.partition("\nNOTES:\n")
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    check(notes.strip() != "", "chart: NOTES.txt renders")
    return docs, 0, ""


def subset(a, b):
    return all(b.get(k) == v for k, v in (a or {}).items())


def chart_checks(exe, chart, known, uid, values):
    base = ["signingKey.secretName=fl-signing-key", "database.host=pg.example",
            "database.passwordSecret.name=fl-db", "adminToken.secretName=fl-admin-token"]
    docs, _, _ = render(exe, chart, base)
    if docs is None:
        return
    kinds = {d["kind"]: d for d in docs}
    check(set(kinds) == {"Deployment", "Service", "PodDisruptionBudget"},
          "chart: Deployment, Service, PodDisruptionBudget (%s)" % sorted(kinds))
    dep, svc, pdb = kinds.get("Deployment"), kinds.get("Service"), kinds.get("PodDisruptionBudget")
    if not dep:
        return
    spec = dep["spec"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    check(spec["replicas"] == values["replicaCount"], "chart: replicas = replicaCount")
    check(subset(spec["selector"]["matchLabels"], labels), "chart: Deployment selector matches the pods")
    check(svc and subset(svc["spec"]["selector"], labels), "chart: Service selector matches the pods")
    check(pdb and subset(pdb["spec"]["selector"]["matchLabels"], labels), "chart: PDB selector matches the pods")
    check(pdb and pdb["spec"].get("minAvailable") == 1, "chart: PDB minAvailable 1")
    ann = pod["metadata"].get("annotations") or {}
    c = pod["spec"]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}.get("http")
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics"
          and ann.get("prometheus.io/port") == str(port), "chart: Prometheus scrape annotations")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "chart: readiness probe on /readyz")
    check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "chart: liveness probe on /healthz")
    for p in ("readinessProbe", "livenessProbe", "startupProbe"):
        check(c[p]["httpGet"]["port"] == "http" and c[p]["httpGet"]["scheme"] == "HTTP",
              "chart: %s on the http port over HTTP" % p)
    env = {e["name"]: e for e in c["env"]}
    unknown = [k for k in env if k.startswith("FL_") and k not in known]
    check(not unknown, "chart: FL_* variables are coordinator options (unknown: %s)" % unknown)
    check(env.get("FL_LISTEN", {}).get("value") == "0.0.0.0:%d" % port, "chart: FL_LISTEN on the container port")
    check(env.get("PGPASSWORD", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "fl-db",
          "chart: database password from its Secret")
    check("password" not in env.get("FL_DATABASE_URL", {}).get("value", ""), "chart: no password in FL_DATABASE_URL")
    check(env.get("FL_REPLICA_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          "chart: replica id is the pod name")
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    check(all(n in vols for n in mounts.values()), "chart: every mount has a volume")
    for var, secret in (("FL_SIGNING_KEY", "fl-signing-key"), ("FL_ADMIN_TOKEN_FILE", "fl-admin-token")):
        path = env.get(var, {}).get("value", "")
        d, f = os.path.split(path)
        v = vols.get(mounts.get(d, ""), {})
        ok = v.get("secret", {}).get("secretName") == secret and f in [i["path"] for i in v["secret"].get("items", [])]
        check(ok, "chart: %s=%s is a file of Secret %s" % (var, path, secret))
    res = c.get("resources") or {}
    check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
          "chart: resources requests and memory limit")
    psc = pod["spec"].get("securityContext") or {}
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == uid,
          "chart: runs as non-root uid %d, the image's user" % uid)
    check(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, "chart: read-only root filesystem")
    check(pod["spec"].get("automountServiceAccountToken") is False, "chart: no service account token")

    # TLS, the database URL from a Secret, one replica: no PDB, HTTPS probes.
    docs, _, _ = render(exe, chart, ["signingKey.secretName=k", "database.urlSecret.name=fl-db-url",
                                     "tls.enabled=true", "tls.secretName=fl-tls", "replicaCount=1"])
    if docs:
        kinds = {d["kind"]: d for d in docs}
        check("PodDisruptionBudget" not in kinds, "chart: no PDB for one replica")
        c = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        check(all(c[p]["httpGet"]["scheme"] == "HTTPS" for p in ("readinessProbe", "livenessProbe", "startupProbe")),
              "chart: HTTPS probes with TLS")
        check(env.get("FL_TLS_CERT", {}).get("value") == "/etc/fleetlearn/tls/tls.crt", "chart: FL_TLS_CERT from the TLS Secret")
        check(env.get("FL_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "fl-db-url",
              "chart: FL_DATABASE_URL from its Secret")
        check("PGPASSWORD" not in env, "chart: no PGPASSWORD with a URL Secret")
        check(env.get("FL_ADMIN_TOKEN_FILE", {}).get("value") == "", "chart: no bootstrap token file without its Secret")

    for sets, msg in ((["database.host=pg"], "signingKey.secretName is required"),
                      (["signingKey.secretName=k"], "database.host"),
                      (["signingKey.secretName=k", "database.host=pg", "tls.enabled=true"], "tls.secretName")):
        _, rc, err = render(exe, chart, sets, expect_ok=False)
        check(rc != 0 and msg in err, "chart: render with %s fails naming %s" % (sets, msg))


def documented_installs(root):
    """The `helm install` commands of values.yaml's header comment and docs/DEPLOY.md, each as
    (where, argv): continuation lines joined, comment markers removed."""
    sources = []
    header = []
    for l in open(os.path.join(root, "deploy/helm/fleetlearn/values.yaml")).read().splitlines():
        if not l.startswith("#"):
            break
        header.append(l[1:])
    sources.append(("values.yaml header", header))
    sources.append(("docs/DEPLOY.md", open(os.path.join(root, "docs/DEPLOY.md")).read().splitlines()))
    found = []
    for where, lines in sources:
        i = 0
        while i < len(lines):
            cmd = lines[i].strip()
            if cmd.startswith("helm install"):
                while cmd.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    cmd = cmd[:-1] + " " + lines[i].strip()
                found.append((where, shlex.split(cmd)))
            i += 1
    return found


def install_checks(exe, root, chart):
    """Every documented `helm install` renders as written, and the Secrets it names are the ones
    the pods mount or read."""
    installs = documented_installs(root)
    check(any(w == "values.yaml header" for w, _ in installs), "values.yaml header shows a helm install")
    for where, argv in installs:
        check(len(argv) >= 4 and os.path.normpath(argv[3]) == "deploy/helm/fleetlearn",
              "%s: helm install RELEASE deploy/helm/fleetlearn (%s)" % (where, argv[:4]))
        sets, k = [], 4
        while k < len(argv):
            a = argv[k]
            if a == "--set" and k + 1 < len(argv):
                sets.append(argv[k + 1])
                k += 2
            elif a.startswith("--set="):
                sets.append(a[len("--set="):])
                k += 1
            else:
                check(False, "%s: helm install option %s is understood by the check" % (where, a))
                k += 1
        p = subprocess.run([exe] + sum((["--set", x] for x in sets), []) + ["--name", argv[2], chart],
                           capture_output=True, text=True)
        if not check(p.returncode == 0, "%s: `%s` renders: %s" % (where, " ".join(argv), p.stderr.strip())):
            continue
        manifests = [d for d in yaml.safe_load_all(p.stdout) if d]
        dep = next((d for d in manifests if d.get("kind") == "Deployment"), None)
        if not check(dep is not None, "%s: renders a Deployment" % where):
            continue
        pod = dep["spec"]["template"]["spec"]
        used = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add(ref["name"])
        named = {v.split("=", 1)[1] for v in sets
                 if re.match(r"[\w.]*(secretName|Secret\.name)=", v)}
        check(named and named <= used, "%s: Secrets %s are used by the pods (%s)" % (where, sorted(named), sorted(used)))


def docs_checks(root):
    """docs/DEPLOY.md's podman build is the one deploy/test-image.sh proves (chroot isolation)."""
    text = open(os.path.join(root, "docs/DEPLOY.md")).read()
    builds = re.findall(r"^ +(podman build(?:[^\n]*\\\n)*[^\n]*)", text, re.M)
    check(builds, "docs/DEPLOY.md shows a podman build")
    for b in builds:
        check("--isolation chroot" in b, "docs/DEPLOY.md: podman build has --isolation chroot: %s" % b.split("\n")[0])


def values_documented(path):
    lines = open(path).read().splitlines()
    blocks, cur = [], None
    comments = []
    for l in lines:
        m = re.match(r"^([A-Za-z][\w-]*):", l)
        if m:
            cur = [m.group(1), bool(comments)]
            blocks.append(cur)
            comments = []
        elif l.startswith("#"):
            comments.append(l)
        elif l.strip().startswith("#") and cur is not None:
            cur[1] = True
        elif not l.strip():
            pass
        else:
            comments = []
    undocumented = [k for k, doc in blocks if not doc]
    check(not undocumented, "chart: every top-level value documented (undocumented: %s)" % undocumented)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    version_checks(a.root, a.coordinator, project_version(a.root))
    known = coordinator_env(a.coordinator)
    check("FL_DATABASE_URL" in known and "FL_ADMIN_TOKEN_FILE" in known,
          "fl-coordinator --help lists its environment variables")
    uid = dockerfile_checks(a.root, known)
    healthcheck_checks(a.root, a.work)
    compose_checks(a.root, known)
    docs_checks(a.root)
    chart = os.path.join(a.root, "deploy/helm/fleetlearn")
    values = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    values_documented(os.path.join(chart, "values.yaml"))
    exe = build_renderer(a.root, a.work)
    skipped = None
    if exe is None:
        skipped = "chart rendering needs golang-go and golang-github-masterminds-sprig-dev"
    else:
        chart_checks(exe, chart, known, uid, values)
        install_checks(exe, a.root, chart)
    print("deploy config: %d passed, %d failed" % (passed, len(failures)))
    if failures:
        return 1
    if skipped:
        print("SKIPPED: " + skipped)
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
