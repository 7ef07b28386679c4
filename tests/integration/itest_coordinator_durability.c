/*
 * Durability and scale-out: a coordinator killed with SIGKILL (with an upload in flight) and
 * restarted finishes the round with exactly the acknowledged updates; two replicas on one
 * database serve one round that closes once with every acknowledged update in it.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rng.h"

#define NDEV 4

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

static float *make_delta(size_t n, uint64_t seed) {
  fl_rng r;
  float *d = malloc(n * sizeof *d);
  cr_assert_not_null(d);
  fl__rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++)
    d[i] = (float)(0.3 * (2.0 * fl__rng_uniform(&r) - 1.0));
  return d;
}

typedef struct upload_job {
  const fl_h_coord *c;
  const fl_h_device *d;
  const Fl__V1__ModelVersion *base;
  uint64_t round_id, samples;
  const float *delta;
  long status;     /* -1: transport error (e.g. the coordinator died) */
  bool duplicate;
} upload_job;

static void *run_upload(void *arg) {
  upload_job *j = arg;
  fl_h_resp r;
  j->status = -1;
  if (fl_h_upload(j->c, j->d, j->base, j->round_id, j->delta, j->samples, NULL, &r) == 0) {
    j->status = r.status;
    Fl__V1__UpdateAck *ack =
        r.status == 200 ? fl__v1__update_ack__unpack(NULL, r.len, r.data) : NULL;
    j->duplicate = ack && ack->duplicate;
    fl__v1__update_ack__free_unpacked(ack, NULL);
    fl_h_resp_free(&r);
  }
  return NULL;
}

static void upload_ok(upload_job *j) {
  run_upload(j);
  cr_assert_eq(j->status, 200, "upload of device %llu refused",
               (unsigned long long)j->d->id);
}

/* Downloads version `v` and compares it with base + sum(n_k d_k) / sum(n_k) in double. */
static void expect_fedavg(const fl_h_coord *c, uint64_t model_id, uint64_t v,
                          const float *w0, size_t n, float *const *deltas,
                          const uint64_t *samples, int k) {
  Fl__V1__ModelVersion *mv;
  float *w;
  size_t m;
  double total = 0;
  cr_assert_eq(fl_h_download(c, &g_dev[0], model_id, v, &mv), 0, "download/verify v%llu",
               (unsigned long long)v);
  cr_assert_eq(fl_h_weights(mv, &w, &m), 0);
  cr_assert_eq(m, n);
  for (int j = 0; j < k; j++)
    total += (double)samples[j];
  for (size_t i = 0; i < n; i++) {
    double e = 0;
    for (int j = 0; j < k; j++)
      e += (double)samples[j] * deltas[j][i];
    e = w0[i] + e / total;
    cr_assert(fabs(w[i] - e) <= 1e-6 + 1e-5 * fabs(e), "param %zu: %.9g vs %.9g", i, w[i], e);
  }
  free(w);
  fl__v1__model_version__free_unpacked(mv, NULL);
}

static void checkin(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                    uint64_t round_id) {
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(c, d, model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
  cr_assert_eq(resp->task->round_id, round_id);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
}

Test(durability, sigkill_loses_no_acknowledged_update, .init = setup, .fini = teardown,
     .timeout = 180) {
  uint64_t model_id, round_id;
  const uint64_t samples[NDEV] = {12, 5, 40, 3};
  cr_assert_eq(fl_h_coord_start(&g_a, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_a, "crash", FL_H_SMALL_SPEC,
                                   "{\"participants\":4,\"deadline_s\":600,\"clip_norm\":10}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_a, g_dev, NDEV), 0);
  for (int i = 0; i < NDEV; i++)
    checkin(&g_a, &g_dev[i], model_id, round_id);
  Fl__V1__ModelVersion *base;
  float *w0, *deltas[NDEV];
  size_t n;
  cr_assert_eq(fl_h_download(&g_a, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
  upload_job jobs[NDEV];
  for (int i = 0; i < NDEV; i++) {
    deltas[i] = make_delta(n, 500 + (uint64_t)i);
    jobs[i] = (upload_job){&g_a, &g_dev[i], base, round_id, samples[i], deltas[i], 0, false};
  }
  upload_ok(&jobs[0]);
  upload_ok(&jobs[1]);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT accepted FROM rounds WHERE round_id = 1"), 2);

  /* Kill with a third upload in flight: it may or may not have committed. */
  pthread_t t;
  pthread_create(&t, NULL, run_upload, &jobs[2]);
  cr_assert_eq(fl_h_coord_stop(&g_a, SIGKILL), 128 + SIGKILL);
  pthread_join(t, NULL);
  int64_t acked = fl_h_db_int(g_db, "SELECT count(*) FROM acceptances");
  cr_assert(acked == 2 || acked == 3, "acceptances after the crash: %lld", (long long)acked);
  if (jobs[2].status == 200)
    cr_assert_eq(acked, 3, "an acknowledged upload is missing after the crash");

  cr_assert_eq(fl_h_coord_restart(&g_a), 0);
  /* Retries after lost acknowledgements: a duplicate if committed, accepted otherwise. */
  upload_ok(&jobs[1]);
  cr_assert(jobs[1].duplicate);
  upload_ok(&jobs[2]);
  cr_assert_eq(jobs[2].duplicate, acked == 3);
  upload_ok(&jobs[3]);

  json_t *round = fl_h_wait_round(&g_a, round_id, "closed", 20000);
  cr_assert_not_null(round);
  cr_assert_eq(json_integer_value(json_object_get(round, "accepted")), 4);
  json_decref(round);
  expect_fedavg(&g_a, model_id, 2, w0, n, deltas, samples, NDEV);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM versions"), 2);

  /* A graceful stop exits cleanly. */
  cr_assert_eq(fl_h_coord_stop(&g_a, SIGTERM), 0);
  for (int i = 0; i < NDEV; i++)
    free(deltas[i]);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}

Test(durability, two_replicas_close_each_round_once, .init = setup, .fini = teardown,
     .timeout = 180) {
  uint64_t model_id, round_id;
  const uint64_t samples[NDEV] = {7, 21, 2, 64};
  cr_assert_eq(fl_h_coord_start(&g_a, g_db, NULL, NULL), 0);
  /* Replicas share the signing key (same directory), as they would in production. */
  cr_assert_eq(fl_h_coord_start(&g_b, g_db, g_a.dir, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_a, "replicas", FL_H_SMALL_SPEC,
                                   "{\"participants\":4,\"deadline_s\":600,\"clip_norm\":10,"
                                   "\"rounds\":2}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_a, g_dev, NDEV), 0);
  Fl__V1__ModelVersion *base;
  float *w0, *deltas[NDEV];
  size_t n;
  cr_assert_eq(fl_h_download(&g_a, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
  for (int r = 0; r < 2; r++) {
    upload_job jobs[NDEV];
    pthread_t th[NDEV];
    for (int i = 0; i < NDEV; i++) {
      const fl_h_coord *c = i % 2 ? &g_b : &g_a;
      checkin(c, &g_dev[i], model_id, round_id);
      deltas[i] = make_delta(n, 900 + 10 * (uint64_t)r + (uint64_t)i);
      jobs[i] = (upload_job){c, &g_dev[i], base, round_id, samples[i], deltas[i], 0, false};
    }
    for (int i = 0; i < NDEV; i++)
      pthread_create(&th[i], NULL, run_upload, &jobs[i]);
    for (int i = 0; i < NDEV; i++) {
      pthread_join(th[i], NULL);
      cr_assert_eq(jobs[i].status, 200, "round %d device %d", r, i);
    }
    json_t *round = fl_h_wait_round(&g_b, round_id, "closed", 20000);
    cr_assert_not_null(round);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(round, "result_version"));
    cr_assert_eq(v, (uint64_t)r + 2);
    json_decref(round);
    expect_fedavg(&g_a, model_id, v, w0, n, deltas, samples, NDEV);
    fl__v1__model_version__free_unpacked(base, NULL);
    free(w0);
    cr_assert_eq(fl_h_download(&g_b, &g_dev[1], model_id, v, &base), 0);
    cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
    for (int i = 0; i < NDEV; i++)
      free(deltas[i]);
    round_id++;
  }
  /* Each round closed once: one version per round, no third round (the plan has 2). */
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM versions"), 3);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM rounds"), 2);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM rounds WHERE state = 'closed'"), 2);
  /* Uploads really were spread: both replicas committed acceptances (partials are dropped at
   * close, folded into the versions). */
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(DISTINCT replica) FROM acceptances"), 2);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM partials"), 0);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM plans WHERE state = 'done'"), 1);
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}

typedef struct post_job {
  const fl_h_coord *c;
  const fl_h_device *d;
  const uint8_t *body, *nonce;
  size_t len;
  long status; /* -1: transport error */
  char reason[32];
} post_job;

static void *run_post(void *arg) {
  post_job *j = arg;
  fl_h_forge f = {.nonce = j->nonce, .nonce_len = 16};
  fl_h_resp r;
  j->status = -1;
  if (fl_h_device_post(j->c, j->d, "/v1/updates", j->body, j->len, &f, &r) == 0) {
    /* Not fl_h_error_reason: its buffer is shared by the threads. */
    Fl__V1__Error *e = r.status != 200 && r.len ? fl__v1__error__unpack(NULL, r.len, r.data) : NULL;
    j->status = r.status;
    snprintf(j->reason, sizeof j->reason, "%s", e && e->reason ? e->reason : "");
    fl__v1__error__free_unpacked(e, NULL);
    fl_h_resp_free(&r);
  }
  return NULL;
}

/* An upload's nonce is written in the group commit, not before its checks: two copies of one
 * request (same device, same nonce) sent at once are still answered once 200 and once 401
 * replayed_nonce, and the update counts once. Devices 0-2 race their copies through the two
 * replicas (the long gather window lets both copies pass the nonce lookup and be folded, so
 * the primary key of nonces decides in the commit and the losing batch is summed again
 * without the replay); device 3 sends both copies to one replica (its nonces in flight
 * decide). */
Test(durability, replays_through_two_replicas_count_once, .init = setup, .fini = teardown,
     .timeout = 180) {
  static const char *const extra[] = {"--commit-interval=300", NULL};
  const uint64_t samples[NDEV] = {3, 9, 4, 30};
  uint64_t model_id, round_id;
  uint8_t nonces[NDEV][16], *bodies[NDEV];
  size_t lens[NDEV], n;
  float *w0, *deltas[NDEV];
  Fl__V1__ModelVersion *base;
  post_job jobs[2 * NDEV];
  pthread_t th[2 * NDEV];
  cr_assert_eq(fl_h_coord_start(&g_a, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_coord_start(&g_b, g_db, g_a.dir, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_a, "replays", FL_H_SMALL_SPEC,
                                   "{\"participants\":4,\"deadline_s\":600,\"clip_norm\":10}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_a, g_dev, NDEV), 0);
  cr_assert_eq(fl_h_download(&g_a, &g_dev[0], model_id, 1, &base), 0);
  cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
  for (int i = 0; i < NDEV; i++) {
    checkin(&g_a, &g_dev[i], model_id, round_id);
    deltas[i] = make_delta(n, 700 + (uint64_t)i);
    cr_assert_eq(fl_h_update_pack(&g_dev[i], base, round_id, deltas[i], samples[i], 0.5f, NULL,
                                  &bodies[i], &lens[i]),
                 0);
    memset(nonces[i], 0xa0 + i, sizeof nonces[i]);
    for (int k = 0; k < 2; k++)
      jobs[2 * i + k] = (post_job){.c = k == 0 || i == NDEV - 1 ? &g_a : &g_b,
                                   .d = &g_dev[i],
                                   .body = bodies[i],
                                   .nonce = nonces[i],
                                   .len = lens[i]};
  }
  for (int j = 0; j < 2 * NDEV; j++)
    pthread_create(&th[j], NULL, run_post, &jobs[j]);
  for (int j = 0; j < 2 * NDEV; j++)
    pthread_join(th[j], NULL);
  for (int i = 0; i < NDEV; i++) {
    const post_job *x = &jobs[2 * i], *y = &jobs[2 * i + 1];
    const post_job *won = x->status == 200 ? x : y, *lost = x->status == 200 ? y : x;
    cr_assert_eq(won->status, 200, "device %d: %ld %s / %ld %s", i, x->status, x->reason, y->status,
                 y->reason);
    cr_assert_eq(lost->status, 401, "device %d: the replay got %ld %s", i, lost->status,
                 lost->reason);
    cr_assert_str_eq(lost->reason, "replayed_nonce");
  }
  json_t *round = fl_h_wait_round(&g_a, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_decref(round);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM acceptances"), NDEV);
  expect_fedavg(&g_a, model_id, 2, w0, n, deltas, samples, NDEV);
  for (int i = 0; i < NDEV; i++) {
    free(bodies[i]);
    free(deltas[i]);
  }
  free(w0);
  fl__v1__model_version__free_unpacked(base, NULL);
}
