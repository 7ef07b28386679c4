/*
 * Every aggregator end to end (FedAvg too: the plain mean, nothing stored): known deltas, outliers
 * among them, uploaded through the real coordinator produce version base + the rule's result,
 * computed here independently (sorting per coordinate, brute-force Krum scores); stored updates
 * stay as sent (float16 ones are stored at float16 size) and are removed with the round; a
 * coordinator killed with SIGKILL during a stored-update round loses no acknowledged update.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "rng.h"

#define NDEV 9

static char g_db[64];
static fl_h_coord g_c;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_c);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
}

/* Honest deltas are multiples of 1/64 in [-1/4, 1/4] (exact in float16); devices 0 and 3 are
 * outliers, still inside the norm bound of the plans (clip_norm 100, 43 parameters). */
static float *make_delta(size_t n, int dev, uint64_t seed) {
  fl_rng r;
  float *d = malloc(n * sizeof *d);
  cr_assert_not_null(d);
  fl__rng_seed(&r, seed * 131 + (uint64_t)dev);
  for (size_t i = 0; i < n; i++) {
    if (dev == 0)
      d[i] = 2.0f;
    else if (dev == 3)
      d[i] = i % 2 ? -1.5f : 1.75f;
    else
      d[i] = (float)((int)fl__rng_below(&r, 33) - 16) / 64.0f;
  }
  return d;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* ---- the rules, independently: sort per coordinate, brute-force distances --------------- */

static void expect_median(float *const *u, int n, size_t dim, double *out) {
  double v[NDEV];
  for (size_t c = 0; c < dim; c++) {
    for (int i = 0; i < n; i++)
      v[i] = u[i][c];
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    out[c] = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  }
}

static void expect_trimmed(float *const *u, int n, size_t dim, double beta, double *out) {
  double v[NDEV];
  int t = (int)floor(beta * n);
  for (size_t c = 0; c < dim; c++) {
    double s = 0;
    for (int i = 0; i < n; i++)
      v[i] = u[i][c];
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    for (int i = t; i < n - t; i++)
      s += v[i];
    out[c] = s / (n - 2 * t);
  }
}

static double sqdist(const float *a, const float *b, size_t dim) {
  double s = 0;
  for (size_t c = 0; c < dim; c++)
    s += ((double)a[c] - b[c]) * ((double)a[c] - b[c]);
  return s;
}

/* Krum score of member i among the members listed in set[0..m): the sum of its m - f - 2
 * smallest squared distances to the others. */
static double krum_score(float *const *u, const int *set, int m, int i, int f, size_t dim) {
  double d[NDEV], s = 0;
  int k = 0;
  for (int j = 0; j < m; j++)
    if (set[j] != set[i])
      d[k++] = sqdist(u[set[i]], u[set[j]], dim);
  qsort(d, (size_t)k, sizeof *d, cmp_double);
  for (int j = 0; j < m - f - 2; j++)
    s += d[j];
  return s;
}

/* The `want` members with the lowest scores, scored once (Krum, Multi-Krum) or again among
 * what remains after each pick (Bulyan). */
static int krum_pick(float *const *u, int n, int f, int want, bool repeat, size_t dim,
                     int *picked) {
  int left[NDEV], m = n;
  double score[NDEV];
  for (int i = 0; i < n; i++)
    left[i] = i;
  for (int i = 0; i < n; i++)
    score[i] = krum_score(u, left, n, i, f, dim);
  for (int got = 0; got < want; got++) {
    if (repeat)
      for (int i = 0; i < m; i++)
        score[i] = krum_score(u, left, m, i, f, dim);
    int best = 0;
    for (int i = 1; i < m; i++)
      if (score[i] < score[best])
        best = i;
    picked[got] = left[best];
    for (int i = best; i + 1 < m; i++) {
      left[i] = left[i + 1];
      score[i] = score[i + 1];
    }
    m--;
  }
  return want;
}

static void mean_of(float *const *u, const int *rows, int m, size_t dim, double *out) {
  for (size_t c = 0; c < dim; c++) {
    double s = 0;
    for (int i = 0; i < m; i++)
      s += u[rows[i]][c];
    out[c] = s / m;
  }
}

static void expect_bulyan(float *const *u, int n, int f, size_t dim, double *out) {
  int sel[NDEV], theta = krum_pick(u, n, f, n - 2 * f, true, dim, sel), beta = theta - 2 * f;
  for (size_t c = 0; c < dim; c++) {
    double v[NDEV], med, dist[NDEV], s = 0;
    for (int i = 0; i < theta; i++)
      v[i] = u[sel[i]][c];
    qsort(v, (size_t)theta, sizeof *v, cmp_double);
    med = theta % 2 ? v[theta / 2] : 0.5 * (v[theta / 2 - 1] + v[theta / 2]);
    /* The beta values nearest the median: sort by distance, keep the first beta. */
    for (int i = 0; i < theta; i++)
      dist[i] = fabs(v[i] - med);
    for (int k = 0; k < beta; k++) {
      int best = -1;
      for (int i = 0; i < theta; i++)
        if (dist[i] >= 0 && (best < 0 || dist[i] < dist[best]))
          best = i;
      s += v[best];
      dist[best] = -1;
    }
    out[c] = s / beta;
  }
}

/* ---- the coordinator side ------------------------------------------------------------------ */

static void checkin(const fl_h_device *d, uint64_t model_id, uint64_t round_id) {
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(&g_c, d, model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK,
               "device %llu got no task", (unsigned long long)d->id);
  cr_assert_eq(resp->task->round_id, round_id);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
}

static long upload(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round_id,
                   const float *delta, int encoding, bool *duplicate) {
  fl_h_resp r;
  fl_h_update_opts o = {.encoding = encoding};
  long status = -1;
  if (fl_h_upload(&g_c, d, base, round_id, delta, 10, &o, &r) == 0) {
    status = r.status;
    Fl__V1__UpdateAck *ack =
        r.status == 200 ? fl__v1__update_ack__unpack(NULL, r.len, r.data) : NULL;
    if (duplicate != NULL)
      *duplicate = ack != NULL && ack->duplicate;
    fl__v1__update_ack__free_unpacked(ack, NULL);
    fl_h_resp_free(&r);
  }
  return status;
}

#define db_int(...) fl_h_db_intf(g_db, __VA_ARGS__)

/* Version v of the model must be w0 + expect (the default server optimizer, fedavg with
 * server_lr 1, adds the aggregate). */
static void expect_version(uint64_t model_id, uint64_t v, const float *w0, const double *expect,
                           size_t dim, const char *what) {
  Fl__V1__ModelVersion *mv;
  float *w;
  size_t m;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, v, &mv), 0);
  cr_assert_eq(fl_h_weights(mv, &w, &m), 0);
  cr_assert_eq(m, dim);
  for (size_t i = 0; i < dim; i++) {
    double e = (double)w0[i] + (double)(float)expect[i];
    cr_assert(fabs(w[i] - e) <= 1e-6 + 1e-6 * fabs(e), "%s, param %zu: %.9g, want %.9g", what, i,
              w[i], e);
  }
  free(w);
  fl__v1__model_version__free_unpacked(mv, NULL);
}

typedef struct rule_case {
  const char *name, *plan; /* plan: the aggregator's fields */
  int n, encoding;
} rule_case;

static void run_case(const rule_case *rc, int k) {
  char plan[256], name[32];
  uint64_t model_id, round_id;
  snprintf(name, sizeof name, "robust_%s", rc->name);
  snprintf(plan, sizeof plan,
           "{\"participants\":%d,\"deadline_s\":600,\"clip_norm\":100,\"over_selection\":1,%s}",
           rc->n, rc->plan);
  cr_assert_eq(fl_h_model_and_plan(&g_c, name, FL_H_SMALL_SPEC, plan, &model_id, &round_id), 0,
               "%s", plan);
  Fl__V1__ModelVersion *base;
  float *w0, *u[NDEV];
  size_t dim;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &dim), 0);
  for (int i = 0; i < rc->n; i++) {
    u[i] = make_delta(dim, i, 7 + (uint64_t)k);
    checkin(&g_dev[i], model_id, round_id);
  }
  for (int i = 0; i < rc->n; i++) {
    if (i == rc->n - 1 && strcmp(rc->name, "fedavg") == 0) {
      /* FedAvg streams: the accepted updates are folded into partial sums, none is stored. */
      cr_assert_eq(db_int("SELECT count(*) FROM round_updates WHERE round_id = %llu",
                          (unsigned long long)round_id),
                   0, "fedavg stored an update");
    } else if (i == rc->n - 1) {
      /* Before the last upload closes the round: the updates are stored as sent. */
      size_t per = rc->encoding == FL__V1__ENCODING__ENCODING_FLOAT16 ? 2 : 4;
      int64_t bytes = db_int(
          "SELECT sum(octet_length(delta)) FROM round_updates"
          " WHERE round_id = %llu",
          (unsigned long long)round_id);
      cr_assert_eq(bytes, (int64_t)((size_t)(rc->n - 1) * (4 * 32 + per * dim)),
                   "%s: stored bytes %lld", rc->name, (long long)bytes);
    }
    cr_assert_eq(upload(&g_dev[i], base, round_id, u[i], rc->encoding, NULL), 200, "%s dev %d",
                 rc->name, i);
  }
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round, "%s: round did not close", rc->name);
  json_t *metrics = json_object_get(round, "metrics");
  if (metrics != NULL && json_object_get(metrics, "aggregator") != NULL)
    cr_assert_str_eq(json_string_value(json_object_get(metrics, "aggregator")), rc->name);
  json_decref(round);

  double expect[64], mean[64];
  int rows[NDEV], all[NDEV];
  for (int i = 0; i < rc->n; i++)
    all[i] = i;
  if (strcmp(rc->name, "fedavg") == 0)
    mean_of(u, all, rc->n, dim, expect); /* every upload says 10 samples: the plain mean */
  else if (strcmp(rc->name, "median") == 0)
    expect_median(u, rc->n, dim, expect);
  else if (strcmp(rc->name, "trimmed_mean") == 0)
    expect_trimmed(u, rc->n, dim, 0.2, expect);
  else if (strcmp(rc->name, "krum") == 0)
    mean_of(u, rows, krum_pick(u, rc->n, 1, 1, false, dim, rows), dim, expect);
  else if (strcmp(rc->name, "multi_krum") == 0)
    mean_of(u, rows, krum_pick(u, rc->n, 1, 3, false, dim, rows), dim, expect);
  else
    expect_bulyan(u, rc->n, 1, dim, expect);
  /* The outliers pull the mean away: a coordinator that averaged would fail here. */
  mean_of(u, all, rc->n, dim, mean);
  double gap = 0;
  for (size_t c = 0; c < dim; c++)
    gap = fmax(gap, fabs(mean[c] - expect[c]));
  cr_assert(strcmp(rc->name, "fedavg") == 0 || gap > 0.1,
            "%s: the rule's result is too close to the mean to tell", rc->name);
  expect_version(model_id, 2, w0, expect, dim, rc->name);
  cr_assert_eq(db_int("SELECT count(*) FROM round_updates WHERE round_id = %llu",
                      (unsigned long long)round_id),
               0, "%s: stored updates are removed with the round", rc->name);
  for (int i = 0; i < rc->n; i++)
    free(u[i]);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}

Test(robust, each_rule_gives_its_result, .init = setup, .fini = teardown, .timeout = 300) {
  static const rule_case cases[] = {
      {"fedavg", "\"aggregator\":\"fedavg\"", 7, 0}, /* the mean, outliers and all */
      {"median", "\"aggregator\":\"median\"", 6, 0}, /* even n: mean of the middle two */
      {"trimmed_mean", "\"aggregator\":\"trimmed_mean\",\"trim_fraction\":0.2", 7,
       FL__V1__ENCODING__ENCODING_FLOAT16},
      {"krum", "\"aggregator\":\"krum\",\"byzantine\":1", 7, 0},
      {"multi_krum", "\"aggregator\":\"multi_krum\",\"byzantine\":1,\"krum_select\":3", 7, 0},
      {"bulyan", "\"aggregator\":\"bulyan\",\"byzantine\":1", 7, 0},
  };
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
    run_case(&cases[k], (int)k);
}

Test(robust, bad_aggregator_parameters_are_refused, .init = setup, .fini = teardown,
     .timeout = 120) {
  long status;
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  json_t *m = fl_h_admin_ok(&g_c, "POST", "/admin/v1/models",
                            "{\"name\":\"bad\",\"spec\":" FL_H_SMALL_SPEC ",\"seed\":1}");
  cr_assert_not_null(m);
  char path[96], body[256];
  snprintf(path, sizeof path, "/admin/v1/models/%lld/plans",
           (long long)json_integer_value(json_object_get(m, "model_id")));
  json_decref(m);
  snprintf(body, sizeof body,
           "{\"participants\":10,\"min_participants\":6,\"aggregator\":\"krum\",\"byzantine\":2}");
  json_t *e = fl_h_admin(&g_c, "POST", path, body, &status);
  cr_assert_eq(status, 400);
  cr_assert_str_eq(json_string_value(json_object_get(e, "error")), "bad_plan");
  json_decref(e);
  e = fl_h_admin(&g_c, "POST", path, "{\"aggregator\":\"geomedian\"}", &status);
  cr_assert_eq(status, 400);
  json_decref(e);
}

typedef struct job {
  const fl_h_device *d;
  const Fl__V1__ModelVersion *base;
  uint64_t round_id;
  const float *delta;
  long status;
} job;

static void *run_job(void *arg) {
  job *j = arg;
  j->status = upload(j->d, j->base, j->round_id, j->delta, 0, NULL);
  return NULL;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

Test(robust, sigkill_loses_no_acknowledged_stored_update, .init = setup, .fini = teardown,
     .timeout = 300) {
  uint64_t model_id, round_id;
  /* A gather window keeps uploads in flight when the kill comes. */
  static const char *const extra[] = {"--commit-interval=30", NULL};
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "crash", FL_H_SMALL_SPEC,
                                   "{\"participants\":9,\"deadline_s\":600,\"clip_norm\":100,"
                                   "\"over_selection\":1,\"aggregator\":\"median\"}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);
  Fl__V1__ModelVersion *base;
  float *w0, *u[NDEV];
  size_t dim;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &dim), 0);
  job jobs[NDEV];
  pthread_t th[NDEV];
  for (int i = 0; i < NDEV; i++) {
    u[i] = make_delta(dim, i, 99);
    checkin(&g_dev[i], model_id, round_id);
    jobs[i] = (job){&g_dev[i], base, round_id, u[i], -1};
  }
  /* Eight uploads at once (the ninth closes the round after the restart); kill as soon as
   * some have committed, with the others in flight. */
  for (int i = 0; i < NDEV - 1; i++)
    pthread_create(&th[i], NULL, run_job, &jobs[i]);
  for (int t = 0; t < 2000 && db_int("SELECT count(*) FROM round_updates") < 2; t++)
    sleep_ms(1);
  cr_assert_eq(fl_h_coord_stop(&g_c, SIGKILL), 128 + SIGKILL);
  for (int i = 0; i < NDEV - 1; i++)
    pthread_join(th[i], NULL);
  int acked = 0;
  for (int i = 0; i < NDEV - 1; i++) {
    if (jobs[i].status != 200)
      continue;
    acked++;
    cr_assert_eq(db_int("SELECT count(*) FROM round_updates WHERE round_id = %llu"
                        " AND device_id = %llu",
                        (unsigned long long)round_id, (unsigned long long)g_dev[i].id),
                 1, "device %d was answered 200 but its update is not stored", i);
  }
  int64_t stored = db_int("SELECT count(*) FROM round_updates");
  cr_assert_eq(
      stored,
      db_int("SELECT accepted FROM rounds WHERE round_id = %llu", (unsigned long long)round_id),
      "one stored update per acceptance");
  cr_log_info("acknowledged before the kill: %d, stored: %lld", acked, (long long)stored);

  cr_assert_eq(fl_h_coord_restart(&g_c), 0);
  for (int i = 0; i < NDEV; i++) {
    bool dup = false;
    if (jobs[i].status == 200)
      continue;
    cr_assert_eq(upload(&g_dev[i], base, round_id, u[i], 0, &dup), 200, "retry of device %d", i);
  }
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_decref(round);
  double expect[64];
  expect_median(u, NDEV, dim, expect);
  expect_version(model_id, 2, w0, expect, dim, "median after the crash");
  cr_assert_eq(db_int("SELECT count(*) FROM round_updates"), 0);
  cr_assert_eq(fl_h_coord_stop(&g_c, SIGTERM), 0);
  for (int i = 0; i < NDEV; i++)
    free(u[i]);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}

static fl_h_coord g_b;

static void teardown2(void) {
  fl_h_coord_cleanup(&g_b);
  teardown();
}

typedef struct job2 {
  const fl_h_coord *c;
  const fl_h_device *d;
  const Fl__V1__ModelVersion *base;
  uint64_t round_id;
  const float *delta;
  long status;
} job2;

static void *run_job2(void *arg) {
  job2 *j = arg;
  fl_h_resp r;
  j->status = -1;
  if (fl_h_upload(j->c, j->d, j->base, j->round_id, j->delta, 10, NULL, &r) == 0) {
    j->status = r.status;
    fl_h_resp_free(&r);
  }
  return NULL;
}

/* Stored updates committed through two replicas: the round closes once (one new version),
 * and that version is the median of every update, whichever replica took it. */
Test(robust, two_replicas_close_a_stored_round_once, .init = setup, .fini = teardown2,
     .timeout = 300) {
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_coord_start(&g_b, g_db, g_c.dir, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "replicas", FL_H_SMALL_SPEC,
                                   "{\"participants\":8,\"deadline_s\":600,\"clip_norm\":100,"
                                   "\"over_selection\":1,\"aggregator\":\"median\"}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, 8), 0);
  Fl__V1__ModelVersion *base;
  float *w0, *u[8];
  size_t dim;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &dim), 0);
  job2 jobs[8];
  pthread_t th[8];
  for (int i = 0; i < 8; i++) {
    u[i] = make_delta(dim, i, 55);
    checkin(&g_dev[i], model_id, round_id);
    jobs[i] = (job2){i % 2 ? &g_b : &g_c, &g_dev[i], base, round_id, u[i], -1};
  }
  for (int i = 0; i < 8; i++)
    pthread_create(&th[i], NULL, run_job2, &jobs[i]);
  for (int i = 0; i < 8; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(jobs[i].status, 200, "device %d", i);
  }
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_decref(round);
  cr_assert_eq(
      db_int("SELECT count(*) FROM versions WHERE model_id = %llu", (unsigned long long)model_id),
      2, "one close, one new version");
  cr_assert_eq(db_int("SELECT count(*) FROM rounds WHERE plan_id = (SELECT plan_id FROM rounds"
                      " WHERE round_id = %llu)",
                      (unsigned long long)round_id),
               2, "one next round");
  double expect[64];
  expect_median(u, 8, dim, expect);
  expect_version(model_id, 2, w0, expect, dim, "median through two replicas");
  cr_assert_eq(db_int("SELECT count(*) FROM round_updates"), 0);
  for (int i = 0; i < 8; i++)
    free(u[i]);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}

/* A stored update that no longer parses (here: overwritten in the database) cannot be
 * aggregated, now or on a retry: the round is abandoned with the reason, not retried forever,
 * its stored updates are removed, and the next round opens on the same base. */
Test(robust, unparsable_stored_update_abandons_the_round, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "corrupt", FL_H_SMALL_SPEC,
                                   "{\"participants\":3,\"deadline_s\":600,\"clip_norm\":100,"
                                   "\"over_selection\":1,\"aggregator\":\"median\"}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, 3), 0);
  Fl__V1__ModelVersion *base;
  float *w0, *u[3];
  size_t dim;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &dim), 0);
  for (int i = 0; i < 3; i++) {
    u[i] = make_delta(dim, i, 3);
    checkin(&g_dev[i], model_id, round_id);
  }
  for (int i = 0; i < 2; i++)
    cr_assert_eq(upload(&g_dev[i], base, round_id, u[i], 0, NULL), 200);
  cr_assert_eq(db_int("WITH c AS (UPDATE round_updates SET delta = '\\x0102'::bytea"
                      " WHERE device_id = %llu RETURNING 1) SELECT count(*) FROM c",
                      (unsigned long long)g_dev[1].id),
               1);
  cr_assert_eq(upload(&g_dev[2], base, round_id, u[2], 0, NULL), 200);
  json_t *round = fl_h_wait_round(&g_c, round_id, "abandoned", 20000);
  cr_assert_not_null(round);
  const char *reason = json_string_value(json_object_get(round, "reason"));
  cr_assert(reason != NULL && strncmp(reason, "bad_stored_update", 17) == 0, "reason %s",
            reason ? reason : "(none)");
  json_decref(round);
  cr_assert_eq(db_int("SELECT count(*) FROM round_updates"), 0);
  cr_assert_eq(
      db_int("SELECT count(*) FROM versions WHERE model_id = %llu", (unsigned long long)model_id),
      1, "no version from it");
  cr_assert_eq(db_int("SELECT count(*) FROM rounds WHERE state = 'open' AND base_version = 1"
                      " AND model_id = %llu",
                      (unsigned long long)model_id),
               1, "the next round opens on the same base");
  for (int i = 0; i < 3; i++)
    free(u[i]);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}
