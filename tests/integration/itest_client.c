/*
 * libflclient against a real fl-coordinator and PostgreSQL (run under pg_virtualenv):
 * enrollment, several training rounds, predictions from the served version checked against an
 * independent forward pass, a tampered download refused while the previous model stays in use,
 * one round of several clients driven by fl_multi on one thread, max_response_bytes
 * enforced by the built-in transport, and the coordinator's signed tasks (a task changed on the
 * way is refused).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fl/client.h"
#include "harness.h"

#define NFEAT 6
#define NCLS 3
#define NEX 60

static char g_db[64];
static fl_h_coord g_coord;

static void setup(void) {
  static const char *const extra[] = {"--tick=50", "--checkin-interval=100", NULL};
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

/* Three classes, each lighting up its own pair of features, plus a little per-device noise. */
static float g_x[4][NEX * NFEAT];
static int32_t g_y[4][NEX];
static void make_data(int dev) {
  for (int i = 0; i < NEX; i++) {
    int y = (i + dev) % NCLS;
    g_y[dev][i] = y;
    for (int j = 0; j < NFEAT; j++)
      g_x[dev][i * NFEAT + j] =
          (j / 2 == y ? 1.0f : 0.0f) + 0.05f * (float)(((i + 3) * (j + 1) * (dev + 1)) % 7) / 7;
  }
}

/* ---- a transport wrapper that tampers with model downloads or tasks ---------------------- */

typedef enum tamper_mode {
  TAMPER_OFF = 0,
  TAMPER_WEIGHT,
  TAMPER_SIGNATURE,
  TAMPER_TASK
} tamper_mode;

typedef struct tamper {
  fl_transport inner;
  tamper_mode mode;
  bool get, checkin;
  int flips;
  uint8_t *copy;
} tamper;

static fl_err tp_begin(void *ctx, const fl_http_request *req) {
  tamper *t = ctx;
  t->get = strcmp(req->method, "GET") == 0;
  t->checkin = strcmp(req->path, "/v1/checkin") == 0;
  return t->inner.begin(t->inner.ctx, req);
}

/* Flips one bit of the first weight, or of the signature, keeping the message well-formed. */
static void tamper_body(tamper *t, fl_http_response *resp) {
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(NULL, resp->body_len, resp->body);
  cr_assert_not_null(mv);
  cr_assert(mv->n_weights > 0 && mv->weights[0]->data.len > 0 && mv->signature.len > 0);
  if (t->mode == TAMPER_WEIGHT)
    mv->weights[0]->data.data[0] ^= 0x01;
  else
    mv->signature.data[5] ^= 0x01;
  free(t->copy);
  t->copy = malloc(resp->body_len);
  cr_assert_eq(fl__v1__model_version__pack(mv, t->copy), resp->body_len);
  fl__v1__model_version__free_unpacked(mv, NULL);
  resp->body = t->copy;
  t->flips++;
}

/* A man in the middle of a check-in: one more local epoch than the coordinator signed. */
static void tamper_task(tamper *t, fl_http_response *resp) {
  Fl__V1__CheckInResponse *r = fl__v1__check_in_response__unpack(NULL, resp->body_len, resp->body);
  cr_assert_not_null(r);
  if (r->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK) {
    cr_assert_eq(r->task->signature.len, FL_SIG_LEN, "the coordinator signs its tasks");
    r->task->hyperparameters->local_epochs++;
    free(t->copy);
    t->copy = malloc(fl__v1__check_in_response__get_packed_size(r));
    resp->body_len = fl__v1__check_in_response__pack(r, t->copy);
    resp->body = t->copy;
    t->flips++;
  }
  fl__v1__check_in_response__free_unpacked(r, NULL);
}

static fl_err tp_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  tamper *t = ctx;
  int err = t->inner.poll(t->inner.ctx, timeout_ms, resp);
  if (err != FL_OK || resp->status != 200)
    return err;
  if (t->mode == TAMPER_TASK && t->checkin)
    tamper_task(t, resp);
  else if (t->mode != TAMPER_OFF && t->mode != TAMPER_TASK && t->get)
    tamper_body(t, resp);
  return err;
}

static void tp_end(void *ctx) {
  tamper *t = ctx;
  t->inner.end(t->inner.ctx);
}

static void tp_destroy(void *ctx) {
  tamper *t = ctx;
  t->inner.destroy(t->inner.ctx);
  free(t->copy);
  t->copy = NULL;
}

static const char *tp_detail(void *ctx) {
  tamper *t = ctx;
  return t->inner.detail != NULL ? t->inner.detail(t->inner.ctx) : "";
}

/* ---- helpers ------------------------------------------------------------------------------ */

typedef struct dev {
  char dir[64];
  fl_client *c;
} dev;

/* A fresh state directory for a device (mkdtemp fills in the XXXXXX). */
static void dev_dir(dev *d) {
  snprintf(d->dir, sizeof d->dir, "/tmp/fl-itest-client-XXXXXX");
  cr_assert_not_null(mkdtemp(d->dir));
}

static void dev_open(dev *d, uint64_t model_id, tamper *tp) {
  dev_dir(d);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = g_coord.url,
                      .allow_insecure_http = 1, /* the coordinator is on loopback */
                      .state_dir = d->dir,
                      .request_timeout_ms = 20000,
                      .backoff_base_ms = 50,
                      .backoff_max_ms = 500,
                      .model_id = model_id,
                      .follow_training_base = 1};
  fl_transport wrapped;
  if (tp != NULL) {
    cr_assert_eq(fl_transport_curl(&tp->inner, &o), FL_OK);
    wrapped = (fl_transport){.version = FL_TRANSPORT_VERSION,
                             .ctx = tp,
                             .begin = tp_begin,
                             .poll = tp_poll,
                             .end = tp_end,
                             .destroy = tp_destroy,
                             .detail = tp_detail};
    o.transport = &wrapped;
  }
  cr_assert_eq(fl_client_new(&d->c, &o), FL_OK);
}

static void dev_close(dev *d) {
  fl_client_free(d->c);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
  cr_assert_eq(system(cmd), 0);
}

static json_t *tokens(int n) {
  char body[64];
  snprintf(body, sizeof body, "{\"count\":%d}", n);
  json_t *t = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", body);
  cr_assert_not_null(t);
  return t;
}

static const char *token_at(json_t *t, int i) {
  return json_string_value(json_array_get(json_object_get(t, "tokens"), (size_t)i));
}

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Runs rounds until the client is selected (the previous round may still be closing). */
static int round_until_selected(fl_client *c, fl_round_result *r) {
  for (int i = 0; i < 100; i++) {
    int err = fl_client_run_round(c, r);
    if (err != FL_OK || r->outcome != FL_ROUND_NOT_SELECTED)
      return err;
    sleep_ms(100);
  }
  return FL_E_TIMEOUT;
}

static uint64_t served_version(const fl_client *c) {
  fl_model_info mi = {.size = sizeof mi};
  return fl_client_model_info(c, &mi) == FL_OK ? mi.version : 0;
}

/* The small MLP of FL_H_SMALL_SPEC (6 -> 4 relu -> 3), computed here from downloaded weights. */
static void reference_forward(const float *w, const float *x, float out[NCLS]) {
  const float *w1 = w, *b1 = w + 24, *w2 = w + 28, *b2 = w + 40;
  float h[4];
  for (int i = 0; i < 4; i++) {
    double s = b1[i];
    for (int j = 0; j < NFEAT; j++)
      s += (double)w1[i * NFEAT + j] * x[j];
    h[i] = s > 0 ? (float)s : 0.0f;
  }
  for (int i = 0; i < NCLS; i++) {
    double s = b2[i];
    for (int j = 0; j < 4; j++)
      s += (double)w2[i * 4 + j] * h[j];
    out[i] = (float)s;
  }
}

static void check_predictions(fl_client *c, const fl_h_device *hd, uint64_t model_id) {
  fl_model_info mi = {.size = sizeof mi};
  cr_assert_eq(fl_client_model_info(c, &mi), FL_OK);
  cr_assert_eq(mi.input_size, NFEAT);
  cr_assert_eq(mi.output_size, NCLS);
  Fl__V1__ModelVersion *mv = NULL;
  cr_assert_eq(fl_h_download(&g_coord, hd, model_id, mi.version, &mv), 0);
  cr_assert_eq(memcmp(mv->sha256.data, mi.sha256, 32), 0);
  float *w = NULL;
  size_t n = 0;
  cr_assert_eq(fl_h_weights(mv, &w, &n), 0);
  cr_assert_eq(n, 43);
  float got[4 * NCLS], want[NCLS];
  cr_assert_eq(fl_client_predict(c, g_x[0], 4, got), FL_OK);
  for (int i = 0; i < 4; i++) {
    reference_forward(w, g_x[0] + i * NFEAT, want);
    for (int k = 0; k < NCLS; k++)
      cr_assert_float_eq(got[i * NCLS + k], want[k], 1e-4, "example %d class %d", i, k);
  }
  free(w);
  fl__v1__model_version__free_unpacked(mv, NULL);
}

Test(client, enroll_rounds_predict_and_refuse_tampered_model, .init = setup, .fini = teardown,
     .timeout = 300) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "client-itest", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"min_participants\":2,"
                                   "\"over_selection\":1.0,\"deadline_s\":600,"
                                   "\"local_epochs\":2,\"batch_size\":8,\"learning_rate\":0.1,"
                                   "\"momentum\":0.5,\"clip_norm\":10,\"encoding\":\"float16\"}",
                                   &model_id, &round_id),
               0);
  json_t *tok = tokens(2);
  static tamper tp;
  memset(&tp, 0, sizeof tp);
  dev d[2];
  for (int i = 0; i < 2; i++) {
    make_data(i);
    dev_open(&d[i], model_id, i == 0 ? &tp : NULL);
    cr_assert_eq(fl_client_enroll(d[i].c, token_at(tok, i), NULL, 0, "itest"), FL_OK, "%s",
                 fl_client_errmsg(d[i].c));
    cr_assert_eq(fl_client_set_data_memory(d[i].c, g_x[i], g_y[i], NEX, NFEAT), FL_OK);
  }
  json_decref(tok);
  cr_assert_neq(fl_client_device_id(d[0].c), fl_client_device_id(d[1].c));
  /* Enrolling again is a no-op, also with a used token. */
  cr_assert_eq(fl_client_enroll(d[0].c, "used", NULL, 0, NULL), FL_OK);

  /* Three rounds: both devices train on version k, the round closes into version k+1. */
  for (uint64_t k = 1; k <= 3; k++) {
    uint64_t rid = 0;
    for (int i = 0; i < 2; i++) {
      fl_round_result r = {.size = sizeof r};
      cr_assert_eq(round_until_selected(d[i].c, &r), FL_OK, "round %llu device %d: %s",
                   (unsigned long long)k, i, fl_client_errmsg(d[i].c));
      cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
      cr_assert_eq(r.base_version, k);
      cr_assert_eq(r.sample_count, NEX);
      cr_assert(r.norm > 0 && r.norm <= 10.0f);
      cr_assert_eq(served_version(d[i].c), k);
      rid = r.round_id;
    }
    json_t *round = fl_h_wait_round(&g_coord, rid, "closed", 30000);
    cr_assert_not_null(round, "round %llu did not close", (unsigned long long)rid);
    cr_assert_eq(json_integer_value(json_object_get(round, "result_version")), (json_int_t)k + 1);
    json_decref(round);
  }

  /* Round 4: the download of version 4 is tampered with on device 0: refused, and the device
   * keeps serving version 3. */
  float before[NCLS], after[NCLS];
  cr_assert_eq(fl_client_predict(d[0].c, g_x[0], 1, before), FL_OK);
  tp.mode = TAMPER_WEIGHT;
  fl_round_result r = {.size = sizeof r};
  int err = round_until_selected(d[0].c, &r);
  cr_assert_eq(err, FL_E_BADHASH, "%s: %s", fl_strerror(err), fl_client_errmsg(d[0].c));
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert_eq(tp.flips, 1);
  tp.mode = TAMPER_SIGNATURE;
  err = round_until_selected(d[0].c, &r);
  cr_assert_eq(err, FL_E_BADSIG, "%s: %s", fl_strerror(err), fl_client_errmsg(d[0].c));
  cr_assert_eq(tp.flips, 2);
  cr_assert_eq(served_version(d[0].c), 3);
  cr_assert_eq(fl_client_predict(d[0].c, g_x[0], 1, after), FL_OK);
  cr_assert_eq(memcmp(before, after, sizeof before), 0);

  /* Honest bytes again: the device catches up. */
  tp.mode = TAMPER_OFF;
  cr_assert_eq(round_until_selected(d[0].c, &r), FL_OK, "%s", fl_client_errmsg(d[0].c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(served_version(d[0].c), 4);
  cr_assert_eq(round_until_selected(d[1].c, &r), FL_OK, "%s", fl_client_errmsg(d[1].c));
  cr_assert_eq(served_version(d[1].c), 4);

  /* Predictions are those of version 4 as the coordinator stores it. */
  fl_h_device hd;
  memset(&hd, 0, sizeof hd);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &hd, 1), 0);
  check_predictions(d[0].c, &hd, model_id);
  check_predictions(d[1].c, &hd, model_id);
  fl_h_device_free(&hd);

  /* State survives a restart of the device: same identity, same model. */
  uint64_t id0 = fl_client_device_id(d[0].c);
  fl_client_free(d[0].c);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = g_coord.url,
                      .allow_insecure_http = 1, /* the coordinator is on loopback */
                      .state_dir = d[0].dir,
                      .model_id = model_id};
  cr_assert_eq(fl_client_new(&d[0].c, &o), FL_OK);
  cr_assert_eq(fl_client_device_id(d[0].c), id0);
  cr_assert_eq(served_version(d[0].c), 4);
  for (int i = 0; i < 2; i++)
    dev_close(&d[i]);
}

Test(client, multi_drives_a_round_of_several_clients_on_one_thread, .init = setup, .fini = teardown,
     .timeout = 300) {
  enum { N = 4 };
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "client-multi", FL_H_SMALL_SPEC,
                                   "{\"participants\":4,\"min_participants\":4,"
                                   "\"over_selection\":1.0,\"deadline_s\":600,"
                                   "\"local_epochs\":1,\"batch_size\":10,\"learning_rate\":0.1,"
                                   "\"clip_norm\":5,\"encoding\":\"int8\"}",
                                   &model_id, &round_id),
               0);
  json_t *tok = tokens(N);
  dev d[N];
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  for (int i = 0; i < N; i++) {
    make_data(i);
    dev_open(&d[i], model_id, NULL);
    cr_assert_eq(fl_client_enroll(d[i].c, token_at(tok, i), NULL, 0, NULL), FL_OK);
    cr_assert_eq(fl_client_set_data_memory(d[i].c, g_x[i], g_y[i], NEX, NFEAT), FL_OK);
    cr_assert_eq(fl_multi_add(m, d[i].c), FL_OK);
    cr_assert_eq(fl_client_round_begin(d[i].c), FL_OK);
  }
  json_decref(tok);
  int uploaded = 0, trained = 0;
  for (int iter = 0; iter < 3000 && uploaded < N; iter++) {
    cr_assert_eq(fl_multi_perform(m, 100), FL_OK);
    fl_client *c;
    fl_step st;
    fl_err err;
    while (fl_multi_next(m, &c, &st, &err)) {
      if (st == FL_STEP_NEED_TRAIN) {
        cr_assert_eq(fl_client_train(c), FL_OK, "%s", fl_client_errmsg(c));
        trained++;
        continue;
      }
      cr_assert_eq(err, FL_OK, "%s", fl_client_errmsg(c));
      fl_round_result r = {.size = sizeof r};
      fl_client_round_result(c, &r);
      cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
      cr_assert_eq(r.round_id, round_id);
      uploaded++;
    }
  }
  cr_assert_eq(trained, N);
  cr_assert_eq(uploaded, N);
  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 30000);
  cr_assert_not_null(round);
  cr_assert_eq(json_integer_value(json_object_get(round, "accepted")), N);
  json_decref(round);
  for (int i = 0; i < N; i++) {
    cr_assert_eq(fl_multi_remove(m, d[i].c), FL_OK);
    dev_close(&d[i]);
  }
  fl_multi_free(m);
}

Test(client, max_response_bytes_stops_a_larger_model_download, .init = setup, .fini = teardown,
     .timeout = 300) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "client-limit", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"min_participants\":1,"
                                   "\"over_selection\":1.0,\"deadline_s\":600,"
                                   "\"local_epochs\":1,\"batch_size\":10,\"learning_rate\":0.1}",
                                   &model_id, &round_id),
               0);
  /* The limit: one byte less than version 1 as the coordinator serves it. */
  fl_h_device hd;
  memset(&hd, 0, sizeof hd);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &hd, 1), 0);
  Fl__V1__ModelVersion *mv = NULL;
  cr_assert_eq(fl_h_download(&g_coord, &hd, model_id, 1, &mv), 0);
  size_t model_len = fl__v1__model_version__get_packed_size(mv);
  fl__v1__model_version__free_unpacked(mv, NULL);
  fl_h_device_free(&hd);

  json_t *tok = tokens(1);
  dev d;
  dev_dir(&d);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = g_coord.url,
                      .allow_insecure_http = 1, /* the coordinator is on loopback */
                      .state_dir = d.dir,
                      .request_timeout_ms = 20000,
                      .backoff_base_ms = 50,
                      .backoff_max_ms = 500,
                      .model_id = model_id,
                      .max_response_bytes = model_len - 1};
  cr_assert_eq(fl_client_new(&d.c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(d.c, token_at(tok, 0), NULL, 0, NULL), FL_OK, "%s",
               fl_client_errmsg(d.c));
  json_decref(tok);
  make_data(0);
  cr_assert_eq(fl_client_set_data_memory(d.c, g_x[0], g_y[0], NEX, NFEAT), FL_OK);
  fl_round_result r = {.size = sizeof r};
  fl_err err = round_until_selected(d.c, &r);
  cr_assert_eq(err, FL_E_TOOBIG, "%s: %s", fl_strerror(err), fl_client_errmsg(d.c));
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert(strstr(fl_client_errmsg(d.c), "max_response_bytes") != NULL, "%s",
            fl_client_errmsg(d.c));
  cr_assert_eq(served_version(d.c), 0);

  /* With room for the model, the same device takes part. */
  fl_client_free(d.c);
  o.max_response_bytes = model_len;
  cr_assert_eq(fl_client_new(&d.c, &o), FL_OK);
  cr_assert_eq(fl_client_set_data_memory(d.c, g_x[0], g_y[0], NEX, NFEAT), FL_OK);
  cr_assert_eq(round_until_selected(d.c, &r), FL_OK, "%s", fl_client_errmsg(d.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  dev_close(&d);
}

/* The real coordinator's task reaches the client signed; changed on the way, it is refused
 * before anything is downloaded or trained, and the same device takes part once the link is
 * honest again. */
Test(client, a_task_changed_on_the_way_is_refused, .init = setup, .fini = teardown,
     .timeout = 120) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "client-task-sig", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"min_participants\":1,"
                                   "\"over_selection\":1.0,\"deadline_s\":600,"
                                   "\"local_epochs\":2,\"batch_size\":8}",
                                   &model_id, &round_id),
               0);
  json_t *tok = tokens(1);
  static tamper tp;
  memset(&tp, 0, sizeof tp);
  tp.mode = TAMPER_TASK;
  dev d;
  dev_open(&d, model_id, &tp);
  cr_assert_eq(fl_client_enroll(d.c, token_at(tok, 0), NULL, 0, NULL), FL_OK, "%s",
               fl_client_errmsg(d.c));
  json_decref(tok);
  make_data(0);
  cr_assert_eq(fl_client_set_data_memory(d.c, g_x[0], g_y[0], NEX, NFEAT), FL_OK);
  fl_round_result r = {.size = sizeof r};
  fl_err err = round_until_selected(d.c, &r);
  cr_assert_eq(err, FL_E_BADSIG, "%s: %s", fl_strerror(err), fl_client_errmsg(d.c));
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert_eq(tp.flips, 1);
  cr_assert(strstr(fl_client_errmsg(d.c), "signature") != NULL, "%s", fl_client_errmsg(d.c));
  cr_assert_eq(served_version(d.c), 0, "nothing was downloaded");

  tp.mode = TAMPER_OFF;
  cr_assert_eq(round_until_selected(d.c, &r), FL_OK, "%s", fl_client_errmsg(d.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(r.round_id, round_id);
  dev_close(&d);
}
