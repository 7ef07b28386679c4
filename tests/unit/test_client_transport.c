/* The built-in libcurl transport against a real HTTP server on loopback: the answer's buffer
 * is sized from Content-Length (one allocation, not a doubling series), an idle transport
 * keeps no model-sized buffer once the exchange has ended, and a request body is copied only
 * when the caller does not keep it (fl__curl_transport_keep_body). */
#include <arpa/inet.h>
#include <dirent.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_internal.h" /* fl__curl_transport_keep_body */
#include "fl/client.h"

#define BODY_LEN 300000u

/* Counts what the transport allocates through the hooks: live bytes, the largest block. */
typedef struct counter {
  pthread_mutex_t mu;
  size_t live, largest, reallocs;
} counter;

static void *c_malloc(void *ctx, size_t n) {
  counter *k = ctx;
  size_t *p = malloc(n + sizeof(size_t) * 2);
  if (p == NULL)
    return NULL;
  p[0] = n;
  pthread_mutex_lock(&k->mu);
  k->live += n;
  if (n > k->largest)
    k->largest = n;
  pthread_mutex_unlock(&k->mu);
  return p + 2;
}

static void c_free(void *ctx, void *ptr) {
  counter *k = ctx;
  if (ptr == NULL)
    return;
  size_t *p = (size_t *)ptr - 2;
  pthread_mutex_lock(&k->mu);
  k->live -= p[0];
  pthread_mutex_unlock(&k->mu);
  free(p);
}

static void *c_realloc(void *ctx, void *ptr, size_t n) {
  counter *k = ctx;
  void *q = c_malloc(ctx, n);
  if (q == NULL)
    return NULL;
  if (ptr != NULL) {
    size_t old = ((size_t *)ptr - 2)[0];
    memcpy(q, ptr, old < n ? old : n);
    c_free(ctx, ptr);
    pthread_mutex_lock(&k->mu);
    k->reallocs++;
    pthread_mutex_unlock(&k->mu);
  }
  return q;
}

typedef struct server {
  int lfd, port;
  pthread_t th;
  uint8_t *got; /* serve_post: the request body it read */
  size_t got_len;
} server;

/* Answers one request on one connection with BODY_LEN bytes and their Content-Length. */
static void *serve(void *arg) {
  server *s = arg;
  int fd = accept(s->lfd, NULL, NULL);
  if (fd < 0)
    return NULL;
  char req[4096];
  size_t got = 0;
  while (got < sizeof req - 1) {
    ssize_t r = read(fd, req + got, sizeof req - 1 - got);
    if (r <= 0)
      break;
    got += (size_t)r;
    req[got] = '\0';
    if (strstr(req, "\r\n\r\n") != NULL)
      break;
  }
  char head[128];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                   "Content-Length: %u\r\n\r\n",
                   BODY_LEN);
  uint8_t *body = malloc(BODY_LEN);
  for (size_t i = 0; i < BODY_LEN; i++)
    body[i] = (uint8_t)(i * 31u);
  ssize_t w = write(fd, head, (size_t)n);
  for (size_t off = 0; w >= 0 && off < BODY_LEN; off += (size_t)w)
    w = write(fd, body + off, BODY_LEN - off);
  free(body);
  close(fd);
  return NULL;
}

/* Reads one POST with its Content-Length body into s->got, answers 200 with "ok". */
static void *serve_post(void *arg) {
  server *s = arg;
  int fd = accept(s->lfd, NULL, NULL);
  if (fd < 0)
    return NULL;
  size_t cap = BODY_LEN + 4096, got = 0, need = 0;
  char *buf = malloc(cap + 1);
  char *end = NULL;
  while (got < cap && (end == NULL || got < need)) {
    ssize_t r = read(fd, buf + got, cap - got);
    if (r <= 0)
      break;
    got += (size_t)r;
    buf[got] = '\0';
    if (end == NULL && (end = strstr(buf, "\r\n\r\n")) != NULL) {
      const char *cl = strstr(buf, "Content-Length:") /* as libcurl spells it */;
      need = (size_t)(end + 4 - buf) + (cl != NULL ? strtoul(cl + 15, NULL, 10) : 0);
    }
  }
  if (end != NULL && got >= need) {
    s->got_len = got - (size_t)(end + 4 - buf);
    s->got = malloc(s->got_len ? s->got_len : 1);
    memcpy(s->got, end + 4, s->got_len);
  }
  free(buf);
  static const char ans[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  ssize_t w = write(fd, ans, sizeof ans - 1);
  (void)w;
  close(fd);
  return NULL;
}

static void server_listen(server *s, void *(*fn)(void *)) {
  s->lfd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(s->lfd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(s->lfd, 4), 0);
  socklen_t len = sizeof a;
  cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&a, &len), 0);
  s->port = ntohs(a.sin_port);
  cr_assert_eq(pthread_create(&s->th, NULL, fn, s), 0);
}

static void server_start(server *s) {
  server_listen(s, serve);
}

/* The built-in transport to server s, allocating through k's hooks (a is filled in). */
static void transport_to(fl_transport *tr, const server *s, counter *k, fl_allocator *a) {
  *a = (fl_allocator){.malloc_fn = c_malloc, .realloc_fn = c_realloc, .free_fn = c_free, .ctx = k};
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", s->port);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = url,
                      .allow_insecure_http = 1,
                      .allocator = a,
                      .request_timeout_ms = 10000};
  cr_assert_eq(fl_transport_curl(tr, &o), FL_OK);
}

/* One exchange to its answer, which must be a 200. */
static fl_http_response exchange_ok(fl_transport *tr, const fl_http_request *req) {
  cr_assert_eq(tr->begin(tr->ctx, req), FL_OK);
  fl_http_response resp;
  fl_err err;
  do {
    memset(&resp, 0, sizeof resp);
    resp.size = sizeof resp;
    err = tr->poll(tr->ctx, 200, &resp);
  } while (err == FL_E_AGAIN);
  cr_assert_eq(err, FL_OK, "%s: %s", fl_strerror(err), tr->detail(tr->ctx));
  cr_assert_eq(resp.status, 200);
  return resp;
}

Test(client_transport, answer_buffer_sized_from_content_length_and_freed_when_idle) {
  server s;
  server_start(&s);
  counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
  fl_allocator a;
  fl_transport tr;
  transport_to(&tr, &s, &k, &a);
  size_t idle = k.live;
  fl_http_request req = {
      .size = sizeof req, .method = "GET", .path = "/v1/models/1/versions/1", .auth = "x"};
  fl_http_response resp = exchange_ok(&tr, &req);
  cr_assert_eq(resp.body_len, BODY_LEN);
  for (size_t i = 0; i < BODY_LEN; i += 997)
    cr_assert_eq(resp.body[i], (uint8_t)(i * 31u));
  cr_expect_eq(k.largest, BODY_LEN, "one buffer of exactly the announced size, not %zu", k.largest);
  cr_expect_eq(k.reallocs, 0, "no buffer grown by doubling (%zu reallocs)", k.reallocs);
  tr.end(tr.ctx);
  cr_expect_lt(k.live, idle + 65536, "an idle transport holds %zu bytes beyond its own",
               k.live - idle);
  tr.destroy(tr.ctx);
  cr_expect_eq(k.live, 0);
  pthread_join(s.th, NULL);
  close(s.lfd);
}

/* A POST of BODY_LEN bytes: copied into the transport's own buffer at begin(), as the public
 * contract asks, or with fl__curl_transport_keep_body sent from the caller's buffer (what
 * libflclient's own requests do); the server reads the same bytes either way. */
Test(client_transport, request_body_copied_unless_the_caller_keeps_it) {
  uint8_t *body = malloc(BODY_LEN);
  for (size_t i = 0; i < BODY_LEN; i++)
    body[i] = (uint8_t)(i * 7u + 1);
  for (int keep = 0; keep <= 1; keep++) {
    server s = {0};
    server_listen(&s, serve_post);
    counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
    fl_allocator a;
    fl_transport tr;
    transport_to(&tr, &s, &k, &a);
    if (keep)
      cr_assert(fl__curl_transport_keep_body(&tr));
    fl_http_request req = {.size = sizeof req,
                           .method = "POST",
                           .path = "/v1/updates",
                           .body = body,
                           .body_len = BODY_LEN};
    exchange_ok(&tr, &req);
    if (keep)
      cr_expect_lt(k.largest, BODY_LEN, "no copy of the body (largest block %zu)", k.largest);
    else
      cr_expect_geq(k.largest, BODY_LEN, "the body copied at begin()");
    tr.end(tr.ctx);
    tr.destroy(tr.ctx);
    pthread_join(s.th, NULL);
    close(s.lfd);
    cr_assert_eq(s.got_len, BODY_LEN);
    cr_expect_arr_eq(s.got, body, BODY_LEN);
    free(s.got);
  }
  free(body);
}

/* Only the built-in transport takes the promise; another is left alone. */
Test(client_transport, keep_body_refuses_another_transport) {
  fl_transport other = {.version = FL_TRANSPORT_VERSION};
  cr_expect_not(fl__curl_transport_keep_body(&other));
  cr_expect_not(fl__curl_transport_keep_body(NULL));
}

static int open_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  cr_assert_not_null(d);
  while (readdir(d) != NULL)
    n++;
  closedir(d);
  return n;
}

/* A transport not yet used holds no descriptor (libcurl's multi handle, made by the first
 * standalone begin(), holds a wakeup socket pair): fl-sim makes ten thousand of them before
 * they join an fl_multi. */
Test(client_transport, unused_transports_hold_no_descriptors) {
  enum { N = 64 };
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = "http://127.0.0.1:9",
                      .allow_insecure_http = 1};
  fl_transport tr[N];
  cr_assert_eq(fl_transport_curl(&tr[0], &o), FL_OK); /* libcurl's global set-up first */
  int before = open_fds();
  for (int i = 1; i < N; i++)
    cr_assert_eq(fl_transport_curl(&tr[i], &o), FL_OK);
  cr_expect_lt(open_fds() - before, 4, "%d descriptors for %d transports", open_fds() - before,
               N - 1);
  for (int i = 0; i < N; i++)
    tr[i].destroy(tr[i].ctx);
}
