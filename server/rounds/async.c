/*
 * Asynchronous (FedBuff) rounds: the upload's buffer and staleness, the task deadline and the
 * buffer's metrics (async.h says how buffers map onto rounds).
 */
#include "rounds/async.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "rounds/staleness.h"
#include "server.h"
#include "store/store_pg.h"

/* The plan's open buffer (one at most: plans_one_active and close.c's finish_round open one
 * round per plan), and whether the device has an update in it. */
static const char OPEN_BUFFER[] =
    "SELECT r.round_id, r.base_version, EXISTS (SELECT 1 FROM acceptances x"
    "  WHERE x.round_id = r.round_id AND x.device_id = $2)"
    " FROM rounds r WHERE r.state = 'open'"
    " AND r.plan_id = (SELECT plan_id FROM rounds WHERE round_id = $1)"
    " ORDER BY r.round_id LIMIT 1";

/* A device that trains on while its previous update waits in the open buffer retries after
 * about a buffer's time at the rates fl-sim sees (0.3-1 s per buffer). */
#define RETRY_IN_BUFFER_MS 500

static void refuse(fl_async_target *t, int status, const char *reason) {
  t->status = status;
  t->reason = reason;
}

int fl__async_resolve(PGconn *c, uint64_t task_round_id, uint64_t device_id, uint64_t task_base,
                      const fl_plan *p, fl_async_target *t) {
  fl_pgp q;
  memset(t, 0, sizeof *t);
  fl__pgp_init(&q);
  fl__pgp_u64(&q, task_round_id);
  fl__pgp_u64(&q, device_id);
  PGresult *r = fl__pg_exec_prep(c, "fl_async_buffer", OPEN_BUFFER, &q, false, NULL);
  if (r == NULL)
    return -1;
  if (PQntuples(r) != 1) {
    PQclear(r);
    refuse(t, 409, "round_closed");
    snprintf(t->msg, sizeof t->msg, "the plan has no open buffer (stopped or done)");
    return 0;
  }
  t->round_id = fl__pg_u64(r, 0, 0);
  t->base_version = fl__pg_u64(r, 0, 1);
  bool in_buffer = strcmp(PQgetvalue(r, 0, 2), "t") == 0;
  PQclear(r);
  int64_t tau = fl__staleness_tau(t->base_version, task_base);
  if (tau < 0 || tau > (int64_t)p->max_staleness) {
    refuse(t, 409, "too_stale");
    snprintf(t->msg, sizeof t->msg,
             "base version %" PRIu64 " is %" PRId64 " versions behind the current %" PRIu64
             " (max_staleness %" PRIu32 ")",
             task_base, tau, t->base_version, p->max_staleness);
    return 0;
  }
  if (in_buffer) {
    /* The acceptance key is (round, device): a second update in one buffer could not commit
     * and would fail its whole group-commit batch, so it is refused here, precisely. */
    refuse(t, 503, "already_in_buffer");
    t->retry_after_ms = fl__now_ms() + RETRY_IN_BUFFER_MS;
    snprintf(t->msg, sizeof t->msg,
             "an update of this device is in the current buffer (round %" PRIu64 ") already",
             t->round_id);
    return 0;
  }
  t->tau = (uint32_t)tau;
  t->weight = fl__staleness_weight(&p->staleness, t->tau);
  return 0;
}

int64_t fl__async_task_deadline_ms(const fl_plan *p, int64_t round_deadline_ms, int64_t now_ms) {
  return FL_PLAN_IS_ASYNC(p) ? now_ms + (int64_t)p->deadline_s * 1000 : round_deadline_ms;
}

uint64_t fl__async_round_deadline_s(const fl_plan *p) {
  return FL_PLAN_IS_ASYNC(p) ? FL_ASYNC_BUFFER_DEADLINE_S : p->deadline_s;
}

int fl__async_close_metrics(PGconn *c, uint64_t round_id, const fl_plan *p, json_t *metrics) {
  fl_pgp q;
  char st[40];
  if (!FL_PLAN_IS_ASYNC(p))
    return 0;
  fl__pgp_init(&q);
  fl__pgp_u64(&q, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT coalesce(avg(staleness), 0)::float8,"
                            " coalesce(max(staleness), 0), count(*) FILTER (WHERE staleness > 0)"
                            " FROM acceptances WHERE round_id = $1",
                            &q, false, NULL);
  if (r == NULL)
    return -1;
  fl__staleness_name(&p->staleness, st, sizeof st);
  int bad =
      json_object_set_new(metrics, "mode", json_string("async")) |
      json_object_set_new(metrics, "staleness", json_string(st)) |
      json_object_set_new(metrics, "mean_staleness", json_real(fl__pg_f64(r, 0, 0))) |
      json_object_set_new(metrics, "max_staleness_seen",
                          json_integer((json_int_t)fl__pg_u64(r, 0, 1))) |
      json_object_set_new(metrics, "stale_updates", json_integer((json_int_t)fl__pg_u64(r, 0, 2)));
  PQclear(r);
  return bad ? -1 : 0;
}
