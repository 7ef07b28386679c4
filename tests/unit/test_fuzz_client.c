/*
 * libflclient against a coordinator that sends extreme times: server_time_ms, retry windows,
 * task deadlines and Error.retry_after_ms at the ends of int64 (a buggy coordinator, or anyone
 * on a plain-HTTP link, can send them: the answers are not signed). The library must neither
 * overflow (UBSan aborts the test) nor wait longer than a day on a hint.
 */
#include "test_client_fake.h"

#define DAY_MS INT64_C(86400000)

static const int64_t EDGY[] = {INT64_MAX, INT64_MAX - 1, INT64_MAX / 2, 1, 2, INT64_C(1) << 53};

/* Check-ins answered with every combination of extreme server time and retry window, then a
 * second round (its requests are stamped with the adjusted clock). */
Test(fuzz_client, extreme_server_times_and_retry_windows) {
  for (size_t i = 0; i < sizeof EDGY / sizeof EDGY[0]; i++) {
    for (size_t j = 0; j < sizeof EDGY / sizeof EDGY[0]; j++) {
      fake_env e;
      fake_env_enrolled(&e);
      e.f.give_task = false;
      e.f.server_time_ms = EDGY[i];
      e.f.retry_at_ms = EDGY[j];
      fl_round_result r = {.size = sizeof r};
      cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
      cr_assert_eq(r.outcome, FL_ROUND_NOT_SELECTED);
      e.f.give_task = true;
      int err = fl_client_run_round(e.c, &r);
      cr_assert(err == FL_OK || err < 0, "defined result");
      fake_env_down(&e);
    }
  }
}

/* A task whose deadline is at the end of time, under a coordinator clock at either end. */
Test(fuzz_client, extreme_task_deadlines) {
  for (size_t i = 0; i < sizeof EDGY / sizeof EDGY[0]; i++) {
    for (size_t j = 0; j < sizeof EDGY / sizeof EDGY[0]; j++) {
      fake_env e;
      fake_env_enrolled(&e);
      e.f.give_task = true;
      e.f.server_time_ms = EDGY[i];
      e.f.task_deadline_ms = EDGY[j];
      fl_round_result r = {.size = sizeof r};
      int err = fl_client_run_round(e.c, &r);
      cr_assert(err == FL_OK || err < 0, "defined result");
      fake_env_down(&e);
    }
  }
}

/* A refusal that asks to come back at the end of time: the client backs off, but for at most a
 * day (as it does for a Retry-After header), so it never sleeps forever. */
Test(fuzz_client, retry_hints_are_capped_at_a_day) {
  static const int64_t hints[] = {INT64_MAX, INT64_MAX - 1, INT64_C(1) << 62, 3 * DAY_MS};
  for (size_t i = 0; i < sizeof hints / sizeof hints[0]; i++) {
    fake_env e;
    fake_env_enrolled(&e);
    e.f.fail_next = 1;
    e.f.fail_hint_ms = hints[i];
    fl_step st = FL_STEP_IDLE;
    cr_assert_eq(fl_client_round_begin(e.c), FL_OK);
    int err = fl_client_step(e.c, 0, &st);
    cr_assert(err == FL_OK || err == FL_E_AGAIN, "step: %d", err);
    cr_assert_eq(st, FL_STEP_WAIT_TIME, "the refusal is retried later");
    int64_t wait = fl_client_wake_at_ms(e.c) - fl__client_now_ms();
    cr_assert(wait > 0 && wait <= DAY_MS, "hint %lld: waits %lld ms", (long long)hints[i],
              (long long)wait);
    fl_round_result r = {.size = sizeof r};
    fl_client_round_result(e.c, &r);
    cr_assert(r.retry_at_ms == 0 || r.retry_at_ms - fl__client_now_ms() <= DAY_MS,
              "retry_at_ms %lld", (long long)r.retry_at_ms);
    fake_env_down(&e);
  }
}

/* An allocator that counts the bytes handed out (never given back: a peak bound). */
static size_t g_allocated;
static void *count_malloc(void *ctx, size_t n) {
  (void)ctx;
  g_allocated += n;
  return malloc(n);
}
static void *count_realloc(void *ctx, void *p, size_t n) {
  (void)ctx;
  g_allocated += n;
  return realloc(p, n);
}
static void count_free(void *ctx, void *p) {
  (void)ctx;
  free(p);
}

/* A downloaded ModelVersion is unpacked before its signature can be checked; two million empty
 * metrics (two bytes each on the wire, a struct and a pointer each once unpacked) must not make
 * the device allocate thirty times the message. */
Test(fuzz_client, model_versions_do_not_amplify_memory) {
  enum { METRICS = 2 << 20 };
  size_t len = 2 * (size_t)METRICS;
  uint8_t *buf = malloc(len);
  cr_assert_not_null(buf);
  for (size_t i = 0; i < len; i += 2) {
    buf[i] = 0x42; /* field 8 (metrics), length-delimited */
    buf[i + 1] = 0;
  }
  fl_allocator a = {count_malloc, count_realloc, count_free, NULL};
  uint8_t pub[FL_PUBKEY_LEN] = {0};
  fl__loaded_model out;
  memset(&out, 0, sizeof out);
  char why[256];
  g_allocated = 0;
  int err = fl__model_verify(buf, len, pub, NULL, &a, &out, why, sizeof why);
  cr_assert_neq(err, FL_OK);
  cr_assert_lt(g_allocated, 2 * len + ((size_t)1 << 20),
               "%zu bytes allocated for a %zu-byte message", g_allocated, len);
  free(buf);
}
