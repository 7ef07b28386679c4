/*
 * Random numbers: a seeded generator (xoshiro256**, reproducible across platforms) for tests,
 * simulation and initialisation, or backed by OpenSSL's CSPRNG for differential privacy noise.
 */
#ifndef FL__RNG_H
#define FL__RNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fl_rng {
  uint64_t s[4];
  bool secure;        /* draws come from RAND_bytes */
  bool have_spare;    /* Box-Muller second value */
  double spare;
} fl_rng;

void fl__rng_seed(fl_rng *r, uint64_t seed);
int fl__rng_init_secure(fl_rng *r); /* FL_E_CRYPTO when the CSPRNG fails */
uint64_t fl__rng_u64(fl_rng *r);
double fl__rng_uniform(fl_rng *r);              /* [0, 1) */
uint64_t fl__rng_below(fl_rng *r, uint64_t n);  /* [0, n), unbiased */
double fl__rng_normal(fl_rng *r);               /* N(0, 1) */
double fl__rng_gamma(fl_rng *r, double shape);  /* Gamma(shape, 1), shape > 0 */
void fl__rng_shuffle_u32(fl_rng *r, uint32_t *v, size_t n);

#endif
