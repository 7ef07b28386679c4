/*
 * Secure aggregation in the coordinator (SecAgg+, docs/SECAGG.md "Protocol"): the phases of a
 * round whose plan asks for it, their device endpoints and the unmasking at close.
 *
 * phases.c: a round opens in phase `keys` (fl__secagg_round_open); the ticker (fl__secagg_tick)
 * ends each phase once every expected device has sent its message or the phase's deadline (the
 * plan's deadline_s) has passed: keys -> shares (participants numbered, the neighbour graph
 * drawn), shares -> masked (U1: the participants whose shares arrived and that keep at least t
 * live neighbours), masked -> unmask (U2: the masked inputs committed), unmask -> ready (every
 * needed secret has t shares). Below the threshold the phase becomes `abandoned` with its
 * reason. Each transition is one transaction under the round's row lock, which the group
 * commit also takes (rounds/aggregate.c), so a masked input either is in the sum and in U2 or
 * is refused. Everything is in PostgreSQL: a restarted coordinator goes on where it was.
 *
 * unmask.c: at close (rounds/close.c), the sum of the partials mod 2^32 with the self masks of
 * U2 and the pairwise masks of U1 \ U2 removed, dequantized to the mean.
 *
 * devapi.c: POST /v1/secagg/keys, /v1/secagg/state, /v1/secagg/shares, /v1/secagg/unmask, and
 * the masked input's checks for POST /v1/updates.
 */
#ifndef FL__SECAGG_PROTOCOL_H
#define FL__SECAGG_PROTOCOL_H

#include "fl/v1/fleetlearn.pb-c.h"
#include "http/http.h"
#include "rounds/plan.h"
#include "server.h"
#include "store/store_pg.h"

/* Body limit of the share and unmasking messages: some 120 bytes per neighbour. */
#define FL_SECAGG_BODY (4u << 20)

/* In fl__round_open's transaction: the round starts in the key phase; the round's deadline is
 * kept one phase deadline past the current phase's (phases.c). */
int fl__secagg_round_open(PGconn *c, uint64_t round_id, const fl_plan *p);

/* Ticker pass: ends the phases that are due (see above). Rounds that became ready or
 * abandoned go to fl__round_try_close. */
void fl__secagg_tick(fl_srv *s);

/* For fl__round_try_close, under the round's lock: 1 ready to close, 2 abandoned (the reason
 * in why), 0 not yet, -1 database error. */
int fl__secagg_close_state(PGconn *c, uint64_t round_id, char *why, size_t n);

/* The unmasked mean of a ready round into mean[n_params] and the number of inputs in it.
 * FL_E_REFUSED (why says it) when the masks cannot be removed or the mean is outside the
 * quantization range: the round is abandoned. */
int fl__secagg_mean(PGconn *c, uint64_t round_id, const fl_plan *p, size_t n_params, float *mean,
                    uint32_t *count, char *why, size_t why_len);

/* A finished round's relayed and unmasking shares are deleted with its partial sums. */
int fl__secagg_forget(PGconn *c, uint64_t round_id);

/* POST /v1/updates of a secure-aggregation round: the device is in U1, the round collects
 * masked inputs, the words fit the model, no delta. 1 go on, 0 refused (*r), -1 database. */
int fl__secagg_upload_check(PGconn *c, uint64_t round_id, uint64_t device_id,
                            const Fl__V1__UpdateUpload *u, size_t n_params, fl_resp *r);

/* The device endpoints (devapi.c), rows of fl__dev_routes. */
void fl__secagg_h_keys(fl_srv *s, fl_req *q, fl_resp *r);
void fl__secagg_h_state(fl_srv *s, fl_req *q, fl_resp *r);
void fl__secagg_h_shares(fl_srv *s, fl_req *q, fl_resp *r);
void fl__secagg_h_unmask(fl_srv *s, fl_req *q, fl_resp *r);

/* Long polls of POST /v1/secagg/state (wait.c): the request q is parked until round_id reaches
 * the phase want (a SecAggPhase), ends, or hold_ms (at most FL_SECAGG_HOLD_MAX_MS) pass, then
 * answered with fl__secagg_state_answer. 0 parked; 1 not, fl__secagg_park_cap polls are
 * parked already (answer at once, poll later, close the connection: wait.c); -1 not (no
 * memory: answer at once). */
#define FL_SECAGG_HOLD_MAX_MS 30000u
int fl__secagg_park(fl_srv *s, fl_req *q, uint64_t round_id, uint64_t device_id, int want,
                    uint32_t hold_ms);
/* How many polls one coordinator parks at most with MHD's connection limit max_connections:
 * half, so that the other half stays free for everything else. */
uint32_t fl__secagg_park_cap(unsigned max_connections);
/* Ticker pass: resumes the parked requests whose phase came, whose round ended or whose hold
 * ran out. */
void fl__secagg_wake(fl_srv *s);
/* At shutdown, before the HTTP daemon stops: every parked request is answered now and none is
 * parked afterwards. */
void fl__secagg_wake_all(void);
/* The state answer (devapi.c) for a device, read with connection c; -1 with a 503 in *r. */
int fl__secagg_state_answer(PGconn *c, uint64_t round_id, uint64_t device_id, int wait_for,
                            fl_resp *r);

/* Members of a round as phases.c and unmask.c read them (participant order, 1..n). */
typedef struct fl_sa_member {
  uint64_t device_id;
  uint32_t participant;
  uint32_t *nbr; /* d neighbours */
  uint32_t d;
  uint8_t s_pk[32];
  bool shares_sent, alive, in_sum, unmasked;
} fl_sa_member;

/* Loads the numbered members (m[participant - 1]), n of them. -1 on error. */
int fl__secagg_members(PGconn *c, uint64_t round_id, fl_sa_member **m, uint32_t *n);
void fl__secagg_members_free(fl_sa_member *m, uint32_t n);
/* The parsed "{1,2,3}" of an int[] column into out (malloc'ed), *d entries. -1 when bad. */
int fl__secagg_int_array(const char *text, uint32_t **out, uint32_t *d);

#endif
