/*
 * Closing a round. One transaction: advisory lock on the round (replicas that lose the race
 * skip it), row lock on the open round (the committer's "UPDATE ... WHERE state = 'open'"
 * waits behind it, then finds the round closed and refuses its batch, so no acknowledged
 * update can miss the sum), sum of the committed partials in double, server optimizer step,
 * the new signed version, the round's metrics, and the next round.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "registry/models.h"
#include "rounds/aggregator.h"
#include "rounds/optimizer.h"
#include "rng.h"
#include "rounds/rounds.h"

/* Names the advisory lock space of rounds ("FLrd"); the round id is the second key. */
#define ROUND_LOCK_CLASS "1179415140"

typedef struct round_row {
  uint64_t round_id, plan_id, model_id, base_version;
  uint32_t target, min_count, accepted, rounds_done;
  bool deadline_passed;
  double seconds;
  fl_plan plan;
} round_row;

typedef struct round_sum {
  double *sum;
  double weight, loss_sum;
  uint64_t count, bytes;
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
                  " p.rounds_done"
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
                            "SELECT sum, weight, count, loss_sum, bytes FROM partials"
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

/* Central DP (Gaussian mechanism on the mean of clipped updates): stddev z * C / count. */
static int add_central_noise(const round_row *rr, float *mean, size_t n, uint64_t count) {
  fl_rng rng;
  if (rr->plan.noise_multiplier <= 0 || count == 0)
    return FL_OK;
  if (fl__rng_init_secure(&rng))
    return FL_E_CRYPTO;
  double sd = rr->plan.noise_multiplier * rr->plan.clip_norm / (double)count;
  for (size_t i = 0; i < n; i++)
    mean[i] = (float)(mean[i] + sd * fl__rng_normal(&rng));
  return FL_OK;
}

/* The next version number of a model (versions are only inserted by closers that hold the
 * round lock of the model's only active plan). */
static int next_version(PGconn *c, uint64_t model_id, uint64_t *v) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  PGresult *r = fl__pg_exec(c, "SELECT coalesce(max(version), 0) + 1 FROM versions"
                               " WHERE model_id = $1", &p, false, NULL);
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
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rr->plan_id);
  fl__pgp_u64(&p, counted ? 1 : 0);
  fl__pgp_text(&p, done ? "done" : "active");
  r = fl__pg_exec(c,
                  "UPDATE plans SET rounds_done = rounds_done + $2, state = $3"
                  " WHERE plan_id = $1 AND state = 'active' RETURNING plan_id",
                  &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  bool active = PQntuples(r) == 1 && !done;
  PQclear(r);
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
static int close_round(fl_srv *s, PGconn *c, const round_row *rr, uint64_t *version) {
  const fl_model_info *mi;
  round_sum rs = {0};
  float *w = NULL, *mean = NULL;
  json_t *metrics = NULL;
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
  if (fl__agg_kind(rr->plan.agg.rule) == FL_AGG_STORED) {
    err = stored_aggregate(c, rr, mi, mean);
    if (err != FL_OK)
      goto out;
  } else {
    for (size_t i = 0; i < mi->n_params; i++)
      mean[i] = (float)(rs.sum[i] / rs.weight);
  }
  err = add_central_noise(rr, mean, mi->n_params, rs.count);
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
  if (err == FL_OK)
    err = finish_round(c, rr, "closed", *version, metrics, NULL, *version);
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
  return FL_OK;
}

int fl__round_try_close(fl_srv *s, uint64_t round_id) {
  round_row rr;
  uint64_t version = 0;
  const char *outcome = NULL;
  char reason[128];
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
  if (rr.accepted >= rr.target || (rr.deadline_passed && rr.accepted >= rr.min_count)) {
    outcome = "closed";
    int err = fl__pg_cmd(c, "SAVEPOINT fl_close") ? FL_E_DB : close_round(s, c, &rr, &version);
    rc = err == FL_OK ? 0 : -1;
    if (err == FL_E_NONFINITE || err == FL_E_REFUSED || err == FL_E_PARSE) {
      /* Refused, not retried: the same partials would give the same aggregate. The round is
       * abandoned and the next one starts from the same base version. */
      outcome = "abandoned";
      version = 0;
      if (err == FL_E_NONFINITE)
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
  } else if (rr.deadline_passed) {
    outcome = "abandoned";
    snprintf(reason, sizeof reason, "deadline_without_minimum: accepted %u < min %u",
             rr.accepted, rr.min_count);
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
