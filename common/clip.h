/* L2 clipping and Gaussian noise for update privacy and robustness. */
#ifndef FL__CLIP_H
#define FL__CLIP_H

#include <stddef.h>

#include "rng.h"

/* Scales x so that ||x||_2 <= bound (bound <= 0: no clipping). Returns the norm before. */
double fl__clip_l2(float *x, size_t n, double bound);
/* x[i] += N(0, stddev^2). */
void fl__add_gaussian(float *x, size_t n, double stddev, fl_rng *r);

#endif
