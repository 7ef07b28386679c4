/*
 * The pieces of one fl-sim run that main.c strings together: the data of the chosen scenario
 * (dataset.c) and the rounds (run.c).
 */
#ifndef SIM_SIM_H
#define SIM_SIM_H

#include <signal.h>
#include <stdint.h>

#include "data.h"
#include "model.h"
#include "options.h"
#include "partition.h"

typedef struct sim_data {
  fl_dataset train, test, calib; /* calib: sensor only (normal operation) */
  sim_partition part;            /* device k's training rows */
  fl_model_spec spec;
  int anomaly;   /* sensor scenario: an autoencoder scored by AUC */
  char name[64]; /* "fmnist", "synthetic(1,1)", ... */
  /* sensor2 with --drift-round: the streams from the drift round on (sim_data_drift copies
   * them over train/test/calib), drifted[k] for the motors that change, and the rows per
   * motor of test and calib (motor k's rows are contiguous). NULL/0 without drift. */
  fl_dataset drift_train, drift_test, drift_calib;
  uint8_t *drifted;
  size_t n_drifted, test_per_device, calib_per_device;
} sim_data;

/* Set by SIGINT/SIGTERM: the waits of a run give up, so that main() still stops the coordinator
 * and PostgreSQL it started and removes its temporary directories. A second signal kills. */
extern volatile sig_atomic_t sim_stop_requested;

/* Loads or generates the data for o->devices devices and picks the model. Prints why on
 * failure. */
int sim_data_load(sim_data *d, const sim_options *o);
void sim_data_free(sim_data *d);

/* Copies the drifted streams over the current ones (a no-op without drift). The data is
 * borrowed by the fleet: call it between rounds; a straggler still training on the previous
 * round may read a mix, but its update belongs to a closed round and is refused. */
void sim_data_drift(const sim_data *d);

/* Everything after the services are up: model, devices, plan, rounds, reports. */
int sim_run(const sim_options *o, const sim_data *d, const char *url, const char *token,
            const char *work_dir);

#endif
