/*
 * Operations: deadlines (abandon without the minimum, close with it), admin roles and the
 * audit log, body limits, reconnection after the database drops its connections, metrics, a
 * failed group commit answered 503 and logged with its cause.
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "flsupport/pg.h"
#include "harness.h"

#define NDEV 4

static char g_db[64];
static fl_h_coord g_coord;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
}

static uint64_t task_round(const fl_h_device *d, uint64_t model_id, uint64_t *base_version) {
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(&g_coord, d, model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
  uint64_t id = resp->task->round_id;
  *base_version = resp->task->base_version;
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  return id;
}

static void upload(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round,
                   float value) {
  float delta[43];
  fl_h_resp r;
  for (int i = 0; i < 43; i++)
    delta[i] = value;
  cr_assert_eq(fl_h_upload(&g_coord, d, base, round, delta, 4, NULL, &r), 0);
  cr_assert_eq(r.status, 200, "upload: %s", fl_h_error_reason(&r));
  fl_h_resp_free(&r);
}

static char *metrics_text(void) {
  /* /metrics is plain text and needs no token: a bare libcurl GET. */
  CURL *h = curl_easy_init();
  char url[128];
  FILE *mem;
  char *buf = NULL;
  size_t len = 0;
  cr_assert_not_null(h);
  snprintf(url, sizeof url, "%s/metrics", g_coord.url);
  mem = open_memstream(&buf, &len);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, mem);
  cr_assert_eq(curl_easy_perform(h), CURLE_OK);
  curl_easy_cleanup(h);
  fclose(mem);
  return buf;
}

Test(ops, deadline_abandons_then_closes_with_minimum, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id, round1, base_v;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "deadline", FL_H_SMALL_SPEC,
                                   "{\"participants\":3,\"min_participants\":2,"
                                   "\"deadline_s\":2}",
                                   &model_id, &round1),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, NDEV), 0);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(task_round(&g_dev[0], model_id, &base_v), round1);
  upload(&g_dev[0], base, round1, 0.01f);

  json_t *r1 = fl_h_wait_round(&g_coord, round1, "abandoned", 10000);
  cr_assert_not_null(r1);
  cr_assert(strstr(json_string_value(json_object_get(r1, "reason")), "deadline_without_minimum") !=
            NULL);
  json_decref(r1);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM versions"), 1);

  /* Reopened on the same base; two updates reach the minimum and close at the deadline. */
  uint64_t round2 = task_round(&g_dev[0], model_id, &base_v);
  cr_assert_neq(round2, round1);
  cr_assert_eq(base_v, 1);
  cr_assert_eq(task_round(&g_dev[1], model_id, &base_v), round2);
  upload(&g_dev[0], base, round2, 0.01f);
  upload(&g_dev[1], base, round2, 0.03f);
  json_t *r2 = fl_h_wait_round(&g_coord, round2, "closed", 10000);
  cr_assert_not_null(r2);
  cr_assert_eq(json_integer_value(json_object_get(r2, "result_version")), 2);
  cr_assert_eq(json_integer_value(json_object_get(json_object_get(r2, "metrics"), "participants")),
               2);
  json_decref(r2);

  char *m = metrics_text();
  cr_assert(strstr(m, "fl_rounds_abandoned_total 1") != NULL, "%s", m);
  cr_assert(strstr(m, "fl_rounds_closed_total 1") != NULL);
  cr_assert(strstr(m, "fl_updates_accepted_total 3") != NULL);
  free(m);
  fl__v1__model_version__free_unpacked(base, NULL);
}

Test(ops, admin_roles_and_audit, .init = setup, .fini = teardown, .timeout = 60) {
  long st;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0);
  json_t *t = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/tokens",
                            "{\"role\":\"viewer\",\"name\":\"dash\"}");
  cr_assert_not_null(t);
  fl_h_coord viewer = g_coord;
  snprintf(viewer.admin_token, sizeof viewer.admin_token, "%s",
           json_string_value(json_object_get(t, "token")));
  json_decref(t);
  json_t *j = fl_h_admin(&viewer, "GET", "/admin/v1/rounds", NULL, &st);
  cr_assert_eq(st, 200);
  json_decref(j);
  j = fl_h_admin(&viewer, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}", &st);
  cr_assert_eq(st, 403);
  cr_assert_str_eq(json_string_value(json_object_get(j, "error")), "forbidden");
  json_decref(j);
  snprintf(viewer.admin_token, sizeof viewer.admin_token, "not-a-token");
  j = fl_h_admin(&viewer, "GET", "/admin/v1/rounds", NULL, &st);
  cr_assert_eq(st, 401);
  json_decref(j);
  j = fl_h_admin(&g_coord, "POST", "/admin/v1/models", "{not json", &st);
  cr_assert_eq(st, 400);
  json_decref(j);
  j = fl_h_admin(&g_coord, "POST", "/admin/v1/models",
                 "{\"name\":\"x\",\"spec\":{\"input_shape\":[4],\"layers\":[{\"type\":\"lstm\"}],"
                 "\"loss\":\"mse\"}}",
                 &st);
  cr_assert_eq(st, 400);
  cr_assert_str_eq(json_string_value(json_object_get(j, "error")), "bad_spec");
  json_decref(j);
  uint64_t model_id, round_id;
  cr_assert_eq(
      fl_h_model_and_plan(&g_coord, "audited", FL_H_SMALL_SPEC, "{}", &model_id, &round_id), 0);
  j = fl_h_admin(&g_coord, "POST", "/admin/v1/models/1/plans", "{}", &st);
  cr_assert_eq(st, 409, "second active plan");
  json_decref(j);
  j = fl_h_admin(&g_coord, "POST", "/admin/v1/models/1/plans", "{\"participant\":3}", &st);
  cr_assert_eq(st, 400, "unknown plan field");
  json_decref(j);
  j = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/plans/1/stop", NULL);
  cr_assert_str_eq(json_string_value(json_object_get(j, "state")), "stopped");
  json_decref(j);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM rounds WHERE state = 'stopped'"), 1);
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM audit_log WHERE action IN"
                           " ('token.create', 'model.create', 'plan.create', 'plan.stop')"),
               4);
  /* Secrets are never stored in clear. */
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM admin_tokens"
                           " WHERE octet_length(token_hash) = 32"),
               2);
}

Test(ops, body_limit_and_database_reconnect, .init = setup, .fini = teardown, .timeout = 60) {
  const char *extra[] = {"--max-body=4096", NULL};
  uint64_t model_id, round_id, base_v;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "limits", FL_H_SMALL_SPEC, "{}", &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 1), 0);
  uint8_t *big = calloc(1, 10000);
  fl_h_resp r;
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[0], "/v1/updates", big, 10000, NULL, &r), 0);
  cr_assert_eq(r.status, 413);
  fl_h_resp_free(&r);
  free(big);

  /* The database drops every connection; the coordinator reconnects on its own. */
  cr_assert_gt(fl_h_db_int(g_db,
                           "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                           " WHERE datname = current_database()"
                           " AND pid <> pg_backend_pid()"),
               0);
  cr_assert_eq(task_round(&g_dev[0], model_id, &base_v), round_id);
  json_t *j = fl_h_admin_ok(&g_coord, "GET", "/admin/v1/devices", NULL);
  cr_assert_eq(json_array_size(json_object_get(j, "devices")), 1);
  json_decref(j);
}

Test(ops, tls_round_trip, .init = setup, .fini = teardown, .timeout = 60) {
  uint64_t model_id, round_id, base_v;
  cr_assert_eq(fl_h_coord_start_tls(&g_coord, g_db), 0);
  cr_assert_eq(strncmp(g_coord.url, "https://", 8), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "tls", FL_H_SMALL_SPEC, "{}", &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 1), 0);
  cr_assert_eq(task_round(&g_dev[0], model_id, &base_v), round_id);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  fl__v1__model_version__free_unpacked(base, NULL);

  /* Evaluation reports: recorded for a known version, refused for an unknown one. */
  Fl__V1__Metric acc = FL__V1__METRIC__INIT, *mp[1] = {&acc};
  Fl__V1__EvalReport e = FL__V1__EVAL_REPORT__INIT;
  uint8_t body[128];
  fl_h_resp r;
  acc.name = "accuracy";
  acc.value = 0.875;
  e.model_id = model_id;
  e.version = 1;
  e.sample_count = 64;
  e.n_metrics = 1;
  e.metrics = mp;
  size_t n = fl__v1__eval_report__pack(&e, body);
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[0], "/v1/evaluations", body, n, NULL, &r), 0);
  cr_assert_eq(r.status, 200);
  fl_h_resp_free(&r);
  e.version = 9;
  n = fl__v1__eval_report__pack(&e, body);
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[0], "/v1/evaluations", body, n, NULL, &r), 0);
  cr_assert_eq(r.status, 404);
  cr_assert_str_eq(fl_h_error_reason(&r), "unknown_version");
  fl_h_resp_free(&r);
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM evaluations"
                           " WHERE (metrics->>'accuracy')::float8 = 0.875"),
               1);
}

Test(ops, over_selection_limits_assignment, .init = setup, .fini = teardown, .timeout = 60) {
  uint64_t model_id, round_id, base_v;
  const char *extra[] = {"--checkin-interval=5000", NULL};
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "oversel", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"over_selection\":1.5,"
                                   "\"deadline_s\":600}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 4), 0);
  for (int i = 0; i < 3; i++)
    cr_assert_eq(task_round(&g_dev[i], model_id, &base_v), round_id);
  /* Checking in again keeps the assignment and takes no new slot. */
  cr_assert_eq(task_round(&g_dev[0], model_id, &base_v), round_id);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT assigned FROM rounds WHERE round_id = 1"), 3);
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(&g_coord, &g_dev[3], model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY);
  cr_assert_str_eq(resp->retry->reason, "round_full");
  cr_assert_geq(resp->retry->retry_after_ms, resp->server_time_ms + 5000);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 3);
}

/* A group commit that PostgreSQL refuses (here: its partials table is gone) answers every
 * upload of the batch 503 and logs which step failed with PostgreSQL's message (issue 13
 * item 5: the log said only "batch_commit result=3"). Nothing of the batch is counted. */
Test(ops, failed_batch_is_logged_with_its_cause, .init = setup, .fini = teardown, .timeout = 60) {
  uint64_t model_id, round_id, base_v;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "batchfail", FL_H_SMALL_SPEC,
                                   "{\"participants\":3,\"deadline_s\":600}", &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 1), 0);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(task_round(&g_dev[0], model_id, &base_v), round_id);
  cr_assert_eq(fl_sup_db_exec(g_db, "ALTER TABLE partials RENAME TO partials_gone", NULL), FL_OK);
  float delta[43] = {0.01f};
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_coord, &g_dev[0], base, round_id, delta, 4, NULL, &r), 0);
  cr_assert_eq(r.status, 503, "upload: %ld %s", (long)r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT accepted FROM rounds WHERE round_id = %llu",
           (unsigned long long)round_id);
  cr_assert_eq(fl_h_db_int(g_db, sql), 0, "the failed batch counted nothing");
  char path[320], line[2048];
  snprintf(path, sizeof path, "%s/coordinator.log", g_coord.dir);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "%s", path);
  bool found = false;
  while (!found && fgets(line, sizeof line, f) != NULL)
    found = strstr(line, "event=batch_failed") && strstr(line, "step=partial") &&
            strstr(line, "partials") && strstr(line, "does not exist");
  fclose(f);
  cr_assert(found, "no batch_failed line naming the step and the missing relation in %s", path);
  fl__v1__model_version__free_unpacked(base, NULL);
}
