/*
 * Admin API for rollouts: channels, staged rollouts with evaluation gates, pins and the fleet
 * state (docs/API.md, section 5). Every change runs in one transaction with its audit row;
 * lists and objects are built as JSON by PostgreSQL like the rest of the admin API.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/adminapi.h"
#include "auth/auth.h"
#include "registry/rollouts.h"

static void db_error(fl_resp *r) {
  fl__resp_admin_error(r, 503, "unavailable", "database error");
}

static void bad_request(fl_resp *r, const char *msg) {
  fl__resp_admin_error(r, 400, "bad_request", msg);
}

/* A positive integer field; 0 when absent or not one. */
static uint64_t body_u64(const json_t *body, const char *key) {
  json_t *v = json_object_get(body, key);
  return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* Keys of `body` must all be in `allowed` (NULL-terminated). */
static bool only_keys(const json_t *body, const char *const *allowed) {
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)body, k, v) {
    const char *const *a = allowed;
    while (*a != NULL && strcmp(*a, k) != 0)
      a++;
    if (*a == NULL)
      return false;
  }
  return true;
}

/* Labels for a cohort or a pin: an object of strings. */
static bool labels_ok(const json_t *l) {
  const char *k;
  json_t *v;
  if (!json_is_object(l))
    return false;
  json_object_foreach((json_t *)l, k, v) if (!json_is_string(v)) return false;
  return true;
}

static bool name_ok(const char *n) {
  size_t len = n ? strlen(n) : 0;
  if (len == 0 || len > 63)
    return false;
  return strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789-_.") == len;
}

/* 0 when the model has that version; -1 with *r set when not (404) or on a database error. */
static int need_version(fl_resp *r, PGconn *c, uint64_t model_id, uint64_t version) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  PGresult *res = fl__pg_exec(c, "SELECT 1 FROM versions WHERE model_id = $1 AND version = $2", &p,
                              false, NULL);
  if (res == NULL) {
    db_error(r);
    return -1;
  }
  int n = PQntuples(res);
  PQclear(res);
  if (n == 1)
    return 0;
  fl__resp_admin_error(r, 404, "not_found", "no such model version");
  return -1;
}

/* Answers the object `sql` ($1 = id) builds as JSON text, read in the caller's transaction
 * after the change, and commits with the audit row for target "`kind`:id". */
static void answer_audited(fl_resp *r, admin_ctx *a, const char *sql, const char *kind, uint64_t id,
                           const char *action) {
  char target[40];
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = fl__pg_exec(a->c, sql, &p, false, NULL);
  json_t *j = res && PQntuples(res) == 1 ? json_loads(PQgetvalue(res, 0, 0), 0, NULL) : NULL;
  PQclear(res);
  if (j == NULL) {
    db_error(r);
    return;
  }
  snprintf(target, sizeof target, "%s:%" PRIu64, kind, id);
  fl__admin_commit_audited(r, a, action, target, j);
}

/* The POST of a collection, for operators: `create` runs with the request begun. */
static void operator_post(fl_srv *s, fl_req *q, fl_resp *r,
                          void (*create)(fl_resp *r, admin_ctx *a)) {
  admin_ctx a;
  if (fl__admin_begin(s, q, r, &a))
    return;
  create(r, &a);
  fl__admin_end(s, &a);
}

/* ----- channels ------------------------------------------------------------------------------ */

#define CHANNEL_JSON                                                                      \
  "json_build_object('channel_id', c.channel_id, 'model_id', c.model_id, 'name', c.name," \
  " 'version', c.version, 'previous_version', c.previous_version,"                        \
  " 'rollout_id', (SELECT y.rollout_id FROM rollouts y WHERE y.channel_id = c.channel_id" \
  "  AND y.state IN ('active', 'paused')), 'updated_at', c.updated_at)"

static void channel_answer(fl_resp *r, admin_ctx *a, uint64_t channel_id, const char *action) {
  answer_audited(r, a, "SELECT " CHANNEL_JSON "::text FROM channels c WHERE c.channel_id = $1",
                 "channel", channel_id, action);
}

/* POST /admin/v1/channels {"model_id","name","version"}: creates the channel or moves it to
 * the version (its old version becomes the previous one). */
static void channel_set(fl_resp *r, admin_ctx *a) {
  static const char *const keys[] = {"model_id", "name", "version", NULL};
  uint64_t model_id = body_u64(a->body, "model_id"), version = body_u64(a->body, "version");
  const char *name = json_string_value(json_object_get(a->body, "name"));
  if (!only_keys(a->body, keys) || model_id == 0 || version == 0 || !name_ok(name)) {
    bad_request(r, "model_id, version (positive integers) and name ([a-z0-9._-], 1..63)");
    return;
  }
  if (need_version(r, a->c, model_id, version))
    return;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, name);
  fl__pgp_u64(&p, version);
  PGresult *res = fl__pg_cmd(a->c, "BEGIN")
                      ? NULL
                      : fl__pg_exec(a->c,
                                    "INSERT INTO channels (model_id, name, version)"
                                    " VALUES ($1, $2, $3) ON CONFLICT (model_id, name) DO UPDATE"
                                    " SET previous_version = CASE WHEN channels.version <>"
                                    "  EXCLUDED.version THEN channels.version"
                                    "  ELSE channels.previous_version END,"
                                    " version = EXCLUDED.version, updated_at = now()"
                                    " RETURNING channel_id",
                                    &p, false, NULL);
  if (res == NULL) {
    db_error(r);
    return;
  }
  uint64_t id = fl__pg_u64(res, 0, 0);
  PQclear(res);
  channel_answer(r, a, id, "channel.set");
}

void fl__admin_channels(fl_srv *s, fl_req *q, fl_resp *r) {
  if (strcmp(q->method, "GET") == 0)
    fl__admin_list_by_model(s, q, r, "channels",
                            "SELECT json_agg(" CHANNEL_JSON
                            " ORDER BY c.model_id, c.name)::text"
                            " FROM channels c WHERE $1::bigint = 0 OR c.model_id = $1");
  else
    operator_post(s, q, r, channel_set);
}

/* POST /admin/v1/channels/{id}/rollback: the channel goes back to its previous version, for
 * every device of the channel at its next check-in. */
void fl__admin_channel_sub(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id;
  if (fl__admin_begin_at(s, q, r, "/admin/v1/channels/", "/rollback", &id, &a))
    return;
  PGresult *res = fl__admin_change_by_id(r, &a,
                                         "UPDATE channels SET version = previous_version,"
                                         " previous_version = version, updated_at = now()"
                                         " WHERE channel_id = $1 AND previous_version IS NOT NULL"
                                         " RETURNING channel_id",
                                         id, "no such channel, or it has no previous version");
  if (res != NULL)
    channel_answer(r, &a, id, "channel.rollback");
  PQclear(res);
  fl__admin_end(s, &a);
}

/* ----- rollouts ------------------------------------------------------------------------------ */

#define ROLLOUT_JSON                                                                           \
  "json_build_object('rollout_id', r.rollout_id, 'model_id', r.model_id,"                      \
  " 'channel_id', r.channel_id, 'channel', (SELECT c.name FROM channels c"                     \
  "  WHERE c.channel_id = r.channel_id), 'version', r.version,"                                \
  " 'from_version', r.from_version, 'percent', r.percent, 'cohort', r.cohort,"                 \
  " 'state', r.state, 'reason', r.reason, 'gate', r.gate, 'gate_state', r.gate_state,"         \
  " 'gate_result', r.gate_result, 'gate_reports', (SELECT coalesce(json_object_agg(t.version," \
  "  t.n), '{}') FROM (SELECT e.version, count(DISTINCT e.device_id) AS n FROM evaluations e"  \
  "  WHERE e.gate_id = r.rollout_id GROUP BY e.version) t),"                                   \
  " 'created_at', r.created_at, 'updated_at', r.updated_at)"

/* Answers the rollout as it is now in the caller's transaction, after the audit row. */
static void rollout_answer(fl_resp *r, admin_ctx *a, uint64_t id, const char *action) {
  answer_audited(r, a, "SELECT " ROLLOUT_JSON "::text FROM rollouts r WHERE r.rollout_id = $1",
                 "rollout", id, action);
}

static bool pct_ok(const json_t *v) {
  return json_is_number(v) && json_number_value(v) >= 0 && json_number_value(v) <= 100;
}

/* A gate (rollouts.h). Also the gate of a drift retraining policy's rollout (drift/policy.c). */
json_t *fl__rollout_gate_normalize(const json_t *g, const char **msg) {
  static const char *const keys[] = {"metric",      "min",          "max",
                                     "min_delta",   "max_delta",    "sample_pct",
                                     "min_reports", "auto_promote", NULL};
  static const char *const conds[] = {"min", "max", "min_delta", "max_delta"};
  const char *metric = json_string_value(json_object_get(g, "metric"));
  json_t *sp = json_object_get(g, "sample_pct"), *mr = json_object_get(g, "min_reports");
  json_t *ap = json_object_get(g, "auto_promote");
  int n_cond = 0;
  *msg =
      "gate: metric (string), at least one of min/max/min_delta/max_delta (numbers),"
      " sample_pct (0 < p <= 100), min_reports (>= 1), auto_promote (bool)";
  if (!json_is_object(g) || !only_keys(g, keys) || metric == NULL || metric[0] == '\0' ||
      (sp && (!pct_ok(sp) || json_number_value(sp) <= 0)) ||
      (mr && (!json_is_integer(mr) || json_integer_value(mr) < 1)) || (ap && !json_is_boolean(ap)))
    return NULL;
  for (size_t i = 0; i < sizeof conds / sizeof conds[0]; i++) {
    json_t *v = json_object_get(g, conds[i]);
    if (v != NULL && (!json_is_number(v) || !isfinite(json_number_value(v))))
      return NULL;
    n_cond += v != NULL;
  }
  if (n_cond == 0)
    return NULL;
  json_t *out = json_deep_copy(g);
  if (out != NULL && sp == NULL)
    json_object_set_new(out, "sample_pct", json_real(10));
  if (out != NULL && mr == NULL)
    json_object_set_new(out, "min_reports", json_integer(10));
  if (out != NULL && ap == NULL)
    json_object_set_new(out, "auto_promote", json_false());
  return out;
}

typedef struct rollout_req {
  uint64_t model_id, version;
  const char *channel;
  double percent;
  char *cohort, *gate; /* JSON text, malloc'ed (gate may be NULL) */
} rollout_req;

static int rollout_req_parse(const json_t *b, rollout_req *rq, const char **msg) {
  static const char *const keys[] = {"model_id", "channel", "version", "percent",
                                     "cohort",   "gate",    NULL};
  json_t *pct = json_object_get(b, "percent"), *cohort = json_object_get(b, "cohort");
  json_t *gate = json_object_get(b, "gate");
  memset(rq, 0, sizeof *rq);
  rq->model_id = body_u64(b, "model_id");
  rq->version = body_u64(b, "version");
  rq->channel =
      json_object_get(b, "channel") ? json_string_value(json_object_get(b, "channel")) : "stable";
  rq->percent = pct ? json_number_value(pct) : 0;
  *msg = "model_id, version, channel, percent (0..100), cohort (object of strings), gate";
  if (!only_keys(b, keys) || rq->model_id == 0 || rq->version == 0 || !name_ok(rq->channel) ||
      (pct && !pct_ok(pct)) || (cohort && !labels_ok(cohort)))
    return -1;
  json_t *g = NULL;
  if (gate != NULL && (g = fl__rollout_gate_normalize(gate, msg)) == NULL)
    return -1;
  rq->cohort = cohort ? json_dumps(cohort, JSON_COMPACT) : strdup("{}");
  rq->gate = g ? json_dumps(g, JSON_COMPACT) : NULL;
  json_decref(g);
  *msg = "out of memory";
  return rq->cohort == NULL || (g != NULL && rq->gate == NULL) ? -1 : 0;
}

/* POST /admin/v1/rollouts. */
static void rollout_create(fl_resp *r, admin_ctx *a) {
  rollout_req rq;
  const char *msg;
  char state[6];
  if (rollout_req_parse(a->body, &rq, &msg)) {
    bad_request(r, msg);
    goto out;
  }
  if (need_version(r, a->c, rq.model_id, rq.version))
    goto out;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, rq.model_id);
  fl__pgp_text(&p, rq.channel);
  fl__pgp_u64(&p, rq.version);
  fl__pgp_f64(&p, rq.percent);
  fl__pgp_text(&p, rq.cohort);
  fl__pgp_text(&p, rq.gate);
  PGresult *res =
      fl__pg_cmd(a->c, "BEGIN")
          ? NULL
          : fl__pg_exec(a->c,
                        "INSERT INTO rollouts (channel_id, model_id, version, from_version,"
                        " percent, cohort, gate, gate_state)"
                        " SELECT c.channel_id, c.model_id, $3, c.version, $4, $5::jsonb,"
                        " $6::jsonb, CASE WHEN $6 IS NULL THEN NULL ELSE 'evaluating' END"
                        " FROM channels c WHERE c.model_id = $1 AND c.name = $2"
                        " RETURNING rollout_id",
                        &p, false, state);
  if (res == NULL && strcmp(state, "23505") == 0)
    fl__resp_admin_error(r, 409, "rollout_active", "the channel has a live rollout");
  else if (res == NULL)
    db_error(r);
  else if (PQntuples(res) == 0)
    fl__resp_admin_error(r, 404, "not_found", "no such channel (set it first)");
  else
    rollout_answer(r, a, fl__pg_u64(res, 0, 0), "rollout.create");
  PQclear(res);
out:
  free(rq.cohort);
  free(rq.gate);
}

void fl__admin_rollouts(fl_srv *s, fl_req *q, fl_resp *r) {
  if (strcmp(q->method, "GET") == 0)
    fl__admin_list_by_model(s, q, r, "rollouts",
                            "SELECT json_agg(" ROLLOUT_JSON
                            " ORDER BY r.rollout_id)::text"
                            " FROM rollouts r WHERE $1::bigint = 0 OR r.model_id = $1");
  else
    operator_post(s, q, r, rollout_create);
}

/* The rollout row an operation works on, locked for the transaction. */
typedef struct rollout_row {
  char state[16], gate_state[16];
  double percent;
  uint64_t version, from_version, channel_id, channel_version;
} rollout_row;

/* 1 found (locked), 0 not found, -1 database error. Opens the transaction. */
static int rollout_lock(PGconn *c, uint64_t id, rollout_row *row) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res =
      fl__pg_cmd(c, "BEGIN")
          ? NULL
          : fl__pg_exec(c,
                        "SELECT r.state, coalesce(r.gate_state, ''), r.percent, r.version,"
                        " r.from_version, r.channel_id, c.version FROM rollouts r"
                        " JOIN channels c ON c.channel_id = r.channel_id"
                        " WHERE r.rollout_id = $1 FOR UPDATE OF r, c",
                        &p, false, NULL);
  if (res == NULL)
    return -1;
  int found = PQntuples(res) == 1;
  if (found) {
    snprintf(row->state, sizeof row->state, "%s", PQgetvalue(res, 0, 0));
    snprintf(row->gate_state, sizeof row->gate_state, "%s", PQgetvalue(res, 0, 1));
    row->percent = fl__pg_f64(res, 0, 2);
    row->version = fl__pg_u64(res, 0, 3);
    row->from_version = fl__pg_u64(res, 0, 4);
    row->channel_id = fl__pg_u64(res, 0, 5);
    row->channel_version = fl__pg_u64(res, 0, 6);
  }
  PQclear(res);
  return found;
}

/* Runs one change of the rollout (and its channel) with $1 = the rollout id; 1 or -1. */
static int rollout_exec(PGconn *c, const char *sql, uint64_t id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = fl__pg_exec(c, sql, &p, false, NULL);
  PQclear(res);
  return res == NULL ? -1 : 1;
}

static bool is_live(const rollout_row *row) {
  return strcmp(row->state, "active") == 0 || strcmp(row->state, "paused") == 0;
}

/* Sets the refusal and returns 0, the "nothing changed" result of the operations below. */
static int refuse(fl_resp *r, int status, const char *reason, const char *msg) {
  fl__resp_admin_error(r, status, reason, msg);
  return 0;
}

/* The operations run with the transaction open and the row locked. Each returns 1 when the
 * change was made (the caller answers), 0 when *r holds a refusal, -1 on a database error. */

static int op_raise(fl_resp *r, admin_ctx *a, uint64_t id, const rollout_row *row) {
  json_t *pj = json_object_get(a->body, "percent");
  if (strcmp(row->state, "active") != 0)
    return refuse(r, 409, "not_active", "only an active rollout can be raised");
  if (!pct_ok(pj) || json_number_value(pj) < row->percent)
    return refuse(r, 400, "bad_request", "percent: a number in [current percent, 100]");
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  fl__pgp_f64(&p, json_number_value(pj));
  PGresult *res = fl__pg_exec(
      a->c, "UPDATE rollouts SET percent = $2, updated_at = now() WHERE rollout_id = $1", &p, false,
      NULL);
  PQclear(res);
  return res == NULL ? -1 : 1;
}

static int op_pause_resume(fl_resp *r, admin_ctx *a, uint64_t id, const rollout_row *row,
                           bool pause) {
  if (strcmp(row->state, pause ? "active" : "paused") != 0)
    return refuse(r, 409, "bad_state", pause ? "the rollout is not active" : "not paused");
  return rollout_exec(a->c,
                      pause ? "UPDATE rollouts SET state = 'paused', updated_at = now()"
                              " WHERE rollout_id = $1"
                            : "UPDATE rollouts SET state = 'active', updated_at = now()"
                              " WHERE rollout_id = $1",
                      id);
}

static int op_promote(fl_resp *r, admin_ctx *a, uint64_t id, const rollout_row *row) {
  if (!is_live(row))
    return refuse(r, 409, "not_live", "only an active or paused rollout can be promoted");
  if (strcmp(row->gate_state, "evaluating") == 0)
    return refuse(r, 409, "gate_pending", "the evaluation gate has not decided yet");
  return fl__rollout_promote_tx(a->c, id) ? -1 : 1;
}

/* A live rollout ends (its devices go back to the channel's version); the promoted rollout the
 * channel runs takes the channel back to the version it replaced. */
static int op_rollback(fl_resp *r, admin_ctx *a, uint64_t id, const rollout_row *row) {
  if (is_live(row))
    return rollout_exec(a->c,
                        "UPDATE rollouts SET state = 'rolled_back', updated_at = now(),"
                        " reason = 'rolled back by an operator' WHERE rollout_id = $1",
                        id);
  if (strcmp(row->state, "promoted") != 0 || row->channel_version != row->version)
    return refuse(r, 409, "not_current",
                  "only a live rollout, or the promoted one the channel runs, rolls back");
  return rollout_exec(a->c,
                      "WITH r AS (UPDATE rollouts SET state = 'rolled_back',"
                      " updated_at = now(), reason = 'rolled back by an operator'"
                      " WHERE rollout_id = $1 RETURNING channel_id, version, from_version)"
                      " UPDATE channels c SET version = r.from_version,"
                      " previous_version = r.version, updated_at = now()"
                      " FROM r WHERE c.channel_id = r.channel_id",
                      id);
}

static int rollout_change(fl_resp *r, admin_ctx *a, uint64_t id, const char *op,
                          const rollout_row *row) {
  if (strcmp(op, "raise") == 0)
    return op_raise(r, a, id, row);
  if (strcmp(op, "pause") == 0 || strcmp(op, "resume") == 0)
    return op_pause_resume(r, a, id, row, op[0] == 'p');
  if (strcmp(op, "promote") == 0)
    return op_promote(r, a, id, row);
  if (strcmp(op, "rollback") == 0)
    return op_rollback(r, a, id, row);
  return refuse(r, 404, "not_found", "no such endpoint");
}

static void rollout_op(fl_resp *r, admin_ctx *a, uint64_t id, const char *op) {
  rollout_row row;
  char action[32];
  int found = rollout_lock(a->c, id, &row);
  if (found <= 0) {
    found == 0 ? fl__resp_admin_error(r, 404, "not_found", "no such rollout") : db_error(r);
    return;
  }
  int done = rollout_change(r, a, id, op, &row);
  if (done < 0)
    db_error(r);
  if (done <= 0)
    return;
  snprintf(action, sizeof action, "rollout.%s", op);
  rollout_answer(r, a, id, action);
}

/* GET /admin/v1/rollouts/{id}; POST /admin/v1/rollouts/{id}/{raise,pause,resume,promote,
 * rollback}. */
void fl__admin_rollout_sub(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id;
  const char *rest;
  bool get = strcmp(q->method, "GET") == 0;
  if (fl__path_u64(q->path, "/admin/v1/rollouts/", &id, &rest) ||
      (get ? *rest != '\0' : rest[0] != '/')) {
    fl__resp_admin_error(r, 404, "not_found", "no such endpoint");
    return;
  }
  if (fl__admin_begin(s, q, r, &a))
    return;
  if (get) {
    fl_pgp p;
    fl__pgp_init(&p);
    fl__pgp_u64(&p, id);
    fl__admin_json_query(r, a.c, NULL,
                         "SELECT " ROLLOUT_JSON "::text FROM rollouts r WHERE r.rollout_id = $1",
                         &p, true);
  } else {
    rollout_op(r, &a, id, rest + 1);
  }
  fl__admin_end(s, &a);
}

/* ----- pins ---------------------------------------------------------------------------------- */

#define PIN_JSON                                                                      \
  "json_build_object('pin_id', pin_id, 'model_id', model_id, 'device_id', device_id," \
  " 'labels', labels, 'version', version, 'created_at', created_at)"

static void pin_create(fl_resp *r, admin_ctx *a) {
  static const char *const keys[] = {"model_id", "version", "device_id", "labels", NULL};
  uint64_t model_id = body_u64(a->body, "model_id"), version = body_u64(a->body, "version");
  uint64_t device_id = body_u64(a->body, "device_id");
  json_t *labels = json_object_get(a->body, "labels");
  char target[40];
  if (!only_keys(a->body, keys) || model_id == 0 || version == 0 ||
      (device_id != 0) == (labels != NULL) || (labels && !labels_ok(labels))) {
    bad_request(r, "model_id, version and either device_id or labels (object of strings)");
    return;
  }
  if (need_version(r, a->c, model_id, version))
    return;
  char *lj = labels ? json_dumps(labels, JSON_COMPACT) : NULL;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  if (device_id != 0)
    fl__pgp_u64(&p, device_id);
  else
    fl__pgp_text(&p, NULL);
  fl__pgp_text(&p, lj);
  fl__pgp_u64(&p, version);
  PGresult *res = (labels && lj == NULL) || fl__pg_cmd(a->c, "BEGIN")
                      ? NULL
                      : fl__pg_exec(a->c,
                                    "INSERT INTO pins (model_id, device_id, labels, version)"
                                    " VALUES ($1, $2::bigint, $3::jsonb, $4) RETURNING " PIN_JSON
                                    "::text, pin_id",
                                    &p, false, NULL);
  free(lj);
  json_t *j = res ? json_loads(PQgetvalue(res, 0, 0), 0, NULL) : NULL;
  if (j == NULL) {
    db_error(r);
  } else {
    snprintf(target, sizeof target, "pin:%s", PQgetvalue(res, 0, 1));
    fl__admin_commit_audited(r, a, "pin.create", target, j);
  }
  PQclear(res);
}

void fl__admin_pins(fl_srv *s, fl_req *q, fl_resp *r) {
  if (strcmp(q->method, "GET") == 0)
    fl__admin_list(s, q, r, "pins",
                   "SELECT json_agg(" PIN_JSON " ORDER BY pin_id)::text FROM pins");
  else
    operator_post(s, q, r, pin_create);
}

void fl__admin_pin_delete(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id;
  char target[40];
  if (fl__admin_begin_at(s, q, r, "/admin/v1/pins/", "", &id, &a))
    return;
  PGresult *res = fl__admin_change_by_id(
      r, &a, "DELETE FROM pins WHERE pin_id = $1 RETURNING pin_id", id, "no such pin");
  if (res != NULL) {
    snprintf(target, sizeof target, "pin:%" PRIu64, id);
    fl__admin_commit_audited(r, &a, "pin.delete", target,
                             json_pack("{s:I, s:b}", "pin_id", (json_int_t)id, "deleted", 1));
  }
  PQclear(res);
  fl__admin_end(s, &a);
}

/* ----- fleet state --------------------------------------------------------------------------- */

/* GET /admin/v1/fleet?model_id=ID: per channel of the model, how many active devices follow
 * it and which version of the model they report running (0: none of this model). */
void fl__admin_fleet(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t model_id;
  if (fl__query_id(q, "model_id", &model_id) || model_id == 0) {
    fl__resp_admin_error(r, 400, "bad_request", "model_id query parameter required");
    return;
  }
  if (fl__admin_begin(s, q, r, &a))
    return;
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__admin_json_query(
      r, a.c, "channels",
      "WITH d AS (SELECT coalesce(labels->>'channel', 'stable') AS ch,"
      "  CASE WHEN running_model_id = $1 THEN coalesce(running_version, 0) ELSE 0 END AS v"
      "  FROM devices WHERE state = 'active'),"
      " g AS (SELECT ch, v, count(*) AS n FROM d GROUP BY ch, v),"
      " t AS (SELECT ch, sum(n) AS total FROM g GROUP BY ch)"
      " SELECT json_agg(json_build_object('channel', c.name, 'version', c.version,"
      "  'devices', coalesce(t.total, 0),"
      "  'on_channel_version', coalesce((SELECT g.n::float8 / t.total FROM g"
      "   WHERE g.ch = c.name AND g.v = c.version), 0),"
      "  'running', (SELECT coalesce(json_agg(json_build_object('version', g.v,"
      "   'devices', g.n, 'fraction', g.n::float8 / t.total) ORDER BY g.v), '[]')"
      "   FROM g WHERE g.ch = c.name)) ORDER BY c.name)::text"
      " FROM channels c LEFT JOIN t ON t.ch = c.name WHERE c.model_id = $1",
      &p, false);
  fl__admin_end(s, &a);
}
