/*
 * Rounds (rounds.c, close.c): opening, device assignment with over-selection, and the ticker
 * thread that closes rounds that reached their target or deadline. Closing runs under a
 * PostgreSQL advisory lock and a row lock on the round, so with several replicas every round
 * closes exactly once and includes every committed (acknowledged) update.
 */
#ifndef FL__ROUNDS_H
#define FL__ROUNDS_H

#include "rounds/plan.h"
#include "server.h"
#include "store/store_pg.h"

int fl__rounds_new(fl_rounds **out, fl_srv *s);
int fl__rounds_start(fl_rounds *r);
void fl__rounds_stop(fl_rounds *r);
void fl__rounds_free(fl_rounds *r);
/* Asks the ticker to look at open rounds now (a batch reached a round's target). */
void fl__rounds_poke(fl_rounds *r);

/* Opens a round of a plan on base_version inside the caller's transaction. */
int fl__round_open(PGconn *c, uint64_t plan_id, uint64_t model_id, uint64_t base_version,
                   const fl_plan *p, uint64_t *round_id);

/* Assignments of check-ins that take a free place are group-committed with the uploads
 * (fl__agg_assign, aggregate.h); the draw assigns its drawn candidates itself. */

/* A check-in's last-seen telemetry (store/seen.h): batched and written by the ticker. */
void fl__rounds_seen(fl_rounds *r, uint64_t device_id, uint64_t running_model_id,
                     uint64_t running_version);

/* Fair selection: when the round's selection window is over (or its pool of candidates
 * filled), assigns min(free slots, candidates) of the candidates drawn uniformly with the
 * CSPRNG, in one transaction under the round's row lock (once across replicas). Called by the
 * ticker. Returns 0 (including "nothing to do") or -1 on a database error. */
int fl__round_draw(fl_srv *s, uint64_t round_id);
/* Active devices as last counted by the ticker (0 before the first count). */
uint64_t fl__rounds_fleet(fl_rounds *r);
/* Pace steering: the retry interval T (ms) for devices told to wait, with W the plan's
 * selection window (or base_ms without one), N the fleet and P = fl__plan_pool:
 * T = max(W, N * W / (1.5 * P)); retries spread over [t + T, t + 2T), mean 1.5 T, so about P
 * devices check in per W. Capped at one day. */
int64_t fl__pace_interval_ms(const fl_plan *p, int64_t base_ms, uint64_t fleet);

/* Closes, abandons or leaves the round as its state demands (close.c). Safe to call from any
 * replica at any time. Returns 0 (including "nothing to do") or -1 on a database error. */
int fl__round_try_close(fl_srv *s, uint64_t round_id);

#endif
