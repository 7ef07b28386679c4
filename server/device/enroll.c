/*
 * POST /v1/enroll (devapi.h): an enrollment token and a device's Ed25519 public key give a
 * device id, in one transaction with the envelope's nonce (policy FL_AUTH_ENROLL: the signature
 * by the key the EnrollRequest carries is checked before this handler).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "device/devapi.h"
#include "digest.h"

/* A token that is used (or unknown, or expired): when it was used by this very key, this is a
 * retry of an enrollment whose answer was lost, and it gets the same device id (the request is
 * signed by that key, so it learns nothing its holder did not know). Any other key is refused.
 * Returns the device id, 0 with the refusal in *r. */
static uint64_t enrolled_before(PGconn *c, const uint8_t th[FL_SHA256_LEN],
                                const Fl__V1__EnrollRequest *e, fl_resp *r) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, th, FL_SHA256_LEN);
  fl__pgp_bin(&p, e->public_key.data, e->public_key.len);
  PGresult *res = fl__pg_exec(c,
                              "SELECT d.device_id FROM enrollment_tokens t"
                              " JOIN devices d ON d.device_id = t.used_by"
                              " WHERE t.token_hash = $1 AND d.public_key = $2"
                              " AND d.state = 'active'",
                              &p, false, NULL);
  if (res == NULL) {
    fl__dev_unavailable(r);
    return 0;
  }
  uint64_t id = PQntuples(res) == 1 ? fl__pg_u64(res, 0, 0) : 0;
  PQclear(res);
  if (id == 0)
    fl__resp_dev_error(r, 401, "bad_enrollment_token", "unknown, used or expired token", 0);
  return id;
}

/* Consumes the token and creates the device, or finds the device of a retried enrollment.
 * Returns the device id, 0 with the refusal in *r. */
static uint64_t consume_token(PGconn *c, const uint8_t th[FL_SHA256_LEN],
                              const Fl__V1__EnrollRequest *e, fl_resp *r) {
  char state[6];
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, th, FL_SHA256_LEN);
  fl__pgp_bin(&p, e->public_key.data, e->public_key.len);
  fl__pgp_text(&p, e->firmware ? e->firmware : "");
  /* A device's labels are its token's, set by the operator: they route it (its channel,
   * rollout cohorts, cohort pins, gate samples), so a device must not choose them. The labels
   * an EnrollRequest carries are not stored (docs/API.md 1.3). */
  PGresult *res = fl__pg_exec(
      c,
      "WITH tok AS (UPDATE enrollment_tokens SET used_at = now()"
      " WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING labels)"
      " INSERT INTO devices (public_key, labels, firmware)"
      " SELECT $2, tok.labels, $3 FROM tok RETURNING device_id",
      &p, false, state);
  if (res == NULL && strcmp(state, "23505") == 0) {
    fl__resp_dev_error(r, 409, "key_already_enrolled", "this public key is already enrolled", 0);
    return 0;
  }
  if (res == NULL) {
    fl__dev_unavailable(r);
    return 0;
  }
  if (PQntuples(res) == 0) {
    PQclear(res);
    return enrolled_before(c, th, e, r);
  }
  uint64_t id = fl__pg_u64(res, 0, 0);
  PQclear(res);
  fl__pgp_init(&p);
  fl__pgp_bin(&p, th, FL_SHA256_LEN);
  fl__pgp_u64(&p, id);
  res = fl__pg_exec(c, "UPDATE enrollment_tokens SET used_by = $2 WHERE token_hash = $1", &p, false,
                    NULL);
  if (res == NULL) {
    fl__dev_unavailable(r);
    return 0;
  }
  PQclear(res);
  return id;
}

/* The token, the device and the request's nonce in one transaction, the nonce last: an
 * enrollment with a bad token leaves nothing behind, not even a nonce row (anyone can sign
 * one with a key of their own). Returns the device id, 0 with the refusal in *r; on a refusal
 * nothing is committed (the pool rolls the transaction back). */
static uint64_t enroll_tx(PGconn *c, const Fl__V1__EnrollRequest *e,
                          const Fl__V1__SignedRequest *sr, fl_resp *r) {
  uint8_t th[FL_SHA256_LEN];
  fl_pgp p;
  fl__sha256(e->enrollment_token, strlen(e->enrollment_token), th);
  if (fl__pg_cmd(c, "BEGIN")) {
    fl__dev_unavailable(r);
    return 0;
  }
  uint64_t id = consume_token(c, th, e, r);
  if (id == 0)
    return 0;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, sr->nonce.data, sr->nonce.len);
  PGresult *res = fl__pg_exec(c,
                              "INSERT INTO nonces (device_id, nonce) VALUES (0, $1)"
                              " ON CONFLICT DO NOTHING",
                              &p, false, NULL);
  bool fresh = res != NULL && strcmp(PQcmdTuples(res), "1") == 0;
  if (res != NULL && !fresh)
    fl__resp_dev_error(r, 401, "replayed_nonce", "nonce already used", 0);
  if (res == NULL || (fresh && fl__pg_cmd(c, "COMMIT"))) {
    fresh = false;
    fl__dev_unavailable(r);
  }
  PQclear(res);
  return fresh ? id : 0;
}

/* FL_AUTH_ENROLL: the envelope's signature by the enrolled key has verified. */
void fl__dev_h_enroll(fl_srv *s, fl_req *q, fl_resp *r) {
  const fl_auth *a = q->auth;
  const Fl__V1__EnrollRequest *e = a->enroll;
  if (e->enrollment_token == NULL || e->enrollment_token[0] == '\0') {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "EnrollRequest needs a token and a 32-byte Ed25519 public key", 0);
    return;
  }
  bool text_ok = fl__dev_utf8_ok(e->firmware);
  for (size_t i = 0; text_ok && i < e->n_labels; i++)
    text_ok = fl__dev_utf8_ok(e->labels[i]->key) && fl__dev_utf8_ok(e->labels[i]->value);
  if (!text_ok) {
    fl__resp_dev_error(r, 400, "malformed_request", "labels and firmware must be UTF-8", 0);
    return;
  }
  uint64_t id = enroll_tx(a->c, e, a->sr, r);
  if (id == 0)
    return;
  Fl__V1__EnrollResponse resp = FL__V1__ENROLL_RESPONSE__INIT;
  resp.device_id = id;
  resp.coordinator_public_key = (ProtobufCBinaryData){FL_PUBKEY_LEN, s->pub};
  fl__resp_proto(r, 200, &resp.base);
  fl__slog(FL_LOG_INFO, "device_enrolled", "device=%" PRIu64, id);
}
