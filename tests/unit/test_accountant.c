/* The privacy accountant (server/privacy/accountant.c): RDP of the sampled Gaussian mechanism
 * against values computed independently (tests/unit/data/accountant_cases.py: exact decimal
 * binomial sums and numerical integration of the definition), epsilon against the same script
 * and against the figures published by TF Privacy and Abadi et al. 2016; the adaptive clipping
 * formulas of Andrew et al. 2021. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "privacy/accountant.h"

#define CASES FL_SOURCE_DIR "/tests/unit/data/accountant_cases.txt"

static double rel(double got, double want) {
  return fabs(got - want) / (fabs(want) > 1e-300 ? fabs(want) : 1.0);
}

Test(accountant, rdp_matches_reference) {
  FILE *f = fopen(CASES, "r");
  cr_assert_not_null(f, "cannot open %s", CASES);
  char line[256];
  int n = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    double q, z, a, want;
    if (sscanf(line, "rdp %lf %lf %lf %lf", &q, &z, &a, &want) != 4)
      continue;
    double got = fl__dp_rdp(q, z, a);
    /* The integral references are accurate to ~1e-10 relative; the decimal ones to 1e-17. */
    cr_expect(rel(got, want) < 1e-8, "RDP(q=%g, z=%g, a=%g) = %.12g, reference %.12g", q, z, a, got,
              want);
    n++;
  }
  fclose(f);
  cr_assert_geq(n, 10, "only %d rdp cases read", n);
}

Test(accountant, epsilon_matches_reference) {
  FILE *f = fopen(CASES, "r");
  cr_assert_not_null(f);
  char line[256];
  int n = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    double q, z, delta, want;
    unsigned long long steps;
    if (sscanf(line, "eps %lf %lf %llu %lf %lf", &q, &z, &steps, &delta, &want) != 5)
      continue;
    double got = fl__dp_epsilon(q, z, steps, delta, NULL);
    cr_expect(rel(got, want) < 1e-7, "eps(q=%g, z=%g, T=%llu, delta=%g) = %.10g, reference %.10g",
              q, z, steps, delta, got, want);
    n++;
  }
  fclose(f);
  cr_assert_geq(n, 5, "only %d eps cases read", n);
}

/* The reference's epsilons minimise over the orders it lists first; they must be the
 * accountant's own, or the epsilon cases agree only while the best order lies elsewhere (the
 * reference once went on to 10.75 while the C code stops at 9.75). */
Test(accountant, reference_orders_are_the_accountants) {
  FILE *f = fopen(CASES, "r");
  cr_assert_not_null(f);
  static char line[16384];
  cr_assert_not_null(fgets(line, sizeof line, f));
  fclose(f);
  cr_assert(strncmp(line, "orders ", 7) == 0 && strchr(line, '\n') != NULL,
            "first line of %s is not a whole orders line", CASES);
  char *p = line + 7, *end = NULL;
  size_t n = 0;
  for (double a = strtod(p, &end); end != p; a = strtod(p, &end)) {
    cr_expect_eq(a, fl__dp_order(n), "order %zu: reference %g, accountant %g", n, a,
                 fl__dp_order(n));
    n++;
    p = end;
  }
  cr_expect_eq(n, fl__dp_n_orders(), "reference has %zu orders, the accountant %zu", n,
               fl__dp_n_orders());
}

/* q = 1 is the Gaussian mechanism without sampling: RDP(a) = a / (2 z^2) exactly, at integer
 * and fractional orders; q = 0 releases nothing. */
Test(accountant, rdp_exact_points) {
  double zs[] = {0.5, 1.1, 4.0}, as[] = {1.5, 2, 7.25, 32, 256};
  for (size_t i = 0; i < 3; i++)
    for (size_t k = 0; k < 5; k++)
      cr_expect(rel(fl__dp_rdp(1.0, zs[i], as[k]), as[k] / (2 * zs[i] * zs[i])) < 1e-15);
  cr_expect_eq(fl__dp_rdp(0.0, 1.0, 8), 0.0);
  /* Order 2 has a closed form: log(1 + q^2 (e^{1/z^2} - 1)). */
  double q = 0.03, z = 1.3;
  cr_expect(rel(fl__dp_rdp(q, z, 2), log1p(q * q * expm1(1 / (z * z)))) < 1e-12);
  /* RDP is nondecreasing in the order (Mironov 2017, proposition 9), across the fractional
   * and the integer branches. */
  double prev = 0;
  for (double a = 1.25; a <= 40; a += 0.25) {
    double r = fl__dp_rdp(0.01, 1.0, a);
    cr_expect(r >= prev * (1 - 1e-9), "RDP not monotone at order %g: %g < %g", a, r, prev);
    prev = r;
  }
}

Test(accountant, orders_cover_integers_2_to_256) {
  int seen[257] = {0};
  size_t n = fl__dp_n_orders();
  for (size_t i = 0; i < n; i++) {
    double a = fl__dp_order(i);
    cr_assert(a > 1.0);
    if (a == floor(a) && a <= 256)
      seen[(int)a]++;
  }
  for (int a = 2; a <= 256; a++)
    cr_expect_eq(seen[a], 1, "order %d appears %d times", a, seen[a]);
  cr_expect(isnan(fl__dp_order(n)));
}

/* Published figures. TF Privacy's tutorials/README.md (MNIST, N = 60000, batch 256,
 * delta = 1e-5): z = 1.12, 60 epochs -> 2.92; z = 1.2, 10 epochs -> 1.20; z = 0.6, 30 epochs
 * -> 9.74. The tutorial's z = 1.1 setting is "about 3". Abadi et al. 2016 section 5.1
 * (figure 2), moments accountant, q = 0.01, sigma = 4, delta = 1e-5: E = 100 epochs (10000
 * steps) -> 1.26 and E = 400 epochs (40000 steps) -> 2.55. The papers print two or three
 * digits; TF Privacy used other fractional orders (hence 9.77 for 9.74 at z = 0.6, where the
 * best order is below 3). At E = 400 the exact computation gives 2.576 (order 10, i.e. the
 * moments accountant's lambda = 9; tests/unit/data/accountant_cases.py agrees), 1% above the
 * paper's 2.55 (docs/PRIVACY.md section 2, "Checked against", discusses the gap). One-sided
 * there: never below the published figure (that would be a claim tighter than the paper's),
 * at most 0.03 above. */
Test(accountant, published_figures) {
  double q = 256.0 / 60000.0;
  struct {
    double q, z;
    unsigned long long steps;
    double want, below, above; /* accepted: want - below <= eps <= want + above */
  } c[] = {
      {q, 1.1, 60ull * 60000 / 256, 3.0, 0.05, 0.05},
      {q, 1.12, 60ull * 60000 / 256, 2.92, 0.005, 0.005},
      {q, 1.2, 10ull * 60000 / 256, 1.20, 0.005, 0.005},
      {q, 0.6, 30ull * 60000 / 256, 9.74, 0.05, 0.05},
      {0.01, 4.0, 10000, 1.26, 0.005, 0.005},
      {0.01, 4.0, 40000, 2.55, 0.0, 0.03},
  };
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    double e = fl__dp_epsilon(c[i].q, c[i].z, c[i].steps, 1e-5, NULL);
    cr_expect(e >= c[i].want - c[i].below && e <= c[i].want + c[i].above,
              "q=%g z=%g steps=%llu: eps %.4f, published %.2f", c[i].q, c[i].z, c[i].steps, e,
              c[i].want);
  }
}

Test(accountant, epsilon_edges) {
  double order = 0;
  cr_expect_eq(fl__dp_epsilon(0.01, 1.0, 0, 1e-5, NULL), 0.0);
  cr_expect(isnan(fl__dp_epsilon(0.01, 0.0, 10, 1e-5, NULL)));
  cr_expect(isnan(fl__dp_epsilon(0.01, 1.0, 10, 0.0, NULL)));
  cr_expect(isnan(fl__dp_epsilon(0.01, 1.0, 10, 1.0, NULL)));
  cr_expect(isnan(fl__dp_epsilon(1.5, 1.0, 10, 1e-5, NULL)));
  /* More rounds never cost less; more noise never costs more. */
  double e1 = fl__dp_epsilon(0.05, 1.0, 100, 1e-5, &order);
  cr_expect(order > 1 && isfinite(order));
  cr_expect(fl__dp_epsilon(0.05, 1.0, 200, 1e-5, NULL) > e1);
  cr_expect(fl__dp_epsilon(0.05, 2.0, 100, 1e-5, NULL) < e1);
  /* The Balle et al. conversion is tighter, never looser. */
  double b = fl__dp_epsilon_balle(0.05, 1.0, 100, 1e-5);
  cr_expect(b < e1 && b > 0.5 * e1, "balle %g vs %g", b, e1);
  /* Tiny noise: epsilon is huge but finite or +Inf, never NaN. */
  cr_expect(!isnan(fl__dp_epsilon(0.5, 0.01, 10, 1e-5, NULL)));
}

/* Andrew et al. 2021: z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2); with the paper's default
 * sigma_b = m / 20 for m = 100 expected clients and z = 1 the update noise grows by 0.5%. */
Test(accountant, adaptive_clipping) {
  double zd = fl__dp_update_multiplier(1.0, 5.0);
  cr_expect(fabs(zd - 1.0 / sqrt(1.0 - 1.0 / 100.0)) < 1e-12);
  cr_expect(fabs(zd - 1.00504) < 1e-5);
  cr_expect(isnan(fl__dp_update_multiplier(1.0, 0.5)));
  cr_expect(isnan(fl__dp_update_multiplier(1.0, 0.2)));
  cr_expect_eq(fl__dp_update_multiplier(1.5, INFINITY), 1.5);
  /* All updates unclipped (b = 1) above the target 0.5: the clip shrinks by exp(-eta/2). */
  cr_expect(fabs(fl__dp_next_clip(2.0, 0.2, 1.0, 0.5) - 2.0 * exp(-0.1)) < 1e-15);
  cr_expect(fabs(fl__dp_next_clip(2.0, 0.2, 0.0, 0.5) - 2.0 * exp(0.1)) < 1e-15);
  cr_expect_eq(fl__dp_next_clip(2.0, 0.2, 0.5, 0.5), 2.0);
}
