/*
 * fl-sim's fault-injecting transport wrapper (sim/transport.c) around a scripted inner
 * transport: faults follow the device's seed alone, attach() reaches the wrapped transport,
 * straggler delays and the worker's in-flight cap hold exchanges back, refusals are counted by
 * reason, and what the inner transport was given is the request the client made. Last, the real
 * fl_transport_curl inside the wrapper against a socket.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "transport.h"

/* The inner transport: answers every exchange at the first poll with `status` and `body`. */
typedef struct fake {
  int begins, polls, ends, destroyed, attaches, detaches;
  struct fl_multi *attached;
  int in_flight;
  int status;
  uint8_t body[256];
  size_t body_len;
  char last_path[64];
  uint8_t last_body[64];
  size_t last_body_len;
  const uint8_t *last_body_ptr; /* where the body it was given lives */
} fake;

static fl_err f_begin(void *ctx, const fl_http_request *req) {
  fake *f = ctx;
  cr_assert(!f->in_flight, "one exchange at a time");
  f->begins++;
  f->in_flight = 1;
  snprintf(f->last_path, sizeof(f->last_path), "%s", req->path);
  f->last_body_len = req->body_len < sizeof(f->last_body) ? req->body_len : sizeof(f->last_body);
  if (req->body_len > 0)
    memcpy(f->last_body, req->body, f->last_body_len);
  f->last_body_ptr = req->body;
  return FL_OK;
}

static fl_err f_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  (void)timeout_ms;
  fake *f = ctx;
  f->polls++;
  resp->status = f->status;
  resp->body = f->body;
  resp->body_len = f->body_len;
  resp->retry_after_ms = 0;
  return FL_OK;
}

static void f_end(void *ctx) {
  fake *f = ctx;
  f->ends++;
  f->in_flight = 0;
}

static void f_destroy(void *ctx) {
  ((fake *)ctx)->destroyed++;
}

static fl_err f_attach(void *ctx, struct fl_multi *m) {
  fake *f = ctx;
  if (m != NULL)
    f->attaches++;
  else
    f->detaches++;
  f->attached = m;
  return FL_OK;
}

/* An own-connection transport's socket (fl_transport_mqtt's), while an exchange is in flight. */
static int f_pollfd(void *ctx, int *events) {
  fake *f = ctx;
  *events = FL_POLL_IN;
  return f->in_flight ? 42 : -1;
}

static fl_transport fake_tr(fake *f, int version) {
  f->status = f->status ? f->status : 200;
  return (fl_transport){.version = version,
                        .ctx = f,
                        .begin = f_begin,
                        .poll = f_poll,
                        .end = f_end,
                        .destroy = f_destroy,
                        .attach = version >= 2 ? f_attach : NULL,
                        .pollfd = version >= 3 ? f_pollfd : NULL};
}

static fl_transport link_over(fake *f, sim_net *net, double net_fail, uint64_t seed) {
  sim_link_opts o = {.net = net, .inner = fake_tr(f, 2), .net_fail = net_fail, .seed = seed};
  fl_transport t;
  cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
  cr_assert_eq(t.version, FL_TRANSPORT_VERSION);
  return t;
}

static const fl_http_request CHECKIN = {
    .method = "POST", .path = "/v1/checkin", .body = (const uint8_t *)"abc", .body_len = 3};

/* One exchange to its end: 'c' connection failure, 'l' answer lost after the inner transport
 * carried it, 'o' the answer. */
static char exchange(fl_transport *t, const fl_http_request *req) {
  if (t->begin(t->ctx, req) != FL_OK)
    return 'c';
  fl_http_response r;
  int rc;
  while ((rc = t->poll(t->ctx, 0, &r)) == FL_E_AGAIN)
    ;
  t->end(t->ctx);
  return rc == FL_OK ? 'o' : rc == FL_E_TRANSPORT ? 'l' : '?';
}

static void faults(uint64_t seed, char out[201]) {
  fake f = {0};
  sim_net net = {0};
  fl_transport t = link_over(&f, &net, 0.6, seed);
  for (int i = 0; i < 200; i++)
    out[i] = exchange(&t, &CHECKIN);
  out[200] = '\0';
  cr_expect_eq(f.begins, f.ends, "every inner begin is ended");
  t.destroy(t.ctx);
  cr_expect_eq(f.destroyed, 1);
}

Test(sim_transport, faults_follow_the_device_seed_alone) {
  char a[201], b[201], c[201];
  faults(sim_device_seed(7, 3, SIM_SEED_FAULTS), a);
  faults(sim_device_seed(7, 3, SIM_SEED_FAULTS), b);
  faults(sim_device_seed(7, 4, SIM_SEED_FAULTS), c);
  cr_expect_str_eq(a, b, "same run seed and device index: same faults");
  cr_expect_str_neq(a, c, "another device: other faults");
  cr_expect(strchr(a, 'c') && strchr(a, 'l') && strchr(a, 'o'), "%s", a);
}

Test(sim_transport, device_seeds_differ_by_index_and_stream) {
  cr_expect_eq(sim_device_seed(1, 5, SIM_SEED_SHUFFLE), sim_device_seed(1, 5, SIM_SEED_SHUFFLE));
  cr_expect_neq(sim_device_seed(1, 5, SIM_SEED_SHUFFLE), sim_device_seed(1, 6, SIM_SEED_SHUFFLE));
  cr_expect_neq(sim_device_seed(1, 5, SIM_SEED_SHUFFLE), sim_device_seed(2, 5, SIM_SEED_SHUFFLE));
  cr_expect_neq(sim_device_seed(1, 5, SIM_SEED_SHUFFLE), sim_device_seed(1, 5, SIM_SEED_DROPOUT));
}

Test(sim_transport, lost_answers_reached_the_inner_transport) {
  fake f = {0};
  sim_net net = {0};
  fl_transport t = link_over(&f, &net, 0.6, 42);
  int conn = 0, lost = 0;
  for (int i = 0; i < 300; i++) {
    int before = f.begins;
    char r = exchange(&t, &CHECKIN);
    conn += r == 'c';
    lost += r == 'l';
    cr_expect_eq(f.begins - before, r == 'c' ? 0 : 1, "a connection failure sends nothing");
    if (r == 'c')
      cr_expect_str_eq(t.detail(t.ctx), "injected connection failure");
    if (r == 'l')
      cr_expect_str_eq(t.detail(t.ctx), "injected loss of the answer");
  }
  cr_expect_eq(net.stats.net_faults, (uint64_t)(conn + lost));
  cr_expect_eq(net.stats.requests, (uint64_t)f.begins);
  cr_expect_eq(net.stats.bytes_up, 3u * (uint64_t)f.begins);
  cr_expect_gt(conn, 40);
  cr_expect_gt(lost, 40);
  t.destroy(t.ctx);
}

/* fl_multi waits on the socket of the transport the link wraps (an MQTT device's). */
Test(sim_transport, pollfd_is_forwarded_while_in_flight) {
  fake f = {0};
  sim_net net = {0};
  sim_link_opts o = {.net = &net, .inner = fake_tr(&f, 3), .seed = 1};
  fl_transport t;
  cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
  int ev = 0;
  cr_expect_eq(t.pollfd(t.ctx, &ev), -1, "nothing in flight");
  fl_http_request req = {.method = "POST", .path = "/v1/checkin"};
  cr_assert_eq(t.begin(t.ctx, &req), FL_OK);
  cr_expect_eq(t.pollfd(t.ctx, &ev), 42);
  cr_expect_eq(ev, FL_POLL_IN);
  t.end(t.ctx);
  t.destroy(t.ctx);
  /* A version 2 inner transport has no socket to give. */
  fake g = {0};
  o.inner = fake_tr(&g, 2);
  cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
  cr_assert_eq(t.begin(t.ctx, &req), FL_OK);
  cr_expect_eq(t.pollfd(t.ctx, &ev), -1);
  t.end(t.ctx);
  t.destroy(t.ctx);
}

Test(sim_transport, attach_is_forwarded) {
  fake f = {0};
  sim_net net = {0};
  fl_transport t = link_over(&f, &net, 0, 1);
  struct fl_multi *m = (struct fl_multi *)&f; /* any non-NULL handle: the fake only keeps it */
  cr_expect_eq(t.attach(t.ctx, m), FL_OK);
  cr_expect_eq(f.attaches, 1);
  cr_expect_eq(f.attached, m);
  cr_expect_eq(t.attach(t.ctx, NULL), FL_OK);
  cr_expect_eq(f.detaches, 1);
  t.destroy(t.ctx);
  /* A version 1 inner transport has no attach: nothing is called, nothing fails. */
  fake g = {0};
  sim_link_opts o = {.net = &net, .inner = fake_tr(&g, 1)};
  cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
  cr_expect_eq(t.attach(t.ctx, m), FL_OK);
  t.destroy(t.ctx);
  cr_expect_eq(g.destroyed, 1);
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(sim_transport, straggler_upload_starts_late) {
  fake f = {0};
  sim_net net = {0};
  sim_link_opts o = {.net = &net, .inner = fake_tr(&f, 2), .straggler_ms = 60, .seed = 3};
  fl_transport t;
  cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
  /* Not an upload: no delay. */
  cr_expect_eq(exchange(&t, &CHECKIN), 'o');
  cr_expect_eq(f.begins, 1);
  fl_http_request up = {
      .method = "POST", .path = "/v1/updates", .body = (const uint8_t *)"update", .body_len = 6};
  int64_t t0 = mono_ms();
  cr_assert_eq(t.begin(t.ctx, &up), FL_OK);
  fl_http_response r;
  cr_expect_eq(t.poll(t.ctx, 0, &r), FL_E_AGAIN);
  cr_expect_eq(f.begins, 1, "held back");
  int rc;
  while ((rc = t.poll(t.ctx, 0, &r)) == FL_E_AGAIN)
    ;
  cr_expect_eq(rc, FL_OK);
  cr_expect_eq(f.begins, 2);
  cr_expect_geq(mono_ms() - t0, 5, "a lognormal delay around 60 ms");
  cr_expect_str_eq(f.last_path, "/v1/updates");
  cr_expect_eq(f.last_body_len, 6);
  cr_expect_arr_eq(f.last_body, "update", 6, "the request, copied at begin()");
  t.end(t.ctx);
  t.destroy(t.ctx);
}

/* borrow_body: an honest upload reaches the inner transport from the caller's buffer, even
 * when the in-flight cap holds it back past begin(); without it, from the link's own copy. */
Test(sim_transport, upload_borrowed_from_the_caller_or_copied) {
  uint8_t body[6];
  memcpy(body, "update", 6);
  fl_http_request up = {.method = "POST", .path = "/v1/updates", .body = body, .body_len = 6};
  for (int borrow = 0; borrow <= 1; borrow++) {
    fake f = {0};
    sim_net net = {.max_inflight = 1, .inflight = 1}; /* full: the upload waits */
    sim_link_opts o = {.net = &net, .inner = fake_tr(&f, 2), .seed = 1, .borrow_body = borrow};
    fl_transport t;
    cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
    cr_assert_eq(t.begin(t.ctx, &up), FL_OK);
    fl_http_response r;
    cr_expect_eq(t.poll(t.ctx, 0, &r), FL_E_AGAIN);
    cr_expect_eq(f.begins, 0, "held back by the cap");
    net.inflight = 0;
    cr_expect_eq(t.poll(t.ctx, 0, &r), FL_OK);
    cr_expect_eq(f.begins, 1);
    cr_expect_arr_eq(f.last_body, "update", 6);
    if (borrow)
      cr_expect_eq(f.last_body_ptr, body, "forwarded from the caller's buffer");
    else
      cr_expect_neq(f.last_body_ptr, body, "forwarded from the link's copy");
    t.end(t.ctx);
    t.destroy(t.ctx);
  }
}

Test(sim_transport, in_flight_cap_holds_exchanges_back) {
  fake f1 = {0}, f2 = {0};
  sim_net net = {.max_inflight = 1};
  fl_transport a = link_over(&f1, &net, 0, 1), b = link_over(&f2, &net, 0, 2);
  cr_assert_eq(a.begin(a.ctx, &CHECKIN), FL_OK);
  cr_assert_eq(b.begin(b.ctx, &CHECKIN), FL_OK);
  cr_expect_eq(net.inflight, 1);
  cr_expect_eq(f2.begins, 0, "beyond the cap: waits");
  fl_http_response r;
  cr_expect_eq(b.poll(b.ctx, 0, &r), FL_E_AGAIN);
  cr_expect_eq(a.poll(a.ctx, 0, &r), FL_OK);
  cr_expect_eq(net.inflight, 0, "an answered exchange frees its slot");
  cr_expect_eq(b.poll(b.ctx, 0, &r), FL_OK, "then the waiting one goes");
  cr_expect_eq(f2.begins, 1);
  a.end(a.ctx);
  b.end(b.ctx);
  /* An exchange ended in flight gives its slot back too. */
  cr_assert_eq(a.begin(a.ctx, &CHECKIN), FL_OK);
  cr_expect_eq(net.inflight, 1);
  a.end(a.ctx);
  cr_expect_eq(net.inflight, 0);
  cr_expect_eq(f1.begins, f1.ends);
  a.destroy(a.ctx);
  b.destroy(b.ctx);
}

Test(sim_transport, refusals_counted_by_reason) {
  fake f = {.status = 403};
  Fl__V1__Error e;
  fl__v1__error__init(&e);
  e.reason = "bad_signature";
  f.body_len = fl__v1__error__pack(&e, f.body);
  sim_net net = {0};
  fl_transport t = link_over(&f, &net, 0, 1);
  cr_expect_eq(exchange(&t, &CHECKIN), 'o', "an HTTP status is an answer");
  cr_expect_eq(exchange(&t, &CHECKIN), 'o');
  f.status = 503;
  f.body_len = 0;
  exchange(&t, &CHECKIN);
  cr_expect_eq(net.stats.refused, 3);
  cr_expect_str_eq(net.stats.reasons[0], "bad_signature");
  cr_expect_eq(net.stats.reason_count[0], 2);
  cr_expect_str_eq(net.stats.reasons[1], "http_503");
  cr_expect_eq(net.stats.bytes_down, 2 * (uint64_t)fl__v1__error__get_packed_size(&e));
  t.destroy(t.ctx);
}

/* ---- the real thing: fl_transport_curl inside the wrapper ------------------------------- */

/* A one-connection HTTP server: answers one request with keep-alive, then reports whether the
 * client closed the connection within 3 s. */
typedef struct server {
  int listen_fd, port;
  pthread_t thread;
  atomic_int answered, closed;
} server;

static void *serve(void *arg) {
  server *s = arg;
  int fd = accept(s->listen_fd, NULL, NULL);
  if (fd < 0)
    return NULL;
  char buf[4096];
  size_t got = 0;
  while (got < sizeof(buf) - 1) {
    ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
    if (n <= 0)
      break;
    got += (size_t)n;
    buf[got] = '\0';
    if (strstr(buf, "\r\n\r\n") != NULL)
      break;
  }
  static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  if (send(fd, resp, sizeof(resp) - 1, MSG_NOSIGNAL) == (ssize_t)sizeof(resp) - 1)
    atomic_store(&s->answered, 1);
  struct timeval tv = {3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  atomic_store(&s->closed, recv(fd, buf, sizeof(buf), 0) == 0);
  close(fd);
  return NULL;
}

static void server_start(server *s) {
  memset(s, 0, sizeof(*s));
  s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(s->listen_fd, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  cr_assert_eq(bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
  cr_assert_eq(listen(s->listen_fd, 4), 0);
  cr_assert_eq(getsockname(s->listen_fd, (struct sockaddr *)&a, &len), 0);
  s->port = ntohs(a.sin_port);
  cr_assert_eq(pthread_create(&s->thread, NULL, serve, s), 0);
}

/* A device enrolls standing alone, then joins its worker's fl_multi: the connection of its
 * private pool must not stay open beside the shared pool (with 1000 devices, 1000 idle
 * sockets held the coordinator's connection limit and slowed enrollment fivefold). */
Test(sim_transport, curl_transport_closes_its_private_connection_on_attach) {
  server s;
  server_start(&s);
  char url[64];
  snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
  fl_client_opts co = {
      .version = FL_CLIENT_OPTS_VERSION, .server_url = url, .allow_insecure_http = 1};
  sim_net net = {0};
  sim_link_opts o = {.net = &net, .seed = 1};
  cr_assert_eq(fl_transport_curl(&o.inner, &co), FL_OK);
  cr_expect_eq(o.inner.version, FL_TRANSPORT_VERSION);
  fl_transport t;
  cr_assert_eq(sim_link_transport(&t, &o), FL_OK);
  fl_http_request get = {.method = "GET", .path = "/v1/x"};
  cr_assert_eq(t.begin(t.ctx, &get), FL_OK);
  fl_http_response r;
  int rc;
  while ((rc = t.poll(t.ctx, 100, &r)) == FL_E_AGAIN)
    ;
  cr_assert_eq(rc, FL_OK, "%s", t.detail(t.ctx));
  cr_expect_eq(r.status, 200);
  cr_expect_eq(r.body_len, 2);
  t.end(t.ctx);
  cr_expect(atomic_load(&s.answered));
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  cr_assert_eq(t.attach(t.ctx, m), FL_OK);
  pthread_join(s.thread, NULL);
  cr_expect(atomic_load(&s.closed), "the idle connection was closed at attach");
  cr_expect_eq(t.attach(t.ctx, NULL), FL_OK);
  t.destroy(t.ctx);
  fl_multi_free(m);
  close(s.listen_fd);
}
