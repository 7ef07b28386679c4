/*
 * Vector math for flat parameter vectors, on OpenBLAS, or on the portable kernels of
 * gemm_portable.c in a build without it (FL_HAVE_BLAS undefined). The BLAS interface counts in
 * int, while our vectors are counted in size_t; the level-1 wrappers walk long vectors in
 * int-sized pieces so that no caller has to care.
 */
#include "tensor.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef FL_HAVE_BLAS
#include <cblas.h>

/* Largest piece handed to one level-1 BLAS call; a multiple of 64 keeps pieces aligned. */
#define FL_BLAS_PIECE ((size_t)INT_MAX & ~(size_t)63)

void fl__axpy(size_t n, float a, const float *x, float *y) {
  while (n > 0) {
    size_t k = n < FL_BLAS_PIECE ? n : FL_BLAS_PIECE;
    cblas_saxpy((blasint)k, a, x, 1, y, 1);
    x += k;
    y += k;
    n -= k;
  }
}

void fl__scal(size_t n, float a, float *x) {
  while (n > 0) {
    size_t k = n < FL_BLAS_PIECE ? n : FL_BLAS_PIECE;
    cblas_sscal((blasint)k, a, x, 1);
    x += k;
    n -= k;
  }
}

/* Pieces are summed in double: the float result of a whole vector should not depend on how
 * it was split. */
float fl__dot(size_t n, const float *x, const float *y) {
  double acc = 0.0;
  while (n > 0) {
    size_t k = n < FL_BLAS_PIECE ? n : FL_BLAS_PIECE;
    acc += (double)cblas_sdot((blasint)k, x, 1, y, 1);
    x += k;
    y += k;
    n -= k;
  }
  return (float)acc;
}

#else /* no BLAS: the portable kernels */

void fl__axpy(size_t n, float a, const float *x, float *y) {
  fl__axpy_portable(n, a, x, y);
}

void fl__scal(size_t n, float a, float *x) {
  fl__scal_portable(n, a, x);
}

float fl__dot(size_t n, const float *x, const float *y) {
  return fl__dot_portable(n, x, y);
}

void fl__gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha, const float *a,
              const float *b, float beta, float *c) {
  fl__gemm_portable(trans_a, trans_b, m, n, k, alpha, a, b, beta, c);
}

void fl__tensor_set_threads(int n) {
  (void)n;
}

const char *fl__tensor_backend(void) {
  return "portable";
}
#endif

/* cblas_snrm2 accumulates in float; for a million-element update that loses digits that a
 * clipping bound cares about. Four partial sums keep the loop vectorisable. A float squared is
 * below 1.2e77, so the double sums cannot overflow and no scaling is needed. */
double fl__nrm2(size_t n, const float *x) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    double a = x[i], b = x[i + 1], c = x[i + 2], d = x[i + 3];
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += d * d;
  }
  for (; i < n; i++) {
    double a = x[i];
    s0 += a * a;
  }
  return sqrt((s0 + s1) + (s2 + s3));
}

/* Tests the exponent bits rather than calling isfinite(): an OR over a block vectorises and
 * this runs on every received update. */
bool fl__all_finite(const float *x, size_t n) {
  const uint32_t exp_mask = 0x7f800000u;
  size_t i = 0;
  while (i < n) {
    size_t end = n - i > 1024 ? i + 1024 : n;
    uint32_t bad = 0;
    for (; i < end; i++) {
      uint32_t bits;
      memcpy(&bits, &x[i], sizeof bits);
      bad |= (uint32_t)((bits & exp_mask) == exp_mask);
    }
    if (bad)
      return false;
  }
  return true;
}

#ifdef FL_HAVE_BLAS
void fl__gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha, const float *a,
              const float *b, float beta, float *c) {
  if (m == 0 || n == 0)
    return;
  if (k == 0) {
    /* BLAS would accept this too, but a zero-sized product is just a scaling of C. */
    for (size_t i = 0; i < m; i++) {
      if (beta == 0.0f)
        memset(c + i * n, 0, n * sizeof(float));
      else
        fl__scal(n, beta, c + i * n);
    }
    return;
  }
  /* Leading dimensions of row-major storage: the stored row length of each operand. */
  blasint lda = (blasint)(trans_a ? m : k);
  blasint ldb = (blasint)(trans_b ? k : n);
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, alpha, a,
              lda, b, ldb, beta, c, (blasint)n);
}

void fl__tensor_set_threads(int n) {
  openblas_set_num_threads(n < 1 ? 1 : n);
}

const char *fl__tensor_backend(void) {
  return "openblas";
}
#endif
