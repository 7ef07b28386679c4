/*
 * Held-out evaluation of model versions.
 */
#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

/* Rows per forward pass: large enough for BLAS efficiency, small enough for the work buffers. */
#define EVAL_BATCH 500

int sim_eval_dataset(fl_model *m, const fl_dataset *d, double *loss, double *accuracy) {
  if (d->n == 0 || d->x_dim != fl__model_input_size(m))
    return FL_E_SHAPE;
  int mse = fl__model_spec(m)->loss == FL_LOSS_MSE;
  double sum_loss = 0, sum_acc = 0;
  for (size_t i = 0; i < d->n; i += EVAL_BATCH) {
    size_t n = d->n - i < EVAL_BATCH ? d->n - i : EVAL_BATCH;
    fl_batch b = {.x = d->x + i * d->x_dim,
                  .labels = mse ? NULL : d->labels + i,
                  .targets = NULL,
                  .n = n};
    double l = 0, a = 0;
    int rc = fl__model_evaluate(m, &b, &l, &a);
    if (rc != FL_OK)
      return rc;
    sum_loss += l * (double)n;
    sum_acc += a * (double)n;
  }
  *loss = sum_loss / (double)d->n;
  *accuracy = mse ? 0.0 : sum_acc / (double)d->n;
  return FL_OK;
}

int sim_recon_errors(fl_model *m, const fl_dataset *d, float *scores) {
  size_t dim = d->x_dim;
  if (dim != fl__model_input_size(m) || dim != fl__model_output_size(m))
    return FL_E_SHAPE;
  float *out = malloc(EVAL_BATCH * dim * sizeof(float));
  if (out == NULL)
    return FL_E_NOMEM;
  int rc = FL_OK;
  for (size_t i = 0; i < d->n && rc == FL_OK; i += EVAL_BATCH) {
    size_t n = d->n - i < EVAL_BATCH ? d->n - i : EVAL_BATCH;
    rc = fl__model_forward(m, d->x + i * dim, n, out);
    for (size_t r = 0; r < n && rc == FL_OK; r++) {
      const float *x = d->x + (i + r) * dim, *y = out + r * dim;
      double e = 0;
      for (size_t j = 0; j < dim; j++)
        e += ((double)y[j] - x[j]) * ((double)y[j] - x[j]);
      scores[i + r] = (float)(e / (double)dim);
    }
  }
  free(out);
  return rc;
}

typedef struct scored {
  float s;
  int pos;
} scored;

static int cmp_scored(const void *a, const void *b) {
  float x = ((const scored *)a)->s, y = ((const scored *)b)->s;
  return (x > y) - (x < y);
}

/* Mann-Whitney: AUC = (sum of positive ranks - P(P+1)/2) / (P N), mid-ranks for ties. */
double sim_auc(const float *scores, const int32_t *labels, size_t n) {
  scored *v = malloc((n ? n : 1) * sizeof(*v));
  if (v == NULL)
    return NAN;
  size_t n_pos = 0;
  for (size_t i = 0; i < n; i++) {
    v[i].s = scores[i];
    v[i].pos = labels[i] != 0;
    n_pos += (size_t)v[i].pos;
  }
  size_t n_neg = n - n_pos;
  double auc = NAN;
  if (n_pos > 0 && n_neg > 0) {
    qsort(v, n, sizeof(*v), cmp_scored);
    double rank_sum = 0;
    for (size_t i = 0; i < n;) {
      size_t j = i;
      size_t pos_in_tie = 0;
      while (j < n && v[j].s == v[i].s)
        pos_in_tie += (size_t)v[j++].pos;
      rank_sum += (double)pos_in_tie * ((double)(i + 1) + (double)j) / 2.0;
      i = j;
    }
    auc = (rank_sum - (double)n_pos * ((double)n_pos + 1) / 2.0) / ((double)n_pos * (double)n_neg);
  }
  free(v);
  return auc;
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

double sim_quantile(const float *scores, size_t n, double q) {
  if (n == 0)
    return NAN;
  float *v = malloc(n * sizeof(*v));
  if (v == NULL)
    return NAN;
  memcpy(v, scores, n * sizeof(*v));
  qsort(v, n, sizeof(*v), cmp_float);
  double rank = ceil(q * (double)n);
  size_t k = rank < 1 ? 0 : (size_t)rank - 1;
  if (k >= n)
    k = n - 1;
  double r = v[k];
  free(v);
  return r;
}

void sim_precision_recall(const float *scores, const int32_t *labels, size_t n,
                          double threshold, double *precision, double *recall) {
  size_t tp = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < n; i++) {
    int alarm = scores[i] > threshold, pos = labels[i] != 0;
    tp += (size_t)(alarm && pos);
    fp += (size_t)(alarm && !pos);
    fn += (size_t)(!alarm && pos);
  }
  *precision = tp + fp ? (double)tp / (double)(tp + fp) : 1.0;
  *recall = tp + fn ? (double)tp / (double)(tp + fn) : 0.0;
}

int sim_cohort_detection(const float *scores, const int32_t *labels, size_t n_devices,
                         size_t per_device, const uint8_t *member, int want, double threshold,
                         sim_detection *out) {
  size_t n = 0;
  for (size_t k = 0; k < n_devices; k++)
    n += (size_t)((member[k] != 0) == (want != 0)) * per_device;
  float *s = malloc((n ? n : 1) * sizeof(float));
  int32_t *l = malloc((n ? n : 1) * sizeof(int32_t));
  if (s == NULL || l == NULL) {
    free(s);
    free(l);
    return FL_E_NOMEM;
  }
  size_t j = 0;
  for (size_t k = 0; k < n_devices; k++) {
    if ((member[k] != 0) != (want != 0))
      continue;
    memcpy(s + j, scores + k * per_device, per_device * sizeof(float));
    memcpy(l + j, labels + k * per_device, per_device * sizeof(int32_t));
    j += per_device;
  }
  out->n = n;
  out->auc = sim_auc(s, l, n);
  sim_precision_recall(s, l, n, threshold, &out->precision, &out->recall);
  double pr = out->precision + out->recall;
  out->f1 = pr > 0 ? 2 * out->precision * out->recall / pr : 0.0;
  free(s);
  free(l);
  return FL_OK;
}

double sim_cohort_quantile(const float *scores, size_t n_devices, size_t per_device,
                           const uint8_t *member, int want, double q) {
  size_t cap = n_devices * per_device;
  float *v = malloc((cap > 0 ? cap : 1) * sizeof(float));
  if (v == NULL)
    return NAN;
  size_t j = 0;
  for (size_t k = 0; k < n_devices; k++)
    if ((member[k] != 0) == (want != 0)) {
      memcpy(v + j, scores + k * per_device, per_device * sizeof(float));
      j += per_device;
    }
  double r = sim_quantile(v, j, q);
  free(v);
  return r;
}
