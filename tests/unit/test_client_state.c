/* The state directory: recovery after power loss (half-written temp files), the device key
 * (0600, atomic, reused), the identity, the lock against a second handle. */
#include <fcntl.h>

#include "test_client_fake.h"

static fake_coord f;
static fl_transport tr;
static char dir[64];

static void setup(void) {
  fake_init(&f);
  tr = fake_transport(&f);
  fake_tmpdir(dir, sizeof dir);
}

static void teardown(void) {
  fake_free(&f);
  fake_rmdir(dir);
}

TestSuite(client_state, .init = setup, .fini = teardown);

static fl_client *open_client(void) {
  fl_client_opts o;
  fake_opts(&o, dir, &tr);
  fl_client *c = NULL;
  int err = fl_client_new(&c, &o);
  cr_assert_eq(err, FL_OK, "%s", fl_strerror(err));
  return c;
}

static void write_file(const char *name, const char *content) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *fp = fopen(path, "wb");
  cr_assert_not_null(fp, "%s", path);
  fputs(content, fp);
  fclose(fp);
}

static bool exists(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return access(path, F_OK) == 0;
}

static mode_t mode_of(const char *name) {
  char path[256];
  struct stat st;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  cr_assert_eq(stat(path, &st), 0, "%s", path);
  return st.st_mode & 0777;
}

Test(client_state, new_directory_is_private) {
  fake_rmdir(dir); /* let the client create it */
  fl_client *c = open_client();
  cr_assert_eq(mode_of(""), 0700);
  cr_assert(!fl_client_is_enrolled(c));
  cr_assert_eq(fl_client_device_id(c), 0);
  fl_client_free(c);
}

Test(client_state, half_written_temp_files_are_removed) {
  /* What a power loss in the middle of fl__write_file_atomic leaves behind. */
  char models[128];
  snprintf(models, sizeof models, "%s/models", dir);
  cr_assert_eq(mkdir(models, 0700), 0);
  write_file("identity.tmp.0123456789abcdef", "fleetlearn-identity 1\ndevice_id 9");
  write_file("device.key.tmp.fedcba9876543210", "-----BEGIN PRIV");
  write_file("rollout.tmp.00000000000000aa", "fleetlearn-rollout 1\nact");
  write_file("models/0a0a.pb.tmp.1111111111111111", "\x08\x01\x10");
  write_file("notes.txt", "not ours");
  fl_client *c = open_client();
  cr_assert(!exists("identity.tmp.0123456789abcdef"));
  cr_assert(!exists("device.key.tmp.fedcba9876543210"));
  cr_assert(!exists("rollout.tmp.00000000000000aa"));
  cr_assert(!exists("models/0a0a.pb.tmp.1111111111111111"));
  cr_assert(exists("notes.txt"));
  /* The half-written files were not taken for real ones. */
  cr_assert(!fl_client_is_enrolled(c));
  fl_model_info mi = {.size = sizeof mi};
  cr_assert_eq(fl_client_model_info(c, &mi), FL_E_NOTFOUND);
  /* And the directory works: enrollment writes the real files. */
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert(exists("identity"));
  fl_client_free(c);
}

Test(client_state, interrupted_enrollment_recovers) {
  /* The key was written, the identity never was (power lost during enrollment). */
  fl_client *c = open_client();
  f.fail_next = 1000;
  cr_assert_neq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  fl_client_free(c);
  cr_assert(exists("device.key"));
  cr_assert(!exists("identity"));
  write_file("identity.tmp.abcdefabcdefabcd", "fleetlearn-identity 1\ndevice_id 7\ncoordinat");
  f.fail_next = 0;
  c = open_client();
  cr_assert(!fl_client_is_enrolled(c));
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert(fl_client_is_enrolled(c));
  fl_client_free(c);
}

static void key_public(const char *path, uint8_t pub[FL_PUBKEY_LEN]) {
  fl_key *k = NULL;
  cr_assert_eq(fl__key_load_pem(&k, path), FL_OK);
  cr_assert_eq(fl__key_public(k, pub), FL_OK);
  fl__key_free(k);
}

Test(client_state, key_is_0600_and_reused) {
  fl_client *c = open_client();
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert_eq(mode_of("device.key"), 0600);
  cr_assert_eq(mode_of("identity"), 0600);
  char path[256];
  snprintf(path, sizeof path, "%s/device.key", dir);
  uint8_t pub[FL_PUBKEY_LEN];
  key_public(path, pub);
  cr_assert_eq(memcmp(pub, f.device_pub, FL_PUBKEY_LEN), 0, "the enrolled key is the saved one");
  fl_client_free(c);

  c = open_client();
  cr_assert(fl_client_is_enrolled(c));
  cr_assert_eq(fl_client_device_id(c), FAKE_DEVICE_ID);
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert_eq(f.n_enroll, 1, "already enrolled: no second request");
  uint8_t again[FL_PUBKEY_LEN];
  key_public(path, again);
  cr_assert_eq(memcmp(pub, again, FL_PUBKEY_LEN), 0);
  fl_client_free(c);
}

Test(client_state, failed_enrollment_keeps_the_key_for_the_retry) {
  fl_client *c = open_client();
  cr_assert_eq(fl_client_enroll(c, "wrong-token", NULL, 0, NULL), FL_E_BADSIG);
  cr_assert(!fl_client_is_enrolled(c));
  char path[256];
  snprintf(path, sizeof path, "%s/device.key", dir);
  uint8_t pub[FL_PUBKEY_LEN];
  key_public(path, pub);
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  cr_assert_eq(memcmp(pub, f.device_pub, FL_PUBKEY_LEN), 0);
  fl_client_free(c);
}

Test(client_state, readable_key_is_made_private) {
  fl_client *c = open_client();
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  fl_client_free(c);
  char path[256];
  snprintf(path, sizeof path, "%s/device.key", dir);
  cr_assert_eq(chmod(path, 0644), 0);
  c = open_client();
  cr_assert_eq(mode_of("device.key"), 0600);
  fl_client_free(c);
}

Test(client_state, second_handle_on_a_directory_is_refused) {
  fl_client *c = open_client();
  fl_client_opts o;
  fake_opts(&o, dir, &tr);
  fl_client *d = NULL;
  cr_assert_eq(fl_client_new(&d, &o), FL_E_STATE);
  cr_assert_null(d);
  fl_client_free(c);
  cr_assert_eq(fl_client_new(&d, &o), FL_OK, "the lock goes with the handle");
  fl_client_free(d);
}

Test(client_state, corrupt_identity_is_an_error_not_a_new_device) {
  fl_client *c = open_client();
  cr_assert_eq(fl_client_enroll(c, "tok", NULL, 0, NULL), FL_OK);
  fl_client_free(c);
  write_file("identity", "fleetlearn-identity 1\ndevice_id x\n");
  fl_client_opts o;
  fake_opts(&o, dir, &tr);
  cr_assert_eq(fl_client_new(&c, &o), FL_E_PARSE);
}

Test(client_state, corrupt_key_is_an_error_not_a_new_key) {
  write_file("device.key", "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n");
  fl_client_opts o;
  fake_opts(&o, dir, &tr);
  fl_client *c = NULL;
  cr_assert_eq(fl_client_new(&c, &o), FL_E_PARSE);
}

Test(client_state, options_are_checked) {
  fl_client_opts o;
  fl_client *c = NULL;
  fake_opts(&o, dir, &tr);
  o.version = 0;
  cr_assert_eq(fl_client_new(&c, &o), FL_E_INVAL);
  fake_opts(&o, NULL, &tr);
  cr_assert_eq(fl_client_new(&c, &o), FL_E_INVAL);
  fake_opts(&o, dir, NULL);
  cr_assert_eq(fl_client_new(&c, &o), FL_E_INVAL, "neither a server URL nor a transport");
  cr_assert_null(c);
  fl_client_free(NULL);
}

Test(client_state, version_macros_match_the_library) {
  cr_assert_eq(fl_version(), FL_VERSION_HEX);
  char buf[32];
  snprintf(buf, sizeof buf, "%d.%d.%d", FL_VERSION_MAJOR, FL_VERSION_MINOR, FL_VERSION_PATCH);
  cr_assert_str_eq(fl_version_string(), buf);
}
