/*
 * fl-sim's model specs and plans in the admin API's JSON; the client is tests/support's.
 */
#include "admin.h"

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
