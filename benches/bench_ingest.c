/*
 * Ingest: signed, verified, durably acknowledged updates per second into a real coordinator
 * with PostgreSQL, over loopback HTTP, with the load generator on the same machine.
 *
 * Set-up (not timed): a fresh database in the cluster named by libpq's PG* variables (run under
 * `pg_virtualenv -t`), an fl-coordinator process on a free port, a model of P parameters
 * (input [P/100 - 1], dense 100: exactly P when P is a multiple of 100), a continuous plan whose
 * round target is the number of devices D, D devices enrolled through /v1/enroll and checked
 * in to the open round. Then, per round: every device's UpdateUpload is built and signed
 * (its one signature over the upload digest, envelope signature empty, as libflclient does)
 * before the clock starts; the
 * timed part posts them with libcurl multi over K keep-alive connections and ends at the last
 * acknowledgement. The round then closes (target reached) and the next round repeats the
 * check-in and the build.
 *
 * Reported: accepted updates/s, acknowledgement latency (request sent -> 200 received)
 * p50/p99/max, and the CPU time of the coordinator, PostgreSQL (the postmaster and all its
 * processes) and this load generator during the timed part, in cores (CPU s / wall s).
 *
 *   bench_ingest [-d DEVICES] [-k CONNS] [-p PARAMS] [-r ROUNDS] [-e float32|int8|float16|topk]
 *                [--coordinator PATH] [--upload-buffer BYTES] [--keep]
 *                [-- extra coordinator flags...]
 */
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <malloc.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "crypto.h"
#include "digest.h"
#include "fl/err.h"
#include "mem.h"
#include "tensor.h"

#ifndef FL_COORDINATOR_BIN
#define FL_COORDINATOR_BIN "fl-coordinator"
#endif
#define ADMIN_TOKEN "bench-ingest-admin-token-0123456789abcdef"
#define POOL_DELTAS 8

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of this thread: the step costs below should not count time other programs held
 * the core. */
static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A mkstemp/mkdtemp template "/tmp/<prefix>" plus six 'X' (written by memset). */
static void tmp_template(char *out, size_t size, const char *prefix) {
  int n = snprintf(out, size - 7, "/tmp/%s", prefix);
  memset(out + n, 'X', 6);
  out[n + 6] = '\0';
}

static void die(const char *what) {
  fprintf(stderr, "bench_ingest: %s\n", what);
  exit(1);
}

/* ---- options ------------------------------------------------------------------------------ */

typedef struct opts {
  int devices, conns, rounds, encoding;
  size_t params;
  const char *coordinator;
  bool keep;
  long upload_buffer; /* CURLOPT_UPLOAD_BUFFERSIZE; 0: libcurl's default (64 KB) */
  const char *extra[16];
  int n_extra;
} opts;

static int encoding_of(const char *s) {
  static const char *const names[] = {"", "float32", "float16", "int8", "topk"};
  for (int i = 1; i <= 4; i++)
    if (strcmp(s, names[i]) == 0)
      return i;
  return -1;
}

/* ---- database and coordinator ------------------------------------------------------------- */

typedef struct bench {
  opts o;
  char db[64], dir[64], url[64];
  int port;
  pid_t coord_pid;
  pid_t postmaster;
  uint64_t model_id;
} bench;

static int db_cmd(const char *sql) {
  PGconn *c = PQconnectdb("dbname=postgres");
  int rc = -1;
  if (PQstatus(c) == CONNECTION_OK) {
    PGresult *r = PQexec(c, sql);
    rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
    if (rc)
      fprintf(stderr, "bench_ingest: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
  } else {
    fprintf(stderr, "bench_ingest: cannot connect to PostgreSQL: %s", PQerrorMessage(c));
  }
  PQfinish(c);
  return rc;
}

/* The postmaster of the cluster: the parent of one of our backends. */
static pid_t find_postmaster(const char *db) {
  char conninfo[96], path[64], buf[512];
  snprintf(conninfo, sizeof conninfo, "dbname=%s", db);
  PGconn *c = PQconnectdb(conninfo);
  pid_t pm = 0;
  if (PQstatus(c) == CONNECTION_OK) {
    snprintf(path, sizeof path, "/proc/%d/stat", PQbackendPID(c));
    FILE *f = fopen(path, "r");
    if (f != NULL && fgets(buf, sizeof buf, f) != NULL) {
      const char *p = strrchr(buf, ')');
      int ppid;
      if (p != NULL && sscanf(p + 2, "%*c %d", &ppid) == 1)
        pm = ppid;
    }
    if (f != NULL)
      fclose(f);
  }
  PQfinish(c);
  return pm;
}

/* utime+stime (and, with children, cutime+cstime) of a process in clock ticks; *ppid set. */
static long long proc_ticks(pid_t pid, bool children, int *ppid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  long long t = -1;
  if (f == NULL)
    return -1;
  if (fgets(buf, sizeof buf, f) != NULL) {
    const char *p = strrchr(buf, ')');
    unsigned long ut, st;
    long cut, cst;
    int pp;
    if (p != NULL && sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld",
                            &pp, &ut, &st, &cut, &cst) == 5) {
      t = (long long)(ut + st) + (children ? cut + cst : 0);
      if (ppid)
        *ppid = pp;
    }
  }
  fclose(f);
  return t;
}

/* CPU ticks of the postmaster (with its reaped children) and of every live child of it. */
static long long pg_ticks(pid_t postmaster) {
  long long total = proc_ticks(postmaster, true, NULL);
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL) {
    int pid = atoi(e->d_name), pp = 0;
    if (pid <= 0 || pid == postmaster)
      continue;
    long long t = proc_ticks(pid, false, &pp);
    if (t > 0 && pp == postmaster)
      total += t;
  }
  if (d != NULL)
    closedir(d);
  return total;
}

/* With FL_BENCH_PERF=FILE, `perf record -g` of the coordinator and every PostgreSQL process
 * during the first timed round (a profile of the ingest path without set-up or this program). */
static pid_t perf_start(const bench *b) {
  const char *out = getenv("FL_BENCH_PERF");
  char pids[4096];
  size_t n;
  if (out == NULL || *out == '\0')
    return 0;
  n = (size_t)snprintf(pids, sizeof pids, "%d,%d", (int)b->coord_pid, (int)b->postmaster);
  DIR *d = opendir("/proc");
  struct dirent *e;
  while (d != NULL && (e = readdir(d)) != NULL && n + 16 < sizeof pids) {
    int pid = atoi(e->d_name), pp = 0;
    if (pid > 0 && proc_ticks(pid, false, &pp) >= 0 && pp == b->postmaster)
      n += (size_t)snprintf(pids + n, sizeof pids - n, ",%d", pid);
  }
  if (d != NULL)
    closedir(d);
  fflush(NULL);
  pid_t p = fork();
  if (p == 0) {
    execlp("perf", "perf", "record", "-q", "-F", "1999", "-g", "-o", out, "-p", pids,
           (char *)NULL);
    _exit(127);
  }
  sleep_ms(300); /* let perf attach */
  return p;
}

static void perf_stop(pid_t p) {
  int status;
  if (p <= 0)
    return;
  kill(p, SIGINT);
  while (waitpid(p, &status, 0) < 0 && errno == EINTR)
    ;
}

static double self_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec * 1e-6;
}

static int free_port(void) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0)
    close(fd);
  return port;
}

/* ---- HTTP (easy, for set-up) ---------------------------------------------------------------- */

typedef struct buf {
  uint8_t *p;
  size_t len, cap;
} buf;

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
  buf *b = ud;
  size_t k = sz * n;
  if (b->len + k + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + k + 1)
      cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (q == NULL)
      return 0;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, k);
  b->len += k;
  b->p[b->len] = 0;
  return k;
}

static json_t *admin(const bench *b, const char *method, const char *path, const char *body) {
  char url[256];
  buf out = {0};
  long st = 0;
  CURL *h = curl_easy_init();
  struct curl_slist *hd = curl_slist_append(NULL, "Authorization: Bearer " ADMIN_TOKEN);
  hd = curl_slist_append(hd, "Content-Type: application/json");
  snprintf(url, sizeof url, "%s%s", b->url, path);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
  if (body != NULL)
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
  CURLcode cc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
  curl_slist_free_all(hd);
  curl_easy_cleanup(h);
  json_t *j = cc == CURLE_OK && out.p ? json_loads((char *)out.p, 0, NULL) : NULL;
  if (st != 200) {
    fprintf(stderr, "bench_ingest: %s %s -> %ld %s\n", method, path, st,
            out.p ? (char *)out.p : "");
    json_decref(j);
    j = NULL;
  }
  free(out.p);
  return j;
}

static int wait_ready(bench *b) {
  char url[128];
  snprintf(url, sizeof url, "%s/readyz", b->url);
  for (int i = 0; i < 300; i++) {
    int status;
    long st = 0;
    if (waitpid(b->coord_pid, &status, WNOHANG) == b->coord_pid)
      return -1;
    CURL *h = curl_easy_init();
    buf out = {0};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
    if (curl_easy_perform(h) == CURLE_OK)
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
    curl_easy_cleanup(h);
    free(out.p);
    if (st == 200)
      return 0;
    sleep_ms(100);
  }
  return -1;
}

static int coord_start(bench *b) {
  char a_db[128], a_listen[64], a_key[128], a_conn[48], log[128];
  const char *argv[32];
  int n = 0;
  b->port = free_port();
  snprintf(b->url, sizeof b->url, "http://127.0.0.1:%d", b->port);
  snprintf(a_db, sizeof a_db, "--database-url=dbname=%s", b->db);
  snprintf(a_listen, sizeof a_listen, "--listen=127.0.0.1:%d", b->port);
  snprintf(a_key, sizeof a_key, "--signing-key=%s/signing-key.pem", b->dir);
  snprintf(a_conn, sizeof a_conn, "--max-connections=%d", b->o.conns + 64);
  snprintf(log, sizeof log, "%s/coordinator.log", b->dir);
  argv[n++] = b->o.coordinator;
  argv[n++] = a_db;
  argv[n++] = a_listen;
  argv[n++] = a_key;
  argv[n++] = a_conn;
  argv[n++] = "--log-level=warn";
  for (int i = 0; i < b->o.n_extra; i++)
    argv[n++] = b->o.extra[i];
  argv[n] = NULL;
  fflush(NULL);
  b->coord_pid = fork();
  if (b->coord_pid < 0)
    return -1;
  if (b->coord_pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (freopen(log, "a", stdout) == NULL || dup2(fileno(stdout), STDERR_FILENO) < 0)
      _exit(126);
    setenv("FL_ADMIN_TOKEN", ADMIN_TOKEN, 1);
    execv(b->o.coordinator, (char *const *)argv);
    _exit(127);
  }
  if (wait_ready(b)) {
    fprintf(stderr, "bench_ingest: coordinator did not start (log: %s)\n", log);
    return -1;
  }
  return 0;
}

static void coord_stop(bench *b) {
  int status;
  if (b->coord_pid <= 0)
    return;
  kill(b->coord_pid, SIGTERM);
  while (waitpid(b->coord_pid, &status, 0) < 0 && errno == EINTR)
    ;
  b->coord_pid = 0;
}

/* ---- signed device requests --------------------------------------------------------------- */

typedef struct device {
  fl_key *key;
  uint64_t id;
  uint64_t round_id, base_version;
} device;

/* A SignedRequest around an inner message, signed for POST path; malloc'ed into *out. */
static int envelope(const device *d, uint64_t device_id, const char *path, const uint8_t *body,
                    size_t len, uint8_t **out, size_t *out_len) {
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[16], digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  if (fl__random_bytes(nonce, sizeof nonce))
    return -1;
  sr.device_id = device_id;
  sr.timestamp_ms = wall_ms();
  sr.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
  sr.body = (ProtobufCBinaryData){len, (uint8_t *)body};
  if (fl__request_digest("POST", path, device_id, sr.timestamp_ms, nonce, sizeof nonce, body,
                         len, digest) ||
      fl__sign(d->key, digest, sizeof digest, sig))
    return -1;
  sr.signature = (ProtobufCBinaryData){sizeof sig, sig};
  *out_len = fl__v1__signed_request__get_packed_size(&sr);
  *out = malloc(*out_len + 1);
  if (*out == NULL)
    return -1;
  fl__v1__signed_request__pack(&sr, *out);
  return 0;
}

/* ---- the multi runner: n requests over k connections, latency per request ------------------- */

typedef struct req {
  const char *path;
  uint8_t *body;
  size_t len;
  long status;
  double t_sent, t_done;
  buf resp;
} req;

typedef struct slot {
  CURL *h;
  req *r;
} slot;

static void slot_start(CURLM *m, slot *s, const bench *b, req *r, struct curl_slist *hd) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", b->url, r->path);
  s->r = r;
  r->resp.len = 0;
  curl_easy_setopt(s->h, CURLOPT_URL, url);
  curl_easy_setopt(s->h, CURLOPT_HTTPHEADER, hd);
  curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(s->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->len);
  curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(s->h, CURLOPT_WRITEDATA, &r->resp);
  curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
  r->t_sent = now_s();
  curl_multi_add_handle(m, s->h);
}

/* Posts every request, k at a time (each connection kept alive); returns the wall time. */
static double run_multi(const bench *b, req *rs, int n, int k) {
  CURLM *m = curl_multi_init();
  slot *slots = calloc((size_t)k, sizeof *slots);
  struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
  hd = curl_slist_append(hd, "Expect:"); /* no 100-continue round trip */
  int next = 0, running = 0, active = 0;
  if (slots == NULL)
    die("out of memory");
  curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)k);
  double t0 = now_s();
  for (int i = 0; i < k && next < n; i++) {
    slots[i].h = curl_easy_init();
    curl_easy_setopt(slots[i].h, CURLOPT_TCP_NODELAY, 1L);
    if (b->o.upload_buffer > 0)
      curl_easy_setopt(slots[i].h, CURLOPT_UPLOAD_BUFFERSIZE, b->o.upload_buffer);
    slot_start(m, &slots[i], b, &rs[next++], hd);
    active++;
  }
  while (active > 0) {
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      slot *s;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
      s->r->t_done = now_s();
      s->r->status = 0;
      if (msg->data.result == CURLE_OK)
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &s->r->status);
      curl_multi_remove_handle(m, s->h);
      if (next < n) {
        slot_start(m, s, b, &rs[next++], hd);
      } else {
        active--;
      }
    }
    if (active > 0)
      curl_multi_poll(m, NULL, 0, 100, NULL);
  }
  double dt = now_s() - t0;
  for (int i = 0; i < k; i++)
    if (slots[i].h != NULL)
      curl_easy_cleanup(slots[i].h);
  free(slots);
  curl_slist_free_all(hd);
  curl_multi_cleanup(m);
  return dt;
}

static void reqs_free(req *rs, int n) {
  for (int i = 0; i < n; i++) {
    free(rs[i].body);
    free(rs[i].resp.p);
  }
  free(rs);
}

static const char *error_reason(const req *r) {
  static char reason[64];
  Fl__V1__Error *e = r->resp.len ? fl__v1__error__unpack(NULL, r->resp.len, r->resp.p) : NULL;
  snprintf(reason, sizeof reason, "%s", e && e->reason ? e->reason : "-");
  fl__v1__error__free_unpacked(e, NULL);
  return reason;
}

/* ---- set-up: model, plan, devices ----------------------------------------------------------- */

static void create_model_and_plan(bench *b) {
  char body[1024];
  size_t in = b->o.params / 100 - 1;
  static const char *const enc[] = {"", "float32", "float16", "int8", "topk"};
  snprintf(body, sizeof body,
           "{\"name\":\"bench\",\"seed\":1,\"spec\":{\"input_shape\":[%zu],\"layers\":"
           "[{\"type\":\"dense\",\"units\":100}],\"loss\":\"softmax_ce\"}}",
           in);
  json_t *m = admin(b, "POST", "/admin/v1/models", body);
  if (m == NULL)
    die("model creation failed");
  b->model_id = (uint64_t)json_integer_value(json_object_get(m, "model_id"));
  json_decref(m);
  snprintf(body, sizeof body,
           "{\"participants\":%d,\"min_participants\":1,\"over_selection\":1,"
           "\"deadline_s\":3600,\"clip_norm\":1000,\"encoding\":\"%s\",\"topk_fraction\":0.1,"
           "\"rounds\":0}",
           b->o.devices, enc[b->o.encoding]);
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/models/%" PRIu64 "/plans", b->model_id);
  json_t *p = admin(b, "POST", path, body);
  if (p == NULL)
    die("plan creation failed");
  json_decref(p);
}

static void enroll_all(bench *b, device *ds) {
  int n = b->o.devices;
  req *rs = calloc((size_t)n, sizeof *rs);
  int done = 0;
  while (done < n) {
    int batch = n - done > 10000 ? 10000 : n - done;
    char body[64];
    snprintf(body, sizeof body, "{\"count\":%d}", batch);
    json_t *t = admin(b, "POST", "/admin/v1/enrollment-tokens", body);
    json_t *tokens = json_object_get(t, "tokens");
    if (json_array_size(tokens) != (size_t)batch)
      die("enrollment tokens");
    for (int i = 0; i < batch; i++) {
      device *d = &ds[done + i];
      Fl__V1__EnrollRequest e = FL__V1__ENROLL_REQUEST__INIT;
      uint8_t pub[FL_PUBKEY_LEN], inner[256];
      if (fl__key_generate(&d->key) || fl__key_public(d->key, pub))
        die("key generation");
      e.enrollment_token = (char *)json_string_value(json_array_get(tokens, i));
      e.public_key = (ProtobufCBinaryData){sizeof pub, pub};
      size_t len = fl__v1__enroll_request__pack(&e, inner);
      rs[done + i].path = "/v1/enroll";
      if (envelope(d, 0, "/v1/enroll", inner, len, &rs[done + i].body, &rs[done + i].len))
        die("enroll envelope");
    }
    json_decref(t);
    done += batch;
  }
  run_multi(b, rs, n, 8);
  for (int i = 0; i < n; i++) {
    Fl__V1__EnrollResponse *er =
        rs[i].status == 200 ? fl__v1__enroll_response__unpack(NULL, rs[i].resp.len, rs[i].resp.p)
                            : NULL;
    if (er == NULL) {
      fprintf(stderr, "bench_ingest: enroll -> %ld %s\n", rs[i].status, error_reason(&rs[i]));
      die("enrollment failed");
    }
    ds[i].id = er->device_id;
    fl__v1__enroll_response__free_unpacked(er, NULL);
  }
  reqs_free(rs, n);
}

/* Every device checks in and must receive the open round's task. */
static void checkin_all(bench *b, device *ds) {
  int n = b->o.devices;
  req *rs = calloc((size_t)n, sizeof *rs);
  for (int i = 0; i < n; i++) {
    Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
    uint8_t inner[64];
    ci.model_id = b->model_id;
    size_t len = fl__v1__check_in_request__pack(&ci, inner);
    rs[i].path = "/v1/checkin";
    if (envelope(&ds[i], ds[i].id, "/v1/checkin", inner, len, &rs[i].body, &rs[i].len))
      die("checkin envelope");
  }
  run_multi(b, rs, n, 8);
  for (int i = 0; i < n; i++) {
    Fl__V1__CheckInResponse *cr =
        rs[i].status == 200
            ? fl__v1__check_in_response__unpack(NULL, rs[i].resp.len, rs[i].resp.p)
            : NULL;
    if (cr == NULL || cr->task == NULL) {
      fprintf(stderr, "bench_ingest: check-in -> %ld %s\n", rs[i].status,
              cr && cr->retry ? cr->retry->reason : error_reason(&rs[i]));
      die("check-in did not assign the device");
    }
    ds[i].round_id = cr->task->round_id;
    ds[i].base_version = cr->task->base_version;
    fl__v1__check_in_response__free_unpacked(cr, NULL);
  }
  reqs_free(rs, n);
}

/* POOL_DELTAS distinct deltas in the model's tensor layout (fl__layout_new of the same spec
 * the coordinator was given: weights and bias of the dense layer). */
typedef struct deltas {
  size_t n_tensors;
  Fl__V1__Tensor t[POOL_DELTAS][2];
  Fl__V1__Tensor *tp[POOL_DELTAS][2];
} deltas;

static void deltas_new(deltas *dl, size_t params, int encoding) {
  fl_model_spec spec = {.input_ndim = 1,
                        .input_shape = {(uint32_t)(params / 100 - 1)},
                        .n_layers = 1,
                        .layers = {{.type = FL_LAYER_DENSE, .units = 100}},
                        .loss = FL_LOSS_SOFTMAX_CE};
  fl_tensor_info *lay = NULL;
  size_t n_lay = 0;
  float *x = malloc(params * sizeof *x);
  uint64_t s = 99;
  if (x == NULL || fl__layout_new(&spec, &lay, &n_lay, NULL) || n_lay != 2)
    die("model layout");
  dl->n_tensors = n_lay;
  for (int k = 0; k < POOL_DELTAS; k++) {
    for (size_t i = 0; i < params; i++) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      x[i] = 0.01f * ((float)(s >> 40) / (float)(1 << 23) - 1.0f);
    }
    for (size_t j = 0; j < n_lay; j++) {
      fl__v1__tensor__init(&dl->t[k][j]);
      if (fl__tensor_encode(&dl->t[k][j], x + lay[j].offset, lay[j].count, lay[j].shape,
                            lay[j].ndim, encoding, 0.1f, NULL))
        die("encode");
      dl->tp[k][j] = &dl->t[k][j];
    }
  }
  fl__free(NULL, lay);
  free(x);
}

/* An upload as a device sends it (docs/SIGNING.md): the UpdateUpload signed over the
 * envelope's device id, timestamp and nonce, in an envelope whose own signature is empty. */
static int upload_envelope(const device *d, Fl__V1__UpdateUpload *u, uint8_t **out,
                           size_t *out_len) {
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[16], digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  int rc = -1;
  if (fl__random_bytes(nonce, sizeof nonce))
    return -1;
  sr.device_id = d->id;
  sr.timestamp_ms = wall_ms();
  sr.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
  if (fl__update_digest(d->id, sr.timestamp_ms, nonce, sizeof nonce, u, NULL, digest) ||
      fl__sign(d->key, digest, sizeof digest, sig))
    return -1;
  u->signature = (ProtobufCBinaryData){sizeof sig, sig};
  size_t len = fl__v1__update_upload__get_packed_size(u);
  uint8_t *inner = malloc(len);
  if (inner == NULL)
    goto out;
  fl__v1__update_upload__pack(u, inner);
  sr.body = (ProtobufCBinaryData){len, inner};
  *out_len = fl__v1__signed_request__get_packed_size(&sr);
  *out = malloc(*out_len + 1);
  if (*out == NULL)
    goto out;
  fl__v1__signed_request__pack(&sr, *out);
  rc = 0;
out:
  u->signature = (ProtobufCBinaryData){0, NULL};
  free(inner);
  return rc;
}

/* A signed upload for every device (what a device sends). */
static req *build_uploads(bench *b, device *ds, deltas *dl) {
  int n = b->o.devices;
  req *rs = calloc((size_t)n, sizeof *rs);
  for (int i = 0; i < n; i++) {
    Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
    u.round_id = ds[i].round_id;
    u.model_id = b->model_id;
    u.base_version = ds[i].base_version;
    u.sample_count = 50 + (uint64_t)(i * 7919) % 551;
    u.loss = 0.5f;
    u.n_delta = 2;
    u.delta = dl->tp[i % POOL_DELTAS];
    u.norm = 1.0f;
    rs[i].path = "/v1/updates";
    if (upload_envelope(&ds[i], &u, &rs[i].body, &rs[i].len))
      die("update signature");
  }
  return rs;
}

/* The CPU work of server/upload.c for one update, step by step, measured here on the same
 * requests (thread CPU time, best of 3 passes over 64 of them): where a coordinator core's time goes, without
 * the database and HTTP. Layout and fold use the model's tensor sizes. */
static void path_costs(const bench *b, const req *rs, const device *ds, const deltas *dl) {
  enum { N = 64, STEPS = 6 };
  static const char *const names[STEPS] = {
      "unpack SignedRequest (copies the body)", "unpack UpdateUpload (copies the tensors)",
      "upload digest (SHA-256 of the tensors, once)",
      "upload signature (Ed25519 verify, the only one)", "shape and finiteness checks, norm",
      "fold into the accumulator"};
  double best[STEPS];
  float *acc = calloc(b->o.params, sizeof *acc);
  int n = b->o.devices < N ? b->o.devices : N;
  fl_tensor_info lay[2];
  for (size_t j = 0, off = 0; j < 2; off += lay[j].count, j++) {
    const Fl__V1__Tensor *t = &dl->t[0][j];
    lay[j] = (fl_tensor_info){.offset = off, .count = t->count, .ndim = (uint32_t)t->n_shape};
    memcpy(lay[j].shape, t->shape, t->n_shape * sizeof *t->shape);
  }
  for (int k = 0; k < STEPS; k++)
    best[k] = INFINITY;
  for (int pass = 0; pass < 3; pass++) {
    double t[STEPS] = {0};
    for (int i = 0; i < n; i++) {
      uint8_t pub[FL_PUBKEY_LEN], dg[FL_SHA256_LEN], content[FL_SHA256_LEN];
      double c0 = thread_cpu_s();
      Fl__V1__SignedRequest *sr = fl__v1__signed_request__unpack(NULL, rs[i].len, rs[i].body);
      double c1 = thread_cpu_s();
      fl__key_public(ds[i].key, pub);
      Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
      double c2 = thread_cpu_s();
      int bad = sr->signature.len != 0;
      bad |= fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u,
                               content, dg);
      double c3 = thread_cpu_s();
      bad |= fl__verify_raw(pub, dg, sizeof dg, u->signature.data, u->signature.len);
      double c4 = thread_cpu_s();
      bad |= fl__delta_check_layout(lay, 2, u->delta, u->n_delta);
      double sq = 0;
      for (size_t j = 0; j < u->n_delta; j++)
        sq += fl__tensor_sqnorm(u->delta[j]);
      double c5 = thread_cpu_s();
      for (size_t j = 0; j < u->n_delta; j++)
        fl__tensor_fold(u->delta[j], (float)u->sample_count, acc + lay[j].offset);
      double c6 = thread_cpu_s();
      if (bad || !(sq >= 0))
        die("a pre-built update does not verify");
      fl__v1__update_upload__free_unpacked(u, NULL);
      fl__v1__signed_request__free_unpacked(sr, NULL);
      double c[] = {c0, c1, c2, c3, c4, c5, c6};
      for (int k = 0; k < STEPS; k++)
        t[k] += c[k + 1] - c[k];
    }
    for (int k = 0; k < STEPS; k++)
      best[k] = fmin(best[k], t[k] / n);
  }
  double total = 0;
  for (int k = 0; k < STEPS; k++)
    total += best[k];
  printf("\n## coordinator CPU per update outside HTTP and PostgreSQL (%zu-byte request;"
         " server/upload.c's steps on the pre-built requests,"
         " thread CPU time, best of 3 x %d)\n",
         rs[0].len, n);
  printf("| step | us | share |\n|---|---|---|\n");
  for (int k = 0; k < STEPS; k++)
    printf("| %s | %.1f | %.0f%% |\n", names[k], best[k] * 1e6, 100 * best[k] / total);
  printf("| total | %.1f | (%.0f updates/s per core) |\n", total * 1e6, 1 / total);
  free(acc);
}

static void wait_round_closed(bench *b, uint64_t round_id) {
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/rounds/%" PRIu64, round_id);
  for (int i = 0; i < 1200; i++) {
    json_t *r = admin(b, "GET", path, NULL);
    const char *st = json_string_value(json_object_get(r, "state"));
    bool open = st == NULL || strcmp(st, "open") == 0;
    json_decref(r);
    if (!open)
      return;
    sleep_ms(50);
  }
  die("round did not close");
}

/* With FL_BENCH_PGSS=1 and pg_stat_statements preloaded (pg_virtualenv -o
 * shared_preload_libraries=pg_stat_statements -o pg_stat_statements.track_planning=on), the
 * statements of the first timed round (uploads only) by total time, per update: PostgreSQL's
 * side of the profile. */
static void pgss_reset(const bench *b) {
  char conninfo[96];
  if (getenv("FL_BENCH_PGSS") == NULL)
    return;
  snprintf(conninfo, sizeof conninfo, "dbname=%s", b->db);
  PGconn *c = PQconnectdb(conninfo);
  PQclear(PQexec(c, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"));
  PQclear(PQexec(c, "SELECT pg_stat_statements_reset()"));
  PQfinish(c);
}

static void pgss_report(const bench *b, int accepted) {
  char conninfo[96], sql[640];
  if (getenv("FL_BENCH_PGSS") == NULL || accepted == 0)
    return;
  snprintf(conninfo, sizeof conninfo, "dbname=%s", b->db);
  PGconn *c = PQconnectdb(conninfo);
  snprintf(sql, sizeof sql,
           "SELECT calls, round((total_plan_time + total_exec_time)::numeric * 1000 / %d, 1),"
           " round(((total_plan_time + total_exec_time) / NULLIF(calls, 0))::numeric * 1000, 1),"
           " regexp_replace(left(query, 90), '\\s+', ' ', 'g')"
           " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
           " WHERE datname = current_database())"
           " ORDER BY total_plan_time + total_exec_time DESC LIMIT 12",
           accepted);
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) == PGRES_TUPLES_OK) {
    printf("\n## PostgreSQL statements (pg_stat_statements: plan + execution time"
           " during the first timed round: the uploads' statements)\n"
           "| calls | us per accepted update | us per call | statement |\n"
           "|---|---|---|---|\n");
    for (int i = 0; i < PQntuples(r); i++)
      printf("| %s | %s | %s | `%s` |\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
             PQgetvalue(r, i, 2), PQgetvalue(r, i, 3));
  } else {
    fprintf(stderr, "bench_ingest: pg_stat_statements: %s", PQerrorMessage(c));
  }
  PQclear(r);
  PQfinish(c);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ---- main --------------------------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr, "usage: bench_ingest [-d DEVICES] [-k CONNS] [-p PARAMS] [-r ROUNDS]"
                  " [-e float32|float16|int8|topk] [--coordinator PATH] [--upload-buffer BYTES]"
                  " [--keep]"
                  " [-- coordinator flags]\n");
  exit(2);
}

int main(int argc, char **argv) {
  /* A 2 MB upload buffer (libcurl's largest) sends a 400 KB body in one write instead of
   * seven: 25% less CPU in this program, which shares the 2 cores with the coordinator
   * (RESULTS.md, Ingest). --upload-buffer 0 restores libcurl's 64 KB default. */
  bench b = {.o = {.devices = 2000, .conns = 16, .rounds = 2, .encoding = 1, .params = 100000,
                   .upload_buffer = 2L << 20, .coordinator = FL_COORDINATOR_BIN}};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    if (strcmp(a, "--") == 0) {
      while (++i < argc && b.o.n_extra < 15)
        b.o.extra[b.o.n_extra++] = argv[i];
    } else if (strcmp(a, "-d") == 0 && has) {
      b.o.devices = atoi(argv[++i]);
    } else if (strcmp(a, "-k") == 0 && has) {
      b.o.conns = atoi(argv[++i]);
    } else if (strcmp(a, "-p") == 0 && has) {
      b.o.params = strtoull(argv[++i], NULL, 10);
    } else if (strcmp(a, "-r") == 0 && has) {
      b.o.rounds = atoi(argv[++i]);
    } else if (strcmp(a, "-e") == 0 && has) {
      b.o.encoding = encoding_of(argv[++i]);
    } else if (strcmp(a, "--coordinator") == 0 && has) {
      b.o.coordinator = argv[++i];
    } else if (strcmp(a, "--upload-buffer") == 0 && has) {
      b.o.upload_buffer = atol(argv[++i]);
    } else if (strcmp(a, "--keep") == 0) {
      b.o.keep = true;
    } else {
      usage();
    }
  }
  if (b.o.devices < 1 || b.o.conns < 1 || b.o.rounds < 1 || b.o.encoding < 1 ||
      b.o.params < 200 || b.o.params % 100 != 0)
    usage();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  /* As the coordinator does (server/main.c), so that path_costs measures its settings. */
  fl__tensor_set_threads(1);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  snprintf(b.db, sizeof b.db, "fl_bench_ingest_%d_%lld", (int)getpid(), (long long)wall_ms());
  tmp_template(b.dir, sizeof b.dir, "bench_ingest_");
  if (mkdtemp(b.dir) == NULL)
    die("mkdtemp");
  char sql[160];
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", b.db);
  if (db_cmd(sql))
    die("cannot create the database (run under pg_virtualenv -t)");
  if (coord_start(&b))
    die("coordinator start");
  b.postmaster = find_postmaster(b.db);
  create_model_and_plan(&b);

  device *ds = calloc((size_t)b.o.devices, sizeof *ds);
  deltas dl;
  double t0 = now_s();
  enroll_all(&b, ds);
  fprintf(stderr, "bench_ingest: %d devices enrolled in %.1f s\n", b.o.devices, now_s() - t0);
  deltas_new(&dl, b.o.params, b.o.encoding);

  int n = b.o.devices, total = b.o.rounds * n, accepted = 0, refused = 0;
  double *lat = malloc((size_t)total * sizeof *lat), wall = 0, cpu_c = 0, cpu_pg = 0, cpu_g = 0;
  size_t body_bytes = 0;
  long hz = sysconf(_SC_CLK_TCK);
  for (int r = 0; r < b.o.rounds; r++) {
    checkin_all(&b, ds);
    req *rs = build_uploads(&b, ds, &dl);
    body_bytes = rs[0].len;
    if (r == 0)
      path_costs(&b, rs, ds, &dl);
    long long c0 = proc_ticks(b.coord_pid, true, NULL), p0 = pg_ticks(b.postmaster);
    double g0 = self_cpu_s();
    pid_t perf = r == 0 ? perf_start(&b) : 0;
    if (r == 0)
      pgss_reset(&b);
    double dt = run_multi(&b, rs, n, b.o.conns);
    perf_stop(perf);
    if (r == 0)
      pgss_report(&b, n);
    long long c1 = proc_ticks(b.coord_pid, true, NULL), p1 = pg_ticks(b.postmaster);
    double g1 = self_cpu_s();
    wall += dt;
    cpu_c += (double)(c1 - c0) / (double)hz;
    cpu_pg += (double)(p1 - p0) / (double)hz;
    cpu_g += g1 - g0;
    int ok = 0;
    for (int i = 0; i < n; i++) {
      if (rs[i].status == 200) {
        lat[accepted++] = rs[i].t_done - rs[i].t_sent;
        ok++;
      } else {
        if (refused < 5)
          fprintf(stderr, "bench_ingest: upload -> %ld %s\n", rs[i].status, error_reason(&rs[i]));
        refused++;
      }
    }
    fprintf(stderr, "bench_ingest: round %d: %d accepted in %.2f s (%.0f/s)\n", r + 1, ok, dt,
            ok / dt);
    uint64_t round_id = ds[0].round_id;
    reqs_free(rs, n);
    if (r + 1 < b.o.rounds)
      wait_round_closed(&b, round_id);
  }
  qsort(lat, (size_t)accepted, sizeof *lat, cmp_double);
  static const char *const enc[] = {"", "float32", "float16", "int8", "top-k 10%"};
  double p50 = accepted ? lat[accepted / 2] : NAN;
  double p99 = accepted ? lat[(size_t)((accepted - 1) * 0.99)] : NAN;
  double mx = accepted ? lat[accepted - 1] : NAN;
  printf("\n## ingest: %zu-parameter %s updates (%zu bytes per request), %d devices x %d rounds,"
         " %d connections\n",
         b.o.params, enc[b.o.encoding], body_bytes, n, b.o.rounds, b.o.conns);
  printf("| figure | value | target | ratio |\n|---|---|---|---|\n");
  printf("| accepted updates/s | %.0f (%d accepted, %d refused, %.2f s) | >= 1500 | %.2f |\n",
         accepted / wall, accepted, refused, wall, accepted / wall / 1500.0);
  printf("| ack latency p50 / p99 / max | %.1f / %.1f / %.1f ms | p99 < 50 ms | %.2f |\n",
         p50 * 1e3, p99 * 1e3, mx * 1e3, 50.0 / (p99 * 1e3));
  printf("| CPU, cores: coordinator / PostgreSQL / load generator | %.2f / %.2f / %.2f"
         " (of 2) | | |\n",
         cpu_c / wall, cpu_pg / wall, cpu_g / wall);
  printf("| CPU per update: coordinator / PostgreSQL / load generator | %.0f / %.0f / %.0f us"
         " | | |\n",
         cpu_c / accepted * 1e6, cpu_pg / accepted * 1e6, cpu_g / accepted * 1e6);
  fflush(stdout);

  coord_stop(&b);
  snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", b.db);
  if (!b.o.keep)
    db_cmd(sql);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", b.dir);
  if (!b.o.keep && system(cmd) != 0)
    fprintf(stderr, "bench_ingest: could not remove %s\n", b.dir);
  for (int i = 0; i < b.o.devices; i++)
    fl__key_free(ds[i].key);
  free(ds);
  free(lat);
  for (int k = 0; k < POOL_DELTAS; k++) {
    fl__tensor_release(&dl.t[k][0], NULL);
    fl__tensor_release(&dl.t[k][1], NULL);
  }
  curl_global_cleanup();
  return refused == 0 ? 0 : 1;
}
