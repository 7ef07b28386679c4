/*
 * Round opening, assignment, fair selection and the ticker. The ticker polls open rounds every
 * tick (and at once when poked by the committer): rounds whose selection window is over (or
 * whose pool filled) are drawn by fl__round_draw, the others that may need closing go to
 * fl__round_try_close; both decide under the round's row lock, the poll itself only reads.
 */
#include "rounds/rounds.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/auth.h"
#include "crypto.h"
#include "drift/drift.h"
#include "secagg/protocol.h"
#include "rounds/async.h"
#include "store/seen.h"

struct fl_rounds {
  fl_srv *s;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop, poked, started;
  pthread_t thread;
  _Atomic uint64_t fleet; /* active devices, counted every FLEET_PERIOD_S (pace steering) */
  fl_seen *seen;          /* check-ins' last-seen telemetry, flushed by the ticker */
};

#define FLEET_PERIOD_S 5.0

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
  fl__pgp_u64(&q, fl__async_round_deadline_s(p));
  fl__pgp_f64(&q, p->selection_window_s);
  fl__pgp_u64(&q, fl__plan_pool(p));
  PGresult *r = fl__pg_exec(c,
                            "INSERT INTO rounds (plan_id, model_id, base_version, target,"
                            " min_count, max_assign, deadline_at, select_until, pool)"
                            " VALUES ($1, $2, $3, $4, $5, $6,"
                            "  now() + make_interval(secs => $7::float8),"
                            "  CASE WHEN $8::float8 > 0"
                            "   THEN now() + make_interval(secs => $8::float8) END, $9)"
                            " RETURNING round_id",
                            &q, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  *round_id = fl__pg_u64(r, 0, 0);
  PQclear(r);
  if (FL_PLAN_SECAGG(p) && fl__secagg_round_open(c, *round_id, p) != FL_OK)
    return FL_E_DB;
  fl__slog(FL_LOG_INFO, "round_opened",
           "round=%" PRIu64 " plan=%" PRIu64 " model=%" PRIu64 " base_version=%" PRIu64,
           *round_id, plan_id, model_id, base_version);
  return FL_OK;
}

void fl__rounds_seen(fl_rounds *r, uint64_t device_id, uint64_t running_model_id,
                     uint64_t running_version) {
  if (r != NULL && r->seen != NULL &&
      fl__seen_note(r->seen, device_id, running_model_id, running_version))
    fl__rounds_poke(r);
}

/* Open rounds that may need closing, abandoning or reopening. */
static const char DUE_CLOSE[] =
    "SELECT round_id FROM rounds WHERE state = 'open'"
    " AND (accepted >= target OR deadline_at <= now())"
    " ORDER BY round_id LIMIT 64";
/* Open rounds whose selection window is over or whose pool of candidates filled. */
static const char DUE_DRAW[] =
    "SELECT round_id FROM rounds r WHERE state = 'open'"
    " AND drawn_at IS NULL AND select_until IS NOT NULL"
    " AND (select_until <= now() OR (SELECT count(*) FROM candidates c"
    "  WHERE c.round_id = r.round_id) >= r.pool)"
    " ORDER BY round_id LIMIT 64";

/* The first column of r (freed here) as a calloc'ed id list; -1 on a failed query or OOM. */
static int result_ids(PGresult *r, uint64_t **ids, int *n) {
  if (r == NULL)
    return -1;
  *n = PQntuples(r);
  *ids = calloc((size_t)*n + 1, sizeof **ids);
  for (int i = 0; *ids != NULL && i < *n; i++)
    (*ids)[i] = fl__pg_u64(r, i, 0);
  PQclear(r);
  return *ids ? 0 : -1;
}

static int due_rounds(PGconn *c, const char *name, const char *sql, uint64_t **ids, int *n) {
  PGresult *r = fl__pg_exec_prep(c, name, sql, NULL, false, NULL);
  return result_ids(r, ids, n);
}

/* ----- fair selection ---------------------------------------------------------------------- */

int64_t fl__pace_interval_ms(const fl_plan *p, int64_t base_ms, uint64_t fleet) {
  double w = p->selection_window_s > 0 ? p->selection_window_s * 1000.0 : (double)base_ms;
  double t = (double)fleet * w / (1.5 * (double)fl__plan_pool(p));
  if (t < w)
    t = w;
  return t > 86400e3 ? (int64_t)86400e3 : (int64_t)t;
}

uint64_t fl__rounds_fleet(fl_rounds *r) {
  return r != NULL ? atomic_load(&r->fleet) : 0;
}

/* Uniform in [0, n) from the CSPRNG, by rejection (no modulo bias). */
static int rand_below(uint64_t n, uint64_t *out) {
  uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;
  do {
    if (fl__random_bytes(&x, sizeof x))
      return -1;
  } while (x >= lim);
  *out = x % n;
  return 0;
}

/* Locks the round's row when it is due for its draw. 1 due (free slots in *slots), 0 not
 * (drawn meanwhile, e.g. by another replica, no window, closed), -1 error. */
static int lock_for_draw(PGconn *c, uint64_t round_id, uint32_t *slots) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT greatest(max_assign - assigned, 0), select_until <= now()"
                            "  OR (SELECT count(*) FROM candidates WHERE round_id = $1) >= pool"
                            " FROM rounds WHERE round_id = $1 AND state = 'open'"
                            " AND drawn_at IS NULL AND select_until IS NOT NULL FOR UPDATE",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 1), "t") == 0;
  if (rc)
    *slots = (uint32_t)fl__pg_u64(r, 0, 0);
  PQclear(r);
  return rc;
}

/* The candidates not yet assigned (active devices only), in *ids. -1 on error. */
static int candidates(PGconn *c, uint64_t round_id, uint64_t **ids, int *n) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT c.device_id FROM candidates c"
                            " JOIN devices d ON d.device_id = c.device_id AND d.state = 'active'"
                            " WHERE c.round_id = $1 AND NOT EXISTS (SELECT 1 FROM assignments a"
                            "  WHERE a.round_id = $1 AND a.device_id = c.device_id)",
                            &p, false, NULL);
  return result_ids(r, ids, n);
}

/* Moves k uniformly drawn ids to the front (partial Fisher-Yates) and writes them as a
 * PostgreSQL array literal (digits only: no quoting). NULL on failure. */
static char *draw_k(uint64_t *ids, int n, int k) {
  char *lit = malloc((size_t)k * 21 + 3), *w = lit;
  if (lit == NULL)
    return NULL;
  *w++ = '{';
  for (int i = 0; i < k; i++) {
    uint64_t j;
    if (rand_below((uint64_t)(n - i), &j)) {
      free(lit);
      return NULL;
    }
    uint64_t t = ids[i];
    ids[i] = ids[i + (int)j];
    ids[i + (int)j] = t;
    w += sprintf(w, "%s%" PRIu64, i ? "," : "", ids[i]);
  }
  strcpy(w, "}");
  return lit;
}

/* Assigns the drawn ids and marks the round drawn. Returns the number assigned, -1 on error. */
static int assign_drawn(PGconn *c, uint64_t round_id, const char *lit) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_text(&p, lit);
  PGresult *r = fl__pg_exec(c,
                            "WITH ins AS (INSERT INTO assignments (round_id, device_id)"
                            "  SELECT $1, d FROM unnest($2::bigint[]) AS t(d) ORDER BY d"
                            "  ON CONFLICT DO NOTHING RETURNING 1)"
                            " UPDATE rounds SET assigned = assigned + (SELECT count(*) FROM ins),"
                            " drawn_at = now() WHERE round_id = $1"
                            " RETURNING (SELECT count(*) FROM ins)",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int n = PQntuples(r) == 1 ? (int)fl__pg_i64(r, 0, 0) : -1;
  PQclear(r);
  return n;
}

int fl__round_draw(fl_srv *s, uint64_t round_id) {
  uint64_t *ids = NULL;
  char *lit = NULL;
  uint32_t slots = 0;
  int n = 0, rc = -1, drawn = 0;
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL)
    return -1;
  /* The row lock makes the draw happen once, whichever replica's ticker gets there first:
   * the others wait on it, then find drawn_at set. */
  if (fl__pg_cmd(c, "BEGIN"))
    goto out;
  int due = lock_for_draw(c, round_id, &slots);
  if (due <= 0) {
    rc = due;
    goto out;
  }
  if (candidates(c, round_id, &ids, &n))
    goto out;
  int k = n < (int)slots ? n : (int)slots;
  if ((lit = draw_k(ids, n, k)) == NULL || (drawn = assign_drawn(c, round_id, lit)) < 0 ||
      fl__pg_cmd(c, "COMMIT"))
    goto out;
  rc = 0;
  fl__slog(FL_LOG_INFO, "round_drawn", "round=%" PRIu64 " candidates=%d assigned=%d", round_id, n,
           drawn);
out:
  fl__pool_put(s->pool, c); /* rolls back an unfinished transaction */
  free(ids);
  free(lit);
  return rc;
}

/* Background housekeeping: nonce and candidate pruning every minute, the fleet size. */
static void housekeeping(fl_rounds *rs, PGconn *c, double *last_prune, double *last_fleet) {
  if (fl__mono_s() - *last_prune > 60.0) {
    fl__auth_prune_nonces(rs->s, c);
    PQclear(fl__pg_exec(c,
                        "DELETE FROM candidates c WHERE NOT EXISTS (SELECT 1 FROM rounds r"
                        " WHERE r.round_id = c.round_id AND r.state = 'open')",
                        NULL, false, NULL));
    *last_prune = fl__mono_s();
  }
  if (fl__mono_s() - *last_fleet > FLEET_PERIOD_S) {
    PGresult *r =
        fl__pg_exec(c, "SELECT count(*) FROM devices WHERE state = 'active'", NULL, false, NULL);
    if (r != NULL)
      atomic_store(&rs->fleet, fl__pg_u64(r, 0, 0));
    PQclear(r);
    *last_fleet = fl__mono_s();
  }
}

static void tick(fl_rounds *rs, double *last_prune, double *last_fleet) {
  uint64_t *ids = NULL, *draws = NULL;
  int n = 0, nd = 0;
  PGconn *c = fl__pool_get(rs->s->pool);
  if (c == NULL) {
    atomic_store(&rs->s->ready, false);
    return;
  }
  if (fl__seen_due(rs->seen))
    fl__seen_flush(rs->seen, c);
  int rc = due_rounds(c, "fl_due_close", DUE_CLOSE, &ids, &n);
  if (rc == 0 && due_rounds(c, "fl_due_draw", DUE_DRAW, &draws, &nd))
    nd = 0;
  housekeeping(rs, c, last_prune, last_fleet);
  atomic_store(&rs->s->ready, rc == 0);
  fl__pool_put(rs->s->pool, c);
  for (int i = 0; i < nd; i++)
    fl__round_draw(rs->s, draws[i]);
  for (int i = 0; i < n; i++)
    fl__round_try_close(rs->s, ids[i]);
  if (rc == 0) {
    fl__drift_tick(rs->s);
    fl__secagg_tick(rs->s);
  }
  free(ids);
  free(draws);
}

static void *ticker(void *arg) {
  fl_rounds *rs = arg;
  double last_prune = 0, last_fleet = -FLEET_PERIOD_S;
  pthread_mutex_lock(&rs->mu);
  while (!rs->stop) {
    pthread_mutex_unlock(&rs->mu);
    tick(rs, &last_prune, &last_fleet);
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
  if (fl__seen_new(&r->seen)) {
    free(r);
    return FL_E_NOMEM;
  }
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
  /* The last check-ins' telemetry, when the database is there. */
  PGconn *c = fl__pool_get_timed(r->s->pool, 1000);
  if (c != NULL) {
    fl__seen_flush(r->seen, c);
    fl__pool_put(r->s->pool, c);
  }
}

void fl__rounds_free(fl_rounds *r) {
  if (r == NULL)
    return;
  fl__seen_free(r->seen);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r);
}
