/* Vector math: each wrapper against a plain loop, gemm in all four transpose combinations,
 * the double-precision norm and the finiteness scan. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "rng.h"
#include "tensor.h"

static void fill(float *v, size_t n, uint64_t seed) {
  fl_rng r;
  fl__rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++)
    v[i] = (float)(2.0 * fl__rng_uniform(&r) - 1.0);
}

Test(tensor, axpy_scal_dot_match_loops) {
  enum { N = 1001 };
  static float x[N], y[N], y0[N];
  fill(x, N, 1);
  fill(y, N, 2);
  memcpy(y0, y, sizeof y);
  fl__axpy(N, 0.5f, x, y);
  for (size_t i = 0; i < N; i++)
    cr_assert_float_eq(y[i], y0[i] + 0.5f * x[i], 1e-6f);
  fl__scal(N, -2.0f, y);
  for (size_t i = 0; i < N; i++)
    cr_assert_float_eq(y[i], -2.0f * (y0[i] + 0.5f * x[i]), 1e-6f);
  double ref = 0.0;
  for (size_t i = 0; i < N; i++)
    ref += (double)x[i] * y[i];
  cr_assert_float_eq(fl__dot(N, x, y), ref, 1e-4 * fabs(ref) + 1e-5);
  fl__axpy(0, 1.0f, x, y); /* empty vectors are no-ops */
  cr_assert_eq(fl__dot(0, x, y), 0.0f);
}

Test(tensor, nrm2_is_accurate_in_double) {
  cr_assert_eq(fl__nrm2(0, NULL), 0.0);
  float v[3] = {3.0f, 4.0f, 12.0f};
  cr_assert_eq(fl__nrm2(3, v), 13.0);
  /* Ten million ones: float accumulation would stall at 2^24; the double sum is exact. */
  size_t n = 10u * 1000u * 1000u;
  float *big = malloc(n * sizeof(float));
  cr_assert_not_null(big);
  for (size_t i = 0; i < n; i++)
    big[i] = 1.0f;
  cr_assert_float_eq(fl__nrm2(n, big), sqrt((double)n), 1e-9);
  /* Values whose squares overflow float are still fine. */
  big[0] = 3e38f;
  cr_assert(isfinite(fl__nrm2(1, big)));
  cr_assert_float_eq(fl__nrm2(1, big), 3e38, 1e30);
  free(big);
}

/* Reference row-major product with explicit transposes. */
static void gemm_ref(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *a,
                     const float *b, float beta, float *c) {
  for (size_t i = 0; i < m; i++) {
    for (size_t j = 0; j < n; j++) {
      double s = 0.0;
      for (size_t p = 0; p < k; p++) {
        float av = ta ? a[p * m + i] : a[i * k + p];
        float bv = tb ? b[j * k + p] : b[p * n + j];
        s += (double)av * bv;
      }
      c[i * n + j] = (float)(alpha * s + beta * c[i * n + j]);
    }
  }
}

Test(tensor, gemm_all_transposes) {
  enum { M = 7, N = 5, K = 9 };
  float a[M * K], b[K * N], c[M * N], r[M * N];
  fill(a, M * K, 3);
  fill(b, K * N, 4);
  for (int t = 0; t < 4; t++) {
    bool ta = t & 1, tb = t & 2;
    fill(c, M * N, 5);
    memcpy(r, c, sizeof c);
    fl__gemm(ta, tb, M, N, K, 1.5f, a, b, 0.5f, c);
    gemm_ref(ta, tb, M, N, K, 1.5f, a, b, 0.5f, r);
    for (int i = 0; i < M * N; i++)
      cr_assert_float_eq(c[i], r[i], 1e-5f, "transpose %d element %d", t, i);
  }
}

Test(tensor, gemm_with_empty_inner_dimension_scales_c) {
  float c[6] = {1, 2, 3, 4, 5, 6};
  fl__gemm(false, false, 2, 3, 0, 1.0f, NULL, NULL, 2.0f, c);
  for (int i = 0; i < 6; i++)
    cr_assert_eq(c[i], 2.0f * (float)(i + 1));
  fl__gemm(false, false, 2, 3, 0, 1.0f, NULL, NULL, 0.0f, c);
  for (int i = 0; i < 6; i++)
    cr_assert_eq(c[i], 0.0f);
}

Test(tensor, all_finite_finds_every_bad_position) {
  enum { N = 3000 };
  static float v[N];
  fill(v, N, 6);
  cr_assert(fl__all_finite(v, N));
  cr_assert(fl__all_finite(v, 0));
  const float bad[3] = {NAN, INFINITY, -INFINITY};
  const size_t pos[4] = {0, 1023, 1024, N - 1};
  for (int b = 0; b < 3; b++) {
    for (int p = 0; p < 4; p++) {
      float keep = v[pos[p]];
      v[pos[p]] = bad[b];
      cr_assert(!fl__all_finite(v, N), "bad %d at %zu", b, pos[p]);
      v[pos[p]] = keep;
    }
  }
  /* The largest finite float and subnormals are finite. */
  v[5] = 3.4028235e38f;
  v[6] = 1e-45f;
  cr_assert(fl__all_finite(v, N));
}
