/*
 * bench_ed25519: the cost of one Ed25519 verification of a check-in's request digest (32 bytes)
 * on this machine, by the ways the coordinator could verify it (issue 12):
 *   openssl-raw    fl__verify_raw: an EVP_PKEY built from the raw key and a new EVP_MD_CTX per
 *                  call (what the coordinator did before its key cache)
 *   openssl-pkey   the EVP_PKEY reused, a new EVP_MD_CTX per call
 *   openssl-ctx    the EVP_PKEY and one EVP_MD_CTX reused (reset, EVP_DigestVerifyInit per call)
 *   sodium         libsodium's crypto_sign_verify_detached on the raw key (server/auth/keys.c)
 * and signing, for the task signature of an assigned check-in: fl__sign (OpenSSL) and
 * libsodium's crypto_sign_detached. Each variant runs N iterations over K keys, interleaved in
 * rounds so that a neighbour's burst hits them all alike; process CPU time
 * (CLOCK_PROCESS_CPUTIME_ID).
 *
 *   bench_ed25519 [--iterations N] [--rounds R]
 *
 * A measurement, never a pass/fail test: figures in benches/RESULTS.md ("Check-in throughput").
 */
#include <openssl/evp.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto.h"
#include "fl/err.h"

#define KEYS 16

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct fixture {
  uint8_t pub[KEYS][32], sk[KEYS][64], msg[KEYS][32], sig[KEYS][64];
  EVP_PKEY *pk[KEYS];
  fl_key *fk[KEYS];
} fixture;

static void die(const char *what) {
  fprintf(stderr, "bench_ed25519: %s\n", what);
  exit(1);
}

static void setup(fixture *f) {
  for (int i = 0; i < KEYS; i++) {
    crypto_sign_keypair(f->pub[i], f->sk[i]);
    randombytes_buf(f->msg[i], 32);
    crypto_sign_detached(f->sig[i], NULL, f->msg[i], 32, f->sk[i]);
    f->pk[i] = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, f->pub[i], 32);
    /* The same seed as an OpenSSL private key, for fl__sign. */
    EVP_PKEY *priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, f->sk[i], 32);
    if (f->pk[i] == NULL || priv == NULL)
      die("EVP_PKEY");
    EVP_PKEY_free(priv);
    if (fl__key_generate(&f->fk[i]) != FL_OK)
      die("fl__key_generate");
  }
}

typedef int (*variant)(fixture *f, int i, EVP_MD_CTX *ctx);

static int v_raw(fixture *f, int i, EVP_MD_CTX *ctx) {
  (void)ctx;
  return fl__verify_raw(f->pub[i], f->msg[i], 32, f->sig[i], 64) == FL_OK;
}

static int v_pkey(fixture *f, int i, EVP_MD_CTX *ctx) {
  (void)ctx;
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  int ok = EVP_DigestVerifyInit(c, NULL, NULL, NULL, f->pk[i]) == 1 &&
           EVP_DigestVerify(c, f->sig[i], 64, f->msg[i], 32) == 1;
  EVP_MD_CTX_free(c);
  return ok;
}

/* OpenSSL 3.0 refuses a second EVP_DigestVerifyInit on a context that did a one-shot
 * Ed25519 verification; a reset keeps the allocation. */
static int v_ctx(fixture *f, int i, EVP_MD_CTX *ctx) {
  EVP_MD_CTX_reset(ctx);
  return EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, f->pk[i]) == 1 &&
         EVP_DigestVerify(ctx, f->sig[i], 64, f->msg[i], 32) == 1;
}

static int v_sodium(fixture *f, int i, EVP_MD_CTX *ctx) {
  (void)ctx;
  return crypto_sign_verify_detached(f->sig[i], f->msg[i], 32, f->pub[i]) == 0;
}

static int s_openssl(fixture *f, int i, EVP_MD_CTX *ctx) {
  uint8_t sig[64];
  (void)ctx;
  return fl__sign(f->fk[i], f->msg[i], 32, sig) == FL_OK;
}

static int s_sodium(fixture *f, int i, EVP_MD_CTX *ctx) {
  uint8_t sig[64];
  (void)ctx;
  return crypto_sign_detached(sig, NULL, f->msg[i], 32, f->sk[i]) == 0;
}

int main(int argc, char **argv) {
  int n = 3000, rounds = 5;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
      n = atoi(argv[++i]);
    else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
      rounds = atoi(argv[++i]);
    else
      die("usage: bench_ed25519 [--iterations N] [--rounds R]");
  }
  if (sodium_init() < 0 || n < 1 || rounds < 1)
    die("sodium_init or arguments");
  static fixture f;
  setup(&f);
  static const struct {
    const char *name;
    variant fn;
  } V[] = {{"verify openssl-raw", v_raw},          {"verify openssl-pkey", v_pkey},
           {"verify openssl-ctx", v_ctx},          {"verify sodium", v_sodium},
           {"sign openssl (fl__sign)", s_openssl}, {"sign sodium", s_sodium}};
  enum { NV = sizeof V / sizeof V[0] };
  double best[NV], total[NV];
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  for (int v = 0; v < NV; v++)
    best[v] = 1e9, total[v] = 0;
  for (int r = 0; r < rounds; r++) {
    for (int v = 0; v < NV; v++) {
      double t0 = cpu_s();
      for (int k = 0; k < n; k++)
        if (!V[v].fn(&f, k % KEYS, ctx))
          die(V[v].name);
      double us = (cpu_s() - t0) / n * 1e6;
      total[v] += us;
      if (us < best[v])
        best[v] = us;
    }
  }
  printf("%-26s %12s %12s   (%d rounds x %d iterations, CPU time)\n", "variant", "best us",
         "mean us", rounds, n);
  for (int v = 0; v < NV; v++)
    printf("%-26s %12.1f %12.1f\n", V[v].name, best[v], total[v] / rounds);
  EVP_MD_CTX_free(ctx);
  for (int i = 0; i < KEYS; i++) {
    EVP_PKEY_free(f.pk[i]);
    fl__key_free(f.fk[i]);
  }
  return 0;
}
