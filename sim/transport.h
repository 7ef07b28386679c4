/*
 * fl-sim's fault injection: a wrapper around a libflclient transport (in a run, the built-in
 * fl_transport_curl), through the public fl_transport interface only. The wrapper forwards
 * attach(), so that in an fl_multi the wrapped curl transport shares the multi's connection
 * pool and poll.
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
 * - secure-aggregation dropouts (sa_drop): at its first request of a phase (keys, shares, the
 *   masked upload, unmasking) a device drops out with the phase's probability: the request
 *   fails for good (FL_E_IO), the device's round ends there, the coordinator sees a
 *   device that went silent.
 * Every refusal's fl.v1.Error reason is counted.
 *
 * Each device draws its faults from a generator of its own, seeded from (run seed, device
 * index): the same seed injects the same faults into the same devices whatever the threads.
 */
#ifndef SIM_TRANSPORT_H
#define SIM_TRANSPORT_H

#include <stdint.h>

#include "fl/client.h"

typedef enum sim_behaviour {
  SIM_HONEST = 0,
  SIM_POISON = 1,
  SIM_UNCLIPPED = 2,
  SIM_BADSIG = 3,
  SIM_REPLAY = 4,
  /* Attacks inside the norm bound (misbehave.h); label flipping acts on the training data. */
  SIM_SIGNFLIP = 5,
  SIM_SCALED = 6,
  SIM_LIE = 7,
  SIM_LABELFLIP = 8,
  SIM_NOISE = 9,
  SIM_BEHAVIOUR_COUNT = 10
} sim_behaviour;

const char *sim_behaviour_name(sim_behaviour b);

#define SIM_MAX_REASONS 24

/* Counters of one worker thread, shared by its devices' links (read by the main thread under
 * the worker's lock in fleet.c). Bytes are request and response bodies: HTTP headers are the
 * wrapped transport's business and not seen here. */
typedef struct sim_net_stats {
  uint64_t bytes_up, bytes_down;
  uint64_t requests, net_faults;
  uint64_t sa_dropped; /* devices that dropped out of a secure-aggregation phase (injected) */
  uint64_t refused;
  char reasons[SIM_MAX_REASONS][32];
  uint64_t reason_count[SIM_MAX_REASONS];
} sim_net_stats;

/* What the links of one worker share: its counters and its cap on exchanges in flight. */
typedef struct sim_net {
  sim_net_stats stats;
  /* Exchanges beyond the cap wait inside the links instead of each holding one of the
   * coordinator's connection threads (0: no cap). The secure-aggregation messages
   * (/v1/secagg/...) are not counted: small, and their phase waits for them; the state poll
   * is a long poll the coordinator parks without a thread until its phase comes. */
  unsigned max_inflight, inflight;
} sim_net;

/* The per-device part. */
typedef struct sim_link sim_link;
typedef struct sim_link_opts {
  sim_net *net;
  fl_transport inner;   /* the transport that carries the exchanges; owned by the link */
  const char *key_path; /* the device's key, for re-signing rewritten uploads */
  sim_behaviour behaviour;
  double straggler_ms; /* median upload delay of this device, 0: none */
  double net_fail;     /* probability per exchange */
  double clip_norm;    /* the plan's, for UNCLIPPED */
  uint64_t seed;       /* of this device's faults */
  /* Secure aggregation: the probability per round that the device drops out at each phase
   * (sim_secagg_parse's order: keys, shares, masked input, unmasking); NULL: none. */
  const double *sa_drop;
  /* The caller keeps each request's body valid until end(), as libflclient does (its
   * client_internal.h, fl__curl_transport_keep_body): an honest device's upload is then
   * forwarded from there, not copied. 0: the body is copied at begin(), as the public contract
   * asks. Either way the body the link hands the inner transport lives until inner.end(). */
  int borrow_body;
  /* Called (on the worker's thread) when an upload was acknowledged and the device is told
   * so: it no longer holds its update. NULL: not told. */
  void (*uploaded)(void *arg);
  void *uploaded_arg;
} sim_link_opts;

/* Fills *out (a version 3 fl_transport owning a new sim_link and o->inner); destroy() frees
 * both. On error o->inner is destroyed too. */
int sim_link_transport(fl_transport *out, const sim_link_opts *o);

/* The independent random streams of one device. */
typedef enum sim_seed_stream {
  SIM_SEED_FAULTS = 1,    /* network faults and straggler delays (the link) */
  SIM_SEED_DROPOUT = 2,   /* whether it drops out of a round */
  SIM_SEED_SHUFFLE = 3,   /* the order of its training examples */
  SIM_SEED_PROFILE = 4,   /* whether it is a straggler */
  SIM_SEED_OFFLINE = 5,   /* whether it is intermittent, and its offline periods */
  SIM_SEED_CONDITIONS = 6 /* the conditions it reports at each check-in (mix.h) */
} sim_seed_stream;

/* A seed of device `device` (its index in the fleet) from the run's seed only: nothing that
 * depends on thread count or enrollment order (such as the coordinator's device id). */
uint64_t sim_device_seed(uint64_t run_seed, uint64_t device, sim_seed_stream stream);

/* Counts a refusal under the coordinator's fl.v1.Error reason (or "http_<status>"). */
void sim_net_count_refusal(sim_net_stats *s, int status, const uint8_t *body, size_t len);

#endif
