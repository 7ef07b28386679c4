/*
 * Streaming weighted FedAvg with group commit (aggregate.c).
 *
 * A request thread folds its verified update into the pending batch of its round
 * (sum += sample_count * delta, in float32) and blocks. The committer thread takes all pending
 * batches and writes each in one transaction: the round's accepted count, one acceptance row
 * per update (unique per device and round), and one partials row with the batch's sum vector.
 * Only after COMMIT are the waiting requests answered, so an acknowledged update is durable;
 * a crash loses only unacknowledged ones, which devices retry. No list of whole updates is
 * ever kept: memory is one vector per round with pending uploads.
 */
#ifndef FL__AGGREGATE_H
#define FL__AGGREGATE_H

#include "fl/v1/fleetlearn.pb-c.h"
#include "models.h"
#include "server.h"

typedef struct fl_upload {
  uint64_t round_id, device_id;
  uint8_t digest[FL_SHA256_LEN];
  uint64_t samples;
  double loss;
  uint64_t bytes;
  const fl_model_info *mi;
  Fl__V1__Tensor *const *delta; /* mi->n_tensors tensors, already validated */
} fl_upload;

enum {
  FL_AGG_OK = 0,
  FL_AGG_ROUND_CLOSED = 1, /* the round closed before the batch committed */
  FL_AGG_IN_PROGRESS = 2,  /* an upload of this device for this round is already pending */
  FL_AGG_RETRY = 3,        /* not committed (database unavailable or a concurrent duplicate) */
  FL_AGG_SHUTDOWN = 4
};

int fl__agg_new(fl_agg **out, fl_srv *s);
int fl__agg_start(fl_agg *a);
/* Commits what is pending, answers every waiter and joins the committer. */
void fl__agg_stop(fl_agg *a);
void fl__agg_free(fl_agg *a);

/* Folds and waits for the commit. *accepted receives the round's accepted count after it. */
int fl__agg_submit(fl_agg *a, const fl_upload *u, uint32_t *accepted);

#endif
