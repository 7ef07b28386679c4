/*
 * A plan's drift settings: parsing with defaults and bounds, and their complete JSON form.
 */
#include "drift/policy.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct field {
  const char *name;
  double lo, hi, def;
  bool integer;
} field;

static const field DRIFT[] = {
    {"psi_threshold", 0.001, 100, 0.25, false}, {"mean_shift_threshold", 0.01, 1000, 1.0, false},
    {"min_devices", 1, 1e6, 5, true},           {"min_samples", 1, 1e12, 200, true},
    {"window_s", 1, 30 * 86400.0, 3600, false},
};
static const field RETRAIN[] = {
    {"cooldown_s", 0, 365 * 86400.0, 3600, false},
    {"max_concurrent", 1, 1000, 1, true},
    {"rounds", 1, 100000, 3, true},
};

/* Numbers of object o by table t into v (defaults first); -1 with msg. */
static int numbers(const json_t *o, const char *what, const field *t, size_t n, double *v,
                   const char *const *extra, char msg[160]) {
  const char *key;
  json_t *val;
  for (size_t i = 0; i < n; i++)
    v[i] = t[i].def;
  json_object_foreach((json_t *)o, key, val) {
    size_t i = 0;
    while (i < n && strcmp(key, t[i].name) != 0)
      i++;
    if (i == n) {
      bool known = false;
      for (const char *const *e = extra; *e != NULL; e++)
        known |= strcmp(key, *e) == 0;
      if (known)
        continue;
      snprintf(msg, 160, "%s: unknown field %.60s", what, key);
      return -1;
    }
    double d = json_number_value(val);
    if (!json_is_number(val) || !isfinite(d) || d < t[i].lo || d > t[i].hi ||
        (t[i].integer && d != floor(d))) {
      snprintf(msg, 160, "%s.%s must be a number in [%g, %g]", what, t[i].name, t[i].lo, t[i].hi);
      return -1;
    }
    v[i] = d;
  }
  return 0;
}

static int parse_drift(fl_drift_policy *p, const json_t *d, char msg[160]) {
  static const char *const extra[] = {"cohort_label", NULL};
  double v[5];
  if (!json_is_object(d)) {
    snprintf(msg, 160, "drift must be an object");
    return -1;
  }
  if (numbers(d, "drift", DRIFT, 5, v, extra, msg))
    return -1;
  const json_t *l = json_object_get(d, "cohort_label");
  const char *ls = json_string_value(l);
  if (ls == NULL || ls[0] == '\0' || strlen(ls) >= sizeof p->label) {
    snprintf(msg, 160, "drift.cohort_label must be a label name of 1 to %zu bytes",
             sizeof p->label - 1);
    return -1;
  }
  p->on = true;
  snprintf(p->label, sizeof p->label, "%s", ls);
  p->psi_threshold = v[0];
  p->shift_threshold = v[1];
  p->min_devices = (uint32_t)v[2];
  p->min_samples = (uint64_t)v[3];
  p->window_s = v[4];
  return 0;
}

static int parse_retrain(fl_drift_policy *p, const json_t *r, char msg[160]) {
  static const char *const extra[] = {"on_drift", NULL};
  double v[3];
  if (!json_is_object(r)) {
    snprintf(msg, 160, "retrain must be an object");
    return -1;
  }
  if (numbers(r, "retrain", RETRAIN, 3, v, extra, msg))
    return -1;
  const json_t *on = json_object_get(r, "on_drift");
  if (on != NULL && !json_is_boolean(on)) {
    snprintf(msg, 160, "retrain.on_drift must be true or false");
    return -1;
  }
  if (on != NULL && json_is_true(on) && !p->on) {
    snprintf(msg, 160, "retrain.on_drift needs a drift object");
    return -1;
  }
  p->retrain = on != NULL && json_is_true(on);
  p->cooldown_s = v[0];
  p->max_concurrent = (uint32_t)v[1];
  p->retrain_rounds = (uint32_t)v[2];
  return 0;
}

int fl__drift_policy_from_json(fl_drift_policy *p, const json_t *j, char msg[160]) {
  memset(p, 0, sizeof *p);
  const json_t *d = json_object_get(j, "drift"), *r = json_object_get(j, "retrain");
  if (d != NULL && parse_drift(p, d, msg))
    return -1;
  if (r != NULL && parse_retrain(p, r, msg))
    return -1;
  if (r == NULL) {
    p->cooldown_s = RETRAIN[0].def;
    p->max_concurrent = (uint32_t)RETRAIN[1].def;
    p->retrain_rounds = (uint32_t)RETRAIN[2].def;
  }
  return 0;
}

int fl__drift_policy_to_json(const fl_drift_policy *p, json_t *j) {
  if (p->on && json_object_set_new(
                   j, "drift",
                   json_pack("{s:s, s:f, s:f, s:I, s:I, s:f}", "cohort_label", p->label,
                             "psi_threshold", p->psi_threshold, "mean_shift_threshold",
                             p->shift_threshold, "min_devices", (json_int_t)p->min_devices,
                             "min_samples", (json_int_t)p->min_samples, "window_s", p->window_s)))
    return -1;
  if (p->on &&
      json_object_set_new(j, "retrain",
                          json_pack("{s:b, s:f, s:I, s:I}", "on_drift", p->retrain, "cooldown_s",
                                    p->cooldown_s, "max_concurrent", (json_int_t)p->max_concurrent,
                                    "rounds", (json_int_t)p->retrain_rounds)))
    return -1;
  return 0;
}
