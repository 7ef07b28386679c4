/* The portable kernels of common/gemm_portable.c (the matrix products of a build without
 * OpenBLAS): every transpose combination on random shapes, and the shapes the built-in models
 * use, against a double-precision reference, and, in a build that has OpenBLAS, against
 * OpenBLAS itself (fl__gemm). The gradient checks of test_layers.c run on whichever backend
 * the build has, so a lean build checks the layers on these kernels. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "tensor.h"

static void fill(float *v, size_t n, fl_rng *r) {
  for (size_t i = 0; i < n; i++)
    v[i] = (float)(2.0 * fl__rng_uniform(r) - 1.0);
}

/* C = alpha op(A) op(B) + beta C in double; err[i] bounds the float rounding of element i. */
static void reference(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *a,
                      const float *b, float beta, const float *c0, double *out, double *err) {
  for (size_t i = 0; i < m; i++)
    for (size_t j = 0; j < n; j++) {
      double s = 0.0, mag = 0.0;
      for (size_t p = 0; p < k; p++) {
        double x = ta ? a[p * m + i] : a[i * k + p];
        double y = tb ? b[j * k + p] : b[p * n + j];
        s += x * y;
        mag += fabs(x * y);
      }
      double c = beta == 0.0f ? 0.0 : (double)beta * c0[i * n + j];
      out[i * n + j] = alpha * s + c;
      /* float accumulation: about k * eps * sum|x y| in the worst case; 4 eps per term is far
       * looser than blocked sums reach and far tighter than a wrong index. */
      err[i * n + j] = 4.0 * 1.2e-7 * ((double)k + 2.0) * (fabs(alpha) * mag + fabs(c)) + 1e-30;
    }
}

typedef struct shape {
  size_t m, n, k;
} shape;

/* Runs one product on the portable kernel (and on OpenBLAS when built) against the reference. */
static void check_one(bool ta, bool tb, shape s, float alpha, float beta, fl_rng *r) {
  size_t m = s.m, n = s.n, k = s.k;
  float *a = malloc((m * k + 1) * sizeof *a), *b = malloc((k * n + 1) * sizeof *b);
  float *c0 = malloc(m * n * sizeof *c0), *c = malloc(m * n * sizeof *c);
  double *want = malloc(m * n * sizeof *want), *tol = malloc(m * n * sizeof *tol);
  cr_assert(a && b && c0 && c && want && tol);
  fill(a, m * k, r);
  fill(b, k * n, r);
  fill(c0, m * n, r);
  if (beta == 0.0f) /* BLAS semantics: C is not read when beta is 0 */
    for (size_t i = 0; i < m * n; i++)
      c0[i] = NAN;
  reference(ta, tb, m, n, k, alpha, a, b, beta, c0, want, tol);
  memcpy(c, c0, m * n * sizeof *c);
  fl__gemm_portable(ta, tb, m, n, k, alpha, a, b, beta, c);
  for (size_t i = 0; i < m * n; i++)
    cr_assert(fabs(c[i] - want[i]) <= tol[i],
              "portable %c%c %zux%zux%zu alpha %g beta %g: C[%zu] = %.9g, want %.9g",
              ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, beta, i, c[i], want[i]);
#ifdef FL_HAVE_BLAS
  float *cb = malloc(m * n * sizeof *cb);
  cr_assert_not_null(cb);
  memcpy(cb, c0, m * n * sizeof *cb);
  fl__gemm(ta, tb, m, n, k, alpha, a, b, beta, cb);
  for (size_t i = 0; i < m * n; i++)
    cr_assert(fabs((double)c[i] - cb[i]) <= 2.0 * tol[i],
              "portable vs OpenBLAS %c%c %zux%zux%zu: C[%zu] = %.9g vs %.9g", ta ? 'T' : 'N',
              tb ? 'T' : 'N', m, n, k, i, c[i], cb[i]);
  free(cb);
#endif
  free(a);
  free(b);
  free(c0);
  free(c);
  free(want);
  free(tol);
}

Test(gemm_portable, random_shapes_every_transpose) {
  fl_rng r;
  fl__rng_seed(&r, 20);
  const float alphas[] = {1.0f, 0.5f, -2.0f}, betas[] = {0.0f, 1.0f, -0.5f};
  for (int t = 0; t < 200; t++) {
    /* Mostly small, sometimes past the kernels' block sizes (512 columns, depth 256). */
    size_t big = t % 10 == 0 ? 600 : 37;
    shape s = {1 + (size_t)(fl__rng_uniform(&r) * 37), 1 + (size_t)(fl__rng_uniform(&r) * big),
               1 + (size_t)(fl__rng_uniform(&r) * big)};
    check_one(t & 1, (t >> 1) & 1, s, alphas[t % 3], betas[(t / 3) % 3], &r);
  }
}

/* The products of the built-in models: 2NN (784-200-200-10) and the sensor model at batch 10,
 * forward (NT), weight gradient (TN) and input gradient (NN), and a conv layer's three. */
Test(gemm_portable, the_layers_shapes) {
  fl_rng r;
  fl__rng_seed(&r, 14);
  static const struct {
    bool ta, tb;
    shape s;
    float beta;
  } cases[] = {
      {false, true, {10, 200, 784}, 1.0f},  {true, false, {200, 784, 10}, 0.0f},
      {false, false, {10, 784, 200}, 0.0f}, {false, true, {10, 200, 200}, 1.0f},
      {true, false, {200, 200, 10}, 1.0f},  {false, true, {10, 10, 200}, 1.0f},
      {false, true, {10, 8, 6}, 1.0f},      {true, false, {8, 6, 10}, 0.0f},
      {false, false, {16, 576, 25}, 0.0f},  {false, true, {16, 25, 576}, 1.0f},
      {true, false, {25, 576, 16}, 0.0f},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_one(cases[i].ta, cases[i].tb, cases[i].s, 1.0f, cases[i].beta, &r);
}

Test(gemm_portable, degenerate_sizes) {
  float c[6] = {1, 2, 3, 4, 5, 6}, a[1] = {7}, b[1] = {9};
  fl__gemm_portable(false, false, 0, 3, 4, 1.0f, a, b, 0.0f, c); /* m = 0: nothing */
  fl__gemm_portable(false, false, 2, 0, 4, 1.0f, a, b, 0.0f, c); /* n = 0: nothing */
  cr_assert_eq(c[0], 1.0f);
  fl__gemm_portable(false, false, 2, 3, 0, 1.0f, a, b, 2.0f, c); /* k = 0: C *= beta */
  cr_assert_eq(c[5], 12.0f);
  fl__gemm_portable(true, true, 2, 3, 0, 1.0f, a, b, 0.0f, c);
  for (int i = 0; i < 6; i++)
    cr_assert_eq(c[i], 0.0f);
}

Test(gemm_portable, level1_match_loops) {
  enum { N = 10007 };
  static float x[N], y[N], y0[N];
  fl_rng r;
  fl__rng_seed(&r, 3);
  fill(x, N, &r);
  fill(y, N, &r);
  memcpy(y0, y, sizeof y);
  fl__axpy_portable(N, 0.25f, x, y);
  for (size_t i = 0; i < N; i++)
    cr_assert_float_eq(y[i], y0[i] + 0.25f * x[i], 1e-6f);
  fl__scal_portable(N, -3.0f, y);
  for (size_t i = 0; i < N; i++)
    cr_assert_float_eq(y[i], -3.0f * (y0[i] + 0.25f * x[i]), 1e-5f);
  double ref = 0.0, mag = 0.0;
  for (size_t i = 0; i < N; i++) {
    ref += (double)x[i] * y[i];
    mag += fabs((double)x[i] * y[i]);
  }
  cr_assert(fabs(fl__dot_portable(N, x, y) - ref) <= 1e-6 * mag, "%g vs %g",
            fl__dot_portable(N, x, y), ref);
  cr_assert_eq(fl__dot_portable(0, x, y), 0.0f);
#ifdef FL_HAVE_BLAS
  cr_assert(fabs(fl__dot_portable(N, x, y) - fl__dot(N, x, y)) <= 2e-6 * mag);
#endif
}

/* The wrappers run on the backend the build chose. */
Test(gemm_portable, backend_is_the_builds) {
#ifdef FL_HAVE_BLAS
  cr_assert_str_eq(fl__tensor_backend(), "openblas");
#else
  cr_assert_str_eq(fl__tensor_backend(), "portable");
  /* fl__gemm is the portable kernel, bit for bit. */
  float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {0.5f, -1, 2, 0.25f, 3, -2}, c1[4], c2[4];
  fl__gemm(false, true, 2, 2, 3, 1.0f, a, b, 0.0f, c1);
  fl__gemm_portable(false, true, 2, 2, 3, 1.0f, a, b, 0.0f, c2);
  cr_assert_arr_eq(c1, c2, sizeof c1);
#endif
}
