/*
 * Device request signing; see flsupport/signer.h.
 */
#include "flsupport/signer.h"

#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "fl/err.h"
#include "flsupport/proc.h"

int fl_sup_sign_update(const fl_key *key, uint64_t device_id, int64_t timestamp_ms,
                       const uint8_t *nonce, size_t nonce_len, const Fl__V1__UpdateUpload *u,
                       uint8_t sig[FL_SIG_LEN]) {
  uint8_t digest[FL_SHA256_LEN];
  if (fl__update_digest(device_id, timestamp_ms, nonce, nonce_len, u, NULL, digest) != FL_OK ||
      fl__sign(key, digest, sizeof digest, sig) != FL_OK)
    return FL_E_CRYPTO;
  return FL_OK;
}

/* Packs a protobuf message into a malloc'ed buffer. */
static int pack(const ProtobufCMessage *m, uint8_t **out, size_t *out_len) {
  *out_len = protobuf_c_message_get_packed_size(m);
  *out = malloc(*out_len + 1);
  if (*out == NULL)
    return FL_E_NOMEM;
  protobuf_c_message_pack(m, *out);
  return FL_OK;
}

/* The body of an upload signed over sr's device id, timestamp and nonce. *out is NULL when the
 * body goes out unchanged: it is no UpdateUpload, or it carries a (forged) signature already. */
static int sign_upload_body(const fl_key *key, const Fl__V1__SignedRequest *sr,
                            const fl_sup_forge *f, uint8_t **out, size_t *out_len) {
  uint8_t sig[FL_SIG_LEN];
  *out = NULL;
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
  if (u == NULL || u->signature.len != 0) {
    fl__v1__update_upload__free_unpacked(u, NULL);
    return FL_OK;
  }
  int rc = fl_sup_sign_update(key, sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len,
                              u, sig);
  if (rc == FL_OK) {
    if (f->corrupt_signature)
      sig[7] ^= 0x10;
    u->signature = (ProtobufCBinaryData){sizeof sig, sig};
    rc = pack(&u->base, out, out_len);
    /* The unpacked message frees what it allocated, not sig. */
    u->signature = (ProtobufCBinaryData){0, NULL};
  }
  fl__v1__update_upload__free_unpacked(u, NULL);
  return rc;
}

int fl_sup_envelope(const fl_key *key, uint64_t device_id, const char *method, const char *path,
                    const uint8_t *body, size_t len, const fl_sup_forge *f, uint8_t **out,
                    size_t *out_len) {
  static const fl_sup_forge honest;
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[16], digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  uint8_t *signed_body = NULL;
  size_t signed_len = 0;
  int rc = FL_OK;
  if (f == NULL)
    f = &honest;
  if (f->nonce == NULL && fl__random_bytes(nonce, sizeof nonce) != FL_OK)
    return FL_E_CRYPTO;
  sr.device_id = f->device_id ? f->device_id : device_id;
  sr.timestamp_ms = f->timestamp_ms ? f->timestamp_ms : fl_sup_wall_ms();
  sr.nonce.data = f->nonce ? (uint8_t *)f->nonce : nonce;
  sr.nonce.len = f->nonce ? f->nonce_len : sizeof nonce;
  sr.body = (ProtobufCBinaryData){len, (uint8_t *)body};
  bool upload = strcmp(method, "POST") == 0 && strcmp(path, "/v1/updates") == 0;
  if (upload) {
    rc = sign_upload_body(key, &sr, f, &signed_body, &signed_len);
    if (signed_body != NULL)
      sr.body = (ProtobufCBinaryData){signed_len, signed_body};
  }
  if (rc == FL_OK && (!upload || f->envelope_signature)) {
    if (fl__request_digest(method, path, sr.device_id, sr.timestamp_ms, sr.nonce.data, sr.nonce.len,
                           sr.body.data ? sr.body.data : (const uint8_t *)"", sr.body.len,
                           digest) != FL_OK ||
        fl__sign(key, digest, sizeof digest, sig) != FL_OK)
      rc = FL_E_CRYPTO;
    if (f->corrupt_signature && !upload)
      sig[7] ^= 0x10;
    sr.signature = (ProtobufCBinaryData){sizeof sig, sig};
  }
  if (rc == FL_OK)
    rc = pack(&sr.base, out, out_len);
  free(signed_body);
  return rc;
}

int fl_sup_upload_envelope(const fl_key *key, uint64_t device_id, Fl__V1__UpdateUpload *u,
                           uint8_t **out, size_t *out_len) {
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[16], sig[FL_SIG_LEN], *inner = NULL;
  size_t inner_len;
  if (fl__random_bytes(nonce, sizeof nonce) != FL_OK)
    return FL_E_CRYPTO;
  sr.device_id = device_id;
  sr.timestamp_ms = fl_sup_wall_ms();
  sr.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
  int rc = fl_sup_sign_update(key, device_id, sr.timestamp_ms, nonce, sizeof nonce, u, sig);
  if (rc != FL_OK)
    return rc;
  ProtobufCBinaryData was = u->signature;
  u->signature = (ProtobufCBinaryData){sizeof sig, sig};
  rc = pack(&u->base, &inner, &inner_len);
  u->signature = was;
  if (rc == FL_OK) {
    sr.body = (ProtobufCBinaryData){inner_len, inner};
    rc = pack(&sr.base, out, out_len);
  }
  free(inner);
  return rc;
}

int fl_sup_enroll_request(const fl_key *key, const char *token, uint8_t **out, size_t *out_len) {
  Fl__V1__EnrollRequest e = FL__V1__ENROLL_REQUEST__INIT;
  uint8_t pub[FL_PUBKEY_LEN], *body;
  size_t len;
  if (fl__key_public(key, pub) != FL_OK)
    return FL_E_CRYPTO;
  e.enrollment_token = (char *)token;
  e.public_key = (ProtobufCBinaryData){sizeof pub, pub};
  int rc = pack(&e.base, &body, &len);
  if (rc != FL_OK)
    return rc;
  rc = fl_sup_envelope(key, 0, "POST", "/v1/enroll", body, len, NULL, out, out_len);
  free(body);
  return rc;
}

int fl_sup_enroll_parse(const uint8_t *body, size_t len, uint64_t *device_id,
                        uint8_t pub[FL_PUBKEY_LEN]) {
  Fl__V1__EnrollResponse *er = fl__v1__enroll_response__unpack(NULL, len, body);
  int rc = er != NULL && er->coordinator_public_key.len == FL_PUBKEY_LEN ? FL_OK : FL_E_PARSE;
  if (rc == FL_OK) {
    *device_id = er->device_id;
    if (pub != NULL)
      memcpy(pub, er->coordinator_public_key.data, FL_PUBKEY_LEN);
  }
  fl__v1__enroll_response__free_unpacked(er, NULL);
  return rc;
}

char *fl_sup_auth_header(const uint8_t *env, size_t len) {
  char *hdr = malloc(16 + 4 * (len / 3 + 1) + 1);
  if (hdr == NULL)
    return NULL;
  int m = snprintf(hdr, 16, "X-FL-Auth: ");
  EVP_EncodeBlock((unsigned char *)hdr + m, env, (int)len);
  return hdr;
}

const char *fl_sup_error_reason(const uint8_t *body, size_t len, char *out, size_t cap) {
  out[0] = '\0';
  Fl__V1__Error *e = len ? fl__v1__error__unpack(NULL, len, body) : NULL;
  if (e != NULL && e->reason)
    snprintf(out, cap, "%s", e->reason);
  fl__v1__error__free_unpacked(e, NULL);
  return out;
}

bool fl_sup_doc_member(const char *domain, uint64_t device, uint64_t id, double pct) {
  uint8_t buf[64], h[FL_SHA256_LEN];
  size_t n = strlen(domain);
  if (n > 48)
    n = 48;
  memcpy(buf, domain, n);
  for (int i = 0; i < 8; i++) {
    buf[n + (size_t)i] = (uint8_t)(device >> (8 * i));
    buf[n + 8 + (size_t)i] = (uint8_t)(id >> (8 * i));
  }
  fl__sha256(buf, n + 16, h);
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | h[i];
  return pct >= 100 || (pct > 0 && v < (uint64_t)ldexp(pct / 100.0, 64));
}
