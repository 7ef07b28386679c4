/* Enrollment and training rounds against the in-process fake coordinator: the blocking call,
 * the step interface, fl_multi, retries and refusals, the trainer callback. */
#include "test_client_fake.h"

static double upload_delta_norm(const fake_coord *f) {
  double s = 0;
  for (size_t i = 0; i < f->last_upload->n_delta; i++)
    s += fl__tensor_sqnorm(f->last_upload->delta[i]);
  return sqrt(s);
}

Test(client_round, enroll_then_round_uploads_a_signed_update) {
  fake_env e;
  fake_env_enrolled(&e);
  cr_assert(fl_client_is_enrolled(e.c));
  cr_assert_eq(fl_client_device_id(e.c), FAKE_DEVICE_ID);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(r.round_id, 11);
  cr_assert_eq(r.base_version, 1);
  cr_assert_eq(r.sample_count, 20);
  cr_assert(r.loss > 0 && isfinite(r.loss));
  cr_assert_eq(e.f.n_upload, 1);
  cr_assert_eq(e.f.n_bad_sig, 0);
  cr_assert_eq(r.upload_bytes, e.f.last_upload_wire);
  cr_assert_eq(e.f.last_upload->sample_count, 20);
  double n = upload_delta_norm(&e.f);
  cr_assert(n > 1e-4, "training moved nothing");
  cr_assert_float_eq(r.norm, n, 1e-4);
  fake_env_down(&e);
}

Test(client_round, base_model_comes_from_the_cache_in_later_rounds) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_eq(e.f.n_model_get, 1);
  cr_assert_eq(e.f.n_checkin, 2);
  fake_env_down(&e);
}

/* An asynchronous plan (FedBuff) may hand out a task on a base older than the version the
 * device trained on last and caches: the client trains on that base and uploads against it. */
Test(client_round, task_on_an_older_base_than_the_cache_is_trained) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_round_result r = {.size = sizeof r};
  e.f.task_version = 3;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(e.f.last_upload->base_version, 3);
  e.f.task_version = 2;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED, "a task older than the cache is not refused");
  cr_assert_eq(r.round_id, 12);
  cr_assert_eq(r.base_version, 2);
  cr_assert_eq(e.f.last_upload->base_version, 2);
  cr_assert_eq(e.f.last_upload->round_id, 12);
  cr_assert_eq(e.f.n_model_get, 2, "v3, then the older v2 it did not have");
  cr_assert_eq(e.f.n_bad_sig, 0);
  fake_env_down(&e);
}

Test(client_round, not_selected_reports_the_retry_window) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.give_task = false;
  e.f.retry_at_ms = fl__client_now_ms() + 60000;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert_eq(r.outcome, FL_ROUND_NOT_SELECTED);
  cr_assert(llabs(r.retry_at_ms - e.f.retry_at_ms) < 1000);
  cr_assert_eq(e.f.n_upload, 0);
  fake_env_down(&e);
}

Test(client_round, transient_failures_are_retried) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.fail_next = 2;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(e.f.n_upload, 1);
  fake_env_down(&e);
}

Test(client_round, retries_are_bounded) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.fail_next = 1000;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_RETRY_LATER);
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert_eq(e.f.fail_next, 1000 - 4, "one attempt and three retries");
  fake_env_down(&e);
}

Test(client_round, refusal_fails_the_round_with_detail) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.refuse_uploads = 409;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_REFUSED);
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert_not_null(strstr(fl_client_errmsg(e.c), "round_closed"), "%s", fl_client_errmsg(e.c));
  /* The handle is usable afterwards. */
  e.f.refuse_uploads = 0;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  fake_env_down(&e);
}

Test(client_round, round_needs_enrollment) {
  fake_env e;
  fake_env_up(&e);
  cr_assert_eq(fl_client_round_begin(e.c), FL_E_NOT_ENROLLED);
  fake_env_down(&e);
}

Test(client_round, round_needs_data) {
  fake_env e;
  fake_env_up(&e);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_STATE);
  cr_assert_eq(e.f.n_upload, 0);
  fake_env_down(&e);
}

Test(client_round, wrong_provisioned_coordinator_key_refuses_enrollment) {
  char dir[64];
  fake_coord f;
  fake_tmpdir(dir, sizeof dir);
  fake_init(&f);
  fl_transport tr = fake_transport(&f);
  fl_client_opts o;
  fake_opts(&o, dir, &tr);
  uint8_t other[FL_PUBKEY_LEN] = {1, 2, 3};
  o.coordinator_key = other;
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_E_BADSIG);
  cr_assert(!fl_client_is_enrolled(c));
  fl_client_free(c);
  fake_free(&f);
  fake_rmdir(dir);
}

/* Adds 0.5 to every weight; the delta must say exactly that. */
static fl_err add_half(void *ctx, const fl_train_task *t, float *w, uint64_t *samples,
                       float *loss) {
  int *calls = ctx;
  (*calls)++;
  cr_assert_eq(t->n_params, FAKE_IN * FAKE_CLASSES + FAKE_CLASSES);
  cr_assert_eq(t->input_size, FAKE_IN);
  cr_assert_eq(t->local_epochs, 2);
  for (size_t i = 0; i < t->n_params; i++)
    w[i] += 0.5f;
  *samples = 42;
  *loss = 1.5f;
  return FL_OK;
}

Test(client_round, trainer_callback_brings_its_own_training) {
  fake_env e;
  fake_env_up(&e);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK);
  int calls = 0;
  fl_client_set_trainer(e.c, add_half, &calls);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(calls, 1);
  cr_assert_eq(e.f.last_upload->sample_count, 42);
  cr_assert_float_eq(e.f.last_upload->loss, 1.5f, 1e-6);
  float d[FAKE_IN * FAKE_CLASSES];
  cr_assert_eq(fl__tensor_decode(e.f.last_upload->delta[0], d, FAKE_IN * FAKE_CLASSES), FL_OK);
  for (int i = 0; i < FAKE_IN * FAKE_CLASSES; i++)
    cr_assert_float_eq(d[i], 0.5f, 1e-6);
  fake_env_down(&e);
}

Test(client_round, steps_hand_training_to_the_caller) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_step st = FL_STEP_IDLE;
  cr_assert_eq(fl_client_step(e.c, 0, &st), FL_OK);
  cr_assert_eq(st, FL_STEP_IDLE);
  cr_assert_eq(fl_client_train(e.c), FL_E_STATE);
  cr_assert_eq(fl_client_round_begin(e.c), FL_OK);
  cr_assert_eq(fl_client_round_begin(e.c), FL_E_STATE);
  cr_assert_eq(fl_client_step(e.c, 0, &st), FL_OK);
  cr_assert_eq(st, FL_STEP_NEED_TRAIN);
  cr_assert_eq(e.f.n_upload, 0);
  cr_assert_eq(fl_client_train(e.c), FL_OK);
  cr_assert_eq(fl_client_step(e.c, 0, &st), FL_OK);
  cr_assert_eq(st, FL_STEP_DONE);
  fl_round_result r = {.size = sizeof r};
  fl_client_round_result(e.c, &r);
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(e.f.n_upload, 1);
  fake_env_down(&e);
}

Test(client_round, cancel_returns_to_idle) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_step st;
  cr_assert_eq(fl_client_round_begin(e.c), FL_OK);
  cr_assert_eq(fl_client_step(e.c, 0, &st), FL_OK);
  cr_assert_eq(st, FL_STEP_NEED_TRAIN);
  fl_client_round_cancel(e.c);
  cr_assert_eq(fl_client_step(e.c, 0, &st), FL_OK);
  cr_assert_eq(st, FL_STEP_IDLE);
  cr_assert_eq(fl_client_round_begin(e.c), FL_OK);
  fake_env_down(&e);
}

Test(client_round, multi_drives_several_clients) {
  enum { N = 3 };
  fake_env e[N];
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  for (int i = 0; i < N; i++) {
    fake_env_enrolled(&e[i]);
    cr_assert_eq(fl_multi_add(m, e[i].c), FL_OK);
    cr_assert_eq(fl_client_round_begin(e[i].c), FL_OK);
  }
  cr_assert_eq(fl_multi_add(m, e[0].c), FL_E_STATE);
  int done = 0, trained = 0;
  for (int iter = 0; iter < 100 && done < N; iter++) {
    cr_assert_eq(fl_multi_perform(m, 10), FL_OK);
    fl_client *c;
    fl_step st;
    fl_err err;
    while (fl_multi_next(m, &c, &st, &err)) {
      if (st == FL_STEP_NEED_TRAIN) {
        cr_assert_eq(fl_client_train(c), FL_OK);
        trained++;
      } else {
        cr_assert_eq(st, FL_STEP_DONE);
        cr_assert_eq(err, FL_OK);
        done++;
      }
    }
  }
  cr_assert_eq(done, N);
  cr_assert_eq(trained, N);
  cr_assert_eq(fl_multi_active(m), 0);
  for (int i = 0; i < N; i++) {
    cr_assert_eq(e[i].f.n_upload, 1);
    cr_assert_eq(fl_multi_remove(m, e[i].c), FL_OK);
    fake_env_down(&e[i]);
  }
  fl_multi_free(m);
}

Test(client_round, trains_on_a_csv_of_readings) {
  fake_env e;
  fake_env_up(&e);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK);
  char path[128];
  snprintf(path, sizeof path, "%s/readings.csv", e.dir);
  FILE *fp = fopen(path, "w");
  cr_assert_not_null(fp);
  fprintf(fp, "label,a,b,c,d\n");
  for (int i = 0; i < 15; i++)
    fprintf(fp, "%d,%g,%g,%g,%g\n", i % 3, (double)(i % 3 == 0), (double)(i % 3 == 1),
            (double)(i % 3 == 2), 0.1 * i);
  fclose(fp);
  cr_assert_eq(fl_client_set_data_csv(e.c, path, 0), FL_OK, "%s", fl_client_errmsg(e.c));
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.sample_count, 15);
  cr_assert_eq(e.f.n_upload, 1);
  cr_assert_neq(fl_client_set_data_csv(e.c, "/nonexistent.csv", 0), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "a failed load keeps the previous data");
  fake_env_down(&e);
}

Test(client_round, data_that_does_not_fit_the_model_is_refused) {
  fake_env e;
  fake_env_up(&e);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert_eq(
      fl_client_set_data_idx(e.c, "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
                             "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz"),
      FL_OK, "%s", fl_client_errmsg(e.c));
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_SHAPE, "784 pixels into a 4-input model");
  cr_assert_eq(e.f.n_upload, 0);
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  fake_env_down(&e);
}

Test(client_round, retried_upload_is_the_same_signed_update) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.lose_acks = 1;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert(r.duplicate, "the coordinator recognised the retry as the stored update");
  cr_assert_eq(e.f.n_upload, 1);
  fake_env_down(&e);
}
