/*
 * Device API: protobuf bodies inside a signed fl.v1.SignedRequest (docs/API.md). Every refusal
 * is an fl.v1.Error with a machine-readable reason, decided before any state changes (the
 * only write that precedes a refusal is the nonce of an authenticated request). Each route's
 * policy (the table at the end) is run by dispatch before its handler (auth/pipeline.c): a
 * handler starts with the request authenticated, its envelope, device and connection in
 * q->auth. The handlers are split by route: enroll.c, checkin.c, upload.c, and here the model
 * download and evaluation reports, with the helpers they share.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "device/devapi.h"
#include "mem.h"
#include "registry/evaluation.h"
#include "registry/models.h"
#include "registry/rollouts.h"
#include "secagg/protocol.h"

void fl__dev_unavailable(fl_resp *r) {
  fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
}

bool fl__dev_id_ok(uint64_t id) {
  return id <= INT64_MAX;
}

bool fl__dev_utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p, n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2
                                   : (c & 0xf8) == 0xf0 ? 3 : 4;
    if (n == 4 || c == 0xc0 || c == 0xc1 || c > 0xf4)
      return false;
    uint32_t cp = n == 0 ? c : c & (0x3f >> n);
    for (unsigned i = 1; i <= n; i++) {
      if ((p[i] & 0xc0) != 0x80)
        return false;
      cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return false;
    p += n + 1;
  }
  return true;
}

/* ----- model download ---------------------------------------------------------------------- */

/* The packed version goes out as the cache holds it: one refcounted buffer per version for
 * every download (models.c), released by MHD once the response is sent. A cached version
 * costs no database statement beyond authentication; its sha answers If-None-Match. */
static void h_download(fl_srv *s, fl_req *q, fl_resp *r) {
  PGconn *c = q->auth->c;
  uint8_t sha[FL_SHA256_LEN];
  uint64_t model_id, version;
  const char *rest;
  fl_packed *pk = NULL;
  if (fl__path_u64(q->path, "/v1/models/", &model_id, &rest) ||
      fl__path_u64(rest, "/versions/", &version, &rest) || *rest != '\0') {
    fl__resp_dev_error(r, 404, "not_found", "expected /v1/models/{id}/versions/{version}", 0);
    return;
  }
  int err = fl__version_acquire(s, c, model_id, version, &pk);
  if (err == FL_E_NOTFOUND) {
    fl__resp_dev_error(r, 404, "unknown_version", "no such model version", 0);
    goto out;
  }
  if (err) {
    fl__dev_unavailable(r);
    goto out;
  }
  size_t len;
  const uint8_t *data = fl__packed_data(pk, &len, sha);
  char hex[2 * FL_SHA256_LEN + 1];
  const char *inm = fl__req_header(q, "If-None-Match");
  fl__hex(sha, sizeof sha, hex);
  snprintf(r->etag, sizeof r->etag, "\"%s\"", hex);
  if (inm != NULL && (strcmp(inm, r->etag) == 0 || strcmp(inm, hex) == 0)) {
    fl__resp_text(r, 304, NULL, "");
    goto out;
  }
  fl__resp_shared(r, 200, "application/x-protobuf", data, len, fl__packed_release, pk);
  pk = NULL; /* the response's now */
out:
  fl__packed_release(pk);
}

/* ----- evaluation reports ------------------------------------------------------------------ */

static void h_evaluation(fl_srv *s, fl_req *q, fl_resp *r) {
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  Fl__V1__EvalReport *e = NULL;
  uint8_t sha[FL_SHA256_LEN];
  json_t *m = NULL;
  char *mj = NULL;
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, sr->body.len);
  e = fl__v1__eval_report__unpack(&pa, sr->body.len, sr->body.data);
  if (e == NULL || !fl__dev_id_ok(e->model_id) || !fl__dev_id_ok(e->version) ||
      !fl__dev_id_ok(e->gate_id) || !fl__dev_id_ok(e->campaign_id) ||
      (e->gate_id != 0 && e->campaign_id != 0)) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "body is not an EvalReport (ids are at most 2^63-1, a gate or a campaign)",
                       0);
    goto out;
  }
  if (e->sample_count > s->cfg.max_samples) {
    fl__resp_dev_error(r, 422, "bad_sample_count", "sample_count out of range", 0);
    goto out;
  }
  m = json_object();
  for (size_t i = 0; m != NULL && i < e->n_metrics; i++) {
    if (!fl__dev_utf8_ok(e->metrics[i]->name)) {
      fl__resp_dev_error(r, 400, "malformed_request", "metric names must be UTF-8", 0);
      goto out;
    }
    if (!isfinite(e->metrics[i]->value) || e->metrics[i]->name[0] == '\0') {
      fl__resp_dev_error(r, 422, "non_finite", "metrics need a name and a finite value", 0);
      goto out;
    }
    json_object_set_new(m, e->metrics[i]->name, json_real(e->metrics[i]->value));
  }
  int err = fl__version_sha_cached(s, c, e->model_id, e->version, sha);
  if (err == FL_E_NOTFOUND) {
    fl__resp_dev_error(r, 404, "unknown_version", "no such model version", 0);
    goto out;
  }
  int gate =
      e->gate_id != 0 && err == FL_OK ? fl__gate_sampled(c, e->gate_id, sr->device_id) : 1;
  if (gate == 1 && e->campaign_id != 0 && err == FL_OK)
    gate = fl__eval_sampled(c, e->campaign_id, sr->device_id, e->model_id, e->version);
  if (gate == 0) {
    fl__resp_dev_error(
        r, 404, e->gate_id ? "unknown_gate" : "unknown_campaign",
        e->gate_id ? "no rollout with this gate" : "no evaluation campaign of this version", 0);
    goto out;
  }
  if (gate == 2) {
    /* Only the sample the gate (or campaign) asked decides it; an unasked report would be a
     * free vote. */
    fl__resp_dev_error(r, 403, "not_sampled", "this device is not in the evaluation's sample", 0);
    goto out;
  }
  err = gate < 0 ? FL_E_DB : err;
  mj = m ? json_dumps(m, JSON_COMPACT) : NULL;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->device_id);
  fl__pgp_u64(&p, e->model_id);
  fl__pgp_u64(&p, e->version);
  fl__pgp_u64(&p, e->gate_id);
  fl__pgp_u64(&p, e->sample_count);
  fl__pgp_text(&p, mj);
  fl__pgp_u64(&p, e->campaign_id);
  PGresult *res = err || mj == NULL ? NULL
                                    : fl__pg_exec(c,
                                                  "INSERT INTO evaluations (device_id, model_id,"
                                                  " version, gate_id, sample_count, metrics,"
                                                  " campaign_id)"
                                                  " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
                                                  &p, false, NULL);
  if (res == NULL) {
    fl__dev_unavailable(r);
    goto out;
  }
  PQclear(res);
  /* The report is stored; a gate that cannot be decided now is decided by the next report. */
  if (e->gate_id != 0)
    fl__gate_on_report(c, e->gate_id);
  if (e->campaign_id != 0)
    fl__eval_on_report(c, e->campaign_id);
  Fl__V1__EvalAck ack = FL__V1__EVAL_ACK__INIT;
  ack.recorded = true;
  fl__resp_proto(r, 200, &ack.base);
out:
  free(mj);
  json_decref(m);
  fl__v1__eval_report__free_unpacked(e, NULL);
}

/* Enrollments, check-ins and evaluation reports are a few hundred bytes; the limit leaves room
 * for many labels or metrics (docs/API.md 1.2). A download is a GET: no body. */
#define SMALL_BODY 65536

/* Who may call each route (http.h, fl_auth_policy) is its last field: dispatch runs it. */
const fl_route fl__dev_routes[] = {
    {"POST", "/v1/enroll", "enroll", fl__dev_h_enroll, SMALL_BODY, NULL, FL_AUTH_ENROLL},
    {"POST", "/v1/checkin", "checkin", fl__dev_h_checkin, SMALL_BODY, NULL, FL_AUTH_DEVICE_FOLD},
    {"GET", "/v1/models/", "download", h_download, 0, NULL, FL_AUTH_DEVICE},
    {"POST", "/v1/updates", "update", fl__devapi_update, 0, fl__devapi_update_limit,
     FL_AUTH_UPLOAD},
    {"POST", "/v1/evaluations", "evaluation", h_evaluation, SMALL_BODY, NULL, FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/keys", "secagg_keys", fl__secagg_h_keys, SMALL_BODY, NULL, FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/state", "secagg_state", fl__secagg_h_state, SMALL_BODY, NULL,
     FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/shares", "secagg_shares", fl__secagg_h_shares, FL_SECAGG_BODY, NULL,
     FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/unmask", "secagg_unmask", fl__secagg_h_unmask, FL_SECAGG_BODY, NULL,
     FL_AUTH_DEVICE},
    {NULL, NULL, NULL, NULL, 0, NULL, FL_AUTH_UNDECLARED},
};
