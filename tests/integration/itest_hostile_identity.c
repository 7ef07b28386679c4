/*
 * Device identity under attack: a revoked device on every endpoint (and its key under a new
 * enrollment), and one enrollment token raced by two devices. Run under pg_virtualenv.
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
#include "itest_hostile_common.h"

/* ----- revoked devices, raced tokens ----------------------------------------------------- */

Test(hostile, revoked_device_is_refused_everywhere, .init = hx_setup, .fini = hx_teardown,
     .timeout = 300) {
  scene s;
  int64_t before[N_STATE];
  fl_h_resp r;
  size_t len;
  hx_scene_build(&s);
  /* The revoked device was assigned before its revocation: that must not let it upload. */
  const fl_h_device *rv = &s.dev[1];
  json_t *tok = fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  const char *token = json_string_value(json_array_get(json_object_get(tok, "tokens"), 0));
  cr_assert_not_null(token);
  hx_snapshot(before);

  uint8_t *ci = hx_checkin_body(s.model_id, 0, 0, &len);
  env_spec e = hx_honest_env(rv, "POST", "/v1/checkin");
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 403, "device_revoked");
  free(ci);

  upd x;
  hx_upd_init(&x, &s);
  x.u.sample_count = 10;
  uint8_t *ub = hx_pack_update(&x, &len);
  hx_upd_free(&x);
  e = hx_honest_env(rv, "POST", "/v1/updates");
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/updates", ub, len, &r), &r, 403, "device_revoked");
  free(ub);

  Fl__V1__EvalReport ev = FL__V1__EVAL_REPORT__INIT;
  uint8_t eb[64];
  ev.model_id = s.model_id;
  ev.version = 1;
  len = fl__v1__eval_report__pack(&ev, eb);
  e = hx_honest_env(rv, "POST", "/v1/evaluations");
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 403,
                 "device_revoked");

  char path[96];
  snprintf(path, sizeof path, "/v1/models/%llu/versions/1", (unsigned long long)s.model_id);
  e = hx_honest_env(rv, "GET", path);
  EXPECT_REFUSAL(hx_signed_req(&e, "GET", path, NULL, 0, &r), &r, 403, "device_revoked");

  /* Its key cannot come back under a new identity with a fresh token. */
  fl_h_device again = {.key = rv->key};
  cr_expect_eq(fl_h_device_enroll(&hx_coord, &again, token), 409);
  hx_assert_unchanged(before);
  json_decref(tok);
  hx_scene_free(&s);
}

typedef struct race {
  pthread_barrier_t *go;
  const char *token;
  fl_h_device dev;
  long status;
} race;

static void *race_enroll(void *arg) {
  race *r = arg;
  pthread_barrier_wait(r->go);
  r->status = fl_h_device_enroll(&hx_coord, &r->dev, r->token);
  return NULL;
}

/* One enrollment token, two devices at the same instant: exactly one gets an identity. */
Test(hostile, enrollment_token_is_single_use_under_a_race, .init = hx_setup, .fini = hx_teardown,
     .timeout = 300) {
  enum { ROUNDS = 12 };
  json_t *tok = fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":12}");
  json_t *list = json_object_get(tok, "tokens");
  cr_assert_eq(json_array_size(list), ROUNDS);
  int64_t devices0 = fl_h_db_int(hx_db, "SELECT count(*) FROM devices");
  for (int i = 0; i < ROUNDS; i++) {
    pthread_barrier_t go;
    race rc[2];
    pthread_t th[2];
    pthread_barrier_init(&go, NULL, 2);
    for (int k = 0; k < 2; k++) {
      rc[k] = (race){&go, json_string_value(json_array_get(list, (size_t)i)), {0}, 0};
      cr_assert_eq(fl_h_device_new(&rc[k].dev), 0);
      cr_assert_eq(pthread_create(&th[k], NULL, race_enroll, &rc[k]), 0);
    }
    for (int k = 0; k < 2; k++)
      pthread_join(th[k], NULL);
    pthread_barrier_destroy(&go);
    int ok = (rc[0].status == 200) + (rc[1].status == 200);
    cr_expect_eq(ok, 1, "token %d: statuses %ld and %ld", i, rc[0].status, rc[1].status);
    for (int k = 0; k < 2; k++) {
      if (rc[k].status != 200)
        cr_expect_eq(rc[k].status, 401, "the loser gets bad_enrollment_token, not %ld",
                     rc[k].status);
      fl_h_device_free(&rc[k].dev);
    }
  }
  cr_expect_eq(fl_h_db_int(hx_db, "SELECT count(*) FROM devices"), devices0 + ROUNDS);
  json_decref(tok);
}
