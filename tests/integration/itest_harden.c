/*
 * Hardening of the coordinator against hostile clients (issue 13): memory an unauthenticated
 * request can make the coordinator spend, idempotent enrollment, routing labels a device cannot
 * choose, aggregates that cannot become infinite, paths taken as sent, and no database work
 * before authentication. Each test pins one defect that once got through. Run under
 * pg_virtualenv.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <libpq-fe.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "digest.h"
#include "harness.h"

static char g_db[64];
static fl_h_coord g_coord;

static void start(const char *const *extra) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
}

static void setup(void) {
  start(NULL);
}

static void teardown(void) {
  fl_h_coord_stop(&g_coord, SIGTERM);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

static inline int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A line of the coordinator's /proc/<pid>/status in kB ("VmHWM", "VmRSS"). */
static long coord_status_kb(const char *field) {
  char path[64], line[256], key[32];
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)g_coord.pid);
  snprintf(key, sizeof key, "%s: %%ld kB", field);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f);
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, key, &kb) == 1)
      break;
  fclose(f);
  return kb;
}

/* ----- raw HTTP ----------------------------------------------------------------------------- */

/* The status of a raw answer (0: none) and its fl.v1.Error reason in why. */
static int answer_status(const char *buf, size_t n, char why[64]) {
  int st = 0;
  why[0] = '\0';
  if (sscanf(buf, "HTTP/1.%*d %d", &st) != 1)
    return 0;
  const char *body = strstr(buf, "\r\n\r\n");
  if (body != NULL) {
    fl_h_resp r = {.status = st, .data = (uint8_t *)body + 4, .len = n - (size_t)(body + 4 - buf)};
    snprintf(why, 64, "%s", fl_h_error_reason(&r));
  }
  return st;
}

/* One POST of `body` (no signature, no envelope unless the caller built one). */
static int raw_post(const char *path, const void *body, size_t len, fl_h_resp *out) {
  char url[2048];
  memset(out, 0, sizeof *out);
  snprintf(url, sizeof url, "%s%s", g_coord.url, path);
  CURL *c = curl_easy_init();
  cr_assert_not_null(c);
  struct curl_slist *h = curl_slist_append(NULL, "Expect:");
  h = curl_slist_append(h, "Content-Type: application/x-protobuf");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fl_sup_resp_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return rc == CURLE_OK ? 0 : -1;
}

/* ----- 1. memory an unauthenticated request can cost ---------------------------------------- */

/* `n` bytes of tiny unknown fields: field 6 (reserved in every message), varint 0, two bytes
 * each. protobuf-c keeps every unknown field (a scanned member, a record and a copy): some
 * forty times the wire size, before any signature can be checked. */
static uint8_t *tiny_unknown_fields(size_t n) {
  uint8_t *b = malloc(n);
  cr_assert_not_null(b);
  for (size_t i = 0; i + 1 < n; i += 2) {
    b[i] = 0x30;
    b[i + 1] = 0;
  }
  return b;
}

Test(harden, tiny_unknown_fields_are_refused_before_the_database, .init = setup, .fini = teardown,
     .timeout = 60) {
  /* Under the check-in's body limit, so the envelope decoder is what has to refuse it. */
  size_t n = 60000;
  uint8_t *b = tiny_unknown_fields(n);
  fl_h_resp r;
  long before = coord_status_kb("VmHWM");
  cr_assert_eq(raw_post("/v1/checkin", b, n, &r), 0);
  long after = coord_status_kb("VmHWM");
  cr_expect_eq(r.status, 400, "status %ld (%s)", r.status, fl_h_error_reason(&r));
  cr_expect_str_eq(fl_h_error_reason(&r), "malformed_request");
  fl_h_resp_free(&r);
  fprintf(stderr, "itest_harden: peak RSS %ld -> %ld kB for %zu bytes of unknown fields\n", before,
          after, n);
  cr_expect_lt(after - before, 8 * 1024, "the refusal cost %ld kB", after - before);
  free(b);
}

typedef struct junk_arg {
  const char *path;
  bool chunked;
  int status; /* 0: the connection was closed without an answer */
  char why[64];
  size_t sent;
} junk_arg;

#define JUNK_BYTES ((size_t)16 << 20)

/* Sends 16 MiB of junk as fast as the server takes it, without blocking once it stops reading;
 * records the answer. */
static void *junk_post(void *p) {
  junk_arg *a = p;
  uint8_t *piece = malloc(65536 + 16); /* per thread: the chunk framing differs */
  char head[256], buf[4096];
  int fd = piece ? fl_sup_tcp_connect(g_coord.port) : -1;
  if (fd < 0) {
    free(piece);
    return NULL;
  }
  int m = a->chunked ? snprintf(head, sizeof head,
                                "POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                                a->path)
                     : snprintf(head, sizeof head,
                                "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n",
                                a->path, JUNK_BYTES);
  if (send(fd, head, (size_t)m, MSG_NOSIGNAL) != m)
    goto out;
  size_t hl = 0, pl = 65536;
  if (a->chunked)
    hl = (size_t)snprintf((char *)piece, 16, "10000\r\n");
  for (size_t i = 0; i < pl; i += 2) {
    piece[hl + i] = 0x30;
    piece[hl + i + 1] = 0;
  }
  if (a->chunked)
    memcpy(piece + hl + pl, "\r\n", 2);
  size_t len = hl + pl + (a->chunked ? 2 : 0);
  struct pollfd pf = {fd, POLLIN, 0};
  size_t off = 0;
  while (a->sent < JUNK_BYTES) {
    ssize_t k = send(fd, piece + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      break;
    if (k > 0) {
      a->sent += (size_t)k;
      off = (off + (size_t)k) % len;
    }
    if (poll(&pf, 1, k < 0 ? 5000 : 0) == 1)
      break;
    if (k < 0 && poll(&pf, 1, 0) == 0)
      break; /* neither reading nor answering for 5 s */
  }
  size_t n = fl_sup_tcp_read(fd, buf, sizeof buf, 5000);
  a->status = answer_status(buf, n, a->why);
out:
  close(fd);
  free(piece);
  return NULL;
}

/* The measurement behind the issue: one 16 MiB check-in of tiny unknown fields took the
 * coordinator from 33 MB to 753 MB. A hundred of them at once, with and without a declared
 * length and to every device POST endpoint, must leave it small, each refused 413 (a chunked
 * body may instead have its connection closed once it passes the limit). */
Test(harden, concurrent_junk_posts_keep_memory_small, .init = setup, .fini = teardown,
     .timeout = 300) {
  static const char *const paths[] = {"/v1/checkin", "/v1/enroll", "/v1/evaluations",
                                      "/v1/updates"};
  const char *env = getenv("FL_HARDEN_JUNK_CONNS"); /* fewer, to try an old build safely */
  int n = env ? atoi(env) : 100;
  junk_arg *a = calloc((size_t)n, sizeof *a);
  pthread_t *t = calloc((size_t)n, sizeof *t);
  cr_assert(a && t);
  long before = coord_status_kb("VmHWM");
  for (int i = 0; i < n; i++) {
    a[i].path = i < n / 2 ? "/v1/checkin" : paths[i % 4];
    a[i].chunked = i % 5 == 4;
    cr_assert_eq(pthread_create(&t[i], NULL, junk_post, &a[i]), 0);
  }
  for (int i = 0; i < n; i++)
    pthread_join(t[i], NULL);
  long hwm = coord_status_kb("VmHWM"), rss = coord_status_kb("VmRSS");
  fprintf(stderr, "itest_harden: %d junk posts: peak RSS %ld kB -> %ld kB (now %ld kB)\n", n,
          before, hwm, rss);
  for (int i = 0; i < n; i++) {
    bool ok = a[i].status == 413 && strcmp(a[i].why, "body_too_large") == 0;
    cr_expect(ok || (a[i].chunked && a[i].status == 0), "%s%s: %d %s after %zu bytes", a[i].path,
              a[i].chunked ? " (chunked)" : "", a[i].status, a[i].why, a[i].sent);
    cr_expect_lt(a[i].sent, JUNK_BYTES / 2, "%s: the server read %zu bytes", a[i].path, a[i].sent);
  }
  cr_expect_lt(hwm, 300 * 1024, "peak RSS %ld MB", hwm / 1024);
  long st;
  json_t *h = fl_h_admin(&g_coord, "GET", "/healthz", NULL, &st);
  cr_expect_eq(st, 200);
  json_decref(h);
  free(a);
  free(t);
}

/* Uploads are bounded by the largest model: with one 43-parameter model an upload of 1 MiB is
 * no honest one and is refused before it is read, while an honest upload goes through. */
Test(harden, upload_limit_follows_the_largest_model, .init = setup, .fini = teardown,
     .timeout = 60) {
  uint64_t model_id, round_id;
  fl_h_device d;
  cr_assert_eq(
      fl_h_model_and_plan(&g_coord, "small", FL_H_SMALL_SPEC,
                          "{\"participants\":1,\"min_participants\":1}", &model_id, &round_id),
      0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &d, 1), 0);
  int fd = fl_sup_tcp_connect(g_coord.port);
  cr_assert_geq(fd, 0);
  char buf[4096], why[64];
  int m = snprintf(buf, sizeof buf,
                   "POST /v1/updates HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n");
  cr_assert_eq(send(fd, buf, (size_t)m, MSG_NOSIGNAL), m);
  size_t n = fl_sup_tcp_read(fd, buf, sizeof buf, 5000);
  cr_expect_eq(answer_status(buf, n, why), 413, "%.60s", buf);
  cr_expect_str_eq(why, "body_too_large");
  close(fd);
  /* A model created since (the bound is cached) raises the limit at once. */
  uint64_t big_id, big_round;
  const char *big =
      "{\"input_shape\":[64],\"layers\":[{\"type\":\"dense\",\"units\":512},"
      "{\"type\":\"relu\"},{\"type\":\"dense\",\"units\":10}],"
      "\"loss\":\"softmax_ce\"}";
  cr_assert_eq(
      fl_h_model_and_plan(&g_coord, "big", big, "{\"participants\":1,\"min_participants\":1}",
                          &big_id, &big_round),
      0);
  Fl__V1__CheckInResponse *ci;
  cr_assert_eq(fl_h_checkin(&g_coord, &d, big_id, &ci), 0);
  cr_assert_not_null(ci->task);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &d, big_id, 1, &base), 0);
  float *w;
  size_t np;
  cr_assert_eq(fl_h_weights(base, &w, &np), 0);
  memset(w, 0, np * sizeof *w);
  w[0] = 0.01f;
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_coord, &d, base, ci->task->round_id, w, 10, NULL, &r), 0);
  cr_expect_eq(r.status, 200, "honest upload of %zu parameters: %ld %s", np, r.status,
               fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  free(w);
  fl__v1__model_version__free_unpacked(base, NULL);
  fl__v1__check_in_response__free_unpacked(ci, NULL);
  fl_h_device_free(&d);
}

/* ----- 4. enrollment is idempotent ------------------------------------------------------------ */

/* `n` fresh enrollment tokens (with labels when given) into tokens[]; 0 or -1. */
static int new_tokens(int n, const char *labels_json, char tokens[][65]) {
  char body[256];
  snprintf(body, sizeof body, "{\"count\":%d%s%s}", n, labels_json ? ",\"labels\":" : "",
           labels_json ? labels_json : "");
  json_t *t = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", body);
  json_t *a = json_object_get(t, "tokens");
  int rc = json_array_size(a) == (size_t)n ? 0 : -1;
  for (int i = 0; rc == 0 && i < n; i++)
    snprintf(tokens[i], 65, "%s", json_string_value(json_array_get(a, i)));
  json_decref(t);
  return rc;
}

/* The answer of an enrollment is lost; the device retries with the same token and key (a
 * fresh nonce and timestamp, as the client does) and must learn the same device id. Another
 * key with that token is still refused. */
Test(harden, enrollment_retry_gets_the_same_device, .init = setup, .fini = teardown,
     .timeout = 60) {
  char tok[1][65];
  fl_h_device d, other;
  cr_assert_eq(new_tokens(1, NULL, tok), 0);
  cr_assert_eq(fl_h_device_new(&d), 0);
  cr_assert_eq(fl_h_device_enroll(&g_coord, &d, tok[0]), 200);
  uint64_t first = d.id;
  cr_assert_gt(first, 0);
  cr_expect_eq(fl_h_device_enroll(&g_coord, &d, tok[0]), 200, "retry with the same key");
  cr_expect_eq(d.id, first, "the retry got device %llu, not %llu", (unsigned long long)d.id,
               (unsigned long long)first);
  cr_assert_eq(fl_h_device_new(&other), 0);
  cr_expect_eq(fl_h_device_enroll(&g_coord, &other, tok[0]), 401, "another key, same token");
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM devices"), 1);
  /* The retried device is the same one: it can check in. */
  Fl__V1__CheckInResponse *ci;
  d.id = first;
  cr_expect_eq(fl_h_checkin(&g_coord, &d, 0, &ci), 0);
  fl__v1__check_in_response__free_unpacked(ci, NULL);
  /* A revoked device does not come back through its old token. */
  long st;
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/devices/%llu/revoke", (unsigned long long)first);
  json_decref(fl_h_admin(&g_coord, "POST", path, "{}", &st));
  cr_expect_eq(st, 200);
  cr_expect_eq(fl_h_device_enroll(&g_coord, &d, tok[0]), 401, "revoked, then retried");
  fl_h_device_free(&d);
  fl_h_device_free(&other);
}

/* ----- 9. routing labels come from the enrollment token ------------------------------------- */

/* Enrolls d with `token`, claiming labels of its own; returns the HTTP status. */
static long enroll_claiming(fl_h_device *d, const char *token, Fl__V1__Label **labels, size_t n) {
  Fl__V1__EnrollRequest e = FL__V1__ENROLL_REQUEST__INIT;
  uint8_t pub[FL_PUBKEY_LEN], body[1024];
  fl_h_resp r;
  cr_assert_eq(fl__key_public(d->key, pub), 0);
  e.enrollment_token = (char *)token;
  e.public_key = (ProtobufCBinaryData){sizeof pub, pub};
  e.labels = labels;
  e.n_labels = n;
  size_t len = fl__v1__enroll_request__get_packed_size(&e);
  cr_assert_lt(len, sizeof body);
  fl__v1__enroll_request__pack(&e, body);
  d->id = 0;
  cr_assert_eq(fl_h_device_post(&g_coord, d, "/v1/enroll", body, len, NULL, &r), 0);
  Fl__V1__EnrollResponse *er =
      r.status == 200 ? fl__v1__enroll_response__unpack(NULL, r.len, r.data) : NULL;
  if (er != NULL)
    d->id = er->device_id;
  fl__v1__enroll_response__free_unpacked(er, NULL);
  long st = r.status;
  fl_h_resp_free(&r);
  return st;
}

/* A device that names its own channel and cohort labels at enrollment joins neither: with only
 * a `canary` channel it gets no inference
 * assignment, while a device whose token says channel=canary does. */
Test(harden, devices_cannot_choose_routing_labels, .init = setup, .fini = teardown, .timeout = 60) {
  uint64_t model_id, round_id;
  cr_assert_eq(
      fl_h_model_and_plan(&g_coord, "routing", FL_H_SMALL_SPEC, "{}", &model_id, &round_id), 0);
  char body[160];
  snprintf(body, sizeof body, "{\"model_id\":%llu,\"name\":\"canary\",\"version\":1}",
           (unsigned long long)model_id);
  json_decref(fl_h_admin_ok(&g_coord, "POST", "/admin/v1/channels", body));
  char plain[1][65], routed[1][65];
  cr_assert_eq(new_tokens(1, "{\"site\":\"a\"}", plain), 0);
  cr_assert_eq(new_tokens(1, "{\"channel\":\"canary\"}", routed), 0);
  Fl__V1__Label ch = FL__V1__LABEL__INIT, tier = FL__V1__LABEL__INIT, site = FL__V1__LABEL__INIT;
  ch.key = "channel";
  ch.value = "canary";
  tier.key = "tier";
  tier.value = "gold";
  site.key = "site";
  site.value = "b";
  Fl__V1__Label *claims[] = {&ch, &tier, &site};
  fl_h_device self, op;
  cr_assert_eq(fl_h_device_new(&self), 0);
  cr_assert_eq(fl_h_device_new(&op), 0);
  cr_assert_eq(enroll_claiming(&self, plain[0], claims, 3), 200);
  cr_assert_eq(enroll_claiming(&op, routed[0], NULL, 0), 200);
  /* Stored: the token's labels, nothing the device claimed. */
  char sql[160];
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM devices WHERE device_id = %llu AND labels = '{\"site\":\"a\"}'",
           (unsigned long long)self.id);
  cr_expect_eq(fl_h_db_int(g_db, sql), 1, "the device's own labels were stored");
  Fl__V1__CheckInResponse *ci;
  cr_assert_eq(fl_h_checkin(&g_coord, &self, model_id, &ci), 0);
  cr_expect_null(ci->rollout, "a device chose its channel: got rollout of channel %s",
                 ci->rollout ? ci->rollout->channel : "");
  fl__v1__check_in_response__free_unpacked(ci, NULL);
  cr_assert_eq(fl_h_checkin(&g_coord, &op, model_id, &ci), 0);
  cr_expect_not_null(ci->rollout, "the token's channel label routes the device");
  fl__v1__check_in_response__free_unpacked(ci, NULL);
  fl_h_device_free(&self);
  fl_h_device_free(&op);
}

/* ----- 10. no non-finite version ----------------------------------------------------------- */

/* With clip_norm 0 there is no norm bound: one device sends finite values near FLT_MAX with a
 * large sample_count, and the weighted fold overflows. The round must be abandoned with a
 * reason instead of storing a version of infinities, and the next round starts from the same
 * base. */
Test(harden, non_finite_aggregate_is_not_stored, .init = setup, .fini = teardown, .timeout = 60) {
  uint64_t model_id, round_id;
  fl_h_device d;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "unbounded", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"min_participants\":1,"
                                   "\"clip_norm\":0,\"over_selection\":1}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &d, 1), 0);
  Fl__V1__CheckInResponse *ci;
  cr_assert_eq(fl_h_checkin(&g_coord, &d, model_id, &ci), 0);
  cr_assert_not_null(ci->task);
  cr_assert_eq(ci->task->round_id, round_id);
  fl__v1__check_in_response__free_unpacked(ci, NULL);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &d, model_id, 1, &base), 0);
  float *w;
  size_t n;
  cr_assert_eq(fl_h_weights(base, &w, &n), 0);
  for (size_t i = 0; i < n; i++)
    w[i] = 3e38f;
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_coord, &d, base, round_id, w, 1000000, NULL, &r), 0);
  cr_assert_eq(r.status, 200, "the upload is finite and unbounded: %ld %s", r.status,
               fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  json_t *rd = fl_h_wait_round(&g_coord, round_id, "abandoned", 10000);
  cr_assert_not_null(rd, "the round was not abandoned");
  const char *reason = json_string_value(json_object_get(rd, "reason"));
  cr_expect(reason && strstr(reason, "non_finite_aggregate"), "reason %s", reason);
  json_decref(rd);
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM versions WHERE model_id = %llu",
           (unsigned long long)model_id);
  cr_expect_eq(fl_h_db_int(g_db, sql), 1, "a version was stored");
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM rounds WHERE model_id = %llu AND state = 'open'"
           " AND base_version = 1",
           (unsigned long long)model_id);
  cr_expect_eq(fl_h_db_int(g_db, sql), 1, "the next round does not start from version 1");
  free(w);
  fl__v1__model_version__free_unpacked(base, NULL);
  fl_h_device_free(&d);
}

/* ----- 2. paths are taken as sent ----------------------------------------------------------- */

/* Keeps a Retry-After header line in r->etag (the harness' response has no other header). */
static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  fl_h_resp *r = ud;
  if (sz * n > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
    snprintf(r->etag, sizeof r->etag, "%.*s", (int)(sz * n), p);
  return sz * n;
}

/* A GET of `path` (sent as it is) with one extra header line; a Retry-After header line lands
 * in out->etag. */
static int get_with_header(const char *path, const char *hdr, fl_h_resp *out) {
  char url[512];
  snprintf(url, sizeof url, "%s%s", g_coord.url, path);
  memset(out, 0, sizeof *out);
  CURL *c = curl_easy_init();
  cr_assert_not_null(c);
  struct curl_slist *h = curl_slist_append(NULL, hdr);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fl_sup_resp_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK)
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  return rc == CURLE_OK ? 0 : -1;
}

/* A GET of `path` (sent as it is) whose envelope is signed over `sign_path`; a Retry-After
 * header line lands in out->etag. */
static int get_signed_over(const fl_h_device *d, const char *path, const char *sign_path,
                           fl_h_resp *out) {
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[16], digest[FL_SHA256_LEN], sig[FL_SIG_LEN], env[256];
  cr_assert_eq(fl__random_bytes(nonce, sizeof nonce), 0);
  sr.device_id = d->id;
  sr.timestamp_ms = wall_ms();
  sr.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
  cr_assert_eq(fl__request_digest("GET", sign_path, sr.device_id, sr.timestamp_ms, nonce,
                                  sizeof nonce, (const uint8_t *)"", 0, digest),
               0);
  cr_assert_eq(fl__sign(d->key, digest, sizeof digest, sig), 0);
  sr.signature = (ProtobufCBinaryData){sizeof sig, sig};
  size_t n = fl__v1__signed_request__get_packed_size(&sr);
  cr_assert_leq(n, sizeof env);
  fl__v1__signed_request__pack(&sr, env);
  char hdr[512];
  int m = snprintf(hdr, sizeof hdr, "X-FL-Auth: ");
  EVP_EncodeBlock((unsigned char *)hdr + m, env, (int)n);
  return get_with_header(path, hdr, out);
}

/* libmicrohttpd decodes %XX before routing and before the digest sees the path: "1%00" served
 * version 1 and "%31" was "1", under signatures over a path that was never sent. A path with
 * an escape names no endpoint, however it is signed. */
Test(harden, escaped_paths_are_refused, .init = setup, .fini = teardown, .timeout = 60) {
  uint64_t model_id, round_id;
  fl_h_device d;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "paths", FL_H_SMALL_SPEC, "{}", &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &d, 1), 0);
  char plain[96], nul[128], digit[96], zero_pad[96];
  snprintf(plain, sizeof plain, "/v1/models/%llu/versions/1", (unsigned long long)model_id);
  snprintf(nul, sizeof nul, "%s%%00", plain);
  snprintf(digit, sizeof digit, "/v1/models/%llu/versions/%%31", (unsigned long long)model_id);
  snprintf(zero_pad, sizeof zero_pad, "/v1/%%6dodels/%llu/versions/1",
           (unsigned long long)model_id);
  fl_h_resp r;
  cr_assert_eq(get_signed_over(&d, plain, plain, &r), 0);
  cr_assert_eq(r.status, 200, "honest download: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  const char *sent[] = {nul, nul, digit, digit, zero_pad};
  const char *signed_over[] = {plain, nul, plain, digit, plain};
  for (size_t i = 0; i < 5; i++) {
    cr_assert_eq(get_signed_over(&d, sent[i], signed_over[i], &r), 0);
    cr_expect_eq(r.status, 404, "%s signed over %s: %ld %s", sent[i], signed_over[i], r.status,
                 fl_h_error_reason(&r));
    cr_expect_str_eq(fl_h_error_reason(&r), "not_found", "%s", sent[i]);
    fl_h_resp_free(&r);
  }
  /* The admin API too, in its own format; a query string keeps its escapes. */
  long st;
  json_t *j = fl_h_admin(&g_coord, "GET", "/admin/v1/%72ounds", NULL, &st);
  cr_expect_eq(st, 404);
  json_decref(j);
  char q[96];
  snprintf(q, sizeof q, "/admin/v1/fleet?model_id=%%3%c", (char)('0' + (int)model_id));
  j = fl_h_admin(&g_coord, "GET", q, NULL, &st);
  cr_expect_eq(st, 200, "%s", q);
  json_decref(j);
  fl_h_device_free(&d);
}

/* ----- 8. no database work before authentication -------------------------------------------- */

/* Anyone can sign an enrollment with a key of their own: one with a bogus token must leave
 * nothing behind, not even its nonce (fifty of them once left fifty rows). A good one still
 * records its nonce, and its replay is refused. */
Test(harden, bogus_enrollments_leave_no_rows, .init = setup, .fini = teardown, .timeout = 120) {
  for (int i = 0; i < 50; i++) {
    fl_h_device d;
    char tok[40];
    snprintf(tok, sizeof tok, "bogus-token-%d", i);
    cr_assert_eq(fl_h_device_new(&d), 0);
    cr_expect_eq(fl_h_device_enroll(&g_coord, &d, tok), 401);
    fl_h_device_free(&d);
  }
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM nonces"), 0, "bogus enrollments left rows");
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM devices"), 0);
  /* An honest enrollment, then its exact replay (same nonce). */
  char tok[1][65];
  cr_assert_eq(new_tokens(1, NULL, tok), 0);
  fl_h_device d;
  cr_assert_eq(fl_h_device_new(&d), 0);
  Fl__V1__EnrollRequest e = FL__V1__ENROLL_REQUEST__INIT;
  uint8_t pub[FL_PUBKEY_LEN], body[256], nonce[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  cr_assert_eq(fl__key_public(d.key, pub), 0);
  e.enrollment_token = tok[0];
  e.public_key = (ProtobufCBinaryData){sizeof pub, pub};
  size_t n = fl__v1__enroll_request__get_packed_size(&e);
  fl__v1__enroll_request__pack(&e, body);
  fl_h_forge f = {.nonce = nonce, .nonce_len = sizeof nonce};
  fl_h_resp r;
  d.id = 0;
  cr_assert_eq(fl_h_device_post(&g_coord, &d, "/v1/enroll", body, n, &f, &r), 0);
  cr_expect_eq(r.status, 200);
  fl_h_resp_free(&r);
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM nonces"), 1);
  cr_assert_eq(fl_h_device_post(&g_coord, &d, "/v1/enroll", body, n, &f, &r), 0);
  cr_expect_eq(r.status, 401);
  cr_expect_str_eq(fl_h_error_reason(&r), "replayed_nonce");
  fl_h_resp_free(&r);
  fl_h_device_free(&d);
}

typedef struct get_arg {
  const fl_h_device *d;
  char path[96];
  fl_h_resp r;
  int rc;
} get_arg;

static void *blocked_get(void *p) {
  get_arg *a = p;
  a->rc = get_signed_over(a->d, a->path, a->path, &a->r);
  return NULL;
}

/* Backends of the coordinator's database whose nonce insert (a device request's, auth.c; since
 * the key cache it sits inside a WITH, so the insert is matched anywhere in the text) waits
 * for a lock: the ticker's nonce pruning, which can wait on the same lock, is not one of them. */
static int64_t lock_waiters(void) {
  return fl_h_db_int(g_db,
                     "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                     " current_database() AND wait_event_type = 'Lock'"
                     " AND query LIKE '%INSERT INTO nonces%' AND query NOT LIKE 'DELETE%'");
}

static void setup_small_pool(void) {
  static const char *const extra[] = {"--db-pool=2", NULL};
  start(extra);
}

/* Every device request takes a pool connection before its signature can be checked; with the
 * pool exhausted (here: two downloads stuck behind a lock on the nonces table) a request used
 * to wait without limit. It must be answered 503 with Retry-After within a few seconds. */
Test(harden, exhausted_pool_answers_503, .init = setup_small_pool, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round_id;
  fl_h_device d[3];
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "pool", FL_H_SMALL_SPEC, "{}", &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, d, 3), 0);
  const char *keys[] = {"dbname", NULL}, *vals[] = {g_db, NULL};
  PGconn *lk = PQconnectdbParams(keys, vals, 0);
  cr_assert_eq(PQstatus(lk), CONNECTION_OK);
  PQclear(PQexec(lk, "BEGIN"));
  PGresult *res = PQexec(lk, "LOCK TABLE nonces IN ACCESS EXCLUSIVE MODE");
  cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "%s", PQerrorMessage(lk));
  PQclear(res);
  get_arg a[2];
  pthread_t t[2];
  /* One download at a time, the next once the previous one waits on the lock. Sent together,
   * both connections could be accepted by one event-loop thread (libmicrohttpd accepts what is
   * pending, up to 10, in one turn): the first blocks that thread on the lock and the second is
   * never read, so only one pool connection was stuck and the 503 below became a 200 (or no
   * second waiter in 10 s), as seen on a loaded machine. A thread blocked on the lock accepts
   * nothing, so a connection made after it is served by a free one. */
  for (int i = 0; i < 2; i++) {
    memset(&a[i], 0, sizeof a[i]);
    a[i].d = &d[i];
    snprintf(a[i].path, sizeof a[i].path, "/v1/models/%llu/versions/1",
             (unsigned long long)model_id);
    cr_assert_eq(pthread_create(&t[i], NULL, blocked_get, &a[i]), 0);
    for (int waited = 0; lock_waiters() < i + 1 && waited < 10000; waited += 50)
      usleep(50000);
    cr_assert_geq(lock_waiters(), i + 1, "download %d is not stuck on the lock", i + 1);
  }
  char path[96];
  snprintf(path, sizeof path, "/v1/models/%llu/versions/1", (unsigned long long)model_id);
  fl_h_resp r;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = get_signed_over(&d[2], path, path, &r);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  /* What an operator's alert sees meanwhile (/metrics, the pool's gauges and counters). */
  cr_expect_eq(fl_h_metric(&g_coord, "fl_db_pool_size"), 2);
  cr_expect_eq(fl_h_metric(&g_coord, "fl_db_pool_connections{state=\"in_use\"}"), 2);
  cr_expect_eq(fl_h_metric(&g_coord, "fl_db_pool_connections{state=\"idle\"}"), 0);
  cr_expect_geq(fl_h_metric(&g_coord, "fl_db_pool_waits_total"), 1);
  cr_expect_geq(fl_h_metric(&g_coord, "fl_db_pool_timeouts_total"), 1, "the 503 gave up");
  cr_expect_gt(fl_h_metric(&g_coord, "fl_db_pool_wait_seconds_total"), 1.0);
  /* An operator's request too: it used to wait without limit, holding its event-loop thread
   * until the lock went (curl gives up after 30 s). Sent after the device's 503, so a thread
   * that is free accepts it. */
  char bearer[128];
  snprintf(bearer, sizeof bearer, "Authorization: Bearer %s", g_coord.admin_token);
  fl_h_resp ar;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int arc = get_with_header("/admin/v1/models", bearer, &ar);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double as = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  PQclear(PQexec(lk, "COMMIT"));
  PQfinish(lk);
  cr_expect_eq(rc, 0, "no answer while the pool was exhausted (%.1f s)", s);
  cr_expect_eq(r.status, 503, "status %ld after %.1f s", r.status, s);
  cr_expect_str_eq(fl_h_error_reason(&r), "unavailable");
  cr_expect_eq(strncasecmp(r.etag, "Retry-After:", 12), 0, "no Retry-After header");
  cr_expect_lt(s, 6.0, "answered after %.1f s", s);
  fl_h_resp_free(&r);
  cr_expect_eq(arc, 0, "no admin answer while the pool was exhausted (%.1f s)", as);
  cr_expect_eq(ar.status, 503, "admin status %ld after %.1f s", ar.status, as);
  const char *abody = ar.data ? (const char *)ar.data : "";
  cr_expect(strstr(abody, "\"unavailable\"") != NULL, "admin body: %s", abody);
  cr_expect_eq(strncasecmp(ar.etag, "Retry-After:", 12), 0, "no Retry-After on the admin 503");
  cr_expect_lt(as, 15.0, "admin answered after %.1f s", as);
  fl_h_resp_free(&ar);
  for (int i = 0; i < 2; i++) {
    pthread_join(t[i], NULL);
    cr_expect_eq(a[i].rc, 0);
    cr_expect_eq(a[i].r.status, 200, "a stuck download after the lock: %ld", a[i].r.status);
    fl_h_resp_free(&a[i].r);
  }
  for (int i = 0; i < 3; i++)
    fl_h_device_free(&d[i]);
}
