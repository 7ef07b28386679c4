/*
 * Drift statistics, pure math: no database, no I/O (stats.h says the formulas).
 */
#include "drift/stats.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static bool finite_all(const double *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(v[i]))
      return false;
  return true;
}

int fl__drift_check(const Fl__V1__DriftStats *m, char msg[160]) {
  if (m->count == 0) {
    snprintf(msg, 160, "drift statistics of no example");
    return -1;
  }
  if (m->n_mean > FL_DRIFT_MAX_FEATURES || m->n_score_hist > FL_DRIFT_MAX_BINS) {
    snprintf(msg, 160, "drift statistics of %zu features and %zu bins: at most %d and %d",
             m->n_mean, m->n_score_hist, FL_DRIFT_MAX_FEATURES, FL_DRIFT_MAX_BINS);
    return -1;
  }
  if (m->n_mean != m->n_m2) {
    snprintf(msg, 160, "drift statistics have %zu means and %zu m2", m->n_mean, m->n_m2);
    return -1;
  }
  if (!finite_all(m->mean, m->n_mean) || !finite_all(m->m2, m->n_m2)) {
    snprintf(msg, 160, "drift statistics with a non-finite mean or m2");
    return -1;
  }
  for (size_t i = 0; i < m->n_m2; i++)
    if (m->m2[i] < 0) {
      snprintf(msg, 160, "drift statistics with a negative m2 (feature %zu)", i);
      return -1;
    }
  uint64_t sum = 0;
  for (size_t i = 0; i < m->n_score_hist; i++) {
    if (m->score_hist[i] > m->count - sum) {
      snprintf(msg, 160, "score histogram counts more examples than count");
      return -1;
    }
    sum += m->score_hist[i];
  }
  if (m->n_score_hist > 0 && sum != m->count) {
    snprintf(msg, 160, "score histogram sums to %llu, count is %llu", (unsigned long long)sum,
             (unsigned long long)m->count);
    return -1;
  }
  if (m->n_score_hist > 0 &&
      !(isfinite(m->score_lo) && isfinite(m->score_hi) && m->score_lo < m->score_hi)) {
    snprintf(msg, 160, "score histogram range must be finite with score_lo < score_hi");
    return -1;
  }
  if (m->anomalies > m->count) {
    snprintf(msg, 160, "more anomalies than examples");
    return -1;
  }
  return 0;
}

void fl__drift_init(fl_drift_stats *s) {
  memset(s, 0, sizeof *s);
}

void fl__drift_from_msg(fl_drift_stats *s, const Fl__V1__DriftStats *m) {
  fl__drift_init(s);
  s->count = m->count;
  s->anomalies = m->anomalies;
  s->devices = 1;
  s->n_feat = (uint32_t)m->n_mean;
  s->n_bins = (uint32_t)m->n_score_hist;
  memcpy(s->mean, m->mean, m->n_mean * sizeof *s->mean);
  memcpy(s->m2, m->m2, m->n_m2 * sizeof *s->m2);
  for (size_t i = 0; i < m->n_score_hist; i++)
    s->hist[i] = (double)m->score_hist[i];
  s->lo = m->score_lo;
  s->hi = m->score_hi;
}

int fl__drift_pool(fl_drift_stats *a, const fl_drift_stats *b) {
  if (b->count == 0)
    return 0;
  if (a->count == 0) {
    *a = *b;
    return 0;
  }
  if (a->n_feat != b->n_feat || a->n_bins != b->n_bins ||
      (a->n_bins > 0 && (a->lo != b->lo || a->hi != b->hi)))
    return -1;
  double na = (double)a->count, nb = (double)b->count, n = na + nb;
  for (uint32_t j = 0; j < a->n_feat; j++) {
    double delta = b->mean[j] - a->mean[j];
    a->mean[j] += delta * nb / n;
    a->m2[j] += b->m2[j] + delta * delta * na * nb / n;
  }
  for (uint32_t i = 0; i < a->n_bins; i++)
    a->hist[i] += b->hist[i];
  a->count += b->count;
  a->anomalies += b->anomalies;
  a->devices += b->devices;
  return 0;
}

double fl__drift_var(const fl_drift_stats *s, uint32_t j) {
  return s->count < 2 ? 0 : s->m2[j] / (double)(s->count - 1);
}

double fl__drift_psi(const fl_drift_stats *sv, const fl_drift_stats *ref) {
  if (sv->n_bins == 0 || sv->n_bins != ref->n_bins || sv->lo != ref->lo || sv->hi != ref->hi)
    return -1;
  double ts = 0, tr = 0;
  for (uint32_t i = 0; i < sv->n_bins; i++) {
    ts += sv->hist[i];
    tr += ref->hist[i];
  }
  if (!(ts > 0) || !(tr > 0))
    return -1;
  double psi = 0;
  for (uint32_t i = 0; i < sv->n_bins; i++) {
    double p = fmax(sv->hist[i] / ts, FL_DRIFT_PSI_EPS);
    double q = fmax(ref->hist[i] / tr, FL_DRIFT_PSI_EPS);
    psi += (p - q) * log(p / q);
  }
  return psi;
}

double fl__drift_shift(const fl_drift_stats *sv, const fl_drift_stats *ref, uint32_t j) {
  double sd = fmax(sqrt(fl__drift_var(ref, j)), FL_DRIFT_SD_FLOOR);
  return fabs(sv->mean[j] - ref->mean[j]) / sd;
}

void fl__drift_to_msg(const fl_drift_stats *s, Fl__V1__DriftStats *m, uint64_t *hist_buf) {
  fl__v1__drift_stats__init(m);
  m->count = s->count;
  m->anomalies = s->anomalies;
  m->n_mean = m->n_m2 = s->n_feat;
  m->mean = (double *)s->mean;
  m->m2 = (double *)s->m2;
  m->n_score_hist = s->n_bins;
  for (uint32_t i = 0; i < s->n_bins; i++)
    hist_buf[i] = (uint64_t)llround(s->hist[i]);
  m->score_hist = hist_buf;
  m->score_lo = s->lo;
  m->score_hi = s->hi;
}
