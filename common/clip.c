/* L2 clipping and Gaussian noise (the Gaussian mechanism of differential privacy). */
#include "clip.h"

#include <math.h>

/* The norm is accumulated in double: a float sum over a million elements loses digits. */
static double l2_norm(const float *x, size_t n) {
  double s0 = 0.0, s1 = 0.0;
  size_t i = 0;
  /* Two accumulators break the dependency chain; the order is fixed, so results reproduce. */
  for (; i + 1 < n; i += 2) {
    s0 += (double)x[i] * x[i];
    s1 += (double)x[i + 1] * x[i + 1];
  }
  if (i < n)
    s0 += (double)x[i] * x[i];
  return sqrt(s0 + s1);
}

double fl__clip_l2(float *x, size_t n, double bound) {
  double norm = l2_norm(x, n);
  /* A non-finite norm means non-finite input: scaling would only hide it; callers check. */
  if (!(bound > 0.0) || !isfinite(norm) || norm <= bound)
    return norm;
  /* Each product is rounded to float (relative error <= 2^-24), which can push the norm a hair
   * above the bound; shrinking the factor by 2^-20 keeps the result at or below it, so a
   * receiver can check norm <= bound without a tolerance. */
  double scale = bound / norm * (1.0 - 0x1.0p-20);
  for (size_t i = 0; i < n; i++)
    x[i] = (float)(x[i] * scale);
  return norm;
}

void fl__add_gaussian(float *x, size_t n, double stddev, fl_rng *r) {
  if (!(stddev > 0.0))
    return;
  for (size_t i = 0; i < n; i++)
    x[i] = (float)(x[i] + stddev * fl__rng_normal(r));
}
