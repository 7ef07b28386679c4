/*
 * fl-sim's options, from the command line and an optional config file (--config FILE) whose
 * lines are "name = value" with the names of the long options ('#' starts a comment). The
 * command line wins over the file.
 */
#ifndef SIM_OPTIONS_H
#define SIM_OPTIONS_H

#include <stdint.h>
#include <stdio.h>

typedef struct sim_options {
  /* fleet and rounds */
  size_t devices;
  int threads, rounds;
  uint32_t participants, min_participants; /* 0: all devices / half of participants */
  double deadline_s;
  /* data */
  const char *dataset;     /* fmnist | synthetic | sensor */
  const char *data_dir;
  const char *partition;   /* iid | dirichlet:A | shards:K */
  size_t samples_per_device; /* fmnist: 0 = the whole training set spread over the fleet */
  double syn_alpha, syn_beta;
  double fault_rate;       /* sensor: held-out stream */
  /* model and training */
  const char *model;       /* logreg | mlp | 2nn | cnn | autoencoder */
  const char *layers;      /* instead of model: a layer list */
  uint32_t epochs, batch;
  double lr, momentum, weight_decay, prox_mu, clip_norm, server_lr;
  const char *encoding, *server_optimizer;
  /* faults */
  double dropout, net_fail, straggler_frac, straggler_ms, bad_frac;
  const char *bad_kinds;   /* comma list of poison,unclipped,badsig,replay */
  /* services */
  const char *url, *admin_token, *database_url, *coordinator_bin, *pg_bin, *work_dir;
  const char *coordinator_args; /* blank-separated, after fl-sim's own coordinator flags */
  int keep_work_dir;
  /* output */
  const char *out_dir;
  uint64_t seed;
} sim_options;

void sim_options_defaults(sim_options *o);
/* FL_OK, or FL_E_INVAL after printing why to stderr; 1 with --help (usage printed). Strings
 * point into argv or into storage owned by the options module for the process lifetime. */
int sim_options_parse(sim_options *o, int argc, char **argv);
void sim_options_usage(FILE *f);
/* Bit mask (1 << sim_behaviour) from bad_kinds, or -1 for an unknown name. */
int sim_options_bad_kinds(const char *list);

#endif
