/*
 * Aggregation of federated evaluation reports (evalstats.c, pure math: no database).
 *
 * Every device reports the mean of a metric over its n_i hold-out examples. The version's
 * metric is the weighted mean of the device means with weights w_i = min(n_i, cap): weighted
 * by sample count, but no device counts for more than `cap` examples (one device with a huge
 * hold-out set cannot decide the result alone). Its 95% confidence interval treats devices as
 * the sampled units (a cluster sample; the examples of one device are not independent):
 *
 *   mean = sum w_i x_i / W,  W = sum w_i
 *   var  = k / (k - 1) * sum w_i^2 (x_i - mean)^2 / W^2     (the linearized ratio estimator's
 *                                                            variance, with the small-sample
 *                                                            factor; HC1 "sandwich" form)
 *   CI   = mean -+ t(0.975, k - 1) * sqrt(var)
 *
 * with k the number of reports and t Student's quantile. With one report there is no interval.
 */
#ifndef FL__EVALSTATS_H
#define FL__EVALSTATS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fl_eval_stat {
  size_t reports;      /* k */
  double samples;      /* sum of n_i (uncapped) */
  double weight;       /* W: sum of the capped weights */
  double mean;         /* NaN without reports */
  double se;           /* sqrt(var); NaN with fewer than 2 reports */
  double ci_lo, ci_hi; /* NaN with fewer than 2 reports */
} fl_eval_stat;

/* Student's t quantile at 0.975 for df >= 1 (a table to 30, then the Cornish-Fisher series,
 * within 2e-5 of the exact value). NaN for df < 1. */
double fl__t975(double df);

/* The capped weighted mean and its interval over k reports (values x, sample counts n);
 * cap <= 0: no cap. Reports with n = 0 or a non-finite value are skipped. */
void fl__eval_stat(const double *x, const double *n, size_t k, double cap, fl_eval_stat *out);

/* One device's report: its example count, its metrics object ({"loss": 0.3, ...}) and its
 * stratum (the value of the policy's by_label label, "" without one). */
typedef struct fl_eval_report {
  double n;
  const json_t *metrics;
  const char *stratum;
} fl_eval_report;

/* The result of a campaign over its reports (one per device):
 *   {"reports": k, "samples": S, "max_weight": cap,
 *    "metrics": {"loss": STAT, ...},
 *    "by_label": {"key": "site", "values": {"a": {"reports":, "samples":, "metrics": {...}}}}}
 * with STAT = {"mean", "ci95_low", "ci95_high", "se", "reports", "samples", "weight"} (null
 * where undefined); by_label only when by_label is not NULL. NULL on allocation failure. */
json_t *fl__eval_result(const fl_eval_report *r, size_t k, double cap, const char *by_label);

#endif
