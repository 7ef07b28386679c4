/*
 * Device conditions (fl_client_set_conditions): what the embedder knows about the device's
 * state right now ("charging", "unmetered", "idle", ...), sent with every check-in so that a
 * plan's training cohort can require them (docs/API.md, "Training cohorts"). The library does
 * not interpret them.
 */
#include <string.h>

#include "client_internal.h"

/* Printable ASCII without quotes or backslashes: the coordinator matches them against a
 * plan's cohort by exact bytes, and they appear in its messages as they are. */
static bool condition_ok(const char *s) {
  size_t n = s != NULL ? strlen(s) : 0;
  if (n == 0 || n >= FL__CONDITION_LEN)
    return false;
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\')
      return false;
  return true;
}

fl_err fl_client_set_conditions(fl_client *c, const char *const *conds, size_t n) {
  if (c == NULL || (n > 0 && conds == NULL))
    return FL_E_INVAL;
  if (n > FL__CONDITIONS_MAX) {
    fl__client_err(c, "at most %d conditions", FL__CONDITIONS_MAX);
    return FL_E_INVAL;
  }
  for (size_t i = 0; i < n; i++)
    if (!condition_ok(conds[i])) {
      fl__client_err(c, "condition %zu is not 1-%d printable characters", i, FL__CONDITION_LEN - 1);
      return FL_E_INVAL;
    }
  for (size_t i = 0; i < n; i++)
    memcpy(c->conds[i], conds[i], strlen(conds[i]) + 1);
  c->n_conds = n;
  return FL_OK;
}

size_t fl__conditions_view(const fl_client *c, char *out[FL__CONDITIONS_MAX]) {
  for (size_t i = 0; i < c->n_conds; i++)
    out[i] = (char *)c->conds[i];
  return c->n_conds;
}
