/*
 * The device path's PostgreSQL cost (issue 12), against a real coordinator and a private
 * PostgreSQL cluster (so that it can be restarted):
 * - a check-in told to wait writes nothing synchronously: it completes while its device row
 *   is locked by another transaction, and devices.last_seen_at / running_version are written
 *   by the batched flush (store/seen.h) once the lock is gone;
 * - the registry cache (registry/rollouts.c) is invalidated by the generation counter: a
 *   channel, a rollout, a pin and a rollback made after the cache was loaded are honoured at
 *   the next check-in;
 * - migration 8: partials.sum is stored EXTERNAL, the generation counter moves on changes;
 *   migration 15: devices has a fillfactor of 70;
 * - prepared statements survive a PostgreSQL restart (the pool reconnects and prepares again);
 * - downloads are served from the shared packed version (the same bytes and ETag before and
 *   after the restart);
 * - statements per check-in (pg_stat_statements, top level): an assigned check-in that claims
 *   a place costs at most FL_ASSIGNED_MAX, one told to wait at most FL_WAIT_MAX, with the
 *   device's key cached (auth/keys.h); a revocation is honoured at the next request although
 *   the key is cached.
 */
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fl/err.h"
#include "flsupport/pg.h"
#include "harness.h"

#define NDEV 2
/* Statements of one check-in, measured over K of them (the assignment's share of its group
 * commit included: with check-ins one after the other each claim is a batch of its own). */
#define FL_ASSIGNED_MAX 2.0
#define FL_WAIT_MAX 1.0
#define K 8

static fl_sup_pg g_pg;
static char g_db[64];
static fl_h_coord g_c;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_sup_pg_start(&g_pg, NULL, "fl-cost-pg-", "itest_checkin_cost"), FL_OK,
               "private PostgreSQL cluster");
  /* pg_stat_statements needs preloading: counted statements per check-in. */
  char conf[400];
  snprintf(conf, sizeof conf, "%s/data/postgresql.conf", g_pg.dir);
  FILE *f = fopen(conf, "a");
  cr_assert_not_null(f);
  fprintf(f, "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = top\n");
  fclose(f);
  cr_assert_eq(fl_sup_pg_restart(&g_pg, "fast"), FL_OK);
  /* The harness and the coordinator reach the database through libpq's environment. */
  setenv("PGHOST", g_pg.dir, 1);
  setenv("PGPORT", "5432", 1);
  setenv("PGUSER", "fl", 1);
  setenv("PGDATABASE", "postgres", 1);
  unsetenv("PGPASSWORD");
  unsetenv("PGSERVICE");
  cr_assert_eq(fl_h_db_create(g_db), 0);
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);
}

static void teardown(void) {
  if (g_c.pid > 0)
    fl_h_coord_stop(&g_c, SIGKILL);
  fl_h_coord_cleanup(&g_c);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
  fl_sup_pg_stop(&g_pg);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int64_t db_int(const char *fmt, unsigned long long a) {
  char sql[512];
  snprintf(sql, sizeof sql, fmt, a);
  return fl_h_db_int(g_db, sql);
}

/* A check-in request with the running model and version the device reports. */
static Fl__V1__CheckInResponse *checkin_running(const fl_h_device *d, uint64_t model_id,
                                                uint64_t run_model, uint64_t run_version) {
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  ci.model_id = model_id;
  ci.running_model_id = run_model;
  ci.running_version = run_version;
  size_t n = fl__v1__check_in_request__get_packed_size(&ci);
  uint8_t *buf = malloc(n + 1);
  fl__v1__check_in_request__pack(&ci, buf);
  fl_h_resp r;
  int rc = fl_h_device_post(&g_c, d, "/v1/checkin", buf, n, NULL, &r);
  free(buf);
  if (rc != 0)
    return NULL;
  Fl__V1__CheckInResponse *resp =
      r.status == 200 ? fl__v1__check_in_response__unpack(NULL, r.len, (uint8_t *)r.data) : NULL;
  if (resp == NULL)
    fprintf(stderr, "check-in: HTTP %ld %s\n", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  return resp;
}

typedef struct checkin_job {
  const fl_h_device *d;
  Fl__V1__CheckInResponse *resp;
  volatile int done;
} checkin_job;

static void *run_checkin(void *arg) {
  checkin_job *j = arg;
  j->resp = checkin_running(j->d, 0, 7, 3);
  j->done = 1;
  return NULL;
}

Test(checkin_cost, told_to_wait_writes_last_seen_later, .init = setup, .fini = teardown,
     .timeout = 120) {
  /* Another transaction holds the device's row: a synchronous UPDATE in the check-in would
   * wait for it; the batched flush does, in the background, and the check-in does not. */
  char sql[160], conn_db[128];
  snprintf(conn_db, sizeof conn_db, "dbname=%s", g_db);
  PGconn *lock = PQconnectdb(conn_db);
  cr_assert_eq(PQstatus(lock), CONNECTION_OK, "%s", PQerrorMessage(lock));
  snprintf(sql, sizeof sql, "BEGIN; SELECT 1 FROM devices WHERE device_id = %llu FOR UPDATE",
           (unsigned long long)g_dev[0].id);
  PGresult *lr = PQexec(lock, sql);
  cr_assert_eq(PQresultStatus(lr), PGRES_TUPLES_OK, "%s", PQerrorMessage(lock));
  PQclear(lr);

  checkin_job job = {.d = &g_dev[0]};
  pthread_t t;
  cr_assert_eq(pthread_create(&t, NULL, run_checkin, &job), 0);
  for (int i = 0; i < 100 && !job.done; i++)
    sleep_ms(50);
  bool completed = job.done;
  PQclear(PQexec(lock, "COMMIT")); /* a blocked check-in (the defect) finishes now */
  PQfinish(lock);
  pthread_join(t, NULL);
  cr_assert(completed, "the check-in waited for the device row: it writes synchronously");
  cr_assert_not_null(job.resp);
  cr_assert_eq(job.resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY);
  cr_assert_str_eq(job.resp->retry->reason, "no_open_round");
  fl__v1__check_in_response__free_unpacked(job.resp, NULL);

  /* Written by the flush within about a second (FL_SEEN_FLUSH_MS) of the lock's release. */
  const char *q =
      "SELECT count(*) FROM devices WHERE device_id = %llu"
      " AND last_seen_at IS NOT NULL AND running_model_id = 7"
      " AND running_version = 3";
  int64_t n = 0;
  for (int i = 0; i < 60 && n != 1; i++) {
    sleep_ms(100);
    n = db_int(q, (unsigned long long)g_dev[0].id);
  }
  cr_assert_eq(n, 1, "last_seen_at and the running version were not written by the flush");
  /* The other device never checked in: nothing of it was written. */
  cr_assert_eq(db_int("SELECT count(*) FROM devices WHERE device_id = %llu"
                      " AND last_seen_at IS NULL",
                      (unsigned long long)g_dev[1].id),
               1);
}

/* One round of one device: version 2 of the model exists afterwards. */
static void make_version_2(uint64_t model_id, uint64_t round_id) {
  Fl__V1__CheckInResponse *resp = checkin_running(&g_dev[1], model_id, 0, 0);
  cr_assert_not_null(resp);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[1], model_id, 1, &base), 0);
  float delta[43];
  for (int i = 0; i < 43; i++)
    delta[i] = 0.01f;
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_c, &g_dev[1], base, round_id, delta, 4, NULL, &r), 0);
  cr_assert_eq(r.status, 200, "upload: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  fl__v1__model_version__free_unpacked(base, NULL);
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_decref(round);
}

/* The inference version a check-in of device 0 names (0: no rollout assignment) and its
 * rollout id. */
static uint64_t rollout_version(uint64_t model_id, uint64_t *rollout_id) {
  Fl__V1__CheckInResponse *resp = checkin_running(&g_dev[0], model_id, model_id, 1);
  cr_assert_not_null(resp);
  uint64_t v = resp->rollout ? resp->rollout->version : 0;
  *rollout_id = resp->rollout ? resp->rollout->rollout_id : 0;
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  return v;
}

static json_t *admin_post(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static json_t *admin_post(const char *path, const char *fmt, ...) {
  char body[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof body, fmt, ap);
  va_end(ap);
  json_t *j = fl_h_admin_ok(&g_c, "POST", path, body);
  cr_assert_not_null(j, "POST %s %s", path, body);
  return j;
}

Test(checkin_cost, registry_changes_reach_the_next_checkin, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round_id, rid;
  cr_assert_eq(fl_h_model_and_plan(&g_c, "reg", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"deadline_s\":600,\"clip_norm\":10}",
                                   &model_id, &round_id),
               0);
  make_version_2(model_id, round_id);
  int64_t gen0 = fl_h_db_int(g_db, "SELECT gen FROM registry_generation");
  /* The cache is loaded with no channels: nothing to run. */
  cr_assert_eq(rollout_version(model_id, &rid), 0);
  cr_assert_eq(rollout_version(model_id, &rid), 0);
  json_t *ch =
      admin_post("/admin/v1/channels", "{\"model_id\":%llu,\"name\":\"stable\",\"version\":1}",
                 (unsigned long long)model_id);
  json_decref(ch);
  cr_assert_gt(fl_h_db_int(g_db, "SELECT gen FROM registry_generation"), gen0);
  cr_assert_eq(rollout_version(model_id, &rid), 1, "a new channel is not honoured");
  cr_assert_eq(rid, 0);
  /* A rollout of version 2 to everybody, created while the cache says "no rollouts". */
  json_t *ro =
      admin_post("/admin/v1/rollouts",
                 "{\"model_id\":%llu,\"channel\":\"stable\",\"version\":2,\"percent\":100}",
                 (unsigned long long)model_id);
  uint64_t rollout = (uint64_t)json_integer_value(json_object_get(ro, "rollout_id"));
  json_decref(ro);
  cr_assert_gt(rollout, 0);
  cr_assert_eq(rollout_version(model_id, &rid), 2, "a new rollout is not honoured");
  cr_assert_eq(rid, rollout);
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/rollouts/%llu/rollback", (unsigned long long)rollout);
  json_decref(admin_post(path, "{}"));
  cr_assert_eq(rollout_version(model_id, &rid), 1, "a rollback is not honoured");
  cr_assert_eq(rid, 0);
  /* A pin of the device to version 2, then its removal. */
  json_t *pin = admin_post("/admin/v1/pins", "{\"model_id\":%llu,\"version\":2,\"device_id\":%llu}",
                           (unsigned long long)model_id, (unsigned long long)g_dev[0].id);
  uint64_t pin_id = (uint64_t)json_integer_value(json_object_get(pin, "pin_id"));
  json_decref(pin);
  cr_assert_eq(rollout_version(model_id, &rid), 2, "a new pin is not honoured");
  snprintf(path, sizeof path, "/admin/v1/pins/%llu", (unsigned long long)pin_id);
  json_decref(fl_h_admin_ok(&g_c, "DELETE", path, NULL));
  cr_assert_eq(rollout_version(model_id, &rid), 1, "a removed pin is still honoured");
  /* The channel moves to version 2: no rollout, no pin, answered from the reloaded cache. */
  json_decref(admin_post("/admin/v1/channels",
                         "{\"model_id\":%llu,\"name\":\"stable\",\"version\":2}",
                         (unsigned long long)model_id));
  cr_assert_eq(rollout_version(model_id, &rid), 2, "a moved channel is not honoured");
}

Test(checkin_cost, migration_storage_and_generation, .init = setup, .fini = teardown) {
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM pg_attribute"
                           " WHERE attrelid = 'partials'::regclass AND attname = 'sum'"
                           " AND attstorage = 'e'"),
               1, "partials.sum is not stored EXTERNAL");
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM schema_migrations WHERE version = 8"), 1);
  /* Migration 15: HOT room for the batched last-seen updates. */
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM pg_class WHERE relname = 'devices'"
                           " AND reloptions @> ARRAY['fillfactor=70']"),
               1, "devices has no fillfactor 70");
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM pg_trigger WHERE tgname IN"
                           " ('channels_generation', 'rollouts_generation',"
                           " 'pins_generation')"),
               3);
}

/* The download of version 1 by device d: status, ETag, body. */
static long download(const fl_h_device *d, uint64_t model_id, char etag[80], char **body,
                     size_t *len) {
  char path[96];
  fl_h_resp r;
  snprintf(path, sizeof path, "/v1/models/%llu/versions/1", (unsigned long long)model_id);
  cr_assert_eq(fl_h_device_get(&g_c, d, path, NULL, &r), 0);
  long st = r.status;
  snprintf(etag, 80, "%s", r.etag);
  if (body != NULL) {
    *body = malloc(r.len + 1);
    memcpy(*body, r.data, r.len);
    *len = r.len;
  }
  fl_h_resp_free(&r);
  return st;
}

Test(checkin_cost, prepared_statements_survive_a_postgres_restart, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round_id;
  char e1[80], e2[80];
  char *b1, *b2;
  size_t l1, l2;
  cr_assert_eq(fl_h_model_and_plan(&g_c, "restart", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"deadline_s\":600,\"clip_norm\":10}",
                                   &model_id, &round_id),
               0);
  Fl__V1__CheckInResponse *resp = checkin_running(&g_dev[0], model_id, 0, 0);
  cr_assert_not_null(resp);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  cr_assert_eq(download(&g_dev[0], model_id, e1, &b1, &l1), 200);
  cr_assert_eq(fl_sup_pg_restart(&g_pg, "immediate"), FL_OK, "pg_ctl restart -m immediate");
  /* Each pooled connection is found broken, reset, and its statements prepared again. A
   * request that meets the outage may get 503; the next ones are served. */
  int ok = 0;
  for (int i = 0; i < 40 && ok < 8; i++) {
    resp = checkin_running(&g_dev[i % 2], model_id, 0, 0);
    if (resp != NULL) {
      cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
      fl__v1__check_in_response__free_unpacked(resp, NULL);
      ok++;
    } else {
      sleep_ms(100);
    }
  }
  cr_assert_eq(ok, 8, "check-ins after the restart failed");
  /* The shared packed version: the same bytes and ETag for every download, 304 on a match. */
  cr_assert_eq(download(&g_dev[1], model_id, e2, &b2, &l2), 200);
  cr_assert_str_eq(e1, e2);
  cr_assert_eq(l1, l2);
  cr_assert_eq(memcmp(b1, b2, l1), 0);
  free(b1);
  free(b2);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT assigned FROM rounds ORDER BY round_id LIMIT 1"), 2,
               "a device took two slots");
}

/* One statement in the test's database (no result wanted). */
static void db_exec(const char *sql) {
  char conn[128];
  snprintf(conn, sizeof conn, "dbname=%s", g_db);
  PGconn *c = PQconnectdb(conn);
  cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
}

/* Top-level statements counted since the last reset, less the test's own. With `show`, they
 * are printed (to explain a failure). */
#define OTHERS " FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'"

static int64_t statements(bool show) {
  if (show) {
    char conn[128];
    snprintf(conn, sizeof conn, "dbname=%s", g_db);
    PGconn *c = PQconnectdb(conn);
    PGresult *r =
        PQexec(c, "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 100)" OTHERS
                  " ORDER BY calls DESC");
    for (int i = 0; i < PQntuples(r); i++)
      fprintf(stderr, "  %s  %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    PQclear(r);
    PQfinish(c);
  }
  return fl_h_db_int(g_db, "SELECT coalesce(sum(calls), 0)" OTHERS);
}

/* K check-ins of devs[from..from+K), one after the other; each answer is `want`'s. */
static double per_checkin(fl_h_device *devs, uint64_t model_id, int want, const char *reason) {
  db_exec("SELECT pg_stat_statements_reset()");
  for (int i = 0; i < K; i++) {
    Fl__V1__CheckInResponse *resp = checkin_running(&devs[i], model_id, 0, 0);
    cr_assert_not_null(resp);
    cr_assert_eq((int)resp->assignment_case, want, "check-in %d", i);
    if (reason != NULL)
      cr_assert_str_eq(resp->retry->reason, reason);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
  double n = (double)statements(false) / K;
  if (n > (reason ? FL_WAIT_MAX : FL_ASSIGNED_MAX))
    statements(true);
  return n;
}

Test(checkin_cost, statements_per_checkin, .init = setup, .fini = teardown, .timeout = 120) {
  static fl_h_device devs[2 * K];
  uint64_t model_id, round_id;
  /* The ticker's passes (every --tick) are not the check-ins': one a minute, none while the
   * check-ins are counted. */
  fl_h_coord_stop(&g_c, SIGTERM);
  fl_h_coord_cleanup(&g_c);
  static const char *const extra[] = {"--tick=60000", NULL};
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, extra), 0);
  db_exec("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
  cr_assert_eq(fl_h_enroll_devices(&g_c, devs, 2 * K), 0);
  /* A first check-in before any round: the keys are cached from here on. */
  for (int i = 0; i < 2 * K; i++) {
    Fl__V1__CheckInResponse *resp = checkin_running(&devs[i], 0, 0, 0);
    cr_assert_not_null(resp);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
  char plan[160];
  snprintf(plan, sizeof plan,
           "{\"participants\":%d,\"over_selection\":1,\"deadline_s\":600,\"clip_norm\":10}", K);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "count", FL_H_SMALL_SPEC, plan, &model_id, &round_id), 0);
  double assigned = per_checkin(devs, model_id, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK, NULL);
  double wait =
      per_checkin(devs + K, model_id, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY, "round_full");
  fprintf(stderr, "statements per check-in: assigned %.2f, told to wait %.2f\n", assigned, wait);
  cr_assert_leq(assigned, FL_ASSIGNED_MAX, "an assigned check-in costs %.2f statements", assigned);
  cr_assert_leq(wait, FL_WAIT_MAX, "a check-in told to wait costs %.2f statements", wait);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT assigned FROM rounds ORDER BY round_id LIMIT 1"), K);

  /* With the key cached, the fold's refusals are FL_AUTH_DEVICE's: a replayed nonce, and a
   * forged signature, which costs no statement at all. */
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  uint8_t buf[16], nonce[16] = {7, 7, 7};
  size_t n = fl__v1__check_in_request__pack(&ci, buf);
  fl_h_resp r;
  fl_h_forge fg = {.nonce = nonce, .nonce_len = sizeof nonce};
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(fl_h_device_post(&g_c, &devs[1], "/v1/checkin", buf, n, &fg, &r), 0);
    cr_assert_eq(r.status, i == 0 ? 200 : 401, "check-in %d with one nonce: %ld", i, r.status);
    if (i == 1)
      cr_assert_str_eq(fl_h_error_reason(&r), "replayed_nonce");
    fl_h_resp_free(&r);
  }
  db_exec("SELECT pg_stat_statements_reset()");
  fg = (fl_h_forge){.corrupt_signature = true};
  cr_assert_eq(fl_h_device_post(&g_c, &devs[1], "/v1/checkin", buf, n, &fg, &r), 0);
  cr_assert_eq(r.status, 401);
  cr_assert_str_eq(fl_h_error_reason(&r), "bad_signature");
  fl_h_resp_free(&r);
  cr_assert_eq(statements(true), 0, "a forged signature of a cached device cost statements");

  /* Revoked with its key cached: refused at once (the state is read with the nonce). */
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/devices/%llu/revoke", (unsigned long long)devs[0].id);
  json_t *j = fl_h_admin_ok(&g_c, "POST", path, "{}");
  cr_assert_not_null(j);
  json_decref(j);
  cr_assert_eq(fl_h_device_post(&g_c, &devs[0], "/v1/checkin", buf, n, NULL, &r), 0);
  cr_assert_eq(r.status, 403, "a revoked device checked in: %ld %s", r.status,
               fl_h_error_reason(&r));
  cr_assert_str_eq(fl_h_error_reason(&r), "device_revoked");
  fl_h_resp_free(&r);
  for (int i = 0; i < 2 * K; i++)
    fl_h_device_free(&devs[i]);
}
