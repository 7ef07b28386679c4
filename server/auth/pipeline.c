/*
 * The request pipeline: every route row declares its policy (http.h, fl_auth_policy) and
 * dispatch runs it here, once, before the handler, which gets the authenticated context
 * (auth.h, fl_auth) in q->auth. No handler authenticates on its own: a check lives in one
 * place, for the HTTP listener and for the MQTT bridge, which forwards to the same routes.
 *
 * Device policies check cheapest first (timestamp, nonce length, then one indexed lookup,
 * then the signature) and record or reserve the nonce last, so that a forged request never
 * consumes a device's nonce. An upload's lookup also reads its standing in the round it names
 * (one round trip per upload), and its nonce is written with its acceptance in the group
 * commit: until then the replica's set of nonces in flight refuses a replay.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "auth/inplace.h"
#include "device/devapi.h"
#include "digest.h"
#include "mem.h"

int fl__auth_policy_role(fl_auth_policy p) {
  switch (p) {
    case FL_AUTH_VIEWER:
      return FL_ROLE_VIEWER;
    case FL_AUTH_OPERATOR:
      return FL_ROLE_OPERATOR;
    case FL_AUTH_ADMIN:
      return FL_ROLE_ADMIN;
    default:
      return -1;
  }
}

static void unavailable(fl_resp *r) {
  fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
}

/* A device request's connection: bounded wait (devapi.h, FL_DEVICE_POOL_WAIT_MS). */
static int device_conn(fl_srv *s, fl_auth *a, fl_resp *r) {
  a->c = fl__pool_get_timed(s->pool, FL_DEVICE_POOL_WAIT_MS);
  if (a->c != NULL)
    return 0;
  unavailable(r);
  return -1;
}

static int run_device(fl_srv *s, fl_req *q, fl_auth *a, fl_resp *r) {
  a->sr = fl__auth_envelope(s, q, r);
  if (a->sr == NULL || device_conn(s, a, r))
    return -1;
  return fl__auth_device(s, a->c, q, a->sr, a, r);
}

/* Enrollment: the envelope is signed with device_id 0 by the key the EnrollRequest carries.
 * The nonce is not recorded here: the handler writes it in the transaction that consumes the
 * token, so that an enrollment with a bad token leaves nothing behind. */
static int run_enroll(fl_srv *s, fl_req *q, fl_auth *a, fl_resp *r) {
  a->sr = fl__auth_envelope(s, q, r);
  if (a->sr == NULL || fl__auth_precheck(s, a->sr, r))
    return -1;
  if (a->sr->device_id != 0) {
    fl__resp_dev_error(r, 400, "malformed_request", "enrollment is signed with device_id 0", 0);
    return -1;
  }
  /* Unpacked before the signature can be checked: within a budget (mem.h). */
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, a->sr->body.len);
  a->enroll = fl__v1__enroll_request__unpack(&pa, a->sr->body.len, a->sr->body.data);
  if (a->enroll == NULL || a->enroll->public_key.len != FL_PUBKEY_LEN) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "EnrollRequest needs a token and a 32-byte Ed25519 public key", 0);
    return -1;
  }
  memcpy(a->pub, a->enroll->public_key.data, FL_PUBKEY_LEN);
  if (fl__auth_signature(q, a->sr, a->pub, r))
    return -1;
  return device_conn(s, a, r);
}

/* The upload's device, whether its nonce was seen and its standing in the round (NULL round:
 * none to look at). 0 found, 1 unknown device, -1 database error. */
static int load_upload_view(PGconn *c, const Fl__V1__SignedRequest *sr, const uint64_t *round_id,
                            fl_auth *a, bool *revoked, bool *nonce_seen) {
  fl_pgp p;
  fl_upload_standing *v = &a->standing;
  /* Device ids are bigserial: 0 or one above INT64_MAX names no device. */
  if (sr->device_id == 0 || sr->device_id > INT64_MAX)
    return 1;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->device_id);
  fl__pgp_bin(&p, sr->nonce.data, sr->nonce.len);
  if (round_id != NULL && *round_id <= INT64_MAX)
    fl__pgp_u64(&p, *round_id);
  else
    fl__pgp_text(&p, NULL);
  PGresult *res = fl__pg_exec_prep(
      c, "fl_upload_device",
      "SELECT d.public_key, d.state = 'active',"
      " EXISTS (SELECT 1 FROM nonces n WHERE n.device_id = $1 AND n.nonce = $2),"
      " EXISTS (SELECT 1 FROM assignments a WHERE a.round_id = $3::bigint AND a.device_id = $1),"
      /* An async plan's update is keyed by its task's round (rounds/async.h). */
      " (SELECT x.digest FROM acceptances x WHERE x.device_id = $1"
      "  AND (x.task_round_id = $3::bigint"
      "   OR (x.round_id = $3::bigint AND x.task_round_id IS NULL)) LIMIT 1),"
      " (SELECT r.state FROM rounds r WHERE r.round_id = $3::bigint)"
      " FROM devices d WHERE d.device_id = $1",
      &p, true, NULL);
  if (res == NULL)
    return -1;
  int rc = 1;
  if (PQntuples(res) == 1 && PQgetlength(res, 0, 0) == FL_PUBKEY_LEN) {
    memcpy(a->pub, PQgetvalue(res, 0, 0), FL_PUBKEY_LEN);
    *revoked = PQgetvalue(res, 0, 1)[0] == 0;
    *nonce_seen = PQgetvalue(res, 0, 2)[0] != 0;
    v->assigned = PQgetvalue(res, 0, 3)[0] != 0;
    v->accepted = !PQgetisnull(res, 0, 4) && PQgetlength(res, 0, 4) == FL_SHA256_LEN;
    if (v->accepted)
      memcpy(v->accepted_digest, PQgetvalue(res, 0, 4), FL_SHA256_LEN);
    v->found = !PQgetisnull(res, 0, 5);
    v->open = v->found && strcmp(PQgetvalue(res, 0, 5), "open") == 0;
    rc = 0;
  }
  PQclear(res);
  return rc;
}

/* Uploads, the parse: envelope, timestamp window and nonce length, an empty envelope
 * signature (there is one way to sign an upload), the UpdateUpload (NULL when the body is
 * none: the lookup still runs, so that an unknown device is told so first). */
static int upload_parse(fl_srv *s, fl_req *q, fl_auth *a, fl_resp *r) {
  /* Without copies of the parameters where the bytes allow (inplace.h): the request body
   * outlives the context (http.c frees it after fl__auth_free). */
  Fl__V1__SignedRequest *sr = a->sr =
      strcmp(q->method, "GET") != 0 ? fl__inplace_envelope(q->body, q->len) : NULL;
  a->inplace_sr = sr != NULL;
  if (sr == NULL)
    sr = a->sr = fl__auth_envelope(s, q, r);
  if (sr == NULL || fl__auth_precheck(s, sr, r))
    return -1;
  if (sr->signature.len != 0) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "uploads are signed by UpdateUpload.signature; the envelope signature "
                       "must be empty",
                       0);
    return -1;
  }
  /* The body carries the signature, so it is decoded before authentication; nothing in it is
   * acted upon until that signature verifies. */
  a->upload = fl__inplace_upload(sr->body.data, sr->body.len);
  a->inplace_upload = a->upload != NULL;
  if (a->inplace_upload)
    return 0;
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, sr->body.len);
  a->upload = fl__v1__update_upload__unpack(&pa, sr->body.len, sr->body.data);
  return 0;
}

/* Uploads, the authentication: the checks of FL_AUTH_DEVICE in the same order with the same
 * answers, except that the one signature is UpdateUpload.signature over the upload digest,
 * which covers the envelope's timestamp and nonce (docs/SIGNING.md): one SHA-256 pass over the
 * delta and one Ed25519 verification per upload. The nonce is reserved in flight, not
 * recorded: the group commit writes it with the acceptance. */
static int upload_authenticate(fl_srv *s, fl_auth *a, fl_resp *r) {
  bool revoked = false, nonce_seen = false;
  uint8_t signed_digest[FL_SHA256_LEN];
  const Fl__V1__SignedRequest *sr = a->sr;
  const Fl__V1__UpdateUpload *u = a->upload;
  if (device_conn(s, a, r))
    return -1;
  int rc = load_upload_view(a->c, sr, u ? &u->round_id : NULL, a, &revoked, &nonce_seen);
  if (rc < 0) {
    unavailable(r);
    return -1;
  }
  if (rc > 0) {
    fl__resp_dev_error(r, 401, "unknown_device", "device is not enrolled", 0);
    return -1;
  }
  /* Without an UpdateUpload there is no signature to check: the request is not
   * authenticated, so it is refused without consuming the nonce. */
  if (u == NULL) {
    fl__resp_dev_error(r, 400, "malformed_request", "body is not an UpdateUpload", 0);
    return -1;
  }
  if (fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u,
                        a->upload_digest, signed_digest)) {
    fl__resp_dev_error(r, 401, "bad_signature", "update signature does not verify", 0);
    return -1;
  }
  if (fl__auth_verify(signed_digest, &u->signature, a->pub, revoked, r))
    return -1;
  if (nonce_seen ||
      fl__nonce_reserve(s->nonces, &a->slot, sr->device_id, sr->nonce.data, sr->nonce.len)) {
    fl__resp_dev_error(r, 401, "replayed_nonce", "nonce already used", 0);
    return -1;
  }
  a->reserved = true;
  a->device_id = sr->device_id;
  return 0;
}

/* An admin request's connection, bounded like a device request's: an unbounded wait held its
 * event-loop thread, and every connection on it, for as long as the pool stayed exhausted.
 * Longer than a device's (FL_DEVICE_POOL_WAIT_MS): an operator's requests are few and a
 * refusal is a person's error, where a device just retries on its schedule. */
#define FL_ADMIN_POOL_WAIT_MS 5000

static int admin_conn(fl_srv *s, fl_auth *a, fl_resp *r) {
  a->c = fl__pool_get_timed(s->pool, FL_ADMIN_POOL_WAIT_MS);
  if (a->c != NULL)
    return 0;
  fl__resp_admin_error(r, 503, "unavailable", "database unavailable; retry");
  r->retry_after_ms = 1000;
  return -1;
}

/* Admin roles: the bearer token's role is at least the route's. */
static int run_admin(fl_srv *s, fl_req *q, fl_auth *a, fl_resp *r) {
  if (admin_conn(s, a, r))
    return -1;
  return fl__auth_admin(s, a->c, q, fl__auth_policy_role(a->policy), a, r);
}

int fl__auth_before_body(fl_srv *s, fl_req *q, fl_resp *r) {
  if (fl__auth_policy_role(q->rt->auth) < 0)
    return 0;
  if (fl__auth_run(s, q, r))
    return -1;
  fl__auth_put_conn(s, q->auth); /* not held while the body arrives */
  return 0;
}

int fl__auth_run(fl_srv *s, fl_req *q, fl_resp *r) {
  fl_auth_policy p = q->rt->auth;
  int rc;
  if (q->auth != NULL) {
    /* Authenticated on its header (fl__auth_before_body): a connection for the handler. On
     * failure the context stays the request's, freed with it. */
    return admin_conn(s, q->auth, r);
  }
  if (p == FL_AUTH_NONE)
    return 0;
  fl_auth *a = calloc(1, sizeof *a);
  if (a == NULL) {
    fl__resp_text(r, 503, "text/plain", "out of memory\n");
    return -1;
  }
  a->policy = p;
  switch (p) {
    case FL_AUTH_DEVICE:
    case FL_AUTH_DEVICE_FOLD:
      rc = run_device(s, q, a, r);
      break;
    case FL_AUTH_ENROLL:
      rc = run_enroll(s, q, a, r);
      break;
    case FL_AUTH_UPLOAD:
      rc = upload_parse(s, q, a, r) ? -1 : upload_authenticate(s, a, r);
      break;
    case FL_AUTH_VIEWER:
    case FL_AUTH_OPERATOR:
    case FL_AUTH_ADMIN:
      rc = run_admin(s, q, a, r);
      break;
    default:
      /* fl__routes_check refuses such a table at start; never dispatch one regardless. */
      fl__slog(FL_LOG_ERROR, "route_without_policy", "route=%s", fl__slog_str(q->rt->name));
      fl__resp_text(r, 500, "text/plain", "route without an authentication policy\n");
      rc = -1;
      break;
  }
  if (rc != 0) {
    fl__auth_free(s, a);
    return -1;
  }
  q->auth = a;
  return 0;
}

void fl__auth_put_conn(fl_srv *s, fl_auth *a) {
  if (a != NULL && a->c != NULL) {
    fl__pool_put(s->pool, a->c);
    a->c = NULL;
  }
}

void fl__auth_free(fl_srv *s, fl_auth *a) {
  if (a == NULL)
    return;
  fl__auth_put_conn(s, a);
  if (a->reserved)
    fl__nonce_release(s->nonces, &a->slot);
  if (a->inplace_upload)
    fl__inplace_upload_free(a->upload);
  else
    fl__v1__update_upload__free_unpacked(a->upload, NULL);
  fl__v1__enroll_request__free_unpacked(a->enroll, NULL);
  if (a->inplace_sr)
    fl__inplace_envelope_free(a->sr);
  else
    fl__v1__signed_request__free_unpacked(a->sr, NULL);
  free(a);
}
