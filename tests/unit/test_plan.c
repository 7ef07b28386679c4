/* Training plan parsing (server/plan.c): defaults, validation, the stored round trip. */
#include <criterion/criterion.h>
#include <string.h>

#include "rounds/plan.h"

static int parse(const char *text, fl_plan *p, char msg[160]) {
  json_t *j = json_loads(text, 0, NULL);
  cr_assert_not_null(j, "bad test JSON: %s", text);
  int rc = fl__plan_from_json(p, j, msg);
  json_decref(j);
  return rc;
}

Test(plan, defaults_and_over_selection) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":10}", &p, msg), 0);
  cr_assert_eq(p.min_participants, 10);
  cr_assert_eq(p.encoding, 1);
  cr_assert_eq(p.opt.kind, FL_OPT_FEDAVG);
  cr_assert_eq(fl__plan_max_assign(&p), 13);
  cr_assert_eq(parse("{\"participants\":3,\"over_selection\":1}", &p, msg), 0);
  cr_assert_eq(fl__plan_max_assign(&p), 3);
}

Test(plan, refuses_bad_fields) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"participant\":10}", &p, msg), -1);
  cr_assert(strstr(msg, "unknown field") != NULL);
  cr_assert_eq(parse("{\"participants\":2,\"min_participants\":3}", &p, msg), -1);
  cr_assert_eq(parse("{\"participants\":2.5}", &p, msg), -1);
  cr_assert_eq(parse("{\"encoding\":\"bf16\"}", &p, msg), -1);
  cr_assert_eq(parse("{\"server_optimizer\":\"sgd\"}", &p, msg), -1);
  cr_assert_eq(parse("{\"over_selection\":0.5}", &p, msg), -1);
  cr_assert_eq(parse("{\"noise_multiplier\":1,\"clip_norm\":0}", &p, msg), -1);
  cr_assert_eq(parse("[1]", &p, msg), -1);
}

Test(plan, optimizer_defaults_then_overrides) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"server_optimizer\":\"fedyogi\"}", &p, msg), 0);
  cr_assert_float_eq(p.opt.lr, 0.01, 1e-12);
  cr_assert_eq(parse("{\"server_optimizer\":\"fedadam\",\"server_lr\":0.1,\"tau\":1e-4}", &p,
                     msg),
               0);
  cr_assert_float_eq(p.opt.lr, 0.1, 1e-12);
  cr_assert_float_eq(p.opt.tau, 1e-4, 1e-15);
}

Test(plan, stored_form_round_trips) {
  fl_plan p, q;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":7,\"min_participants\":5,\"encoding\":\"int8\","
                     "\"server_optimizer\":\"fedavgm\",\"rounds\":4,\"clip_norm\":2.5}",
                     &p, msg),
               0);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_not_null(j);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert_eq(memcmp(&p, &q, sizeof p), 0);
}
