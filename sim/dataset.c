/*
 * The data of an fl-sim scenario, split over the devices, and the model that goes with it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "model_specs.h"
#include "sensor.h"
#include "sim.h"
#include "synthetic.h"

static int load_fmnist(sim_data *d, const sim_options *o, fl_rng *r) {
  char ti[512], tl[512], vi[512], vl[512];
  snprintf(ti, sizeof(ti), "%s/train-images-idx3-ubyte.gz", o->data_dir);
  snprintf(tl, sizeof(tl), "%s/train-labels-idx1-ubyte.gz", o->data_dir);
  snprintf(vi, sizeof(vi), "%s/t10k-images-idx3-ubyte.gz", o->data_dir);
  snprintf(vl, sizeof(vl), "%s/t10k-labels-idx1-ubyte.gz", o->data_dir);
  int rc = fl__idx_load(&d->train, ti, tl, NULL);
  if (rc == FL_OK)
    rc = fl__idx_load(&d->test, vi, vl, NULL);
  if (rc != FL_OK) {
    fprintf(stderr, "fl-sim: cannot load Fashion-MNIST from %s: %s\n", o->data_dir,
            fl_strerror(rc));
    return rc;
  }
  /* The options were checked against Fashion-MNIST's shape (sim_scenario_shape). */
  sim_scenario shape;
  sim_scenario_shape("fmnist", &shape);
  if (d->train.x_dim != shape.x_dim || d->train.n_classes != shape.n_classes ||
      d->test.x_dim != shape.x_dim) {
    fprintf(stderr, "fl-sim: %s does not hold Fashion-MNIST (%zu pixels, %d classes)\n",
            o->data_dir, d->train.x_dim, (int)d->train.n_classes);
    return FL_E_INVAL;
  }
  sim_partition_scheme sc;
  if (sim_partition_scheme_parse(&sc, o->partition) != FL_OK) {
    fprintf(stderr, "fl-sim: bad --partition %s\n", o->partition);
    return FL_E_INVAL;
  }
  size_t n_pool = o->samples_per_device ? o->samples_per_device * o->devices : d->train.n;
  if (n_pool > d->train.n) {
    fprintf(stderr, "fl-sim: %zu devices x %zu examples exceed the %zu training examples\n",
            o->devices, o->samples_per_device, d->train.n);
    return FL_E_INVAL;
  }
  uint32_t *pool = NULL;
  rc = sim_subsample(&pool, d->train.n, n_pool, r);
  if (rc == FL_OK) {
    size_t min_size = n_pool / o->devices / 4 > 10 ? 10 : n_pool / o->devices / 4;
    rc = sim_partition_apply(&d->part, &sc, d->train.labels, d->train.n_classes, n_pool, pool,
                             o->devices, min_size ? min_size : 1, r);
  }
  free(pool);
  if (rc != FL_OK)
    fprintf(stderr, "fl-sim: cannot partition (%s): %s\n", o->partition, fl_strerror(rc));
  snprintf(d->name, sizeof(d->name), "Fashion-MNIST %s", o->partition);
  return rc;
}

static int load_synthetic(sim_data *d, const sim_options *o) {
  sim_synthetic s;
  sim_scenario sc;
  sim_scenario_shape("synthetic", &sc);
  sim_synthetic_opts so = {.n_devices = o->devices,
                           .dim = sc.x_dim,
                           .n_classes = sc.n_classes,
                           .alpha = o->syn_alpha,
                           .beta = o->syn_beta,
                           .seed = o->seed};
  int rc = sim_synthetic_generate(&s, &so);
  if (rc != FL_OK)
    return rc;
  d->train = s.train;
  d->test = s.test;
  d->part = s.train_part;
  sim_partition_free(&s.test_part);
  snprintf(d->name, sizeof(d->name), "Synthetic(%g,%g)", o->syn_alpha, o->syn_beta);
  return FL_OK;
}

static int load_sensor(sim_data *d, const sim_options *o) {
  sim_sensor s;
  sim_scenario sc;
  sim_scenario_shape("sensor", &sc);
  int spectral = strcmp(o->dataset, "sensor2") == 0;
  sim_drift_kind kind = SIM_DRIFT_NONE;
  if (spectral && o->drift_round > 0)
    kind = strcmp(o->drift_kind, "machine") == 0 ? SIM_DRIFT_MACHINE : SIM_DRIFT_WEAR;
  sim_sensor_opts so = {.n_devices = o->devices,
                        .bins = sc.x_dim,
                        .n_train = 60,
                        .n_calib = 10,
                        .n_test = 40,
                        .fault_rate = o->fault_rate,
                        .seed = o->seed,
                        .scenario = spectral ? SIM_SENSOR_SPECTRAL : SIM_SENSOR_CLASSIC,
                        .drift_kind = kind,
                        .drift_share = o->drift_share};
  int rc = sim_sensor_generate(&s, &so);
  if (rc != FL_OK)
    return rc;
  /* Each device scales its data by its own normal operation (see sensor.h); the spectral
   * scenario does not, or the scaling alone would find its faults. */
  if (!spectral)
    rc = sim_sensor_standardise(&s);
  if (rc != FL_OK) {
    sim_sensor_free(&s);
    return rc;
  }
  d->train = s.train;
  d->test = s.test;
  d->calib = s.calib;
  d->part = s.train_part;
  sim_partition_free(&s.calib_part);
  sim_partition_free(&s.test_part);
  d->drift_train = s.train_drift;
  d->drift_test = s.test_drift;
  d->drift_calib = s.calib_drift;
  d->drifted = s.drifted;
  d->n_drifted = s.n_drifted;
  d->test_per_device = so.n_test;
  d->calib_per_device = so.n_calib;
  d->anomaly = 1;
  if (!spectral)
    snprintf(d->name, sizeof(d->name), "motor vibration");
  else if (kind == SIM_DRIFT_NONE)
    snprintf(d->name, sizeof(d->name), "motor vibration spectra");
  else
    snprintf(d->name, sizeof(d->name), "motor vibration spectra, %s drift", o->drift_kind);
  return FL_OK;
}

static int pick_model(sim_data *d, const sim_options *o) {
  sim_scenario sc;
  char msg[256] = "the data set has an unexpected shape";
  int rc = sim_scenario_shape(o->dataset, &sc);
  if (rc == FL_OK)
    rc = sim_options_model(o, &sc, &d->spec, msg, sizeof(msg));
  if (rc == FL_OK && d->train.x_dim != sc.x_dim)
    rc = FL_E_INVAL;
  if (rc != FL_OK)
    fprintf(stderr, "fl-sim: the model does not fit the data: %s\n", msg);
  return rc;
}

int sim_data_load(sim_data *d, const sim_options *o) {
  memset(d, 0, sizeof(*d));
  fl_rng r;
  fl__rng_seed(&r, o->seed);
  int rc;
  if (o->devices == 0) {
    fprintf(stderr, "fl-sim: --devices must be at least 1\n");
    return FL_E_INVAL;
  }
  if (strcmp(o->dataset, "fmnist") == 0)
    rc = load_fmnist(d, o, &r);
  else if (strcmp(o->dataset, "synthetic") == 0)
    rc = load_synthetic(d, o);
  else if (strcmp(o->dataset, "sensor") == 0 || strcmp(o->dataset, "sensor2") == 0)
    rc = load_sensor(d, o);
  else {
    fprintf(stderr, "fl-sim: unknown --dataset %s\n", o->dataset);
    rc = FL_E_INVAL;
  }
  if (rc == FL_OK)
    rc = pick_model(d, o);
  if (rc != FL_OK)
    sim_data_free(d);
  return rc;
}

void sim_data_drift(const sim_data *d) {
  if (d->drifted == NULL)
    return;
  const fl_dataset *from[3] = {&d->drift_train, &d->drift_test, &d->drift_calib};
  const fl_dataset *to[3] = {&d->train, &d->test, &d->calib};
  for (int i = 0; i < 3; i++) {
    memcpy(to[i]->x, from[i]->x, from[i]->n * from[i]->x_dim * sizeof(float));
    memcpy(to[i]->labels, from[i]->labels, from[i]->n * sizeof(int32_t));
  }
}

void sim_data_free(sim_data *d) {
  fl_dataset *sets[6] = {&d->train,       &d->test,       &d->calib,
                         &d->drift_train, &d->drift_test, &d->drift_calib};
  free(d->drifted);
  for (int i = 0; i < 6; i++) {
    free(sets[i]->x);
    free(sets[i]->labels);
  }
  sim_partition_free(&d->part);
  memset(d, 0, sizeof(*d));
}
