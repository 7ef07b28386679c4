/* Held-out metrics of fl-sim: ROC AUC, quantiles, precision/recall. */
#include <criterion/criterion.h>
#include <math.h>

#include "eval.h"

Test(sim_eval, auc_perfect_reversed_and_ties) {
  float s[6] = {0.1f, 0.2f, 0.3f, 0.7f, 0.8f, 0.9f};
  int32_t up[6] = {0, 0, 0, 1, 2, 3}, down[6] = {1, 1, 1, 0, 0, 0};
  cr_assert_float_eq(sim_auc(s, up, 6), 1.0, 1e-12);
  cr_assert_float_eq(sim_auc(s, down, 6), 0.0, 1e-12);
  float flat[4] = {1, 1, 1, 1};
  int32_t mix[4] = {0, 1, 0, 1};
  cr_assert_float_eq(sim_auc(flat, mix, 4), 0.5, 1e-12);
}

Test(sim_eval, auc_counts_pairs) {
  /* Positives 0.4, 0.8; negatives 0.1, 0.5, 0.9: pairs won 1+2 of 6, plus nothing tied. */
  float s[5] = {0.1f, 0.4f, 0.5f, 0.8f, 0.9f};
  int32_t y[5] = {0, 1, 0, 1, 0};
  cr_assert_float_eq(sim_auc(s, y, 5), 3.0 / 6.0, 1e-12);
  /* One tie between a positive and a negative counts one half. */
  float t[3] = {0.5f, 0.5f, 0.1f};
  int32_t z[3] = {1, 0, 0};
  cr_assert_float_eq(sim_auc(t, z, 3), 1.5 / 2.0, 1e-12);
}

Test(sim_eval, auc_undefined_with_one_class) {
  float s[3] = {1, 2, 3};
  int32_t y[3] = {0, 0, 0};
  cr_assert(isnan(sim_auc(s, y, 3)));
}

Test(sim_eval, quantile_nearest_rank) {
  float s[5] = {5, 1, 4, 2, 3};
  cr_assert_float_eq(sim_quantile(s, 5, 0.0), 1.0, 1e-12);
  cr_assert_float_eq(sim_quantile(s, 5, 0.5), 3.0, 1e-12);
  cr_assert_float_eq(sim_quantile(s, 5, 0.8), 4.0, 1e-12);
  cr_assert_float_eq(sim_quantile(s, 5, 1.0), 5.0, 1e-12);
  cr_assert_float_eq(s[0], 5.0f, 1e-12, "input left in place");
  cr_assert(isnan(sim_quantile(s, 0, 0.5)));
}

Test(sim_eval, precision_recall_at_threshold) {
  float s[6] = {0.1f, 0.6f, 0.2f, 0.9f, 0.7f, 0.3f};
  int32_t y[6] = {0, 0, 0, 2, 1, 1};
  double p, r;
  sim_precision_recall(s, y, 6, 0.5, &p, &r);
  cr_assert_float_eq(p, 2.0 / 3.0, 1e-12);
  cr_assert_float_eq(r, 2.0 / 3.0, 1e-12);
  sim_precision_recall(s, y, 6, 1.0, &p, &r);
  cr_assert_float_eq(p, 1.0, 1e-12);
  cr_assert_float_eq(r, 0.0, 1e-12);
}

/* Cohorts are whole devices: device k owns rows [k * per, (k + 1) * per). */
Test(sim_eval, cohort_detection_takes_the_members_rows) {
  /* Three devices of four rows; device 1 is the cohort. Its detector is perfect at 0.5; the
   * others' scores are reversed. */
  float s[12] = {0.9f, 0.8f, 0.1f, 0.2f, 0.1f, 0.2f, 0.8f, 0.9f, 0.9f, 0.8f, 0.1f, 0.2f};
  int32_t y[12] = {0, 0, 1, 1, 0, 0, 1, 3, 0, 0, 1, 1};
  uint8_t member[3] = {0, 1, 0};
  sim_detection in, out;
  cr_assert_eq(sim_cohort_detection(s, y, 3, 4, member, 1, 0.5, &in), 0);
  cr_assert_eq(in.n, 4);
  cr_assert_float_eq(in.auc, 1.0, 1e-12);
  cr_assert_float_eq(in.precision, 1.0, 1e-12);
  cr_assert_float_eq(in.recall, 1.0, 1e-12);
  cr_assert_float_eq(in.f1, 1.0, 1e-12);
  cr_assert_eq(sim_cohort_detection(s, y, 3, 4, member, 0, 0.5, &out), 0);
  cr_assert_eq(out.n, 8);
  cr_assert_float_eq(out.auc, 0.0, 1e-12);
  cr_assert_float_eq(out.recall, 0.0, 1e-12);
  cr_assert_float_eq(out.f1, 0.0, 1e-12);
  /* An empty cohort: no rows, AUC undefined. */
  uint8_t none[3] = {0, 0, 0};
  cr_assert_eq(sim_cohort_detection(s, y, 3, 4, none, 1, 0.5, &in), 0);
  cr_assert_eq(in.n, 0);
  cr_assert(isnan(in.auc));
}
