/*
 * Automatic retraining: a drift event of cohort X opens a training plan for X (retrain.h).
 */
#include "drift/retrain.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "rounds/plan.h"
#include "rounds/rounds.h"
#include "store/store_pg.h"

typedef struct open_event {
  uint64_t event_id, plan_id;
  char cohort[FL_COHORT_NAME_MAX];
  char note[32];
} open_event;

static int set_note(PGconn *c, const open_event *e, const char *note) {
  if (strcmp(e->note, note) == 0)
    return 0; /* unchanged: no write at every pass */
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, e->event_id);
  fl__pgp_text(&p, note);
  PGresult *r = fl__pg_exec(c, "UPDATE drift_events SET retrain_note = $2 WHERE event_id = $1", &p,
                            false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

/* Why the cohort cannot be retrained now ("" when it can); NULL on a database error. */
static const char *blocked(PGconn *c, uint64_t model_id, const fl_drift_policy *pol,
                           const open_event *e) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, pol->label);
  fl__pgp_text(&p, e->cohort);
  fl__pgp_f64(&p, pol->cooldown_s);
  PGresult *r = fl__pg_exec(
      c,
      "SELECT EXISTS (SELECT 1 FROM drift_events WHERE model_id = $1 AND cohort_label = $2"
      "  AND cohort = $3 AND retrain_plan_id IS NOT NULL"
      "  AND detected_at > now() - make_interval(secs => $4)),"
      " (SELECT count(*) FROM plans WHERE state = 'active' AND drift_event_id IS NOT NULL),"
      " EXISTS (SELECT 1 FROM plans q JOIN drift_events e ON e.event_id = q.drift_event_id"
      "  WHERE q.state = 'active' AND e.model_id = $1 AND e.cohort_label = $2"
      "  AND e.cohort = $3)",
      &p, false, NULL);
  if (r == NULL)
    return NULL;
  const char *why = "";
  if (strcmp(PQgetvalue(r, 0, 0), "t") == 0)
    why = "cooldown";
  else if (fl__pg_u64(r, 0, 1) >= pol->max_concurrent)
    why = "max_concurrent";
  else if (strcmp(PQgetvalue(r, 0, 2), "t") == 0)
    why = "retrain_active"; /* an earlier event's retraining of the cohort still runs */
  PQclear(r);
  return why;
}

/* The plan's training cohort (rounds/cohort.h) narrowed to label = value: "cohort": {"labels":
 * {label: value, ...}}, its other labels and conditions kept, so that selection draws only the
 * drifted cohort's devices that the plan would have drawn. -1 on allocation failure. */
static int cohort_with_label(json_t *cfg, const char *label, const char *value) {
  json_t *co = json_object_get(cfg, "cohort");
  if (!json_is_object(co)) {
    co = json_object();
    if (co == NULL || json_object_set_new(cfg, "cohort", co))
      return -1;
  }
  json_t *labels = json_object_get(co, "labels");
  if (!json_is_object(labels)) {
    labels = json_object();
    if (labels == NULL || json_object_set_new(co, "labels", labels))
      return -1;
  }
  return json_object_set_new(labels, label, json_string(value));
}

/* A round of the retraining plan draws from the cohort alone: a plan sized for the whole fleet
 * (participants above the cohort's active devices) would wait out every deadline. Its sizes
 * shrink to the cohort, min_participants in proportion (an async plan's buffer likewise). */
static int fit_cohort(json_t *cfg, const fl_plan *plan, uint64_t devices) {
  if (devices == 0 || plan->participants <= devices)
    return 0;
  if (FL_PLAN_IS_ASYNC(plan)) {
    json_object_del(cfg, "participants");
    json_object_del(cfg, "min_participants");
    return json_object_set_new(cfg, "buffer_size", json_integer((json_int_t)devices));
  }
  uint64_t min = (uint64_t)plan->min_participants * devices / plan->participants;
  return json_object_set_new(cfg, "participants", json_integer((json_int_t)devices)) ||
         json_object_set_new(cfg, "min_participants", json_integer(min > 0 ? (json_int_t)min : 1));
}

/* Active devices whose labels contain the retraining plan's cohort labels. -1 on error. */
static int64_t cohort_devices(PGconn *c, const json_t *cfg) {
  char *lt = json_dumps(json_object_get(json_object_get(cfg, "cohort"), "labels"), JSON_COMPACT);
  if (lt == NULL)
    return -1;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_text(&p, lt);
  PGresult *r =
      fl__pg_exec(c, "SELECT count(*) FROM devices WHERE state = 'active' AND labels @> $1::jsonb",
                  &p, false, NULL);
  free(lt);
  int64_t n = r != NULL ? fl__pg_i64(r, 0, 0) : -1;
  PQclear(r);
  return n;
}

/* The event's plan as the retraining plan: its config with the cohort and the rounds, sized to
 * the cohort. */
static json_t *retrain_config(PGconn *c, const open_event *e, const fl_drift_policy *pol) {
  fl_pgp p;
  fl_plan plan;
  char msg[160];
  fl__pgp_init(&p);
  fl__pgp_u64(&p, e->plan_id);
  PGresult *r =
      fl__pg_exec(c, "SELECT config::text FROM plans WHERE plan_id = $1", &p, false, NULL);
  json_t *cfg = r != NULL && PQntuples(r) == 1 ? json_loads(PQgetvalue(r, 0, 0), 0, NULL) : NULL;
  PQclear(r);
  if (cfg == NULL)
    return NULL;
  int64_t n = -1;
  if (cohort_with_label(cfg, pol->label, e->cohort) ||
      json_object_set_new(cfg, "rounds", json_integer(pol->retrain_rounds)) ||
      (n = cohort_devices(c, cfg)) < 0 ||
      (fl__plan_from_json(&plan, cfg, msg) == 0 && fit_cohort(cfg, &plan, (uint64_t)n))) {
    json_decref(cfg);
    return NULL;
  }
  return cfg;
}

/* Inserts the plan and opens its first round on the model's newest version. 0 or -1; the
 * plan id in *plan_id, or 0 with the reason in note when the plan cannot be a retraining
 * plan. */
static int open_plan(PGconn *c, uint64_t model_id, const open_event *e, const fl_drift_policy *pol,
                     uint64_t *plan_id, const char **note) {
  fl_plan plan;
  char msg[160];
  *plan_id = 0;
  json_t *cfg = retrain_config(c, e, pol);
  if (cfg == NULL)
    return -1;
  char *cj = NULL;
  int rc = 0;
  if (fl__plan_from_json(&plan, cfg, msg)) {
    *note = "bad_plan";
    goto out;
  }
  if (FL_PLAN_DP(&plan)) {
    *note = "dp_plan"; /* its privacy accounting starts with its own population */
    goto out;
  }
  rc = -1;
  cj = json_dumps(cfg, JSON_COMPACT);
  if (cj == NULL)
    goto out;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, cj);
  fl__pgp_u64(&p, e->event_id);
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO plans (model_id, config, drift_event_id)"
                            " VALUES ($1, $2::jsonb, $3)"
                            " RETURNING plan_id, (SELECT max(version) FROM versions"
                            "  WHERE model_id = $1)",
                            &p, false, NULL);
  if (r == NULL)
    goto out;
  uint64_t id = fl__pg_u64(r, 0, 0), base = fl__pg_u64(r, 0, 1), round_id = 0;
  PQclear(r);
  if (fl__round_open(c, id, model_id, base, &plan, &round_id))
    goto out;
  *plan_id = id;
  rc = 0;
out:
  free(cj);
  json_decref(cfg);
  return rc;
}

static int retrain_one(PGconn *c, uint64_t model_id, const fl_drift_policy *pol,
                       const open_event *e) {
  const char *why = blocked(c, model_id, pol, e);
  if (why == NULL)
    return -1;
  if (why[0] != '\0')
    return set_note(c, e, why);
  uint64_t plan_id = 0;
  const char *note = "opened";
  if (open_plan(c, model_id, e, pol, &plan_id, &note))
    return -1;
  if (plan_id == 0)
    return set_note(c, e, note);
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, e->event_id);
  fl__pgp_u64(&p, plan_id);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE drift_events SET retrain_plan_id = $2, retrain_note = 'opened'"
                            " WHERE event_id = $1",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  PQclear(r);
  char target[32];
  snprintf(target, sizeof target, "plan:%" PRIu64, plan_id);
  json_t *d = json_pack("{s:I, s:I, s:I, s:s, s:s}", "plan_id", (json_int_t)plan_id, "event_id",
                        (json_int_t)e->event_id, "model_id", (json_int_t)model_id, "cohort_label",
                        pol->label, "cohort", e->cohort);
  int rc = d != NULL && fl__audit(c, "coordinator", "drift.retrain", target, d) == 0 ? 0 : -1;
  json_decref(d);
  fl__slog(FL_LOG_INFO, "drift_retrain",
           "event=%" PRIu64 " plan=%" PRIu64 " model=%" PRIu64 " cohort=%s", e->event_id, plan_id,
           model_id, fl__slog_str(e->cohort));
  return rc;
}

int fl__drift_retrain(PGconn *c, uint64_t model_id, const fl_drift_policy *pol) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, pol->label);
  fl__pgp_f64(&p, pol->psi_threshold);
  fl__pgp_f64(&p, pol->shift_threshold);
  /* The most drifted cohort first: with max_concurrent retrains, it is the one retrained. */
  PGresult *r = fl__pg_exec(c,
                            "SELECT event_id, plan_id, cohort, coalesce(retrain_note, '')"
                            " FROM drift_events WHERE model_id = $1 AND cohort_label = $2"
                            " AND resolved_at IS NULL AND retrain_plan_id IS NULL"
                            " ORDER BY greatest(coalesce(psi, 0) / $3, max_shift / $4) DESC,"
                            " event_id",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
    open_event e = {.event_id = fl__pg_u64(r, i, 0), .plan_id = fl__pg_u64(r, i, 1)};
    snprintf(e.cohort, sizeof e.cohort, "%s", PQgetvalue(r, i, 2));
    snprintf(e.note, sizeof e.note, "%s", PQgetvalue(r, i, 3));
    rc = retrain_one(c, model_id, pol, &e);
  }
  PQclear(r);
  return rc;
}
