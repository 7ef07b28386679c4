/* flctl models and versions: the registry's models and each model's lineage of versions. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "flctl.h"

static const flctl_col MODEL_COLS[] = {
    {"model_id", "MODEL", 0},        {"name", "NAME", 30},         {"n_params", "PARAMS", 0},
    {"latest_version", "LATEST", 0}, {"created_at", "CREATED", 0}, {NULL, NULL, 0}};

static const flctl_col VERSION_COLS[] = {
    {"version", "VERSION", 0},    {"parent_version", "PARENT", 0},
    {"round_id", "ROUND", 0},     {"sha256", "SHA256", 16},
    {"epsilon", "EPSILON", 0},    {"metrics", "METRICS", 90},
    {"created_at", "CREATED", 0}, {NULL, NULL, 0}};

int flctl_cmd_models(const flctl *f, const flctl_args *a) {
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  long long seed = 0;
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return flctl_show_list(f, "/admin/v1/models", "models", MODEL_COLS);
  if (strcmp(sub, "create") != 0 || a->npos != 2 || flctl_flag(a, "spec") == NULL)
    return flctl_usage_error(a);
  if (flctl_flag(a, "seed") && flctl_int("--seed", flctl_flag(a, "seed"), 0, INT64_MAX, &seed))
    return FLCTL_USAGE;
  json_t *spec = flctl_json_arg("--spec", flctl_flag(a, "spec"));
  if (spec == NULL)
    return FLCTL_USAGE;
  json_t *body = json_pack("{s:s, s:o}", "name", a->pos[1], "spec", spec);
  if (flctl_flag(a, "seed"))
    json_object_set_new(body, "seed", json_integer((json_int_t)seed));
  return flctl_show_call(f, "POST", "/admin/v1/models", body);
}

int flctl_cmd_versions(const flctl *f, const flctl_args *a) {
  char path[96];
  long long m, v;
  if (a->npos == 3 && strcmp(a->pos[0], "get") == 0)
    return flctl_id_at(a, 1, "MODEL_ID", &m) || flctl_id_at(a, 2, "VERSION", &v)
               ? FLCTL_USAGE
               : flctl_version_show(f, m, v);
  if (a->npos != 2 || strcmp(a->pos[0], "list") != 0)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "MODEL_ID", &m))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/models/%lld/versions", m);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  /* The privacy spent after each version's round (docs/PRIVACY.md) gets a column of its own;
   * "-" for versions of plans without central noise. --json prints the answer as it came. */
  json_t *rows = json_object_get(j, "versions"), *row;
  size_t i;
  json_array_foreach(rows, i, row) {
    json_t *pv = json_object_get(json_object_get(row, "metrics"), "privacy");
    json_t *e = json_object_get(pv, "epsilon");
    if (!f->json && json_is_number(e))
      json_object_set_new(row, "epsilon", json_real(json_number_value(e)));
  }
  flctl_table(f, j, rows, VERSION_COLS);
  json_decref(j);
  return FLCTL_OK;
}
