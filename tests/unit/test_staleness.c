/* FedBuff staleness weights and the buffer's arithmetic (server/rounds/staleness.c), against
 * values computed by hand: s(tau) for each function, and a buffer of three float32 deltas
 * folded as the group commit folds them (fl__tensor_fold with fl__staleness_fold_scale) and
 * divided by the buffer's weight as close.c does. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "codec.h"
#include "rounds/staleness.h"

static fl_staleness parse(const char *text) {
  fl_staleness f;
  char msg[160];
  cr_assert_eq(fl__staleness_parse(text, &f, msg), 0, "%s: %s", text, msg);
  return f;
}

Test(staleness, sqrt_is_the_papers_default) {
  fl_staleness f = parse("sqrt");
  cr_assert_float_eq(fl__staleness_weight(&f, 0), 1.0, 1e-15);
  cr_assert_float_eq(fl__staleness_weight(&f, 3), 0.5, 1e-15);       /* 1/sqrt(4) */
  cr_assert_float_eq(fl__staleness_weight(&f, 8), 1.0 / 3.0, 1e-15); /* 1/sqrt(9) */
  cr_assert_float_eq(fl__staleness_weight(&f, 1), 0.70710678118654752, 1e-15);
}

Test(staleness, poly_and_constant) {
  fl_staleness f = parse("poly:1");
  cr_assert_float_eq(fl__staleness_weight(&f, 3), 0.25, 1e-15);
  cr_assert_float_eq(fl__staleness_weight(&f, 9), 0.1, 1e-15);
  f = parse("poly:2");
  cr_assert_float_eq(fl__staleness_weight(&f, 1), 0.25, 1e-15);
  f = parse("poly:0.5"); /* the same function as sqrt */
  cr_assert_float_eq(fl__staleness_weight(&f, 3), 0.5, 1e-15);
  f = parse("constant");
  cr_assert_float_eq(fl__staleness_weight(&f, 1000), 1.0, 1e-15);
  f = parse("poly:0");
  cr_assert_float_eq(fl__staleness_weight(&f, 7), 1.0, 1e-15);
}

Test(staleness, names_round_trip) {
  const char *names[] = {"sqrt", "constant", "poly:1", "poly:0.25", "poly:3.5"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    fl_staleness f = parse(names[i]), g;
    char buf[40], msg[160];
    fl__staleness_name(&f, buf, sizeof buf);
    cr_assert_eq(fl__staleness_parse(buf, &g, msg), 0, "%s -> %s", names[i], buf);
    cr_assert_eq(g.kind, f.kind);
    cr_assert_eq(g.exponent, f.exponent);
  }
  fl_staleness f = parse("poly:1");
  char buf[40];
  fl__staleness_name(&f, buf, sizeof buf);
  cr_assert_str_eq(buf, "poly:1");
}

Test(staleness, refuses_bad_names) {
  const char *bad[] = {"",        "Sqrt",    "poly",     "poly:",    "poly:-1",
                       "poly:11", "poly:1x", "poly:nan", "poly:inf", "linear"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fl_staleness f = {.exponent = 42};
    char msg[160] = "";
    cr_assert_eq(fl__staleness_parse(bad[i], &f, msg), -1, "%s accepted", bad[i]);
    cr_assert(strstr(msg, "staleness must be") != NULL);
    cr_assert_eq(f.exponent, 42, "a refused name leaves the output alone");
  }
  char msg[160];
  fl_staleness f;
  cr_assert_eq(fl__staleness_parse(NULL, &f, msg), -1);
}

Test(staleness, tau_counts_versions) {
  cr_assert_eq(fl__staleness_tau(7, 7), 0);
  cr_assert_eq(fl__staleness_tau(7, 4), 3);
  cr_assert_eq(fl__staleness_tau(4, 7), -1, "a base newer than the buffer's");
  cr_assert_eq(fl__staleness_tau(UINT64_MAX, 0), -1);
}

/* Three updates (n = 10, 20, 10; tau = 0, 3, 8) folded into one buffer as the committer does,
 * divided by the sum of sample counts as close.c does. Hand computation with sqrt:
 *   sum    = 10*1*(1,2) + 20*(1/2)*(3,-1) + 10*(1/3)*(-2,4) = (100/3, 70/3)
 *   weight = 40, mean = (5/6, 7/12)
 * and with poly:1 (s = 1, 1/4, 1/9): sum = (205/9, 175/9), mean = (41/72, 35/72). */
static void fold_buffer(const char *fn, double expect0, double expect1) {
  static const float d[3][2] = {{1, 2}, {3, -1}, {-2, 4}};
  static const double n[3] = {10, 20, 10};
  static const uint32_t tau[3] = {0, 3, 8};
  fl_staleness f = parse(fn);
  float sum[2] = {0, 0};
  double weight = 0;
  for (int i = 0; i < 3; i++) {
    Fl__V1__Tensor t;
    fl__v1__tensor__init(&t);
    cr_assert_eq(
        fl__tensor_encode(&t, d[i], 2, NULL, 0, FL__V1__ENCODING__ENCODING_FLOAT32, 0, NULL),
        FL_OK);
    double s = fl__staleness_weight(&f, tau[i]);
    fl__tensor_fold(&t, (float)fl__staleness_fold_scale(n[i], s), sum);
    weight += n[i]; /* the FedAvg weight, not s * n (staleness.h) */
    fl__tensor_release(&t, NULL);
  }
  cr_assert_float_eq(sum[0] / weight, expect0, 1e-6, "%s: %.9g", fn, sum[0] / weight);
  cr_assert_float_eq(sum[1] / weight, expect1, 1e-6, "%s: %.9g", fn, sum[1] / weight);
}

Test(staleness, buffer_mean_by_hand) {
  fold_buffer("sqrt", 5.0 / 6.0, 7.0 / 12.0);
  fold_buffer("poly:1", 41.0 / 72.0, 35.0 / 72.0);
  fold_buffer("constant", (10 + 60 - 20) / 40.0, (20 - 20 + 40) / 40.0);
}

Test(staleness, sync_updates_keep_their_factor) {
  cr_assert_float_eq(fl__staleness_fold_scale(25, 0), 25, 1e-15);
  cr_assert_float_eq(fl__staleness_fold_scale(25, 0.5), 12.5, 1e-15);
  cr_assert_float_eq(fl__staleness_fold_scale(0.75, 1.0 / 3.0), 0.25, 1e-15);
}
