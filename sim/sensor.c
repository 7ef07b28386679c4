/*
 * Vibration spectra synthesised directly in the frequency domain: a sum of spectral lines
 * (Gaussian-shaped, as a windowed FFT smears them) over a resonance hump and a noise floor, with
 * multiplicative per-bin noise. Frequencies are in units of one bin.
 */
#include "sensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

#define N_HARMONICS 10
#define LINE_WIDTH 0.6
#define BPFO_ORDER 3.58

typedef struct motor {
  double f0;                   /* running speed at no load */
  double amp[N_HARMONICS + 1]; /* amp[h]: h-th harmonic at unit load */
  double res_f, res_w, res_a;  /* structural resonance */
  double floor;
  double load;                 /* typical load, 0..1 */
} motor;

static double lognormal(fl_rng *r, double mu, double sigma) {
  return exp(mu + sigma * fl__rng_normal(r));
}

static double uniform(fl_rng *r, double lo, double hi) {
  return lo + (hi - lo) * fl__rng_uniform(r);
}

static void draw_motor(motor *m, size_t bins, fl_rng *r) {
  m->f0 = uniform(r, 3.0, 5.5) * (double)bins / 64.0;
  for (int h = 1; h <= N_HARMONICS; h++)
    m->amp[h] = (h == 1 ? 1.0 : 0.6 / h) * lognormal(r, 0.0, 0.35);
  m->res_f = uniform(r, 0.3, 0.8) * (double)bins;
  m->res_w = uniform(r, 2.0, 5.0);
  m->res_a = uniform(r, 0.05, 0.25);
  m->floor = lognormal(r, log(0.01), 0.3);
  m->load = uniform(r, 0.3, 1.0);
}

static void add_line(double *s, size_t bins, double f, double a) {
  if (f <= 0)
    return;
  long lo = (long)floor(f - 4 * LINE_WIDTH), hi = (long)ceil(f + 4 * LINE_WIDTH);
  for (long b = lo < 0 ? 0 : lo; b <= hi && b < (long)bins; b++) {
    double d = ((double)b - f) / LINE_WIDTH;
    s[b] += a * exp(-0.5 * d * d);
  }
}

/* Adds the lines of a fault at the given severity (0.5..1 of its full size). */
static void add_fault(double *s, size_t bins, const motor *m, double f, double gain,
                      sim_fault fault, double severity) {
  switch (fault) {
    case SIM_FAULT_IMBALANCE:
      add_line(s, bins, f, gain * m->amp[1] * 3.0 * severity);
      break;
    case SIM_FAULT_MISALIGNMENT:
      add_line(s, bins, 2 * f, gain * m->amp[1] * 1.2 * severity);
      add_line(s, bins, 3 * f, gain * m->amp[1] * 0.6 * severity);
      break;
    case SIM_FAULT_BEARING:
      for (int k = 1; k <= 2; k++) {
        double a = gain * m->amp[1] * 0.35 * severity / k;
        add_line(s, bins, k * BPFO_ORDER * f, a);
        add_line(s, bins, k * BPFO_ORDER * f - f, a * 0.4);
        add_line(s, bins, k * BPFO_ORDER * f + f, a * 0.4);
      }
      break;
    case SIM_FAULT_LOOSENESS:
      for (int h = 1; h <= N_HARMONICS; h += 2)
        add_line(s, bins, 0.5 * h * f, gain * m->amp[1] * 0.25 * severity);
      for (size_t b = 0; b < bins; b++)
        s[b] += m->floor * 2.0 * severity;
      break;
    default:
      break;
  }
}

/* One spectrum as log10 magnitudes into x. */
static void draw_spectrum(float *x, double *s, size_t bins, const motor *m, sim_fault fault,
                          fl_rng *r) {
  double load = m->load + 0.1 * fl__rng_normal(r);
  load = load < 0.1 ? 0.1 : load > 1.2 ? 1.2 : load;
  double f = m->f0 * (1.0 - 0.04 * load); /* slip grows with load */
  double gain = 0.5 + load;
  for (size_t b = 0; b < bins; b++) {
    double d = ((double)b - m->res_f) / m->res_w;
    s[b] = m->floor + m->res_a * gain * exp(-0.5 * d * d);
  }
  for (int h = 1; h <= N_HARMONICS; h++)
    add_line(s, bins, h * f, gain * m->amp[h]);
  if (fault != SIM_FAULT_NONE)
    add_fault(s, bins, m, f, gain, fault, uniform(r, 0.5, 1.0));
  for (size_t b = 0; b < bins; b++)
    x[b] = (float)log10(s[b] * lognormal(r, 0.0, 0.1));
}

static int alloc_stream(fl_dataset *d, sim_partition *p, size_t n_devices, size_t per_device,
                        size_t bins) {
  size_t n = n_devices * per_device;
  d->x = malloc((n ? n : 1) * bins * sizeof(float));
  d->labels = calloc(n ? n : 1, sizeof(int32_t));
  p->offsets = malloc((n_devices + 1) * sizeof(size_t));
  p->index = malloc((n ? n : 1) * sizeof(uint32_t));
  if (d->x == NULL || d->labels == NULL || p->offsets == NULL || p->index == NULL)
    return FL_E_NOMEM;
  d->n = n;
  d->x_dim = bins;
  d->n_classes = SIM_FAULT_COUNT;
  p->n_parties = n_devices;
  for (size_t k = 0; k <= n_devices; k++)
    p->offsets[k] = k * per_device;
  for (size_t i = 0; i < n; i++)
    p->index[i] = (uint32_t)i;
  return FL_OK;
}

/* Examples of device k in one stream; faults only where fault_rate > 0. */
static void fill_stream(fl_dataset *d, size_t k, size_t per_device, const motor *m,
                        double fault_rate, double *scratch, fl_rng *r) {
  for (size_t i = 0; i < per_device; i++) {
    size_t row = k * per_device + i;
    sim_fault fault = SIM_FAULT_NONE;
    if (fault_rate > 0 && fl__rng_uniform(r) < fault_rate)
      fault = (sim_fault)(1 + fl__rng_below(r, SIM_FAULT_COUNT - 1));
    d->labels[row] = (int32_t)fault;
    draw_spectrum(d->x + row * d->x_dim, scratch, d->x_dim, m, fault, r);
  }
}

int sim_sensor_generate(sim_sensor *out, const sim_sensor_opts *o) {
  if (o->n_devices == 0 || o->bins < 16 || o->fault_rate < 0 || o->fault_rate > 1 ||
      (o->n_train + o->n_calib + o->n_test) * o->n_devices > UINT32_MAX)
    return FL_E_INVAL;
  sim_sensor s;
  memset(&s, 0, sizeof(s));
  double *scratch = malloc(o->bins * sizeof(double));
  int rc = FL_E_NOMEM;
  if (scratch == NULL || alloc_stream(&s.train, &s.train_part, o->n_devices, o->n_train,
                                      o->bins) != FL_OK ||
      alloc_stream(&s.calib, &s.calib_part, o->n_devices, o->n_calib, o->bins) != FL_OK ||
      alloc_stream(&s.test, &s.test_part, o->n_devices, o->n_test, o->bins) != FL_OK) {
    sim_sensor_free(&s);
    goto out;
  }
  fl_rng r;
  fl__rng_seed(&r, o->seed);
  for (size_t k = 0; k < o->n_devices; k++) {
    motor m;
    draw_motor(&m, o->bins, &r);
    fill_stream(&s.train, k, o->n_train, &m, 0.0, scratch, &r);
    fill_stream(&s.calib, k, o->n_calib, &m, 0.0, scratch, &r);
    fill_stream(&s.test, k, o->n_test, &m, o->fault_rate, scratch, &r);
  }
  *out = s;
  rc = FL_OK;
out:
  free(scratch);
  return rc;
}

/* Applies x <- (x - mean) / sd to the rows of party k in one stream. */
static void scale_rows(fl_dataset *d, const sim_partition *p, size_t k, const double *mean,
                       const double *sd) {
  size_t dim = d->x_dim;
  for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++) {
    float *x = d->x + (size_t)p->index[i] * dim;
    for (size_t j = 0; j < dim; j++)
      x[j] = (float)(((double)x[j] - mean[j]) / sd[j]);
  }
}

int sim_sensor_standardise(sim_sensor *s) {
  size_t dim = s->train.x_dim;
  double *mean = calloc(2 * (dim ? dim : 1), sizeof(double));
  if (mean == NULL)
    return FL_E_NOMEM;
  double *sd = mean + dim;
  for (size_t k = 0; k < s->train_part.n_parties; k++) {
    const sim_partition *p = &s->train_part;
    size_t n = sim_partition_size(p, k);
    if (n == 0)
      continue;
    memset(mean, 0, 2 * dim * sizeof(double));
    for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++)
      for (size_t j = 0; j < dim; j++)
        mean[j] += s->train.x[(size_t)p->index[i] * dim + j];
    for (size_t j = 0; j < dim; j++)
      mean[j] /= (double)n;
    for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++)
      for (size_t j = 0; j < dim; j++) {
        double e = s->train.x[(size_t)p->index[i] * dim + j] - mean[j];
        sd[j] += e * e;
      }
    for (size_t j = 0; j < dim; j++) {
      sd[j] = sqrt(sd[j] / (double)n);
      if (!(sd[j] > 1e-3))
        sd[j] = 1e-3;
    }
    scale_rows(&s->train, &s->train_part, k, mean, sd);
    scale_rows(&s->calib, &s->calib_part, k, mean, sd);
    scale_rows(&s->test, &s->test_part, k, mean, sd);
  }
  free(mean);
  return FL_OK;
}

void sim_sensor_free(sim_sensor *s) {
  if (s == NULL)
    return;
  fl_dataset *d[3] = {&s->train, &s->calib, &s->test};
  for (int i = 0; i < 3; i++) {
    free(d[i]->x);
    free(d[i]->labels);
  }
  sim_partition_free(&s->train_part);
  sim_partition_free(&s->calib_part);
  sim_partition_free(&s->test_part);
  memset(s, 0, sizeof(*s));
}
