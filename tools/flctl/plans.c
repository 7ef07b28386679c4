/*
 * flctl plans and rounds: creating a training plan from --plan and the aggregator, cohort and
 * evaluation flags, a plan with its privacy spent (docs/PRIVACY.md), stopping it, its rounds.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

static const flctl_col ROUND_COLS[] = {
    {"round_id", "ROUND", 0},        {"model_id", "MODEL", 0},    {"base_version", "BASE", 0},
    {"state", "STATE", 0},           {"accepted", "ACCEPTED", 0}, {"target", "TARGET", 0},
    {"result_version", "RESULT", 0}, {"reason", "REASON", 40},    {NULL, NULL, 0}};

/* plans get: the plan object, then its privacy spent in one line (docs/PRIVACY.md 2). */
static int plan_get(const flctl *f, long long id) {
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/plans/%lld", id);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_object(f, j);
  json_t *pv = json_object_get(j, "privacy");
  if (!f->json && json_is_object(pv)) {
    json_t *e = json_object_get(pv, "epsilon");
    char eps[32] = "inf";
    if (json_is_number(e))
      snprintf(eps, sizeof eps, "%.4g", json_number_value(e));
    printf("epsilon %s at delta %g after %lld rounds (sampling rate %.4g, noise multiplier %g)\n",
           eps, json_number_value(json_object_get(pv, "delta")),
           (long long)json_integer_value(json_object_get(pv, "rounds")),
           json_number_value(json_object_get(pv, "sampling_rate")),
           json_number_value(json_object_get(pv, "noise_multiplier")));
  } else if (!f->json) {
    printf("no central noise: no epsilon\n");
  }
  json_decref(j);
  return FLCTL_OK;
}

/* --aggregator and its parameters, over the fields of --plan (the coordinator checks them and
 * answers 400 bad_plan with why). -1 after printing why for a value that is not a number. */
static int robust_flags(const flctl_args *a, json_t *plan) {
  static const char *const nums[] = {"trim-fraction", "byzantine", "krum-select"};
  static const char *const keys[] = {"trim_fraction", "byzantine", "krum_select"};
  if (!json_is_object(plan)) {
    fprintf(stderr, "flctl: --plan must be a JSON object\n");
    return -1;
  }
  if (flctl_flag(a, "aggregator") != NULL)
    json_object_set_new(plan, "aggregator", json_string(flctl_flag(a, "aggregator")));
  for (int i = 0; i < 3; i++) {
    const char *v = flctl_flag(a, nums[i]);
    char *end;
    if (v == NULL)
      continue;
    double d = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !isfinite(d)) {
      fprintf(stderr, "flctl: --%s: not a number: %s\n", nums[i], v);
      return -1;
    }
    if (i > 0 && (d != floor(d) || fabs(d) > 1e15)) {
      fprintf(stderr, "flctl: --%s: not a whole number: %s\n", nums[i], v);
      return -1;
    }
    json_object_set_new(plan, keys[i], i == 0 ? json_real(d) : json_integer((json_int_t)d));
  }
  return 0;
}

int flctl_cmd_plans(const flctl *f, const flctl_args *a) {
  char path[96];
  long long id;
  bool create = a->npos == 2 && strcmp(a->pos[0], "create") == 0;
  bool stop = a->npos == 2 && strcmp(a->pos[0], "stop") == 0;
  bool get = a->npos == 2 && strcmp(a->pos[0], "get") == 0;
  if (!create && !stop && !get)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, create ? "MODEL_ID" : "PLAN_ID", &id))
    return FLCTL_USAGE;
  if (get)
    return plan_get(f, id);
  if (stop) {
    snprintf(path, sizeof path, "/admin/v1/plans/%lld/stop", id);
    return flctl_show_call(f, "POST", path, NULL);
  }
  json_t *plan = flctl_json_arg("--plan", flctl_flag(a, "plan") ? flctl_flag(a, "plan") : "{}");
  const char *cl = flctl_flag(a, "cohort-labels");
  json_t *labels = cl != NULL ? flctl_labels("--cohort-labels", cl) : NULL;
  if (plan == NULL || robust_flags(a, plan) || (cl != NULL && labels == NULL) ||
      flctl_plan_cohort_eval(plan, labels, flctl_flag(a, "cohort-conditions"),
                             flctl_flag(a, "eval-share"), flctl_flag(a, "eval-count"),
                             flctl_flag(a, "eval-by"))) {
    json_decref(plan);
    json_decref(labels);
    return FLCTL_USAGE;
  }
  json_decref(labels);
  snprintf(path, sizeof path, "/admin/v1/models/%lld/plans", id);
  return flctl_show_call(f, "POST", path, plan);
}

int flctl_cmd_rounds(const flctl *f, const flctl_args *a) {
  char path[96];
  long long id;
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  if (strcmp(sub, "list") == 0)
    return flctl_filtered_list(f, a, "/admin/v1/rounds", "rounds", ROUND_COLS);
  if (strcmp(sub, "get") != 0 || a->npos != 2)
    return flctl_usage_error(a);
  if (flctl_id_at(a, 1, "ROUND_ID", &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/rounds/%lld", id);
  return flctl_show_call(f, "GET", path, NULL);
}
