/*
 * Dense float32 vector math, on OpenBLAS (FL_WITH_BLAS=ON, the default) or on the portable C
 * kernels of gemm_portable.c (FL_WITH_BLAS=OFF: FL_HAVE_BLAS is not defined). Parameters of a
 * model live in one contiguous flat vector, so a delta, an accumulator or a gradient is always
 * one array.
 */
#ifndef FL__TENSOR_H
#define FL__TENSOR_H

#include <stdbool.h>
#include <stddef.h>

void fl__axpy(size_t n, float a, const float *x, float *y); /* y += a*x */
void fl__scal(size_t n, float a, float *x);                 /* x *= a */
float fl__dot(size_t n, const float *x, const float *y);
/* L2 norm, accumulated in double so that large vectors do not lose precision. */
double fl__nrm2(size_t n, const float *x);
/* Row-major C = alpha * op(A) * op(B) + beta * C; op(A) is MxK, op(B) is KxN. Dimensions must
 * fit in an int (model sizes are bounded far below that). */
void fl__gemm(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha, const float *a,
              const float *b, float beta, float *c);
/* true when every element is finite. */
bool fl__all_finite(const float *x, size_t n);
/* Threads OpenBLAS may use for one call (process-wide). A program that runs many small
 * trainings on its own thread pool (the simulator) should set 1 to avoid oversubscription.
 * Without OpenBLAS a no-op: the portable kernels run on the caller's thread. */
void fl__tensor_set_threads(int n);
/* "openblas" or "portable": what fl__gemm and the level-1 wrappers run on in this build. */
const char *fl__tensor_backend(void);

/* The portable kernels (gemm_portable.c), built in every configuration: the functions above
 * call them when there is no BLAS; tests and benches compare them against OpenBLAS. Same
 * contracts as fl__gemm, fl__axpy, fl__scal and fl__dot; the GEMM's C must not overlap A or B. */
void fl__gemm_portable(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                       const float *a, const float *b, float beta, float *c);
void fl__axpy_portable(size_t n, float a, const float *x, float *y);
void fl__scal_portable(size_t n, float a, float *x);
float fl__dot_portable(size_t n, const float *x, const float *y);

#endif
