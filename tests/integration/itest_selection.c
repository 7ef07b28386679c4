/*
 * Fair selection and the target cap (docs/API.md section 2).
 *
 * fairness: 100 devices driven by this process (signed check-ins and uploads straight from the
 * harness, training 50 to 250 ms, honouring every retry window like a device would, and
 * checking in again right after an upload like libflclient does), 10 per round, a selection window
 * of 0.5 s, 50 rounds. On the participation records (acceptances): the share of a round's
 * participants that also took part in the round before is at most 20% (first come, first served
 * gave 74%) and at least 97 devices took part; no round has more accepted updates than its target.
 * target_cap: four assigned devices upload at once into a round of target 2 (one group commit):
 * two are acknowledged, two are refused with target_reached, and the new version is the mean
 * of the two acknowledged deltas only.
 * two_replicas_draw_once: 20 candidates through two replicas; one draw of 5, and the answers
 * agree on either replica.
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

#define NDEV 100
#define NPARAMS 43 /* FL_H_SMALL_SPEC */
#define ROUNDS 50

static char g_db[64];
static fl_h_coord g_coord;
static fl_h_device g_dev[NDEV];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
}

static void teardown(void) {
  fl_h_coord_stop(&g_coord, SIGTERM);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The base versions devices train on, downloaded once each. */
typedef struct bases {
  Fl__V1__ModelVersion *v[ROUNDS + 16];
} bases;

static const Fl__V1__ModelVersion *base_of(bases *b, const fl_h_device *d, uint64_t model_id,
                                           uint64_t version) {
  cr_assert_lt(version, sizeof b->v / sizeof b->v[0]);
  if (b->v[version] == NULL)
    cr_assert_eq(fl_h_download(&g_coord, d, model_id, version, &b->v[version]), 0);
  return b->v[version];
}

/* A device's pending task: it trains for a while, then uploads. */
typedef struct pending {
  uint64_t round_id, base_version; /* round_id 0: none */
} pending;

/* Uploads device i's update for its pending task. */
static void device_upload(int i, uint64_t model_id, bases *b, const pending *t, int *uploads) {
  float delta[NPARAMS];
  for (int k = 0; k < NPARAMS; k++)
    delta[k] = 0.001f * (float)((i + k) % 7);
  fl_h_resp r;
  const Fl__V1__ModelVersion *base = base_of(b, &g_dev[i], model_id, t->base_version);
  cr_assert_eq(fl_h_upload(&g_coord, &g_dev[i], base, t->round_id, delta, 10, NULL, &r), 0);
  const char *why = fl_h_error_reason(&r);
  /* Over-selected devices that finish late find the target reached or the round closed. */
  cr_assert(
      r.status == 200 || strcmp(why, "target_reached") == 0 || strcmp(why, "round_closed") == 0,
      "upload: %ld %s", r.status, why);
  *uploads += r.status == 200;
  fl_h_resp_free(&r);
}

/* One check-in of device i: a task (trained for 50 to 250 ms, then uploaded) or a retry
 * window, honoured. Returns when the device acts next. */
static int64_t device_checkin(int i, uint64_t model_id, pending *t) {
  Fl__V1__CheckInResponse *resp;
  cr_assert_eq(fl_h_checkin(&g_coord, &g_dev[i], model_id, &resp), 0);
  int64_t next;
  if (resp->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK) {
    t->round_id = resp->task->round_id;
    t->base_version = resp->task->base_version;
    next = now_ms() + 50 + (int64_t)((uint64_t)(i * 7919 + now_ms()) % 200);
  } else {
    cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY);
    /* Same clock on both ends; the server's time is the reference anyway. */
    next = now_ms() + (resp->retry->retry_after_ms - resp->server_time_ms);
  }
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  return next;
}

/* The first ROUNDS closed rounds' participants: "WITH p AS (...)" rows (n, device_id). */
#define PARTICIPANTS                                                                   \
  "WITH r AS (SELECT round_id, row_number() OVER (ORDER BY round_id) AS n FROM rounds" \
  "  WHERE state = 'closed' ORDER BY round_id LIMIT 50),"                              \
  " p AS (SELECT r.n, a.device_id FROM acceptances a JOIN r USING (round_id)) "

Test(selection, fairness, .init = setup, .fini = teardown, .timeout = 600) {
  const char *extra[] = {"--tick=50", "--checkin-interval=200", "--commit-interval=2", NULL};
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "fair", FL_H_SMALL_SPEC,
                                   "{\"participants\":10,\"over_selection\":1.2,"
                                   "\"deadline_s\":20,\"selection_window_s\":0.5,"
                                   "\"selection_pool\":3}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, NDEV), 0);
  static bases b;
  static pending task[NDEV];
  int64_t next[NDEV], t0 = now_ms(), last_poll = 0;
  for (int i = 0; i < NDEV; i++)
    next[i] = t0 + (i * 1000) / NDEV; /* a fleet that comes up over a second */
  int uploads = 0;
  int64_t closed = 0;
  while (closed < ROUNDS) {
    int k = 0;
    for (int i = 1; i < NDEV; i++)
      if (next[i] < next[k])
        k = i;
    int64_t now = now_ms();
    if (next[k] > now) {
      sleep_ms(next[k] - now < 20 ? next[k] - now : 20);
    } else if (task[k].round_id != 0) {
      device_upload(k, model_id, &b, &task[k], &uploads);
      task[k].round_id = 0;
      /* Like libflclient: check in again as soon as the round is done (its bookkeeping, a
       * few tens of ms, is when the round closes and the next one opens). */
      next[k] = now_ms() + 50;
    } else {
      next[k] = device_checkin(k, model_id, &task[k]);
    }
    if (now - last_poll > 500) {
      closed = fl_h_db_int(g_db, "SELECT count(*) FROM rounds WHERE state = 'closed'");
      cr_assert_geq(closed, 0);
      last_poll = now;
      cr_assert_lt(now - t0, 400000, "only %lld rounds closed in 400 s", (long long)closed);
    }
  }
  int64_t repeat = fl_h_db_int(g_db, PARTICIPANTS
                               "SELECT count(*) FROM p cur JOIN p prev"
                               " ON prev.n = cur.n - 1"
                               " AND prev.device_id = cur.device_id");
  int64_t later = fl_h_db_int(g_db, PARTICIPANTS "SELECT count(*) FROM p WHERE n >= 2");
  int64_t distinct = fl_h_db_int(g_db, PARTICIPANTS "SELECT count(DISTINCT device_id) FROM p");
  int64_t over = fl_h_db_int(g_db,
                             "SELECT count(*) FROM (SELECT round_id FROM acceptances"
                             " GROUP BY round_id HAVING count(*) > 10) t");
  int64_t drawn = fl_h_db_int(g_db,
                              "SELECT count(*) FROM rounds WHERE state = 'closed'"
                              " AND drawn_at IS NOT NULL");
  fprintf(stderr,
          "selection: %d rounds in %.1f s, %lld of %lld participants also in the round before"
          " (%.1f%%), %lld devices took part, %d uploads acknowledged\n",
          ROUNDS, (double)(now_ms() - t0) / 1000.0, (long long)repeat, (long long)later,
          later > 0 ? 100.0 * (double)repeat / (double)later : 0.0, (long long)distinct, uploads);
  cr_assert_eq(later, (ROUNDS - 1) * 10, "every round has its 10 participants");
  cr_assert_leq(repeat * 100, later * 20, "repeat share %lld/%lld above 20%%", (long long)repeat,
                (long long)later);
  cr_assert_geq(distinct, 97);
  cr_assert_eq(over, 0, "a round aggregated more than its target");
  cr_assert_geq(drawn, ROUNDS, "rounds were not drawn");
  for (size_t i = 0; i < sizeof b.v / sizeof b.v[0]; i++)
    fl__v1__model_version__free_unpacked(b.v[i], NULL);
}

typedef struct job {
  const Fl__V1__ModelVersion *base;
  int dev;
  uint64_t round_id;
  float value;
  long status;
  char reason[64];
} job;

static void *run_upload(void *arg) {
  job *j = arg;
  float delta[NPARAMS];
  fl_h_resp r;
  for (int k = 0; k < NPARAMS; k++)
    delta[k] = j->value;
  j->status = -1;
  if (fl_h_upload(&g_coord, &g_dev[j->dev], j->base, j->round_id, delta, 5, NULL, &r) == 0) {
    j->status = r.status;
    snprintf(j->reason, sizeof j->reason, "%s", fl_h_error_reason(&r));
    fl_h_resp_free(&r);
  }
  return NULL;
}

/* Four uploads in one batch past a target of 2: two folded, two target_reached. With a
 * stored rule (median of two = their mean) only the two counted updates are stored. */
static void target_cap_case(const char *plan, bool stored) {
  /* A long group-commit gather: the four uploads share one batch, past the target of 2. */
  const char *extra[] = {"--commit-interval=1000", NULL};
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "cap", FL_H_SMALL_SPEC, plan, &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 4), 0);
  for (int i = 0; i < 4; i++) {
    Fl__V1__CheckInResponse *resp;
    cr_assert_eq(fl_h_checkin(&g_coord, &g_dev[i], model_id, &resp), 0);
    cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
  Fl__V1__ModelVersion *base, *v2;
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 1, &base), 0);
  const char *nonces = "SELECT count(*) FROM nonces WHERE device_id > 0";
  int64_t nonces_before = fl_h_db_int(g_db, nonces);
  job jobs[4];
  pthread_t t[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (job){.base = base, .dev = i, .round_id = round_id, .value = 0.01f * (float)(1 << i)};
    cr_assert_eq(pthread_create(&t[i], NULL, run_upload, &jobs[i]), 0);
  }
  int ok = 0, refused = 0;
  double sum = 0;
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    if (jobs[i].status == 200) {
      ok++;
      sum += jobs[i].value;
    } else {
      cr_assert_eq(jobs[i].status, 409, "upload %d: %ld %s", i, jobs[i].status, jobs[i].reason);
      cr_assert_str_eq(jobs[i].reason, "target_reached");
      refused++;
    }
  }
  cr_assert_eq(ok, 2);
  cr_assert_eq(refused, 2);
  json_t *round = fl_h_wait_round(&g_coord, round_id, "closed", 20000);
  cr_assert_not_null(round);
  json_decref(round);
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT accepted FROM rounds WHERE round_id = %llu",
           (unsigned long long)round_id);
  cr_assert_eq(fl_h_db_int(g_db, sql), 2);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM acceptances"), 2);
  if (stored) /* kept until close, which deletes them: the close ran, so none are left */
    cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM round_updates"), 0);
  /* A refused upload's nonce is spent like an accepted one's. */
  cr_assert_eq(fl_h_db_int(g_db, nonces), nonces_before + 4);
  cr_assert_eq(fl_h_download(&g_coord, &g_dev[0], model_id, 2, &v2), 0);
  float *w1, *w2;
  size_t n1, n2;
  cr_assert_eq(fl_h_weights(base, &w1, &n1), 0);
  cr_assert_eq(fl_h_weights(v2, &w2, &n2), 0);
  cr_assert_eq(n1, n2);
  for (size_t i = 0; i < n1; i++)
    cr_assert(fabs(w2[i] - (w1[i] + sum / 2)) <= 1e-6 + 1e-5 * fabs(w1[i]),
              "param %zu: %.9g, expected %.9g (the mean of the acknowledged deltas)", i, w2[i],
              w1[i] + sum / 2);
  free(w1);
  free(w2);
  fl__v1__model_version__free_unpacked(base, NULL);
  fl__v1__model_version__free_unpacked(v2, NULL);
}

Test(selection, target_cap, .init = setup, .fini = teardown, .timeout = 120) {
  target_cap_case("{\"participants\":2,\"over_selection\":2,\"deadline_s\":600}", false);
}

/* The same batch for a stored rule: the uploads past the target have no acceptance row, so
 * they must not be stored either (their rows would break the batch's transaction). */
Test(selection, target_cap_with_a_stored_rule, .init = setup, .fini = teardown, .timeout = 120) {
  target_cap_case(
      "{\"participants\":2,\"over_selection\":2,\"deadline_s\":600,"
      "\"aggregator\":\"median\"}",
      true);
}

/* Two replicas on one database, both tickers every 20 ms: the window's draw happens once
 * (the round's row lock and drawn_at), and the devices' answers agree on either replica. */
Test(selection, two_replicas_draw_once, .init = setup, .fini = teardown, .timeout = 120) {
  enum { N = 20 };
  static fl_h_coord b;
  const char *extra[] = {"--tick=20", NULL};
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_coord_start(&b, g_db, g_coord.dir, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "replicas", FL_H_SMALL_SPEC,
                                   "{\"participants\":5,\"over_selection\":1,"
                                   "\"deadline_s\":600,\"selection_window_s\":1.5,"
                                   "\"selection_pool\":100}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, N), 0);
  for (int i = 0; i < N; i++) {
    Fl__V1__CheckInResponse *resp;
    cr_assert_eq(fl_h_checkin(i % 2 ? &b : &g_coord, &g_dev[i], model_id, &resp), 0);
    cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY);
    cr_assert_str_eq(resp->retry->reason, "selection_pending");
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM candidates"), N);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 0, "drawn early");
  for (int t = 0; t < 100 && fl_h_db_int(g_db,
                                         "SELECT count(*) FROM rounds WHERE drawn_at"
                                         " IS NOT NULL") == 0;
       t++)
    sleep_ms(50);
  sleep_ms(300); /* both tickers have passed the window's end several times */
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 5);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT assigned FROM rounds"), 5);
  int tasks = 0;
  for (int i = 0; i < N; i++) {
    Fl__V1__CheckInResponse *resp;
    cr_assert_eq(fl_h_checkin(i % 2 ? &g_coord : &b, &g_dev[i], model_id, &resp), 0);
    if (resp->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK)
      tasks++;
    else
      cr_assert_str_eq(resp->retry->reason, "round_full");
    fl__v1__check_in_response__free_unpacked(resp, NULL);
  }
  cr_assert_eq(tasks, 5);
  fl_h_coord_stop(&b, SIGTERM);
  fl_h_coord_cleanup(&b);
}
