/*
 * The built-in transport on libcurl's multi interface: keep-alive connections, TLS with an
 * optional CA bundle and public-key pinning, connect and whole-request timeouts.
 *
 * Each transport owns one easy handle. Standing alone it also owns a multi handle and drives it
 * inside poll(); added to an fl_multi it moves onto the shared multi handle, which the fl_multi
 * drives for all clients at once (one connection pool, one poll for a thousand clients).
 * Response bodies are collected through the client's allocator; libcurl's own allocations go
 * through malloc, and its out-of-memory failures come back as FL_E_NOMEM.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "client_internal.h"

typedef struct curl_tr {
  fl_allocator alloc_copy;
  const fl_allocator *alloc;
  CURL *easy;
  CURLM *own;
  CURLM *multi; /* own, or the fl_multi's */
  bool added;   /* easy is in multi */
  bool finished;
  bool oom;
  CURLcode result;
  struct curl_slist *headers;
  char *base_url;
  char *url;
  uint8_t *req_body; /* the request's copy; NULL when keep_body */
  bool keep_body;    /* the caller keeps req->body until end() (fl__curl_transport_keep_body) */
  uint8_t *body;
  size_t body_len, body_cap, body_max;
  bool toobig; /* the answer went over body_max */
  int64_t retry_after_ms;
  char errbuf[CURL_ERROR_SIZE];
} curl_tr;

/* An idle transport keeps a response buffer up to this size for the next answer (check-ins,
 * acknowledgements); a larger one (a model) is freed when the exchange ends, so that a
 * thousand idle links do not each hold a model's worth of memory. */
#define BODY_KEEP_MAX ((size_t)16384)

static int body_reserve(curl_tr *t, size_t cap) {
  uint8_t *p = fl__realloc(t->alloc, t->body, cap);
  if (p == NULL)
    return FL_E_NOMEM;
  t->body = p;
  t->body_cap = cap;
  return FL_OK;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  curl_tr *t = ud;
  size_t n = size * nmemb;
  if (n > t->body_max - t->body_len) {
    t->toobig = true;
    return 0; /* aborts the transfer */
  }
  if (t->body_len + n > t->body_cap) {
    /* Content-Length sized the buffer already when the server sent one: growing is for
     * answers without it (or longer than announced), by doubling. */
    size_t cap = t->body_cap ? t->body_cap : 4096;
    while (cap < t->body_len + n)
      cap = cap > t->body_max / 2 ? t->body_max : cap * 2;
    if (body_reserve(t, cap) != FL_OK) {
      t->oom = true;
      return 0;
    }
  }
  memcpy(t->body + t->body_len, data, n);
  t->body_len += n;
  return n;
}

/* The value of header line `data` (n bytes) named `name` (lower case, with the colon), as a
 * NUL-terminated string in tmp; NULL when the line is another header. */
static const char *header_value(const char *data, size_t n, const char *name, char *tmp,
                                size_t cap) {
  size_t k = strlen(name);
  if (n <= k || strncasecmp(data, name, k) != 0)
    return NULL;
  size_t len = n - k < cap - 1 ? n - k : cap - 1;
  memcpy(tmp, data + k, len);
  tmp[len] = '\0';
  return tmp;
}

/* Content-Length: the body buffer is sized for the whole answer before it arrives (one
 * allocation instead of a doubling series with a copy at each step). Never beyond body_max:
 * an answer over the limit is refused as it arrives, not allocated for. */
static void size_from_content_length(curl_tr *t, const char *v) {
  char *end = NULL;
  unsigned long long len = strtoull(v, &end, 10);
  if (end == v || len == 0 || len > t->body_max || len <= t->body_cap)
    return;
  if (body_reserve(t, (size_t)len) != FL_OK)
    t->oom = true;
}

/* Retry-After as delta-seconds; the HTTP-date form is not used by the coordinator. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  curl_tr *t = ud;
  size_t n = size * nmemb;
  char tmp[32];
  /* Headers of a 1xx interim answer would precede the final ones; the coordinator sends none
   * (Expect is disabled), and an oversized guess only costs the allocation. */
  const char *cl = header_value(data, n, "content-length:", tmp, sizeof tmp);
  if (cl != NULL) {
    size_from_content_length(t, cl);
    return t->oom ? 0 : n;
  }
  static const char name[] = "retry-after:";
  if (n > sizeof name && strncasecmp(data, name, sizeof name - 1) == 0) {
    char tmp[32];
    size_t len = n - (sizeof name - 1) < sizeof tmp - 1 ? n - (sizeof name - 1) : sizeof tmp - 1;
    memcpy(tmp, data + sizeof name - 1, len);
    tmp[len] = '\0';
    long s = strtol(tmp, NULL, 10);
    if (s > 0 && s < 86400)
      t->retry_after_ms = (int64_t)s * 1000;
  }
  return n;
}

static void tr_end(void *ctx) {
  curl_tr *t = ctx;
  if (t->added)
    curl_multi_remove_handle(t->multi, t->easy);
  t->added = false;
  t->finished = false;
  curl_slist_free_all(t->headers);
  t->headers = NULL;
  fl__free(t->alloc, t->url);
  fl__free(t->alloc, t->req_body);
  t->url = NULL;
  t->req_body = NULL;
  /* The answer is the caller's until now (fl_http_response.body): a large buffer goes. */
  if (t->body_cap > BODY_KEEP_MAX) {
    fl__free(t->alloc, t->body);
    t->body = NULL;
    t->body_cap = 0;
    t->body_len = 0;
  }
}

static int add_header(curl_tr *t, const char *name, const char *value) {
  size_t n = strlen(name) + strlen(value) + 3;
  char *line = fl__malloc(t->alloc, n);
  if (line == NULL)
    return FL_E_NOMEM;
  snprintf(line, n, "%s: %s", name, value);
  struct curl_slist *l = curl_slist_append(t->headers, line);
  fl__free(t->alloc, line);
  if (l == NULL)
    return FL_E_NOMEM;
  t->headers = l;
  return FL_OK;
}

static int set_request(curl_tr *t, const fl_http_request *req) {
  int err = add_header(t, "Content-Type", "application/x-protobuf");
  if (err == FL_OK)
    err = add_header(t, "Expect", ""); /* no 100-continue round trip */
  if (err == FL_OK && req->auth != NULL)
    err = add_header(t, "X-FL-Auth", req->auth);
  if (err == FL_OK && req->if_none_match != NULL)
    err = add_header(t, "If-None-Match", req->if_none_match);
  if (err != FL_OK)
    return err;
  size_t n = strlen(t->base_url) + strlen(req->path) + 1;
  t->url = fl__malloc(t->alloc, n);
  if (t->url == NULL)
    return FL_E_NOMEM;
  snprintf(t->url, n, "%s%s", t->base_url, req->path);
  curl_easy_setopt(t->easy, CURLOPT_URL, t->url);
  curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
  if (strcmp(req->method, "GET") == 0) {
    curl_easy_setopt(t->easy, CURLOPT_HTTPGET, 1L);
    return FL_OK;
  }
  const uint8_t *body = req->body;
  if (req->body_len > 0 && !t->keep_body) {
    t->req_body = fl__malloc(t->alloc, req->body_len);
    if (t->req_body == NULL)
      return FL_E_NOMEM;
    memcpy(t->req_body, req->body, req->body_len);
    body = t->req_body;
  }
  /* POSTFIELDS is not copied by libcurl: it sends from there until the transfer ends. */
  curl_easy_setopt(t->easy, CURLOPT_POST, 1L);
  curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
  curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS,
                   req->body_len > 0 && body != NULL ? (const char *)body : "");
  return FL_OK;
}

static fl_err tr_begin(void *ctx, const fl_http_request *req) {
  curl_tr *t = ctx;
  tr_end(t);
  t->body_len = 0;
  t->oom = false;
  t->toobig = false;
  t->retry_after_ms = 0;
  t->errbuf[0] = '\0';
  int err = FL_E_NOMEM;
  if (t->multi == NULL && (t->own = t->multi = curl_multi_init()) == NULL)
    goto out_end;
  err = set_request(t, req);
  if (err != FL_OK)
    goto out_end;
  CURLMcode mc = curl_multi_add_handle(t->multi, t->easy);
  if (mc != CURLM_OK) {
    err = mc == CURLM_OUT_OF_MEMORY ? FL_E_NOMEM : FL_E_TRANSPORT;
    snprintf(t->errbuf, sizeof t->errbuf, "%s", curl_multi_strerror(mc));
    goto out_end;
  }
  t->added = true;
  return FL_OK;
out_end:
  tr_end(t);
  return err;
}

/* Drives the transport's own multi handle and notes when the transfer is over. */
static void drive_own(curl_tr *t, int timeout_ms) {
  int running = 0;
  curl_multi_perform(t->own, &running);
  if (running > 0 && timeout_ms > 0) {
    curl_multi_poll(t->own, NULL, 0, timeout_ms, NULL);
    curl_multi_perform(t->own, &running);
  }
  CURLMsg *msg;
  int left = 0;
  while ((msg = curl_multi_info_read(t->own, &left)) != NULL) {
    if (msg->msg == CURLMSG_DONE && msg->easy_handle == t->easy) {
      t->finished = true;
      t->result = msg->data.result;
    }
  }
}

static fl_err tr_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  curl_tr *t = ctx;
  if (!t->added)
    return FL_E_STATE;
  if (!t->finished && t->multi == t->own)
    drive_own(t, timeout_ms);
  if (!t->finished)
    return FL_E_AGAIN;
  curl_multi_remove_handle(t->multi, t->easy);
  t->added = false;
  if (t->oom || t->result == CURLE_OUT_OF_MEMORY)
    return FL_E_NOMEM;
  if (t->toobig) {
    snprintf(t->errbuf, sizeof t->errbuf, "answer larger than max_response_bytes (%zu)",
             t->body_max);
    return FL_E_TOOBIG;
  }
  if (t->result != CURLE_OK) {
    if (t->errbuf[0] == '\0')
      snprintf(t->errbuf, sizeof t->errbuf, "%s", curl_easy_strerror(t->result));
    return t->result == CURLE_OPERATION_TIMEDOUT ? FL_E_TIMEOUT : FL_E_TRANSPORT;
  }
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  resp->status = (int)status;
  resp->body = t->body;
  resp->body_len = t->body_len;
  resp->retry_after_ms = t->retry_after_ms;
  return FL_OK;
}

/* Moves the easy handle onto the fl_multi's shared handle (NULL: back to its own). The own
 * handle goes: its pool would keep the connection of a standalone enrollment open beside the
 * shared pool (a thousand clients, a thousand idle sockets at the coordinator). tr_begin makes
 * a new one when the transport stands alone again. */
static fl_err tr_attach(void *ctx, struct fl_multi *m) {
  curl_tr *t = ctx;
  if (t->added)
    return FL_E_STATE;
  if (m != NULL && t->own != NULL) {
    curl_multi_cleanup(t->own);
    t->own = NULL;
  }
  t->multi = m != NULL ? fl__multi_curlm(m) : t->own;
  return FL_OK;
}

static const char *tr_detail(void *ctx) {
  curl_tr *t = ctx;
  return t->errbuf;
}

static void tr_destroy(void *ctx) {
  curl_tr *t = ctx;
  if (t == NULL)
    return;
  tr_end(t);
  if (t->easy != NULL)
    curl_easy_cleanup(t->easy);
  if (t->own != NULL)
    curl_multi_cleanup(t->own);
  fl__free(t->alloc, t->body);
  fl__free(t->alloc, t->base_url);
  const fl_allocator *a = t->alloc != NULL ? &t->alloc_copy : NULL;
  fl_allocator copy;
  if (a != NULL) {
    copy = t->alloc_copy;
    a = &copy;
  }
  fl__free(a, t);
  curl_global_cleanup();
}

static void set_fixed_options(curl_tr *t, const fl_client_opts *o) {
  CURL *e = t->easy;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 10000L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS,
                   o->request_timeout_ms > 0 ? o->request_timeout_ms : 60000L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, o->allow_insecure_http ? "http,https" : "https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "libflclient");
  if (o->ca_file != NULL)
    curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
  if (o->pinned_pubkey != NULL)
    curl_easy_setopt(e, CURLOPT_PINNEDPUBLICKEY, o->pinned_pubkey);
}

/* https://, or http:// when the embedder opted in; nothing else (libcurl would guess http
 * for a URL without a scheme). */
static int check_scheme(const fl_client_opts *o) {
  const char *u = o->server_url;
  if (strncasecmp(u, "https://", 8) == 0)
    return FL_OK;
  if (strncasecmp(u, "http://", 7) == 0) {
    if (o->allow_insecure_http)
      return FL_OK;
    fl__opts_log(o,
                 "fl_transport_curl: %s is plain http, which lets anyone on the path enroll the "
                 "device under their own coordinator key: use https:// (allow_insecure_http "
                 "opts in, e.g. for a coordinator on loopback)",
                 u);
    return FL_E_INVAL;
  }
  fl__opts_log(o, "fl_transport_curl: server_url %s does not start with https://", u);
  return FL_E_INVAL;
}

fl_err fl_transport_curl(fl_transport *out, const fl_client_opts *in) {
  if (out == NULL || in == NULL)
    return FL_E_INVAL;
  fl_client_opts opts;
  const fl_client_opts *o = &opts;
  int err = fl__opts_read(in, &opts);
  if (err != FL_OK)
    return err;
  if (o->server_url == NULL) {
    fl__opts_log(o, "fl_transport_curl: server_url is required");
    return FL_E_INVAL;
  }
  err = check_scheme(o);
  if (err != FL_OK)
    return err;
  const fl_allocator *a = o->allocator;
  curl_tr *t = fl__calloc(a, 1, sizeof *t);
  if (t == NULL)
    return FL_E_NOMEM;
  if (a != NULL) {
    t->alloc_copy = *a;
    t->alloc = &t->alloc_copy;
  }
  t->body_max = o->max_response_bytes > 0 ? o->max_response_bytes : FL__RESPONSE_MAX;
  err = FL_E_TRANSPORT;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    goto out_free;
  err = FL_E_NOMEM;
  t->base_url = fl__strdup(t->alloc, o->server_url);
  if (t->base_url == NULL)
    goto out_destroy;
  size_t n = strlen(t->base_url);
  while (n > 0 && t->base_url[n - 1] == '/')
    t->base_url[--n] = '\0';
  /* The own multi handle is made by the first begin() that needs it: each holds a wakeup
   * socket pair, and ten thousand transports made before they join an fl_multi would hold
   * twenty thousand descriptors for nothing. */
  t->easy = curl_easy_init();
  if (t->easy == NULL)
    goto out_destroy;
  set_fixed_options(t, o);
  *out = (fl_transport){.version = FL_TRANSPORT_VERSION,
                        .ctx = t,
                        .begin = tr_begin,
                        .poll = tr_poll,
                        .end = tr_end,
                        .destroy = tr_destroy,
                        .detail = tr_detail,
                        .attach = tr_attach};
  return FL_OK;
out_destroy:
  tr_destroy(t); /* also balances curl_global_init */
  return err;
out_free:
  fl__free(a, t);
  return err;
}

void fl__curl_transport_finished(void *ctx, int curlcode) {
  curl_tr *t = ctx;
  t->finished = true;
  t->result = (CURLcode)curlcode;
}

bool fl__curl_transport_keep_body(const fl_transport *tr) {
  if (tr == NULL || tr->begin != tr_begin)
    return false;
  ((curl_tr *)tr->ctx)->keep_body = true;
  return true;
}
