/*
 * Admin API client on libcurl and jansson; see flsupport/admin.h.
 */
#include "flsupport/admin.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "flsupport/http.h"
#include "flsupport/proc.h"

struct fl_sup_admin {
  CURL *curl;
  char base[256];
  char auth[512];
  char ca[320];
  char err[512];
  json_t *last_round; /* keeps fl_sup_round_state.metrics alive */
  fl_sup_resp resp;   /* the last answer */
};

int fl_sup_admin_new(fl_sup_admin **out, const char *base_url, const char *token) {
  fl_sup_admin *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return FL_E_NOMEM;
  a->curl = curl_easy_init();
  if (a->curl == NULL || strlen(base_url) >= sizeof(a->base) ||
      strlen(token) + 32 >= sizeof(a->auth)) {
    fl_sup_admin_free(a);
    return FL_E_INVAL;
  }
  snprintf(a->base, sizeof(a->base), "%s", base_url);
  size_t bl = strlen(a->base);
  if (bl > 0 && a->base[bl - 1] == '/')
    a->base[bl - 1] = '\0';
  snprintf(a->auth, sizeof(a->auth), "Authorization: Bearer %s", token);
  *out = a;
  return FL_OK;
}

void fl_sup_admin_free(fl_sup_admin *a) {
  if (a == NULL)
    return;
  if (a->curl)
    curl_easy_cleanup(a->curl);
  json_decref(a->last_round);
  fl_sup_resp_free(&a->resp);
  free(a);
}

int fl_sup_admin_set_ca(fl_sup_admin *a, const char *ca_file) {
  if (ca_file != NULL && strlen(ca_file) >= sizeof(a->ca))
    return FL_E_INVAL;
  snprintf(a->ca, sizeof(a->ca), "%s", ca_file ? ca_file : "");
  return FL_OK;
}

const char *fl_sup_admin_errmsg(const fl_sup_admin *a) {
  return a->err;
}

/* One exchange; the answer lands in a->resp. */
static int perform(fl_sup_admin *a, const char *method, const char *path, const char *body) {
  char url[1024];
  snprintf(url, sizeof(url), "%s%s", a->base, path);
  struct curl_slist *h = curl_slist_append(NULL, a->auth);
  h = curl_slist_append(h, "Content-Type: application/json");
  fl_sup_http_opts o = {.headers = h,
                        .body = body,
                        .len = body ? strlen(body) : 0,
                        .ca_file = a->ca[0] ? a->ca : NULL};
  fl_sup_resp_free(&a->resp);
  int rc = fl_sup_http(a->curl, method, url, &o, &a->resp, a->err, sizeof(a->err));
  curl_slist_free_all(h);
  return rc;
}

int fl_sup_admin_request(fl_sup_admin *a, const char *method, const char *path, const char *body,
                         long *status, json_t **out) {
  *out = NULL;
  *status = -1;
  int rc = perform(a, method, path, body);
  if (rc != FL_OK)
    return rc;
  *status = a->resp.status;
  if (a->resp.len > 0)
    *out = json_loadb((const char *)a->resp.data, a->resp.len, 0, NULL);
  return FL_OK;
}

int fl_sup_admin_call_text(fl_sup_admin *a, const char *method, const char *path, const char *body,
                           json_t **out) {
  long status;
  json_t *j;
  int rc = fl_sup_admin_request(a, method, path, body, &status, &j);
  if (rc != FL_OK)
    return rc;
  const char *text = a->resp.data ? (const char *)a->resp.data : "";
  if (status >= 400) {
    const char *reason = json_string_value(json_object_get(j, "error"));
    const char *msg = json_string_value(json_object_get(j, "message"));
    snprintf(a->err, sizeof(a->err), "%s %s: HTTP %ld %s: %s", method, path, status,
             reason ? reason : "", msg ? msg : text);
    json_decref(j);
    return FL_E_REFUSED;
  }
  if (j == NULL) {
    snprintf(a->err, sizeof(a->err), "%s %s: answer is not JSON: %.200s", method, path, text);
    return FL_E_PARSE;
  }
  *out = j;
  return FL_OK;
}

int fl_sup_admin_call(fl_sup_admin *a, const char *method, const char *path, json_t *body,
                      json_t **out) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (body != NULL && text == NULL)
    return FL_E_NOMEM;
  int rc = fl_sup_admin_call_text(a, method, path, text, out);
  free(text);
  return rc;
}

int fl_sup_admin_probe(fl_sup_admin *a, const char *path) {
  int rc = perform(a, "GET", path, NULL);
  return rc != FL_OK ? rc : a->resp.status == 200 ? FL_OK : FL_E_RETRY_LATER;
}

int fl_sup_admin_get_text(fl_sup_admin *a, const char *path, const char **body) {
  int rc = perform(a, "GET", path, NULL);
  if (rc != FL_OK)
    return rc;
  if (a->resp.status != 200) {
    snprintf(a->err, sizeof(a->err), "GET %s: HTTP %ld", path, a->resp.status);
    return FL_E_REFUSED;
  }
  *body = a->resp.data ? (const char *)a->resp.data : "";
  return FL_OK;
}

void fl_sup_admin_free_tokens(char **tokens, size_t n) {
  for (size_t i = 0; tokens && i < n; i++)
    free(tokens[i]);
  free(tokens);
}

#define TOKEN_BATCH 500

/* One batch of `ask` tokens (with labels, NULL: none) appended at t + *got. */
static int token_batch(fl_sup_admin *a, size_t ask, const json_t *labels, char **t, size_t *got) {
  json_t *body = json_pack("{s:I, s:I}", "count", (json_int_t)ask, "ttl_s", (json_int_t)86400);
  if (body != NULL && labels != NULL &&
      json_object_set_new(body, "labels", json_deep_copy(labels))) {
    json_decref(body);
    body = NULL;
  }
  json_t *ans = NULL;
  int rc =
      body ? fl_sup_admin_call(a, "POST", "/admin/v1/enrollment-tokens", body, &ans) : FL_E_NOMEM;
  json_decref(body);
  json_t *arr = rc == FL_OK ? json_object_get(ans, "tokens") : NULL;
  if (rc == FL_OK && (!json_is_array(arr) || json_array_size(arr) != ask)) {
    snprintf(a->err, sizeof(a->err), "POST /admin/v1/enrollment-tokens: not %zu tokens", ask);
    rc = FL_E_PARSE;
  }
  for (size_t i = 0; rc == FL_OK && i < ask; i++) {
    const char *s = json_string_value(json_array_get(arr, i));
    t[*got] = s ? strdup(s) : NULL;
    rc = t[*got] ? FL_OK : FL_E_PARSE;
    *got += rc == FL_OK;
  }
  json_decref(ans);
  return rc;
}

int fl_sup_admin_enrollment_tokens(fl_sup_admin *a, size_t n, char ***tokens) {
  return fl_sup_admin_enrollment_tokens_labeled(a, n, NULL, tokens);
}

int fl_sup_admin_enrollment_tokens_labeled(fl_sup_admin *a, size_t n, const json_t *labels,
                                           char ***tokens) {
  char **t = calloc(n ? n : 1, sizeof(*t));
  if (t == NULL)
    return FL_E_NOMEM;
  size_t got = 0;
  while (got < n) {
    int rc = token_batch(a, n - got < TOKEN_BATCH ? n - got : TOKEN_BATCH, labels, t, &got);
    if (rc != FL_OK) {
      fl_sup_admin_free_tokens(t, got);
      return rc;
    }
  }
  *tokens = t;
  return FL_OK;
}

static int get_u64(json_t *o, const char *key, uint64_t *out) {
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return FL_E_PARSE;
  if (out != NULL)
    *out = (uint64_t)json_integer_value(v);
  return FL_OK;
}

/* POST path with body; the two ids of the answer. */
static int create(fl_sup_admin *a, const char *path, json_t *body, const char *k1, uint64_t *v1,
                  const char *k2, uint64_t *v2) {
  json_t *ans = NULL;
  int rc = body ? fl_sup_admin_call(a, "POST", path, body, &ans) : FL_E_INVAL;
  if (rc == FL_OK && (get_u64(ans, k1, v1) != FL_OK || get_u64(ans, k2, v2) != FL_OK)) {
    snprintf(a->err, sizeof(a->err), "POST %s: no %s and %s in the answer", path, k1, k2);
    rc = FL_E_PARSE;
  }
  json_decref(ans);
  return rc;
}

int fl_sup_admin_create_model(fl_sup_admin *a, const char *name, json_t *spec, uint64_t seed,
                              uint64_t *model_id, uint64_t *version) {
  json_t *body =
      spec ? json_pack("{s:s, s:O, s:I}", "name", name, "spec", spec, "seed", (json_int_t)seed)
           : NULL;
  int rc = create(a, "/admin/v1/models", body, "model_id", model_id, "version", version);
  json_decref(body);
  return rc;
}

json_t *fl_sup_plan_json(const fl_sup_plan *p) {
  return json_pack(
      "{s:I, s:I, s:f, s:f, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:s, s:f, s:s, s:f, "
      "s:I}",
      "participants", (json_int_t)p->participants, "min_participants",
      (json_int_t)p->min_participants, "over_selection", p->over_selection, "deadline_s",
      p->deadline_s, "local_epochs", (json_int_t)p->local_epochs, "batch_size",
      (json_int_t)p->batch_size, "learning_rate", p->learning_rate, "momentum", p->momentum,
      "weight_decay", p->weight_decay, "prox_mu", p->prox_mu, "clip_norm", p->clip_norm,
      "noise_multiplier", 0.0, "local_noise_stddev", 0.0, "encoding", p->encoding, "topk_fraction",
      0.1, "server_optimizer", p->server_optimizer, "server_lr", p->server_lr, "rounds",
      (json_int_t)p->rounds);
}

int fl_sup_admin_create_plan(fl_sup_admin *a, uint64_t model_id, json_t *plan, uint64_t *plan_id,
                             uint64_t *round_id) {
  char path[96];
  snprintf(path, sizeof(path), "/admin/v1/models/%llu/plans", (unsigned long long)model_id);
  return create(a, path, plan, "plan_id", plan_id, "round_id", round_id);
}

/* Fills *out from one round object; keeps `round` alive in a->last_round. */
static int parse_round(fl_sup_admin *a, json_t *round, fl_sup_round_state *out) {
  memset(out, 0, sizeof(*out));
  if (get_u64(round, "round_id", &out->round_id) != FL_OK)
    return FL_E_PARSE;
  get_u64(round, "base_version", &out->base_version);
  get_u64(round, "result_version", &out->result_version); /* null while open */
  uint64_t v = 0;
  if (get_u64(round, "accepted", &v) == FL_OK)
    out->accepted = (uint32_t)v;
  if (get_u64(round, "target", &v) == FL_OK)
    out->target = (uint32_t)v;
  const char *st = json_string_value(json_object_get(round, "state"));
  snprintf(out->state, sizeof(out->state), "%s", st ? st : "");
  json_incref(round);
  json_decref(a->last_round);
  a->last_round = round;
  out->metrics = json_object_get(round, "metrics");
  return FL_OK;
}

/* GET of a path made of fmt and one id. */
static int get_by_id(fl_sup_admin *a, const char *fmt, uint64_t id, json_t **ans) {
  char path[96];
  snprintf(path, sizeof(path), fmt, (unsigned long long)id);
  *ans = NULL;
  return fl_sup_admin_call(a, "GET", path, NULL, ans);
}

int fl_sup_admin_round(fl_sup_admin *a, uint64_t round_id, fl_sup_round_state *out) {
  json_t *ans;
  int rc = get_by_id(a, "/admin/v1/rounds/%llu", round_id, &ans);
  if (rc == FL_OK) {
    json_t *r = json_object_get(ans, "round");
    rc = parse_round(a, json_is_object(r) ? r : ans, out);
  }
  json_decref(ans);
  return rc;
}

/* The model's round with the largest id (latest) or the smallest id above after. */
static int pick_round(fl_sup_admin *a, uint64_t model_id, bool latest, uint64_t after,
                      fl_sup_round_state *out) {
  json_t *ans;
  int rc = get_by_id(a, "/admin/v1/rounds?model_id=%llu", model_id, &ans);
  if (rc != FL_OK)
    return rc;
  json_t *rounds = json_object_get(ans, "rounds"), *best = NULL;
  uint64_t best_id = 0;
  for (size_t i = 0; i < json_array_size(rounds); i++) {
    uint64_t id = 0;
    json_t *r = json_array_get(rounds, i);
    if (get_u64(r, "round_id", &id) != FL_OK)
      continue;
    if (latest ? id > best_id : id > after && (best == NULL || id < best_id)) {
      best_id = id;
      best = r;
    }
  }
  rc = best ? parse_round(a, best, out) : FL_E_NOTFOUND;
  json_decref(ans);
  return rc;
}

int fl_sup_admin_latest_round(fl_sup_admin *a, uint64_t model_id, fl_sup_round_state *out) {
  return pick_round(a, model_id, true, 0, out);
}

int fl_sup_admin_next_round(fl_sup_admin *a, uint64_t model_id, uint64_t after,
                            fl_sup_round_state *out) {
  return pick_round(a, model_id, false, after, out);
}

int fl_sup_admin_wait_round(fl_sup_admin *a, uint64_t round_id, const char *state, int timeout_ms,
                            json_t **round) {
  char path[64];
  snprintf(path, sizeof(path), "/admin/v1/rounds/%llu", (unsigned long long)round_id);
  double until = fl_sup_mono_s() + timeout_ms / 1000.0;
  do {
    long st;
    json_t *r = NULL;
    fl_sup_admin_request(a, "GET", path, NULL, &st, &r);
    const char *s = json_string_value(json_object_get(r, "state"));
    bool done = st == 200 && s != NULL && (state ? strcmp(s, state) == 0 : strcmp(s, "open") != 0);
    if (done) {
      if (round != NULL)
        *round = r;
      else
        json_decref(r);
      return FL_OK;
    }
    json_decref(r);
    fl_sup_sleep_ms(50);
  } while (fl_sup_mono_s() < until);
  snprintf(a->err, sizeof(a->err), "round %llu did not reach %s in %d ms",
           (unsigned long long)round_id, state ? state : "a closed state", timeout_ms);
  return FL_E_TIMEOUT;
}

int fl_sup_admin_public_key(fl_sup_admin *a, uint8_t pub[FL_PUBKEY_LEN]) {
  json_t *ans = NULL;
  int rc = fl_sup_admin_call(a, "GET", "/admin/v1/info", NULL, &ans);
  if (rc != FL_OK)
    return rc;
  const char *hex = json_string_value(json_object_get(ans, "public_key"));
  rc = hex != NULL ? fl__unhex(hex, pub, FL_PUBKEY_LEN) : FL_E_PARSE;
  if (rc != FL_OK)
    snprintf(a->err, sizeof(a->err), "GET /admin/v1/info: no 32-byte hex public_key");
  json_decref(ans);
  return rc;
}
