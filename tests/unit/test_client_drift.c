/* Drift statistics on the device (client/drift.c): Welford's sums against a two-pass
 * computation, the score histograms, and through the public API the service window a
 * check-in carries (cadence, reset after a report, fl_client_observe) and the training
 * statistics an upload carries. */
#include "test_client_fake.h"

static fl_model *new_model(void) {
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &fake_spec, NULL), FL_OK);
  fl__model_init(m, 3);
  return m;
}

Test(client_drift, welford_matches_two_pass_and_classes_are_binned) {
  fake_data();
  fl_model *m = new_model();
  float out[20 * FAKE_CLASSES];
  cr_assert_eq(fl__model_forward(m, fake_x, 20, out), FL_OK);
  fl__drift_acc acc;
  fl__drift_reset(&acc, m, 1, 2);
  cr_assert_eq(acc.n_feat, FAKE_IN);
  cr_assert_eq(acc.n_bins, FAKE_CLASSES);
  fl__drift_add(&acc, m, 0, fake_x, out, 7);
  fl__drift_add(&acc, m, 0, fake_x + 7 * FAKE_IN, out + 7 * FAKE_CLASSES, 13);
  cr_assert_eq(acc.count, 20);
  uint64_t want_hist[FAKE_CLASSES] = {0};
  for (int i = 0; i < 20; i++) {
    int best = 0;
    for (int k = 1; k < FAKE_CLASSES; k++)
      if (out[i * FAKE_CLASSES + k] > out[i * FAKE_CLASSES + best])
        best = k;
    want_hist[best]++;
  }
  for (int k = 0; k < FAKE_CLASSES; k++)
    cr_assert_eq(acc.hist[k], want_hist[k]);
  for (int j = 0; j < FAKE_IN; j++) {
    double mean = 0, m2 = 0;
    for (int i = 0; i < 20; i++)
      mean += fake_x[i * FAKE_IN + j];
    mean /= 20;
    for (int i = 0; i < 20; i++)
      m2 += (fake_x[i * FAKE_IN + j] - mean) * (fake_x[i * FAKE_IN + j] - mean);
    cr_assert_float_eq(acc.mean[j], mean, 1e-12);
    cr_assert_float_eq(acc.m2[j], m2, 1e-9);
  }
  /* A non-finite reading is skipped, not summed. */
  float bad[FAKE_IN] = {NAN, 0, 0, 0};
  fl__drift_add(&acc, m, 0, bad, out, 1);
  cr_assert_eq(acc.count, 20);
  fl__model_free(m);
}

Test(client_drift, reconstruction_error_goes_into_log_bins) {
  static const fl_model_spec ae = {.input_ndim = 1,
                                   .input_shape = {2},
                                   .n_layers = 1,
                                   .layers = {{.type = FL_LAYER_DENSE, .units = 2}},
                                   .loss = FL_LOSS_MSE};
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &ae, NULL), FL_OK);
  fl__drift_acc acc;
  fl__drift_reset(&acc, m, 1, 1);
  cr_assert_eq(acc.n_bins, 32);
  cr_assert_float_eq(acc.lo, -6, 0);
  cr_assert_float_eq(acc.hi, 2, 0);
  /* Bins of 0.25 in log10(mse) from -6: mse 10^-1.875 (bin 16's middle), 10^-2.875 (bin 12's
   * middle), 1e4 (past the end: the last bin). */
  float x[6] = {0, 0, 0, 0, 0, 0};
  float y[6] = {0.115478f, 0.115478f, 0.0365174f, 0.0365174f, 100, 100};
  fl__drift_add(&acc, m, 0.5f, x, y, 3);
  cr_assert_eq(acc.hist[16], 1);
  cr_assert_eq(acc.hist[12], 1);
  cr_assert_eq(acc.hist[31], 1);
  cr_assert_eq(acc.anomalies, 1, "only the mse of 1e4 is over 0.5");
  fl__model_free(m);
}

/* A client serving version 1 (a rollout) with drift statistics every `every` check-ins. */
static void serving(fake_env *e, uint32_t every) {
  fake_env_enrolled(e);
  e->f.give_task = false;
  e->f.rollout_version = 1;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e->c, &r), FL_OK, "%s", fl_client_errmsg(e->c));
  cr_assert_eq(fl_client_set_service_stats(e->c, every), FL_OK);
}

Test(client_drift, checkins_carry_the_window_at_their_cadence) {
  fake_env e;
  serving(&e, 2);
  float out[20 * FAKE_CLASSES];
  cr_assert_eq(fl_client_predict(e.c, fake_x, 20, out), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_null(e.f.last_checkin->service_stats, "not due at the first check-in");
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  const Fl__V1__DriftStats *s = e.f.last_checkin->service_stats;
  cr_assert_not_null(s, "due at the second");
  cr_assert_eq(s->count, 20);
  cr_assert_eq(s->model_id, 1);
  cr_assert_eq(s->version, 1);
  cr_assert_eq(s->n_mean, FAKE_IN);
  cr_assert_eq(s->n_score_hist, FAKE_CLASSES);
  cr_assert_eq(s->n_m2, FAKE_IN);
  uint64_t sum = 0;
  for (size_t k = 0; k < s->n_score_hist; k++)
    sum += s->score_hist[k];
  cr_assert_eq(sum, 20, "the histogram counts every example");
  /* A new window after the report: only what was observed since. */
  cr_assert_eq(fl_client_observe(e.c, fake_x, 5, NULL), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_null(e.f.last_checkin->service_stats);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_not_null(e.f.last_checkin->service_stats);
  cr_assert_eq(e.f.last_checkin->service_stats->count, 5);
  /* Nothing observed: nothing sent. */
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_null(e.f.last_checkin->service_stats);
  fake_env_down(&e);
}

Test(client_drift, a_failed_checkin_keeps_the_window) {
  fake_env e;
  serving(&e, 1);
  cr_assert_eq(fl_client_observe(e.c, fake_x, 8, NULL), FL_OK);
  e.f.fail_next = 100; /* every attempt refused: the round fails */
  fl_round_result r = {.size = sizeof r};
  cr_assert_neq(fl_client_run_round(e.c, &r), FL_OK);
  e.f.fail_next = 0;
  cr_assert_eq(fl_client_observe(e.c, fake_x, 2, NULL), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.f.last_checkin->service_stats->count, 10, "the unsent window is kept");
  fake_env_down(&e);
}

Test(client_drift, off_by_default_and_observe_needs_it) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.give_task = false;
  e.f.rollout_version = 1;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_eq(fl_client_observe(e.c, fake_x, 1, NULL), FL_E_STATE);
  float out[FAKE_CLASSES];
  cr_assert_eq(fl_client_predict(e.c, fake_x, 1, out), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_null(e.f.last_checkin->service_stats);
  cr_assert_eq(fl_client_observe(NULL, fake_x, 1, NULL), FL_E_INVAL);
  fake_env_down(&e);
}

Test(client_drift, uploads_carry_the_training_statistics) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_null(e.f.last_upload->train_stats, "off: not sent");
  cr_assert_eq(fl_client_set_service_stats(e.c, 1), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  const Fl__V1__DriftStats *t = e.f.last_upload->train_stats;
  cr_assert_not_null(t, "the fake verified the upload's signature over them");
  cr_assert_eq(t->count, 20);
  cr_assert_eq(t->model_id, 1);
  cr_assert_eq(t->n_mean, FAKE_IN);
  uint64_t sum = 0;
  for (size_t k = 0; k < t->n_score_hist; k++)
    sum += t->score_hist[k];
  cr_assert_eq(sum, 20);
  fake_env_down(&e);
}
