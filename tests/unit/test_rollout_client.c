/* libflclient and evaluation gates, against the in-process fake coordinator wrapped so that its
 * check-in answers carry an EvalTask and POST /v1/evaluations is answered: the candidate is
 * verified and evaluated on the hold-out data, the signed report carries the right metrics,
 * and a refused candidate or report never fails the round. */
#include "test_client_fake.h"

typedef struct gate_fake {
  fake_coord f;
  uint64_t eval_version; /* 0: no evaluation task */
  uint64_t gate_id;      /* the task's gate (9 unless a campaign is set) */
  uint64_t campaign_id;  /* a plan's evaluation campaign instead (gate_id 0) */
  char conds[4][64];     /* the last check-in's conditions */
  size_t n_conds;
  int report_status; /* 200, or a refusal status for reports */
  int n_reports;
  Fl__V1__EvalReport *last;
} gate_fake;

/* Adds the EvalTask to the fake's check-in answer. */
static void add_eval(gate_fake *g) {
  fake_coord *f = &g->f;
  Fl__V1__CheckInResponse *r = fl__v1__check_in_response__unpack(NULL, f->resp_len, f->resp);
  cr_assert_not_null(r);
  Fl__V1__EvalTask t;
  fl__v1__eval_task__init(&t);
  t.model_id = 1;
  t.version = g->eval_version;
  t.gate_id = g->campaign_id != 0 ? g->gate_id : 9;
  t.campaign_id = g->campaign_id;
  t.sha256.data = f->v[g->eval_version].sha;
  t.sha256.len = FL_SHA256_LEN;
  r->eval = &t;
  fake_answer(f, 200, &r->base);
  r->eval = NULL;
  fl__v1__check_in_response__free_unpacked(r, NULL);
}

static void on_report(gate_fake *g, const fl_http_request *req) {
  fake_coord *f = &g->f;
  Fl__V1__SignedRequest *env =
      fake_open(f, "POST", req->path, req->body, req->body_len, f->device_pub);
  cr_assert_not_null(env, "the report is signed by the device");
  if (g->last != NULL)
    fl__v1__eval_report__free_unpacked(g->last, NULL);
  g->last = fl__v1__eval_report__unpack(NULL, env->body.len, env->body.data);
  fl__v1__signed_request__free_unpacked(env, NULL);
  cr_assert_not_null(g->last);
  g->n_reports++;
  if (g->report_status != 200) {
    fake_refuse(f, g->report_status, "unknown_gate", 0);
    return;
  }
  Fl__V1__EvalAck ack;
  fl__v1__eval_ack__init(&ack);
  ack.recorded = true;
  fake_answer(f, 200, &ack.base);
}

/* The conditions the check-in carries (CheckInRequest.conditions). */
static void note_conditions(gate_fake *g, const fl_http_request *req) {
  Fl__V1__SignedRequest *env =
      fake_open(&g->f, "POST", req->path, req->body, req->body_len, g->f.device_pub);
  cr_assert_not_null(env);
  Fl__V1__CheckInRequest *ci =
      fl__v1__check_in_request__unpack(NULL, env->body.len, env->body.data);
  cr_assert_not_null(ci);
  cr_assert_leq(ci->n_conditions, 4);
  g->n_conds = ci->n_conditions;
  for (size_t i = 0; i < ci->n_conditions; i++)
    snprintf(g->conds[i], sizeof g->conds[i], "%s", ci->conditions[i]);
  fl__v1__check_in_request__free_unpacked(ci, NULL);
  fl__v1__signed_request__free_unpacked(env, NULL);
}

static fl_err g_begin(void *ctx, const fl_http_request *req) {
  gate_fake *g = ctx;
  if (strcmp(req->path, "/v1/evaluations") == 0) {
    g->f.busy = true;
    on_report(g, req);
    return FL_OK;
  }
  if (strcmp(req->path, "/v1/checkin") == 0)
    note_conditions(g, req);
  int err = fake_begin(&g->f, req);
  if (strcmp(req->path, "/v1/checkin") == 0 && g->f.status == 200 && g->eval_version != 0)
    add_eval(g);
  return err;
}

static fl_err g_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  return fake_poll(&((gate_fake *)ctx)->f, timeout_ms, resp);
}

static void g_end(void *ctx) {
  fake_end(&((gate_fake *)ctx)->f);
}

typedef struct env {
  char dir[64];
  gate_fake g;
  fl_transport tr;
  fl_client *c;
} env;

static void env_up(env *e, bool holdout) {
  fake_data();
  fake_tmpdir(e->dir, sizeof e->dir);
  memset(&e->g, 0, sizeof e->g);
  fake_init(&e->g.f);
  e->g.f.give_task = false;
  e->g.report_status = 200;
  e->tr = (fl_transport){.version = FL_TRANSPORT_VERSION,
                         .ctx = &e->g,
                         .begin = g_begin,
                         .poll = g_poll,
                         .end = g_end};
  fl_client_opts o;
  fake_opts(&o, e->dir, &e->tr);
  cr_assert_eq(fl_client_new(&e->c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(e->c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(e->c));
  if (holdout)
    cr_assert_eq(fl_client_set_holdout_memory(e->c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
}

static void env_down(env *e) {
  fl_client_free(e->c);
  if (e->g.last != NULL)
    fl__v1__eval_report__free_unpacked(e->g.last, NULL);
  fake_free(&e->g.f);
  fake_rmdir(e->dir);
}

/* Loss and accuracy of a fake version on the hold-out data, computed here. */
static void reference(const fake_coord *f, uint64_t v, double *loss, double *acc) {
  fl__loaded_model lm = {0};
  char why[256];
  cr_assert_eq(
      fl__model_verify(f->v[v].bytes, f->v[v].len, f->pub, f->v[v].sha, NULL, &lm, why, sizeof why),
      FL_OK, "%s", why);
  fl_batch b = {.x = fake_x, .labels = fake_y, .n = 20};
  cr_assert_eq(fl__model_evaluate(lm.model, &b, loss, acc), FL_OK);
  fl__loaded_free(&lm);
}

static double metric(const Fl__V1__EvalReport *r, const char *name) {
  for (size_t i = 0; i < r->n_metrics; i++)
    if (strcmp(r->metrics[i]->name, name) == 0)
      return r->metrics[i]->value;
  cr_assert_fail("no metric %s", name);
  return NAN;
}

Test(rollout_client, evaluates_the_candidate_and_reports_signed_metrics) {
  env e;
  env_up(&e, true);
  e.g.eval_version = 3;
  e.g.f.rollout_version = 2;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_NOT_SELECTED);
  cr_assert_eq(r.eval_err, FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.eval_version, 3);
  cr_assert_eq(e.g.n_reports, 1);
  const Fl__V1__EvalReport *rep = e.g.last;
  cr_assert_eq(rep->model_id, 1);
  cr_assert_eq(rep->version, 3);
  cr_assert_eq(rep->gate_id, 9);
  cr_assert_eq(rep->sample_count, 20);
  double loss, acc;
  reference(&e.g.f, 3, &loss, &acc);
  cr_assert_float_eq(metric(rep, "loss"), loss, 1e-6);
  cr_assert_float_eq(metric(rep, "accuracy"), acc, 1e-12);
  /* Evaluating never changes what the device runs: the rollout's version. */
  fl_model_info mi = {.size = sizeof mi};
  cr_assert_eq(fl_client_model_info(e.c, &mi), FL_OK);
  cr_assert_eq(mi.version, 2);
  env_down(&e);
}

Test(rollout_client, without_holdout_data_the_task_is_ignored) {
  env e;
  env_up(&e, false);
  e.g.eval_version = 3;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.eval_version, 0);
  cr_assert_eq(e.g.n_reports, 0);
  cr_assert_eq(e.g.f.n_model_get, 0);
  env_down(&e);
}

Test(rollout_client, a_tampered_candidate_is_not_evaluated_and_the_round_goes_on) {
  env e;
  env_up(&e, true);
  e.g.eval_version = 3;
  e.g.f.tamper_models = true;
  e.g.f.give_task = true;
  fl_round_result r = {.size = sizeof r};
  int err = fl_client_run_round(e.c, &r);
  /* The training base is tampered too, so the round fails on it; the evaluation failed first
   * and was only noted. */
  cr_assert_eq(r.eval_err, FL_E_BADHASH, "%s", fl_strerror(r.eval_err));
  cr_assert_eq(err, FL_E_BADHASH);
  cr_assert_eq(e.g.n_reports, 0);
  e.g.f.tamper_models = false;
  e.g.f.give_task = false;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.eval_err, FL_OK);
  cr_assert_eq(e.g.n_reports, 1);
  env_down(&e);
}

Test(rollout_client, a_refused_report_does_not_fail_the_round) {
  env e;
  env_up(&e, true);
  e.g.eval_version = 2;
  e.g.report_status = 404;
  e.g.f.give_task = true;
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(r.eval_err, FL_E_NOTFOUND, "%s", fl_strerror(r.eval_err));
  cr_assert_eq(e.g.n_reports, 1);
  cr_assert_eq(e.g.f.n_upload, 1);
  env_down(&e);
}

Test(rollout_client, holdout_arguments_are_checked) {
  env e;
  env_up(&e, false);
  cr_assert_eq(fl_client_set_holdout_memory(e.c, NULL, NULL, 20, FAKE_IN), FL_E_INVAL);
  cr_assert_eq(fl_client_set_holdout_memory(e.c, fake_x, fake_y, 0, FAKE_IN), FL_E_INVAL);
  cr_assert_eq(fl_client_set_anomaly_threshold(e.c, -1.0f), FL_E_INVAL);
  cr_assert_eq(fl_client_set_anomaly_threshold(e.c, 0.5f), FL_OK);
  cr_assert_neq(fl_client_set_holdout_csv(e.c, "/nonexistent.csv", 0), FL_OK);
  env_down(&e);
}

Test(rollout_client, a_plan_evaluation_is_reported_with_its_campaign) {
  env e;
  env_up(&e, true);
  e.g.eval_version = 3;
  e.g.campaign_id = 4;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.eval_err, FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.eval_version, 3);
  cr_assert_eq(e.g.n_reports, 1);
  cr_assert_eq(e.g.last->campaign_id, 4);
  cr_assert_eq(e.g.last->gate_id, 0);
  double loss, acc;
  reference(&e.g.f, 3, &loss, &acc);
  cr_assert_float_eq(metric(e.g.last, "loss"), loss, 1e-6);
  /* A task naming a gate and a campaign at once is ignored. */
  e.g.gate_id = 9;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.eval_version, 0);
  cr_assert_eq(e.g.n_reports, 1);
  env_down(&e);
}

Test(rollout_client, conditions_travel_with_every_check_in) {
  env e;
  env_up(&e, false);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.g.n_conds, 0);
  const char *const two[] = {"charging", "unmetered"};
  cr_assert_eq(fl_client_set_conditions(e.c, two, 2), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.g.n_conds, 2);
  cr_assert_str_eq(e.g.conds[0], "charging");
  cr_assert_str_eq(e.g.conds[1], "unmetered");
  /* Refused sets leave the previous one. */
  const char *const bad[] = {"idle", "has space"}, *const empty[] = {""};
  char longc[80];
  memset(longc, 'x', sizeof longc - 1);
  longc[sizeof longc - 1] = '\0';
  const char *const toolong[] = {longc};
  const char *many[17];
  for (int i = 0; i < 17; i++)
    many[i] = "idle";
  cr_assert_eq(fl_client_set_conditions(e.c, bad, 2), FL_E_INVAL);
  cr_assert_eq(fl_client_set_conditions(e.c, empty, 1), FL_E_INVAL);
  cr_assert_eq(fl_client_set_conditions(e.c, toolong, 1), FL_E_INVAL);
  cr_assert_eq(fl_client_set_conditions(e.c, many, 17), FL_E_INVAL);
  cr_assert_eq(fl_client_set_conditions(e.c, NULL, 1), FL_E_INVAL);
  cr_assert_eq(fl_client_set_conditions(NULL, two, 2), FL_E_INVAL);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.g.n_conds, 2);
  /* n = 0 clears them. */
  cr_assert_eq(fl_client_set_conditions(e.c, NULL, 0), FL_OK);
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.g.n_conds, 0);
  env_down(&e);
}

/* An autoencoder evaluated on labelled hold-out data: the anomaly rate, precision and recall
 * of its alarms (reconstruction error above the threshold) against the labels, computed here
 * from the model's own reconstructions. */
Test(rollout_client, anomaly_detector_reports_precision_and_recall) {
  env e;
  env_up(&e, false);
  static const fl_model_spec ae = {.input_ndim = 1,
                                   .input_shape = {FAKE_IN},
                                   .n_layers = 1,
                                   .layers = {{.type = FL_LAYER_DENSE, .units = FAKE_IN}},
                                   .loss = FL_LOSS_MSE};
  fl__loaded_model lm = {0};
  cr_assert_eq(fl__model_new(&lm.model, &ae, NULL), FL_OK);
  fl__model_init(lm.model, 7);
  /* 20 examples, every fourth one far from the others and labelled an anomaly. */
  static float x[20 * FAKE_IN];
  static int32_t y[20];
  for (int i = 0; i < 20; i++) {
    y[i] = i % 4 == 0;
    for (int j = 0; j < FAKE_IN; j++)
      x[i * FAKE_IN + j] = (y[i] ? 3.0f : 0.2f) * (float)((i + j) % 3 + 1) / 3.0f;
  }
  float out[20 * FAKE_IN], thr = 0.5f;
  cr_assert_eq(fl__model_forward(lm.model, x, 20, out), FL_OK);
  double tp = 0, fp = 0, fn = 0, alarms = 0;
  for (int i = 0; i < 20; i++) {
    double se = 0;
    for (int j = 0; j < FAKE_IN; j++)
      se += pow((double)out[i * FAKE_IN + j] - x[i * FAKE_IN + j], 2);
    bool alarm = se / FAKE_IN > thr;
    alarms += alarm;
    tp += alarm && y[i];
    fp += alarm && !y[i];
    fn += !alarm && y[i];
  }
  cr_assert_gt(tp, 0, "the test data must give an alarm");
  cr_assert_eq(fl_client_set_holdout_memory(e.c, x, y, 20, FAKE_IN), FL_OK);
  cr_assert_eq(fl_client_set_anomaly_threshold(e.c, thr), FL_OK);
  e.c->eval.model_id = 1;
  e.c->eval.version = 5;
  e.c->eval.campaign_id = 2;
  cr_assert_eq(fl__eval_run(e.c, &lm), FL_OK, "%s", fl_client_errmsg(e.c));
  Fl__V1__EvalReport *rep = fl__v1__eval_report__unpack(NULL, e.c->req_body_len, e.c->req_body);
  cr_assert_not_null(rep);
  cr_expect_eq(rep->campaign_id, 2);
  cr_expect_float_eq(metric(rep, "anomaly_rate"), alarms / 20, 1e-12);
  cr_expect_float_eq(metric(rep, "precision"), tp / (tp + fp), 1e-12);
  cr_expect_float_eq(metric(rep, "recall"), tp / (tp + fn), 1e-12);
  fl__v1__eval_report__free_unpacked(rep, NULL);
  /* Without labels there is no precision or recall. */
  cr_assert_eq(fl_client_set_holdout_memory(e.c, x, NULL, 20, FAKE_IN), FL_OK);
  cr_assert_eq(fl__eval_run(e.c, &lm), FL_OK, "%s", fl_client_errmsg(e.c));
  rep = fl__v1__eval_report__unpack(NULL, e.c->req_body_len, e.c->req_body);
  cr_assert_not_null(rep);
  for (size_t i = 0; i < rep->n_metrics; i++)
    cr_expect(strcmp(rep->metrics[i]->name, "precision") &&
              strcmp(rep->metrics[i]->name, "recall"));
  cr_expect_float_eq(metric(rep, "anomaly_rate"), alarms / 20, 1e-12);
  fl__v1__eval_report__free_unpacked(rep, NULL);
  fl__model_free(lm.model);
  env_down(&e);
}
