/*
 * Federated evaluation campaigns (evaluation.h): the policy, opening a campaign with each new
 * version, handing its EvalTask to the sample at check-in, checking and aggregating reports.
 *
 * The sample is recorded (eval_tasks) when the task is handed out, so a report is accepted
 * only from a device that was asked, whatever its labels or conditions are by the time it
 * reports: an unasked report would let a device vote on a version by itself.
 */
#include "registry/evaluation.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/evalstats.h"
#include "registry/rollouts.h"

#define DEFAULT_MAX_WEIGHT 1000.0

/* ----- policy -------------------------------------------------------------------------------- */

static int policy_fields(const json_t *j, char msg[160]) {
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)j, k, v) {
    if (strcmp(k, "share") != 0 && strcmp(k, "count") != 0 && strcmp(k, "max_weight") != 0 &&
        strcmp(k, "by_label") != 0) {
      snprintf(msg, 160, "unknown field evaluation.%.60s", k);
      return -1;
    }
  }
  return 0;
}

int fl__eval_policy_parse(fl_eval_policy *p, const json_t *j, char msg[160]) {
  memset(p, 0, sizeof *p);
  if (j == NULL || json_is_null(j))
    return 0;
  if (!json_is_object(j)) {
    snprintf(msg, 160, "evaluation must be an object: {\"share\": S} or {\"count\": N}");
    return -1;
  }
  if (policy_fields(j, msg))
    return -1;
  const json_t *sh = json_object_get(j, "share"), *ct = json_object_get(j, "count");
  const json_t *mw = json_object_get(j, "max_weight"), *bl = json_object_get(j, "by_label");
  double s = json_number_value(sh), n = json_number_value(ct), w = json_number_value(mw);
  if ((sh == NULL) == (ct == NULL)) {
    snprintf(msg, 160, "evaluation needs exactly one of share and count");
    return -1;
  }
  if (sh != NULL && (!json_is_number(sh) || !(s > 0 && s <= 1))) {
    snprintf(msg, 160, "evaluation.share must be a number in (0, 1]");
    return -1;
  }
  if (ct != NULL && (!json_is_number(ct) || !(n >= 1 && n <= 1e6) || n != floor(n))) {
    snprintf(msg, 160, "evaluation.count must be an integer in [1, 1000000]");
    return -1;
  }
  if (mw != NULL && (!json_is_number(mw) || !(w >= 1 && w <= 1e9))) {
    snprintf(msg, 160, "evaluation.max_weight must be a number of examples in [1, 1e9]");
    return -1;
  }
  size_t bn = json_is_string(bl) ? strlen(json_string_value(bl)) : 0;
  if (bl != NULL && (bn == 0 || bn >= FL_EVAL_LABEL_MAX)) {
    snprintf(msg, 160, "evaluation.by_label must be a label key of 1-%d bytes",
             FL_EVAL_LABEL_MAX - 1);
    return -1;
  }
  p->on = true;
  p->share = sh != NULL ? s : 0;
  p->count = ct != NULL ? (uint32_t)n : 0;
  p->max_weight = mw != NULL ? w : DEFAULT_MAX_WEIGHT;
  if (bl != NULL)
    snprintf(p->by_label, sizeof p->by_label, "%s", json_string_value(bl));
  return 0;
}

json_t *fl__eval_policy_to_json(const fl_eval_policy *p) {
  if (!p->on)
    return NULL;
  json_t *j = p->count > 0 ? json_pack("{s:I}", "count", (json_int_t)p->count)
                           : json_pack("{s:f}", "share", p->share);
  if (j != NULL && json_object_set_new(j, "max_weight", json_real(p->max_weight))) {
    json_decref(j);
    return NULL;
  }
  if (j != NULL && p->by_label[0] != '\0' &&
      json_object_set_new(j, "by_label", json_string(p->by_label))) {
    json_decref(j);
    return NULL;
  }
  return j;
}

/* ----- campaigns ----------------------------------------------------------------------------- */

int fl__eval_open(PGconn *c, uint64_t plan_id, const fl_eval_policy *ev, const fl_cohort *co,
                  uint64_t model_id, uint64_t version) {
  json_t *pj = fl__eval_policy_to_json(ev), *cj = fl__cohort_to_json(co);
  char *ps = pj ? json_dumps(pj, JSON_COMPACT) : NULL,
       *cs = cj ? json_dumps(cj, JSON_COMPACT) : NULL;
  char *ls = fl__cohort_labels_text(co);
  int rc = -1;
  if (ps == NULL || ls == NULL || (cj != NULL && cs == NULL))
    goto out;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, plan_id);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  fl__pgp_text(&p, ps);
  fl__pgp_text(&p, ls);
  fl__pgp_text(&p, cs ? cs : "{}");
  PGresult *r = fl__pg_exec(c,
                            "WITH old AS (UPDATE eval_campaigns SET state = 'closed',"
                            "  closed_at = now() WHERE plan_id = $1 AND state <> 'closed')"
                            " INSERT INTO eval_campaigns (plan_id, model_id, version, policy,"
                            "  labels, cohort) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb)"
                            " ON CONFLICT DO NOTHING",
                            &p, false, NULL);
  rc = r != NULL ? 0 : -1;
  PQclear(r);
out:
  free(ps);
  free(cs);
  free(ls);
  json_decref(pj);
  json_decref(cj);
  return rc;
}

/* The newest open campaign of the model that the device's labels fit and that it has not
 * reported for yet ("full" campaigns only for devices already handed the task). */
static const char FOR_CHECKIN[] =
    "SELECT c.campaign_id, c.model_id, c.version, encode(v.sha256, 'hex'), c.policy::text,"
    " c.cohort::text, coalesce(d.labels->>(c.policy->>'by_label'), ''),"
    " EXISTS (SELECT 1 FROM eval_tasks t WHERE t.campaign_id = c.campaign_id"
    "  AND t.device_id = $1)"
    " FROM eval_campaigns c JOIN versions v ON v.model_id = c.model_id AND v.version = c.version"
    " JOIN devices d ON d.device_id = $1"
    " WHERE c.state <> 'closed' AND ($2::bigint = 0 OR c.model_id = $2) AND d.labels @> c.labels"
    " AND NOT EXISTS (SELECT 1 FROM evaluations e WHERE e.campaign_id = c.campaign_id"
    "  AND e.device_id = $1)"
    " ORDER BY c.campaign_id DESC LIMIT 1";

/* Records the hand-out unless the count (per stratum) is reached; an earlier hand-out to the
 * same device counts as one (its report may have been lost). Concurrent check-ins can pass
 * the count by the number of them in flight: the count is a sample size, not a hard limit.
 * 1 handed, 0 not, -1 error. */
static int record_hand(PGconn *c, uint64_t campaign, uint64_t device_id, const char *stratum,
                       uint32_t count) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, campaign);
  fl__pgp_u64(&p, device_id);
  fl__pgp_text(&p, stratum);
  fl__pgp_u64(&p, count);
  PGresult *r = fl__pg_exec_prep(
      c, "fl_eval_hand",
      "WITH ins AS (INSERT INTO eval_tasks (campaign_id, device_id, stratum)"
      "  SELECT $1, $2, $3 WHERE $4::bigint = 0 OR (SELECT count(*) FROM eval_tasks"
      "   WHERE campaign_id = $1 AND stratum = $3) < $4::bigint"
      "  ON CONFLICT DO NOTHING RETURNING 1)"
      " SELECT EXISTS (SELECT 1 FROM ins) OR EXISTS (SELECT 1 FROM eval_tasks"
      "  WHERE campaign_id = $1 AND device_id = $2)",
      &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
  PQclear(r);
  return rc;
}

/* A count campaign without strata whose count is handed out stops being offered. */
static int mark_full(PGconn *c, uint64_t campaign, uint32_t count) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, campaign);
  fl__pgp_u64(&p, count);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE eval_campaigns SET state = 'full' WHERE campaign_id = $1"
                            " AND state = 'open' AND (SELECT count(*) FROM eval_tasks"
                            "  WHERE campaign_id = $1) >= $2::bigint",
                            &p, false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

/* Whether the campaign's policy and cohort sample this device now. 1, 0 or -1 (bad row). */
static int sampled_now(const PGresult *r, uint64_t device_id, char *const *conds, size_t n,
                       fl_eval_policy *pol) {
  char msg[160], why[200];
  fl_cohort co;
  json_t *pj = json_loads(PQgetvalue(r, 0, 4), 0, NULL);
  json_t *cj = json_loads(PQgetvalue(r, 0, 5), 0, NULL);
  int rc = -1;
  if (pj == NULL || cj == NULL || fl__eval_policy_parse(pol, pj, msg) ||
      fl__cohort_parse(&co, json_object_size(cj) ? cj : NULL, msg))
    goto out;
  rc = 0;
  if (!fl__cohort_conditions_met(&co, conds, n, why, sizeof why))
    goto out;
  uint64_t id = fl__pg_u64(r, 0, 0);
  rc = pol->count > 0 || fl__rollout_member(FL_EVAL_DOMAIN, device_id, id, pol->share * 100.0);
out:
  json_decref(pj);
  json_decref(cj);
  return rc;
}

int fl__eval_for_checkin(PGconn *c, uint64_t device_id, uint64_t model_id, char *const *conds,
                         size_t n_conds, fl_eval_hand *t) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, device_id);
  fl__pgp_u64(&p, model_id);
  PGresult *r = fl__pg_exec_prep(c, "fl_eval_checkin", FOR_CHECKIN, &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) != 1)
    goto out;
  fl_eval_policy pol;
  bool handed = strcmp(PQgetvalue(r, 0, 7), "t") == 0;
  rc = handed ? 1 : sampled_now(r, device_id, conds, n_conds, &pol);
  t->campaign_id = fl__pg_u64(r, 0, 0);
  if (rc == 1 && !handed) {
    rc = record_hand(c, t->campaign_id, device_id, PQgetvalue(r, 0, 6), pol.count);
    if (rc == 0 && pol.count > 0 && pol.by_label[0] == '\0')
      rc = mark_full(c, t->campaign_id, pol.count);
  }
  if (rc == 1) {
    t->model_id = fl__pg_u64(r, 0, 1);
    t->version = fl__pg_u64(r, 0, 2);
    rc = fl__unhex(PQgetvalue(r, 0, 3), t->sha256, FL_SHA256_LEN) ? -1 : 1;
  }
out:
  PQclear(r);
  return rc;
}

int fl__eval_sampled(PGconn *c, uint64_t campaign_id, uint64_t device_id, uint64_t model_id,
                     uint64_t version) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, campaign_id);
  fl__pgp_u64(&p, device_id);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  PGresult *r = fl__pg_exec(c,
                            "SELECT EXISTS (SELECT 1 FROM eval_tasks t WHERE t.campaign_id = $1"
                            " AND t.device_id = $2) FROM eval_campaigns"
                            " WHERE campaign_id = $1 AND model_id = $3 AND version = $4",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = PQntuples(r) != 1 ? 0 : strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? 1 : 2;
  PQclear(r);
  return rc;
}

/* ----- aggregation --------------------------------------------------------------------------- */

/* The newest report of each sampled device, aggregated into the campaign's result (rows in r).
 * NULL on a bad row or allocation failure. */
static json_t *result_of(const PGresult *r, const fl_eval_policy *pol) {
  int k = PQntuples(r);
  fl_eval_report *rep = calloc((size_t)k + 1, sizeof *rep);
  json_t *out = NULL;
  int got = 0;
  for (; rep != NULL && got < k; got++) {
    json_t *m = json_loads(PQgetvalue(r, got, 1), 0, NULL);
    if (m == NULL)
      break;
    rep[got] = (fl_eval_report){fl__pg_f64(r, got, 0), m, PQgetvalue(r, got, 2)};
  }
  if (rep != NULL && got == k)
    out = fl__eval_result(rep, (size_t)k, pol->max_weight,
                          pol->by_label[0] != '\0' ? pol->by_label : NULL);
  for (int i = 0; rep != NULL && i < got; i++)
    json_decref((json_t *)rep[i].metrics);
  free(rep);
  return out;
}

static int store_result(PGconn *c, uint64_t campaign_id, const json_t *res) {
  char *s = json_dumps(res, JSON_COMPACT);
  if (s == NULL)
    return -1;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, campaign_id);
  fl__pgp_text(&p, s);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE eval_campaigns SET result = $2::jsonb, updated_at = now()"
                            " WHERE campaign_id = $1",
                            &p, false, NULL);
  free(s);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

int fl__eval_on_report(PGconn *c, uint64_t campaign_id) {
  fl_pgp p;
  char msg[160];
  fl_eval_policy pol;
  json_t *pj = NULL, *res = NULL;
  PGresult *r = NULL;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, campaign_id);
  /* The row lock orders concurrent recomputations: the last one sees every report. */
  if (fl__pg_cmd(c, "BEGIN"))
    return -1;
  r = fl__pg_exec(c, "SELECT policy::text FROM eval_campaigns WHERE campaign_id = $1 FOR UPDATE",
                  &p, false, NULL);
  if (r == NULL || PQntuples(r) != 1)
    goto rollback;
  pj = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
  PQclear(r);
  r = NULL;
  if (pj == NULL || fl__eval_policy_parse(&pol, pj, msg))
    goto rollback;
  r = fl__pg_exec(c,
                  "SELECT sample_count::float8, metrics::text, stratum FROM"
                  " (SELECT DISTINCT ON (e.device_id) e.sample_count, e.metrics, t.stratum"
                  "  FROM evaluations e JOIN eval_tasks t ON t.campaign_id = e.campaign_id"
                  "  AND t.device_id = e.device_id WHERE e.campaign_id = $1"
                  "  ORDER BY e.device_id, e.eval_id DESC) x",
                  &p, false, NULL);
  if (r == NULL || (res = result_of(r, &pol)) == NULL || store_result(c, campaign_id, res) ||
      fl__pg_cmd(c, "COMMIT"))
    goto rollback;
  PQclear(r);
  json_decref(pj);
  json_decref(res);
  return 0;
rollback:
  fl__pg_cmd(c, "ROLLBACK");
  PQclear(r);
  json_decref(pj);
  json_decref(res);
  return -1;
}
