/*
 * Signed request envelopes and the meaning of the coordinator's refusals.
 *
 * The inner message of a request (c->req_body) is kept for the whole exchange; every attempt
 * wraps it in a new fl.v1.SignedRequest with a fresh nonce and timestamp, because the
 * coordinator refuses a nonce it has seen. POST requests send the envelope as the body, GET
 * requests send it base64-encoded in X-FL-Auth with an empty body.
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <protobuf-c/protobuf-c.h>

#include "client_internal.h"
#include "digest.h"

#define NONCE_LEN 16
/* A retry hint larger than this is a Unix time in ms, smaller a delay (the proto leaves it
 * open for fl.v1.Error; RetryWindow always uses Unix time). */
#define UNIX_MS_FLOOR INT64_C(1000000000000)

ProtobufCMessage *fl__answer_unpack(fl_client *c, fl__answer_arena *ar,
                                    const ProtobufCMessageDescriptor *desc,
                                    const fl_http_response *resp, const char *what) {
  fl__protobuf_budget(&ar->pa, &ar->budget, c->alloc, resp->body_len);
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, &ar->pa, resp->body_len, resp->body);
  if (m == NULL)
    fl__client_err(c, "%s does not parse (or out of memory)", what);
  return m;
}

static void wire_free(fl_client *c) {
  if (!c->wire_in_req)
    fl__free(c->alloc, c->wire);
  c->wire = NULL;
  c->wire_len = 0;
  c->wire_in_req = false;
}

void fl__request_clear(fl_client *c) {
  wire_free(c);
  fl__free(c->alloc, c->req_alloc != NULL ? c->req_alloc : c->req_body);
  fl__free(c->alloc, c->auth);
  c->req_body = NULL;
  c->req_alloc = NULL;
  c->auth = NULL;
  c->req_body_len = c->wire_len = 0;
  c->req_etag[0] = '\0';
  c->req_upload = false;
}

int fl__request_set(fl_client *c, const char *method, const char *path, const uint8_t *body,
                    size_t len) {
  if (strlen(method) >= sizeof c->req_method || strlen(path) >= sizeof c->req_path)
    return FL_E_TOOBIG;
  uint8_t *copy = NULL;
  if (len > 0) {
    copy = fl__malloc(c->alloc, len);
    if (copy == NULL)
      return FL_E_NOMEM;
    memcpy(copy, body, len);
  }
  fl__request_clear(c);
  c->req_body = copy;
  c->req_body_len = len;
  strcpy(c->req_method, method);
  strcpy(c->req_path, path);
  return FL_OK;
}

int fl__request_set_upload_buf(fl_client *c, fl__upload_buf *ub,
                               const uint8_t content[FL_SHA256_LEN]) {
  fl__request_clear(c);
  strcpy(c->req_method, "POST");
  strcpy(c->req_path, "/v1/updates");
  c->req_alloc = ub->alloc;
  c->req_body = ub->body;
  c->req_body_len = ub->len;
  c->req_upload = true;
  memcpy(c->req_content, content, FL_SHA256_LEN);
  ub->alloc = ub->body = NULL;
  return FL_OK;
}

static size_t put_varint(uint8_t *out, uint64_t v) {
  size_t n = 0;
  do {
    out[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    v >>= 7;
  } while (v != 0);
  return n;
}

/* SignedRequest.body: key of field 4, length-delimited. */
#define BODY_FIELD_KEY 0x22

/* An upload whose buffer has room around it (fl__upload_buf): the attempt's signature field
 * goes after the body, the envelope's fields before it, and the wire is the buffer itself,
 * the same bytes protobuf-c would pack (fields in number order; the envelope signature, field
 * 5, is empty and so absent, leaving the body last). */
static int sign_upload_in_place(fl_client *c, Fl__V1__SignedRequest *env, const uint8_t *nonce) {
  int err = fl__update_sign_in_place(c->req_content, env->timestamp_ms, nonce, NONCE_LEN, c->key,
                                     c->req_body + c->req_body_len);
  if (err != FL_OK)
    return err;
  env->body.data = NULL;
  env->body.len = 0;
  uint8_t head[FL__UPLOAD_HEAD];
  size_t body_len = c->req_body_len + FL__UPLOAD_TAIL;
  size_t n = fl__v1__signed_request__get_packed_size(env);
  if (n + 1 + 10 > sizeof head)
    return FL_E_TOOBIG; /* three scalar fields and 16 bytes of nonce always fit */
  fl__v1__signed_request__pack(env, head);
  head[n++] = BODY_FIELD_KEY;
  n += put_varint(head + n, body_len);
  wire_free(c);
  fl__free(c->alloc, c->auth);
  c->auth = NULL;
  memcpy(c->req_body - n, head, n);
  c->wire = c->req_body - n;
  c->wire_len = n + body_len;
  c->wire_in_req = true;
  return FL_OK;
}

static int pack_envelope(fl_client *c, Fl__V1__SignedRequest *env, uint8_t **out, size_t *out_len) {
  size_t n = fl__v1__signed_request__get_packed_size(env);
  uint8_t *buf = fl__malloc(c->alloc, n);
  if (buf == NULL)
    return FL_E_NOMEM;
  fl__v1__signed_request__pack(env, buf);
  *out = buf;
  *out_len = n;
  return FL_OK;
}

static int to_base64(fl_client *c, const uint8_t *in, size_t len, char **out) {
  if (len > (size_t)INT32_MAX / 2)
    return FL_E_TOOBIG;
  char *b64 = fl__malloc(c->alloc, 4 * ((len + 2) / 3) + 1);
  if (b64 == NULL)
    return FL_E_NOMEM;
  EVP_EncodeBlock((unsigned char *)b64, in, (int)len);
  *out = b64;
  return FL_OK;
}

int fl__request_sign(fl_client *c) {
  if (c->key == NULL)
    return FL_E_NOT_ENROLLED;
  bool get = strcmp(c->req_method, "GET") == 0;
  uint8_t nonce[NONCE_LEN];
  int err = fl__random_bytes(nonce, sizeof nonce);
  if (err != FL_OK)
    return err;
  Fl__V1__SignedRequest env;
  fl__v1__signed_request__init(&env);
  env.device_id = c->device_id;
  env.timestamp_ms = fl__client_time_ms(c);
  env.nonce.data = nonce;
  env.nonce.len = sizeof nonce;
  env.body.data = c->req_body;
  env.body.len = c->req_body_len;
  /* An upload's one signature is the update's, over this attempt's timestamp and nonce
   * (docs/SIGNING.md); the envelope signature stays empty. */
  if (c->req_upload)
    return sign_upload_in_place(c, &env, nonce);
  uint8_t digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  err = fl__request_digest(c->req_method, c->req_path, env.device_id, env.timestamp_ms, nonce,
                           sizeof nonce, c->req_body, c->req_body_len, digest);
  if (err != FL_OK)
    return err;
  err = fl__sign(c->key, digest, sizeof digest, sig);
  if (err != FL_OK)
    return err;
  env.signature.data = sig;
  env.signature.len = sizeof sig;
  uint8_t *wire = NULL;
  size_t wire_len = 0;
  err = pack_envelope(c, &env, &wire, &wire_len);
  if (err != FL_OK)
    return err;
  wire_free(c);
  fl__free(c->alloc, c->auth);
  c->auth = NULL;
  if (!get) {
    c->wire = wire;
    c->wire_len = wire_len;
    return FL_OK;
  }
  err = to_base64(c, wire, wire_len, &c->auth);
  fl__free(c->alloc, wire);
  return err;
}

/* Refusals after which a freshly signed attempt can succeed. */
static bool transient_reason(const char *reason) {
  static const char *const r[] = {"stale_timestamp", "replayed_nonce", "clock_skew", "overloaded",
                                  "unavailable"};
  for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
    if (strcmp(reason, r[i]) == 0)
      return true;
  return false;
}

static int map_status(int status, const char *reason, bool *transient) {
  *transient = false;
  if (status == 429 || status >= 500 || transient_reason(reason)) {
    *transient = true;
    return status == 429 || status == 503 ? FL_E_RETRY_LATER : FL_E_TRANSPORT;
  }
  if (strcmp(reason, "revoked") == 0 || strcmp(reason, "device_revoked") == 0)
    return FL_E_REVOKED;
  if (strcmp(reason, "unknown_device") == 0)
    return FL_E_NOT_ENROLLED;
  if (strcmp(reason, "bad_signature") == 0)
    return FL_E_BADSIG;
  switch (status) {
    case 404:
      return FL_E_NOTFOUND;
    case 413:
      return FL_E_TOOBIG;
    default:
      return FL_E_REFUSED;
  }
}

/* The coordinator's words go into fl_client_errmsg() and the log, which an embedder may print
 * on a terminal or write line by line: control characters (C0, DEL, and C1 as UTF-8 encodes
 * it, C2 80..9F: an escape sequence, a newline that forges a log line) are shown byte by byte
 * as \xNN, and a backslash as \\ so that an escape cannot be faked either. Cut to fit
 * out[cap], never inside an escape. */
static void escape_text(const char *in, char *out, size_t cap) {
  size_t n = 0;
  bool c1 = false; /* the byte is the second of a UTF-8 C1 control */
  for (const unsigned char *p = (const unsigned char *)in; *p != '\0'; p++) {
    char esc[5];
    int k;
    bool ctl = *p < 0x20 || *p == 0x7f || c1 || (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f);
    c1 = *p == 0xc2 && ctl && !c1;
    if (ctl)
      k = snprintf(esc, sizeof esc, "\\x%02x", *p);
    else if (*p == '\\')
      k = snprintf(esc, sizeof esc, "\\\\");
    else
      k = snprintf(esc, sizeof esc, "%c", *p);
    if (n + (size_t)k >= cap)
      break;
    memcpy(out + n, esc, (size_t)k);
    n += (size_t)k;
  }
  out[n] = '\0';
}

int fl__response_error(fl_client *c, const fl_http_response *r, bool *transient,
                       int64_t *retry_after_ms) {
  ProtobufCAllocator pa;
  fl_pb_budget pbb;
  fl__protobuf_budget(&pa, &pbb, c->alloc, r->body_len);
  Fl__V1__Error *e = NULL;
  if (r->body_len > 0)
    e = fl__v1__error__unpack(&pa, r->body_len, r->body);
  const char *reason = e != NULL && e->reason != NULL ? e->reason : "";
  const char *msg = e != NULL && e->message != NULL ? e->message : "";
  int err = map_status(r->status, reason, transient);
  int64_t hint = e != NULL ? e->retry_after_ms : 0;
  if (hint >= UNIX_MS_FLOOR)
    hint = fl__sub_sat(hint, fl__client_time_ms(c));
  if (hint < r->retry_after_ms)
    hint = r->retry_after_ms;
  /* As for a Retry-After header: a hint of years (a bug, or a forged answer on a plain-HTTP
   * link) must not park the device forever. */
  if (hint > FL__WAIT_MAX_MS)
    hint = FL__WAIT_MAX_MS;
  *retry_after_ms = hint > 0 ? hint : 0;
  char reason_esc[64], msg_esc[FL__ERRMSG_MAX];
  escape_text(reason, reason_esc, sizeof reason_esc);
  escape_text(msg, msg_esc, sizeof msg_esc);
  fl__client_err(c, "%s %s: HTTP %d %s%s%s", c->req_method, c->req_path, r->status, reason_esc,
                 msg_esc[0] != '\0' ? ": " : "", msg_esc);
  if (e != NULL)
    fl__v1__error__free_unpacked(e, &pa);
  return err;
}

void fl__exchange_end(fl_client *c) {
  if (c->tr_busy)
    c->tr.end(c->tr.ctx);
  c->tr_busy = false;
  c->io = FL__IO_IDLE;
}

static const char *transport_detail(const fl_client *c) {
  const char *d = c->tr.detail != NULL ? c->tr.detail(c->tr.ctx) : NULL;
  return d != NULL ? d : "";
}

/* Exponential backoff with jitter: the delay for attempt k is drawn from [d/2, d] with
 * d = base * 2^(k-1), capped; the coordinator's hint is a floor. Half the span is random so
 * that a fleet that failed together does not come back together. */
static int64_t backoff_delay(const fl_client *c, int attempt, int64_t hint_ms) {
  int64_t d = c->backoff_base_ms;
  for (int i = 1; i < attempt && d < c->backoff_max_ms; i++)
    d *= 2;
  if (d > c->backoff_max_ms)
    d = c->backoff_max_ms;
  uint64_t r = 0;
  if (fl__random_bytes(&r, sizeof r) != FL_OK)
    r = (uint64_t)fl__client_now_ms();
  int64_t half = d / 2;
  d = half + (half > 0 ? (int64_t)(r % (uint64_t)(half + 1)) : 0);
  return d > hint_ms ? d : hint_ms;
}

/* Schedules the next attempt, or returns `err` when retries are used up or the deadline would
 * pass before the next attempt. */
static int schedule_retry(fl_client *c, int err, int64_t hint_ms, int64_t deadline_ms,
                          fl_step *step) {
  c->attempts++;
  if (c->attempts > c->max_retries) {
    fl__log(&c->log, FL_LOG_WARN, "%s %s: giving up after %d attempts", c->req_method, c->req_path,
            c->attempts);
    return err;
  }
  int64_t delay = backoff_delay(c, c->attempts, hint_ms);
  int64_t now = fl__client_now_ms();
  if (deadline_ms > 0 && now + delay >= deadline_ms)
    return err;
  fl__log(&c->log, FL_LOG_INFO, "%s %s: %s; retry %d in %lld ms", c->req_method, c->req_path,
          fl_strerror(err), c->attempts, (long long)delay);
  c->wake_at_ms = now + delay;
  c->io = FL__IO_BACKOFF;
  *step = FL_STEP_WAIT_TIME;
  return FL_E_AGAIN;
}

static int start_attempt(fl_client *c) {
  int err = fl__request_sign(c);
  if (err != FL_OK)
    return err;
  bool get = strcmp(c->req_method, "GET") == 0;
  fl_http_request req = {.size = sizeof req,
                         .method = c->req_method,
                         .path = c->req_path,
                         .auth = get ? c->auth : NULL,
                         .if_none_match = c->req_etag[0] != '\0' ? c->req_etag : NULL,
                         .body = get ? NULL : c->wire,
                         .body_len = get ? 0 : c->wire_len};
  err = c->tr.begin(c->tr.ctx, &req);
  if (err != FL_OK)
    return err;
  c->tr_busy = true;
  c->io = FL__IO_INFLIGHT;
  c->inflight_deadline_ms =
      fl__client_now_ms() + c->connect_timeout_ms + c->request_timeout_ms + 5000;
  return FL_OK;
}

/* The answer to the attempt in flight has arrived (or the attempt failed). */
static int finish_attempt(fl_client *c, int err, int64_t deadline_ms, fl_http_response *resp,
                          fl_step *step) {
  if (err == FL_OK && (resp->status == 200 || resp->status == 304)) {
    c->attempts = 0;
    return FL_OK; /* the caller reads the body, then fl__exchange_end() */
  }
  bool transient = err == FL_E_TRANSPORT || err == FL_E_TIMEOUT;
  int64_t hint = 0;
  if (err == FL_OK)
    err = fl__response_error(c, resp, &transient, &hint);
  else
    fl__client_err(c, "%s %s: %s %s", c->req_method, c->req_path, fl_strerror(err),
                   transport_detail(c));
  fl__exchange_end(c);
  c->result.retry_at_ms = hint > 0 ? fl__client_now_ms() + hint : 0;
  if (!transient)
    return err;
  return schedule_retry(c, err, hint, deadline_ms, step);
}

int fl__exchange_step(fl_client *c, int timeout_ms, int64_t deadline_ms, fl_http_response *resp,
                      fl_step *step) {
  if (c->io == FL__IO_BACKOFF) {
    if (fl__client_now_ms() < c->wake_at_ms) {
      *step = FL_STEP_WAIT_TIME;
      return FL_E_AGAIN;
    }
    c->io = FL__IO_IDLE;
    c->wake_at_ms = 0;
  }
  if (c->io == FL__IO_IDLE) {
    int err = start_attempt(c);
    if (err == FL_E_TRANSPORT) {
      fl__client_err(c, "%s %s: %s", c->req_method, c->req_path, transport_detail(c));
      return schedule_retry(c, err, 0, deadline_ms, step);
    }
    if (err != FL_OK)
      return err;
  }
  memset(resp, 0, sizeof *resp);
  resp->size = sizeof *resp;
  int err = c->tr.poll(c->tr.ctx, timeout_ms, resp);
  if (err == FL_OK && resp->body_len > c->max_response_bytes) {
    /* An embedder's transport may not enforce the limit itself. */
    fl__client_err(c, "%s %s: answer of %zu bytes is larger than max_response_bytes (%zu)",
                   c->req_method, c->req_path, resp->body_len, c->max_response_bytes);
    fl__exchange_end(c);
    return FL_E_TOOBIG;
  }
  if (err == FL_E_AGAIN && fl__client_now_ms() > c->inflight_deadline_ms)
    err = FL_E_TIMEOUT;
  if (err == FL_E_AGAIN) {
    *step = FL_STEP_WAIT_IO;
    return FL_E_AGAIN;
  }
  return finish_attempt(c, err, deadline_ms, resp, step);
}
