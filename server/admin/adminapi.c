/*
 * Admin API: JSON over HTTP with bearer tokens (roles viewer < operator < admin). The role a
 * route needs is its row's policy in the table at the end, checked by dispatch before the
 * handler runs (auth/pipeline.c); a handler never checks a role itself. Every change runs in
 * one transaction with its audit_log row. Lists are built by PostgreSQL
 * (json_agg) so that the column-to-field mapping lives in one SQL statement per endpoint.
 */
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin/adminapi.h"
#include "auth/auth.h"
#include "auth/keys.h"
#include "drift/drift.h"
#include "fl/version.h"
#include "privacy/budget.h"
#include "registry/models.h"
#include "rounds/plan.h"
#include "registry/rollouts.h"
#include "rounds/rounds.h"

/* The request's context: the connection and actor of the route's policy (dispatch has
 * checked the token and its role, auth/pipeline.c) and, for POST, the JSON body. 0, or -1
 * with *r set. */
static int begin(fl_srv *s, fl_req *q, fl_resp *r, admin_ctx *a) {
  (void)s;
  memset(a, 0, sizeof *a);
  a->c = q->auth->c;
  snprintf(a->actor, sizeof a->actor, "%s", q->auth->actor);
  if (strcmp(q->method, "POST") != 0)
    return 0;
  json_error_t je;
  a->body = q->len ? json_loadb((const char *)q->body, q->len, 0, &je) : json_object();
  if (json_is_object(a->body))
    return 0;
  fl__resp_admin_error(r, 400, "bad_json", "body must be a JSON object");
  json_decref(a->body);
  a->body = NULL;
  return -1;
}

/* The connection stays the request's (dispatch gives it back). */
static void end(fl_srv *s, admin_ctx *a) {
  (void)s;
  json_decref(a->body);
}

static void db_error(fl_resp *r) { fl__resp_admin_error(r, 503, "unavailable", "database error"); }

/* Runs a query whose single text cell is JSON and answers {key: that JSON}. */
static void json_query(fl_resp *r, PGconn *c, const char *key, const char *sql, const fl_pgp *p,
                       bool single) {
  PGresult *res = fl__pg_exec(c, sql, p, false, NULL);
  if (res == NULL) {
    db_error(r);
    return;
  }
  json_t *v = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)
                  ? json_loads(PQgetvalue(res, 0, 0), JSON_DECODE_ANY, NULL)
                  : NULL;
  PQclear(res);
  if (v == NULL && single) {
    fl__resp_admin_error(r, 404, "not_found", "no such object");
    return;
  }
  fl__resp_json(r, 200, single ? v : json_pack("{s:o}", key, v ? v : json_array()));
}

/* Commits the caller's transaction after its audit row; answers with `ok` (stolen). */
static void commit_audited(fl_resp *r, admin_ctx *a, const char *action, const char *target,
                           json_t *ok) {
  if (fl__audit(a->c, a->actor, action, target, a->body) || fl__pg_cmd(a->c, "COMMIT")) {
    json_decref(ok);
    db_error(r);
    return;
  }
  fl__slog(FL_LOG_INFO, "admin_change", "action=%s target=%s actor=%s", action, target,
           a->actor);
  fl__resp_json(r, 200, ok);
}

/* ----- request shapes shared by many endpoints --------------------------------------------- */

void fl__admin_list(fl_srv *s, fl_req *q, fl_resp *r, const char *key, const char *sql) {
  admin_ctx a;
  if (begin(s, q, r, &a))
    return;
  json_query(r, a.c, key, sql, NULL, false);
  end(s, &a);
}

void fl__admin_list_by_model(fl_srv *s, fl_req *q, fl_resp *r, const char *key, const char *sql) {
  admin_ctx a;
  fl_pgp p;
  uint64_t mid;
  if (fl__query_id(q, "model_id", &mid)) {
    fl__resp_admin_error(r, 400, "bad_request", "model_id must be a decimal id");
    return;
  }
  if (begin(s, q, r, &a))
    return;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, mid);
  json_query(r, a.c, key, sql, &p, false);
  end(s, &a);
}

int fl__admin_begin_at(fl_srv *s, fl_req *q, fl_resp *r, const char *prefix, const char *suffix,
                       uint64_t *id, admin_ctx *a) {
  const char *rest;
  if (fl__path_u64(q->path, prefix, id, &rest) || strcmp(rest, suffix) != 0) {
    fl__resp_admin_error(r, 404, "not_found", "no such endpoint");
    return -1;
  }
  return begin(s, q, r, a);
}

PGresult *fl__admin_change_by_id(fl_resp *r, admin_ctx *a, const char *sql, uint64_t id,
                                 const char *missing) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = fl__pg_cmd(a->c, "BEGIN") ? NULL : fl__pg_exec(a->c, sql, &p, false, NULL);
  if (res == NULL) {
    db_error(r);
    return NULL;
  }
  if (PQntuples(res) == 0) {
    fl__resp_admin_error(r, 404, "not_found", missing);
    PQclear(res);
    return NULL;
  }
  return res;
}

/* ----- tokens -------------------------------------------------------------------------------- */

/* Admin tokens made through the API expire: by default after 90 days, at most after a year
 * (docs/API.md section 3). Only the bootstrap token has no expiry. */
#define TOKEN_TTL_DEFAULT_S 7776000
#define TOKEN_TTL_MAX_S 31536000

/* A token's name: up to 100 printable characters (it is shown in lists and audit actors). */
static bool good_token_name(const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
      return false;
  return n <= 100;
}

static void token_create(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  char tok[65], target[32];
  if (begin(s, q, r, &a))
    return;
  json_t *jn = json_object_get(a.body, "name"), *je = json_object_get(a.body, "expires_in_s");
  int role = fl__role_parse(json_string_value(json_object_get(a.body, "role")));
  const char *name = jn ? json_string_value(jn) : "";
  json_int_t ttl = je ? (json_is_integer(je) ? json_integer_value(je) : -1) : TOKEN_TTL_DEFAULT_S;
  if (role < 0 || name == NULL || !good_token_name(name) || ttl < 1 || ttl > TOKEN_TTL_MAX_S) {
    fl__resp_admin_error(r, 400, "bad_request",
                         "role admin, operator or viewer; name a string of up to 100 printable "
                         "characters; expires_in_s 1..31536000 (default 7776000, 90 days)");
    goto out;
  }
  if (fl__pg_cmd(a.c, "BEGIN")) {
    db_error(r);
    goto out;
  }
  uint64_t id = fl__auth_new_token(a.c, role, name, (int64_t)ttl, a.actor, tok);
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = id == 0 ? NULL
                          : fl__pg_exec(a.c,
                                        "SELECT to_json(expires_at)#>>'{}' FROM admin_tokens"
                                        " WHERE token_id = $1",
                                        &p, false, NULL);
  if (res == NULL || PQntuples(res) != 1) {
    PQclear(res);
    db_error(r);
    goto out;
  }
  snprintf(target, sizeof target, "token:%" PRIu64, id);
  /* The secret is in this answer only; the audit row gets the request (role, name, expiry). */
  commit_audited(r, &a, "token.create", target,
                 json_pack("{s:s, s:I, s:s, s:s, s:s}", "token", tok, "token_id", (json_int_t)id,
                           "role", json_string_value(json_object_get(a.body, "role")), "name", name,
                           "expires_at", PQgetvalue(res, 0, 0)));
  PQclear(res);
out:
  OPENSSL_cleanse(tok, sizeof tok);
  end(s, &a);
}

/* Lists every token without its secret (only its hash is stored anyway). */
static void token_list(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  if (begin(s, q, r, &a))
    return;
  json_query(r, a.c, "tokens",
             "SELECT json_agg(json_build_object('token_id', token_id, 'name', name, 'role', role,"
             " 'state', CASE WHEN revoked_at IS NOT NULL THEN 'revoked'"
             "  WHEN expires_at <= now() THEN 'expired' ELSE 'active' END,"
             " 'bootstrap', bootstrap, 'created_at', created_at, 'created_by', created_by,"
             " 'expires_at', expires_at, 'last_used_at', last_used_at, 'revoked_at', revoked_at)"
             " ORDER BY token_id)::text FROM admin_tokens",
             NULL, false);
  end(s, &a);
}

static void h_tokens(fl_srv *s, fl_req *q, fl_resp *r) {
  if (strcmp(q->method, "GET") == 0)
    token_list(s, q, r);
  else
    token_create(s, q, r);
}

/* POST /admin/v1/tokens/{id}/revoke. The last usable admin token is not revoked (409): with
 * none left, only a new FL_ADMIN_TOKEN and a restart would let anyone in again. The table lock
 * makes two concurrent revocations of the last two admin tokens take turns. */
static void h_token_revoke(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id;
  char target[32];
  fl_pgp p;
  if (fl__admin_begin_at(s, q, r, "/admin/v1/tokens/", "/revoke", &id, &a))
    return;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res =
      fl__pg_cmd(a.c, "BEGIN") || fl__pg_cmd(a.c,
                                             "LOCK TABLE admin_tokens IN SHARE ROW"
                                             " EXCLUSIVE MODE")
          ? NULL
          : fl__pg_exec(a.c,
                        "UPDATE admin_tokens t SET revoked_at = coalesce(t.revoked_at, now())"
                        " WHERE t.token_id = $1 AND (t.role <> 'admin' OR t.revoked_at IS NOT NULL"
                        "  OR EXISTS (SELECT 1 FROM admin_tokens o WHERE o.token_id <> t.token_id"
                        "   AND o.role = 'admin' AND o.revoked_at IS NULL"
                        "   AND (o.expires_at IS NULL OR o.expires_at > now())))"
                        " RETURNING to_json(t.revoked_at)#>>'{}'",
                        &p, false, NULL);
  PGresult *found =
      res == NULL || PQntuples(res) > 0
          ? NULL
          : fl__pg_exec(a.c, "SELECT 1 FROM admin_tokens WHERE token_id = $1", &p, false, NULL);
  if (res == NULL || (PQntuples(res) == 0 && found == NULL)) {
    db_error(r);
  } else if (PQntuples(res) == 0 && PQntuples(found) == 0) {
    fl__resp_admin_error(r, 404, "not_found", "no such token");
  } else if (PQntuples(res) == 0) {
    fl__resp_admin_error(r, 409, "last_admin_token",
                         "this is the last usable admin token: create another one first");
  } else {
    snprintf(target, sizeof target, "token:%" PRIu64, id);
    commit_audited(r, &a, "token.revoke", target,
                   json_pack("{s:I, s:s, s:s}", "token_id", (json_int_t)id, "state", "revoked",
                             "revoked_at", PQgetvalue(res, 0, 0)));
  }
  PQclear(found);
  PQclear(res);
  end(s, &a);
}

static void h_enrollment_tokens(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  json_t *count = NULL, *ttl = NULL, *labels = NULL, *out = NULL;
  if (begin(s, q, r, &a))
    return;
  count = json_object_get(a.body, "count");
  ttl = json_object_get(a.body, "ttl_s");
  labels = json_object_get(a.body, "labels");
  json_int_t n = count ? json_integer_value(count) : 1;
  json_int_t ttl_s = ttl ? json_integer_value(ttl) : 86400;
  /* ttl_s is bounded (ten years) so that now() + ttl stays a valid timestamp. */
  if (n < 1 || n > 10000 || ttl_s < 1 || ttl_s > 315360000 ||
      (labels && !json_is_object(labels))) {
    fl__resp_admin_error(r, 400, "bad_request",
                         "count 1..10000, ttl_s 1..315360000 and labels an object of strings");
    goto done;
  }
  char *lj = labels ? json_dumps(labels, JSON_COMPACT) : NULL;
  out = json_array();
  int failed = out == NULL || fl__pg_cmd(a.c, "BEGIN");
  for (json_int_t i = 0; !failed && i < n; i++) {
    uint8_t raw[16], hash[FL_SHA256_LEN];
    char hex[33];
    fl_pgp p;
    failed = fl__random_bytes(raw, sizeof raw);
    fl__hex(raw, sizeof raw, hex);
    fl__sha256(hex, strlen(hex), hash);
    fl__pgp_init(&p);
    fl__pgp_bin(&p, hash, sizeof hash);
    fl__pgp_text(&p, lj ? lj : "{}");
    fl__pgp_i64(&p, (int64_t)ttl_s);
    PGresult *res = failed ? NULL
                           : fl__pg_exec(a.c,
                                         "INSERT INTO enrollment_tokens (token_hash, labels,"
                                         " expires_at) VALUES ($1, $2::jsonb,"
                                         " now() + make_interval(secs => $3::float8))",
                                         &p, false, NULL);
    failed = res == NULL || json_array_append_new(out, json_string(hex));
    PQclear(res);
  }
  free(lj);
  if (failed) {
    db_error(r);
    goto done;
  }
  commit_audited(r, &a, "enrollment_tokens.create", "", json_pack("{s:O}", "tokens", out));
done:
  json_decref(out);
  end(s, &a);
}

/* ----- models ------------------------------------------------------------------------------ */

static void h_models_create(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  fl_model_spec spec;
  char msg[160], target[32];
  uint64_t id = 0;
  if (begin(s, q, r, &a))
    return;
  const char *name = json_string_value(json_object_get(a.body, "name"));
  json_t *sj = json_object_get(a.body, "spec"), *seed = json_object_get(a.body, "seed");
  if (name == NULL || name[0] == '\0' || (seed && !json_is_integer(seed))) {
    fl__resp_admin_error(r, 400, "bad_request", "name (string), spec and seed (integer)");
    goto out;
  }
  if (fl__spec_from_json(&spec, sj, msg)) {
    fl__resp_admin_error(r, 400, "bad_spec", msg);
    goto out;
  }
  if (fl__pg_cmd(a.c, "BEGIN")) {
    db_error(r);
    goto out;
  }
  int err = fl__model_create(s, a.c, name, sj, &spec,
                             seed ? (uint64_t)json_integer_value(seed) : 1, &id);
  if (err == FL_E_STATE) {
    fl__resp_admin_error(r, 409, "name_taken", "a model with this name exists");
    goto out;
  }
  if (err) {
    db_error(r);
    goto out;
  }
  snprintf(target, sizeof target, "model:%" PRIu64, id);
  commit_audited(r, &a, "model.create", target,
                 json_pack("{s:I, s:i}", "model_id", (json_int_t)id, "version", 1));
out:
  end(s, &a);
}

static void h_models_list(fl_srv *s, fl_req *q, fl_resp *r) {
  fl__admin_list(s, q, r, "models",
                 "SELECT json_agg(json_build_object('model_id', m.model_id, 'name', m.name,"
                 " 'n_params', m.n_params, 'seed', m.seed, 'spec', m.spec_json,"
                 " 'latest_version', (SELECT max(v.version) FROM versions v"
                 "   WHERE v.model_id = m.model_id),"
                 " 'created_at', m.created_at) ORDER BY m.model_id)::text FROM models m");
}

/* A version as the admin API shows it, with its federated evaluation (registry/evaluation.h:
 * one entry per campaign, its policy, how many devices it sampled and the aggregated result). */
#define VERSION_OBJ                                                                       \
  "json_build_object('model_id', v.model_id, 'version', v.version,"                       \
  " 'parent_version', v.parent_version, 'round_id', v.round_id,"                          \
  " 'sha256', encode(v.sha256, 'hex'), 'signature', encode(v.signature, 'hex'),"          \
  " 'metrics', v.metrics, 'created_at', v.created_at, 'evaluation',"                      \
  " (SELECT coalesce(json_agg(json_build_object('campaign_id', c.campaign_id, 'plan_id'," \
  "  c.plan_id, 'state', c.state, 'policy', c.policy, 'cohort', c.cohort, 'sampled',"     \
  "  (SELECT count(*) FROM eval_tasks t WHERE t.campaign_id = c.campaign_id), 'result',"  \
  "  c.result) ORDER BY c.campaign_id), '[]') FROM eval_campaigns c"                      \
  "  WHERE c.model_id = v.model_id AND c.version = v.version))"

static void versions_list(fl_resp *r, admin_ctx *a, uint64_t model_id) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  json_query(r, a->c, "versions",
             "SELECT json_agg(" VERSION_OBJ
             " ORDER BY v.version)::text"
             " FROM versions v WHERE v.model_id = $1",
             &p, false);
}

/* GET /admin/v1/models/{id}/versions/{version}. */
static void version_get(fl_resp *r, admin_ctx *a, uint64_t model_id, uint64_t version) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_u64(&p, version);
  json_query(r, a->c, "version",
             "SELECT " VERSION_OBJ
             "::text FROM versions v"
             " WHERE v.model_id = $1 AND v.version = $2",
             &p, true);
}

static void plan_create(fl_resp *r, admin_ctx *a, uint64_t model_id) {
  fl_plan plan;
  char msg[160], state[6], target[32];
  uint64_t plan_id, round_id;
  fl_pgp p;
  if (fl__plan_from_json(&plan, a->body, msg)) {
    fl__resp_admin_error(r, 400, "bad_plan", msg);
    return;
  }
  char *cj = NULL;
  json_t *norm = fl__plan_to_json(&plan);
  cj = norm ? json_dumps(norm, JSON_COMPACT) : NULL;
  json_decref(norm);
  uint64_t population = 0;
  double rate = 1;
  bool began = cj != NULL && fl__pg_cmd(a->c, "BEGIN") == 0;
  if (began && FL_PLAN_DP(&plan) && fl__privacy_population(a->c, &plan, &population, &rate))
    began = false;
  /* A budget that one round already exceeds would stop the plan before it trained at all. */
  double first = began && plan.max_epsilon > 0 ? fl__privacy_epsilon(&plan, rate, 1) : 0;
  if (began && !(first <= plan.max_epsilon || plan.max_epsilon <= 0)) {
    free(cj);
    snprintf(msg, sizeof msg,
             "max_epsilon %g is below the epsilon of one round (%.4g at sampling rate %.4g)",
             plan.max_epsilon, first, rate);
    fl__resp_admin_error(r, 400, "bad_plan", msg);
    return;
  }
  fl__pgp_init(&p);
  fl__pgp_u64(&p, model_id);
  fl__pgp_text(&p, cj);
  if (FL_PLAN_DP(&plan)) {
    fl__pgp_u64(&p, population);
    fl__pgp_f64(&p, rate);
  } else {
    fl__pgp_text(&p, NULL);
    fl__pgp_text(&p, NULL);
  }
  PGresult *res =
      !began ? NULL
             : fl__pg_exec(a->c,
                           "INSERT INTO plans (model_id, config, dp_population,"
                           " dp_sampling_rate)"
                           " SELECT model_id, $2::jsonb, $3::bigint, $4::float8 FROM models"
                           " WHERE model_id = $1"
                           " RETURNING plan_id, (SELECT max(version) FROM versions"
                           "  WHERE model_id = $1)",
                           &p, false, state);
  free(cj);
  if (res == NULL) {
    if (strcmp(state, "23505") == 0)
      fl__resp_admin_error(r, 409, "plan_active", "the model already has an active plan");
    else
      db_error(r);
    return;
  }
  int found = PQntuples(res);
  plan_id = found ? fl__pg_u64(res, 0, 0) : 0;
  uint64_t base = found ? fl__pg_u64(res, 0, 1) : 0;
  PQclear(res);
  if (!found) {
    fl__resp_admin_error(r, 404, "not_found", "no such model");
    return;
  }
  if (fl__round_open(a->c, plan_id, model_id, base, &plan, &round_id)) {
    db_error(r);
    return;
  }
  snprintf(target, sizeof target, "plan:%" PRIu64, plan_id);
  commit_audited(r, a, "plan.create", target,
                 json_pack("{s:I, s:I, s:I, s:o}", "plan_id", (json_int_t)plan_id, "round_id",
                           (json_int_t)round_id, "model_id", (json_int_t)model_id, "plan",
                           fl__plan_to_json(&plan)));
}

/* /admin/v1/models/{id}/versions[/{version}] (GET) and /admin/v1/models/{id}/plans (POST). */
static void h_model_sub(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id, version = 0;
  const char *rest, *vrest = "";
  bool get = strcmp(q->method, "GET") == 0;
  bool one = get && fl__path_u64(q->path, "/admin/v1/models/", &id, &rest) == 0 &&
             fl__path_u64(rest, "/versions/", &version, &vrest) == 0 && *vrest == '\0';
  if (!one && (fl__path_u64(q->path, "/admin/v1/models/", &id, &rest) ||
               strcmp(rest, get ? "/versions" : "/plans") != 0)) {
    fl__resp_admin_error(r, 404, "not_found", "no such endpoint");
    return;
  }
  if (begin(s, q, r, &a))
    return;
  if (one)
    version_get(r, &a, id, version);
  else if (get)
    versions_list(r, &a, id);
  else
    plan_create(r, &a, id);
  end(s, &a);
}

static void h_plan_stop(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id;
  char target[32];
  fl_pgp p;
  if (fl__admin_begin_at(s, q, r, "/admin/v1/plans/", "/stop", &id, &a))
    return;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = fl__pg_cmd(a.c, "BEGIN")
                      ? NULL
                      : fl__pg_exec(a.c,
                                    "WITH st AS (UPDATE plans SET state = 'stopped'"
                                    " WHERE plan_id = $1 AND state = 'active' RETURNING plan_id)"
                                    " UPDATE rounds SET state = 'stopped', closed_at = now(),"
                                    " reason = 'plan_stopped'"
                                    " WHERE plan_id IN (SELECT plan_id FROM st) AND state = 'open'"
                                    " RETURNING round_id",
                                    &p, false, NULL);
  PQclear(res);
  res = res == NULL ? NULL
                    : fl__pg_exec(a.c, "SELECT state FROM plans WHERE plan_id = $1", &p, false,
                                  NULL);
  if (res == NULL) {
    db_error(r);
  } else if (PQntuples(res) == 0) {
    fl__resp_admin_error(r, 404, "not_found", "no such plan");
  } else {
    snprintf(target, sizeof target, "plan:%" PRIu64, id);
    commit_audited(r, &a, "plan.stop", target,
                   json_pack("{s:I, s:s}", "plan_id", (json_int_t)id, "state",
                             PQgetvalue(res, 0, 0)));
  }
  PQclear(res);
  end(s, &a);
}

/* GET /admin/v1/plans/{id}: the plan as stored (the adaptive clip is the current round's), its
 * state and rounds, and the privacy spent (docs/PRIVACY.md; null without central noise). */
static void h_plan_get(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  fl_pgp p;
  fl_plan plan;
  uint64_t id;
  const char *rest;
  char msg[160];
  if (fl__path_u64(q->path, "/admin/v1/plans/", &id, &rest) || *rest != '\0') {
    fl__resp_admin_error(r, 404, "not_found", "no such plan");
    return;
  }
  if (begin(s, q, r, &a))
    return;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  PGresult *res = fl__pg_exec(a.c,
                              "SELECT model_id, state, rounds_done, config::text,"
                              " to_json(created_at)::text, dp_population,"
                              " coalesce(dp_sampling_rate, 1) FROM plans WHERE plan_id = $1",
                              &p, false, NULL);
  json_t *cfg = res && PQntuples(res) == 1 ? json_loads(PQgetvalue(res, 0, 3), 0, NULL) : NULL;
  if (res == NULL) {
    db_error(r);
  } else if (PQntuples(res) == 0) {
    fl__resp_admin_error(r, 404, "not_found", "no such plan");
  } else if (fl__plan_from_json(&plan, cfg, msg)) {
    fl__resp_admin_error(r, 500, "bad_stored_plan", msg);
  } else {
    uint64_t done = fl__pg_u64(res, 0, 2);
    json_t *at = json_loads(PQgetvalue(res, 0, 4), JSON_DECODE_ANY, NULL);
    fl__resp_json(
        r, 200,
        json_pack("{s:I, s:I, s:s, s:I, s:O, s:o, s:o, s:o}", "plan_id", (json_int_t)id, "model_id",
                  (json_int_t)fl__pg_u64(res, 0, 0), "state", PQgetvalue(res, 0, 1), "rounds_done",
                  (json_int_t)done, "config", cfg, "created_at", at ? at : json_null(),
                  "population",
                  PQgetisnull(res, 0, 5) ? json_null() : json_integer(fl__pg_i64(res, 0, 5)),
                  "privacy", fl__privacy_json(&plan, fl__pg_f64(res, 0, 6), done)));
  }
  json_decref(cfg);
  PQclear(res);
  end(s, &a);
}

/* ----- rounds, devices, audit -------------------------------------------------------------- */

#define ROUND_JSON                                                                           \
  "json_build_object('round_id', round_id, 'plan_id', plan_id, 'model_id', model_id,"        \
  " 'base_version', base_version, 'state', state, 'accepted', accepted,"                      \
  " 'assigned', assigned, 'target', target, 'min', min_count, 'max_assign', max_assign,"      \
  " 'result_version', result_version, 'reason', reason, 'metrics', metrics,"                   \
  " 'opened_at', opened_at, 'deadline_at', deadline_at, 'closed_at', closed_at)"

static void h_rounds_list(fl_srv *s, fl_req *q, fl_resp *r) {
  fl__admin_list_by_model(s, q, r, "rounds",
                          "SELECT json_agg(" ROUND_JSON
                          " ORDER BY round_id)::text FROM rounds"
                          " WHERE $1::bigint = 0 OR model_id = $1");
}

static void h_round_get(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  fl_pgp p;
  uint64_t id;
  const char *rest;
  if (fl__path_u64(q->path, "/admin/v1/rounds/", &id, &rest) || *rest != '\0') {
    fl__resp_admin_error(r, 404, "not_found", "no such round");
    return;
  }
  if (begin(s, q, r, &a))
    return;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, id);
  json_query(r, a.c, NULL, "SELECT " ROUND_JSON "::text FROM rounds WHERE round_id = $1", &p,
             true);
  end(s, &a);
}

static void h_devices_list(fl_srv *s, fl_req *q, fl_resp *r) {
  fl__admin_list(s, q, r, "devices",
                 "SELECT json_agg(json_build_object('device_id', device_id, 'state', state,"
                 " 'labels', labels, 'firmware', firmware, 'public_key', encode(public_key, 'hex'),"
                 " 'running_model_id', running_model_id, 'running_version', running_version,"
                 " 'enrolled_at', enrolled_at, 'last_seen_at', last_seen_at,"
                 " 'revoked_at', revoked_at) ORDER BY device_id)::text FROM devices");
}

static void h_device_revoke(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  uint64_t id;
  char target[32];
  if (fl__admin_begin_at(s, q, r, "/admin/v1/devices/", "/revoke", &id, &a))
    return;
  PGresult *res = fl__admin_change_by_id(r, &a,
                                         "UPDATE devices SET state = 'revoked',"
                                         " revoked_at = coalesce(revoked_at, now())"
                                         " WHERE device_id = $1 RETURNING device_id",
                                         id, "no such device");
  if (res != NULL) {
    /* Not needed for the revocation to hold (authentication reads the state, auth/keys.h):
     * the memory goes back. */
    fl__keys_drop(s->keys, id);
    snprintf(target, sizeof target, "device:%" PRIu64, id);
    commit_audited(r, &a, "device.revoke", target,
                   json_pack("{s:I, s:s}", "device_id", (json_int_t)id, "state", "revoked"));
  }
  PQclear(res);
  end(s, &a);
}

static void h_audit(fl_srv *s, fl_req *q, fl_resp *r) {
  fl__admin_list(s, q, r, "entries",
                 "SELECT json_agg(json_build_object('entry_id', entry_id, 'at', at, 'actor',"
                 " actor, 'action', action, 'target', target, 'detail', detail)"
                 " ORDER BY entry_id DESC)::text"
                 " FROM (SELECT * FROM audit_log ORDER BY entry_id DESC LIMIT 1000) t");
}

static void h_info(fl_srv *s, fl_req *q, fl_resp *r) {
  admin_ctx a;
  char hex[2 * FL_PUBKEY_LEN + 1];
  if (begin(s, q, r, &a))
    return;
  fl__hex(s->pub, sizeof s->pub, hex);
  fl__resp_json(r, 200,
                json_pack("{s:s, s:s, s:s}", "public_key", hex, "replica_id", s->cfg.replica_id,
                          "version", FL_VERSION_STRING));
  end(s, &a);
}

/* ----- shared with adminapi_rollouts.c ----------------------------------------------------- */

int fl__admin_begin(fl_srv *s, fl_req *q, fl_resp *r, admin_ctx *a) {
  return begin(s, q, r, a);
}

void fl__admin_end(fl_srv *s, admin_ctx *a) { end(s, a); }

void fl__admin_json_query(fl_resp *r, PGconn *c, const char *key, const char *sql,
                          const fl_pgp *p, bool single) {
  json_query(r, c, key, sql, p, single);
}

void fl__admin_commit_audited(fl_resp *r, admin_ctx *a, const char *action, const char *target,
                              json_t *ok) {
  commit_audited(r, a, action, target, ok);
}

/* ----- operations -------------------------------------------------------------------------- */

static void h_metrics(fl_srv *s, fl_req *q, fl_resp *r) {
  char *text;
  size_t len;
  (void)q;
  if (fl__metrics_render_all(s, &text, &len)) {
    fl__resp_text(r, 500, "text/plain", "out of memory\n");
    return;
  }
  free(r->data);
  r->status = 200;
  r->content_type = "text/plain; version=0.0.4";
  r->data = text;
  r->len = len;
}

static void h_healthz(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)s;
  (void)q;
  fl__resp_text(r, 200, "text/plain", "ok\n");
}

static void h_readyz(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)q;
  if (atomic_load(&s->ready))
    fl__resp_text(r, 200, "text/plain", "ok\n");
  else
    fl__resp_text(r, 503, "text/plain", "not ready\n");
}

const fl_route fl__admin_routes[] = {
    {"POST", "/admin/v1/tokens", "admin_tokens", h_tokens, 0, NULL, FL_AUTH_ADMIN},
    {"GET", "/admin/v1/tokens", "admin_tokens_list", h_tokens, 0, NULL, FL_AUTH_ADMIN},
    {"POST", "/admin/v1/tokens/", "admin_token_revoke", h_token_revoke, 0, NULL, FL_AUTH_ADMIN},
    {"POST", "/admin/v1/enrollment-tokens", "admin_enrollment_tokens", h_enrollment_tokens, 0, NULL,
     FL_AUTH_OPERATOR},
    {"POST", "/admin/v1/models", "admin_models_create", h_models_create, 0, NULL, FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/models", "admin_models_list", h_models_list, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/models/", "admin_model_versions", h_model_sub, 0, NULL, FL_AUTH_VIEWER},
    {"POST", "/admin/v1/models/", "admin_plan_create", h_model_sub, 0, NULL, FL_AUTH_OPERATOR},
    {"POST", "/admin/v1/plans/", "admin_plan_stop", h_plan_stop, 0, NULL, FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/plans/", "admin_plan_get", h_plan_get, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/rounds", "admin_rounds_list", h_rounds_list, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/rounds/", "admin_round_get", h_round_get, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/devices", "admin_devices_list", h_devices_list, 0, NULL, FL_AUTH_VIEWER},
    {"POST", "/admin/v1/devices/", "admin_device_revoke", h_device_revoke, 0, NULL,
     FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/audit", "admin_audit", h_audit, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/info", "admin_info", h_info, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/channels", "admin_channels_list", fl__admin_channels, 0, NULL,
     FL_AUTH_VIEWER},
    {"POST", "/admin/v1/channels", "admin_channel_set", fl__admin_channels, 0, NULL,
     FL_AUTH_OPERATOR},
    {"POST", "/admin/v1/channels/", "admin_channel_rollback", fl__admin_channel_sub, 0, NULL,
     FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/rollouts", "admin_rollouts_list", fl__admin_rollouts, 0, NULL,
     FL_AUTH_VIEWER},
    {"POST", "/admin/v1/rollouts", "admin_rollout_create", fl__admin_rollouts, 0, NULL,
     FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/rollouts/", "admin_rollout_get", fl__admin_rollout_sub, 0, NULL,
     FL_AUTH_VIEWER},
    {"POST", "/admin/v1/rollouts/", "admin_rollout_change", fl__admin_rollout_sub, 0, NULL,
     FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/pins", "admin_pins_list", fl__admin_pins, 0, NULL, FL_AUTH_VIEWER},
    {"POST", "/admin/v1/pins", "admin_pin_create", fl__admin_pins, 0, NULL, FL_AUTH_OPERATOR},
    {"DELETE", "/admin/v1/pins/", "admin_pin_delete", fl__admin_pin_delete, 0, NULL,
     FL_AUTH_OPERATOR},
    {"GET", "/admin/v1/fleet", "admin_fleet", fl__admin_fleet, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/drift", "admin_drift", fl__drift_admin, 0, NULL, FL_AUTH_VIEWER},
    {"GET", "/admin/v1/whoami", "admin_whoami", fl__admin_whoami, 0, NULL, FL_AUTH_VIEWER},
    /* The dashboard's static files (ui.c): no token, GET only. */
    {"GET", "/ui", "ui", fl__ui_static, 0, NULL, FL_AUTH_NONE},
    {"GET", "/ui/", "ui", fl__ui_static, 0, NULL, FL_AUTH_NONE},
    {NULL, NULL, NULL, NULL, 0, NULL, FL_AUTH_UNDECLARED},
};

/* Operations endpoints, without a token: on the main port, and with --metrics-listen on that
 * listener, which then is the only one with /metrics (http.c). */
const fl_route fl__ops_routes[] = {
    {"GET", "/metrics", "metrics", h_metrics, 0, NULL, FL_AUTH_NONE},
    {"GET", "/healthz", "healthz", h_healthz, 0, NULL, FL_AUTH_NONE},
    {"GET", "/readyz", "readyz", h_readyz, 0, NULL, FL_AUTH_NONE},
    {NULL, NULL, NULL, NULL, 0, NULL, FL_AUTH_UNDECLARED},
};
const fl_route fl__probe_routes[] = {
    {"GET", "/healthz", "healthz", h_healthz, 0, NULL, FL_AUTH_NONE},
    {"GET", "/readyz", "readyz", h_readyz, 0, NULL, FL_AUTH_NONE},
    {NULL, NULL, NULL, NULL, 0, NULL, FL_AUTH_UNDECLARED},
};
