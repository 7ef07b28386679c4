/*
 * Streaming weighted FedAvg with group commit (aggregate.c).
 *
 * A request folds its verified update into the pending batch of its round
 * (sum += sample_count * delta, in float32) and is parked (no thread waits for it). The
 * committer thread takes all pending batches and writes each in one transaction: the round's
 * accepted count, one acceptance row per update (unique per device and round), and one partials
 * row with the batch's sum vector. Only after COMMIT are the parked requests told their result
 * (a completion callback) and answered, so an acknowledged update is durable;
 * a crash loses only unacknowledged ones, which devices retry. No list of whole updates is
 * ever kept: memory is one vector per round with pending uploads.
 *
 * Rounds of a stored aggregator (aggregator.h: median, Krum...) need every update at close:
 * for them the same transaction also writes each update as sent (fl__delta_pack) to
 * round_updates, so an acknowledged update is durable there too; close.c reads and removes
 * them. The partial sums are still written: they carry the round's counts, loss and bytes.
 *
 * A DP plan's update is folded clipped and with weight 1 instead (fl_upload.dp_scale).
 */
#ifndef FL__AGGREGATE_H
#define FL__AGGREGATE_H

#include "fl/v1/fleetlearn.pb-c.h"
#include "registry/models.h"
#include "rounds/plan.h"
#include "server.h"

typedef struct fl_upload {
  uint64_t round_id, device_id;
  uint8_t digest[FL_SHA256_LEN];
  uint64_t samples;
  double loss;
  uint64_t bytes;
  const fl_model_info *mi;
  Fl__V1__Tensor *const *delta; /* mi->n_tensors tensors, already validated */
  const uint8_t *nonce;         /* the request's nonce, recorded in the batch's transaction */
  size_t nonce_len;
  bool stored; /* the round's aggregator is a stored one: the update itself is committed too */
  /* A DP plan (docs/PRIVACY.md): > 0, the update is folded times dp_scale = min(1, C / norm)
   * (clipped again here, whatever its encoding or local noise) and counts 1 in the weight;
   * 0: folded times its sample count, which is its weight. */
  double dp_scale;
  bool unclipped; /* the device reported it did not clip (adaptive clipping's bit) */
  const Fl__V1__DriftStats *train_stats; /* checked; NULL when the upload has none */
  /* A secure-aggregation round's masked input (server/secagg/): mi->n_params uint32 LE words,
   * added mod 2^32 into the batch's sum (whose floats' storage then holds words), weight 1;
   * delta is unused. NULL for every other round. */
  const uint8_t *masked;
  /* An async plan's update (rounds/async.h): round_id is the buffer it is folded into,
   * task_round_id its task's round, tau its staleness; the delta's factor is multiplied by
   * stale_weight = s(tau), the weight is not (rounds/staleness.h). task_round_id 0: sync. */
  uint64_t task_round_id;
  uint32_t tau;
  double stale_weight;
} fl_upload;

enum {
  FL_AGG_OK = 0,
  FL_AGG_ROUND_CLOSED = 1, /* the round closed before the batch committed */
  FL_AGG_IN_PROGRESS = 2,  /* an upload of this device for this round is already pending */
  FL_AGG_RETRY = 3,        /* not committed (database unavailable or a concurrent duplicate) */
  FL_AGG_SHUTDOWN = 4,
  FL_AGG_REPLAYED = 5,      /* the nonce was recorded meanwhile (by another request or replica) */
  FL_AGG_TARGET_REACHED = 6 /* the round has its target count: not folded (nonce recorded) */
};

int fl__agg_new(fl_agg **out, fl_srv *s);
int fl__agg_start(fl_agg *a);
/* Commits what is pending, answers every waiter and joins the committer. */
void fl__agg_stop(fl_agg *a);
void fl__agg_free(fl_agg *a);

/* The outcome of a submitted upload: an FL_AGG_* result and the round's accepted count after
 * its batch (0 when it was not committed). Called once per submit, on the committer thread
 * (or in fl__agg_submit itself when the upload is not folded): it must not block, since every
 * other waiter of the batch and the next batches wait for it. */
typedef void (*fl_agg_done)(void *arg, int result, uint32_t accepted);

/* Folds u into its round's pending batch and returns at once; done(arg, ...) follows once the
 * batch's transaction has committed or failed, so that a request is answered 200 only for an
 * update that is durable, without a thread waiting for it (http.c suspends the connection).
 * u and everything it points to must stay valid until done is called: a replay found at
 * commit refolds the batch from its other uploads, and a stored aggregator writes them. */
void fl__agg_submit(fl_agg *a, const fl_upload *u, fl_agg_done done, void *arg);

/* Assignments of check-ins, group-committed like uploads: a check-in that would take a place
 * in a round claims it here and is parked; the committer takes the claims that waited, one
 * statement per round (its row locked and updated once, the assignment rows, a synchronous
 * commit), and then calls done(arg, result): 1 assigned
 * (durable, or already assigned before), 0 the round is full or no longer open, -1 not
 * committed (database). The same rules as uploads: done runs on the committer's thread (or in
 * fl__agg_assign itself when stopping) and must not block. */
typedef void (*fl_agg_assign_done)(void *arg, int result);
void fl__agg_assign(fl_agg *a, uint64_t round_id, uint64_t device_id, fl_agg_assign_done done,
                    void *arg);

#endif
