/* The route tables' declarations (server/http/http.c, fl__routes_check) and the pipeline's
 * refusal of a route without a policy (server/auth/pipeline.c, fl__auth_run): a row that does
 * not say who may call it is refused at start-up and never dispatched. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "http/http.h"

static void h_nop(fl_srv *s, fl_req *q, fl_resp *r) {
  (void)s;
  (void)q;
  (void)r;
}

#define END \
  { NULL, NULL, NULL, NULL, 0, NULL, FL_AUTH_UNDECLARED }

Test(http, the_coordinators_tables_declare_every_policy) {
  const fl_route *const tables[] = {fl__dev_routes, fl__admin_routes, fl__ops_routes,
                                    fl__probe_routes};
  char msg[160];
  for (size_t i = 0; i < 4; i++)
    cr_expect_eq(fl__routes_check(tables[i], msg, sizeof msg), 0, "table %zu: %s", i, msg);
  for (const fl_route *rt = fl__admin_routes; rt->prefix != NULL; rt++)
    if (strncmp(rt->prefix, "/admin/", 7) == 0)
      cr_expect_geq(fl__auth_policy_role(rt->auth), 0, "%s %s needs a role", rt->method,
                    rt->prefix);
}

Test(http, a_row_without_a_policy_is_refused) {
  /* A row that leaves the policy out (a positional one is caught by the compiler already:
   * -Wmissing-field-initializers). */
  const fl_route t[] = {{"GET", "/healthz", "healthz", h_nop, 0, NULL, FL_AUTH_NONE},
                        {.method = "POST", .prefix = "/v1/new", .name = "new", .fn = h_nop},
                        END};
  char msg[160];
  cr_assert_eq(fl__routes_check(t, msg, sizeof msg), -1);
  cr_expect(strstr(msg, "/v1/new") != NULL && strstr(msg, "no authentication policy") != NULL, "%s",
            msg);
  const fl_route bogus[] = {{"GET", "/x", "x", h_nop, 0, NULL, FL_AUTH_POLICY_END}, END};
  cr_expect_eq(fl__routes_check(bogus, msg, sizeof msg), -1);
}

Test(http, a_policy_must_fit_its_path_and_method) {
  const fl_route dev_on_admin[] = {{"GET", "/admin/v1/x", "x", h_nop, 0, NULL, FL_AUTH_DEVICE},
                                   END};
  const fl_route role_on_dev[] = {{"POST", "/v1/x", "x", h_nop, 0, NULL, FL_AUTH_OPERATOR}, END};
  const fl_route get_upload[] = {{"GET", "/v1/x", "x", h_nop, 0, NULL, FL_AUTH_UPLOAD}, END};
  const fl_route no_handler[] = {{"GET", "/v1/x", "x", NULL, 0, NULL, FL_AUTH_DEVICE}, END};
  const fl_route ok[] = {{"POST", "/v1/x", "x", h_nop, 0, NULL, FL_AUTH_UPLOAD},
                         {"DELETE", "/admin/v1/x/", "x", h_nop, 0, NULL, FL_AUTH_ADMIN},
                         END};
  char msg[160];
  cr_expect_eq(fl__routes_check(dev_on_admin, msg, sizeof msg), -1);
  cr_expect_eq(fl__routes_check(role_on_dev, msg, sizeof msg), -1);
  cr_expect_eq(fl__routes_check(get_upload, msg, sizeof msg), -1);
  cr_expect_eq(fl__routes_check(no_handler, msg, sizeof msg), -1);
  cr_expect_eq(fl__routes_check(ok, msg, sizeof msg), 0, "%s", msg);
}

Test(http, dispatch_refuses_a_route_without_a_policy) {
  static fl_srv s;
  const fl_route undeclared = {"POST", "/v1/new", "new", h_nop, 0, NULL, FL_AUTH_UNDECLARED};
  const fl_route open = {"GET", "/healthz", "healthz", h_nop, 0, NULL, FL_AUTH_NONE};
  fl_req q = {.method = "POST", .path = "/v1/new", .rt = &undeclared};
  fl_resp r = {0};
  cr_assert_eq(fl__auth_run(&s, &q, &r), -1);
  cr_expect_eq(r.status, 500);
  cr_expect_null(q.auth);
  free(r.data);
  q.rt = &open;
  memset(&r, 0, sizeof r);
  cr_assert_eq(fl__auth_run(&s, &q, &r), 0);
  cr_expect_null(q.auth, "FL_AUTH_NONE establishes nothing");
}

Test(http, admin_policies_map_to_roles) {
  cr_expect_eq(fl__auth_policy_role(FL_AUTH_VIEWER), FL_ROLE_VIEWER);
  cr_expect_eq(fl__auth_policy_role(FL_AUTH_OPERATOR), FL_ROLE_OPERATOR);
  cr_expect_eq(fl__auth_policy_role(FL_AUTH_ADMIN), FL_ROLE_ADMIN);
  cr_expect_eq(fl__auth_policy_role(FL_AUTH_DEVICE), -1);
  cr_expect_eq(fl__auth_policy_role(FL_AUTH_NONE), -1);
}
