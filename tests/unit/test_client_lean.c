/* What a build without libcurl (FL_WITH_CURL=OFF) promises, checked in every build: the
 * built-in transport is refused with FL_E_UNSUPPORTED and a log line that says why, and the
 * embedder's transport works (a whole round through fl_multi, which then waits on its own
 * pipe instead of libcurl's poll). With libcurl the same calls succeed. */
#include <fcntl.h>
#include <pthread.h>
#include <time.h>

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

/* Drives the multi's one client to the end of its round, training when asked. */
static void finish_round(fl_multi *m) {
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
  finish_round(m);
  cr_assert_eq(e.f.n_upload, 1);
  cr_assert_eq(fl_multi_remove(m, e.c), FL_OK);
  fl_multi_free(m);
  fake_env_down(&e);
}

/* A transport with its own connection (pollfd, version 3) in an fl_multi: the exchange in
 * flight waits on a pipe that a thread writes after 200 ms, and fl_multi_perform() must wake on
 * that descriptor (beside libcurl's transfers, or beside its own self-pipe without libcurl)
 * instead of sleeping its whole timeout. */
typedef struct gated {
  fake_coord *f;
  int fds[2];
  bool open; /* the byte arrived: every exchange from now on is answered at once */
} gated;

static fl_err gated_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  gated *g = ctx;
  char b;
  if (!g->open && read(g->fds[0], &b, 1) == 1)
    g->open = true;
  return g->open ? fake_poll(g->f, timeout_ms, resp) : FL_E_AGAIN;
}

static fl_err gated_begin(void *ctx, const fl_http_request *req) {
  return fake_begin(((gated *)ctx)->f, req);
}

static void gated_end(void *ctx) {
  fake_end(((gated *)ctx)->f);
}

static int gated_pollfd(void *ctx, int *events) {
  gated *g = ctx;
  *events = FL_POLL_IN;
  return g->open ? -1 : g->fds[0];
}

static void *write_later(void *arg) {
  usleep(200 * 1000);
  ssize_t w = write(*(int *)arg, "x", 1);
  (void)w;
  return NULL;
}

Test(client_lean, multi_wakes_on_an_own_connection_transports_socket) {
  fake_env e;
  fake_data();
  fake_tmpdir(e.dir, sizeof e.dir);
  fake_init(&e.f);
  gated g = {.f = &e.f};
  cr_assert_eq(pipe(g.fds), 0);
  cr_assert_eq(fcntl(g.fds[0], F_SETFL, O_NONBLOCK), 0);
  fl_transport tr = {.version = FL_TRANSPORT_VERSION,
                     .ctx = &g,
                     .begin = gated_begin,
                     .poll = gated_poll,
                     .end = gated_end,
                     .pollfd = gated_pollfd};
  fl_client_opts o;
  fake_opts(&o, e.dir, &tr);
  o.request_timeout_ms = 60000;
  cr_assert_eq(fl_client_new(&e.c, &o), FL_OK);
  g.open = true; /* enrolment is a blocking call: not through the multi */
  cr_assert_eq(fl_client_enroll(e.c, "tok", NULL, 0, "fw-1"), FL_OK, "%s", fl_client_errmsg(e.c));
  cr_assert_eq(fl_client_set_data_memory(e.c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  g.open = false;
  fl_multi *m = NULL;
  cr_assert_eq(fl_multi_new(&m, NULL), FL_OK);
  cr_assert_eq(fl_multi_add(m, e.c), FL_OK);
  cr_assert_eq(fl_client_round_begin(e.c), FL_OK, "%s", fl_client_errmsg(e.c));
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, write_later, &g.fds[1]), 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  cr_assert_eq(fl_multi_perform(m, 20000), FL_OK); /* sleeps until the byte arrives */
  clock_gettime(CLOCK_MONOTONIC, &t1);
  cr_assert_eq(pthread_join(th, NULL), 0);
  double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  cr_assert(g.open, "the multi returned before the socket was readable");
  cr_assert_lt(s, 10.0, "fl_multi_perform slept %.1f s: it did not wait on the pollfd socket", s);
  finish_round(m); /* the rest of the round, answered at once */
  cr_assert_eq(e.f.n_upload, 1);
  cr_assert_eq(fl_multi_remove(m, e.c), FL_OK);
  fl_multi_free(m);
  close(g.fds[0]);
  close(g.fds[1]);
  fake_env_down(&e);
}
