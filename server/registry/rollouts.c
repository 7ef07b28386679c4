/*
 * Rollouts at check-in time and evaluation gates (the admin side is adminapi_rollouts.c).
 *
 * Assignment is computed, not stored: from the device's labels, the channel it follows, a pin,
 * the channel's live rollout and the stable hash of (device, rollout). So a raise, a promotion
 * or a rollback reaches every device at its next check-in without touching per-device rows,
 * and what devices really run is known from the version they report (devices.running_version).
 */
#include "registry/rollouts.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "server.h"

uint64_t fl__rollout_hash(const char *domain, uint64_t device_id, uint64_t id) {
  uint8_t buf[64 + 16], h[FL_SHA256_LEN];
  size_t n = strlen(domain);
  if (n > 64)
    n = 64;
  memcpy(buf, domain, n);
  for (int i = 0; i < 8; i++) {
    buf[n + (size_t)i] = (uint8_t)(device_id >> (8 * i));
    buf[n + 8 + (size_t)i] = (uint8_t)(id >> (8 * i));
  }
  fl__sha256(buf, n + 16, h);
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | h[i];
  return v;
}

bool fl__rollout_member(const char *domain, uint64_t device_id, uint64_t id, double pct) {
  if (!(pct > 0))
    return false;
  if (pct >= 100)
    return true;
  /* pct/100 < 1, so the threshold is below 2^64 and the conversion is exact enough to be
   * monotonic: a larger percentage never gives a smaller threshold. */
  uint64_t threshold = (uint64_t)ldexp(pct / 100.0, 64);
  return fl__rollout_hash(domain, device_id, id) < threshold;
}

/* ----- check-in ------------------------------------------------------------------------------ */

/* The device's labels are its enrollment token's (device/enroll.c): a device cannot name its
 * channel or join a cohort by itself. One row: the channel the device follows (of the requested
 * model, else of the model it runs, else the lowest model id), a pin (device pins before cohort
 * pins, newest first), the channel's live rollout when the device's labels contain its cohort, and
 * whether this device already reported the candidate and the channel's version for the rollout's
 * gate. */
static const char CHECKIN_SQL[] =
    "SELECT c.model_id, c.name, c.version, encode(cv.sha256, 'hex'),"
    " p.version, encode(pv.sha256, 'hex'),"
    " r.rollout_id, r.version, encode(rv.sha256, 'hex'), r.percent, r.state, r.gate_state,"
    " coalesce((r.gate->>'sample_pct')::float8, 10),"
    " (r.gate ? 'min_delta' OR r.gate ? 'max_delta'),"
    " EXISTS (SELECT 1 FROM evaluations e WHERE e.gate_id = r.rollout_id"
    "  AND e.device_id = d.device_id AND e.version = r.version),"
    " EXISTS (SELECT 1 FROM evaluations e WHERE e.gate_id = r.rollout_id"
    "  AND e.device_id = d.device_id AND e.version = c.version)"
    " FROM devices d"
    " JOIN channels c ON c.name = coalesce(d.labels->>'channel', 'stable')"
    "  AND ($2::bigint = 0 OR c.model_id = $2::bigint)"
    " JOIN versions cv ON cv.model_id = c.model_id AND cv.version = c.version"
    " LEFT JOIN LATERAL (SELECT x.version FROM pins x WHERE x.model_id = c.model_id"
    "  AND (x.device_id = d.device_id OR (x.device_id IS NULL AND d.labels @> x.labels))"
    "  ORDER BY x.device_id IS NULL, x.pin_id DESC LIMIT 1) p ON true"
    " LEFT JOIN versions pv ON pv.model_id = c.model_id AND pv.version = p.version"
    " LEFT JOIN LATERAL (SELECT * FROM rollouts y WHERE y.channel_id = c.channel_id"
    "  AND y.state IN ('active', 'paused') AND d.labels @> y.cohort LIMIT 1) r ON true"
    " LEFT JOIN versions rv ON rv.model_id = c.model_id AND rv.version = r.version"
    " WHERE d.device_id = $1"
    " ORDER BY (c.model_id = $3::bigint) DESC, c.model_id LIMIT 1";

enum {
  COL_MODEL,
  COL_CHANNEL,
  COL_CH_VERSION,
  COL_CH_SHA,
  COL_PIN_VERSION,
  COL_PIN_SHA,
  COL_ROLLOUT,
  COL_R_VERSION,
  COL_R_SHA,
  COL_PERCENT,
  COL_STATE,
  COL_GATE_STATE,
  COL_SAMPLE_PCT,
  COL_RELATIVE,
  COL_REPORTED_CAND,
  COL_REPORTED_BASE
};

static bool col_true(const PGresult *res, int col) {
  return !PQgetisnull(res, 0, col) && strcmp(PQgetvalue(res, 0, col), "t") == 0;
}

static void set_assignment(fl_rollout_answer *a, const PGresult *res, uint64_t rollout_id,
                           int version_col, int sha_col) {
  a->has_assignment = true;
  a->rollout_id = rollout_id;
  a->model_id = fl__pg_u64(res, 0, COL_MODEL);
  a->version = fl__pg_u64(res, 0, version_col);
  snprintf(a->channel, sizeof a->channel, "%s", PQgetvalue(res, 0, COL_CHANNEL));
  fl__unhex(PQgetvalue(res, 0, sha_col), a->sha256, FL_SHA256_LEN);
}

/* A device in the gate's sample evaluates the candidate first, then (for conditions relative
 * to the channel's version) that version, one per check-in. */
static void set_eval(fl_rollout_answer *a, const PGresult *res, uint64_t device_id) {
  uint64_t rid = fl__pg_u64(res, 0, COL_ROLLOUT);
  if (strcmp(PQgetvalue(res, 0, COL_STATE), "active") != 0 ||
      strcmp(PQgetvalue(res, 0, COL_GATE_STATE), "evaluating") != 0 ||
      !fl__rollout_member(FL_GATE_DOMAIN, device_id, rid, fl__pg_f64(res, 0, COL_SAMPLE_PCT)))
    return;
  int version_col = COL_R_VERSION, sha_col = COL_R_SHA;
  if (col_true(res, COL_REPORTED_CAND)) {
    if (!col_true(res, COL_RELATIVE) || col_true(res, COL_REPORTED_BASE))
      return;
    version_col = COL_CH_VERSION;
    sha_col = COL_CH_SHA;
  }
  a->has_eval = true;
  a->gate_id = rid;
  a->eval_model_id = fl__pg_u64(res, 0, COL_MODEL);
  a->eval_version = fl__pg_u64(res, 0, version_col);
  fl__unhex(PQgetvalue(res, 0, sha_col), a->eval_sha256, FL_SHA256_LEN);
}

int fl__rollout_for_device(PGconn *c, uint64_t device_id, uint64_t model_id,
                           uint64_t running_model_id, fl_rollout_answer *a) {
  fl_pgp p;
  memset(a, 0, sizeof *a);
  fl__pgp_init(&p);
  fl__pgp_u64(&p, device_id);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, running_model_id);
  PGresult *res = fl__pg_exec_prep(c, "fl_rollout_checkin", CHECKIN_SQL, &p, false, NULL);
  if (res == NULL)
    return -1;
  if (PQntuples(res) != 1)
    goto out;
  bool has_rollout = !PQgetisnull(res, 0, COL_ROLLOUT);
  uint64_t rid = has_rollout ? fl__pg_u64(res, 0, COL_ROLLOUT) : 0;
  if (!PQgetisnull(res, 0, COL_PIN_SHA))
    set_assignment(a, res, 0, COL_PIN_VERSION, COL_PIN_SHA);
  else if (has_rollout &&
           fl__rollout_member(FL_ROLLOUT_DOMAIN, device_id, rid, fl__pg_f64(res, 0, COL_PERCENT)))
    set_assignment(a, res, rid, COL_R_VERSION, COL_R_SHA);
  else
    set_assignment(a, res, 0, COL_CH_VERSION, COL_CH_SHA);
  if (has_rollout && !PQgetisnull(res, 0, COL_GATE_STATE))
    set_eval(a, res, device_id);
out:
  PQclear(res);
  return 0;
}

/* ----- the registry cache ------------------------------------------------------------------ */

/* The channels of every model and whether a model has a live rollout or a pin, as of one
 * registry generation (registry_generation.gen, bumped at commit by a deferred trigger on
 * channels, rollouts and pins: migration "registry generation"). Check-ins read the
 * generation in the statement they run anyway (device/checkin.c) and come here with it: the same
 * generation means the same registry, so a device of a model without rollouts and pins is
 * answered from memory, with no join. Every replica sees a change at its next check-in, as
 * the counter lives in PostgreSQL. One cache per process (one coordinator per process). */
typedef struct cached_channel {
  uint64_t model_id, version;
  char name[64];
  uint8_t sha[FL_SHA256_LEN];
  bool live; /* the model has a live rollout or a pin: the full query decides */
} cached_channel;

static struct {
  pthread_mutex_t mu;
  bool valid;
  uint64_t gen;
  cached_channel *ch;
  size_t n;
} g_reg = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Reloads the cache; the generation comes from the same snapshot as the rows, so a change
 * that commits meanwhile bumps past the generation stored here. 0 or -1. */
static int reg_reload(PGconn *c) {
  PGresult *res =
      fl__pg_exec_prep(c, "fl_registry_load",
                       "SELECT g.gen, c.model_id, c.name, c.version, encode(v.sha256, 'hex'),"
                       " EXISTS (SELECT 1 FROM rollouts y WHERE y.model_id = c.model_id"
                       "  AND y.state IN ('active', 'paused'))"
                       " OR EXISTS (SELECT 1 FROM pins x WHERE x.model_id = c.model_id)"
                       " FROM registry_generation g LEFT JOIN channels c ON true"
                       " LEFT JOIN versions v ON v.model_id = c.model_id AND v.version = c.version"
                       " WHERE g.id = 1 ORDER BY c.model_id, c.name",
                       NULL, false, NULL);
  if (res == NULL)
    return -1;
  int n = PQntuples(res);
  cached_channel *ch = calloc(n ? (size_t)n : 1, sizeof *ch);
  if (n == 0 || ch == NULL) {
    PQclear(res);
    free(ch);
    return -1;
  }
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    /* No channel (the LEFT JOIN's empty row), or one whose version row is missing: such a
     * channel answers nothing, as the full query's inner join does. */
    if (PQgetisnull(res, i, 1) || PQgetisnull(res, i, 4))
      continue;
    ch[k].model_id = fl__pg_u64(res, i, 1);
    snprintf(ch[k].name, sizeof ch[k].name, "%s", PQgetvalue(res, i, 2));
    ch[k].version = fl__pg_u64(res, i, 3);
    fl__unhex(PQgetvalue(res, i, 4), ch[k].sha, FL_SHA256_LEN);
    ch[k].live = strcmp(PQgetvalue(res, i, 5), "t") == 0;
    k++;
  }
  pthread_mutex_lock(&g_reg.mu);
  free(g_reg.ch);
  g_reg.ch = ch;
  g_reg.n = k;
  g_reg.gen = fl__pg_u64(res, 0, 0);
  g_reg.valid = true;
  pthread_mutex_unlock(&g_reg.mu);
  PQclear(res);
  return 0;
}

/* The fast answer under the cache's lock: 1 answered (maybe with nothing), 0 the full query
 * must decide (stale cache, a live rollout or a pin on the model, a channel name too long for
 * the cache). The channel as the full query picks it: the device's channel of the requested
 * model (any when 0), the one of the model it runs first, else the lowest model id. */
static int reg_answer(uint64_t gen, const char *channel, uint64_t model_id,
                      uint64_t running_model_id, fl_rollout_answer *a) {
  const cached_channel *best = NULL;
  if (!g_reg.valid || g_reg.gen < gen || strlen(channel) >= sizeof best->name)
    return 0;
  for (size_t i = 0; i < g_reg.n; i++) {
    const cached_channel *ch = &g_reg.ch[i];
    if (strcmp(ch->name, channel) != 0 || (model_id != 0 && ch->model_id != model_id))
      continue;
    if (best == NULL || (ch->model_id == running_model_id && best->model_id != running_model_id))
      best = ch; /* rows are in model order: the first match has the lowest id */
  }
  if (best == NULL)
    return 1;
  if (best->live)
    return 0;
  a->has_assignment = true;
  a->model_id = best->model_id;
  a->version = best->version;
  snprintf(a->channel, sizeof a->channel, "%s", best->name);
  memcpy(a->sha256, best->sha, FL_SHA256_LEN);
  return 1;
}

int fl__rollout_for_checkin(PGconn *c, uint64_t gen, const char *channel, uint64_t device_id,
                            uint64_t model_id, uint64_t running_model_id, fl_rollout_answer *a) {
  memset(a, 0, sizeof *a);
  if (channel == NULL)
    channel = "stable";
  for (int attempt = 0; attempt < 2; attempt++) {
    pthread_mutex_lock(&g_reg.mu);
    int rc = reg_answer(gen, channel, model_id, running_model_id, a);
    bool stale = !g_reg.valid || g_reg.gen < gen;
    pthread_mutex_unlock(&g_reg.mu);
    if (rc == 1)
      return 0;
    /* A newer generation than the one read by the check-in: reloaded once. */
    if (!stale || attempt == 1 || reg_reload(c))
      break;
  }
  return fl__rollout_for_device(c, device_id, model_id, running_model_id, a);
}

/* ----- gates --------------------------------------------------------------------------------- */

int fl__gate_sampled(PGconn *c, uint64_t gate_id, uint64_t device_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, gate_id);
  fl__pgp_u64(&p, device_id);
  /* The same sample check-ins hand evaluation tasks to (set_eval): the rollout's cohort and
   * the gate's hash sample. */
  PGresult *res = fl__pg_exec(c,
                              "SELECT coalesce((r.gate->>'sample_pct')::float8, 10),"
                              " coalesce(d.labels @> r.cohort, true)"
                              " FROM rollouts r JOIN devices d ON d.device_id = $2"
                              " WHERE r.rollout_id = $1 AND r.gate IS NOT NULL",
                              &p, false, NULL);
  if (res == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(res) == 1)
    rc = strcmp(PQgetvalue(res, 0, 1), "t") == 0 &&
                 fl__rollout_member(FL_GATE_DOMAIN, device_id, gate_id, fl__pg_f64(res, 0, 0))
             ? 1
             : 2;
  PQclear(res);
  return rc;
}

int fl__rollout_promote_tx(PGconn *c, uint64_t rollout_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rollout_id);
  PGresult *res =
      fl__pg_exec(c,
                  "WITH r AS (UPDATE rollouts SET state = 'promoted', updated_at = now()"
                  " WHERE rollout_id = $1 AND state IN ('active', 'paused')"
                  " RETURNING channel_id, version)"
                  " UPDATE channels c SET previous_version = c.version, version = r.version,"
                  " updated_at = now() FROM r WHERE c.channel_id = r.channel_id",
                  &p, false, NULL);
  if (res == NULL)
    return -1;
  PQclear(res);
  return 0;
}

/* Sample-weighted mean of one metric of one version over the gate's reports (the newest
 * report of each device counts). */
typedef struct gate_mean {
  int64_t reports;
  double weight, mean;
} gate_mean;

static int gate_means(PGconn *c, uint64_t gate_id, const char *metric, uint64_t version,
                      gate_mean *m) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, gate_id);
  fl__pgp_u64(&p, version);
  fl__pgp_text(&p, metric);
  PGresult *res =
      fl__pg_exec(c,
                  "SELECT count(*), coalesce(sum(w), 0), sum(w * v) / nullif(sum(w), 0) FROM"
                  " (SELECT DISTINCT ON (device_id) sample_count::float8 AS w,"
                  "  (metrics->>$3)::float8 AS v FROM evaluations"
                  "  WHERE gate_id = $1 AND version = $2 AND sample_count > 0 AND metrics ? $3"
                  "  ORDER BY device_id, eval_id DESC) t",
                  &p, false, NULL);
  if (res == NULL)
    return -1;
  m->reports = fl__pg_i64(res, 0, 0);
  m->weight = fl__pg_f64(res, 0, 1);
  m->mean = fl__pg_f64(res, 0, 2);
  PQclear(res);
  return 0;
}

/* The gate's condition on the means; *why receives the first violated clause. */
static bool gate_holds(const json_t *g, double cand, double base, char *why, size_t n) {
  const char *metric = json_string_value(json_object_get(g, "metric"));
  json_t *v;
  if ((v = json_object_get(g, "min")) != NULL && !(cand >= json_number_value(v))) {
    snprintf(why, n, "%s %.6g < min %.6g", metric, cand, json_number_value(v));
    return false;
  }
  if ((v = json_object_get(g, "max")) != NULL && !(cand <= json_number_value(v))) {
    snprintf(why, n, "%s %.6g > max %.6g", metric, cand, json_number_value(v));
    return false;
  }
  if ((v = json_object_get(g, "min_delta")) != NULL && !(cand - base >= json_number_value(v))) {
    snprintf(why, n, "%s %.6g < current %.6g %+.6g", metric, cand, base, json_number_value(v));
    return false;
  }
  if ((v = json_object_get(g, "max_delta")) != NULL && !(cand - base <= json_number_value(v))) {
    snprintf(why, n, "%s %.6g > current %.6g %+.6g", metric, cand, base, json_number_value(v));
    return false;
  }
  snprintf(why, n, "%s %.6g (current %.6g) meets the gate", metric, cand, base);
  return true;
}

/* Records the decision (and its consequence) with an audit row. */
static int gate_record(PGconn *c, uint64_t gate_id, bool pass, bool promote, const char *why,
                       json_t *result) {
  char *rj = json_dumps(result, JSON_COMPACT);
  char target[40];
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, gate_id);
  fl__pgp_text(&p, pass ? "passed" : "failed");
  fl__pgp_text(&p, rj ? rj : "{}");
  fl__pgp_text(&p, pass ? NULL : why);
  PGresult *res = fl__pg_exec(
      c,
      "UPDATE rollouts SET gate_state = $2, gate_result = $3::jsonb, updated_at = now(),"
      " state = CASE WHEN $2 = 'failed' THEN 'stopped' ELSE state END,"
      " reason = CASE WHEN $2 = 'failed' THEN 'gate_failed: ' || $4 ELSE reason END"
      " WHERE rollout_id = $1",
      &p, false, NULL);
  free(rj);
  if (res == NULL)
    return -1;
  PQclear(res);
  snprintf(target, sizeof target, "rollout:%" PRIu64, gate_id);
  json_t *detail = json_pack("{s:s, s:O}", "reason", why, "result", result);
  int err =
      fl__audit(c, "gate", pass ? "rollout.gate_passed" : "rollout.gate_failed", target, detail);
  if (err == 0 && promote)
    err = fl__rollout_promote_tx(c, gate_id) ||
          fl__audit(c, "gate", "rollout.promote", target, detail);
  json_decref(detail);
  return err;
}

/* Decides once both means have enough reports. Runs inside the caller's transaction with the
 * rollout row locked. */
static int gate_decide(PGconn *c, uint64_t gate_id, json_t *g, uint64_t cand_v, uint64_t base_v) {
  const char *metric = json_string_value(json_object_get(g, "metric"));
  json_int_t need = json_integer_value(json_object_get(g, "min_reports"));
  bool relative = json_object_get(g, "min_delta") || json_object_get(g, "max_delta");
  bool promote = json_is_true(json_object_get(g, "auto_promote"));
  gate_mean cand = {0}, base = {0};
  if (metric == NULL || gate_means(c, gate_id, metric, cand_v, &cand) ||
      (relative && gate_means(c, gate_id, metric, base_v, &base)))
    return -1;
  if (need < 1)
    need = 1;
  if (cand.reports < need || (relative && base.reports < need))
    return 0;
  char why[200];
  bool pass = gate_holds(g, cand.mean, base.mean, why, sizeof why);
  json_t *result = json_pack("{s:s, s:I, s:I, s:f, s:f, s:f, s:f}", "metric", metric,
                             "candidate_reports", (json_int_t)cand.reports, "current_reports",
                             (json_int_t)base.reports, "candidate", cand.mean, "current", base.mean,
                             "candidate_samples", cand.weight, "current_samples", base.weight);
  if (result == NULL)
    return -1;
  int err = gate_record(c, gate_id, pass, pass && promote, why, result);
  json_decref(result);
  if (err == 0)
    fl__slog(FL_LOG_INFO, "gate_decided", "rollout=%" PRIu64 " pass=%d why=\"%s\"", gate_id, pass,
             why);
  return err;
}

int fl__gate_on_report(PGconn *c, uint64_t gate_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, gate_id);
  if (fl__pg_cmd(c, "BEGIN"))
    return -1;
  PGresult *res = fl__pg_exec(c,
                              "SELECT r.gate::text, r.version, ch.version FROM rollouts r"
                              " JOIN channels ch ON ch.channel_id = r.channel_id"
                              " WHERE r.rollout_id = $1 AND r.gate_state = 'evaluating'"
                              " AND r.state IN ('active', 'paused') FOR UPDATE OF r",
                              &p, false, NULL);
  if (res == NULL)
    goto rollback;
  int err = 0;
  if (PQntuples(res) == 1) {
    json_t *g = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    err = g == NULL ? -1 : gate_decide(c, gate_id, g, fl__pg_u64(res, 0, 1), fl__pg_u64(res, 0, 2));
    json_decref(g);
  }
  PQclear(res);
  if (err || fl__pg_cmd(c, "COMMIT"))
    goto rollback;
  return 0;
rollback:
  fl__pg_cmd(c, "ROLLBACK");
  return -1;
}
