/*
 * Admin API client on libcurl and jansson.
 */
#include "admin.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "fl/err.h"
#include "model_specs.h"

struct sim_admin {
  CURL *curl;
  char base[256];
  char auth[512];
  char err[512];
  json_t *last_round; /* keeps sim_round_state.metrics alive */
  char *buf;          /* response body */
  size_t len, cap;
};

static size_t on_body(char *p, size_t size, size_t n, void *ctx) {
  sim_admin *a = ctx;
  size_t add = size * n;
  if (a->len + add + 1 > a->cap) {
    size_t cap = (a->len + add + 1) * 2;
    char *b = realloc(a->buf, cap);
    if (b == NULL)
      return 0;
    a->buf = b;
    a->cap = cap;
  }
  memcpy(a->buf + a->len, p, add);
  a->len += add;
  a->buf[a->len] = '\0';
  return add;
}

int sim_admin_new(sim_admin **out, const char *base_url, const char *token) {
  sim_admin *a = calloc(1, sizeof(*a));
  if (a == NULL)
    return FL_E_NOMEM;
  a->curl = curl_easy_init();
  if (a->curl == NULL || strlen(base_url) >= sizeof(a->base) ||
      strlen(token) + 32 >= sizeof(a->auth)) {
    sim_admin_free(a);
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

void sim_admin_free(sim_admin *a) {
  if (a == NULL)
    return;
  if (a->curl)
    curl_easy_cleanup(a->curl);
  json_decref(a->last_round);
  free(a->buf);
  free(a);
}

const char *sim_admin_errmsg(const sim_admin *a) {
  return a->err;
}

/* Performs one exchange; the body lands in a->buf, the status in *status. */
static int perform(sim_admin *a, const char *method, const char *path, const char *body,
                   long *status) {
  char url[1024];
  snprintf(url, sizeof(url), "%s%s", a->base, path);
  struct curl_slist *h = curl_slist_append(NULL, a->auth);
  h = curl_slist_append(h, "Content-Type: application/json");
  CURL *c = a->curl;
  curl_easy_reset(c);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  if (body != NULL)
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  a->len = 0;
  if (a->buf)
    a->buf[0] = '\0';
  CURLcode cc = curl_easy_perform(c);
  curl_slist_free_all(h);
  if (cc != CURLE_OK) {
    snprintf(a->err, sizeof(a->err), "%s %s: %s", method, path, curl_easy_strerror(cc));
    return FL_E_TRANSPORT;
  }
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
  return FL_OK;
}

int sim_admin_call(sim_admin *a, const char *method, const char *path, json_t *body,
                   json_t **out) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  if (body != NULL && text == NULL)
    return FL_E_NOMEM;
  long status = 0;
  int rc = perform(a, method, path, text, &status);
  free(text);
  if (rc != FL_OK)
    return rc;
  json_error_t je;
  json_t *j = json_loadb(a->buf ? a->buf : "", a->len, 0, &je);
  if (status >= 400) {
    const char *reason = j ? json_string_value(json_object_get(j, "error")) : NULL;
    const char *msg = j ? json_string_value(json_object_get(j, "message")) : NULL;
    snprintf(a->err, sizeof(a->err), "%s %s: HTTP %ld %s: %s", method, path, status,
             reason ? reason : "", msg ? msg : (a->buf ? a->buf : ""));
    json_decref(j);
    return FL_E_REFUSED;
  }
  if (j == NULL) {
    snprintf(a->err, sizeof(a->err), "%s %s: answer is not JSON: %s", method, path, je.text);
    return FL_E_PARSE;
  }
  *out = j;
  return FL_OK;
}

int sim_admin_probe(sim_admin *a, const char *path) {
  long status = 0;
  int rc = perform(a, "GET", path, NULL, &status);
  return rc != FL_OK ? rc : status == 200 ? FL_OK : FL_E_RETRY_LATER;
}

void sim_admin_free_tokens(char **tokens, size_t n) {
  for (size_t i = 0; tokens && i < n; i++)
    free(tokens[i]);
  free(tokens);
}

#define TOKEN_BATCH 500

int sim_admin_enrollment_tokens(sim_admin *a, size_t n, char ***tokens) {
  char **t = calloc(n ? n : 1, sizeof(*t));
  if (t == NULL)
    return FL_E_NOMEM;
  size_t got = 0;
  while (got < n) {
    size_t ask = n - got < TOKEN_BATCH ? n - got : TOKEN_BATCH;
    json_t *body = json_pack("{s:I, s:I}", "count", (json_int_t)ask, "ttl_s", (json_int_t)86400);
    json_t *ans = NULL;
    int rc = body ? sim_admin_call(a, "POST", "/admin/v1/enrollment-tokens", body, &ans)
                  : FL_E_NOMEM;
    json_decref(body);
    json_t *arr = rc == FL_OK ? json_object_get(ans, "tokens") : NULL;
    if (rc == FL_OK && (!json_is_array(arr) || json_array_size(arr) != ask))
      rc = FL_E_PARSE;
    for (size_t i = 0; rc == FL_OK && i < ask; i++) {
      const char *s = json_string_value(json_array_get(arr, i));
      t[got] = s ? strdup(s) : NULL;
      rc = t[got] ? FL_OK : FL_E_PARSE;
      got += rc == FL_OK;
    }
    json_decref(ans);
    if (rc != FL_OK) {
      sim_admin_free_tokens(t, got);
      return rc;
    }
  }
  *tokens = t;
  return FL_OK;
}

static json_t *layer_json(const fl_layer_spec *l) {
  json_t *o = json_pack("{s:s}", "type", sim_layer_name(l->type));
  if (o == NULL)
    return NULL;
  if (l->type == FL_LAYER_DENSE)
    json_object_set_new(o, "units", json_integer(l->units));
  if (l->type == FL_LAYER_CONV2D) {
    json_object_set_new(o, "out_channels", json_integer(l->out_channels));
    json_object_set_new(o, "padding", json_integer(l->padding));
  }
  if (l->type == FL_LAYER_CONV2D || l->type == FL_LAYER_MAXPOOL2D) {
    json_object_set_new(o, "kernel", json_integer(l->kernel));
    json_object_set_new(o, "stride", json_integer(l->stride));
  }
  return o;
}

json_t *sim_admin_spec_json(const fl_model_spec *s) {
  json_t *shape = json_array(), *layers = json_array();
  for (uint32_t i = 0; i < s->input_ndim; i++)
    json_array_append_new(shape, json_integer(s->input_shape[i]));
  for (uint32_t i = 0; i < s->n_layers; i++)
    json_array_append_new(layers, layer_json(&s->layers[i]));
  return json_pack("{s:o, s:o, s:s}", "input_shape", shape, "layers", layers, "loss",
                   s->loss == FL_LOSS_MSE ? "mse" : "softmax_ce");
}

static int get_u64(json_t *o, const char *key, uint64_t *out) {
  json_t *v = json_object_get(o, key);
  if (!json_is_integer(v) || json_integer_value(v) < 0)
    return FL_E_PARSE;
  *out = (uint64_t)json_integer_value(v);
  return FL_OK;
}

int sim_admin_create_model(sim_admin *a, const char *name, const fl_model_spec *spec,
                           uint64_t seed, uint64_t *model_id, uint64_t *version) {
  json_t *body = json_pack("{s:s, s:o, s:I}", "name", name, "spec", sim_admin_spec_json(spec),
                           "seed", (json_int_t)seed);
  json_t *ans = NULL;
  int rc = body ? sim_admin_call(a, "POST", "/admin/v1/models", body, &ans) : FL_E_NOMEM;
  json_decref(body);
  if (rc == FL_OK)
    rc = get_u64(ans, "model_id", model_id);
  if (rc == FL_OK)
    rc = get_u64(ans, "version", version);
  json_decref(ans);
  return rc;
}

int sim_admin_create_plan(sim_admin *a, uint64_t model_id, const sim_plan *p, uint64_t *plan_id,
                          uint64_t *round_id) {
  json_t *body = json_pack(
      "{s:I, s:I, s:f, s:f, s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:s, s:f, s:s, s:f, "
      "s:I}",
      "participants", (json_int_t)p->participants, "min_participants",
      (json_int_t)p->min_participants, "over_selection", p->over_selection, "deadline_s",
      p->deadline_s, "local_epochs", (json_int_t)p->local_epochs, "batch_size",
      (json_int_t)p->batch_size, "learning_rate", p->learning_rate, "momentum", p->momentum,
      "weight_decay", p->weight_decay, "prox_mu", p->prox_mu, "clip_norm", p->clip_norm,
      "noise_multiplier", 0.0, "local_noise_stddev", 0.0, "encoding", p->encoding,
      "topk_fraction", 0.1, "server_optimizer", p->server_optimizer, "server_lr", p->server_lr,
      "rounds", (json_int_t)p->rounds);
  char path[96];
  snprintf(path, sizeof(path), "/admin/v1/models/%llu/plans", (unsigned long long)model_id);
  json_t *ans = NULL;
  int rc = body ? sim_admin_call(a, "POST", path, body, &ans) : FL_E_NOMEM;
  json_decref(body);
  if (rc == FL_OK)
    rc = get_u64(ans, "plan_id", plan_id);
  if (rc == FL_OK)
    rc = get_u64(ans, "round_id", round_id);
  json_decref(ans);
  return rc;
}

/* Fills *out from one round object; keeps `round` alive in a->last_round. */
static int parse_round(sim_admin *a, json_t *round, sim_round_state *out) {
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

int sim_admin_round(sim_admin *a, uint64_t round_id, sim_round_state *out) {
  char path[64];
  snprintf(path, sizeof(path), "/admin/v1/rounds/%llu", (unsigned long long)round_id);
  json_t *ans = NULL;
  int rc = sim_admin_call(a, "GET", path, NULL, &ans);
  if (rc == FL_OK) {
    json_t *r = json_object_get(ans, "round");
    rc = parse_round(a, json_is_object(r) ? r : ans, out);
  }
  json_decref(ans);
  return rc;
}

int sim_admin_latest_round(sim_admin *a, uint64_t model_id, sim_round_state *out) {
  char path[80];
  snprintf(path, sizeof(path), "/admin/v1/rounds?model_id=%llu", (unsigned long long)model_id);
  json_t *ans = NULL;
  int rc = sim_admin_call(a, "GET", path, NULL, &ans);
  if (rc != FL_OK)
    return rc;
  json_t *rounds = json_object_get(ans, "rounds"), *best = NULL;
  uint64_t best_id = 0;
  for (size_t i = 0; i < json_array_size(rounds); i++) {
    uint64_t id = 0;
    json_t *r = json_array_get(rounds, i);
    if (get_u64(r, "round_id", &id) == FL_OK && id > best_id) {
      best_id = id;
      best = r;
    }
  }
  rc = best ? parse_round(a, best, out) : FL_E_NOTFOUND;
  json_decref(ans);
  return rc;
}

int sim_admin_public_key(sim_admin *a, uint8_t pub[FL_PUBKEY_LEN]) {
  json_t *ans = NULL;
  int rc = sim_admin_call(a, "GET", "/admin/v1/info", NULL, &ans);
  if (rc != FL_OK)
    return rc;
  const char *hex = json_string_value(json_object_get(ans, "public_key"));
  rc = hex != NULL ? fl__unhex(hex, pub, FL_PUBKEY_LEN) : FL_E_PARSE;
  if (rc != FL_OK)
    snprintf(a->err, sizeof(a->err), "GET /admin/v1/info: no 32-byte hex public_key");
  json_decref(ans);
  return rc;
}

int sim_admin_get_text(sim_admin *a, const char *path, const char **body) {
  long status = 0;
  int rc = perform(a, "GET", path, NULL, &status);
  if (rc != FL_OK)
    return rc;
  if (status != 200) {
    snprintf(a->err, sizeof(a->err), "GET %s: HTTP %ld", path, status);
    return FL_E_REFUSED;
  }
  *body = a->buf ? a->buf : "";
  return FL_OK;
}
