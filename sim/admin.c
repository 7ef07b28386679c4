/*
 * fl-sim's model specs and plans in the admin API's JSON; the client is tests/support's.
 */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>

#include "fl/err.h"
#include "model_specs.h"

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

int sim_admin_create_model(sim_admin *a, const char *name, const fl_model_spec *spec, uint64_t seed,
                           uint64_t *model_id, uint64_t *version) {
  json_t *j = sim_admin_spec_json(spec);
  int rc = j ? fl_sup_admin_create_model(a, name, j, seed, model_id, version) : FL_E_NOMEM;
  json_decref(j);
  return rc;
}

int sim_admin_create_plan(sim_admin *a, uint64_t model_id, const sim_plan *p, uint64_t *plan_id,
                          uint64_t *round_id) {
  json_t *j = fl_sup_plan_json(p);
  int rc = j ? fl_sup_admin_create_plan(a, model_id, j, plan_id, round_id) : FL_E_NOMEM;
  json_decref(j);
  return rc;
}

int sim_admin_tokens_mixed(sim_admin *a, const sim_mix *m, uint64_t seed, size_t n,
                           char ***tokens) {
  if (m == NULL || m->n == 0)
    return fl_sup_admin_enrollment_tokens(a, n, tokens);
  char **t = calloc(n ? n : 1, sizeof *t);
  int rc = t ? FL_OK : FL_E_NOMEM;
  /* One batch per label (and one without): device k gets a token of its own group. */
  for (int g = -1; rc == FL_OK && g < (int)m->n; g++) {
    size_t want = 0, used = 0;
    for (size_t k = 0; k < n; k++)
      want += sim_mix_label_of(m, seed, k) == g;
    if (want == 0)
      continue;
    json_t *labels = g < 0 ? NULL : json_pack("{s:s}", m->key[g], m->value[g]);
    char **group = NULL;
    rc = g >= 0 && labels == NULL ? FL_E_NOMEM
                                  : fl_sup_admin_enrollment_tokens_labeled(a, want, labels, &group);
    json_decref(labels);
    for (size_t k = 0; rc == FL_OK && k < n; k++)
      if (sim_mix_label_of(m, seed, k) == g) {
        t[k] = group[used];
        group[used++] = NULL;
      }
    if (rc == FL_OK)
      fl_sup_admin_free_tokens(group, want);
  }
  if (rc != FL_OK) {
    fl_sup_admin_free_tokens(t, n);
    return rc;
  }
  *tokens = t;
  return FL_OK;
}

int sim_plan_cohort_eval(json_t *plan, const char *cohort, double share, uint32_t count,
                         const char *by) {
  if (cohort != NULL) {
    json_t *c = json_loads(cohort, 0, NULL);
    if (c == NULL || json_object_set_new(plan, "cohort", c))
      return FL_E_INVAL;
  }
  if (share <= 0 && count == 0)
    return FL_OK;
  json_t *e = count > 0 ? json_pack("{s:I}", "count", (json_int_t)count)
                        : json_pack("{s:f}", "share", share);
  if (e != NULL && by != NULL && json_object_set_new(e, "by_label", json_string(by))) {
    json_decref(e);
    e = NULL;
  }
  return e != NULL && json_object_set_new(plan, "evaluation", e) == 0 ? FL_OK : FL_E_NOMEM;
}

int sim_admin_latest_evaluation(sim_admin *a, uint64_t model_id, uint64_t *version,
                                json_t **result) {
  char path[96];
  json_t *ans = NULL;
  snprintf(path, sizeof path, "/admin/v1/models/%llu/versions", (unsigned long long)model_id);
  int rc = fl_sup_admin_call(a, "GET", path, NULL, &ans);
  json_t *vs = rc == FL_OK ? json_object_get(ans, "versions") : NULL;
  *result = NULL;
  for (size_t i = json_array_size(vs); rc == FL_OK && i-- > 0 && *result == NULL;) {
    json_t *v = json_array_get(vs, i), *ev = json_object_get(v, "evaluation");
    for (size_t k = 0; k < json_array_size(ev) && *result == NULL; k++) {
      json_t *res = json_object_get(json_array_get(ev, k), "result");
      if (json_integer_value(json_object_get(res, "reports")) > 0) {
        *result = json_incref(res);
        *version = (uint64_t)json_integer_value(json_object_get(v, "version"));
      }
    }
  }
  json_decref(ans);
  return rc != FL_OK ? rc : *result != NULL ? FL_OK : FL_E_NOTFOUND;
}

int sim_admin_next_plan_round(sim_admin *a, uint64_t model_id, uint64_t plan_id, uint64_t after,
                              uint64_t *round_id) {
  char path[96];
  json_t *ans = NULL;
  snprintf(path, sizeof path, "/admin/v1/rounds?model_id=%llu", (unsigned long long)model_id);
  int rc = fl_sup_admin_call(a, "GET", path, NULL, &ans);
  json_t *rs = rc == FL_OK ? json_object_get(ans, "rounds") : NULL;
  uint64_t best = 0;
  for (size_t i = 0; i < json_array_size(rs); i++) {
    json_t *r = json_array_get(rs, i);
    uint64_t id = (uint64_t)json_integer_value(json_object_get(r, "round_id"));
    if ((uint64_t)json_integer_value(json_object_get(r, "plan_id")) == plan_id && id > after &&
        (best == 0 || id < best))
      best = id;
  }
  json_decref(ans);
  *round_id = best;
  return rc != FL_OK ? rc : best != 0 ? FL_OK : FL_E_NOTFOUND;
}
