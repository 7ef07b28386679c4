/*
 * Rollouts (rollouts.c, adminapi_rollouts.c): which model version each device runs for
 * inference. A model has channels ("stable", "canary", ...) that each point at a version; a
 * device follows the channel named by its label "channel" (default "stable"). A staged
 * rollout moves a share of a channel's devices (optionally only those whose labels contain a
 * cohort) to a candidate version; membership is a stable hash of (device, rollout), so raising
 * the percentage only adds devices. An evaluation gate sends the candidate (and, for relative
 * conditions, the channel's current version) to a sample of devices, which evaluate it on their
 * hold-out data; the sample-weighted means decide whether the rollout may be promoted or is
 * stopped. Pins fix a device or a cohort to a version.
 */
#ifndef FL__ROLLOUTS_H
#define FL__ROLLOUTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "crypto.h"
#include "http/http.h"
#include "store/store_pg.h"

/* Hash domains (docs/API.md, "Rollout membership"). */
#define FL_ROLLOUT_DOMAIN "fl.v1.rollout"
#define FL_GATE_DOMAIN "fl.v1.gate"

/* First 8 bytes, read little-endian, of SHA-256(domain | device_id u64 LE | id u64 LE). */
uint64_t fl__rollout_hash(const char *domain, uint64_t device_id, uint64_t id);
/* h < pct/100 * 2^64 (pct <= 0: nobody, pct >= 100: everybody). Monotonic in pct. */
bool fl__rollout_member(const char *domain, uint64_t device_id, uint64_t id, double pct);

/* What a check-in tells the device about inference and evaluation. */
typedef struct fl_rollout_answer {
  bool has_assignment;
  uint64_t rollout_id; /* 0: the channel's version or a pin */
  char channel[64];
  uint64_t model_id, version;
  uint8_t sha256[FL_SHA256_LEN];
  bool has_eval;
  uint64_t eval_model_id, eval_version, gate_id;
  uint64_t campaign_id; /* a plan's evaluation campaign (evaluation.h) instead of a gate */
  uint8_t eval_sha256[FL_SHA256_LEN];
} fl_rollout_answer;

/* Fills *a for a device checking in (requested model, 0 = any; the model it runs). A device
 * of a model without channels gets nothing. 0, or -1 on a database error. */
int fl__rollout_for_device(PGconn *c, uint64_t device_id, uint64_t model_id,
                           uint64_t running_model_id, fl_rollout_answer *a);

/* fl__rollout_for_device for a check-in that has read the registry generation (gen) and the
 * device's "channel" label (NULL: none) in its own statement: answered from the coordinator's
 * registry cache when the generation is the cached one and the model has no live rollout or
 * pin, else by the full query (the cache is reloaded first when gen is newer). 0 or -1. */
int fl__rollout_for_checkin(PGconn *c, uint64_t gen, const char *channel, uint64_t device_id,
                            uint64_t model_id, uint64_t running_model_id, fl_rollout_answer *a);

/* An evaluation report for gate_id (= rollout id) was stored: decides the gate when enough
 * reports are in (stopping the rollout when the condition fails, promoting it when it holds
 * and the gate asks for that), with an audit row. 0, or -1 on a database error. */
int fl__gate_on_report(PGconn *c, uint64_t gate_id);

/* Whether device_id may report for gate gate_id: 1 when the gate exists and the device is in
 * its sample (the rollout's cohort and the gate's hash), 2 when the gate exists but the device
 * is not, 0 when gate_id names no rollout with a gate, -1 on a database error. */
int fl__gate_sampled(PGconn *c, uint64_t gate_id, uint64_t device_id);

/* Promotes a live rollout inside the caller's transaction (the channel's version becomes the
 * candidate, its previous version the old one). 0, or -1 on a database error. */
int fl__rollout_promote_tx(PGconn *c, uint64_t rollout_id);

/* A gate: {"metric", "min", "max", "min_delta", "max_delta", "sample_pct", "min_reports",
 * "auto_promote"}, at least one condition. Returns the gate with defaults filled in (a new
 * reference) or NULL with a message (adminapi_rollouts.c). */
json_t *fl__rollout_gate_normalize(const json_t *g, const char **msg);

/* Admin handlers (adminapi_rollouts.c). */
void fl__admin_channels(fl_srv *s, fl_req *q, fl_resp *r);    /* GET|POST /admin/v1/channels */
void fl__admin_channel_sub(fl_srv *s, fl_req *q, fl_resp *r); /* POST .../channels/{id}/... */
void fl__admin_rollouts(fl_srv *s, fl_req *q, fl_resp *r);    /* GET|POST /admin/v1/rollouts */
void fl__admin_rollout_sub(fl_srv *s, fl_req *q, fl_resp *r); /* /admin/v1/rollouts/{id}... */
void fl__admin_pins(fl_srv *s, fl_req *q, fl_resp *r);        /* GET|POST /admin/v1/pins */
void fl__admin_pin_delete(fl_srv *s, fl_req *q, fl_resp *r);  /* DELETE /admin/v1/pins/{id} */
void fl__admin_fleet(fl_srv *s, fl_req *q, fl_resp *r);       /* GET /admin/v1/fleet */

#endif
