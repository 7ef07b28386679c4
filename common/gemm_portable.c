/*
 * Portable float32 kernels in plain C11: the matrix products of the built-in layers and the
 * level-1 operations of tensor.h, for a build without OpenBLAS (FL_WITH_BLAS=OFF). They are
 * compiled into every build, so that tests/unit/test_gemm_portable.c can compare them against
 * OpenBLAS where both exist, and benches/bench_gemm.c can time one against the other.
 *
 * The layers need three shapes of row-major C = alpha * op(A) * op(B) + beta * C:
 *   NN and TN (dense input and weight gradients, conv forward and input gradient): C row i is
 *      a sum over p of A(i, p) times B row p, a contiguous "row axpy" that vectorises over j;
 *   NT (dense forward, conv weight gradient): the same after a block of B is transposed into
 *      a buffer on the stack.
 * No heap allocation: a kernel that cannot fail keeps layers.c's contract.
 *
 * Vectorisation: GCC vectorises the row axpy as written (restrict says the rows do not
 * overlap), with SSE2 on baseline x86-64 and NEON on aarch64. It does not reorder a float
 * sum, so the dot product of fl__dot_portable keeps FL__LANES partial sums in an array, which
 * it maps onto vector registers without -ffast-math.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "tensor.h"

/* Partial sums per dot product: two SSE2 or NEON registers. */
#define FL__LANES 8
/* Rows of C updated together by the row axpy: each B row read once serves four C rows. */
#define FL__ROWS 4
/* Columns of C per block of the row axpy: four rows of 512 floats (8 KiB) stay in L1. */
#define FL__COLS 512
/* The NT product's transposed block of B: 32 x 128 floats. */
#define FL__NT_DEPTH 32
#define FL__NT_COLS 128

/* C *= beta; beta = 0 clears C without reading it, as BLAS does (C may hold NaN). */
static void scale_c(size_t m, size_t n, float beta, float *c) {
  if (beta == 1.0f)
    return;
  if (beta == 0.0f) {
    memset(c, 0, m * n * sizeof *c);
    return;
  }
  for (size_t i = 0; i < m * n; i++)
    c[i] *= beta;
}

/* c[0..n) += a * b[0..n) for up to FL__ROWS rows of C sharing one row of B. */
static void row_axpy4(size_t rows, size_t n, const float *restrict a, const float *restrict b,
                      float *restrict c0, float *restrict c1, float *restrict c2,
                      float *restrict c3) {
  if (rows == FL__ROWS) {
    float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    for (size_t j = 0; j < n; j++) {
      float bj = b[j];
      c0[j] += a0 * bj;
      c1[j] += a1 * bj;
      c2[j] += a2 * bj;
      c3[j] += a3 * bj;
    }
    return;
  }
  float *restrict cs[FL__ROWS] = {c0, c1, c2, c3};
  for (size_t r = 0; r < rows; r++) {
    float ar = a[r];
    float *restrict cr = cs[r];
    for (size_t j = 0; j < n; j++)
      cr[j] += ar * b[j];
  }
}

/* One dot product in FL__LANES partial sums, which GCC keeps in vector registers. */
static float dot1(size_t k, const float *restrict x, const float *restrict y) {
  float s[FL__LANES] = {0};
  size_t p = 0;
  for (; p + FL__LANES <= k; p += FL__LANES)
    for (size_t l = 0; l < FL__LANES; l++)
      s[l] += x[p + l] * y[p + l];
  float t = 0.0f;
  for (; p < k; p++)
    t += x[p] * y[p];
  for (size_t l = 0; l < FL__LANES; l++)
    t += s[l];
  return t;
}

/* C[m x n] += alpha * A * B with B row p at b + p * ldb, C row i at c + i * ldc, and
 * A(i, p) = a[i * a_row + p * a_col]: NN has (a_row, a_col) = (k, 1), TN has (1, m). Blocked
 * over columns so the C tile stays in L1. */
static void gemm_xn(size_t m, size_t n, size_t k, float alpha, const float *restrict a,
                    size_t a_row, size_t a_col, const float *restrict b, size_t ldb,
                    float *restrict c, size_t ldc) {
  for (size_t i0 = 0; i0 < m; i0 += FL__ROWS) {
    size_t rows = m - i0 < FL__ROWS ? m - i0 : FL__ROWS;
    float *c0 = c + i0 * ldc;
    /* Rows past the end point at row 0; row_axpy4 never writes them (rows < FL__ROWS). */
    float *c1 = rows > 1 ? c0 + ldc : c0, *c2 = rows > 2 ? c0 + 2 * ldc : c0;
    float *c3 = rows > 3 ? c0 + 3 * ldc : c0;
    for (size_t j0 = 0; j0 < n; j0 += FL__COLS) {
      size_t cols = n - j0 < FL__COLS ? n - j0 : FL__COLS;
      for (size_t p = 0; p < k; p++) {
        float av[FL__ROWS] = {0};
        for (size_t r = 0; r < rows; r++)
          av[r] = alpha * a[(i0 + r) * a_row + p * a_col];
        row_axpy4(rows, cols, av, b + p * ldb + j0, c0 + j0, c1 + j0, c2 + j0, c3 + j0);
      }
    }
  }
}

/* C[m x n] += alpha * A * B^T with A stored m x k and B stored n x k. Each block of B^T
 * (FL__NT_DEPTH x FL__NT_COLS, 16 KiB on the stack) is transposed once into bt and then meets
 * every row of A through the row axpy, which vectorises where dot products of B's rows would
 * end in horizontal sums. The copy costs n * k moves against m * n * k multiply-adds. */
static void gemm_nt(size_t m, size_t n, size_t k, float alpha, const float *restrict a,
                    const float *restrict b, float *restrict c) {
  float bt[FL__NT_DEPTH * FL__NT_COLS];
  for (size_t j0 = 0; j0 < n; j0 += FL__NT_COLS) {
    size_t cols = n - j0 < FL__NT_COLS ? n - j0 : FL__NT_COLS;
    for (size_t p0 = 0; p0 < k; p0 += FL__NT_DEPTH) {
      size_t depth = k - p0 < FL__NT_DEPTH ? k - p0 : FL__NT_DEPTH;
      for (size_t jj = 0; jj < cols; jj++) {
        const float *brow = b + (j0 + jj) * k + p0;
        for (size_t p = 0; p < depth; p++)
          bt[p * cols + jj] = brow[p];
      }
      gemm_xn(m, cols, depth, alpha, a + p0, k, 1, bt, cols, c + j0, n);
    }
  }
}

/* C += alpha * A^T * B^T: no built-in layer uses it; plain loops, correct for completeness. */
static void gemm_tt(size_t m, size_t n, size_t k, float alpha, const float *restrict a,
                    const float *restrict b, float *restrict c) {
  for (size_t i = 0; i < m; i++)
    for (size_t j = 0; j < n; j++) {
      float s = 0.0f;
      for (size_t p = 0; p < k; p++)
        s += a[p * m + i] * b[j * k + p];
      c[i * n + j] += alpha * s;
    }
}

void fl__gemm_portable(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                       const float *a, const float *b, float beta, float *c) {
  if (m == 0 || n == 0)
    return;
  scale_c(m, n, beta, c);
  if (k == 0 || alpha == 0.0f)
    return;
  if (!trans_b)
    gemm_xn(m, n, k, alpha, a, trans_a ? 1 : k, trans_a ? m : 1, b, n, c, n);
  else if (!trans_a)
    gemm_nt(m, n, k, alpha, a, b, c);
  else
    gemm_tt(m, n, k, alpha, a, b, c);
}

void fl__axpy_portable(size_t n, float a, const float *restrict x, float *restrict y) {
  for (size_t i = 0; i < n; i++)
    y[i] += a * x[i];
}

void fl__scal_portable(size_t n, float a, float *x) {
  for (size_t i = 0; i < n; i++)
    x[i] *= a;
}

/* Blocks of 4096 in float partial sums, blocks summed in double, like the BLAS wrapper sums
 * its pieces: a long vector does not lose digits to one float accumulator. */
float fl__dot_portable(size_t n, const float *x, const float *y) {
  double acc = 0.0;
  for (size_t i = 0; i < n; i += 4096) {
    size_t len = n - i < 4096 ? n - i : 4096;
    acc += (double)dot1(len, x + i, y + i);
  }
  return (float)acc;
}
