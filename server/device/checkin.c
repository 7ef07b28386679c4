/*
 * POST /v1/checkin (devapi.h): one read of the device's standing (which also finishes its
 * authentication: policy FL_AUTH_DEVICE_FOLD, auth/auth.h), the rollout and evaluation
 * answers, then the decision: told to wait, the task again, or a free place claimed through
 * the group committer (fl__agg_assign) and answered once that claim is durable.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "device/devapi.h"
#include "digest.h"
#include "drift/drift.h"
#include "mem.h"
#include "registry/evaluation.h"
#include "registry/rollouts.h"
#include "rounds/aggregate.h"
#include "rounds/async.h"
#include "rounds/cohort.h"
#include "rounds/round_cache.h"
#include "rounds/rounds.h"

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

/* The check-in's one statement (prepared), which also finishes its authentication (the route
 * is FL_AUTH_DEVICE_FOLD: the device active, the nonce recorded, auth.h). 1 an open round in
 * *o, 0 none, -1 a database error; *f says what the fold found (f->found false: no row).A device
 * whose labels contain the cohort of a drift retraining plan (docs/DRIFT.md 4) is offered that
 * plan's round first, so it is out of the model's main plan while the retraining runs, and stays
 * out while the retrained version's rollout to the cohort is live; others never see it. */
static int find_open_round(fl_srv *s, fl_auth *a, uint64_t model_id, open_round *o, checkin_view *v,
                           fl_auth_fold *f) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__auth_fold_params(a, &p);
  fl__pgp_u64(&p, model_id);
  PGresult *r = fl__pg_exec_prep(
      a->c, "fl_checkin",
      FL_AUTH_FOLD_CTE("$1", "$2", "$3", "$4") "SELECT (SELECT gen FROM registry_generation WHERE id = 1), d.labels->>'channel',"
      " o.round_id, o.model_id, o.base_version, o.deadline, o.config, o.assigned, o.contributed,"
      " o.select_until, o.drawn, o.last_round, o.last_ms, o.sha, o.full,"
      " EXISTS (SELECT 1 FROM eval_campaigns WHERE state <> 'closed'), " FL_AUTH_FOLD_COLS("$3")
      " FROM devices d LEFT JOIN LATERAL (SELECT r.round_id, r.model_id, r.base_version,"
      "  (extract(epoch FROM r.deadline_at) * 1000)::bigint AS deadline, p.config::text AS config,"
      "  EXISTS (SELECT 1 FROM assignments a WHERE a.round_id = r.round_id"
      "   AND a.device_id = $1) AS assigned,"
      "  EXISTS (SELECT 1 FROM acceptances x WHERE x.round_id = r.round_id"
      "   AND x.device_id = $1) AS contributed,"
      "  coalesce((extract(epoch FROM r.select_until) * 1000)::bigint, 0) AS select_until,"
      "  r.drawn_at IS NOT NULL AS drawn, coalesce(la.round_id, 0) AS last_round,"
      "  coalesce(la.ms, 0) AS last_ms,"
      "  (SELECT encode(v.sha256, 'hex') FROM versions v WHERE v.model_id = r.model_id"
      "   AND v.version = r.base_version) AS sha, r.assigned >= r.max_assign AS full"
      "  FROM rounds r JOIN plans p ON p.plan_id = r.plan_id"
      "  LEFT JOIN LATERAL (SELECT x.round_id,"
      "   (extract(epoch FROM x.accepted_at) * 1000)::bigint AS ms FROM acceptances x"
      "   WHERE x.device_id = $1 ORDER BY x.accepted_at DESC LIMIT 1) la ON true"
      "  WHERE r.state = 'open' AND ($5::bigint = 0 OR r.model_id = $5)"
      "  AND (p.drift_event_id IS NULL OR d.labels @> (p.config->'cohort'->'labels'))"
      "  AND (p.drift_event_id IS NOT NULL OR NOT EXISTS (SELECT 1 FROM drift_events e"
      "   JOIN rollouts y ON y.rollout_id = e.rollout_id WHERE e.model_id = r.model_id"
      "   AND y.state IN ('active', 'paused') AND d.labels @> y.cohort))"
      "  ORDER BY p.drift_event_id IS NULL, r.round_id LIMIT 1) o ON true"
      " WHERE d.device_id = $1",
      &p, false, NULL);
  if (r == NULL)
    return -1;
  int rc = -1;
  fl__auth_fold_read(r, 16, f);
  if (!f->found)
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
    fl__dev_unavailable(r);
    return;
  }
  t.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
  resp.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
  resp.task = &t;
  resp.server_time_ms = fl__now_ms();
  fl__resp_proto(r, 200, &resp.base);
}

static void send_retry(fl_resp *r, int64_t at, const char *reason, const fl_rollout_answer *ra) {
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
    fl__dev_unavailable(r);
  }
  free(k);
}

/* Claims a place for the device: the request is parked until the committer has made the
 * assignment durable (no per-device commit on the round's row). */
static void claim_place(fl_srv *s, fl_req *q, const open_round *o, uint64_t device_id,
                        const uint8_t sha[FL_SHA256_LEN], const fl_rollout_answer *ra, fl_resp *r) {
  checkin_claim *k = calloc(1, sizeof *k);
  if (k == NULL) {
    fl__dev_unavailable(r);
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
  if (m->model_id == 0 || m->version == 0 || !fl__dev_id_ok(m->model_id) ||
      !fl__dev_id_ok(m->version)) {
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
    if (n == 0 || n >= FL_COHORT_NAME_MAX || !fl__dev_utf8_ok(ci->conditions[i]))
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

void fl__dev_h_checkin(fl_srv *s, fl_req *q, fl_resp *r) {
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
  if (ci == NULL || !fl__dev_id_ok(ci->model_id) || !fl__dev_id_ok(ci->running_model_id) ||
      !fl__dev_id_ok(ci->running_version)) {
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
  /* The read first: it finishes the authentication, before anything is written. */
  fl_auth_fold fold = {0};
  int found = find_open_round(s, q->auth, ci->model_id, &o, &cv, &fold);
  /* No row: a database error, or the device row gone since the pipeline saw it. */
  if (!fold.found)
    goto unavail;
  if (fl__auth_fold_finish(s, q->auth, &fold, r))
    goto out;
  if (found < 0)
    goto unavail;
  /* The service window (drift/drift.h): one statement, only when the device sends one. */
  if (ci->service_stats != NULL && fl__drift_store_service(c, sr->device_id, ci->service_stats))
    goto unavail;
  /* Told to wait or assigned, the check-in writes its telemetry later (store/seen.h). */
  fl__rounds_seen(s->rounds, sr->device_id, ci->running_model_id, ci->running_version);
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
  fl__dev_unavailable(r);
out:
  fl__v1__check_in_request__free_unpacked(ci, NULL);
}
