/*
 * Randomized durability: rounds of uploads from worker threads while the coordinator is
 * SIGKILLed (during the uploads, and as the round reaches its quorum, i.e. during its close)
 * and PostgreSQL is restarted with `pg_ctl restart -m immediate` (a crash of the database)
 * mid-round, with exact accounting of which acknowledged updates each new version holds.
 *
 * Device k's delta is the indicator vector e_k (coordinate k is 1, all others 0) with the
 * same sample_count within a round, so with FedAvg (server_lr 1) version r+1 minus version r
 * is 1/|F| on the coordinates of the set F of folded devices and exactly 0 elsewhere: the
 * version says which devices it holds, and an update folded twice (or a stale one of another
 * round) would show as an unequal coordinate. Workers retry every update until it has a
 * definitive answer (200, or 409 round_closed / target_reached: not folded), so the answered
 * set A of a round is known
 * exactly, and the test requires F == A and |F| == the round's accepted count: every update
 * answered 200 is in exactly one version, none twice, and none that was refused. Every
 * retry of a committed update must be answered 200 (duplicate), never refused.
 *
 * The database is a private cluster (tests/support's launcher) so that the test may crash it;
 * the PG* environment is pointed at it for the harness and the coordinator. Seeded by
 * FL_CHAOS_SEED (default: the time, printed); FL_CHAOS_ROUNDS rounds (default 8). Also: the
 * assignments a check-in was answered with survive a crash of PostgreSQL.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fl/err.h"
#include "flsupport/pg.h"
#include "flsupport/proc.h"
#include "harness.h"
#include "rng.h"

#define NDEV 12 /* devices, one indicator coordinate each */
/* 19,503 parameters: enough for a close (sum of partials, new version, signature) to take a
 * few ms, a window a kill can fall into. */
#define SPEC                                                                                  \
  "{\"input_shape\":[64],\"layers\":[{\"type\":\"dense\",\"units\":300},{\"type\":\"relu\"}," \
  "{\"type\":\"dense\",\"units\":1}],\"loss\":\"mse\"}"
/* A round closes at 8 accepted (a group commit counts only up to the target: the rest of its
 * batch is answered target_reached); later uploads: round_closed. */
#define PARTICIPANTS 8
#define WORKERS 4       /* concurrent uploads */
#define RETRY_MS 60000L /* how long a worker keeps retrying one update */

enum { FAULT_NONE, FAULT_KILL_UPLOADS, FAULT_KILL_CLOSE, FAULT_PG_RESTART, FAULT_N };
static const char *const k_fault[FAULT_N] = {"none", "kill during uploads", "kill during close",
                                             "postgres restart"};

static fl_sup_pg g_pg;
static char g_db[64];
static fl_h_coord g_c;
static fl_h_device g_dev[NDEV];

static void setenv_pg(void) {
  /* The harness and the coordinator reach the database through libpq's environment. */
  setenv("PGHOST", g_pg.dir, 1);
  setenv("PGPORT", "5432", 1);
  setenv("PGUSER", "fl", 1);
  setenv("PGDATABASE", "postgres", 1);
  unsetenv("PGPASSWORD");
  unsetenv("PGSERVICE");
}

static void setup(void) {
  cr_assert_eq(fl_sup_pg_start(&g_pg, NULL, "fl-chaos-pg-", "itest_chaos"), FL_OK,
               "private PostgreSQL cluster");
  setenv_pg();
  cr_assert_eq(fl_h_db_create(g_db), 0);
}

static void teardown(void) {
  if (g_c.pid > 0)
    fl_h_coord_stop(&g_c, SIGKILL);
  fl_h_coord_cleanup(&g_c);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&g_dev[i]);
  fl_sup_pg_stop(&g_pg);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ----- one round's uploads -------------------------------------------------------------- */

enum { ANS_NONE, ANS_ACKED, ANS_CLOSED, ANS_BAD };

typedef struct round_run {
  const Fl__V1__ModelVersion *base;
  uint64_t round_id, samples;
  size_t n_params;
  uint32_t order[NDEV]; /* upload order (seeded) */
  uint32_t pace[NDEV];  /* extra ms before each device's first attempt (seeded) */
  atomic_int next;      /* index into order of the next device to upload */
  int answer[NDEV];     /* ANS_* per device */
  bool duplicate[NDEV]; /* the 200 was a duplicate acknowledgement */
  int attempts[NDEV];
  char bad[NDEV][96]; /* what an ANS_BAD answer was */
} round_run;

/* Uploads device k's indicator until a definitive answer. Transport errors (the coordinator
 * is down), 503 (the database is) and 409 upload_in_progress are retried. */
static void upload_until_answered(round_run *rr, int k) {
  float *delta = calloc(rr->n_params, sizeof *delta);
  if (delta == NULL)
    abort();
  delta[k] = 1.0f;
  int64_t until = fl_sup_wall_ms() + RETRY_MS;
  while (fl_sup_wall_ms() < until) {
    fl_h_resp r;
    rr->attempts[k]++;
    if (fl_h_upload(&g_c, &g_dev[k], rr->base, rr->round_id, delta, rr->samples, NULL, &r) != 0) {
      sleep_ms(20);
      continue;
    }
    /* fl_h_error_reason answers in static storage: not for concurrent workers. */
    char why[64] = "";
    if (r.status != 200)
      fl_sup_error_reason((const uint8_t *)r.data, r.len, why, sizeof why);
    if (r.status == 200) {
      Fl__V1__UpdateAck *ack = fl__v1__update_ack__unpack(NULL, r.len, (uint8_t *)r.data);
      rr->duplicate[k] = ack != NULL && ack->duplicate;
      rr->answer[k] = ack != NULL && ack->round_id == rr->round_id ? ANS_ACKED : ANS_BAD;
      if (rr->answer[k] == ANS_BAD)
        snprintf(rr->bad[k], sizeof rr->bad[k], "200 without a matching UpdateAck");
      fl__v1__update_ack__free_unpacked(ack, NULL);
    } else if (r.status == 409 &&
               (strcmp(why, "round_closed") == 0 || strcmp(why, "target_reached") == 0)) {
      rr->answer[k] = ANS_CLOSED;
    } else if (r.status == 503 || (r.status == 409 && strcmp(why, "upload_in_progress") == 0)) {
      fl_h_resp_free(&r);
      sleep_ms(20);
      continue;
    } else {
      rr->answer[k] = ANS_BAD;
      snprintf(rr->bad[k], sizeof rr->bad[k], "HTTP %ld %s", (long)r.status, why);
    }
    fl_h_resp_free(&r);
    free(delta);
    return;
  }
  rr->answer[k] = ANS_BAD;
  snprintf(rr->bad[k], sizeof rr->bad[k], "no definitive answer in %ld ms", RETRY_MS);
  free(delta);
}

static void *worker(void *arg) {
  round_run *rr = arg;
  for (;;) {
    int i = atomic_fetch_add(&rr->next, 1);
    if (i >= NDEV)
      return NULL;
    /* Paced, so that a burst lasts a few hundred ms and the faults land inside it. */
    sleep_ms(20 + (long)rr->pace[i]);
    upload_until_answered(rr, (int)rr->order[i]);
  }
}

/* ----- faults ------------------------------------------------------------------------------ */

static void kill_and_restart(fl_rng *rng) {
  cr_assert_eq(fl_h_coord_stop(&g_c, SIGKILL), 128 + SIGKILL);
  sleep_ms((long)fl__rng_below(rng, 300)); /* down for a while: uploads fail meanwhile */
  cr_assert_eq(fl_h_coord_restart(&g_c), 0, "restart after SIGKILL");
}

static int64_t accepted_now(uint64_t round_id) {
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT accepted FROM rounds WHERE round_id = %llu",
           (unsigned long long)round_id);
  return fl_h_db_int(g_db, sql);
}

static void wait_accepted(uint64_t round_id, int n) {
  int64_t until = fl_sup_wall_ms() + 30000;
  while (accepted_now(round_id) < n && fl_sup_wall_ms() < until)
    sleep_ms(2);
}

/* Runs while the workers upload. Returns how many faults were injected. */
static int inject(int fault, fl_rng *rng, uint64_t round_id) {
  switch (fault) {
    case FAULT_KILL_UPLOADS: {
      /* One to three kills at random moments of the upload burst. */
      int n = 1 + (int)fl__rng_below(rng, 3);
      for (int i = 0; i < n; i++) {
        sleep_ms((long)fl__rng_below(rng, 200));
        kill_and_restart(rng);
      }
      return n;
    }
    case FAULT_KILL_CLOSE: {
      /* Around the last commit of the quorum, which pokes the close: a kill in the next tens
       * of ms falls before the quorum, before the close (the restarted replica must do it),
       * inside it (its transaction must leave no trace) or after it (printed). */
      wait_accepted(round_id, PARTICIPANTS - 1);
      sleep_ms((long)fl__rng_below(rng, 60));
      cr_assert_eq(fl_h_coord_stop(&g_c, SIGKILL), 128 + SIGKILL);
      /* Where the kill fell (printed: a seed whose kills all miss the close says so). */
      char sql[160];
      snprintf(sql, sizeof sql,
               "SELECT (state = 'open')::int * 1000 + accepted FROM rounds WHERE round_id = %llu",
               (unsigned long long)round_id);
      int64_t st = fl_h_db_int(g_db, sql);
      fprintf(stderr, "itest_chaos: killed with the round %s at %lld accepted\n",
              st >= 1000 ? "open" : "closed", (long long)(st % 1000));
      sleep_ms((long)fl__rng_below(rng, 300));
      cr_assert_eq(fl_h_coord_restart(&g_c), 0, "restart after SIGKILL");
      return 1;
    }
    case FAULT_PG_RESTART:
      /* With part of the round committed and the rest in flight. */
      wait_accepted(round_id, 1 + (int)fl__rng_below(rng, PARTICIPANTS - 1));
      cr_assert_eq(fl_sup_pg_restart(&g_pg, "immediate"), FL_OK, "pg_ctl restart -m immediate");
      return 1;
    default:
      return 0;
  }
}

/* ----- accounting -------------------------------------------------------------------------- */

/* Version v minus the base: the set of folded devices, each with weight 1/|F| exactly once,
 * and nothing outside the indicator coordinates. */
static void expect_version(uint64_t model_id, uint64_t v, const float *w0, size_t n,
                           const round_run *rr, int64_t accepted, int r) {
  Fl__V1__ModelVersion *mv;
  float *w;
  size_t m;
  int folded = 0, acked = 0;
  cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, v, &mv), 0, "download v%llu",
               (unsigned long long)v);
  cr_assert_eq(fl_h_weights(mv, &w, &m), 0);
  cr_assert_eq(m, n);
  for (int k = 0; k < NDEV; k++) {
    folded += fabsf(w[k] - w0[k]) > 1e-6f;
    acked += rr->answer[k] == ANS_ACKED;
  }
  cr_assert(folded > 0, "round %d: version %llu holds no update", r, (unsigned long long)v);
  for (int k = 0; k < NDEV; k++) {
    bool in = fabsf(w[k] - w0[k]) > 1e-6f;
    cr_assert_eq(in, rr->answer[k] == ANS_ACKED,
                 "round %d device %d: answered %s (%d attempts%s) but %s version %llu", r, k,
                 rr->answer[k] == ANS_ACKED ? "200" : "409", rr->attempts[k],
                 rr->duplicate[k] ? ", duplicate" : "", in ? "folded into" : "missing from",
                 (unsigned long long)v);
    if (in)
      cr_assert(fabsf((w[k] - w0[k]) - 1.0f / (float)folded) <= 1e-5f,
                "round %d device %d: weight %.7g, not 1/%d (folded twice, or a stale update)", r, k,
                w[k] - w0[k], folded);
  }
  for (size_t i = NDEV; i < n; i++)
    cr_assert(fabsf(w[i] - w0[i]) <= 1e-6f, "round %d: parameter %zu moved by %.7g", r, i,
              w[i] - w0[i]);
  cr_assert_eq(folded, acked);
  cr_assert_eq(folded, accepted, "round %d: %d folded, round says %lld accepted", r, folded,
               (long long)accepted);
  free(w);
  fl__v1__model_version__free_unpacked(mv, NULL);
}

/* All devices check in to the open round; returns its id. */
static uint64_t checkin_all(uint64_t model_id) {
  uint64_t round_id = 0;
  for (int k = 0; k < NDEV; k++) {
    int64_t until = fl_sup_wall_ms() + 20000;
    for (;;) {
      Fl__V1__CheckInResponse *resp = NULL;
      cr_assert(fl_sup_wall_ms() < until, "device %d gets no task", k);
      int rc = fl_h_checkin(&g_c, &g_dev[k], model_id, &resp);
      bool task = rc == 0 && resp->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
      uint64_t id = task ? resp->task->round_id : 0;
      if (resp != NULL)
        fl__v1__check_in_response__free_unpacked(resp, NULL);
      if (task && (round_id == 0 || id == round_id)) {
        round_id = id;
        break;
      }
      sleep_ms(25); /* the next round opens at the tick after the close */
    }
  }
  return round_id;
}

static uint64_t seed_from_env(const char *name, uint64_t dflt) {
  const char *e = getenv(name);
  return e != NULL && *e != '\0' ? strtoull(e, NULL, 0) : dflt;
}

Test(chaos, acknowledged_updates_in_exactly_one_version, .init = setup, .fini = teardown,
     .timeout = 600) {
  uint64_t seed = seed_from_env("FL_CHAOS_SEED", (uint64_t)time(NULL));
  int rounds = (int)seed_from_env("FL_CHAOS_ROUNDS", 8);
  fl_rng rng;
  fl__rng_seed(&rng, seed);
  fprintf(stderr, "itest_chaos: FL_CHAOS_SEED=%llu FL_CHAOS_ROUNDS=%d\n", (unsigned long long)seed,
          rounds);
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  char plan[160];
  snprintf(plan, sizeof plan,
           "{\"participants\":%d,\"over_selection\":1.5,\"deadline_s\":600,\"clip_norm\":10}",
           PARTICIPANTS);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "chaos", SPEC, plan, &model_id, &round_id), 0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);

  /* Every kind of fault at least once, then random ones, in a seeded order. */
  int faults[64], kills = 0, pg_restarts = 0;
  cr_assert(rounds >= FAULT_N && rounds <= 64, "FL_CHAOS_ROUNDS must be %d..64", FAULT_N);
  for (int r = 0; r < rounds; r++)
    faults[r] = r < FAULT_N ? r : (int)fl__rng_below(&rng, FAULT_N);
  for (int r = rounds - 1; r > 0; r--) {
    int j = (int)fl__rng_below(&rng, (uint64_t)r + 1), t = faults[r];
    faults[r] = faults[j];
    faults[j] = t;
  }

  for (int r = 0; r < rounds; r++) {
    uint64_t v = (uint64_t)r + 1;
    uint64_t rid = checkin_all(model_id);
    Fl__V1__ModelVersion *base;
    float *w0;
    size_t n;
    cr_assert_eq(fl_h_download(&g_c, &g_dev[0], model_id, v, &base), 0, "download v%llu",
                 (unsigned long long)v);
    cr_assert_eq(fl_h_weights(base, &w0, &n), 0);
    cr_assert(n >= NDEV);
    round_run *rr = calloc(1, sizeof *rr);
    cr_assert_not_null(rr);
    rr->base = base;
    rr->n_params = n;
    rr->round_id = rid;
    rr->samples = 1 + (uint64_t)r; /* another weight each round: a stale update shows */
    for (uint32_t k = 0; k < NDEV; k++)
      rr->order[k] = k;
    fl__rng_shuffle_u32(&rng, rr->order, NDEV);
    for (int k = 0; k < NDEV; k++)
      rr->pace[k] = (uint32_t)fl__rng_below(&rng, 60);
    pthread_t th[WORKERS];
    for (int i = 0; i < WORKERS; i++)
      cr_assert_eq(pthread_create(&th[i], NULL, worker, rr), 0);
    int injected = inject(faults[r], &rng, rid);
    for (int i = 0; i < WORKERS; i++)
      pthread_join(th[i], NULL);
    if (faults[r] == FAULT_PG_RESTART)
      pg_restarts++;
    else
      kills += injected;
    for (int k = 0; k < NDEV; k++)
      cr_assert_neq(rr->answer[k], ANS_BAD, "round %d (%s) device %d: %s", r, k_fault[faults[r]], k,
                    rr->bad[k]);
    json_t *round = fl_h_wait_round(&g_c, rid, "closed", 30000);
    cr_assert_not_null(round, "round %d (%s) did not close", r, k_fault[faults[r]]);
    json_int_t result = json_integer_value(json_object_get(round, "result_version"));
    json_int_t accepted = json_integer_value(json_object_get(round, "accepted"));
    json_decref(round);
    cr_assert_eq(result, (json_int_t)v + 1, "round %d: result version %lld", r, (long long)result);
    expect_version(model_id, v + 1, w0, n, rr, accepted, r);
    int dup = 0, attempts = 0;
    for (int k = 0; k < NDEV; k++) {
      dup += rr->duplicate[k];
      attempts += rr->attempts[k];
    }
    fprintf(stderr,
            "itest_chaos: round %d (%s): %lld folded, %d uploads sent, %d acknowledged as "
            "duplicates (committed, first answer lost)\n",
            r, k_fault[faults[r]], (long long)accepted, attempts, dup);
    free(rr);
    free(w0);
    fl__v1__model_version__free_unpacked(base, NULL);
  }
  /* One version per round (no close happened twice), one acceptance per folded update. */
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM versions"), rounds + 1);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM rounds WHERE state = 'closed'"), rounds);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM acceptances"),
               fl_h_db_int(g_db, "SELECT sum(accepted) FROM rounds WHERE state = 'closed'"));
  fprintf(stderr, "itest_chaos: %d rounds, %d coordinator kills, %d postgres restarts\n", rounds,
          kills, pg_restarts);
}

/* A check-in is told its task only once its assignment is durable: the claim is committed by
 * the group committer with a synchronous commit (aggregate.h, fl__agg_assign). With the WAL
 * writer slowed to 10 s, an asynchronously committed assignment would stay unflushed that long
 * and a crash of PostgreSQL right after the answers would lose it (the device's upload would
 * then be refused as not assigned); every device told its task must still be assigned. */
Test(chaos, assignments_answered_are_durable, .init = setup, .fini = teardown, .timeout = 300) {
  uint64_t model_id, round_id;
  cr_assert_eq(fl_sup_db_exec(NULL, "ALTER SYSTEM SET wal_writer_delay = '10s'", NULL), FL_OK);
  cr_assert_eq(fl_sup_db_exec(NULL, "SELECT pg_reload_conf()", NULL), FL_OK);
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  char plan[160];
  snprintf(plan, sizeof plan, "{\"participants\":%d,\"over_selection\":1,\"deadline_s\":600}",
           NDEV);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "durable-assign", SPEC, plan, &model_id, &round_id), 0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);
  cr_assert_eq(checkin_all(model_id), round_id, "every device has its task");
  cr_assert_eq(fl_sup_pg_restart(&g_pg, "immediate"), FL_OK, "pg_ctl restart -m immediate");
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM assignments WHERE round_id = %llu",
           (unsigned long long)round_id);
  cr_expect_eq(fl_h_db_int(g_db, sql), NDEV, "assignments answered before the crash");
  snprintf(sql, sizeof sql, "SELECT assigned FROM rounds WHERE round_id = %llu",
           (unsigned long long)round_id);
  cr_expect_eq(fl_h_db_int(g_db, sql), NDEV, "the round's count with them");
}

/* ----- pooled connections across a crash of PostgreSQL ------------------------------------ */

typedef struct burst {
  uint64_t model_id;
  int k, statuses[5]; /* device, then the HTTP status of each download (-1: no answer) */
} burst;

static void *download_burst(void *arg) {
  burst *b = arg;
  char path[96];
  snprintf(path, sizeof path, "/v1/models/%llu/versions/1", (unsigned long long)b->model_id);
  for (int i = 0; i < 5; i++) {
    fl_h_resp r;
    b->statuses[i] = fl_h_device_get(&g_c, &g_dev[b->k], path, NULL, &r) ? -1 : (int)r.status;
    if (b->statuses[i] >= 0)
      fl_h_resp_free(&r);
  }
  return NULL;
}

/* NDEV devices download version 1 five times each, all at once; returns the answers that were
 * not 200 (printed). */
static int run_burst(uint64_t model_id) {
  burst b[NDEV];
  pthread_t th[NDEV];
  int bad = 0;
  for (int k = 0; k < NDEV; k++) {
    b[k] = (burst){.model_id = model_id, .k = k};
    cr_assert_eq(pthread_create(&th[k], NULL, download_burst, &b[k]), 0);
  }
  for (int k = 0; k < NDEV; k++) {
    pthread_join(th[k], NULL);
    for (int i = 0; i < 5; i++)
      if (b[k].statuses[i] != 200) {
        fprintf(stderr, "itest_chaos: device %d download %d: %d\n", k, i, b[k].statuses[i]);
        bad++;
      }
  }
  return bad;
}

/* A crash of PostgreSQL ends every pooled session, but libpq learns it only when it next reads
 * from a connection: one that sat idle in the pool through the restart still said
 * CONNECTION_OK, and the request it was handed to failed with 503 (seed 1796184010 on a loaded
 * machine: the download of a version right after a restart round, which the test does not
 * retry). The pool checks an idle connection before handing it out (store_pg.c), so every
 * request after the restart is served: the pool's deeper connections are reached by a burst. */
Test(chaos, pooled_connections_after_pg_restart, .init = setup, .fini = teardown, .timeout = 180) {
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_c, g_db, NULL, NULL), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_c, "pooled", SPEC, "{}", &model_id, &round_id), 0);
  cr_assert_eq(fl_h_enroll_devices(&g_c, g_dev, NDEV), 0);
  cr_assert_eq(run_burst(model_id), 0, "downloads before the restart");
  int64_t open = fl_h_db_int(g_db,
                             "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                             " current_database() AND pid <> pg_backend_pid()");
  cr_assert_geq(open, 3, "only %lld pooled connections opened: nothing to test", (long long)open);
  cr_assert_eq(fl_sup_pg_restart(&g_pg, "immediate"), FL_OK, "pg_ctl restart -m immediate");
  cr_expect_eq(run_burst(model_id), 0, "downloads refused after the restart (%lld connections)",
               (long long)open);
}
