/*
 * The predictive-maintenance scenario: vibration spectra of electric motors.
 *
 * Each device is one motor with its own baseline: running speed (the 1x line's position),
 * harmonic amplitudes, a structural resonance, a noise floor and a typical load. Every example
 * is one magnitude spectrum of `bins` bins at the sample's load (load slows the rotor through
 * slip and raises the amplitudes), as log10 magnitudes. The training stream and the calibration
 * stream hold only normal operation; the held-out test stream has faults injected at
 * `fault_rate`: imbalance (1x grows), misalignment (2x and 3x grow), an outer-race bearing
 * defect (non-synchronous lines at 3.58x with +-1x sidebands) and mechanical looseness
 * (half-order lines and a raised floor), each at a random severity, some of them subtle.
 *
 * Labels are the fault type (0 normal, then the sim_fault values); n_classes is SIM_FAULT_COUNT.
 * An autoencoder trained on normal spectra flags large reconstruction errors.
 *
 * The spectral scenario (SIM_SENSOR_SPECTRAL, fl-sim --dataset sensor2) is one where learning
 * matters: spectra are linear magnitudes, not standardised, and a fault moves energy rather
 * than adding it. Each motor is one of three machine types (harmonic profiles) at its own
 * speed, so normal spectra lie near a low-dimensional manifold (speed, load, type) of the
 * window space. A fault (outer-race bearing lines with sidebands, or half-order looseness
 * lines) is rescaled so that the faulty spectrum has the energy the same window would have had
 * without it: its norm says nothing, an untrained model's reconstruction error barely
 * separates it, and only a model that has learnt the manifold sees it is off it.
 *
 * Drift (spectral scenario only): a seeded share of the motors gets a second set of streams,
 * the data they see from the drift round on: SIM_DRIFT_WEAR (worn bearings: a raised, spread
 * broadband floor and a high-frequency haystack, slightly stronger and broader harmonics; no
 * defect-frequency line, which stays the fault's signature) or SIM_DRIFT_MACHINE (the motor is
 * replaced by a machine type the fleet has not seen: faster, odd harmonics). The other motors'
 * second streams are copies of their first: only the chosen share changes.
 */
#ifndef SIM_SENSOR_H
#define SIM_SENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "partition.h"

typedef enum sim_fault {
  SIM_FAULT_NONE = 0,
  SIM_FAULT_IMBALANCE = 1,
  SIM_FAULT_MISALIGNMENT = 2,
  SIM_FAULT_BEARING = 3,
  SIM_FAULT_LOOSENESS = 4,
  SIM_FAULT_COUNT = 5
} sim_fault;

typedef enum sim_sensor_scenario {
  SIM_SENSOR_CLASSIC = 0,  /* --dataset sensor */
  SIM_SENSOR_SPECTRAL = 1, /* --dataset sensor2 */
} sim_sensor_scenario;

typedef enum sim_drift_kind {
  SIM_DRIFT_NONE = 0,
  SIM_DRIFT_WEAR = 1,
  SIM_DRIFT_MACHINE = 2,
} sim_drift_kind;

typedef struct sim_sensor_opts {
  size_t n_devices;
  size_t bins;       /* 64 */
  size_t n_train;    /* normal examples per device */
  size_t n_calib;    /* normal examples per device for choosing the alarm threshold */
  size_t n_test;     /* held-out examples per device */
  double fault_rate; /* fraction of faulty examples in the held-out stream */
  uint64_t seed;
  sim_sensor_scenario scenario;
  sim_drift_kind drift_kind; /* SIM_DRIFT_NONE: no second streams */
  double drift_share;        /* 0..1 of the motors, rounded to the nearest count */
} sim_sensor_opts;

typedef struct sim_sensor {
  fl_dataset train, calib, test;
  sim_partition train_part, calib_part, test_part;
  /* With drift: the streams from the drift round on (same shapes and rows as the first ones),
   * and drifted[k] != 0 for the n_drifted motors that change. All NULL/0 without drift. */
  fl_dataset train_drift, calib_drift, test_drift;
  uint8_t *drifted;
  size_t n_drifted;
} sim_sensor;

/* On error *out is untouched. The first streams do not depend on the drift options. */
int sim_sensor_generate(sim_sensor *out, const sim_sensor_opts *o);

/* Standardises every device's streams in place with the per-bin mean and standard deviation of
 * that device's own training stream, as a device would with the statistics of its normal
 * operation: what is left is each motor's deviation from its own baseline in units of its own
 * variability, so one shared autoencoder need not memorise a thousand baselines, and a fault
 * line is as large in its bins as the motor's normal spread there makes it. Standard
 * deviations are floored (at 1e-3 log10 units) against bins that barely move. FL_E_NOMEM
 * leaves the streams unchanged. */
int sim_sensor_standardise(sim_sensor *s);
void sim_sensor_free(sim_sensor *s);

#endif
