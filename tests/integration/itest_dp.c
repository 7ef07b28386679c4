/*
 * Differential privacy end to end (docs/PRIVACY.md) through the real coordinator:
 * - with a tiny noise multiplier the new version is base + the unweighted mean of the clipped
 *   deltas, whatever sample counts the devices report (a weighted mean would be far off);
 * - with a real one, the noise added over ~11k coordinates has the sd z * C / participants
 *   within 5% (and mean ~0);
 * - adaptive clipping moves the clip by the devices' signed bits, exactly when there is no
 *   noise, and uploads without the bit are refused;
 * - max_epsilon stops the plan before a round would exceed it, with an audit entry; the
 *   privacy block of GET /admin/v1/plans/{id} and of each version's metrics matches the
 *   accountant computed here.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "privacy/accountant.h"
#include "rng.h"

#define NDEV 6

static char g_db[64];
static fl_h_coord g_c;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_c);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
}

/* A model with about 11k parameters, so that the noise's sd is measured to ~0.7%. */
#define WIDE_SPEC                                                                              \
  "{\"input_shape\":[100],\"layers\":[{\"type\":\"dense\",\"units\":100},{\"type\":\"relu\"}," \
  "{\"type\":\"dense\",\"units\":10}],\"loss\":\"softmax_ce\"}"

static void checkin(const fl_h_device *d, uint64_t model_id, uint64_t round_id, double *clip) {
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(&g_c, d, model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK,
               "device %llu got no task", (unsigned long long)d->id);
  cr_assert_eq(resp->task->round_id, round_id);
  if (clip != NULL)
    *clip = resp->task->clip_norm;
  fl__v1__check_in_response__free_unpacked(resp, NULL);
}

static void upload_ok(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round_id,
                      const float *delta, uint64_t samples, int clip_state) {
  fl_h_resp r;
  fl_h_update_opts o = {.clip_state = clip_state};
  cr_assert_eq(fl_h_upload(&g_c, d, base, round_id, delta, samples, &o, &r), 0);
  cr_assert_eq(r.status, 200, "upload of device %llu: %ld %s", (unsigned long long)d->id, r.status,
               fl_h_error_reason(&r));
  fl_h_resp_free(&r);
}

static float *weights_of(uint64_t model_id, uint64_t v, Fl__V1__ModelVersion **mv_out, size_t *n) {
  Fl__V1__ModelVersion *mv;
  float *w;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, v, &mv), 0);
  cr_assert_eq(fl_h_weights(mv, &w, n), 0);
  if (mv_out != NULL)
    *mv_out = mv;
  else
    fl__v1__model_version__free_unpacked(mv, NULL);
  return w;
}

/* The delta as a device sends it after clipping to C (client/update.c's rule): scaled by
 * C / norm * (1 - 2^-20) when longer. */
static void clip_to(float *d, size_t n, double c) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)d[i] * d[i];
  s = sqrt(s);
  if (s > c)
    for (size_t i = 0; i < n; i++)
      d[i] = (float)(d[i] * (c / s * (1.0 - 0x1.0p-20)));
}

static json_t *plan_json(uint64_t plan_id) {
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/plans/%llu", (unsigned long long)plan_id);
  json_t *j = fl_h_admin_ok(&g_c, "GET", path, NULL);
  cr_assert_not_null(j, "GET %s", path);
  return j;
}

static uint64_t plan_of_round(uint64_t round_id) {
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT plan_id FROM rounds WHERE round_id = %llu",
           (unsigned long long)round_id);
  return (uint64_t)fl_h_db_int(g_db, sql);
}

/* The privacy block against the accountant. */
static void expect_privacy(const json_t *pv, double q, double z, uint64_t rounds, double delta) {
  cr_assert(json_is_object(pv), "no privacy block");
  double want = fl__dp_epsilon(q, z, rounds, delta, NULL);
  cr_expect_eq(json_integer_value(json_object_get(pv, "rounds")), (json_int_t)rounds);
  cr_expect(fabs(json_number_value(json_object_get(pv, "sampling_rate")) - q) < 1e-12);
  cr_expect(fabs(json_number_value(json_object_get(pv, "noise_multiplier")) - z) < 1e-12);
  cr_expect(fabs(json_number_value(json_object_get(pv, "delta")) - delta) < 1e-18);
  cr_expect(fabs(json_number_value(json_object_get(pv, "epsilon")) - want) < 1e-9 * want,
            "epsilon %g, accountant %g", json_number_value(json_object_get(pv, "epsilon")), want);
}

/* Five devices with wildly different sample counts and deltas, two longer than the clip: the
 * new version is base + the plain mean of the clipped deltas. With z = 1e-4 the noise sd on
 * the mean is 2e-5 * C: a 1e-3 tolerance is 50 sd, while the weighted mean differs by ~0.1. */
Test(dp, tiny_noise_gives_the_unweighted_mean_of_clipped_deltas, .init = setup, .fini = teardown) {
  const int n = 5;
  const double clip = 1.0;
  const uint64_t samples[5] = {1, 1000, 7, 50000, 3};
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_model_and_plan(&g_c, "dp_mean", FL_H_SMALL_SPEC,
                                   "{\"participants\":5,\"over_selection\":1,\"deadline_s\":600,"
                                   "\"clip_norm\":1,\"noise_multiplier\":0.0001}",
                                   &model_id, &round_id),
               0);
  Fl__V1__ModelVersion *base;
  size_t dim;
  float *w0 = weights_of(model_id, 1, &base, &dim), *u[5];
  double *mean = calloc(dim, sizeof *mean), *wmean = calloc(dim, sizeof *wmean), wsum = 0;
  for (int i = 0; i < n; i++) {
    fl_rng r;
    fl__rng_seed(&r, 100 + (uint64_t)i);
    u[i] = malloc(dim * sizeof *u[i]);
    /* Devices 1 and 3 are far beyond the clip (norm ~ 6.6), the others within it. */
    double amp = i == 1 || i == 3 ? 1.0 : 0.1;
    for (size_t k = 0; k < dim; k++)
      u[i][k] = (float)(amp * (2.0 * fl__rng_uniform(&r) - 1.0));
    clip_to(u[i], dim, clip);
    for (size_t k = 0; k < dim; k++) {
      mean[k] += u[i][k] / n;
      wmean[k] += u[i][k] * (double)samples[i];
    }
    wsum += (double)samples[i];
    checkin(&g_dev[i], model_id, round_id, NULL);
  }
  for (int i = 0; i < n; i++)
    upload_ok(&g_dev[i], base, round_id, u[i], samples[i], 0);
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_t *m = json_object_get(round, "metrics");
  cr_expect(fabs(json_number_value(json_object_get(m, "noise_stddev")) - 1e-4 * clip / n) < 1e-12);
  json_decref(round);
  float *w1 = weights_of(model_id, 2, NULL, &dim);
  double far = 0;
  for (size_t k = 0; k < dim; k++) {
    cr_assert(fabs((double)w1[k] - w0[k] - mean[k]) < 1e-3, "param %zu: step %.6g, mean %.6g", k,
              (double)w1[k] - w0[k], mean[k]);
    far = fmax(far, fabs(wmean[k] / wsum - mean[k]));
  }
  cr_assert(far > 0.02, "the weighted mean must differ for the test to mean something (%g)", far);
  /* q = 5 participants / 6 enrolled devices at plan start. */
  json_t *pj = plan_json(plan_of_round(round_id));
  cr_expect_eq(json_integer_value(json_object_get(pj, "population")), NDEV);
  expect_privacy(json_object_get(pj, "privacy"), 5.0 / NDEV, 1e-4, 1, 1e-5);
  json_decref(pj);
  for (int i = 0; i < n; i++)
    free(u[i]);
  free(w0);
  free(w1);
  free(mean);
  free(wmean);
  fl__v1__model_version__free_unpacked(base, NULL);
}

/* Zero deltas: the step is the noise alone. sd z * C / participants = 1.0 * 2 / 4 = 0.5. */
Test(dp, noise_sd_is_z_c_over_participants, .init = setup, .fini = teardown) {
  const int n = 4;
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_model_and_plan(&g_c, "dp_noise", WIDE_SPEC,
                                   "{\"participants\":4,\"over_selection\":1,\"deadline_s\":600,"
                                   "\"clip_norm\":2,\"noise_multiplier\":1.0}",
                                   &model_id, &round_id),
               0);
  Fl__V1__ModelVersion *base;
  size_t dim;
  float *w0 = weights_of(model_id, 1, &base, &dim);
  cr_assert_gt(dim, 10000);
  float *zero = calloc(dim, sizeof *zero);
  for (int i = 0; i < n; i++)
    checkin(&g_dev[i], model_id, round_id, NULL);
  for (int i = 0; i < n; i++)
    upload_ok(&g_dev[i], base, round_id, zero, 10 + (uint64_t)i, 0);
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_t *m = json_object_get(round, "metrics");
  expect_privacy(json_object_get(m, "privacy"), 4.0 / NDEV, 1.0, 1, 1e-5);
  json_decref(round);
  float *w1 = weights_of(model_id, 2, NULL, &dim);
  double s = 0, s2 = 0;
  for (size_t k = 0; k < dim; k++) {
    double x = (double)w1[k] - w0[k];
    s += x;
    s2 += x * x;
  }
  double mu = s / (double)dim, sd = sqrt(s2 / (double)dim - mu * mu), want = 1.0 * 2.0 / n;
  cr_expect(fabs(sd - want) < 0.05 * want, "empirical sd %.5f, z*C/n = %.5f", sd, want);
  cr_expect(fabs(mu) < 5 * want / sqrt((double)dim), "mean %.5f", mu);
  /* The version's metrics carry the same privacy block. */
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/models/%llu/versions", (unsigned long long)model_id);
  json_t *vs = fl_h_admin_ok(&g_c, "GET", path, NULL);
  cr_assert_not_null(vs);
  json_t *v2 = json_array_get(json_object_get(vs, "versions"), 1);
  expect_privacy(json_object_get(json_object_get(v2, "metrics"), "privacy"), 4.0 / NDEV, 1.0, 1,
                 1e-5);
  json_decref(vs);
  free(zero);
  free(w0);
  free(w1);
  fl__v1__model_version__free_unpacked(base, NULL);
}

/* Adaptive clipping with noise: the update sum gets z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2),
 * here z = 1, sigma_b = 1: z_delta = 1.1547, sd 1.1547 * 2 / 4 = 0.577 (15% above the 0.5 of
 * the fixed clip, so the measurement tells them apart); epsilon is charged at z = 1. */
Test(dp, adaptive_noise_uses_the_split_multiplier, .init = setup, .fini = teardown) {
  const int n = 4;
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_model_and_plan(&g_c, "dp_adaptive_noise", WIDE_SPEC,
                                   "{\"participants\":4,\"over_selection\":1,\"deadline_s\":600,"
                                   "\"clip_norm\":2,\"noise_multiplier\":1.0,"
                                   "\"clip_target_quantile\":0.5,\"clip_count_stddev\":1}",
                                   &model_id, &round_id),
               0);
  Fl__V1__ModelVersion *base;
  size_t dim;
  float *w0 = weights_of(model_id, 1, &base, &dim);
  float *zero = calloc(dim, sizeof *zero);
  for (int i = 0; i < n; i++)
    checkin(&g_dev[i], model_id, round_id, NULL);
  for (int i = 0; i < n; i++)
    upload_ok(&g_dev[i], base, round_id, zero, 10, FL__V1__CLIP_STATE__CLIP_STATE_UNCLIPPED);
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_t *m = json_object_get(round, "metrics");
  double zd = fl__dp_update_multiplier(1.0, 1.0), want = zd * 2.0 / n;
  cr_expect(fabs(zd - 1.0 / sqrt(0.75)) < 1e-12);
  cr_expect(fabs(json_number_value(json_object_get(m, "update_noise_multiplier")) - zd) < 1e-12);
  cr_expect(fabs(json_number_value(json_object_get(m, "noise_stddev")) - want) < 1e-12);
  expect_privacy(json_object_get(m, "privacy"), 4.0 / NDEV, 1.0, 1, 1e-5);
  /* The noised unclipped fraction: 4/4 + N(0, 1)/4; the clip moved by exp(-0.2 (b - 0.5)). */
  double b = json_number_value(json_object_get(m, "unclipped_fraction"));
  cr_expect(fabs(json_number_value(json_object_get(m, "next_clip_norm")) -
                 2.0 * exp(-0.2 * (b - 0.5))) < 1e-9);
  json_decref(round);
  float *w1 = weights_of(model_id, 2, NULL, &dim);
  double s = 0, s2 = 0;
  for (size_t k = 0; k < dim; k++) {
    double x = (double)w1[k] - w0[k];
    s += x;
    s2 += x * x;
  }
  double mu = s / (double)dim, sd = sqrt(s2 / (double)dim - mu * mu);
  cr_expect(fabs(sd - want) < 0.05 * want, "empirical sd %.5f, z_delta*C/n = %.5f", sd, want);
  free(zero);
  free(w0);
  free(w1);
  fl__v1__model_version__free_unpacked(base, NULL);
}

/* Adaptive clipping without noise: 3 of 4 devices report unclipped, target quantile 0.5, rate
 * 0.2: the next clip is C exp(-0.2 (0.75 - 0.5)), in the plan and in the next task; an upload
 * without the bit is refused. */
Test(dp, adaptive_clip_follows_the_devices_bits, .init = setup, .fini = teardown) {
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_model_and_plan(&g_c, "dp_adaptive", FL_H_SMALL_SPEC,
                                   "{\"participants\":4,\"over_selection\":1,\"deadline_s\":600,"
                                   "\"clip_norm\":2,\"clip_target_quantile\":0.5,"
                                   "\"clip_learning_rate\":0.2}",
                                   &model_id, &round_id),
               0);
  Fl__V1__ModelVersion *base;
  size_t dim;
  float *w0 = weights_of(model_id, 1, &base, &dim);
  float *d = calloc(dim, sizeof *d);
  d[0] = 0.5f;
  double c0 = 0;
  for (int i = 0; i < 4; i++)
    checkin(&g_dev[i], model_id, round_id, &c0);
  cr_assert_float_eq(c0, 2.0, 1e-6);
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_c, &g_dev[0], base, round_id, d, 10, NULL, &r), 0);
  cr_expect_eq(r.status, 422);
  cr_expect_str_eq(fl_h_error_reason(&r), "missing_clip_state");
  fl_h_resp_free(&r);
  for (int i = 0; i < 4; i++)
    upload_ok(
        &g_dev[i], base, round_id, d, 10,
        i == 3 ? FL__V1__CLIP_STATE__CLIP_STATE_CLIPPED : FL__V1__CLIP_STATE__CLIP_STATE_UNCLIPPED);
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_t *m = json_object_get(round, "metrics");
  double want = 2.0 * exp(-0.2 * (0.75 - 0.5));
  cr_expect(fabs(json_number_value(json_object_get(m, "unclipped_fraction")) - 0.75) < 1e-12);
  cr_expect(fabs(json_number_value(json_object_get(m, "clip_norm")) - 2.0) < 1e-12);
  cr_expect(fabs(json_number_value(json_object_get(m, "next_clip_norm")) - want) < 1e-12);
  cr_expect(json_is_null(json_object_get(m, "privacy")) || !json_object_get(m, "privacy"));
  json_decref(round);
  json_t *pj = plan_json(plan_of_round(round_id));
  cr_expect(fabs(json_number_value(json_object_get(json_object_get(pj, "config"), "clip_norm")) -
                 want) < 1e-12);
  cr_expect(json_is_null(json_object_get(pj, "privacy")));
  json_decref(pj);
  /* The next round's task carries the new clip. */
  json_t *rounds = fl_h_admin_ok(&g_c, "GET", "/admin/v1/rounds", NULL);
  cr_assert_not_null(rounds);
  json_decref(rounds);
  double c1 = 0;
  checkin(&g_dev[4], model_id, round_id + 1, &c1);
  cr_expect(fabs(c1 - want) < 1e-6 * want, "task clip %g, want %g", c1, want);
  free(d);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}

/* q = 2/6, z = 1: max_epsilon between the epsilon of 2 rounds and that of 3. Round 2's close
 * stops the plan (no round 3), with an audit entry naming the reason; a budget below one
 * round's epsilon is refused at creation. */
Test(dp, max_epsilon_stops_the_plan, .init = setup, .fini = teardown) {
  double q = 2.0 / NDEV, e1 = fl__dp_epsilon(q, 1.0, 1, 1e-5, NULL);
  double e2 = fl__dp_epsilon(q, 1.0, 2, 1e-5, NULL), e3 = fl__dp_epsilon(q, 1.0, 3, 1e-5, NULL);
  cr_assert(e1 < e2 && e2 < e3);
  double budget = 0.5 * (e2 + e3);
  char plan[256];
  long status;
  snprintf(plan, sizeof plan,
           "{\"participants\":2,\"over_selection\":1,\"deadline_s\":600,\"clip_norm\":1,"
           "\"noise_multiplier\":1,\"max_epsilon\":%.6f}",
           0.5 * e1);
  json_t *mj = fl_h_admin_ok(&g_c, "POST", "/admin/v1/models",
                             "{\"name\":\"dp_budget\",\"spec\":" FL_H_SMALL_SPEC ",\"seed\":1}");
  cr_assert_not_null(mj);
  uint64_t model_id = (uint64_t)json_integer_value(json_object_get(mj, "model_id"));
  json_decref(mj);
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/models/%llu/plans", (unsigned long long)model_id);
  json_t *bad = fl_h_admin(&g_c, "POST", path, plan, &status);
  cr_expect_eq(status, 400);
  cr_expect(strstr(json_string_value(json_object_get(bad, "message")), "max_epsilon") != NULL);
  json_decref(bad);
  snprintf(plan, sizeof plan,
           "{\"participants\":2,\"over_selection\":1,\"deadline_s\":600,\"clip_norm\":1,"
           "\"noise_multiplier\":1,\"max_epsilon\":%.6f}",
           budget);
  json_t *pj = fl_h_admin_ok(&g_c, "POST", path, plan);
  cr_assert_not_null(pj);
  uint64_t plan_id = (uint64_t)json_integer_value(json_object_get(pj, "plan_id"));
  uint64_t round_id = (uint64_t)json_integer_value(json_object_get(pj, "round_id"));
  json_decref(pj);
  float *zero = NULL;
  for (int k = 0; k < 2; k++) {
    Fl__V1__ModelVersion *base;
    size_t dim;
    float *w = weights_of(model_id, 1 + (uint64_t)k, &base, &dim);
    free(w);
    if (zero == NULL)
      zero = calloc(dim, sizeof *zero);
    for (int i = 0; i < 2; i++)
      checkin(&g_dev[2 * k + i], model_id, round_id, NULL);
    for (int i = 0; i < 2; i++)
      upload_ok(&g_dev[2 * k + i], base, round_id, zero, 5, 0);
    json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 20000);
    cr_assert_not_null(round, "round %d did not close", k + 1);
    json_decref(round);
    fl__v1__model_version__free_unpacked(base, NULL);
    round_id++;
  }
  /* flctl shows the epsilon spent, for the plan and for each version. */
  char cmd[512], out[8192], want[96];
  snprintf(cmd, sizeof cmd,
           "%s --url %s --token %s plans get %llu && %s --url %s --token %s"
           " versions list %llu",
           FL_FLCTL_BIN, g_c.url, g_c.admin_token, (unsigned long long)plan_id, FL_FLCTL_BIN,
           g_c.url, g_c.admin_token, (unsigned long long)model_id);
  FILE *fp = popen(cmd, "r");
  cr_assert_not_null(fp);
  size_t got = fread(out, 1, sizeof out - 1, fp);
  out[got] = '\0';
  cr_assert_eq(pclose(fp), 0, "flctl failed: %s", out);
  snprintf(want, sizeof want, "epsilon %.4g at delta 1e-05 after 2 rounds", e2);
  cr_expect(strstr(out, want) != NULL, "flctl output lacks \"%s\":\n%s", want, out);
  cr_expect(strstr(out, "EPSILON") != NULL, "%s", out);
  snprintf(want, sizeof want, "%g", e1);
  cr_expect(strstr(out, want) != NULL, "versions list lacks round 1's epsilon %s:\n%s", want, out);
  json_t *p = plan_json(plan_id);
  cr_expect_str_eq(json_string_value(json_object_get(p, "state")), "stopped");
  cr_expect_eq(json_integer_value(json_object_get(p, "rounds_done")), 2);
  expect_privacy(json_object_get(p, "privacy"), q, 1.0, 2, 1e-5);
  json_decref(p);
  char sql[192];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM rounds WHERE plan_id = %llu",
           (unsigned long long)plan_id);
  cr_expect_eq(fl_h_db_int(g_db, sql), 2, "no third round opened");
  snprintf(sql, sizeof sql,
           "SELECT count(*) FROM audit_log WHERE action = 'plan.stop' AND actor = 'coordinator'"
           " AND target = 'plan:%llu' AND detail->>'reason' = 'max_epsilon'",
           (unsigned long long)plan_id);
  cr_expect_eq(fl_h_db_int(g_db, sql), 1, "audit entry of the budget stop");
  free(zero);
}
