/* What a build without libcurl (FL_WITH_CURL=OFF) promises, checked in every build: the
 * built-in transport is refused with FL_E_UNSUPPORTED and a log line that says why, and the
 * embedder's transport works (a whole round through fl_multi, which then waits on its own
 * pipe instead of libcurl's poll). With libcurl the same calls succeed. */
#include "test_client_fake.h"

static char g_log[512];
static void keep_log(void *ctx, fl_log_level level, const char *line) {
  (void)ctx;
  (void)level;
  snprintf(g_log, sizeof g_log, "%s", line);
}

Test(client_lean, built_in_transport_only_with_libcurl) {
  char dir[64];
  fake_tmpdir(dir, sizeof dir);
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION,
                      .server_url = "https://127.0.0.1:9",
                      .state_dir = dir,
                      .log_fn = keep_log};
  fl_transport tr;
  fl_client *c = NULL;
  g_log[0] = '\0';
  fl_err e1 = fl_transport_curl(&tr, &o);
  fl_err e2 = fl_client_new(&c, &o);
#ifdef FL_HAVE_CURL
  cr_assert_eq(e1, FL_OK, "%s", g_log);
  tr.destroy(tr.ctx);
  cr_assert_eq(e2, FL_OK, "%s", g_log);
  fl_client_free(c);
#else
  cr_assert_eq(e1, FL_E_UNSUPPORTED);
  cr_assert_eq(e2, FL_E_UNSUPPORTED);
  cr_assert_null(c, "constructors set *out only on success");
  cr_assert(strstr(g_log, "without libcurl") != NULL && strstr(g_log, "transport") != NULL,
            "log says \"%s\"", g_log);
#endif
  /* Bad arguments are still bad arguments. */
  cr_assert_eq(fl_transport_curl(NULL, &o), FL_E_INVAL);
  cr_assert_eq(fl_transport_curl(&tr, NULL), FL_E_INVAL);
  fake_rmdir(dir);
}

/* An embedder's transport in an fl_multi: enrolment, a round, the training lent out and the
 * multi woken when it is done. */
Test(client_lean, embedders_transport_drives_a_round_in_a_multi) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  cr_assert_eq(fl_multi_add(m, e.c), FL_OK);
  cr_assert_eq(fl_client_round_begin(e.c), FL_OK, "%s", fl_client_errmsg(e.c));
  bool done = false;
  for (int i = 0; i < 1000 && !done; i++) {
    cr_assert_eq(fl_multi_perform(m, 10), FL_OK);
    fl_client *c;
    fl_step st;
    fl_err err;
    while (fl_multi_next(m, &c, &st, &err)) {
      if (st == FL_STEP_NEED_TRAIN)
        cr_assert_eq(fl_client_train(c), FL_OK, "%s", fl_client_errmsg(c));
      else if (st == FL_STEP_DONE) {
        cr_assert_eq(err, FL_OK, "%s", fl_client_errmsg(c));
        done = true;
      }
    }
  }
  cr_assert(done, "the round did not finish");
  cr_assert_eq(e.f.n_upload, 1);
  cr_assert_eq(fl_multi_remove(m, e.c), FL_OK);
  fl_multi_free(m);
  fake_env_down(&e);
}
