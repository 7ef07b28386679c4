/*
 * Training cohorts: parsing a plan's "cohort" and deciding at check-in whether a device is in
 * it (cohort.h). Labels are matched as rollouts match theirs (rollouts.c: `d.labels @>
 * cohort`), conditions against what the device reported in this very check-in: they describe
 * the device's state now (charging, on an unmetered network), not a property to remember.
 */
#include "rounds/cohort.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Label keys, values and conditions: non-empty, short, printable ASCII without quotes or
 * backslashes, so that they appear in messages and JSON as they are. */
static bool name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n >= FL_COHORT_NAME_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\')
      return false;
  return true;
}

static int parse_labels(fl_cohort *co, const json_t *l, char msg[160]) {
  const char *k;
  json_t *v;
  if (!json_is_object(l)) {
    snprintf(msg, 160, "cohort.labels must be an object of strings");
    return -1;
  }
  if (json_object_size(l) > FL_COHORT_MAX_LABELS) {
    snprintf(msg, 160, "cohort.labels takes at most %d labels", FL_COHORT_MAX_LABELS);
    return -1;
  }
  json_object_foreach((json_t *)l, k, v) {
    if (!json_is_string(v) || !name_ok(k) || !name_ok(json_string_value(v))) {
      snprintf(msg, 160, "cohort.labels: keys and values are strings of 1-%d printable characters",
               FL_COHORT_NAME_MAX - 1);
      return -1;
    }
    snprintf(co->keys[co->n_labels], FL_COHORT_NAME_MAX, "%s", k);
    snprintf(co->values[co->n_labels], FL_COHORT_NAME_MAX, "%s", json_string_value(v));
    co->n_labels++;
  }
  return 0;
}

static int parse_conds(fl_cohort *co, const json_t *a, char msg[160]) {
  size_t i;
  json_t *v;
  if (!json_is_array(a) || json_array_size(a) > FL_COHORT_MAX_CONDS) {
    snprintf(msg, 160, "cohort.conditions must be an array of at most %d strings",
             FL_COHORT_MAX_CONDS);
    return -1;
  }
  json_array_foreach(a, i, v) {
    if (!json_is_string(v) || !name_ok(json_string_value(v))) {
      snprintf(msg, 160, "cohort.conditions: strings of 1-%d printable characters",
               FL_COHORT_NAME_MAX - 1);
      return -1;
    }
    snprintf(co->conds[co->n_conds++], FL_COHORT_NAME_MAX, "%s", json_string_value(v));
  }
  return 0;
}

int fl__cohort_parse(fl_cohort *co, const json_t *j, char msg[160]) {
  const char *k;
  json_t *v;
  memset(co, 0, sizeof *co);
  if (j == NULL || json_is_null(j))
    return 0;
  if (!json_is_object(j)) {
    snprintf(msg, 160, "cohort must be an object: {\"labels\": {...}, \"conditions\": [...]}");
    return -1;
  }
  json_object_foreach((json_t *)j, k, v) {
    if (strcmp(k, "labels") != 0 && strcmp(k, "conditions") != 0) {
      snprintf(msg, 160, "unknown field cohort.%.60s", k);
      return -1;
    }
  }
  const json_t *l = json_object_get(j, "labels"), *c = json_object_get(j, "conditions");
  if ((l != NULL && parse_labels(co, l, msg)) || (c != NULL && parse_conds(co, c, msg))) {
    memset(co, 0, sizeof *co);
    return -1;
  }
  return 0;
}

bool fl__cohort_empty(const fl_cohort *co) {
  return co->n_labels == 0 && co->n_conds == 0;
}

static json_t *labels_json(const fl_cohort *co) {
  json_t *l = json_object();
  for (uint32_t i = 0; l != NULL && i < co->n_labels; i++)
    if (json_object_set_new(l, co->keys[i], json_string(co->values[i]))) {
      json_decref(l);
      return NULL;
    }
  return l;
}

json_t *fl__cohort_to_json(const fl_cohort *co) {
  if (fl__cohort_empty(co))
    return NULL;
  json_t *c = json_array();
  for (uint32_t i = 0; c != NULL && i < co->n_conds; i++)
    if (json_array_append_new(c, json_string(co->conds[i]))) {
      json_decref(c);
      c = NULL;
    }
  json_t *l = labels_json(co);
  if (c == NULL || l == NULL) {
    json_decref(c);
    json_decref(l);
    return NULL;
  }
  return json_pack("{s:o, s:o}", "labels", l, "conditions", c);
}

char *fl__cohort_labels_text(const fl_cohort *co) {
  json_t *l = labels_json(co);
  char *s = l != NULL ? json_dumps(l, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  json_decref(l);
  return s;
}

bool fl__cohort_conditions_met(const fl_cohort *co, char *const *conds, size_t n, char *why,
                               size_t why_len) {
  for (uint32_t i = 0; i < co->n_conds; i++) {
    bool have = false;
    for (size_t k = 0; !have && k < n; k++)
      have = conds[k] != NULL && strcmp(conds[k], co->conds[i]) == 0;
    if (!have) {
      snprintf(why, why_len, "the plan's cohort needs condition %s", co->conds[i]);
      return false;
    }
  }
  return true;
}

int fl__cohort_eligible(PGconn *c, const fl_cohort *co, uint64_t device_id, char *const *conds,
                        size_t n, char *why, size_t why_len) {
  /* Conditions first: they need no statement. */
  if (!fl__cohort_conditions_met(co, conds, n, why, why_len))
    return 0;
  if (co->n_labels == 0)
    return 1;
  char *lt = fl__cohort_labels_text(co);
  if (lt == NULL)
    return -1;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, device_id);
  fl__pgp_text(&p, lt);
  PGresult *r = fl__pg_exec_prep(c, "fl_cohort_labels",
                                 "SELECT labels @> $2::jsonb FROM devices WHERE device_id = $1", &p,
                                 false, NULL);
  int rc = -1;
  if (r != NULL && PQntuples(r) == 1) {
    rc = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    if (rc == 0)
      snprintf(why, why_len, "the device's labels do not contain the plan's cohort %.160s", lt);
  }
  PQclear(r);
  free(lt);
  return rc;
}
