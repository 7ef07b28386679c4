/*
 * Random numbers: a seeded generator (xoshiro256**, reproducible across platforms) for tests,
 * simulation and initialisation, or backed by OpenSSL's CSPRNG for differential privacy noise.
 *
 * Seeded mode: the same seed gives the same sequence on every platform (splitmix64 expands the
 * 64-bit seed into the 256-bit state). Secure mode: every 64-bit draw comes from RAND_bytes,
 * fetched in chunks of FL_RNG_SECURE_WORDS words. Should the CSPRNG fail after a successful
 * fl__rng_init_secure, draws continue from the xoshiro state (itself seeded from the CSPRNG)
 * and fl__rng_error() reports FL_E_CRYPTO: callers that need secure noise check it after
 * drawing.
 */
#ifndef FL__RNG_H
#define FL__RNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FL_RNG_SECURE_WORDS 32

typedef struct fl_rng {
  uint64_t s[4];
  bool secure;     /* draws come from RAND_bytes */
  bool have_spare; /* the polar method's second value */
  double spare;
  bool failed;      /* secure mode: a refill failed (see fl__rng_error) */
  uint32_t buf_pos; /* secure mode: next unused word of buf */
  uint64_t buf[FL_RNG_SECURE_WORDS];
} fl_rng;

void fl__rng_seed(fl_rng *r, uint64_t seed);
int fl__rng_init_secure(fl_rng *r); /* FL_E_CRYPTO when the CSPRNG fails */
/* FL_OK, or FL_E_CRYPTO once a secure-mode refill has failed. */
int fl__rng_error(const fl_rng *r);
uint64_t fl__rng_u64(fl_rng *r);
double fl__rng_uniform(fl_rng *r);             /* [0, 1) */
uint64_t fl__rng_below(fl_rng *r, uint64_t n); /* [0, n), unbiased; 0 when n is 0 */
double fl__rng_normal(fl_rng *r);              /* N(0, 1) */
double fl__rng_gamma(fl_rng *r, double shape); /* Gamma(shape, 1), shape > 0; NaN otherwise */
void fl__rng_shuffle_u32(fl_rng *r, uint32_t *v, size_t n);

#endif
