/* Random numbers: reproducibility, distribution moments, unbiased ranges, secure mode. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "fl/err.h"
#include "rng.h"

#define N_DRAWS 200000

Test(rng, matches_reference_xoshiro256starstar) {
  /* Reference values from an independent implementation of splitmix64 + xoshiro256**. */
  fl_rng r;
  fl__rng_seed(&r, 42);
  cr_assert_eq(fl__rng_u64(&r), 0x15780b2e0c2ec716ULL);
  cr_assert_eq(fl__rng_u64(&r), 0x6104d9866d113a7eULL);
  cr_assert_eq(fl__rng_u64(&r), 0xae17533239e499a1ULL);
}

Test(rng, same_seed_same_sequence) {
  fl_rng a, b;
  fl__rng_seed(&a, 1234);
  fl__rng_seed(&b, 1234);
  for (int i = 0; i < 1000; i++) {
    cr_assert_eq(fl__rng_u64(&a), fl__rng_u64(&b));
    double na = fl__rng_normal(&a), nb = fl__rng_normal(&b);
    cr_assert(memcmp(&na, &nb, sizeof na) == 0);
    double ga = fl__rng_gamma(&a, 0.3), gb = fl__rng_gamma(&b, 0.3);
    cr_assert(memcmp(&ga, &gb, sizeof ga) == 0);
  }
}

Test(rng, different_seeds_differ) {
  fl_rng a, b;
  fl__rng_seed(&a, 1);
  fl__rng_seed(&b, 2);
  int same = 0;
  for (int i = 0; i < 100; i++)
    same += fl__rng_u64(&a) == fl__rng_u64(&b);
  cr_assert_eq(same, 0);
}

Test(rng, uniform_in_unit_interval_with_right_mean) {
  fl_rng r;
  fl__rng_seed(&r, 7);
  double sum = 0;
  for (int i = 0; i < N_DRAWS; i++) {
    double u = fl__rng_uniform(&r);
    cr_assert(u >= 0.0 && u < 1.0);
    sum += u;
  }
  /* sd of the mean is sqrt(1/12/N) ~ 0.00065; 5 sigma. */
  cr_assert_lt(fabs(sum / N_DRAWS - 0.5), 0.0033);
}

static void moments(fl_rng *r, double shape, double *mean, double *var) {
  double s = 0, s2 = 0;
  for (int i = 0; i < N_DRAWS; i++) {
    double x = shape > 0 ? fl__rng_gamma(r, shape) : fl__rng_normal(r);
    cr_assert(isfinite(x));
    s += x;
    s2 += x * x;
  }
  *mean = s / N_DRAWS;
  *var = s2 / N_DRAWS - *mean * *mean;
}

Test(rng, normal_mean_and_variance) {
  fl_rng r;
  fl__rng_seed(&r, 99);
  double mean, var;
  moments(&r, 0, &mean, &var);
  /* 5 sigma: sd(mean) = 1/sqrt(N), sd(var) ~ sqrt(2/N). */
  cr_assert_lt(fabs(mean), 5.0 / sqrt(N_DRAWS), "mean %g", mean);
  cr_assert_lt(fabs(var - 1.0), 5.0 * sqrt(2.0 / N_DRAWS), "var %g", var);
}

Test(rng, gamma_mean_and_variance) {
  const double shapes[] = {0.2, 0.5, 1.0, 2.0, 7.5};
  fl_rng r;
  fl__rng_seed(&r, 5);
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    double k = shapes[i], mean, var;
    moments(&r, k, &mean, &var);
    /* Gamma(k, 1): mean k, variance k; sd of the sample mean sqrt(k/N). */
    cr_assert_lt(fabs(mean - k), 5.0 * sqrt(k / N_DRAWS), "shape %g mean %g", k, mean);
    cr_assert_lt(fabs(var - k) / k, 0.05, "shape %g var %g", k, var);
  }
}

Test(rng, gamma_refuses_bad_shape) {
  fl_rng r;
  fl__rng_seed(&r, 5);
  cr_assert(isnan(fl__rng_gamma(&r, 0.0)));
  cr_assert(isnan(fl__rng_gamma(&r, -1.0)));
  cr_assert(isnan(fl__rng_gamma(&r, NAN)));
  cr_assert(isnan(fl__rng_gamma(&r, INFINITY)));
}

Test(rng, below_is_in_range_and_uniform) {
  fl_rng r;
  fl__rng_seed(&r, 11);
  int hist[7] = {0};
  for (int i = 0; i < 70000; i++) {
    uint64_t v = fl__rng_below(&r, 7);
    cr_assert_lt(v, 7);
    hist[v]++;
  }
  /* Chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile. */
  double chi = 0;
  for (int i = 0; i < 7; i++)
    chi += (hist[i] - 10000.0) * (hist[i] - 10000.0) / 10000.0;
  cr_assert_lt(chi, 22.46, "chi2 %g", chi);
  cr_assert_eq(fl__rng_below(&r, 0), 0);
  cr_assert_eq(fl__rng_below(&r, 1), 0);
  /* Just above 2^63 about half the raw draws are rejected: the loop must still end in range. */
  uint64_t big = (1ULL << 63) + 12345;
  for (int i = 0; i < 1000; i++)
    cr_assert_lt(fl__rng_below(&r, big), big);
}

Test(rng, shuffle_is_a_permutation_and_moves_things) {
  fl_rng r;
  fl__rng_seed(&r, 3);
  uint32_t v[100];
  for (uint32_t i = 0; i < 100; i++)
    v[i] = i;
  fl__rng_shuffle_u32(&r, v, 100);
  int seen[100] = {0}, fixed = 0;
  for (uint32_t i = 0; i < 100; i++) {
    cr_assert_lt(v[i], 100);
    seen[v[i]]++;
    fixed += v[i] == i;
  }
  for (int i = 0; i < 100; i++)
    cr_assert_eq(seen[i], 1);
  cr_assert_lt(fixed, 10);
  fl__rng_shuffle_u32(&r, v, 0);
  fl__rng_shuffle_u32(&r, v, 1);
}

Test(rng, secure_mode_draws_differ_and_are_normal) {
  fl_rng a, b;
  cr_assert_eq(fl__rng_init_secure(&a), FL_OK);
  cr_assert_eq(fl__rng_init_secure(&b), FL_OK);
  cr_assert(a.secure);
  int same = 0;
  /* More than one buffer of words, so refills are exercised. */
  for (int i = 0; i < 10 * FL_RNG_SECURE_WORDS; i++)
    same += fl__rng_u64(&a) == fl__rng_u64(&b);
  cr_assert_eq(same, 0);
  double mean, var;
  moments(&a, 0, &mean, &var);
  cr_assert_lt(fabs(mean), 5.0 / sqrt(N_DRAWS));
  cr_assert_lt(fabs(var - 1.0), 5.0 * sqrt(2.0 / N_DRAWS));
  cr_assert_eq(fl__rng_error(&a), FL_OK);
}
