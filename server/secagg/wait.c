/*
 * Long polls of POST /v1/secagg/state (docs/SECAGG.md "Protocol"). A device that waits for a
 * later phase is parked (fl__req_defer: its connection suspended, no thread and no database
 * connection held) in this replica's list until the ticker sees its round reach the phase,
 * end, or the hold run out; then its connection's thread answers it as an immediate poll
 * would have been. A waiting device so costs one request per phase (or per hold) instead of
 * one every 250 ms, and the phase change reaches it within a tick. The phase is read from
 * PostgreSQL, so a transition made by another replica wakes this one's waiters too.
 *
 * A parked poll still holds its TCP connection, and MHD counts it against --max-connections:
 * at the limit MHD stops accepting, and every other request (check-ins, keys, uploads) waits
 * in the kernel's listen queue behind polls that are held for up to 30 s. At 1,000 devices and
 * 512 connections, the first ~500 devices to advertise their keys parked 512 polls and the
 * rest of the fleet never got in before the key phase went quiet (benches/RESULTS.md, Secure
 * aggregation). So at most half of the connection limit is parked (fl__secagg_park_cap); a
 * poll beyond that is answered at once (devapi.c: a later look, and the connection closed).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "device/devapi.h"
#include "secagg/protocol.h"

typedef struct sa_waiter {
  struct sa_waiter *next;
  fl_req *q;
  uint64_t round_id, device_id;
  int want;
  int64_t until_ms;
} sa_waiter;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static sa_waiter *waiting;
static uint32_t n_waiting; /* the length of the list */
static bool closing;

uint32_t fl__secagg_park_cap(unsigned max_connections) {
  return max_connections / 2 > 0 ? max_connections / 2 : 1;
}

/* The resumed request (fl_finish): answered with the state as it is now. */
static void state_finish(fl_srv *s, fl_req *q, fl_resp *r, void *arg) {
  sa_waiter *w = arg;
  (void)q;
  if (r != NULL) {
    PGconn *c = fl__pool_get_timed(s->pool, FL_DEVICE_POOL_WAIT_MS);
    if (c == NULL)
      fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
    else
      fl__secagg_state_answer(c, w->round_id, w->device_id, w->want, r);
    fl__pool_put(s->pool, c);
  }
  free(w);
}

int fl__secagg_park(fl_srv *s, fl_req *q, uint64_t round_id, uint64_t device_id, int want,
                    uint32_t hold_ms) {
  uint32_t cap = fl__secagg_park_cap(s->cfg.max_connections);
  pthread_mutex_lock(&mu);
  bool full = n_waiting >= cap;
  n_waiting += !full; /* the place is taken now: two threads cannot both take the last */
  pthread_mutex_unlock(&mu);
  if (full)
    return 1;
  sa_waiter *w = calloc(1, sizeof *w);
  if (w == NULL) {
    pthread_mutex_lock(&mu);
    n_waiting--;
    pthread_mutex_unlock(&mu);
    return -1;
  }
  *w = (sa_waiter){.q = q,
                   .round_id = round_id,
                   .device_id = device_id,
                   .want = want,
                   .until_ms = fl__now_ms() +
                               (hold_ms < FL_SECAGG_HOLD_MAX_MS ? hold_ms : FL_SECAGG_HOLD_MAX_MS)};
  fl__req_defer(q, state_finish, w);
  pthread_mutex_lock(&mu);
  bool now = closing;
  if (!now) {
    w->next = waiting;
    waiting = w;
  } else {
    n_waiting--;
  }
  pthread_mutex_unlock(&mu);
  if (now)
    fl__req_resume(q);
  return 0;
}

/* The SecAggPhase of a round row (as devapi.c's phase_enum); terminal phases are above every
 * awaited one. */
static int phase_of(const char *state, const char *phase) {
  static const char *const names[] = {"keys", "shares", "masked", "unmask"};
  if (strcmp(state, "open") != 0 || phase[0] == '\0')
    return 99;
  for (int i = 0; i < 4; i++)
    if (strcmp(phase, names[i]) == 0)
      return i + 1;
  return 99; /* ready, abandoned */
}

/* Takes out of the list the waiters of round_id (0: of every round) that may be answered;
 * phase < 0: only the expired. The caller resumes them. */
static sa_waiter *take(sa_waiter **list, uint64_t round_id, int phase, int64_t now) {
  sa_waiter *out = NULL;
  for (sa_waiter **p = list; *p != NULL;) {
    sa_waiter *w = *p;
    bool go = (round_id == 0 || w->round_id == round_id) &&
              ((phase >= 0 && phase >= w->want) || now >= w->until_ms);
    if (go) {
      *p = w->next;
      w->next = out;
      out = w;
      n_waiting--;
    } else {
      p = &w->next;
    }
  }
  return out;
}

/* List a before list b. */
static sa_waiter *chain(sa_waiter *a, sa_waiter *b) {
  if (a == NULL)
    return b;
  sa_waiter *t = a;
  while (t->next != NULL)
    t = t->next;
  t->next = b;
  return a;
}

static void resume_all(sa_waiter *w) {
  while (w != NULL) {
    sa_waiter *next = w->next;
    fl__req_resume(w->q); /* w belongs to the request from here on (state_finish frees it) */
    w = next;
  }
}

void fl__secagg_wake(fl_srv *s) {
  uint64_t ids[64];
  int n = 0;
  pthread_mutex_lock(&mu);
  for (sa_waiter *w = waiting; w != NULL; w = w->next) {
    int k = 0;
    while (k < n && ids[k] != w->round_id)
      k++;
    if (k == n && n < 64)
      ids[n++] = w->round_id;
  }
  pthread_mutex_unlock(&mu);
  if (n == 0)
    return;
  char lit[64 * 21 + 3], *o = lit;
  o += sprintf(o, "{");
  for (int i = 0; i < n; i++)
    o += sprintf(o, "%s%" PRIu64, i ? "," : "", ids[i]);
  sprintf(o, "}");
  PGconn *c = fl__pool_get(s->pool);
  PGresult *r = NULL;
  if (c != NULL) {
    fl_pgp p;
    fl__pgp_init(&p);
    fl__pgp_text(&p, lit);
    r = fl__pg_exec_prep(c, "fl_secagg_waited",
                         "SELECT round_id, state, coalesce(secagg_phase, '') FROM rounds"
                         " WHERE round_id = ANY($1::bigint[])",
                         &p, false, NULL);
  }
  int64_t now = fl__now_ms();
  pthread_mutex_lock(&mu);
  sa_waiter *go = NULL;
  for (int i = 0; r != NULL && i < PQntuples(r); i++) {
    int ph = phase_of(PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    go = chain(take(&waiting, fl__pg_u64(r, i, 0), ph, now), go);
  }
  /* Rounds that are gone; then the holds that ran out, of any round (also when PostgreSQL
   * did not answer). */
  for (int i = 0; r != NULL && i < n; i++) {
    bool seen = false;
    for (int k = 0; k < PQntuples(r); k++)
      seen = seen || fl__pg_u64(r, k, 0) == ids[i];
    if (!seen)
      go = chain(take(&waiting, ids[i], 99, now), go);
  }
  go = chain(take(&waiting, 0, -1, now), go);
  pthread_mutex_unlock(&mu);
  PQclear(r);
  fl__pool_put(s->pool, c);
  resume_all(go);
}

void fl__secagg_wake_all(void) {
  pthread_mutex_lock(&mu);
  closing = true;
  sa_waiter *go = take(&waiting, 0, 0, INT64_MAX);
  pthread_mutex_unlock(&mu);
  resume_all(go);
}
