/*
 * A device's side of docs/SIGNING.md for tests and benches: fl.v1.SignedRequest envelopes
 * around inner messages, signed with the device's Ed25519 key; uploads signed the one way the
 * coordinator accepts (the UpdateUpload's own signature over the envelope's device id,
 * timestamp and nonce; the envelope signature empty). Knobs forge the bad requests the tests
 * send (stale timestamp, reused nonce, another device id, flipped signature bits).
 */
#ifndef FLSUPPORT_SIGNER_H
#define FLSUPPORT_SIGNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "fl/v1/fleetlearn.pb-c.h"

/* Zero-initialised means "honest". */
typedef struct fl_sup_forge {
  int64_t timestamp_ms; /* 0: now */
  const uint8_t *nonce; /* NULL: 16 fresh random bytes */
  size_t nonce_len;
  uint64_t device_id;        /* 0: the signer's device id */
  bool corrupt_signature;    /* flip one bit of the request signature (uploads: of the
                                update signature, their only one) */
  bool envelope_signature;   /* uploads: sign the envelope too (must be refused) */
  const char *if_none_match; /* GET only (used by the callers that send the request) */
} fl_sup_forge;

/* A packed SignedRequest around body for method and path, malloc'ed into *out (free it).
 * POST /v1/updates: an UpdateUpload without a signature is signed here over the envelope's
 * device id, timestamp and nonce; one with a signature goes as it is; the envelope signature
 * stays empty unless f->envelope_signature. f may be NULL. FL_OK, FL_E_NOMEM, FL_E_CRYPTO. */
int fl_sup_envelope(const fl_key *key, uint64_t device_id, const char *method, const char *path,
                    const uint8_t *body, size_t len, const fl_sup_forge *f, uint8_t **out,
                    size_t *out_len);
/* The upload of u by device_id, as libflclient sends it: u is signed (its signature field is
 * left as it was) and packed into an envelope with a fresh timestamp and nonce. */
int fl_sup_upload_envelope(const fl_key *key, uint64_t device_id, Fl__V1__UpdateUpload *u,
                           uint8_t **out, size_t *out_len);
/* The update signature of u for one request's device id, timestamp and nonce. */
int fl_sup_sign_update(const fl_key *key, uint64_t device_id, int64_t timestamp_ms,
                       const uint8_t *nonce, size_t nonce_len, const Fl__V1__UpdateUpload *u,
                       uint8_t sig[FL_SIG_LEN]);

/* A signed POST /v1/enroll body (device id 0, the new key signs) for token. */
int fl_sup_enroll_request(const fl_key *key, const char *token, uint8_t **out, size_t *out_len);
/* An EnrollResponse: the device id and the coordinator's key (pub may be NULL). FL_E_PARSE. */
int fl_sup_enroll_parse(const uint8_t *body, size_t len, uint64_t *device_id,
                        uint8_t pub[FL_PUBKEY_LEN]);
/* "X-FL-Auth: <base64 of env>", the header that carries a GET's envelope (malloc'ed). */
char *fl_sup_auth_header(const uint8_t *env, size_t len);
/* The reason of an fl.v1.Error body, "" when it is not one; written to out. */
const char *fl_sup_error_reason(const uint8_t *body, size_t len, char *out, size_t cap);

/* The documented membership hash (docs/API.md 5.2 and 5.3), written again from the docs as the
 * tests' oracle: SHA-256(domain | device_id LE64 | id LE64), first 8 bytes as a little-endian
 * integer v, member when v < pct% of 2^64. domain is "fl.v1.rollout" or "fl.v1.gate"
 * (at most 48 bytes). */
bool fl_sup_doc_member(const char *domain, uint64_t device, uint64_t id, double pct);

#endif
