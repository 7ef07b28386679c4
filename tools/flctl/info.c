/* flctl audit, drift and info: what the coordinator records and reports about itself. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "flctl.h"

static const flctl_col AUDIT_COLS[] = {{"entry_id", "ENTRY", 0}, {"at", "AT", 0},
                                       {"actor", "ACTOR", 30},   {"action", "ACTION", 0},
                                       {"target", "TARGET", 0},  {"detail", "DETAIL", 70},
                                       {NULL, NULL, 0}};

int flctl_cmd_audit(const flctl *f, const flctl_args *a) {
  long long limit = 20;
  if (a->npos != 0)
    return flctl_usage_error(a);
  /* The coordinator answers its latest 1000 entries, newest first. */
  if (flctl_flag(a, "limit") && flctl_int("--limit", flctl_flag(a, "limit"), 1, 1000, &limit))
    return FLCTL_USAGE;
  json_t *j = flctl_call(f, "GET", "/admin/v1/audit", NULL);
  if (j == NULL)
    return FLCTL_ERR;
  json_t *entries = json_object_get(j, "entries");
  while (json_array_size(entries) > (size_t)limit)
    json_array_remove(entries, json_array_size(entries) - 1);
  flctl_table(f, j, entries, AUDIT_COLS);
  json_decref(j);
  return FLCTL_OK;
}

/* Drift events (docs/DRIFT.md), newest first; --json shows the cohorts' tests too. */
static const flctl_col DRIFT_COLS[] = {{"event_id", "EVENT", 0},
                                       {"model_id", "MODEL", 0},
                                       {"version", "VERSION", 0},
                                       {"cohort_label", "LABEL", 0},
                                       {"cohort", "COHORT", 20},
                                       {"psi", "PSI", 0},
                                       {"max_shift", "SHIFT", 0},
                                       {"features", "FEATURES", 40},
                                       {"detected_at", "DETECTED", 0},
                                       {"resolved_at", "RESOLVED", 0},
                                       {"retrain_plan_id", "RETRAIN", 0},
                                       {"retrain_note", "NOTE", 0},
                                       /* the retrained version's rollout (DRIFT.md 4) */
                                       {"rollout_id", "ROLLOUT", 0},
                                       {"rollout_note", "ROLLOUT_NOTE", 0},
                                       {NULL, NULL, 0}};

int flctl_cmd_drift(const flctl *f, const flctl_args *a) {
  char path[96];
  long long id = 0;
  const char *m = flctl_flag(a, "model");
  if (a->npos != 0)
    return flctl_usage_error(a);
  if (m != NULL && flctl_int("--model", m, 1, INT64_MAX, &id))
    return FLCTL_USAGE;
  snprintf(path, sizeof path, "/admin/v1/drift?model_id=%lld", id);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_table(f, j, json_object_get(json_object_get(j, "drift"), "events"), DRIFT_COLS);
  json_decref(j);
  return FLCTL_OK;
}

int flctl_cmd_info(const flctl *f, const flctl_args *a) {
  if (a->npos != 0)
    return flctl_usage_error(a);
  return flctl_show_call(f, "GET", "/admin/v1/info", NULL);
}
