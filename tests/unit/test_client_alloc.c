/* Allocation-failure sweep: for every N, fail the Nth allocation of a whole device life
 * (open, enroll, a round with a rollout, reopen from the state directory, a second round with
 * an upload) and check that the library returns errors, never crashes, and leaks nothing. */
#include "test_alloc.h"
#include "test_client_fake.h"

/* Errors an allocation failure may surface as: out of memory, or a message that protobuf-c
 * could not unpack (it does not tell the two apart), or the state that failure left behind
 * (no identity yet, no data yet). */
static bool acceptable(int err) {
  return err == FL_OK || err == FL_E_NOMEM || err == FL_E_PARSE || err == FL_E_NOT_ENROLLED ||
         err == FL_E_STATE || err == FL_E_NOTFOUND;
}

typedef struct life {
  int steps_ok; /* how far the sequence got */
} life;

static int open_client(fl_client **c, const char *dir, fl_transport *tr, fl_allocator *al) {
  fl_client_opts o;
  fake_opts(&o, dir, tr);
  o.allocator = al;
  return fl_client_new(c, &o);
}

static int one_round(fl_client *c) {
  fl_round_result r = {.size = sizeof r};
  int err = fl_client_set_data_memory(c, fake_x, fake_y, 20, FAKE_IN);
  if (err == FL_OK)
    err = fl_client_run_round(c, &r);
  return err;
}

/* The whole sequence; every error must be one of the acceptable ones. */
static life run_life(fake_coord *f, const char *dir, fl_allocator *al) {
  life l = {0};
  fl_transport tr = fake_transport(f);
  fl_client *c = NULL;
  int err = open_client(&c, dir, &tr, al);
  cr_assert(acceptable(err), "new: %s", fl_strerror(err));
  if (err != FL_OK)
    return l;
  l.steps_ok++;
  err = fl_client_enroll(c, "tok", NULL, 0, NULL);
  cr_assert(acceptable(err), "enroll: %s", fl_strerror(err));
  l.steps_ok += err == FL_OK;
  f->rollout_version = 2;
  err = one_round(c);
  cr_assert(acceptable(err), "round 1: %s", fl_strerror(err));
  l.steps_ok += err == FL_OK;
  fl_client_free(c);
  c = NULL;
  err = open_client(&c, dir, &tr, al);
  cr_assert(acceptable(err), "reopen: %s", fl_strerror(err));
  if (err != FL_OK)
    return l;
  l.steps_ok++;
  f->rollout_version = 3;
  err = one_round(c);
  cr_assert(acceptable(err), "round 2: %s", fl_strerror(err));
  l.steps_ok += err == FL_OK;
  float out[FAKE_CLASSES];
  err = fl_client_predict(c, fake_x, 1, out);
  cr_assert(acceptable(err), "predict: %s", fl_strerror(err));
  l.steps_ok += err == FL_OK;
  fl_client_free(c);
  return l;
}

Test(client_alloc, every_failed_allocation_is_an_error_and_leaks_nothing, .timeout = 600) {
  fake_data();
  fake_coord f;
  fake_init(&f);
  test_alloc a = {.fail_at = -1};
  fl_allocator al = test_alloc_hooks(&a);
  char dir[64];

  /* A run without failures: the number of allocations to sweep, and what success looks like. */
  fake_tmpdir(dir, sizeof dir);
  life full = run_life(&f, dir, &al);
  fake_rmdir(dir);
  cr_assert_eq(full.steps_ok, 6, "the sequence must succeed without failures");
  cr_assert_eq(a.live, 0, "leak without failures");
  long total = a.calls;
  cr_assert(total > 50, "only %ld allocations: the hooks are not used", total);

  int degraded = 0;
  for (long n = 0; n < total; n++) {
    a = (test_alloc){.fail_at = n};
    fake_tmpdir(dir, sizeof dir);
    f.n_upload = 0;
    life l = run_life(&f, dir, &al);
    fake_rmdir(dir);
    cr_assert_eq(a.failed, 1, "allocation %ld was not reached", n);
    cr_assert_eq(a.live, 0, "%ld block(s) leaked when allocation %ld of %ld failed", a.live, n,
                 total);
    degraded += l.steps_ok < full.steps_ok;
  }
  cr_log_info("%ld allocations swept, %d runs degraded", total, degraded);
  cr_assert(degraded > total / 2, "most failures must show: %d of %ld did", degraded, total);
  fake_free(&f);
}
