/*
 * The admin API under attack: every mutating route with too small a role, unknown and
 * malformed tokens, and out-of-range or malformed values, none of which may change anything.
 * Run under pg_virtualenv.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <curl/curl.h>
#include <float.h>
#include <math.h>
#include <openssl/evp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "digest.h"
#include "fl/version.h"
#include "itest_hostile_common.h"

/* ----- admin roles ---------------------------------------------------------------------- */

/* Every mutating admin route refuses a viewer (and the token route an operator) before it
 * reads the body, and nothing is written; missing, unknown and malformed tokens get 401. */
Test(hostile, admin_roles_on_every_route, .init = hx_setup, .fini = hx_teardown, .timeout = 300) {
  scene s;
  int64_t before[N_STATE];
  long st;
  hx_scene_build(&s);
  json_t *v =
      fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/tokens", "{\"role\":\"viewer\",\"name\":\"ro\"}");
  json_t *o = fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/tokens",
                            "{\"role\":\"operator\",\"name\":\"op\"}");
  cr_assert(v != NULL && o != NULL);
  fl_h_coord viewer = hx_coord, op = hx_coord, nobody = hx_coord;
  snprintf(viewer.admin_token, sizeof viewer.admin_token, "%s",
           json_string_value(json_object_get(v, "token")));
  snprintf(op.admin_token, sizeof op.admin_token, "%s",
           json_string_value(json_object_get(o, "token")));
  /* The viewer's token with one character changed: a hash lookup finds nothing. */
  snprintf(nobody.admin_token, sizeof nobody.admin_token, "%s", viewer.admin_token);
  nobody.admin_token[0] = nobody.admin_token[0] == 'a' ? 'b' : 'a';
  hx_snapshot(before);

  static const struct {
    const char *method, *path, *body;
  } muts[] = {
      {"POST", "/admin/v1/tokens", "{\"role\":\"admin\",\"name\":\"up\"}"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"count\":1}"},
      {"POST", "/admin/v1/models", "{\"name\":\"m2\",\"spec\":" FL_H_SMALL_SPEC "}"},
      {"POST", "/admin/v1/models/1/plans", "{}"},
      {"POST", "/admin/v1/plans/1/stop", NULL},
      {"POST", "/admin/v1/devices/1/revoke", NULL},
      {"POST", "/admin/v1/channels", "{\"model_id\":1,\"name\":\"stable\",\"version\":1}"},
      {"POST", "/admin/v1/channels/1/rollback", NULL},
      {"POST", "/admin/v1/rollouts", "{\"model_id\":1,\"version\":1}"},
      {"POST", "/admin/v1/rollouts/1/raise", "{\"percent\":50}"},
      {"POST", "/admin/v1/rollouts/1/pause", NULL},
      {"POST", "/admin/v1/rollouts/1/resume", NULL},
      {"POST", "/admin/v1/rollouts/1/promote", NULL},
      {"POST", "/admin/v1/rollouts/1/rollback", NULL},
      {"POST", "/admin/v1/pins", "{\"model_id\":1,\"version\":1,\"device_id\":1}"},
      {"DELETE", "/admin/v1/pins/1", NULL},
  };
  for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
    json_decref(fl_h_admin(&viewer, muts[i].method, muts[i].path, muts[i].body, &st));
    cr_expect_eq(st, 403, "viewer: %s %s -> %ld", muts[i].method, muts[i].path, st);
    json_decref(fl_h_admin(&nobody, muts[i].method, muts[i].path, muts[i].body, &st));
    cr_expect_eq(st, 401, "unknown token: %s %s -> %ld", muts[i].method, muts[i].path, st);
  }
  /* An operator cannot mint tokens, so no role can be raised from below. */
  static const char *const roles[] = {"admin", "operator", "viewer"};
  for (int i = 0; i < 3; i++) {
    char body[64];
    snprintf(body, sizeof body, "{\"role\":\"%s\",\"name\":\"x\"}", roles[i]);
    json_decref(fl_h_admin(&op, "POST", "/admin/v1/tokens", body, &st));
    cr_expect_eq(st, 403, "operator minting a %s token -> %ld", roles[i], st);
  }
  /* Malformed Authorization headers. */
  static const char *const auths[] = {
      NULL, "", "Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=", "bearer x", "Bearer \t"};
  for (size_t i = 0; i < sizeof auths / sizeof auths[0]; i++) {
    struct curl_slist *h = NULL;
    char line[128];
    if (auths[i] != NULL) {
      snprintf(line, sizeof line, "Authorization: %s", auths[i]);
      h = curl_slist_append(h, line);
    }
    fl_h_resp r;
    cr_assert_eq(hx_raw("POST", "/admin/v1/enrollment-tokens", h, "{}", 2, false, &r), 0);
    cr_expect_eq(r.status, 401, "Authorization \"%s\" -> %ld", auths[i] ? auths[i] : "(none)",
                 r.status);
    fl_h_resp_free(&r);
    curl_slist_free_all(h);
  }
  /* Reads stay open to a viewer. */
  json_decref(fl_h_admin(&viewer, "GET", "/admin/v1/models", NULL, &st));
  cr_expect_eq(st, 200);
  json_decref(fl_h_admin(&viewer, "GET", "/admin/v1/audit", NULL, &st));
  cr_expect_eq(st, 200);
  /* The info endpoint names the version the build was configured with (fl/version.h). */
  json_t *info = fl_h_admin(&viewer, "GET", "/admin/v1/info", NULL, &st);
  const char *version = json_string_value(json_object_get(info, "version"));
  cr_expect_eq(st, 200);
  cr_expect(version != NULL && strcmp(version, FL_VERSION_STRING) == 0,
            "/admin/v1/info version %s, want " FL_VERSION_STRING, version ? version : "(none)");
  json_decref(info);
  hx_assert_unchanged(before);
  json_decref(v);
  json_decref(o);
  hx_scene_free(&s);
}

/* ----- admin values --------------------------------------------------------------------- */

/* Bad values in admin requests are 4xx and change nothing; none reaches PostgreSQL as an
 * out-of-range value (once: 503 for a ttl_s of 2^63-1 seconds and for query ids that are
 * negative or too large; ids that were not numbers listed everything). */
Test(hostile, admin_bad_values_get_4xx, .init = hx_setup, .fini = hx_teardown, .timeout = 120) {
  scene s;
  int64_t before[N_STATE];
  hx_scene_build(&s);
  hx_snapshot(before);
  static const struct {
    const char *method, *path, *body;
  } bad[] = {
      {"GET", "/admin/v1/rounds?model_id=-1", NULL},
      {"GET", "/admin/v1/rounds?model_id=18446744073709551615", NULL},
      {"GET", "/admin/v1/rounds?model_id=99999999999999999999999", NULL},
      {"GET", "/admin/v1/rounds?model_id=abc", NULL},
      {"GET", "/admin/v1/rounds?model_id=1x", NULL},
      {"GET", "/admin/v1/channels?model_id=-1", NULL},
      {"GET", "/admin/v1/rollouts?model_id=9223372036854775808", NULL},
      {"GET", "/admin/v1/fleet?model_id=18446744073709551615", NULL},
      {"GET", "/admin/v1/fleet?model_id=-1", NULL},
      {"GET", "/admin/v1/rounds/-1", NULL},
      {"GET", "/admin/v1/models/18446744073709551616/versions", NULL},
      {"POST", "/admin/v1/models",
       "{\"name\":\"big\",\"spec\":{\"input_shape\":[4294967296],"
       "\"layers\":[{\"type\":\"dense\",\"units\":2}],"
       "\"loss\":\"mse\"}}"},
      {"POST", "/admin/v1/models",
       "{\"name\":\"deep\",\"spec\":{\"input_shape\":[65535,65535,"
       "65535],\"layers\":[{\"type\":\"dense\",\"units\":16777216}],"
       "\"loss\":\"mse\"}}"},
      {"POST", "/admin/v1/models", "[1,2,3]"},
      {"POST", "/admin/v1/models", "{\"name\":\"x\",\"spec\":" FL_H_SMALL_SPEC "} trailing"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"ttl_s\":9223372036854775807}"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"count\":-1}"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"labels\":[1]}"},
      {"POST", "/admin/v1/tokens", "{\"role\":\"root\"}"},
      {"POST", "/admin/v1/models/1/plans", "{\"deadline_s\":1e300}"},
      {"POST", "/admin/v1/models/1/plans", "{\"participants\":-5}"},
      {"POST", "/admin/v1/models/1/plans", "{\"learning_rate\":\"fast\"}"},
      {"POST", "/admin/v1/channels", "{\"model_id\":1,\"name\":\"stable\",\"version\":-5}"},
      {"POST", "/admin/v1/channels",
       "{\"model_id\":1,\"name\":\"stable\",\"version\":9223372036854775807}"},
      {"POST", "/admin/v1/channels", "{\"model_id\":1,\"name\":\"UPPER case\",\"version\":1}"},
      {"POST", "/admin/v1/pins",
       "{\"model_id\":1,\"version\":9223372036854775807,"
       "\"device_id\":1}"},
      {"POST", "/admin/v1/pins", "{\"model_id\":-1,\"version\":1,\"device_id\":1}"},
      {"POST", "/admin/v1/rollouts", "{\"model_id\":1,\"version\":1,\"percent\":1e308}"},
      {"POST", "/admin/v1/rollouts/9223372036854775807/raise", "{\"percent\":50}"},
      {"DELETE", "/admin/v1/pins/9223372036854775808", NULL},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    long st;
    json_t *j = fl_h_admin(&hx_coord, bad[i].method, bad[i].path, bad[i].body, &st);
    cr_expect(st >= 400 && st < 500 && json_is_string(json_object_get(j, "error")),
              "%s %s %s -> %ld", bad[i].method, bad[i].path, bad[i].body ? bad[i].body : "", st);
    json_decref(j);
  }
  hx_assert_alive();
  hx_assert_unchanged(before);
  hx_scene_free(&s);
}
