/* Drift statistics and policy (server/drift/stats.c, policy.c): the checks of a device's
 * DriftStats, pooling (Chan's parallel Welford), PSI and the standardized mean shift against
 * values computed independently (Python's statistics module, two-pass, given below). The
 * plan's "drift" and "retrain" objects are tested with the plan (test_plan.c). */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "drift/stats.h"

/* Two-pass mean and M2 of rows x[n][2]: what one device would report for them. */
static void device_stats(const double (*x)[2], size_t n, fl_drift_stats *s) {
  fl__drift_init(s);
  s->count = n;
  s->devices = 1;
  s->n_feat = 2;
  for (int j = 0; j < 2; j++) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
      m += x[i][j];
    m /= (double)n;
    s->mean[j] = m;
    for (size_t i = 0; i < n; i++)
      s->m2[j] += (x[i][j] - m) * (x[i][j] - m);
  }
}

static const double A[3][2] = {{1, 10}, {2, 12}, {4, 9}};
static const double B[4][2] = {{3, 11}, {7, 8}, {5, 15}, {6, 10}};

Test(drift, pooled_mean_and_variance_match_all_rows) {
  fl_drift_stats a, b;
  device_stats(A, 3, &a);
  device_stats(B, 4, &b);
  cr_assert_eq(fl__drift_pool(&a, &b), 0);
  /* statistics.mean / statistics.variance over the 7 rows */
  cr_assert_float_eq(a.mean[0], 4.0, 1e-12);
  cr_assert_float_eq(fl__drift_var(&a, 0), 4.666666666666667, 1e-12);
  cr_assert_float_eq(a.mean[1], 10.714285714285714, 1e-12);
  cr_assert_float_eq(fl__drift_var(&a, 1), 5.2380952380952381, 1e-12);
  cr_assert_eq(a.count, 7);
  cr_assert_eq(a.devices, 2);
}

Test(drift, pool_into_empty_takes_layout_and_refuses_another) {
  fl_drift_stats e, a, c;
  fl__drift_init(&e);
  device_stats(A, 3, &a);
  cr_assert_eq(fl__drift_pool(&e, &a), 0);
  cr_assert_eq(e.count, 3);
  cr_assert_eq(e.n_feat, 2);
  fl__drift_init(&c);
  c.count = 5;
  c.n_feat = 3;
  cr_assert_eq(fl__drift_pool(&e, &c), -1);
  cr_assert_eq(e.count, 3, "a refused pool changes nothing");
}

Test(drift, psi_as_computed_by_hand) {
  fl_drift_stats r, s;
  fl__drift_init(&r);
  fl__drift_init(&s);
  r.n_bins = s.n_bins = 4;
  r.lo = s.lo = 0;
  r.hi = s.hi = 4;
  double rh[4] = {50, 30, 15, 5}, sh[4] = {20, 30, 30, 20};
  memcpy(r.hist, rh, sizeof rh);
  memcpy(s.hist, sh, sizeof sh);
  r.count = s.count = 100;
  /* sum (p - q) ln(p / q) */
  cr_assert_float_eq(fl__drift_psi(&s, &r), 0.58680345081422192, 1e-12);
  cr_assert_float_eq(fl__drift_psi(&r, &r), 0.0, 1e-15);
  /* empty bins floored at 1e-4 */
  double rh2[4] = {60, 40, 0, 0}, sh2[4] = {50, 40, 10, 0};
  memcpy(r.hist, rh2, sizeof rh2);
  memcpy(s.hist, sh2, sizeof sh2);
  cr_assert_float_eq(fl__drift_psi(&s, &r), 0.70831690804971092, 1e-12);
  s.hi = 5;
  cr_assert_eq(fl__drift_psi(&s, &r), -1, "different bins are not compared");
}

Test(drift, standardized_mean_shift) {
  fl_drift_stats r, s;
  device_stats(A, 3, &r);
  device_stats(B, 4, &s);
  /* |mean_B - mean_A| / stdev(A) */
  cr_assert_float_eq(fl__drift_shift(&s, &r, 0), 1.9094065395649331, 1e-12);
  cr_assert_float_eq(fl__drift_shift(&s, &r, 1), 0.43643578047198434, 1e-12);
  r.m2[0] = 0; /* a constant feature in training: the floor, not a division by zero */
  cr_assert(isfinite(fl__drift_shift(&s, &r, 0)));
}

static Fl__V1__DriftStats msg_of(double *mean, double *m2, size_t nf, uint64_t *hist, size_t nb,
                                 uint64_t count) {
  Fl__V1__DriftStats m = FL__V1__DRIFT_STATS__INIT;
  m.count = count;
  m.mean = mean;
  m.m2 = m2;
  m.n_mean = m.n_m2 = nf;
  m.score_hist = hist;
  m.n_score_hist = nb;
  m.score_lo = 0;
  m.score_hi = 1;
  return m;
}

Test(drift, checks_refuse_bad_statistics) {
  static double mean[FL_DRIFT_MAX_FEATURES + 1], m2[FL_DRIFT_MAX_FEATURES + 1];
  uint64_t hist[FL_DRIFT_MAX_BINS + 1] = {3, 7};
  char msg[160];
  Fl__V1__DriftStats m = msg_of(mean, m2, 2, hist, 2, 10);
  cr_assert_eq(fl__drift_check(&m, msg), 0, "%s", msg);
  m = msg_of(mean, m2, FL_DRIFT_MAX_FEATURES + 1, hist, 2, 10);
  cr_assert_eq(fl__drift_check(&m, msg), -1);
  cr_assert(strstr(msg, "at most 256") != NULL, "%s", msg);
  m = msg_of(mean, m2, 2, hist, FL_DRIFT_MAX_BINS + 1, 10);
  cr_assert_eq(fl__drift_check(&m, msg), -1);
  m = msg_of(mean, m2, 2, hist, 2, 11);
  cr_assert_eq(fl__drift_check(&m, msg), -1, "histogram does not sum to count");
  m = msg_of(mean, m2, 2, hist, 2, 0);
  cr_assert_eq(fl__drift_check(&m, msg), -1, "no example");
  m = msg_of(mean, m2, 2, hist, 2, 10);
  m.n_m2 = 1;
  cr_assert_eq(fl__drift_check(&m, msg), -1, "means and m2 differ in count");
  m2[1] = -1;
  m = msg_of(mean, m2, 2, hist, 2, 10);
  cr_assert_eq(fl__drift_check(&m, msg), -1, "negative m2");
  m2[1] = 0;
  mean[0] = NAN;
  cr_assert_eq(fl__drift_check(&m, msg), -1, "non-finite mean");
  mean[0] = 0;
  m.score_lo = 1;
  cr_assert_eq(fl__drift_check(&m, msg), -1, "empty range");
  m.score_lo = 0;
  m.anomalies = 11;
  cr_assert_eq(fl__drift_check(&m, msg), -1, "more anomalies than examples");
  uint64_t big[2] = {UINT64_MAX, 11};
  m = msg_of(mean, m2, 2, big, 2, 10);
  cr_assert_eq(fl__drift_check(&m, msg), -1, "a bin over count (no overflow)");
}

Test(drift, message_round_trip) {
  fl_drift_stats s, back;
  device_stats(A, 3, &s);
  s.n_bins = 2;
  s.hist[0] = 1;
  s.hist[1] = 2;
  s.hi = 1;
  Fl__V1__DriftStats m;
  uint64_t h[FL_DRIFT_MAX_BINS];
  fl__drift_to_msg(&s, &m, h);
  char msg[160];
  cr_assert_eq(fl__drift_check(&m, msg), 0, "%s", msg);
  fl__drift_from_msg(&back, &m);
  cr_assert_eq(back.count, 3);
  cr_assert_float_eq(back.m2[1], s.m2[1], 0);
  cr_assert_float_eq(back.hist[1], 2, 0);
}
