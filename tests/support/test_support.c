/*
 * The test-support library itself (flsupport): the guard cleans up after an owner that dies
 * without a word, spawned children die with their parent, the signer's envelopes verify as
 * docs/SIGNING.md says (and its forgeries do not), the RNGs are the documented ones.
 * No coordinator and no database: those parts are exercised by every integration test.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "digest.h"
#include "fl/err.h"
#include "flsupport/admin.h"
#include "flsupport/guard.h"
#include "flsupport/proc.h"
#include "flsupport/rng.h"
#include "flsupport/signer.h"

/* Gone, or a zombie that its (new) parent has not reaped yet: either way it runs no more. */
static bool dead(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return true;
  bool zombie = false;
  if (fgets(buf, sizeof buf, f) != NULL) {
    const char *p = strrchr(buf, ')');
    zombie = p != NULL && (p[2] == 'Z' || p[2] == 'X');
  }
  fclose(f);
  return zombie;
}

static bool wait_dead(pid_t pid, int ms) {
  for (int waited = 0; waited < ms; waited += 20) {
    if (dead(pid))
      return true;
    fl_sup_sleep_ms(20);
  }
  return dead(pid);
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void make_tree(char dir[256]) {
  char sub[300], file[320];
  cr_assert_eq(fl_sup_mkdtemp(dir, 256, "fl-test-support-"), FL_OK);
  snprintf(sub, sizeof sub, "%s/a", dir);
  cr_assert_eq(mkdir(sub, 0700), 0);
  snprintf(file, sizeof file, "%s/a/f", dir);
  FILE *f = fopen(file, "w");
  cr_assert_not_null(f);
  fputs("x", f);
  fclose(f);
}

/* Forks an owner that registers dir (and, when kill_child, a sleeping child that would
 * outlive it) with a guard of its own, optionally forgets dir again, and dies by SIGKILL.
 * Returns the sleeping child's pid (0 without one) and the guard's in *guard. */
static pid_t owner_dies(const char *dir, bool kill_child, bool forget, pid_t *guard) {
  int p[2];
  cr_assert_eq(pipe(p), 0);
  pid_t owner = fork();
  cr_assert_geq(owner, 0);
  if (owner == 0) {
    pid_t pids[2] = {0, 0};
    char *argv[] = {"sleep", "60", NULL};
    fl_sup_spawn_opts o = {.survive_parent = true};
    if (fl_sup_guard_dir(dir, true) != FL_OK || (forget && fl_sup_guard_dir(dir, false)))
      _exit(1);
    if (kill_child &&
        (fl_sup_spawn(&pids[0], argv, &o) != FL_OK || fl_sup_guard_pid(pids[0], true) != FL_OK))
      _exit(1);
    pids[1] = fl_sup_guard_pid_of();
    if (write(p[1], pids, sizeof pids) != (ssize_t)sizeof pids)
      _exit(1);
    raise(SIGKILL);
  }
  close(p[1]);
  pid_t pids[2] = {0, 0};
  cr_assert_eq(read(p[0], pids, sizeof pids), (ssize_t)sizeof pids);
  close(p[0]);
  int st;
  cr_assert_eq(waitpid(owner, &st, 0), owner);
  cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  cr_assert_gt(pids[1], 0, "no guard");
  *guard = pids[1];
  return pids[0];
}

Test(guard, cleans_up_after_its_owner_is_killed) {
  char dir[256];
  pid_t guard;
  make_tree(dir);
  pid_t child = owner_dies(dir, true, false, &guard);
  cr_assert(wait_dead(guard, 10000), "the guard did not finish");
  cr_assert(dead(child), "the registered process survived its owner");
  cr_assert_not(exists(dir), "the registered directory survived its owner");
}

Test(guard, leaves_what_was_forgotten) {
  char dir[256];
  pid_t guard;
  make_tree(dir);
  owner_dies(dir, false, true, &guard);
  cr_assert(wait_dead(guard, 10000), "the guard did not finish");
  cr_assert(exists(dir), "a forgotten directory was removed");
  fl_sup_rmtree(dir);
  cr_assert_not(exists(dir));
}

Test(proc, a_child_dies_with_its_parent) {
  int p[2];
  cr_assert_eq(pipe(p), 0);
  pid_t parent = fork();
  if (parent == 0) {
    pid_t child = 0;
    char *argv[] = {"sleep", "60", NULL};
    if (fl_sup_spawn(&child, argv, NULL) != FL_OK ||
        write(p[1], &child, sizeof child) != (ssize_t)sizeof child)
      _exit(1);
    fl_sup_sleep_ms(200); /* let it exec */
    raise(SIGKILL);
  }
  pid_t child = 0;
  cr_assert_eq(read(p[0], &child, sizeof child), (ssize_t)sizeof child);
  waitpid(parent, NULL, 0);
  cr_assert(wait_dead(child, 5000), "PR_SET_PDEATHSIG did not end the child");
}

Test(proc, run_terminate_and_paths) {
  char *yes[] = {"true", NULL}, *no[] = {"false", NULL}, *nap[] = {"sleep", "60", NULL};
  cr_assert_eq(fl_sup_run(yes, NULL), FL_OK);
  cr_assert_eq(fl_sup_run(no, NULL), FL_E_IO);
  pid_t pid;
  cr_assert_eq(fl_sup_spawn(&pid, nap, NULL), FL_OK);
  cr_assert(fl_sup_alive(pid));
  cr_assert_eq(fl_sup_terminate(pid, SIGTERM, 5000), 128 + SIGTERM);
  cr_assert_eq(fl_sup_terminate(pid, SIGTERM, 10), -1, "not our child any more");
  cr_assert_gt(fl_sup_free_port(), 0);
  char small[8];
  cr_assert_eq(fl_sup_mkdtemp(small, sizeof small, "much-too-long-"), FL_E_IO);
  char dir[256];
  make_tree(dir);
  fl_sup_rmtree(dir);
  cr_assert_not(exists(dir));
}

Test(admin, says_why_it_cannot_connect) {
  char url[64];
  fl_sup_admin *a = NULL;
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", fl_sup_free_port());
  cr_assert_eq(fl_sup_admin_new(&a, url, "token"), FL_OK);
  cr_assert_eq(fl_sup_admin_probe(a, "/readyz"), FL_E_TRANSPORT);
  cr_assert(strstr(fl_sup_admin_errmsg(a), "GET") != NULL, "%s", fl_sup_admin_errmsg(a));
  fl_sup_admin_free(a);
}

/* The request signature of an envelope, checked as the coordinator checks it. */
static int verify_request(const fl_key *k, const char *method, const char *path,
                          const Fl__V1__SignedRequest *sr) {
  uint8_t pub[FL_PUBKEY_LEN], digest[FL_SHA256_LEN];
  fl__key_public(k, pub);
  cr_assert_eq(fl__request_digest(method, path, sr->device_id, sr->timestamp_ms, sr->nonce.data,
                                  sr->nonce.len, sr->body.data ? sr->body.data : (uint8_t *)"",
                                  sr->body.len, digest),
               FL_OK);
  return fl__verify_raw(pub, digest, sizeof digest, sr->signature.data, sr->signature.len);
}

Test(signer, envelopes_verify_and_forgeries_do_not) {
  fl_key *k;
  uint8_t *env, body[] = {1, 2, 3};
  size_t n;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  int64_t now = fl_sup_wall_ms();
  cr_assert_eq(fl_sup_envelope(k, 42, "POST", "/v1/checkin", body, 3, NULL, &env, &n), FL_OK);
  Fl__V1__SignedRequest *sr = fl__v1__signed_request__unpack(NULL, n, env);
  cr_assert_not_null(sr);
  cr_assert_eq(sr->device_id, 42);
  cr_assert_eq(sr->nonce.len, 16);
  cr_assert(sr->timestamp_ms >= now && sr->timestamp_ms < now + 60000);
  cr_assert_eq(verify_request(k, "POST", "/v1/checkin", sr), FL_OK);
  cr_assert_neq(verify_request(k, "POST", "/v1/other", sr), FL_OK, "bound to the path");
  fl__v1__signed_request__free_unpacked(sr, NULL);
  free(env);

  static const uint8_t nonce[16] = {7};
  fl_sup_forge f = {.timestamp_ms = 5,
                    .nonce = nonce,
                    .nonce_len = 16,
                    .device_id = 9,
                    .corrupt_signature = true};
  cr_assert_eq(fl_sup_envelope(k, 42, "GET", "/v1/x", NULL, 0, &f, &env, &n), FL_OK);
  sr = fl__v1__signed_request__unpack(NULL, n, env);
  cr_assert_not_null(sr);
  cr_assert(sr->device_id == 9 && sr->timestamp_ms == 5 && sr->nonce.data[0] == 7);
  cr_assert_neq(verify_request(k, "GET", "/v1/x", sr), FL_OK, "a corrupt signature verifies");
  fl__v1__signed_request__free_unpacked(sr, NULL);
  free(env);
  fl__key_free(k);
}

/* The update signature of an upload envelope, checked as the coordinator checks it. */
static void check_upload(const fl_key *k, const uint8_t *env, size_t n) {
  uint8_t pub[FL_PUBKEY_LEN], digest[FL_SHA256_LEN];
  fl__key_public(k, pub);
  Fl__V1__SignedRequest *sr = fl__v1__signed_request__unpack(NULL, n, env);
  cr_assert_not_null(sr);
  cr_assert_eq(sr->signature.len, 0, "an upload's envelope signature must be empty");
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
  cr_assert_not_null(u);
  cr_assert_eq(u->round_id, 3);
  cr_assert_eq(fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u,
                                 NULL, digest),
               FL_OK);
  cr_assert_eq(fl__verify_raw(pub, digest, sizeof digest, u->signature.data, u->signature.len),
               FL_OK);
  fl__v1__update_upload__free_unpacked(u, NULL);
  fl__v1__signed_request__free_unpacked(sr, NULL);
}

Test(signer, uploads_carry_one_signature_that_verifies) {
  fl_key *k;
  uint8_t *env, *packed;
  size_t n;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  u.round_id = 3;
  u.model_id = 1;
  u.sample_count = 10;
  /* As a bench builds it: the struct, signed on the way out. */
  cr_assert_eq(fl_sup_upload_envelope(k, 5, &u, &env, &n), FL_OK);
  cr_assert_eq(u.signature.len, 0, "u is left as it was");
  check_upload(k, env, n);
  free(env);
  /* As the harness sends it: a packed unsigned upload, signed inside fl_sup_envelope. */
  size_t len = fl__v1__update_upload__get_packed_size(&u);
  packed = malloc(len + 1);
  fl__v1__update_upload__pack(&u, packed);
  cr_assert_eq(fl_sup_envelope(k, 5, "POST", "/v1/updates", packed, len, NULL, &env, &n), FL_OK);
  check_upload(k, env, n);
  free(env);
  free(packed);
  fl__key_free(k);
}

Test(signer, enrollment_round_trip) {
  fl_key *k;
  uint8_t *env, pub[FL_PUBKEY_LEN], got[FL_PUBKEY_LEN];
  size_t n;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  fl__key_public(k, pub);
  cr_assert_eq(fl_sup_enroll_request(k, "tok", &env, &n), FL_OK);
  Fl__V1__SignedRequest *sr = fl__v1__signed_request__unpack(NULL, n, env);
  cr_assert_not_null(sr);
  cr_assert_eq(sr->device_id, 0);
  cr_assert_eq(verify_request(k, "POST", "/v1/enroll", sr), FL_OK);
  Fl__V1__EnrollRequest *e = fl__v1__enroll_request__unpack(NULL, sr->body.len, sr->body.data);
  cr_assert_not_null(e);
  cr_assert_str_eq(e->enrollment_token, "tok");
  cr_assert_eq(memcmp(e->public_key.data, pub, FL_PUBKEY_LEN), 0);
  fl__v1__enroll_request__free_unpacked(e, NULL);
  fl__v1__signed_request__free_unpacked(sr, NULL);
  free(env);

  Fl__V1__EnrollResponse r = FL__V1__ENROLL_RESPONSE__INIT;
  uint8_t buf[128];
  uint64_t id = 0;
  r.device_id = 77;
  r.coordinator_public_key = (ProtobufCBinaryData){FL_PUBKEY_LEN, pub};
  size_t len = fl__v1__enroll_response__pack(&r, buf);
  cr_assert_eq(fl_sup_enroll_parse(buf, len, &id, got), FL_OK);
  cr_assert(id == 77 && memcmp(got, pub, FL_PUBKEY_LEN) == 0);
  r.coordinator_public_key.len = 5;
  len = fl__v1__enroll_response__pack(&r, buf);
  cr_assert_eq(fl_sup_enroll_parse(buf, len, &id, got), FL_E_PARSE, "a short key is refused");
  fl__key_free(k);
}

Test(rng, the_documented_generators) {
  uint64_t s = 0;
  /* SplitMix64's reference output for seed 0. */
  cr_assert_eq(fl_sup_splitmix64(&s), 0xe220a8397b1dcdafULL);
  fl_sup_rng a, b;
  fl_sup_rng_seed(&a, 1);
  fl_sup_rng_seed(&b, 1);
  for (int i = 0; i < 100; i++)
    cr_assert_eq(fl_sup_rng_next(&a), fl_sup_rng_next(&b));
  for (int i = 0; i < 1000; i++)
    cr_assert_lt(fl_sup_rng_below(&a, 7), 7);
  cr_assert_eq(fl_sup_rng_below(&a, 0), 0);
  for (int i = 0; i < 1000; i++) {
    float x = fl_sup_splitmix_unit(&s);
    cr_assert(x >= -1.0f && x < 1.0f);
  }
}
