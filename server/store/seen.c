/*
 * Batched last-seen writes (seen.h). Request threads append to an array under a mutex; the
 * flusher swaps the array out, keeps each device's latest entry and writes them with one
 * UPDATE ... FROM unnest(...) in device order (two replicas' batches lock rows in the same
 * order, so they wait for each other instead of deadlocking).
 */
#include "store/seen.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"
#include "store/store_pg.h"

typedef struct seen_entry {
  uint64_t device_id, model_id, version;
  int64_t at_ms;
} seen_entry;

struct fl_seen {
  pthread_mutex_t mu;
  seen_entry *v;
  size_t n, cap;
  double last_flush; /* fl__mono_s */
};

int fl__seen_new(fl_seen **out) {
  fl_seen *s = calloc(1, sizeof *s);
  if (s == NULL)
    return FL_E_NOMEM;
  pthread_mutex_init(&s->mu, NULL);
  s->last_flush = fl__mono_s();
  *out = s;
  return FL_OK;
}

void fl__seen_free(fl_seen *s) {
  if (s == NULL)
    return;
  pthread_mutex_destroy(&s->mu);
  free(s->v);
  free(s);
}

bool fl__seen_note(fl_seen *s, uint64_t device_id, uint64_t running_model_id,
                   uint64_t running_version) {
  seen_entry e = {device_id, running_model_id, running_version, fl__now_ms()};
  bool full;
  pthread_mutex_lock(&s->mu);
  if (s->n == s->cap && s->cap < FL_SEEN_MAX) {
    size_t cap = s->cap ? s->cap * 2 : 256;
    seen_entry *v = realloc(s->v, cap * sizeof *v);
    if (v != NULL) {
      s->v = v;
      s->cap = cap;
    }
  }
  if (s->n < s->cap)
    s->v[s->n++] = e;
  full = s->n >= FL_SEEN_FLUSH_N;
  pthread_mutex_unlock(&s->mu);
  return full;
}

bool fl__seen_due(fl_seen *s) {
  pthread_mutex_lock(&s->mu);
  bool due = s->n >= FL_SEEN_FLUSH_N ||
             (s->n > 0 && (fl__mono_s() - s->last_flush) * 1000.0 >= FL_SEEN_FLUSH_MS);
  pthread_mutex_unlock(&s->mu);
  return due;
}

/* By device, then by arrival (the index breaks ties: qsort is not stable). */
static int cmp_entry(const void *a, const void *b) {
  const seen_entry *x = a, *y = b;
  if (x->device_id != y->device_id)
    return x->device_id < y->device_id ? -1 : 1;
  return x->at_ms < y->at_ms ? -1 : x->at_ms > y->at_ms;
}

/* "{a,b,c}" of one column of v; numbers only, so no quoting. NULL on allocation failure. */
static char *array_lit(const seen_entry *v, size_t n, int col) {
  char *lit = malloc(n * 22 + 3), *w = lit;
  if (lit == NULL)
    return NULL;
  *w++ = '{';
  for (size_t i = 0; i < n; i++) {
    const char *sep = i ? "," : "";
    if (col == 3)
      w += sprintf(w, "%s%" PRId64, sep, v[i].at_ms);
    else
      w += sprintf(w, "%s%" PRIu64, sep,
                   col == 0   ? v[i].device_id
                   : col == 1 ? v[i].model_id
                              : v[i].version);
  }
  strcpy(w, "}");
  return lit;
}

static int write_batch(PGconn *c, const seen_entry *v, size_t n) {
  char *lit[4] = {0};
  int rc = -1;
  fl_pgp p;
  fl__pgp_init(&p);
  for (int k = 0; k < 4; k++) {
    if ((lit[k] = array_lit(v, n, k)) == NULL)
      goto out;
    fl__pgp_text(&p, lit[k]);
  }
  /* Telemetry: no wait for the WAL flush (set_config(..., true) is SET LOCAL for this
   * statement's own transaction). */
  PGresult *r = fl__pg_exec_prep(
      c, "fl_seen_flush",
      "UPDATE devices d SET last_seen_at = to_timestamp(t.at / 1000.0),"
      " running_model_id = t.m, running_version = t.v"
      " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS t(id, m, v, at)"
      " WHERE d.device_id = t.id AND set_config('synchronous_commit', 'off', true) IS NOT NULL",
      &p, false, NULL);
  if (r != NULL)
    rc = 0;
  PQclear(r);
out:
  for (int k = 0; k < 4; k++)
    free(lit[k]);
  return rc;
}

int fl__seen_flush(fl_seen *s, PGconn *c) {
  pthread_mutex_lock(&s->mu);
  seen_entry *v = s->v;
  size_t n = s->n;
  s->v = NULL;
  s->n = s->cap = 0;
  s->last_flush = fl__mono_s();
  pthread_mutex_unlock(&s->mu);
  if (n == 0) {
    free(v);
    return 0;
  }
  qsort(v, n, sizeof *v, cmp_entry);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (k > 0 && v[k - 1].device_id == v[i].device_id)
      k--; /* a later check-in of the same device replaces the earlier one */
    v[k++] = v[i];
  }
  int rc = write_batch(c, v, k);
  if (rc)
    fl__slog(FL_LOG_WARN, "seen_flush_failed", "devices=%zu", k);
  free(v);
  return rc;
}
