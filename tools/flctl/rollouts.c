/*
 * flctl channels, rollouts, pins and fleet: which version each device runs (docs/API.md,
 * section 5).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "flctl.h"

static const flctl_col CHANNEL_COLS[] = {{"channel_id", "CHANNEL", 0},
                                         {"model_id", "MODEL", 0},
                                         {"name", "NAME", 0},
                                         {"version", "VERSION", 0},
                                         {"previous_version", "PREVIOUS", 0},
                                         {"rollout_id", "ROLLOUT", 0},
                                         {"updated_at", "UPDATED", 0},
                                         {NULL, NULL, 0}};

static const flctl_col ROLLOUT_COLS[] = {{"rollout_id", "ROLLOUT", 0},
                                         {"model_id", "MODEL", 0},
                                         {"channel", "CHANNEL", 0},
                                         {"version", "VERSION", 0},
                                         {"from_version", "FROM", 0},
                                         {"percent", "PERCENT", 0},
                                         {"cohort", "COHORT", 30},
                                         {"state", "STATE", 0},
                                         {"gate_state", "GATE", 0},
                                         {"reason", "REASON", 60},
                                         {NULL, NULL, 0}};

static const flctl_col PIN_COLS[] = {
    {"pin_id", "PIN", 0},     {"model_id", "MODEL", 0},  {"device_id", "DEVICE", 0},
    {"labels", "LABELS", 40}, {"version", "VERSION", 0}, {"created_at", "CREATED", 0},
    {NULL, NULL, 0}};

/* The channel's version next to what its devices run: "92% of stable runs v14 (channel: v14)". */
static const flctl_col FLEET_COLS[] = {{"channel", "CHANNEL", 0}, {"version", "VERSION", 0},
                                       {"running", "RUNNING", 0}, {"devices", "DEVICES", 0},
                                       {"percent", "SHARE", 0},   {NULL, NULL, 0}};

int flctl_cmd_channels(const flctl *f, const flctl_args *a) {
  char path[96];
  long long model, version, id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return flctl_filtered_list(f, a, "/admin/v1/channels", "channels", CHANNEL_COLS);
  if (strcmp(sub, "set") == 0 && a->npos == 4) {
    if (flctl_id_at(a, 1, "MODEL_ID", &model) || flctl_id_at(a, 3, "VERSION", &version))
      return FLCTL_USAGE;
    return flctl_show_call(f, "POST", "/admin/v1/channels",
                           json_pack("{s:I, s:s, s:I}", "model_id", (json_int_t)model, "name",
                                     a->pos[2], "version", (json_int_t)version));
  }
  if (strcmp(sub, "rollback") != 0 || a->npos != 2)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "CHANNEL_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/channels/%lld/rollback", id);
  return flctl_show_call(f, "POST", path, NULL);
}

/* The body of POST /admin/v1/rollouts; NULL after a message when an argument is bad. */
static json_t *rollout_body(const flctl_args *a) {
  long long model, version;
  double pct = 0;
  const char *p = flctl_flag(a, "percent"), *cohort = flctl_flag(a, "cohort"),
             *gate = flctl_flag(a, "gate");
  if (flctl_id_at(a, 1, "MODEL_ID", &model) || flctl_id_at(a, 2, "VERSION", &version) ||
      (p != NULL && flctl_percent("--percent", p, &pct)))
    return NULL;
  json_t *c = cohort ? flctl_labels("--cohort", cohort) : NULL;
  json_t *g = gate ? flctl_json_arg("--gate", gate) : NULL;
  if ((cohort && c == NULL) || (gate && g == NULL)) {
    json_decref(c);
    json_decref(g);
    return NULL;
  }
  json_t *body =
      json_pack("{s:I, s:I, s:s}", "model_id", (json_int_t)model, "version", (json_int_t)version,
                "channel", flctl_flag(a, "channel") ? flctl_flag(a, "channel") : "stable");
  if (p != NULL)
    json_object_set_new(body, "percent", json_real(pct));
  if (c != NULL)
    json_object_set_new(body, "cohort", c);
  if (g != NULL)
    json_object_set_new(body, "gate", g);
  return body;
}

int flctl_cmd_rollouts(const flctl *f, const flctl_args *a) {
  static const char *const ops[] = {"pause", "resume", "promote", "rollback", NULL};
  char path[96];
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  long long id;
  double pct;
  if (strcmp(sub, "list") == 0)
    return flctl_filtered_list(f, a, "/admin/v1/rollouts", "rollouts", ROLLOUT_COLS);
  if (strcmp(sub, "create") == 0 && a->npos == 3) {
    json_t *body = rollout_body(a);
    return body ? flctl_show_call(f, "POST", "/admin/v1/rollouts", body) : FLCTL_USAGE;
  }
  if (strcmp(sub, "raise") == 0 && a->npos == 3) {
    if (flctl_id_at(a, 1, "ROLLOUT_ID", &id) || flctl_percent("PERCENT", a->pos[2], &pct))
      return FLCTL_USAGE;
    snprintf(path, sizeof path, "/admin/v1/rollouts/%lld/raise", id);
    return flctl_show_call(f, "POST", path, json_pack("{s:f}", "percent", pct));
  }
  bool known = strcmp(sub, "get") == 0;
  for (int i = 0; ops[i] != NULL; i++)
    known = known || strcmp(sub, ops[i]) == 0;
  if (!known || a->npos != 2)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "ROLLOUT_ID", &id))
    return FLCTL_USAGE;
  if (strcmp(sub, "get") == 0) {
    snprintf(path, sizeof path, "/admin/v1/rollouts/%lld", id);
    return flctl_show_call(f, "GET", path, NULL);
  }
  snprintf(path, sizeof path, "/admin/v1/rollouts/%lld/%s", id, sub);
  return flctl_show_call(f, "POST", path, NULL);
}

int flctl_cmd_pins(const flctl *f, const flctl_args *a) {
  char path[96];
  long long model, version, id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0 && a->npos <= 1)
    return flctl_show_list(f, "/admin/v1/pins", "pins", PIN_COLS);
  if (strcmp(sub, "remove") == 0 && a->npos == 2) {
    if (flctl_id_at(a, 1, "PIN_ID", &id))
      return FLCTL_USAGE;
    snprintf(path, sizeof path, "/admin/v1/pins/%lld", id);
    return flctl_show_call(f, "DELETE", path, NULL);
  }
  const char *dev = flctl_flag(a, "device"), *labels = flctl_flag(a, "labels");
  if (strcmp(sub, "add") != 0 || a->npos != 3 || (dev == NULL) == (labels == NULL))
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "MODEL_ID", &model) || flctl_id_at(a, 2, "VERSION", &version) ||
      (dev && flctl_int("--device", dev, 1, INT64_MAX, &id)))
    return FLCTL_USAGE;
  json_t *sel = dev ? json_integer((json_int_t)id) : flctl_labels("--labels", labels);
  if (sel == NULL)
    return FLCTL_USAGE;
  json_t *body =
      json_pack("{s:I, s:I}", "model_id", (json_int_t)model, "version", (json_int_t)version);
  json_object_set_new(body, dev ? "device_id" : "labels", sel);
  return flctl_show_call(f, "POST", "/admin/v1/pins", body);
}

/* One row per (channel, running version), each with the channel's version; a channel that no
 * active device follows still gets a row, so that every channel's version is shown. */
static json_t *fleet_rows(const json_t *channels) {
  json_t *rows = json_array(), *ch, *run;
  size_t i, k;
  json_array_foreach((json_t *)channels, i, ch) {
    const json_t *runs = json_object_get(ch, "running");
    for (k = 0; k == 0 || k < json_array_size(runs); k++) {
      char pct[32] = "-";
      json_t *row = json_object();
      run = json_array_get(runs, k);
      json_object_set(row, "channel", json_object_get(ch, "channel"));
      json_object_set(row, "version", json_object_get(ch, "version"));
      if (run != NULL) {
        json_int_t v = json_integer_value(json_object_get(run, "version"));
        snprintf(pct, sizeof pct, "%.1f%%",
                 100.0 * json_number_value(json_object_get(run, "fraction")));
        json_object_set_new(row, "running", v == 0 ? json_string("none") : json_integer(v));
        json_object_set(row, "devices", json_object_get(run, "devices"));
      } else {
        json_object_set_new(row, "devices", json_integer(0));
      }
      json_object_set_new(row, "percent", json_string(pct));
      json_array_append_new(rows, row);
    }
  }
  return rows;
}

int flctl_cmd_fleet(const flctl *f, const flctl_args *a) {
  char path[96];
  long long model;
  if (a->npos != 1)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 0, "MODEL_ID", &model))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/fleet?model_id=%lld", model);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  json_t *rows = fleet_rows(json_object_get(j, "channels"));
  flctl_table(f, j, rows, FLEET_COLS);
  json_decref(rows);
  json_decref(j);
  return FLCTL_OK;
}
