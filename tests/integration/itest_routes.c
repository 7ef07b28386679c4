/*
 * The request pipeline (server/auth/pipeline.c) through the real coordinator and PostgreSQL,
 * driven by the route tables themselves (linked from flserver): every admin route refuses a
 * request without a token (401 unauthorized) and a token one role below the row's policy
 * (403 forbidden) and lets its own role through to the handler (neither 401 nor 403); every
 * device route refuses an unsigned request (401); every FL_AUTH_NONE route answers without
 * one. A route added to a table is covered here without a change to this file. Run under
 * pg_virtualenv.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "auth/auth.h"
#include "fl/err.h"
#include "flsupport/admin.h"
#include "flsupport/http.h"
#include "harness.h"
#include "http/http.h"

static char g_db[64];
static fl_h_coord g_coord;
static char g_token[3][80]; /* by role: viewer, operator, admin */

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0, "coordinator start");
  static const char *const roles[] = {"viewer", "operator", "admin"};
  for (int i = 0; i < 3; i++) {
    char body[96];
    long st;
    snprintf(body, sizeof body, "{\"role\":\"%s\",\"name\":\"routes-%s\"}", roles[i], roles[i]);
    json_t *j = fl_h_admin(&g_coord, "POST", "/admin/v1/tokens", body, &st);
    cr_assert_eq(st, 200, "token for %s: %ld", roles[i], st);
    snprintf(g_token[i], sizeof g_token[i], "%s", json_string_value(json_object_get(j, "token")));
    json_decref(j);
  }
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

TestSuite(routes, .init = setup, .fini = teardown, .timeout = 300);

/* A concrete path for a row: a prefix route gets an id after it (the policy runs before the
 * handler looks at the rest of the path). */
static void row_path(const fl_route *rt, char *out, size_t n) {
  size_t len = strlen(rt->prefix);
  snprintf(out, n, "%s%s", rt->prefix, rt->prefix[len - 1] == '/' ? "1" : "");
}

/* One exchange with `token` (NULL: no Authorization header at all); the status, and the
 * admin error reason in why (empty when none). A POST to an admin route sends "{}", to a
 * device route nothing (an empty envelope: no signature, timestamp 0). */
static long call(const fl_route *rt, const char *token, char why[64]) {
  char path[160], url[256], auth[128];
  fl_sup_http_opts o = {0};
  fl_sup_resp r = {0};
  row_path(rt, path, sizeof path);
  snprintf(url, sizeof url, "%s%s", g_coord.url, path);
  if (token != NULL) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    o.headers = curl_slist_append(NULL, auth);
  }
  if (strcmp(rt->method, "POST") == 0 && strncmp(rt->prefix, "/v1/", 4) != 0) {
    o.body = "{}";
    o.len = 2;
  }
  char err[256];
  cr_assert_eq(fl_sup_http(NULL, rt->method, url, &o, &r, err, sizeof err), FL_OK, "%s %s: %s",
               rt->method, path, err);
  curl_slist_free_all(o.headers);
  json_t *j = r.data ? json_loadb((const char *)r.data, r.len, 0, NULL) : NULL;
  const char *reason = json_string_value(json_object_get(j, "error"));
  snprintf(why, 64, "%s", reason != NULL ? reason : "");
  json_decref(j);
  long st = r.status;
  fl_sup_resp_free(&r);
  return st;
}

Test(routes, every_admin_route_enforces_its_declared_role) {
  int checked = 0;
  for (const fl_route *rt = fl__admin_routes; rt->prefix != NULL; rt++) {
    int role = fl__auth_policy_role(rt->auth);
    char why[64];
    if (role < 0)
      continue;
    long st = call(rt, NULL, why);
    cr_expect_eq(st, 401, "%s %s without a token: %ld %s", rt->method, rt->prefix, st, why);
    cr_expect_str_eq(why, "unauthorized", "%s %s", rt->method, rt->prefix);
    if (role > FL_ROLE_VIEWER) {
      st = call(rt, g_token[role - 1], why);
      cr_expect_eq(st, 403, "%s %s with a role below: %ld %s", rt->method, rt->prefix, st, why);
      cr_expect_str_eq(why, "forbidden", "%s %s", rt->method, rt->prefix);
    }
    st = call(rt, g_token[role], why);
    cr_expect(st != 401 && st != 403, "%s %s with its own role: %ld %s", rt->method, rt->prefix, st,
              why);
    checked++;
  }
  cr_assert_geq(checked, 20, "the admin table has its routes");
}

Test(routes, every_device_route_refuses_an_unsigned_request) {
  int checked = 0;
  for (const fl_route *rt = fl__dev_routes; rt->prefix != NULL; rt++) {
    char why[64];
    long st = call(rt, g_token[FL_ROLE_ADMIN], why);
    cr_expect_eq(st, 401, "%s %s unsigned: %ld", rt->method, rt->prefix, st);
    checked++;
  }
  cr_assert_geq(checked, 5);
}

Test(routes, open_routes_need_no_token) {
  const fl_route *const tables[] = {fl__admin_routes, fl__probe_routes};
  for (size_t i = 0; i < 2; i++)
    for (const fl_route *rt = tables[i]; rt->prefix != NULL; rt++) {
      char why[64];
      if (rt->auth != FL_AUTH_NONE)
        continue;
      long st = call(rt, NULL, why);
      cr_expect(st != 401 && st != 403, "%s %s: %ld %s", rt->method, rt->prefix, st, why);
    }
}
