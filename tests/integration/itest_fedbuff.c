/*
 * Asynchronous (FedBuff) plans through the real coordinator (rounds/async.h, staleness.h):
 * uploads with known deltas on bases of different staleness produce exactly
 *
 *     v_{k+1} = v_k + server_lr * sum_i s(tau_i) n_i d_i / sum_i n_i,   s(tau) = 1/sqrt(1+tau)
 *
 * (computed here in double from the downloaded base), one version every buffer_size updates and
 * none before; a too-stale upload is refused (409 too_stale) and changes nothing; a retry of
 * a stale update that was folded into a later buffer is a duplicate; a coordinator killed with
 * SIGKILL mid-buffer loses no acknowledged update; two replicas close each buffer once.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "rng.h"

#define NDEV 10
#define MAX_DIM 64

static char g_db[64];
static fl_h_coord g_a, g_b;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_a);
  fl_h_coord_cleanup(&g_b);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
}

#define db_int(...) fl_h_db_intf(g_db, __VA_ARGS__)

/* Multiples of 1/64 in [-1/4, 1/4]: exact in float32, distinct per device. */
static float *make_delta(size_t n, uint64_t seed) {
  fl_rng r;
  float *d = malloc(n * sizeof *d);
  cr_assert_not_null(d);
  fl__rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++)
    d[i] = (float)((int)fl__rng_below(&r, 33) - 16) / 64.0f;
  return d;
}

/* The task's round of a check-in (which must hand out a task). */
static uint64_t checkin(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                        uint64_t *base_version) {
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(c, d, model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK,
               "device %llu got no task (%s)", (unsigned long long)d->id,
               resp->retry && resp->retry->reason ? resp->retry->reason : "?");
  uint64_t round = resp->task->round_id;
  if (base_version != NULL)
    *base_version = resp->task->base_version;
  cr_assert(resp->task->deadline_ms > 0);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  return round;
}

typedef struct up {
  const fl_h_coord *c;
  const fl_h_device *d;
  const Fl__V1__ModelVersion *base; /* the task's base */
  uint64_t round_id, samples;       /* the task's round */
  const float *delta;
  long status; /* -1: transport error */
  char reason[32];
  bool duplicate;
  uint64_t buffer_round;
  uint32_t staleness;
} up;

static void *run_up(void *arg) {
  up *u = arg;
  fl_h_resp r;
  u->status = -1;
  u->reason[0] = '\0';
  if (fl_h_upload(u->c, u->d, u->base, u->round_id, u->delta, u->samples, NULL, &r) != 0)
    return NULL;
  u->status = r.status;
  snprintf(u->reason, sizeof u->reason, "%s", fl_h_error_reason(&r));
  Fl__V1__UpdateAck *ack = r.status == 200 ? fl__v1__update_ack__unpack(NULL, r.len, r.data) : NULL;
  if (ack != NULL) {
    u->duplicate = ack->duplicate;
    u->buffer_round = ack->buffer_round_id;
    u->staleness = ack->staleness;
  }
  fl__v1__update_ack__free_unpacked(ack, NULL);
  fl_h_resp_free(&r);
  return NULL;
}

/* Uploads until the answer is not 503 buffer_full (the buffer filled meanwhile: the device
 * retries, as libflclient does, and lands in the next one). */
static void *run_up_retrying(void *arg) {
  up *u = arg;
  for (int i = 0; i < 200; i++) {
    run_up(u);
    if (u->status != 503)
      break;
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

static void upload_ok(up *u, uint64_t want_buffer, uint32_t want_tau) {
  run_up(u);
  cr_assert_eq(u->status, 200, "device %llu: %ld %s", (unsigned long long)u->d->id, u->status,
               u->reason);
  cr_assert_eq(u->buffer_round, want_buffer, "device %llu folded into round %llu",
               (unsigned long long)u->d->id, (unsigned long long)u->buffer_round);
  cr_assert_eq(u->staleness, want_tau);
}

static Fl__V1__ModelVersion *version(const fl_h_coord *c, uint64_t model_id, uint64_t v) {
  Fl__V1__ModelVersion *mv;
  cr_assert_eq(fl_h_download(c, &g_dev[0], model_id, v, &mv), 0, "download v%llu",
               (unsigned long long)v);
  return mv;
}

/* A model and its async plan on g_a, n enrolled devices; version 1 (caller frees), its size
 * in *dim and the first buffer's round in *r1. */
static Fl__V1__ModelVersion *plan_and_fleet(const char *name, const char *plan, int n,
                                            uint64_t *model_id, uint64_t *r1, size_t *dim) {
  float *w0;
  cr_assert_eq(fl_h_model_and_plan(&g_a, name, FL_H_SMALL_SPEC, plan, model_id, r1), 0, "%s", plan);
  cr_assert_eq(fl_h_enroll_devices(&g_a, g_dev, n), 0);
  Fl__V1__ModelVersion *v1 = version(&g_a, *model_id, 1);
  cr_assert_eq(fl_h_weights(v1, &w0, dim), 0);
  free(w0);
  return v1;
}

/* The buffer's members: delta, sample count and staleness. */
typedef struct member {
  const float *d;
  uint64_t n;
  uint32_t tau;
} member;

/* Version v against base + lr * sum s(tau) n d / sum n, in double. */
static void expect_buffer(const fl_h_coord *c, uint64_t model_id, uint64_t v,
                          const Fl__V1__ModelVersion *base, const member *m, int k, double lr) {
  Fl__V1__ModelVersion *mv = version(c, model_id, v);
  float *w, *w0;
  size_t n, n0;
  cr_assert_eq(fl_h_weights(mv, &w, &n), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &n0), 0);
  cr_assert_eq(n, n0);
  cr_assert_eq(mv->parent_version, base->version, "v%llu's parent", (unsigned long long)v);
  double total = 0;
  for (int j = 0; j < k; j++)
    total += (double)m[j].n;
  for (size_t i = 0; i < n; i++) {
    double s = 0;
    for (int j = 0; j < k; j++)
      s += 1.0 / sqrt(1.0 + m[j].tau) * (double)m[j].n * m[j].d[i];
    double e = w0[i] + lr * s / total;
    cr_assert(fabs(w[i] - e) <= 1e-6 + 1e-5 * fabs(e), "v%llu param %zu: %.9g, want %.9g",
              (unsigned long long)v, i, w[i], e);
  }
  free(w);
  free(w0);
  fl__v1__model_version__free_unpacked(mv, NULL);
}

static uint64_t open_round(void) {
  return (uint64_t)db_int("SELECT round_id FROM rounds WHERE state = 'open'");
}

static void wait_closed(const fl_h_coord *c, uint64_t round_id, uint64_t want_version) {
  json_t *r = fl_h_wait_round(c, round_id, "closed", 20000);
  cr_assert_not_null(r, "round %llu did not close", (unsigned long long)round_id);
  cr_assert_eq(json_integer_value(json_object_get(r, "result_version")), (json_int_t)want_version);
  json_decref(r);
}

#define PLAN                                                                          \
  "{\"mode\":\"async\",\"buffer_size\":3,\"max_staleness\":2,\"max_concurrency\":10," \
  "\"staleness\":\"sqrt\",\"server_lr\":0.5,\"clip_norm\":100,\"deadline_s\":600}"

Test(fedbuff, staleness_weighted_versions, .init = setup, .fini = teardown, .timeout = 240) {
  uint64_t model_id, r1, bv;
  const uint64_t n[NDEV] = {10, 20, 30, 15, 5, 40, 8, 25, 12, 9};
  float *d[NDEV];
  cr_assert_eq(fl_h_coord_start(&g_a, g_db, NULL, NULL), 0);
  size_t dim;
  Fl__V1__ModelVersion *v1 = plan_and_fleet("fedbuff", PLAN, NDEV, &model_id, &r1, &dim);
  for (int i = 0; i < NDEV; i++)
    d[i] = make_delta(dim, 300 + (uint64_t)i);
  /* Devices 0-6 take tasks on v1 (round 1), at once: no selection window, no target wait. */
  for (int i = 0; i <= 6; i++) {
    cr_assert_eq(checkin(&g_a, &g_dev[i], model_id, &bv), r1);
    cr_assert_eq(bv, 1);
  }
  up u[NDEV];
  for (int i = 0; i < NDEV; i++)
    u[i] =
        (up){.c = &g_a, .d = &g_dev[i], .base = v1, .round_id = r1, .samples = n[i], .delta = d[i]};

  /* Buffer 1: three fresh updates. No version before the third. */
  upload_ok(&u[0], r1, 0);
  upload_ok(&u[1], r1, 0);
  cr_assert_eq(db_int("SELECT count(*) FROM versions"), 1, "a version before K updates");
  upload_ok(&u[2], r1, 0);
  wait_closed(&g_a, r1, 2);
  member b1[] = {{d[0], n[0], 0}, {d[1], n[1], 0}, {d[2], n[2], 0}};
  expect_buffer(&g_a, model_id, 2, v1, b1, 3, 0.5);

  /* Buffer 2 on v2: device 3's v1 task (tau 1), device 7 fresh, device 4's v1 task (tau 1). */
  uint64_t r2 = open_round();
  cr_assert_neq(r2, r1);
  Fl__V1__ModelVersion *v2 = version(&g_a, model_id, 2);
  upload_ok(&u[3], r2, 1);
  /* The retry of a stale update that was folded into a later buffer: a duplicate. */
  run_up(&u[3]);
  cr_assert_eq(u[3].status, 200);
  cr_assert(u[3].duplicate);
  cr_assert_eq(db_int("SELECT accepted FROM rounds WHERE round_id = %llu", (unsigned long long)r2),
               1);
  cr_assert_eq(
      db_int("SELECT count(*) FROM acceptances WHERE device_id = %llu AND round_id = %llu"
             " AND task_round_id = %llu AND staleness = 1",
             (unsigned long long)g_dev[3].id, (unsigned long long)r2, (unsigned long long)r1),
      1, "the acceptance keeps the task's round and tau");
  for (int i = 7; i <= 9; i += 2) {
    cr_assert_eq(checkin(&g_a, &g_dev[i], model_id, &bv), r2);
    cr_assert_eq(bv, 2);
    u[i].base = v2;
    u[i].round_id = r2;
  }
  upload_ok(&u[7], r2, 0);
  /* Device 7 delivered the open buffer's own task: it waits for the next version. */
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(&g_a, &g_dev[7], model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY);
  cr_assert_str_eq(resp->retry->reason, "already_contributed");
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  /* Device 3's update (of an older task) is in the open buffer: it may train on, but its next
   * update waits for a later buffer (503 already_in_buffer, nothing changes). */
  cr_assert_eq(checkin(&g_a, &g_dev[3], model_id, &bv), r2);
  cr_assert_eq(bv, 2);
  up again = {.c = &g_a, .d = &g_dev[3], .base = v2, .round_id = r2, .samples = 3, .delta = d[9]};
  run_up(&again);
  cr_assert_eq(again.status, 503);
  cr_assert_str_eq(again.reason, "already_in_buffer");
  cr_assert_eq(db_int("SELECT accepted FROM rounds WHERE round_id = %llu", (unsigned long long)r2),
               2);
  cr_assert_eq(db_int("SELECT count(*) FROM acceptances WHERE device_id = %llu",
                      (unsigned long long)g_dev[3].id),
               1);
  upload_ok(&u[4], r2, 1);
  wait_closed(&g_a, r2, 3);
  member b2[] = {{d[3], n[3], 1}, {d[7], n[7], 0}, {d[4], n[4], 1}};
  expect_buffer(&g_a, model_id, 3, v2, b2, 3, 0.5);

  /* Buffer 3 on v3: device 5's v1 task (tau 2 = max_staleness), device 8 fresh, device 9's
   * v2 task (tau 1). */
  uint64_t r3 = open_round();
  Fl__V1__ModelVersion *v3 = version(&g_a, model_id, 3);
  cr_assert_eq(checkin(&g_a, &g_dev[8], model_id, &bv), r3);
  cr_assert_eq(bv, 3);
  u[8].base = v3;
  u[8].round_id = r3;
  upload_ok(&u[5], r3, 2);
  upload_ok(&u[8], r3, 0);
  upload_ok(&u[9], r3, 1);
  wait_closed(&g_a, r3, 4);
  member b3[] = {{d[5], n[5], 2}, {d[8], n[8], 0}, {d[9], n[9], 1}};
  expect_buffer(&g_a, model_id, 4, v3, b3, 3, 0.5);

  /* Device 6's v1 task is now 3 versions behind: refused, and nothing changes. */
  uint64_t r4 = open_round();
  int64_t acc = db_int("SELECT count(*) FROM acceptances");
  run_up(&u[6]);
  cr_assert_eq(u[6].status, 409);
  cr_assert_str_eq(u[6].reason, "too_stale");
  cr_assert_eq(db_int("SELECT count(*) FROM acceptances"), acc);
  cr_assert_eq(db_int("SELECT accepted FROM rounds WHERE round_id = %llu", (unsigned long long)r4),
               0);
  cr_assert_eq(
      db_int("SELECT count(*) FROM partials WHERE round_id = %llu", (unsigned long long)r4), 0);
  cr_assert_eq(db_int("SELECT count(*) FROM versions"), 4);
  /* The buffers' metrics say what was folded. */
  json_t *round = fl_h_wait_round(&g_a, r3, "closed", 1000);
  cr_assert_not_null(round);
  json_t *m = json_object_get(round, "metrics");
  cr_assert_str_eq(json_string_value(json_object_get(m, "mode")), "async");
  cr_assert_eq(json_integer_value(json_object_get(m, "max_staleness_seen")), 2);
  cr_assert_eq(json_integer_value(json_object_get(m, "stale_updates")), 2);
  cr_assert_float_eq(json_number_value(json_object_get(m, "mean_staleness")), 1.0, 1e-9);
  json_decref(round);

  /* Combinations an async plan refuses, with 400 bad_plan. */
  json_t *mm = fl_h_admin_ok(&g_a, "POST", "/admin/v1/models",
                             "{\"name\":\"bad\",\"spec\":" FL_H_SMALL_SPEC ",\"seed\":1}");
  cr_assert_not_null(mm);
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/models/%lld/plans",
           (long long)json_integer_value(json_object_get(mm, "model_id")));
  json_decref(mm);
  const char *bad[] = {
      "{\"mode\":\"async\",\"buffer_size\":5,\"aggregator\":\"median\"}",
      "{\"mode\":\"async\",\"noise_multiplier\":1}",
      "{\"mode\":\"async\",\"staleness\":\"linear\"}",
      "{\"buffer_size\":3}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    long status;
    json_t *e = fl_h_admin(&g_a, "POST", path, bad[i], &status);
    cr_assert_eq(status, 400, "%s", bad[i]);
    cr_assert_str_eq(json_string_value(json_object_get(e, "error")), "bad_plan");
    json_decref(e);
  }
  for (int i = 0; i < NDEV; i++)
    free(d[i]);
  fl__v1__model_version__free_unpacked(v1, NULL);
  fl__v1__model_version__free_unpacked(v2, NULL);
  fl__v1__model_version__free_unpacked(v3, NULL);
}

Test(fedbuff, sigkill_mid_buffer_loses_no_acknowledged_update, .init = setup, .fini = teardown,
     .timeout = 240) {
  uint64_t model_id, r1;
  const uint64_t n[8] = {11, 7, 19, 4, 30, 13, 6, 22};
  float *d[8];
  cr_assert_eq(fl_h_coord_start(&g_a, g_db, NULL, NULL), 0);
  size_t dim;
  Fl__V1__ModelVersion *v1 =
      plan_and_fleet("fedbuff_kill",
                     "{\"mode\":\"async\",\"buffer_size\":4,\"max_staleness\":3,"
                     "\"max_concurrency\":8,\"clip_norm\":100}",
                     8, &model_id, &r1, &dim);
  up u[8];
  for (int i = 0; i < 8; i++) {
    d[i] = make_delta(dim, 700 + (uint64_t)i);
    u[i] =
        (up){.c = &g_a, .d = &g_dev[i], .base = v1, .round_id = r1, .samples = n[i], .delta = d[i]};
  }
  for (int i = 0; i < 6; i++)
    cr_assert_eq(checkin(&g_a, &g_dev[i], model_id, NULL), r1);
  for (int i = 0; i < 4; i++)
    upload_ok(&u[i], r1, 0);
  wait_closed(&g_a, r1, 2);
  uint64_t r2 = open_round();
  Fl__V1__ModelVersion *v2 = version(&g_a, model_id, 2);
  cr_assert_eq(checkin(&g_a, &g_dev[6], model_id, NULL), r2);
  u[6].base = v2;
  u[6].round_id = r2;
  upload_ok(&u[4], r2, 1);
  upload_ok(&u[6], r2, 0);

  /* Killed mid-buffer, with device 5's stale update in flight: it may or may not commit. */
  pthread_t t;
  pthread_create(&t, NULL, run_up, &u[5]);
  cr_assert_eq(fl_h_coord_stop(&g_a, SIGKILL), 128 + SIGKILL);
  pthread_join(t, NULL);
  int64_t acked =
      db_int("SELECT count(*) FROM acceptances WHERE round_id = %llu", (unsigned long long)r2);
  cr_assert(acked == 2 || acked == 3, "buffer 2 after the crash: %lld", (long long)acked);
  if (u[5].status == 200)
    cr_assert_eq(acked, 3, "an acknowledged update is missing after the crash");
  cr_assert_eq(db_int("SELECT count(*) FROM versions"), 2);

  cr_assert_eq(fl_h_coord_restart(&g_a), 0);
  run_up(&u[4]);
  cr_assert_eq(u[4].status, 200);
  cr_assert(u[4].duplicate, "the acknowledged stale update survived the crash");
  run_up(&u[5]);
  cr_assert_eq(u[5].status, 200, "%s", u[5].reason);
  cr_assert_eq(u[5].duplicate, acked == 3);
  cr_assert_eq(checkin(&g_a, &g_dev[7], model_id, NULL), r2);
  u[7].base = v2;
  u[7].round_id = r2;
  upload_ok(&u[7], r2, 0);
  wait_closed(&g_a, r2, 3);
  member b2[] = {{d[4], n[4], 1}, {d[6], n[6], 0}, {d[5], n[5], 1}, {d[7], n[7], 0}};
  expect_buffer(&g_a, model_id, 3, v2, b2, 4, 1.0);
  cr_assert_eq(fl_h_coord_stop(&g_a, SIGTERM), 0);
  for (int i = 0; i < 8; i++)
    free(d[i]);
  fl__v1__model_version__free_unpacked(v1, NULL);
  fl__v1__model_version__free_unpacked(v2, NULL);
}

/* Two replicas, uploads at once through both: every buffer closes once with exactly
 * buffer_size updates, and each version is its buffer's weighted mean (members and tau read
 * back from the acceptances). */
Test(fedbuff, two_replicas_close_each_buffer_once, .init = setup, .fini = teardown,
     .timeout = 240) {
  enum { K = 2, N = 6 };
  uint64_t model_id, r1;
  float *d[N];
  cr_assert_eq(fl_h_coord_start(&g_a, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_coord_start(&g_b, g_db, g_a.dir, NULL), 0);
  size_t dim;
  Fl__V1__ModelVersion *v1 =
      plan_and_fleet("fedbuff_replicas",
                     "{\"mode\":\"async\",\"buffer_size\":2,\"max_staleness\":5,"
                     "\"max_concurrency\":6,\"clip_norm\":100,\"rounds\":3}",
                     N, &model_id, &r1, &dim);
  up u[N];
  pthread_t th[N];
  for (int i = 0; i < N; i++) {
    const fl_h_coord *c = i % 2 ? &g_b : &g_a;
    d[i] = make_delta(dim, 900 + (uint64_t)i);
    cr_assert_eq(checkin(c, &g_dev[i], model_id, NULL), r1);
    u[i] = (up){.c = c,
                .d = &g_dev[i],
                .base = v1,
                .round_id = r1,
                .samples = 3 + (uint64_t)i,
                .delta = d[i]};
  }
  for (int i = 0; i < N; i++)
    pthread_create(&th[i], NULL, run_up_retrying, &u[i]);
  for (int i = 0; i < N; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(u[i].status, 200, "device %d: %ld %s", i, u[i].status, u[i].reason);
  }
  json_t *last = fl_h_wait_round(&g_b, r1 + N / K - 1, "closed", 20000);
  cr_assert_not_null(last);
  json_decref(last);
  cr_assert_eq(db_int("SELECT count(*) FROM versions"), 1 + N / K);
  cr_assert_eq(db_int("SELECT count(*) FROM rounds"), N / K, "the plan has 3 buffers");
  cr_assert_eq(db_int("SELECT count(*) FROM rounds WHERE state = 'closed' AND accepted = %d", K),
               N / K);
  cr_assert_eq(db_int("SELECT count(*) FROM acceptances"), N);
  cr_assert_eq(db_int("SELECT count(DISTINCT replica) FROM acceptances"), 2);
  /* Each version from its members, as the acceptances record them. */
  Fl__V1__ModelVersion *base = v1;
  for (int b = 0; b < N / K; b++) {
    uint64_t round = r1 + (uint64_t)b;
    member m[K];
    int k = 0;
    for (int i = 0; i < N; i++) {
      if (db_int("SELECT count(*) FROM acceptances WHERE round_id = %llu AND device_id = %llu",
                 (unsigned long long)round, (unsigned long long)g_dev[i].id) == 0)
        continue;
      cr_assert_lt(k, K);
      int64_t tau = db_int("SELECT staleness FROM acceptances WHERE device_id = %llu",
                           (unsigned long long)g_dev[i].id);
      cr_assert_eq(tau, b, "every task was on v1, so buffer %d's tau is %d", b, b);
      m[k++] = (member){d[i], u[i].samples, (uint32_t)tau};
    }
    cr_assert_eq(k, K);
    expect_buffer(&g_a, model_id, (uint64_t)b + 2, base, m, K, 1.0);
    if (base != v1)
      fl__v1__model_version__free_unpacked(base, NULL);
    base = version(&g_b, model_id, (uint64_t)b + 2);
  }
  fl__v1__model_version__free_unpacked(base, NULL);
  cr_assert_eq(db_int("SELECT count(*) FROM plans WHERE state = 'done'"), 1);
  for (int i = 0; i < N; i++)
    free(d[i]);
  fl__v1__model_version__free_unpacked(v1, NULL);
}
