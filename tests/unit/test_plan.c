/* Training plan parsing (server/plan.c): defaults, validation, the stored round trip. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "rounds/plan.h"
#include "rounds/rounds.h"

static int parse(const char *text, fl_plan *p, char msg[160]) {
  json_t *j = json_loads(text, 0, NULL);
  cr_assert_not_null(j, "bad test JSON: %s", text);
  int rc = fl__plan_from_json(p, j, msg);
  json_decref(j);
  return rc;
}

Test(plan, defaults_and_over_selection) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":10}", &p, msg), 0);
  cr_assert_eq(p.min_participants, 10);
  cr_assert_eq(p.encoding, 1);
  cr_assert_eq(p.opt.kind, FL_OPT_FEDAVG);
  cr_assert_eq(fl__plan_max_assign(&p), 13);
  cr_assert_eq(parse("{\"participants\":3,\"over_selection\":1}", &p, msg), 0);
  cr_assert_eq(fl__plan_max_assign(&p), 3);
}

Test(plan, refuses_bad_fields) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"participant\":10}", &p, msg), -1);
  cr_assert(strstr(msg, "unknown field") != NULL);
  cr_assert_eq(parse("{\"participants\":2,\"min_participants\":3}", &p, msg), -1);
  cr_assert_eq(parse("{\"participants\":2.5}", &p, msg), -1);
  cr_assert_eq(parse("{\"encoding\":\"bf16\"}", &p, msg), -1);
  cr_assert_eq(parse("{\"server_optimizer\":\"sgd\"}", &p, msg), -1);
  cr_assert_eq(parse("{\"over_selection\":0.5}", &p, msg), -1);
  cr_assert_eq(parse("{\"noise_multiplier\":1,\"clip_norm\":0}", &p, msg), -1);
  cr_assert_eq(parse("[1]", &p, msg), -1);
}

Test(plan, optimizer_defaults_then_overrides) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"server_optimizer\":\"fedyogi\"}", &p, msg), 0);
  cr_assert_float_eq(p.opt.lr, 0.01, 1e-12);
  cr_assert_eq(parse("{\"server_optimizer\":\"fedadam\",\"server_lr\":0.1,\"tau\":1e-4}", &p,
                     msg),
               0);
  cr_assert_float_eq(p.opt.lr, 0.1, 1e-12);
  cr_assert_float_eq(p.opt.tau, 1e-4, 1e-15);
}

Test(plan, stored_form_round_trips) {
  fl_plan p, q;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":7,\"min_participants\":5,\"encoding\":\"int8\","
                     "\"server_optimizer\":\"fedavgm\",\"rounds\":4,\"clip_norm\":2.5}",
                     &p, msg),
               0);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_not_null(j);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert_eq(memcmp(&p, &q, sizeof p), 0);
}

/* Fair selection fields (docs/API.md 2.1): defaults, bounds, the early-draw pool and the pace
 * interval T = max(W, N W / (1.5 P)). */
Test(plan, selection_fields_and_pace) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":10}", &p, msg), 0);
  cr_assert_eq(p.selection_window_s, 0);
  cr_assert_eq(p.selection_pool, 3);
  cr_assert_eq(fl__plan_pool(&p), 39); /* ceil(13 x 3) */
  cr_assert_eq(parse("{\"selection_window_s\":-1}", &p, msg), -1);
  cr_assert(strstr(msg, "selection_window_s") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"selection_window_s\":\"2\"}", &p, msg), -1);
  cr_assert_eq(parse("{\"selection_pool\":0.5}", &p, msg), -1);
  cr_assert(strstr(msg, "selection_pool") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"participants\":100,\"over_selection\":1.3,\"selection_window_s\":5,"
                     "\"selection_pool\":3}",
                     &p, msg),
               0);
  cr_assert_eq(fl__plan_pool(&p), 390);
  /* 10 000 devices: T = 10000 x 5000 / (1.5 x 390) = 85 470 ms; a small fleet: T = W. */
  cr_assert_eq(fl__pace_interval_ms(&p, 10000, 10000), 85470);
  cr_assert_eq(fl__pace_interval_ms(&p, 10000, 50), 5000);
  /* Without a window the operator's --checkin-interval is W. */
  p.selection_window_s = 0;
  cr_assert_eq(fl__pace_interval_ms(&p, 10000, 100), 10000);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_not_null(j);
  cr_assert_float_eq(json_real_value(json_object_get(j, "selection_pool")), 3.0, 1e-12);
  json_decref(j);
}

Test(plan, aggregator_fields) {
  fl_plan p, q;
  char msg[160];
  cr_assert_eq(parse("{}", &p, msg), 0);
  cr_assert_eq(p.agg.rule, FL_AGGR_FEDAVG, "fedavg by default");
  cr_assert_eq(parse("{\"participants\":9,\"aggregator\":\"bulyan\",\"byzantine\":1}", &p, msg), 0,
               "%s", msg);
  cr_assert_eq(p.agg.rule, FL_AGGR_BULYAN);
  cr_assert_eq(p.agg.byzantine, 1);
  cr_assert_eq(parse("{\"aggregator\":\"trimmed_mean\",\"trim_fraction\":0.2}", &p, msg), 0);
  cr_assert_float_eq(p.agg.trim_fraction, 0.2, 1e-15);
  cr_assert_eq(parse("{\"participants\":6,\"aggregator\":\"multi_krum\",\"byzantine\":1,"
                     "\"krum_select\":3}",
                     &p, msg),
               0, "%s", msg);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_not_null(j);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert_eq(memcmp(&p, &q, sizeof p), 0, "the stored form keeps the aggregator");
}

Test(plan, refuses_bad_aggregator_parameters) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"aggregator\":\"mean\"}", &p, msg), -1);
  cr_assert(strstr(msg, "aggregator must be") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"aggregator\":7}", &p, msg), -1);
  cr_assert_eq(parse("{\"aggregator\":\"trimmed_mean\",\"trim_fraction\":0.5}", &p, msg), -1);
  cr_assert(strstr(msg, "trim_fraction") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"trim_fraction\":-0.1}", &p, msg), -1);
  /* krum with f = 2 needs 2f + 3 = 7 updates; a round may close with min_participants = 6. */
  cr_assert_eq(parse("{\"participants\":10,\"min_participants\":6,\"aggregator\":\"krum\","
                     "\"byzantine\":2}",
                     &p, msg),
               -1);
  cr_assert(strstr(msg, "needs at least 7") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"participants\":10,\"min_participants\":7,\"aggregator\":\"krum\","
                     "\"byzantine\":2}",
                     &p, msg),
               0, "%s", msg);
  cr_assert_eq(parse("{\"participants\":10,\"aggregator\":\"bulyan\",\"byzantine\":2}", &p, msg),
               -1, "bulyan with f = 2 needs 11");
  cr_assert_eq(parse("{\"participants\":5,\"aggregator\":\"multi_krum\"}", &p, msg), -1,
               "multi_krum needs krum_select");
  cr_assert_eq(
      parse("{\"participants\":5,\"aggregator\":\"multi_krum\",\"krum_select\":6}", &p, msg), -1,
      "more selected than participants");
  cr_assert_eq(parse("{\"aggregator\":\"median\",\"noise_multiplier\":1}", &p, msg), -1);
  cr_assert(strstr(msg, "fedavg aggregator only") != NULL, "%s", msg);
}

/* Differential privacy fields (docs/PRIVACY.md): defaults, ranges, the checks against the rest
 * of the plan, and the stored round trip. */
Test(plan, privacy_fields) {
  fl_plan p, back;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":40}", &p, msg), 0);
  cr_expect_eq(p.target_delta, 1e-5);
  cr_expect_eq(p.max_epsilon, 0);
  cr_expect_eq(p.clip_target_quantile, 0);
  cr_expect_eq(p.clip_learning_rate, 0.2);
  cr_expect_eq(fl__plan_count_stddev(&p), 2.0); /* participants / 20 */
  cr_expect(!FL_PLAN_DP(&p));
  cr_assert_eq(parse("{\"participants\":40,\"noise_multiplier\":1.1,\"target_delta\":1e-6,"
                     "\"max_epsilon\":8,\"clip_target_quantile\":0.5,\"clip_learning_rate\":0.1,"
                     "\"clip_count_stddev\":3}",
                     &p, msg),
               0, "%s", msg);
  cr_expect(FL_PLAN_DP(&p));
  json_t *j = fl__plan_to_json(&p);
  cr_assert_eq(fl__plan_from_json(&back, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_expect_eq(back.target_delta, 1e-6);
  cr_expect_eq(back.max_epsilon, 8);
  cr_expect_eq(back.clip_target_quantile, 0.5);
  cr_expect_eq(back.clip_learning_rate, 0.1);
  cr_expect_eq(back.clip_count_stddev, 3);

  cr_expect_eq(parse("{\"target_delta\":0}", &p, msg), -1);
  cr_expect_eq(parse("{\"target_delta\":0.5}", &p, msg), -1);
  cr_expect_eq(parse("{\"clip_target_quantile\":1.5}", &p, msg), -1);
  cr_expect_eq(parse("{\"max_epsilon\":-1,\"noise_multiplier\":1}", &p, msg), -1);
  cr_expect_eq(parse("{\"max_epsilon\":\"3\",\"noise_multiplier\":1}", &p, msg), -1);
  /* A budget without noise means nothing. */
  cr_expect_eq(parse("{\"max_epsilon\":3}", &p, msg), -1);
  cr_expect(strstr(msg, "noise_multiplier") != NULL, "%s", msg);
  /* Adaptive clipping needs an initial clip, the fedavg rule, and sigma_b > z / 2. */
  cr_expect_eq(parse("{\"clip_target_quantile\":0.5,\"clip_norm\":0}", &p, msg), -1);
  cr_expect_eq(parse("{\"clip_target_quantile\":0.5,\"aggregator\":\"median\","
                     "\"participants\":5}",
                     &p, msg),
               -1);
  cr_expect_eq(parse("{\"participants\":10,\"noise_multiplier\":1.2,"
                     "\"clip_target_quantile\":0.5}",
                     &p, msg),
               -1); /* default sigma_b 0.5 <= 0.6 */
  cr_expect(strstr(msg, "clip_count_stddev") != NULL, "%s", msg);
  cr_expect_eq(parse("{\"participants\":10,\"noise_multiplier\":1.2,"
                     "\"clip_target_quantile\":0.5,\"clip_count_stddev\":0.7}",
                     &p, msg),
               0, "%s", msg);
  /* Adaptive clipping without noise is allowed (it adapts on the exact fraction). */
  cr_expect_eq(parse("{\"clip_target_quantile\":0.5}", &p, msg), 0, "%s", msg);
}

/* "drift" and "retrain" (server/drift/policy.c, docs/DRIFT.md). */
Test(plan, drift_policy_defaults_and_round_trip) {
  fl_plan p, q;
  char msg[160];
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\",\"psi_threshold\":0.3},"
                     "\"retrain\":{\"on_drift\":true,\"rounds\":2}}",
                     &p, msg),
               0, "%s", msg);
  cr_assert(p.drift.on && p.drift.retrain);
  cr_assert_str_eq(p.drift.label, "site");
  cr_assert_float_eq(p.drift.psi_threshold, 0.3, 0);
  cr_assert_float_eq(p.drift.shift_threshold, 1.0, 0);
  cr_assert_eq(p.drift.min_devices, 5);
  cr_assert_eq(p.drift.retrain_rounds, 2);
  cr_assert_eq(p.drift.max_concurrent, 1);
  cr_assert_eq(p.drift.warmup_rounds, 0, "every version is tested by default");
  json_t *j = fl__plan_to_json(&p);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert(memcmp(&p.drift, &q.drift, sizeof p.drift) == 0, "the stored form parses back");
  cr_assert_eq(parse("{\"cohort\":{\"labels\":{\"site\":\"plant-3\"}}}", &p, msg), 0, "%s", msg);
  /* A retraining plan's cohort is the training cohort (rounds/cohort.c), not a drift field. */
  cr_assert_eq(p.cohort.n_labels, 1);
  cr_assert_str_eq(p.cohort.keys[0], "site");
  cr_assert_str_eq(p.cohort.values[0], "plant-3");
  cr_assert_not(p.drift.on);
}

/* retrain.rollout: the retrained version's staged, gated rollout (server/drift/handoff.c). */
Test(plan, retrain_rollout_defaults_custom_and_off) {
  fl_plan p, q;
  char msg[160];
  cr_assert_eq(
      parse("{\"drift\":{\"cohort_label\":\"site\"},\"retrain\":{\"on_drift\":true}}", &p, msg), 0,
      "%s", msg);
  cr_assert(p.drift.rollout, "a retraining policy hands its version to a rollout by default");
  cr_assert_str_eq(p.drift.channel, "stable");
  cr_assert_float_eq(p.drift.rollout_percent, 25, 0);
  cr_assert_str_eq(p.drift.gate,
                   "{\"auto_promote\":false,\"max_delta\":0,\"metric\":\"loss\","
                   "\"min_reports\":10,\"sample_pct\":25}");
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\"},\"retrain\":{\"on_drift\":true,"
                     "\"rollout\":{\"channel\":\"canary\",\"percent\":10,"
                     "\"gate\":{\"metric\":\"recall\",\"min\":0.5,\"min_reports\":3}}}}",
                     &p, msg),
               0, "%s", msg);
  cr_assert_str_eq(p.drift.channel, "canary");
  cr_assert_float_eq(p.drift.rollout_percent, 10, 0);
  cr_assert(strstr(p.drift.gate, "\"metric\":\"recall\"") != NULL, "%s", p.drift.gate);
  cr_assert(strstr(p.drift.gate, "\"sample_pct\":10") != NULL, "gate defaults: %s", p.drift.gate);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert(memcmp(&p.drift, &q.drift, sizeof p.drift) == 0, "the stored form parses back");
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\"},\"retrain\":{\"on_drift\":true,"
                     "\"rollout\":false}}",
                     &p, msg),
               0, "%s", msg);
  cr_assert_not(p.drift.rollout);
  j = fl__plan_to_json(&p);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert_not(q.drift.rollout, "off survives the stored form");
  static const char *const bad[] = {"{\"percent\":0}",
                                    "{\"percent\":101}",
                                    "{\"channel\":\"\"}",
                                    "{\"gate\":{\"metric\":\"loss\"}}",
                                    "{\"gate\":{\"metric\":\"loss\",\"min\":1,\"sample_pct\":0}}",
                                    "{\"stage\":2}",
                                    "true"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char plan[256];
    snprintf(plan, sizeof plan,
             "{\"drift\":{\"cohort_label\":\"site\"},\"retrain\":{\"on_drift\":true,"
             "\"rollout\":%s}}",
             bad[i]);
    cr_expect_eq(parse(plan, &p, msg), -1, "%s is refused", bad[i]);
    cr_expect(strstr(msg, "retrain.rollout") != NULL, "%s: %s", bad[i], msg);
  }
  /* A cohort label is as long as a training cohort's label may be (rounds/cohort.h). */
  char plan[256], label[FL_COHORT_NAME_MAX + 1];
  memset(label, 'k', FL_COHORT_NAME_MAX);
  label[FL_COHORT_NAME_MAX] = '\0';
  snprintf(plan, sizeof plan, "{\"drift\":{\"cohort_label\":\"%s\"}}", label);
  cr_assert_eq(parse(plan, &p, msg), -1, "a %d-byte label is refused", FL_COHORT_NAME_MAX);
  label[FL_COHORT_NAME_MAX - 1] = '\0';
  snprintf(plan, sizeof plan, "{\"drift\":{\"cohort_label\":\"%s\"}}", label);
  cr_assert_eq(parse(plan, &p, msg), 0, "%s", msg);
}

Test(plan, drift_policy_refuses_bad_objects) {
  fl_plan p;
  char msg[160];
  cr_assert_eq(parse("{\"drift\":{}}", &p, msg), -1);
  cr_assert(strstr(msg, "cohort_label") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\",\"psi\":1}}", &p, msg), -1);
  cr_assert(strstr(msg, "unknown field") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\",\"min_devices\":0}}", &p, msg), -1);
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\",\"min_devices\":2.5}}", &p, msg), -1);
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\",\"warmup_rounds\":-1}}", &p, msg), -1);
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"site\",\"warmup_rounds\":10}}", &p, msg), 0,
               "%s", msg);
  cr_assert_eq(p.drift.warmup_rounds, 10);
  cr_assert_eq(parse("{\"retrain\":{\"on_drift\":true}}", &p, msg), -1);
  cr_assert(strstr(msg, "needs a drift") != NULL, "%s", msg);
  cr_assert_eq(parse("{\"drift\":{\"cohort_label\":\"s\"},\"retrain\":{\"on_drift\":1}}", &p, msg),
               -1);
  cr_assert_eq(parse("{\"cohort\":{\"labels\":{\"a\":3}}}", &p, msg), -1);
  cr_assert_eq(parse("{\"cohort\":\"site\"}", &p, msg), -1);
}

Test(plan, secure_aggregation_fields) {
  fl_plan p, q;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":20,\"min_participants\":12,"
                     "\"secure_aggregation\":{\"threshold\":6,\"neighbors\":10}}",
                     &p, msg),
               0, "%s", msg);
  cr_assert(FL_PLAN_SECAGG(&p));
  cr_assert_eq(p.secagg.threshold, 6);
  cr_assert_eq(p.secagg.neighbors, 10);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_eq(fl__plan_from_json(&q, j, msg), 0, "%s", msg);
  json_decref(j);
  cr_assert_eq(q.secagg.threshold, 6);
  cr_assert_eq(q.secagg.neighbors, 10);
  cr_assert_eq(parse("{\"participants\":20}", &p, msg), 0);
  cr_assert(!FL_PLAN_SECAGG(&p));
  j = fl__plan_to_json(&p);
  cr_assert_null(json_object_get(j, "secure_aggregation"));
  json_decref(j);
}

Test(plan, secure_aggregation_refusals) {
  static const char *const bad[][2] = {
      {"{\"secure_aggregation\":{\"threshold\":6}}", "secure_aggregation must be"},
      {"{\"secure_aggregation\":{\"threshold\":6,\"neighbors\":10,\"x\":1}}", "must be"},
      {"{\"secure_aggregation\":{\"threshold\":6.5,\"neighbors\":10}}", "must be"},
      {"{\"secure_aggregation\":[6,10]}", "must be"},
      {"{\"secure_aggregation\":{\"threshold\":0,\"neighbors\":10}}", "must be"},
      {"{\"secure_aggregation\":{\"threshold\":8,\"neighbors\":6}}", "threshold <= neighbors"},
      {"{\"secure_aggregation\":{\"threshold\":3,\"neighbors\":6}}", "neighbors / 2"},
      {"{\"noise_multiplier\":1,\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
       "differential privacy"},
      {"{\"local_noise_stddev\":0.1,\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
       "differential privacy"},
      {"{\"clip_target_quantile\":0.5,\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
       "differential privacy"},
      {"{\"participants\":10,\"aggregator\":\"median\","
       "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
       "fedavg"},
      {"{\"clip_norm\":0,\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}", "clip_norm"},
      {"{\"mode\":\"async\",\"buffer_size\":10,"
       "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
       "synchronous rounds"},
      {"{\"participants\":10,\"min_participants\":4,"
       "\"secure_aggregation\":{\"threshold\":4,\"neighbors\":6}}",
       "min_participants > threshold"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fl_plan p;
    char msg[160] = "";
    cr_expect_eq(parse(bad[i][0], &p, msg), -1, "accepted %s", bad[i][0]);
    cr_expect(strstr(msg, bad[i][1]) != NULL, "%s: %s", bad[i][0], msg);
  }
}

static void expect_refused(const char *text, const char *needle) {
  fl_plan p;
  char msg[160] = "";
  cr_expect_eq(parse(text, &p, msg), -1, "accepted: %s", text);
  cr_expect(strstr(msg, needle) != NULL, "%s: message \"%s\" lacks \"%s\"", text, msg, needle);
}

Test(plan, async_fields_defaults_and_round_trip) {
  fl_plan p, back;
  char msg[160];
  cr_assert_eq(parse("{\"participants\":10}", &p, msg), 0);
  cr_expect_eq(p.mode, FL_PLAN_SYNC);
  cr_assert_eq(parse("{\"mode\":\"async\",\"buffer_size\":4,\"max_staleness\":2,"
                     "\"staleness\":\"poly:1\",\"server_lr\":0.5}",
                     &p, msg),
               0, "%s", msg);
  cr_expect_eq(p.mode, FL_PLAN_ASYNC);
  cr_expect_eq(p.buffer_size, 4);
  cr_expect_eq(p.participants, 4, "a buffer is a round of buffer_size updates");
  cr_expect_eq(p.min_participants, 4);
  cr_expect_eq(p.max_staleness, 2);
  cr_expect_eq(p.max_concurrency, 8, "default: 2 x buffer_size");
  cr_expect_eq(fl__plan_max_assign(&p), 8, "tasks per buffer");
  cr_expect_eq(p.staleness.kind, FL_STALE_POLY);
  json_t *j = fl__plan_to_json(&p);
  cr_assert_not_null(j);
  cr_expect_str_eq(json_string_value(json_object_get(j, "mode")), "async");
  cr_expect_str_eq(json_string_value(json_object_get(j, "staleness")), "poly:1");
  cr_assert_eq(fl__plan_from_json(&back, j, msg), 0, "stored form re-parses: %s", msg);
  json_decref(j);
  cr_expect_eq(back.mode, FL_PLAN_ASYNC);
  cr_expect_eq(back.buffer_size, 4);
  cr_expect_eq(back.max_staleness, 2);
  cr_expect_eq(back.max_concurrency, 8);
  cr_expect_eq(back.staleness.exponent, 1.0);
  cr_expect_float_eq(back.opt.lr, 0.5, 1e-12);
  /* buffer_size defaults to participants; the sqrt weighting is the default. */
  cr_assert_eq(parse("{\"mode\":\"async\",\"participants\":3,\"max_concurrency\":3}", &p, msg), 0,
               "%s", msg);
  cr_expect_eq(p.buffer_size, 3);
  cr_expect_eq(p.staleness.kind, FL_STALE_SQRT);
  cr_expect_eq(p.max_staleness, 4);
  /* A sync plan's stored form names its mode and nothing of async. */
  cr_assert_eq(parse("{\"participants\":10}", &p, msg), 0);
  j = fl__plan_to_json(&p);
  cr_expect_str_eq(json_string_value(json_object_get(j, "mode")), "sync");
  cr_expect_null(json_object_get(j, "buffer_size"));
  json_decref(j);
}

Test(plan, async_refuses_bad_combinations) {
  expect_refused("{\"mode\":\"fedbuff\"}", "mode must be");
  expect_refused("{\"buffer_size\":4}", "needs \"mode\": \"async\"");
  expect_refused("{\"mode\":\"sync\",\"max_staleness\":4}", "needs \"mode\": \"async\"");
  expect_refused("{\"staleness\":\"sqrt\"}", "needs \"mode\": \"async\"");
  expect_refused("{\"mode\":\"async\",\"staleness\":\"cubic\"}", "staleness must be");
  expect_refused("{\"mode\":\"async\",\"buffer_size\":0}", "buffer_size must be");
  expect_refused("{\"mode\":\"async\",\"buffer_size\":2.5}", "buffer_size must be");
  expect_refused("{\"mode\":\"async\",\"max_staleness\":-1}", "max_staleness must be");
  expect_refused("{\"mode\":\"async\",\"buffer_size\":4,\"participants\":5}", "buffer_size");
  expect_refused("{\"mode\":\"async\",\"buffer_size\":4,\"min_participants\":2}", "buffer_size");
  expect_refused("{\"mode\":\"async\",\"buffer_size\":4,\"max_concurrency\":3}",
                 "max_concurrency must be at least");
  expect_refused("{\"mode\":\"async\",\"selection_window_s\":5}", "selection_window_s");
  expect_refused("{\"mode\":\"async\",\"noise_multiplier\":1}", "noise_multiplier");
  expect_refused("{\"mode\":\"async\",\"buffer_size\":5,\"aggregator\":\"median\"}",
                 "stored aggregator");
}

/* The stored form of a plan with a cohort and an evaluation policy parses back to the same. */
static void round_trip(const fl_plan *p, fl_plan *back) {
  char msg[160];
  json_t *j = fl__plan_to_json(p);
  cr_assert_not_null(j);
  cr_assert_eq(fl__plan_from_json(back, j, msg), 0, "%s", msg);
  json_decref(j);
}

Test(plan, cohort_and_evaluation_fields) {
  fl_plan p, back;
  char msg[160];
  cr_assert_eq(parse("{\"cohort\":{\"labels\":{\"site\":\"plant-3\",\"hw\":\"b\"},"
                     "\"conditions\":[\"charging\",\"unmetered\"]},"
                     "\"evaluation\":{\"share\":0.1,\"by_label\":\"site\"}}",
                     &p, msg),
               0, "%s", msg);
  cr_expect_eq(p.cohort.n_labels, 2);
  cr_expect_eq(p.cohort.n_conds, 2);
  cr_expect(p.eval.on);
  cr_expect_eq(p.eval.share, 0.1);
  cr_expect_eq(p.eval.max_weight, 1000);
  cr_expect_str_eq(p.eval.by_label, "site");
  round_trip(&p, &back);
  cr_expect_eq(memcmp(&back.cohort, &p.cohort, sizeof p.cohort), 0);
  cr_expect_eq(back.eval.share, 0.1);
  cr_expect_str_eq(back.eval.by_label, "site");
  char *lt = fl__cohort_labels_text(&p.cohort);
  cr_expect_str_eq(lt, "{\"hw\":\"b\",\"site\":\"plant-3\"}");
  free(lt);
  cr_assert_eq(parse("{\"evaluation\":{\"count\":50,\"max_weight\":200}}", &p, msg), 0, "%s", msg);
  cr_expect_eq(p.eval.count, 50);
  cr_expect_eq(p.eval.max_weight, 200);
  cr_expect(fl__cohort_empty(&p.cohort));
  round_trip(&p, &back);
  cr_expect_eq(back.eval.count, 50);
  cr_expect_eq(back.eval.share, 0);
  /* Without either field: no cohort, no evaluation, and the stored form has neither. */
  cr_assert_eq(parse("{}", &p, msg), 0);
  cr_expect(!p.eval.on);
  json_t *j = fl__plan_to_json(&p);
  cr_expect_null(json_object_get(j, "cohort"));
  cr_expect_null(json_object_get(j, "evaluation"));
  json_decref(j);
}

Test(plan, refuses_bad_cohort_and_evaluation) {
  fl_plan p;
  char msg[160];
  static const char *const bad[] = {
      "{\"cohort\":[]}",
      "{\"cohort\":{\"labels\":[\"site\"]}}",
      "{\"cohort\":{\"labels\":{\"site\":1}}}",
      "{\"cohort\":{\"labels\":{\"\":\"a\"}}}",
      "{\"cohort\":{\"labels\":{\"site\":\"a b\"}}}",
      "{\"cohort\":{\"conditions\":[\"charging\",2]}}",
      "{\"cohort\":{\"conditions\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]}}",
      "{\"cohort\":{\"devices\":[1]}}",
      "{\"evaluation\":{}}",
      "{\"evaluation\":{\"share\":0.5,\"count\":3}}",
      "{\"evaluation\":{\"share\":0}}",
      "{\"evaluation\":{\"share\":1.5}}",
      "{\"evaluation\":{\"count\":2.5}}",
      "{\"evaluation\":{\"count\":0}}",
      "{\"evaluation\":{\"share\":0.5,\"max_weight\":0}}",
      "{\"evaluation\":{\"share\":0.5,\"by_label\":\"\"}}",
      "{\"evaluation\":{\"share\":0.5,\"per\":\"site\"}}",
      "{\"evaluation\":0.5}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    msg[0] = '\0';
    cr_expect_eq(parse(bad[i], &p, msg), -1, "%s accepted", bad[i]);
    cr_expect_neq(msg[0], '\0', "%s: no message", bad[i]);
  }
}

Test(plan, cohort_conditions) {
  fl_plan p;
  char msg[160], why[200];
  cr_assert_eq(parse("{\"cohort\":{\"conditions\":[\"charging\",\"idle\"]}}", &p, msg), 0);
  char *all[] = {"unmetered", "idle", "charging"}, *some[] = {"charging"};
  cr_expect(fl__cohort_conditions_met(&p.cohort, all, 3, why, sizeof why));
  cr_expect(!fl__cohort_conditions_met(&p.cohort, some, 1, why, sizeof why));
  cr_expect(strstr(why, "idle") != NULL, "%s", why);
  cr_expect(!fl__cohort_conditions_met(&p.cohort, NULL, 0, why, sizeof why));
}
