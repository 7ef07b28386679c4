/* FedProx Synthetic(alpha, beta): sizes, split, the covariance j^-1.2, and beta's control of
 * how far the devices' input means spread. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "synthetic.h"

static sim_synthetic gen(size_t devices, double alpha, double beta, bool iid, size_t cap,
                         uint64_t seed) {
  sim_synthetic s;
  sim_synthetic_opts o = {.n_devices = devices, .dim = 60, .n_classes = 10, .alpha = alpha,
                          .beta = beta, .iid = iid, .max_samples = cap, .seed = seed};
  cr_assert_eq(sim_synthetic_generate(&s, &o), FL_OK);
  return s;
}

Test(sim_synthetic, sizes_and_split) {
  sim_synthetic s = gen(30, 1, 1, false, 0, 1);
  cr_assert_eq(s.train_part.n_parties, 30);
  cr_assert_eq(s.train_part.offsets[30], s.train.n);
  cr_assert_eq(s.test_part.offsets[30], s.test.n);
  for (size_t k = 0; k < 30; k++) {
    size_t tr = sim_partition_size(&s.train_part, k), te = sim_partition_size(&s.test_part, k);
    cr_assert_geq(tr + te, 50, "device %zu has %zu examples", k, tr + te);
    cr_assert_eq(tr, (size_t)(0.9 * (double)(tr + te)));
  }
  for (size_t i = 0; i < s.train.n; i++)
    cr_assert(s.train.labels[i] >= 0 && s.train.labels[i] < 10);
  sim_synthetic_free(&s);
}

Test(sim_synthetic, sample_counts_follow_lognormal_4_2) {
  /* The median of floor(lognormal(4, 2)) + 50 is about e^4 + 50 = 104.6. */
  sim_synthetic s = gen(400, 0, 0, false, 0, 2);
  size_t *n = malloc(400 * sizeof(*n));
  for (size_t k = 0; k < 400; k++)
    n[k] = sim_partition_size(&s.train_part, k) + sim_partition_size(&s.test_part, k);
  size_t below = 0;
  for (size_t k = 0; k < 400; k++)
    below += n[k] < 105;
  cr_assert(below > 160 && below < 240, "%zu of 400 below the median", below);
  free(n);
  sim_synthetic_free(&s);
}

Test(sim_synthetic, within_device_variance_is_j_pow_minus_1_2) {
  sim_synthetic s = gen(60, 0.5, 0.5, false, 400, 3);
  const fl_dataset *d = &s.train;
  int feats[3] = {0, 9, 59};
  for (int f = 0; f < 3; f++) {
    int j = feats[f];
    double ss = 0;
    size_t dof = 0;
    for (size_t k = 0; k < 60; k++) {
      size_t lo = s.train_part.offsets[k], hi = s.train_part.offsets[k + 1];
      double mean = 0;
      for (size_t i = lo; i < hi; i++)
        mean += d->x[i * 60 + (size_t)j];
      mean /= (double)(hi - lo);
      for (size_t i = lo; i < hi; i++) {
        double e = d->x[i * 60 + (size_t)j] - mean;
        ss += e * e;
      }
      dof += hi - lo - 1;
    }
    double var = ss / (double)dof, want = pow(j + 1, -1.2);
    cr_assert(fabs(var / want - 1) < 0.1, "feature %d: variance %g, want %g", j + 1, var, want);
  }
  sim_synthetic_free(&s);
}

/* Variance across devices of each device's mean over all its features (about B_k). */
static double spread_of_device_means(const sim_synthetic *s) {
  size_t K = s->train_part.n_parties;
  double *m = calloc(K, sizeof(double)), mu = 0, v = 0;
  for (size_t k = 0; k < K; k++) {
    size_t lo = s->train_part.offsets[k], hi = s->train_part.offsets[k + 1];
    for (size_t i = lo * 60; i < hi * 60; i++)
      m[k] += s->train.x[i];
    m[k] /= (double)((hi - lo) * 60);
    mu += m[k] / (double)K;
  }
  for (size_t k = 0; k < K; k++)
    v += (m[k] - mu) * (m[k] - mu) / (double)(K - 1);
  free(m);
  return v;
}

Test(sim_synthetic, beta_moves_the_device_means) {
  sim_synthetic a = gen(200, 0, 0, false, 100, 4);
  sim_synthetic b = gen(200, 0, 2, false, 100, 4);
  double va = spread_of_device_means(&a), vb = spread_of_device_means(&b);
  /* beta = 0: v_k[j] ~ N(0, 1), so the mean over 60 features varies by about 1/60. beta = 2:
   * the shared offset B_k ~ N(0, 4) dominates. */
  cr_assert_lt(va, 0.1, "beta 0: spread %g", va);
  cr_assert(vb > 2.5 && vb < 6, "beta 2: spread %g", vb);
  sim_synthetic_free(&a);
  sim_synthetic_free(&b);
}

Test(sim_synthetic, labels_use_every_class) {
  sim_synthetic s = gen(30, 1, 1, false, 0, 5);
  size_t cnt[10] = {0};
  for (size_t i = 0; i < s.train.n; i++)
    cnt[s.train.labels[i]]++;
  for (int c = 0; c < 10; c++)
    cr_assert_gt(cnt[c], 0, "class %d never drawn", c);
  sim_synthetic_free(&s);
}

Test(sim_synthetic, same_seed_same_data) {
  sim_synthetic a = gen(10, 1, 1, false, 200, 6), b = gen(10, 1, 1, false, 200, 6);
  sim_synthetic c = gen(10, 1, 1, false, 200, 7);
  cr_assert_eq(a.train.n, b.train.n);
  cr_assert_eq(memcmp(a.train.x, b.train.x, a.train.n * 60 * sizeof(float)), 0);
  cr_assert_eq(memcmp(a.test.labels, b.test.labels, a.test.n * sizeof(int32_t)), 0);
  cr_assert(a.train.n != c.train.n || memcmp(a.train.x, c.train.x, 60 * sizeof(float)) != 0);
  sim_synthetic_free(&a);
  sim_synthetic_free(&b);
  sim_synthetic_free(&c);
}

Test(sim_synthetic, iid_mode_shares_one_mean_per_device) {
  /* v_k = B_k in every coordinate: device means differ by B_k only, not per feature. */
  sim_synthetic s = gen(5, 0, 1, true, 2000, 8);
  size_t lo = s.train_part.offsets[0], hi = s.train_part.offsets[1];
  double m0 = 0, m59 = 0;
  for (size_t i = lo; i < hi; i++) {
    m0 += s.train.x[i * 60];
    m59 += s.train.x[i * 60 + 59];
  }
  m0 /= (double)(hi - lo);
  m59 /= (double)(hi - lo);
  cr_assert(fabs(m0 - m59) < 0.15, "feature means %g and %g", m0, m59);
  sim_synthetic_free(&s);
}

Test(sim_synthetic, rejects_bad_options) {
  sim_synthetic s;
  sim_synthetic_opts o = {.n_devices = 0, .dim = 60, .n_classes = 10};
  cr_assert_eq(sim_synthetic_generate(&s, &o), FL_E_INVAL);
  o.n_devices = 3;
  o.n_classes = 1;
  cr_assert_eq(sim_synthetic_generate(&s, &o), FL_E_INVAL);
  o.n_classes = 10;
  o.beta = -1;
  cr_assert_eq(sim_synthetic_generate(&s, &o), FL_E_INVAL);
}
