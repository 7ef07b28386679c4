/*
 * Drift statistics on the device (docs/DRIFT.md).
 *
 * What the deployed model sees in service is summarized in a tumbling window: every example
 * the embedder scores with fl_client_predict() or hands to fl_client_observe() updates, per
 * input feature, Welford's running mean and sum of squared deviations (numerically stable in
 * one pass, and exactly mergeable by the coordinator with Chan et al.'s formula), a histogram
 * of the model's score and the count of anomalies. Every `every`-th check-in carries the
 * window; once the coordinator has answered that check-in, a new window starts. A window
 * holds one model version: a switch of the active version starts a new one.
 *
 * The score: the predicted class for a classifier (one bin per class, up to 64 classes), and
 * for a model whose output has the input's size (an autoencoder) log10 of the mean squared
 * reconstruction error, in 32 bins over [-6, 2). Other models send the feature statistics
 * only.
 *
 * Training sends the same statistics of its local data, scored by the base version before
 * training, with the update: the coordinator pools them into the reference of the version the
 * round produces.
 */
#include <math.h>
#include <string.h>

#include "client_internal.h"

#define LOG_BINS 32
#define LOG_LO (-6.0)
#define LOG_HI 2.0
#define TRAIN_BATCH 64

static bool is_reconstruction(const fl_model *m) {
  return fl__model_spec(m)->loss == FL_LOSS_MSE &&
         fl__model_output_size(m) == fl__model_input_size(m);
}

void fl__drift_reset(fl__drift_acc *acc, const fl_model *m, uint64_t model_id, uint64_t version) {
  memset(acc, 0, sizeof *acc);
  acc->model_id = model_id;
  acc->version = version;
  if (m == NULL)
    return;
  size_t in = fl__model_input_size(m), out = fl__model_output_size(m);
  acc->n_feat = in <= FL__DRIFT_MAX_FEATURES ? (uint32_t)in : 0;
  if (fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE && out <= FL__DRIFT_MAX_BINS) {
    acc->n_bins = (uint32_t)out;
    acc->lo = 0;
    acc->hi = (double)out;
  } else if (is_reconstruction(m)) {
    acc->n_bins = LOG_BINS;
    acc->lo = LOG_LO;
    acc->hi = LOG_HI;
  }
}

static uint32_t bin_of(const fl__drift_acc *acc, double score) {
  double w = (acc->hi - acc->lo) / acc->n_bins;
  double k = floor((score - acc->lo) / w);
  if (!(k >= 0)) /* also NaN */
    return 0;
  return k >= acc->n_bins ? acc->n_bins - 1 : (uint32_t)k;
}

/* The example's score and whether it is an anomaly (reconstruction error over threshold). */
static double score_of(const fl_model *m, float threshold, const float *x, const float *y,
                       bool *anomaly) {
  size_t d = fl__model_output_size(m);
  *anomaly = false;
  if (fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE) {
    size_t best = 0;
    for (size_t j = 1; j < d; j++)
      if (y[j] > y[best])
        best = j;
    return (double)best;
  }
  double se = 0;
  for (size_t j = 0; j < d; j++) {
    double e = (double)y[j] - x[j];
    se += e * e;
  }
  *anomaly = threshold > 0 && se / (double)d > threshold;
  return log10(se / (double)d + 1e-12);
}

void fl__drift_add(fl__drift_acc *acc, const fl_model *m, float threshold, const float *x,
                   const float *out, size_t n) {
  size_t in = fl__model_input_size(m), od = fl__model_output_size(m);
  for (size_t i = 0; i < n; i++) {
    const float *xi = x + i * in;
    bool finite = true;
    for (size_t j = 0; j < in && finite; j++)
      finite = isfinite(xi[j]);
    if (!finite)
      continue; /* one bad reading must not poison the window's sums */
    acc->count++;
    double k = (double)acc->count;
    for (uint32_t j = 0; j < acc->n_feat; j++) {
      double delta = xi[j] - acc->mean[j];
      acc->mean[j] += delta / k;
      acc->m2[j] += delta * (xi[j] - acc->mean[j]);
    }
    bool anomaly = false;
    double s = 0;
    if (acc->n_bins > 0 || is_reconstruction(m))
      s = score_of(m, threshold, xi, out + i * od, &anomaly);
    if (acc->n_bins > 0)
      acc->hist[bin_of(acc, s)]++;
    acc->anomalies += anomaly;
  }
}

void fl__drift_msg(const fl__drift_acc *acc, Fl__V1__DriftStats *msg) {
  fl__v1__drift_stats__init(msg);
  msg->model_id = acc->model_id;
  msg->version = acc->version;
  msg->count = acc->count;
  msg->n_mean = msg->n_m2 = acc->n_feat;
  msg->mean = (double *)acc->mean;
  msg->m2 = (double *)acc->m2;
  msg->n_score_hist = acc->n_bins;
  msg->score_hist = (uint64_t *)acc->hist;
  msg->score_lo = acc->lo;
  msg->score_hi = acc->hi;
  msg->anomalies = acc->anomalies;
}

void fl__drift_observe(fl_client *c, const float *x, const float *out, size_t n) {
  const fl__loaded_model *a = &c->active;
  if (c->drift_every == 0 || a->model == NULL)
    return;
  if (c->drift.model_id != a->model_id || c->drift.version != a->version) {
    if (c->drift_sent)
      return; /* the window in flight is the old version's; the answer resets it */
    fl__drift_reset(&c->drift, a->model, a->model_id, a->version);
  }
  fl__drift_add(&c->drift, a->model, c->anomaly_threshold, x, out, n);
}

const fl__drift_acc *fl__drift_due(fl_client *c) {
  c->drift_sent = false;
  if (c->drift_every == 0 || c->drift.count == 0 || c->drift_checkins + 1 < c->drift_every)
    return NULL;
  c->drift_sent = true;
  return &c->drift;
}

void fl__drift_checkin_done(fl_client *c, bool ok) {
  if (c->drift_every == 0 || !ok)
    return;
  c->drift_checkins++;
  if (c->drift_sent) {
    fl__drift_reset(&c->drift, c->active.model, c->active.model_id, c->active.version);
    c->drift_checkins = 0;
  }
  c->drift_sent = false;
}

int fl__drift_train_stats(fl_client *c, fl_model *m, fl__drift_acc *acc) {
  const fl_data_source *src = &c->data.src;
  if (c->drift_every == 0 || !c->data.have || src->x_dim != fl__model_input_size(m))
    return FL_E_NOTFOUND;
  size_t in = fl__model_input_size(m), od = fl__model_output_size(m);
  float *x = fl__calloc(c->alloc, TRAIN_BATCH * in, sizeof *x);
  float *y = fl__calloc(c->alloc, TRAIN_BATCH * od, sizeof *y);
  int32_t *labels = fl__calloc(c->alloc, TRAIN_BATCH, sizeof *labels);
  float *targets = od != in ? fl__calloc(c->alloc, TRAIN_BATCH * od, sizeof *targets) : NULL;
  int err = FL_E_NOMEM;
  if (x == NULL || y == NULL || labels == NULL || (od != in && targets == NULL))
    goto out;
  fl__drift_reset(acc, m, c->task.model_id, 0);
  err = src->reset != NULL ? src->reset(src->ctx, 0) : FL_OK;
  while (err == FL_OK) {
    size_t n = 0;
    bool ce = fl__model_spec(m)->loss == FL_LOSS_SOFTMAX_CE;
    err = src->next(src->ctx, x, ce ? labels : NULL, targets, TRAIN_BATCH, &n);
    if (err != FL_OK || n == 0)
      break;
    if (n > TRAIN_BATCH) {
      err = FL_E_INVAL;
      break;
    }
    err = fl__model_forward(m, x, n, y);
    if (err == FL_OK)
      fl__drift_add(acc, m, c->anomaly_threshold, x, y, n);
  }
  if (err == FL_OK && acc->count == 0)
    err = FL_E_NOTFOUND;
out:
  fl__free(c->alloc, x);
  fl__free(c->alloc, y);
  fl__free(c->alloc, labels);
  fl__free(c->alloc, targets);
  return err;
}

fl_err fl_client_set_service_stats(fl_client *c, uint32_t every_n_checkins) {
  if (c == NULL)
    return FL_E_INVAL;
  c->drift_every = every_n_checkins;
  c->drift_checkins = 0;
  c->drift_sent = false;
  fl__drift_reset(&c->drift, c->active.model, c->active.model_id, c->active.version);
  return FL_OK;
}

fl_err fl_client_observe(fl_client *c, const float *x, size_t n, const float *out) {
  if (c == NULL || (n > 0 && x == NULL))
    return FL_E_INVAL;
  if (c->active.model == NULL)
    return FL_E_NOTFOUND;
  if (c->drift_every == 0)
    return FL_E_STATE;
  if (n == 0)
    return FL_OK;
  if (out != NULL) {
    fl__drift_observe(c, x, out, n);
    return FL_OK;
  }
  size_t od = fl__model_output_size(c->active.model);
  if (n > SIZE_MAX / sizeof(float) / od)
    return FL_E_TOOBIG;
  float *y = fl__malloc(c->alloc, n * od * sizeof *y);
  if (y == NULL)
    return FL_E_NOMEM;
  int err = fl__model_forward(c->active.model, x, n, y);
  if (err == FL_OK)
    fl__drift_observe(c, x, y, n);
  fl__free(c->alloc, y);
  return err;
}
