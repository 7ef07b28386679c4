/*
 * fl-sim's transport for libflclient (the public fl_transport vtable): every device of one
 * worker thread shares that thread's libcurl multi handle and its connection pool, and faults
 * are injected on the way.
 *
 * Faults, per exchange or per device:
 * - transient network failures (net_fail): half fail before anything is sent, half lose the
 *   answer after the coordinator processed the request (so uploads must be idempotent);
 * - stragglers: an update upload starts only after a delay drawn from a lognormal latency
 *   distribution (straggler_frac of the devices, median straggler_ms);
 * - misbehaving devices rewrite their own update upload and re-sign it with their key, so the
 *   coordinator sees a well-formed, correctly signed request it must refuse on content:
 *   POISON scales the delta by -20 (a model-replacement attack), UNCLIPPED rescales it to 3x the
 *   clip norm (what an update that skipped clipping looks like), BADSIG flips a bit of the
 *   request signature, REPLAY sends again the exact bytes of its previous upload.
 * Every refusal's fl.v1.Error reason is counted.
 */
#ifndef SIM_TRANSPORT_H
#define SIM_TRANSPORT_H

#include <stdint.h>

#include "fl/client.h"
#include "rng.h"

typedef enum sim_behaviour {
  SIM_HONEST = 0,
  SIM_POISON = 1,
  SIM_UNCLIPPED = 2,
  SIM_BADSIG = 3,
  SIM_REPLAY = 4,
  SIM_BEHAVIOUR_COUNT = 5
} sim_behaviour;

const char *sim_behaviour_name(sim_behaviour b);

#define SIM_MAX_REASONS 24

/* Counters of one worker thread (read by the main thread with the atomics in fleet.c). */
typedef struct sim_net_stats {
  uint64_t bytes_up, bytes_down;
  uint64_t requests, net_faults;
  uint64_t refused;
  char reasons[SIM_MAX_REASONS][32];
  uint64_t reason_count[SIM_MAX_REASONS];
} sim_net_stats;

/* One per worker thread. */
typedef struct sim_net {
  void *multi; /* CURLM */
  sim_net_stats stats;
  double net_fail;     /* probability per exchange */
  double clip_norm;    /* the plan's, for UNCLIPPED */
  fl_rng rng;
} sim_net;

int sim_net_init(sim_net *n, uint64_t seed);
void sim_net_cleanup(sim_net *n);
/* Drives the shared multi handle for up to timeout_ms (0: no waiting). */
void sim_net_run(sim_net *n, int timeout_ms);

/* The per-device part. */
typedef struct sim_link sim_link;
typedef struct sim_link_opts {
  sim_net *net;
  const char *base_url;
  const char *key_path;   /* the device's key, for re-signing rewritten uploads */
  sim_behaviour behaviour;
  double straggler_ms;    /* median upload delay of this device, 0: none */
} sim_link_opts;

/* Fills *out (an fl_transport owning a new sim_link); destroy() frees it. */
int sim_link_transport(fl_transport *out, const sim_link_opts *o);

#endif
