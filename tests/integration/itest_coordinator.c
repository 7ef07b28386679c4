/*
 * Coordinator integration tests: a full FedAvg round checked against an independent double
 * precision computation, and every refusal of the device API with its state unchanged.
 * Run under pg_virtualenv (see harness.h).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rng.h"

#define NDEV 5

static char g_db[64];
static fl_h_coord g_coord;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0, "coordinator start");
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
}

/* Deterministic deltas with entries in [-scale, scale). */
static float *make_delta(size_t n, uint64_t seed, double scale) {
  fl_rng r;
  float *d = malloc(n * sizeof *d);
  cr_assert_not_null(d);
  fl__rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++)
    d[i] = (float)(scale * (2.0 * fl__rng_uniform(&r) - 1.0));
  return d;
}

static long upload_status(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round,
                          const float *delta, uint64_t samples, const fl_h_update_opts *o,
                          char reason[64]) {
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_coord, d, base, round, delta, samples, o, &r), 0);
  long st = r.status;
  snprintf(reason, 64, "%s", st == 200 ? "" : fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  return st;
}

static Fl__V1__TrainTask *checkin_task(const fl_h_device *d, uint64_t model_id,
                                       Fl__V1__CheckInResponse **resp) {
  cr_assert_eq(fl_h_checkin(&g_coord, d, model_id, resp), 0);
  cr_assert_eq((*resp)->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK,
               "device %llu not selected", (unsigned long long)d->id);
  return (*resp)->task;
}

Test(coordinator, full_round_matches_weighted_mean, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round_id;
  const uint64_t samples[3] = {10, 30, 77};
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "fedavg", FL_H_SMALL_SPEC,
                                   "{\"participants\":3,\"over_selection\":1.34,"
                                   "\"deadline_s\":600,\"clip_norm\":5}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 4), 0);

  Fl__V1__CheckInResponse *resp[4];
  for (int i = 0; i < 4; i++) {
    Fl__V1__TrainTask *t = checkin_task(&g_dev[i], model_id, &resp[i]);
    cr_assert_eq(t->round_id, round_id);
    cr_assert_eq(t->base_version, 1);
    cr_assert_float_eq(t->clip_norm, 5.0f, 1e-6);
  }
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(memcmp(base->sha256.data, resp[0]->task->base_sha256.data, 32), 0);
  float *w0;
  size_t n;
  cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
  cr_assert_eq(n, 43);

  /* The independent reference: base + sum(n_k d_k) / sum(n_k), in double. */
  double *expect = calloc(n, sizeof *expect), total = 0;
  char reason[64];
  for (int k = 0; k < 3; k++) {
    float *d = make_delta(n, 100 + (uint64_t)k, 0.2);
    for (size_t i = 0; i < n; i++)
      expect[i] += (double)samples[k] * d[i];
    total += (double)samples[k];
    cr_assert_eq(upload_status(&g_dev[k], base, round_id, d, samples[k], NULL, reason), 200,
                 "upload %d refused: %s", k, reason);
    free(d);
  }
  for (size_t i = 0; i < n; i++)
    expect[i] = w0[i] + expect[i] / total;

  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 20000);
  cr_assert_not_null(round);
  cr_assert_eq(json_integer_value(json_object_get(round, "result_version")), 2);
  json_t *m = json_object_get(round, "metrics");
  cr_assert_eq(json_integer_value(json_object_get(m, "participants")), 3);
  cr_assert_eq(json_integer_value(json_object_get(m, "total_samples")), 117);
  cr_assert_float_eq(json_real_value(json_object_get(m, "mean_loss")), 0.5, 1e-6);
  json_decref(round);

  /* A late upload of the over-selected fourth device is refused. */
  float *late = make_delta(n, 999, 0.1);
  cr_assert_eq(upload_status(&g_dev[3], base, round_id, late, 5, NULL, reason), 409);
  cr_assert_str_eq(reason, "round_closed");
  free(late);

  Fl__V1__ModelVersion *v2;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[1], model_id, 2, &v2), 0, "v2 signature");
  cr_assert_eq(v2->parent_version, 1);
  cr_assert_eq(v2->round_id, round_id);
  float *w2;
  cr_assert_eq(fl_h_weights(v2, &w2, &n), 0);
  for (size_t i = 0; i < n; i++)
    cr_assert(fabs(w2[i] - expect[i]) <= 1e-6 + 1e-5 * fabs(expect[i]),
              "param %zu: %.9g vs %.9g", i, w2[i], expect[i]);

  /* ETag / If-None-Match. */
  fl_h_resp r;
  char etag[80];
  cr_assert_eq(fl_h_device_get(&g_coord, &g_dev[2], "/v1/models/1/versions/2", NULL, &r), 0);
  cr_assert_eq(r.status, 200);
  snprintf(etag, sizeof etag, "%s", r.etag);
  fl_h_resp_free(&r);
  fl_h_forge f = {.if_none_match = etag};
  cr_assert_eq(fl_h_device_get(&g_coord, &g_dev[2], "/v1/models/1/versions/2", &f, &r), 0);
  cr_assert_eq(r.status, 304);
  fl_h_resp_free(&r);

  /* The next round is open on version 2. */
  Fl__V1__CheckInResponse *next;
  Fl__V1__TrainTask *t = checkin_task(&g_dev[0], model_id, &next);
  cr_assert_eq(t->base_version, 2);
  cr_assert_neq(t->round_id, round_id);
  fl__v1__check_in_response__free_unpacked(next, NULL);

  for (int i = 0; i < 4; i++)
    fl__v1__check_in_response__free_unpacked(resp[i], NULL);
  fl__v1__model_version__free_unpacked(base, NULL);
  fl__v1__model_version__free_unpacked(v2, NULL);
  free(w0);
  free(w2);
  free(expect);
}
