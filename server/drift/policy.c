/*
 * A plan's drift settings: parsing with defaults and bounds, and their complete JSON form.
 */
#include "drift/policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry/rollouts.h"

typedef struct field {
  const char *name;
  double lo, hi, def;
  bool integer;
} field;

static const field DRIFT[] = {
    {"psi_threshold", 0.001, 100, 0.25, false}, {"mean_shift_threshold", 0.01, 1000, 1.0, false},
    {"min_devices", 1, 1e6, 5, true},           {"min_samples", 1, 1e12, 200, true},
    {"window_s", 1, 30 * 86400.0, 3600, false}, {"warmup_rounds", 0, 1e6, 0, true},
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
  double v[6];
  if (!json_is_object(d)) {
    snprintf(msg, 160, "drift must be an object");
    return -1;
  }
  if (numbers(d, "drift", DRIFT, 6, v, extra, msg))
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
  p->warmup_rounds = (uint32_t)v[5];
  return 0;
}

/* The default rollout of a retrained version: a quarter of the cohort, then all of it once a
 * quarter of the cohort's devices (10 reports at least) found its loss no worse than the
 * channel's version's on their hold-out data. */
#define DEFAULT_GATE "{\"metric\":\"loss\",\"max_delta\":0,\"sample_pct\":25}"

static void rollout_defaults(fl_drift_policy *p) {
  p->rollout = true;
  snprintf(p->channel, sizeof p->channel, "stable");
  p->rollout_percent = 25;
  json_t *g = json_loads(DEFAULT_GATE, 0, NULL);
  const char *msg;
  json_t *n = g != NULL ? fl__rollout_gate_normalize(g, &msg) : NULL;
  char *t = n != NULL ? json_dumps(n, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  snprintf(p->gate, sizeof p->gate, "%s", t != NULL ? t : "");
  free(t);
  json_decref(n);
  json_decref(g);
}

/* retrain.rollout: false, or {"channel", "percent", "gate"} (each optional). */
static int parse_rollout(fl_drift_policy *p, const json_t *o, char msg[160]) {
  const char *k;
  json_t *v;
  rollout_defaults(p);
  if (json_is_false(o)) {
    p->rollout = false;
    return 0;
  }
  if (!json_is_object(o)) {
    snprintf(msg, 160, "retrain.rollout must be false or {\"channel\", \"percent\", \"gate\"}");
    return -1;
  }
  json_object_foreach((json_t *)o, k, v) {
    if (strcmp(k, "channel") == 0) {
      const char *c = json_string_value(v);
      if (c == NULL || c[0] == '\0' || strlen(c) >= sizeof p->channel) {
        snprintf(msg, 160, "retrain.rollout.channel must be a channel name of 1 to 63 bytes");
        return -1;
      }
      snprintf(p->channel, sizeof p->channel, "%s", c);
    } else if (strcmp(k, "percent") == 0) {
      double d = json_number_value(v);
      if (!json_is_number(v) || !(d > 0 && d <= 100)) {
        snprintf(msg, 160, "retrain.rollout.percent must be a number in (0, 100]");
        return -1;
      }
      p->rollout_percent = d;
    } else if (strcmp(k, "gate") == 0) {
      const char *why;
      json_t *n = fl__rollout_gate_normalize(v, &why);
      char *t = n != NULL ? json_dumps(n, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
      bool fits = t != NULL && strlen(t) < sizeof p->gate;
      if (fits)
        snprintf(p->gate, sizeof p->gate, "%s", t);
      free(t);
      json_decref(n);
      if (!fits) {
        snprintf(msg, 160, "retrain.rollout.%.140s", n == NULL ? why : "gate is too long");
        return -1;
      }
    } else {
      snprintf(msg, 160, "retrain.rollout: unknown field %.60s", k);
      return -1;
    }
  }
  return 0;
}

static int parse_retrain(fl_drift_policy *p, const json_t *r, char msg[160]) {
  static const char *const extra[] = {"on_drift", "rollout", NULL};
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
  const json_t *ro = json_object_get(r, "rollout");
  if (ro != NULL ? parse_rollout(p, ro, msg) : (rollout_defaults(p), 0))
    return -1;
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
    rollout_defaults(p);
    p->cooldown_s = RETRAIN[0].def;
    p->max_concurrent = (uint32_t)RETRAIN[1].def;
    p->retrain_rounds = (uint32_t)RETRAIN[2].def;
  }
  return 0;
}

int fl__drift_policy_to_json(const fl_drift_policy *p, json_t *j) {
  if (p->on &&
      json_object_set_new(j, "drift",
                          json_pack("{s:s, s:f, s:f, s:I, s:I, s:f, s:I}", "cohort_label", p->label,
                                    "psi_threshold", p->psi_threshold, "mean_shift_threshold",
                                    p->shift_threshold, "min_devices", (json_int_t)p->min_devices,
                                    "min_samples", (json_int_t)p->min_samples, "window_s",
                                    p->window_s, "warmup_rounds", (json_int_t)p->warmup_rounds)))
    return -1;
  if (!p->on)
    return 0;
  json_t *ro = p->rollout ? json_pack("{s:s, s:f, s:o}", "channel", p->channel, "percent",
                                      p->rollout_percent, "gate", json_loads(p->gate, 0, NULL))
                          : json_false();
  if (ro == NULL)
    return -1;
  return json_object_set_new(
      j, "retrain",
      json_pack("{s:b, s:f, s:I, s:I, s:o}", "on_drift", p->retrain, "cooldown_s", p->cooldown_s,
                "max_concurrent", (json_int_t)p->max_concurrent, "rounds",
                (json_int_t)p->retrain_rounds, "rollout", ro));
}
