/*
 * The simulated fleet: N libflclient handles, each with its own state directory (key,
 * identity, model cache), data partition and fault profile, driven through libflclient's
 * public API by a few worker threads. Each worker owns a slice of the devices and one fl_multi
 * that steps them all over one shared connection pool (each device's built-in curl transport
 * is wrapped by the fault injection of transport.h). Training runs on a pool of its own
 * threads (fl_client_train of a client the multi lent out), so that a worker's devices keep
 * their exchanges moving while others train. All devices share one fl_model_store.
 *
 * Everything random about device k (faults, dropouts, example order, being a straggler) is
 * drawn from seeds of (seed, k) alone, so the thread count does not change what happens.
 *
 * Rounds are paced by the main thread: a device takes part at most once per simulated round
 * and waits for sim_fleet_next_round() after uploading (or failing, or dropping out). In a
 * continuous fleet (asynchronous plans) devices begin again whenever they are idle.
 *
 * Intermittency (offline_share): those devices, chosen from (seed, k), go offline for a period
 * drawn from an exponential of mean offline_mean_ms with probability 1/2 right after a check-in
 * gave them a task (they hold it: training and upload wait for the end of the period) and with
 * probability 1/2 after a round ended (no check-in until it is over).
 */
#ifndef SIM_FLEET_H
#define SIM_FLEET_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "partition.h"
#include "mix.h"
#include "transport.h"

typedef struct sim_fleet_opts {
  size_t n_devices;
  int threads;       /* network workers, one fl_multi each */
  int train_threads; /* the training pool (>= 1) */
  int max_inflight;  /* exchanges in flight over all workers */
  const char *url;
  const char *work_dir;
  const fl_dataset *train;   /* borrowed */
  const sim_partition *part; /* device k trains on part's k-th list; borrowed */
  int labelled;              /* 0 for an autoencoder: no labels are handed to the client */
  double dropout;            /* probability that a selected device drops out before uploading */
  double net_fail;           /* per exchange */
  double straggler_frac, straggler_ms;
  double offline_share, offline_mean_ms; /* intermittency (see above) */
  int continuous;                        /* devices do not wait for sim_fleet_next_round */
  double bad_frac;                       /* fraction of misbehaving devices */
  unsigned bad_kinds;                    /* bit (1 << sim_behaviour) per kind in use; 0: all four */
  double clip_norm;
  double sa_drop[4]; /* secure aggregation: dropout probability per phase (options.h SIM_SA_*) */
  uint64_t seed;
  uint64_t model_id;  /* the run's model: devices check in for it alone */
  const char *broker; /* NULL: HTTP; else --broker (mqtt.h): every device over MQTT */
  /* Drift statistics (docs/DRIFT.md): when service is set, every device scores its rows of it
   * (device k: rows k * service_per_device on) with the model it serves before each check-in,
   * and sends the statistics with it. Read at each round: the drift rewrites it in place. */
  const fl_dataset *service;
  size_t service_per_device;
  /* The conditions devices report, drawn at every check-in (mix.h); NULL: none; borrowed. */
  const sim_mix *conditions;
  /* Hold-out data for federated evaluation: device k gets holdout_per_device rows of holdout
   * from row k * holdout_per_device (mod its size); NULL: none; borrowed. */
  const fl_dataset *holdout;
  size_t holdout_per_device;
} sim_fleet_opts;

typedef struct sim_fleet sim_fleet;

/* Creates the handles and state directories. On error nothing is left running. */
int sim_fleet_new(sim_fleet **out, const sim_fleet_opts *o);
void sim_fleet_free(sim_fleet *f); /* stops the workers first */

/* Starts the workers, which enroll their devices with tokens[k] and then wait for round 1.
 * tokens is borrowed until sim_fleet_wait_enrolled returns. */
int sim_fleet_start(sim_fleet *f, char *const *tokens);
/* Blocks until every device tried to enroll; the number enrolled. When sim_stop_requested is
 * set first, the workers are stopped before it returns (no device takes part in rounds). */
size_t sim_fleet_wait_enrolled(sim_fleet *f);

/* Threads in the training pool (train_threads, or the CPUs when it was 0). */
int sim_fleet_train_threads(const sim_fleet *f);

/* Lets devices take part in the next simulated round (the first call starts round 1). */
void sim_fleet_next_round(sim_fleet *f);

typedef struct sim_fleet_counts {
  uint64_t finished; /* devices done with the current round (any outcome) */
  uint64_t uploaded, failed, dropped;
  uint64_t not_folded; /* answered 409 target_reached: the round was full, not a failure */
  uint64_t offline;    /* offline periods begun (intermittency) */
  double train_s;      /* training time summed over devices */
  double train_cpu_s;  /* CPU time of the training threads while they trained, summed */
  int64_t last_ack_ms; /* Unix ms of the latest acknowledged upload */
  sim_net_stats net;   /* summed over the workers */
  uint64_t failed_by_err[32];
} sim_fleet_counts;
/* Totals since the start (finished: in the current round only). */
void sim_fleet_counts_get(sim_fleet *f, sim_fleet_counts *c);

/* An honest enrolled device to download versions with: its id and key file path. */
int sim_fleet_observer(sim_fleet *f, uint64_t *device_id, const char **key_path);
/* Devices per behaviour. */
void sim_fleet_behaviours(const sim_fleet *f, size_t counts[SIM_BEHAVIOUR_COUNT]);

#endif
