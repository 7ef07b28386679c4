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

/* State that no refusal may change. */
typedef struct snapshot {
  int64_t accepted, partials, acceptances, versions, rounds;
} snapshot;

static snapshot snap(void) {
  snapshot s = {
      fl_h_db_int(g_db, "SELECT accepted FROM rounds WHERE round_id = 1"),
      fl_h_db_int(g_db, "SELECT count(*) FROM partials"),
      fl_h_db_int(g_db, "SELECT count(*) FROM acceptances"),
      fl_h_db_int(g_db, "SELECT count(*) FROM versions"),
      fl_h_db_int(g_db, "SELECT count(*) FROM rounds"),
  };
  return s;
}

static void expect_refusal(const char *what, const fl_h_device *d, const uint8_t *body,
                           size_t len, const fl_h_forge *f, long status, const char *reason) {
  snapshot before = snap();
  fl_h_resp r;
  cr_assert_eq(fl_h_device_post(&g_coord, d, "/v1/updates", body, len, f, &r), 0);
  cr_expect_eq(r.status, status, "%s: status %ld, expected %ld", what, r.status, status);
  const char *got = fl_h_error_reason(&r);
  cr_expect_str_eq(got, reason, "%s: reason %s, expected %s", what, got, reason);
  fl_h_resp_free(&r);
  snapshot after = snap();
  cr_expect_eq(memcmp(&before, &after, sizeof before), 0, "%s changed the state", what);
}

/* Packs an update of dev with options; the caller frees *buf. */
static void pack(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round,
                 const float *delta, uint64_t samples, const fl_h_update_opts *o, uint8_t **buf,
                 size_t *len) {
  cr_assert_eq(fl_h_update_pack(d, base, round, delta, samples, 0.25f, o, buf, len), 0);
}

Test(coordinator, refusals_change_nothing, .init = setup, .fini = teardown, .timeout = 120) {
  uint64_t model_id, round_id;
  uint8_t *buf;
  size_t len, n;
  float *w0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "refusals", FL_H_SMALL_SPEC,
                                   "{\"participants\":3,\"deadline_s\":600,\"clip_norm\":1}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(round_id, 1);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 5), 0);
  Fl__V1__CheckInResponse *resp[5];
  for (int i = 0; i < 5; i++)
    if (i != 2) /* device 2 never checks in: not assigned */
      checkin_task(&g_dev[i], model_id, &resp[i]);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
  float *ok = make_delta(n, 7, 0.05); /* norm about 0.19 < clip 1 */
  float *big = make_delta(n, 8, 1.0); /* norm about 3.8 > clip 1 */
  snapshot start = snap();
  cr_assert_eq(start.accepted, 0);
  cr_assert_eq(start.versions, 1);

  pack(&g_dev[0], base, round_id, ok, 10, NULL, &buf, &len);
  fl_h_forge f = {.corrupt_signature = true};
  expect_refusal("bad request signature", &g_dev[0], buf, len, &f, 401, "bad_signature");
  f = (fl_h_forge){.envelope_signature = true};
  expect_refusal("upload with an envelope signature", &g_dev[0], buf, len, &f, 400,
                 "malformed_request");
  f = (fl_h_forge){.timestamp_ms = 1000};
  expect_refusal("stale timestamp", &g_dev[0], buf, len, &f, 401, "stale_timestamp");
  f = (fl_h_forge){.device_id = 4242};
  expect_refusal("unknown device", &g_dev[0], buf, len, &f, 401, "unknown_device");
  static const uint8_t nonce[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  f = (fl_h_forge){.nonce = nonce, .nonce_len = sizeof nonce};
  fl_h_resp r;
  uint8_t ci[8];
  Fl__V1__CheckInRequest cr = FL__V1__CHECK_IN_REQUEST__INIT;
  size_t cn = fl__v1__check_in_request__pack(&cr, ci);
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[0], "/v1/checkin", ci, cn, &f, &r), 0);
  cr_assert_eq(r.status, 200);
  fl_h_resp_free(&r);
  expect_refusal("replayed nonce", &g_dev[0], buf, len, &f, 401, "replayed_nonce");
  expect_refusal("malformed body", &g_dev[0], (const uint8_t *)"\xff\xff\xff", 3, NULL, 400,
                 "malformed_request");
  free(buf);

  fl_h_update_opts o = {.corrupt_signature = true};
  pack(&g_dev[0], base, round_id, ok, 10, &o, &buf, &len);
  expect_refusal("bad update signature", &g_dev[0], buf, len, NULL, 401, "bad_signature");
  free(buf);
  pack(&g_dev[0], base, 777, ok, 10, NULL, &buf, &len);
  expect_refusal("unknown round", &g_dev[0], buf, len, NULL, 404, "unknown_round");
  free(buf);
  pack(&g_dev[2], base, round_id, ok, 10, NULL, &buf, &len);
  expect_refusal("not assigned", &g_dev[2], buf, len, NULL, 403, "not_assigned");
  free(buf);
  base->version = 2;
  pack(&g_dev[0], base, round_id, ok, 10, NULL, &buf, &len);
  base->version = 1;
  expect_refusal("wrong base version", &g_dev[0], buf, len, NULL, 409, "wrong_base_version");
  free(buf);
  o = (fl_h_update_opts){.drop_last_tensor = true};
  pack(&g_dev[0], base, round_id, ok, 10, &o, &buf, &len);
  expect_refusal("missing tensor", &g_dev[0], buf, len, NULL, 422, "bad_shape");
  free(buf);
  o = (fl_h_update_opts){.inject_nan = true};
  pack(&g_dev[0], base, round_id, ok, 10, &o, &buf, &len);
  expect_refusal("NaN value", &g_dev[0], buf, len, NULL, 422, "non_finite");
  free(buf);
  pack(&g_dev[0], base, round_id, big, 10, NULL, &buf, &len);
  expect_refusal("norm above the clip bound", &g_dev[0], buf, len, NULL, 422, "norm_exceeded");
  free(buf);
  pack(&g_dev[0], base, round_id, ok, 0, NULL, &buf, &len);
  expect_refusal("zero samples", &g_dev[0], buf, len, NULL, 422, "bad_sample_count");
  free(buf);

  json_t *rv = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/devices/4/revoke", "{}");
  cr_assert_not_null(rv);
  json_decref(rv);
  pack(&g_dev[3], base, round_id, ok, 10, NULL, &buf, &len);
  expect_refusal("revoked device", &g_dev[3], buf, len, NULL, 403, "device_revoked");
  free(buf);

  snapshot mid = snap();
  cr_assert_eq(memcmp(&start, &mid, sizeof start), 0);

  /* Idempotence: accepted once, the same update again is a duplicate acknowledgement, a
   * different one is refused. */
  pack(&g_dev[0], base, round_id, ok, 10, NULL, &buf, &len);
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[0], "/v1/updates", buf, len, NULL, &r), 0);
  cr_assert_eq(r.status, 200, "valid upload: %s", fl_h_error_reason(&r));
  Fl__V1__UpdateAck *ack = fl__v1__update_ack__unpack(NULL, r.len, r.data);
  cr_assert(ack != NULL && !ack->duplicate && ack->accepted_in_round == 1);
  fl__v1__update_ack__free_unpacked(ack, NULL);
  fl_h_resp_free(&r);
  snapshot one = snap();
  cr_assert_eq(one.accepted, 1);
  cr_assert_eq(one.acceptances, 1);
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[0], "/v1/updates", buf, len, NULL, &r), 0);
  cr_assert_eq(r.status, 200);
  ack = fl__v1__update_ack__unpack(NULL, r.len, r.data);
  cr_assert(ack != NULL && ack->duplicate);
  fl__v1__update_ack__free_unpacked(ack, NULL);
  fl_h_resp_free(&r);
  free(buf);
  snapshot dup = snap();
  cr_assert_eq(memcmp(&one, &dup, sizeof one), 0, "duplicate changed the state");
  float *other = make_delta(n, 9, 0.05);
  pack(&g_dev[0], base, round_id, other, 10, NULL, &buf, &len);
  expect_refusal("second different update", &g_dev[0], buf, len, NULL, 409,
                 "conflicting_update");
  free(buf);

  for (int i = 0; i < 5; i++)
    if (i != 2)
      fl__v1__check_in_response__free_unpacked(resp[i], NULL);
  fl__v1__model_version__free_unpacked(base, NULL);
  free(other);
  free(ok);
  free(big);
  free(w0);
}

/* FedAdam over two rounds: the optimizer state (m, v) carried in the database between rounds
 * gives the same weights as the update rule of Reddi et al. computed here in double. */
Test(coordinator, fedadam_state_persists_across_rounds, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round_id;
  const double b1 = 0.9, b2 = 0.99, tau = 1e-3, lr = 0.05;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "adam", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"deadline_s\":600,\"clip_norm\":10,"
                                   "\"server_optimizer\":\"fedadam\",\"server_lr\":0.05}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 1), 0);
  Fl__V1__ModelVersion *base;
  float *w;
  size_t n;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w, &n), 0);
  double *rw = calloc(n, sizeof *rw), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) {
    rw[i] = w[i];
    v[i] = tau * tau;
  }
  free(w);
  char reason[64];
  for (int r = 0; r < 2; r++) {
    Fl__V1__CheckInResponse *resp;
    Fl__V1__TrainTask *t = checkin_task(&g_dev[0], model_id, &resp);
    round_id = t->round_id;
    cr_assert_eq(t->base_version, (uint64_t)r + 1);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
    float *d = make_delta(n, 4000 + (uint64_t)r, 0.1);
    cr_assert_eq(upload_status(&g_dev[0], base, round_id, d, 8, NULL, reason), 200, "%s",
                 reason);
    for (size_t i = 0; i < n; i++) {
      m[i] = b1 * m[i] + (1 - b1) * d[i];
      v[i] = b2 * v[i] + (1 - b2) * (double)d[i] * d[i];
      rw[i] += lr * m[i] / (sqrt(v[i]) + tau);
    }
    free(d);
    json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 20000);
    cr_assert_not_null(round);
    json_decref(round);
    fl__v1__model_version__free_unpacked(base, NULL);
    cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, (uint64_t)r + 2, &base), 0);
    cr_assert_eq(fl_h_weights(base, &w, &n), 0);
    for (size_t i = 0; i < n; i++)
      cr_assert(fabs(w[i] - rw[i]) <= 1e-6 + 1e-5 * fabs(rw[i]), "round %d param %zu: %.9g vs %.9g",
                r, i, w[i], rw[i]);
    free(w);
  }
  fl__v1__model_version__free_unpacked(base, NULL);
  free(rw);
  free(m);
  free(v);
}
