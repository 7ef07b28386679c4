/*
 * Signed model download for evaluation.
 */
#include "fetch.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "digest.h"
#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"

typedef struct buf {
  uint8_t *p;
  size_t len, cap;
} buf;

static size_t on_body(char *p, size_t size, size_t n, void *ctx) {
  buf *b = ctx;
  size_t add = size * n;
  if (b->len + add > b->cap) {
    size_t cap = (b->len + add) * 2;
    uint8_t *q = realloc(b->p, cap);
    if (q == NULL)
      return 0;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, add);
  b->len += add;
  return add;
}

/* "X-FL-Auth: <base64 SignedRequest>" for a GET of path; NULL on failure. */
static char *auth_header(const fl_key *key, uint64_t device_id, const char *path) {
  uint8_t nonce[16], digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int64_t now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  if (fl__random_bytes(nonce, sizeof(nonce)) != FL_OK ||
      fl__request_digest("GET", path, device_id, now_ms, nonce, sizeof(nonce), NULL, 0,
                         digest) != FL_OK ||
      fl__sign(key, digest, sizeof(digest), sig) != FL_OK)
    return NULL;
  Fl__V1__SignedRequest env;
  fl__v1__signed_request__init(&env);
  env.device_id = device_id;
  env.timestamp_ms = now_ms;
  env.nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
  env.signature = (ProtobufCBinaryData){sizeof(sig), sig};
  size_t n = fl__v1__signed_request__get_packed_size(&env);
  uint8_t *wire = malloc(n);
  char *h = malloc(4 * ((n + 2) / 3) + 16);
  if (wire == NULL || h == NULL) {
    free(wire);
    free(h);
    return NULL;
  }
  fl__v1__signed_request__pack(&env, wire);
  memcpy(h, "X-FL-Auth: ", 11);
  EVP_EncodeBlock((unsigned char *)h + 11, wire, (int)n);
  free(wire);
  return h;
}

static int http_get(const char *url, const char *auth, buf *body, long *status) {
  CURL *c = curl_easy_init();
  if (c == NULL)
    return FL_E_NOMEM;
  struct curl_slist *h = curl_slist_append(NULL, auth);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  CURLcode cc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return cc == CURLE_OK ? FL_OK : FL_E_TRANSPORT;
}

/* Checks the coordinator's signature over the published digest, loads the weights and checks
 * them against that digest. The signature first: it is cheap and refuses anything the
 * coordinator did not sign (a digest alone only proves the bytes match themselves). */
static int load_checked(const Fl__V1__ModelVersion *mv, const uint8_t coord_pub[FL_PUBKEY_LEN],
                        uint64_t model_id, uint64_t version, fl_model *m) {
  if (mv->sha256.len != FL_SHA256_LEN)
    return FL_E_BADHASH;
  int rc = fl__verify_raw(coord_pub, mv->sha256.data, FL_SHA256_LEN, mv->signature.data,
                          mv->signature.len);
  if (rc != FL_OK)
    return FL_E_BADSIG;
  rc = fl__weights_from_proto(m, mv->weights, mv->n_weights);
  if (rc != FL_OK)
    return rc;
  uint8_t digest[FL_SHA256_LEN];
  rc = fl__model_digest(model_id, version, mv->parent_version, fl__model_spec(m),
                        fl__model_params_const(m), fl__model_num_params(m), digest);
  if (rc != FL_OK)
    return rc;
  if (memcmp(mv->sha256.data, digest, FL_SHA256_LEN) != 0)
    return FL_E_BADHASH;
  return FL_OK;
}

int sim_fetch_version(const char *base_url, const fl_key *key, uint64_t device_id,
                      const uint8_t coord_pub[FL_PUBKEY_LEN], uint64_t model_id,
                      uint64_t version, fl_model *m, uint64_t *bytes) {
  char path[128], url[512];
  snprintf(path, sizeof(path), "/v1/models/%llu/versions/%llu", (unsigned long long)model_id,
           (unsigned long long)version);
  snprintf(url, sizeof(url), "%s%s", base_url, path);
  char *auth = auth_header(key, device_id, path);
  if (auth == NULL)
    return FL_E_CRYPTO;
  buf body = {0};
  long status = 0;
  int rc = http_get(url, auth, &body, &status);
  free(auth);
  if (rc == FL_OK && status != 200)
    rc = FL_E_REFUSED;
  if (rc == FL_OK)
    rc = sim_fetch_check(body.p, body.len, coord_pub, model_id, version, m);
  if (bytes)
    *bytes = body.len;
  free(body.p);
  return rc;
}

int sim_fetch_check(const uint8_t *body, size_t len, const uint8_t coord_pub[FL_PUBKEY_LEN],
                    uint64_t model_id, uint64_t version, fl_model *m) {
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(NULL, len, body);
  if (mv == NULL)
    return FL_E_PARSE;
  int rc = load_checked(mv, coord_pub, model_id, version, m);
  fl__v1__model_version__free_unpacked(mv, NULL);
  return rc;
}
