#!/usr/bin/env bash
# deploy/prometheus and deploy/grafana checked against each other and the coordinator (CI:
# unit.observability_config): promtool check rules on every rule file, promtool test rules on
# tests/*.yml, and every metric that a rule or a Grafana panel names exists in
# server/http/metrics.c (a renamed metric would otherwise leave an alert that never fires).
#   check.sh REPO_ROOT
set -euo pipefail
root=$1
command -v promtool >/dev/null || { echo "FAIL: promtool is missing (bash deploy/install-deps.sh)"; exit 1; }
promtool check rules "$root"/deploy/prometheus/*.yml
for t in "$root"/deploy/prometheus/tests/*.yml; do promtool test rules "$t"; done
python3 - "$root" <<'PY'
import glob, json, re, sys
root = sys.argv[1]
src = open(root + "/server/http/metrics.c").read()
known = set(re.findall(r'\b((?:fl_[a-z]|process_)[a-z_]*)', src))
known |= {"up"}
def base(name):
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and name[: -len(suf)] in known:
            return name[: -len(suf)]
    return name
exprs = []
for f in glob.glob(root + "/deploy/prometheus/*.yml"):
    exprs += [(f, e) for e in re.findall(r"expr: *\|?\n?((?:.+\n?)(?:(?: {10,}).+\n?)*)", open(f).read())]
dash = json.load(open(root + "/deploy/grafana/fleetlearn.json"))
ids = set()
for p in dash["panels"]:
    assert p["id"] not in ids, "duplicate panel id %d" % p["id"]
    ids.add(p["id"])
    for t in p.get("targets", []):
        exprs.append(("fleetlearn.json: " + p["title"], t["expr"]))
bad = []
for where, e in exprs:
    for name in re.findall(r"\b((?:fl|process)_[a-z_]+)\b", e):
        if base(name) not in known:
            bad.append("%s: %s" % (where, name))
if bad:
    sys.exit("FAIL: metrics that fl-coordinator does not export:\n  " + "\n  ".join(bad))
print("observability config: %d expressions, every metric exists (%d known)" % (len(exprs), len(known)))
PY
