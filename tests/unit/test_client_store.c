/* fl_model_store: clients of one process share a verified version instead of each downloading,
 * hashing and keeping it, and each client still checks the coordinator's signature with its
 * own pinned key. */
#include "test_client_fake.h"

static fake_coord f;
static char dir_a[64], dir_b[64];
static fl_model_store *store;

static void setup(void) {
  fake_data();
  fake_init(&f);
  fake_tmpdir(dir_a, sizeof dir_a);
  fake_tmpdir(dir_b, sizeof dir_b);
  cr_assert_eq(fl_model_store_new(&store, NULL), FL_OK);
}

static void teardown(void) {
  fl_model_store_free(store);
  fake_free(&f);
  fake_rmdir(dir_a);
  fake_rmdir(dir_b);
}

TestSuite(client_store, .init = setup, .fini = teardown);

static fl_client *store_client(const char *dir, const fl_transport *tr, int follow_base) {
  fl_client_opts o;
  fake_opts(&o, dir, tr);
  o.model_store = store;
  o.follow_training_base = follow_base;
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(fl_client_set_data_memory(c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  return c;
}

static bool cached(const char *dir, const fake_version *v) {
  char hex[2 * FL_SHA256_LEN + 1], path[256];
  fl__hex(v->sha, FL_SHA256_LEN, hex);
  snprintf(path, sizeof path, "%s/models/%s.pb", dir, hex);
  return access(path, F_OK) == 0;
}

static void round_uploaded(fl_client *c) {
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
}

Test(client_store, second_client_trains_on_the_shared_copy_without_downloading) {
  fl_transport tr = fake_transport(&f);
  fl_client *a = store_client(dir_a, &tr, 0);
  round_uploaded(a);
  cr_assert_eq(f.n_model_get, 1);
  uint8_t content_a[FL_SHA256_LEN];
  memcpy(content_a, f.last_content, sizeof content_a);
  fl_client_free(a);

  /* Same device id, data and task: the same update, trained on the shared weights. */
  fl_transport tr2 = fake_transport(&f);
  fl_client *b = store_client(dir_b, &tr2, 0);
  round_uploaded(b);
  cr_assert_eq(f.n_model_get, 1, "the base came from the store");
  cr_assert_eq(memcmp(content_a, f.last_content, sizeof content_a), 0,
               "the update equals the one trained on the downloaded base");
  cr_assert(cached(dir_a, &f.v[1]), "the downloading client wrote its cache");
  cr_assert(!cached(dir_b, &f.v[1]), "a shared base is not written again per device");
  /* A later round reuses it again (and the store kept it while no client held it). */
  round_uploaded(b);
  cr_assert_eq(f.n_model_get, 1);
  fl_client_free(b);
}

Test(client_store, a_version_signed_by_another_coordinator_is_not_taken) {
  fl_transport tr = fake_transport(&f);
  fl_client *a = store_client(dir_a, &tr, 0);
  round_uploaded(a);
  fl_client_free(a);
  /* Another coordinator serves the same content (same digest) under its own key. */
  fake_coord g;
  fake_init(&g);
  cr_assert_eq(memcmp(g.v[1].sha, f.v[1].sha, FL_SHA256_LEN), 0);
  fl_transport tr2 = fake_transport(&g);
  fl_client *b = store_client(dir_b, &tr2, 0);
  round_uploaded(b);
  cr_assert_eq(g.n_model_get, 1, "the shared copy's signature is not its coordinator's");
  fl_client_free(b);
  fake_free(&g);
}

Test(client_store, a_shared_base_can_become_the_inference_model) {
  fl_transport tr = fake_transport(&f);
  fl_client *a = store_client(dir_a, &tr, 0);
  round_uploaded(a);
  fl_client_free(a);
  fl_transport tr2 = fake_transport(&f);
  fl_client *b = store_client(dir_b, &tr2, 1);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(b, &r), FL_OK, "%s", fl_client_errmsg(b));
  cr_assert_eq(r.rollout_err, FL_OK, "%s", fl_strerror(r.rollout_err));
  cr_assert_eq(r.running_version, 1);
  cr_assert_eq(f.n_model_get, 1);
  /* It must survive a reboot: the file is in b's own cache now. */
  cr_assert(cached(dir_b, &f.v[1]));
  fl_client_free(b);
  fl_client_opts o;
  fake_opts(&o, dir_b, &tr2);
  fl_client *again = NULL;
  cr_assert_eq(fl_client_new(&again, &o), FL_OK, "no store this time");
  fl_model_info mi = {.size = sizeof mi};
  cr_assert_eq(fl_client_model_info(again, &mi), FL_OK);
  cr_assert_eq(mi.version, 1);
  fl_client_free(again);
}

Test(client_store, bad_arguments) {
  cr_assert_eq(fl_model_store_new(NULL, NULL), FL_E_INVAL);
  fl_model_store_free(NULL);
}
