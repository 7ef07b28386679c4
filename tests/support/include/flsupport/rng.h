/*
 * Seeded randomness for tests and benches: the sequence depends on the seed alone, so a
 * failure (or a measurement) replays exactly. Not for anything secret (common/crypto.h is).
 *  - xorshift64*: fast fuzzing draws (fl_sup_rng_*);
 *  - splitmix64: well-mixed data from a counter, also the seeder of the former.
 */
#ifndef FLSUPPORT_RNG_H
#define FLSUPPORT_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_sup_rng {
  uint64_t s; /* never 0 */
} fl_sup_rng;

static inline uint64_t fl_sup_splitmix64(uint64_t *s) {
  uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Uniform in [-1, 1) from the top 24 bits of a splitmix64 draw. */
static inline float fl_sup_splitmix_unit(uint64_t *s) {
  return (float)((double)(fl_sup_splitmix64(s) >> 40) / (double)(1ULL << 23) - 1.0);
}

/* Seeds the state through splitmix64, so that nearby seeds give unrelated sequences. */
static inline void fl_sup_rng_seed(fl_sup_rng *r, uint64_t seed) {
  r->s = fl_sup_splitmix64(&seed);
  if (r->s == 0)
    r->s = 0x2545f4914f6cdd1dULL;
}

static inline uint64_t fl_sup_rng_next(fl_sup_rng *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 2685821657736338717ULL;
}

/* Uniform-ish in [0, n) (modulo bias is irrelevant here); 0 when n is 0. */
static inline uint64_t fl_sup_rng_below(fl_sup_rng *r, uint64_t n) {
  return n ? fl_sup_rng_next(r) % n : 0;
}

static inline void fl_sup_rng_fill(fl_sup_rng *r, uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)fl_sup_rng_next(r);
}

#endif
