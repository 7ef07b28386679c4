/*
 * POST /v1/updates: every check of an update, in the order of docs/API.md, then the fold and
 * the wait for the group commit. The database connection is handed back before waiting: the
 * committer needs one from the same pool.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"
#include "auth.h"
#include "codec.h"
#include "devapi.h"
#include "digest.h"
#include "mem.h"
#include "plan.h"

typedef struct round_view {
  bool found, open, assigned, accepted;
  uint64_t model_id, base_version;
  char digest_hex[2 * FL_SHA256_LEN + 1];
  fl_plan plan;
} round_view;

/* What the coordinator knows about this device in this round. 0 or -1 (database error). */
static int load_round_view(PGconn *c, uint64_t round_id, uint64_t device_id, round_view *v) {
  fl_pgp p;
  char msg[160];
  memset(v, 0, sizeof *v);
  if (round_id > INT64_MAX)
    return 0; /* round ids are bigserial: no such round (and no bigint to query with) */
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_u64(&p, device_id);
  PGresult *r = fl__pg_exec(
      c,
      "SELECT r.state, r.model_id, r.base_version, p.config::text,"
      " EXISTS (SELECT 1 FROM assignments a WHERE a.round_id = r.round_id AND a.device_id = $2),"
      " (SELECT encode(x.digest, 'hex') FROM acceptances x"
      "  WHERE x.round_id = r.round_id AND x.device_id = $2)"
      " FROM rounds r JOIN plans p ON p.plan_id = r.plan_id WHERE r.round_id = $1",
      &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    json_t *cfg = json_loads(PQgetvalue(r, 0, 3), 0, NULL);
    v->found = true;
    v->open = strcmp(PQgetvalue(r, 0, 0), "open") == 0;
    v->model_id = fl__pg_u64(r, 0, 1);
    v->base_version = fl__pg_u64(r, 0, 2);
    v->assigned = strcmp(PQgetvalue(r, 0, 4), "t") == 0;
    v->accepted = !PQgetisnull(r, 0, 5);
    snprintf(v->digest_hex, sizeof v->digest_hex, "%s", PQgetvalue(r, 0, 5));
    rc = fl__plan_from_json(&v->plan, cfg, msg) == 0 ? 0 : -1;
    json_decref(cfg);
  }
  PQclear(r);
  return rc;
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

/* Shapes, values and norm of the delta. Returns 0 or -1 with the refusal in *r. */
static int check_delta(fl_srv *s, const round_view *v, const fl_model_info *mi,
                       const Fl__V1__UpdateUpload *u, fl_resp *r) {
  double sq = 0;
  char msg[128];
  /* Shapes against the cached layout, then sizes and values of every tensor. */
  int err = fl__delta_check_layout(mi->tensors, mi->n_tensors, u->delta, u->n_delta);
  if (err) {
    snprintf(msg, sizeof msg, "delta does not fit the model: %s", fl_strerror(err));
    fl__resp_dev_error(r, 422, err == FL_E_NONFINITE ? "non_finite" : "bad_shape", msg, 0);
    return -1;
  }
  for (size_t i = 0; i < u->n_delta; i++)
    sq += fl__tensor_sqnorm(u->delta[i]);
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
  return 0;
}

static void send_ack(fl_resp *r, uint64_t round_id, bool duplicate, uint32_t accepted) {
  Fl__V1__UpdateAck ack = FL__V1__UPDATE_ACK__INIT;
  ack.round_id = round_id;
  ack.duplicate = duplicate;
  ack.accepted_in_round = accepted;
  fl__resp_proto(r, 200, &ack.base);
}

/* Round-level checks. Returns 1 to go on, 0 when *r holds the answer (refusal or duplicate
 * acknowledgement). */
static int check_round(const round_view *v, const Fl__V1__UpdateUpload *u,
                       const uint8_t digest[FL_SHA256_LEN], fl_resp *r) {
  char hex[2 * FL_SHA256_LEN + 1];
  if (!v->found) {
    fl__resp_dev_error(r, 404, "unknown_round", "no such round", 0);
    return 0;
  }
  if (v->accepted) {
    /* Idempotence: the same update again is a lost acknowledgement, anything else a second
     * update, which is refused. Checked before the round state: a retry after the close still
     * learns that its update counted. */
    fl__hex(digest, FL_SHA256_LEN, hex);
    if (strcmp(hex, v->digest_hex) == 0)
      send_ack(r, u->round_id, true, 0);
    else
      fl__resp_dev_error(r, 409, "conflicting_update",
                         "a different update was already accepted for this round", 0);
    return 0;
  }
  if (!v->open) {
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

static void answer_submit(fl_resp *r, int res, uint64_t round_id, uint32_t accepted) {
  switch (res) {
  case FL_AGG_OK:
    send_ack(r, round_id, false, accepted);
    break;
  case FL_AGG_ROUND_CLOSED:
    fl__resp_dev_error(r, 409, "round_closed", "the round closed before the update committed",
                       0);
    break;
  case FL_AGG_IN_PROGRESS:
    fl__resp_dev_error(r, 409, "upload_in_progress",
                       "an upload of this device for this round is being committed",
                       fl__now_ms() + 1000);
    break;
  default:
    fl__resp_dev_error(r, 503, "unavailable", "update not committed; retry",
                       fl__now_ms() + 1000);
    break;
  }
}

void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r) {
  Fl__V1__SignedRequest *sr = fl__auth_envelope(s, q, r);
  Fl__V1__UpdateUpload *u = NULL;
  uint8_t pub[FL_PUBKEY_LEN], digest[FL_SHA256_LEN];
  const fl_model_info *mi;
  round_view v;
  if (sr == NULL)
    goto refused;
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL) {
    fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
    goto out;
  }
  if (fl__auth_device(s, c, q, sr, NULL, pub, r))
    goto out_put;
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, sr->body.len);
  u = fl__v1__update_upload__unpack(&pa, sr->body.len, sr->body.data);
  if (u == NULL) {
    fl__resp_dev_error(r, 400, "malformed_request", "body is not an UpdateUpload", 0);
    goto out_put;
  }
  if (fl__update_digest(sr->device_id, u, digest) ||
      fl__verify_raw(pub, digest, sizeof digest, u->signature.data, u->signature.len)) {
    fl__resp_dev_error(r, 401, "bad_update_signature", "update signature does not verify", 0);
    goto out_put;
  }
  if (load_round_view(c, u->round_id, sr->device_id, &v) ||
      (v.found && fl__models_get(s, c, v.model_id, &mi))) {
    fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
    goto out_put;
  }
  if (check_round(&v, u, digest, r) == 0 || check_delta(s, &v, mi, u, r))
    goto out_put;
  fl__pool_put(s->pool, c);
  fl_upload up = {.round_id = u->round_id, .device_id = sr->device_id, .samples = u->sample_count,
                  .loss = u->loss, .bytes = q->len, .mi = mi, .delta = u->delta};
  memcpy(up.digest, digest, sizeof digest);
  uint32_t accepted = 0;
  int res = fl__agg_submit(s->agg, &up, &accepted);
  answer_submit(r, res, u->round_id, accepted);
  if (res == FL_AGG_OK)
    fl__metrics_update_accepted(s->metrics, q->len);
  goto out;
out_put:
  fl__pool_put(s->pool, c);
out:
  fl__v1__update_upload__free_unpacked(u, NULL);
  fl__v1__signed_request__free_unpacked(sr, NULL);
refused:
  if (r->reason != NULL)
    fl__metrics_update_refused(s->metrics, r->reason);
}
