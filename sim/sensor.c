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
  double load; /* typical load, 0..1 */
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

static void add_line_w(double *s, size_t bins, double f, double a, double width) {
  if (f <= 0)
    return;
  long lo = (long)floor(f - 4 * width), hi = (long)ceil(f + 4 * width);
  for (long b = lo < 0 ? 0 : lo; b <= hi && b < (long)bins; b++) {
    double d = ((double)b - f) / width;
    s[b] += a * exp(-0.5 * d * d);
  }
}

static void add_line(double *s, size_t bins, double f, double a) {
  add_line_w(s, bins, f, a, LINE_WIDTH);
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

/* ---- the spectral scenario --------------------------------------------------------------- */

#define SP_HARMONICS 8
#define SP_SCALE 4.0
#define SP_WIDTH 1.0 /* a Hann window's main lobe: lines overlap neighbouring bins */
#define SP_TYPES 3   /* machine types of the fleet; type SP_TYPES is the drift's new machine */

typedef struct sp_motor {
  int type;
  double f0;                    /* running speed at no load, in bins */
  double amp[SP_HARMONICS + 1]; /* amp[h]: h-th harmonic at unit load */
  double width;                 /* line width in bins */
  double floor, load;
  /* Wear only (0 otherwise): the per-bin spread of the floor, and the haystack's centre, width
   * and amplitude at unit load. */
  double floor_sd, hump_f, hump_w, hump_a;
} sp_motor;

/* The harmonic profile of a machine type: the shape that training has to learn. */
static double type_profile(int type, int h) {
  switch (type) {
    case 0: /* plain induction motor: 1x dominant, harmonics decay */
      return 1.0 / h;
    case 1: /* coupled pump: a strong 2x, vane-pass at 5x */
      return h == 2 ? 0.8 : h == 5 ? 0.5 : 0.5 / h;
    case 2: /* gearbox: a slowly decaying comb */
      return pow(0.8, h - 1);
    default: /* the drift's new machine: odd harmonics only */
      return h % 2 ? 0.9 / sqrt((double)h) : 0.02;
  }
}

static void sp_draw_motor(sp_motor *m, int type, size_t bins, fl_rng *r) {
  double scale = (double)bins / 64.0;
  m->type = type;
  /* Induction motors run close to their synchronous speed: a type's speed varies by a few
   * per cent from motor to motor (supply, pole count fixed), not over the whole band. */
  static const double speed[SP_TYPES + 1] = {3.0, 4.0, 5.0, 5.6};
  m->f0 = speed[type] * (1.0 + 0.01 * fl__rng_normal(r)) * scale;
  /* Motor to motor the profile varies in level and tilt only: two numbers, so the fleet's
   * spectra stay on a manifold of a few dimensions per type (speed, level, tilt, load). */
  double level = lognormal(r, 0.0, 0.2), tilt = 0.08 * fl__rng_normal(r);
  for (int h = 1; h <= SP_HARMONICS; h++)
    m->amp[h] = type_profile(type, h) * level * exp(tilt * (h - 1));
  m->width = SP_WIDTH;
  m->floor = 0.02;
  m->floor_sd = m->hump_f = m->hump_w = m->hump_a = 0;
  m->load = uniform(r, 0.3, 1.0);
}

/* Bearing wear: distributed roughness of the races, not a local defect. The rolling elements
 * excite the bearing's and the housing's resonances at random, which raises the broadband
 * floor (and its spread from bin to bin) and a high-frequency "haystack" whose level changes
 * from window to window; looser fits let the higher harmonics grow a little, speed flutter
 * broadens the lines a little, friction costs half a per cent of speed. Wear adds no line at a
 * defect frequency: that is what an outer-race fault adds, so a worn motor's faults stay
 * separable from its normal windows. (An earlier version grew the 8th harmonic 4.6-fold,
 * broadened the lines 1.8-fold and slowed the rotor by 7%: eight times the energy, harmonics
 * smeared over the fault's bands, and the autoencoder did not learn the worn cohort back;
 * benches/RESULTS.md, run W.) */
static void sp_wear(sp_motor *m, size_t bins, fl_rng *r) {
  for (int h = 3; h <= SP_HARMONICS; h++)
    m->amp[h] *= 1.0 + 0.1 * (h - 2);
  m->width *= 1.2;
  m->f0 *= 0.995;
  m->floor *= 3.0;
  m->floor_sd = 0.3;
  m->hump_f = uniform(r, 0.6, 0.85) * (double)bins;
  m->hump_w = 5.0 * (double)bins / 64.0;
  m->hump_a = 0.25;
}

static double energy(const double *s, size_t bins) {
  double e = 0;
  for (size_t b = 0; b < bins; b++)
    e += s[b] * s[b];
  return e;
}

/* One window into x. A fault's lines are added and the whole spectrum then scaled back to the
 * energy of the fault-free window: the fault moves energy, it does not add any. */
static void sp_draw_spectrum(float *x, double *s, size_t bins, const sp_motor *m, sim_fault fault,
                             fl_rng *r) {
  double load = m->load + 0.1 * fl__rng_normal(r);
  load = load < 0.1 ? 0.1 : load > 1.2 ? 1.2 : load;
  double f = m->f0 * (1.0 - 0.015 * load); /* slip, smaller than a line width at 8x */
  double gain = 0.5 + load;
  for (size_t b = 0; b < bins; b++)
    s[b] = m->floor * gain * (m->floor_sd > 0 ? lognormal(r, 0.0, m->floor_sd) : 1.0);
  if (m->hump_a > 0)
    add_line_w(s, bins, m->hump_f, gain * m->hump_a * lognormal(r, 0.0, 0.2), m->hump_w);
  for (int h = 1; h <= SP_HARMONICS; h++)
    add_line_w(s, bins, h * f, gain * m->amp[h] * lognormal(r, 0.0, 0.05), m->width);
  if (fault != SIM_FAULT_NONE) {
    double e0 = energy(s, bins), sev = uniform(r, 1.0, 2.0), a1 = gain * m->amp[1];
    if (fault == SIM_FAULT_BEARING) {
      add_line_w(s, bins, BPFO_ORDER * f, a1 * 1.0 * sev, m->width);
      add_line_w(s, bins, BPFO_ORDER * f - f, a1 * 0.5 * sev, m->width);
      add_line_w(s, bins, BPFO_ORDER * f + f, a1 * 0.5 * sev, m->width);
    } else {
      for (int h = 1; h <= 5; h += 2)
        add_line_w(s, bins, 0.5 * h * f, a1 * 0.7 * sev, m->width);
    }
    double g = sqrt(e0 / energy(s, bins));
    for (size_t b = 0; b < bins; b++)
      s[b] *= g;
  }
  /* SP_SCALE: about unit mean square per bin, a range SGD at fl-sim's learning rate moves. */
  for (size_t b = 0; b < bins; b++)
    x[b] = (float)(SP_SCALE * s[b] * lognormal(r, 0.0, 0.05));
}

/* The spectral scenario's faults: bearing or looseness, half each. */
static void sp_fill_stream(fl_dataset *d, size_t k, size_t per_device, const sp_motor *m,
                           double fault_rate, double *scratch, fl_rng *r) {
  for (size_t i = 0; i < per_device; i++) {
    size_t row = k * per_device + i;
    sim_fault fault = SIM_FAULT_NONE;
    if (fault_rate > 0 && fl__rng_uniform(r) < fault_rate)
      fault = fl__rng_below(r, 2) ? SIM_FAULT_BEARING : SIM_FAULT_LOOSENESS;
    d->labels[row] = (int32_t)fault;
    sp_draw_spectrum(d->x + row * d->x_dim, scratch, d->x_dim, m, fault, r);
  }
}

static void copy_rows(fl_dataset *to, const fl_dataset *from, size_t k, size_t per_device) {
  size_t first = k * per_device, dim = from->x_dim;
  memcpy(to->x + first * dim, from->x + first * dim, per_device * dim * sizeof(float));
  memcpy(to->labels + first, from->labels + first, per_device * sizeof(int32_t));
}

/* Marks round(share * n) motors, drawn from their own stream of the seed. */
static int pick_drifted(sim_sensor *s, const sim_sensor_opts *o) {
  size_t n = o->n_devices, want = (size_t)llround(o->drift_share * (double)n);
  uint32_t *perm = malloc(n * sizeof(uint32_t));
  s->drifted = calloc(n, 1);
  if (perm == NULL || s->drifted == NULL) {
    free(perm);
    return FL_E_NOMEM;
  }
  for (size_t k = 0; k < n; k++)
    perm[k] = (uint32_t)k;
  fl_rng r;
  fl__rng_seed(&r, o->seed ^ 0x64726966742d6b31ull);
  for (size_t i = 0; i < want; i++) {
    size_t j = i + (size_t)fl__rng_below(&r, n - i);
    uint32_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
    s->drifted[perm[i]] = 1;
  }
  s->n_drifted = want;
  free(perm);
  return FL_OK;
}

static int spectral_generate(sim_sensor *s, const sim_sensor_opts *o, double *scratch) {
  int drift = o->drift_kind != SIM_DRIFT_NONE;
  sim_partition tmp[3];
  memset(tmp, 0, sizeof(tmp));
  if (drift && (alloc_stream(&s->train_drift, &tmp[0], o->n_devices, o->n_train, o->bins) ||
                alloc_stream(&s->calib_drift, &tmp[1], o->n_devices, o->n_calib, o->bins) ||
                alloc_stream(&s->test_drift, &tmp[2], o->n_devices, o->n_test, o->bins) ||
                pick_drifted(s, o))) {
    for (int i = 0; i < 3; i++)
      sim_partition_free(&tmp[i]);
    return FL_E_NOMEM;
  }
  for (int i = 0; i < 3; i++)
    sim_partition_free(&tmp[i]);
  /* Two streams of the seed: the drift's draws never change the first streams. */
  fl_rng r, rd;
  fl__rng_seed(&r, o->seed);
  fl__rng_seed(&rd, o->seed ^ 0x64726966742d6b32ull);
  for (size_t k = 0; k < o->n_devices; k++) {
    sp_motor m;
    sp_draw_motor(&m, (int)fl__rng_below(&r, SP_TYPES), o->bins, &r);
    sp_fill_stream(&s->train, k, o->n_train, &m, 0.0, scratch, &r);
    sp_fill_stream(&s->calib, k, o->n_calib, &m, 0.0, scratch, &r);
    sp_fill_stream(&s->test, k, o->n_test, &m, o->fault_rate, scratch, &r);
    if (!drift)
      continue;
    if (!s->drifted[k]) {
      copy_rows(&s->train_drift, &s->train, k, o->n_train);
      copy_rows(&s->calib_drift, &s->calib, k, o->n_calib);
      copy_rows(&s->test_drift, &s->test, k, o->n_test);
      continue;
    }
    if (o->drift_kind == SIM_DRIFT_WEAR)
      sp_wear(&m, o->bins, &rd);
    else
      sp_draw_motor(&m, SP_TYPES, o->bins, &rd);
    sp_fill_stream(&s->train_drift, k, o->n_train, &m, 0.0, scratch, &rd);
    sp_fill_stream(&s->calib_drift, k, o->n_calib, &m, 0.0, scratch, &rd);
    sp_fill_stream(&s->test_drift, k, o->n_test, &m, o->fault_rate, scratch, &rd);
  }
  return FL_OK;
}

static void free_stream(fl_dataset *d) {
  free(d->x);
  free(d->labels);
}

int sim_sensor_generate(sim_sensor *out, const sim_sensor_opts *o) {
  if (o->n_devices == 0 || o->bins < 16 || o->fault_rate < 0 || o->fault_rate > 1 ||
      (o->n_train + o->n_calib + o->n_test) * o->n_devices > UINT32_MAX ||
      (o->scenario != SIM_SENSOR_CLASSIC && o->scenario != SIM_SENSOR_SPECTRAL) ||
      !(o->drift_share >= 0 && o->drift_share <= 1) ||
      (o->drift_kind != SIM_DRIFT_NONE && o->scenario != SIM_SENSOR_SPECTRAL) ||
      (o->drift_kind != SIM_DRIFT_NONE && o->drift_kind != SIM_DRIFT_WEAR &&
       o->drift_kind != SIM_DRIFT_MACHINE))
    return FL_E_INVAL;
  sim_sensor s;
  memset(&s, 0, sizeof(s));
  double *scratch = malloc(2 * o->bins * sizeof(double));
  int rc = FL_E_NOMEM;
  if (scratch == NULL ||
      alloc_stream(&s.train, &s.train_part, o->n_devices, o->n_train, o->bins) != FL_OK ||
      alloc_stream(&s.calib, &s.calib_part, o->n_devices, o->n_calib, o->bins) != FL_OK ||
      alloc_stream(&s.test, &s.test_part, o->n_devices, o->n_test, o->bins) != FL_OK) {
    sim_sensor_free(&s);
    goto out;
  }
  if (o->scenario == SIM_SENSOR_SPECTRAL) {
    rc = spectral_generate(&s, o, scratch);
    if (rc != FL_OK) {
      sim_sensor_free(&s);
      goto out;
    }
    *out = s;
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
  fl_dataset *d[6] = {&s->train,       &s->calib,       &s->test,
                      &s->train_drift, &s->calib_drift, &s->test_drift};
  for (int i = 0; i < 6; i++)
    free_stream(d[i]);
  free(s->drifted);
  sim_partition_free(&s->train_part);
  sim_partition_free(&s->calib_part);
  sim_partition_free(&s->test_part);
  memset(s, 0, sizeof(*s));
}
