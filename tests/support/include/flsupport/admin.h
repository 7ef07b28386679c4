/*
 * The coordinator's admin API (docs/ADMIN-API-CONTRACT.md) for tests, benches and fl-sim: JSON
 * over HTTP with a bearer token, blocking, on the calling thread, one keep-alive connection per
 * client. Nothing is printed: why a call failed is in fl_sup_admin_errmsg.
 */
#ifndef FLSUPPORT_ADMIN_H
#define FLSUPPORT_ADMIN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"

typedef struct fl_sup_admin fl_sup_admin;

int fl_sup_admin_new(fl_sup_admin **out, const char *base_url, const char *token);
void fl_sup_admin_free(fl_sup_admin *a);
/* https:// base URLs are verified against this certificate (copied). */
int fl_sup_admin_set_ca(fl_sup_admin *a, const char *ca_file);
/* Why the last call failed: HTTP status and the server's error reason/message, or curl's. */
const char *fl_sup_admin_errmsg(const fl_sup_admin *a);

/* One exchange, whatever its status: *status and *out (the parsed answer, NULL when it is no
 * JSON; json_decref it). body: JSON text or NULL. FL_OK, or FL_E_TRANSPORT. */
int fl_sup_admin_request(fl_sup_admin *a, const char *method, const char *path, const char *body,
                         long *status, json_t **out);
/* One call that must succeed: FL_E_REFUSED (HTTP >= 400), FL_E_PARSE (no JSON answer),
 * FL_E_TRANSPORT. body may be NULL. */
int fl_sup_admin_call(fl_sup_admin *a, const char *method, const char *path, json_t *body,
                      json_t **out);
int fl_sup_admin_call_text(fl_sup_admin *a, const char *method, const char *path, const char *body,
                           json_t **out);

/* A GET whose answer is not JSON (/metrics): *body is borrowed until the next call.
 * FL_E_TRANSPORT, FL_E_REFUSED (any status but 200). */
int fl_sup_admin_get_text(fl_sup_admin *a, const char *path, const char **body);
/* GET probe (/readyz): FL_OK when `path` answers 200, FL_E_RETRY_LATER for another status. */
int fl_sup_admin_probe(fl_sup_admin *a, const char *path);

/* n one-time enrollment tokens (asked for in batches); free with fl_sup_admin_free_tokens. */
int fl_sup_admin_enrollment_tokens(fl_sup_admin *a, size_t n, char ***tokens);
/* The same with labels (a JSON object of strings, NULL: none) on every token: the devices that
 * enroll with them carry these labels (rollout and training cohorts). */
int fl_sup_admin_enrollment_tokens_labeled(fl_sup_admin *a, size_t n, const json_t *labels,
                                           char ***tokens);
void fl_sup_admin_free_tokens(char **tokens, size_t n);

/* POST /admin/v1/models with a spec in the admin API's JSON; version may be NULL. */
int fl_sup_admin_create_model(fl_sup_admin *a, const char *name, json_t *spec, uint64_t seed,
                              uint64_t *model_id, uint64_t *version);

typedef struct fl_sup_plan {
  uint32_t participants, min_participants;
  double over_selection, deadline_s;
  uint32_t local_epochs, batch_size;
  double learning_rate, momentum, weight_decay, prox_mu, clip_norm;
  const char *encoding, *server_optimizer;
  double server_lr;
  uint32_t rounds;
} fl_sup_plan;
/* The plan as the admin API spells it (every field). */
json_t *fl_sup_plan_json(const fl_sup_plan *p);
/* POST /admin/v1/models/{id}/plans; plan_id may be NULL. */
int fl_sup_admin_create_plan(fl_sup_admin *a, uint64_t model_id, json_t *plan, uint64_t *plan_id,
                             uint64_t *round_id);

typedef struct fl_sup_round_state {
  uint64_t round_id, base_version, result_version; /* result 0 while open */
  char state[24];
  uint32_t accepted, target;
  json_t *metrics; /* borrowed until the next round call; may be NULL */
} fl_sup_round_state;
int fl_sup_admin_round(fl_sup_admin *a, uint64_t round_id, fl_sup_round_state *out);
/* The newest round of the model (largest round_id), FL_E_NOTFOUND when none. */
int fl_sup_admin_latest_round(fl_sup_admin *a, uint64_t model_id, fl_sup_round_state *out);
/* The model's first round after round `after` (an async plan may close several buffers
 * between two polls), FL_E_NOTFOUND when none yet. */
int fl_sup_admin_next_round(fl_sup_admin *a, uint64_t model_id, uint64_t after,
                            fl_sup_round_state *out);
/* Polls the round until its state is `state` (NULL: any state but "open"), FL_E_TIMEOUT after
 * timeout_ms. *round (may be NULL) receives the round's JSON (json_decref it). */
int fl_sup_admin_wait_round(fl_sup_admin *a, uint64_t round_id, const char *state, int timeout_ms,
                            json_t **round);

/* The coordinator's Ed25519 public key (GET /admin/v1/info), which signs every model version.
 * FL_E_PARSE when the answer has no 32-byte hex key. */
int fl_sup_admin_public_key(fl_sup_admin *a, uint8_t pub[FL_PUBKEY_LEN]);

#endif
