/*
 * Edge values from devices, one by one, each pinned to its refusal (docs/API.md 1.2): the
 * 64-bit extremes in timestamps and ids that once got through, text that is not UTF-8, an
 * int8 scale that would lift the norm bound, and an evaluation report from outside a gate's
 * sample. Run under pg_virtualenv.
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

/* ----- edge values, one by one ------------------------------------------------------------ */

Test(hostile, extreme_values_get_clear_refusals, .init = hx_setup, .fini = hx_teardown,
     .timeout = 300) {
  scene s;
  int64_t before[N_STATE];
  fl_h_resp r;
  size_t len;
  hx_scene_build(&s);
  json_t *tok = fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  const char *token = json_string_value(json_array_get(json_object_get(tok, "tokens"), 0));
  cr_assert_not_null(token);
  hx_snapshot(before);
  uint8_t *ci = hx_checkin_body(s.model_id, 0, 0, &len);

  /* Timestamps at the ends of int64: the window check once overflowed (UBSan aborted the
   * coordinator on INT64_MIN). */
  static const int64_t ts[] = {INT64_MIN, INT64_MIN + 1, INT64_MAX, -1};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
    env_spec e = hx_honest_env(&s.dev[0], "POST", "/v1/checkin");
    e.timestamp_ms = ts[i];
    EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 401,
                   "stale_timestamp");
  }
  hx_assert_alive();

  /* Device ids above INT64_MAX name no device (they once failed the query: 503). */
  static const uint64_t ids[] = {(uint64_t)INT64_MAX + 1, UINT64_MAX};
  for (size_t i = 0; i < 2; i++) {
    env_spec e = hx_honest_env(&s.dev[0], "POST", "/v1/checkin");
    e.device_id = ids[i];
    EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 401,
                   "unknown_device");
  }

  /* Check-in ids: above INT64_MAX malformed; above INT32_MAX an ordinary unknown model (the
   * round query once compared its parameter as an int4). */
  env_spec e = hx_honest_env(&s.dev[0], "POST", "/v1/checkin");
  free(ci);
  ci = hx_checkin_body((uint64_t)INT64_MAX + 1, 0, 0, &len);
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 400,
                 "malformed_request");
  free(ci);
  ci = hx_checkin_body(s.model_id, 1, UINT64_MAX, &len);
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 400,
                 "malformed_request");
  free(ci);
  ci = hx_checkin_body((uint64_t)1 << 32, 0, 0, &len);
  cr_assert_eq(hx_signed_req(&e, "POST", "/v1/checkin", ci, len, &r), 0);
  cr_expect_eq(r.status, 200, "check-in for model 2^32: %ld %s", r.status, fl_h_error_reason(&r));
  Fl__V1__CheckInResponse *cr = fl__v1__check_in_response__unpack(NULL, r.len, r.data);
  cr_expect(cr != NULL && cr->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY &&
                strcmp(cr->retry->reason, "no_open_round") == 0,
            "model 2^32 has no open round");
  fl__v1__check_in_response__free_unpacked(cr, NULL);
  fl_h_resp_free(&r);
  free(ci);

  /* An otherwise valid update for round 2^63: no such round. */
  upd x;
  hx_upd_init(&x, &s);
  x.u.round_id = (uint64_t)INT64_MAX + 1;
  x.u.sample_count = 10;
  uint8_t *ub = hx_pack_update(&x, &len);
  hx_upd_free(&x);
  e = hx_honest_env(&s.dev[0], "POST", "/v1/updates");
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/updates", ub, len, &r), &r, 404, "unknown_round");
  free(ub);

  /* Evaluation reports: ids above INT64_MAX, sample counts above --max-samples. */
  Fl__V1__EvalReport ev = FL__V1__EVAL_REPORT__INIT;
  uint8_t eb[256];
  ev.model_id = s.model_id;
  ev.version = 1;
  ev.gate_id = (uint64_t)INT64_MAX + 1;
  len = fl__v1__eval_report__pack(&ev, eb);
  e = hx_honest_env(&s.dev[0], "POST", "/v1/evaluations");
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 400,
                 "malformed_request");
  ev.gate_id = 0;
  ev.sample_count = UINT64_MAX;
  len = fl__v1__eval_report__pack(&ev, eb);
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 422,
                 "bad_sample_count");

  /* Path ids: overflow, above INT64_MAX, sign, trailing junk. */
  static const char *const paths[] = {"/v1/models/18446744073709551616/versions/1",
                                      "/v1/models/9223372036854775808/versions/1",
                                      "/v1/models/1/versions/99999999999999999999",
                                      "/v1/models/-1/versions/1", "/v1/models/1/versions/1junk"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    e = hx_honest_env(&s.dev[0], "GET", paths[i]);
    EXPECT_REFUSAL(hx_signed_req(&e, "GET", paths[i], NULL, 0, &r), &r, 404, "not_found");
  }
  /* Unknown device paths and wrong methods answer in the device API's format too. */
  EXPECT_REFUSAL(hx_raw("POST", "/v1/nowhere", NULL, "x", 1, false, &r), &r, 404, "not_found");
  EXPECT_REFUSAL(hx_raw("GET", "/v1/checkin", NULL, NULL, 0, false, &r), &r, 405,
                 "method_not_allowed");
  long st;
  json_decref(fl_h_admin(&hx_coord, "GET", "/admin/v1/rounds/18446744073709551616", NULL, &st));
  cr_expect_eq(st, 404);
  json_decref(
      fl_h_admin(&hx_coord, "POST", "/admin/v1/devices/9223372036854775808/revoke", NULL, &st));
  cr_expect_eq(st, 404);
  static const char *const lists[] = {"/admin/v1/rounds?model_id=4294967296",
                                      "/admin/v1/channels?model_id=4294967296",
                                      "/admin/v1/rollouts?model_id=4294967296"};
  for (size_t i = 0; i < 3; i++) {
    json_decref(fl_h_admin(&hx_coord, "GET", lists[i], NULL, &st));
    cr_expect_eq(st, 200, "%s: %ld", lists[i], st);
  }

  /* Text that is not UTF-8 is refused before it reaches a text column (once a 503), and the
   * enrollment token stays unused. */
  fl_key *k = NULL;
  uint8_t pub[FL_PUBKEY_LEN];
  cr_assert_eq(fl__key_generate(&k), 0);
  cr_assert_eq(fl__key_public(k, pub), 0);
  Fl__V1__EnrollRequest er = FL__V1__ENROLL_REQUEST__INIT;
  Fl__V1__Label lab = FL__V1__LABEL__INIT, *labp = &lab;
  er.enrollment_token = (char *)token;
  er.public_key = (ProtobufCBinaryData){sizeof pub, pub};
  static char bad_utf8[][8] = {"\xff", "\xc0\x80", "\xed\xa0\x80", "ok\x80"};
  for (size_t i = 0; i < 4; i++) {
    er.firmware = i % 2 ? bad_utf8[i] : "fw";
    lab.key = "site";
    lab.value = i % 2 ? "x" : bad_utf8[i];
    er.n_labels = 1;
    er.labels = &labp;
    len = fl__v1__enroll_request__pack(&er, eb);
    env_spec en = {k, 0, hx_wall_ms(), 16, "POST", "/v1/enroll", FL_SIG_LEN, false};
    EXPECT_REFUSAL(hx_signed_req(&en, "POST", "/v1/enroll", eb, len, &r), &r, 400,
                   "malformed_request");
  }
  hx_assert_unchanged(before);
  fl_h_device d = {.key = k};
  cr_expect_eq(fl_h_device_enroll(&hx_coord, &d, token), 200, "the token was consumed");
  fl_h_device_free(&d);
  json_decref(tok);
  hx_assert_alive();
  hx_scene_free(&s);
}

/* ----- the norm bound ------------------------------------------------------------------- */

/* The int8 quantisation allowance of the norm bound grows with the tensor's scale, which the
 * device chooses: with a huge scale and a quarter of the values at +-1, any norm fitted under
 * it (docs/API.md 1.6). An honest scale is at most max|x|/127 <= bound/127. */
Test(hostile, int8_scale_cannot_lift_the_norm_bound, .init = hx_setup, .fini = hx_teardown,
     .timeout = 120) {
  scene s;
  int64_t before[N_STATE];
  fl_h_resp r;
  size_t len;
  hx_scene_build(&s);
  hx_snapshot(before);
  static const float scales[] = {1e6f, 1.0f, 5.0f / 127.0f * 1.01f};
  for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++) {
    upd x;
    hx_upd_init(&x, &s);
    for (size_t i = 0; i < s.base->n_weights; i++) {
      Fl__V1__Tensor *t = &x.t[i];
      size_t n = (size_t)x.count0[i];
      uint8_t *p = hx_upd_buf(&x.data[i], n);
      for (size_t j = 0; j < n; j++)
        p[j] = j % 4 == 0 ? (uint8_t)(j % 8 ? 1 : 0xff) : 0;
      t->encoding = FL__V1__ENCODING__ENCODING_INT8;
      t->data = (ProtobufCBinaryData){n, p};
      t->scale = scales[k];
    }
    x.u.sample_count = 10;
    uint8_t *ub = hx_pack_update(&x, &len);
    hx_upd_free(&x);
    env_spec e = hx_honest_env(&s.dev[0], "POST", "/v1/updates");
    EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/updates", ub, len, &r), &r, 422, "norm_exceeded");
    free(ub);
  }
  hx_assert_unchanged(before);
  /* An honest int8 update (scale = max|x|/127, clipped to the plan's bound of 5) still counts. */
  float delta[43];
  for (int i = 0; i < 43; i++)
    delta[i] = (float)((i % 7) - 3) * 0.1f;
  fl_h_update_opts o = {.encoding = FL__V1__ENCODING__ENCODING_INT8};
  cr_assert_eq(fl_h_upload(&hx_coord, &s.dev[0], s.base, s.round_id, delta, 10, &o, &r), 0);
  cr_expect_eq(r.status, 200, "honest int8 update: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  hx_scene_free(&s);
}

/* ----- evaluation gates ----------------------------------------------------------------- */

/* A gate is decided by the sample it asked (docs/API.md 5.3): a device outside the sample, or
 * outside the rollout's cohort, cannot vote by sending a report nobody asked for (with the
 * largest sample_count, one such report outweighed the whole sample). */
Test(hostile, only_the_gate_sample_reports, .init = hx_setup, .fini = hx_teardown, .timeout = 120) {
  enum { NDEV = 24 };
  fl_h_device dev[NDEV];
  uint64_t model_id, round_id;
  char body[512];
  cr_assert_eq(fl_h_model_and_plan(&hx_coord, "gated", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"deadline_s\":3600,\"clip_norm\":5}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&hx_coord, dev, NDEV), 0);
  /* Version 2 from one honest round, so that a rollout has a candidate. */
  Fl__V1__CheckInResponse *resp = NULL;
  Fl__V1__ModelVersion *base = NULL;
  cr_assert_eq(fl_h_checkin(&hx_coord, &dev[0], model_id, &resp), 0);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  cr_assert_eq(fl_h_download(&hx_coord, &dev[0], model_id, 1, &base), 0);
  float delta[43] = {0.01f};
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&hx_coord, &dev[0], base, round_id, delta, 10, NULL, &r), 0);
  cr_assert_eq(r.status, 200);
  fl_h_resp_free(&r);
  json_decref(fl_h_wait_round(&hx_coord, round_id, "closed", 30000));
  snprintf(body, sizeof body, "{\"model_id\":%llu,\"name\":\"stable\",\"version\":1}",
           (unsigned long long)model_id);
  json_decref(fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/channels", body));
  snprintf(body, sizeof body,
           "{\"model_id\":%llu,\"version\":2,\"percent\":100,"
           "\"gate\":{\"metric\":\"accuracy\",\"min\":0.5,\"sample_pct\":50,\"min_reports\":1}}",
           (unsigned long long)model_id);
  json_t *ro = fl_h_admin_ok(&hx_coord, "POST", "/admin/v1/rollouts", body);
  cr_assert_not_null(ro);
  uint64_t gate = (uint64_t)json_integer_value(json_object_get(ro, "rollout_id"));
  json_decref(ro);

  int outside = -1, inside = -1;
  for (int i = 0; i < NDEV; i++) {
    if (fl_sup_doc_member("fl.v1.gate", dev[i].id, gate, 50))
      inside = inside < 0 ? i : inside;
    else
      outside = outside < 0 ? i : outside;
  }
  cr_assert(inside >= 0 && outside >= 0, "need devices on both sides of the 50%% sample");
  Fl__V1__EvalReport ev = FL__V1__EVAL_REPORT__INIT;
  Fl__V1__Metric m = FL__V1__METRIC__INIT, *mp = &m;
  uint8_t eb[256];
  m.name = "accuracy";
  m.value = 1.0;
  ev.model_id = model_id;
  ev.version = 2;
  ev.gate_id = gate;
  ev.sample_count = 1000000;
  ev.n_metrics = 1;
  ev.metrics = &mp;
  size_t len = fl__v1__eval_report__pack(&ev, eb);
  int64_t evals = fl_h_db_int(hx_db, "SELECT count(*) FROM evaluations");
  env_spec e = hx_honest_env(&dev[outside], "POST", "/v1/evaluations");
  EXPECT_REFUSAL(hx_signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 403, "not_sampled");
  cr_expect_eq(fl_h_db_int(hx_db, "SELECT count(*) FROM evaluations"), evals);
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/rollouts/%llu", (unsigned long long)gate);
  json_t *g = fl_h_admin_ok(&hx_coord, "GET", path, NULL);
  cr_expect_str_eq(json_string_value(json_object_get(g, "gate_state")), "evaluating",
                   "an unsampled report decided the gate");
  json_decref(g);
  /* A sampled device's report counts. */
  e = hx_honest_env(&dev[inside], "POST", "/v1/evaluations");
  cr_assert_eq(hx_signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), 0);
  cr_expect_eq(r.status, 200, "sampled report: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  fl__v1__model_version__free_unpacked(base, NULL);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&dev[i]);
}
