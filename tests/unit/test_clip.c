/* L2 clipping and Gaussian noise. */
#include <criterion/criterion.h>
#include <math.h>

#include "clip.h"

static double norm(const float *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)x[i] * x[i];
  return sqrt(s);
}

Test(clip, below_bound_untouched) {
  float x[2] = {3.0f, 4.0f};
  cr_assert_float_eq(fl__clip_l2(x, 2, 10.0), 5.0, 1e-12);
  cr_assert_eq(x[0], 3.0f);
  cr_assert_eq(x[1], 4.0f);
  cr_assert_float_eq(fl__clip_l2(x, 2, 5.0), 5.0, 1e-12);
  cr_assert_eq(x[0], 3.0f, "a norm equal to the bound is not clipped");
}

Test(clip, above_bound_scaled_keeping_direction) {
  float x[2] = {3.0f, 4.0f};
  double before = fl__clip_l2(x, 2, 1.0);
  cr_assert_float_eq(before, 5.0, 1e-12);
  cr_assert_leq(norm(x, 2), 1.0);
  cr_assert_float_eq(norm(x, 2), 1.0, 1e-5);
  cr_assert_float_eq(x[0] / x[1], 0.75, 1e-6);
}

Test(clip, result_never_exceeds_bound) {
  fl_rng r;
  fl__rng_seed(&r, 17);
  static float x[10007];
  for (int trial = 0; trial < 50; trial++) {
    for (size_t i = 0; i < 10007; i++)
      x[i] = (float)(fl__rng_normal(&r) * (1 + trial));
    double bound = 0.1 + trial * 0.37;
    fl__clip_l2(x, 10007, bound);
    cr_assert_leq(norm(x, 10007), bound, "trial %d", trial);
  }
}

Test(clip, zero_or_negative_bound_is_off) {
  float x[2] = {300.0f, 400.0f};
  fl__clip_l2(x, 2, 0.0);
  fl__clip_l2(x, 2, -1.0);
  fl__clip_l2(x, 2, NAN);
  cr_assert_eq(x[0], 300.0f);
  cr_assert_eq(x[1], 400.0f);
}

Test(clip, nonfinite_input_reported_not_hidden) {
  float x[3] = {1.0f, NAN, 2.0f};
  cr_assert(isnan(fl__clip_l2(x, 3, 1.0)));
  cr_assert_eq(x[0], 1.0f);
  float y[2] = {INFINITY, 1.0f};
  cr_assert(isinf(fl__clip_l2(y, 2, 1.0)));
  cr_assert_eq(y[1], 1.0f);
}

Test(clip, gaussian_noise_has_requested_stddev) {
  enum { N = 100000 };
  static float x[N];
  fl_rng r;
  fl__rng_seed(&r, 23);
  for (size_t i = 0; i < N; i++)
    x[i] = 1.0f;
  fl__add_gaussian(x, N, 0.5, &r);
  double s = 0, s2 = 0;
  for (size_t i = 0; i < N; i++) {
    s += x[i] - 1.0;
    s2 += (x[i] - 1.0) * (x[i] - 1.0);
  }
  double mean = s / N, var = s2 / N - mean * mean;
  cr_assert_lt(fabs(mean), 5 * 0.5 / sqrt(N));
  cr_assert_lt(fabs(var - 0.25), 5 * 0.25 * sqrt(2.0 / N));
}

Test(clip, zero_stddev_adds_nothing) {
  float x[2] = {1.0f, 2.0f};
  fl_rng r;
  fl__rng_seed(&r, 1);
  fl__add_gaussian(x, 2, 0.0, &r);
  fl__add_gaussian(x, 2, -3.0, &r);
  cr_assert_eq(x[0], 1.0f);
  cr_assert_eq(x[1], 2.0f);
}
