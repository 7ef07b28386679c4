/*
 * Load-sized group commits (--commit-interval=auto): when the uploads and the check-ins'
 * claims waiting in the accumulator (aggregate.c) are due to commit. Pure arithmetic over
 * arrival times in monotonic seconds, apart from the accumulator's locking so that it can be
 * tested alone (tests/unit/test_pace.c); the caller holds the lock that guards the struct.
 *
 * The batch that holds an upload gathers for about FL_AUTO_WANT gaps between uploads as the
 * last ones arrived, at most FL_AUTO_MAX_WAIT_S, or until FL_AUTO_IDLE gaps pass without a new
 * one; an upload that arrives when uploads are rarer than FL_AUTO_MAX_WAIT_S / 4 apart commits
 * after FL_AUTO_FLOOR_S (waiting would gather next to nothing). A batch's partial row is one
 * vector in the WAL (850 KB for a 2NN) whatever its count, so the WAL per round falls with the
 * batches' size: 32 uploads a batch give about 27 MB per 1000 uploads of a 2NN. Claims wait
 * FL_AUTO_FLOOR_S without a new one, at most FL_BATCH_MAX_WAIT_S after the first: a check-in
 * waits on its claim, so claims do not wait for the uploads' batch.
 */
#ifndef FL_SERVER_ROUNDS_PACE_H
#define FL_SERVER_ROUNDS_PACE_H

#include <stdint.h>

#define FL_AUTO_WANT 32
#define FL_AUTO_MAX_WAIT_S 1.0
#define FL_AUTO_FLOOR_S 0.002
/* The idle rule is for senders that wait for their answers (K connections can have at most K
 * uploads waiting): once they have all sent, nothing more comes until the batch commits.
 * Devices that send on their own arrive at random, and a gap of FL_AUTO_IDLE times the mean is
 * rare (0.03% for independent arrivals; fl-sim's fleet arrives in bursts: with 4 gaps its round
 * wrote 54 MB of WAL, twice the partial rows). */
#define FL_AUTO_IDLE 8
/* The longest a claim waits for its batch, and a fixed interval's batch for new arrivals. */
#define FL_BATCH_MAX_WAIT_S 0.025

typedef struct fl_pace {
  /* The oldest waiting upload, the last arrival and the smoothed gap between uploads (0: none
   * seen yet); the oldest waiting claim and the last one. */
  double first_upload, last_upload, gap;
  double first_claim, last_claim;
} fl_pace;

/* An upload arrived at now, with `waiting` uploads already waiting for their commit. Only gaps
 * inside a gathering batch count: the silence before a batch's first upload may be the previous
 * batch's own wait (senders that wait for their answers send nothing until it commits), and
 * counting it would lengthen the next wait, and so on. The gap is smoothed (a fifth of each new
 * one), each counted at most FL_AUTO_MAX_WAIT_S, so that an idle pause is forgotten after a few
 * arrivals. */
void fl__pace_upload(fl_pace *p, double now, uint32_t waiting);
/* A claim arrived at now, with `waiting` claims already waiting. */
void fl__pace_claim(fl_pace *p, double now, uint32_t waiting);
/* When the waiting uploads (at least one) are due. */
double fl__pace_uploads_due(const fl_pace *p);
/* When the waiting claims (at least one) are due. */
double fl__pace_claims_due(const fl_pace *p);

#endif
