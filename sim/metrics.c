/*
 * A reader of the few Prometheus series fl-sim reports.
 */
#include "metrics.h"

#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

static const char *const ROUTES[SIM_R_COUNT] = {"checkin", "download", "update"};

/* The value after `name` at the start of a line ("name value\n"), or -1 when absent. Names
 * carry their labels, so a prefix of a longer series name does not match. */
static double series(const char *text, const char *name) {
  size_t len = strlen(name);
  for (const char *p = text; p != NULL && *p != '\0';) {
    if (strncmp(p, name, len) == 0 && p[len] == ' ')
      return strtod(p + len + 1, NULL);
    p = strchr(p, '\n');
    if (p != NULL)
      p++;
  }
  return -1;
}

int sim_coord_stats_parse(sim_coord_stats *out, const char *text) {
  sim_coord_stats s;
  memset(&s, 0, sizeof(s));
  int found = 0;
  char name[128];
  for (int r = 0; r < SIM_R_COUNT; r++) {
    snprintf(name, sizeof(name), "fl_http_request_duration_seconds_count{route=\"%s\"}",
             ROUTES[r]);
    double n = series(text, name);
    snprintf(name, sizeof(name), "fl_http_request_duration_seconds_sum{route=\"%s\"}",
             ROUTES[r]);
    double sum = series(text, name);
    if (n >= 0 && sum >= 0) {
      s.n[r] = (uint64_t)n;
      s.sum_s[r] = sum;
      found++;
    }
  }
  double b = series(text, "fl_commit_batches_total"), u = series(text, "fl_commit_updates_total");
  double cs = series(text, "fl_commit_duration_seconds_sum");
  if (b >= 0 && u >= 0 && cs >= 0) {
    s.commit_batches = (uint64_t)b;
    s.commit_updates = (uint64_t)u;
    s.commit_s = cs;
    found++;
  }
  if (!found)
    return FL_E_PARSE;
  *out = s;
  return FL_OK;
}

void sim_coord_stats_sub(sim_coord_stats *out, const sim_coord_stats *b,
                         const sim_coord_stats *a) {
  for (int r = 0; r < SIM_R_COUNT; r++) {
    out->n[r] = b->n[r] - a->n[r];
    out->sum_s[r] = b->sum_s[r] - a->sum_s[r];
  }
  out->commit_batches = b->commit_batches - a->commit_batches;
  out->commit_updates = b->commit_updates - a->commit_updates;
  out->commit_s = b->commit_s - a->commit_s;
}

static double per(double sum, uint64_t n) {
  return n ? sum / (double)n : 0;
}

void sim_coord_stats_print(FILE *f, const char *prefix, const sim_coord_stats *d) {
  fprintf(f, "%s", prefix);
  for (int r = 0; r < SIM_R_COUNT; r++)
    fprintf(f, "%s %llu x %.1f ms, ", ROUTES[r], (unsigned long long)d->n[r],
            1e3 * per(d->sum_s[r], d->n[r]));
  fprintf(f, "commits %llu (%.1f updates, %.1f ms each)\n",
          (unsigned long long)d->commit_batches,
          per((double)d->commit_updates, d->commit_batches), 1e3 * per(d->commit_s, d->commit_batches));
}
