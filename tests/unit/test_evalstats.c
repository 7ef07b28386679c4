/* Aggregation of evaluation reports (server/registry/evalstats.c): the capped weighted mean,
 * its HC1 standard error and Student-t interval, against values computed by hand here. */
#include <criterion/criterion.h>
#include <math.h>

#include "registry/evalstats.h"

Test(evalstats, t_quantile) {
  /* Exact values (R: qt(0.975, df)). */
  cr_expect_float_eq(fl__t975(1), 12.7062047, 1e-6);
  cr_expect_float_eq(fl__t975(9), 2.2621572, 1e-6);
  cr_expect_float_eq(fl__t975(30), 2.0422725, 1e-6);
  cr_expect_float_eq(fl__t975(31), 2.0395134, 2e-5);
  cr_expect_float_eq(fl__t975(40), 2.0210754, 2e-5);
  cr_expect_float_eq(fl__t975(60), 2.0002978, 2e-5);
  cr_expect_float_eq(fl__t975(120), 1.9799304, 2e-5);
  cr_expect_float_eq(fl__t975(1e6), 1.959966, 2e-5);
  cr_expect(isnan(fl__t975(0)));
}

Test(evalstats, capped_weighted_mean_and_interval) {
  /* Weights min(n, 100): 10, 100, 100, 50. */
  const double x[] = {0.2, 0.4, 0.6, 1.0}, n[] = {10, 100, 1000, 50};
  fl_eval_stat s;
  fl__eval_stat(x, n, 4, 100, &s);
  double W = 260, mean = (10 * 0.2 + 100 * 0.4 + 100 * 0.6 + 50 * 1.0) / W;
  double v = (100 * pow(0.2 - mean, 2) + 1e4 * pow(0.4 - mean, 2) + 1e4 * pow(0.6 - mean, 2) +
              2500 * pow(1.0 - mean, 2)) /
             (W * W) * 4.0 / 3.0;
  cr_expect_eq(s.reports, 4);
  cr_expect_float_eq(s.samples, 1160, 1e-12);
  cr_expect_float_eq(s.weight, W, 1e-12);
  cr_expect_float_eq(s.mean, mean, 1e-12);
  cr_expect_float_eq(s.se, sqrt(v), 1e-12);
  cr_expect_float_eq(s.ci_lo, mean - 3.1824463 * sqrt(v), 1e-6);
  cr_expect_float_eq(s.ci_hi, mean + 3.1824463 * sqrt(v), 1e-6);
  /* Without a cap the big device dominates. */
  fl__eval_stat(x, n, 4, 0, &s);
  cr_expect_float_eq(s.mean, (2 + 40 + 600 + 50) / 1160.0, 1e-12);
}

Test(evalstats, skipped_and_single_reports) {
  const double x[] = {0.5, NAN, 0.9, 0.1}, n[] = {20, 30, 0, 40};
  fl_eval_stat s;
  fl__eval_stat(x, n, 4, 0, &s);
  cr_expect_eq(s.reports, 2); /* the NaN and the empty report are left out */
  cr_expect_float_eq(s.mean, (10 + 4) / 60.0, 1e-12);
  fl__eval_stat(x, n, 1, 0, &s);
  cr_expect_eq(s.reports, 1);
  cr_expect_float_eq(s.mean, 0.5, 1e-12);
  cr_expect(isnan(s.se) && isnan(s.ci_lo) && isnan(s.ci_hi));
  fl__eval_stat(x, n, 0, 0, &s);
  cr_expect_eq(s.reports, 0);
  cr_expect(isnan(s.mean));
}

Test(evalstats, result_json_overall_and_per_label) {
  json_t *m[3] = {json_pack("{s:f, s:f}", "loss", 0.5, "accuracy", 0.75),
                  json_pack("{s:f}", "loss", 0.25),
                  json_pack("{s:f, s:f}", "loss", 1.0, "accuracy", 0.5)};
  fl_eval_report r[3] = {{10, m[0], "a"}, {30, m[1], "b"}, {500, m[2], "a"}};
  json_t *j = fl__eval_result(r, 3, 100, "site");
  cr_assert_not_null(j);
  cr_expect_eq(json_integer_value(json_object_get(j, "reports")), 3);
  cr_expect_float_eq(json_number_value(json_object_get(j, "samples")), 540, 1e-12);
  json_t *loss = json_object_get(json_object_get(j, "metrics"), "loss");
  cr_expect_float_eq(json_number_value(json_object_get(loss, "mean")), (5 + 7.5 + 100) / 140.0,
                     1e-12);
  json_t *acc = json_object_get(json_object_get(j, "metrics"), "accuracy");
  cr_expect_eq(json_integer_value(json_object_get(acc, "reports")), 2);
  cr_expect_float_eq(json_number_value(json_object_get(acc, "mean")), (7.5 + 50) / 110.0, 1e-12);
  json_t *vals = json_object_get(json_object_get(j, "by_label"), "values");
  json_t *b = json_object_get(json_object_get(json_object_get(vals, "b"), "metrics"), "loss");
  cr_expect_float_eq(json_number_value(json_object_get(b, "mean")), 0.25, 1e-12);
  cr_expect(json_is_null(json_object_get(b, "ci95_low")));
  cr_expect_null(
      json_object_get(json_object_get(json_object_get(vals, "b"), "metrics"), "accuracy"));
  json_t *a = json_object_get(json_object_get(json_object_get(vals, "a"), "metrics"), "loss");
  cr_expect_eq(json_integer_value(json_object_get(a, "reports")), 2);
  json_decref(j);
  j = fl__eval_result(r, 3, 100, NULL);
  cr_expect_null(json_object_get(j, "by_label"));
  json_decref(j);
  for (int i = 0; i < 3; i++)
    json_decref(m[i]);
}
