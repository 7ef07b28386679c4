/*
 * Device API: protobuf bodies inside a signed fl.v1.SignedRequest (docs/API.md). Every refusal
 * is an fl.v1.Error with a machine-readable reason, decided before any state changes (the
 * only write that precedes a refusal is the nonce of an authenticated request). Each route's
 * policy (the table at the end) is run by dispatch before its handler (auth/pipeline.c): a
 * handler starts with the request authenticated, its envelope, device and connection in
 * q->auth.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "codec.h"
#include "device/devapi.h"
#include "digest.h"
#include "drift/drift.h"
#include "mem.h"
#include "registry/evaluation.h"
#include "registry/models.h"
#include "registry/rollouts.h"
#include "rounds/aggregate.h"
#include "rounds/async.h"
#include "rounds/cohort.h"
#include "rounds/round_cache.h"
#include "rounds/rounds.h"
#include "secagg/protocol.h"

static void unavailable(fl_resp *r) {
  fl__resp_dev_error(r, 503, "unavailable", "database unavailable", fl__now_ms() + 1000);
}

/* Ids are bigserial: anything above INT64_MAX names nothing and is no bigint either, so it is
 * refused as malformed instead of reaching PostgreSQL (which would fail the query: a 503). */
static bool id_ok(uint64_t id) { return id <= INT64_MAX; }

/* Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF): PostgreSQL
 * refuses anything else in a text column, which must be a 400, not a failed query. */
static bool utf8_ok(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned c = *p, n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2
                                   : (c & 0xf8) == 0xf0 ? 3 : 4;
    if (n == 4 || c == 0xc0 || c == 0xc1 || c > 0xf4)
      return false;
    uint32_t cp = n == 0 ? c : c & (0x3f >> n);
    for (unsigned i = 1; i <= n; i++) {
      if ((p[i] & 0xc0) != 0x80)
        return false;
      cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return false;
    p += n + 1;
  }
  return true;
}

/* ----- enroll ------------------------------------------------------------------------------ */

/* A token that is used (or unknown, or expired): when it was used by this very key, this is a
 * retry of an enrollment whose answer was lost, and it gets the same device id (the request is
 * signed by that key, so it learns nothing its holder did not know). Any other key is refused.
 * Returns the device id, 0 with the refusal in *r. */
static uint64_t enrolled_before(PGconn *c, const uint8_t th[FL_SHA256_LEN],
                                const Fl__V1__EnrollRequest *e, fl_resp *r) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, th, FL_SHA256_LEN);
  fl__pgp_bin(&p, e->public_key.data, e->public_key.len);
  PGresult *res = fl__pg_exec(c,
                              "SELECT d.device_id FROM enrollment_tokens t"
                              " JOIN devices d ON d.device_id = t.used_by"
                              " WHERE t.token_hash = $1 AND d.public_key = $2"
                              " AND d.state = 'active'",
                              &p, false, NULL);
  if (res == NULL) {
    unavailable(r);
    return 0;
  }
  uint64_t id = PQntuples(res) == 1 ? fl__pg_u64(res, 0, 0) : 0;
  PQclear(res);
  if (id == 0)
    fl__resp_dev_error(r, 401, "bad_enrollment_token", "unknown, used or expired token", 0);
  return id;
}

/* Consumes the token and creates the device, or finds the device of a retried enrollment.
 * Returns the device id, 0 with the refusal in *r. */
static uint64_t consume_token(PGconn *c, const uint8_t th[FL_SHA256_LEN],
                              const Fl__V1__EnrollRequest *e, fl_resp *r) {
  char state[6];
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, th, FL_SHA256_LEN);
  fl__pgp_bin(&p, e->public_key.data, e->public_key.len);
  fl__pgp_text(&p, e->firmware ? e->firmware : "");
  /* A device's labels are its token's, set by the operator: they route it (its channel,
   * rollout cohorts, cohort pins, gate samples), so a device must not choose them. The labels
   * an EnrollRequest carries are not stored (docs/API.md 1.3). */
  PGresult *res = fl__pg_exec(
      c,
      "WITH tok AS (UPDATE enrollment_tokens SET used_at = now()"
      " WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING labels)"
      " INSERT INTO devices (public_key, labels, firmware)"
      " SELECT $2, tok.labels, $3 FROM tok RETURNING device_id",
      &p, false, state);
  if (res == NULL && strcmp(state, "23505") == 0) {
    fl__resp_dev_error(r, 409, "key_already_enrolled", "this public key is already enrolled", 0);
    return 0;
  }
  if (res == NULL) {
    unavailable(r);
    return 0;
  }
  if (PQntuples(res) == 0) {
    PQclear(res);
    return enrolled_before(c, th, e, r);
  }
  uint64_t id = fl__pg_u64(res, 0, 0);
  PQclear(res);
  fl__pgp_init(&p);
  fl__pgp_bin(&p, th, FL_SHA256_LEN);
  fl__pgp_u64(&p, id);
  res = fl__pg_exec(c, "UPDATE enrollment_tokens SET used_by = $2 WHERE token_hash = $1", &p,
                    false, NULL);
  if (res == NULL) {
    unavailable(r);
    return 0;
  }
  PQclear(res);
  return id;
}

/* The token, the device and the request's nonce in one transaction, the nonce last: an
 * enrollment with a bad token leaves nothing behind, not even a nonce row (anyone can sign
 * one with a key of their own). Returns the device id, 0 with the refusal in *r; on a refusal
 * nothing is committed (the pool rolls the transaction back). */
static uint64_t enroll_tx(PGconn *c, const Fl__V1__EnrollRequest *e,
                          const Fl__V1__SignedRequest *sr, fl_resp *r) {
  uint8_t th[FL_SHA256_LEN];
  fl_pgp p;
  fl__sha256(e->enrollment_token, strlen(e->enrollment_token), th);
  if (fl__pg_cmd(c, "BEGIN")) {
    unavailable(r);
    return 0;
  }
  uint64_t id = consume_token(c, th, e, r);
  if (id == 0)
    return 0;
  fl__pgp_init(&p);
  fl__pgp_bin(&p, sr->nonce.data, sr->nonce.len);
  PGresult *res = fl__pg_exec(c,
                              "INSERT INTO nonces (device_id, nonce) VALUES (0, $1)"
                              " ON CONFLICT DO NOTHING",
                              &p, false, NULL);
  bool fresh = res != NULL && strcmp(PQcmdTuples(res), "1") == 0;
  if (res != NULL && !fresh)
    fl__resp_dev_error(r, 401, "replayed_nonce", "nonce already used", 0);
  if (res == NULL || (fresh && fl__pg_cmd(c, "COMMIT"))) {
    fresh = false;
    unavailable(r);
  }
  PQclear(res);
  return fresh ? id : 0;
}

/* FL_AUTH_ENROLL: the envelope's signature by the enrolled key has verified. */
static void h_enroll(fl_srv *s, fl_req *q, fl_resp *r) {
  const fl_auth *a = q->auth;
  const Fl__V1__EnrollRequest *e = a->enroll;
  if (e->enrollment_token == NULL || e->enrollment_token[0] == '\0') {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "EnrollRequest needs a token and a 32-byte Ed25519 public key", 0);
    return;
  }
  bool text_ok = utf8_ok(e->firmware);
  for (size_t i = 0; text_ok && i < e->n_labels; i++)
    text_ok = utf8_ok(e->labels[i]->key) && utf8_ok(e->labels[i]->value);
  if (!text_ok) {
    fl__resp_dev_error(r, 400, "malformed_request", "labels and firmware must be UTF-8", 0);
    return;
  }
  uint64_t id = enroll_tx(a->c, e, a->sr, r);
  if (id == 0)
    return;
  Fl__V1__EnrollResponse resp = FL__V1__ENROLL_RESPONSE__INIT;
  resp.device_id = id;
  resp.coordinator_public_key = (ProtobufCBinaryData){FL_PUBKEY_LEN, s->pub};
  fl__resp_proto(r, 200, &resp.base);
  fl__slog(FL_LOG_INFO, "device_enrolled", "device=%" PRIu64, id);
}

/* ----- check-in ---------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Pace steering (fl__pace_interval_ms): spread devices that come back over [from + T,
 * from + 2T). With key != 0 the point in the spread is fixed by the key (a device asking again
 * gets the same time), else it is drawn anew. */
static int64_t retry_at(uint64_t device_id, uint64_t key, int64_t from, int64_t t) {
  if (t < 1)
    t = 1;
  uint64_t j = mix64(device_id ^ (key ? key * 0x9e3779b97f4a7c15ULL : (uint64_t)fl__now_ms()));
  return from + t + (int64_t)(j % (uint64_t)t);
}

typedef struct open_round {
  uint64_t round_id, model_id, base_version;
  int64_t deadline_ms;
  int64_t select_until_ms; /* 0: no selection window (first come, first served) */
  bool drawn;
  bool full; /* every place is taken (assigned >= max_assign) when the check-in read it */
  bool assigned, contributed;
  uint64_t last_round;      /* the device's latest accepted update: its round (0: none) */
  int64_t last_accepted_ms; /* and when it was accepted */
  fl_plan plan;
} open_round;

/* What one check-in statement reads: the registry generation and the device's channel label
 * (rollouts.c's cache), and the oldest open round of the requested model (or of any). */
typedef struct checkin_view {
  uint64_t gen;
  char channel[64];
  bool has_channel; /* the label is set (and fits): else the default channel */
  bool long_label;  /* set but longer than the cache keeps: the full query decides */
  bool evals_open;  /* some evaluation campaign is open (registry/evaluation.h) */
  uint8_t base_sha[FL_SHA256_LEN];
} checkin_view;

/* The round's plan: from the round cache (a round's facts never change), else parsed from the
 * row's JSON and cached. 0 or -1. */
static int round_plan(fl_srv *s, const PGresult *r, open_round *o) {
  fl_round_info ri;
  char msg[160];
  if (fl__round_cached(s->round_cache, o->round_id, &ri)) {
    o->plan = ri.plan;
    return 0;
  }
  json_t *cfg = json_loads(PQgetvalue(r, 0, 6), 0, NULL);
  int rc = fl__plan_from_json(&ri.plan, cfg, msg);
  json_decref(cfg);
  if (rc != 0)
    return -1;
  ri.model_id = o->model_id;
  ri.base_version = o->base_version;
  fl__round_store(s->round_cache, o->round_id, &ri);
  o->plan = ri.plan;
  return 0;
}

/* The check-in's one read (prepared). 1 an open round in *o, 0 none, -1 error (also when the
 * device row is gone, which authentication has just read). A device whose labels contain the
 * cohort of a drift retraining plan (docs/DRIFT.md 4) is offered that plan's round first, so
 * it is out of the model's main plan while the retraining runs, and stays out while the
 * retrained version's rollout to the cohort is live; other devices never see it. */
static int find_open_round(fl_srv *s, PGconn *c, uint64_t model_id, uint64_t device_id,
                           open_round *o, checkin_view *v) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, device_id);
  PGresult *r = fl__pg_exec_prep(
      c, "fl_checkin",
      "SELECT (SELECT gen FROM registry_generation WHERE id = 1), d.labels->>'channel',"
      " o.round_id, o.model_id, o.base_version, o.deadline, o.config, o.assigned, o.contributed,"
      " o.select_until, o.drawn, o.last_round, o.last_ms, o.sha, o.full,"
      " EXISTS (SELECT 1 FROM eval_campaigns WHERE state <> 'closed')"
      " FROM devices d LEFT JOIN LATERAL (SELECT r.round_id, r.model_id, r.base_version,"
      "  (extract(epoch FROM r.deadline_at) * 1000)::bigint AS deadline, p.config::text AS config,"
      "  EXISTS (SELECT 1 FROM assignments a WHERE a.round_id = r.round_id"
      "   AND a.device_id = $2) AS assigned,"
      "  EXISTS (SELECT 1 FROM acceptances x WHERE x.round_id = r.round_id"
      "   AND x.device_id = $2) AS contributed,"
      "  coalesce((extract(epoch FROM r.select_until) * 1000)::bigint, 0) AS select_until,"
      "  r.drawn_at IS NOT NULL AS drawn, coalesce(la.round_id, 0) AS last_round,"
      "  coalesce(la.ms, 0) AS last_ms,"
      "  (SELECT encode(v.sha256, 'hex') FROM versions v WHERE v.model_id = r.model_id"
      "   AND v.version = r.base_version) AS sha, r.assigned >= r.max_assign AS full"
      "  FROM rounds r JOIN plans p ON p.plan_id = r.plan_id"
      "  LEFT JOIN LATERAL (SELECT x.round_id,"
      "   (extract(epoch FROM x.accepted_at) * 1000)::bigint AS ms FROM acceptances x"
      "   WHERE x.device_id = $2 ORDER BY x.accepted_at DESC LIMIT 1) la ON true"
      "  WHERE r.state = 'open' AND ($1::bigint = 0 OR r.model_id = $1)"
      "  AND (p.drift_event_id IS NULL OR d.labels @> (p.config->'cohort'->'labels'))"
      "  AND (p.drift_event_id IS NOT NULL OR NOT EXISTS (SELECT 1 FROM drift_events e"
      "   JOIN rollouts y ON y.rollout_id = e.rollout_id WHERE e.model_id = r.model_id"
      "   AND y.state IN ('active', 'paused') AND d.labels @> y.cohort))"
      "  ORDER BY p.drift_event_id IS NULL, r.round_id LIMIT 1) o ON true"
      " WHERE d.device_id = $2",
      &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = -1;
  if (PQntuples(r) != 1)
    goto out;
  v->gen = fl__pg_u64(r, 0, 0);
  v->has_channel = !PQgetisnull(r, 0, 1) && strlen(PQgetvalue(r, 0, 1)) < sizeof v->channel;
  snprintf(v->channel, sizeof v->channel, "%s", v->has_channel ? PQgetvalue(r, 0, 1) : "");
  v->long_label = !PQgetisnull(r, 0, 1) && !v->has_channel;
  v->evals_open = strcmp(PQgetvalue(r, 0, 15), "t") == 0;
  rc = 0;
  if (PQgetisnull(r, 0, 2))
    goto out;
  o->round_id = fl__pg_u64(r, 0, 2);
  o->model_id = fl__pg_u64(r, 0, 3);
  o->base_version = fl__pg_u64(r, 0, 4);
  o->deadline_ms = fl__pg_i64(r, 0, 5);
  o->assigned = strcmp(PQgetvalue(r, 0, 7), "t") == 0;
  o->contributed = strcmp(PQgetvalue(r, 0, 8), "t") == 0;
  o->select_until_ms = fl__pg_i64(r, 0, 9);
  o->drawn = strcmp(PQgetvalue(r, 0, 10), "t") == 0;
  o->full = strcmp(PQgetvalue(r, 0, 14), "t") == 0;
  o->last_round = fl__pg_u64(r, 0, 11);
  o->last_accepted_ms = fl__pg_i64(r, 0, 12);
  /* A round's base version exists (close.c stores it before opening the round). */
  if (PQgetisnull(r, 0, 13) || fl__unhex(PQgetvalue(r, 0, 13), v->base_sha, FL_SHA256_LEN))
    rc = -1;
  else
    rc = round_plan(s, r, o) == 0 ? 1 : -1;
out:
  PQclear(r);
  return rc;
}

/* Records the device as a candidate of the round's draw. The table is UNLOGGED and the
 * statement runs on its own: no WAL, no wait for a flush, no lock on the round's row. */
static int add_candidate(PGconn *c, uint64_t round_id, uint64_t device_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  fl__pgp_u64(&p, device_id);
  PGresult *r = fl__pg_exec_prep(c, "fl_candidate",
                                 "INSERT INTO candidates (round_id, device_id) VALUES ($1, $2)"
                                 " ON CONFLICT DO NOTHING",
                                 &p, false, NULL);
  PQclear(r);
  return r != NULL ? 0 : -1;
}

/* The inference assignment and evaluation task of a check-in answer (rollouts.c); the
 * messages live in *ra's storage, which outlives the packing. */
typedef struct rollout_msgs {
  Fl__V1__RolloutAssignment ro;
  Fl__V1__EvalTask ev;
} rollout_msgs;

static void add_rollout(Fl__V1__CheckInResponse *resp, const fl_rollout_answer *ra,
                        rollout_msgs *m) {
  if (ra == NULL)
    return;
  if (ra->has_assignment) {
    fl__v1__rollout_assignment__init(&m->ro);
    m->ro.rollout_id = ra->rollout_id;
    m->ro.channel = (char *)ra->channel;
    m->ro.model_id = ra->model_id;
    m->ro.version = ra->version;
    m->ro.sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, (uint8_t *)(uintptr_t)ra->sha256};
    resp->rollout = &m->ro;
  }
  if (ra->has_eval) {
    fl__v1__eval_task__init(&m->ev);
    m->ev.model_id = ra->eval_model_id;
    m->ev.version = ra->eval_version;
    m->ev.gate_id = ra->gate_id;
    m->ev.campaign_id = ra->campaign_id;
    m->ev.sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, (uint8_t *)(uintptr_t)ra->eval_sha256};
    resp->eval = &m->ev;
  }
}

static void send_task(fl_srv *s, fl_resp *r, const open_round *o, uint64_t device_id,
                      const uint8_t sha[FL_SHA256_LEN], const fl_rollout_answer *ra) {
  Fl__V1__CheckInResponse resp = FL__V1__CHECK_IN_RESPONSE__INIT;
  rollout_msgs rm;
  add_rollout(&resp, ra, &rm);
  Fl__V1__TrainTask t = FL__V1__TRAIN_TASK__INIT;
  Fl__V1__Hyperparameters h = FL__V1__HYPERPARAMETERS__INIT;
  h.local_epochs = o->plan.local_epochs;
  h.batch_size = o->plan.batch_size;
  h.learning_rate = (float)o->plan.learning_rate;
  h.momentum = (float)o->plan.momentum;
  h.weight_decay = (float)o->plan.weight_decay;
  h.prox_mu = (float)o->plan.prox_mu;
  t.round_id = o->round_id;
  t.model_id = o->model_id;
  t.base_version = o->base_version;
  t.base_sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, (uint8_t *)(uintptr_t)sha};
  t.hyperparameters = &h;
  t.clip_norm = (float)o->plan.clip_norm;
  t.noise_stddev = (float)o->plan.local_noise_stddev;
  t.encoding = (Fl__V1__Encoding)o->plan.encoding;
  t.topk_fraction = (float)o->plan.topk_fraction;
  t.deadline_ms = fl__async_task_deadline_ms(&o->plan, o->deadline_ms, fl__now_ms());
  t.seed = mix64(o->round_id * 0x100000001b3ULL ^ device_id);
  Fl__V1__SecAggTask sa = FL__V1__SEC_AGG_TASK__INIT;
  if (FL_PLAN_SECAGG(&o->plan)) {
    sa.threshold = o->plan.secagg.threshold;
    sa.neighbors = o->plan.secagg.neighbors;
    t.secure_aggregation = &sa;
  }
  /* Signed for this device: the sizes and the base it names reach the device unchanged
   * (docs/SIGNING.md, "Task digest"). */
  uint8_t d[FL_SHA256_LEN], sig[FL_SIG_LEN];
  if (fl__task_digest(device_id, &t, d) != FL_OK || fl__sign(s->key, d, sizeof d, sig) != FL_OK) {
    unavailable(r);
    return;
  }
  t.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
  resp.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
  resp.task = &t;
  resp.server_time_ms = fl__now_ms();
  fl__resp_proto(r, 200, &resp.base);
}

static void send_retry(fl_resp *r, int64_t at, const char *reason,
                       const fl_rollout_answer *ra) {
  Fl__V1__CheckInResponse resp = FL__V1__CHECK_IN_RESPONSE__INIT;
  rollout_msgs rm;
  add_rollout(&resp, ra, &rm);
  Fl__V1__RetryWindow w = FL__V1__RETRY_WINDOW__INIT;
  w.retry_after_ms = at;
  w.reason = (char *)reason;
  resp.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY;
  resp.retry = &w;
  resp.server_time_ms = fl__now_ms();
  fl__resp_proto(r, 200, &resp.base);
}

/* Whether the device trains in the open round: 1 assigned (task), 0 told to wait (the retry
 * is in *r), 2 a place is free and to be claimed (claim_place), -1 database error. With a selection
 * window, devices that check in before the draw are candidates told to come back just after it
 * (fl__round_draw assigns the drawn ones); after the draw, free slots go to whoever checks in. A
 * device that finished a round waits out a retry window from its acceptance like the devices that
 * were not selected. */
static int checkin_decide(fl_srv *s, PGconn *c, const open_round *o, uint64_t device_id, fl_resp *r,
                          const fl_rollout_answer *ra, const Fl__V1__CheckInRequest *ci) {
  int64_t now = fl__now_ms();
  int64_t t =
      fl__pace_interval_ms(&o->plan, s->cfg.checkin_interval_ms, fl__rounds_fleet(s->rounds));
  bool window = o->select_until_ms > 0;
  /* An async plan's device with an update in the open buffer from an older task may train on
   * (its next update goes into a later buffer, rounds/async.h); on this buffer's own task it
   * waits like a sync one. */
  if (o->contributed && (o->assigned || !FL_PLAN_IS_ASYNC(&o->plan))) {
    int64_t at = window ? retry_at(device_id, o->last_round, o->last_accepted_ms, t) : 0;
    send_retry(r, at > now ? at : retry_at(device_id, 0, now, t), "already_contributed", ra);
    return 0;
  }
  if (o->assigned)
    return 1;
  /* Outside the plan's cohort: never a candidate, never assigned (cohort.h). */
  char why[256];
  int eligible = fl__cohort_empty(&o->plan.cohort)
                     ? 1
                     : fl__cohort_eligible(c, &o->plan.cohort, device_id, ci->conditions,
                                           ci->n_conditions, why, sizeof why);
  if (eligible <= 0) {
    if (eligible == 0)
      send_retry(r, retry_at(device_id, 0, now, t), "not_eligible", ra);
    return eligible;
  }
  if (window && o->last_round != 0) {
    int64_t at = retry_at(device_id, o->last_round, o->last_accepted_ms, t);
    if (at > now) {
      send_retry(r, at, "already_contributed", ra);
      return 0;
    }
  }
  if (window && !o->drawn) {
    if (add_candidate(c, o->round_id, device_id))
      return -1;
    /* Back just after the draw (the ticker's next pass after the window), spread a little so
     * that the candidates do not all arrive in the same millisecond. */
    int64_t w = (int64_t)(o->plan.selection_window_s * 1000.0);
    int64_t spread = w / 4 < 1000 ? w / 4 + 1 : 1000;
    int64_t from = (o->select_until_ms > now ? o->select_until_ms : now) + s->cfg.tick_ms;
    send_retry(r, from + (int64_t)(mix64(device_id ^ o->round_id) % (uint64_t)spread),
               "selection_pending", ra);
    return 0;
  }
  if (o->full) {
    send_retry(r, retry_at(device_id, 0, now, t), "round_full", ra);
    return 0;
  }
  return 2;
}

/* A check-in parked while its claim of a place is group-committed (fl__agg_assign): what the
 * answer needs, kept past the handler. */
typedef struct checkin_claim {
  fl_req *q;
  open_round o;
  uint64_t device_id;
  uint8_t sha[FL_SHA256_LEN];
  fl_rollout_answer ra;
  int result;
} checkin_claim;

static void claim_committed(void *arg, int result) {
  checkin_claim *k = arg;
  k->result = result;
  fl__req_resume(k->q); /* MHD's lock orders the store before claim_finish reads it */
}

/* The resumed check-in (fl_finish): the task once the assignment is durable, else told to
 * come back. r == NULL: the connection ended first. */
static void claim_finish(fl_srv *s, fl_req *q, fl_resp *r, void *arg) {
  checkin_claim *k = arg;
  (void)q;
  if (r != NULL && k->result > 0) {
    send_task(s, r, &k->o, k->device_id, k->sha, &k->ra);
  } else if (r != NULL && k->result == 0) {
    int64_t t =
        fl__pace_interval_ms(&k->o.plan, s->cfg.checkin_interval_ms, fl__rounds_fleet(s->rounds));
    send_retry(r, retry_at(k->device_id, 0, fl__now_ms(), t), "round_full", &k->ra);
  } else if (r != NULL) {
    unavailable(r);
  }
  free(k);
}

/* Claims a place for the device: the request is parked until the committer has made the
 * assignment durable (no per-device commit on the round's row). */
static void claim_place(fl_srv *s, fl_req *q, const open_round *o, uint64_t device_id,
                        const uint8_t sha[FL_SHA256_LEN], const fl_rollout_answer *ra, fl_resp *r) {
  checkin_claim *k = calloc(1, sizeof *k);
  if (k == NULL) {
    unavailable(r);
    return;
  }
  *k = (checkin_claim){.q = q, .o = *o, .device_id = device_id, .ra = *ra};
  memcpy(k->sha, sha, sizeof k->sha);
  /* Parked before the claim: the completion may resume the connection at once. */
  fl__req_defer(q, claim_finish, k);
  fl__agg_assign(s->agg, o->round_id, device_id, claim_committed, k);
}

/* A service window must name the model and version that scored it. */
static bool checkin_stats_bad(const Fl__V1__DriftStats *m, char why[160]) {
  if (fl__drift_check(m, why))
    return true;
  if (m->model_id == 0 || m->version == 0 || !id_ok(m->model_id) || !id_ok(m->version)) {
    snprintf(why, 160, "service_stats must name its model and version (ids 1 to 2^63-1)");
    return true;
  }
  return false;
}

#define FL_MAX_CONDITIONS 32
#define FL_STR_(x) #x
#define FL_STR(x) FL_STR_(x)

static bool conditions_ok(const Fl__V1__CheckInRequest *ci) {
  if (ci->n_conditions > FL_MAX_CONDITIONS)
    return false;
  for (size_t i = 0; i < ci->n_conditions; i++) {
    size_t n = strlen(ci->conditions[i]);
    if (n == 0 || n >= FL_COHORT_NAME_MAX || !utf8_ok(ci->conditions[i]))
      return false;
  }
  return true;
}

/* A plan's evaluation campaign (registry/evaluation.h) in the answer's EvalTask, when no gate
 * asked for one. 0 or -1. */
static int eval_task(PGconn *c, uint64_t device_id, const Fl__V1__CheckInRequest *ci,
                     fl_rollout_answer *ra) {
  fl_eval_hand t;
  int rc = fl__eval_for_checkin(c, device_id, ci->model_id, ci->conditions, ci->n_conditions, &t);
  if (rc <= 0)
    return rc;
  ra->has_eval = true;
  ra->gate_id = 0;
  ra->campaign_id = t.campaign_id;
  ra->eval_model_id = t.model_id;
  ra->eval_version = t.version;
  memcpy(ra->eval_sha256, t.sha256, FL_SHA256_LEN);
  return 0;
}

static void h_checkin(fl_srv *s, fl_req *q, fl_resp *r) {
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  Fl__V1__CheckInRequest *ci = NULL;
  uint8_t sha[FL_SHA256_LEN];
  open_round o;
  checkin_view cv;
  fl_rollout_answer ra;
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, sr->body.len);
  ci = fl__v1__check_in_request__unpack(&pa, sr->body.len, sr->body.data);
  if (ci == NULL || !id_ok(ci->model_id) || !id_ok(ci->running_model_id) ||
      !id_ok(ci->running_version)) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "body is not a CheckInRequest (ids are at most 2^63-1)", 0);
    goto out;
  }
  char why[160];
  if (ci->service_stats != NULL && checkin_stats_bad(ci->service_stats, why)) {
    fl__resp_dev_error(r, 400, "bad_stats", why, 0);
    goto out;
  }
  if (!conditions_ok(ci)) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "at most " FL_STR(FL_MAX_CONDITIONS) " conditions of 1-63 UTF-8 bytes", 0);
    goto out;
  }
  /* The service window (drift/drift.h): one statement, only when the device sends one. */
  if (ci->service_stats != NULL && fl__drift_store_service(c, sr->device_id, ci->service_stats))
    goto unavail;
  /* Told to wait or assigned, the check-in writes its telemetry later (store/seen.h). */
  fl__rounds_seen(s->rounds, sr->device_id, ci->running_model_id, ci->running_version);
  int found = find_open_round(s, c, ci->model_id, sr->device_id, &o, &cv);
  if (found < 0)
    goto unavail;
  if (cv.long_label
          ? fl__rollout_for_device(c, sr->device_id, ci->model_id, ci->running_model_id, &ra)
          : fl__rollout_for_checkin(c, cv.gen, cv.has_channel ? cv.channel : NULL, sr->device_id,
                                    ci->model_id, ci->running_model_id, &ra))
    goto unavail;
  if (cv.evals_open && !ra.has_eval && eval_task(c, sr->device_id, ci, &ra))
    goto unavail;
  if (found == 0) {
    send_retry(r, retry_at(sr->device_id, 0, fl__now_ms(), s->cfg.checkin_interval_ms),
               "no_open_round", &ra);
    goto out;
  }
  int assigned = checkin_decide(s, c, &o, sr->device_id, r, &ra, ci);
  if (assigned < 0)
    goto unavail;
  memcpy(sha, cv.base_sha, sizeof sha);
  if (assigned == 2)
    claim_place(s, q, &o, sr->device_id, sha, &ra, r);
  else if (assigned > 0)
    send_task(s, r, &o, sr->device_id, sha, &ra);
  goto out;
unavail:
  unavailable(r);
out:
  fl__v1__check_in_request__free_unpacked(ci, NULL);
}

/* ----- model download ---------------------------------------------------------------------- */

/* The packed version goes out as the cache holds it: one refcounted buffer per version for
 * every download (models.c), released by MHD once the response is sent. A cached version
 * costs no database statement beyond authentication; its sha answers If-None-Match. */
static void h_download(fl_srv *s, fl_req *q, fl_resp *r) {
  PGconn *c = q->auth->c;
  uint8_t sha[FL_SHA256_LEN];
  uint64_t model_id, version;
  const char *rest;
  fl_packed *pk = NULL;
  if (fl__path_u64(q->path, "/v1/models/", &model_id, &rest) ||
      fl__path_u64(rest, "/versions/", &version, &rest) || *rest != '\0') {
    fl__resp_dev_error(r, 404, "not_found", "expected /v1/models/{id}/versions/{version}", 0);
    return;
  }
  int err = fl__version_acquire(s, c, model_id, version, &pk);
  if (err == FL_E_NOTFOUND) {
    fl__resp_dev_error(r, 404, "unknown_version", "no such model version", 0);
    goto out;
  }
  if (err) {
    unavailable(r);
    goto out;
  }
  size_t len;
  const uint8_t *data = fl__packed_data(pk, &len, sha);
  char hex[2 * FL_SHA256_LEN + 1];
  const char *inm = fl__req_header(q, "If-None-Match");
  fl__hex(sha, sizeof sha, hex);
  snprintf(r->etag, sizeof r->etag, "\"%s\"", hex);
  if (inm != NULL && (strcmp(inm, r->etag) == 0 || strcmp(inm, hex) == 0)) {
    fl__resp_text(r, 304, NULL, "");
    goto out;
  }
  fl__resp_shared(r, 200, "application/x-protobuf", data, len, fl__packed_release, pk);
  pk = NULL; /* the response's now */
out:
  fl__packed_release(pk);
}

/* ----- evaluation reports ------------------------------------------------------------------ */

static void h_evaluation(fl_srv *s, fl_req *q, fl_resp *r) {
  PGconn *c = q->auth->c;
  const Fl__V1__SignedRequest *sr = q->auth->sr;
  Fl__V1__EvalReport *e = NULL;
  uint8_t sha[FL_SHA256_LEN];
  json_t *m = NULL;
  char *mj = NULL;
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, sr->body.len);
  e = fl__v1__eval_report__unpack(&pa, sr->body.len, sr->body.data);
  if (e == NULL || !id_ok(e->model_id) || !id_ok(e->version) || !id_ok(e->gate_id) ||
      !id_ok(e->campaign_id) || (e->gate_id != 0 && e->campaign_id != 0)) {
    fl__resp_dev_error(r, 400, "malformed_request",
                       "body is not an EvalReport (ids are at most 2^63-1, a gate or a campaign)",
                       0);
    goto out;
  }
  if (e->sample_count > s->cfg.max_samples) {
    fl__resp_dev_error(r, 422, "bad_sample_count", "sample_count out of range", 0);
    goto out;
  }
  m = json_object();
  for (size_t i = 0; m != NULL && i < e->n_metrics; i++) {
    if (!utf8_ok(e->metrics[i]->name)) {
      fl__resp_dev_error(r, 400, "malformed_request", "metric names must be UTF-8", 0);
      goto out;
    }
    if (!isfinite(e->metrics[i]->value) || e->metrics[i]->name[0] == '\0') {
      fl__resp_dev_error(r, 422, "non_finite", "metrics need a name and a finite value", 0);
      goto out;
    }
    json_object_set_new(m, e->metrics[i]->name, json_real(e->metrics[i]->value));
  }
  int err = fl__version_sha_cached(s, c, e->model_id, e->version, sha);
  if (err == FL_E_NOTFOUND) {
    fl__resp_dev_error(r, 404, "unknown_version", "no such model version", 0);
    goto out;
  }
  int gate =
      e->gate_id != 0 && err == FL_OK ? fl__gate_sampled(c, e->gate_id, sr->device_id) : 1;
  if (gate == 1 && e->campaign_id != 0 && err == FL_OK)
    gate = fl__eval_sampled(c, e->campaign_id, sr->device_id, e->model_id, e->version);
  if (gate == 0) {
    fl__resp_dev_error(
        r, 404, e->gate_id ? "unknown_gate" : "unknown_campaign",
        e->gate_id ? "no rollout with this gate" : "no evaluation campaign of this version", 0);
    goto out;
  }
  if (gate == 2) {
    /* Only the sample the gate (or campaign) asked decides it; an unasked report would be a
     * free vote. */
    fl__resp_dev_error(r, 403, "not_sampled", "this device is not in the evaluation's sample", 0);
    goto out;
  }
  err = gate < 0 ? FL_E_DB : err;
  mj = m ? json_dumps(m, JSON_COMPACT) : NULL;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, sr->device_id);
  fl__pgp_u64(&p, e->model_id);
  fl__pgp_u64(&p, e->version);
  fl__pgp_u64(&p, e->gate_id);
  fl__pgp_u64(&p, e->sample_count);
  fl__pgp_text(&p, mj);
  fl__pgp_u64(&p, e->campaign_id);
  PGresult *res = err || mj == NULL ? NULL
                                    : fl__pg_exec(c,
                                                  "INSERT INTO evaluations (device_id, model_id,"
                                                  " version, gate_id, sample_count, metrics,"
                                                  " campaign_id)"
                                                  " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
                                                  &p, false, NULL);
  if (res == NULL) {
    unavailable(r);
    goto out;
  }
  PQclear(res);
  /* The report is stored; a gate that cannot be decided now is decided by the next report. */
  if (e->gate_id != 0)
    fl__gate_on_report(c, e->gate_id);
  if (e->campaign_id != 0)
    fl__eval_on_report(c, e->campaign_id);
  Fl__V1__EvalAck ack = FL__V1__EVAL_ACK__INIT;
  ack.recorded = true;
  fl__resp_proto(r, 200, &ack.base);
out:
  free(mj);
  json_decref(m);
  fl__v1__eval_report__free_unpacked(e, NULL);
}

/* Enrollments, check-ins and evaluation reports are a few hundred bytes; the limit leaves room
 * for many labels or metrics (docs/API.md 1.2). A download is a GET: no body. */
#define SMALL_BODY 65536

/* Who may call each route (http.h, fl_auth_policy) is its last field: dispatch runs it. */
const fl_route fl__dev_routes[] = {
    {"POST", "/v1/enroll", "enroll", h_enroll, SMALL_BODY, NULL, FL_AUTH_ENROLL},
    {"POST", "/v1/checkin", "checkin", h_checkin, SMALL_BODY, NULL, FL_AUTH_DEVICE},
    {"GET", "/v1/models/", "download", h_download, 0, NULL, FL_AUTH_DEVICE},
    {"POST", "/v1/updates", "update", fl__devapi_update, 0, fl__devapi_update_limit,
     FL_AUTH_UPLOAD},
    {"POST", "/v1/evaluations", "evaluation", h_evaluation, SMALL_BODY, NULL, FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/keys", "secagg_keys", fl__secagg_h_keys, SMALL_BODY, NULL, FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/state", "secagg_state", fl__secagg_h_state, SMALL_BODY, NULL,
     FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/shares", "secagg_shares", fl__secagg_h_shares, FL_SECAGG_BODY, NULL,
     FL_AUTH_DEVICE},
    {"POST", "/v1/secagg/unmask", "secagg_unmask", fl__secagg_h_unmask, FL_SECAGG_BODY, NULL,
     FL_AUTH_DEVICE},
    {NULL, NULL, NULL, NULL, 0, NULL, FL_AUTH_UNDECLARED},
};
