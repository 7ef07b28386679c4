/*
 * The handoff of a retrained version to a staged, gated rollout for its cohort (handoff.h).
 *
 * Two stages, both through the rollout machinery an operator uses (registry/rollouts.h): the
 * retrained version goes to rollout.percent of the cohort's devices while the gate's sample of
 * the cohort evaluates it against the channel's version; the gate decides as for any rollout
 * (a failed gate stops the rollout, its devices go back to the channel's version), and a
 * passed gate makes this pass raise the rollout to the whole cohort. Devices outside the cohort
 * never match the rollout (its cohort is the retraining plan's labels), so they stay on the
 * channel's version. The rollout stays live at 100%: promoting it would move the whole channel
 * to a version trained on one cohort, which is the operator's decision (docs/DRIFT.md 4).
 */
#include "drift/handoff.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "rounds/plan.h"
#include "store/store_pg.h"

static int set_note(PGconn *c, uint64_t event_id, const char *old, const char *note) {
  if (strcmp(old, note) == 0)
    return 0; /* unchanged: no write at every pass */
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, event_id);
  fl__pgp_text(&p, note);
  PGresult *r = fl__pg_exec(c, "UPDATE drift_events SET rollout_note = $2 WHERE event_id = $1", &p,
                            false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

static int audit(PGconn *c, const char *action, uint64_t rollout_id, json_t *detail) {
  char target[40];
  snprintf(target, sizeof target, "rollout:%" PRIu64, rollout_id);
  int rc = detail != NULL && fl__audit(c, "coordinator", action, target, detail) == 0 ? 0 : -1;
  json_decref(detail);
  return rc;
}

/* An ended retraining plan's row: its event, state, config, cohort labels, last version. */
enum { E_EVENT, E_PLAN, E_STATE, E_NOTE, E_CONFIG, E_LABELS, E_VERSION };

/* Stage 1: the rollout of the version at rollout.percent with the gate. note receives the
 * event's new rollout_note. 0 or -1. */
static int open_rollout(PGconn *c, uint64_t model_id, const PGresult *r, int i,
                        const fl_drift_policy *pol, const char **note) {
  uint64_t event_id = fl__pg_u64(r, i, E_EVENT), version = fl__pg_u64(r, i, E_VERSION);
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, pol->channel);
  fl__pgp_u64(&p, version);
  fl__pgp_f64(&p, pol->rollout_percent);
  fl__pgp_text(&p, PQgetvalue(r, i, E_LABELS));
  fl__pgp_text(&p, pol->gate);
  /* ON CONFLICT: the channel's one live rollout (rollouts_one_live) is someone else's. */
  PGresult *q = fl__pg_exec(c,
                            "INSERT INTO rollouts (channel_id, model_id, version, from_version,"
                            " percent, cohort, gate, gate_state)"
                            " SELECT ch.channel_id, ch.model_id, $3, ch.version, $4, $5::jsonb,"
                            " $6::jsonb, 'evaluating' FROM channels ch"
                            " WHERE ch.model_id = $1 AND ch.name = $2"
                            " ON CONFLICT DO NOTHING RETURNING rollout_id",
                            &p, false, NULL);
  if (q == NULL)
    return -1;
  if (PQntuples(q) == 0) {
    PQclear(q);
    fl__pgp_init(&p);
    fl__pgp_u64(&p, model_id);
    fl__pgp_text(&p, pol->channel);
    q = fl__pg_exec(c, "SELECT 1 FROM channels WHERE model_id = $1 AND name = $2", &p, false, NULL);
    if (q == NULL)
      return -1;
    *note = PQntuples(q) == 1 ? "rollout_active" : "no_channel"; /* both tried again */
    PQclear(q);
    return 0;
  }
  uint64_t rollout_id = fl__pg_u64(q, 0, 0);
  PQclear(q);
  fl__pgp_init(&p);
  fl__pgp_u64(&p, event_id);
  fl__pgp_u64(&p, rollout_id);
  q = fl__pg_exec(c,
                  "UPDATE drift_events SET rollout_id = $2, rollout_note = 'staged'"
                  " WHERE event_id = $1",
                  &p, false, NULL);
  if (q == NULL)
    return -1;
  PQclear(q);
  *note = "staged";
  json_t *gate = json_loads(pol->gate, 0, NULL);
  json_t *cohort = json_loads(PQgetvalue(r, i, E_LABELS), 0, NULL);
  fl__slog(FL_LOG_INFO, "drift_rollout",
           "event=%" PRIu64 " plan=%" PRIu64 " rollout=%" PRIu64 " version=%" PRIu64 " percent=%g",
           event_id, fl__pg_u64(r, i, E_PLAN), rollout_id, version, pol->rollout_percent);
  return audit(
      c, "drift.rollout", rollout_id,
      json_pack("{s:I, s:I, s:I, s:I, s:s, s:f, s:o, s:o}", "event_id", (json_int_t)event_id,
                "plan_id", (json_int_t)fl__pg_u64(r, i, E_PLAN), "model_id", (json_int_t)model_id,
                "version", (json_int_t)version, "channel", pol->channel, "percent",
                pol->rollout_percent, "cohort", cohort != NULL ? cohort : json_null(), "gate",
                gate != NULL ? gate : json_null()));
}

/* Retraining plans that ended without a rollout yet. */
static int stage_one(PGconn *c, uint64_t model_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  PGresult *r = fl__pg_exec(
      c,
      "SELECT e.event_id, q.plan_id, q.state, coalesce(e.rollout_note, ''), q.config::text,"
      " (q.config->'cohort'->'labels')::text,"
      " coalesce((SELECT x.result_version FROM rounds x WHERE x.plan_id = q.plan_id"
      "  AND x.result_version IS NOT NULL ORDER BY x.round_id DESC LIMIT 1), 0)"
      " FROM drift_events e JOIN plans q ON q.plan_id = e.retrain_plan_id"
      " WHERE e.model_id = $1 AND e.rollout_id IS NULL AND q.state <> 'active'"
      " AND coalesce(e.rollout_note, '') NOT IN ('off', 'retrain_stopped')",
      &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
    fl_plan plan;
    char msg[160];
    json_t *cfg = json_loads(PQgetvalue(r, i, E_CONFIG), 0, NULL);
    int bad = fl__plan_from_json(&plan, cfg, msg);
    json_decref(cfg);
    const char *note = "retrain_stopped";
    if (!bad && !plan.drift.rollout)
      note = "off"; /* the operator hands the version over */
    else if (!bad && strcmp(PQgetvalue(r, i, E_STATE), "done") == 0 &&
             fl__pg_u64(r, i, E_VERSION) != 0)
      rc = open_rollout(c, model_id, r, i, &plan.drift, &note);
    if (rc == 0 && strcmp(note, "staged") != 0)
      rc = set_note(c, fl__pg_u64(r, i, E_EVENT), PQgetvalue(r, i, E_NOTE), note);
  }
  PQclear(r);
  return rc;
}

/* Stage 2: the staged rollouts whose gate decided; and what became of a rollout later (an
 * operator's promotion or rollback), so that the event says it. */
static int stage_two(PGconn *c, uint64_t model_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT e.event_id, y.rollout_id, y.state, coalesce(y.gate_state, ''),"
                            " y.percent, e.rollout_note FROM drift_events e JOIN rollouts y"
                            " ON y.rollout_id = e.rollout_id WHERE e.model_id = $1"
                            " AND e.rollout_note IN ('staged', 'rolled_out')",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
    uint64_t event_id = fl__pg_u64(r, i, 0), rollout_id = fl__pg_u64(r, i, 1);
    const char *state = PQgetvalue(r, i, 2), *gate = PQgetvalue(r, i, 3);
    const char *old = PQgetvalue(r, i, 5), *note = NULL;
    bool staged = strcmp(old, "staged") == 0;
    if (strcmp(state, "promoted") == 0)
      note = "promoted"; /* the gate's auto_promote or an operator */
    else if (strcmp(gate, "failed") == 0)
      note = "gate_failed"; /* the gate stopped the rollout */
    else if (strcmp(state, "active") != 0 && strcmp(state, "paused") != 0)
      note = state; /* stopped or rolled back by an operator */
    else if (staged && strcmp(state, "active") == 0 && strcmp(gate, "passed") == 0) {
      fl__pgp_init(&p);
      fl__pgp_u64(&p, rollout_id);
      PGresult *u = fl__pg_exec(c,
                                "UPDATE rollouts SET percent = 100, updated_at = now()"
                                " WHERE rollout_id = $1 AND state = 'active'"
                                " AND gate_state = 'passed'",
                                &p, false, NULL);
      if (u == NULL) {
        rc = -1;
        break;
      }
      PQclear(u);
      note = "rolled_out";
      fl__slog(FL_LOG_INFO, "drift_rollout_raised", "event=%" PRIu64 " rollout=%" PRIu64, event_id,
               rollout_id);
      rc = audit(c, "rollout.raise", rollout_id,
                 json_pack("{s:I, s:f, s:f, s:s}", "event_id", (json_int_t)event_id, "from",
                           fl__pg_f64(r, i, 4), "percent", 100.0, "reason",
                           "the gate passed: the whole drifted cohort"));
    }
    if (rc == 0 && note != NULL)
      rc = set_note(c, event_id, old, note);
  }
  PQclear(r);
  return rc;
}

int fl__drift_handoff(PGconn *c, uint64_t model_id) {
  return stage_one(c, model_id) || stage_two(c, model_id) ? -1 : 0;
}
