/*
 * Closing a round. One transaction: advisory lock on the round (replicas that lose the race
 * skip it), row lock on the open round (the committer's "UPDATE ... WHERE state = 'open'"
 * waits behind it, then finds the round closed and refuses its batch, so no acknowledged
 * update can miss the sum), sum of the committed partials in double, server optimizer step,
 * the new signed version, the round's metrics, and the next round. A DP plan's round adds the
 * Gaussian noise, steps the adaptive clip, records the privacy spent and stops the plan when
 * the next round would exceed its max_epsilon (docs/PRIVACY.md).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "codec.h"
#include "drift/drift.h"
#include "privacy/accountant.h"
#include "privacy/budget.h"
#include "registry/models.h"
#include "rounds/aggregator.h"
#include "rounds/async.h"
#include "rounds/optimizer.h"
#include "rng.h"
#include "rounds/rounds.h"
#include "secagg/protocol.h"

/* Names the advisory lock space of rounds ("FLrd"); the round id is the second key. */
#define ROUND_LOCK_CLASS "1179415140"

typedef struct round_row {
  uint64_t round_id, plan_id, model_id, base_version;
  uint32_t target, min_count, accepted, rounds_done;
  bool deadline_passed;
  double seconds;
  double dp_rate; /* the DP plan's sampling rate, recorded when it started (1 when absent) */
  fl_plan plan;
} round_row;

typedef struct round_sum {
  double *sum;
  double weight, loss_sum;
  uint64_t count, bytes, unclipped;
} round_sum;

/* Locks the round if it is open. 1 locked, 0 not open / another replica is on it, -1 error. */
static int lock_round(PGconn *c, uint64_t round_id, round_row *rr) {
  fl_pgp p;
  char msg[160];
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT pg_try_advisory_xact_lock(" ROUND_LOCK_CLASS
                            ", ($1::bigint % 2147483647)::int)",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  bool got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
  PQclear(r);
  if (!got)
    return 0;
  r = fl__pg_exec(c,
                  "SELECT r.plan_id, r.model_id, r.base_version, r.target, r.min_count,"
                  " r.accepted, r.deadline_at <= now(),"
                  " extract(epoch FROM now() - r.opened_at)::float8, p.config::text,"
                  " p.rounds_done, coalesce(p.dp_sampling_rate, 1)"
                  " FROM rounds r JOIN plans p ON p.plan_id = r.plan_id"
                  " WHERE r.round_id = $1 AND r.state = 'open' FOR UPDATE OF r",
                  &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    json_t *cfg = json_loads(PQgetvalue(r, 0, 8), 0, NULL);
    rr->round_id = round_id;
    rr->plan_id = fl__pg_u64(r, 0, 0);
    rr->model_id = fl__pg_u64(r, 0, 1);
    rr->base_version = fl__pg_u64(r, 0, 2);
    rr->target = (uint32_t)fl__pg_u64(r, 0, 3);
    rr->min_count = (uint32_t)fl__pg_u64(r, 0, 4);
    rr->accepted = (uint32_t)fl__pg_u64(r, 0, 5);
    rr->deadline_passed = strcmp(PQgetvalue(r, 0, 6), "t") == 0;
    rr->seconds = fl__pg_f64(r, 0, 7);
    rr->rounds_done = (uint32_t)fl__pg_u64(r, 0, 9);
    rr->dp_rate = fl__pg_f64(r, 0, 10);
    rc = fl__plan_from_json(&rr->plan, cfg, msg) == 0 ? 1 : -1;
    json_decref(cfg);
  }
  PQclear(r);
  return rc;
}

/* Sums the committed partials of the round in double. */
static int sum_partials(PGconn *c, uint64_t round_id, size_t n, round_sum *rs) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT sum, weight, count, loss_sum, bytes, unclipped FROM partials"
                            " WHERE round_id = $1",
                            &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_OK;
  memset(rs, 0, sizeof *rs);
  rs->sum = calloc(n ? n : 1, sizeof *rs->sum);
  if (rs->sum == NULL)
    err = FL_E_NOMEM;
  for (int row = 0; err == FL_OK && row < PQntuples(r); row++) {
    const float *v = (const float *)(const void *)PQgetvalue(r, row, 0);
    if ((size_t)PQgetlength(r, row, 0) != n * sizeof(float)) {
      err = FL_E_SHAPE;
      break;
    }
    for (size_t i = 0; i < n; i++) {
      float x;
      memcpy(&x, v + i, sizeof x); /* bytea data need not be aligned */
      rs->sum[i] += x;
    }
    rs->weight += fl__pg_bin_f64(r, row, 1);
    rs->count += (uint64_t)fl__pg_bin_i32(r, row, 2);
    rs->loss_sum += fl__pg_bin_f64(r, row, 3);
    rs->bytes += (uint64_t)fl__pg_bin_i64(r, row, 4);
    rs->unclipped += (uint64_t)fl__pg_bin_i32(r, row, 5);
  }
  PQclear(r);
  return err;
}

/* A stored round's updates, as committed (fl__delta_pack), viewed in place: the result holds
 * the n encoded blobs (their compressed size) and the aggregator decodes coordinate blocks
 * on demand, so no decoded copy of a whole update is ever made. */
typedef struct stored_src {
  const fl_model_info *mi;
  Fl__V1__Tensor *views; /* n * n_tensors, pointing into the PGresult */
  Fl__V1__Tensor **ptrs; /* the same, as the pointer arrays codec takes */
} stored_src;

static int stored_read(void *ctx, size_t i, size_t off, size_t len, float *dst) {
  const stored_src *ss = ctx;
  size_t nt = ss->mi->n_tensors;
  return fl__delta_decode_range(ss->ptrs + i * nt, ss->mi->tensors, nt, off, len, dst);
}

/* Runs the plan's stored aggregator over the round's updates (in device id order, which is
 * how the rules' index tie-break reads) into out. FL_E_REFUSED when fewer updates are stored
 * than the rule needs (plan validation makes that unreachable for rounds it opened);
 * FL_E_PARSE when a stored update does not parse as the model's layout. */
static int stored_aggregate(PGconn *c, const round_row *rr, const fl_model_info *mi, float *out) {
  stored_src ss = {.mi = mi};
  fl_agg_source src;
  fl_pgp p;
  int err = FL_E_NOMEM;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rr->round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT delta FROM round_updates WHERE round_id = $1"
                            " ORDER BY device_id",
                            &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  size_t n = (size_t)PQntuples(r), nt = mi->n_tensors;
  if (n < fl__agg_min_updates(&rr->plan.agg)) {
    err = FL_E_REFUSED;
    goto out;
  }
  ss.views = calloc(n * nt + 1, sizeof *ss.views);
  ss.ptrs = calloc(n * nt + 1, sizeof *ss.ptrs);
  if (ss.views == NULL || ss.ptrs == NULL)
    goto out;
  err = FL_OK;
  for (size_t i = 0; i < n && err == FL_OK; i++)
    err = fl__delta_view((const uint8_t *)PQgetvalue(r, (int)i, 0),
                         (size_t)PQgetlength(r, (int)i, 0), mi->tensors, nt, ss.views + i * nt);
  if (err != FL_OK)
    err = FL_E_PARSE;
  for (size_t k = 0; k < n * nt; k++)
    ss.ptrs[k] = &ss.views[k];
  src = (fl_agg_source){.n = n, .dim = mi->n_params, .read = stored_read, .ctx = &ss};
  if (err == FL_OK)
    err = fl__agg_run(&rr->plan.agg, &src, out, NULL);
out:
  free(ss.views);
  free(ss.ptrs);
  PQclear(r);
  return err;
}

/* Reads (or initialises) the optimizer state, steps w, and writes the state back. */
static int optimizer_step(PGconn *c, const round_row *rr, float *w, const float *mean,
                          size_t n) {
  int ns = fl__opt_num_state(rr->plan.opt.kind);
  float *m = NULL, *v = NULL;
  fl_pgp p;
  int err = FL_E_NOMEM;
  if (ns == 0) {
    fl__opt_step(&rr->plan.opt, w, mean, NULL, NULL, n);
    return FL_OK;
  }
  m = calloc(n + 1, sizeof *m);
  v = ns > 1 ? calloc(n + 1, sizeof *v) : NULL;
  if (m == NULL || (ns > 1 && v == NULL))
    goto out;
  fl__opt_init_state(&rr->plan.opt, m, v, n);
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rr->plan_id);
  PGresult *r = fl__pg_exec(c, "SELECT m, v FROM optimizer_state WHERE plan_id = $1", &p, true,
                            NULL);
  err = FL_E_DB;
  if (r == NULL)
    goto out;
  if (PQntuples(r) == 1 && (size_t)PQgetlength(r, 0, 0) == n * sizeof(float))
    memcpy(m, PQgetvalue(r, 0, 0), n * sizeof(float));
  if (v && PQntuples(r) == 1 && (size_t)PQgetlength(r, 0, 1) == n * sizeof(float))
    memcpy(v, PQgetvalue(r, 0, 1), n * sizeof(float));
  PQclear(r);
  fl__opt_step(&rr->plan.opt, w, mean, m, v, n);
  fl__pgp_bin(&p, m, n * sizeof(float));
  if (v)
    fl__pgp_bin(&p, v, n * sizeof(float));
  else
    fl__pgp_text(&p, NULL);
  r = fl__pg_exec(c,
                  "INSERT INTO optimizer_state (plan_id, step, m, v) VALUES ($1, 1, $2, $3)"
                  " ON CONFLICT (plan_id) DO UPDATE"
                  " SET step = optimizer_state.step + 1, m = $2, v = $3",
                  &p, false, NULL);
  if (r != NULL) {
    PQclear(r);
    err = FL_OK;
  }
out:
  free(m);
  free(v);
  return err;
}

/* The adaptive clip stays where a float32 delta and the plan's validation can follow it. */
#define CLIP_MIN 1e-6
#define CLIP_MAX 1e9

/* DP-FedAvg at close (docs/PRIVACY.md). The sum holds each update once, clipped to C
 * (upload.c's dp_scale), so one device moves it by at most C: Gaussian noise of sd z * C on the
 * sum, z * C / count on the mean. With adaptive clipping (Andrew et al. 2021) the budget z is
 * split: the update sum gets z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), the count of unclipped
 * updates N(0, sigma_b^2), and the next clip is C exp(-eta (b_bar - gamma)) with b_bar the
 * noised unclipped fraction; a plan without noise adapts on the exact fraction. The noise comes
 * from the CSPRNG (rng.c's secure mode: OpenSSL RAND_bytes). *next_clip receives the next
 * round's clip (0 when the clip is fixed); the figures go into metrics. */
static int dp_close(const round_row *rr, const round_sum *rs, float *mean, size_t n,
                    json_t *metrics, double *next_clip) {
  const fl_plan *p = &rr->plan;
  bool adaptive = p->clip_target_quantile > 0;
  fl_rng rng;
  *next_clip = 0;
  if ((!FL_PLAN_DP(p) && !adaptive) || rs->count == 0)
    return FL_OK;
  if (fl__rng_init_secure(&rng))
    return FL_E_CRYPTO;
  double count = (double)rs->count, sb = FL_PLAN_DP(p) ? fl__plan_count_stddev(p) : 0.0;
  double z = p->noise_multiplier;
  if (FL_PLAN_DP(p) && adaptive)
    z = fl__dp_update_multiplier(p->noise_multiplier, sb);
  double sd = FL_PLAN_DP(p) ? z * p->clip_norm / count : 0.0;
  for (size_t i = 0; sd > 0 && i < n; i++)
    mean[i] = (float)(mean[i] + sd * fl__rng_normal(&rng));
  int bad = json_object_set_new(metrics, "clip_norm", json_real(p->clip_norm));
  if (FL_PLAN_DP(p))
    bad |= json_object_set_new(metrics, "noise_stddev", json_real(sd)) |
           json_object_set_new(metrics, "update_noise_multiplier", json_real(z)) |
           json_object_set_new(metrics, "privacy",
                               fl__privacy_json(p, rr->dp_rate, (uint64_t)rr->rounds_done + 1));
  if (adaptive) {
    double b = ((double)rs->unclipped + (sb > 0 ? sb * fl__rng_normal(&rng) : 0.0)) / count;
    double c = fl__dp_next_clip(p->clip_norm, p->clip_learning_rate, b, p->clip_target_quantile);
    *next_clip = c < CLIP_MIN ? CLIP_MIN : c > CLIP_MAX ? CLIP_MAX : c;
    bad |= json_object_set_new(metrics, "unclipped_fraction", json_real(b)) |
           json_object_set_new(metrics, "next_clip_norm", json_real(*next_clip));
  }
  if (fl__rng_error(&rng))
    return FL_E_CRYPTO;
  return bad ? FL_E_NOMEM : FL_OK;
}

/* The next round's clip goes into the plan, where check-ins (the task's clip_norm) and uploads
 * (the norm bound) read it. */
static int store_clip(PGconn *c, uint64_t plan_id, double clip) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, plan_id);
  fl__pgp_f64(&p, clip);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE plans SET config = jsonb_set(config, '{clip_norm}',"
                            " to_jsonb($2::float8)) WHERE plan_id = $1",
                            &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  return FL_OK;
}

/* True when one more round would take a DP plan past its max_epsilon: the plan stops now,
 * with the epsilon it has spent (docs/PRIVACY.md). */
static bool over_budget(const round_row *rr, double *spent, double *next) {
  const fl_plan *p = &rr->plan;
  if (!FL_PLAN_DP(p) || p->max_epsilon <= 0)
    return false;
  *spent = fl__privacy_epsilon(p, rr->dp_rate, (uint64_t)rr->rounds_done + 1);
  *next = fl__privacy_epsilon(p, rr->dp_rate, (uint64_t)rr->rounds_done + 2);
  return !(*next <= p->max_epsilon);
}

static int audit_budget_stop(PGconn *c, const round_row *rr, double spent, double next) {
  char target[32];
  snprintf(target, sizeof target, "plan:%" PRIu64, rr->plan_id);
  json_t *d =
      json_pack("{s:I, s:s, s:f, s:f, s:f, s:I}", "plan_id", (json_int_t)rr->plan_id, "reason",
                "max_epsilon", "epsilon", spent, "next_epsilon", isfinite(next) ? next : 1e308,
                "max_epsilon", rr->plan.max_epsilon, "rounds", (json_int_t)rr->rounds_done + 1);
  int rc = d != NULL && fl__audit(c, "coordinator", "plan.stop", target, d) == 0 ? FL_OK : FL_E_DB;
  json_decref(d);
  fl__slog(FL_LOG_INFO, "plan_budget_stop",
           "plan=%" PRIu64 " epsilon=%.4f next=%.4f max_epsilon=%.4f", rr->plan_id, spent, next,
           rr->plan.max_epsilon);
  return rc;
}

/* The next version number of a model. A model may have two active plans (its main plan and
 * a drift retraining plan for a cohort, docs/DRIFT.md 4) whose rounds close concurrently: the
 * model's row, locked until the closer's transaction ends, serializes the number and the
 * insert that uses it (FOR NO KEY UPDATE: foreign-key checks of other inserts do not wait). */
static int next_version(PGconn *c, uint64_t model_id, uint64_t *v) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT coalesce(max(v.version), 0) + 1 FROM"
                            " (SELECT model_id FROM models WHERE model_id = $1 FOR NO KEY UPDATE) m"
                            " LEFT JOIN versions v ON v.model_id = m.model_id",
                            &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  *v = fl__pg_u64(r, 0, 0);
  PQclear(r);
  return FL_OK;
}

/* Marks the round closed, counts it in the plan and opens the next round if the plan goes on. */
static int finish_round(PGconn *c, const round_row *rr, const char *state, uint64_t version,
                        json_t *metrics, const char *reason, uint64_t next_base) {
  char *mj = metrics ? json_dumps(metrics, JSON_COMPACT) : NULL;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rr->round_id);
  fl__pgp_text(&p, state);
  if (version)
    fl__pgp_u64(&p, version);
  else
    fl__pgp_text(&p, NULL);
  fl__pgp_text(&p, mj ? mj : "{}");
  fl__pgp_text(&p, reason);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE rounds SET state = $2, closed_at = now(),"
                            " result_version = $3, metrics = $4::jsonb, reason = $5"
                            " WHERE round_id = $1",
                            &p, false, NULL);
  free(mj);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  bool counted = strcmp(state, "closed") == 0;
  bool done = counted && rr->plan.rounds > 0 && rr->rounds_done + 1 >= rr->plan.rounds;
  double spent = 0, next_eps = 0;
  bool stop = counted && !done && over_budget(rr, &spent, &next_eps);
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rr->plan_id);
  fl__pgp_u64(&p, counted ? 1 : 0);
  fl__pgp_text(&p, done ? "done" : stop ? "stopped" : "active");
  r = fl__pg_exec(c,
                  "UPDATE plans SET rounds_done = rounds_done + $2, state = $3"
                  " WHERE plan_id = $1 AND state = 'active' RETURNING plan_id",
                  &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  bool active = PQntuples(r) == 1 && !done && !stop;
  bool stopped = PQntuples(r) == 1 && stop;
  PQclear(r);
  if (stopped && audit_budget_stop(c, rr, spent, next_eps) != FL_OK)
    return FL_E_DB;
  uint64_t next;
  return active ? fl__round_open(c, rr->plan_id, rr->model_id, next_base, &rr->plan, &next)
                : FL_OK;
}

static json_t *round_metrics(const round_row *rr, const round_sum *rs) {
  return json_pack("{s:I, s:f, s:I, s:I, s:f, s:I, s:s}", "participants", (json_int_t)rs->count,
                   "mean_loss", rs->weight > 0 ? rs->loss_sum / rs->weight : 0.0, "total_samples",
                   (json_int_t)llround(rs->weight), "bytes_received", (json_int_t)rs->bytes,
                   "seconds", rr->seconds, "round_id", (json_int_t)rr->round_id, "aggregator",
                   fl__agg_rule_name(rr->plan.agg.rule));
}

static bool all_finite(const float *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(v[i]))
      return false;
  return true;
}

/* Builds and stores the new version; *version receives its number. FL_E_NONFINITE when the
 * mean update or the new weights are not all finite: without a norm bound (clip_norm 0) one
 * device can send values that overflow the fold, and such a version would poison every later
 * round and every device that runs it. The optimizer state may then have been written: the
 * caller rolls back to its savepoint. */
static int close_round(fl_srv *s, PGconn *c, const round_row *rr, uint64_t *version, char *why,
                       size_t why_len) {
  const fl_model_info *mi;
  round_sum rs = {0};
  float *w = NULL, *mean = NULL;
  json_t *metrics = NULL;
  double next_clip = 0;
  int err = fl__models_get(s, c, rr->model_id, &mi);
  if (err == FL_OK)
    err = sum_partials(c, rr->round_id, mi->n_params, &rs);
  if (err == FL_OK && rs.weight <= 0)
    err = FL_E_STATE;
  if (err == FL_OK)
    err = fl__version_weights(c, mi, rr->base_version, &w);
  if (err)
    goto out;
  err = FL_E_NOMEM;
  mean = malloc((mi->n_params + 1) * sizeof *mean);
  metrics = round_metrics(rr, &rs);
  if (mean == NULL || metrics == NULL)
    goto out;
  err = fl__async_close_metrics(c, rr->round_id, &rr->plan, metrics) ? FL_E_DB : FL_OK;
  if (err)
    goto out;
  if (FL_PLAN_SECAGG(&rr->plan)) {
    uint32_t count = 0;
    err = fl__secagg_mean(c, rr->round_id, &rr->plan, mi->n_params, mean, &count, why, why_len);
    if (err != FL_OK)
      goto out;
  } else if (fl__agg_kind(rr->plan.agg.rule) == FL_AGG_STORED) {
    err = stored_aggregate(c, rr, mi, mean);
    if (err != FL_OK)
      goto out;
  } else {
    for (size_t i = 0; i < mi->n_params; i++)
      mean[i] = (float)(rs.sum[i] / rs.weight);
  }
  err = dp_close(rr, &rs, mean, mi->n_params, metrics, &next_clip);
  if (err == FL_OK && !all_finite(mean, mi->n_params))
    err = FL_E_NONFINITE;
  if (err == FL_OK)
    err = optimizer_step(c, rr, w, mean, mi->n_params);
  if (err == FL_OK && !all_finite(w, mi->n_params))
    err = FL_E_NONFINITE;
  if (err == FL_OK)
    err = next_version(c, rr->model_id, version);
  if (err == FL_OK)
    err = fl__version_insert(s, c, mi, *version, rr->base_version, rr->round_id, w, metrics,
                             NULL);
  /* Every new version of a plan with an evaluation policy is evaluated by a sample of its
   * cohort (registry/evaluation.h): opened with the version, in its transaction. */
  if (err == FL_OK && rr->plan.eval.on &&
      fl__eval_open(c, rr->plan_id, &rr->plan.eval, &rr->plan.cohort, rr->model_id, *version))
    err = FL_E_DB;
  if (err == FL_OK)
    err = fl__drift_reference(c, rr->round_id, rr->model_id, *version);
  if (err == FL_OK)
    err = finish_round(c, rr, "closed", *version, metrics, NULL, *version);
  if (err == FL_OK && next_clip > 0)
    err = store_clip(c, rr->plan_id, next_clip);
out:
  json_decref(metrics);
  free(mean);
  free(w);
  free(rs.sum);
  return err;
}

/* A finished round's partial sums and stored updates are folded into its version (or given
 * up with it), so they go in the same transaction: otherwise every group commit would leave
 * parameter-sized rows behind forever. The acceptances stay: they are the per-device record
 * of the round. */
static int drop_partials(PGconn *c, uint64_t round_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c, "DELETE FROM partials WHERE round_id = $1", &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  r = fl__pg_exec(c, "DELETE FROM round_updates WHERE round_id = $1", &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  int err = fl__drift_drop_train(c, round_id);
  return err != 0 ? err : fl__secagg_forget(c, round_id);
}

int fl__round_try_close(fl_srv *s, uint64_t round_id) {
  round_row rr;
  uint64_t version = 0;
  const char *outcome = NULL;
  char reason[256];
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL)
    return -1;
  int rc = -1;
  if (fl__pg_cmd(c, "BEGIN"))
    goto out;
  int locked = lock_round(c, round_id, &rr);
  if (locked <= 0) {
    rc = locked;
    goto out;
  }
  /* A secure-aggregation round closes when its unmasking phase is over (secagg/phases.c). */
  int sa =
      FL_PLAN_SECAGG(&rr.plan) ? fl__secagg_close_state(c, round_id, reason, sizeof reason) : 3;
  if (sa < 0)
    goto out;
  if (sa == 3 ? rr.accepted >= rr.target || (rr.deadline_passed && rr.accepted >= rr.min_count)
              : sa == 1) {
    outcome = "closed";
    int err = fl__pg_cmd(c, "SAVEPOINT fl_close")
                  ? FL_E_DB
                  : close_round(s, c, &rr, &version, reason, sizeof reason);
    rc = err == FL_OK ? 0 : -1;
    if (err == FL_E_NONFINITE || err == FL_E_REFUSED || err == FL_E_PARSE) {
      /* Refused, not retried: the same partials would give the same aggregate. The round is
       * abandoned and the next one starts from the same base version. */
      outcome = "abandoned";
      version = 0;
      if (err == FL_E_REFUSED && sa == 1) {
        /* the secure aggregation's reason is there, from fl__secagg_mean */
      } else if (err == FL_E_NONFINITE)
        snprintf(reason, sizeof reason, "non_finite_aggregate: %u updates summed to NaN or Inf",
                 rr.accepted);
      else if (err == FL_E_REFUSED)
        snprintf(reason, sizeof reason, "too_few_updates: fewer stored updates than %s needs (%zu)",
                 fl__agg_rule_name(rr.plan.agg.rule), fl__agg_min_updates(&rr.plan.agg));
      else
        snprintf(reason, sizeof reason, "bad_stored_update: a stored update does not parse");
      fl__slog(FL_LOG_WARN, "round_aggregate_refused", "round=%" PRIu64 " reason=\"%s\"", round_id,
               reason);
      rc = fl__pg_cmd(c, "ROLLBACK TO SAVEPOINT fl_close") ||
                   finish_round(c, &rr, "abandoned", 0, NULL, reason, rr.base_version) != FL_OK
               ? -1
               : 0;
    }
  } else if (sa == 2 || (sa == 3 && rr.deadline_passed)) {
    outcome = "abandoned";
    if (sa == 3)
      snprintf(reason, sizeof reason, "deadline_without_minimum: accepted %u < min %u", rr.accepted,
               rr.min_count);
    rc = finish_round(c, &rr, "abandoned", 0, NULL, reason, rr.base_version) == FL_OK ? 0 : -1;
  } else {
    rc = 0;
  }
  if (outcome != NULL && rc == 0 && drop_partials(c, round_id) != FL_OK)
    rc = -1;
  if (outcome != NULL && rc == 0 && fl__pg_cmd(c, "COMMIT"))
    rc = -1;
  if (outcome != NULL && rc == 0) {
    fl__metrics_round(s->metrics, strcmp(outcome, "closed") == 0);
    fl__slog(FL_LOG_INFO, "round_finished",
             "round=%" PRIu64 " outcome=%s accepted=%u version=%" PRIu64 " seconds=%.3f",
             round_id, outcome, rr.accepted, version, rr.seconds);
  } else if (rc != 0) {
    fl__slog(FL_LOG_WARN, "round_close_failed", "round=%" PRIu64, round_id);
  }
out:
  fl__pool_put(s->pool, c);
  return rc;
}
