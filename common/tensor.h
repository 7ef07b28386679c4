/*
 * Dense float32 vector math on OpenBLAS. Parameters of a model live in one contiguous flat
 * vector, so a delta, an accumulator or a gradient is always one array.
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
 * trainings on its own thread pool (the simulator) should set 1 to avoid oversubscription. */
void fl__tensor_set_threads(int n);

#endif
