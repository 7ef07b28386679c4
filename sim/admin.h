/*
 * The coordinator's admin API (docs/ADMIN-API-CONTRACT.md) as fl-sim uses it: tests/support's
 * client (flsupport/admin.h) under fl-sim's names, plus the model spec in the API's JSON.
 * JSON over HTTP with a bearer token, blocking, on the calling thread.
 */
#ifndef SIM_ADMIN_H
#define SIM_ADMIN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "flsupport/admin.h"
#include "mix.h"
#include "model.h"

typedef fl_sup_admin sim_admin;
/* participants, min_participants, over_selection, deadline_s, local_epochs, batch_size,
 * learning_rate, momentum, weight_decay, prox_mu, clip_norm, encoding, server_optimizer,
 * server_lr, rounds */
typedef fl_sup_plan sim_plan;
/* round_id, base_version, result_version, state, accepted, target, metrics (borrowed until
 * the next round call) */
typedef fl_sup_round_state sim_round_state;

static inline int sim_admin_new(sim_admin **out, const char *base_url, const char *token) {
  return fl_sup_admin_new(out, base_url, token);
}
static inline void sim_admin_free(sim_admin *a) {
  fl_sup_admin_free(a);
}
/* Why the last call failed: HTTP status and the server's error reason/message, or curl's. */
static inline const char *sim_admin_errmsg(const sim_admin *a) {
  return fl_sup_admin_errmsg(a);
}
/* body may be NULL (GET); *out receives the parsed answer. FL_E_TRANSPORT, FL_E_REFUSED
 * (HTTP >= 400), FL_E_PARSE. */
static inline int sim_admin_call(sim_admin *a, const char *method, const char *path, json_t *body,
                                 json_t **out) {
  return fl_sup_admin_call(a, method, path, body, out);
}
/* A GET whose answer is not JSON (/metrics): *body is borrowed until the next call. */
static inline int sim_admin_get_text(sim_admin *a, const char *path, const char **body) {
  return fl_sup_admin_get_text(a, path, body);
}
static inline int sim_admin_probe(sim_admin *a, const char *path) {
  return fl_sup_admin_probe(a, path);
}
/* n one-time enrollment tokens; free with sim_admin_free_tokens. */
static inline int sim_admin_enrollment_tokens(sim_admin *a, size_t n, char ***tokens) {
  return fl_sup_admin_enrollment_tokens(a, n, tokens);
}
static inline void sim_admin_free_tokens(char **tokens, size_t n) {
  fl_sup_admin_free_tokens(tokens, n);
}
/* The newest round of the model (largest round_id), FL_E_NOTFOUND when none. */
static inline int sim_admin_latest_round(sim_admin *a, uint64_t model_id, sim_round_state *out) {
  return fl_sup_admin_latest_round(a, model_id, out);
}
static inline int sim_admin_next_round(sim_admin *a, uint64_t model_id, uint64_t after,
                                       sim_round_state *out) {
  return fl_sup_admin_next_round(a, model_id, after, out);
}
static inline int sim_admin_round(sim_admin *a, uint64_t round_id, sim_round_state *out) {
  return fl_sup_admin_round(a, round_id, out);
}
/* The coordinator's Ed25519 public key (GET /admin/v1/info), which signs every version. */
static inline int sim_admin_public_key(sim_admin *a, uint8_t pub[FL_PUBKEY_LEN]) {
  return fl_sup_admin_public_key(a, pub);
}

/* The spec as the admin API spells it. */
json_t *sim_admin_spec_json(const fl_model_spec *s);
int sim_admin_create_model(sim_admin *a, const char *name, const fl_model_spec *spec, uint64_t seed,
                           uint64_t *model_id, uint64_t *version);
int sim_admin_create_plan(sim_admin *a, uint64_t model_id, const sim_plan *p, uint64_t *plan_id,
                          uint64_t *round_id);

/* n enrollment tokens, token k carrying device k's label of the mix (mix.h; none for devices
 * without one). Free with sim_admin_free_tokens. */
int sim_admin_tokens_mixed(sim_admin *a, const sim_mix *m, uint64_t seed, size_t n, char ***tokens);
/* Adds the plan's "cohort" (JSON text, NULL: none) and "evaluation" policy ({"share": s} or
 * {"count": n}, with "by_label"; none when both are 0). FL_E_INVAL for a cohort that is no
 * JSON. */
int sim_plan_cohort_eval(json_t *plan, const char *cohort, double share, uint32_t count,
                         const char *by);
/* The federated evaluation result of the newest version that has reports (docs/API.md); its
 * number in *version. FL_E_NOTFOUND when no version has any. */
int sim_admin_latest_evaluation(sim_admin *a, uint64_t model_id, uint64_t *version,
                                json_t **result);
/* The smallest round id above `after` of plan plan_id (the model may have a drift retraining
 * plan beside it, docs/DRIFT.md 4). FL_E_NOTFOUND when none yet. */
int sim_admin_next_plan_round(sim_admin *a, uint64_t model_id, uint64_t plan_id, uint64_t after,
                              uint64_t *round_id);

#endif
