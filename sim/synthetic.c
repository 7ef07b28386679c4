/*
 * FedProx Synthetic(alpha, beta) generator. Draw order follows the reference generator (sizes,
 * then u, then B, then each device's v, then per device W, b and its examples), so the data set
 * has the same structure even though the random streams differ from numpy's.
 */
#include "synthetic.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

/* Per-device draws made before any example exists. */
typedef struct device_prior {
  size_t n;       /* examples */
  double u, B;
} device_prior;

static int alloc_dataset(fl_dataset *d, size_t n, size_t dim, int32_t n_classes) {
  memset(d, 0, sizeof(*d));
  d->x = malloc((n ? n : 1) * dim * sizeof(float));
  d->labels = malloc((n ? n : 1) * sizeof(int32_t));
  if (d->x == NULL || d->labels == NULL) {
    free(d->x);
    free(d->labels);
    d->x = NULL;
    d->labels = NULL;
    return FL_E_NOMEM;
  }
  d->n = n;
  d->x_dim = dim;
  d->n_classes = n_classes;
  return FL_OK;
}

static int alloc_partition(sim_partition *p, size_t n_parties, size_t n) {
  p->offsets = malloc((n_parties + 1) * sizeof(*p->offsets));
  p->index = malloc((n ? n : 1) * sizeof(*p->index));
  if (p->offsets == NULL || p->index == NULL) {
    free(p->offsets);
    free(p->index);
    p->offsets = NULL;
    p->index = NULL;
    return FL_E_NOMEM;
  }
  p->n_parties = n_parties;
  for (size_t i = 0; i < n; i++)
    p->index[i] = (uint32_t)i;
  return FL_OK;
}

/* One example x ~ N(v, Sigma) and its label argmax(x W + b). W is [dim][classes]. */
static int32_t draw_example(float *x, const double *v, const double *sd, const double *W,
                            const double *b, size_t dim, int32_t n_classes, fl_rng *r) {
  for (size_t j = 0; j < dim; j++)
    x[j] = (float)(v[j] + sd[j] * fl__rng_normal(r));
  int32_t best = 0;
  double best_z = -INFINITY;
  for (int32_t c = 0; c < n_classes; c++) {
    double z = b[c];
    for (size_t j = 0; j < dim; j++)
      z += (double)x[j] * W[j * (size_t)n_classes + (size_t)c];
    if (z > best_z) {
      best_z = z;
      best = c;
    }
  }
  return best;
}

static void draw_model(double *W, double *b, double mean, size_t dim, int32_t n_classes,
                       fl_rng *r) {
  for (size_t i = 0; i < dim * (size_t)n_classes; i++)
    W[i] = mean + fl__rng_normal(r);
  for (int32_t c = 0; c < n_classes; c++)
    b[c] = mean + fl__rng_normal(r);
}

/* Fills both data sets device by device from the priors. */
static void generate_examples(sim_synthetic *s, const sim_synthetic_opts *o,
                              const device_prior *pr, double *W, double *b, double *v,
                              const double *sd, fl_rng *r) {
  size_t dim = o->dim, tr = 0, te = 0;
  if (o->iid)
    draw_model(W, b, 0.0, dim, o->n_classes, r);
  for (size_t k = 0; k < o->n_devices; k++) {
    for (size_t j = 0; j < dim; j++)
      v[k * dim + j] = o->iid ? pr[k].B : pr[k].B + fl__rng_normal(r);
  }
  for (size_t k = 0; k < o->n_devices; k++) {
    if (!o->iid)
      draw_model(W, b, pr[k].u, dim, o->n_classes, r);
    size_t n_train = (size_t)(0.9 * (double)pr[k].n);
    s->train_part.offsets[k] = tr;
    s->test_part.offsets[k] = te;
    for (size_t i = 0; i < pr[k].n; i++) {
      fl_dataset *d = i < n_train ? &s->train : &s->test;
      size_t row = i < n_train ? tr++ : te++;
      d->labels[row] = draw_example(d->x + row * dim, v + k * dim, sd, W, b, dim,
                                    o->n_classes, r);
    }
  }
  s->train_part.offsets[o->n_devices] = tr;
  s->test_part.offsets[o->n_devices] = te;
}

int sim_synthetic_generate(sim_synthetic *out, const sim_synthetic_opts *o) {
  if (o->n_devices == 0 || o->dim == 0 || o->n_classes < 2 || o->alpha < 0 || o->beta < 0)
    return FL_E_INVAL;
  fl_rng r;
  fl__rng_seed(&r, o->seed);
  sim_synthetic s;
  memset(&s, 0, sizeof(s));
  int rc = FL_E_NOMEM;
  device_prior *pr = malloc(o->n_devices * sizeof(*pr));
  double *W = malloc(o->dim * (size_t)o->n_classes * sizeof(double));
  double *b = malloc((size_t)o->n_classes * sizeof(double));
  double *v = malloc(o->n_devices * o->dim * sizeof(double));
  double *sd = malloc(o->dim * sizeof(double));
  if (pr == NULL || W == NULL || b == NULL || v == NULL || sd == NULL)
    goto out;
  size_t n_train = 0, n_test = 0;
  for (size_t k = 0; k < o->n_devices; k++) {
    double n = floor(exp(4.0 + 2.0 * fl__rng_normal(&r))) + 50.0;
    if (o->max_samples > 0 && n > (double)o->max_samples)
      n = (double)o->max_samples;
    pr[k].n = (size_t)n;
    n_train += (size_t)(0.9 * n);
    n_test += pr[k].n - (size_t)(0.9 * n);
  }
  if (n_train + n_test > UINT32_MAX) {
    rc = FL_E_TOOBIG;
    goto out;
  }
  for (size_t k = 0; k < o->n_devices; k++)
    pr[k].u = o->alpha * fl__rng_normal(&r);
  for (size_t k = 0; k < o->n_devices; k++)
    pr[k].B = o->beta * fl__rng_normal(&r);
  for (size_t j = 0; j < o->dim; j++)
    sd[j] = sqrt(pow((double)(j + 1), -1.2));
  if (alloc_dataset(&s.train, n_train, o->dim, o->n_classes) != FL_OK ||
      alloc_dataset(&s.test, n_test, o->dim, o->n_classes) != FL_OK ||
      alloc_partition(&s.train_part, o->n_devices, n_train) != FL_OK ||
      alloc_partition(&s.test_part, o->n_devices, n_test) != FL_OK) {
    sim_synthetic_free(&s);
    goto out;
  }
  generate_examples(&s, o, pr, W, b, v, sd, &r);
  *out = s;
  rc = FL_OK;
out:
  free(pr);
  free(W);
  free(b);
  free(v);
  free(sd);
  return rc;
}

void sim_synthetic_free(sim_synthetic *s) {
  if (s == NULL)
    return;
  free(s->train.x);
  free(s->train.labels);
  free(s->test.x);
  free(s->test.labels);
  sim_partition_free(&s->train_part);
  sim_partition_free(&s->test_part);
  memset(s, 0, sizeof(*s));
}
