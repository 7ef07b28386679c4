/*
 * Evaluating a model version on held-out data: test loss and accuracy for classifiers;
 * reconstruction errors, ROC AUC and precision/recall at an alarm threshold for the anomaly
 * detector.
 */
#ifndef SIM_EVAL_H
#define SIM_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "model.h"

/* Mean loss and accuracy over all rows of d (labels needed for softmax CE; MSE models are
 * scored against their input and report accuracy 0). */
int sim_eval_dataset(fl_model *m, const fl_dataset *d, double *loss, double *accuracy);

/* Mean squared reconstruction error of each row of d into scores[d->n]. */
int sim_recon_errors(fl_model *m, const fl_dataset *d, float *scores);

/* Area under the ROC curve of scores for "positive = labels[i] != 0" (ties count one half).
 * Returns NaN when one of the two classes is empty. */
double sim_auc(const float *scores, const int32_t *labels, size_t n);

/* The q-quantile (0..1) of scores (nearest rank); scores are not changed. NaN if n == 0. */
double sim_quantile(const float *scores, size_t n, double q);

/* Precision and recall of the alarm "score > threshold" for "positive = label != 0". A rule
 * that raises no alarm has precision 1 by convention (it made no false alarm). */
void sim_precision_recall(const float *scores, const int32_t *labels, size_t n,
                          double threshold, double *precision, double *recall);

/* The detector's figures on one cohort of the fleet: the rows of the devices k whose
 * (member[k] != 0) equals want, device k holding rows [k * per_device, (k + 1) * per_device)
 * of scores and labels. f1 is 2PR / (P + R) (0 when both are 0); auc is NaN when the cohort
 * lacks positives or negatives. */
typedef struct sim_detection {
  double auc, precision, recall, f1;
  size_t n; /* rows of the cohort */
} sim_detection;
int sim_cohort_detection(const float *scores, const int32_t *labels, size_t n_devices,
                         size_t per_device, const uint8_t *member, int want, double threshold,
                         sim_detection *out);
/* The q-quantile of the scores of the devices whose member flag is (want != 0), per_device
 * each: a cohort's own alarm threshold from its calibration windows. NAN on OOM or none. */
double sim_cohort_quantile(const float *scores, size_t n_devices, size_t per_device,
                           const uint8_t *member, int want, double q);

#endif
