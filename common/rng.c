/*
 * xoshiro256** (Blackman and Vigna) seeded through splitmix64, plus the distributions the
 * project needs. Only integer arithmetic feeds the state, so a seed reproduces the same
 * sequence on every platform; the floating-point transforms are plain IEEE double arithmetic.
 */
#include "rng.h"

#include <math.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <string.h>

#include "fl/err.h"

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4]) {
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

void fl__rng_seed(fl_rng *r, uint64_t seed) {
  memset(r, 0, sizeof *r);
  uint64_t x = seed;
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&x);
}

int fl__rng_init_secure(fl_rng *r) {
  memset(r, 0, sizeof *r);
  /* The fallback state is drawn from the CSPRNG too, so it is never predictable. */
  if (RAND_bytes((unsigned char *)r->s, sizeof r->s) != 1 ||
      RAND_bytes((unsigned char *)r->buf, sizeof r->buf) != 1) {
    ERR_clear_error();
    memset(r, 0, sizeof *r);
    return FL_E_CRYPTO;
  }
  /* An all-zero xoshiro state would stay zero forever. */
  if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
    r->s[0] = 1;
  r->secure = true;
  r->buf_pos = 0;
  return FL_OK;
}

int fl__rng_error(const fl_rng *r) {
  return r->failed ? FL_E_CRYPTO : FL_OK;
}

uint64_t fl__rng_u64(fl_rng *r) {
  if (!r->secure)
    return xoshiro_next(r->s);
  if (r->buf_pos == FL_RNG_SECURE_WORDS) {
    if (RAND_bytes((unsigned char *)r->buf, sizeof r->buf) != 1) {
      ERR_clear_error();
      r->failed = true;
      return xoshiro_next(r->s);
    }
    r->buf_pos = 0;
  }
  uint64_t v = r->buf[r->buf_pos];
  /* Consumed words are wiped: noise must not be recoverable from a later memory dump. */
  r->buf[r->buf_pos++] = 0;
  return v;
}

double fl__rng_uniform(fl_rng *r) {
  return (double)(fl__rng_u64(r) >> 11) * 0x1.0p-53;
}

/* (0, 1): never 0, so log() and pow(u, 1/a) stay finite. */
static double uniform_open(fl_rng *r) {
  return ((double)(fl__rng_u64(r) >> 11) + 0.5) * 0x1.0p-53;
}

uint64_t fl__rng_below(fl_rng *r, uint64_t n) {
  if (n == 0)
    return 0;
  /* Reject the lowest (2^64 mod n) values so that every residue is equally likely. */
  uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t x = fl__rng_u64(r);
    if (x >= threshold)
      return x % n;
  }
}

double fl__rng_normal(fl_rng *r) {
  if (r->have_spare) {
    r->have_spare = false;
    return r->spare;
  }
  /* Marsaglia's polar method: no trigonometry, two values per accepted pair. */
  double u, v, s;
  do {
    u = 2.0 * fl__rng_uniform(r) - 1.0;
    v = 2.0 * fl__rng_uniform(r) - 1.0;
    s = u * u + v * v;
  } while (s >= 1.0 || s == 0.0);
  double m = sqrt(-2.0 * log(s) / s);
  r->spare = v * m;
  r->have_spare = true;
  return u * m;
}

/* Marsaglia and Tsang (2000), "A simple method for generating gamma variables", shape >= 1. */
static double gamma_mt(fl_rng *r, double shape) {
  double d = shape - 1.0 / 3.0;
  double c = 1.0 / sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = fl__rng_normal(r);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    double u = uniform_open(r);
    double x2 = x * x;
    if (u < 1.0 - 0.0331 * x2 * x2)
      return d * v;
    if (log(u) < 0.5 * x2 + d * (1.0 - v + log(v)))
      return d * v;
  }
}

double fl__rng_gamma(fl_rng *r, double shape) {
  if (!(shape > 0.0) || isinf(shape))
    return NAN;
  if (shape >= 1.0)
    return gamma_mt(r, shape);
  /* Boost: if G ~ Gamma(a+1) and U ~ U(0,1) then G * U^(1/a) ~ Gamma(a). The draw can
   * underflow to 0 for very small shapes, which is the correct limit. */
  double g = gamma_mt(r, shape + 1.0);
  return g * pow(uniform_open(r), 1.0 / shape);
}

void fl__rng_shuffle_u32(fl_rng *r, uint32_t *v, size_t n) {
  /* Fisher-Yates from the end: every permutation is equally likely. */
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)fl__rng_below(r, i);
    uint32_t t = v[i - 1];
    v[i - 1] = v[j];
    v[j] = t;
  }
}
