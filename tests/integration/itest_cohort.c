/*
 * Training cohorts (docs/API.md, "Training cohorts") through the real coordinator.
 *
 * draw_only_eligible: a plan whose cohort is site=a with the condition "charging", a selection
 * window. 24 devices: 12 of site=a (8 report charging, 4 report nothing or "unmetered" only)
 * and 12 of site=b (all charging). Ineligible devices are told "not_eligible" and never become
 * candidates; the draw assigns only eligible ones, every eligible one is drawn when the slots
 * allow it, and a device that starts charging becomes eligible at its next check-in.
 * first_come_and_plan: without a window the same decision holds for first-come assignment;
 * the plan reads back with its cohort; bad cohorts and bad conditions are refused with a clear
 * error and change nothing.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"

#define NA 12
#define NB 12

static char g_db[64];
static fl_h_coord g_coord;
static fl_h_device g_a[NA], g_b[NB];

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
}

static void teardown(void) {
  fl_h_coord_stop(&g_coord, SIGTERM);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
  for (int i = 0; i < NA; i++)
    fl_h_device_free(&g_a[i]);
  for (int i = 0; i < NB; i++)
    fl_h_device_free(&g_b[i]);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static const char *const CHARGING[] = {"charging"};
static const char *const UNMETERED[] = {"unmetered"};
static const char *const BOTH[] = {"unmetered", "charging"};

/* The check-in's outcome: "task" or the retry reason (static storage). */
static const char *checkin(const fl_h_device *d, uint64_t model_id, const char *const *conds,
                           size_t n) {
  static char out[64];
  Fl__V1__CheckInResponse *r;
  cr_assert_eq(fl_h_checkin_cond(&g_coord, d, model_id, conds, n, &r), 0);
  if (r->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK)
    snprintf(out, sizeof out, "task");
  else
    snprintf(out, sizeof out, "%s", r->retry->reason);
  fl__v1__check_in_response__free_unpacked(r, NULL);
  return out;
}

/* Device a[i]'s conditions in draw_only_eligible: 0-3 charging, 4-7 unmetered and charging,
 * 8-9 unmetered only, 10-11 none. */
static const char *const *conds_a(int i, size_t *n) {
  *n = i < 4 ? 1 : i < 8 ? 2 : i < 10 ? 1 : 0;
  return i < 4 ? CHARGING : i < 8 ? BOTH : i < 10 ? UNMETERED : NULL;
}

static int64_t assigned(uint64_t device_id) {
  char sql[160];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM assignments WHERE device_id = %llu",
           (unsigned long long)device_id);
  return fl_h_db_int(g_db, sql);
}

Test(cohort, draw_only_eligible, .init = setup, .fini = teardown, .timeout = 300) {
  const char *extra[] = {"--tick=50", NULL};
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "cohort", FL_H_SMALL_SPEC,
                                   "{\"participants\":10,\"over_selection\":1.0,"
                                   "\"deadline_s\":60,\"selection_window_s\":1.5,"
                                   "\"cohort\":{\"labels\":{\"site\":\"a\"},"
                                   "\"conditions\":[\"charging\"]}}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_labeled(&g_coord, g_a, NA, "{\"site\":\"a\",\"hw\":\"rev-b\"}"), 0);
  cr_assert_eq(fl_h_enroll_labeled(&g_coord, g_b, NB, "{\"site\":\"b\"}"), 0);
  for (int i = 0; i < NA; i++) {
    size_t n;
    const char *const *c = conds_a(i, &n);
    cr_assert_str_eq(checkin(&g_a[i], model_id, c, n), i < 8 ? "selection_pending" : "not_eligible",
                     "device a%d", i);
  }
  for (int i = 0; i < NB; i++)
    cr_assert_str_eq(checkin(&g_b[i], model_id, CHARGING, 1), "not_eligible", "device b%d", i);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM candidates"), 8);
  /* a8 starts charging: it is a candidate from this check-in on. */
  cr_assert_str_eq(checkin(&g_a[8], model_id, BOTH, 2), "selection_pending");
  /* The draw: 10 slots, 9 eligible candidates, every one assigned, nobody else. */
  for (int t = 0; t < 100 && fl_h_db_int(g_db,
                                         "SELECT count(*) FROM rounds WHERE drawn_at"
                                         " IS NOT NULL") == 0;
       t++)
    sleep_ms(50);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 9);
  for (int i = 0; i < NA; i++)
    cr_assert_eq(assigned(g_a[i].id), i <= 8, "device a%d assigned %lld", i,
                 (long long)assigned(g_a[i].id));
  for (int i = 0; i < NB; i++)
    cr_assert_eq(assigned(g_b[i].id), 0, "device b%d assigned", i);
  /* After the draw, the remaining slot goes to the first eligible device, not to b0. */
  cr_assert_str_eq(checkin(&g_b[0], model_id, BOTH, 2), "not_eligible");
  cr_assert_str_eq(checkin(&g_a[10], model_id, NULL, 0), "not_eligible");
  cr_assert_str_eq(checkin(&g_a[0], model_id, CHARGING, 1), "task");
  cr_assert_str_eq(checkin(&g_a[10], model_id, CHARGING, 1), "task");
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM assignments a JOIN devices d"
                           " USING (device_id) WHERE d.labels->>'site' <> 'a'"),
               0);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 10);
}

Test(cohort, first_come_and_plan, .init = setup, .fini = teardown, .timeout = 300) {
  uint64_t model_id, round_id;
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0);
  /* Refused cohorts: nothing is created. */
  const char *bad[] = {
      "{\"cohort\":[\"charging\"]}",
      "{\"cohort\":{\"labels\":{\"site\":3}}}",
      "{\"cohort\":{\"labels\":{\"site\":\"a\"},\"conditions\":\"charging\"}}",
      "{\"cohort\":{\"conditions\":[\"\"]}}",
      "{\"cohort\":{\"condition\":[\"charging\"]}}",
  };
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "cohort2", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"over_selection\":1.0,"
                                   "\"cohort\":{\"labels\":{\"site\":\"a\"},"
                                   "\"conditions\":[\"charging\",\"idle\"]}}",
                                   &model_id, &round_id),
               0);
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char path[64];
    long st;
    snprintf(path, sizeof path, "/admin/v1/models/%llu/plans", (unsigned long long)model_id);
    json_t *j = fl_h_admin(&g_coord, "POST", path, bad[i], &st);
    cr_assert_eq(st, 400, "%s -> %ld", bad[i], st);
    cr_assert_str_eq(json_string_value(json_object_get(j, "error")), "bad_plan", "%s", bad[i]);
    json_decref(j);
  }
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM plans"), 1);
  json_t *plan = fl_h_admin_ok(&g_coord, "GET", "/admin/v1/plans/1", NULL);
  cr_assert_not_null(plan);
  json_t *co = json_object_get(json_object_get(plan, "config"), "cohort");
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(co, "labels"), "site")), "a");
  cr_assert_eq(json_array_size(json_object_get(co, "conditions")), 2);
  json_decref(plan);

  cr_assert_eq(fl_h_enroll_labeled(&g_coord, g_a, 3, "{\"site\":\"a\"}"), 0);
  cr_assert_eq(fl_h_enroll_labeled(&g_coord, g_b, 1, "{\"site\":\"b\"}"), 0);
  const char *const all[] = {"idle", "charging", "unmetered"};
  cr_assert_str_eq(checkin(&g_a[0], model_id, CHARGING, 1), "not_eligible");
  cr_assert_str_eq(checkin(&g_b[0], model_id, all, 3), "not_eligible");
  cr_assert_str_eq(checkin(&g_a[0], model_id, all, 3), "task");
  cr_assert_str_eq(checkin(&g_a[1], model_id, all + 0, 2), "task");
  cr_assert_str_eq(checkin(&g_a[2], model_id, all, 3), "round_full");
  /* An assigned device keeps its task whatever it reports now. */
  cr_assert_str_eq(checkin(&g_a[0], model_id, NULL, 0), "task");
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 2);

  /* Conditions the coordinator refuses: too long, too many, not UTF-8. */
  char longc[80];
  memset(longc, 'x', sizeof longc - 1);
  longc[sizeof longc - 1] = '\0';
  const char *const toolong[] = {longc};
  const char *many[40];
  for (int i = 0; i < 40; i++)
    many[i] = "charging";
  const char *const notutf8[] = {"\xff\xfe"};
  const struct {
    const char *const *c;
    size_t n;
  } refused[] = {{toolong, 1}, {many, 40}, {notutf8, 1}};
  for (size_t i = 0; i < 3; i++) {
    Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
    uint8_t body[4096];
    fl_h_resp r;
    ci.model_id = model_id;
    ci.conditions = (char **)refused[i].c;
    ci.n_conditions = refused[i].n;
    size_t n = fl__v1__check_in_request__pack(&ci, body);
    cr_assert_eq(fl_h_device_post(&g_coord, &g_a[2], "/v1/checkin", body, n, NULL, &r), 0);
    cr_assert_eq(r.status, 400, "case %zu: %ld", i, r.status);
    cr_assert_str_eq(fl_h_error_reason(&r), "malformed_request");
    fl_h_resp_free(&r);
  }
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM assignments"), 2);
}
