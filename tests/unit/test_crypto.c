/* Ed25519 keys and signatures, SHA-256, hex, atomic file writes. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto.h"
#include "fl/err.h"

static char tmpdir[64];

static void make_tmpdir(void) {
  /* mkdtemp replaces the six trailing X characters. */
  strcpy(tmpdir, "/tmp/fl-test-crypto-");
  memset(tmpdir + strlen(tmpdir), 'X', 6);
  tmpdir[strlen("/tmp/fl-test-crypto-") + 6] = '\0';
  cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void) {
  DIR *d = opendir(tmpdir);
  if (d == NULL)
    return;
  struct dirent *e;
  char p[512];
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
    unlink(p);
  }
  closedir(d);
  rmdir(tmpdir);
}

/* Number of directory entries other than . and .., and whether `name` is among them. */
static int count_entries(const char *name, int *found) {
  DIR *d = opendir(tmpdir);
  cr_assert_not_null(d);
  int n = 0;
  *found = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    n++;
    if (strcmp(e->d_name, name) == 0)
      *found = 1;
  }
  closedir(d);
  return n;
}

static void path_in_tmp(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/%s", tmpdir, name);
}

Test(crypto, sign_and_verify) {
  fl_key *k = NULL;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  cr_assert(fl__key_has_private(k));
  const char msg[] = "model version 7";
  uint8_t sig[FL_SIG_LEN], pub[FL_PUBKEY_LEN];
  cr_assert_eq(fl__sign(k, msg, sizeof msg, sig), FL_OK);
  cr_assert_eq(fl__verify(k, msg, sizeof msg, sig, sizeof sig), FL_OK);
  cr_assert_eq(fl__key_public(k, pub), FL_OK);
  cr_assert_eq(fl__verify_raw(pub, msg, sizeof msg, sig, sizeof sig), FL_OK);
  cr_assert_eq(fl__verify(k, msg, sizeof msg - 1, sig, sizeof sig), FL_E_BADSIG);
  fl__key_free(k);
  fl__key_free(NULL);
}

Test(crypto, rfc8032_test_vector_1) {
  /* RFC 8032 section 7.1, TEST 1: the empty message. */
  uint8_t pub[32], sig[64];
  cr_assert_eq(
      fl__unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", pub, 32),
      FL_OK);
  cr_assert_eq(fl__unhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
                         "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
                         sig, 64),
               FL_OK);
  cr_assert_eq(fl__verify_raw(pub, "", 0, sig, 64), FL_OK);
  cr_assert_eq(fl__verify_raw(pub, "x", 1, sig, 64), FL_E_BADSIG);
}

Test(crypto, every_flipped_bit_is_refused) {
  fl_key *k = NULL;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  uint8_t msg[16];
  for (int i = 0; i < 16; i++)
    msg[i] = (uint8_t)(i * 37 + 1);
  uint8_t sig[FL_SIG_LEN];
  cr_assert_eq(fl__sign(k, msg, sizeof msg, sig), FL_OK);
  for (size_t bit = 0; bit < 8 * sizeof msg; bit++) {
    msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    cr_assert_eq(fl__verify(k, msg, sizeof msg, sig, sizeof sig), FL_E_BADSIG, "message bit %zu",
                 bit);
    msg[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  for (size_t bit = 0; bit < 8 * sizeof sig; bit++) {
    sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    cr_assert_eq(fl__verify(k, msg, sizeof msg, sig, sizeof sig), FL_E_BADSIG, "signature bit %zu",
                 bit);
    sig[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  cr_assert_eq(fl__verify(k, msg, sizeof msg, sig, sizeof sig), FL_OK);
  fl__key_free(k);
}

Test(crypto, wrong_length_signature_refused) {
  fl_key *k = NULL;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  uint8_t sig[FL_SIG_LEN + 1] = {0};
  cr_assert_eq(fl__sign(k, "m", 1, sig), FL_OK);
  cr_assert_eq(fl__verify(k, "m", 1, sig, FL_SIG_LEN - 1), FL_E_BADSIG);
  cr_assert_eq(fl__verify(k, "m", 1, sig, FL_SIG_LEN + 1), FL_E_BADSIG);
  cr_assert_eq(fl__verify(k, "m", 1, sig, 0), FL_E_BADSIG);
  cr_assert_eq(fl__verify(k, "m", 1, NULL, FL_SIG_LEN), FL_E_BADSIG);
  uint8_t pub[FL_PUBKEY_LEN];
  cr_assert_eq(fl__key_public(k, pub), FL_OK);
  cr_assert_eq(fl__verify_raw(pub, "m", 1, sig, FL_SIG_LEN - 1), FL_E_BADSIG);
  fl__key_free(k);
}

Test(crypto, other_key_refused) {
  fl_key *a = NULL, *b = NULL;
  cr_assert_eq(fl__key_generate(&a), FL_OK);
  cr_assert_eq(fl__key_generate(&b), FL_OK);
  uint8_t sig[FL_SIG_LEN];
  cr_assert_eq(fl__sign(a, "m", 1, sig), FL_OK);
  cr_assert_eq(fl__verify(b, "m", 1, sig, FL_SIG_LEN), FL_E_BADSIG);
  fl__key_free(a);
  fl__key_free(b);
}

Test(crypto, public_only_key) {
  fl_key *k = NULL, *p = NULL;
  uint8_t pub[FL_PUBKEY_LEN], pub2[FL_PUBKEY_LEN], sig[FL_SIG_LEN];
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  cr_assert_eq(fl__key_public(k, pub), FL_OK);
  cr_assert_eq(fl__key_from_public(&p, pub), FL_OK);
  cr_assert_not(fl__key_has_private(p));
  cr_assert_eq(fl__key_public(p, pub2), FL_OK);
  cr_assert_arr_eq(pub, pub2, FL_PUBKEY_LEN);
  cr_assert_eq(fl__sign(p, "m", 1, sig), FL_E_INVAL);
  cr_assert_eq(fl__sign(k, "m", 1, sig), FL_OK);
  cr_assert_eq(fl__verify(p, "m", 1, sig, FL_SIG_LEN), FL_OK);
  fl__key_free(k);
  fl__key_free(p);
}

Test(crypto, pem_round_trip_mode_0600, .init = make_tmpdir, .fini = remove_tmpdir) {
  char path[256];
  path_in_tmp(path, sizeof path, "device.key");
  fl_key *k = NULL, *l = NULL;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  mode_t old = umask(0);
  int err = fl__key_save_pem(k, path);
  umask(old);
  cr_assert_eq(err, FL_OK);
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", (unsigned)(st.st_mode & 0777));
  cr_assert_eq(fl__key_load_pem(&l, path), FL_OK);
  cr_assert(fl__key_has_private(l));
  uint8_t a[FL_PUBKEY_LEN], b[FL_PUBKEY_LEN], s1[FL_SIG_LEN], s2[FL_SIG_LEN];
  cr_assert_eq(fl__key_public(k, a), FL_OK);
  cr_assert_eq(fl__key_public(l, b), FL_OK);
  cr_assert_arr_eq(a, b, FL_PUBKEY_LEN);
  /* Ed25519 is deterministic: the same key signs the same bytes identically. */
  cr_assert_eq(fl__sign(k, "abc", 3, s1), FL_OK);
  cr_assert_eq(fl__sign(l, "abc", 3, s2), FL_OK);
  cr_assert_arr_eq(s1, s2, FL_SIG_LEN);
  FILE *f = fopen(path, "r");
  char line[64] = {0};
  cr_assert_not_null(fgets(line, sizeof line, f));
  fclose(f);
  cr_assert_str_eq(line, "-----BEGIN PRIVATE KEY-----\n");
  fl__key_free(k);
  fl__key_free(l);
}

Test(crypto, pem_public_key_loads, .init = make_tmpdir, .fini = remove_tmpdir) {
  char path[256];
  path_in_tmp(path, sizeof path, "coord.pub");
  fl_key *k = NULL, *l = NULL;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  FILE *f = fopen(path, "w");
  cr_assert_eq(PEM_write_PUBKEY(f, (EVP_PKEY *)(void *)k), 1);
  fclose(f);
  cr_assert_eq(fl__key_load_pem(&l, path), FL_OK);
  cr_assert_not(fl__key_has_private(l));
  uint8_t sig[FL_SIG_LEN];
  cr_assert_eq(fl__sign(k, "z", 1, sig), FL_OK);
  cr_assert_eq(fl__verify(l, "z", 1, sig, FL_SIG_LEN), FL_OK);
  cr_assert_eq(fl__key_save_pem(l, path), FL_E_INVAL);
  fl__key_free(k);
  fl__key_free(l);
}

Test(crypto, pem_load_errors, .init = make_tmpdir, .fini = remove_tmpdir) {
  char path[256];
  fl_key *k = (fl_key *)1;
  path_in_tmp(path, sizeof path, "missing.key");
  cr_assert_eq(fl__key_load_pem(&k, path), FL_E_IO);
  path_in_tmp(path, sizeof path, "garbage.key");
  cr_assert_eq(fl__write_file_atomic(path, "not a key\n", 10, 0600), FL_OK);
  cr_assert_eq(fl__key_load_pem(&k, path), FL_E_PARSE);
  /* An RSA key is a valid PEM key but not Ed25519. */
  EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
  cr_assert_not_null(rsa);
  FILE *f = fopen(path, "w");
  PEM_write_PrivateKey(f, rsa, NULL, NULL, 0, NULL, NULL);
  fclose(f);
  EVP_PKEY_free(rsa);
  cr_assert_eq(fl__key_load_pem(&k, path), FL_E_PARSE);
  cr_assert_eq(k, (fl_key *)1, "*out untouched on error");
}

Test(crypto, atomic_write_leaves_no_temp_file, .init = make_tmpdir, .fini = remove_tmpdir) {
  char path[256];
  path_in_tmp(path, sizeof path, "model.bin");
  cr_assert_eq(fl__write_file_atomic(path, "first", 5, 0644), FL_OK);
  cr_assert_eq(fl__write_file_atomic(path, "second!", 7, 0640), FL_OK);
  int found = 0;
  cr_assert_eq(count_entries("model.bin", &found), 1);
  cr_assert(found);
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_size, 7);
  cr_assert_eq(st.st_mode & 0777, 0640);
  char buf[16] = {0};
  FILE *f = fopen(path, "r");
  cr_assert_eq(fread(buf, 1, sizeof buf, f), 7);
  fclose(f);
  cr_assert_str_eq(buf, "second!");
  cr_assert_eq(fl__write_file_atomic(path, NULL, 0, 0600), FL_OK);
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_size, 0);
}

Test(crypto, atomic_write_failure_keeps_old_file, .init = make_tmpdir, .fini = remove_tmpdir) {
  char path[256], sub[256];
  path_in_tmp(path, sizeof path, "keep");
  cr_assert_eq(fl__write_file_atomic(path, "old", 3, 0600), FL_OK);
  /* A directory under the target name: rename() fails after the temp file was written. */
  path_in_tmp(sub, sizeof sub, "dir");
  cr_assert_eq(mkdir(sub, 0700), 0);
  char inner[300];
  snprintf(inner, sizeof inner, "%s/x", sub);
  cr_assert_eq(fl__write_file_atomic(inner, "x", 1, 0600), FL_OK);
  cr_assert_neq(fl__write_file_atomic(sub, "new", 3, 0600), FL_OK);
  unlink(inner);
  int found = 0;
  cr_assert_eq(count_entries("keep", &found), 2, "no temp file left behind");
  rmdir(sub);
  path_in_tmp(sub, sizeof sub, "no/such/dir/f");
  cr_assert_eq(fl__write_file_atomic(sub, "x", 1, 0600), FL_E_IO);
}

Test(crypto, sha256_known_answers) {
  uint8_t d[FL_SHA256_LEN];
  char hex[2 * FL_SHA256_LEN + 1];
  cr_assert_eq(fl__sha256("abc", 3, d), FL_OK);
  fl__hex(d, sizeof d, hex);
  cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  cr_assert_eq(fl__sha256("", 0, d), FL_OK);
  fl__hex(d, sizeof d, hex);
  cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

Test(crypto, sha256_incremental_matches_one_shot) {
  const uint8_t expect_bytes[] = {1, 2, 3, 4, 8, 7, 6, 5, 4,   3,   2,   1,
                                  3, 0, 0, 0, 0, 0, 0, 0, 'x', 'y', 'z', 'q'};
  uint8_t a[FL_SHA256_LEN], b[FL_SHA256_LEN];
  fl_sha256 h;
  cr_assert_eq(fl__sha256_begin(&h), FL_OK);
  fl__sha256_u32(&h, 0x04030201u);
  fl__sha256_u64(&h, 0x0102030405060708ULL);
  fl__sha256_bytes(&h, "xyz", 3);
  fl__sha256_update(&h, "q", 1);
  cr_assert_eq(fl__sha256_end(&h, a), FL_OK);
  cr_assert_null(h.md_ctx);
  cr_assert_eq(fl__sha256(expect_bytes, sizeof expect_bytes, b), FL_OK);
  cr_assert_arr_eq(a, b, FL_SHA256_LEN);
  cr_assert_eq(fl__sha256_begin(&h), FL_OK);
  fl__sha256_abort(&h);
  cr_assert_null(h.md_ctx);
}

Test(crypto, hex_round_trip_and_errors) {
  uint8_t in[4] = {0x00, 0xab, 0xCD, 0xff}, out[4];
  char hex[9];
  fl__hex(in, 4, hex);
  cr_assert_str_eq(hex, "00abcdff");
  cr_assert_eq(fl__unhex("00ABcdFF", out, 4), FL_OK);
  cr_assert_arr_eq(in, out, 4);
  cr_assert_eq(fl__unhex("00abcdf", out, 4), FL_E_PARSE);
  cr_assert_eq(fl__unhex("00abcdff00", out, 4), FL_E_PARSE);
  cr_assert_eq(fl__unhex("00abcdfg", out, 4), FL_E_PARSE);
  cr_assert_eq(fl__unhex(NULL, out, 4), FL_E_PARSE);
}

Test(crypto, random_bytes_differ) {
  uint8_t a[32], b[32];
  cr_assert_eq(fl__random_bytes(a, sizeof a), FL_OK);
  cr_assert_eq(fl__random_bytes(b, sizeof b), FL_OK);
  cr_assert(memcmp(a, b, sizeof a) != 0);
}
