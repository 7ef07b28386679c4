/* The vibration scenario: streams have the promised shape and labels, motors differ from one
 * another, and the injected faults carry signal that a simple per-motor baseline can see. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "fl/err.h"
#include "sensor.h"

static sim_sensor gen(size_t devices, double fault_rate, uint64_t seed) {
  sim_sensor s;
  sim_sensor_opts o = {.n_devices = devices, .bins = 64, .n_train = 100, .n_calib = 20,
                       .n_test = 200, .fault_rate = fault_rate, .seed = seed};
  cr_assert_eq(sim_sensor_generate(&s, &o), FL_OK);
  return s;
}

Test(sim_sensor, shapes_and_labels) {
  sim_sensor s = gen(20, 0.1, 1);
  cr_assert_eq(s.train.n, 2000);
  cr_assert_eq(s.calib.n, 400);
  cr_assert_eq(s.test.n, 4000);
  cr_assert_eq(s.train.x_dim, 64);
  cr_assert_eq(s.test_part.offsets[20], 4000);
  for (size_t i = 0; i < s.train.n; i++)
    cr_assert_eq(s.train.labels[i], 0, "the training stream is normal operation only");
  for (size_t i = 0; i < s.calib.n; i++)
    cr_assert_eq(s.calib.labels[i], 0);
  size_t cnt[SIM_FAULT_COUNT] = {0};
  for (size_t i = 0; i < s.test.n; i++) {
    cr_assert(s.test.labels[i] >= 0 && s.test.labels[i] < SIM_FAULT_COUNT);
    cnt[s.test.labels[i]]++;
  }
  double rate = 1.0 - (double)cnt[0] / (double)s.test.n;
  cr_assert(fabs(rate - 0.1) < 0.025, "fault rate %g", rate);
  for (int f = 1; f < SIM_FAULT_COUNT; f++)
    cr_assert_gt(cnt[f], 40, "fault type %d drawn %zu times", f, cnt[f]);
  for (size_t i = 0; i < s.test.n * 64; i++)
    cr_assert(isfinite(s.test.x[i]));
  sim_sensor_free(&s);
}

static void device_mean(const fl_dataset *d, const sim_partition *p, size_t k, double *m) {
  memset(m, 0, 64 * sizeof(double));
  for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++)
    for (size_t j = 0; j < 64; j++)
      m[j] += d->x[p->index[i] * 64 + j] / (double)sim_partition_size(p, k);
}

Test(sim_sensor, motors_have_their_own_baseline) {
  sim_sensor s = gen(10, 0, 2);
  double m0[64], m1[64], between = 0, within = 0;
  device_mean(&s.train, &s.train_part, 0, m0);
  device_mean(&s.train, &s.train_part, 1, m1);
  for (size_t j = 0; j < 64; j++)
    between += (m0[j] - m1[j]) * (m0[j] - m1[j]);
  /* Spread of device 0's own spectra around its mean. */
  for (size_t i = 0; i < 100; i++)
    for (size_t j = 0; j < 64; j++)
      within += pow(s.train.x[i * 64 + j] - m0[j], 2) / 100.0;
  cr_assert_gt(between, 2 * within, "between motors %g, within one motor %g", between, within);
  sim_sensor_free(&s);
}

Test(sim_sensor, faults_are_detectable_against_the_baseline) {
  sim_sensor s = gen(10, 0.2, 3);
  float *score = malloc(s.test.n * sizeof(float));
  for (size_t k = 0; k < 10; k++) {
    double m[64];
    device_mean(&s.train, &s.train_part, k, m);
    for (size_t i = s.test_part.offsets[k]; i < s.test_part.offsets[k + 1]; i++) {
      double e = 0;
      for (size_t j = 0; j < 64; j++)
        e += pow(s.test.x[i * 64 + j] - m[j], 2);
      score[i] = (float)e;
    }
  }
  double auc = sim_auc(score, s.test.labels, s.test.n);
  cr_assert_gt(auc, 0.8, "distance to the motor's mean spectrum: AUC %g", auc);
  /* Yet not trivially: some faults are subtle against load variation. */
  cr_assert_lt(auc, 0.9999, "AUC %g", auc);
  free(score);
  sim_sensor_free(&s);
}

Test(sim_sensor, same_seed_same_streams) {
  sim_sensor a = gen(3, 0.1, 4), b = gen(3, 0.1, 4);
  cr_assert_eq(memcmp(a.test.x, b.test.x, a.test.n * 64 * sizeof(float)), 0);
  cr_assert_eq(memcmp(a.test.labels, b.test.labels, a.test.n * sizeof(int32_t)), 0);
  sim_sensor_free(&a);
  sim_sensor_free(&b);
}

Test(sim_sensor, rejects_bad_options) {
  sim_sensor s;
  sim_sensor_opts o = {.n_devices = 2, .bins = 8, .n_train = 1, .n_test = 1};
  cr_assert_eq(sim_sensor_generate(&s, &o), FL_E_INVAL);
  o.bins = 64;
  o.fault_rate = 1.5;
  cr_assert_eq(sim_sensor_generate(&s, &o), FL_E_INVAL);
}

Test(sim_sensor, standardise_uses_each_motors_own_normal_statistics) {
  sim_sensor s = gen(10, 0.2, 5), raw = gen(10, 0.2, 5);
  cr_assert_eq(sim_sensor_standardise(&s), FL_OK);
  for (size_t k = 0; k < 10; k++) {
    double m[64], sq[64] = {0};
    device_mean(&s.train, &s.train_part, k, m);
    for (size_t i = s.train_part.offsets[k]; i < s.train_part.offsets[k + 1]; i++)
      for (size_t j = 0; j < 64; j++)
        sq[j] += pow(s.train.x[i * 64 + j], 2) / 100.0;
    for (size_t j = 0; j < 64; j++) {
      cr_assert(fabs(m[j]) < 1e-4, "device %zu bin %zu mean %g", k, j, m[j]);
      cr_assert(fabs(sq[j] - 1) < 1e-3, "device %zu bin %zu variance %g", k, j, sq[j]);
    }
    /* The held-out rows of motor k went through motor k's map: an affine map per bin, the same
     * as its training rows' (two rows of a bin give its slope; a third must agree). */
    size_t a = s.train_part.offsets[k], t = s.test_part.offsets[k];
    for (size_t j = 0; j < 64; j++) {
      double slope = (s.train.x[a * 64 + j] - s.train.x[(a + 1) * 64 + j]) /
                     (raw.train.x[a * 64 + j] - raw.train.x[(a + 1) * 64 + j]);
      double want = s.train.x[a * 64 + j] + slope * (raw.test.x[t * 64 + j] - raw.train.x[a * 64 + j]);
      cr_assert(fabs(s.test.x[t * 64 + j] - want) < 1e-2 * (1 + fabs(want)),
                "device %zu bin %zu: %g, want %g", k, j, s.test.x[t * 64 + j], want);
    }
  }
  /* Against its own baseline, a faulty spectrum is far from zero in a motor's units. */
  float *score = malloc(s.test.n * sizeof(float));
  for (size_t i = 0; i < s.test.n; i++) {
    double e = 0;
    for (size_t j = 0; j < 64; j++)
      e += pow(s.test.x[i * 64 + j], 2);
    score[i] = (float)e;
  }
  double auc = sim_auc(score, s.test.labels, s.test.n);
  cr_assert_gt(auc, 0.95, "AUC %g", auc);
  free(score);
  sim_sensor_free(&s);
  sim_sensor_free(&raw);
}
