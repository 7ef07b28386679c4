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
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "crypto.h"
#include "digest.h"
#include "fl/err.h"
#include "flsupport/admin.h"
#include "flsupport/coord.h"
#include "flsupport/http.h"
#include "flsupport/pg.h"
#include "flsupport/proc.h"
#include "flsupport/rng.h"
#include "flsupport/signer.h"
#include "mem.h"
#include "tensor.h"

#ifndef FL_COORDINATOR_BIN
#define FL_COORDINATOR_BIN "fl-coordinator"
#endif
#define ADMIN_TOKEN "bench-ingest-admin-token-0123456789abcdef"
#define POOL_DELTAS 8

/* CPU time of this thread: the step costs below should not count time other programs held
 * the core. */
static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
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
  char db[64], dir[256];
  fl_sup_coord coord;
  fl_sup_admin *admin;
  pid_t postmaster;
  uint64_t model_id;
} bench;

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
  n = (size_t)snprintf(pids, sizeof pids, "%d,%d", (int)b->coord.pid, (int)b->postmaster);
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
    execlp("perf", "perf", "record", "-q", "-F", "1999", "-g", "-o", out, "-p", pids, (char *)NULL);
    _exit(127);
  }
  fl_sup_sleep_ms(300); /* let perf attach */
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

/* ---- the coordinator ------------------------------------------------------------------------ */

static void coord_start(bench *b) {
  char a_db[128], a_conn[48];
  char *args[24] = {a_conn, "--log-level=warn"};
  int n = 2;
  snprintf(a_db, sizeof a_db, "dbname=%s", b->db);
  snprintf(a_conn, sizeof a_conn, "--max-connections=%d", b->o.conns + 64);
  for (int i = 0; i < b->o.n_extra; i++)
    args[n++] = (char *)b->o.extra[i];
  args[n] = NULL;
  fl_sup_coord_opts co = {
      .bin = b->o.coordinator, .database_url = a_db, .dir = b->dir, .args = args};
  if (fl_sup_coord_start(&b->coord, &co) != FL_OK)
    die("coordinator start");
  if (fl_sup_admin_new(&b->admin, b->coord.url, b->coord.admin_token) != FL_OK)
    die("admin client");
}

/* ---- signed device requests --------------------------------------------------------------- */

typedef struct device {
  fl_key *key;
  uint64_t id;
  uint64_t round_id, base_version;
} device;

/* ---- the multi runner: n requests over k connections, latency per request ------------------- */

typedef struct req {
  const char *path;
  uint8_t *body;
  size_t len;
  long status;
  double t_sent, t_done;
  fl_sup_resp resp;
} req;

typedef struct slot {
  CURL *h;
  req *r;
} slot;

static void slot_start(CURLM *m, slot *s, const bench *b, req *r, struct curl_slist *hd) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", b->coord.url, r->path);
  s->r = r;
  fl_sup_resp_free(&r->resp);
  curl_easy_setopt(s->h, CURLOPT_URL, url);
  curl_easy_setopt(s->h, CURLOPT_HTTPHEADER, hd);
  curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, r->body);
  curl_easy_setopt(s->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->len);
  curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, fl_sup_resp_write);
  curl_easy_setopt(s->h, CURLOPT_WRITEDATA, &r->resp);
  curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
  r->t_sent = fl_sup_mono_s();
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
  double t0 = fl_sup_mono_s();
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
      s->r->t_done = fl_sup_mono_s();
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
  double dt = fl_sup_mono_s() - t0;
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
    fl_sup_resp_free(&rs[i].resp);
  }
  free(rs);
}

static const char *error_reason(const req *r) {
  static char reason[64];
  fl_sup_error_reason(r->resp.data, r->resp.len, reason, sizeof reason);
  return reason[0] ? reason : "-";
}

/* ---- set-up: model, plan, devices ----------------------------------------------------------- */

static void create_model_and_plan(bench *b) {
  static const char *const enc[] = {"", "float32", "float16", "int8", "topk"};
  json_t *spec =
      json_pack("{s:[I], s:[{s:s, s:i}], s:s}", "input_shape", (json_int_t)(b->o.params / 100 - 1),
                "layers", "type", "dense", "units", 100, "loss", "softmax_ce");
  json_t *plan =
      json_pack("{s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:i}", "participants", b->o.devices,
                "min_participants", 1, "over_selection", 1, "deadline_s", 3600, "clip_norm", 1000,
                "encoding", enc[b->o.encoding], "topk_fraction", 0.1, "rounds", 0);
  if (fl_sup_admin_create_model(b->admin, "bench", spec, 1, &b->model_id, NULL) != FL_OK ||
      fl_sup_admin_create_plan(b->admin, b->model_id, plan, NULL, NULL) != FL_OK) {
    fprintf(stderr, "bench_ingest: %s\n", fl_sup_admin_errmsg(b->admin));
    die("model and plan creation failed");
  }
  json_decref(spec);
  json_decref(plan);
}

static void enroll_all(bench *b, device *ds) {
  int n = b->o.devices;
  req *rs = calloc((size_t)n, sizeof *rs);
  char **tokens = NULL;
  if (rs == NULL || fl_sup_admin_enrollment_tokens(b->admin, (size_t)n, &tokens) != FL_OK)
    die("enrollment tokens");
  for (int i = 0; i < n; i++) {
    rs[i].path = "/v1/enroll";
    if (fl__key_generate(&ds[i].key) ||
        fl_sup_enroll_request(ds[i].key, tokens[i], &rs[i].body, &rs[i].len))
      die("enroll request");
  }
  fl_sup_admin_free_tokens(tokens, (size_t)n);
  run_multi(b, rs, n, 8);
  for (int i = 0; i < n; i++) {
    if (rs[i].status != 200 ||
        fl_sup_enroll_parse(rs[i].resp.data, rs[i].resp.len, &ds[i].id, NULL) != FL_OK) {
      fprintf(stderr, "bench_ingest: enroll -> %ld %s\n", rs[i].status, error_reason(&rs[i]));
      die("enrollment failed");
    }
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
    if (fl_sup_envelope(ds[i].key, ds[i].id, "POST", "/v1/checkin", inner, len, NULL, &rs[i].body,
                        &rs[i].len))
      die("checkin envelope");
  }
  run_multi(b, rs, n, 8);
  for (int i = 0; i < n; i++) {
    Fl__V1__CheckInResponse *cr = rs[i].status == 200 ? fl__v1__check_in_response__unpack(
                                                            NULL, rs[i].resp.len, rs[i].resp.data)
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
    for (size_t i = 0; i < params; i++)
      x[i] = 0.01f * fl_sup_splitmix_unit(&s);
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
    if (fl_sup_upload_envelope(ds[i].key, ds[i].id, &u, &rs[i].body, &rs[i].len))
      die("update signature");
  }
  return rs;
}

/* The CPU work of server/upload.c for one update, step by step, measured here on the same
 * requests (thread CPU time, best of 3 passes over 64 of them): where a coordinator core's time
 * goes, without the database and HTTP. Layout and fold use the model's tensor sizes. */
static void path_costs(const bench *b, const req *rs, const device *ds, const deltas *dl) {
  enum { N = 64, STEPS = 6 };
  static const char *const names[STEPS] = {"unpack SignedRequest (copies the body)",
                                           "unpack UpdateUpload (copies the tensors)",
                                           "upload digest (SHA-256 of the tensors, once)",
                                           "upload signature (Ed25519 verify, the only one)",
                                           "shape and finiteness checks, norm",
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
  printf(
      "\n## coordinator CPU per update outside HTTP and PostgreSQL (%zu-byte request;"
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
  if (fl_sup_admin_wait_round(b->admin, round_id, NULL, 60000, NULL) != FL_OK) {
    fprintf(stderr, "bench_ingest: %s\n", fl_sup_admin_errmsg(b->admin));
    die("round did not close");
  }
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
    printf(
        "\n## PostgreSQL statements (pg_stat_statements: plan + execution time"
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
  fprintf(stderr,
          "usage: bench_ingest [-d DEVICES] [-k CONNS] [-p PARAMS] [-r ROUNDS]"
          " [-e float32|float16|int8|topk] [--coordinator PATH] [--upload-buffer BYTES]"
          " [--keep]"
          " [-- coordinator flags]\n");
  exit(2);
}

int main(int argc, char **argv) {
  /* A 2 MB upload buffer (libcurl's largest) sends a 400 KB body in one write instead of
   * seven: 25% less CPU in this program, which shares the 2 cores with the coordinator
   * (RESULTS.md, Ingest). --upload-buffer 0 restores libcurl's 64 KB default. */
  bench b = {.o = {.devices = 2000,
                   .conns = 16,
                   .rounds = 2,
                   .encoding = 1,
                   .params = 100000,
                   .upload_buffer = 2L << 20,
                   .coordinator = FL_COORDINATOR_BIN}};
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
  if (b.o.devices < 1 || b.o.conns < 1 || b.o.rounds < 1 || b.o.encoding < 1 || b.o.params < 200 ||
      b.o.params % 100 != 0)
    usage();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  /* As the coordinator does (server/main.c), so that path_costs measures its settings. */
  fl__tensor_set_threads(1);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  if (fl_sup_mkdtemp(b.dir, sizeof b.dir, "bench_ingest_") != FL_OK)
    die("mkdtemp");
  if (fl_sup_db_create("fl_bench_ingest_", b.db) != FL_OK)
    die("cannot create the database (run under pg_virtualenv -t)");
  coord_start(&b);
  b.postmaster = find_postmaster(b.db);
  create_model_and_plan(&b);

  device *ds = calloc((size_t)b.o.devices, sizeof *ds);
  deltas dl;
  double t0 = fl_sup_mono_s();
  enroll_all(&b, ds);
  fprintf(stderr, "bench_ingest: %d devices enrolled in %.1f s\n", b.o.devices,
          fl_sup_mono_s() - t0);
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
    long long c0 = proc_ticks(b.coord.pid, true, NULL), p0 = pg_ticks(b.postmaster);
    double g0 = self_cpu_s();
    pid_t perf = r == 0 ? perf_start(&b) : 0;
    if (r == 0)
      pgss_reset(&b);
    double dt = run_multi(&b, rs, n, b.o.conns);
    perf_stop(perf);
    if (r == 0)
      pgss_report(&b, n);
    long long c1 = proc_ticks(b.coord.pid, true, NULL), p1 = pg_ticks(b.postmaster);
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
  printf(
      "\n## ingest: %zu-parameter %s updates (%zu bytes per request), %d devices x %d rounds,"
      " %d connections\n",
      b.o.params, enc[b.o.encoding], body_bytes, n, b.o.rounds, b.o.conns);
  printf("| figure | value | target | ratio |\n|---|---|---|---|\n");
  printf("| accepted updates/s | %.0f (%d accepted, %d refused, %.2f s) | >= 1500 | %.2f |\n",
         accepted / wall, accepted, refused, wall, accepted / wall / 1500.0);
  printf("| ack latency p50 / p99 / max | %.1f / %.1f / %.1f ms | p99 < 50 ms | %.2f |\n",
         p50 * 1e3, p99 * 1e3, mx * 1e3, 50.0 / (p99 * 1e3));
  printf(
      "| CPU, cores: coordinator / PostgreSQL / load generator | %.2f / %.2f / %.2f"
      " (of 2) | | |\n",
      cpu_c / wall, cpu_pg / wall, cpu_g / wall);
  printf(
      "| CPU per update: coordinator / PostgreSQL / load generator | %.0f / %.0f / %.0f us"
      " | | |\n",
      cpu_c / accepted * 1e6, cpu_pg / accepted * 1e6, cpu_g / accepted * 1e6);
  fflush(stdout);

  fl_sup_coord_stop(&b.coord, SIGTERM, 60000);
  fl_sup_admin_free(b.admin);
  if (!b.o.keep) {
    fl_sup_db_drop(b.db);
    fl_sup_rmtree(b.dir);
  }
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
