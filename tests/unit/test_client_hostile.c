/* A hostile network or coordinator against the client (issue 13 items 13-15): the task must be
 * the coordinator's (signed for this device with the pinned key), what it asks is bounded
 * (epochs, batch, retry window), plain http needs the embedder's opt-in, and the coordinator's
 * words reach fl_client_errmsg() without control characters. */
#include "test_client_fake.h"

/* ---- the task's signature ------------------------------------------------------------------ */

Test(client_hostile, a_task_changed_on_the_way_is_refused) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.mitm_epochs = 3; /* the coordinator signed 2 */
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_BADSIG);
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert(strstr(fl_client_errmsg(e.c), "signature fails") != NULL, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.f.n_model_get, 0, "nothing is fetched for a refused task");
  cr_assert_eq(e.f.n_upload, 0);
  /* The same coordinator, untouched: the next round trains. */
  e.f.mitm_epochs = 0;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  fake_env_down(&e);
}

Test(client_hostile, an_unsigned_task_is_refused) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.unsigned_task = true;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_BADSIG);
  cr_assert(strstr(fl_client_errmsg(e.c), "unsigned") != NULL, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.f.n_upload, 0);
  fake_env_down(&e);
}

/* A man in the middle who signs with a key of his own: not the one pinned at enrollment. */
Test(client_hostile, a_task_signed_by_another_key_is_refused) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_key *pinned = e.f.key;
  cr_assert_eq(fl__key_generate(&e.f.key), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_BADSIG);
  cr_assert_eq(e.f.n_upload, 0);
  fl__key_free(e.f.key);
  e.f.key = pinned;
  fake_env_down(&e);
}

/* ---- bounds on what a task asks ------------------------------------------------------------ */

Test(client_hostile, more_than_1000_local_epochs_are_refused) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.epochs = UINT32_MAX; /* signed: a buggy or compromised coordinator */
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_TOOBIG);
  cr_assert(strstr(fl_client_errmsg(e.c), "local epochs") != NULL, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(e.f.n_model_get, 0);
  e.f.epochs = 1001;
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_TOOBIG);
  fake_env_down(&e);
}

/* A signed secure-aggregation task whose threshold exceeds its neighbours could never be
 * unmasked: refused before anything is downloaded or trained. */
Test(client_hostile, a_secure_aggregation_task_beyond_its_neighbours_is_refused) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.secagg_threshold = 4;
  e.f.secagg_neighbors = 3;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_PARSE);
  cr_assert(strstr(fl_client_errmsg(e.c), "secure aggregation") != NULL, "%s",
            fl_client_errmsg(e.c));
  cr_assert_eq(e.f.n_model_get, 0);
  cr_assert_eq(e.f.n_upload, 0);
  fake_env_down(&e);
}

static uint32_t g_seen_batch, g_seen_epochs;
static fl_err see_task(void *ctx, const fl_train_task *t, float *w, uint64_t *n, float *loss) {
  (void)ctx;
  (void)w;
  g_seen_batch = t->batch_size;
  g_seen_epochs = t->local_epochs;
  *n = 1;
  *loss = 1;
  return FL_OK;
}

Test(client_hostile, the_limits_themselves_are_accepted) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.epochs = 1000;
  e.f.batch = UINT32_MAX;
  fl_client_set_trainer(e.c, see_task, NULL);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(g_seen_epochs, 1000);
  cr_assert_eq(g_seen_batch, 65536, "a larger batch is trained in batches of 65536");
  fake_env_down(&e);
}

/* The largest single allocation the client asks for. */
static size_t g_biggest;
static void *big_malloc(void *ctx, size_t n) {
  (void)ctx;
  if (n > g_biggest)
    g_biggest = n;
  return malloc(n);
}
static void *big_realloc(void *ctx, void *p, size_t n) {
  (void)ctx;
  if (n > g_biggest)
    g_biggest = n;
  return realloc(p, n);
}
static void big_free(void *ctx, void *p) {
  (void)ctx;
  free(p);
}

/* batch_size 2^32-1 used to be bs * in floats of batch buffer (64 GiB here): now the batch is
 * at most 65536 and never more than the data set (20 examples), so the buffers stay small. */
Test(client_hostile, a_huge_batch_allocates_no_huge_buffer) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  e.tr = fake_transport(&e.f);
  fl_allocator a = {.malloc_fn = big_malloc, .realloc_fn = big_realloc, .free_fn = big_free};
  fl_client_opts o;
  fake_opts(&o, e.dir, &e.tr);
  o.allocator = &a;
  cr_assert_eq(fl_client_new(&e.c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  e.f.batch = UINT32_MAX;
  g_biggest = 0;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(r.sample_count, 20);
  cr_assert_lt(g_biggest, 64 * 1024, "largest allocation %zu bytes", g_biggest);
  fake_env_down(&e);
}

/* A retry window at 2^62 ms (a hundred million years) would make fl_client_run_round's caller
 * (fl-gateway) sleep for ever: it is at most a day away. */
Test(client_hostile, a_retry_window_is_at_most_a_day_away) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.give_task = false;
  const int64_t far[] = {INT64_C(1) << 62, INT64_MAX};
  for (size_t i = 0; i < sizeof far / sizeof far[0]; i++) {
    e.f.retry_at_ms = far[i];
    fl_round_result r = {.size = sizeof r};
    int64_t now = fl__client_now_ms();
    cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK, "%s", fl_client_errmsg(e.c));
    cr_assert_eq(r.outcome, FL_ROUND_NOT_SELECTED);
    cr_assert_leq(r.retry_at_ms, fl__client_now_ms() + 86400000, "retry at %lld",
                  (long long)r.retry_at_ms);
    cr_assert_geq(r.retry_at_ms, now + 86400000 - 1000);
  }
  /* A near one is kept as it is. */
  e.f.retry_at_ms = fl__client_now_ms() + 60000;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_OK);
  cr_assert(llabs(r.retry_at_ms - e.f.retry_at_ms) < 1000);
  fake_env_down(&e);
}

/* ---- the coordinator's words --------------------------------------------------------------- */

Test(client_hostile, control_characters_in_refusals_are_escaped) {
  fake_env e;
  fake_env_enrolled(&e);
  e.f.refuse_uploads = 409;
  e.f.refuse_message =
      "no\x1b[2J\r\nfl-gateway: round 99 uploaded\x7f \xc2\x9b"
      "1m \\x41 caf\xc3\xa9";
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(e.c, &r), FL_E_REFUSED);
  const char *m = fl_client_errmsg(e.c);
  for (const unsigned char *p = (const unsigned char *)m; *p; p++) {
    cr_assert(*p >= 0x20 && *p != 0x7f, "control byte 0x%02x in \"%s\"", *p, m);
    cr_assert(!(p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f), "C1 control in \"%s\"", m);
  }
  cr_assert(strstr(m,
                   "no\\x1b[2J\\x0d\\x0afl-gateway: round 99 uploaded\\x7f \\xc2\\x9b1m "
                   "\\\\x41 caf\xc3\xa9") != NULL,
            "%s", m);
  fake_env_down(&e);
}

/* ---- plain http ---------------------------------------------------------------------------- */

static char g_log[512];
static void keep_log(void *ctx, fl_log_level level, const char *line) {
  (void)ctx;
  (void)level;
  snprintf(g_log, sizeof g_log, "%s", line);
}

static fl_err open_url(const char *dir, const char *url, int allow) {
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = url,
                      .state_dir = dir,
                      .allow_insecure_http = allow,
                      .log_fn = keep_log};
  g_log[0] = '\0';
  fl_client *c = NULL;
  fl_err err = fl_client_new(&c, &o);
  fl_client_free(c);
  /* Wrappers of the built-in transport (fl-sim's) go through the same check. */
  fl_transport tr;
  fl_err err2 = fl_transport_curl(&tr, &o);
  if (err2 == FL_OK)
    tr.destroy(tr.ctx);
  cr_assert_eq(err, err2, "%s", url);
  return err;
}

Test(client_hostile, plain_http_needs_the_embedders_opt_in) {
  char dir[64];
  fake_tmpdir(dir, sizeof dir);
  cr_assert_eq(open_url(dir, "http://127.0.0.1:9", 0), FL_E_INVAL);
  cr_assert(strstr(g_log, "plain http") != NULL && strstr(g_log, "allow_insecure_http") != NULL,
            "log says \"%s\"", g_log);
  cr_assert_eq(open_url(dir, "HTTP://127.0.0.1:9", 0), FL_E_INVAL);
  cr_assert_eq(open_url(dir, "http://127.0.0.1:9", 1), FL_OK);
  cr_assert_eq(open_url(dir, "https://127.0.0.1:9", 0), FL_OK);
  cr_assert_eq(open_url(dir, "HTTPS://127.0.0.1:9", 0), FL_OK);
  /* libcurl would guess http for a URL without a scheme. */
  cr_assert_eq(open_url(dir, "127.0.0.1:9", 1), FL_E_INVAL);
  cr_assert(strstr(g_log, "https://") != NULL, "log says \"%s\"", g_log);
  cr_assert_eq(open_url(dir, "ftp://127.0.0.1:9", 1), FL_E_INVAL);
  fake_rmdir(dir);
}

/* ---- a NULL handle ------------------------------------------------------------------------- */

/* An embedder's error path often frees or calls into a handle that was never created: every
 * entry point takes NULL without crashing, and those that report errors report FL_E_INVAL. */
Test(client_hostile, a_null_handle_is_refused_by_every_entry_point) {
  float w[1] = {0};
  int32_t lab[1] = {0};
  fl_step step;
  fl_round_result res = {.size = sizeof res};
  fl_model_info info = {.size = sizeof info};
  fl_client *got = (fl_client *)&step;
  fl_err err = FL_OK;
  fl_client_free(NULL);
  fl_multi_free(NULL);
  fl_client_set_trainer(NULL, NULL, NULL);
  fl_client_round_cancel(NULL);
  cr_assert_not_null(fl_client_errmsg(NULL));
  cr_assert_eq(fl_client_is_enrolled(NULL), 0);
  cr_assert_eq(fl_client_device_id(NULL), 0);
  cr_assert_eq(fl_client_new(NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl_client_enroll(NULL, "t", NULL, 0, NULL), FL_E_INVAL);
  cr_assert_eq(fl_client_set_data_source(NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl_client_set_data_csv(NULL, "x.csv", 0), FL_E_INVAL);
  cr_assert_eq(fl_client_set_data_idx(NULL, "a", "b"), FL_E_INVAL);
  cr_assert_eq(fl_client_set_data_memory(NULL, w, lab, 1, 1), FL_E_INVAL);
  cr_assert_eq(fl_client_set_holdout_source(NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl_client_set_holdout_memory(NULL, w, lab, 1, 1), FL_E_INVAL);
  cr_assert_eq(fl_client_set_holdout_csv(NULL, "x.csv", 0), FL_E_INVAL);
  cr_assert_eq(fl_client_set_anomaly_threshold(NULL, 1.0f), FL_E_INVAL);
  cr_assert_eq(fl_client_round_begin(NULL), FL_E_INVAL);
  cr_assert_eq(fl_client_step(NULL, 0, &step), FL_E_INVAL);
  cr_assert_eq(fl_client_train(NULL), FL_E_INVAL);
  cr_assert_eq(fl_client_round_result(NULL, &res), FL_E_INVAL);
  cr_assert_eq(fl_client_run_round(NULL, &res), FL_E_INVAL);
  cr_assert_eq(fl_client_model_info(NULL, &info), FL_E_INVAL);
  cr_assert_eq(fl_client_predict(NULL, w, 1, w), FL_E_INVAL);
  cr_assert_eq(fl_client_rollback(NULL), FL_E_INVAL);
  cr_assert_eq(fl_multi_new(NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl_multi_add(NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl_multi_remove(NULL, NULL), FL_E_INVAL);
  cr_assert_eq(fl_multi_perform(NULL, 0), FL_E_INVAL);
  cr_assert_eq(fl_multi_next(NULL, &got, &step, &err), 0);
  cr_assert_eq(fl_multi_active(NULL), 0);
}
