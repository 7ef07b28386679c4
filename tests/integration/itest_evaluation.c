/*
 * Federated evaluation of every version a plan produces (docs/API.md, "Federated evaluation")
 * through the real coordinator.
 *
 * share_aggregate: a one-round plan with {"share": 0.5, "max_weight": 100, "by_label": "site"}.
 * Its version 2 is handed as an EvalTask (campaign_id set, gate_id 0) to exactly the devices of
 * the documented hash sample; they report loss and accuracy with sample counts on both sides
 * of the cap (one reports twice: its newest report counts). The version's metrics in the
 * admin API equal the capped weighted mean, the HC1 standard error and the t-interval computed
 * here from the reports, overall and per site. Unsampled, unknown-campaign and mixed reports
 * are refused and change nothing.
 * count_and_supersede: {"count": 3} hands the task to the first 3 eligible devices (the cohort's
 * conditions hold for the evaluation too), then the campaign is full; the plan's next version
 * opens a new campaign and closes the old one.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "registry/evaluation.h"
#include "registry/rollouts.h"

#define NDEV 16
#define NPARAMS 43 /* FL_H_SMALL_SPEC */

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

/* Devices 0..n-1 check in, train on the round's base and upload; returns the round's id. */
static void train_round(uint64_t model_id, int first, int n, const char *const *conds,
                        size_t n_conds) {
  for (int i = first; i < first + n; i++) {
    Fl__V1__CheckInResponse *r;
    cr_assert_eq(fl_h_checkin_cond(&g_coord, &g_dev[i], model_id, conds, n_conds, &r), 0);
    cr_assert_eq(r->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK, "device %d", i);
    Fl__V1__ModelVersion *base;
    cr_assert_eq(fl_h_download(&g_coord, &g_dev[i], model_id, r->task->base_version, &base), 0);
    float delta[NPARAMS];
    for (int k = 0; k < NPARAMS; k++)
      delta[k] = 0.01f * (float)(k % 5);
    fl_h_resp up;
    cr_assert_eq(fl_h_upload(&g_coord, &g_dev[i], base, r->task->round_id, delta, 20, NULL, &up),
                 0);
    cr_assert_eq(up.status, 200, "upload %d: %s", i, fl_h_error_reason(&up));
    fl_h_resp_free(&up);
    fl__v1__model_version__free_unpacked(base, NULL);
    fl__v1__check_in_response__free_unpacked(r, NULL);
  }
}

static void wait_versions(int64_t n) {
  for (int t = 0; t < 200 && fl_h_db_int(g_db, "SELECT count(*) FROM versions") < n; t++) {
    struct timespec ts = {0, 50000000L};
    nanosleep(&ts, NULL);
  }
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM versions"), n);
}

/* A check-in's evaluation task: its campaign id (0: none) and version. */
static uint64_t eval_of(int i, uint64_t model_id, const char *const *conds, size_t n,
                        uint64_t *version) {
  Fl__V1__CheckInResponse *r;
  cr_assert_eq(fl_h_checkin_cond(&g_coord, &g_dev[i], model_id, conds, n, &r), 0);
  uint64_t id = 0;
  if (r->eval != NULL) {
    cr_assert_eq(r->eval->gate_id, 0);
    cr_assert_eq(r->eval->sha256.len, FL_SHA256_LEN);
    id = r->eval->campaign_id;
    *version = r->eval->version;
  }
  fl__v1__check_in_response__free_unpacked(r, NULL);
  return id;
}

static long report(int i, uint64_t model_id, uint64_t version, uint64_t gate, uint64_t campaign,
                   uint64_t samples, double loss, double acc, char why[64]) {
  Fl__V1__EvalReport e = FL__V1__EVAL_REPORT__INIT;
  Fl__V1__Metric m[2] = {FL__V1__METRIC__INIT, FL__V1__METRIC__INIT}, *mp[2] = {&m[0], &m[1]};
  m[0].name = "loss";
  m[0].value = loss;
  m[1].name = "accuracy";
  m[1].value = acc;
  e.model_id = model_id;
  e.version = version;
  e.gate_id = gate;
  e.campaign_id = campaign;
  e.sample_count = samples;
  e.metrics = mp;
  e.n_metrics = 2;
  uint8_t buf[256];
  size_t n = fl__v1__eval_report__pack(&e, buf);
  fl_h_resp r;
  cr_assert_eq(fl_h_device_post(&g_coord, &g_dev[i], "/v1/evaluations", buf, n, NULL, &r), 0);
  long st = r.status;
  snprintf(why, 64, "%s", fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  return st;
}

/* The estimator of docs/API.md, written out again: capped weights, weighted mean, HC1
 * variance over devices, Student's t at 0.975 (table values for the few df used here). */
typedef struct expect {
  double mean, se, lo, hi;
} expect;

static double t975(int df) {
  static const double t[] = {NAN,       12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818,
                             2.4469119, 2.3646243,  2.3060041, 2.2621572, 2.2281389};
  cr_assert(df >= 1 && df <= 10);
  return t[df];
}

static expect expected(const double *x, const double *n, int k, double cap) {
  double W = 0, S = 0;
  for (int i = 0; i < k; i++) {
    double w = n[i] < cap ? n[i] : cap;
    W += w;
    S += w * x[i];
  }
  expect e = {S / W, NAN, NAN, NAN};
  if (k < 2)
    return e;
  double v = 0;
  for (int i = 0; i < k; i++) {
    double w = n[i] < cap ? n[i] : cap;
    v += w * w * (x[i] - e.mean) * (x[i] - e.mean);
  }
  e.se = sqrt(v / (W * W) * k / (k - 1));
  e.lo = e.mean - t975(k - 1) * e.se;
  e.hi = e.mean + t975(k - 1) * e.se;
  return e;
}

static void check_stat(const json_t *st, expect e, int k, const char *what) {
  cr_assert_not_null(st, "%s missing", what);
  cr_assert_eq(json_integer_value(json_object_get(st, "reports")), k, "%s reports", what);
  cr_assert_float_eq(json_number_value(json_object_get(st, "mean")), e.mean, 1e-9, "%s mean", what);
  if (k < 2) {
    cr_assert(json_is_null(json_object_get(st, "ci95_low")), "%s: no interval from one", what);
    return;
  }
  cr_assert_float_eq(json_number_value(json_object_get(st, "se")), e.se, 1e-9, "%s se", what);
  cr_assert_float_eq(json_number_value(json_object_get(st, "ci95_low")), e.lo, 1e-6, "%s lo", what);
  cr_assert_float_eq(json_number_value(json_object_get(st, "ci95_high")), e.hi, 1e-6, "%s hi",
                     what);
}

Test(evaluation, share_aggregate, .init = setup, .fini = teardown, .timeout = 300) {
  const char *extra[] = {"--tick=50", NULL};
  uint64_t model_id, round_id, version = 0;
  char why[64];
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "evalshare", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"over_selection\":1.0,\"rounds\":1,"
                                   "\"evaluation\":{\"share\":0.5,\"max_weight\":100,"
                                   "\"by_label\":\"site\"}}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_labeled(&g_coord, g_dev, NDEV / 2, "{\"site\":\"a\"}"), 0);
  cr_assert_eq(fl_h_enroll_labeled(&g_coord, g_dev + NDEV / 2, NDEV / 2, "{\"site\":\"b\"}"), 0);
  train_round(model_id, 0, 2, NULL, 0);
  wait_versions(2);
  uint64_t cid = (uint64_t)fl_h_db_int(g_db, "SELECT campaign_id FROM eval_campaigns");
  cr_assert_gt(cid, 0);

  /* The sample is the documented hash (registry/evaluation.h), devices 0..15. */
  int sampled[NDEV], ns = 0;
  for (int i = 0; i < NDEV; i++) {
    uint64_t got = eval_of(i, model_id, NULL, 0, &version);
    bool member = fl__rollout_member(FL_EVAL_DOMAIN, g_dev[i].id, cid, 50.0);
    cr_assert_eq(got != 0, member, "device %d: task %llu, member %d", i, (unsigned long long)got,
                 member);
    if (member) {
      cr_assert_eq(got, cid);
      cr_assert_eq(version, 2);
      sampled[ns++] = i;
    }
  }
  cr_assert_geq(ns, 3, "the sample of 16 at 50%% is %d devices", ns);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM eval_tasks"), ns);
  /* Reports: sample counts on both sides of the cap of 100. */
  static const double counts[] = {10, 50, 400, 100, 1000, 30, 250, 75, 5, 60, 700, 20, 90, 300};
  double x[NDEV], ax[NDEV], n[NDEV];
  int site_a[NDEV], na = 0;
  for (int k = 0; k < ns; k++) {
    int i = sampled[k];
    n[k] = counts[k % 14];
    x[k] = 0.2 + 0.05 * (double)((i * 7) % 11);
    ax[k] = 0.5 + 0.03 * (double)((i * 5) % 13);
    if (k == 0) /* a first report that the second one replaces */
      cr_assert_eq(report(i, model_id, 2, 0, cid, 999, 9.0, 0.0, why), 200, "%s", why);
    cr_assert_eq(report(i, model_id, 2, 0, cid, (uint64_t)n[k], x[k], ax[k], why), 200, "%s", why);
    if (i < NDEV / 2)
      site_a[na++] = k;
  }
  /* Refusals: unsampled device, unknown campaign, wrong version, gate and campaign at once. */
  int outsider = -1;
  for (int i = 0; i < NDEV && outsider < 0; i++)
    if (!fl__rollout_member(FL_EVAL_DOMAIN, g_dev[i].id, cid, 50.0))
      outsider = i;
  cr_assert_geq(outsider, 0);
  int64_t before = fl_h_db_int(g_db, "SELECT count(*) FROM evaluations");
  cr_assert_eq(report(outsider, model_id, 2, 0, cid, 10, 0.1, 0.9, why), 403);
  cr_assert_str_eq(why, "not_sampled");
  cr_assert_eq(report(sampled[0], model_id, 2, 0, cid + 7, 10, 0.1, 0.9, why), 404);
  cr_assert_str_eq(why, "unknown_campaign");
  cr_assert_eq(report(sampled[0], model_id, 1, 0, cid, 10, 0.1, 0.9, why), 404);
  cr_assert_eq(report(sampled[0], model_id, 2, 1, cid, 10, 0.1, 0.9, why), 400);
  cr_assert_str_eq(why, "malformed_request");
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM evaluations"), before);

  char path[96];
  snprintf(path, sizeof path, "/admin/v1/models/%llu/versions/2", (unsigned long long)model_id);
  json_t *v = fl_h_admin_ok(&g_coord, "GET", path, NULL);
  cr_assert_not_null(v);
  json_t *ev = json_array_get(json_object_get(v, "evaluation"), 0);
  cr_assert_eq(json_integer_value(json_object_get(ev, "sampled")), ns);
  json_t *res = json_object_get(ev, "result");
  cr_assert_eq(json_integer_value(json_object_get(res, "reports")), ns);
  json_t *ms = json_object_get(res, "metrics");
  check_stat(json_object_get(ms, "loss"), expected(x, n, ns, 100), ns, "loss");
  check_stat(json_object_get(ms, "accuracy"), expected(ax, n, ns, 100), ns, "accuracy");
  /* Per site: the same estimator over each site's reports. */
  double xa[NDEV], nna[NDEV], xb[NDEV], nnb[NDEV];
  int kb = 0;
  for (int k = 0, j = 0; k < ns; k++) {
    if (j < na && site_a[j] == k) {
      xa[j] = x[k];
      nna[j++] = n[k];
    } else {
      xb[kb] = x[k];
      nnb[kb++] = n[k];
    }
  }
  json_t *vals = json_object_get(json_object_get(res, "by_label"), "values");
  cr_assert_str_eq(json_string_value(json_object_get(json_object_get(res, "by_label"), "key")),
                   "site");
  if (na > 0)
    check_stat(json_object_get(json_object_get(json_object_get(vals, "a"), "metrics"), "loss"),
               expected(xa, nna, na, 100), na, "site a loss");
  if (kb > 0)
    check_stat(json_object_get(json_object_get(json_object_get(vals, "b"), "metrics"), "loss"),
               expected(xb, nnb, kb, 100), kb, "site b loss");
  json_decref(v);
  /* A device that reported is not handed the task again. */
  cr_assert_eq(eval_of(sampled[0], model_id, NULL, 0, &version), 0);
}

Test(evaluation, count_and_supersede, .init = setup, .fini = teardown, .timeout = 300) {
  const char *extra[] = {"--tick=50", NULL};
  const char *const charging[] = {"charging"};
  uint64_t model_id, round_id, version = 0;
  char why[64];
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0);
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "evalcount", FL_H_SMALL_SPEC,
                                   "{\"participants\":2,\"over_selection\":5.0,\"rounds\":2,"
                                   "\"cohort\":{\"conditions\":[\"charging\"]},"
                                   "\"evaluation\":{\"count\":3}}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, g_dev, 10), 0);
  train_round(model_id, 0, 2, charging, 1);
  wait_versions(2);
  /* Devices 2..9; 2 and 3 without the cohort's condition get no evaluation either. */
  int handed = 0;
  cr_assert_eq(eval_of(2, model_id, NULL, 0, &version), 0);
  cr_assert_eq(eval_of(3, model_id, NULL, 0, &version), 0);
  for (int i = 4; i < 10; i++) {
    uint64_t got = eval_of(i, model_id, charging, 1, &version);
    cr_assert_eq(got != 0, handed < 3, "device %d", i);
    handed += got != 0;
  }
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM eval_tasks"), 3);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM eval_campaigns WHERE state = 'full'"), 1);
  /* A handed device that has not reported yet is handed the task again (a lost report). */
  cr_assert_neq(eval_of(4, model_id, charging, 1, &version), 0);
  cr_assert_eq(report(4, model_id, 2, 0, 1, 40, 0.5, 0.7, why), 200, "%s", why);
  /* The second round's version opens campaign 2 and closes campaign 1. */
  train_round(model_id, 0, 2, charging, 1);
  wait_versions(3);
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM eval_campaigns"
                           " WHERE campaign_id = 1 AND state = 'closed'"),
               1);
  cr_assert_eq(eval_of(9, model_id, charging, 1, &version), 2);
  cr_assert_eq(version, 3);
  /* Reports of the closed campaign from its sample still count for version 2. */
  cr_assert_eq(report(5, model_id, 2, 0, 1, 60, 0.3, 0.8, why), 200, "%s", why);
  double x[2] = {0.5, 0.3}, n[2] = {40, 60};
  char path[96];
  snprintf(path, sizeof path, "/admin/v1/models/%llu/versions/2", (unsigned long long)model_id);
  json_t *v = fl_h_admin_ok(&g_coord, "GET", path, NULL);
  json_t *res = json_object_get(json_array_get(json_object_get(v, "evaluation"), 0), "result");
  check_stat(json_object_get(json_object_get(res, "metrics"), "loss"), expected(x, n, 2, 1000), 2,
             "loss");
  json_decref(v);
}
