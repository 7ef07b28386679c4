/*
 * Authentication (auth.c): signed device requests (timestamp window, device state, Ed25519
 * signature over the request digest, one-time nonces) and admin bearer tokens with roles.
 */
#ifndef FL__AUTH_H
#define FL__AUTH_H

#include <jansson.h>

#include "fl/v1/fleetlearn.pb-c.h"
#include "http/http.h"
#include "store/store_pg.h"

/* Unpacks the request envelope: the POST body, or for GET the base64 X-FL-Auth header.
 * On failure the refusal is in *r and NULL is returned. Free with
 * fl__v1__signed_request__free_unpacked(sr, NULL). */
Fl__V1__SignedRequest *fl__auth_envelope(fl_srv *s, fl_req *q, fl_resp *r);

/* Verifies an envelope: timestamp within the window, the device known and active (unless
 * enroll_pub is given, which then is the signing key and device_id must be 0), the signature
 * over fl__request_digest(method, path, ...), and the nonce unseen (it is recorded).
 * Returns 0, or -1 with the refusal in *r. */
int fl__auth_device(fl_srv *s, PGconn *c, fl_req *q, const Fl__V1__SignedRequest *sr,
                    const uint8_t *enroll_pub, uint8_t pub_out[FL_PUBKEY_LEN], fl_resp *r);

/* The parts of fl__auth_device for a handler that looks the device up itself (uploads fetch
 * the device, its nonce and its round state in one query, and record the nonce in the group
 * commit): timestamp window and nonce length; then the signature over a digest the caller
 * built (for uploads the upload digest, docs/SIGNING.md) and the device state. Each returns
 * 0, or -1 with the refusal in *r. */
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
 * actor receives "token:<id>:<name>" for the audit log. Returns 0, or -1 with *r set. */
int fl__auth_admin(fl_srv *s, PGconn *c, fl_req *q, int min_role, char actor[96], fl_resp *r);

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
