/*
 * fl-sim's options, from the command line and an optional config file (--config FILE) whose
 * lines are "name = value" with the names of the long options ('#' starts a comment). The
 * command line wins over the file.
 */
#ifndef SIM_OPTIONS_H
#define SIM_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

typedef struct sim_options {
  /* fleet and rounds */
  size_t devices;
  int threads, rounds;
  uint32_t participants, min_participants; /* 0: all devices / half of participants */
  double over_selection;                   /* devices given a task per target update (1.3) */
  double selection_window_s; /* fair selection window (-1: 1 s when participants < devices) */
  double deadline_s;
  /* data */
  const char *dataset; /* fmnist | synthetic | sensor | sensor2 */
  const char *data_dir;
  const char *partition;     /* iid | dirichlet:A | shards:K */
  size_t samples_per_device; /* fmnist: 0 = the whole training set spread over the fleet */
  double syn_alpha, syn_beta;
  double fault_rate; /* sensor: held-out stream */
  /* sensor2: from round drift_round on (0: never) a drift_share of the motors see drift_kind
   * (wear | machine) in all their streams */
  int drift_round;
  double drift_share;
  const char *drift_kind;
  /* drift detection (docs/DRIFT.md): devices send service statistics of their held-out
   * stream at every check-in, enrolled by site (the drifted motors form one), and the plan
   * tests sites; retrain_rounds > 0: the plan retrains a drifted site in that many rounds */
  int drift_detect;
  double psi_threshold;
  int retrain_rounds;
  /* model and training */
  const char *model;  /* logreg | mlp | 2nn | cnn | autoencoder */
  const char *layers; /* instead of model: a layer list */
  uint32_t epochs, batch;
  double lr, momentum, weight_decay, prox_mu, clip_norm, server_lr;
  const char *encoding, *server_optimizer;
  /* asynchronous rounds (FedBuff, docs/API.md): mode "sync" | "async", the buffer of K
   * updates (0: participants, else devices), the staleness bound */
  const char *mode;
  uint32_t buffer_size, max_staleness;
  /* faults */
  double dropout, net_fail, straggler_frac, straggler_ms, bad_frac;
  /* intermittency: this share of the devices goes offline for exponential periods of mean
   * offline_mean_s, right after taking a task (holding it) or after finishing one, each with
   * probability 1/2 (fleet.c) */
  double offline_share, offline_mean_s;
  const char *bad_kinds; /* comma list of sim_behaviour names (options.c) */
  /* robust aggregation, passed into the plan (the coordinator checks them: 400 bad_plan) */
  const char *aggregator;
  double trim_fraction;
  uint32_t byzantine, krum_select;
  /* differential privacy, passed into the plan (docs/PRIVACY.md): central noise multiplier
   * (0: none) and adaptive clipping's target quantile (0: fixed clip) */
  double noise_multiplier, clip_quantile;
  /* training cohorts and federated evaluation (mix.h; docs/API.md): device labels and
   * conditions, the plan's cohort (JSON) and evaluation policy (share or count, by a label) */
  const char *labels, *conditions, *cohort, *eval_by;
  double eval_share;
  uint32_t eval_count;
  /* secure aggregation (docs/SECAGG.md): "t:k" into the plan, and dropouts injected per phase
   * as "phase:fraction,..." with phase keys, shares, masked or unmask (sim_secagg_parse) */
  const char *secure_aggregation, *secagg_drop;
  /* services */
  const char *url, *admin_token, *database_url, *coordinator_bin, *pg_bin, *work_dir;
  const char *coordinator_args; /* blank-separated, after fl-sim's own coordinator flags */
  const char *model_name;       /* NULL: "fl-sim <data> <UTC time> <pid>", new each run */
  const char *transport;        /* http | mqtt (mqtt.h) */
  const char *broker;           /* --transport mqtt: mqtt://PREFIX:PASSWORD@host:port */
  const char *bridge_bin;       /* --transport mqtt: fl-mqtt-bridge to start, or NULL */
  int keep_work_dir;
  /* output */
  const char *out_dir;
  uint64_t seed;
  /* threads training the devices (0: one per online CPU); exchanges in flight, all workers */
  int train_threads, max_inflight;
  const char *export_dir; /* --export-learning: export.h */
} sim_options;

void sim_options_defaults(sim_options *o);
/* FL_OK, or FL_E_INVAL after printing why to stderr; 1 with --help (usage printed). Strings
 * point into argv or into storage owned by the options module for the process lifetime.
 * A successful parse has passed sim_options_check. */
int sim_options_parse(sim_options *o, int argc, char **argv);

/* Every check that can be made before data, PostgreSQL or the coordinator are touched: ranges
 * (the coordinator's plan limits among them), names, participants against devices, the model
 * against the scenario's data. FL_OK, or FL_E_INVAL with why in msg. */
int sim_options_check(const sim_options *o, char *msg, size_t cap);

/* The shape of a scenario's data, fixed by fl-sim: what its model takes and gives. */
typedef struct sim_scenario {
  size_t x_dim;      /* floats per example */
  int32_t n_classes; /* 0: unlabelled, the model is an autoencoder (output = input) */
} sim_scenario;
/* FL_E_INVAL for an unknown --dataset. */
int sim_scenario_shape(const char *dataset, sim_scenario *out);

/* The model of --model or --layers for the scenario, validated: its shapes fit, its loss suits
 * the data, its output is the number of classes (classifier) or the input size (autoencoder).
 * FL_E_INVAL with why in msg. */
int sim_options_model(const sim_options *o, const sim_scenario *sc, fl_model_spec *out, char *msg,
                      size_t cap);
void sim_options_usage(FILE *f);
/* Bit mask (1 << sim_behaviour) from bad_kinds, or -1 for an unknown name. */
int sim_options_bad_kinds(const char *list);

/* The secure-aggregation options: *t and *k from --secure-aggregation (0 and 0 without it),
 * drop[SIM_SA_KEYS..SIM_SA_UNMASK] from --secagg-drop, the probability that a device drops out
 * at that phase. FL_E_INVAL with why in msg for a malformed value. */
enum { SIM_SA_KEYS = 0, SIM_SA_SHARES, SIM_SA_MASKED, SIM_SA_UNMASK, SIM_SA_PHASES };
int sim_secagg_parse(const sim_options *o, uint32_t *t, uint32_t *k, double drop[SIM_SA_PHASES],
                     char *msg, size_t cap);

#endif
