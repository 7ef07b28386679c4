/*
 * Drift statistics, pure math (stats.c, docs/DRIFT.md): checking a device's DriftStats,
 * pooling many of them, and the two tests of a pooled service window against a version's
 * reference, the population stability index of the score histogram and the standardized
 * mean shift per feature.
 */
#ifndef FL__DRIFT_STATS_H
#define FL__DRIFT_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fl/v1/fleetlearn.pb-c.h"

/* The bounds libflclient keeps (client/drift.c); a larger message is refused. */
#define FL_DRIFT_MAX_FEATURES 256
#define FL_DRIFT_MAX_BINS 64

typedef struct fl_drift_stats {
  uint64_t count, anomalies, devices;
  uint32_t n_feat, n_bins;
  double mean[FL_DRIFT_MAX_FEATURES], m2[FL_DRIFT_MAX_FEATURES];
  double hist[FL_DRIFT_MAX_BINS]; /* counts (summed over devices) */
  double lo, hi;
} fl_drift_stats;

/* 0 when m is a well-formed DriftStats within the bounds, else -1 with the reason in msg. */
int fl__drift_check(const Fl__V1__DriftStats *m, char msg[160]);
/* An empty pool (count 0: the first fl__drift_pool takes the other's layout). */
void fl__drift_init(fl_drift_stats *s);
/* s from a checked message (one device). */
void fl__drift_from_msg(fl_drift_stats *s, const Fl__V1__DriftStats *m);
/* Pools b into a (Chan, Golub and LeVeque's parallel Welford: n = na + nb, delta = mb - ma,
 * mean = ma + delta nb / n, M2 = M2a + M2b + delta^2 na nb / n; histograms add). Returns -1,
 * changing nothing, when the layouts differ (features or bins). */
int fl__drift_pool(fl_drift_stats *a, const fl_drift_stats *b);
/* Sample variance M2 / (n - 1) of feature j (0 for n < 2). */
double fl__drift_var(const fl_drift_stats *s, uint32_t j);
/* PSI = sum_i (p_i - q_i) ln(p_i / q_i) over the bins, p the service and q the reference
 * shares, each bin's share floored at FL_DRIFT_PSI_EPS (an empty bin would make it infinite).
 * -1 when the layouts differ or either histogram is empty. */
#define FL_DRIFT_PSI_EPS 1e-4
double fl__drift_psi(const fl_drift_stats *service, const fl_drift_stats *ref);
/* |mean_s - mean_r| / sd_r of feature j, sd_r the reference's sample standard deviation,
 * floored at FL_DRIFT_SD_FLOOR (a feature constant in training). */
#define FL_DRIFT_SD_FLOOR 1e-6
double fl__drift_shift(const fl_drift_stats *service, const fl_drift_stats *ref, uint32_t j);
/* The pool as a DriftStats message (counts rounded; arrays point into s). */
void fl__drift_to_msg(const fl_drift_stats *s, Fl__V1__DriftStats *m, uint64_t *hist_buf);

#endif
