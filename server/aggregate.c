/*
 * Accumulator and group committer; see aggregate.h for the protocol.
 *
 * Locking: one mutex guards the pending batches and the waiters' results. Folding happens
 * under it (a fold is a bandwidth-bound pass over the update, microseconds for 100k
 * parameters), the database transaction does not: the committer detaches the batches first,
 * so uploads keep folding into fresh batches while the previous ones commit.
 */
#include "aggregate.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "rounds.h"
#include "store_pg.h"

typedef struct waiter {
  uint64_t device_id;
  uint8_t digest[FL_SHA256_LEN];
  uint64_t samples, bytes;
  double loss;
  int result;
  uint32_t accepted;
  bool done;
  struct waiter *next;
} waiter;

typedef struct batch {
  uint64_t round_id;
  size_t n_params;
  float *sum;
  double weight, loss_sum;
  uint64_t bytes;
  uint32_t count;
  waiter *waiters;
  struct batch *next;
} batch;

struct fl_agg {
  fl_srv *s;
  pthread_mutex_t mu;
  pthread_cond_t work;  /* committer: batches are pending or stop */
  pthread_cond_t done;  /* waiters: some results are in */
  batch *pending;
  bool stop, started;
  pthread_t thread;
};

int fl__agg_new(fl_agg **out, fl_srv *s) {
  fl_agg *a = calloc(1, sizeof *a);
  if (a == NULL)
    return FL_E_NOMEM;
  a->s = s;
  pthread_mutex_init(&a->mu, NULL);
  pthread_cond_init(&a->work, NULL);
  pthread_cond_init(&a->done, NULL);
  *out = a;
  return FL_OK;
}

void fl__agg_free(fl_agg *a) {
  if (a == NULL)
    return;
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->work);
  pthread_cond_destroy(&a->done);
  free(a);
}

static batch *find_batch(fl_agg *a, uint64_t round_id, size_t n_params) {
  for (batch *b = a->pending; b != NULL; b = b->next)
    if (b->round_id == round_id)
      return b;
  batch *b = calloc(1, sizeof *b);
  if (b == NULL)
    return NULL;
  b->sum = calloc(n_params ? n_params : 1, sizeof *b->sum);
  if (b->sum == NULL) {
    free(b);
    return NULL;
  }
  b->round_id = round_id;
  b->n_params = n_params;
  b->next = a->pending;
  a->pending = b;
  return b;
}

static bool pending_for(const batch *b, uint64_t device_id) {
  for (const waiter *w = b->waiters; w != NULL; w = w->next)
    if (w->device_id == device_id)
      return true;
  return false;
}

int fl__agg_submit(fl_agg *a, const fl_upload *u, uint32_t *accepted) {
  waiter w = {.device_id = u->device_id, .samples = u->samples, .bytes = u->bytes,
              .loss = u->loss, .result = FL_AGG_RETRY};
  memcpy(w.digest, u->digest, sizeof w.digest);
  pthread_mutex_lock(&a->mu);
  if (a->stop) {
    pthread_mutex_unlock(&a->mu);
    return FL_AGG_SHUTDOWN;
  }
  batch *b = find_batch(a, u->round_id, u->mi->n_params);
  if (b == NULL || pending_for(b, u->device_id)) {
    pthread_mutex_unlock(&a->mu);
    return b == NULL ? FL_AGG_RETRY : FL_AGG_IN_PROGRESS;
  }
  for (size_t i = 0; i < u->mi->n_tensors; i++)
    fl__tensor_fold(u->delta[i], (float)u->samples, b->sum + u->mi->tensors[i].offset);
  b->weight += (double)u->samples;
  b->loss_sum += u->loss * (double)u->samples;
  b->bytes += u->bytes;
  b->count++;
  w.next = b->waiters;
  b->waiters = &w;
  pthread_cond_signal(&a->work);
  while (!w.done)
    pthread_cond_wait(&a->done, &a->mu);
  pthread_mutex_unlock(&a->mu);
  *accepted = w.accepted;
  return w.result;
}

/* Appends printf output to a growing string; -1 on allocation failure. */
typedef struct sbuf {
  char *p;
  size_t len, cap;
} sbuf;

static int sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_printf(sbuf *b, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0)
      return -1;
    if (b->p != NULL && b->len + (size_t)n < b->cap) {
      b->len += (size_t)n;
      return 0;
    }
    size_t cap = b->cap ? b->cap * 2 : 256;
    while (cap < b->len + (size_t)n + 1)
      cap *= 2;
    char *np = realloc(b->p, cap);
    if (np == NULL)
      return -1;
    b->p = np;
    b->cap = cap;
  }
}

/* Postgres array literals of the batch's acceptance rows (device ids, hex digests, sample
 * counts, losses, bytes). Numbers and hex only, so no quoting is needed. */
static int build_arrays(const batch *b, sbuf arr[5]) {
  int rc = 0;
  for (int k = 0; k < 5; k++)
    rc |= sb_printf(&arr[k], "{");
  for (const waiter *w = b->waiters; w != NULL && rc == 0; w = w->next) {
    char hex[2 * FL_SHA256_LEN + 1];
    const char *sep = w == b->waiters ? "" : ",";
    fl__hex(w->digest, sizeof w->digest, hex);
    rc |= sb_printf(&arr[0], "%s%" PRIu64, sep, w->device_id);
    rc |= sb_printf(&arr[1], "%s%s", sep, hex);
    rc |= sb_printf(&arr[2], "%s%" PRIu64, sep, w->samples);
    rc |= sb_printf(&arr[3], "%s%.9g", sep, w->loss);
    rc |= sb_printf(&arr[4], "%s%" PRIu64, sep, w->bytes);
  }
  for (int k = 0; k < 5; k++)
    rc |= sb_printf(&arr[k], "}");
  return rc;
}

/* Step 1 of the transaction: count the batch into the round if it is still open.
 * Returns 1 when committed-to-open, 0 when the round is no longer open, -1 on error. */
static int bump_round(PGconn *c, const batch *b, uint32_t *accepted, uint32_t *target) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, b->round_id);
  fl__pgp_u64(&p, b->count);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE rounds SET accepted = accepted + $2"
                            " WHERE round_id = $1 AND state = 'open'"
                            " RETURNING accepted, target",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = PQntuples(r) == 1;
  if (rc) {
    *accepted = (uint32_t)fl__pg_u64(r, 0, 0);
    *target = (uint32_t)fl__pg_u64(r, 0, 1);
  }
  PQclear(r);
  return rc;
}

/* Step 2: the acceptance rows. Returns 1 when all were new, 0 on a duplicate, -1 on error. */
static int insert_acceptances(fl_agg *a, PGconn *c, const batch *b) {
  sbuf arr[5] = {0};
  fl_pgp p;
  int rc = -1;
  if (build_arrays(b, arr))
    goto out;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, b->round_id);
  for (int k = 0; k < 5; k++)
    fl__pgp_text(&p, arr[k].p);
  fl__pgp_text(&p, a->s->cfg.replica_id);
  PGresult *r = fl__pg_exec(
      c,
      "INSERT INTO acceptances (round_id, device_id, digest, sample_count, loss, bytes, replica)"
      " SELECT $1, d, decode(h, 'hex'), n, l, b, $7"
      " FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::float8[], $6::bigint[])"
      "  AS t(d, h, n, l, b)"
      " ON CONFLICT DO NOTHING",
      &p, false, NULL);
  if (r != NULL) {
    rc = strtoul(PQcmdTuples(r), NULL, 10) == b->count ? 1 : 0;
    PQclear(r);
  }
out:
  for (int k = 0; k < 5; k++)
    free(arr[k].p);
  return rc;
}

static int insert_partial(fl_agg *a, PGconn *c, const batch *b) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, b->round_id);
  fl__pgp_text(&p, a->s->cfg.replica_id);
  fl__pgp_bin(&p, b->sum, b->n_params * sizeof(float));
  fl__pgp_f64(&p, b->weight);
  fl__pgp_u64(&p, b->count);
  fl__pgp_f64(&p, b->loss_sum);
  fl__pgp_u64(&p, b->bytes);
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO partials (round_id, replica, sum, weight, count,"
                            " loss_sum, bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  PQclear(r);
  return 0;
}

/* One transaction for one batch; returns the result for all of its waiters. */
static int commit_batch(fl_agg *a, const batch *b, uint32_t *accepted) {
  uint32_t target = 0;
  int result = FL_AGG_RETRY;
  PGconn *c = fl__pool_get(a->s->pool);
  if (c == NULL)
    return FL_AGG_RETRY;
  if (fl__pg_cmd(c, "BEGIN"))
    goto out;
  int rc = bump_round(c, b, accepted, &target);
  if (rc == 0)
    result = FL_AGG_ROUND_CLOSED;
  if (rc <= 0)
    goto out;
  /* A duplicate means another replica acknowledged one of these devices meanwhile: nothing
   * of this batch is committed and every device retries (the duplicate one then gets its
   * precise answer from the acceptance row). */
  if (insert_acceptances(a, c, b) != 1 || insert_partial(a, c, b) || fl__pg_cmd(c, "COMMIT"))
    goto out;
  result = FL_AGG_OK;
  if (*accepted >= target)
    fl__rounds_poke(a->s->rounds);
out:
  fl__pool_put(a->s->pool, c); /* rolls back an unfinished transaction */
  return result;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void *committer(void *arg) {
  fl_agg *a = arg;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (a->pending == NULL && !a->stop)
      pthread_cond_wait(&a->work, &a->mu);
    if (a->pending == NULL)
      break;
    if (a->s->cfg.commit_interval_ms && !a->stop) {
      /* Gather: uploads arriving in this window share the transaction. */
      pthread_mutex_unlock(&a->mu);
      sleep_ms(a->s->cfg.commit_interval_ms);
      pthread_mutex_lock(&a->mu);
    }
    batch *list = a->pending;
    a->pending = NULL;
    pthread_mutex_unlock(&a->mu);
    for (batch *b = list; b != NULL; b = b->next) {
      uint32_t accepted = 0;
      double t0 = fl__mono_s();
      int result = commit_batch(a, b, &accepted);
      fl__metrics_commit(a->s->metrics, b->count, fl__mono_s() - t0);
      fl__slog(result == FL_AGG_OK ? FL_LOG_DEBUG : FL_LOG_WARN, "batch_commit",
               "round=%" PRIu64 " updates=%u result=%d accepted=%u", b->round_id, b->count,
               result, accepted);
      pthread_mutex_lock(&a->mu);
      for (waiter *w = b->waiters; w != NULL; w = w->next) {
        w->result = result;
        w->accepted = accepted;
        w->done = true;
      }
      pthread_cond_broadcast(&a->done);
      pthread_mutex_unlock(&a->mu);
    }
    while (list != NULL) {
      batch *next = list->next;
      free(list->sum);
      free(list);
      list = next;
    }
    pthread_mutex_lock(&a->mu);
  }
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

int fl__agg_start(fl_agg *a) {
  if (pthread_create(&a->thread, NULL, committer, a) != 0)
    return FL_E_NOMEM;
  a->started = true;
  return FL_OK;
}

void fl__agg_stop(fl_agg *a) {
  if (a == NULL || !a->started)
    return;
  pthread_mutex_lock(&a->mu);
  a->stop = true;
  pthread_cond_signal(&a->work);
  pthread_mutex_unlock(&a->mu);
  pthread_join(a->thread, NULL);
  a->started = false;
}
