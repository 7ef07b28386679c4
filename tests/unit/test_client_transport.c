/* The built-in libcurl transport against a real HTTP server on loopback: the answer's buffer
 * is sized from Content-Length (one allocation, not a doubling series), and an idle transport
 * keeps no model-sized buffer once the exchange has ended. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

static void server_start(server *s) {
  s->lfd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(s->lfd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  cr_assert_eq(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
  cr_assert_eq(listen(s->lfd, 4), 0);
  socklen_t len = sizeof a;
  cr_assert_eq(getsockname(s->lfd, (struct sockaddr *)&a, &len), 0);
  s->port = ntohs(a.sin_port);
  cr_assert_eq(pthread_create(&s->th, NULL, serve, s), 0);
}

Test(client_transport, answer_buffer_sized_from_content_length_and_freed_when_idle) {
  server s;
  server_start(&s);
  counter k = {.mu = PTHREAD_MUTEX_INITIALIZER};
  fl_allocator a = {.malloc_fn = c_malloc, .realloc_fn = c_realloc, .free_fn = c_free, .ctx = &k};
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d", s.port);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = url,
                      .allow_insecure_http = 1,
                      .allocator = &a,
                      .request_timeout_ms = 10000};
  fl_transport tr;
  cr_assert_eq(fl_transport_curl(&tr, &o), FL_OK);
  size_t idle = k.live;
  fl_http_request req = {
      .size = sizeof req, .method = "GET", .path = "/v1/models/1/versions/1", .auth = "x"};
  cr_assert_eq(tr.begin(tr.ctx, &req), FL_OK);
  fl_http_response resp;
  fl_err err;
  do {
    memset(&resp, 0, sizeof resp);
    resp.size = sizeof resp;
    err = tr.poll(tr.ctx, 200, &resp);
  } while (err == FL_E_AGAIN);
  cr_assert_eq(err, FL_OK, "%s: %s", fl_strerror(err), tr.detail(tr.ctx));
  cr_assert_eq(resp.status, 200);
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
