/*
 * Slow clients against the event-driven HTTP server (issue 12, issue 13's slowloris probe):
 * a thousand connections that trickle header bytes must neither delay a normal signed request
 * nor cost a thread each; a header that never ends and a body that crawls are cut off at
 * their deadlines (--header-timeout, --body-timeout with --min-body-rate), which MHD's idle
 * timeout alone never does while bytes keep coming; --max-connections-per-ip refuses one
 * address's surplus while another address is served; an upload waiting for its group commit
 * is parked without a thread. Run under pg_virtualenv.
 *
 * FL_SLOWLORIS_SECONDS sets how long the thousand connections trickle (default 60, the issue's
 * figure); FL_SLOWLORIS_CONNS how many there are (default 1000).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static char g_db[64];
static fl_h_coord g_coord;

static void start(const char *const *extra) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
}

static void teardown(void) {
  fl_h_coord_stop(&g_coord, SIGTERM);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static long env_long(const char *name, long dflt) {
  const char *v = getenv(name);
  return v != NULL && *v != '\0' ? strtol(v, NULL, 10) : dflt;
}

/* A field of the coordinator's /proc/<pid>/status ("Threads", "VmRSS" in kB). */
static long coord_status(const char *field) {
  char path[64], line[256];
  long v = -1;
  size_t n = strlen(field);
  snprintf(path, sizeof path, "/proc/%d/status", (int)g_coord.pid);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f);
  while (fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, field, n) == 0 && line[n] == ':') {
      v = strtol(line + n + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

/* A TCP connection to the coordinator from source address src ("127.0.0.1", "127.0.0.2":
 * every 127/8 address is loopback on Linux, so two client addresses are at hand); -1 when it
 * cannot be made. */
static int tcp_connect(const char *src) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_coord.port)};
  struct sockaddr_in me = {.sin_family = AF_INET};
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  inet_pton(AF_INET, src, &me.sin_addr);
  if (bind(fd, (struct sockaddr *)&me, sizeof me) != 0 ||
      connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int send_all(int fd, const char *s, size_t n) {
  while (n > 0) {
    ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
    if (k <= 0)
      return -1;
    s += k;
    n -= (size_t)k;
  }
  return 0;
}

/* Waits up to timeout_ms for the peer to end the connection. Returns 1 when it did (end of
 * stream or reset, with nothing but an HTTP answer before it, whose status goes to *status
 * when not NULL), 0 when it is still open. */
static int wait_closed(int fd, int timeout_ms, int *status) {
  char buf[4096];
  double end = mono_s() + timeout_ms / 1e3;
  if (status)
    *status = 0;
  for (;;) {
    int left = (int)((end - mono_s()) * 1e3);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (left <= 0 || poll(&p, 1, left) == 0)
      return 0;
    ssize_t k = recv(fd, buf, sizeof buf - 1, 0);
    if (k == 0 || (k < 0 && errno == ECONNRESET))
      return 1;
    if (k > 0 && status && *status == 0) {
      buf[k] = '\0';
      sscanf(buf, "HTTP/1.%*d %d", status);
    }
  }
}

/* GET /healthz on fd; the status (0: no answer within 5 s). */
static int healthz(int fd) {
  static const char req[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  char buf[1024];
  int st = 0;
  if (send_all(fd, req, sizeof req - 1))
    return 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, 5000) != 1)
    return 0;
  ssize_t k = recv(fd, buf, sizeof buf - 1, 0);
  if (k <= 0)
    return 0;
  buf[k] = '\0';
  sscanf(buf, "HTTP/1.%*d %d", &st);
  return st;
}

/* A counter of /metrics (main port, a connection of its own): its value, -1 when absent. */
static long metric(const char *series) {
  static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  char *buf = calloc(1, 1 << 16);
  size_t n = 0;
  long v = -1;
  int fd = tcp_connect("127.0.0.1");
  cr_assert_not_null(buf);
  cr_assert_geq(fd, 0);
  cr_assert_eq(send_all(fd, req, sizeof req - 1), 0);
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1 || n + 1 >= 1 << 16)
      break;
    ssize_t k = recv(fd, buf + n, (1 << 16) - 1 - n, 0);
    if (k <= 0)
      break;
    n += (size_t)k;
  }
  close(fd);
  const char *at = strstr(buf, series);
  if (at != NULL)
    v = strtol(at + strlen(series), NULL, 10);
  free(buf);
  return v;
}

static void raise_nofile(rlim_t need) {
  struct rlimit rl;
  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur < need) {
    cr_assert(rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need,
              "RLIMIT_NOFILE hard limit %llu is below the %llu descriptors this test needs",
              (unsigned long long)rl.rlim_max, (unsigned long long)need);
    rl.rlim_cur = need;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  }
}

/* ----- a thousand trickling connections ---------------------------------------------------- */

/* A header that is never finished: one byte of it goes to every connection per round. */
static const char TRICKLE[] =
    "POST /v1/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

typedef struct trickler {
  int *fds;
  int n;
  int interval_ms;
  volatile int stop;
  int rounds;
  int open_at_end; /* connections that still took a byte in the last round */
} trickler;

static void *trickle_main(void *arg) {
  trickler *t = arg;
  size_t pos = 0;
  while (!t->stop) {
    int open = 0;
    for (int i = 0; i < t->n; i++)
      if (t->fds[i] >= 0) {
        if (send(t->fds[i], TRICKLE + pos, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1) {
          open++;
        } else {
          close(t->fds[i]);
          t->fds[i] = -1;
        }
      }
    t->open_at_end = open;
    t->rounds++;
    pos = (pos + 1) % (sizeof TRICKLE - 1);
    for (int ms = 0; ms < t->interval_ms && !t->stop; ms += 50)
      sleep_ms(50);
  }
  return NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

Test(slowloris, thousand_trickling_connections, .fini = teardown, .timeout = 600) {
  const long seconds = env_long("FL_SLOWLORIS_SECONDS", 60);
  const int nconn = (int)env_long("FL_SLOWLORIS_CONNS", 1000);
  /* The header deadline is past the test's end and the idle timeout past the trickle interval,
   * so every connection stays open throughout: what is measured is the cost of holding them,
   * not the deadline (its own test below). */
  char header_to[48];
  snprintf(header_to, sizeof header_to, "--header-timeout=%ld", seconds + 120);
  const char *extra[] = {"--http-threads=4", "--max-connections=4096", header_to, NULL};
  raise_nofile((rlim_t)nconn + 256);
  start(extra);
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "slow", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"deadline_s\":600}", &model_id, &round_id),
               0);
  fl_h_device dev[4];
  cr_assert_eq(fl_h_enroll_devices(&g_coord, dev, 4), 0);
  long threads_before = coord_status("Threads"), rss_before = coord_status("VmRSS");

  trickler t = {.n = nconn, .interval_ms = 5000};
  t.fds = calloc((size_t)nconn, sizeof *t.fds);
  cr_assert_not_null(t.fds);
  for (int i = 0; i < nconn; i++) {
    /* Spread over four client addresses, as an attacker's would be. */
    char src[16];
    snprintf(src, sizeof src, "127.0.0.%d", 1 + i % 4);
    t.fds[i] = tcp_connect(src);
    cr_assert_geq(t.fds[i], 0, "connection %d: %s", i, strerror(errno));
  }
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, trickle_main, &t), 0);

  /* Normal signed requests while they trickle, two a second. */
  int cap = (int)seconds * 2 + 8, n = 0, failed = 0;
  double *lat = calloc((size_t)cap, sizeof *lat);
  long threads_max = 0;
  double end = mono_s() + (double)seconds;
  while (mono_s() < end && n < cap) {
    Fl__V1__CheckInResponse *resp = NULL;
    double t0 = mono_s();
    int rc = fl_h_checkin(&g_coord, &dev[n % 4], model_id, &resp);
    lat[n++] = (mono_s() - t0) * 1e3;
    failed += rc != 0;
    fl__v1__check_in_response__free_unpacked(resp, NULL);
    long th_now = coord_status("Threads");
    if (th_now > threads_max)
      threads_max = th_now;
    sleep_ms(500);
  }
  long rss_during = coord_status("VmRSS");
  t.stop = 1;
  pthread_join(th, NULL);
  qsort(lat, (size_t)n, sizeof *lat, cmp_double);
  double p50 = lat[n / 2], p90 = lat[(n * 9) / 10], worst = lat[n - 1];
  fprintf(stderr,
          "slowloris: %d connections trickling 1 byte/5 s for %ld s (%d rounds, %d still open);"
          " %d check-ins: p50 %.1f ms, p90 %.1f ms, max %.1f ms, %d failed; coordinator "
          "threads %ld before, at most %ld during; VmRSS %ld kB before, %ld kB during "
          "(%.1f kB per connection)\n",
          nconn, seconds, t.rounds, t.open_at_end, n, p50, p90, worst, failed, threads_before,
          threads_max, rss_before, rss_during,
          (double)(rss_during - rss_before) / (nconn > 0 ? nconn : 1));
  for (int i = 0; i < nconn; i++)
    if (t.fds[i] >= 0)
      close(t.fds[i]);
  free(t.fds);
  free(lat);
  for (int i = 0; i < 4; i++)
    fl_h_device_free(&dev[i]);
  cr_assert_eq(failed, 0, "%d of %d check-ins failed while the connections trickled", failed, n);
  /* The attack was real: the server held (nearly) all of the connections to the end. */
  cr_assert_geq(t.open_at_end, nconn * 95 / 100, "only %d of %d connections stayed open",
                t.open_at_end, nconn);
  /* The median and nine in ten under 100 ms (the bound) on a machine shared with other
   * builds; the worst case only within a second, as one request can meet a busy CPU. */
  cr_assert_lt(p50, 100.0, "median check-in %.1f ms", p50);
  cr_assert_lt(p90, 100.0, "90th percentile check-in %.1f ms", p90);
  cr_assert_lt(worst, 1000.0, "slowest check-in %.1f ms", worst);
  /* Bounded: 4 event-loop threads plus the committer, the rounds ticker, the reaper, main and
   * libraries' threads; one per connection would be a thousand. */
  cr_assert_leq(threads_max, 24, "coordinator threads %ld with %d connections", threads_max, nconn);
}

/* ----- header deadline ----------------------------------------------------------------------- */

Test(slowloris, header_deadline, .fini = teardown, .timeout = 120) {
  const char *extra[] = {"--header-timeout=2", "--timeout=30", NULL};
  start(extra);
  /* A header that gets a byte every 200 ms and never ends: MHD's idle timeout (30 s) never
   * fires, the header deadline (2 s) does. */
  int fd = tcp_connect("127.0.0.1");
  cr_assert_geq(fd, 0);
  double t0 = mono_s();
  int closed = 0;
  for (size_t i = 0; !closed && mono_s() - t0 < 10.0; i = (i + 1) % (sizeof TRICKLE - 1)) {
    if (send(fd, TRICKLE + i, 1, MSG_NOSIGNAL) != 1)
      closed = 1;
    else
      closed = wait_closed(fd, 200, NULL);
  }
  double took = mono_s() - t0;
  close(fd);
  fprintf(stderr, "header_deadline: closed=%d after %.2f s\n", closed, took);
  cr_assert(closed, "a header trickling for 10 s was not cut off");
  cr_assert(took >= 1.9 && took < 3.5, "closed after %.2f s, the deadline is 2 s", took);
  long counted = metric("fl_http_connections_closed_total{reason=\"header_deadline\"} ");
  cr_assert_geq(counted, 1, "/metrics counts %ld header deadline closes", counted);

  /* A connection that sends its header in time is answered, and its keep-alive successor
   * request too (the deadline restarts after each answer). */
  fd = tcp_connect("127.0.0.1");
  cr_assert_geq(fd, 0);
  cr_assert_eq(healthz(fd), 200);
  sleep_ms(1200);
  cr_assert_eq(healthz(fd), 200, "the second request of a kept-alive connection");
  /* Idle past the deadline after its answer: closed too (an idle keep-alive connection is
   * waiting for a header). */
  cr_assert_eq(wait_closed(fd, 3500, NULL), 1, "an idle connection outlived the header deadline");
  close(fd);
}

/* ----- body rate ----------------------------------------------------------------------------- */

Test(slowloris, body_rate, .fini = teardown, .timeout = 120) {
  const char *extra[] = {"--body-timeout=2", "--min-body-rate=100", NULL};
  start(extra);
  /* 1000 bytes announced, 10 sent every 500 ms (20 B/s, under the 100 B/s asked for): cut off
   * at the end of the first 2 s window. */
  static const char hdr[] =
      "POST /v1/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n";
  int fd = tcp_connect("127.0.0.1");
  cr_assert_geq(fd, 0);
  cr_assert_eq(send_all(fd, hdr, sizeof hdr - 1), 0);
  double t0 = mono_s();
  int closed = 0, sent = 0;
  while (!closed && sent < 1000 - 10 && mono_s() - t0 < 10.0) {
    if (send_all(fd, "0123456789", 10))
      closed = 1;
    else
      closed = wait_closed(fd, 500, NULL);
    sent += 10;
  }
  double took = mono_s() - t0;
  close(fd);
  fprintf(stderr, "body_rate: closed=%d after %.2f s, %d body bytes sent\n", closed, took, sent);
  cr_assert(closed, "a body crawling at 20 B/s was not cut off");
  cr_assert(took >= 1.9 && took < 3.5, "closed after %.2f s, the window is 2 s", took);
  cr_assert_eq(metric("fl_http_connections_closed_total{reason=\"body_rate\"} "), 1);

  /* The same body at once is read and answered (a refusal of the junk body, but an answer
   * after the whole body: 4xx, not the 413 of a refusal before it). */
  fd = tcp_connect("127.0.0.1");
  cr_assert_geq(fd, 0);
  char body[1000];
  memset(body, 'x', sizeof body);
  cr_assert_eq(send_all(fd, hdr, sizeof hdr - 1), 0);
  cr_assert_eq(send_all(fd, body, sizeof body), 0);
  int st = 0;
  wait_closed(fd, 3000, &st);
  close(fd);
  cr_assert(st >= 400 && st < 500 && st != 413, "a body at full speed got status %d", st);
}

/* ----- per-address limit --------------------------------------------------------------------- */

/* The address that fills its quota: not 127.0.0.1, where the harness's own connections (the
 * readiness probe's, until MHD has cleaned it up) would count too. */
#define ADDR "127.0.0.3"

Test(slowloris, per_address_limit, .fini = teardown, .timeout = 120) {
  const char *extra[] = {"--max-connections-per-ip=8", NULL};
  int fds[8];
  start(extra);
  for (int i = 0; i < 8; i++) {
    fds[i] = tcp_connect(ADDR);
    cr_assert_geq(fds[i], 0);
  }
  /* Each answered (kept alive), so that MHD has accepted all eight before the ninth: its
   * threads accept concurrently, and a ninth accepted first would take one of their places. */
  for (int i = 0; i < 8; i++)
    cr_assert_eq(healthz(fds[i]), 200, "connection %d within the limit is served", i);
  /* The ninth from the same address is closed at once, without an answer. */
  int extra_fd = tcp_connect(ADDR);
  cr_assert_geq(extra_fd, 0, "the kernel completes the handshake before MHD sees it");
  int st = -1;
  send_all(extra_fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 35);
  cr_assert_eq(wait_closed(extra_fd, 3000, &st), 1, "the ninth connection stayed open");
  cr_assert_eq(st, 0, "the ninth connection was answered (%d)", st);
  close(extra_fd);
  /* Another address is not affected. */
  int other = tcp_connect("127.0.0.2");
  cr_assert_geq(other, 0);
  cr_assert_eq(healthz(other), 200, "a connection from another address is served");
  close(other);
  /* A slot freed is a slot again (MHD counts the close once it has cleaned up). */
  close(fds[7]);
  fds[7] = -1;
  int again = 0;
  for (int i = 0; i < 50 && again != 200; i++) {
    sleep_ms(100);
    int fd = tcp_connect(ADDR);
    cr_assert_geq(fd, 0);
    again = healthz(fd);
    close(fd);
  }
  cr_assert_eq(again, 200, "a freed slot of the address was not given again");
  for (int i = 0; i < 7; i++)
    close(fds[i]);
}

/* ----- parked uploads --------------------------------------------------------------------------
 */

typedef struct upload_job {
  const fl_h_device *d;
  const Fl__V1__ModelVersion *base;
  uint64_t round_id;
  const float *delta;
  long status;
  double ms;
  char reason[64];
} upload_job;

static void *upload_main(void *arg) {
  upload_job *j = arg;
  fl_h_resp r;
  double t0 = mono_s();
  j->status = fl_h_upload(&g_coord, j->d, j->base, j->round_id, j->delta, 10, NULL, &r) == 0
                  ? r.status
                  : -1;
  j->ms = (mono_s() - t0) * 1e3;
  if (j->status >= 0) {
    snprintf(j->reason, sizeof j->reason, "%s", fl_h_error_reason(&r));
    fl_h_resp_free(&r);
  }
  return NULL;
}

/* An upload waits for its group commit without a thread: with a 1 s gathering window and one
 * event-loop thread, the parked upload holds no thread, so a check-in and a second upload of
 * the same device are answered at once meanwhile (the second one refused upload_in_progress
 * before it is parked: the handler resumes its own connection), and the parked one gets its
 * 200 after the commit. With a thread per connection the check-in would be answered too; with
 * a loop thread blocked on the commit, it would wait the whole second. */
Test(slowloris, parked_upload, .fini = teardown, .timeout = 120) {
  const char *extra[] = {"--http-threads=1", "--commit-interval=1000", NULL};
  start(extra);
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "parked", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"deadline_s\":600}", &model_id, &round_id),
               0);
  fl_h_device dev[2];
  cr_assert_eq(fl_h_enroll_devices(&g_coord, dev, 2), 0);
  for (int i = 0; i < 2; i++) {
    Fl__V1__CheckInResponse *resp = NULL;
    cr_assert_eq(fl_h_checkin(&g_coord, &dev[i], model_id, &resp), 0);
    cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &dev[0], model_id, 1, &base), 0);
  float delta[43] = {0.01f};
  upload_job first = {&dev[0], base, round_id, delta, 0, 0, ""};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, upload_main, &first), 0);
  sleep_ms(300); /* the first upload is folded and parked by now */

  double t0 = mono_s();
  Fl__V1__CheckInResponse *resp = NULL;
  cr_assert_eq(fl_h_checkin(&g_coord, &dev[1], model_id, &resp), 0);
  double checkin_ms = (mono_s() - t0) * 1e3;
  fl__v1__check_in_response__free_unpacked(resp, NULL);

  upload_job second = {&dev[0], base, round_id, delta, 0, 0, ""};
  upload_main(&second);
  pthread_join(th, NULL);
  fprintf(stderr,
          "parked_upload: first upload %ld after %.0f ms; meanwhile a check-in in %.1f ms and "
          "the same device's second upload %ld in %.1f ms\n",
          first.status, first.ms, checkin_ms, second.status, second.ms);
  cr_assert_eq(first.status, 200);
  cr_assert_geq(first.ms, 600.0, "the upload was answered before its 1 s group commit");
  cr_assert_lt(checkin_ms, 300.0, "the check-in waited for the parked upload's commit");
  cr_assert(second.status == 409 && strcmp(second.reason, "upload_in_progress") == 0,
            "a second upload while the first is pending: %ld %s", second.status, second.reason);
  cr_assert_lt(second.ms, 300.0, "the refused second upload waited for the commit");
  fl__v1__model_version__free_unpacked(base, NULL);
  for (int i = 0; i < 2; i++)
    fl_h_device_free(&dev[i]);
}
