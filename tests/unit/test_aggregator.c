/* Aggregators (server/rounds/aggregator.c) against values computed independently with numpy
 * (tests/unit/data/aggregator_cases.py -> aggregator_cases.txt): ties, even n, f at its limit;
 * plus parameter refusals, untouched output on error, outlier resistance, allocation failures. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "rng.h"
#include "rounds/aggregator.h"
#include "test_alloc.h"

#define CASES FL_SOURCE_DIR "/tests/unit/data/aggregator_cases.txt"

/* fl__agg_run over in-memory rows. */
static int run_rows(const fl_agg_params *p, const float *const *u, size_t n, size_t dim, float *out,
                    const fl_allocator *a) {
  fl_agg_source src;
  fl__agg_source_rows(&src, u, n, dim);
  return fl__agg_run(p, &src, out, a);
}

typedef struct agg_case {
  fl_agg_params p;
  char rule[32];
  size_t n, dim;
  float *rows;  /* n x dim */
  double *want; /* dim */
} agg_case;

/* Reads the next case; 0 at the end of the file. */
static int next_case(FILE *f, agg_case *c) {
  char line[256];
  do {
    if (fgets(line, sizeof line, f) == NULL)
      return 0;
  } while (line[0] == '#');
  double trim;
  unsigned fz, m;
  cr_assert_eq(sscanf(line, "case %31s %zu %zu %lf %u %u", c->rule, &c->n, &c->dim, &trim, &fz, &m),
               6, "bad case line: %s", line);
  int rule = fl__agg_rule(c->rule);
  cr_assert_geq(rule, 0, "%s", c->rule);
  c->p = (fl_agg_params){
      .rule = (fl_agg_rule)rule, .trim_fraction = trim, .byzantine = fz, .krum_select = m};
  c->rows = malloc(c->n * c->dim * sizeof *c->rows);
  c->want = malloc(c->dim * sizeof *c->want);
  cr_assert(c->rows && c->want);
  for (size_t i = 0; i < c->n * c->dim; i++)
    cr_assert_eq(fscanf(f, "%f", &c->rows[i]), 1);
  cr_assert_eq(fscanf(f, " expect"), 0);
  for (size_t j = 0; j < c->dim; j++)
    cr_assert_eq(fscanf(f, "%lf", &c->want[j]), 1);
  cr_assert_not_null(fgets(line, sizeof line, f)); /* the rest of the expect line */
  return 1;
}

Test(aggregator, every_rule_matches_numpy) {
  FILE *f = fopen(CASES, "r");
  cr_assert_not_null(f, "%s", CASES);
  agg_case c;
  int count = 0, seen[6] = {0};
  while (next_case(f, &c)) {
    const float *u[64];
    cr_assert_leq(c.n, 64);
    for (size_t i = 0; i < c.n; i++)
      u[i] = c.rows + i * c.dim;
    float out[64];
    cr_assert_eq(run_rows(&c.p, u, c.n, c.dim, out, NULL), FL_OK, "case %d %s", count, c.rule);
    for (size_t j = 0; j < c.dim; j++)
      cr_assert_float_eq(out[j], c.want[j], 1e-6 * (1.0 + fabs(c.want[j])),
                         "case %d (%s n=%zu f=%u) coordinate %zu: %.9g, numpy %.9g", count, c.rule,
                         c.n, c.p.byzantine, j, out[j], c.want[j]);
    seen[c.p.rule]++;
    count++;
    free(c.rows);
    free(c.want);
  }
  fclose(f);
  cr_assert_geq(count, 19);
  for (int r = FL_AGGR_MEDIAN; r <= FL_AGGR_BULYAN; r++)
    cr_assert_gt(seen[r], 0, "no case for %s", fl__agg_rule_name((fl_agg_rule)r));
}

Test(aggregator, names_and_kinds) {
  const char *names[] = {"fedavg", "median", "trimmed_mean", "krum", "multi_krum", "bulyan"};
  for (int i = 0; i < 6; i++) {
    cr_assert_eq(fl__agg_rule(names[i]), i);
    cr_assert_str_eq(fl__agg_rule_name((fl_agg_rule)i), names[i]);
    cr_assert_eq(fl__agg_kind((fl_agg_rule)i), i == 0 ? FL_AGG_STREAMING : FL_AGG_STORED);
  }
  cr_assert_eq(fl__agg_rule("Median"), -1);
  cr_assert_eq(fl__agg_rule(NULL), -1);
  cr_assert_null(fl__agg_rule_name((fl_agg_rule)6));
}

Test(aggregator, plan_checks) {
  char why[160];
  fl_agg_params p = {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = 0.5};
  cr_assert_eq(fl__agg_check(&p, 10, 10, why, sizeof why), -1);
  cr_assert(strstr(why, "trim_fraction") != NULL, "%s", why);
  p.trim_fraction = -0.1;
  cr_assert_eq(fl__agg_check(&p, 10, 10, why, sizeof why), -1);
  p.trim_fraction = 0.49;
  cr_assert_eq(fl__agg_check(&p, 1, 10, why, sizeof why), 0);
  p = (fl_agg_params){.rule = FL_AGGR_KRUM, .byzantine = 2};
  cr_assert_eq(fl__agg_min_updates(&p), 7);
  cr_assert_eq(fl__agg_check(&p, 7, 10, why, sizeof why), 0);
  cr_assert_eq(fl__agg_check(&p, 6, 10, why, sizeof why), -1, "min_participants below 2f+3");
  cr_assert(strstr(why, "at least 7") != NULL, "%s", why);
  p = (fl_agg_params){.rule = FL_AGGR_BULYAN, .byzantine = 2};
  cr_assert_eq(fl__agg_min_updates(&p), 11);
  cr_assert_eq(fl__agg_check(&p, 10, 20, why, sizeof why), -1);
  p = (fl_agg_params){.rule = FL_AGGR_MULTI_KRUM, .byzantine = 1, .krum_select = 0};
  cr_assert_eq(fl__agg_check(&p, 10, 10, why, sizeof why), -1);
  p.krum_select = 11;
  cr_assert_eq(fl__agg_check(&p, 10, 10, why, sizeof why), -1, "m above participants");
  p.krum_select = 10;
  cr_assert_eq(fl__agg_check(&p, 10, 10, why, sizeof why), 0);
}

Test(aggregator, refusals_leave_output_untouched) {
  float rows[4][3] = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}, {1, 1, 1}};
  const float *u[4] = {rows[0], rows[1], rows[2], rows[3]};
  float out[3] = {42, 42, 42};
  fl_agg_params fedavg = {.rule = FL_AGGR_FEDAVG};
  cr_assert_eq(run_rows(&fedavg, u, 4, 3, out, NULL), FL_E_INVAL, "streaming rule");
  fl_agg_params krum = {.rule = FL_AGGR_KRUM, .byzantine = 1};
  cr_assert_eq(run_rows(&krum, u, 4, 3, out, NULL), FL_E_INVAL, "n < 2f + 3");
  fl_agg_params tm = {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = 0.5};
  cr_assert_eq(run_rows(&tm, u, 4, 3, out, NULL), FL_E_INVAL);
  fl_agg_params med = {.rule = FL_AGGR_MEDIAN};
  cr_assert_eq(run_rows(&med, u, 0, 3, out, NULL), FL_E_INVAL, "no updates");
  for (int j = 0; j < 3; j++)
    cr_assert_eq(out[j], 42.0f);
}

/* 30% of the updates are huge sign-flipped copies: each robust rule stays near the honest
 * mean (within the honest spread), the plain mean does not. */
Test(aggregator, outliers_do_not_move_robust_rules) {
  enum { N = 20, D = 500, BAD = 6 };
  static float rows[N][D];
  const float *u[N];
  fl_rng r;
  fl__rng_seed(&r, 5);
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < D; j++)
      rows[i][j] = (float)(1.0 + 0.1 * fl__rng_normal(&r));
    u[i] = rows[i];
  }
  for (int i = 0; i < BAD; i++)
    for (int j = 0; j < D; j++)
      rows[3 * i + 1][j] = -1000.0f * rows[3 * i + 1][j];
  const fl_agg_params rules[] = {
      {.rule = FL_AGGR_MEDIAN},
      {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = 0.35},
      {.rule = FL_AGGR_KRUM, .byzantine = BAD},
      {.rule = FL_AGGR_MULTI_KRUM, .byzantine = BAD, .krum_select = 5},
      {.rule = FL_AGGR_BULYAN, .byzantine = 4},
  };
  static float out[D];
  for (size_t k = 0; k < sizeof rules / sizeof rules[0]; k++) {
    cr_assert_eq(run_rows(&rules[k], u, N, D, out, NULL), FL_OK, "%zu", k);
    for (int j = 0; j < D; j++) {
      cr_assert(isfinite(out[j]));
      cr_assert_float_eq(out[j], 1.0f, 0.45f, "%s coordinate %d: %g",
                         fl__agg_rule_name(rules[k].rule), j, out[j]);
    }
  }
}

/* Many sizes across the block boundary (256 coordinates) against a naive median. */
Test(aggregator, median_across_blocks_matches_sorting) {
  enum { N = 9, D = 700 };
  static float rows[N][D];
  const float *u[N];
  fl_rng r;
  fl__rng_seed(&r, 9);
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < D; j++)
      rows[i][j] = (float)fl__rng_normal(&r);
    u[i] = rows[i];
  }
  static float out[D];
  fl_agg_params p = {.rule = FL_AGGR_MEDIAN};
  cr_assert_eq(run_rows(&p, u, N, D, out, NULL), FL_OK);
  for (int j = 0; j < D; j++) {
    int below = 0, above = 0;
    for (int i = 0; i < N; i++) {
      below += rows[i][j] < out[j];
      above += rows[i][j] > out[j];
    }
    cr_assert(below == N / 2 && above == N / 2, "coordinate %d", j);
  }
}

static int cmp_f(const void *x, const void *y) {
  float a = *(const float *)x, b = *(const float *)y;
  return (a > b) - (a < b);
}

/* The trimmed mean's two cuts share one selection (select2_f): every n from 1 to 40, trims
 * from none to the most allowed, values with many ties or none, across the 256-coordinate
 * block boundary, against sorting each column. */
Test(aggregator, trimmed_mean_matches_sorting_for_every_cut) {
  enum { D = 300, NMAX = 40 };
  static float rows[NMAX][D], out[D];
  const float *u[NMAX];
  fl_rng r;
  fl__rng_seed(&r, 11);
  for (size_t n = 1; n <= NMAX; n++) {
    for (int ties = 0; ties < 2; ties++) {
      for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < D; j++)
          rows[i][j] = ties ? (float)fl__rng_below(&r, 4) : (float)fl__rng_normal(&r);
        u[i] = rows[i];
      }
      for (size_t t = 0; 2 * t < n; t++) {
        /* floor(beta n) = t for beta = (t + 0.25) / n, which stays below 0.5 */
        fl_agg_params p = {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = (t + 0.25) / (double)n};
        cr_assert_eq(run_rows(&p, u, n, D, out, NULL), FL_OK);
        for (int j = 0; j < D; j++) {
          float col[NMAX];
          for (size_t i = 0; i < n; i++)
            col[i] = rows[i][j];
          qsort(col, n, sizeof *col, cmp_f);
          double s = 0.0;
          for (size_t i = t; i < n - t; i++)
            s += col[i];
          float want = (float)(s / (double)(n - 2 * t));
          cr_assert_float_eq(out[j], want, 1e-6 * (1.0 + fabs(want)),
                             "n %zu t %zu ties %d coordinate %d: %.9g, sorted %.9g", n, t, ties, j,
                             out[j], want);
        }
      }
    }
  }
}

/* floor(beta n) is taken of the decimal beta: 0.29 of 100 updates trims 29 per side, though
 * 0.29 * 100 is 28.999999999999996 in double. Values k^2 for k = 0..99 in a shuffled order:
 * trimming 29 keeps k = 29..70, trimming 28 would keep 28..71 (a larger mean). */
Test(aggregator, trim_count_is_floor_of_the_decimal_fraction) {
  enum { N = 100 };
  static float rows[N][1];
  const float *u[N];
  for (int i = 0; i < N; i++) {
    int k = (i * 37) % N;
    rows[i][0] = (float)(k * k);
    u[i] = rows[i];
  }
  double want = 0.0;
  for (int k = 29; k <= 70; k++)
    want += (double)(k * k) / 42.0;
  float out[1];
  fl_agg_params p = {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = 0.29};
  cr_assert_eq(run_rows(&p, u, N, 1, out, NULL), FL_OK);
  cr_assert_float_eq(out[0], (float)want, 1e-3, "%.9g, want %.9g", out[0], want);
}

/* Finite inputs give finite results, even at float's extremes: squared distances of
 * +-FLT_MAX updates (about 1e77 a coordinate) and sums of n of them stay inside double, and
 * every result is a mean of input values. A rule that computed in float would give inf or
 * NaN here. */
Test(aggregator, extreme_finite_inputs_give_finite_results) {
  enum { N = 11, D = 260 };
  static float rows[N][D], out[D];
  const float *u[N];
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < D; j++) {
      int k = (i * 7 + j * 3) % 5;
      rows[i][j] = k == 0 ? FLT_MAX : k == 1 ? -FLT_MAX : k == 2 ? FLT_TRUE_MIN : (float)(k - 3);
    }
    u[i] = rows[i];
  }
  const fl_agg_params rules[] = {
      {.rule = FL_AGGR_MEDIAN},
      {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = 0.2},
      {.rule = FL_AGGR_KRUM, .byzantine = 4},
      {.rule = FL_AGGR_MULTI_KRUM, .byzantine = 4, .krum_select = 11},
      {.rule = FL_AGGR_BULYAN, .byzantine = 2},
  };
  for (size_t k = 0; k < sizeof rules / sizeof rules[0]; k++) {
    cr_assert_eq(run_rows(&rules[k], u, N, D, out, NULL), FL_OK, "%zu", k);
    for (int j = 0; j < D; j++) {
      float lo = FLT_MAX, hi = -FLT_MAX;
      for (int i = 0; i < N; i++) {
        lo = fminf(lo, rows[i][j]);
        hi = fmaxf(hi, rows[i][j]);
      }
      cr_assert(isfinite(out[j]) && out[j] >= lo && out[j] <= hi, "%s coordinate %d: %g",
                fl__agg_rule_name(rules[k].rule), j, out[j]);
    }
  }
  /* A column of FLT_MAX stays FLT_MAX (no overflow of the sum in double). */
  for (int i = 0; i < N; i++)
    rows[i][0] = FLT_MAX;
  for (size_t k = 0; k < sizeof rules / sizeof rules[0]; k++) {
    cr_assert_eq(run_rows(&rules[k], u, N, D, out, NULL), FL_OK, "%zu", k);
    cr_assert_eq(out[0], FLT_MAX, "%s: %g", fl__agg_rule_name(rules[k].rule), out[0]);
  }
}

Test(aggregator, allocation_failures_leak_nothing) {
  enum { N = 11, D = 300 };
  static float rows[N][D];
  const float *u[N];
  for (int i = 0; i < N; i++) {
    for (int j = 0; j < D; j++)
      rows[i][j] = (float)((i * 31 + j * 7) % 13) - 6.0f;
    u[i] = rows[i];
  }
  const fl_agg_params rules[] = {
      {.rule = FL_AGGR_MEDIAN},
      {.rule = FL_AGGR_TRIMMED_MEAN, .trim_fraction = 0.2},
      {.rule = FL_AGGR_MULTI_KRUM, .byzantine = 2, .krum_select = 3},
      {.rule = FL_AGGR_BULYAN, .byzantine = 2},
  };
  for (size_t k = 0; k < sizeof rules / sizeof rules[0]; k++) {
    static float ok[D], out[D];
    cr_assert_eq(run_rows(&rules[k], u, N, D, ok, NULL), FL_OK);
    for (long fail = 0;; fail++) {
      test_alloc t = {.fail_at = fail};
      fl_allocator a = test_alloc_hooks(&t);
      memset(out, 0, sizeof out);
      int err = run_rows(&rules[k], u, N, D, out, &a);
      cr_assert_eq(t.live, 0, "rule %zu fail_at %ld leaked", k, fail);
      if (t.failed == 0) {
        cr_assert_eq(err, FL_OK);
        cr_assert_eq(memcmp(out, ok, sizeof ok), 0);
        break;
      }
      cr_assert_eq(err, FL_E_NOMEM, "rule %zu fail_at %ld", k, fail);
      for (int j = 0; j < D; j++)
        cr_assert_eq(out[j], 0.0f, "untouched on failure");
    }
  }
}

/* A source error aborts the aggregation, reaches the caller and leaves out untouched. */
static int failing_read(void *ctx, size_t i, size_t off, size_t len, float *dst) {
  (void)dst;
  (void)len;
  size_t *calls = ctx;
  return ++*calls > 5 && i == 2 && off >= 256 ? FL_E_PARSE : (memset(dst, 0, len * 4), FL_OK);
}

Test(aggregator, source_errors_propagate) {
  const fl_agg_params rules[] = {
      {.rule = FL_AGGR_MEDIAN},
      {.rule = FL_AGGR_KRUM, .byzantine = 1},
      {.rule = FL_AGGR_BULYAN, .byzantine = 1},
  };
  static float out[600];
  for (size_t k = 0; k < 3; k++) {
    size_t calls = 0;
    fl_agg_source src = {.n = 7, .dim = 600, .read = failing_read, .ctx = &calls};
    for (int j = 0; j < 600; j++)
      out[j] = 7.0f;
    cr_assert_eq(fl__agg_run(&rules[k], &src, out, NULL), FL_E_PARSE, "%zu", k);
    for (int j = 0; j < 600; j++)
      cr_assert_eq(out[j], 7.0f);
  }
}

Test(aggregator, krum_scores_by_hand) {
  /* Four points on a line at 0, 1, 3, 10 (one coordinate), f = 0: k = n - 2 = 2 neighbours.
   * Squared distances: 0:{1,9,100} 1:{1,4,81} 3:{9,4,49} 10:{100,81,49}. */
  const float pts[4][1] = {{0}, {1}, {3}, {10}};
  const float *u[4] = {pts[0], pts[1], pts[2], pts[3]};
  fl_agg_source src;
  fl__agg_source_rows(&src, u, 4, 1);
  double score[4];
  cr_assert_eq(fl__agg_krum_scores(&src, 0, score, NULL), FL_OK);
  const double want[4] = {10, 5, 13, 130};
  for (int i = 0; i < 4; i++)
    cr_assert_float_eq(score[i], want[i], 1e-12, "%d: %g", i, score[i]);
  float out[1];
  fl_agg_params krum = {.rule = FL_AGGR_KRUM};
  cr_assert_eq(fl__agg_run(&krum, &src, out, NULL), FL_OK);
  cr_assert_eq(out[0], 1.0f, "the point with the lowest score");
}
