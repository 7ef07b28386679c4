/*
 * The drift pass (drift.h, docs/DRIFT.md). For each model whose newest plan with a "drift"
 * object names a cohort label, the latest service window of every device of that model
 * (received within window_s) is pooled by (label value, version run); each pool of at least
 * min_devices devices and min_samples examples is tested against that version's reference:
 *
 *   drift  <=>  PSI(score histogram) > psi_threshold
 *               or max_j |mean_s,j - mean_r,j| / sd_r,j > mean_shift_threshold
 *
 * A cohort is tested on the newest version it has enough windows of. A cohort that drifts gets
 * one open event (a partial unique index keeps it to one across replicas and versions) with
 * the features over the threshold, an audit row in the same transaction, and, with a retrain
 * policy, a training plan for the cohort (retrain.c). A later test with both statistics under
 * half their thresholds resolves the event (hysteresis: a cohort near a threshold does not
 * open and resolve an event at every pass). The pass takes an advisory lock for its transaction:
 * one replica at a time tests, the others skip.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "drift/drift.h"
#include "drift/handoff.h"
#include "drift/retrain.h"
#include "rounds/plan.h"
#include "store/store_pg.h"

#define DRIFT_LOCK "7302214520"
#define MAX_GROUPS 256
#define PASS_PERIOD_S 1.0
/* Tests kept per cohort in drift_status: the newest versions only (a cohort is decided by its
 * newest one), so the table and the gauges stay bounded as versions accumulate. */
#define STATUS_KEEP 8

typedef struct group {
  char cohort[FL_COHORT_NAME_MAX]; /* a label value as long as a training cohort takes */
  uint64_t version;
  fl_drift_stats pool;
  bool mixed;  /* a window whose layout differs from the others' was left out */
  bool tested; /* this pass tested it */
} group;

static int newest_first(const void *a, const void *b) {
  const group *x = a, *y = b;
  return x->version < y->version ? 1 : x->version > y->version ? -1 : 0;
}

/* Whether an earlier (newer) group of g[i]'s cohort was tested in this pass. */
static bool decided(const group *g, int i) {
  for (int k = 0; k < i; k++)
    if (g[k].tested && strcmp(g[k].cohort, g[i].cohort) == 0)
      return true;
  return false;
}

typedef struct verdict {
  double psi, max_shift;
  bool drifted;
  bool calm;        /* both statistics under half their thresholds: an open event resolves */
  json_t *features; /* [{"feature": j, "shift": x, "mean": ms, "ref_mean": mr}] over threshold */
} verdict;

static group *find_group(group *g, int *n, const char *cohort, uint64_t version) {
  for (int i = 0; i < *n; i++)
    if (g[i].version == version && strcmp(g[i].cohort, cohort) == 0)
      return &g[i];
  if (*n == MAX_GROUPS)
    return NULL;
  group *e = &g[(*n)++];
  memset(e, 0, sizeof *e);
  snprintf(e->cohort, sizeof e->cohort, "%s", cohort);
  e->version = version;
  return e;
}

/* The windows of the model's devices that carry the label, pooled into groups. */
static int gather(PGconn *c, uint64_t model_id, const fl_drift_policy *pol, group *g, int *n) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, pol->label);
  fl__pgp_f64(&p, pol->window_s);
  PGresult *r = fl__pg_exec(c,
                            "SELECT d.labels->>$2, s.version::text, s.stats FROM drift_service s"
                            " JOIN devices d ON d.device_id = s.device_id"
                            " WHERE s.model_id = $1 AND d.state = 'active' AND d.labels ? $2"
                            " AND s.received_at > now() - make_interval(secs => $3)",
                            &p, true, NULL);
  if (r == NULL)
    return -1;
  fl_drift_stats *one = malloc(sizeof *one);
  if (one == NULL) {
    PQclear(r);
    return -1;
  }
  *n = 0;
  for (int i = 0; i < PQntuples(r); i++) {
    if (PQgetlength(r, i, 0) >= FL_COHORT_NAME_MAX ||
        fl__drift_decode((const uint8_t *)PQgetvalue(r, i, 2), (size_t)PQgetlength(r, i, 2), one))
      continue;
    group *e = find_group(g, n, PQgetvalue(r, i, 0), strtoull(PQgetvalue(r, i, 1), NULL, 10));
    if (e != NULL && fl__drift_pool(&e->pool, one) != 0)
      e->mixed = true;
  }
  free(one);
  PQclear(r);
  return 0;
}

static int load_reference(PGconn *c, uint64_t model_id, uint64_t version, fl_drift_stats *ref) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  PGresult *r = fl__pg_exec(
      c, "SELECT stats FROM drift_reference WHERE model_id = $1 AND version = $2", &p, true, NULL);
  if (r == NULL)
    return -1;
  int rc = PQntuples(r) == 1 && fl__drift_decode((const uint8_t *)PQgetvalue(r, 0, 0),
                                                 (size_t)PQgetlength(r, 0, 0), ref) == 0
               ? 1
               : 0;
  PQclear(r);
  return rc;
}

/* The test itself (the formulas in the file's comment). */
static void test_group(const fl_drift_policy *pol, const fl_drift_stats *sv,
                       const fl_drift_stats *ref, verdict *v) {
  v->psi = fl__drift_psi(sv, ref);
  v->max_shift = 0;
  v->features = json_array();
  v->drifted = v->psi > pol->psi_threshold;
  v->calm = v->psi <= pol->psi_threshold / 2;
  uint32_t nf = sv->n_feat == ref->n_feat ? sv->n_feat : 0;
  for (uint32_t j = 0; j < nf; j++) {
    double z = fl__drift_shift(sv, ref, j);
    v->max_shift = fmax(v->max_shift, z);
    v->calm &= z <= pol->shift_threshold / 2;
    if (z > pol->shift_threshold) {
      v->drifted = true;
      json_array_append_new(v->features,
                            json_pack("{s:I, s:f, s:f, s:f}", "feature", (json_int_t)j, "shift", z,
                                      "mean", sv->mean[j], "ref_mean", ref->mean[j]));
    }
  }
}

/* $1..$4: the cohort's key in drift_status and drift_events. */
static void cohort_params(fl_pgp *p, uint64_t model_id, const fl_drift_policy *pol,
                          const group *g) {
  fl__pgp_init(p);
  fl__pgp_u64(p, model_id);
  fl__pgp_u64(p, g->version);
  fl__pgp_text(p, pol->label);
  fl__pgp_text(p, g->cohort);
}

/* A PSI, NULL when there was no histogram to compute it on (fl__drift_psi's -1). */
static void psi_param(fl_pgp *p, double psi) {
  if (psi >= 0)
    fl__pgp_f64(p, psi);
  else
    fl__pgp_text(p, NULL);
}

static int store_status(PGconn *c, uint64_t model_id, const fl_drift_policy *pol, const group *g,
                        const verdict *v) {
  fl_pgp p;
  cohort_params(&p, model_id, pol, g);
  psi_param(&p, v->psi);
  fl__pgp_f64(&p, v->max_shift);
  fl__pgp_u64(&p, g->pool.devices);
  fl__pgp_u64(&p, g->pool.count);
  fl__pgp_text(&p, v->drifted ? "true" : "false");
  PGresult *r = fl__pg_exec(
      c,
      "INSERT INTO drift_status (model_id, version, cohort_label, cohort, psi, max_shift,"
      " devices, samples, drifted) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
      " ON CONFLICT (model_id, version, cohort_label, cohort) DO UPDATE SET psi = excluded.psi,"
      " max_shift = excluded.max_shift, devices = excluded.devices, samples = excluded.samples,"
      " drifted = excluded.drifted, tested_at = now()",
      &p, false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

/* Opens the cohort's event (none open yet) with its audit row, or resolves the open one. */
static int record(PGconn *c, uint64_t plan_id, uint64_t model_id, const fl_drift_policy *pol,
                  const group *g, const verdict *v) {
  fl_pgp p;
  cohort_params(&p, model_id, pol, g);
  if (!v->drifted && !v->calm)
    return 0; /* between the thresholds: an open event stays open, none is raised */
  if (!v->drifted) {
    PGresult *r = fl__pg_exec(c,
                              "UPDATE drift_events SET resolved_at = now() WHERE model_id = $1"
                              " AND version <= $2 AND cohort_label = $3 AND cohort = $4"
                              " AND resolved_at IS NULL",
                              &p, false, NULL);
    PQclear(r);
    return r != NULL ? 0 : -1;
  }
  char *feat = json_dumps(v->features, JSON_COMPACT);
  if (feat == NULL)
    return -1;
  fl__pgp_u64(&p, plan_id);
  psi_param(&p, v->psi);
  fl__pgp_f64(&p, v->max_shift);
  fl__pgp_text(&p, feat);
  fl__pgp_u64(&p, g->pool.devices);
  fl__pgp_u64(&p, g->pool.count);
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO drift_events (model_id, version, cohort_label, cohort,"
                            " plan_id, psi, max_shift, features, devices, samples)"
                            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10)"
                            " ON CONFLICT (model_id, cohort_label, cohort)"
                            " WHERE resolved_at IS NULL DO NOTHING RETURNING event_id",
                            &p, false, NULL);
  free(feat);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    uint64_t id = fl__pg_u64(r, 0, 0);
    char target[48];
    snprintf(target, sizeof target, "drift:%" PRIu64, id);
    json_t *d = json_pack("{s:I, s:I, s:I, s:s, s:s, s:o, s:f, s:O, s:I, s:I}", "event_id",
                          (json_int_t)id, "model_id", (json_int_t)model_id, "version",
                          (json_int_t)g->version, "cohort_label", pol->label, "cohort", g->cohort,
                          "psi", v->psi >= 0 ? json_real(v->psi) : json_null(), "max_shift",
                          v->max_shift, "features", v->features, "devices",
                          (json_int_t)g->pool.devices, "samples", (json_int_t)g->pool.count);
    rc = d != NULL && fl__audit(c, "coordinator", "drift.event", target, d) == 0 ? 0 : -1;
    json_decref(d);
    fl__slog(FL_LOG_WARN, "drift_event",
             "event=%" PRIu64 " model=%" PRIu64 " version=%" PRIu64
             " cohort_label=%s cohort=%s psi=%.4f max_shift=%.3f features=%zu devices=%" PRIu64,
             id, model_id, g->version, fl__slog_str(pol->label), fl__slog_str(g->cohort), v->psi,
             v->max_shift, json_array_size(v->features), g->pool.devices);
  }
  PQclear(r);
  return rc;
}

/* Bounds drift_status: per cohort of the model the STATUS_KEEP newest versions tested, and
 * only tests within window_s (a cohort whose devices stopped reporting leaves no gauge). */
static int prune_status(PGconn *c, uint64_t model_id, const fl_drift_policy *pol) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_f64(&p, pol->window_s);
  fl__pgp_u64(&p, STATUS_KEEP);
  PGresult *r = fl__pg_exec(
      c,
      "DELETE FROM drift_status s USING (SELECT cohort_label, cohort, version,"
      "  row_number() OVER (PARTITION BY cohort_label, cohort ORDER BY version DESC) AS k"
      "  FROM drift_status WHERE model_id = $1) t"
      " WHERE s.model_id = $1 AND s.cohort_label = t.cohort_label AND s.cohort = t.cohort"
      " AND s.version = t.version"
      " AND (t.k > $3 OR s.tested_at < now() - make_interval(secs => $2))",
      &p, false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

/* The newest version of the plan's warm-up (drift.warmup_rounds): the version of its N-th round
 * that made one, UINT64_MAX while it has made fewer, 0 without a warm-up. While a model still
 * learns, consecutive versions score the same data differently, and a version's reference is
 * scored by the version before it (DRIFT.md 1): the test would see drift that is the model's
 * own movement. */
static int warmup_version(PGconn *c, uint64_t plan_id, const fl_drift_policy *pol, uint64_t *v) {
  *v = 0;
  if (pol->warmup_rounds == 0)
    return 0;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, plan_id);
  fl__pgp_u64(&p, pol->warmup_rounds - 1);
  PGresult *r = fl__pg_exec(c,
                            "SELECT result_version FROM rounds WHERE plan_id = $1"
                            " AND result_version IS NOT NULL ORDER BY round_id OFFSET $2 LIMIT 1",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  *v = PQntuples(r) == 1 ? fl__pg_u64(r, 0, 0) : UINT64_MAX;
  PQclear(r);
  return 0;
}

/* One model: gather, test each group that has enough, record. */
static int test_model(PGconn *c, uint64_t plan_id, uint64_t model_id, const fl_drift_policy *pol) {
  group *g = malloc(MAX_GROUPS * sizeof *g);
  fl_drift_stats *ref = malloc(sizeof *ref);
  int n = 0, rc = -1;
  uint64_t warm = 0;
  if (g == NULL || ref == NULL || warmup_version(c, plan_id, pol, &warm) ||
      gather(c, model_id, pol, g, &n))
    goto out;
  rc = 0;
  /* Newest version first: a cohort is decided by the newest version it has enough windows
   * of, not by the stragglers still reporting an older one. */
  qsort(g, (size_t)n, sizeof *g, newest_first);
  for (int i = 0; i < n && rc == 0; i++) {
    if (g[i].version <= warm || g[i].pool.devices < pol->min_devices ||
        g[i].pool.count < pol->min_samples || decided(g, i))
      continue; /* a warm-up version, too little to decide either way, or decided */
    int have = load_reference(c, model_id, g[i].version, ref);
    if (have <= 0) {
      rc = have;
      continue;
    }
    verdict v;
    g[i].tested = true;
    test_group(pol, &g[i].pool, ref, &v);
    rc = store_status(c, model_id, pol, &g[i], &v) || record(c, plan_id, model_id, pol, &g[i], &v)
             ? -1
             : 0;
    json_decref(v.features);
  }
  if (rc == 0)
    rc = prune_status(c, model_id, pol);
  if (rc == 0 && pol->retrain)
    rc = fl__drift_retrain(c, model_id, pol);
  if (rc == 0)
    rc = fl__drift_handoff(c, model_id);
out:
  free(ref);
  free(g);
  return rc;
}

/* The newest main plan (not a retraining plan, whose config is a copy) with a drift object of
 * each model: its events name it, and retraining plans are made from it. */
static PGresult *policies(PGconn *c) {
  return fl__pg_exec(c,
                     "SELECT DISTINCT ON (model_id) plan_id, model_id, config::text FROM plans"
                     " WHERE config ? 'drift' AND drift_event_id IS NULL"
                     " ORDER BY model_id, plan_id DESC",
                     NULL, false, NULL);
}

void fl__drift_tick(fl_srv *s) {
  static _Thread_local double last;
  if (fl__mono_s() - last < PASS_PERIOD_S)
    return;
  last = fl__mono_s();
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL)
    return;
  PGresult *lk = NULL, *pl = NULL;
  if (fl__pg_cmd(c, "BEGIN"))
    goto out;
  lk = fl__pg_exec(c, "SELECT pg_try_advisory_xact_lock(" DRIFT_LOCK ")", NULL, false, NULL);
  if (lk == NULL || strcmp(PQgetvalue(lk, 0, 0), "t") != 0 || (pl = policies(c)) == NULL)
    goto out;
  int rc = 0;
  for (int i = 0; i < PQntuples(pl) && rc == 0; i++) {
    fl_plan plan;
    char msg[160];
    json_t *cfg = json_loads(PQgetvalue(pl, i, 2), 0, NULL);
    int bad = fl__plan_from_json(&plan, cfg, msg);
    json_decref(cfg);
    if (bad || !plan.drift.on)
      continue;
    rc = test_model(c, fl__pg_u64(pl, i, 0), fl__pg_u64(pl, i, 1), &plan.drift);
  }
  if (rc == 0)
    fl__pg_cmd(c, "COMMIT");
  else
    fl__slog(FL_LOG_WARN, "drift_pass_failed", "error=%s", fl__slog_str(PQerrorMessage(c)));
out:
  PQclear(pl);
  PQclear(lk);
  fl__pool_put(s->pool, c); /* rolls back an unfinished transaction */
}
