/*
 * Asynchronous rounds, FedBuff style (async.c; Nguyen et al. 2022). How they map onto the
 * synchronous machinery (docs/ARCHITECTURE.md, "Asynchronous rounds"):
 *
 * - A buffer is a round: an async plan has one open round at a time, whose base is the newest
 *   version, with target = min_count = buffer_size (K) and max_assign = max_concurrency. Its
 *   deadline is FL_ASYNC_BUFFER_DEADLINE_S away: a buffer is never abandoned for time, so no
 *   acknowledged update is ever dropped with it. Closing is close.c's, unchanged: once K
 *   updates are committed the ticker closes the round exactly once across replicas (advisory
 *   lock, row lock), writes version v+1 and opens the next buffer on it.
 * - Devices check in at any time and get a task on the open buffer (no selection window);
 *   the task's deadline is now + deadline_s (fl__async_task_deadline_ms).
 * - An upload names its task's round, which may have closed since. fl__async_resolve folds it
 *   into the plan's open buffer instead, with tau = buffer base - task base (staleness.h) and
 *   weight s(tau); tau > max_staleness is refused (409 too_stale). The group commit then counts
 *   it in the buffer's round like any update (its acceptance row keeps the task's round and
 *   tau), so durability and the exactly-once close are the synchronous ones.
 */
#ifndef FL__ASYNC_H
#define FL__ASYNC_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdint.h>

#include "rounds/plan.h"

/* About a century: far enough that no buffer reaches it, near enough for timestamptz. */
#define FL_ASYNC_BUFFER_DEADLINE_S 3153600000ull

/* Where an async upload goes: the buffer's round, its staleness and weight s(tau); or, when
 * it is refused, the answer (status, reason, message). */
typedef struct fl_async_target {
  uint64_t round_id, base_version;
  uint32_t tau;
  double weight;
  int status; /* 0: folded into round_id; else the HTTP status of the refusal */
  const char *reason;
  int64_t retry_after_ms; /* of a 503 refusal: when to try again (Unix ms) */
  char msg[160];
} fl_async_target;

/* The open buffer of the task round's plan, for a device whose update was trained on
 * task_base. 0 with *t filled (t->status says whether it is refused), -1 on a database error.
 * Refusals: 409 too_stale (tau > max_staleness), 409 round_closed (the plan has no open
 * buffer: stopped or done), 503 already_in_buffer (this device's update of another task is in
 * the open buffer already, one update per device per buffer: the device retries, and the
 * update goes into the next buffer). */
int fl__async_resolve(PGconn *c, uint64_t task_round_id, uint64_t device_id, uint64_t task_base,
                      const fl_plan *p, fl_async_target *t);

/* A task's deadline: the round's for a synchronous plan, now + deadline_s for an async one
 * (whose buffers have none). */
int64_t fl__async_task_deadline_ms(const fl_plan *p, int64_t round_deadline_ms, int64_t now_ms);
/* The round deadline fl__round_open sets, in seconds. */
uint64_t fl__async_round_deadline_s(const fl_plan *p);

/* Adds a closing buffer's staleness figures to its round metrics ("mode", "staleness",
 * "mean_staleness", "max_staleness_seen", "stale_updates"). No-op for a sync plan. */
int fl__async_close_metrics(PGconn *c, uint64_t round_id, const fl_plan *p, json_t *metrics);

#endif
