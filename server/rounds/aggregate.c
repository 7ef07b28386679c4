/*
 * Accumulator and group committer; see aggregate.h for the protocol.
 *
 * Locking: one mutex guards the pending batches. Folding happens under it (a fold is a
 * bandwidth-bound pass over the update, microseconds for 100k parameters), the database
 * transaction does not: the committer detaches the batches first, so uploads keep folding into
 * fresh batches while the previous ones commit. A detached batch and its waiters belong to the
 * committer alone, which calls each waiter's completion once the transaction is over.
 */
#include "rounds/aggregate.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/nonce.h"
#include "codec.h"
#include "drift/drift.h"
#include "mem.h"
#include "rounds/pace.h"
#include "rounds/rounds.h"
#include "rounds/staleness.h"
#include "store/store_pg.h"

typedef struct waiter {
  const fl_upload *u; /* the submitter's, alive until done is called: refolded on a replay */
  fl_agg_done done;
  void *arg;
  uint64_t device_id;
  uint8_t digest[FL_SHA256_LEN];
  uint64_t samples, bytes;
  double loss;
  bool replayed;
  bool over; /* past the round's target: refused (FL_AGG_TARGET_REACHED), not folded */
  struct waiter *next;
} waiter;

typedef struct batch {
  uint64_t round_id;
  size_t n_params;
  float *sum;
  double weight, loss_sum;
  uint64_t bytes;
  uint32_t count;
  uint32_t unclipped; /* updates whose devices did not clip (adaptive clipping's bit) */
  bool stored;        /* the round's updates are written to round_updates (aggregate.h) */
  waiter *waiters;
  struct batch *next;
} batch;

/* A check-in's claim of a place in a round (fl__agg_assign). */
typedef struct claim {
  uint64_t round_id, device_id;
  fl_agg_assign_done done;
  void *arg;
  int result;
  struct claim *next;
} claim;

struct fl_agg {
  fl_srv *s;
  pthread_mutex_t mu;
  pthread_cond_t work; /* committer: batches are pending or stop */
  batch *pending;
  claim *claims; /* in arrival order reversed (pushed in front) */
  uint32_t n_claims;
  fl_pace pace; /* load sizing (cfg.commit_auto), rounds/pace.h */
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
  *out = a;
  return FL_OK;
}

void fl__agg_free(fl_agg *a) {
  if (a == NULL)
    return;
  pthread_mutex_destroy(&a->mu);
  pthread_cond_destroy(&a->work);
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

/* A DP plan's updates count once each, clipped (docs/PRIVACY.md); the others by their sample
 * count. fold_scale multiplies the delta, fold_weight is what the batch's weight adds. An
 * async update's delta is also scaled by its staleness weight (rounds/staleness.h). */
static double fold_scale(const fl_upload *u) {
  return fl__staleness_fold_scale(u->dp_scale > 0 ? u->dp_scale : (double)u->samples,
                                  u->stale_weight);
}
static double fold_weight(const fl_upload *u) {
  return u->dp_scale > 0 || u->masked != NULL ? 1.0 : (double)u->samples;
}

/* The fold of one upload into a batch's sum: float32 deltas, or a masked input's words mod
 * 2^32 (the sum's storage reinterpreted through memcpy; close reads it back the same way). */
static void fold_upload(const fl_upload *u, float *sum) {
  if (u->masked == NULL) {
    for (size_t i = 0; i < u->mi->n_tensors; i++)
      fl__tensor_fold(u->delta[i], (float)fold_scale(u), sum + u->mi->tensors[i].offset);
    return;
  }
  for (size_t i = 0; i < u->mi->n_params; i++) {
    const uint8_t *b = u->masked + 4 * i;
    uint32_t acc,
        w = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    memcpy(&acc, sum + i, sizeof acc);
    acc += w;
    memcpy(sum + i, &acc, sizeof acc);
  }
}

/* Uploads waiting (under a->mu). */
static uint32_t pending_uploads(const fl_agg *a) {
  uint32_t n = 0;
  for (const batch *b = a->pending; b != NULL; b = b->next)
    n += b->count;
  return n;
}

void fl__agg_submit(fl_agg *a, const fl_upload *u, fl_agg_done done, void *arg) {
  waiter *w = calloc(1, sizeof *w);
  int result = FL_AGG_RETRY;
  if (w == NULL)
    goto now;
  *w = (waiter){.u = u,
                .done = done,
                .arg = arg,
                .device_id = u->device_id,
                .samples = u->samples,
                .bytes = u->bytes,
                .loss = u->loss};
  memcpy(w->digest, u->digest, sizeof w->digest);
  pthread_mutex_lock(&a->mu);
  if (a->stop) {
    pthread_mutex_unlock(&a->mu);
    result = FL_AGG_SHUTDOWN;
    goto now;
  }
  batch *b = find_batch(a, u->round_id, u->mi->n_params);
  if (b == NULL || pending_for(b, u->device_id)) {
    pthread_mutex_unlock(&a->mu);
    result = b == NULL ? FL_AGG_RETRY : FL_AGG_IN_PROGRESS;
    goto now;
  }
  fl__pace_upload(&a->pace, fl__mono_s(), pending_uploads(a));
  double fw = fold_weight(u);
  fold_upload(u, b->sum);
  b->stored |= u->stored;
  b->weight += fw;
  b->loss_sum += u->loss * fw;
  b->bytes += u->bytes;
  b->unclipped += u->unclipped;
  b->count++;
  w->next = b->waiters;
  b->waiters = w;
  pthread_cond_signal(&a->work);
  pthread_mutex_unlock(&a->mu);
  return;
now:
  free(w);
  done(arg, result, 0);
}

void fl__agg_assign(fl_agg *a, uint64_t round_id, uint64_t device_id, fl_agg_assign_done done,
                    void *arg) {
  claim *c = calloc(1, sizeof *c);
  if (c == NULL) {
    done(arg, -1);
    return;
  }
  *c = (claim){.round_id = round_id, .device_id = device_id, .done = done, .arg = arg};
  pthread_mutex_lock(&a->mu);
  if (a->stop) {
    pthread_mutex_unlock(&a->mu);
    free(c);
    done(arg, -1);
    return;
  }
  c->next = a->claims;
  a->claims = c;
  fl__pace_claim(&a->pace, fl__mono_s(), a->n_claims++);
  pthread_cond_signal(&a->work);
  pthread_mutex_unlock(&a->mu);
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
 * counts, losses, bytes, task rounds, staleness). Numbers and hex only, so no quoting. */
#define N_ARRAYS 7
static int build_arrays(const batch *b, sbuf arr[N_ARRAYS]) {
  int rc = 0;
  for (int k = 0; k < N_ARRAYS; k++)
    rc |= sb_printf(&arr[k], "{");
  const char *sep = "";
  for (const waiter *w = b->waiters; w != NULL && rc == 0; w = w->next) {
    char hex[2 * FL_SHA256_LEN + 1];
    if (w->replayed || w->over)
      continue;
    fl__hex(w->digest, sizeof w->digest, hex);
    rc |= sb_printf(&arr[0], "%s%" PRIu64, sep, w->device_id);
    rc |= sb_printf(&arr[1], "%s%s", sep, hex);
    rc |= sb_printf(&arr[2], "%s%" PRIu64, sep, w->samples);
    rc |= sb_printf(&arr[3], "%s%.9g", sep, w->loss);
    rc |= sb_printf(&arr[4], "%s%" PRIu64, sep, w->bytes);
    rc |= sb_printf(&arr[5], "%s%" PRIu64, sep, w->u->task_round_id);
    rc |= sb_printf(&arr[6], "%s%" PRIu32, sep, w->u->tau);
    sep = ",";
  }
  for (int k = 0; k < N_ARRAYS; k++)
    rc |= sb_printf(&arr[k], "}");
  return rc;
}

static void refold(batch *b);

/* Step 1 of the transaction: count the batch into the round if it is still open, up to its
 * target. The row lock (FOR UPDATE, then the UPDATE) makes the check and the count atomic
 * across replicas' batches: uploads past the target are marked over (the earliest arrivals
 * are kept), taken out of the sum and refused. Returns 1 when counted (some may be over), 2
 * when the round is already at its target (all over, nothing to count), 0 when the round is
 * no longer open (or, aggregating securely, no longer collecting masked inputs: the end of
 * that phase takes the same row lock, secagg/phases.c), -1 on error. */
static int bump_round(PGconn *c, batch *b, uint32_t *accepted, uint32_t *target) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, b->round_id);
  PGresult *r = fl__pg_exec_prep(c, "fl_batch_round_lock",
                                 "SELECT accepted, target FROM rounds"
                                 " WHERE round_id = $1 AND state = 'open'"
                                 " AND coalesce(secagg_phase, 'masked') = 'masked' FOR UPDATE",
                                 &p, false, NULL);
  if (r == NULL)
    return -1;
  if (PQntuples(r) != 1) {
    PQclear(r);
    return 0;
  }
  *accepted = (uint32_t)fl__pg_u64(r, 0, 0);
  *target = (uint32_t)fl__pg_u64(r, 0, 1);
  PQclear(r);
  uint32_t room = *accepted < *target ? *target - *accepted : 0;
  if (b->count > room) {
    /* Waiters are pushed in front: the last `room` of the list arrived first. */
    uint32_t i = 0;
    for (waiter *w = b->waiters; w != NULL; w = w->next)
      if (!w->replayed)
        w->over = i++ < b->count - room;
    refold(b);
  }
  if (b->count == 0)
    return 2;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, b->round_id);
  fl__pgp_u64(&p, b->count);
  r = fl__pg_exec_prep(c, "fl_batch_round",
                       "UPDATE rounds SET accepted = accepted + $2 WHERE round_id = $1"
                       " RETURNING accepted",
                       &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = PQntuples(r) == 1 ? 1 : -1;
  if (rc == 1)
    *accepted = (uint32_t)fl__pg_u64(r, 0, 0);
  PQclear(r);
  return rc;
}

/* Step 2: the acceptance rows. Returns 1 when all were new, 0 on a duplicate, -1 on error. */
static int insert_acceptances(fl_agg *a, PGconn *c, const batch *b) {
  sbuf arr[N_ARRAYS] = {0};
  fl_pgp p;
  int rc = -1;
  if (build_arrays(b, arr))
    goto out;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, b->round_id);
  for (int k = 0; k < 5; k++)
    fl__pgp_text(&p, arr[k].p);
  fl__pgp_text(&p, a->s->cfg.replica_id);
  for (int k = 5; k < N_ARRAYS; k++)
    fl__pgp_text(&p, arr[k].p);
  PGresult *r = fl__pg_exec_prep(
      c, "fl_batch_acceptances",
      "INSERT INTO acceptances (round_id, device_id, digest, sample_count, loss, bytes, replica,"
      " task_round_id, staleness)"
      " SELECT $1, d, decode(h, 'hex'), n, l, b, $7, nullif(tr, 0), st"
      " FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::float8[], $6::bigint[],"
      "  $8::bigint[], $9::int[]) AS t(d, h, n, l, b, tr, st)"
      " ORDER BY d ON CONFLICT DO NOTHING",
      &p, false, NULL);
  if (r != NULL) {
    rc = strtoul(PQcmdTuples(r), NULL, 10) == b->count ? 1 : 0;
    PQclear(r);
  }
out:
  for (int k = 0; k < N_ARRAYS; k++)
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
  fl__pgp_u64(&p, b->unclipped);
  PGresult *r = fl__pg_exec_prep(c, "fl_batch_partial",
                                 "INSERT INTO partials (round_id, replica, sum, weight, count,"
                                 " loss_sum, bytes, unclipped)"
                                 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                                 &p, false, NULL);
  if (r == NULL)
    return -1;
  PQclear(r);
  return 0;
}

/* Step 3 for a stored aggregator: each update as sent, keyed like its acceptance row (which
 * step 2 has just inserted, so these rows are new). One prepared INSERT per update: the
 * blobs go as binary parameters, not through an array literal. */
static int insert_updates(PGconn *c, const batch *b) {
  for (const waiter *w = b->waiters; w != NULL; w = w->next) {
    uint8_t *blob = NULL;
    size_t len = 0;
    fl_pgp p;
    if (w->replayed || w->over) /* neither has an acceptance row: not counted, not stored */
      continue;
    if (fl__delta_pack(w->u->delta, w->u->mi->n_tensors, &blob, &len, NULL) != FL_OK)
      return -1;
    fl__pgp_init(&p);
    fl__pgp_u64(&p, b->round_id);
    fl__pgp_u64(&p, w->device_id);
    fl__pgp_bin(&p, blob, len);
    PGresult *r = fl__pg_exec_prep(c, "fl_batch_update",
                                   "INSERT INTO round_updates (round_id, device_id, delta)"
                                   " VALUES ($1, $2, $3)",
                                   &p, false, NULL);
    fl__free(NULL, blob);
    if (r == NULL)
      return -1;
    PQclear(r);
  }
  return 0;
}

/* Step 4: the training statistics of the accepted updates that carry them (drift/drift.h),
 * pooled into the version's reference at close. */
static int insert_train_stats(PGconn *c, const batch *b) {
  for (const waiter *w = b->waiters; w != NULL; w = w->next)
    if (!w->replayed && !w->over && w->u->train_stats != NULL &&
        fl__drift_store_train(c, b->round_id, w->device_id, w->u->train_stats))
      return -1;
  return 0;
}

/* Sums the batch again from its waiters that are not replayed (their submitters keep the
 * decoded updates until their completion is called). */
static void refold(batch *b) {
  memset(b->sum, 0, b->n_params * sizeof *b->sum);
  b->weight = b->loss_sum = 0;
  b->bytes = 0;
  b->count = b->unclipped = 0;
  for (const waiter *w = b->waiters; w != NULL; w = w->next) {
    if (w->replayed || w->over)
      continue;
    double fw = fold_weight(w->u);
    fold_upload(w->u, b->sum);
    b->weight += fw;
    b->loss_sum += w->loss * fw;
    b->bytes += w->bytes;
    b->unclipped += w->u->unclipped;
    b->count++;
  }
}

/* Step 0 of the transaction: the uploads' nonces (inserted, like the acceptances, in key
 * order, so that two replicas' batches wait for each other instead of deadlocking). The primary key
 * of nonces is the arbiter between replicas (and against the other device requests): an upload
 * whose nonce is already there is a replay, marked and taken out of the batch, which is summed
 * again without it; the rest of the batch commits. Returns 0, or -1 on error. */
static int insert_nonces(PGconn *c, batch *b) {
  sbuf ids = {0}, hexes = {0};
  fl_pgp p;
  int rc = -1;
  const char *sep = "";
  uint64_t *fresh = NULL;
  PGresult *r = NULL;
  if (sb_printf(&ids, "{") || sb_printf(&hexes, "{"))
    goto out;
  for (const waiter *w = b->waiters; w != NULL; w = w->next) {
    char hex[2 * FL_NONCE_MAX + 1];
    fl__hex(w->u->nonce, w->u->nonce_len, hex);
    if (sb_printf(&ids, "%s%" PRIu64, sep, w->device_id) || sb_printf(&hexes, "%s%s", sep, hex))
      goto out;
    sep = ",";
  }
  if (sb_printf(&ids, "}") || sb_printf(&hexes, "}"))
    goto out;
  fl__pgp_init(&p);
  fl__pgp_text(&p, ids.p);
  fl__pgp_text(&p, hexes.p);
  r = fl__pg_exec_prep(
      c, "fl_batch_nonces",
      "INSERT INTO nonces (device_id, nonce)"
      " SELECT d, decode(h, 'hex') FROM unnest($1::bigint[], $2::text[]) AS t(d, h)"
      " ORDER BY d, h ON CONFLICT DO NOTHING RETURNING device_id",
      &p, false, NULL);
  if (r == NULL)
    goto out;
  int n = PQntuples(r);
  if ((uint32_t)n != b->count) {
    /* A batch holds one upload per device (fl__agg_submit), so the device id names it. */
    fresh = calloc(n ? (size_t)n : 1, sizeof *fresh);
    if (fresh == NULL)
      goto out;
    for (int i = 0; i < n; i++)
      fresh[i] = fl__pg_u64(r, i, 0);
    for (waiter *w = b->waiters; w != NULL; w = w->next) {
      w->replayed = true;
      for (int i = 0; i < n && w->replayed; i++)
        w->replayed = fresh[i] != w->device_id;
    }
    refold(b);
  }
  rc = 0;
out:
  PQclear(r);
  free(fresh);
  free(ids.p);
  free(hexes.p);
  return rc;
}

/* One transaction for one batch; returns the result for all of its waiters that are not
 * marked replayed. */
static int commit_batch(fl_agg *a, batch *b, uint32_t *accepted) {
  uint32_t target = 0;
  int result = FL_AGG_RETRY;
  /* The step that failed and PostgreSQL's message go into the log: "result=3" alone (as it
   * was) cannot tell a lost database from a duplicate acceptance or a constraint. */
  const char *step = "pool";
  PGconn *c = fl__pool_get(a->s->pool);
  if (c == NULL)
    goto failed;
  step = "begin";
  if (fl__pg_cmd(c, "BEGIN"))
    goto failed;
  step = "nonces";
  if (insert_nonces(c, b))
    goto failed;
  if (b->count == 0)
    goto out; /* every upload was a replay: nothing to write */
  step = "round";
  int rc = bump_round(c, b, accepted, &target);
  if (rc == 0)
    result = FL_AGG_ROUND_CLOSED;
  if (rc < 0)
    goto failed;
  if (rc == 0)
    goto out;
  if (rc == 2) {
    /* Only the nonces to commit: those over the target are recorded like accepted ones. */
    step = "commit";
    if (fl__pg_cmd(c, "COMMIT"))
      goto failed;
    result = FL_AGG_TARGET_REACHED;
    goto out;
  }
  /* A duplicate means another replica acknowledged one of these devices meanwhile: nothing
   * of this batch is committed and every device retries (the duplicate one then gets its
   * precise answer from the acceptance row). */
  step = "acceptances";
  rc = insert_acceptances(a, c, b);
  if (rc == 0)
    step = "acceptances (a concurrent duplicate)";
  if (rc != 1)
    goto failed;
  step = "partial";
  if (insert_partial(a, c, b))
    goto failed;
  step = "stored updates";
  if (b->stored && insert_updates(c, b))
    goto failed;
  step = "drift statistics";
  if (insert_train_stats(c, b))
    goto failed;
  step = "commit";
  if (fl__pg_cmd(c, "COMMIT"))
    goto failed;
  result = FL_AGG_OK;
  if (*accepted >= target)
    fl__rounds_poke(a->s->rounds);
  goto out;
failed:
  fl__slog(FL_LOG_WARN, "batch_failed", "round=%" PRIu64 " updates=%u step=%s error=%s",
           b->round_id, b->count, fl__slog_str(step),
           fl__slog_str(c != NULL ? PQerrorMessage(c) : "no database connection"));
out:
  if (c != NULL)
    fl__pool_put(a->s->pool, c); /* rolls back an unfinished transaction */
  return result;
}

/* The claims of one round (those in list with this round id) in one statement, which is its
 * own transaction: the room left under the round's row lock, the new assignment rows, the
 * round's count; its commit is synchronous (the server's default), so that a device is told
 * its task only once its assignment is durable. Sets each claim's result (1 assigned now or
 * before, 0 no room or closed); on error they stay -1. */
static void assign_round(PGconn *c, uint64_t round_id, claim *list) {
  sbuf ids = {0};
  fl_pgp p;
  const char *sep = "";
  int bad = sb_printf(&ids, "{");
  for (const claim *k = list; k != NULL && !bad; k = k->next)
    if (k->round_id == round_id) {
      bad = sb_printf(&ids, "%s%" PRIu64, sep, k->device_id);
      sep = ",";
    }
  if (bad || sb_printf(&ids, "}")) {
    free(ids.p);
    return;
  }
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_text(&p, ids.p);
  /* The array is newest first (claims are pushed in front): the oldest claims get the room.
   * A device assigned before (by the draw, or a race through another replica) keeps its
   * place. */
  PGresult *r = fl__pg_exec_prep(
      c, "fl_claims_assign",
      "WITH r AS (SELECT greatest(max_assign - assigned, 0) AS room FROM rounds"
      "  WHERE round_id = $1 AND state = 'open' FOR UPDATE),"
      " want AS (SELECT d, max(o) AS o FROM unnest($2::bigint[]) WITH ORDINALITY AS t(d, o)"
      "  GROUP BY d),"
      " had AS (SELECT a.device_id FROM assignments a"
      "  WHERE a.round_id = $1 AND a.device_id = ANY ($2::bigint[])),"
      " ins AS (INSERT INTO assignments (round_id, device_id)"
      "  SELECT $1, p.d FROM (SELECT d FROM want WHERE d NOT IN (SELECT device_id FROM had)"
      "   ORDER BY o DESC LIMIT (SELECT coalesce(max(room), 0) FROM r)) p"
      "  ORDER BY p.d ON CONFLICT DO NOTHING RETURNING device_id),"
      " upd AS (UPDATE rounds SET assigned = assigned + (SELECT count(*) FROM ins)"
      "  WHERE round_id = $1 AND EXISTS (SELECT 1 FROM ins))"
      " SELECT device_id FROM had UNION ALL SELECT device_id FROM ins",
      &p, false, NULL);
  free(ids.p);
  if (r == NULL) {
    fl__slog(FL_LOG_WARN, "assign_batch_failed", "round=%" PRIu64 " error=%s", round_id,
             fl__slog_str(PQerrorMessage(c)));
    return;
  }
  for (claim *k = list; k != NULL; k = k->next) {
    if (k->round_id != round_id)
      continue;
    k->result = 0;
    for (int i = 0; i < PQntuples(r) && k->result == 0; i++)
      k->result = fl__pg_u64(r, i, 0) == k->device_id;
  }
  PQclear(r);
}

/* Every claim that waited: one statement per round (rounds in id order, so that two
 * replicas' committers lock them in the same order), then each claim's completion. */
static void commit_claims(fl_agg *a, claim *list) {
  uint64_t done_upto = 0;
  PGconn *c = fl__pool_get(a->s->pool);
  for (claim *k = list; k != NULL; k = k->next)
    k->result = -1;
  for (;;) {
    uint64_t next = 0; /* the smallest round id above done_upto */
    for (const claim *k = list; k != NULL; k = k->next)
      if (k->round_id > done_upto && (next == 0 || k->round_id < next))
        next = k->round_id;
    if (next == 0 || c == NULL)
      break;
    assign_round(c, next, list);
    done_upto = next;
  }
  if (c != NULL)
    fl__pool_put(a->s->pool, c);
  for (claim *k = list, *next; k != NULL; k = next) {
    next = k->next;
    k->done(k->arg, k->result);
    free(k);
  }
}

/* Uploads and claims waiting (under a->mu). */
static uint32_t pending_count(const fl_agg *a) {
  return a->n_claims + pending_uploads(a);
}

static struct timespec deadline_in(double s) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  long ns = ts.tv_nsec + (long)((s - (double)(long)s) * 1e9);
  ts.tv_sec += (time_t)s + ns / 1000000000L;
  ts.tv_nsec = ns % 1000000000L;
  return ts;
}

/* Gathers a batch (called and returning with a->mu held): uploads arriving meanwhile share the
 * transaction. The batch is sized by load: it commits once FL_BATCH_FULL uploads wait, or
 * when an interval (--commit-interval) passes without a new arrival, or at the latest after
 * FL_BATCH_MAX_WAIT_S (or one interval, when that is longer). An idle coordinator answers one
 * upload after one interval as before; under a round's burst the batches grow, and with them the
 * partial rows shrink in number: each is one vector written to the WAL (850 KB for a 2NN), whatever
 * the batch's size. */
#define FL_BATCH_FULL 64

static void gather(fl_agg *a) {
  double iv = a->s->cfg.commit_interval_ms / 1000.0, t0 = fl__mono_s();
  double cap = iv > FL_BATCH_MAX_WAIT_S ? iv : FL_BATCH_MAX_WAIT_S;
  uint32_t seen = pending_count(a);
  double last = t0;
  while (!a->stop && seen < FL_BATCH_FULL) {
    double now = fl__mono_s(), until = last + iv;
    if (until > t0 + cap)
      until = t0 + cap;
    if (now >= until)
      break;
    struct timespec ts = deadline_in(until - now);
    pthread_cond_timedwait(&a->work, &a->mu, &ts);
    uint32_t n = pending_count(a);
    if (n > seen)
      last = fl__mono_s(); /* an arrival: the interval starts again */
    seen = n;
  }
}

/* Load-sized gathering (cfg.commit_auto; called and returning with a->mu held): waits until
 * the uploads are due (FL_BATCH_FULL of them, or pace.h's rule) or the claims are
 * (FL_BATCH_FULL, or pace.h's rule). Returns whether the uploads are due; false: only the claims
 * are. */
static bool gather_auto(fl_agg *a) {
  for (;;) {
    double now = fl__mono_s(), until = 0;
    uint32_t n = pending_uploads(a);
    if (a->stop || n >= FL_BATCH_FULL || (n > 0 && now >= fl__pace_uploads_due(&a->pace)))
      return true;
    if (n > 0)
      until = fl__pace_uploads_due(&a->pace);
    if (a->n_claims > 0) {
      double due = fl__pace_claims_due(&a->pace);
      if (a->n_claims >= FL_BATCH_FULL || now >= due)
        return false;
      if (until == 0 || due < until)
        until = due;
    }
    if (until == 0)
      return true; /* nothing waits */
    struct timespec ts = deadline_in(until - now);
    pthread_cond_timedwait(&a->work, &a->mu, &ts);
  }
}

static void *committer(void *arg) {
  fl_agg *a = arg;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (a->pending == NULL && a->claims == NULL && !a->stop)
      pthread_cond_wait(&a->work, &a->mu);
    if (a->pending == NULL && a->claims == NULL)
      break;
    bool uploads = true;
    if (a->s->cfg.commit_auto && !a->stop)
      uploads = gather_auto(a);
    else if (a->s->cfg.commit_interval_ms && !a->stop)
      gather(a);
    batch *list = uploads ? a->pending : NULL;
    claim *claims = a->claims;
    if (uploads)
      a->pending = NULL;
    a->claims = NULL;
    a->n_claims = 0;
    pthread_mutex_unlock(&a->mu);
    /* Assignments first: a check-in waits on them, and their transaction is small. */
    if (claims != NULL)
      commit_claims(a, claims);
    for (batch *b = list; b != NULL; b = b->next) {
      uint32_t accepted = 0;
      double t0 = fl__mono_s();
      int result = commit_batch(a, b, &accepted);
      fl__metrics_commit(a->s->metrics, b->count, fl__mono_s() - t0);
      fl__slog(result == FL_AGG_OK ? FL_LOG_DEBUG : FL_LOG_WARN, "batch_commit",
               "round=%" PRIu64 " updates=%u result=%d accepted=%u", b->round_id, b->count, result,
               accepted);
      /* The batch is detached: its waiters are the committer's alone. After done() the
       * submitter may free what w->u points to, so w is not read again but for its link. */
      for (waiter *w = b->waiters, *next; w != NULL; w = next) {
        next = w->next;
        w->done(w->arg,
                w->replayed                      ? FL_AGG_REPLAYED
                : w->over && result == FL_AGG_OK ? FL_AGG_TARGET_REACHED
                                                 : result,
                accepted);
        free(w);
      }
      b->waiters = NULL;
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
