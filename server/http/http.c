/*
 * libmicrohttpd plumbing. The daemons run MHD's epoll event loop in a small pool of threads
 * (--http-threads): a connection costs memory (MHD's per-connection pool, a socket), not a
 * thread, so a thousand clients that trickle bytes (slowloris) or sit idle do not starve the
 * others, and conns.c closes those that take too long over a header or a body. Handlers run on
 * the loop threads: one that would wait for another thread does not block there but defers its
 * answer (fl__req_defer: an upload is parked with MHD_suspend_connection until the group
 * committer's completion resumes it). Handlers still wait for PostgreSQL (their queries and a
 * pool wait bounded by FL_DEVICE_POOL_WAIT_MS for device requests), which is why the pool has
 * a few more threads than cores.
 * Requests are routed on the request line (a linear scan of two small tables); bodies are
 * collected up to the route's limit (http.h): a larger Content-Length is refused before the
 * body is read, and a chunked body is cut off as soon as it passes the limit. Then the route's
 * policy runs (auth/pipeline.c) and its handler gets the authenticated context.
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "http/conns.h"
#include "mem.h"

/* A listening daemon and the route tables it serves, in order (NULL-terminated). */
typedef struct fl_listener {
  fl_srv *s;
  struct fl_http *h;
  const fl_route *tables[4];
} fl_listener;

struct fl_http {
  struct MHD_Daemon *d, *md; /* md: --metrics-listen */
  char *tls_cert;
  fl_listener main, ops;
  fl_conns *conns;
  /* Requests in a handler or parked with a deferred answer (a suspended connection), and
   * whether fl__http_stop has begun: then no handler starts, so that the count only falls. */
  atomic_int busy;
  atomic_bool stopping;
};

/* The whole file with read(2), not stdio: a FILE's buffer would leave a copy of a private key
 * in freed memory that nothing clears. *len receives the size. */
static char *read_file(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  char *buf = NULL;
  if (fd < 0)
    return NULL;
  if (fstat(fd, &st) == 0 && st.st_size >= 0 && st.st_size < (64 << 20))
    buf = malloc((size_t)st.st_size + 1);
  size_t n = 0;
  while (buf != NULL && n < (size_t)st.st_size) {
    ssize_t got = read(fd, buf + n, (size_t)st.st_size - n);
    if (got <= 0) {
      OPENSSL_cleanse(buf, n);
      free(buf);
      buf = NULL;
    } else {
      n += (size_t)got;
    }
  }
  close(fd);
  if (buf != NULL) {
    buf[n] = '\0';
    *len = n;
  }
  return buf;
}

const char *fl__req_header(fl_req *q, const char *name) {
  return MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, name);
}

const char *fl__req_query(fl_req *q, const char *name) {
  return MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, name);
}

int fl__path_u64(const char *path, const char *prefix, uint64_t *out, const char **rest) {
  size_t n = strlen(prefix);
  char *end;
  if (strncmp(path, prefix, n) != 0 || path[n] < '0' || path[n] > '9')
    return -1;
  errno = 0;
  unsigned long long v = strtoull(path + n, &end, 10);
  /* Ids are bigserial: 0, numbers above INT64_MAX and numbers that overflow name nothing
   * (strtoull would saturate the last to ULLONG_MAX, and PostgreSQL refuses both: a 503). */
  if (errno == ERANGE || v == 0 || v > INT64_MAX || (*end != '\0' && *end != '/'))
    return -1;
  *out = v;
  if (rest)
    *rest = end;
  return 0;
}

int fl__query_id(fl_req *q, const char *name, uint64_t *out) {
  const char *v = fl__req_query(q, name);
  char *end;
  *out = 0;
  if (v == NULL)
    return 0;
  if (v[0] < '0' || v[0] > '9')
    return -1;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  /* The same rule as path ids: bigserial values only, so no query fails in PostgreSQL. */
  if (errno == ERANGE || n > INT64_MAX || *end != '\0')
    return -1;
  *out = n;
  return 0;
}

/* Drops the body r holds: its own malloc'ed one, or its reference to a shared one. */
static void drop_body(fl_resp *r) {
  if (r->release != NULL)
    r->release(r->release_cls);
  else
    free(r->data);
  r->release = NULL;
  r->data = NULL;
}

static void set_body(fl_resp *r, int status, const char *ctype, char *data, size_t len) {
  drop_body(r);
  r->status = data ? status : 500;
  r->content_type = ctype;
  r->data = data;
  r->len = data ? len : 0;
}

void fl__resp_json(fl_resp *r, int status, json_t *j) {
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
  json_decref(j);
  set_body(r, status, "application/json", s, s ? strlen(s) : 0);
}

void fl__resp_admin_error(fl_resp *r, int status, const char *reason, const char *msg) {
  r->reason = reason;
  fl__resp_json(r, status, json_pack("{s:s, s:s}", "error", reason, "message", msg ? msg : ""));
}

void fl__resp_proto(fl_resp *r, int status, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  char *buf = malloc(n ? n : 1);
  if (buf != NULL)
    protobuf_c_message_pack(m, (uint8_t *)buf);
  set_body(r, status, "application/x-protobuf", buf, n);
}

void fl__resp_dev_error(fl_resp *r, int status, const char *reason, const char *msg,
                        int64_t retry_after_ms) {
  Fl__V1__Error e = FL__V1__ERROR__INIT;
  e.reason = (char *)reason;
  e.message = (char *)(msg ? msg : "");
  e.retry_after_ms = retry_after_ms;
  r->reason = reason;
  r->retry_after_ms = retry_after_ms > 0 ? retry_after_ms - fl__now_ms() : 0;
  fl__resp_proto(r, status, &e.base);
}

void fl__resp_text(fl_resp *r, int status, const char *ctype, const char *text) {
  char *s = strdup(text);
  set_body(r, status, ctype, s, s ? strlen(s) : 0);
}

void fl__resp_shared(fl_resp *r, int status, const char *ctype, const void *data, size_t len,
                     void (*release)(void *), void *cls) {
  drop_body(r);
  r->status = status;
  r->content_type = ctype;
  r->data = (char *)(uintptr_t)data;
  r->len = len;
  r->release = release;
  r->release_cls = cls;
}

static const fl_route *route(const fl_route *t, const char *method, const char *path,
                             bool *method_mismatch) {
  for (; t->prefix != NULL; t++) {
    size_t n = strlen(t->prefix);
    bool match =
        t->prefix[n - 1] == '/' ? strncmp(path, t->prefix, n) == 0 : strcmp(path, t->prefix) == 0;
    if (!match)
      continue;
    if (strcmp(method, t->method) == 0)
      return t;
    *method_mismatch = true;
  }
  return NULL;
}

int fl__routes_check(const fl_route *t, char *msg, size_t n) {
  for (size_t i = 0; t[i].prefix != NULL; i++) {
    const fl_route *rt = &t[i];
    bool dev = strncmp(rt->prefix, "/v1/", 4) == 0;
    const char *why = NULL;
    if (rt->method == NULL || rt->prefix[0] != '/' || rt->name == NULL || rt->fn == NULL)
      why = "method, path, name and handler are required";
    else if (rt->auth <= FL_AUTH_UNDECLARED || rt->auth >= FL_AUTH_POLICY_END)
      why = "no authentication policy declared (fl_route.auth)";
    else if (rt->auth >= FL_AUTH_DEVICE && rt->auth <= FL_AUTH_UPLOAD && !dev)
      why = "a device policy outside /v1/ (its refusals are fl.v1.Error)";
    else if (fl__auth_policy_role(rt->auth) >= 0 && dev)
      why = "an admin role on a /v1/ path (its refusals are JSON)";
    else if ((rt->auth == FL_AUTH_ENROLL || rt->auth == FL_AUTH_UPLOAD) &&
             strcmp(rt->method, "POST") != 0)
      why = "enrollment and uploads are signed in their POST body";
    if (why != NULL) {
      snprintf(msg, n, "route %zu (%s %s): %s", i, rt->method ? rt->method : "-", rt->prefix, why);
      return -1;
    }
  }
  return 0;
}

/* The path for a log line: libmicrohttpd has already decoded %XX escapes, so a client can put
 * a newline, a quote or spaces in it and forge whole log lines or fields. Anything outside
 * printable ASCII, and the quote and backslash, is written as %XX again; long paths are cut. */
static void log_path(const char *path, char out[256]) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = 0;
  for (const unsigned char *p = (const unsigned char *)path; *p && n + 4 < 256; p++) {
    if (*p > 0x20 && *p < 0x7f && *p != '"' && *p != '\\') {
      out[n++] = (char)*p;
    } else {
      out[n++] = '%';
      out[n++] = hex[*p >> 4];
      out[n++] = hex[*p & 15];
    }
  }
  out[n] = '\0';
}

static enum MHD_Result send_resp(fl_srv *s, fl_req *q, fl_resp *r, const char *name) {
  struct MHD_Response *mr;
  if (r->release != NULL) /* since libmicrohttpd 0.9.73 (Debian 12 has 0.9.75) */
    mr = MHD_create_response_from_buffer_with_free_callback_cls(r->len, r->data, r->release,
                                                                r->release_cls);
  else
    mr = MHD_create_response_from_buffer(r->len, r->data, MHD_RESPMEM_MUST_FREE);
  if (mr == NULL) {
    drop_body(r);
    return MHD_NO;
  }
  r->data = NULL;
  r->release = NULL;
  if (r->content_type)
    MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
  if (r->etag[0])
    MHD_add_response_header(mr, MHD_HTTP_HEADER_ETAG, r->etag);
  for (const char *const *h = r->headers; h != NULL && h[0] != NULL; h += 2)
    MHD_add_response_header(mr, h[0], h[1]);
  if (r->retry_after_ms > 0) {
    char ra[32];
    snprintf(ra, sizeof ra, "%lld", (long long)((r->retry_after_ms + 999) / 1000));
    MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, ra);
  }
  enum MHD_Result ret = MHD_queue_response(q->conn, (unsigned)r->status, mr);
  MHD_destroy_response(mr);
  double dt = fl__mono_s() - q->t0;
  fl__metrics_request(s->metrics, name, r->status, dt);
  char path[256];
  log_path(q->path, path);
  fl__slog(r->status >= 500 ? FL_LOG_WARN : FL_LOG_DEBUG, "http_request",
           "method=%s path=%s status=%d reason=%s ms=%.2f", q->method, path, r->status,
           r->reason ? r->reason : "-", dt * 1e3);
  return ret;
}

static enum MHD_Result dispatch(fl_srv *s, fl_req *q) {
  fl_resp r = {0};
  const fl_route *rt = q->rt;
  bool dev = strncmp(q->path, "/v1/", 4) == 0;
  if (rt == NULL) {
    bool mm = q->method_mismatch;
    const char *msg =
        q->escaped ? "no such endpoint (a path has no %-escapes)" : "no such endpoint";
    if (dev)
      fl__resp_dev_error(&r, mm ? 405 : 404, mm ? "method_not_allowed" : "not_found", msg, 0);
    else
      fl__resp_admin_error(&r, mm ? 405 : 404, mm ? "method_not_allowed" : "not_found", msg);
    return send_resp(s, q, &r, "unknown");
  }
  if (q->too_big) {
    /* Each API refuses in its own format: devices parse an fl.v1.Error, operators JSON. */
    char msg[96];
    snprintf(msg, sizeof msg, "body larger than this endpoint's limit of %zu bytes", q->limit);
    if (dev)
      fl__resp_dev_error(&r, 413, "body_too_large", msg, 0);
    else
      fl__resp_admin_error(&r, 413, "body_too_large", msg);
    return send_resp(s, q, &r, rt->name);
  }
  /* Counted before the check (both sequentially consistent): either fl__http_stop sees this
   * request, or this request sees it stopping. */
  atomic_fetch_add(&q->http->busy, 1);
  if (atomic_load(&q->http->stopping)) {
    atomic_fetch_sub(&q->http->busy, 1);
    if (dev)
      fl__resp_dev_error(&r, 503, "unavailable", "the coordinator is stopping; retry",
                         fl__now_ms() + 1000);
    else {
      fl__resp_admin_error(&r, 503, "unavailable", "the coordinator is stopping; retry");
      r.retry_after_ms = 1000; /* like the device API's: another replica, or this one restarted */
    }
    return send_resp(s, q, &r, rt->name);
  }
  /* The route's policy, once, for every handler (auth/pipeline.c). */
  if (fl__auth_run(s, q, &r)) {
    atomic_fetch_sub(&q->http->busy, 1);
    /* An upload refused before its handler is a refused update all the same (metrics). */
    if (rt->auth == FL_AUTH_UPLOAD && r.reason != NULL)
      fl__metrics_update_refused(s->metrics, r.reason);
    return send_resp(s, q, &r, rt->name);
  }
  r.status = 500;
  rt->fn(s, q, &r);
  /* A folded authentication (FL_AUTH_DEVICE_FOLD) that the handler left unfinished is a
   * defect of the handler: never answered as a success. */
  if (q->auth != NULL && q->auth->fold_pending && q->finish == NULL && r.status < 300) {
    fl__slog(FL_LOG_ERROR, "auth_fold_unfinished", "route=%s", fl__slog_str(rt->name));
    fl__resp_dev_error(&r, 500, "internal", "authentication unfinished", 0);
  }
  /* The connection is for the handler's statements only: not held while the answer is sent
   * (a download to a slow client) or while a deferred one waits. */
  fl__auth_put_conn(s, q->auth);
  if (q->finish != NULL) {
    free(r.data); /* deferred: the answer comes from finish (finish_deferred) */
    return MHD_YES;
  }
  fl__auth_free(s, q->auth);
  q->auth = NULL;
  atomic_fetch_sub(&q->http->busy, 1);
  return send_resp(s, q, &r, rt->name);
}

void fl__req_defer(fl_req *q, fl_finish finish, void *arg) {
  q->finish = finish;
  q->finish_arg = arg;
  MHD_suspend_connection(q->conn);
}

void fl__req_resume(fl_req *q) {
  MHD_resume_connection(q->conn);
}

/* A resumed connection: MHD calls the access handler again, which answers with what the
 * deferred work left. */
static enum MHD_Result finish_deferred(fl_srv *s, fl_req *q) {
  fl_resp r = {.status = 500};
  fl_finish f = q->finish;
  q->finish = NULL;
  f(s, q, &r, q->finish_arg);
  fl__auth_free(s, q->auth);
  q->auth = NULL;
  atomic_fetch_sub(&q->http->busy, 1);
  return send_resp(s, q, &r, q->rt->name);
}

/* The declared body length (0 when there is none, ULLONG_MAX when it does not fit); *chunked
 * is set for a body without one. */
static unsigned long long declared_length(struct MHD_Connection *c, bool *chunked) {
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  *chunked = cl == NULL && MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                       MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
  return cl != NULL ? strtoull(cl, NULL, 10) : 0;
}

/* The body limit of a routed request (http.h, fl_route). */
static size_t body_limit(fl_srv *s, const fl_route *rt, const char *method, size_t declared) {
  if (strcmp(method, "GET") == 0 || strcmp(method, "DELETE") == 0 || strcmp(method, "HEAD") == 0)
    return 0;
  size_t lim = rt->body_limit ? rt->body_limit(s, declared)
               : rt->max_body ? rt->max_body
                              : s->cfg.max_body;
  return lim < s->cfg.max_body ? lim : s->cfg.max_body;
}

/* The buffer is sized by the declared Content-Length (within the route's limit) when the first
 * bytes of the body arrive, not on the header: a client announcing a length it never sends
 * costs nothing until it sends, and a large buffer's pages are committed only as the copy
 * reaches them. Growing an 800 KB upload by doubling from 16 KB cost about one more copy of
 * the body (realloc) and a page fault per page twice. A chunked body still grows by doubling. */
static int append(fl_req *q, const char *data, size_t n) {
  if (q->too_big || n > q->limit - q->len) {
    q->too_big = true;
    return 0;
  }
  if (q->len + n > q->cap) {
    /* q->declared <= q->limit: on_request refused a larger one. */
    size_t cap = q->cap ? q->cap : q->declared >= n ? q->declared : 16384;
    while (cap < q->len + n)
      cap = cap > q->limit / 2 ? q->limit : cap * 2;
    uint8_t *b = realloc(q->body, cap);
    if (b == NULL)
      return -1;
    q->body = b;
    q->cap = cap;
  }
  memcpy(q->body + q->len, data, n);
  q->len += n;
  return 0;
}

/* fl__auth_before_body under dispatch's rule for the stopping coordinator: counted as busy
 * while it uses the pool; once stopping, nothing is checked early (dispatch answers 503).
 * Nonzero with the refusal in *r. */
static int before_body(fl_srv *s, fl_req *q, fl_resp *r) {
  int rc = 0;
  atomic_fetch_add(&q->http->busy, 1);
  if (!atomic_load(&q->http->stopping))
    rc = fl__auth_before_body(s, q, r);
  atomic_fetch_sub(&q->http->busy, 1);
  return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
  const fl_listener *l = cls;
  fl_srv *s = l->s;
  fl_req *q = *con_cls;
  (void)version;
  if (q == NULL || q->conn == NULL) {
    if (q == NULL && (q = calloc(1, sizeof *q)) == NULL)
      return MHD_NO;
    q->conn = conn;
    q->method = method;
    q->path = url;
    q->t0 = fl__mono_s();
    q->cx = fl__conn_of(conn);
    q->http = l->h;
    *con_cls = q;
    /* Routed on the request line, so that the route's body limit applies before any of the
     * body is read, and a request for no endpoint is answered without reading its body. */
    for (size_t i = 0; q->rt == NULL && l->tables[i] != NULL; i++)
      q->rt = route(l->tables[i], method, url, &q->method_mismatch);
    bool chunked;
    unsigned long long cl = declared_length(conn, &chunked);
    if (q->rt != NULL)
      q->limit = body_limit(s, q->rt, method, chunked || cl > SIZE_MAX ? SIZE_MAX : (size_t)cl);
    q->declared = chunked || cl > q->limit ? 0 : (size_t)cl;
    if (q->escaped) {
      q->rt = NULL; /* paths are taken as sent (on_uri) */
      q->method_mismatch = false;
    }
    if (q->rt == NULL || cl > q->limit) {
      /* Answer before the body is read: MHD skips "100 Continue" and closes afterwards. */
      q->too_big = q->rt != NULL;
      q->answered = true;
      fl__conn_header_done(q->cx, false);
      return dispatch(s, q);
    }
    /* An admin request is authenticated before its body is read (auth.h): without a valid
     * token it is answered now, like a body too large, with none of the body buffered. */
    fl_resp r = {0};
    if ((chunked || cl > 0) && before_body(s, q, &r)) {
      q->answered = true;
      fl__conn_header_done(q->cx, false);
      return send_resp(s, q, &r, q->rt->name);
    }
    /* The header is in; the body deadline (conns.h) runs while one is expected. */
    fl__conn_header_done(q->cx, chunked || cl > 0);
    return MHD_YES;
  }
  if (*upload_data_size != 0) {
    fl__conn_body(q->cx, *upload_data_size);
    if (q->rt != NULL && strcmp(q->rt->name, "update") == 0)
      atomic_store_explicit(&s->upload_rx_ms, (int64_t)(fl__mono_s() * 1000), memory_order_relaxed);
    if (append(q, upload_data, *upload_data_size))
      return MHD_NO;
    *upload_data_size = 0;
    if (q->too_big && !q->answered) {
      /* A chunked body has no Content-Length to refuse up front and may never end: answer
       * (or, where MHD cannot answer mid-body, close) as soon as it passes the limit rather
       * than reading it to its end. */
      q->answered = true;
      fl__conn_busy(q->cx);
      return dispatch(s, q);
    }
    return MHD_YES;
  }
  if (q->finish != NULL)
    return finish_deferred(s, q);
  if (q->answered)
    return MHD_YES;
  q->answered = true;
  fl__conn_busy(q->cx);
  return dispatch(s, q);
}

/* Called with the request target as sent, before libmicrohttpd decodes %XX escapes in it. The
 * path a device signs is hashed as sent (docs/SIGNING.md) while routing and the digest see the
 * decoded one, so "/v1/models/5/versions/1%00" would serve version 1 and "1%31" version 11
 * under a signature over another path. No endpoint's path needs an escape (they are fixed
 * words and decimal ids): a path with one names no endpoint (404), before anything else. The
 * query string may keep its escapes. The request state starts here (on_request completes it). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
  (void)cls;
  (void)conn;
  fl_req *q = calloc(1, sizeof *q);
  if (q != NULL && uri != NULL)
    q->escaped = memchr(uri, '%', strcspn(uri, "?")) != NULL;
  return q;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  fl_req *q = *con_cls;
  fl_srv *s = cls;
  (void)toe;
  if (q != NULL) {
    if (q->finish != NULL) {
      /* Never the case while the daemon runs (a parked connection is resumed first), but the
       * deferred state must not leak if it were. */
      q->finish(s, q, NULL, q->finish_arg);
      atomic_fetch_sub(&q->http->busy, 1);
    }
    fl__auth_free(s, q->auth);
    free(q->body);
    free(q);
    *con_cls = NULL;
  }
  /* Answered (or given up): the next request's header is awaited from now. */
  fl__conn_idle(fl__conn_of(conn));
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
  char msg[512];
  (void)cls;
  vsnprintf(msg, sizeof msg, fmt, ap);
  msg[strcspn(msg, "\n")] = '\0';
  fl__slog(FL_LOG_WARN, "mhd", "message=%s", fl__slog_str(msg));
}

/* GnuTLS priorities: TLS 1.2 and 1.3 only, AEAD ciphers only (AES-GCM, ChaCha20-Poly1305),
 * forward-secret key exchange; no CBC, no SHA-1 MACs, no TLS 1.0/1.1. */
#define FL_TLS_PRIORITIES                                                             \
  "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:" \
  "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:+DHE-RSA"

/* The database connections that are not the loop threads': the committer, the rounds ticker
 * (and the close it runs), the metrics listener's /readyz. */
#define FL_POOL_OTHERS 4

/* Event-loop threads of the main listener: --http-threads, else the CPU count but at least 4
 * (handlers wait for PostgreSQL round trips on these threads, and the database runs on the
 * same cores: a few threads more than cores keep them busy), and no more than the database
 * pool has connections for (fl__http_start). */
static unsigned loop_threads(const fl_config *cfg) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  unsigned t = n > 4 ? (unsigned)n : 4u;
  if (cfg->http_threads != 0)
    return cfg->http_threads;
  if (cfg->db_pool_size >= 4 + FL_POOL_OTHERS && t > cfg->db_pool_size - FL_POOL_OTHERS)
    t = cfg->db_pool_size - FL_POOL_OTHERS;
  return t;
}

/* Each connection holds a descriptor: idle ones no longer cost a thread, so the descriptor
 * limit is what would refuse them first. The soft limit is raised (up to the hard one) to what
 * --max-connections needs, plus the database pool and files. */
static void raise_nofile(const fl_config *cfg) {
  struct rlimit rl;
  rlim_t need = (rlim_t)cfg->max_connections + cfg->db_pool_size + 128;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
    return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < need)
    fl__slog(FL_LOG_WARN, "nofile_limit",
             "limit=%llu needed=%llu hint=\"raise the hard limit (ulimit -Hn) or lower "
             "--max-connections\"",
             (unsigned long long)rl.rlim_cur, (unsigned long long)need);
}

/* The --metrics-listen daemon: /metrics, /healthz and /readyz in plain HTTP, a few
 * connections (a scraper and probes): one event-loop thread, the same deadlines. */
static int start_ops(fl_srv *s, fl_http *h) {
  const struct sockaddr *sa = (const struct sockaddr *)&s->cfg.metrics.addr;
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC;
  if (sa->sa_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  h->ops = (fl_listener){s, h, {fl__ops_routes, NULL}};
  h->md = MHD_start_daemon(
      flags, s->cfg.metrics.port, NULL, NULL, on_request, &h->ops, MHD_OPTION_EXTERNAL_LOGGER,
      mhd_log, NULL, MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
      MHD_OPTION_NOTIFY_CONNECTION, fl__conns_notify, h->conns, MHD_OPTION_CONNECTION_LIMIT, 16u,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->cfg.max_conns_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
      10u, MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_END);
  if (h->md == NULL) {
    fl__slog(FL_LOG_ERROR, "listen_failed", "metrics_listen=%s",
             fl__slog_str(fl__config_metrics_text(&s->cfg)));
    return -1;
  }
  fl__slog(FL_LOG_INFO, "metrics_listening", "listen=%s",
           fl__slog_str(fl__config_metrics_text(&s->cfg)));
  return 0;
}

int fl__http_start(fl_srv *s) {
  /* Suspend and resume: uploads parked until their group commit (fl__req_defer). */
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  unsigned threads = loop_threads(&s->cfg);
  char *tls_key = NULL;
  size_t cert_len = 0, key_len = 0;
  /* fl__config_check resolved the listen address (a name, IPv4 or IPv6) before the database. */
  const struct sockaddr *sa = (const struct sockaddr *)&s->cfg.listen_addr;
  if (s->cfg.listen_addr_len == 0 || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) {
    fl__slog(FL_LOG_ERROR, "listen_failed", "listen=%s reason=\"address not resolved\"",
             fl__slog_str(fl__config_listen_text(&s->cfg)));
    return FL_E_INVAL;
  }
  if (sa->sa_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  fl_http *h = calloc(1, sizeof *h);
  if (h == NULL)
    return FL_E_NOMEM;
  atomic_init(&h->busy, 0);
  atomic_init(&h->stopping, false);
  if (fl__conns_new(&h->conns, &s->cfg, s->metrics) != FL_OK) {
    free(h);
    return FL_E_NOMEM;
  }
  raise_nofile(&s->cfg);
  /* A handler waits on its loop thread for a pool connection (device requests at most
   * FL_DEVICE_POOL_WAIT_MS), stalling every connection of that thread meanwhile. A loop thread
   * holds one connection at a time: a pool with one per loop thread besides the others'
   * (FL_POOL_OTHERS) is never waited for. */
  if (s->cfg.db_pool_size < threads + FL_POOL_OTHERS)
    fl__slog(FL_LOG_WARN, "db_pool_small",
             "db_pool=%u http_threads=%u hint=\"requests may wait for a database connection on "
             "the event loops; --db-pool of at least --http-threads + %d\"",
             s->cfg.db_pool_size, threads, FL_POOL_OTHERS);
  /* With --metrics-listen, /metrics is served there only; the probes stay on both. */
  h->main = (fl_listener){s,
                          h,
                          {fl__dev_routes, fl__admin_routes,
                           s->cfg.metrics.on ? fl__probe_routes : fl__ops_routes, NULL}};
  /* Every row declares who may call it: a table that does not is a build defect, refused
   * before anything listens (http.h, fl_route.auth). */
  const fl_route *const all[] = {fl__dev_routes, fl__admin_routes, fl__ops_routes,
                                 fl__probe_routes};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    char why[160];
    if (fl__routes_check(all[i], why, sizeof why)) {
      fl__slog(FL_LOG_ERROR, "bad_route_table", "detail=%s", fl__slog_str(why));
      goto fail;
    }
  }
  if (s->cfg.tls_cert) {
    h->tls_cert = read_file(s->cfg.tls_cert, &cert_len);
    tls_key = read_file(s->cfg.tls_key, &key_len);
    if (h->tls_cert == NULL || tls_key == NULL) {
      fl__slog(FL_LOG_ERROR, "tls_files_unreadable", NULL);
      goto fail;
    }
    flags |= MHD_USE_TLS;
  }
  /* Without the option MHD sets only SO_REUSEADDR (a restart binds at once, a second
   * process on the port fails); with it, SO_REUSEPORT lets processes share the port, which
   * must be asked for: the kernel then splits connections between them. An array entry so
   * that the option is absent rather than set to "disallow", which drops SO_REUSEADDR too. */
  struct MHD_OptionItem reuse_opts[] = {
      {s->cfg.reuse_port ? MHD_OPTION_LISTENING_ADDRESS_REUSE : MHD_OPTION_END, 1, NULL},
      {MHD_OPTION_END, 0, NULL}};
  struct MHD_OptionItem tls_opts[] = {
      {h->tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, h->tls_cert},
      {tls_key ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, tls_key},
      {tls_key ? MHD_OPTION_HTTPS_PRIORITIES : MHD_OPTION_END, 0, (void *)FL_TLS_PRIORITIES},
      {MHD_OPTION_END, 0, NULL}};
  /* A thread pool of one is no pool: MHD wants the option absent then. */
  struct MHD_OptionItem pool_opts[] = {
      {threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END, threads, NULL},
      {MHD_OPTION_END, 0, NULL}};
  h->d = MHD_start_daemon(
      flags, s->cfg.port, NULL, NULL, on_request, &h->main, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
      NULL, MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
      MHD_OPTION_NOTIFY_CONNECTION, fl__conns_notify, h->conns, MHD_OPTION_CONNECTION_LIMIT,
      s->cfg.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->cfg.max_conns_per_ip,
      MHD_OPTION_CONNECTION_TIMEOUT, s->cfg.conn_timeout_s,
      /* the path as sent, before unescaping */
      MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_ARRAY, reuse_opts, MHD_OPTION_ARRAY,
      pool_opts, MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_END);
  /* MHD keeps only a pointer to the key text and hands it to GnuTLS while it starts
   * (MHD_init_daemon_certificate); GnuTLS holds the parsed key from then on. The text is
   * cleared now rather than left in the heap for a core dump or a memory disclosure. */
  if (tls_key != NULL) {
    OPENSSL_cleanse(tls_key, key_len);
    free(tls_key);
    tls_key = NULL;
  }
  if (h->d == NULL) {
    fl__slog(FL_LOG_ERROR, "listen_failed", "listen=%s",
             fl__slog_str(fl__config_listen_text(&s->cfg)));
    goto fail;
  }
  if (s->cfg.metrics.on && start_ops(s, h))
    goto fail;
  s->http = h;
  fl__slog(FL_LOG_INFO, "listening", "host=%s port=%u tls=%s threads=%u",
           fl__slog_str(s->cfg.listen_host), (unsigned)s->cfg.port, h->tls_cert ? "on" : "off",
           threads);
  return FL_OK;
fail:
  if (h->d != NULL)
    MHD_stop_daemon(h->d);
  if (tls_key != NULL) {
    OPENSSL_cleanse(tls_key, key_len);
    free(tls_key);
  }
  fl__conns_free(h->conns);
  free(h->tls_cert);
  free(h);
  return FL_E_IO;
}

void fl__http_quiesce(fl_srv *s) {
  if (s->http != NULL && s->http->d != NULL) {
    MHD_socket fd = MHD_quiesce_daemon(s->http->d);
    if (fd != MHD_INVALID_SOCKET)
      close(fd);
  }
}

/* How long fl__http_stop waits for requests in handlers and parked uploads: their batches
 * commit (or fail) within the pool wait and one transaction, far below this. */
#define FL_STOP_BUSY_WAIT_MS 60000

void fl__http_stop(fl_srv *s) {
  fl_http *h = s->http;
  if (h == NULL)
    return;
  /* MHD_stop_daemon must not see a suspended connection (microhttpd.h). The committer is still
   * running, so the parked uploads are answered first, as in-flight requests were before; a
   * request that arrives meanwhile on an open connection is answered 503 (retry). */
  atomic_store(&h->stopping, true);
  for (int ms = 0; atomic_load(&h->busy) > 0 && ms < FL_STOP_BUSY_WAIT_MS; ms += 10)
    nanosleep(&(struct timespec){0, 10000000L}, NULL);
  if (atomic_load(&h->busy) > 0) {
    /* Stopping the daemons now is undefined behaviour; the process is exiting: leave them. */
    fl__slog(FL_LOG_ERROR, "http_stop_busy", "requests=%d", atomic_load(&h->busy));
    return;
  }
  if (h->d != NULL)
    MHD_stop_daemon(h->d);
  if (h->md != NULL)
    MHD_stop_daemon(h->md);
  fl__conns_free(h->conns);
  free(h->tls_cert);
  free(h);
  s->http = NULL;
}
