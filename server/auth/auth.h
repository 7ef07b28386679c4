/*
 * Authentication: the request pipeline (pipeline.c: each route's policy, run once by dispatch
 * before the handler, which gets the authenticated context below) and its parts (auth.c:
 * signed device requests (timestamp window, device state, Ed25519 signature over the request
 * digest, one-time nonces) and admin bearer tokens with roles).
 */
#ifndef FL__AUTH_H
#define FL__AUTH_H

#include <jansson.h>

#include "fl/v1/fleetlearn.pb-c.h"
#include "http/http.h"
#include "auth/nonce.h"
#include "store/store_pg.h"

/* ----- the pipeline (pipeline.c) ----------------------------------------------------------- */

/* Where an upload's device stands in the round its UpdateUpload names, read in the upload
 * policy's one query with the device and its nonce (one round trip per upload). */
typedef struct fl_upload_standing {
  bool found, open, assigned, accepted;   /* the round exists / is open; the device's rows */
  uint8_t accepted_digest[FL_SHA256_LEN]; /* of its accepted update, when accepted */
} fl_upload_standing;

/* What a route's policy established, handed to its handler in q->auth. Owned by the request:
 * dispatch gives the connection back when the handler returns and frees the rest once the
 * request is answered (after a deferred answer's finish), so a deferred handler may keep
 * pointers into the messages until then. */
typedef struct fl_auth {
  fl_auth_policy policy;
  /* The pool connection the checks ran on, the handler's to use (FL_AUTH_ENROLL: none; its
   * transaction takes one). fl__auth_put_conn gives it back early. */
  PGconn *c;
  /* Device policies. */
  Fl__V1__SignedRequest *sr; /* the envelope */
  uint64_t device_id;
  uint8_t pub[FL_PUBKEY_LEN];           /* the key the signature verified with */
  Fl__V1__EnrollRequest *enroll;        /* FL_AUTH_ENROLL: the body, its key verified */
  Fl__V1__UpdateUpload *upload;         /* FL_AUTH_UPLOAD: the body, its signature verified */
  uint8_t upload_digest[FL_SHA256_LEN]; /* its content digest (idempotence, SIGNING.md) */
  fl_upload_standing standing;
  /* FL_AUTH_UPLOAD: sr's body, upload's tensor bytes point into the request body (inplace.h) */
  bool inplace_sr, inplace_upload;
  fl_nonce_slot slot; /* the upload's nonce, reserved in flight until the request ends */
  bool reserved;
  /* FL_AUTH_DEVICE_FOLD: the signature verified with the cached key, the device's state and
   * the nonce are still to be checked by the handler's first statement. */
  bool fold_pending;
  /* Admin roles. */
  int role; /* the token's (FL_ROLE_*), at least the route's */
  uint64_t token_id;
  char actor[96]; /* "token:<id>:<name>" for the audit log */
} fl_auth;

/* Runs the policy of q's route (q->rt->auth): 0 with q->auth set (NULL for FL_AUTH_NONE), or
 * -1 with the refusal in *r and nothing held. A route without a policy is refused here too
 * (500), whatever fl__routes_check let through. */
int fl__auth_run(fl_srv *s, fl_req *q, fl_resp *r);
/* Admin routes, on the header of a request with a body: the bearer token and its role are
 * checked before any of the body is read, so that a request without a valid token costs its
 * header and not up to --max-body of buffering. 0 with q->auth set and its connection given
 * back (fl__auth_run takes one again for the handler), or -1 with the refusal in *r. 0 and
 * nothing done for any other policy: device requests are authenticated with their body. */
int fl__auth_before_body(fl_srv *s, fl_req *q, fl_resp *r);
/* Gives the context's database connection back to the pool (no-op without one). */
void fl__auth_put_conn(fl_srv *s, fl_auth *a);
/* Releases everything the context holds; NULL is a no-op. */
void fl__auth_free(fl_srv *s, fl_auth *a);
/* The admin role a policy requires (FL_ROLE_*), -1 for a policy that is not an admin role. */
int fl__auth_policy_role(fl_auth_policy p);

/* ----- the parts (auth.c) ------------------------------------------------------------------ */

/* Unpacks the request envelope: the POST body, or for GET the base64 X-FL-Auth header.
 * On failure the refusal is in *r and NULL is returned. Free with
 * fl__v1__signed_request__free_unpacked(sr, NULL). */
Fl__V1__SignedRequest *fl__auth_envelope(fl_srv *s, fl_req *q, fl_resp *r);

/* Verifies an envelope: timestamp within the window, the device known, the signature over
 * fl__request_digest(method, path, ...) with its key (cached, keys.h), then the device active
 * and the nonce unseen (it is recorded), in one statement. Fills a->device_id and a->pub.
 * Returns 0, or -1 with the refusal in *r. */
int fl__auth_device(fl_srv *s, PGconn *c, fl_req *q, const Fl__V1__SignedRequest *sr, fl_auth *a,
                    fl_resp *r);

/* FL_AUTH_DEVICE_FOLD (http/http.h): with the device's key cached, the pipeline verifies the
 * signature without a statement and leaves a->fold_pending; the handler's first statement
 * then starts with FL_AUTH_FOLD_CTE (parameters: the device id, the nonce, the key and whether
 * to record, "t" exactly when a->fold_pending; fl__auth_fold_params appends them) and selects
 * FL_AUTH_FOLD_COLS from the device's row `d`, and the handler passes what they say to
 * fl__auth_fold_finish before it acts on anything. One statement instead of two; the checks
 * and their answers are those of FL_AUTH_DEVICE. Without a cached key the pipeline runs
 * FL_AUTH_DEVICE's statements and the fold records nothing. */
#define FL_AUTH_FOLD_CTE(dev, nonce, key, record)                                         \
  "WITH fl_nonce AS (INSERT INTO nonces (device_id, nonce) SELECT d0.device_id, " nonce   \
  "::bytea FROM devices d0 WHERE " record "::boolean AND d0.device_id = " dev             \
  "::bigint"                                                                              \
  " AND d0.state = 'active' AND d0.public_key = " key                                     \
  "::bytea"                                                                               \
  " AND set_config('synchronous_commit', 'off', true) IS NOT NULL ON CONFLICT DO NOTHING" \
  " RETURNING 1) "
#define FL_AUTH_FOLD_COLS(key) \
  "d.state = 'active', d.public_key = " key "::bytea, EXISTS (SELECT 1 FROM fl_nonce)"
typedef struct fl_auth_fold {
  bool found;  /* the device's row was read */
  bool active; /* the three columns of FL_AUTH_FOLD_COLS */
  bool same_key;
  bool recorded;
} fl_auth_fold;
/* Appends the fold's four parameters (device id, nonce, key, record) to p. */
void fl__auth_fold_params(const fl_auth *a, fl_pgp *p);
/* The fold's three columns from row 0 of res, starting at column `col`. */
void fl__auth_fold_read(const PGresult *res, int col, fl_auth_fold *f);
/* Completes the authentication: 0 (the nonce is recorded, by the fold or by the pipeline
 * before), or -1 with FL_AUTH_DEVICE's refusal in *r. */
int fl__auth_fold_finish(fl_srv *s, fl_auth *a, const fl_auth_fold *f, fl_resp *r);

/* The parts of fl__auth_device for the policies that look the device up otherwise (uploads
 * fetch the device, its nonce and its round standing in one query, and record the nonce in
 * the group commit; enrollment has no device yet): timestamp window and nonce length; then
 * the signature over a digest the caller built (for uploads the upload digest,
 * docs/SIGNING.md) and the device state. Each returns 0, or -1 with the refusal in *r. */
int fl__auth_precheck(fl_srv *s, const Fl__V1__SignedRequest *sr, fl_resp *r);
int fl__auth_verify(const uint8_t digest[FL_SHA256_LEN], const ProtobufCBinaryData *sig,
                    const uint8_t *pub, bool revoked, fl_resp *r);
/* The request signature over fl__request_digest with `pub`, the check of fl__auth_device
 * without the device lookup and the nonce (enrollment records its nonce with the device). */
int fl__auth_signature(fl_req *q, const Fl__V1__SignedRequest *sr, const uint8_t pub[FL_PUBKEY_LEN],
                       fl_resp *r);
/* Records a nonce in its own transaction. 0 fresh, 1 replayed, -1 database error. */
int fl__auth_record_nonce(PGconn *c, uint64_t id, const ProtobufCBinaryData *nonce);

/* Deletes nonces older than twice the timestamp window plus --nonce-skew-margin (they can no
 * longer be replayed on any replica whose clock is within the margin). */
void fl__auth_prune_nonces(fl_srv *s, PGconn *c);

enum { FL_ROLE_VIEWER = 0, FL_ROLE_OPERATOR = 1, FL_ROLE_ADMIN = 2 };
int fl__role_parse(const char *name); /* -1 when unknown */

/* Checks "Authorization: Bearer <token>" against the stored hashes (401 unauthorized,
 * token_revoked or token_expired) and the required role (403), and notes the token's use.
 * Fills a->role, a->token_id and a->actor ("token:<id>:<name>" for the audit log). Returns 0,
 * or -1 with *r set. */
int fl__auth_admin(fl_srv *s, PGconn *c, fl_req *q, int min_role, fl_auth *a, fl_resp *r);

/* The bootstrap admin token (docs/API.md section 3): the configured one (cfg.bootstrap_token)
 * is stored when it differs from the one applied last, which it then revokes; with none
 * configured and an empty token table, a new one is written to cfg.admin_token_out (0600).
 * Never printed or logged. 0, or -1 (logged). */
int fl__auth_bootstrap(fl_srv *s, PGconn *c);

/* Creates a token for a role, expiring after expires_in_s (0: never); *token_hex receives
 * 64 hex characters + NUL. Returns the id or 0 on failure. */
uint64_t fl__auth_new_token(PGconn *c, int role, const char *name, int64_t expires_in_s,
                            const char *created_by, char token_hex[65]);

/* Appends one audit row; detail is borrowed (may be NULL). 0 or -1. */
int fl__audit(PGconn *c, const char *actor, const char *action, const char *target,
              json_t *detail);

#endif
