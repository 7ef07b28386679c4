/*
 * RDP accountant for the Poisson-subsampled Gaussian mechanism and the adaptive clipping
 * update. Everything is computed in log space: at order 256 and z = 0.5 the terms of the
 * integer-order sum reach exp(65000), far beyond a double.
 */
#include "privacy/accountant.h"

#include <math.h>

/* log(exp(a) + exp(b)) without overflow; -INFINITY is the log of 0. */
static double log_add(double a, double b) {
  if (a == -INFINITY)
    return b;
  if (b == -INFINITY)
    return a;
  double m = a > b ? a : b;
  return m + log1p(exp(-fabs(a - b)));
}

/* log(exp(a) - exp(b)) for a >= b; -INFINITY when they are equal. */
static double log_sub(double a, double b) {
  if (b == -INFINITY)
    return a;
  if (b >= a)
    return -INFINITY;
  return a + log1p(-exp(b - a));
}

/* log(erfc(x)), also where erfc underflows (x beyond ~26): the asymptotic series
 * erfc(x) = exp(-x^2) / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6)), whose error
 * there is far below a double's. */
static double log_erfc(double x) {
  if (x < 20.0)
    return log(erfc(x));
  double r = 1.0 / (x * x);
  return -x * x - log(x) - 0.5 * log(M_PI) + log1p(-0.5 * r + 0.75 * r * r - 1.875 * r * r * r);
}

static double lbinom(double n, double k) {
  return lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0);
}

/* log A_a for an integer order a: the binomial expansion of E[(mu/mu0)^a]. */
static double log_a_int(double q, double z, unsigned a) {
  double lq = log(q), l1q = log1p(-q), acc = -INFINITY;
  for (unsigned k = 0; k <= a; k++) {
    double kk = (double)k;
    acc = log_add(
        acc, lbinom((double)a, kk) + (a - kk) * l1q + kk * lq + (kk * kk - kk) / (2.0 * z * z));
  }
  return acc;
}

/* log A_a for a fractional order (MTZ19 section 3.3): the integral is split at
 * z0 = z^2 log(1/q - 1) + 1/2 into two series in the generalised binomial coefficients
 * C(a, k), whose sign alternates once k > a; positive and negative terms are summed apart
 * and subtracted at the end. The series stop when a term is e^-40 below the running sum. */
static double log_a_frac(double q, double z, double a) {
  double z0 = z * z * log(1.0 / q - 1.0) + 0.5, s2 = sqrt(2.0) * z;
  double lq = log(q), l1q = log1p(-q);
  double pos = -INFINITY, neg = -INFINITY, lc = 0.0; /* lc = log |C(a, k)| */
  int sign = 1;
  for (unsigned k = 0; k < 100000; k++) {
    double i = (double)k, j = a - i;
    if (k > 0) {
      lc += log(fabs(a - i + 1.0)) - log(i);
      if (a - i + 1.0 < 0)
        sign = -sign;
    }
    double t0 =
        lc + i * lq + j * l1q + (i * i - i) / (2 * z * z) + log(0.5) + log_erfc((i - z0) / s2);
    double t1 =
        lc + j * lq + i * l1q + (j * j - j) / (2 * z * z) + log(0.5) + log_erfc((z0 - j) / s2);
    double t = log_add(t0, t1);
    if (sign > 0)
      pos = log_add(pos, t);
    else
      neg = log_add(neg, t);
    if (i > a && t < log_add(pos, neg) - 40.0)
      break;
  }
  return log_sub(pos, neg);
}

double fl__dp_rdp(double q, double z, double alpha) {
  if (!(q >= 0 && q <= 1) || !(z > 0) || !(alpha > 1) || isinf(alpha) || isinf(z))
    return NAN;
  if (q == 0)
    return 0.0;
  if (q == 1)
    return alpha / (2.0 * z * z);
  double la = alpha == floor(alpha) && alpha <= 1e6 ? log_a_int(q, z, (unsigned)alpha)
                                                    : log_a_frac(q, z, alpha);
  /* A_a >= 1 in exact arithmetic; rounding can put its log a hair below 0. */
  return la > 0 ? la / (alpha - 1.0) : 0.0;
}

static const double LARGE_ORDERS[] = {320, 384, 512, 768, 1024};
#define N_FRAC 27 /* 1.25 .. 9.75 by quarters, integers left out */
#define N_INT 255 /* 2 .. 256 */
#define N_LARGE (sizeof LARGE_ORDERS / sizeof LARGE_ORDERS[0])

size_t fl__dp_n_orders(void) {
  return N_FRAC + N_INT + N_LARGE;
}

double fl__dp_order(size_t i) {
  if (i < N_FRAC) {
    size_t k = i + 1 + i / 3; /* skip every fourth quarter: 1.25 1.5 1.75 | 2.25 ... */
    return 1.0 + 0.25 * (double)k;
  }
  i -= N_FRAC;
  if (i < N_INT)
    return 2.0 + (double)i;
  i -= N_INT;
  return i < N_LARGE ? LARGE_ORDERS[i] : NAN;
}

/* Shared by both conversions: balle selects theorem 21 of BBGHS20. */
static double convert(double q, double z, uint64_t steps, double delta, int balle, double *order) {
  if (!(delta > 0 && delta < 1) || !(z > 0) || !(q >= 0 && q <= 1))
    return NAN;
  if (order != NULL)
    *order = NAN;
  if (steps == 0 || q == 0)
    return 0.0;
  double best = INFINITY, ld = log(delta);
  for (size_t i = 0; i < fl__dp_n_orders(); i++) {
    double a = fl__dp_order(i), r = (double)steps * fl__dp_rdp(q, z, a);
    double e = balle ? r + log((a - 1.0) / a) - (ld + log(a)) / (a - 1.0) : r - ld / (a - 1.0);
    if (isfinite(e) && e < best) {
      best = e;
      if (order != NULL)
        *order = a;
    }
  }
  return best < 0 ? 0.0 : best;
}

double fl__dp_epsilon(double q, double z, uint64_t steps, double delta, double *order) {
  return convert(q, z, steps, delta, 0, order);
}

double fl__dp_epsilon_balle(double q, double z, uint64_t steps, double delta) {
  return convert(q, z, steps, delta, 1, NULL);
}

double fl__dp_update_multiplier(double z, double sigma_b) {
  if (!(z > 0) || !(sigma_b > z / 2.0) || isinf(z))
    return NAN;
  if (isinf(sigma_b))
    return z;
  return 1.0 / sqrt(1.0 / (z * z) - 1.0 / (4.0 * sigma_b * sigma_b));
}

double fl__dp_next_clip(double clip, double eta, double b_bar, double gamma) {
  return clip * exp(-eta * (b_bar - gamma));
}
