/*
 * Staleness weights (staleness.h): parsing, naming and s(tau). Pure functions, unit tested
 * against hand-computed values in tests/unit/test_staleness.c.
 */
#include "rounds/staleness.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLY_MAX 10.0

int fl__staleness_parse(const char *text, fl_staleness *out, char msg[160]) {
  if (text != NULL && strcmp(text, "sqrt") == 0) {
    *out = (fl_staleness){.exponent = 0.5, .kind = FL_STALE_SQRT};
    return 0;
  }
  if (text != NULL && strcmp(text, "constant") == 0) {
    *out = (fl_staleness){.exponent = 0.0, .kind = FL_STALE_CONSTANT};
    return 0;
  }
  if (text != NULL && strncmp(text, "poly:", 5) == 0 && text[5] != '\0') {
    char *end = NULL;
    double a = strtod(text + 5, &end);
    if (end != NULL && *end == '\0' && isfinite(a) && a >= 0 && a <= POLY_MAX) {
      *out = (fl_staleness){.exponent = a, .kind = FL_STALE_POLY};
      return 0;
    }
  }
  snprintf(msg, 160, "staleness must be sqrt, constant or poly:a with a in [0, %g]", POLY_MAX);
  return -1;
}

void fl__staleness_name(const fl_staleness *f, char *buf, size_t len) {
  if (f->kind == FL_STALE_SQRT)
    snprintf(buf, len, "sqrt");
  else if (f->kind == FL_STALE_CONSTANT)
    snprintf(buf, len, "constant");
  else
    snprintf(buf, len, "poly:%.17g", f->exponent); /* %.17g reads back as the same double */
}

double fl__staleness_weight(const fl_staleness *f, uint32_t tau) {
  if (f->exponent == 0.0)
    return 1.0;
  if (f->exponent == 0.5)
    return 1.0 / sqrt(1.0 + (double)tau);
  return pow(1.0 + (double)tau, -f->exponent);
}

double fl__staleness_fold_scale(double fedavg_scale, double stale_weight) {
  return stale_weight > 0 ? fedavg_scale * stale_weight : fedavg_scale;
}

int64_t fl__staleness_tau(uint64_t buffer_base, uint64_t update_base) {
  if (update_base > buffer_base || buffer_base - update_base > (uint64_t)INT64_MAX)
    return -1;
  return (int64_t)(buffer_base - update_base);
}
