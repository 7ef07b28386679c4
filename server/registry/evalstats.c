/*
 * Capped, sample-weighted means of evaluation reports with their 95% intervals (evalstats.h
 * states the estimator).
 */
#include "registry/evalstats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* t(0.975, df) for df = 1..30. */
static const double T975[30] = {12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
                                2.446911851,  2.364624252, 2.306004135, 2.262157163, 2.228138852,
                                2.200985160,  2.178812830, 2.160368656, 2.144786688, 2.131449546,
                                2.119905299,  2.109815578, 2.100922040, 2.093024054, 2.085963447,
                                2.079613845,  2.073873068, 2.068657610, 2.063898562, 2.059538553,
                                2.055529439,  2.051830516, 2.048407142, 2.045229642, 2.042272456};

double fl__t975(double df) {
  if (!(df >= 1))
    return NAN;
  if (df <= 30 && df == floor(df))
    return T975[(int)df - 1];
  /* Cornish-Fisher expansion of t in powers of 1/df around the normal quantile. */
  const double z = 1.959963984540054;
  double z2 = z * z, z3 = z2 * z, z5 = z3 * z2, z7 = z5 * z2, z9 = z7 * z2;
  double g1 = (z3 + z) / 4.0;
  double g2 = (5 * z5 + 16 * z3 + 3 * z) / 96.0;
  double g3 = (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / 384.0;
  double g4 = (79 * z9 + 776 * z7 + 1482 * z5 - 1920 * z3 - 945 * z) / 92160.0;
  return z + g1 / df + g2 / (df * df) + g3 / (df * df * df) + g4 / (df * df * df * df);
}

void fl__eval_stat(const double *x, const double *n, size_t k, double cap, fl_eval_stat *out) {
  double w_sum = 0, wx = 0, samples = 0;
  size_t used = 0;
  for (size_t i = 0; i < k; i++) {
    if (!(n[i] > 0) || !isfinite(x[i]) || !isfinite(n[i]))
      continue;
    double w = cap > 0 && n[i] > cap ? cap : n[i];
    w_sum += w;
    wx += w * x[i];
    samples += n[i];
    used++;
  }
  out->reports = used;
  out->samples = samples;
  out->weight = w_sum;
  out->mean = used > 0 ? wx / w_sum : NAN;
  out->se = out->ci_lo = out->ci_hi = NAN;
  if (used < 2)
    return;
  double s = 0;
  for (size_t i = 0; i < k; i++) {
    if (!(n[i] > 0) || !isfinite(x[i]) || !isfinite(n[i]))
      continue;
    double w = cap > 0 && n[i] > cap ? cap : n[i], d = w * (x[i] - out->mean);
    s += d * d;
  }
  double var = (double)used / (double)(used - 1) * s / (w_sum * w_sum);
  out->se = sqrt(var);
  double h = fl__t975((double)(used - 1)) * out->se;
  out->ci_lo = out->mean - h;
  out->ci_hi = out->mean + h;
}

static json_t *num_or_null(double v) {
  return isfinite(v) ? json_real(v) : json_null();
}

static json_t *stat_json(const fl_eval_stat *s) {
  return json_pack("{s:o, s:o, s:o, s:o, s:I, s:f, s:f}", "mean", num_or_null(s->mean), "ci95_low",
                   num_or_null(s->ci_lo), "ci95_high", num_or_null(s->ci_hi), "se",
                   num_or_null(s->se), "reports", (json_int_t)s->reports, "samples", s->samples,
                   "weight", s->weight);
}

/* Every metric named by the reports of one stratum (NULL: all), each with its statistic. */
static json_t *metrics_json(const fl_eval_report *r, size_t k, double cap, const char *stratum,
                            double *x, double *n) {
  json_t *out = json_object();
  for (size_t i = 0; out != NULL && i < k; i++) {
    const char *name;
    json_t *v;
    if (stratum != NULL && strcmp(r[i].stratum, stratum) != 0)
      continue;
    json_object_foreach((json_t *)r[i].metrics, name, v) {
      if (json_object_get(out, name) != NULL)
        continue;
      size_t m = 0;
      for (size_t j = 0; j < k; j++) {
        const json_t *y = json_object_get(r[j].metrics, name);
        if (y == NULL || !json_is_number(y) || (stratum != NULL && strcmp(r[j].stratum, stratum)))
          continue;
        x[m] = json_number_value(y);
        n[m++] = r[j].n;
      }
      fl_eval_stat st;
      fl__eval_stat(x, n, m, cap, &st);
      if (json_object_set_new(out, name, stat_json(&st))) {
        json_decref(out);
        return NULL;
      }
    }
  }
  return out;
}

static json_t *group_json(const fl_eval_report *r, size_t k, double cap, const char *stratum,
                          double *x, double *n) {
  size_t reports = 0;
  double samples = 0;
  for (size_t i = 0; i < k; i++)
    if (stratum == NULL || strcmp(r[i].stratum, stratum) == 0) {
      reports++;
      samples += r[i].n;
    }
  return json_pack("{s:I, s:f, s:o}", "reports", (json_int_t)reports, "samples", samples, "metrics",
                   metrics_json(r, k, cap, stratum, x, n));
}

json_t *fl__eval_result(const fl_eval_report *r, size_t k, double cap, const char *by_label) {
  double *x = malloc((k + 1) * sizeof *x), *n = malloc((k + 1) * sizeof *n);
  json_t *out = x && n ? group_json(r, k, cap, NULL, x, n) : NULL;
  if (out != NULL && json_object_set_new(out, "max_weight", json_real(cap)))
    goto fail;
  if (out != NULL && by_label != NULL) {
    json_t *vals = json_object();
    for (size_t i = 0; vals != NULL && i < k; i++)
      if (json_object_get(vals, r[i].stratum) == NULL &&
          json_object_set_new(vals, r[i].stratum, group_json(r, k, cap, r[i].stratum, x, n))) {
        json_decref(vals);
        vals = NULL;
      }
    if (vals == NULL ||
        json_object_set_new(out, "by_label",
                            json_pack("{s:s, s:o}", "key", by_label, "values", vals)))
      goto fail;
  }
  free(x);
  free(n);
  return out;
fail:
  json_decref(out);
  free(x);
  free(n);
  return NULL;
}
