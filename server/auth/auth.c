/*
 * Device request authentication and admin bearer tokens.
 *
 * Device requests: the check order is cheapest first (timestamp, then one indexed lookup,
 * then the signature) and the nonce is recorded last, so a forged request never consumes a
 * device's nonce. Admin tokens are 32 random bytes shown once; only their SHA-256 is stored,
 * with an optional expiry, a revocation time and the last use (docs/API.md section 3).
 */
#include "auth/auth.h"
#include "auth/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "digest.h"
#include "mem.h"

#define NONCE_MIN 16
#define NONCE_MAX 64

/* The envelope is decoded before any signature can be checked, so within a budget (mem.h): a
 * body of tiny unknown fields would otherwise cost protobuf-c some forty times its size. An
 * honest envelope is its body's bytes and a few fields; the budget's allowance of twice the
 * wire size and 64 KiB leaves room for unknown fields of a newer client. */
static Fl__V1__SignedRequest *unpack_envelope(size_t len, const uint8_t *data) {
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, len);
  return fl__v1__signed_request__unpack(&pa, len, data);
}

static Fl__V1__SignedRequest *from_header(fl_req *q, fl_resp *r) {
  const char *h = fl__req_header(q, "X-FL-Auth");
  Fl__V1__SignedRequest *sr = NULL;
  if (h == NULL) {
    fl__resp_dev_error(r, 401, "missing_auth", "X-FL-Auth header required", 0);
    return NULL;
  }
  size_t n = strlen(h);
  if (n == 0 || n % 4 != 0 || n > 8192) {
    fl__resp_dev_error(r, 400, "malformed_request", "X-FL-Auth is not base64", 0);
    return NULL;
  }
  unsigned char *raw = malloc(n / 4 * 3 + 1);
  if (raw == NULL) {
    fl__resp_dev_error(r, 503, "unavailable", "out of memory", 0);
    return NULL;
  }
  int len = EVP_DecodeBlock(raw, (const unsigned char *)h, (int)n);
  /* EVP_DecodeBlock counts '=' padding as zero bytes; drop them. */
  for (size_t i = n; len > 0 && i > 0 && h[i - 1] == '='; i--)
    len--;
  if (len >= 0)
    sr = unpack_envelope((size_t)len, raw);
  free(raw);
  if (sr == NULL)
    fl__resp_dev_error(r, 400, "malformed_request", "X-FL-Auth is not a SignedRequest", 0);
  return sr;
}

Fl__V1__SignedRequest *fl__auth_envelope(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)s;
  if (strcmp(q->method, "GET") == 0)
    return from_header(q, r);
  Fl__V1__SignedRequest *sr = unpack_envelope(q->len, q->body);
  if (sr == NULL)
    fl__resp_dev_error(r, 400, "malformed_request", "body is not a SignedRequest", 0);
  return sr;
}

/* Loads the public key of a device. 0 found, 1 unknown, -1 database error. */
static int load_key(PGconn *c, uint64_t id, uint8_t pub[FL_PUBKEY_LEN]) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = fl__pg_exec_prep(
      c, "fl_auth_key", "SELECT public_key FROM devices WHERE device_id = $1", &p, true, NULL);
  if (res == NULL)
    return -1;
  int rc = 1;
  if (PQntuples(res) == 1 && PQgetlength(res, 0, 0) == FL_PUBKEY_LEN) {
    memcpy(pub, PQgetvalue(res, 0, 0), FL_PUBKEY_LEN);
    rc = 0;
  }
  PQclear(res);
  return rc;
}

/* What recording a verified request's nonce found (nonce_for_key). */
enum { NONCE_FRESH, NONCE_REPLAYED, NONCE_REVOKED, NONCE_OTHER_KEY, NONCE_NO_DEVICE, NONCE_ERROR };

/* Records the nonce of a request whose signature verified with `pub`, if the device is active
 * and its stored key is `pub`: one statement that also reads the device's state (a revocation
 * on any replica is seen at once) and checks the key the cache gave (keys.h). Committed
 * without waiting for the WAL flush, like fl__auth_record_nonce. */
static int nonce_for_key(PGconn *c, uint64_t id, const ProtobufCBinaryData *nonce,
                         const uint8_t pub[FL_PUBKEY_LEN]) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  fl__pgp_bin(&p, nonce->data, nonce->len);
  fl__pgp_bin(&p, pub, FL_PUBKEY_LEN);
  PGresult *res = fl__pg_exec_prep(
      c, "fl_auth_nonce_key",
      "WITH d AS (SELECT state = 'active' AS active, public_key = $3::bytea AS same"
      "  FROM devices WHERE device_id = $1::bigint),"
      " n AS (INSERT INTO nonces (device_id, nonce) SELECT $1::bigint, $2::bytea FROM d"
      "  WHERE d.active AND d.same AND set_config('synchronous_commit', 'off', true) IS NOT NULL"
      "  ON CONFLICT DO NOTHING RETURNING 1)"
      " SELECT d.active, d.same, EXISTS (SELECT 1 FROM n) FROM d",
      &p, false, NULL);
  if (res == NULL)
    return NONCE_ERROR;
  int rc = NONCE_NO_DEVICE;
  if (PQntuples(res) == 1) {
    if (strcmp(PQgetvalue(res, 0, 1), "t") != 0)
      rc = NONCE_OTHER_KEY;
    else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0)
      rc = NONCE_REVOKED;
    else
      rc = strcmp(PQgetvalue(res, 0, 2), "t") == 0 ? NONCE_FRESH : NONCE_REPLAYED;
  }
  PQclear(res);
  return rc;
}

/* Records the nonce (auth.h).
 * The insert commits without waiting for the WAL flush (synchronous_commit off for this one
 * transaction): a flush per request would cap the whole device API at the disk's fsync rate.
 * The cost is that nonces of the last few milliseconds before a database crash can be
 * replayed once; every state change they could cause is idempotent or durable on its own
 * (uploads are unique per device and round). */
int fl__auth_record_nonce(PGconn *c, uint64_t id, const ProtobufCBinaryData *nonce) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  fl__pgp_bin(&p, nonce->data, nonce->len);
  /* One prepared statement: set_config(..., true) is SET LOCAL for the statement's own
   * transaction, so its commit does not wait for the flush (one round trip, not four). */
  PGresult *res =
      fl__pg_exec_prep(c, "fl_auth_nonce",
                       "INSERT INTO nonces (device_id, nonce)"
                       " SELECT $1::bigint, $2::bytea WHERE set_config('synchronous_commit', 'off',"
                       " true) IS NOT NULL ON CONFLICT DO NOTHING",
                       &p, false, NULL);
  if (res == NULL)
    return -1;
  int rc = strcmp(PQcmdTuples(res), "1") == 0 ? 0 : 1;
  PQclear(res);
  return rc;
}

static int request_digest(fl_req *q, const Fl__V1__SignedRequest *sr,
                          uint8_t d[FL_SHA256_LEN]) {
  static const uint8_t empty[1];
  return fl__request_digest(q->method, q->path, sr->device_id, sr->timestamp_ms, sr->nonce.data,
                            sr->nonce.len, sr->body.data ? sr->body.data : empty, sr->body.len,
                            d)
             ? -1
             : 0;
}

int fl__auth_precheck(fl_srv *s, const Fl__V1__SignedRequest *sr, fl_resp *r) {
  int64_t now = fl__now_ms();
  /* |timestamp - now| in unsigned arithmetic: the timestamp is any int64 a client sends, and
   * the signed difference overflows for values near INT64_MIN or INT64_MAX. */
  uint64_t skew = sr->timestamp_ms >= now ? (uint64_t)sr->timestamp_ms - (uint64_t)now
                                          : (uint64_t)now - (uint64_t)sr->timestamp_ms;
  if (skew > (uint64_t)s->cfg.ts_window_ms) {
    fl__resp_dev_error(r, 401, "stale_timestamp", "timestamp outside the accepted window", 0);
    return -1;
  }
  if (sr->nonce.len < NONCE_MIN || sr->nonce.len > NONCE_MAX) {
    fl__resp_dev_error(r, 400, "bad_nonce", "nonce must be 16 to 64 bytes", 0);
    return -1;
  }
  return 0;
}

int fl__auth_verify(const uint8_t digest[FL_SHA256_LEN], const ProtobufCBinaryData *sig,
                    const uint8_t *pub, bool revoked, fl_resp *r) {
  if (fl__dev_verify(pub, digest, FL_SHA256_LEN, sig->data, sig->len) != FL_OK) {
    fl__resp_dev_error(r, 401, "bad_signature", "request signature does not verify", 0);
    return -1;
  }
  if (revoked) {
    fl__resp_dev_error(r, 403, "device_revoked", "device is revoked", 0);
    return -1;
  }
  return 0;
}

int fl__auth_signature(fl_req *q, const Fl__V1__SignedRequest *sr, const uint8_t pub[FL_PUBKEY_LEN],
                       fl_resp *r) {
  uint8_t d[FL_SHA256_LEN];
  if (request_digest(q, sr, d)) {
    /* A digest that cannot be built verifies nothing: the answer of a wrong signature. */
    fl__resp_dev_error(r, 401, "bad_signature", "request signature does not verify", 0);
    return -1;
  }
  return fl__auth_verify(d, &sr->signature, pub, false, r);
}

/* The device's key: from the cache, else looked up (not cached until a signature verified
 * with it, so that requests naming random devices do not churn the cache). 0, or -1 with the
 * refusal in *r. */
static int device_key(fl_srv *s, PGconn *c, uint64_t id, uint8_t pub[FL_PUBKEY_LEN], bool *cached,
                      fl_resp *r) {
  *cached = fl__keys_get(s->keys, id, pub);
  if (*cached)
    return 0;
  /* Device ids are bigserial: 0 or one above INT64_MAX names no device. */
  int rc = id != 0 && id <= INT64_MAX ? load_key(c, id, pub) : 1;
  if (rc < 0)
    fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
  else if (rc > 0)
    fl__resp_dev_error(r, 401, "unknown_device", "device is not enrolled", 0);
  return rc == 0 ? 0 : -1;
}

/* The answer to what recording the nonce found (nonce_for_key, the fold): 0 fresh, else -1
 * with the refusal in *r; a key that is not the device's (or no device) is forgotten. */
static int nonce_answer(fl_srv *s, uint64_t id, int rc, fl_resp *r) {
  switch (rc) {
    case NONCE_FRESH:
      return 0;
    case NONCE_REPLAYED:
      fl__resp_dev_error(r, 401, "replayed_nonce", "nonce already used", 0);
      return -1;
    case NONCE_REVOKED:
      fl__keys_drop(s->keys, id);
      fl__resp_dev_error(r, 403, "device_revoked", "device is revoked", 0);
      return -1;
    case NONCE_ERROR:
      fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
      return -1;
    default: /* gone, or its key changed under a fresh lookup */
      fl__keys_drop(s->keys, id);
      fl__resp_dev_error(r, 401, "unknown_device", "device is not enrolled", 0);
      return -1;
  }
}

/* Two statements on a cache miss (the key, then the nonce with the state), one on a hit; a
 * forged signature of a cached device costs none. A cached key that is no longer the device's
 * (keys.h: never, unless the database was replaced under the coordinator) is dropped and the
 * checks run once more on the stored one. */
int fl__auth_device(fl_srv *s, PGconn *c, fl_req *q, const Fl__V1__SignedRequest *sr, fl_auth *a,
                    fl_resp *r) {
  uint8_t d[FL_SHA256_LEN];
  bool cached;
  if (fl__auth_precheck(s, sr, r))
    return -1;
  for (int attempt = 0;; attempt++) {
    if (device_key(s, c, sr->device_id, a->pub, &cached, r))
      return -1;
    if (request_digest(q, sr, d)) {
      /* A digest that cannot be built verifies nothing: the answer of a wrong signature. */
      fl__resp_dev_error(r, 401, "bad_signature", "request signature does not verify", 0);
      return -1;
    }
    if (fl__auth_verify(d, &sr->signature, a->pub, false, r))
      return -1;
    a->device_id = sr->device_id;
    if (cached && a->policy == FL_AUTH_DEVICE_FOLD) {
      a->fold_pending = true;
      return 0;
    }
    int rc = nonce_for_key(c, sr->device_id, &sr->nonce, a->pub);
    if (rc == NONCE_OTHER_KEY && cached && attempt == 0) {
      fl__keys_drop(s->keys, sr->device_id);
      continue;
    }
    if (rc == NONCE_FRESH && !cached)
      fl__keys_put(s->keys, sr->device_id, a->pub);
    return nonce_answer(s, sr->device_id, rc, r);
  }
}

void fl__auth_fold_params(const fl_auth *a, fl_pgp *p) {
  fl__pgp_u64(p, a->device_id);
  fl__pgp_bin(p, a->sr->nonce.data, a->sr->nonce.len);
  fl__pgp_bin(p, a->pub, FL_PUBKEY_LEN);
  fl__pgp_text(p, a->fold_pending ? "t" : "f");
}

void fl__auth_fold_read(const PGresult *res, int col, fl_auth_fold *f) {
  f->found = PQntuples(res) == 1;
  f->active = f->found && strcmp(PQgetvalue(res, 0, col), "t") == 0;
  f->same_key = f->found && strcmp(PQgetvalue(res, 0, col + 1), "t") == 0;
  f->recorded = f->found && strcmp(PQgetvalue(res, 0, col + 2), "t") == 0;
}

int fl__auth_fold_finish(fl_srv *s, fl_auth *a, const fl_auth_fold *f, fl_resp *r) {
  if (!a->fold_pending)
    return 0;
  a->fold_pending = false;
  int rc = !f->found      ? NONCE_NO_DEVICE
           : !f->same_key ? NONCE_OTHER_KEY
           : !f->active   ? NONCE_REVOKED
           : f->recorded  ? NONCE_FRESH
                          : NONCE_REPLAYED;
  return nonce_answer(s, a->device_id, rc, r);
}

/* A nonce can be replayed while some replica accepts its request's timestamp. The row's
 * seen_at is the database's clock, each replica checks timestamps with its own: a replica
 * whose clock lags the database's by L (or that runs a larger --timestamp-window) accepts a
 * request up to L after 2 x window has passed on the database's clock. The margin covers that
 * difference (--nonce-skew-margin). */
void fl__auth_prune_nonces(fl_srv *s, PGconn *c) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_f64(&p, (2.0 * (double)s->cfg.ts_window_ms + (double)s->cfg.nonce_margin_ms) / 1000.0);
  PGresult *res =
      fl__pg_exec(c, "DELETE FROM nonces WHERE seen_at < now() - make_interval(secs => $1::float8)",
                  &p, false, NULL);
  PQclear(res);
}

static const char *const ROLES[] = {"viewer", "operator", "admin"};

int fl__role_parse(const char *name) {
  for (int i = 0; i < 3; i++)
    if (name != NULL && strcmp(name, ROLES[i]) == 0)
      return i;
  return -1;
}

/* last_used_at is written at most once a minute per token, so that a busy operator's script
 * does not turn every admin read into a write. */
static void touch_token(PGconn *c, const char *id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_text(&p, id);
  PQclear(fl__pg_exec(c,
                      "UPDATE admin_tokens SET last_used_at = now() WHERE token_id = $1::bigint"
                      " AND (last_used_at IS NULL OR last_used_at < now() - interval '60 s')",
                      &p, false, NULL));
}

int fl__auth_admin(fl_srv *s, PGconn *c, fl_req *q, int min_role, fl_auth *a, fl_resp *r) {
  const char *h = fl__req_header(q, "Authorization");
  uint8_t hash[FL_SHA256_LEN];
  fl_pgp p;
  (void)s;
  if (h == NULL || strncmp(h, "Bearer ", 7) != 0 || h[7] == '\0') {
    fl__resp_admin_error(r, 401, "unauthorized", "bearer token required");
    return -1;
  }
  fl__sha256(h + 7, strlen(h + 7), hash);
  fl__pgp_init(&p);
  fl__pgp_bin(&p, hash, sizeof hash);
  PGresult *res = fl__pg_exec(c,
                              "SELECT token_id, role, name, revoked_at IS NOT NULL,"
                              " coalesce(expires_at <= now(), false) FROM admin_tokens"
                              " WHERE token_hash = $1",
                              &p, false, NULL);
  if (res == NULL) {
    fl__resp_admin_error(r, 503, "unavailable", "database unavailable");
    return -1;
  }
  int rc = -1;
  if (PQntuples(res) != 1) {
    fl__resp_admin_error(r, 401, "unauthorized", "unknown token");
  } else if (strcmp(PQgetvalue(res, 0, 3), "t") == 0) {
    fl__resp_admin_error(r, 401, "token_revoked", "this token has been revoked");
  } else if (strcmp(PQgetvalue(res, 0, 4), "t") == 0) {
    fl__resp_admin_error(r, 401, "token_expired", "this token has expired");
  } else if (fl__role_parse(PQgetvalue(res, 0, 1)) < min_role) {
    fl__resp_admin_error(r, 403, "forbidden", "role too low for this endpoint");
  } else {
    a->role = fl__role_parse(PQgetvalue(res, 0, 1));
    a->token_id = fl__pg_u64(res, 0, 0);
    snprintf(a->actor, sizeof a->actor, "token:%s:%.60s", PQgetvalue(res, 0, 0),
             PQgetvalue(res, 0, 2));
    touch_token(c, PQgetvalue(res, 0, 0));
    rc = 0;
  }
  PQclear(res);
  return rc;
}

/* Inserts a token's hash. expires_in_s 0: no expiry. *id = 0 when the hash exists. */
static int store_token(PGconn *c, const uint8_t hash[FL_SHA256_LEN], int role, const char *name,
                       int64_t expires_in_s, const char *created_by, bool bootstrap, uint64_t *id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, hash, FL_SHA256_LEN);
  fl__pgp_text(&p, ROLES[role]);
  fl__pgp_text(&p, name);
  fl__pgp_i64(&p, expires_in_s);
  fl__pgp_text(&p, created_by);
  fl__pgp_text(&p, bootstrap ? "t" : "f");
  PGresult *res = fl__pg_exec(c,
                              "INSERT INTO admin_tokens (token_hash, role, name, expires_at,"
                              " created_by, bootstrap) VALUES ($1, $2, $3, CASE WHEN $4::bigint"
                              " > 0 THEN now() + make_interval(secs => $4::float8) END, $5,"
                              " $6::boolean) ON CONFLICT (token_hash) DO NOTHING"
                              " RETURNING token_id",
                              &p, false, NULL);
  if (res == NULL)
    return -1;
  if (id)
    *id = PQntuples(res) ? fl__pg_u64(res, 0, 0) : 0;
  PQclear(res);
  return 0;
}

uint64_t fl__auth_new_token(PGconn *c, int role, const char *name, int64_t expires_in_s,
                            const char *created_by, char token_hex[65]) {
  uint8_t raw[32], hash[FL_SHA256_LEN];
  uint64_t id = 0;
  if (fl__random_bytes(raw, sizeof raw))
    return 0;
  fl__hex(raw, sizeof raw, token_hex);
  OPENSSL_cleanse(raw, sizeof raw);
  fl__sha256(token_hex, 64, hash);
  if (store_token(c, hash, role, name, expires_in_s, created_by, false, &id))
    return 0;
  return id;
}

/* Writes a generated token to path, 0600, through a temporary file and a rename: a reader
 * sees the old file or the whole new one, never a part. */
static int write_token_file(const char *path, const char *tok) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return -1;
  size_t n = strlen(tok);
  int rc = fchmod(fd, 0600) == 0 && write(fd, tok, n) == (ssize_t)n && write(fd, "\n", 1) == 1 &&
                   fsync(fd) == 0
               ? 0
               : -1;
  if (close(fd) != 0)
    rc = -1;
  if (rc == 0 && rename(tmp, path) != 0)
    rc = -1;
  if (rc != 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
  }
  return rc;
}

/* The configured token (cfg.bootstrap_token) is applied when it differs from the one applied
 * last (admin_bootstrap): it is inserted, and the previous bootstrap token is revoked (a
 * changed FL_ADMIN_TOKEN is a rotation). The same token at the next start changes nothing, so
 * revoking or deleting it holds across restarts. */
static int apply_configured(fl_srv *s, PGconn *c) {
  uint8_t hash[FL_SHA256_LEN];
  fl_pgp p;
  fl__sha256(s->cfg.bootstrap_token, strlen(s->cfg.bootstrap_token), hash);
  fl__pgp_init(&p);
  fl__pgp_bin(&p, hash, sizeof hash);
  PGresult *res =
      fl__pg_exec(c, "SELECT token_hash = $1 FROM admin_bootstrap WHERE id = 1", &p, false, NULL);
  if (res == NULL)
    return -1;
  bool first = PQntuples(res) == 0, same = !first && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
  PQclear(res);
  if (same)
    return 0;
  /* The previous one first: its hash is in admin_bootstrap (none on the first start). */
  res = fl__pg_exec(c,
                    "UPDATE admin_tokens SET revoked_at = now() WHERE revoked_at IS NULL"
                    " AND token_hash = (SELECT token_hash FROM admin_bootstrap WHERE id = 1)"
                    " RETURNING token_id",
                    NULL, false, NULL);
  if (res == NULL)
    return -1;
  uint64_t old = PQntuples(res) ? fl__pg_u64(res, 0, 0) : 0, id = 0;
  PQclear(res);
  if (store_token(c, hash, FL_ROLE_ADMIN, "bootstrap", 0, "bootstrap", true, &id))
    return -1;
  res = fl__pg_exec(c,
                    "INSERT INTO admin_bootstrap (id, token_hash) VALUES (1, $1)"
                    " ON CONFLICT (id) DO UPDATE SET token_hash = $1, applied_at = now()",
                    &p, false, NULL);
  if (res == NULL)
    return -1;
  PQclear(res);
  if (id == 0)
    fl__slog(FL_LOG_WARN, "bootstrap_token_exists",
             "detail=\"the configured token is stored already; revoked or expired, it stays so\"");
  fl__slog(FL_LOG_INFO, "bootstrap_token_applied", "token_id=%llu revoked_previous=%llu",
           (unsigned long long)id, (unsigned long long)old);
  json_t *d = json_pack("{s:I, s:I}", "token_id", (json_int_t)id, "revoked", (json_int_t)old);
  int rc = fl__audit(c, "bootstrap", first ? "token.bootstrap" : "token.bootstrap_rotate", "", d);
  json_decref(d);
  return rc;
}

/* No configured token and an empty token table: a new one, written to cfg.admin_token_out
 * (0600) and never logged or printed: stdout is a container's log. */
static int generate(fl_srv *s, PGconn *c) {
  PGresult *res = fl__pg_exec(c, "SELECT count(*) FROM admin_tokens", NULL, false, NULL);
  if (res == NULL)
    return -1;
  bool empty = fl__pg_u64(res, 0, 0) == 0;
  PQclear(res);
  if (!empty)
    return 0;
  char hex[65];
  uint8_t hash[FL_SHA256_LEN];
  uint64_t id = 0;
  if (fl__random_bytes(hash, sizeof hash))
    return -1;
  fl__hex(hash, sizeof hash, hex);
  fl__sha256(hex, 64, hash);
  int rc = store_token(c, hash, FL_ROLE_ADMIN, "bootstrap", 0, "generated", true, &id);
  if (rc == 0 && write_token_file(s->cfg.admin_token_out, hex) != 0) {
    fl__slog(FL_LOG_ERROR, "bootstrap_token_unwritable", "path=%s error=%s hint=%s",
             fl__slog_str(s->cfg.admin_token_out), fl__slog_str(strerror(errno)),
             fl__slog_str("set FL_ADMIN_TOKEN(_FILE), or --admin-token-out to a writable file"));
    rc = -1;
  }
  OPENSSL_cleanse(hex, sizeof hex);
  if (rc == 0) {
    fl__slog(FL_LOG_INFO, "bootstrap_token_created", "role=admin token_id=%llu path=%s",
             (unsigned long long)id, fl__slog_str(s->cfg.admin_token_out));
    json_t *d = json_pack("{s:I, s:s}", "token_id", (json_int_t)id, "path", s->cfg.admin_token_out);
    rc = fl__audit(c, "bootstrap", "token.generate", "", d);
    json_decref(d);
  }
  return rc;
}

/* Replicas that start together take turns (a transaction-scoped advisory lock), so a token
 * is applied or generated once. */
#define BOOTSTRAP_LOCK "7302214520"

int fl__auth_bootstrap(fl_srv *s, PGconn *c) {
  if (fl__pg_cmd(c, "BEGIN") || fl__pg_cmd(c, "SELECT pg_advisory_xact_lock(" BOOTSTRAP_LOCK ")"))
    goto fail;
  int rc = s->cfg.bootstrap_token ? apply_configured(s, c) : generate(s, c);
  if (rc != 0 || fl__pg_cmd(c, "COMMIT"))
    goto fail;
  /* The token is needed no more; its text should not linger in the process's memory. */
  if (s->cfg.bootstrap_token)
    OPENSSL_cleanse((char *)s->cfg.bootstrap_token, strlen(s->cfg.bootstrap_token));
  return 0;
fail:
  fl__pg_cmd(c, "ROLLBACK");
  return -1;
}

int fl__audit(PGconn *c, const char *actor, const char *action, const char *target,
              json_t *detail) {
  char *d = detail ? json_dumps(detail, JSON_COMPACT) : NULL;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_text(&p, actor);
  fl__pgp_text(&p, action);
  fl__pgp_text(&p, target ? target : "");
  fl__pgp_text(&p, d ? d : "{}");
  PGresult *res = fl__pg_exec(c,
                              "INSERT INTO audit_log (actor, action, target, detail)"
                              " VALUES ($1, $2, $3, $4::jsonb)",
                              &p, false, NULL);
  free(d);
  if (res == NULL)
    return -1;
  PQclear(res);
  return 0;
}
