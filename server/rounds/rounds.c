/*
 * Round opening, assignment and the ticker. The ticker polls open rounds every tick (and at
 * once when poked by the committer) and hands each candidate to fl__round_try_close, which
 * decides under locks; the poll itself only reads.
 */
#include "rounds/rounds.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/auth.h"

struct fl_rounds {
  fl_srv *s;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop, poked, started;
  pthread_t thread;
};

int fl__round_open(PGconn *c, uint64_t plan_id, uint64_t model_id, uint64_t base_version,
                   const fl_plan *p, uint64_t *round_id) {
  fl_pgp q;
  fl__pgp_init(&q);
  fl__pgp_u64(&q, plan_id);
  fl__pgp_u64(&q, model_id);
  fl__pgp_u64(&q, base_version);
  fl__pgp_u64(&q, p->participants);
  fl__pgp_u64(&q, p->min_participants);
  fl__pgp_u64(&q, fl__plan_max_assign(p));
  fl__pgp_u64(&q, p->deadline_s);
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO rounds (plan_id, model_id, base_version, target,"
                            " min_count, max_assign, deadline_at)"
                            " VALUES ($1, $2, $3, $4, $5, $6,"
                            "  now() + make_interval(secs => $7::float8))"
                            " RETURNING round_id",
                            &q, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  *round_id = fl__pg_u64(r, 0, 0);
  PQclear(r);
  fl__slog(FL_LOG_INFO, "round_opened",
           "round=%" PRIu64 " plan=%" PRIu64 " model=%" PRIu64 " base_version=%" PRIu64,
           *round_id, plan_id, model_id, base_version);
  return FL_OK;
}

int fl__round_assign(PGconn *c, uint64_t round_id, uint64_t device_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_u64(&p, device_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT 1 FROM assignments WHERE round_id = $1 AND device_id = $2",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int n = PQntuples(r);
  PQclear(r);
  if (n > 0)
    return 1;
  /* The UPDATE takes the round's row lock, so the count check and the increment are atomic
   * across concurrent check-ins on every replica. */
  r = fl__pg_exec(c,
                  "WITH slot AS ("
                  " UPDATE rounds SET assigned = assigned + 1"
                  " WHERE round_id = $1 AND state = 'open' AND assigned < max_assign"
                  " RETURNING round_id)"
                  " INSERT INTO assignments (round_id, device_id)"
                  " SELECT round_id, $2 FROM slot ON CONFLICT DO NOTHING RETURNING 1",
                  &p, false, NULL);
  if (r == NULL)
    return -1;
  n = PQntuples(r);
  PQclear(r);
  return n > 0 ? 1 : 0;
}

/* Open rounds that may need closing, abandoning or reopening. */
static int due_rounds(PGconn *c, uint64_t **ids, int *n) {
  PGresult *r = fl__pg_exec(c,
                            "SELECT round_id FROM rounds WHERE state = 'open'"
                            " AND (accepted >= target OR deadline_at <= now())"
                            " ORDER BY round_id LIMIT 64",
                            NULL, false, NULL);
  if (r == NULL)
    return -1;
  *n = PQntuples(r);
  *ids = calloc((size_t)*n + 1, sizeof **ids);
  for (int i = 0; *ids != NULL && i < *n; i++)
    (*ids)[i] = fl__pg_u64(r, i, 0);
  PQclear(r);
  return *ids ? 0 : -1;
}

static void tick(fl_rounds *rs, double *last_prune) {
  uint64_t *ids = NULL;
  int n = 0;
  PGconn *c = fl__pool_get(rs->s->pool);
  if (c == NULL) {
    atomic_store(&rs->s->ready, false);
    return;
  }
  int rc = due_rounds(c, &ids, &n);
  if (fl__mono_s() - *last_prune > 60.0) {
    fl__auth_prune_nonces(rs->s, c);
    *last_prune = fl__mono_s();
  }
  atomic_store(&rs->s->ready, rc == 0);
  fl__pool_put(rs->s->pool, c);
  for (int i = 0; i < n; i++)
    fl__round_try_close(rs->s, ids[i]);
  free(ids);
}

static void *ticker(void *arg) {
  fl_rounds *rs = arg;
  double last_prune = 0;
  pthread_mutex_lock(&rs->mu);
  while (!rs->stop) {
    pthread_mutex_unlock(&rs->mu);
    tick(rs, &last_prune);
    pthread_mutex_lock(&rs->mu);
    if (rs->poked || rs->stop) {
      rs->poked = false;
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long ns = ts.tv_nsec + (long)(rs->s->cfg.tick_ms % 1000) * 1000000L;
    ts.tv_sec += rs->s->cfg.tick_ms / 1000 + ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    pthread_cond_timedwait(&rs->cv, &rs->mu, &ts);
    rs->poked = false;
  }
  pthread_mutex_unlock(&rs->mu);
  return NULL;
}

int fl__rounds_new(fl_rounds **out, fl_srv *s) {
  fl_rounds *r = calloc(1, sizeof *r);
  if (r == NULL)
    return FL_E_NOMEM;
  r->s = s;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  *out = r;
  return FL_OK;
}

int fl__rounds_start(fl_rounds *r) {
  if (pthread_create(&r->thread, NULL, ticker, r) != 0)
    return FL_E_NOMEM;
  r->started = true;
  return FL_OK;
}

void fl__rounds_poke(fl_rounds *r) {
  if (r == NULL)
    return;
  pthread_mutex_lock(&r->mu);
  r->poked = true;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

void fl__rounds_stop(fl_rounds *r) {
  if (r == NULL || !r->started)
    return;
  pthread_mutex_lock(&r->mu);
  r->stop = true;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&r->mu);
  pthread_join(r->thread, NULL);
  r->started = false;
}

void fl__rounds_free(fl_rounds *r) {
  if (r == NULL)
    return;
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r);
}
