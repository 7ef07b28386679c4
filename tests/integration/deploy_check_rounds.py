#!/usr/bin/env python3
"""Checks, through the admin API and /metrics, that a fleet run by fl-sim was served correctly:

  * the model has exactly --rounds closed rounds, none abandoned;
  * every closed round closed exactly once: one result version per round, each version after
    the first made by exactly one closed round, its parent the round's base version, the
    versions forming one chain 1 -> 2 -> ... -> rounds+1;
  * the rounds' accepted counts add up to the uploads acknowledged by the fleet (the
    "uploads acknowledged" line of fl-sim's summary); with --crashed-replica, at least to them
    (a killed replica may have committed uploads it could not acknowledge any more);
  * with --metrics (one URL per replica): the replicas' fl_rounds_closed_total add up to the
    rounds and their fl_updates_accepted_total to the acknowledged uploads; with
    --all-replicas-serve, every replica acknowledged some updates.

Used by deploy/test-image.sh and deploy/test-replicas.sh. Exit 0 when every check holds.
"""
import argparse
import json
import re
import sys
import urllib.request


def get(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def metric(text, name):
    total = 0.0
    found = False
    for line in text.splitlines():
        m = re.match(r"^%s(?:\{[^}]*\})?\s+([0-9.eE+-]+)$" % re.escape(name), line)
        if m:
            total += float(m.group(1))
            found = True
    if not found:
        raise SystemExit("metric %s not exported" % name)
    return int(total)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="admin API base URL")
    ap.add_argument("--token", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--sim-log", required=True, help="fl-sim's output")
    ap.add_argument("--metrics", action="append", default=[], help="a replica's base URL")
    ap.add_argument("--all-replicas-serve", action="store_true")
    ap.add_argument("--crashed-replica", action="store_true",
                    help="a replica was killed: its uploads committed but not acknowledged may "
                         "count in the rounds, so accepted >= acknowledged")
    a = ap.parse_args()
    errors = []

    log = open(a.sim_log, encoding="utf-8", errors="replace").read()
    m = re.search(r"uploads acknowledged\s+(\d+)", log)
    if not m:
        raise SystemExit("no 'uploads acknowledged' line in " + a.sim_log)
    acked = int(m.group(1))

    models = json.loads(get(a.url + "/admin/v1/models", a.token)).get("models") or []
    if len(models) != 1:
        raise SystemExit("expected the fleet's one model, found %d" % len(models))
    model_id = models[0]["model_id"]
    rounds = json.loads(get("%s/admin/v1/rounds?model_id=%d" % (a.url, model_id), a.token))
    rounds = rounds.get("rounds") or []
    versions = json.loads(get("%s/admin/v1/models/%d/versions" % (a.url, model_id), a.token))
    versions = versions.get("versions") or []

    closed = [r for r in rounds if r["state"] == "closed"]
    others = [(r["round_id"], r["state"]) for r in rounds if r["state"] != "closed"]
    if len(closed) != a.rounds:
        errors.append("%d closed rounds, expected %d" % (len(closed), a.rounds))
    if others:
        errors.append("rounds not closed: %s" % others)
    by_round = {}
    for v in versions:
        if v["version"] == 1:
            continue
        by_round.setdefault(v.get("round_id"), []).append(v)
    for r in closed:
        made = by_round.pop(r["round_id"], [])
        if len(made) != 1:
            errors.append("round %d made %d versions" % (r["round_id"], len(made)))
            continue
        v = made[0]
        if r["result_version"] != v["version"]:
            errors.append("round %d: result_version %s, version row %s"
                          % (r["round_id"], r["result_version"], v["version"]))
        if v["parent_version"] != r["base_version"]:
            errors.append("version %d: parent %s, round base %s"
                          % (v["version"], v["parent_version"], r["base_version"]))
        if r["accepted"] < r["min"]:
            errors.append("round %d closed with %d < min %d" % (r["round_id"], r["accepted"], r["min"]))
    if by_round:
        errors.append("versions without a closed round: %s" % sorted(by_round, key=str))
    chain = sorted(v["version"] for v in versions)
    if chain != list(range(1, a.rounds + 2)):
        errors.append("versions %s, expected 1..%d" % (chain, a.rounds + 1))
    accepted = sum(r["accepted"] for r in closed)
    if accepted < acked or (accepted != acked and not a.crashed_replica):
        errors.append("rounds accepted %d updates, the fleet was acknowledged %d" % (accepted, acked))

    per_replica = []
    for base in a.metrics:
        text = get(base + "/metrics")
        per_replica.append((base, metric(text, "fl_rounds_closed_total"),
                            metric(text, "fl_updates_accepted_total")))
    if per_replica:
        closes = sum(p[1] for p in per_replica)
        acc = sum(p[2] for p in per_replica)
        if closes != a.rounds:
            errors.append("replicas closed %d rounds in all, expected %d" % (closes, a.rounds))
        if acc != acked:
            errors.append("replicas acknowledged %d updates in all, the fleet %d" % (acc, acked))
        if a.all_replicas_serve:
            idle = [p[0] for p in per_replica if p[2] == 0]
            if idle:
                errors.append("replicas that acknowledged nothing: %s" % idle)

    print("model %d: %d rounds closed, accepted %s, fleet acknowledged %d"
          % (model_id, len(closed), [r["accepted"] for r in closed], acked))
    for base, closes, acc in per_replica:
        print("  replica %s: closed %d rounds, acknowledged %d updates" % (base, closes, acc))
    for e in errors:
        print("CHECK FAILED: " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
