/* Model verification before any use, the cache by hash, and the inference swap: a tampered or
 * unsigned model is refused and the previous one stays in use. */
#include "test_alloc.h"
#include "test_client_fake.h"

static fake_coord f;
static char dir[64];

static void setup(void) {
  fake_data();
  fake_init(&f);
  fake_tmpdir(dir, sizeof dir);
}

static void teardown(void) {
  fake_free(&f);
  fake_rmdir(dir);
}

static int verify(const uint8_t *buf, size_t len, const uint8_t *pub, const uint8_t *expect) {
  fl__loaded_model lm = {0};
  char why[256];
  int err = fl__model_verify(buf, len, pub, expect, NULL, &lm, why, sizeof why);
  if (err == FL_OK) {
    cr_assert_not_null(lm.model);
    fl__loaded_free(&lm);
  } else {
    cr_assert_null(lm.model);
    cr_assert_neq(why[0], '\0');
  }
  return err;
}

TestSuite(client_model, .init = setup, .fini = teardown);

Test(client_model, signed_model_verifies) {
  fl__loaded_model lm = {0};
  char why[256];
  cr_assert_eq(
      fl__model_verify(f.v[2].bytes, f.v[2].len, f.pub, f.v[2].sha, NULL, &lm, why, sizeof why),
      FL_OK, "%s", why);
  cr_assert_eq(lm.model_id, 1);
  cr_assert_eq(lm.version, 2);
  cr_assert_eq(lm.parent_version, 1);
  cr_assert_eq(memcmp(lm.sha256, f.v[2].sha, FL_SHA256_LEN), 0);
  cr_assert_eq(fl__model_num_params(lm.model), FAKE_IN * FAKE_CLASSES + FAKE_CLASSES);
  fl__loaded_free(&lm);
}

Test(client_model, every_flipped_byte_is_refused) {
  fake_version *v = &f.v[1];
  uint8_t *copy = malloc(v->len);
  for (size_t i = 0; i < v->len; i++) {
    memcpy(copy, v->bytes, v->len);
    copy[i] ^= 0x01;
    cr_assert_neq(verify(copy, v->len, f.pub, NULL), FL_OK, "flip at byte %zu accepted", i);
  }
  free(copy);
}

Test(client_model, another_key_signature_is_refused) {
  fl_key *other = NULL;
  uint8_t other_pub[FL_PUBKEY_LEN];
  cr_assert_eq(fl__key_generate(&other), FL_OK);
  cr_assert_eq(fl__key_public(other, other_pub), FL_OK);
  cr_assert_eq(verify(f.v[1].bytes, f.v[1].len, other_pub, NULL), FL_E_BADSIG);
  fl__key_free(other);
}

Test(client_model, unsigned_model_is_refused) {
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(NULL, f.v[1].len, f.v[1].bytes);
  mv->signature.len = 0;
  size_t n = fl__v1__model_version__get_packed_size(mv);
  uint8_t *buf = malloc(n);
  fl__v1__model_version__pack(mv, buf);
  cr_assert_eq(verify(buf, n, f.pub, NULL), FL_E_BADSIG);
  free(buf);
  fl__v1__model_version__free_unpacked(mv, NULL);
}

Test(client_model, a_different_version_than_asked_is_refused) {
  cr_assert_eq(verify(f.v[2].bytes, f.v[2].len, f.pub, f.v[1].sha), FL_E_BADHASH);
}

/* A version signed by the coordinator (a hostile or broken one) whose spec declares a model of
 * 2^24 + 2^12 parameters beside the fake model's few weights: refused for its weights before
 * anything of the declared size is allocated (it used to build the model first, two blocks of
 * 64 MiB, and only then compare the weights). */
Test(client_model, spec_larger_than_its_weights_costs_nothing) {
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(NULL, f.v[1].len, f.v[1].bytes);
  cr_assert_not_null(mv);
  const fl_model_spec big = {.input_ndim = 1,
                             .input_shape = {4096},
                             .n_layers = 1,
                             .layers = {{.type = FL_LAYER_DENSE, .units = 4096}},
                             .loss = FL_LOSS_SOFTMAX_CE};
  cr_assert_eq(fl__spec_validate(&big), FL_OK, "the spec itself is within bounds");
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, &big);
  Fl__V1__ModelSpec *own = mv->spec;
  mv->spec = &st.spec;
  size_t n = fl__v1__model_version__get_packed_size(mv);
  uint8_t *buf = malloc(n);
  fl__v1__model_version__pack(mv, buf);
  mv->spec = own;
  fl__v1__model_version__free_unpacked(mv, NULL);
  test_alloc ta = {.fail_at = -1};
  fl_allocator a = test_alloc_hooks(&ta);
  fl__loaded_model lm = {0};
  char why[256] = "";
  cr_assert_eq(fl__model_verify(buf, n, f.pub, NULL, &a, &lm, why, sizeof why), FL_E_SHAPE, "%s",
               why);
  cr_assert_null(lm.model);
  cr_expect(strstr(why, "weights do not fit the spec") != NULL, "%s", why);
  cr_expect_leq(ta.largest, 64 * n, "%zu bytes asked for a %zu-byte version", ta.largest, n);
  cr_expect_eq(ta.live, 0);
  free(buf);
}

static fl_client *open_client(fl_transport *tr) {
  fl_client_opts o;
  fake_opts(&o, dir, tr);
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_OK, "%s", dir);
  return c;
}

static fl_client *enrolled_client(fl_transport *tr) {
  fl_client *c = open_client(tr);
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert_eq(fl_client_set_data_memory(c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  return c;
}

static uint64_t active_version(const fl_client *c) {
  fl_model_info mi = {.size = sizeof mi};
  if (fl_client_model_info(c, &mi) != FL_OK)
    return 0;
  return mi.version;
}

/* The version a new handle on the same state directory runs: the one that was persisted. */
static uint64_t reopened_version(fl_transport *tr) {
  fl_client *c = open_client(tr);
  uint64_t v = active_version(c);
  fl_client_free(c);
  return v;
}

static void predict_ok(fl_client *c) {
  float out[2 * FAKE_CLASSES];
  cr_assert_eq(fl_client_predict(c, fake_x, 2, out), FL_OK);
  for (int i = 0; i < 2 * FAKE_CLASSES; i++)
    cr_assert(isfinite(out[i]));
}

Test(client_model, rollout_activates_verified_model) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  float out[FAKE_CLASSES];
  cr_assert_eq(fl_client_predict(c, fake_x, 1, out), FL_E_NOTFOUND);
  f.rollout_version = 2;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK);
  cr_assert_eq(r.rollout_err, FL_OK);
  cr_assert_eq(r.running_version, 2);
  cr_assert_eq(active_version(c), 2);
  predict_ok(c);
  fl_client_free(c);
  /* Persisted: a new handle runs the same model without asking. */
  cr_assert_eq(reopened_version(&tr), 2);
}

Test(client_model, tampered_rollout_is_refused_and_previous_stays) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  f.rollout_version = 1;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK);
  cr_assert_eq(active_version(c), 1);
  float before[FAKE_CLASSES], after[FAKE_CLASSES];
  cr_assert_eq(fl_client_predict(c, fake_x, 1, before), FL_OK);

  f.rollout_version = 2;
  f.tamper_models = true;
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "training goes on: its base is cached");
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(r.rollout_err, FL_E_BADHASH, "%s", fl_strerror(r.rollout_err));
  cr_assert_eq(active_version(c), 1);
  cr_assert_eq(fl_client_predict(c, fake_x, 1, after), FL_OK);
  cr_assert_eq(memcmp(before, after, sizeof before), 0);
  fl_client_free(c);
  cr_assert_eq(reopened_version(&tr), 1);
}

Test(client_model, tampered_base_model_fails_the_round) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  f.tamper_models = true;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_E_BADHASH);
  cr_assert_eq(r.outcome, FL_ROUND_FAILED);
  cr_assert_eq(f.n_upload, 0);
  cr_assert_not_null(strstr(fl_client_errmsg(c), "refused"), "%s", fl_client_errmsg(c));
  fl_client_free(c);
}

static void rollout_to(fl_client *c, uint64_t v) {
  f.rollout_version = v;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.rollout_err, FL_OK);
  cr_assert_eq(active_version(c), v);
}

static size_t cached_models(void) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "ls '%s/models' | grep -c '\\.pb$'", dir);
  FILE *p = popen(cmd, "r");
  size_t n = 0;
  cr_assert_eq(fscanf(p, "%zu", &n), 1);
  pclose(p);
  return n;
}

Test(client_model, swap_keeps_previous_for_rollback_and_prunes_the_rest) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  cr_assert_eq(fl_client_rollback(c), FL_E_NOTFOUND);
  rollout_to(c, 2);
  rollout_to(c, 3);
  rollout_to(c, 4);
  /* active v4, previous v3, and v1 (the training base) */
  cr_assert_eq(cached_models(), 3);
  cr_assert_eq(fl_client_rollback(c), FL_OK);
  cr_assert_eq(active_version(c), 3);
  cr_assert_eq(fl_client_rollback(c), FL_OK, "rolling back twice toggles");
  cr_assert_eq(active_version(c), 4);
  fl_client_free(c);
}

/* Flips one byte of the cached file for version v. */
static void corrupt_cached(uint64_t v) {
  char hex[2 * FL_SHA256_LEN + 1], path[256];
  fl__hex(f.v[v].sha, FL_SHA256_LEN, hex);
  snprintf(path, sizeof path, "%s/models/%s.pb", dir, hex);
  FILE *fp = fopen(path, "r+b");
  cr_assert_not_null(fp, "%s", path);
  fseek(fp, -101, SEEK_END);
  int ch = fgetc(fp);
  fseek(fp, -101, SEEK_END);
  fputc(ch ^ 0x10, fp);
  fclose(fp);
}

Test(client_model, corrupted_active_file_falls_back_to_previous) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  rollout_to(c, 2);
  rollout_to(c, 3);
  fl_client_free(c);
  corrupt_cached(3);
  c = open_client(&tr);
  cr_assert_eq(active_version(c), 2);
  predict_ok(c);
  fl_client_free(c);
  /* The fallback is persisted. */
  cr_assert_eq(reopened_version(&tr), 2);
}

Test(client_model, corrupted_cached_base_is_downloaded_again) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  f.rollout_version = 1;
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK);
  cr_assert_eq(f.n_model_get, 1);
  rollout_to(c, 2);
  cr_assert_eq(f.n_model_get, 2);
  corrupt_cached(1);
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(f.n_model_get, 3);
  /* The refused file was replaced by the download: the cache is written once per version,
   * so a damaged file that stayed would cost a download every round. */
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(f.n_model_get, 3);
  fl_client_free(c);
}

/* A power loss can leave a cached model (written without fsync) empty or cut short: it is
 * refused at load, removed, downloaded again and rewritten. */
Test(client_model, torn_cached_base_is_downloaded_again_and_rewritten) {
  fl_transport tr = fake_transport(&f);
  fl_client *c = enrolled_client(&tr);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(f.n_model_get, 1);
  char hex[2 * FL_SHA256_LEN + 1], path[256];
  fl__hex(f.v[1].sha, FL_SHA256_LEN, hex);
  snprintf(path, sizeof path, "%s/models/%s.pb", dir, hex);
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(truncate(path, st.st_size / 2), 0);
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.outcome, FL_ROUND_UPLOADED);
  cr_assert_eq(f.n_model_get, 2);
  struct stat st2;
  cr_assert_eq(stat(path, &st2), 0);
  cr_assert_eq(st2.st_size, st.st_size, "the file was written again in full");
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(f.n_model_get, 2);
  fl_client_free(c);
}

Test(client_model, without_rollouts_the_training_base_can_be_served) {
  fl_transport tr2 = fake_transport(&f);
  fl_client_opts o;
  fake_opts(&o, dir, &tr2);
  o.follow_training_base = 1;
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_OK);
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert_eq(fl_client_set_data_memory(c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
  fl_round_result r = {.size = sizeof r};
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK, "%s", fl_client_errmsg(c));
  cr_assert_eq(r.running_version, 1);
  fl_model_info mi = {.size = sizeof mi};
  cr_assert_eq(fl_client_model_info(c, &mi), FL_OK);
  cr_assert_eq(memcmp(mi.sha256, f.v[1].sha, FL_SHA256_LEN), 0, "the untrained base is served");
  /* An explicit rollout wins over the training base. */
  f.rollout_version = 3;
  cr_assert_eq(fl_client_run_round(c, &r), FL_OK);
  cr_assert_eq(active_version(c), 3);
  fl_client_free(c);
}
