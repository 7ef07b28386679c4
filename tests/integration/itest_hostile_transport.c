/*
 * The HTTP layer under attack: bodies over --max-body (declared, undeclared, chunked without
 * end), a small body that unpacks into a huge one, and secrets or forged lines in the log.
 * Run under pg_virtualenv.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <curl/curl.h>
#include <float.h>
#include <math.h>
#include <openssl/evp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "digest.h"
#include "itest_hostile_common.h"

/* ----- bodies over --max-body ------------------------------------------------------------- */

static int connect_coord(void) {
  int fd = fl_sup_tcp_connect(hx_coord.port);
  cr_assert_geq(fd, 0, "connect to the coordinator");
  return fd;
}

/* The status of a raw HTTP answer and whether its body is an fl.v1.Error with `reason`. */
static bool answer_is(const char *buf, size_t n, int status, const char *reason) {
  int st = 0;
  if (sscanf(buf, "HTTP/1.%*d %d", &st) != 1 || st != status)
    return false;
  const char *body = strstr(buf, "\r\n\r\n");
  if (body == NULL)
    return false;
  body += 4;
  fl_h_resp r = {.status = st, .data = (uint8_t *)body, .len = n - (size_t)(body - buf)};
  return strcmp(fl_h_error_reason(&r), reason) == 0;
}

Test(hostile, oversized_bodies_are_refused_before_they_are_read, .init = hx_setup,
     .fini = hx_teardown, .timeout = 120) {
  char buf[4096];
  int64_t before[N_STATE];
  hx_snapshot(before);
  /* A declared length over the limit: answered at once, as an fl.v1.Error. */
  static const char *const lengths[] = {"1000000000000", "65537", "18446744073709551615"};
  int fd;
  for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
    fd = connect_coord();
    int m =
        snprintf(buf, sizeof buf,
                 "POST /v1/updates HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n", lengths[i]);
    cr_assert_eq(send(fd, buf, (size_t)m, MSG_NOSIGNAL), m);
    size_t n = fl_sup_tcp_read(fd, buf, sizeof buf, 5000);
    cr_expect(answer_is(buf, n, 413, "body_too_large"), "Content-Length %s: %.60s", lengths[i],
              buf);
    close(fd);
  }
  /* A length that does not fit 64 bits: libmicrohttpd refuses it itself, before routing. */
  fd = connect_coord();
  const char *huge =
      "POST /v1/updates HTTP/1.1\r\nHost: x\r\n"
      "Content-Length: 99999999999999999999999\r\n\r\n";
  cr_assert_eq(send(fd, huge, strlen(huge), MSG_NOSIGNAL), (ssize_t)strlen(huge));
  fl_sup_tcp_read(fd, buf, sizeof buf, 5000);
  cr_expect_eq(strncmp(buf, "HTTP/1.1 413", 12), 0, "%.40s", buf);
  close(fd);
  /* A chunked body that never ends: refused once it passes the limit, not read to its end
   * (there is none). */
  fd = connect_coord();
  const char *head = "POST /v1/updates HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  cr_assert_eq(send(fd, head, strlen(head), MSG_NOSIGNAL), (ssize_t)strlen(head));
  static char chunk[8192 + 16];
  int hl = snprintf(chunk, sizeof chunk, "2000\r\n");
  memset(chunk + hl, 'x', 8192);
  memcpy(chunk + hl + 8192, "\r\n", 2);
  /* Without sending blocking: once the server stops reading, the socket buffers (a few MB on
   * loopback) fill and sending stops; reading it all would take the whole 64 MB. */
  size_t sent = 0, n = 0, total = (size_t)64 << 20;
  struct pollfd p = {fd, POLLIN, 0};
  while (sent < total) {
    ssize_t k = send(fd, chunk, (size_t)hl + 8194, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      break; /* closed by the server */
    if (k > 0)
      sent += (size_t)k;
    if (poll(&p, 1, k < 0 ? 2000 : 0) == 1) {
      n = fl_sup_tcp_read(fd, buf, sizeof buf, 2000);
      break;
    }
    if (k < 0)
      break; /* neither reading nor answering */
  }
  close(fd);
  fprintf(stderr, "itest_hostile: chunked: %zu bytes sent, answer: %.30s\n", sent,
          n ? buf : "(connection closed)");
  cr_expect_lt(sent, total / 2, "the server read %zu bytes of a chunked body over a %d-byte limit",
               sent, MAX_BODY);
  cr_expect(n == 0 || answer_is(buf, n, 413, "body_too_large"), "chunked: %.60s", buf);
  hx_assert_alive();
  hx_assert_unchanged(before);
}

/* ----- the log -------------------------------------------------------------------------- */

static char *read_log(void) {
  char path[320];
  snprintf(path, sizeof path, "%s/coordinator.log", hx_coord.dir);
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "%s", path);
  char *buf = calloc(1, (size_t)64 << 20);
  cr_assert_not_null(buf);
  size_t n = fread(buf, 1, ((size_t)64 << 20) - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Tokens and keys never reach the log, whatever requests carry them; the signing key file is
 * 0600; a request path cannot forge a log line (libmicrohttpd decodes %0A into a newline). */
Test(hostile, no_secrets_and_no_forged_lines_in_the_log, .init = hx_setup, .fini = hx_teardown,
     .timeout = 120) {
  scene s;
  fl_h_resp r;
  long st;
  hx_scene_build(&s);
  json_t *v =
      fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/tokens", "{\"role\":\"viewer\",\"name\":\"ro\"}");
  json_t *et = fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":2}");
  cr_assert(v != NULL && et != NULL);
  const char *viewer_tok = json_string_value(json_object_get(v, "token"));
  const char *enroll_tok = json_string_value(json_array_get(json_object_get(et, "tokens"), 0));
  const char *unused_tok = json_string_value(json_array_get(json_object_get(et, "tokens"), 1));
  cr_assert(viewer_tok && enroll_tok && unused_tok);
  /* Use them, rightly and wrongly: refusals are where error paths might echo them. */
  fl_h_device d;
  cr_assert_eq(fl_h_device_new(&d), 0);
  cr_assert_eq(fl_h_device_enroll(&hx_coord, &d, enroll_tok), 200);
  cr_assert_eq(fl_h_device_enroll(&hx_coord, &s.dev[2], enroll_tok), 401); /* used token */
  fl_h_coord viewer = hx_coord;
  snprintf(viewer.admin_token, sizeof viewer.admin_token, "%s", viewer_tok);
  json_decref(fl_h_admin(&viewer, "POST", "/admin/v1/tokens", "{\"role\":\"admin\"}", &st));
  cr_assert_eq(st, 403);
  json_decref(fl_h_admin(&viewer, "POST", "/admin/v1/models", "{not json", &st));
  char bad_auth[128];
  snprintf(bad_auth, sizeof bad_auth, "Authorization: Bearer %sx", unused_tok);
  struct curl_slist *h = curl_slist_append(NULL, bad_auth);
  cr_assert_eq(hx_raw("GET", "/admin/v1/models", h, NULL, 0, false, &r), 0);
  cr_expect_eq(r.status, 401);
  fl_h_resp_free(&r);
  curl_slist_free_all(h);

  /* A path with a newline and a forged event, through both APIs and an unknown route. */
  static const char *const forged[] = {
      "/v1/models/1%0Ats=0%20level=error%20event=forged/versions/1",
      "/admin/v1/rounds/1%0D%0Ats=0%20level=error%20event=forged",
      "/nowhere%0Ats=0%20level=error%20event=forged%22"};
  for (size_t i = 0; i < 3; i++) {
    cr_assert_eq(hx_raw("GET", forged[i], NULL, NULL, 0, false, &r), 0);
    fl_h_resp_free(&r);
  }
  hx_assert_alive();
  cr_assert_eq(fl_h_coord_stop(&hx_coord, SIGTERM), 0);

  char *log = read_log();
  const char *secrets[] = {hx_coord.admin_token, viewer_tok, enroll_tok, unused_tok};
  for (size_t i = 0; i < 4; i++)
    cr_expect_null(strstr(log, secrets[i]), "secret %zu appears in the log", i);
  cr_expect_null(strstr(log, "PRIVATE KEY"));
  cr_expect_null(strstr(log, "\nts=0 level=error event=forged"), "a request forged a log line");
  cr_expect_null(strstr(log, "\"event=forged"), "a request forged a log line");
  free(log);

  char key[320];
  struct stat sb;
  snprintf(key, sizeof key, "%s/signing-key.pem", hx_coord.dir);
  cr_assert_eq(stat(key, &sb), 0);
  cr_expect_eq(sb.st_mode & 0777, 0600, "signing key mode %o", (unsigned)(sb.st_mode & 0777));
  fl_h_device_free(&d);
  json_decref(v);
  json_decref(et);
  hx_scene_free(&s);
}

/* ----- expansion on unpack ------------------------------------------------------------ */

static void setup_default_body(void) {
  cr_assert_eq(fl_h_db_create(hx_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&hx_coord, hx_db, NULL, NULL), 0, "coordinator start");
  hx_curl = curl_easy_init();
  cr_assert_not_null(hx_curl);
  hx_seed = 1;
  hx_rs = 12345;
}

/* Peak resident memory of the coordinator (kB). */
static long coord_hwm_kb(void) {
  char path[64], line[256];
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)hx_coord.pid);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f);
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
      break;
  fclose(f);
  return kb;
}

/* An unauthenticated enrollment of 4 MiB made of empty repeated labels: two bytes each on the
 * wire, a struct and a pointer each once unpacked (about 30-fold, 200 MB and more under ASan),
 * and the EnrollRequest is unpacked before its signature can be checked. Unpacking must stay
 * within a small multiple of the body. */
Test(hostile, repeated_fields_do_not_amplify_memory, .init = setup_default_body,
     .fini = hx_teardown, .timeout = 120) {
  enum { LABELS = 2 << 20 };
  size_t n = 2 * (size_t)LABELS + 64;
  uint8_t *body = malloc(n), *p = body;
  cr_assert_not_null(body);
  *p++ = 0x0a; /* enrollment_token = "t" */
  *p++ = 1;
  *p++ = 't';
  *p++ = 0x12; /* public_key: 32 bytes */
  *p++ = 32;
  memset(p, 7, 32);
  p += 32;
  for (int i = 0; i < LABELS; i++) {
    *p++ = 0x1a; /* labels: an empty Label */
    *p++ = 0;
  }
  fl_key *k = NULL;
  cr_assert_eq(fl__key_generate(&k), 0);
  env_spec e = {k, 0, hx_wall_ms(), 16, "POST", "/v1/enroll", FL_SIG_LEN, false};
  long before = coord_hwm_kb();
  fl_h_resp r;
  int rc = hx_signed_req(&e, "POST", "/v1/enroll", body, (size_t)(p - body), &r);
  cr_assert_eq(rc, 0);
  cr_expect(r.status >= 400 && r.status < 500, "status %ld", r.status);
  fl_h_resp_free(&r);
  long after = coord_hwm_kb();
  fprintf(stderr, "itest_hostile: peak RSS %ld kB -> %ld kB for a %zu-byte enrollment\n", before,
          after, (size_t)(p - body));
  cr_expect_lt(after - before, 64 * 1024, "unpacking grew the coordinator by %ld MB",
               (after - before) / 1024);
  hx_assert_alive();
  fl__key_free(k);
  free(body);
}
