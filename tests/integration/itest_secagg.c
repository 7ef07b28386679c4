/*
 * Secure aggregation (SecAgg+, docs/SECAGG.md) through the real coordinator and PostgreSQL.
 * The devices run libflclient's device side (client/secagg.c) over signed harness requests.
 *
 * hundred_devices_with_dropouts: 100 devices, k = 20 neighbours, threshold 11; 5 devices drop
 * in each phase (never advertise keys, never send shares, never upload, never unmask). The new
 * version equals base + server_lr * dequantized (sum of the quantized updates of the 85
 * devices whose masked input is in the sum) / 85, bit for bit, computed here from the devices'
 * own quantized inputs. What PostgreSQL holds of each upload (its partial sum row, one upload
 * per row: the uploads go one at a time) has |Pearson r| < 0.1 with the device's quantized
 * update (2450 coordinates: the sd of r for independent data is 0.02) and < 0.012 pooled over
 * all 85 (208k pairs, sd 0.0022); a device that sent its quantized update unmasked would give
 * r = 1. Refusals on the way: a plain delta, an upload of a device that is not a participant,
 * a second set of keys, an unmasking share of the wrong kind. The coordinator is killed (SIGKILL)
 * and restarted after 40 of the masked inputs and after 40 of the unmasking messages: nothing
 * acknowledged is lost (the exact result counts every one). below_threshold_abandoned: 10 devices,
 * threshold 4 of 6, min_participants 6, only 5 masked inputs: the round is abandoned with a
 * secagg_below_threshold reason that the devices see. On the way: keys signed for another round,
 * shares before their phase, one share short. plan_refusals: secure aggregation with DP or a robust
 * rule is a 400 bad_plan. libflclient_round: 10 libflclient devices, each in its own thread with
 * fl_client_run_round, run every phase by themselves (the task asks for it) and the round closes
 * into a version. held_polls_leave_room: 16 long polls against a coordinator of 16 connections
 * leave a 17th device room to check in (half the connections are parked, the other polls are
 * answered at once and their connections closed). streaming_input_keeps_the_phase: a masked input
 * whose bytes are still arriving keeps the masked phase from ending as quiet.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "fl/client.h"
#include "fl/err.h"
#include "harness.h"
#include "flsupport/proc.h"
#include "rounds/optimizer.h"
#include "secagg.h"
#include "secagg_dev.h"

#define SPEC                                                                                 \
  "{\"input_shape\":[50],\"layers\":[{\"type\":\"dense\",\"units\":40},{\"type\":\"relu\"}," \
  "{\"type\":\"dense\",\"units\":10}],\"loss\":\"softmax_ce\"}"
#define NPARAMS 2450
#define CLIP 1.0

typedef struct dev {
  fl_h_device h;
  fl_sa_dev sa;
  bool in_keys, in_shares, in_masked, in_unmask; /* what it did */
  uint32_t q[NPARAMS];
} dev;

static char g_db[64];
static fl_h_coord g_c;
static dev *g_dev;
static int g_n;

static void start_with(int n, const char *const *extra) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, extra), 0);
  g_n = n;
  g_dev = calloc((size_t)n + 1, sizeof *g_dev);
  fl_h_device *hs = calloc((size_t)n + 1, sizeof *hs);
  cr_assert(n == 0 || fl_h_enroll_devices(&g_c, hs, n) == 0);
  for (int i = 0; i < n; i++)
    g_dev[i].h = hs[i];
  free(hs);
}

static void start(int n) {
  static const char *const extra[] = {"--tick=50", NULL};
  start_with(n, extra);
}

static void teardown(void) {
  fl_h_coord_stop(&g_c, SIGTERM);
  fl_h_coord_cleanup(&g_c);
  fl_h_db_drop(g_db);
  for (int i = 0; i < g_n; i++) {
    fl__sa_dev_free(&g_dev[i].sa);
    fl_h_device_free(&g_dev[i].h);
  }
  free(g_dev);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Signed POST of bytes (freed here); the status, and the error reason in why (may be NULL). */
static long post_bytes(const dev *d, const char *path, uint8_t *buf, size_t len, char *why) {
  fl_h_resp r;
  cr_assert_eq(fl_h_device_post(&g_c, &d->h, path, buf, len, NULL, &r), 0);
  free(buf);
  if (why != NULL)
    snprintf(why, 64, "%s", fl_h_error_reason(&r));
  long st = r.status;
  fl_h_resp_free(&r);
  return st;
}

/* POST of a packed message, as post_bytes. */
static long post(const dev *d, const char *path, const ProtobufCMessage *m, char *why) {
  size_t len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(len + 1);
  cr_assert_not_null(buf);
  protobuf_c_message_pack(m, buf);
  return post_bytes(d, path, buf, len, why);
}

static Fl__V1__SecAggState *state_of(const dev *d, uint64_t round_id) {
  Fl__V1__SecAggStateRequest q = FL__V1__SEC_AGG_STATE_REQUEST__INIT;
  uint8_t buf[32];
  fl_h_resp r;
  q.round_id = round_id;
  size_t len = fl__v1__sec_agg_state_request__pack(&q, buf);
  cr_assert_eq(fl_h_device_post(&g_c, &d->h, "/v1/secagg/state", buf, len, NULL, &r), 0);
  cr_assert_eq(r.status, 200, "state: %ld %s", r.status, fl_h_error_reason(&r));
  Fl__V1__SecAggState *st = fl__v1__sec_agg_state__unpack(NULL, r.len, (uint8_t *)r.data);
  fl_h_resp_free(&r);
  cr_assert_not_null(st);
  return st;
}

/* A long poll: device d waits for phase want, held up to hold_ms; *ms is how long it took. */
static Fl__V1__SecAggState *hold_state(const dev *d, uint64_t round_id, Fl__V1__SecAggPhase want,
                                       uint32_t hold_ms, double *ms) {
  Fl__V1__SecAggStateRequest q = FL__V1__SEC_AGG_STATE_REQUEST__INIT;
  uint8_t buf[32];
  fl_h_resp r;
  q.round_id = round_id;
  q.wait_for = want;
  q.hold_ms = hold_ms;
  size_t len = fl__v1__sec_agg_state_request__pack(&q, buf);
  double t0 = fl_sup_mono_s();
  int rc = fl_h_device_post(&g_c, &d->h, "/v1/secagg/state", buf, len, NULL, &r);
  *ms = (fl_sup_mono_s() - t0) * 1000;
  Fl__V1__SecAggState *st = rc == 0 && r.status == 200
                                ? fl__v1__sec_agg_state__unpack(NULL, r.len, (uint8_t *)r.data)
                                : NULL;
  fl_h_resp_free(&r);
  return st;
}

/* The long poll of the share phase's end, from a thread while the main one sends shares. */
typedef struct held_poll {
  pthread_t th;
  const dev *d;
  uint64_t round_id;
  Fl__V1__SecAggState *st;
  double ms;
} held_poll;

static void *held_poll_main(void *arg) {
  held_poll *h = arg;
  h->st = hold_state(h->d, h->round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED, 20000, &h->ms);
  return NULL;
}

/* A long poll for the share phase, from a thread (held_polls_leave_room). */
static void *held_keys_main(void *arg) {
  held_poll *h = arg;
  h->st = hold_state(h->d, h->round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES, 20000, &h->ms);
  return NULL;
}

/* Polls device d's view until the round is in phase ph (or past it: fails), 30 s at most. */
static void wait_phase(const dev *d, uint64_t round_id, Fl__V1__SecAggPhase ph) {
  for (int i = 0; i < 600; i++) {
    Fl__V1__SecAggState *st = state_of(d, round_id);
    Fl__V1__SecAggPhase got = st->phase;
    fl__v1__sec_agg_state__free_unpacked(st, NULL);
    if (got == ph)
      return;
    cr_assert_lt(got, ph, "phase %d while waiting for %d", got, ph);
    sleep_ms(50);
  }
  cr_assert_fail("phase %d not reached", ph);
}

static void checkin_all(uint64_t model_id, uint64_t round_id, uint32_t t, uint32_t k) {
  for (int i = 0; i < g_n; i++) {
    Fl__V1__CheckInResponse *resp;
    cr_assert_eq(fl_h_checkin(&g_c, &g_dev[i].h, model_id, &resp), 0);
    cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
    cr_assert_eq(resp->task->round_id, round_id);
    cr_assert_not_null(resp->task->secure_aggregation);
    cr_assert_eq(resp->task->secure_aggregation->threshold, t);
    cr_assert_eq(resp->task->secure_aggregation->neighbors, k);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
}

static void advertise(dev *d, uint64_t round_id, uint32_t t) {
  Fl__V1__SecAggAdvertise adv;
  char why[64];
  cr_assert_eq(fl__sa_dev_init(&d->sa, round_id, d->h.id, t, d->h.key, &adv), FL_OK);
  cr_assert_eq(post(d, "/v1/secagg/keys", &adv.base, why), 200, "keys: %s", why);
  d->in_keys = true;
}

static void send_shares(dev *d, uint64_t round_id) {
  Fl__V1__SecAggState *st = state_of(d, round_id);
  Fl__V1__SecAggShares sh;
  char why[64];
  cr_assert_eq(fl__sa_dev_shares(&d->sa, st, &sh), FL_OK);
  cr_assert_eq(post(d, "/v1/secagg/shares", &sh.base, why), 200, "shares: %s", why);
  fl__v1__sec_agg_state__free_unpacked(st, NULL);
  d->in_shares = true;
}

/* A clipped random delta, masked (q and y filled) into an UpdateUpload, packed (malloc'ed). */
static uint8_t *pack_masked(dev *d, uint64_t round_id, uint64_t model_id, uint64_t base_version,
                            unsigned seed, size_t *len) {
  static float x[NPARAMS];
  static uint8_t y[4 * NPARAMS];
  double sq = 0;
  srand(seed);
  for (int i = 0; i < NPARAMS; i++) {
    x[i] = (float)((rand() / (double)RAND_MAX - 0.5) * 0.08);
    sq += (double)x[i] * x[i];
  }
  for (int i = 0; sqrt(sq) > CLIP && i < NPARAMS; i++)
    x[i] = (float)(x[i] * (CLIP / sqrt(sq) * (1.0 - 0x1.0p-20)));
  /* A device that is no participant has nothing to mask with: it sends words all the same. */
  memset(y, 0, sizeof y);
  Fl__V1__SecAggState *st = d->in_keys ? state_of(d, round_id) : NULL;
  /* Every other device masks as libflclient does: all neighbours' masks added after training,
   * those of the neighbours whose shares never came taken out in the masked phase. */
  if (st != NULL && seed % 2)
    cr_assert_eq(fl__sa_dev_premask(&d->sa, x, NPARAMS, (double)(float)CLIP), FL_OK);
  if (st != NULL)
    cr_assert_eq(fl__sa_dev_mask(&d->sa, st, x, NPARAMS, (double)(float)CLIP, d->q, y), FL_OK);
  fl__v1__sec_agg_state__free_unpacked(st, NULL);
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  u.round_id = round_id;
  u.model_id = model_id;
  u.base_version = base_version;
  u.sample_count = 1;
  u.secagg_masked = (ProtobufCBinaryData){sizeof y, y};
  *len = fl__v1__update_upload__get_packed_size(&u);
  uint8_t *buf = malloc(*len);
  cr_assert_not_null(buf);
  fl__v1__update_upload__pack(&u, buf);
  return buf;
}

/* pack_masked, uploaded; the status. */
static long upload_masked(dev *d, uint64_t round_id, uint64_t model_id, uint64_t base_version,
                          unsigned seed, char *why) {
  size_t len;
  uint8_t *buf = pack_masked(d, round_id, model_id, base_version, seed, &len);
  return post_bytes(d, "/v1/updates", buf, len, why);
}

/* Pearson r of two word vectors, read as numbers. */
static void corr_add(double s[5], const uint32_t *a, const uint32_t *b, size_t n) {
  for (size_t i = 0; i < n; i++) {
    s[0] += a[i];
    s[1] += b[i];
    s[2] += (double)a[i] * a[i];
    s[3] += (double)b[i] * b[i];
    s[4] += (double)a[i] * b[i];
  }
}

static double corr_of(const double s[5], double n) {
  double va = s[2] - s[0] * s[0] / n, vb = s[3] - s[1] * s[1] / n;
  return (s[4] - s[0] * s[1] / n) / sqrt(va * vb);
}

/* The newest partial sum row of the round: what PostgreSQL holds of the last upload. */
static void last_partial(PGconn *pg, uint64_t round_id, uint32_t *words) {
  char sql[160];
  snprintf(sql, sizeof sql,
           "SELECT sum, count FROM partials WHERE round_id = %llu ORDER BY partial_id DESC"
           " LIMIT 1",
           (unsigned long long)round_id);
  PGresult *r = PQexecParams(pg, sql, 0, NULL, NULL, NULL, NULL, 1);
  cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(pg));
  cr_assert_eq(PQntuples(r), 1);
  cr_assert_eq(PQgetlength(r, 0, 0), 4 * NPARAMS);
  cr_assert_eq(ntohl(*(const uint32_t *)(const void *)PQgetvalue(r, 0, 1)), 1,
               "one upload per partial row");
  memcpy(words, PQgetvalue(r, 0, 0), 4 * NPARAMS);
  PQclear(r);
}

/* kill -9 of the coordinator, then the same coordinator again: acknowledged inputs and shares
 * are in PostgreSQL, the phase goes on (its deadline too). */
static void crash_and_restart(void) {
  cr_assert_eq(fl_h_coord_stop(&g_c, SIGKILL), 128 + SIGKILL);
  cr_assert_eq(fl_h_coord_restart(&g_c), 0);
}

static void masked_phase(uint64_t round_id, uint64_t model_id, int drop_to) {
  char conninfo[96], why[64];
  uint32_t stored[NPARAMS];
  double pooled[5] = {0};
  int uploads = 0;
  snprintf(conninfo, sizeof conninfo, "dbname=%s", g_db);
  PGconn *pg = PQconnectdb(conninfo);
  cr_assert_eq(PQstatus(pg), CONNECTION_OK);
  for (int i = 0; i < g_n; i++) {
    dev *d = &g_dev[i];
    if (!d->in_shares || i < drop_to)
      continue;
    long st = upload_masked(d, round_id, model_id, 1, 1000u + (unsigned)i, why);
    cr_assert_eq(st, 200, "masked upload of device %d: %ld %s", i, st, why);
    d->in_masked = true;
    uploads++;
    if (uploads == 40)
      crash_and_restart();
    double s[5] = {0};
    last_partial(pg, round_id, stored);
    corr_add(s, stored, d->q, NPARAMS);
    corr_add(pooled, stored, d->q, NPARAMS);
    double r = corr_of(s, NPARAMS);
    cr_expect_lt(fabs(r), 0.1, "device %d: the stored upload has r = %g with its update", i, r);
  }
  double r = corr_of(pooled, (double)uploads * NPARAMS);
  cr_expect_lt(fabs(r), 0.012, "pooled r = %g", r);
  fprintf(stderr, "itest_secagg: pooled r between stored uploads and updates: %.5f\n", r);
  PQfinish(pg);
}

static void unmask_phase(uint64_t round_id, int drop_to) {
  char why[64];
  int sent = 0;
  for (int i = drop_to; i < g_n; i++) {
    dev *d = &g_dev[i];
    if (!d->in_masked)
      continue;
    Fl__V1__SecAggState *st = state_of(d, round_id);
    Fl__V1__SecAggUnmask um;
    cr_assert_eq(fl__sa_dev_unmask(&d->sa, st, &um), FL_OK);
    if (sent == 0) {
      /* Both secrets of one neighbour would unmask its input alone: asking for its b while it
       * dropped (or for its s_sk while it survived) is refused. */
      um.shares[0]->self_mask = !um.shares[0]->self_mask;
      cr_expect_eq(post(d, "/v1/secagg/unmask", &um.base, why), 422);
      cr_expect_str_eq(why, "bad_unmask");
      um.shares[0]->self_mask = !um.shares[0]->self_mask;
    }
    cr_assert_eq(post(d, "/v1/secagg/unmask", &um.base, why), 200, "unmask %d: %s", i, why);
    fl__v1__sec_agg_state__free_unpacked(st, NULL);
    d->in_unmask = true;
    if (++sent == 40)
      crash_and_restart();
  }
}

/* What the coordinator must have computed: base + lr * mean of the quantized inputs in the sum. */
static void expect_result(uint64_t model_id, uint64_t version, uint32_t n, double lr) {
  static uint32_t sum[NPARAMS];
  static float mean[NPARAMS];
  fl_secagg_quant q;
  uint32_t count = 0;
  memset(sum, 0, sizeof sum);
  for (int i = 0; i < g_n; i++) {
    if (!g_dev[i].in_masked)
      continue;
    count++;
    for (int j = 0; j < NPARAMS; j++)
      sum[j] += g_dev[i].q[j];
  }
  cr_assert_eq(fl__secagg_quant_init(&q, (double)(float)CLIP, n), FL_OK);
  cr_assert_eq(fl__secagg_dequantize_mean(&q, sum, NPARAMS, count, mean), FL_OK);
  Fl__V1__ModelVersion *b, *v;
  float *wb, *wv;
  size_t nb, nv;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0].h, model_id, 1, &b), 0);
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0].h, model_id, version, &v), 0);
  cr_assert_eq(fl_h_weights(b, &wb, &nb), 0);
  cr_assert_eq(fl_h_weights(v, &wv, &nv), 0);
  cr_assert_eq(nb, NPARAMS);
  cr_assert_eq(nv, NPARAMS);
  fl_opt_params op;
  fl__opt_defaults(&op, FL_OPT_FEDAVG);
  op.lr = lr;
  fl__opt_step(&op, wb, mean, NULL, NULL, NPARAMS);
  size_t off = 0;
  for (size_t i = 0; i < NPARAMS; i++)
    off += memcmp(&wb[i], &wv[i], sizeof(float)) != 0;
  cr_expect_eq(off, 0, "%zu of %d weights differ from base + lr * mean", off, NPARAMS);
  free(wb);
  free(wv);
  fl__v1__model_version__free_unpacked(b, NULL);
  fl__v1__model_version__free_unpacked(v, NULL);
}

Test(secagg, hundred_devices_with_dropouts, .fini = teardown, .timeout = 600) {
  uint64_t model_id, round_id;
  char why[64];
  start(100);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "sa", SPEC,
                                   "{\"participants\":100,\"min_participants\":50,"
                                   "\"over_selection\":1,\"deadline_s\":8,\"clip_norm\":1,"
                                   "\"rounds\":1,\"server_lr\":0.5,"
                                   "\"secure_aggregation\":{\"threshold\":11,\"neighbors\":20}}",
                                   &model_id, &round_id),
               0);
  checkin_all(model_id, round_id, 11, 20);
  /* A long poll whose hold runs out before its phase: answered after the hold with the phase
   * as it is and "ask again now". */
  double ms;
  Fl__V1__SecAggState *held =
      hold_state(&g_dev[0], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES, 600, &ms);
  cr_assert_not_null(held);
  cr_expect_eq(held->phase, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_KEYS);
  cr_expect_eq(held->poll_after_ms, 1);
  cr_expect_geq(ms, 500, "held %.0f ms of 600", ms);
  fl__v1__sec_agg_state__free_unpacked(held, NULL);
  /* Keys: devices 0-4 never advertise. A second advertisement with other keys is refused. */
  for (int i = 5; i < g_n; i++)
    advertise(&g_dev[i], round_id, 11);
  fl_sa_dev other;
  Fl__V1__SecAggAdvertise adv;
  cr_assert_eq(fl__sa_dev_init(&other, round_id, g_dev[5].h.id, 11, g_dev[5].h.key, &adv), FL_OK);
  cr_expect_eq(post(&g_dev[5], "/v1/secagg/keys", &adv.base, why), 409);
  cr_expect_str_eq(why, "conflicting_keys");
  fl__sa_dev_free(&other);
  wait_phase(&g_dev[5], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES);
  /* Shares: devices 5-9 send none. Device 10, once it sent its shares, waits in a long poll
   * for the masked phase: the phase ends when it goes quiet (a quarter of the 8 s deadline
   * after the last shares), well before its deadline, and the poll is answered then with the
   * masked phase's state. */
  send_shares(&g_dev[10], round_id);
  held_poll hp = {.d = &g_dev[10], .round_id = round_id};
  cr_assert_eq(pthread_create(&hp.th, NULL, held_poll_main, &hp), 0);
  double t_shares = fl_sup_mono_s();
  for (int i = 11; i < g_n; i++)
    send_shares(&g_dev[i], round_id);
  double sent_ms = (fl_sup_mono_s() - t_shares) * 1000;
  pthread_join(hp.th, NULL);
  cr_assert_not_null(hp.st);
  cr_expect_eq(hp.st->phase, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED);
  cr_expect_gt(hp.st->n_inbox, 0, "the awaited phase's state comes with the inbox");
  cr_expect_eq(hp.st->poll_after_ms, 0);
  cr_expect_lt(hp.ms, sent_ms + 6000, "the share phase ended %.0f ms after the last shares",
               hp.ms - sent_ms);
  fprintf(stderr, "itest_secagg: share phase over %.0f ms after the last shares (quiet 2 s)\n",
          hp.ms - sent_ms);
  fl__v1__sec_agg_state__free_unpacked(hp.st, NULL);
  wait_phase(&g_dev[10], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED);
  /* A device that never advertised is no participant; a plain delta is no masked input. */
  cr_expect_eq(upload_masked(&g_dev[0], round_id, model_id, 1, 7, why), 403);
  cr_expect_str_eq(why, "not_participant");
  Fl__V1__ModelVersion *base;
  float delta[NPARAMS] = {0};
  fl_h_resp r;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[20].h, model_id, 1, &base), 0);
  cr_assert_eq(fl_h_upload(&g_c, &g_dev[20].h, base, round_id, delta, 1, NULL, &r), 0);
  cr_expect_eq(r.status, 422, "plain delta: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  fl__v1__model_version__free_unpacked(base, NULL);
  /* Masked inputs: devices 10-14 never upload. */
  masked_phase(round_id, model_id, 15);
  wait_phase(&g_dev[15], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK);
  /* Unmasking: devices 15-19 (their inputs are in the sum) never answer. */
  unmask_phase(round_id, 20);
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 30000);
  cr_assert_not_null(round, "the round did not close");
  uint64_t version = (uint64_t)json_integer_value(json_object_get(round, "result_version"));
  json_decref(round);
  cr_assert_gt(version, 1);
  expect_result(model_id, version, 95, 0.5);
  /* The relayed and unmasking shares are gone with the round. */
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM secagg_shares"), 0);
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM secagg_unmask"), 0);
}

Test(secagg, below_threshold_abandoned, .fini = teardown, .timeout = 300) {
  uint64_t model_id, round_id;
  char why[64];
  start(10);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "sa", SPEC,
                                   "{\"participants\":10,\"min_participants\":6,"
                                   "\"over_selection\":1,\"deadline_s\":2,\"clip_norm\":1,"
                                   "\"rounds\":1,"
                                   "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
                                   &model_id, &round_id),
               0);
  checkin_all(model_id, round_id, 4, 6);
  /* Hostile messages first: keys signed for another round, shares out of their phase. */
  fl_sa_dev forged;
  Fl__V1__SecAggAdvertise adv;
  cr_assert_eq(fl__sa_dev_init(&forged, round_id + 1, g_dev[0].h.id, 4, g_dev[0].h.key, &adv),
               FL_OK);
  adv.round_id = round_id;
  cr_expect_eq(post(&g_dev[0], "/v1/secagg/keys", &adv.base, why), 401);
  cr_expect_str_eq(why, "bad_signature");
  fl__sa_dev_free(&forged);
  Fl__V1__SecAggShares early = FL__V1__SEC_AGG_SHARES__INIT;
  early.round_id = round_id;
  cr_expect_eq(post(&g_dev[0], "/v1/secagg/shares", &early.base, why), 409);
  cr_expect_str_eq(why, "wrong_phase");
  for (int i = 0; i < g_n; i++)
    advertise(&g_dev[i], round_id, 4);
  wait_phase(&g_dev[0], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES);
  /* One share short of the neighbours: refused, and the full set is accepted after it. */
  Fl__V1__SecAggState *st0 = state_of(&g_dev[0], round_id);
  Fl__V1__SecAggShares sh;
  cr_assert_eq(fl__sa_dev_shares(&g_dev[0].sa, st0, &sh), FL_OK);
  fl__v1__sec_agg_state__free_unpacked(st0, NULL);
  sh.n_shares--;
  cr_expect_eq(post(&g_dev[0], "/v1/secagg/shares", &sh.base, why), 422);
  cr_expect_str_eq(why, "bad_shares");
  sh.n_shares++;
  cr_expect_eq(post(&g_dev[0], "/v1/secagg/shares", &sh.base, why), 200, "%s", why);
  g_dev[0].in_shares = true;
  for (int i = 1; i < g_n; i++)
    send_shares(&g_dev[i], round_id);
  wait_phase(&g_dev[0], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED);
  for (int i = 0; i < 5; i++)
    cr_assert_eq(upload_masked(&g_dev[i], round_id, model_id, 1, (unsigned)i, why), 200, "%s", why);
  json_t *round = fl_h_wait_round(&g_c, round_id, "abandoned", 30000);
  cr_assert_not_null(round, "the round was not abandoned");
  const char *reason = json_string_value(json_object_get(round, "reason"));
  cr_expect(reason != NULL && strstr(reason, "secagg_below_threshold") != NULL, "reason %s",
            reason ? reason : "(none)");
  json_decref(round);
  Fl__V1__SecAggState *st = state_of(&g_dev[0], round_id);
  cr_expect_eq(st->phase, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_ABANDONED);
  cr_expect(strstr(st->reason, "secagg_below_threshold: 5 masked inputs of 10") != NULL,
            "device sees %s", st->reason);
  fl__v1__sec_agg_state__free_unpacked(st, NULL);
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM versions"), 1);
}

Test(secagg, plan_refusals, .fini = teardown, .timeout = 120) {
  uint64_t model_id, round_id;
  start(1);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "sa", SPEC, "{\"participants\":3}", &model_id, &round_id),
               0);
  static const char *const bad[] = {
      "{\"participants\":10,\"noise_multiplier\":1,"
      "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
      "{\"participants\":10,\"aggregator\":\"median\","
      "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
      "{\"participants\":10,\"secure_aggregation\":{\"threshold\":2,\"neighbors\":6}}",
  };
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/models/%llu/plans", (unsigned long long)model_id);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    long status = 0;
    json_t *j = fl_h_admin(&g_c, "POST", path, bad[i], &status);
    cr_expect_eq(status, 400, "%s", bad[i]);
    cr_expect_str_eq(json_string_value(json_object_get(j, "error")), "bad_plan");
    json_decref(j);
  }
}

/* Parked long polls keep their connections, which MHD counts against --max-connections: when
 * they filled it, MHD accepted nothing more and the rest of the fleet's check-ins waited in the
 * listen queue until the key phase went quiet without them (1,000 devices, 512 connections:
 * ~500 got in). 16 devices advertise their keys and long-poll for the share phase against a
 * coordinator of 16 connections; then a 17th device must still check in at once and get its
 * task. Half the connections (8) are parked; the other 8 polls are answered at once, told to
 * look again in 2.5-5 s, and their connections closed. */
Test(secagg, held_polls_leave_room, .fini = teardown, .timeout = 120) {
  static const char *const extra[] = {"--tick=50", "--max-connections=16", "--http-threads=1",
                                      NULL};
  enum { N = 17, W = 16 };
  uint64_t model_id, round_id;
  held_poll hp[W];
  start_with(N, extra);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "sa-conns", SPEC,
                                   "{\"participants\":17,\"min_participants\":6,"
                                   "\"over_selection\":1,\"deadline_s\":20,\"clip_norm\":1,"
                                   "\"rounds\":1,"
                                   "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
                                   &model_id, &round_id),
               0);
  for (int i = 0; i < W; i++) {
    Fl__V1__CheckInResponse *resp;
    cr_assert_eq(fl_h_checkin(&g_c, &g_dev[i].h, model_id, &resp), 0);
    cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
    advertise(&g_dev[i], round_id, 4);
  }
  for (int i = 0; i < W; i++) {
    hp[i] = (held_poll){.d = &g_dev[i], .round_id = round_id};
    cr_assert_eq(pthread_create(&hp[i].th, NULL, held_keys_main, &hp[i]), 0);
  }
  sleep_ms(1500); /* every poll parked or answered */
  Fl__V1__CheckInResponse *resp;
  double t0 = fl_sup_mono_s();
  cr_assert_eq(fl_h_checkin(&g_c, &g_dev[W].h, model_id, &resp), 0);
  double ms = (fl_sup_mono_s() - t0) * 1000;
  fprintf(stderr, "itest_secagg: check-in beside %d long polls (16 connections): %.0f ms\n", W, ms);
  cr_expect_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK,
               "the 17th device was not assigned (%d)", (int)resp->assignment_case);
  cr_expect_lt(ms, 2000, "the check-in waited %.0f ms behind the parked polls", ms);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  advertise(&g_dev[W], round_id, 4);
  /* All 17 advertised: the key phase ends complete and wakes the parked polls. */
  int early = 0;
  for (int i = 0; i < W; i++) {
    pthread_join(hp[i].th, NULL);
    cr_assert_not_null(hp[i].st);
    if (hp[i].st->phase == FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_KEYS) {
      early++;
      cr_expect_geq(hp[i].st->poll_after_ms, 2500);
      cr_expect_lt(hp[i].st->poll_after_ms, 5000);
      cr_expect_lt(hp[i].ms, 1500, "an unparked poll took %.0f ms", hp[i].ms);
    } else {
      cr_expect_eq(hp[i].st->phase, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES);
    }
    fl__v1__sec_agg_state__free_unpacked(hp[i].st, NULL);
  }
  cr_expect_eq(early, W - 8, "polls answered at once: %d", early);
}

/* ---- libflclient's round ------------------------------------------------------------------ */

#define CNEX 40
typedef struct cdev {
  char dir[64];
  fl_client *c;
  float x[CNEX * 6];
  int32_t y[CNEX];
  fl_round_result r;
  fl_err err;
} cdev;

static void *run_one(void *arg) {
  cdev *d = arg;
  d->r.size = sizeof d->r;
  d->err = fl_client_run_round(d->c, &d->r);
  return NULL;
}

Test(secagg, libflclient_round, .fini = teardown, .timeout = 300) {
  uint64_t model_id, round_id;
  enum { N = 10 };
  static cdev d[N];
  pthread_t th[N];
  start(0);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "sa-client", FL_H_SMALL_SPEC,
                                   "{\"participants\":10,\"min_participants\":6,"
                                   "\"over_selection\":1,\"deadline_s\":20,\"clip_norm\":1,"
                                   "\"rounds\":1,\"local_epochs\":1,\"batch_size\":8,"
                                   "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
                                   &model_id, &round_id),
               0);
  json_t *tok = fl_h_admin_ok(&g_c, "POST", "/admin/v1/enrollment-tokens", "{\"count\":10}");
  cr_assert_not_null(tok);
  for (int i = 0; i < N; i++) {
    snprintf(d[i].dir, sizeof d[i].dir, "/tmp/fl-itest-secagg-XXXXXX");
    cr_assert_not_null(mkdtemp(d[i].dir));
    fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                        .server_url = g_c.url,
                        .allow_insecure_http = 1,
                        .state_dir = d[i].dir,
                        .request_timeout_ms = 20000,
                        .backoff_base_ms = 50,
                        .backoff_max_ms = 500,
                        .model_id = model_id};
    cr_assert_eq(fl_client_new(&d[i].c, &o), FL_OK);
    const char *t = json_string_value(json_array_get(json_object_get(tok, "tokens"), (size_t)i));
    cr_assert_eq(fl_client_enroll(d[i].c, t, NULL, 0, "itest"), FL_OK, "%s",
                 fl_client_errmsg(d[i].c));
    for (int k = 0; k < CNEX; k++) {
      d[i].y[k] = (k + i) % 3;
      for (int j = 0; j < 6; j++)
        d[i].x[k * 6 + j] = (j / 2 == d[i].y[k] ? 1.0f : 0.0f) + 0.01f * (float)((k * j + i) % 5);
    }
    cr_assert_eq(fl_client_set_data_memory(d[i].c, d[i].x, d[i].y, CNEX, 6), FL_OK);
  }
  json_decref(tok);
  for (int i = 0; i < N; i++)
    cr_assert_eq(pthread_create(&th[i], NULL, run_one, &d[i]), 0);
  for (int i = 0; i < N; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < N; i++) {
    cr_expect_eq(d[i].err, FL_OK, "device %d: %s", i, fl_client_errmsg(d[i].c));
    cr_expect_eq(d[i].r.outcome, FL_ROUND_UPLOADED, "device %d", i);
    cr_expect_eq(d[i].r.round_id, round_id);
  }
  json_t *round = fl_h_wait_round(&g_c, round_id, "closed", 30000);
  cr_assert_not_null(round, "the round did not close");
  cr_expect_eq(json_integer_value(json_object_get(round, "result_version")), 2);
  cr_expect_eq(
      json_integer_value(json_object_get(json_object_get(round, "metrics"), "participants")), N);
  json_decref(round);
  for (int i = 0; i < N; i++) {
    fl_client_free(d[i].c);
    fl_sup_rmtree(d[i].dir);
  }
}

/* A masked input still arriving keeps its phase open: five devices upload at once, a sixth
 * streams its upload over 2.5 s after them, longer than the phase's quiet (1.5 s at a 6 s
 * deadline). Before, only
 * committed inputs counted and the phase ended as quiet under the sixth's upload (409);
 * now the bytes arriving keep it open and the sixth is in the sum. */
Test(secagg, streaming_input_keeps_the_phase, .fini = teardown, .timeout = 120) {
  uint64_t model_id, round_id;
  char why[64];
  start(10);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "sa", SPEC,
                                   "{\"participants\":10,\"min_participants\":5,"
                                   "\"over_selection\":1,\"deadline_s\":6,\"clip_norm\":1,"
                                   "\"rounds\":1,"
                                   "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
                                   &model_id, &round_id),
               0);
  checkin_all(model_id, round_id, 4, 6);
  for (int i = 0; i < g_n; i++)
    advertise(&g_dev[i], round_id, 4);
  wait_phase(&g_dev[0], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES);
  for (int i = 0; i < g_n; i++)
    send_shares(&g_dev[i], round_id);
  wait_phase(&g_dev[0], round_id, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED);
  size_t len, n;
  uint8_t *body = pack_masked(&g_dev[5], round_id, model_id, 1, 5, &len), *env;
  cr_assert_eq(fl_sup_envelope(g_dev[5].h.key, g_dev[5].h.id, "POST", "/v1/updates", body, len,
                               NULL, &env, &n),
               FL_OK);
  free(body);
  for (int i = 0; i < 5; i++)
    cr_assert_eq(upload_masked(&g_dev[i], round_id, model_id, 1, (unsigned)i, why), 200, "%s", why);
  int fd = fl_sup_tcp_connect(g_c.port);
  cr_assert(fd >= 0);
  char hdr[256];
  int h = snprintf(hdr, sizeof hdr,
                   "POST /v1/updates HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                   "application/x-protobuf\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                   n);
  cr_assert_eq(write(fd, hdr, (size_t)h), h);
  /* 10 pieces 250 ms apart: 2.5 s of a body still arriving, the last piece alone. */
  size_t piece = n / 10 + 1;
  for (size_t off = 0; off < n; off += piece) {
    size_t k = n - off < piece ? n - off : piece;
    cr_assert_eq(write(fd, env + off, k), (ssize_t)k);
    sleep_ms(250);
  }
  free(env);
  char resp[4096];
  size_t got = fl_sup_tcp_read(fd, resp, sizeof resp - 1, 10000);
  close(fd);
  resp[got] = 0;
  cr_expect(strncmp(resp, "HTTP/1.1 200", 12) == 0, "the streamed input: %.80s", resp);
  cr_expect_eq(fl_h_db_intf(g_db, "SELECT count(*) FROM acceptances WHERE round_id = %llu",
                            (unsigned long long)round_id),
               6);
}
