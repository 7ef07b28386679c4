/*
 * POST /v1/updates: every check of an update after authentication (the route's
 * FL_AUTH_UPLOAD policy, auth/pipeline.c, has parsed the envelope and the UpdateUpload,
 * verified its signature, reserved its nonce and read the device's standing in the round), in
 * the order of docs/API.md, then the fold and the group commit. No thread waits for the
 * commit: the request is parked (fl__req_defer, the connection suspended) and the committer's
 * completion resumes it, which answers. The database connection is handed back before that:
 * the committer needs one from the same pool.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rounds/aggregate.h"
#include "rounds/async.h"
#include "auth/auth.h"
#include "codec.h"
#include "device/devapi.h"
#include "digest.h"
#include "drift/stats.h"
#include "mem.h"
#include "rounds/plan.h"
#include "secagg/protocol.h"
#include "rounds/round_cache.h"

typedef struct round_view {
  bool found, open, assigned, accepted;
  uint64_t model_id, base_version;
  uint8_t digest[FL_SHA256_LEN]; /* of the accepted update, when accepted */
  fl_plan plan;
  fl_async_target at; /* an async plan's: the open buffer the update goes into */
} round_view;

/* Model, base version and plan of a round that exists (v->found): from the replica's cache,
 * else from the database (and then cached). 0 or -1 (database error). */
static int load_round(fl_srv *s, PGconn *c, uint64_t round_id, round_view *v) {
  fl_round_info ri;
  fl_pgp p;
  char msg[160];
  if (!v->found)
    return 0;
  if (!fl__round_cached(s->round_cache, round_id, &ri)) {
    fl__pgp_init(&p);
    fl__pgp_u64(&p, round_id);
    PGresult *r = fl__pg_exec_prep(c, "fl_upload_round",
                                   "SELECT r.model_id, r.base_version, p.config::text"
                                   " FROM rounds r JOIN plans p ON p.plan_id = r.plan_id"
                                   " WHERE r.round_id = $1",
                                   &p, false, NULL);
    if (r == NULL)
      return -1;
    if (PQntuples(r) != 1) {
      PQclear(r);
      return -1; /* the round was seen a moment ago and rounds are never deleted */
    }
    json_t *cfg = json_loads(PQgetvalue(r, 0, 2), 0, NULL);
    ri.model_id = fl__pg_u64(r, 0, 0);
    ri.base_version = fl__pg_u64(r, 0, 1);
    int rc = fl__plan_from_json(&ri.plan, cfg, msg);
    json_decref(cfg);
    PQclear(r);
    if (rc != 0)
      return -1;
    fl__round_store(s->round_cache, round_id, &ri);
  }
  v->model_id = ri.model_id;
  v->base_version = ri.base_version;
  v->plan = ri.plan;
  return 0;
}

/* The largest norm an honest device can send: the clip bound, plus the rounding of float16
 * (2^-11 relative) and of int8 (at most scale/2 per element), plus the local Gaussian noise
 * the plan asks for (||N(0, s^2 I_n)|| <= s (sqrt(n) + 6) but with probability e^-18).
 * The int8 allowance grows with a scale the device chooses, so the scale itself is bounded
 * first: an honest one is max|x|/127, and no |x| exceeds the bound before quantisation.
 * Returns -1 when an int8 scale is larger than the bound / 127. */
static double norm_bound(const fl_plan *p, const fl_model_info *mi, Fl__V1__Tensor **t) {
  double q = 0;
  if (p->clip_norm <= 0)
    return INFINITY;
  double b = p->clip_norm * (1.0 + 1e-3) + 1e-6;
  if (p->local_noise_stddev > 0)
    b += p->local_noise_stddev * (sqrt((double)mi->n_params) + 6.0);
  for (size_t i = 0; i < mi->n_tensors; i++) {
    if (t[i]->encoding != FL__V1__ENCODING__ENCODING_INT8)
      continue;
    if ((double)t[i]->scale > b / 127.0)
      return -1.0;
    q += (double)t[i]->count * (0.5 * t[i]->scale) * (0.5 * t[i]->scale);
  }
  return b + sqrt(q);
}

/* The training statistics (drift/stats.h) within bounds, of this model and its inputs. */
static int check_train_stats(const fl_model_info *mi, const Fl__V1__UpdateUpload *u, fl_resp *r) {
  const Fl__V1__DriftStats *t = u->train_stats;
  char msg[160];
  if (t == NULL)
    return 0;
  size_t in = 1;
  for (uint32_t i = 0; i < mi->spec.input_ndim; i++)
    in *= mi->spec.input_shape[i];
  int bad = fl__drift_check(t, msg);
  if (!bad && t->model_id != u->model_id) {
    snprintf(msg, sizeof msg, "train_stats.model_id is not the upload's model");
    bad = -1;
  } else if (!bad && t->n_mean != 0 && t->n_mean != in) {
    snprintf(msg, sizeof msg, "train_stats has %zu features, the model takes %zu", t->n_mean, in);
    bad = -1;
  }
  if (bad)
    fl__resp_dev_error(r, 422, "bad_stats", msg, 0);
  return bad;
}

/* Shapes, values and norm of the delta; *norm receives the norm. Returns 0 or -1 with the
 * refusal in *r. */
static int check_delta(fl_srv *s, const round_view *v, const fl_model_info *mi,
                       const Fl__V1__UpdateUpload *u, fl_resp *r, double *norm) {
  double sq = 0;
  char msg[128];
  /* Shapes against the cached layout, then sizes and values of every tensor. */
  /* One pass over the values checks and measures them (the norm also tells non-finite ones). */
  int err = fl__delta_check_layout_sqnorm(mi->tensors, mi->n_tensors, u->delta, u->n_delta, &sq);
  if (err) {
    snprintf(msg, sizeof msg, "delta does not fit the model: %s", fl_strerror(err));
    fl__resp_dev_error(r, 422, err == FL_E_NONFINITE ? "non_finite" : "bad_shape", msg, 0);
    return -1;
  }
  if (u->sample_count == 0 || u->sample_count > s->cfg.max_samples) {
    fl__resp_dev_error(r, 422, "bad_sample_count", "sample_count out of range", 0);
    return -1;
  }
  if (!isfinite(u->loss) || !isfinite(sq)) {
    fl__resp_dev_error(r, 422, "non_finite", "loss or norm is not finite", 0);
    return -1;
  }
  double bound = norm_bound(&v->plan, mi, u->delta);
  if (bound < 0) {
    fl__resp_dev_error(r, 422, "norm_exceeded", "an int8 scale exceeds the norm bound / 127", 0);
    return -1;
  }
  if (sqrt(sq) > bound) {
    snprintf(msg, sizeof msg, "norm %.6g exceeds the bound %.6g", sqrt(sq), bound);
    fl__resp_dev_error(r, 422, "norm_exceeded", msg, 0);
    return -1;
  }
  /* Adaptive clipping steers the clip by the devices' bits: an update without one would
   * count as clipped and bias the quantile (docs/PRIVACY.md). */
  if (v->plan.clip_target_quantile > 0 &&
      u->clip_state != FL__V1__CLIP_STATE__CLIP_STATE_UNCLIPPED &&
      u->clip_state != FL__V1__CLIP_STATE__CLIP_STATE_CLIPPED) {
    fl__resp_dev_error(r, 422, "missing_clip_state",
                       "the plan clips adaptively: clip_state must be 1 or 2", 0);
    return -1;
  }
  *norm = sqrt(sq);
  return check_train_stats(mi, u, r);
}

/* A DP plan's factor on the delta in the sum: min(1, C / norm), so that one device moves the
 * sum by at most C whatever it sent (encoding rounding and local noise are allowed past C by
 * norm_bound; the sensitivity is not). 0 outside DP plans (aggregate.h). */
static double dp_scale(const fl_plan *p, double norm) {
  if (!FL_PLAN_DP(p))
    return 0.0;
  return norm > p->clip_norm ? p->clip_norm / norm * (1.0 - 0x1.0p-20) : 1.0;
}

/* u: the committed upload (its buffer and staleness for an async plan), NULL for a duplicate. */
static void send_ack(fl_resp *r, uint64_t round_id, bool duplicate, uint32_t accepted,
                     const fl_upload *u) {
  Fl__V1__UpdateAck ack = FL__V1__UPDATE_ACK__INIT;
  ack.round_id = round_id;
  ack.duplicate = duplicate;
  ack.accepted_in_round = accepted;
  ack.buffer_round_id = u != NULL && u->task_round_id != 0 ? u->round_id : 0;
  ack.staleness = u != NULL ? u->tau : 0;
  fl__resp_proto(r, 200, &ack.base);
}

/* Round-level checks. Returns 1 to go on, 0 when *r holds the answer (refusal or duplicate
 * acknowledgement). */
static int check_round(const round_view *v, const Fl__V1__UpdateUpload *u,
                       const uint8_t digest[FL_SHA256_LEN], fl_resp *r) {
  if (!v->found) {
    fl__resp_dev_error(r, 404, "unknown_round", "no such round", 0);
    return 0;
  }
  if (v->accepted) {
    /* Idempotence: the same update again is a lost acknowledgement, anything else a second
     * update, which is refused. Checked before the round state: a retry after the close still
     * learns that its update counted. */
    if (memcmp(digest, v->digest, FL_SHA256_LEN) == 0)
      send_ack(r, u->round_id, true, 0, NULL);
    else
      fl__resp_dev_error(r, 409, "conflicting_update",
                         "a different update was already accepted for this round", 0);
    return 0;
  }
  if (!v->open && !FL_PLAN_IS_ASYNC(&v->plan)) { /* an async task's buffer may have closed */
    fl__resp_dev_error(r, 409, "round_closed", "the round is no longer open", 0);
    return 0;
  }
  if (!v->assigned) {
    fl__resp_dev_error(r, 403, "not_assigned", "device is not assigned to this round", 0);
    return 0;
  }
  if (u->model_id != v->model_id) {
    fl__resp_dev_error(r, 422, "wrong_model", "model_id does not match the round", 0);
    return 0;
  }
  if (u->base_version != v->base_version) {
    fl__resp_dev_error(r, 409, "wrong_base_version", "base_version is not the round's base", 0);
    return 0;
  }
  return 1;
}

/* round_id: the upload's (its task's). An async buffer that closed or filled before the
 * commit is not the device's concern: it retries and lands in the next buffer. */
static void answer_submit(fl_resp *r, int res, uint64_t round_id, uint32_t accepted,
                          const fl_upload *up) {
  if (up->task_round_id != 0 && (res == FL_AGG_ROUND_CLOSED || res == FL_AGG_TARGET_REACHED)) {
    fl__resp_dev_error(r, 503, "buffer_full", "the buffer filled before the commit; retry",
                       fl__now_ms() + 200);
    return;
  }
  switch (res) {
    case FL_AGG_OK:
      send_ack(r, round_id, false, accepted, up);
      break;
    case FL_AGG_ROUND_CLOSED:
      fl__resp_dev_error(r, 409, "round_closed", "the round closed before the update committed", 0);
      break;
    case FL_AGG_TARGET_REACHED:
      fl__resp_dev_error(r, 409, "target_reached",
                         "the round already has its target count of updates; not aggregated", 0);
      break;
    case FL_AGG_IN_PROGRESS:
      fl__resp_dev_error(r, 409, "upload_in_progress",
                         "an upload of this device for this round is being committed",
                         fl__now_ms() + 1000);
      break;
    default:
      fl__resp_dev_error(r, 503, "unavailable", "update not committed; retry", fl__now_ms() + 1000);
      break;
  }
}

/* ----- body limit -------------------------------------------------------------------------- */

/* The bytes of the largest honest upload: top-k with every element kept (a uint32 index and a
 * float32 per parameter, the widest encoding), a Tensor's fields for each of at most two
 * tensors per layer, and the envelope and UpdateUpload fields. Models are created on any
 * replica, so the bound is read from the database and cached; a request that declares more
 * than the cached bound reads it again (a model may have been created since), one reader at a
 * time: requests that waited for a reading use it instead of making their own. */
static pthread_mutex_t g_limit_mu = PTHREAD_MUTEX_INITIALIZER;   /* g_limit, g_limit_gen */
static pthread_mutex_t g_refresh_mu = PTHREAD_MUTEX_INITIALIZER; /* one reader at a time */
static size_t g_limit;
static uint64_t g_limit_gen;

/* 0 when the database cannot say. */
static size_t read_limit(fl_srv *s) {
  size_t lim = 0;
  PGconn *c = fl__pool_get_timed(s->pool, FL_DEVICE_POOL_WAIT_MS);
  if (c == NULL)
    return 0;
  PGresult *r = fl__pg_exec(c,
                            "SELECT coalesce(max(8 * n_params + 128 *"
                            " jsonb_array_length(spec_json->'layers')), 0) FROM models",
                            NULL, false, NULL);
  if (r != NULL && PQntuples(r) == 1)
    lim = (size_t)fl__pg_u64(r, 0, 0) + 4096;
  PQclear(r);
  fl__pool_put(s->pool, c);
  return lim;
}

size_t fl__devapi_update_limit(fl_srv *s, size_t declared) {
  pthread_mutex_lock(&g_limit_mu);
  size_t lim = g_limit;
  uint64_t gen = g_limit_gen;
  pthread_mutex_unlock(&g_limit_mu);
  if (declared <= lim)
    return lim;
  pthread_mutex_lock(&g_refresh_mu);
  pthread_mutex_lock(&g_limit_mu);
  bool fresh_enough = g_limit_gen != gen; /* read while this request waited */
  lim = g_limit;
  pthread_mutex_unlock(&g_limit_mu);
  if (!fresh_enough) {
    size_t got = read_limit(s);
    pthread_mutex_lock(&g_limit_mu);
    if (got > g_limit)
      g_limit = got; /* models are never deleted: the bound only grows */
    if (got != 0)
      g_limit_gen++;
    lim = g_limit;
    pthread_mutex_unlock(&g_limit_mu);
    if (got == 0)
      lim = s->cfg.max_body; /* the request goes on, to the 503 its upload would get anyway */
  }
  pthread_mutex_unlock(&g_refresh_mu);
  return lim;
}

/* The nonce of an authenticated upload that is not committed with its batch is recorded on
 * its own, as for every other device request (docs/API.md: it is consumed even when a later
 * check refuses the request). When that is impossible the answer becomes 503, and when the
 * nonce turns out to be recorded already (a replay that raced this request through another
 * replica) 401 replayed_nonce, the answers the request would have had with the nonce recorded
 * before the checks. The connection becomes the context's (given back with it). */
static void consume_nonce(fl_srv *s, fl_auth *a, fl_resp *r) {
  if (a->c == NULL)
    a->c = fl__pool_get_timed(s->pool, FL_DEVICE_POOL_WAIT_MS);
  int rc = a->c != NULL ? fl__auth_record_nonce(a->c, a->sr->device_id, &a->sr->nonce) : -1;
  if (rc < 0)
    fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
  else if (rc > 0)
    fl__resp_dev_error(r, 401, "replayed_nonce", "nonce already used", 0);
}

/* An upload from its checks to its answer. The fl_upload outlives the handler while the group
 * commit runs (aggregate.h: the committer may refold the batch from it), so it lives here,
 * not on its stack; the messages it points into are the request's (q->auth), freed once the
 * request is answered. */
typedef struct upload_op {
  fl_srv *s;
  fl_req *q;
  bool consume; /* the nonce is still to be recorded on its own */
  fl_upload up;
  int res; /* the committer's result (FL_AGG_*) */
  uint32_t accepted;
} upload_op;

/* What every outcome does last: record the nonce when nothing else did, count a refusal. */
static void upload_end(upload_op *op, fl_resp *r) {
  fl_srv *s = op->s;
  if (op->consume)
    consume_nonce(s, op->q->auth, r);
  if (r->reason != NULL)
    fl__metrics_update_refused(s->metrics, r->reason);
  free(op);
}

/* The completion of fl__agg_submit, on the committer's thread (or the submitter's): keep the
 * result and resume the parked connection, nothing more. */
static void upload_committed(void *arg, int res, uint32_t accepted) {
  upload_op *op = arg;
  op->res = res;
  op->accepted = accepted;
  fl__req_resume(op->q); /* MHD's lock orders these stores before upload_finish reads them */
}

/* The resumed request (fl_finish): the answer to the group commit's result. r == NULL: the
 * connection ended first (http.c), nothing to answer. */
static void upload_finish(fl_srv *s, fl_req *q, fl_resp *r, void *arg) {
  upload_op *op = arg;
  fl_resp unsent = {0}; /* the nonce is consumed all the same */
  int res = op->res;
  if (r == NULL)
    r = &unsent;
  if (res == FL_AGG_OK || res == FL_AGG_REPLAYED || res == FL_AGG_TARGET_REACHED)
    op->consume = false; /* recorded in the batch's transaction, or by the request it replays */
  if (res == FL_AGG_REPLAYED)
    fl__resp_dev_error(r, 401, "replayed_nonce", "nonce already used", 0);
  else
    answer_submit(r, res, op->up.task_round_id ? op->up.task_round_id : op->up.round_id,
                  op->accepted, &op->up);
  if (res == FL_AGG_OK)
    fl__metrics_update_accepted(s->metrics, q->len);
  upload_end(op, r);
  free(unsent.data);
}

/* The checks of an authenticated upload: the round (its cached facts and the device's
 * standing the policy read), the model's layout, the delta. 0 with *v, *mi and *norm set, or
 * -1 with the refusal (or the duplicate's acknowledgement) in *r. */
static int upload_check(fl_srv *s, const fl_auth *a, round_view *v, const fl_model_info **mi,
                        double *norm, fl_resp *r) {
  const Fl__V1__UpdateUpload *u = a->upload;
  memset(v, 0, sizeof *v);
  v->found = a->standing.found;
  v->open = a->standing.open;
  v->assigned = a->standing.assigned;
  v->accepted = a->standing.accepted;
  memcpy(v->digest, a->standing.accepted_digest, sizeof v->digest);
  if (load_round(s, a->c, u->round_id, v) ||
      (v->found && fl__models_get(s, a->c, v->model_id, mi))) {
    fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
    return -1;
  }
  if (check_round(v, u, a->upload_digest, r) == 0)
    return -1;
  v->at = (fl_async_target){.round_id = u->round_id};
  if (FL_PLAN_SECAGG(&v->plan)) {
    /* A masked input says nothing checkable about the update (docs/SECAGG.md): its phase,
     * its sender and its size are checked, the range of the sum at close. */
    int rc = fl__secagg_upload_check(a->c, u->round_id, a->device_id, u, (*mi)->n_params, r);
    if (rc < 0)
      fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
    if (rc <= 0)
      return -1;
    if (u->sample_count == 0 || u->sample_count > s->cfg.max_samples) {
      fl__resp_dev_error(r, 422, "bad_sample_count", "sample_count out of range", 0);
      return -1;
    }
    /* Checked like any upload's, but never stored (upload_submit): the coordinator of a
     * secure-aggregation round learns the sum only, not one device's data statistics. */
    return check_train_stats(*mi, u, r);
  }
  if (check_delta(s, v, *mi, u, r, norm))
    return -1;
  if (FL_PLAN_IS_ASYNC(&v->plan) &&
      fl__async_resolve(a->c, u->round_id, a->device_id, v->base_version, &v->plan, &v->at)) {
    fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
    return -1;
  }
  if (v->at.status != 0) {
    fl__resp_dev_error(r, v->at.status, v->at.reason, v->at.msg, v->at.retry_after_ms);
    return -1;
  }
  return 0;
}

/* Hands the checked upload to the group commit and parks the request until it is durable
 * (upload_committed resumes it, upload_finish answers). */
static void upload_submit(fl_srv *s, fl_req *q, upload_op *op, const round_view *v,
                          const fl_model_info *mi, double norm) {
  fl_auth *a = q->auth;
  const Fl__V1__UpdateUpload *u = a->upload;
  /* The committer takes a connection from the same pool. */
  fl__auth_put_conn(s, a);
  op->up = (fl_upload){.round_id = v->at.round_id,
                       .device_id = a->device_id,
                       .samples = u->sample_count,
                       .loss = u->loss,
                       .bytes = q->len,
                       .mi = mi,
                       .delta = u->delta,
                       .nonce = a->sr->nonce.data,
                       .nonce_len = a->sr->nonce.len,
                       .stored = fl__agg_kind(v->plan.agg.rule) == FL_AGG_STORED,
                       .dp_scale = dp_scale(&v->plan, norm),
                       .unclipped = u->clip_state == FL__V1__CLIP_STATE__CLIP_STATE_UNCLIPPED,
                       .train_stats = FL_PLAN_SECAGG(&v->plan) ? NULL : u->train_stats,
                       .masked = FL_PLAN_SECAGG(&v->plan) ? u->secagg_masked.data : NULL,
                       .task_round_id = FL_PLAN_IS_ASYNC(&v->plan) ? u->round_id : 0,
                       .tau = v->at.tau,
                       .stale_weight = v->at.weight};
  memcpy(op->up.digest, a->upload_digest, sizeof op->up.digest);
  /* Parked before the submit: the completion may resume the connection at once. */
  fl__req_defer(q, upload_finish, op);
  fl__agg_submit(s->agg, &op->up, upload_committed, op);
}

/* FL_AUTH_UPLOAD has authenticated the request: from here on every outcome consumes the nonce
 * (recorded in the group commit with the acceptance, else on its own in upload_end). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r) {
  upload_op *op = calloc(1, sizeof *op);
  const fl_model_info *mi = NULL;
  round_view v;
  double norm = 0;
  if (op == NULL) {
    fl__resp_dev_error(r, 503, "unavailable", "out of memory", fl__now_ms() + 1000);
    consume_nonce(s, q->auth, r);
    fl__metrics_update_refused(s->metrics, r->reason);
    return;
  }
  op->s = s;
  op->q = q;
  op->consume = true;
  if (upload_check(s, q->auth, &v, &mi, &norm, r)) {
    upload_end(op, r);
    return;
  }
  upload_submit(s, q, op, &v, mi, norm);
}
