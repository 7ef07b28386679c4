/*
 * The coordinator's admin API (docs/ADMIN-API-CONTRACT.md) as fl-sim uses it: JSON over HTTP
 * with a bearer token, blocking, on the calling thread.
 */
#ifndef SIM_ADMIN_H
#define SIM_ADMIN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "model.h"

typedef struct sim_admin sim_admin;

int sim_admin_new(sim_admin **out, const char *base_url, const char *token);
void sim_admin_free(sim_admin *a);
/* Why the last call failed: HTTP status and the server's error reason/message, or curl's. */
const char *sim_admin_errmsg(const sim_admin *a);

/* One call: body may be NULL (GET); *out receives the parsed answer (json_decref it).
 * FL_E_TRANSPORT, FL_E_REFUSED (HTTP >= 400), FL_E_PARSE. */
int sim_admin_call(sim_admin *a, const char *method, const char *path, json_t *body,
                   json_t **out);

/* A GET whose answer is not JSON (/metrics): *body is borrowed until the next call.
 * FL_E_TRANSPORT, FL_E_REFUSED (any status but 200). */
int sim_admin_get_text(sim_admin *a, const char *path, const char **body);

/* GET /healthz-like probe: FL_OK when `path` answers 200. */
int sim_admin_probe(sim_admin *a, const char *path);

/* n one-time enrollment tokens (asked for in batches); free with sim_admin_free_tokens. */
int sim_admin_enrollment_tokens(sim_admin *a, size_t n, char ***tokens);
void sim_admin_free_tokens(char **tokens, size_t n);

/* The spec as the admin API spells it. */
json_t *sim_admin_spec_json(const fl_model_spec *s);
int sim_admin_create_model(sim_admin *a, const char *name, const fl_model_spec *spec,
                           uint64_t seed, uint64_t *model_id, uint64_t *version);

typedef struct sim_plan {
  uint32_t participants, min_participants;
  double over_selection, deadline_s;
  uint32_t local_epochs, batch_size;
  double learning_rate, momentum, weight_decay, prox_mu, clip_norm;
  const char *encoding, *server_optimizer;
  double server_lr;
  uint32_t rounds;
} sim_plan;
int sim_admin_create_plan(sim_admin *a, uint64_t model_id, const sim_plan *p, uint64_t *plan_id,
                          uint64_t *round_id);

typedef struct sim_round_state {
  uint64_t round_id, base_version, result_version; /* result 0 while open */
  char state[24];
  uint32_t accepted, target;
  json_t *metrics; /* borrowed until the next sim_admin_round call; may be NULL */
} sim_round_state;
/* The newest round of the model (largest round_id), FL_E_NOTFOUND when none. */
int sim_admin_latest_round(sim_admin *a, uint64_t model_id, sim_round_state *out);
int sim_admin_round(sim_admin *a, uint64_t round_id, sim_round_state *out);

/* The coordinator's Ed25519 public key (GET /admin/v1/info), which signs every model version.
 * FL_E_PARSE when the answer has no 32-byte hex key. */
int sim_admin_public_key(sim_admin *a, uint8_t pub[FL_PUBKEY_LEN]);

#endif
