/*
 * MQTT end to end (docs/MQTT.md): a real Mosquitto broker configured by
 * deploy/mosquitto/gen-config.sh, two fl-mqtt-bridge processes sharing the requests through an
 * MQTT 5 shared subscription, one real coordinator and PostgreSQL (run under pg_virtualenv).
 *
 * - mixed_fleet: 200 libflclient devices over MQTT (fl_transport_mqtt) and 100 over HTTP in
 *   one fl_multi, one round. The broker is SIGKILLed and restarted mid-round, after a quarter
 *   of the MQTT uploads were acknowledged and while at least 4 are in flight (crash_broker).
 *   Every device must end acknowledged (the in-flight ones by retrying, folded ones as
 *   duplicates), and the new version must equal FedAvg of exactly the updates the devices saw
 *   acknowledged (computed here in double from the deltas the test's trainer made), counted
 *   once; both bridges must have carried requests. FL_ITEST_MQTT_DEVICES /
 *   FL_ITEST_HTTP_DEVICES scale it.
 * - acl_and_forgery: a device's account cannot publish on another device's topic, nor have
 *   the bridge answer into another device's topic, nor read another device's answers; forged
 *   requests (bad signature, stale timestamp, replayed nonce, a GET's bad X-FL-Auth) over MQTT
 *   get exactly the status and reason they get over HTTP.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "fl/client.h"
#include "flsupport/proc.h"
#include "harness.h"
#include "itest_mqtt_env.h"

static char g_db[64];
static fl_h_coord g_coord;
static mq_broker g_broker;
static pid_t g_bridge[2];
static char g_root[128]; /* the devices' state directories */

static int env_int(const char *name, int def) {
  const char *v = getenv(name);
  return v != NULL && atoi(v) > 0 ? atoi(v) : def;
}

static void setup_n(int n_accounts) {
  static const char *const extra[] = {"--tick=50", "--checkin-interval=100", NULL};
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
  cr_assert_eq(mq_broker_start(&g_broker, "m", n_accounts), 0, "broker start");
  for (int i = 0; i < 2; i++) {
    g_bridge[i] = mq_bridge_start(&g_broker, g_coord.url, i);
    cr_assert_gt(g_bridge[i], 0, "bridge %d start", i);
  }
  cr_assert_eq(fl_sup_mkdtemp(g_root, sizeof g_root, "fl-itest-mqtt-dev-"), 0);
}

static void setup_fleet(void) {
  setup_n(env_int("FL_ITEST_MQTT_DEVICES", 200));
}

static void setup_small(void) {
  setup_n(3);
}

static void teardown(void) {
  for (int i = 0; i < 2; i++)
    if (g_bridge[i] > 0)
      mq_bridge_stop(&g_broker, g_bridge[i], i);
  mq_broker_stop(&g_broker);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
  if (g_root[0] != '\0')
    fl_sup_rmtree(g_root);
}

/* ---- the fleet --------------------------------------------------------------------------- */

typedef struct dev {
  int idx;
  bool mqtt, acked, dup;
  fl_client *c;
  uint64_t samples;
  int64_t again_at_ms;
  int rounds;
} dev;

static atomic_int g_retries; /* failed exchanges of MQTT devices (each is retried) */

/* A failed exchange is logged as "<method> <path>: transport error ..." (or "timed out"). */
static void count_retries(void *ctx, fl_log_level lvl, const char *msg) {
  (void)ctx;
  (void)lvl;
  if (strstr(msg, "transport error") != NULL || strstr(msg, "timed out") != NULL)
    atomic_fetch_add(&g_retries, 1);
}

/* The update of device k: a fixed, device-specific delta (the test's FedAvg reference). */
static float delta_of(int k, size_t i) {
  return 0.002f * (float)(((k * 131 + (int)i * 17) % 41) - 20);
}

static fl_err trainer(void *ctx, const fl_train_task *task, float *w, uint64_t *samples,
                      float *loss) {
  dev *d = ctx;
  for (size_t i = 0; i < task->n_params; i++)
    w[i] += delta_of(d->idx, i);
  *samples = d->samples;
  *loss = 0.5f;
  return FL_OK;
}

static void dev_open(dev *d, uint64_t model_id, const char *token) {
  char dir[192], user[16];
  snprintf(dir, sizeof dir, "%s/d%04d", g_root, d->idx);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = g_coord.url,
                      .allow_insecure_http = 1, /* coordinator and broker on loopback */
                      .state_dir = dir,
                      .connect_timeout_ms = 3000,
                      .request_timeout_ms = 8000,
                      .max_retries = 8,
                      .backoff_base_ms = 100,
                      .backoff_max_ms = 1500,
                      .model_id = model_id,
                      .log_level = FL_LOG_INFO,
                      .log_fn = d->mqtt ? count_retries : NULL};
  fl_transport tr;
  if (d->mqtt) {
    snprintf(user, sizeof user, "m%03d", d->idx);
    fl_mqtt_opts mo = {.version = FL_MQTT_OPTS_VERSION,
                       .broker_url = g_broker.url,
                       .username = user,
                       .password = MQ_PASSWORD};
    cr_assert_eq(fl_transport_mqtt(&tr, &o, &mo), FL_OK);
    o.transport = &tr;
  }
  cr_assert_eq(fl_client_new(&d->c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(d->c, token, NULL, 0, NULL), FL_OK, "device %d: %s", d->idx,
               fl_client_errmsg(d->c));
  fl_client_set_trainer(d->c, trainer, d);
}

/* A device whose round ended without an acknowledgement checks in again (its update, if the
 * coordinator took it, is acknowledged as a duplicate then). */
static void on_done(dev *d, fl_err err, int *acked) {
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_round_result(d->c, &r), FL_OK);
  if (r.outcome == FL_ROUND_UPLOADED) {
    d->acked = true;
    d->dup = r.duplicate != 0;
    (*acked)++;
    return;
  }
  cr_assert_lt(++d->rounds, 20, "device %d: no acknowledgement after 20 rounds: %s", d->idx,
               err != FL_OK ? fl_client_errmsg(d->c) : "not selected");
  int64_t now = fl_sup_wall_ms();
  d->again_at_ms = r.retry_at_ms > now ? r.retry_at_ms : now + 200;
}

/* Hands the devices the multi queued to the trainer or to on_done. The first 8 MQTT devices
 * that need training are parked in held[] instead (crash_broker trains them). */
typedef struct tally {
  int acked, acked_mqtt;
  int n_held;
  dev *held[8];
} tally;

static void serve(fl_multi *m, dev *devs, int n, tally *t) {
  fl_client *c;
  fl_step st;
  fl_err err;
  while (fl_multi_next(m, &c, &st, &err)) {
    dev *d = NULL;
    for (int i = 0; i < n && d == NULL; i++)
      d = devs[i].c == c ? &devs[i] : NULL;
    if (st == FL_STEP_NEED_TRAIN && d->mqtt && t->n_held < 8 && !d->acked && d->rounds == 0) {
      t->held[t->n_held++] = d;
    } else if (st == FL_STEP_NEED_TRAIN) {
      cr_assert_eq(fl_client_train(c), FL_OK, "%s", fl_client_errmsg(c));
    } else {
      int before = t->acked;
      on_done(d, err, &t->acked);
      t->acked_mqtt += d->mqtt && t->acked > before;
    }
  }
}

/* The crash, made to catch uploads in flight whatever the timing: the 8 MQTT devices that
 * finished their download first were held back from training (serve); now both bridges are
 * stopped (SIGSTOP: nothing more is answered), the held devices train and publish their
 * uploads (QoS 1: the broker
 * PUBACKs them and pushes them to the stopped bridges' sockets), and the broker is SIGKILLed
 * and restarted before the bridges continue. An upload a bridge had read reaches the
 * coordinator and is folded, its answer has no broker to go to; one still in the broker is
 * lost. Either way the device's exchange fails, and its retry (the same signed upload) must be
 * taken once: a folded update is acknowledged as a duplicate. */
static void crash_broker(fl_multi *m, dev *devs, int n, tally *t) {
  cr_assert_geq(t->n_held, 4, "only %d MQTT devices reached training", t->n_held);
  for (int i = 0; i < 2; i++)
    cr_assert_eq(kill(g_bridge[i], SIGSTOP), 0);
  for (int i = 0; i < t->n_held; i++)
    cr_assert_eq(fl_client_train(t->held[i]->c), FL_OK, "%s", fl_client_errmsg(t->held[i]->c));
  for (int k = 0; k < 10; k++) { /* the uploads go out, the broker passes them on */
    cr_assert_eq(fl_multi_perform(m, 50), FL_OK);
    serve(m, devs, n, t);
  }
  for (int i = 0; i < t->n_held; i++)
    cr_assert_not(t->held[i]->acked, "device %d: answered with the bridges stopped",
                  t->held[i]->idx);
  cr_log_info("broker SIGKILL + restart after %d MQTT acknowledgements, %d MQTT uploads in flight",
              t->acked_mqtt, t->n_held);
  cr_assert_eq(mq_broker_restart(&g_broker), 0);
  for (int i = 0; i < 2; i++)
    cr_assert_eq(kill(g_bridge[i], SIGCONT), 0);
}

static void drive(fl_multi *m, dev *devs, int n, int n_mqtt) {
  tally t = {0};
  bool restarted = false;
  double end = fl_sup_mono_s() + 400;
  while (t.acked < n) {
    cr_assert_lt(fl_sup_mono_s(), end, "only %d of %d updates acknowledged", t.acked, n);
    cr_assert_eq(fl_multi_perform(m, 50), FL_OK);
    serve(m, devs, n, &t);
    int64_t now = fl_sup_wall_ms();
    for (int i = 0; i < n; i++)
      if (!devs[i].acked && devs[i].again_at_ms != 0 && now >= devs[i].again_at_ms) {
        devs[i].again_at_ms = 0;
        cr_assert_eq(fl_client_round_begin(devs[i].c), FL_OK);
      }
    /* Mid-round: some MQTT devices' uploads acknowledged, most still to come. */
    if (!restarted && t.acked_mqtt >= n_mqtt / 4) {
      cr_assert_lt(t.acked_mqtt, n_mqtt - 4, "the round ran past the crash point");
      atomic_store(&g_retries, 0);
      crash_broker(m, devs, n, &t);
      restarted = true;
    }
  }
  cr_assert(restarted);
  /* The exchanges the crash caught failed and were retried (QoS 1 alone does not survive a
   * broker without persistence: the retry is the device's, idempotent at the coordinator). */
  cr_assert_geq(atomic_load(&g_retries), t.n_held, "fewer retries than uploads in flight");
}

Test(mqtt, mixed_fleet, .init = setup_fleet, .fini = teardown, .timeout = 900) {
  const int n_mqtt = env_int("FL_ITEST_MQTT_DEVICES", 200);
  const int n = n_mqtt + env_int("FL_ITEST_HTTP_DEVICES", 100);
  uint64_t model_id = 0, round_id = 0;
  char plan[256];
  snprintf(plan, sizeof plan,
           "{\"participants\":%d,\"over_selection\":1.0,\"deadline_s\":900,\"clip_norm\":100}", n);
  cr_assert_eq(
      fl_h_model_and_plan(&g_coord, "mqtt-fleet", FL_H_SMALL_SPEC, plan, &model_id, &round_id), 0);
  fl_h_device probe;
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &probe, 1), 0);
  Fl__V1__ModelVersion *base;
  cr_assert_eq(fl_h_download(&g_coord, &probe, model_id, 1, &base), 0);
  float *w0;
  size_t np;
  cr_assert_eq(fl_h_weights(base, &w0, &np), 0);

  char body[64];
  snprintf(body, sizeof body, "{\"count\":%d}", n);
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", body);
  cr_assert_not_null(tok);
  dev *devs = calloc((size_t)n, sizeof *devs);
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  for (int i = 0; i < n; i++) {
    devs[i] = (dev){.idx = i, .mqtt = i < n_mqtt, .samples = 5 + (uint64_t)(i % 23)};
    const char *t = json_string_value(json_array_get(json_object_get(tok, "tokens"), (size_t)i));
    dev_open(&devs[i], model_id, t);
    cr_assert_eq(fl_multi_add(m, devs[i].c), FL_OK);
    cr_assert_eq(fl_client_round_begin(devs[i].c), FL_OK);
  }
  json_decref(tok);
  drive(m, devs, n, n_mqtt);

  /* FedAvg of the acknowledged updates, in double: base + sum(n_k d_k) / sum(n_k). */
  double *expect = calloc(np, sizeof *expect), total = 0;
  int dups = 0;
  for (int k = 0; k < n; k++) {
    cr_assert(devs[k].acked);
    dups += devs[k].dup;
    for (size_t i = 0; i < np; i++)
      expect[i] += (double)devs[k].samples * delta_of(k, i);
    total += (double)devs[k].samples;
  }
  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 60000);
  cr_assert_not_null(round);
  json_t *met = json_object_get(round, "metrics");
  cr_assert_eq(json_integer_value(json_object_get(met, "participants")), n);
  cr_assert_eq(json_integer_value(json_object_get(met, "total_samples")), (json_int_t)total);
  json_decref(round);
  Fl__V1__ModelVersion *v2;
  cr_assert_eq(fl_h_download(&g_coord, &probe, model_id, 2, &v2), 0);
  float *w2;
  cr_assert_eq(fl_h_weights(v2, &w2, &np), 0);
  for (size_t i = 0; i < np; i++) {
    double e = w0[i] + expect[i] / total;
    cr_assert(fabs(w2[i] - e) <= 1e-6 + 1e-5 * fabs(e), "param %zu: %.9g vs %.9g", i, w2[i], e);
  }
  cr_log_info(
      "%d devices (%d MQTT): %d MQTT retries logged after the crash, %d acknowledged "
      "as duplicates",
      n, n_mqtt, atomic_load(&g_retries), dups);
  /* Uploads the bridges had read when the broker died were folded and their answers lost:
   * their retries are acknowledged as duplicates, and counted once above (participants). */
  cr_assert_gt(dups, 0, "no update folded before the crash was retried");

  for (int i = 0; i < n; i++) {
    cr_assert_eq(fl_multi_remove(m, devs[i].c), FL_OK);
    fl_client_free(devs[i].c);
  }
  fl_multi_free(m);
  /* Both bridges carried requests: the shared subscription spreads them. */
  for (int i = 0; i < 2; i++) {
    long got = mq_bridge_stop(&g_broker, g_bridge[i], i);
    g_bridge[i] = 0;
    cr_log_info("bridge %d forwarded %ld requests", i, got);
    cr_assert_gt(got, 0, "bridge %d carried nothing", i);
  }
  free(expect);
  free(w0);
  free(w2);
  free(devs);
  fl__v1__model_version__free_unpacked(base, NULL);
  fl__v1__model_version__free_unpacked(v2, NULL);
  fl_h_device_free(&probe);
}

/* ---- ACL and forged requests ------------------------------------------------------------ */

typedef struct outcome {
  long status;
  char reason[64];
} outcome;

static outcome over_http_post(const fl_h_device *d, const char *path, const uint8_t *env,
                              size_t n) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", g_coord.url, path);
  fl_h_resp r;
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
  fl_sup_http_opts ho = {.headers = h, .body = env, .len = n};
  cr_assert_eq(fl_sup_http(NULL, "POST", url, &ho, &r, NULL, 0), 0);
  curl_slist_free_all(h);
  (void)d;
  outcome o = {.status = r.status};
  snprintf(o.reason, sizeof o.reason, "%s", fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  return o;
}

static outcome over_mqtt(const char *method, const char *path, const uint8_t *env, size_t n,
                         const char *auth) {
  mq_raw r = {.user = "m001",
              .topic_user = "m001",
              .res_user = "m001",
              .method = method,
              .path = path,
              .auth = auth,
              .body = env,
              .len = n,
              .wait_ms = 10000};
  int puback = -1, status = 0;
  outcome o = {0};
  uint8_t *body = NULL;
  size_t len = 0;
  cr_assert_eq(mq_raw_exchange(&g_broker, &r, &puback, &status, o.reason, &body, &len), 0);
  cr_assert_eq(puback, 0, "PUBACK %d", puback);
  o.status = status;
  char from_body[64];
  if (status >= 400) {
    fl_sup_error_reason(body, len, from_body, sizeof from_body);
    cr_assert_str_eq(o.reason, from_body, "the reason property is the body's reason");
  }
  free(body);
  return o;
}

static void same_outcome(const char *what, outcome h, outcome q) {
  cr_log_info("%s: HTTP %ld %s, MQTT %ld %s", what, h.status, h.reason, q.status, q.reason);
  cr_assert_geq(h.status, 400, "%s was not refused over HTTP", what);
  cr_assert_eq(q.status, h.status, "%s: status over MQTT %ld, over HTTP %ld", what, q.status,
               h.status);
  cr_assert_str_eq(q.reason, h.reason, "%s", what);
}

/* One forged POST, built twice with the same knobs (each with its own nonce unless the knobs
 * fix one), sent once over each transport. */
static void forged_post(const fl_h_device *d, const char *what, const fl_h_forge *f) {
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  uint8_t body[64], *e1, *e2;
  size_t n = fl__v1__check_in_request__pack(&ci, body), l1, l2;
  cr_assert_eq(fl_sup_envelope(d->key, d->id, "POST", "/v1/checkin", body, n, f, &e1, &l1), 0);
  cr_assert_eq(fl_sup_envelope(d->key, d->id, "POST", "/v1/checkin", body, n, f, &e2, &l2), 0);
  outcome h = over_http_post(d, "/v1/checkin", e1, l1);
  outcome q = over_mqtt("POST", "/v1/checkin", e2, l2, NULL);
  same_outcome(what, h, q);
  free(e1);
  free(e2);
}

Test(mqtt, acl_and_forgery, .init = setup_small, .fini = teardown, .timeout = 300) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "mqtt-acl", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"deadline_s\":600}", &model_id, &round_id),
               0);
  fl_h_device d;
  cr_assert_eq(fl_h_enroll_devices(&g_coord, &d, 1), 0);

  /* Forgeries: the same status and reason over both transports. */
  fl_h_forge bad_sig = {.corrupt_signature = true};
  forged_post(&d, "bad signature", &bad_sig);
  fl_h_forge stale = {.timestamp_ms = fl_sup_wall_ms() - 86400000};
  forged_post(&d, "stale timestamp", &stale);
  fl_h_forge other = {.device_id = d.id + 1000};
  forged_post(&d, "unknown device", &other);
  /* A replay: the bytes the coordinator accepted once, sent again over each transport. */
  static const uint8_t nonce[16] = "mqtt-replay-1234";
  fl_h_forge fixed = {.nonce = nonce, .nonce_len = sizeof nonce};
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  ci.model_id = model_id;
  uint8_t body[64], *env;
  size_t n = fl__v1__check_in_request__pack(&ci, body), len;
  cr_assert_eq(fl_sup_envelope(d.key, d.id, "POST", "/v1/checkin", body, n, &fixed, &env, &len), 0);
  outcome first = over_mqtt("POST", "/v1/checkin", env, len, NULL);
  cr_assert_eq(first.status, 200, "a well-signed check-in over MQTT: %ld %s", first.status,
               first.reason);
  same_outcome("replayed nonce", over_http_post(&d, "/v1/checkin", env, len),
               over_mqtt("POST", "/v1/checkin", env, len, NULL));
  free(env);
  /* A GET whose X-FL-Auth envelope is badly signed. */
  char path[64];
  snprintf(path, sizeof path, "/v1/models/%llu/versions/1", (unsigned long long)model_id);
  fl_h_resp r;
  cr_assert_eq(fl_h_device_get(&g_coord, &d, path, &bad_sig, &r), 0);
  outcome h = {.status = r.status};
  snprintf(h.reason, sizeof h.reason, "%s", fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  cr_assert_eq(fl_sup_envelope(d.key, d.id, "GET", path, NULL, 0, &bad_sig, &env, &len), 0);
  char *hdr = fl_sup_auth_header(env, len);
  free(env);
  same_outcome("GET with a bad X-FL-Auth", h,
               over_mqtt("GET", path, NULL, 0, hdr + strlen("X-FL-Auth: ")));
  free(hdr);

  /* ACL: m000 listens on m001's answers, publishes on m001's request topic, and asks the
   * bridge to answer into m001's topic. */
  mq_spy *spy = mq_spy_start(&g_broker, "m000", "fl/v1/dev/m001/res");
  mq_spy *own = mq_spy_start(&g_broker, "m001", "fl/v1/dev/m001/res");
  cr_assert_not_null(spy);
  cr_assert_not_null(own);
  mq_raw cross = {.user = "m000",
                  .topic_user = "m001",
                  .res_user = "m001",
                  .method = "POST",
                  .path = "/v1/checkin",
                  .body = body,
                  .len = n,
                  .wait_ms = 1500};
  int puback = -1, status = -1;
  cr_assert_eq(mq_raw_exchange(&g_broker, &cross, &puback, &status, NULL, NULL, NULL), 0);
  cr_assert_eq(puback, 135, "PUBACK on another device's topic: %d (0x87 not authorized)", puback);
  cr_assert_eq(status, 0);
  mq_raw redirect = {.user = "m000",
                     .topic_user = "m000",
                     .res_user = "m001",
                     .method = "POST",
                     .path = "/v1/checkin",
                     .body = body,
                     .len = n,
                     .wait_ms = 1500};
  cr_assert_eq(mq_raw_exchange(&g_broker, &redirect, &puback, &status, NULL, NULL, NULL), 0);
  cr_assert_eq(puback, 0);
  cr_assert_eq(status, 0, "the bridge answered into a response topic of another device");
  /* m001's own exchange is answered; m000's subscription to it receives nothing. */
  (void)over_mqtt("POST", "/v1/checkin", body, n, NULL);
  fl_sup_sleep_ms(500);
  cr_assert_eq(mq_spy_stop(spy), 0, "m000 read an answer meant for m001");
  cr_assert_eq(mq_spy_stop(own), 1, "m001's own subscription saw its answer only");
  fl_h_device_free(&d);
}

/* A connection that died while the device was idle (a broker restart between rounds, or a
 * broker that closed it after its keep-alive) is found out when the next exchange begins and
 * replaced then: the exchange is not sent into the dead connection (no retry, no backoff). */
Test(mqtt, idle_connection_that_died_is_replaced_without_a_retry, .init = setup_small,
     .fini = teardown, .timeout = 120) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "mqtt-idle", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"deadline_s\":600}", &model_id, &round_id),
               0);
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  cr_assert_not_null(tok);
  char dir[192];
  snprintf(dir, sizeof dir, "%s/idle", g_root);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .allow_insecure_http = 1,
                      .state_dir = dir,
                      .request_timeout_ms = 8000,
                      .backoff_base_ms = 100,
                      .model_id = model_id,
                      .log_level = FL_LOG_INFO,
                      .log_fn = count_retries};
  fl_mqtt_opts mo = {.version = FL_MQTT_OPTS_VERSION,
                     .broker_url = g_broker.url,
                     .username = "m002",
                     .password = MQ_PASSWORD};
  fl_transport tr;
  cr_assert_eq(fl_transport_mqtt(&tr, &o, &mo), FL_OK);
  o.transport = &tr;
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  const char *t = json_string_value(json_array_get(json_object_get(tok, "tokens"), 0));
  cr_assert_eq(fl_client_enroll(c, t, NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(c));
  json_decref(tok);
  cr_assert_eq(mq_broker_restart(&g_broker), 0); /* the device's connection is dead now */
  fl_sup_sleep_ms(1500);                         /* the bridges connect again */
  dev d = {.idx = 2, .samples = 7};
  fl_client_set_trainer(c, trainer, &d);
  atomic_store(&g_retries, 0);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(atomic_load(&g_retries), 0, "an exchange went to the dead connection");
  fl_client_free(c);
}

/* A gateway process with many devices has descriptors above FD_SETSIZE (1024): the device's
 * broker socket must still be driven (libmosquitto's own loop, built on select(), refuses
 * such a socket with "invalid arguments": every fl-sim device past the first thousand
 * descriptors failed to enroll). */
Test(mqtt, broker_socket_above_fd_setsize, .init = setup_small, .fini = teardown, .timeout = 120) {
  uint64_t model_id = 0, round_id = 0;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "mqtt-fds", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"deadline_s\":600}", &model_id, &round_id),
               0);
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  cr_assert_not_null(tok);
  struct rlimit rl;
  cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur < 1200 && rl.rlim_max >= 1200) {
    rl.rlim_cur = 1200;
    cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
  }
  cr_assert_geq(rl.rlim_cur, 1200, "RLIMIT_NOFILE too low for the test");
  int fds[1100], n = 0;
  while (n < 1100 && (fds[n] = open("/dev/null", O_RDONLY)) >= 0 && fds[n] < 1100)
    n++;
  cr_assert_geq(n, 1024 - 10, "only %d descriptors", n);
  char dir[192];
  snprintf(dir, sizeof dir, "%s/fds", g_root);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .allow_insecure_http = 1,
                      .state_dir = dir,
                      .request_timeout_ms = 8000,
                      .max_retries = 1,
                      .model_id = model_id};
  fl_mqtt_opts mo = {.version = FL_MQTT_OPTS_VERSION,
                     .broker_url = g_broker.url,
                     .username = "m000",
                     .password = MQ_PASSWORD};
  fl_transport tr;
  cr_assert_eq(fl_transport_mqtt(&tr, &o, &mo), FL_OK);
  o.transport = &tr;
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  const char *t = json_string_value(json_array_get(json_object_get(tok, "tokens"), 0));
  cr_assert_eq(fl_client_enroll(c, t, NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(c));
  json_decref(tok);
  dev d = {.idx = 0, .samples = 3};
  fl_client_set_trainer(c, trainer, &d);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  fl_client_free(c);
  for (int i = 0; i < n; i++)
    close(fds[i]);
}
