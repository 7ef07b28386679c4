/*
 * bench_pgcost: what the device path costs PostgreSQL and the coordinator (issue 12).
 *
 *   bench_pgcost [--devices N] [--rounds R] [--warmup W] [--coordinator BIN] [--sim BIN]
 *                [--checkins K] [--coord-arg FLAG]... [-- fl-sim args...]
 *
 * A throwaway cluster with pg_stat_statements (shared_preload_libraries, track = all,
 * track_planning on), one fl-coordinator, then two parts:
 * 1. Statements per check-in: K fresh devices check in for a model without an open round (told
 *    to wait), then for the same model with a round of K participants (assigned); the calls
 *    pg_stat_statements counts in each phase, less those of an idle phase as long (the
 *    ticker's), divided by K.
 * 2. A fleet run: fl-sim --url with N devices, 2NN, R rounds (every device takes part in
 *    each). After W rounds have closed, and again when the last one closes: the CPU time of the
 *    coordinator process and of every PostgreSQL process (the postmaster, its live children and
 *    its reaped ones, less this program's own backend), the WAL position, pg_stat_statements.
 *    Printed per device round (one accepted update = check-in + download + upload) and per
 *    round, with the statements that cost the most.
 * Figures in benches/RESULTS.md ("PostgreSQL per request").
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#ifndef FL_SIM_BIN
#define FL_SIM_BIN "fl-sim"
#endif

static void die(const char *what) {
  fprintf(stderr, "bench_pgcost: %s failed\n", what);
  exit(1);
}

/* ---- CPU accounting ------------------------------------------------------------------------ */

/* The postmaster and its children, live and reaped. */
static long long pg_ticks(pid_t postmaster) {
  return fl_sup_family_ticks(postmaster, NULL, NULL);
}

/* ---- the cluster --------------------------------------------------------------------------- */

typedef struct bench {
  fl_sup_pg pg;
  pid_t postmaster;
  PGconn *mon; /* this program's connection (its backend's CPU is subtracted) */
  pid_t mon_pid;
  fl_sup_coord coord;
  fl_sup_admin *admin;
  char dir[256];
} bench;

static PGresult *q(bench *b, const char *sql) {
  PGresult *r = PQexec(b->mon, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
    fprintf(stderr, "bench_pgcost: %s: %s", sql, PQerrorMessage(b->mon));
    exit(1);
  }
  return r;
}

static long long q_int(bench *b, const char *sql) {
  PGresult *r = q(b, sql);
  long long v = PQntuples(r) ? atoll(PQgetvalue(r, 0, 0)) : 0;
  PQclear(r);
  return v;
}

static void start_cluster(bench *b) {
  char path[400], conn[600];
  if (fl_sup_pg_start(&b->pg, NULL, "fl-pgcost-", "bench_pgcost") != FL_OK)
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
  PGresult *cr = PQexec(pc, "CREATE DATABASE fl");
  if (PQresultStatus(cr) != PGRES_COMMAND_OK)
    die("CREATE DATABASE");
  PQclear(cr);
  PQfinish(pc);
  snprintf(conn, sizeof conn, "host=%s port=5432 user=fl dbname=fl", b->pg.dir);
  b->mon = PQconnectdb(conn);
  if (PQstatus(b->mon) != CONNECTION_OK)
    die("connect");
  PQclear(q(b, "CREATE EXTENSION pg_stat_statements"));
  b->mon_pid = (pid_t)q_int(b, "SELECT pg_backend_pid()");
}

static const char *g_coord_args[8];
static int g_n_coord_args;

static void start_coordinator(bench *b, const char *bin) {
  static char db[400];
  snprintf(db, sizeof db, "host=%s port=5432 user=fl dbname=fl", b->pg.dir);
  if (fl_sup_mkdtemp(b->dir, sizeof b->dir, "fl-pgcost-coord-") != FL_OK)
    die("temp dir");
  char *args[12] = {"--max-connections=2000", "--log-level=warn"};
  for (int i = 0; i < g_n_coord_args; i++)
    args[2 + i] = (char *)g_coord_args[i];
  fl_sup_coord_opts co = {.bin = bin, .database_url = db, .dir = b->dir, .args = args};
  if (fl_sup_coord_start(&b->coord, &co) != FL_OK)
    die("coordinator start");
  if (fl_sup_admin_new(&b->admin, b->coord.url, b->coord.admin_token) != FL_OK)
    die("admin client");
}

/* ---- part 1: statements per check-in -------------------------------------------------------- */

/* Statements of this program (the resets, these queries, the round poll) are left out, and
 * so are nested ones (a foreign key's check inside an INSERT, a trigger's UPDATE). */
#define NOT_OURS                                              \
  " WHERE toplevel AND query NOT LIKE '%pg_stat_statements%'" \
  " AND query NOT LIKE '%bench_pgcost%'"

/* Statement calls since the last reset, less this program's. */
static long long calls(bench *b) {
  return q_int(b, "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements" NOT_OURS);
}

static double phase_calls(bench *b, CURL *h, fl_key **keys, uint64_t *ids, int k, uint64_t model,
                          const char *want, double *secs) {
  char url[128];
  int ok = 0;
  snprintf(url, sizeof url, "%s/v1/checkin", b->coord.url);
  PQclear(q(b, "SELECT pg_stat_statements_reset()"));
  double t0 = fl_sup_mono_s();
  for (int i = 0; keys != NULL && i < k; i++) {
    Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
    uint8_t inner[64], *env;
    size_t len, elen;
    ci.model_id = model;
    len = fl__v1__check_in_request__pack(&ci, inner);
    if (fl_sup_envelope(keys[i], ids[i], "POST", "/v1/checkin", inner, len, NULL, &env, &elen))
      die("envelope");
    fl_sup_http_opts o = {.body = env, .len = elen};
    fl_sup_resp r = {0};
    if (fl_sup_http(h, "POST", url, &o, &r, NULL, 0) == FL_OK && r.status == 200) {
      Fl__V1__CheckInResponse *cr =
          fl__v1__check_in_response__unpack(NULL, r.len, (const uint8_t *)r.data);
      bool task = cr && cr->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
      ok += cr != NULL && strcmp(want, task ? "task" : "retry") == 0;
      fl__v1__check_in_response__free_unpacked(cr, NULL);
    }
    fl_sup_resp_free(&r);
    free(env);
  }
  if (keys == NULL)
    fl_sup_sleep_ms((long)(*secs * 1000));
  else
    *secs = fl_sup_mono_s() - t0;
  if (keys != NULL && ok != k)
    fprintf(stderr, "bench_pgcost: %d of %d check-ins got a %s\n", ok, k, want);
  PGresult *r = q(b,
                  "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
                  " FROM pg_stat_statements" NOT_OURS " ORDER BY calls DESC LIMIT 8");
  printf("  phase %-6s", keys != NULL ? want : "idle");
  for (int i = 0; i < PQntuples(r); i++)
    printf("%s %5.2f  %s\n", i ? "              " : "", atof(PQgetvalue(r, i, 0)) / k,
           PQgetvalue(r, i, 1));
  if (PQntuples(r) == 0)
    printf("\n");
  PQclear(r);
  return (double)calls(b);
}

static void statements_per_checkin(bench *b, int k) {
  fl_key **keys = calloc((size_t)k, sizeof *keys);
  uint64_t *ids = calloc((size_t)k, sizeof *ids), model_id;
  char **tokens = NULL, url[128];
  CURL *h = curl_easy_init();
  json_t *spec = json_loads(
      "{\"input_shape\":[6],\"layers\":[{\"type\":\"dense\",\"units\":3}],"
      "\"loss\":\"softmax_ce\"}",
      0, NULL);
  if (fl_sup_admin_create_model(b->admin, "pgcost", spec, 1, &model_id, NULL) != FL_OK ||
      fl_sup_admin_enrollment_tokens(b->admin, (size_t)k, &tokens) != FL_OK)
    die("model and tokens");
  json_decref(spec);
  snprintf(url, sizeof url, "%s/v1/enroll", b->coord.url);
  for (int i = 0; i < k; i++) {
    uint8_t *body;
    size_t len;
    fl_sup_resp r = {0};
    if (fl__key_generate(&keys[i]) || fl_sup_enroll_request(keys[i], tokens[i], &body, &len))
      die("enroll request");
    fl_sup_http_opts o = {.body = body, .len = len};
    if (fl_sup_http(h, "POST", url, &o, &r, NULL, 0) != FL_OK || r.status != 200 ||
        fl_sup_enroll_parse((const uint8_t *)r.data, r.len, &ids[i], NULL) != FL_OK)
      die("enroll");
    fl_sup_resp_free(&r);
    free(body);
  }
  fl_sup_admin_free_tokens(tokens, (size_t)k);
  fl_sup_sleep_ms(1500); /* the enrollments' telemetry and ticks settle */
  double secs = 0;
  double wait = phase_calls(b, h, keys, ids, k, model_id, "retry", &secs);
  double idle = phase_calls(b, h, NULL, NULL, k, model_id, "", &secs);
  fl_sup_plan p = {.participants = (uint32_t)k,
                   .min_participants = 1,
                   .over_selection = 1,
                   .deadline_s = 600,
                   .local_epochs = 1,
                   .batch_size = 10,
                   .learning_rate = 0.05,
                   .clip_norm = 10,
                   .encoding = "float32",
                   .server_optimizer = "fedavg",
                   .server_lr = 1,
                   .rounds = 1};
  json_t *plan = fl_sup_plan_json(&p);
  if (fl_sup_admin_create_plan(b->admin, model_id, plan, NULL, NULL) != FL_OK) {
    fprintf(stderr, "bench_pgcost: %s\n", fl_sup_admin_errmsg(b->admin));
    die("plan");
  }
  json_decref(plan);
  double assigned = phase_calls(b, h, keys, ids, k, model_id, "task", &secs);
  printf(
      "statements per check-in (%d check-ins per phase, %.2f idle statements per phase"
      " subtracted)\n",
      k, idle);
  printf("  %-28s %6.2f\n", "told to wait (no open round)", (wait - idle) / k);
  printf("  %-28s %6.2f\n", "assigned", (assigned - idle) / k);
  for (int i = 0; i < k; i++)
    fl__key_free(keys[i]);
  free(keys);
  free(ids);
  curl_easy_cleanup(h);
}

/* ---- part 2: the fleet run ----------------------------------------------------------------- */

typedef struct snap {
  long long coord, pg;
  long long wal; /* bytes */
  long long fpi; /* full-page images (pg_stat_wal): pages first written after a checkpoint */
} snap;

static snap take(bench *b) {
  snap s;
  s.coord = fl_sup_proc_ticks(b->coord.pid, false, NULL);
  s.pg = pg_ticks(b->postmaster) - fl_sup_proc_ticks(b->mon_pid, false, NULL);
  s.wal = q_int(b, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn");
  s.fpi = q_int(b, "SELECT wal_fpi FROM pg_stat_wal");
  return s;
}

static void top_statements(bench *b, double device_rounds) {
  PGresult *r = q(b,
                  "SELECT calls, total_exec_time, total_plan_time, left(regexp_replace(query,"
                  " '\\s+', ' ', 'g'), 70) FROM pg_stat_statements" NOT_OURS
                  " ORDER BY total_exec_time + total_plan_time DESC LIMIT 14");
  printf("  statements by time (per device round: calls, exec ms, plan ms)\n");
  for (int i = 0; i < PQntuples(r); i++)
    printf("  %6.2f %7.3f %7.3f  %s\n", atof(PQgetvalue(r, i, 0)) / device_rounds,
           atof(PQgetvalue(r, i, 1)) / device_rounds, atof(PQgetvalue(r, i, 2)) / device_rounds,
           PQgetvalue(r, i, 3));
  PQclear(r);
  long long all = calls(b);
  printf("  statements per device round: %.2f\n", (double)all / device_rounds);
}

static void fleet(bench *b, const char *sim, int devices, int rounds, int warmup, char **extra) {
  char dev[32], rnd[32], out[300], log[300],
      closed_sql[] = "SELECT /* bench_pgcost */ count(*) FROM rounds WHERE state <> 'open'";
  char *argv[64];
  int n = 0;
  snprintf(dev, sizeof dev, "%d", devices);
  snprintf(rnd, sizeof rnd, "%d", rounds);
  snprintf(out, sizeof out, "%s/sim-out", b->dir);
  snprintf(log, sizeof log, "%s/fl-sim.log", b->dir);
  const char *base[] = {sim,
                        "--url",
                        b->coord.url,
                        "--admin-token",
                        b->coord.admin_token,
                        "--devices",
                        dev,
                        "--rounds",
                        rnd,
                        "--model",
                        "2nn",
                        "--samples-per-device",
                        "60",
                        "--epochs",
                        "1",
                        "--batch",
                        "10",
                        "--out",
                        out};
  for (size_t i = 0; i < sizeof base / sizeof base[0]; i++)
    argv[n++] = (char *)base[i];
  for (int i = 0; extra != NULL && extra[i] != NULL && n < 62; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  long long closed0 = q_int(b, closed_sql);
  pid_t pid;
  fl_sup_spawn_opts so = {.log_path = log};
  if (fl_sup_spawn(&pid, argv, &so) != FL_OK)
    die("fl-sim");
  snap s0 = {0}, s1 = {0};
  bool started = false;
  long long first = 0;
  for (;;) {
    long long c = q_int(b, closed_sql) - closed0;
    if (!started && c >= warmup) {
      s0 = take(b);
      first = q_int(b, "SELECT coalesce(max(round_id), 0) FROM rounds WHERE state <> 'open'");
      PQclear(q(b, "SELECT pg_stat_statements_reset()"));
      started = true;
    }
    if (started && c >= rounds) {
      s1 = take(b);
      break;
    }
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      fprintf(stderr, "bench_pgcost: fl-sim ended before its rounds closed, see %s\n", log);
      exit(1);
    }
    fl_sup_sleep_ms(50);
  }
  char sql[200];
  snprintf(sql, sizeof sql,
           "SELECT coalesce(sum(accepted), 0) FROM rounds WHERE round_id > %lld"
           " AND state <> 'open'",
           first);
  double dr = (double)q_int(b, sql), nr = rounds - warmup;
  double tck = (double)sysconf(_SC_CLK_TCK);
  double cc = (double)(s1.coord - s0.coord) / tck, pc = (double)(s1.pg - s0.pg) / tck;
  double wal = (double)(s1.wal - s0.wal) / 1e6;
  printf("fleet: %d devices, rounds %d..%d measured (%.0f device rounds)\n", devices, warmup + 1,
         rounds, dr);
  printf("  %-34s %10s %10s\n", "", "per round", "per dev-rnd");
  printf("  %-34s %8.2f s %7.3f ms\n", "CPU coordinator", cc / nr, cc * 1e3 / dr);
  printf("  %-34s %8.2f s %7.3f ms\n", "CPU PostgreSQL (all processes)", pc / nr, pc * 1e3 / dr);
  printf("  %-34s %8.2f s %7.3f ms\n", "CPU coordinator + PostgreSQL", (cc + pc) / nr,
         (cc + pc) * 1e3 / dr);
  printf("  %-34s %7.1f MB %7.1f kB\n", "WAL", wal / nr, wal * 1e3 / dr);
  printf("  %-34s %7.1f MB %7.1f kB\n", "  of which full-page images (<=)",
         (double)(s1.fpi - s0.fpi) * 8192 / 1e6 / nr, (double)(s1.fpi - s0.fpi) * 8.192 / dr);
  top_statements(b, dr);
  fl_sup_terminate(pid, SIGTERM, 30000);
}

int main(int argc, char **argv) {
  int devices = 1000, rounds = 3, warmup = 1, checkins = 200;
  const char *coord = FL_COORDINATOR_BIN, *sim = FL_SIM_BIN;
  char **extra = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--") == 0) {
      extra = argv + i + 1;
      break;
    }
    if (v == NULL) {
      fprintf(stderr, "bench_pgcost: %s needs a value\n", a);
      return 2;
    }
    if (strcmp(a, "--devices") == 0)
      devices = atoi(v);
    else if (strcmp(a, "--rounds") == 0)
      rounds = atoi(v);
    else if (strcmp(a, "--warmup") == 0)
      warmup = atoi(v);
    else if (strcmp(a, "--checkins") == 0)
      checkins = atoi(v);
    else if (strcmp(a, "--coordinator") == 0)
      coord = v;
    else if (strcmp(a, "--sim") == 0)
      sim = v;
    else if (strcmp(a, "--coord-arg") == 0 && g_n_coord_args < 8)
      g_coord_args[g_n_coord_args++] = v;
    else {
      fprintf(stderr, "bench_pgcost: unknown option %s\n", a);
      return 2;
    }
    i++;
  }
  if (devices < 1 || rounds < 1 || warmup < 0 || warmup >= rounds || checkins < 1) {
    fprintf(stderr, "bench_pgcost: need devices >= 1, 0 <= warmup < rounds, checkins >= 1\n");
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  bench b = {0};
  start_cluster(&b);
  start_coordinator(&b, coord);
  double load = 0;
  FILE *la = fopen("/proc/loadavg", "r");
  if (la != NULL && fscanf(la, "%lf", &load) != 1)
    load = 0;
  if (la != NULL)
    fclose(la);
  printf("# bench_pgcost: coordinator %s", coord);
  for (int i = 0; i < g_n_coord_args; i++)
    printf(" %s", g_coord_args[i]);
  printf(", load %.2f\n", load);
  statements_per_checkin(&b, checkins);
  fleet(&b, sim, devices, rounds, warmup, extra);
  fl_sup_admin_free(b.admin);
  fl_sup_coord_stop(&b.coord, SIGTERM, 10000);
  PQfinish(b.mon);
  fl_sup_pg_stop(&b.pg);
  fl_sup_rmtree(b.dir);
  return 0;
}
