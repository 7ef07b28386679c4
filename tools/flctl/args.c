/*
 * flctl's argument helpers shared by the commands: numbers, ids, percentages, label lists and
 * JSON arguments checked with a message naming the option, and the list/object calls most
 * commands end with.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flctl.h"

int flctl_int(const char *what, const char *s, long long lo, long long hi, long long *out) {
  char *end;
  long long v = 0;
  bool ok = s != NULL && *s != '\0' && !isspace((unsigned char)*s);
  if (ok) {
    errno = 0;
    v = strtoll(s, &end, 10);
    ok = errno == 0 && *end == '\0' && v >= lo && v <= hi;
  }
  if (ok) {
    *out = v;
    return 0;
  }
  if (hi == INT64_MAX)
    fprintf(stderr, "flctl: %s: '%s' is not a %s integer\n", what, s ? s : "",
            lo > 0 ? "positive" : "non-negative");
  else
    fprintf(stderr, "flctl: %s: '%s' is not an integer in %lld..%lld\n", what, s ? s : "", lo, hi);
  return -1;
}

/* A positive id (1..INT64_MAX, the coordinator's ids) at positional argument i. */
int flctl_id_at(const flctl_args *a, int i, const char *what, long long *out) {
  return flctl_int(what, a->pos[i], 1, INT64_MAX, out);
}

/* A percentage 0..100 (decimals allowed). */
int flctl_percent(const char *what, const char *s, double *out) {
  char *end;
  double v = 0;
  bool ok = *s != '\0' && !isspace((unsigned char)*s);
  if (ok) {
    errno = 0;
    v = strtod(s, &end);
    ok = errno == 0 && *end == '\0' && isfinite(v) && v >= 0 && v <= 100;
  }
  if (!ok) {
    fprintf(stderr, "flctl: %s: '%s' is not a percentage (a number in 0..100)\n", what, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* "site=plant-3,hw=rev-b" as a JSON object of strings; NULL after a message when malformed. */
json_t *flctl_labels(const char *what, const char *s) {
  json_t *o = json_object();
  char *copy = strdup(s), *save = NULL;
  if (copy == NULL || *s == '\0') {
    json_decref(o);
    o = NULL;
  }
  for (char *kv = copy ? strtok_r(copy, ",", &save) : NULL; o && kv;
       kv = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(kv, '=');
    if (eq == NULL || eq == kv) {
      json_decref(o);
      o = NULL;
      break;
    }
    *eq = '\0';
    json_object_set_new(o, kv, json_string(eq + 1));
  }
  free(copy);
  if (o == NULL)
    fprintf(stderr, "flctl: %s: '%s' is not key=value[,key=value...]\n", what, s);
  return o;
}

/* JSON text, or @FILE with JSON; NULL after a message naming the option. */
json_t *flctl_json_arg(const char *what, const char *s) {
  json_error_t e;
  json_t *j = s[0] == '@' ? json_load_file(s + 1, 0, &e) : json_loads(s, 0, &e);
  if (j == NULL)
    fprintf(stderr, "flctl: %s: bad JSON (%s at line %d)\n", what, e.text, e.line);
  return j;
}

int flctl_show_list(const flctl *f, const char *path, const char *key, const flctl_col *cols) {
  json_t *j = flctl_call(f, "GET", path, NULL);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_table(f, j, json_object_get(j, key), cols);
  json_decref(j);
  return FLCTL_OK;
}

/* Calls and prints the answer object; body is stolen (may be NULL). */
int flctl_show_call(const flctl *f, const char *method, const char *path, json_t *body) {
  json_t *j = flctl_call(f, method, path, body);
  json_decref(body);
  if (j == NULL)
    return FLCTL_ERR;
  flctl_object(f, j);
  json_decref(j);
  return FLCTL_OK;
}

/* GET base, or base?model_id=N with --model; FLCTL_USAGE when --model is no id. */
int flctl_filtered_list(const flctl *f, const flctl_args *a, const char *base, const char *key,
                        const flctl_col *cols) {
  char path[96];
  long long id = 0;
  const char *m = flctl_flag(a, "model");
  if (a->npos > 1)
    return flctl_usage_error(a);
  if (m != NULL && flctl_int("--model", m, 1, INT64_MAX, &id))
    return FLCTL_USAGE;
  if (m != NULL)
    snprintf(path, sizeof path, "%s?model_id=%lld", base, id);
  else
    snprintf(path, sizeof path, "%s", base);
  return flctl_show_list(f, path, key, cols);
}
