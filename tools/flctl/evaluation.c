/*
 * flctl's training cohorts and federated evaluation (docs/API.md, "Training cohorts" and
 * "Federated evaluation"): the plan fields from command-line flags, and a version with its
 * evaluation results.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

/* "charging,unmetered" as a JSON array of strings; NULL after a message. */
static json_t *list_arg(const char *what, const char *s) {
  json_t *a = json_array();
  char *copy = strdup(s), *save = NULL;
  for (char *w = copy ? strtok_r(copy, ",", &save) : NULL; a && w; w = strtok_r(NULL, ",", &save))
    json_array_append_new(a, json_string(w));
  free(copy);
  if (a != NULL && json_array_size(a) == 0) {
    fprintf(stderr, "flctl: %s: '%s' names nothing (a,b,...)\n", what, s);
    json_decref(a);
    a = NULL;
  }
  return a;
}

int flctl_plan_cohort_eval(json_t *plan, json_t *labels, const char *conds, const char *share,
                           const char *count, const char *by) {
  int rc = -1;
  json_t *c = conds != NULL ? list_arg("--cohort-conditions", conds) : NULL;
  if (conds != NULL && c == NULL)
    goto out;
  if (labels != NULL || c != NULL) {
    json_t *co = json_object();
    if (labels != NULL)
      json_object_set(co, "labels", labels);
    if (c != NULL)
      json_object_set(co, "conditions", c);
    json_object_set_new(plan, "cohort", co);
  }
  if (share != NULL && count != NULL) {
    fprintf(stderr, "flctl: --eval-share and --eval-count exclude each other\n");
    goto out;
  }
  if (by != NULL && share == NULL && count == NULL) {
    fprintf(stderr, "flctl: --eval-by needs --eval-share or --eval-count\n");
    goto out;
  }
  json_t *ev = NULL;
  long long n;
  char *end;
  if (share != NULL) {
    double d = strtod(share, &end);
    if (*share == '\0' || *end != '\0' || !isfinite(d)) {
      fprintf(stderr, "flctl: --eval-share: not a number: %s\n", share);
      goto out;
    }
    ev = json_pack("{s:f}", "share", d);
  } else if (count != NULL) {
    if (flctl_int("--eval-count", count, 1, 1000000, &n))
      goto out;
    ev = json_pack("{s:I}", "count", (json_int_t)n);
  }
  if (ev != NULL && by != NULL)
    json_object_set_new(ev, "by_label", json_string(by));
  if (ev != NULL)
    json_object_set_new(plan, "evaluation", ev);
  rc = 0;
out:
  json_decref(c);
  return rc;
}

static const flctl_col EVAL_COLS[] = {
    {"campaign", "CAMPAIGN", 0}, {"group", "GROUP", 24},      {"metric", "METRIC", 0},
    {"mean", "MEAN", 0},         {"ci95_low", "CI95 LOW", 0}, {"ci95_high", "CI95 HIGH", 0},
    {"reports", "DEVICES", 0},   {"samples", "EXAMPLES", 0},  {NULL, NULL, 0}};

/* One row per metric of one group (all devices, or one value of by_label). */
static void add_rows(json_t *rows, json_int_t campaign, const char *group, const json_t *metrics) {
  const char *name;
  json_t *st;
  json_object_foreach((json_t *)metrics, name, st) {
    json_t *r = json_pack("{s:I, s:s, s:s}", "campaign", campaign, "group", group, "metric", name);
    const char *keys[] = {"mean", "ci95_low", "ci95_high", "reports", "samples"};
    for (int i = 0; r != NULL && i < 5; i++)
      json_object_set(r, keys[i], json_object_get(st, keys[i]));
    json_array_append_new(rows, r);
  }
}

int flctl_version_show(const flctl *f, long long model, long long version) {
  char path[128];
  snprintf(path, sizeof path, "/admin/v1/models/%lld/versions/%lld", model, version);
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  if (f->json) {
    flctl_object(f, j);
    json_decref(j);
    return FLCTL_OK;
  }
  json_t *ev = json_incref(json_object_get(j, "evaluation")), *rows = json_array(), *c;
  size_t i;
  json_object_del(j, "evaluation");
  flctl_object(f, j);
  json_array_foreach(ev, i, c) {
    json_int_t id = json_integer_value(json_object_get(c, "campaign_id"));
    json_t *res = json_object_get(c, "result");
    add_rows(rows, id, "all", json_object_get(res, "metrics"));
    json_t *by = json_object_get(res, "by_label"), *g;
    const char *v;
    json_object_foreach(json_object_get(by, "values"), v, g) {
      char group[160];
      snprintf(group, sizeof group, "%s=%s", json_string_value(json_object_get(by, "key")), v);
      add_rows(rows, id, group, json_object_get(g, "metrics"));
    }
  }
  printf("\nfederated evaluation (capped weighted mean, 95%% t-interval over devices):\n");
  if (json_array_size(rows) == 0)
    printf("no reports\n");
  else
    flctl_table(f, j, rows, EVAL_COLS);
  json_decref(rows);
  json_decref(ev);
  json_decref(j);
  return FLCTL_OK;
}
