/*
 * Secure aggregation's phases in the coordinator (secagg.h has the outline). A transition reads
 * the round under its row lock, decides from the members' rows and writes the next phase in
 * the same transaction.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rounds/rounds.h"
#include "secagg.h"
#include "secagg/protocol.h"

int fl__secagg_round_open(PGconn *c, uint64_t round_id, const fl_plan *p) {
  fl_pgp q;
  fl__pgp_init(&q);
  fl__pgp_u64(&q, round_id);
  fl__pgp_u64(&q, p->deadline_s);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE rounds SET secagg_phase = 'keys',"
                            " secagg_until = now() + make_interval(secs => $2::float8),"
                            " deadline_at = now() + make_interval(secs => 2 * $2::float8)"
                            " WHERE round_id = $1",
                            &q, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  return FL_OK;
}

int fl__secagg_int_array(const char *text, uint32_t **out, uint32_t *d) {
  size_t cap = 1;
  for (const char *t = text; *t; t++)
    cap += *t == ',';
  uint32_t *a = malloc(cap * sizeof *a), n = 0;
  if (a == NULL || *text != '{')
    goto bad;
  const char *t = text + 1;
  while (*t != '}') {
    char *end;
    unsigned long v = strtoul(t, &end, 10);
    if (end == t || v == 0 || v > UINT32_MAX || n >= cap)
      goto bad;
    a[n++] = (uint32_t)v;
    t = *end == ',' ? end + 1 : end;
    if (*end != ',' && *end != '}')
      goto bad;
  }
  *out = a;
  *d = n;
  return 0;
bad:
  free(a);
  return -1;
}

void fl__secagg_members_free(fl_sa_member *m, uint32_t n) {
  for (uint32_t i = 0; m != NULL && i < n; i++)
    free(m[i].nbr);
  free(m);
}

int fl__secagg_members(PGconn *c, uint64_t round_id, fl_sa_member **out, uint32_t *n_out) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT participant, device_id, neighbors::text, encode(s_pk, 'hex'),"
                            " shares_sent, alive, in_sum, unmasked FROM secagg_members"
                            " WHERE round_id = $1 AND participant IS NOT NULL ORDER BY participant",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  uint32_t n = (uint32_t)PQntuples(r);
  fl_sa_member *m = calloc(n + 1, sizeof *m);
  int rc = m != NULL ? 0 : -1;
  for (uint32_t i = 0; rc == 0 && i < n; i++) {
    m[i].participant = (uint32_t)fl__pg_u64(r, (int)i, 0);
    m[i].device_id = fl__pg_u64(r, (int)i, 1);
    if (m[i].participant != i + 1 ||
        fl__secagg_int_array(PQgetvalue(r, (int)i, 2), &m[i].nbr, &m[i].d) ||
        fl__unhex(PQgetvalue(r, (int)i, 3), m[i].s_pk, sizeof m[i].s_pk)) {
      rc = -1;
      break;
    }
    m[i].shares_sent = PQgetvalue(r, (int)i, 4)[0] == 't';
    m[i].alive = PQgetvalue(r, (int)i, 5)[0] == 't';
    m[i].in_sum = PQgetvalue(r, (int)i, 6)[0] == 't';
    m[i].unmasked = PQgetvalue(r, (int)i, 7)[0] == 't';
    for (uint32_t j = 0; j < m[i].d; j++)
      if (m[i].nbr[j] > n)
        rc = -1;
  }
  PQclear(r);
  if (rc != 0) {
    fl__secagg_members_free(m, n);
    return -1;
  }
  *out = m;
  *n_out = n;
  return 0;
}

/* What a transition reads of its round, under the row lock. */
typedef struct sa_round {
  uint64_t round_id;
  char phase[16];
  bool due; /* the phase's deadline has passed */
  uint32_t assigned, max_assign, n;
  fl_plan plan;
  const char *end_by; /* what ends the phase (logged): complete, quiet, deadline */
} sa_round;

/* 1 locked and in a phase that can end, 0 not, -1 error. */
static int lock_sa_round(PGconn *c, uint64_t round_id, sa_round *sr) {
  fl_pgp p;
  char msg[160];
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT r.secagg_phase, r.secagg_until <= now(), r.assigned,"
                            " r.max_assign, coalesce(r.secagg_n, 0), p.config::text"
                            " FROM rounds r JOIN plans p ON p.plan_id = r.plan_id"
                            " WHERE r.round_id = $1 AND r.state = 'open'"
                            " AND r.secagg_phase IN ('keys', 'shares', 'masked', 'unmask')"
                            " FOR UPDATE OF r",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    json_t *cfg = json_loads(PQgetvalue(r, 0, 5), 0, NULL);
    sr->round_id = round_id;
    snprintf(sr->phase, sizeof sr->phase, "%s", PQgetvalue(r, 0, 0));
    sr->due = PQgetvalue(r, 0, 1)[0] == 't';
    sr->assigned = (uint32_t)fl__pg_u64(r, 0, 2);
    sr->max_assign = (uint32_t)fl__pg_u64(r, 0, 3);
    sr->n = (uint32_t)fl__pg_u64(r, 0, 4);
    rc = fl__plan_from_json(&sr->plan, cfg, msg) == 0 && FL_PLAN_SECAGG(&sr->plan) ? 1 : -1;
    json_decref(cfg);
  }
  PQclear(r);
  return rc;
}

/* The next phase with a fresh deadline (and, for `abandoned`, its reason). The round's own
 * deadline moves with it, one phase later: it only passes when the phases stopped moving
 * (no ticker ran for a whole phase), and then the round is abandoned (close.c). */
static int set_phase(PGconn *c, const sa_round *sr, const char *phase, const char *reason) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->round_id);
  fl__pgp_text(&p, phase);
  fl__pgp_u64(&p, sr->plan.deadline_s);
  fl__pgp_text(&p, reason);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE rounds SET secagg_phase = $2, secagg_reason = $4,"
                            " secagg_until = now() + make_interval(secs => $3::float8),"
                            " deadline_at = now() + make_interval(secs => 2 * $3::float8)"
                            " WHERE round_id = $1",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  PQclear(r);
  if (reason != NULL)
    fl__slog(FL_LOG_WARN, "secagg_abandoned", "round=%" PRIu64 " reason=%s", sr->round_id,
             fl__slog_str(reason));
  else
    fl__slog(FL_LOG_INFO, "secagg_phase", "round=%" PRIu64 " phase=%s after=%s", sr->round_id,
             phase, sr->end_by != NULL ? sr->end_by : "?");
  return 0;
}

static int64_t count_of(PGconn *c, const char *sql, uint64_t round_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c, sql, &p, false, NULL);
  int64_t n = r != NULL && PQntuples(r) == 1 ? fl__pg_i64(r, 0, 0) : -1;
  PQclear(r);
  return n;
}

/* keys -> shares: the advertisers become participants 1..n (in device id order: the graph,
 * drawn from the CSPRNG, is what must be unpredictable), each with its d neighbours; no
 * device joins the round any more (max_assign = assigned). */
static int end_keys(PGconn *c, sa_round *sr) {
  int64_t n = count_of(c, "SELECT count(*) FROM secagg_members WHERE round_id = $1", sr->round_id);
  char why[160];
  if (n < 0)
    return -1;
  if (!sr->due && (uint32_t)n < sr->max_assign)
    return 0;
  uint32_t d = fl__secagg_degree((uint32_t)n, sr->plan.secagg.neighbors);
  if ((uint32_t)n < sr->plan.min_participants || d < sr->plan.secagg.threshold) {
    snprintf(why, sizeof why,
             "secagg_below_threshold: %" PRId64
             " devices advertised keys (min_participants %u,"
             " threshold %u)",
             n, sr->plan.min_participants, sr->plan.secagg.threshold);
    return set_phase(c, sr, "abandoned", why);
  }
  uint32_t *g = malloc((size_t)n * d * sizeof *g + 1);
  int rc = -1;
  fl_pgp p;
  if (g == NULL || fl__secagg_graph((uint32_t)n, sr->plan.secagg.neighbors, g) != FL_OK)
    goto out;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->round_id);
  PGresult *r = fl__pg_exec(c,
                            "UPDATE secagg_members m SET participant = t.k FROM"
                            " (SELECT device_id, row_number() OVER (ORDER BY device_id) AS k"
                            "  FROM secagg_members WHERE round_id = $1) t"
                            " WHERE m.round_id = $1 AND m.device_id = t.device_id",
                            &p, false, NULL);
  if (r == NULL)
    goto out;
  PQclear(r);
  for (uint32_t i = 0; i < (uint32_t)n; i++) {
    char lit[16 * 1024], *w = lit;
    w += sprintf(w, "{");
    for (uint32_t j = 0; j < d && w - lit < (long)sizeof lit - 16; j++)
      w += sprintf(w, "%s%u", j ? "," : "", g[(size_t)i * d + j]);
    sprintf(w, "}");
    if (w - lit >= (long)sizeof lit - 16)
      goto out; /* d beyond ~1600: refused by the plan long before (n_max) */
    fl__pgp_init(&p);
    fl__pgp_u64(&p, sr->round_id);
    fl__pgp_u64(&p, i + 1);
    fl__pgp_text(&p, lit);
    r = fl__pg_exec(c,
                    "UPDATE secagg_members SET neighbors = $3::int[]"
                    " WHERE round_id = $1 AND participant = $2",
                    &p, false, NULL);
    if (r == NULL)
      goto out;
    PQclear(r);
  }
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->round_id);
  fl__pgp_u64(&p, (uint64_t)n);
  r = fl__pg_exec(c, "UPDATE rounds SET max_assign = assigned, secagg_n = $2 WHERE round_id = $1",
                  &p, false, NULL);
  if (r == NULL)
    goto out;
  PQclear(r);
  rc = set_phase(c, sr, "shares", NULL);
out:
  free(g);
  return rc;
}

static uint32_t live_neighbours(const fl_sa_member *m, const fl_sa_member *all, bool in_sum) {
  uint32_t k = 0;
  for (uint32_t j = 0; j < m->d; j++)
    k += in_sum ? all[m->nbr[j] - 1].in_sum : all[m->nbr[j] - 1].alive;
  return k;
}

/* Marks a set (alive or in_sum) of members in the database from m[]. */
static int store_flags(PGconn *c, uint64_t round_id, const char *col, const fl_sa_member *m,
                       uint32_t n, bool in_sum) {
  char *lit = malloc((size_t)n * 12 + 3), *w = lit;
  fl_pgp p;
  char sql[160];
  if (lit == NULL)
    return -1;
  w += sprintf(w, "{");
  for (uint32_t i = 0, first = 1; i < n; i++)
    if (in_sum ? m[i].in_sum : m[i].alive) {
      w += sprintf(w, "%s%u", first ? "" : ",", m[i].participant);
      first = 0;
    }
  sprintf(w, "}");
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_text(&p, lit);
  snprintf(sql, sizeof sql,
           "UPDATE secagg_members SET %s = participant = ANY($2::int[]) WHERE round_id = $1"
           " AND participant IS NOT NULL",
           col);
  PGresult *r = fl__pg_exec(c, sql, &p, false, NULL);
  free(lit);
  if (r == NULL)
    return -1;
  PQclear(r);
  return 0;
}

/* shares -> masked: U1 is the participants whose shares arrived, less those left with fewer
 * than t live neighbours (their secrets could never be rebuilt), repeated until stable: a
 * participant's neighbours then mask with it only when its shares are in their inboxes. */
static int end_shares(PGconn *c, sa_round *sr) {
  fl_sa_member *m = NULL;
  uint32_t n = 0, u1 = 0, t = sr->plan.secagg.threshold;
  char why[160];
  int rc = -1;
  if (fl__secagg_members(c, sr->round_id, &m, &n))
    return -1;
  uint32_t sent = 0;
  for (uint32_t i = 0; i < n; i++) {
    sent += m[i].shares_sent;
    m[i].alive = m[i].shares_sent;
  }
  if (!sr->due && sent < n) {
    rc = 0;
    goto out;
  }
  for (bool changed = true; changed;) {
    changed = false;
    for (uint32_t i = 0; i < n; i++)
      if (m[i].alive && live_neighbours(&m[i], m, false) < t)
        m[i].alive = false, changed = true;
  }
  for (uint32_t i = 0; i < n; i++)
    u1 += m[i].alive;
  if (u1 < sr->plan.min_participants) {
    snprintf(why, sizeof why,
             "secagg_below_threshold: %u of %u participants sent their shares with %u live"
             " neighbours (min_participants %u)",
             u1, n, t, sr->plan.min_participants);
    rc = set_phase(c, sr, "abandoned", why);
    goto out;
  }
  rc = store_flags(c, sr->round_id, "alive", m, n, false) ? -1 : set_phase(c, sr, "masked", NULL);
out:
  fl__secagg_members_free(m, n);
  return rc;
}

/* masked -> unmask: U2 is the live participants whose masked inputs committed. Every secret
 * the unmasking needs (b of each u in U2, s_sk of each d in U1 \ U2 next to U2) is held by
 * neighbours in U2, which are the only ones asked: each needs t of them. */
static int end_masked(PGconn *c, sa_round *sr) {
  fl_sa_member *m = NULL;
  uint32_t n = 0, u1 = 0, u2 = 0, t = sr->plan.secagg.threshold;
  char why[160];
  int rc = -1;
  if (fl__secagg_members(c, sr->round_id, &m, &n))
    return -1;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT m.participant FROM secagg_members m JOIN acceptances a"
                            " ON a.round_id = m.round_id AND a.device_id = m.device_id"
                            " WHERE m.round_id = $1 AND m.alive",
                            &p, false, NULL);
  if (r == NULL)
    goto out;
  for (int i = 0; i < PQntuples(r); i++) {
    uint64_t k = fl__pg_u64(r, i, 0);
    if (k >= 1 && k <= n)
      m[k - 1].in_sum = true;
  }
  PQclear(r);
  for (uint32_t i = 0; i < n; i++) {
    u1 += m[i].alive;
    u2 += m[i].in_sum;
  }
  if (!sr->due && u2 < u1) {
    rc = 0;
    goto out;
  }
  uint32_t short_of = 0;
  for (uint32_t i = 0; i < n && short_of == 0; i++) {
    bool needed = m[i].in_sum || (m[i].alive && live_neighbours(&m[i], m, true) > 0);
    if (needed && live_neighbours(&m[i], m, true) < t)
      short_of = i + 1;
  }
  if (u2 < sr->plan.min_participants || short_of) {
    if (u2 >= sr->plan.min_participants)
      snprintf(why, sizeof why,
               "secagg_below_threshold: participant %u has fewer than %u neighbours among the"
               " %u masked inputs",
               short_of, t, u2);
    else
      snprintf(why, sizeof why,
               "secagg_below_threshold: %u masked inputs of %u (min_participants %u)", u2, u1,
               sr->plan.min_participants);
    rc = set_phase(c, sr, "abandoned", why);
    goto out;
  }
  rc = store_flags(c, sr->round_id, "in_sum", m, n, true) ? -1 : set_phase(c, sr, "unmask", NULL);
out:
  fl__secagg_members_free(m, n);
  return rc;
}

/* unmask -> ready: once every survivor answered (or the deadline), each needed secret must
 * have t shares; the reconstruction itself happens at close (unmask.c). */
static int end_unmask(PGconn *c, sa_round *sr) {
  int64_t left = count_of(c,
                          "SELECT count(*) FROM secagg_members WHERE round_id = $1 AND in_sum"
                          " AND NOT unmasked",
                          sr->round_id);
  char why[160];
  if (left < 0)
    return -1;
  if (!sr->due && left > 0)
    return 0;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT m.participant, (SELECT count(*) FROM secagg_unmask u"
                            "  WHERE u.round_id = $1 AND u.owner = m.participant) AS have"
                            " FROM secagg_members m WHERE m.round_id = $1"
                            " AND (m.in_sum OR (m.alive AND EXISTS (SELECT 1 FROM secagg_members"
                            "  x WHERE x.round_id = $1 AND x.in_sum"
                            "  AND x.participant = ANY(m.neighbors))))"
                            " ORDER BY have, m.participant LIMIT 1",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  bool ok = PQntuples(r) == 0 || fl__pg_u64(r, 0, 1) >= sr->plan.secagg.threshold;
  if (!ok)
    snprintf(why, sizeof why,
             "secagg_below_threshold: participant %s has %s unmasking shares, threshold %u",
             PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), sr->plan.secagg.threshold);
  PQclear(r);
  return set_phase(c, sr, ok ? "ready" : "abandoned", ok ? NULL : why);
}

/* How long a phase may go without a message before it ends: every live member has then
 * sent its own (the devices send theirs as soon as the phase begins), and the ones still
 * missing are dropouts; the deadline stays the bound. A quarter of the deadline, 1 to 30 s:
 * long enough for the gaps of a loaded fleet (1,000 devices on 2 cores: messages seconds
 * apart), short against a phase deadline. */
static double quiet_s(const fl_plan *p) {
  double q = (double)p->deadline_s / 4;
  return q < 1 ? 1 : q > 30 ? 30 : q;
}

/* Whether the round's phase may end, read without its lock (the transition, under the lock,
 * decides again from what it reads then): every expected message arrived, or the phase went
 * quiet (no message, and in the key phase no new assignment, for quiet_s), or its deadline
 * passed. 3 due and 2 quiet end it whatever is missing, 1 complete, 0 not yet, -1 error. */
static int may_end(fl_srv *s, PGconn *c, uint64_t round_id) {
  fl_pgp p;
  fl_plan plan;
  char msg[160];
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec_prep(c, "fl_secagg_plan",
                                 "SELECT p.config::text FROM rounds r JOIN plans p"
                                 " ON p.plan_id = r.plan_id WHERE r.round_id = $1",
                                 &p, false, NULL);
  if (r == NULL)
    return -1;
  json_t *cfg = PQntuples(r) == 1 ? json_loads(PQgetvalue(r, 0, 0), 0, NULL) : NULL;
  PQclear(r);
  int ok = cfg != NULL && fl__plan_from_json(&plan, cfg, msg) == 0 && FL_PLAN_SECAGG(&plan);
  json_decref(cfg);
  if (!ok)
    return -1;
  fl__pgp_f64(&p, (double)plan.deadline_s);
  r = fl__pg_exec_prep(
      c, "fl_secagg_progress",
      "SELECT CASE r.secagg_phase"
      "  WHEN 'keys' THEN (SELECT count(*) FROM secagg_members WHERE round_id = $1)"
      "   >= r.max_assign"
      "  WHEN 'shares' THEN NOT EXISTS (SELECT 1 FROM secagg_members WHERE round_id = $1"
      "   AND participant IS NOT NULL AND NOT shares_sent)"
      "  WHEN 'masked' THEN NOT EXISTS (SELECT 1 FROM secagg_members m WHERE m.round_id = $1"
      "   AND m.alive AND NOT EXISTS (SELECT 1 FROM acceptances a WHERE a.round_id = $1"
      "   AND a.device_id = m.device_id))"
      "  ELSE NOT EXISTS (SELECT 1 FROM secagg_members WHERE round_id = $1 AND in_sum"
      "   AND NOT unmasked) END,"
      " extract(epoch FROM now() - greatest(r.secagg_until - make_interval(secs => $2::float8),"
      "  (SELECT max(reported_at) FROM secagg_members WHERE round_id = $1),"
      "  CASE WHEN r.secagg_phase = 'keys' THEN (SELECT max(assigned_at) FROM assignments"
      "   WHERE round_id = $1) END,"
      "  CASE WHEN r.secagg_phase = 'masked' THEN (SELECT max(accepted_at) FROM acceptances"
      "   WHERE round_id = $1) END))::float8,"
      " r.secagg_until <= now(), r.secagg_phase = 'masked'"
      " FROM rounds r WHERE r.round_id = $1 AND r.state = 'open'"
      " AND r.secagg_phase IN ('keys', 'shares', 'masked', 'unmask')",
      &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    bool complete = PQgetvalue(r, 0, 0)[0] == 't', due = PQgetvalue(r, 0, 2)[0] == 't';
    double idle = fl__pg_f64(r, 0, 1), q = quiet_s(&plan);
    /* Only committed inputs reset the masked phase's clock, and 780 KB inputs of a thousand
     * devices can take longer than the quiet to arrive on a loaded coordinator (benches/
     * RESULTS.md, Secure aggregation): while this process still receives upload bytes the
     * phase is not quiet. Another replica's uploads are not seen here (docs/SECAGG.md). */
    if (PQgetvalue(r, 0, 3)[0] == 't') {
      int64_t rx = atomic_load_explicit(&s->upload_rx_ms, memory_order_relaxed);
      double since = rx > 0 ? fl__mono_s() - (double)rx / 1000 : idle;
      if (since < idle)
        idle = since;
    }
    rc = due ? 3 : idle >= q ? 2 : complete ? 1 : 0;
  }
  PQclear(r);
  return rc;
}

/* One round's transition, if it may end. 1 when the round became ready or abandoned. */
static int advance(fl_srv *s, uint64_t round_id) {
  sa_round sr;
  int rc = -1;
  PGconn *c = fl__pool_get(s->pool);
  if (c == NULL)
    return -1;
  /* Most ticks change nothing: they are answered without the round's lock, which the group
   * commit and every phase message wait for. */
  int go = may_end(s, c, round_id);
  if (go <= 0) {
    rc = go;
    goto out;
  }
  if (fl__pg_cmd(c, "BEGIN"))
    goto out;
  int locked = lock_sa_round(c, round_id, &sr);
  if (locked <= 0) {
    rc = locked;
    goto out;
  }
  sr.due = sr.due || go >= 2;
  sr.end_by = go == 3 || sr.due ? (go == 2 ? "quiet" : "deadline") : "complete";
  if (strcmp(sr.phase, "keys") == 0)
    rc = end_keys(c, &sr);
  else if (strcmp(sr.phase, "shares") == 0)
    rc = end_shares(c, &sr);
  else if (strcmp(sr.phase, "masked") == 0)
    rc = end_masked(c, &sr);
  else
    rc = end_unmask(c, &sr);
  if (rc == 0 && fl__pg_cmd(c, "COMMIT"))
    rc = -1;
  if (rc == 0)
    rc = count_of(c,
                  "SELECT count(*) FROM rounds WHERE round_id = $1"
                  " AND secagg_phase IN ('ready', 'abandoned')",
                  round_id) > 0;
out:
  if (rc < 0)
    fl__slog(FL_LOG_WARN, "secagg_advance_failed", "round=%" PRIu64 " error=%s", round_id,
             fl__slog_str(PQerrorMessage(c)));
  fl__pool_put(s->pool, c);
  return rc;
}

void fl__secagg_tick(fl_srv *s) {
  PGconn *c = fl__pool_get(s->pool);
  uint64_t ids[64];
  bool end[64];
  int n = 0;
  if (c == NULL)
    return;
  PGresult *r = fl__pg_exec_prep(c, "fl_secagg_due",
                                 "SELECT round_id, secagg_phase IN ('ready', 'abandoned')"
                                 " FROM rounds WHERE state = 'open'"
                                 " AND secagg_phase IS NOT NULL ORDER BY round_id LIMIT 64",
                                 NULL, false, NULL);
  for (int i = 0; r != NULL && i < PQntuples(r); i++) {
    ids[n] = fl__pg_u64(r, i, 0);
    end[n++] = PQgetvalue(r, i, 1)[0] == 't';
  }
  PQclear(r);
  fl__pool_put(s->pool, c);
  /* Ready or abandoned: closed now, not at the next tick (and again if a close failed). */
  for (int i = 0; i < n; i++)
    if (end[i] || advance(s, ids[i]) > 0)
      fl__round_try_close(s, ids[i]);
  fl__secagg_wake(s); /* after the transitions: their phases reach the waiters now */
}

int fl__secagg_close_state(PGconn *c, uint64_t round_id, char *why, size_t n) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT secagg_phase, coalesce(secagg_reason, ''),"
                            " deadline_at <= now() FROM rounds WHERE round_id = $1",
                            &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = 0;
  if (PQntuples(r) == 1) {
    const char *ph = PQgetvalue(r, 0, 0);
    if (strcmp(ph, "ready") == 0) {
      rc = 1;
    } else if (strcmp(ph, "abandoned") == 0) {
      rc = 2;
      snprintf(why, n, "%s", PQgetvalue(r, 0, 1));
    } else if (PQgetvalue(r, 0, 2)[0] == 't') {
      rc = 2;
      snprintf(why, n, "secagg_deadline: the round's deadline passed in phase %s", ph);
    }
  }
  PQclear(r);
  return rc;
}

int fl__secagg_forget(PGconn *c, uint64_t round_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c, "DELETE FROM secagg_shares WHERE round_id = $1", &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  r = fl__pg_exec(c, "DELETE FROM secagg_unmask WHERE round_id = $1", &p, false, NULL);
  if (r == NULL)
    return FL_E_DB;
  PQclear(r);
  return FL_OK;
}
