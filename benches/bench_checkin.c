/*
 * bench_checkin: signed check-ins per second sustained by one coordinator + PostgreSQL, with
 * the load generator on the same machine (issue 12: >= 5,000/s with p99 < 50 ms).
 *
 *   bench_checkin [--devices N] [--assigned A] [--conns K] [--seconds S] [--requests R]
 *                 [--sign-inline] [--coordinator BIN] [--coord-arg FLAG]... [--perf FILE]
 *                 [--sql STATEMENT]...
 *
 * Set-up (not timed): a throwaway PostgreSQL cluster with pg_stat_statements (flsupport/pg.h),
 * one fl-coordinator (flsupport/coord.h), a small model and a one-round plan of A participants
 * (over-selection 1, an hour's deadline), N devices enrolled through /v1/enroll, and one
 * check-in of every device: the first A to arrive are assigned, the others are told to wait
 * ("round_full"). The timed part sends check-ins of devices 0, 1, ..., N-1, 0, 1, ... over K
 * keep-alive connections, each request signed with its own timestamp and fresh nonce
 * (flsupport/signer.h), for S seconds or R requests. An assigned device that checks in again
 * gets its (signed) task again, the others a retry window: the mix is A/N assigned.
 *
 * The requests are signed before the clock starts (R of them, well inside the coordinator's
 * timestamp window), so the generator's CPU in the table is HTTP only; the signing cost is
 * printed beside it. --sign-inline signs each request just before it is sent instead (the
 * generator's CPU then includes it). The HTTP client is a small epoll loop on raw sockets, not
 * libcurl: on two shared cores every microsecond the generator spends is taken from the
 * coordinator.
 *
 * Printed: check-ins/s, latency (request written -> whole answer read) p50/p99/max, the share
 * of assigned and told-to-wait answers, CPU seconds and cores of the coordinator, of
 * PostgreSQL (the postmaster and all its children, less this program's monitoring backend),
 * of the generator, and of everything else on the machine (/proc/stat less those), and the
 * statements per check-in with the costliest ones (pg_stat_statements). --sql runs a statement
 * in the coordinator's database after the set-up, before the timed part (to try a schema
 * change, e.g. a fillfactor, without a migration). A measurement, never
 * a pass/fail test. Figures in benches/RESULTS.md ("Check-in throughput").
 */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crypto.h"
#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "flsupport/admin.h"
#include "flsupport/coord.h"
#include "flsupport/http.h"
#include "flsupport/pg.h"
#include "flsupport/proc.h"
#include "flsupport/signer.h"

#ifndef FL_COORDINATOR_BIN
#define FL_COORDINATOR_BIN "fl-coordinator"
#endif
#define RBUF 16384

static void die(const char *what) {
  fprintf(stderr, "bench_checkin: %s failed\n", what);
  exit(1);
}

/* ---- CPU accounting ------------------------------------------------------------------------ */

/* A PostgreSQL backend serving a client (its title "postgres: user db [local] ..."), not the
 * WAL writer, checkpointer, autovacuum and the like. */
static bool is_backend(pid_t pid) {
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
  FILE *f = fopen(path, "r");
  size_t n = f != NULL ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f != NULL)
    fclose(f);
  buf[n] = '\0';
  return strstr(buf, "[local]") != NULL;
}

/* The postmaster with its reaped children, and its live children; *backends: the share of
 * the live client backends. */
static long long pg_ticks(pid_t postmaster, long long *backends) {
  return fl_sup_family_ticks(postmaster, is_backend, backends);
}

/* Busy ticks of the whole machine (every CPU: user nice system irq softirq steal). */
static long long machine_ticks(void) {
  long long v[8] = {0};
  FILE *f = fopen("/proc/stat", "r");
  if (f == NULL || fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &v[0], &v[1], &v[2],
                          &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
    v[0] = -1;
  if (f != NULL)
    fclose(f);
  return v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

static double loadavg(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f != NULL && fscanf(f, "%lf", &l) != 1)
    l = -1;
  if (f != NULL)
    fclose(f);
  return l;
}

/* ---- the load generator: HTTP/1.1 over keep-alive sockets, one epoll loop ------------------ */

/* What a run asks of its caller: request i's bytes (a whole HTTP request; *own: free it once
 * written), and its answer (status 0: the connection failed). */
typedef struct load {
  int (*get)(void *ctx, int i, uint8_t **buf, size_t *len, bool *own);
  void (*done)(void *ctx, int i, int status, const uint8_t *body, size_t len, double lat_s);
  void *ctx;
} load;

typedef struct conn {
  int fd, req; /* req: the request in flight, -1 none */
  uint8_t *wbuf;
  size_t wlen, woff;
  bool own;
  double t_sent;
  char rbuf[RBUF];
  size_t rlen;
} conn;

static int conn_open(conn *c, int ep, int port) {
  int one = 1;
  c->fd = fl_sup_tcp_connect(port);
  if (c->fd < 0)
    return -1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  return epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

/* Writes what the socket takes; EPOLLOUT only while something is left. 0, or -1 (broken). */
static int conn_flush(conn *c, int ep) {
  while (c->woff < c->wlen) {
    ssize_t k = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
    if (k < 0 && errno == EAGAIN)
      break;
    if (k <= 0)
      return -1;
    c->woff += (size_t)k;
  }
  struct epoll_event ev = {.events = EPOLLIN | (c->woff < c->wlen ? EPOLLOUT : 0), .data.ptr = c};
  return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int conn_send(conn *c, int ep, const load *l, int i) {
  if (l->get(l->ctx, i, &c->wbuf, &c->wlen, &c->own))
    die("request build");
  c->req = i;
  c->woff = c->rlen = 0;
  c->t_sent = fl_sup_mono_s();
  return conn_flush(c, ep);
}

/* A complete answer in rbuf: its status, body and whether the server closes. 1 complete,
 * 0 more to read, -1 malformed. */
static int parse_answer(const conn *c, int *status, const uint8_t **body, size_t *blen,
                        bool *closes) {
  const char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
  if (end == NULL)
    return c->rlen < RBUF ? 0 : -1;
  if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0)
    return -1;
  *status = atoi(c->rbuf + 9);
  size_t clen = 0, hlen = (size_t)(end - c->rbuf) + 4;
  *closes = false;
  for (const char *p = c->rbuf; p < end;) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL)
      break;
    p = nl + 1;
    if (strncasecmp(p, "content-length:", 15) == 0)
      clen = strtoul(p + 15, NULL, 10);
    else if (strncasecmp(p, "connection: close", 17) == 0)
      *closes = true;
  }
  if (hlen + clen > RBUF)
    return -1;
  if (c->rlen < hlen + clen)
    return 0;
  *body = (const uint8_t *)c->rbuf + hlen;
  *blen = clen;
  return 1;
}

static void conn_finish(conn *c, const load *l, int status, const uint8_t *b, size_t n) {
  l->done(l->ctx, c->req, status, b, n, fl_sup_mono_s() - c->t_sent);
  if (c->own)
    free(c->wbuf);
  c->wbuf = NULL;
  c->req = -1;
}

/* Sends requests 0..n-1 over k connections until all are answered, or (secs > 0) until secs
 * have passed and the ones in flight are answered. Returns how many were sent; *wall the time
 * from the first write to the last answer. */
static int run_load(int port, int k, int n, double secs, const load *l, double *wall) {
  int ep = epoll_create1(EPOLL_CLOEXEC), next = 0, busy = 0;
  conn *cs = calloc((size_t)k, sizeof *cs);
  struct epoll_event evs[64];
  if (ep < 0 || cs == NULL)
    die("epoll");
  for (int i = 0; i < k; i++)
    if (conn_open(&cs[i], ep, port))
      die("connect");
  double t0 = fl_sup_mono_s(), stop = secs > 0 ? t0 + secs : INFINITY;
  for (int i = 0; i < k && next < n; i++, busy++)
    if (conn_send(&cs[i], ep, l, next++))
      die("send");
  while (busy > 0) {
    int m = epoll_wait(ep, evs, 64, 1000);
    if (m < 0 && errno != EINTR)
      die("epoll_wait");
    for (int e = 0; e < m; e++) {
      conn *c = evs[e].data.ptr;
      int status = 0, rc = 0;
      const uint8_t *body = NULL;
      size_t blen = 0;
      bool closes = false;
      if ((evs[e].events & EPOLLOUT) && conn_flush(c, ep))
        rc = -1;
      while (rc == 0 && (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        ssize_t got = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
        if (got < 0 && errno == EAGAIN)
          break;
        if (got <= 0) {
          rc = -1;
          break;
        }
        c->rlen += (size_t)got;
        rc = parse_answer(c, &status, &body, &blen, &closes);
      }
      if (rc < 0 && c->req < 0) { /* an idle connection closed: not needed any more */
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        continue;
      }
      if (rc == 0 || c->req < 0)
        continue;
      conn_finish(c, l, rc > 0 ? status : 0, body, blen);
      if (rc < 0 || closes) { /* a fresh connection for the next request */
        close(c->fd);
        if (conn_open(c, ep, port))
          die("reconnect");
      }
      if (next < n && fl_sup_mono_s() < stop) {
        if (conn_send(c, ep, l, next++))
          die("send");
      } else {
        busy--;
      }
    }
  }
  *wall = fl_sup_mono_s() - t0;
  for (int i = 0; i < k; i++)
    close(cs[i].fd);
  free(cs);
  close(ep);
  return next;
}

/* ---- requests ------------------------------------------------------------------------------ */

typedef struct bench {
  fl_sup_pg pg;
  pid_t postmaster, mon_pid;
  PGconn *mon;
  fl_sup_coord coord;
  fl_sup_admin *admin;
  char dir[256];
  int n_devices;
  fl_key **keys;
  uint64_t *ids, model_id;
} bench;

/* "POST path" with body as one buffer (header + body), malloc'ed. */
static uint8_t *http_post(const bench *b, const char *path, const uint8_t *body, size_t len,
                          size_t *out_len) {
  char head[256];
  int h = snprintf(head, sizeof head,
                   "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                   "Content-Type: application/x-protobuf\r\nContent-Length: %zu\r\n\r\n",
                   path, b->coord.port, len);
  uint8_t *p = malloc((size_t)h + len);
  if (p == NULL)
    die("malloc");
  memcpy(p, head, (size_t)h);
  memcpy(p + h, body, len);
  *out_len = (size_t)h + len;
  return p;
}

/* A signed check-in of device d (fresh timestamp and nonce) as HTTP bytes. */
static uint8_t *checkin_request(const bench *b, int d, size_t *len) {
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  uint8_t inner[64], *env;
  size_t ilen, elen;
  ci.model_id = b->model_id;
  ilen = fl__v1__check_in_request__pack(&ci, inner);
  if (fl_sup_envelope(b->keys[d], b->ids[d], "POST", "/v1/checkin", inner, ilen, NULL, &env, &elen))
    die("check-in envelope");
  uint8_t *p = http_post(b, "/v1/checkin", env, elen, len);
  free(env);
  return p;
}

/* Answers of a phase: kinds 0 assigned (task), 1 told to wait (round_full), 2 another retry
 * reason, 3 an error (HTTP status or no answer). */
enum { K_TASK, K_WAIT, K_OTHER, K_ERROR, N_KINDS };

typedef struct phase {
  bench *b;
  uint8_t **bufs; /* pre-signed requests, or NULL: sign in get() */
  size_t *lens;
  float *lat;
  int8_t *kind;
  int counts[N_KINDS], answered, shown;
} phase;

static int phase_get(void *ctx, int i, uint8_t **buf, size_t *len, bool *own) {
  phase *p = ctx;
  if (p->bufs != NULL) {
    *buf = p->bufs[i];
    *len = p->lens[i];
    *own = false;
  } else {
    *buf = checkin_request(p->b, i % p->b->n_devices, len);
    *own = true;
  }
  return 0;
}

static void phase_done(void *ctx, int i, int status, const uint8_t *body, size_t len, double lat) {
  phase *p = ctx;
  int k = K_ERROR;
  char reason[64] = "";
  Fl__V1__CheckInResponse *cr =
      status == 200 ? fl__v1__check_in_response__unpack(NULL, len, body) : NULL;
  if (cr != NULL && cr->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK)
    k = K_TASK;
  else if (cr != NULL && cr->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY)
    k = strcmp(cr->retry->reason, "round_full") == 0 ? K_WAIT : K_OTHER;
  if (k >= K_OTHER && p->shown++ < 5) {
    if (cr != NULL && cr->retry != NULL)
      snprintf(reason, sizeof reason, "%s", cr->retry->reason);
    else if (status != 0)
      fl_sup_error_reason(body, len, reason, sizeof reason);
    fprintf(stderr, "bench_checkin: check-in %d -> %d %s\n", i, status, reason);
  }
  fl__v1__check_in_response__free_unpacked(cr, NULL);
  p->kind[i] = (int8_t)k;
  p->lat[i] = (float)lat;
  p->counts[k]++;
  p->answered++;
}

static void phase_init(phase *p, bench *b, int n) {
  *p = (phase){.b = b};
  p->lat = calloc((size_t)n, sizeof *p->lat);
  p->kind = calloc((size_t)n, sizeof *p->kind);
  if (p->lat == NULL || p->kind == NULL)
    die("malloc");
}

static void phase_free(phase *p, int n) {
  for (int i = 0; p->bufs != NULL && i < n; i++)
    free(p->bufs[i]);
  free(p->bufs);
  free(p->lens);
  free(p->lat);
  free(p->kind);
}

/* ---- set-up -------------------------------------------------------------------------------- */

static PGresult *q(bench *b, const char *sql) {
  PGresult *r = PQexec(b->mon, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
    fprintf(stderr, "bench_checkin: %s: %s", sql, PQerrorMessage(b->mon));
    exit(1);
  }
  return r;
}

static void start_cluster(bench *b) {
  char path[400], conn[600];
  if (fl_sup_pg_start(&b->pg, NULL, "fl-checkin-", "bench_checkin") != FL_OK)
    die("PostgreSQL start");
  snprintf(path, sizeof path, "%s/data/postgresql.conf", b->pg.dir);
  FILE *f = fopen(path, "a");
  if (f == NULL)
    die("postgresql.conf");
  fprintf(f,
          "shared_preload_libraries = 'pg_stat_statements'\n"
          "pg_stat_statements.track = all\npg_stat_statements.track_planning = on\n"
          "pg_stat_statements.max = 2000\n");
  fclose(f);
  if (fl_sup_pg_restart(&b->pg, "fast") != FL_OK)
    die("PostgreSQL restart");
  snprintf(path, sizeof path, "%s/data/postmaster.pid", b->pg.dir);
  f = fopen(path, "r");
  if (f == NULL || fscanf(f, "%d", &b->postmaster) != 1)
    die("postmaster.pid");
  fclose(f);
  PGconn *pc = PQconnectdb(b->pg.conninfo);
  PQclear(PQexec(pc, "CREATE DATABASE fl"));
  PQfinish(pc);
  snprintf(conn, sizeof conn, "host=%s port=5432 user=fl dbname=fl", b->pg.dir);
  b->mon = PQconnectdb(conn);
  if (PQstatus(b->mon) != CONNECTION_OK)
    die("connect");
  PQclear(q(b, "CREATE EXTENSION pg_stat_statements"));
  PGresult *r = q(b, "SELECT pg_backend_pid()");
  b->mon_pid = (pid_t)atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
}

static void start_coordinator(bench *b, const char *bin, char **extra, int n_extra, int conns) {
  static char db[400], maxc[48];
  char *args[24] = {maxc, "--log-level=warn"};
  snprintf(db, sizeof db, "host=%s port=5432 user=fl dbname=fl", b->pg.dir);
  snprintf(maxc, sizeof maxc, "--max-connections=%d", conns + 64);
  for (int i = 0; i < n_extra && i < 20; i++)
    args[2 + i] = extra[i];
  if (fl_sup_mkdtemp(b->dir, sizeof b->dir, "fl-checkin-coord-") != FL_OK)
    die("temp dir");
  fl_sup_coord_opts co = {.bin = bin, .database_url = db, .dir = b->dir, .args = args};
  if (fl_sup_coord_start(&b->coord, &co) != FL_OK)
    die("coordinator start");
  if (fl_sup_admin_new(&b->admin, b->coord.url, b->coord.admin_token) != FL_OK)
    die("admin client");
}

typedef struct enroll_ctx {
  bench *b;
  char **tokens;
  int failed;
} enroll_ctx;

static int enroll_get(void *ctx, int i, uint8_t **buf, size_t *len, bool *own) {
  enroll_ctx *e = ctx;
  uint8_t *body;
  size_t blen;
  if (fl__key_generate(&e->b->keys[i]) ||
      fl_sup_enroll_request(e->b->keys[i], e->tokens[i], &body, &blen))
    return -1;
  *buf = http_post(e->b, "/v1/enroll", body, blen, len);
  *own = true;
  free(body);
  return 0;
}

static void enroll_done(void *ctx, int i, int status, const uint8_t *body, size_t len, double lat) {
  enroll_ctx *e = ctx;
  (void)lat;
  if (status != 200 || fl_sup_enroll_parse(body, len, &e->b->ids[i], NULL) != FL_OK) {
    char reason[64] = "";
    if (e->failed++ < 5)
      fprintf(stderr, "bench_checkin: enroll %d -> %d %s\n", i, status,
              status ? fl_sup_error_reason(body, len, reason, sizeof reason) : "");
  }
}

/* The model, the plan of `assigned` participants, the enrolled devices. */
static void set_up_fleet(bench *b, int assigned) {
  int n = b->n_devices;
  double wall;
  json_t *spec = json_loads(
      "{\"input_shape\":[6],\"layers\":[{\"type\":\"dense\",\"units\":3}],"
      "\"loss\":\"softmax_ce\"}",
      0, NULL);
  enroll_ctx e = {.b = b};
  b->keys = calloc((size_t)n, sizeof *b->keys);
  b->ids = calloc((size_t)n, sizeof *b->ids);
  if (fl_sup_admin_create_model(b->admin, "checkin", spec, 1, &b->model_id, NULL) != FL_OK ||
      fl_sup_admin_enrollment_tokens(b->admin, (size_t)n, &e.tokens) != FL_OK) {
    fprintf(stderr, "bench_checkin: %s\n", fl_sup_admin_errmsg(b->admin));
    die("model and tokens");
  }
  json_decref(spec);
  fl_sup_plan p = {.participants = (uint32_t)assigned,
                   .min_participants = 1,
                   .over_selection = 1,
                   .deadline_s = 3600,
                   .local_epochs = 1,
                   .batch_size = 10,
                   .learning_rate = 0.05,
                   .clip_norm = 10,
                   .encoding = "float32",
                   .server_optimizer = "fedavg",
                   .server_lr = 1,
                   .rounds = 1};
  json_t *plan = fl_sup_plan_json(&p);
  if (fl_sup_admin_create_plan(b->admin, b->model_id, plan, NULL, NULL) != FL_OK) {
    fprintf(stderr, "bench_checkin: %s\n", fl_sup_admin_errmsg(b->admin));
    die("plan");
  }
  json_decref(plan);
  load l = {enroll_get, enroll_done, &e};
  run_load(b->coord.port, 8, n, 0, &l, &wall);
  fl_sup_admin_free_tokens(e.tokens, (size_t)n);
  if (e.failed)
    die("enrolment");
  fprintf(stderr, "bench_checkin: %d devices enrolled in %.1f s\n", n, wall);
}

/* ---- statements ---------------------------------------------------------------------------- */

#define NOT_OURS                                              \
  " WHERE toplevel AND query NOT LIKE '%pg_stat_statements%'" \
  " AND query NOT LIKE '%bench_checkin%'"

static void statements(bench *b, int checkins) {
  PGresult *r = q(b,
                  "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time +"
                  " total_plan_time), 0) FROM pg_stat_statements" NOT_OURS);
  double calls = atof(PQgetvalue(r, 0, 0)), ms = atof(PQgetvalue(r, 0, 1));
  PQclear(r);
  printf("\n## PostgreSQL statements during the timed part (pg_stat_statements, top level)\n");
  printf("%.2f statements per check-in, %.1f us of plan + execution per check-in\n\n",
         calls / checkins, ms * 1e3 / checkins);
  r = q(b,
        "SELECT calls, total_exec_time + total_plan_time, total_plan_time,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 80) FROM pg_stat_statements" NOT_OURS
        " ORDER BY total_exec_time + total_plan_time DESC LIMIT 8");
  printf("| calls per check-in | us per check-in | us per call | of it planning | statement |\n");
  printf("|---|---|---|---|---|\n");
  for (int i = 0; i < PQntuples(r); i++) {
    double c = atof(PQgetvalue(r, i, 0)), t = atof(PQgetvalue(r, i, 1));
    printf("| %.3f | %.1f | %.1f | %.1f | `%s` |\n", c / checkins, t * 1e3 / checkins,
           c > 0 ? t * 1e3 / c : 0, c > 0 ? atof(PQgetvalue(r, i, 2)) * 1e3 / c : 0,
           PQgetvalue(r, i, 3));
  }
  PQclear(r);
  /* The batched last-seen UPDATE rewrites a devices row per check-in: a HOT update (no index
   * entry) only while the row's page has room. Counters since the cluster started (PostgreSQL
   * flushes them at most once a second). */
  fl_sup_sleep_ms(1100);
  r = q(b,
        "SELECT /* bench_checkin */ relname, n_tup_ins, n_tup_upd, n_tup_hot_upd,"
        " pg_total_relation_size(relid) / 1024 FROM pg_stat_user_tables"
        " WHERE relname IN ('devices', 'nonces') ORDER BY relname");
  printf(
      "\n| table (since start) | inserts | updates | of them HOT | size with indexes |\n"
      "|---|---|---|---|---|\n");
  for (int i = 0; i < PQntuples(r); i++)
    printf("| %s | %s | %s | %s | %s kB |\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
           PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4));
  PQclear(r);
}

/* ---- main ---------------------------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

/* --perf FILE: `perf record -g` of the coordinator and every PostgreSQL process during the
 * timed part (perf report --sort comm,dso separates them). */
static pid_t perf_start(const bench *b, const char *out) {
  char pids[4096];
  pid_t p;
  size_t n;
  if (out == NULL)
    return 0;
  n = (size_t)snprintf(pids, sizeof pids, "%d,%d", (int)b->coord.pid, (int)b->postmaster);
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL && n + 16 < sizeof pids) {
    pid_t pid = (pid_t)atoi(e->d_name), pp = 0;
    if (pid > 0 && pid != b->mon_pid && fl_sup_proc_ticks(pid, false, &pp) >= 0 &&
        pp == b->postmaster)
      n += (size_t)snprintf(pids + n, sizeof pids - n, ",%d", (int)pid);
  }
  if (d != NULL)
    closedir(d);
  char *argv[] = {"perf", "record", "-q", "-F", "999", "-g", "-o", (char *)out, "-p", pids, NULL};
  if (fl_sup_spawn(&p, argv, NULL) != FL_OK)
    return 0;
  fl_sup_sleep_ms(300); /* let perf attach */
  return p;
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench_checkin [--devices N] [--assigned A] [--conns K] [--seconds S]"
          " [--requests R] [--sign-inline] [--coordinator BIN] [--coord-arg FLAG]..."
          " [--perf FILE] [--sql STATEMENT]...\n");
  exit(2);
}

typedef struct snapshot {
  long long coord, pg, pg_backends, machine;
  double gen, t;
} snapshot;

static snapshot snap(bench *b) {
  snapshot s;
  long long mon = fl_sup_proc_ticks(b->mon_pid, false, NULL);
  s.coord = fl_sup_proc_ticks(b->coord.pid, false, NULL);
  s.pg = pg_ticks(b->postmaster, &s.pg_backends) - mon;
  s.pg_backends -= mon;
  s.machine = machine_ticks();
  s.gen = self_cpu_s();
  s.t = fl_sup_mono_s();
  return s;
}

int main(int argc, char **argv) {
  int devices = 2000, assigned = 500, conns = 32, requests = 150000;
  double seconds = 20;
  bool inline_sign = false;
  const char *coord = FL_COORDINATOR_BIN, *perf_out = NULL;
  char *extra[20];
  const char *sql[8];
  int n_extra = 0, n_sql = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--sign-inline") == 0) {
      inline_sign = true;
      continue;
    }
    if (v == NULL)
      usage();
    if (strcmp(a, "--devices") == 0)
      devices = atoi(v);
    else if (strcmp(a, "--assigned") == 0)
      assigned = atoi(v);
    else if (strcmp(a, "--conns") == 0)
      conns = atoi(v);
    else if (strcmp(a, "--seconds") == 0)
      seconds = atof(v);
    else if (strcmp(a, "--requests") == 0)
      requests = atoi(v);
    else if (strcmp(a, "--coordinator") == 0)
      coord = v;
    else if (strcmp(a, "--perf") == 0)
      perf_out = v;
    else if (strcmp(a, "--sql") == 0 && n_sql < 8)
      sql[n_sql++] = v;
    else if (strcmp(a, "--coord-arg") == 0 && n_extra < 20)
      extra[n_extra++] = (char *)v;
    else
      usage();
    i++;
  }
  /* The pre-signed requests carry their signing time: the timed part must end well inside
   * the coordinator's default 300 s timestamp window. */
  if (devices < 1 || assigned < 1 || assigned > devices || conns < 1 || requests < 1 ||
      !(seconds > 0 && seconds <= 200)) {
    fprintf(stderr,
            "bench_checkin: need 1 <= assigned <= devices, conns >= 1, requests >= 1,"
            " 0 < seconds <= 200\n");
    return 2;
  }
  bench b = {.n_devices = devices};
  start_cluster(&b);
  start_coordinator(&b, coord, extra, n_extra, conns);
  set_up_fleet(&b, assigned);

  /* Every device checks in once: the first `assigned` take the round's places. */
  phase w;
  double wall;
  phase_init(&w, &b, devices);
  load lw = {phase_get, phase_done, &w};
  run_load(b.coord.port, 8, devices, 0, &lw, &wall);
  if (w.counts[K_TASK] != assigned || w.counts[K_WAIT] != devices - assigned)
    fprintf(stderr, "bench_checkin: warm-up: %d assigned, %d told to wait (expected %d, %d)\n",
            w.counts[K_TASK], w.counts[K_WAIT], assigned, devices - assigned);
  phase_free(&w, devices);
  for (int i = 0; i < n_sql; i++)
    PQclear(q(&b, sql[i]));

  phase p;
  phase_init(&p, &b, requests);
  double sign_us = 0;
  if (!inline_sign) {
    p.bufs = calloc((size_t)requests, sizeof *p.bufs);
    p.lens = calloc((size_t)requests, sizeof *p.lens);
    if (p.bufs == NULL || p.lens == NULL)
      die("malloc");
    double c0 = self_cpu_s();
    for (int i = 0; i < requests; i++)
      p.bufs[i] = checkin_request(&b, i % devices, &p.lens[i]);
    sign_us = (self_cpu_s() - c0) / requests * 1e6;
  }
  fl_sup_sleep_ms(500); /* the warm-up's last-seen batch is flushed */
  PQclear(q(&b, "SELECT pg_stat_statements_reset()"));
  double load0 = loadavg();
  pid_t perf = perf_start(&b, perf_out);
  snapshot s0 = snap(&b);
  load l = {phase_get, phase_done, &p};
  int sent = run_load(b.coord.port, conns, requests, seconds, &l, &wall);
  snapshot s1 = snap(&b);
  if (perf > 0)
    fl_sup_terminate(perf, SIGINT, 30000);
  double load1 = loadavg();

  double tck = (double)sysconf(_SC_CLK_TCK), el = s1.t - s0.t;
  double cc = (double)(s1.coord - s0.coord) / tck, pc = (double)(s1.pg - s0.pg) / tck;
  double pb = (double)(s1.pg_backends - s0.pg_backends) / tck;
  double gc = s1.gen - s0.gen, mc = (double)(s1.machine - s0.machine) / tck;
  int ok = p.counts[K_TASK] + p.counts[K_WAIT] + p.counts[K_OTHER];
  float *lat = malloc((size_t)sent * sizeof *lat);
  int nl = 0;
  for (int i = 0; i < sent; i++)
    if (p.kind[i] != K_ERROR)
      lat[nl++] = p.lat[i];
  qsort(lat, (size_t)nl, sizeof *lat, cmp_float);
  double p50 = nl ? lat[nl / 2] * 1e3 : NAN, p99 = nl ? lat[(size_t)((nl - 1) * 0.99)] * 1e3 : NAN;
  double mx = nl ? lat[nl - 1] * 1e3 : NAN;
  printf(
      "# bench_checkin: %d devices, %d assigned, %d connections, %.0f s or %d requests,"
      " requests %s; coordinator %s",
      devices, assigned, conns, seconds, requests, inline_sign ? "signed inline" : "pre-signed",
      coord);
  for (int i = 0; i < n_extra; i++)
    printf(" %s", extra[i]);
  for (int i = 0; i < n_sql; i++)
    printf("; --sql '%s'", sql[i]);
  printf("; load average %.2f before, %.2f after\n\n", load0, load1);
  printf("| figure | value | target |\n|---|---|---|\n");
  printf("| check-ins/s | %.0f (%d answered in %.2f s, %d errors) | >= 5,000 |\n", ok / wall, ok,
         wall, p.counts[K_ERROR]);
  printf("| latency p50 / p99 / max | %.2f / %.2f / %.1f ms | p99 < 50 ms |\n", p50, p99, mx);
  printf("| assigned / told to wait / other | %.1f%% / %.1f%% / %.1f%% | |\n",
         100.0 * p.counts[K_TASK] / (ok ? ok : 1), 100.0 * p.counts[K_WAIT] / (ok ? ok : 1),
         100.0 * p.counts[K_OTHER] / (ok ? ok : 1));
  printf(
      "| CPU s: coordinator / PostgreSQL / generator / rest of the machine | %.2f / %.2f / %.2f"
      " / %.2f (in %.2f s) | |\n",
      cc, pc, gc, mc - cc - pc - gc, el);
  printf(
      "| cores: coordinator / PostgreSQL / generator / rest of the machine | %.2f / %.2f / %.2f"
      " / %.2f (of 2) | |\n",
      cc / el, pc / el, gc / el, (mc - cc - pc - gc) / el);
  printf("| CPU us per check-in: coordinator / PostgreSQL / generator | %.0f / %.0f / %.0f | |\n",
         cc / ok * 1e6, pc / ok * 1e6, gc / ok * 1e6);
  printf(
      "| PostgreSQL's CPU: the coordinator's backends / the rest (WAL writer, autovacuum...)"
      " | %.0f / %.0f us per check-in | |\n",
      pb / ok * 1e6, (pc - pb) / ok * 1e6);
  if (!inline_sign)
    printf(
        "| generator's signing, before the clock (not in the figures above) | %.1f us per"
        " request | |\n",
        sign_us);
  printf(
      "| ceiling from CPU alone: 2 cores / (coordinator + PostgreSQL) per check-in | %.0f/s |"
      " |\n",
      2.0 * ok / (cc + pc));
  statements(&b, ok);
  fflush(stdout);

  free(lat);
  phase_free(&p, requests);
  fl_sup_admin_free(b.admin);
  fl_sup_coord_stop(&b.coord, SIGTERM, 10000);
  PQfinish(b.mon);
  fl_sup_pg_stop(&b.pg);
  fl_sup_rmtree(b.dir);
  for (int i = 0; i < devices; i++)
    fl__key_free(b.keys[i]);
  free(b.keys);
  free(b.ids);
  return p.counts[K_ERROR] == 0 ? 0 : 1;
}
