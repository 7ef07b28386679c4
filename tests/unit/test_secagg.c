/* Secure-aggregation building blocks (common/secagg.c): RFC vectors, AEAD, PRG known answers,
 * Shamir, quantization bounds, and a whole masking round with dropouts. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "crypto.h"
#include "fl/err.h"
#include "secagg.h"

static void unhex(const char *h, uint8_t *out, size_t len) {
  cr_assert_eq(fl__unhex(h, out, len), FL_OK, "bad test hex %s", h);
}

/* RFC 7748 section 6.1. */
static const char alice_priv[] = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
static const char alice_pub[] = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
static const char bob_priv[] = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
static const char bob_pub[] = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
static const char shared_k[] = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

Test(secagg, x25519_rfc7748_vectors) {
  uint8_t a[32], b[32], pa[32], pb[32], k[32], got[32];
  unhex(alice_priv, a, 32);
  unhex(bob_priv, b, 32);
  unhex(alice_pub, pa, 32);
  unhex(bob_pub, pb, 32);
  unhex(shared_k, k, 32);
  cr_assert_eq(fl__x25519_public(a, got), FL_OK);
  cr_assert_arr_eq(got, pa, 32);
  cr_assert_eq(fl__x25519_public(b, got), FL_OK);
  cr_assert_arr_eq(got, pb, 32);
  cr_assert_eq(fl__x25519_agree(a, pb, got), FL_OK);
  cr_assert_arr_eq(got, k, 32);
  cr_assert_eq(fl__x25519_agree(b, pa, got), FL_OK);
  cr_assert_arr_eq(got, k, 32);
}

Test(secagg, x25519_generated_pairs_agree_and_small_order_refused) {
  uint8_t a[32], pa[32], b[32], pb[32], k1[32], k2[32];
  cr_assert_eq(fl__x25519_generate(a, pa), FL_OK);
  cr_assert_eq(fl__x25519_generate(b, pb), FL_OK);
  cr_assert_eq(fl__x25519_agree(a, pb, k1), FL_OK);
  cr_assert_eq(fl__x25519_agree(b, pa, k2), FL_OK);
  cr_assert_arr_eq(k1, k2, 32);
  /* u = 0 and u = 1 are points of small order: the "shared secret" would be all zero. */
  uint8_t bad[32] = {0};
  cr_assert_eq(fl__x25519_agree(a, bad, k1), FL_E_CRYPTO);
  bad[0] = 1;
  cr_assert_eq(fl__x25519_agree(a, bad, k1), FL_E_CRYPTO);
  cr_assert_eq(fl__x25519_agree(NULL, pb, k1), FL_E_INVAL);
}

/* RFC 5869 appendix A.1 (test case 1). */
Test(secagg, hkdf_rfc5869_case1) {
  uint8_t ikm[22], salt[13], info[10], okm[42], want[42];
  memset(ikm, 0x0b, sizeof ikm);
  unhex("000102030405060708090a0b0c", salt, sizeof salt);
  unhex("f0f1f2f3f4f5f6f7f8f9", info, sizeof info);
  unhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        want, sizeof want);
  cr_assert_eq(fl__hkdf_sha256(salt, sizeof salt, ikm, sizeof ikm, info, sizeof info, okm, 42),
               FL_OK);
  cr_assert_arr_eq(okm, want, 42);
  cr_assert_eq(fl__hkdf_sha256(NULL, 0, ikm, 0, info, sizeof info, okm, 42), FL_E_INVAL);
  cr_assert_eq(fl__hkdf_sha256(NULL, 0, ikm, sizeof ikm, NULL, 0, okm, 255 * 32 + 1), FL_E_INVAL);
}

/* The derivations are HKDF with an empty salt and SECAGG.md's info strings; recomputed here from
 * the spelled-out strings so a change of either side shows. */
Test(secagg, derivations_use_distinct_info_strings) {
  uint8_t k[32], enc[32], seed[32], want[32];
  unhex(shared_k, k, 32);
  cr_assert_eq(fl__secagg_enc_key(k, enc), FL_OK);
  cr_assert_eq(fl__secagg_mask_seed(k, seed), FL_OK);
  cr_assert_neq(memcmp(enc, seed, 32), 0);
  const char *ei = "fleetlearn secagg v1 share key", *mi = "fleetlearn secagg v1 mask seed";
  cr_assert_eq(fl__hkdf_sha256(NULL, 0, k, 32, (const uint8_t *)ei, strlen(ei), want, 32), FL_OK);
  cr_assert_arr_eq(enc, want, 32);
  cr_assert_eq(fl__hkdf_sha256(NULL, 0, k, 32, (const uint8_t *)mi, strlen(mi), want, 32), FL_OK);
  cr_assert_arr_eq(seed, want, 32);
}

/* Computed independently by tests/unit/data/secagg_prg.py (Python `cryptography`). */
Test(secagg, derivation_and_aead_known_answers) {
  uint8_t k[32], got[32], want[32];
  unhex(shared_k, k, 32);
  cr_assert_eq(fl__secagg_enc_key(k, got), FL_OK);
  unhex("ee820449f3c3b008639213fb0c49ff72ca3c2d2948638ae55490c03432a13aa4", want, 32);
  cr_assert_arr_eq(got, want, 32);
  cr_assert_eq(fl__secagg_mask_seed(k, got), FL_OK);
  unhex("5b0cdac7231fd448fe7b86e97fc06064be329007a2616627b2fa099b1952e7a6", want, 32);
  cr_assert_arr_eq(got, want, 32);
  uint8_t key[32], ct[10 + FL_SECAGG_TAG_LEN], wct[sizeof ct];
  for (int i = 0; i < 32; i++)
    key[i] = (uint8_t)i;
  cr_assert_eq(fl__secagg_seal(key, 42, 3, 7, (const uint8_t *)"fleetlearn", 10, ct), FL_OK);
  unhex("f3109d474b1b3cb1e2f253c1d72fe8dcaa80f212768f19e8791c", wct, sizeof wct);
  cr_assert_arr_eq(ct, wct, sizeof ct);
}

Test(secagg, aead_round_trip_and_refusals) {
  uint8_t key[32], other[32];
  for (int i = 0; i < 32; i++) {
    key[i] = (uint8_t)i;
    other[i] = (uint8_t)(i + 1);
  }
  const uint8_t msg[] = "share of s_sk and b for participant 7";
  const size_t len = sizeof msg;
  uint8_t ct[sizeof msg + FL_SECAGG_TAG_LEN], pt[sizeof msg];
  cr_assert_eq(fl__secagg_seal(key, 42, 3, 7, msg, len, ct), FL_OK);
  cr_assert_neq(memcmp(ct, msg, len), 0);
  cr_assert_eq(fl__secagg_open(key, 42, 3, 7, ct, sizeof ct, pt), FL_OK);
  cr_assert_arr_eq(pt, msg, len);
  /* Every bit of the ciphertext and of the tag is authenticated. */
  for (size_t bit = 0; bit < 8 * sizeof ct; bit += 13) {
    ct[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    memset(pt, 0xaa, sizeof pt);
    cr_assert_eq(fl__secagg_open(key, 42, 3, 7, ct, sizeof ct, pt), FL_E_BADSIG, "bit %zu", bit);
    for (size_t i = 0; i < sizeof pt; i++)
      cr_assert_eq(pt[i], 0, "a refused message leaves no plaintext");
    ct[bit / 8] ^= (uint8_t)(1u << (bit % 8));
  }
  /* Wrong round, swapped direction, another receiver, another key. */
  cr_assert_eq(fl__secagg_open(key, 43, 3, 7, ct, sizeof ct, pt), FL_E_BADSIG);
  cr_assert_eq(fl__secagg_open(key, 42, 7, 3, ct, sizeof ct, pt), FL_E_BADSIG);
  cr_assert_eq(fl__secagg_open(key, 42, 3, 8, ct, sizeof ct, pt), FL_E_BADSIG);
  cr_assert_eq(fl__secagg_open(other, 42, 3, 7, ct, sizeof ct, pt), FL_E_BADSIG);
  cr_assert_eq(fl__secagg_open(key, 42, 3, 7, ct, FL_SECAGG_TAG_LEN - 1, pt), FL_E_PARSE);
  cr_assert_eq(fl__secagg_open(key, 42, 3, 7, ct, sizeof ct - 1, pt), FL_E_BADSIG);
  cr_assert_eq(fl__secagg_seal(key, 42, 3, 3, msg, len, ct), FL_E_INVAL);
  cr_assert_eq(fl__secagg_seal(key, 42, 0, 3, msg, len, ct), FL_E_INVAL);
  /* An empty message still carries a tag that binds the pair and the round. */
  uint8_t tag[FL_SECAGG_TAG_LEN];
  cr_assert_eq(fl__secagg_seal(key, 1, 1, 2, NULL, 0, tag), FL_OK);
  cr_assert_eq(fl__secagg_open(key, 1, 1, 2, tag, sizeof tag, NULL), FL_OK);
  cr_assert_eq(fl__secagg_open(key, 2, 1, 2, tag, sizeof tag, NULL), FL_E_BADSIG);
}

/* Computed independently by tests/unit/data/secagg_prg.py (Python `cryptography`), which also
 * shows the `openssl enc -chacha20` command giving the same keystream. */
static const uint32_t prg_counting[20] = {
    0x7d2bfd39u, 0x6a19c5d9u, 0x7703bd8du, 0x494adcb8u, 0x6fd8358au, 0xcc6adebcu, 0x4c7dccb2u,
    0x9224ead8u, 0xe7cc232bu, 0xab2360a2u, 0x69ef0e3fu, 0x647fc83au, 0xea358225u, 0x2da3f7b1u,
    0xa06227c2u, 0x0c415b48u, 0x3142b818u, 0xd1a6e6adu, 0x615c6113u, 0x274e43afu};
static const uint32_t prg_ff[20] = {
    0x4198b8f6u, 0x61b04a2fu, 0xc1673194u, 0xa2fa3ee2u, 0x45e398bau, 0xb0f093a0u, 0xff3ba16du,
    0xc7b2d4dbu, 0x7010dd66u, 0x2a58b434u, 0x5e2cf42eu, 0xf275a41eu, 0xa177a4feu, 0x751d9f0au,
    0x435263b3u, 0x326b50b2u, 0x54538b2fu, 0xda0dd21eu, 0xb7a1dea5u, 0x84c01f8fu};

Test(secagg, prg_known_answers) {
  uint8_t seed[32];
  uint32_t w[20];
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)i;
  memset(w, 0, sizeof w);
  cr_assert_eq(fl__secagg_prg_add(seed, 1, w, 20), FL_OK);
  cr_assert_arr_eq(w, prg_counting, sizeof w);
  memset(seed, 0xff, 32);
  memset(w, 0, sizeof w);
  cr_assert_eq(fl__secagg_prg_add(seed, 1, w, 20), FL_OK);
  cr_assert_arr_eq(w, prg_ff, sizeof w);
  /* Subtracting the same stream cancels it exactly. */
  cr_assert_eq(fl__secagg_prg_add(seed, -1, w, 20), FL_OK);
  for (int i = 0; i < 20; i++)
    cr_assert_eq(w[i], 0);
  cr_assert_eq(fl__secagg_prg_add(seed, 0, w, 20), FL_E_INVAL);
}

/* The keystream is one stream however long: a prefix of a long expansion (several internal
 * chunks) equals the short expansion, and words past the first chunk are not a repeat. */
Test(secagg, prg_long_stream_is_consistent) {
  uint8_t seed[32];
  for (int i = 0; i < 32; i++)
    seed[i] = (uint8_t)i;
  static uint32_t lng[1000], sht[20];
  cr_assert_eq(fl__secagg_prg_add(seed, 1, lng, 1000), FL_OK);
  cr_assert_eq(fl__secagg_prg_add(seed, 1, sht, 20), FL_OK);
  cr_assert_arr_eq(lng, sht, sizeof sht);
  cr_assert_neq(memcmp(lng, lng + 256, 20 * sizeof *lng), 0);
  cr_assert_neq(memcmp(lng + 256, lng + 512, 20 * sizeof *lng), 0);
}

static void random_secret(uint8_t s[32]) {
  cr_assert_eq(fl__random_bytes(s, 32), FL_OK);
}

Test(secagg, shamir_any_t_of_n_reconstruct) {
  enum { N = 7, T = 4 };
  uint8_t secret[32], got[32];
  random_secret(secret);
  memset(secret + 28, 0xff, 4); /* the largest values each chunk can hold */
  memset(secret, 0xff, 7);
  uint32_t xs[N] = {5, 1, 9, 300, 2, 77, 4000000000u};
  fl_shamir_share sh[N], pick[N];
  cr_assert_eq(fl__shamir_split(secret, T, xs, N, sh), FL_OK);
  int subsets = 0;
  for (unsigned mask = 0; mask < (1u << N); mask++) {
    if (__builtin_popcount(mask) < T)
      continue;
    uint32_t m = 0;
    for (unsigned i = 0; i < N; i++)
      if (mask & (1u << i))
        pick[m++] = sh[i];
    cr_assert_eq(fl__shamir_combine(pick, m, T, got), FL_OK, "subset %x", mask);
    cr_assert_arr_eq(got, secret, 32, "subset %x", mask);
    subsets++;
  }
  cr_assert_eq(subsets, 35 + 21 + 7 + 1);
  /* Encoding round trip. */
  uint8_t enc[FL_SHAMIR_SHARE_LEN];
  fl_shamir_share back;
  fl__shamir_encode(&sh[3], enc);
  cr_assert_eq(fl__shamir_decode(enc, &back), FL_OK);
  cr_assert_eq(back.x, 300);
  cr_assert_arr_eq(back.y, sh[3].y, sizeof back.y);
  /* t = 1 is a copy of the secret; t = n needs every share. */
  cr_assert_eq(fl__shamir_split(secret, N, xs, N, sh), FL_OK);
  cr_assert_eq(fl__shamir_combine(sh, N, N, got), FL_OK);
  cr_assert_arr_eq(got, secret, 32);
  cr_assert_eq(fl__shamir_split(secret, 1, xs, 1, sh), FL_OK);
  cr_assert_eq(fl__shamir_combine(sh, 1, 1, got), FL_OK);
  cr_assert_arr_eq(got, secret, 32);
}

Test(secagg, shamir_refuses_bad_input) {
  uint8_t secret[32] = {1}, got[32];
  fl_shamir_share sh[4];
  uint32_t dup[4] = {1, 2, 2, 3}, zero[4] = {1, 0, 2, 3}, ok[4] = {1, 2, 3, 4};
  cr_assert_eq(fl__shamir_split(secret, 2, dup, 4, sh), FL_E_INVAL);
  cr_assert_eq(fl__shamir_split(secret, 2, zero, 4, sh), FL_E_INVAL);
  cr_assert_eq(fl__shamir_split(secret, 0, ok, 4, sh), FL_E_INVAL);
  cr_assert_eq(fl__shamir_split(secret, 5, ok, 4, sh), FL_E_INVAL);
  cr_assert_eq(fl__shamir_split(secret, 3, ok, 4, sh), FL_OK);
  cr_assert_eq(fl__shamir_combine(sh, 2, 3, got), FL_E_INVAL, "t-1 shares are refused");
  fl_shamir_share two[3] = {sh[0], sh[1], sh[1]};
  cr_assert_eq(fl__shamir_combine(two, 3, 3, got), FL_E_INVAL, "a repeated x is refused");
  two[2] = sh[2];
  two[2].x = 0;
  cr_assert_eq(fl__shamir_combine(two, 3, 3, got), FL_E_INVAL);
  /* A share off the polynomial gives another value (here, almost surely not a valid chunking). */
  two[2] = sh[2];
  two[2].y[0] ^= 1;
  int rc = fl__shamir_combine(two, 3, 3, got);
  cr_assert(rc == FL_E_PARSE || memcmp(got, secret, 32) != 0);
  /* Decoding: x = 0 and field overflow. */
  uint8_t enc[FL_SHAMIR_SHARE_LEN];
  fl_shamir_share back;
  fl__shamir_encode(&sh[0], enc);
  enc[0] = enc[1] = enc[2] = enc[3] = 0;
  cr_assert_eq(fl__shamir_decode(enc, &back), FL_E_PARSE);
  fl__shamir_encode(&sh[0], enc);
  memset(enc + 4, 0xff, 8);
  cr_assert_eq(fl__shamir_decode(enc, &back), FL_E_PARSE);
}

/* t - 1 shares reveal nothing: with t = 2, one share of secret 0 and one share of secret
 * 0xff..ff are both uniform on the field. Chi-square on the top 4 bits of y (16 bins, 4000
 * draws each; 15 degrees of freedom, 60 is far beyond the 1e-6 tail) for each secret, and the
 * two histograms compared to each other. */
Test(secagg, shamir_single_share_is_independent_of_secret) {
  enum { DRAWS = 4000, BINS = 16 };
  uint8_t secrets[2][32];
  memset(secrets[0], 0, 32);
  memset(secrets[1], 0xff, 32);
  uint32_t xs[2] = {3, 11};
  int hist[2][BINS] = {{0}};
  for (int s = 0; s < 2; s++)
    for (int d = 0; d < DRAWS; d++) {
      fl_shamir_share sh[2];
      cr_assert_eq(fl__shamir_split(secrets[s], 2, xs, 2, sh), FL_OK);
      for (int c = 0; c < FL_SHAMIR_CHUNKS; c++)
        cr_assert_lt(sh[0].y[c], (((uint64_t)1) << 61) - 1);
      hist[s][sh[0].y[0] >> 57]++;
    }
  double chi[2] = {0, 0}, cross = 0, e = (double)DRAWS / BINS;
  for (int b = 0; b < BINS; b++) {
    for (int s = 0; s < 2; s++)
      chi[s] += (hist[s][b] - e) * (hist[s][b] - e) / e;
    double diff = hist[0][b] - hist[1][b];
    cross += diff * diff / (hist[0][b] + hist[1][b]);
  }
  cr_assert_lt(chi[0], 60.0);
  cr_assert_lt(chi[1], 60.0);
  cr_assert_lt(cross, 60.0);
}

Test(secagg, quant_bits_and_no_wrap_at_n_max) {
  fl_secagg_quant q;
  const uint32_t ns[] = {1, 2, 3, 100, 1000, 1024, 1025, 65536, 1u << 24};
  const uint32_t bits[] = {32, 31, 30, 25, 22, 22, 21, 16, 8};
  for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
    cr_assert_eq(fl__secagg_quant_init(&q, 0.5, ns[i]), FL_OK);
    cr_assert_eq(q.bits, bits[i], "n_max %u", ns[i]);
    /* n_max inputs all at +clip: the largest sum, computed in 64 bits, stays below 2^32. */
    float top = 0.5f, bottom = -0.5f;
    uint32_t qt, qb;
    cr_assert_eq(fl__secagg_quantize(&q, &top, 1, &qt), FL_OK);
    cr_assert_eq(fl__secagg_quantize(&q, &bottom, 1, &qb), FL_OK);
    cr_assert_eq(qb, 0);
    cr_assert_eq((uint64_t)qt, (((uint64_t)1) << q.bits) - 1);
    cr_assert_lt((uint64_t)qt * ns[i], ((uint64_t)1) << 32, "n_max %u", ns[i]);
    /* and one bit more would wrap for n_max a power of two: bits is the most there is. */
    if (ns[i] > 1 && (ns[i] & (ns[i] - 1)) == 0)
      cr_assert_geq(((((uint64_t)1) << (q.bits + 1)) - 1) * ns[i], ((uint64_t)1) << 32);
    /* The modular sum dequantizes to the mean exactly at the ends. */
    uint32_t sum = (uint32_t)((uint64_t)qt * ns[i]);
    float mean;
    cr_assert_eq(fl__secagg_dequantize_mean(&q, &sum, 1, ns[i], &mean), FL_OK);
    cr_assert_float_eq(mean, 0.5f, 1e-6);
  }
  cr_assert_eq(fl__secagg_quant_init(&q, 0.5, 0), FL_E_INVAL);
  cr_assert_eq(fl__secagg_quant_init(&q, 0.5, (1u << 24) + 1), FL_E_INVAL);
  cr_assert_eq(fl__secagg_quant_init(&q, 0, 10), FL_E_INVAL);
  cr_assert_eq(fl__secagg_quant_init(&q, NAN, 10), FL_E_INVAL);
}

static uint64_t sm_state;
static uint64_t splitmix(void) {
  uint64_t z = (sm_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static float uniform(float c) { /* [-c, c] */
  return (float)(((double)(splitmix() >> 11) / (double)(1ull << 53)) * 2.0 - 1.0) * c;
}

Test(secagg, quant_error_within_half_step) {
  fl_secagg_quant q;
  const double clip = 2.5;
  const uint32_t n = 37;
  enum { LEN = 200 };
  cr_assert_eq(fl__secagg_quant_init(&q, clip, n), FL_OK);
  sm_state = 17;
  static float x[37][LEN];
  static uint32_t qx[LEN], sum[LEN];
  double truth[LEN] = {0};
  memset(sum, 0, sizeof sum);
  for (uint32_t u = 0; u < n; u++) {
    for (int i = 0; i < LEN; i++) {
      x[u][i] = uniform((float)clip);
      truth[i] += x[u][i];
    }
    cr_assert_eq(fl__secagg_quantize(&q, x[u], LEN, qx), FL_OK);
    for (int i = 0; i < LEN; i++) {
      double back = qx[i] / q.scale - clip;
      cr_assert_leq(fabs(back - x[u][i]), 0.5 / q.scale * (1 + 1e-9) + 1e-12);
      sum[i] += qx[i];
    }
  }
  float mean[LEN];
  cr_assert_eq(fl__secagg_dequantize_mean(&q, sum, LEN, n, mean), FL_OK);
  for (int i = 0; i < LEN; i++)
    cr_assert_leq(fabs(mean[i] - truth[i] / n), 0.5 / q.scale + 1e-6, "coordinate %d", i);
  /* Bad inputs. */
  float bad[3] = {0, NAN, 0};
  cr_assert_eq(fl__secagg_quantize(&q, bad, 3, qx), FL_E_NONFINITE);
  bad[1] = INFINITY;
  cr_assert_eq(fl__secagg_quantize(&q, bad, 3, qx), FL_E_NONFINITE);
  bad[1] = (float)(clip * 1.001);
  cr_assert_eq(fl__secagg_quantize(&q, bad, 3, qx), FL_E_NORM);
  bad[1] = (float)clip * (1 + 1e-7f); /* float rounding of a clipped vector: clamped */
  cr_assert_eq(fl__secagg_quantize(&q, bad, 3, qx), FL_OK);
  cr_assert_eq((uint64_t)qx[1], (((uint64_t)1) << q.bits) - 1);
  cr_assert_eq(fl__secagg_dequantize_mean(&q, sum, LEN, 0, mean), FL_E_INVAL);
  cr_assert_eq(fl__secagg_dequantize_mean(&q, sum, LEN, n + 1, mean), FL_E_INVAL);
}

/* ---- A whole round: SecAgg+ on a random k-regular graph, with dropouts ----------------- */

enum { MAXU = 21, VLEN = 300 }; /* VLEN crosses the PRG's internal chunk of 256 words */

typedef struct user {
  uint8_t c_priv[32], c_pub[32]; /* encryption key pair: share messages */
  uint8_t s_priv[32], s_pub[32]; /* masking key pair: pairwise seeds */
  uint8_t b[32];                 /* self-mask seed */
  uint32_t x[VLEN];              /* quantized input */
  uint32_t peers[MAXU];
  uint32_t k;
  /* held[v]: the shares of v's s_priv and b this user received (decrypted). */
  fl_shamir_share held_s[MAXU + 1], held_b[MAXU + 1];
} user;

static user users[MAXU + 1]; /* 1-based */

/* k = n - 1 is the complete graph (SecAgg); otherwise k even, a circulant over a random
 * permutation, which is k-regular. */
static void build_graph(uint32_t n, uint32_t k, int adj[MAXU + 1][MAXU + 1]) {
  memset(adj, 0, sizeof(int) * (MAXU + 1) * (MAXU + 1));
  uint32_t perm[MAXU];
  for (uint32_t i = 0; i < n; i++)
    perm[i] = i + 1;
  for (uint32_t i = n - 1; i > 0; i--) {
    uint32_t j = (uint32_t)(splitmix() % (i + 1)), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t d = 1; d <= k / 2 || (k == n - 1 && d < n); d++) {
      uint32_t a = perm[i], b = perm[(i + d) % n];
      adj[a][b] = adj[b][a] = 1;
    }
  for (uint32_t u = 1; u <= n; u++) {
    users[u].k = 0;
    for (uint32_t v = 1; v <= n; v++)
      if (adj[u][v])
        users[u].peers[users[u].k++] = v;
    cr_assert_eq(users[u].k, k, "user %u has %u neighbours", u, users[u].k);
  }
}

/* Gathers the shares responders hold of owner's secret (s or b) and reconstructs it. */
static int reconstruct(uint32_t owner, const int *responds, uint32_t t, int which,
                       uint8_t out[32]) {
  fl_shamir_share got[MAXU];
  uint32_t m = 0;
  for (uint32_t i = 0; i < users[owner].k; i++) {
    uint32_t v = users[owner].peers[i];
    if (responds[v])
      got[m++] = which ? users[v].held_s[owner] : users[v].held_b[owner];
  }
  return fl__shamir_combine(got, m, t, out);
}

static void run_round(uint32_t n, uint32_t k, uint32_t t, uint32_t n_drop_before,
                      uint32_t n_drop_after, uint64_t seed) {
  const uint64_t round = 9000 + seed;
  int adj[MAXU + 1][MAXU + 1];
  sm_state = seed;
  memset(users, 0, sizeof users);
  build_graph(n, k, adj);
  fl_secagg_quant q;
  cr_assert_eq(fl__secagg_quant_init(&q, 1.0, n), FL_OK);

  /* Phase 0: keys, self seeds, inputs. */
  for (uint32_t u = 1; u <= n; u++) {
    user *us = &users[u];
    cr_assert_eq(fl__x25519_generate(us->c_priv, us->c_pub), FL_OK);
    cr_assert_eq(fl__x25519_generate(us->s_priv, us->s_pub), FL_OK);
    cr_assert_eq(fl__random_bytes(us->b, 32), FL_OK);
    float xf[VLEN];
    for (int i = 0; i < VLEN; i++)
      xf[i] = uniform(1.0f);
    xf[0] = 1.0f; /* every input at the top in one coordinate: the no-wrap edge */
    cr_assert_eq(fl__secagg_quantize(&q, xf, VLEN, us->x), FL_OK);
  }

  /* Phase 1: share exchange, each pair's message sealed under its own key. */
  for (uint32_t u = 1; u <= n; u++) {
    user *us = &users[u];
    fl_shamir_share ss[MAXU], sb[MAXU];
    cr_assert_eq(fl__shamir_split(us->s_priv, t, us->peers, us->k, ss), FL_OK);
    cr_assert_eq(fl__shamir_split(us->b, t, us->peers, us->k, sb), FL_OK);
    for (uint32_t i = 0; i < us->k; i++) {
      uint32_t v = us->peers[i];
      uint8_t msg[2 * FL_SHAMIR_SHARE_LEN], ct[sizeof msg + FL_SECAGG_TAG_LEN], pt[sizeof msg];
      uint8_t shared[32], key[32];
      fl__shamir_encode(&ss[i], msg);
      fl__shamir_encode(&sb[i], msg + FL_SHAMIR_SHARE_LEN);
      cr_assert_eq(fl__x25519_agree(us->c_priv, users[v].c_pub, shared), FL_OK);
      cr_assert_eq(fl__secagg_enc_key(shared, key), FL_OK);
      cr_assert_eq(fl__secagg_seal(key, round, u, v, msg, sizeof msg, ct), FL_OK);
      /* The receiver derives the same key from its side of the agreement. */
      cr_assert_eq(fl__x25519_agree(users[v].c_priv, us->c_pub, shared), FL_OK);
      cr_assert_eq(fl__secagg_enc_key(shared, key), FL_OK);
      cr_assert_eq(fl__secagg_open(key, round, u, v, ct, sizeof ct, pt), FL_OK);
      cr_assert_eq(fl__shamir_decode(pt, &users[v].held_s[u]), FL_OK);
      cr_assert_eq(fl__shamir_decode(pt + FL_SHAMIR_SHARE_LEN, &users[v].held_b[u]), FL_OK);
    }
  }

  /* Who drops: random distinct users; "before" never send a masked input, "after" send it and
   * vanish before unmasking. */
  int sent[MAXU + 1], responds[MAXU + 1];
  for (uint32_t u = 1; u <= n; u++)
    sent[u] = responds[u] = 1;
  for (uint32_t d = 0; d < n_drop_before + n_drop_after;) {
    uint32_t u = 1 + (uint32_t)(splitmix() % n);
    if (!responds[u])
      continue;
    responds[u] = 0;
    if (d < n_drop_before)
      sent[u] = 0;
    d++;
  }

  /* Phase 2: masked inputs, folded mod 2^32 as the coordinator does. */
  uint32_t acc[VLEN] = {0}, want[VLEN] = {0};
  uint32_t survivors = 0;
  for (uint32_t u = 1; u <= n; u++) {
    if (!sent[u])
      continue;
    user *us = &users[u];
    uint8_t seeds[MAXU][32];
    for (uint32_t i = 0; i < us->k; i++) {
      uint8_t shared[32];
      cr_assert_eq(fl__x25519_agree(us->s_priv, users[us->peers[i]].s_pub, shared), FL_OK);
      cr_assert_eq(fl__secagg_mask_seed(shared, seeds[i]), FL_OK);
    }
    uint32_t y[VLEN];
    cr_assert_eq(
        fl__secagg_mask(us->x, VLEN, u, us->b, us->peers, (const uint8_t(*)[32])seeds, us->k, y),
        FL_OK);
    cr_assert_neq(memcmp(y, us->x, sizeof y), 0);
    for (int i = 0; i < VLEN; i++) {
      acc[i] += y[i];
      want[i] += us->x[i];
    }
    survivors++;
  }

  /* Phase 3: unmasking from the responders' shares only. */
  for (uint32_t u = 1; u <= n; u++) {
    uint8_t secret[32];
    if (sent[u]) {
      cr_assert_eq(reconstruct(u, responds, t, 0, secret), FL_OK, "b of %u", u);
      cr_assert_arr_eq(secret, users[u].b, 32);
      cr_assert_eq(fl__secagg_unmask_self(acc, VLEN, secret), FL_OK);
    } else {
      cr_assert_eq(reconstruct(u, responds, t, 1, secret), FL_OK, "s_sk of %u", u);
      cr_assert_arr_eq(secret, users[u].s_priv, 32);
      for (uint32_t i = 0; i < users[u].k; i++) {
        uint32_t v = users[u].peers[i];
        if (!sent[v])
          continue; /* two dropped neighbours: neither added the mask */
        uint8_t shared[32], seed_uv[32];
        cr_assert_eq(fl__x25519_agree(secret, users[v].s_pub, shared), FL_OK);
        cr_assert_eq(fl__secagg_mask_seed(shared, seed_uv), FL_OK);
        cr_assert_eq(fl__secagg_unmask_pair(acc, VLEN, v, u, seed_uv), FL_OK);
      }
    }
  }
  cr_assert_arr_eq(acc, want, sizeof acc, "the unmasked sum is the survivors' sum, exactly");
  /* The top coordinate: survivors * (2^bits - 1) without wrapping. */
  cr_assert_eq((uint64_t)acc[0], (uint64_t)survivors * ((((uint64_t)1) << q.bits) - 1));
  float mean[VLEN];
  cr_assert_eq(fl__secagg_dequantize_mean(&q, acc, VLEN, survivors, mean), FL_OK);
  cr_assert_float_eq(mean[0], 1.0f, 1e-6);
}

Test(secagg, round_secagg_plus_k8_with_dropouts) {
  /* 16 users, 8 neighbours, t = 4: 2 drop before the masked input, 2 after it. */
  run_round(16, 8, 4, 2, 2, 1);
  run_round(16, 8, 4, 3, 1, 2);
  run_round(20, 6, 3, 2, 1, 3);
}

Test(secagg, round_secagg_complete_graph) {
  /* 12 users, all neighbours, t = 5: 6 non-responders leave each survivor 5 shares. */
  run_round(12, 11, 5, 3, 3, 4);
  run_round(10, 9, 5, 0, 0, 5);
}

Test(secagg, mask_refuses_bad_neighbours) {
  uint8_t b[32] = {1}, seeds[3][32] = {{2}, {3}, {4}};
  uint32_t x[4] = {1, 2, 3, 4}, y[4];
  uint32_t self_peer[3] = {2, 5, 3}, zero_peer[3] = {2, 0, 3}, dup[3] = {2, 3, 2},
           ok[3] = {2, 3, 4};
  cr_assert_eq(fl__secagg_mask(x, 4, 5, b, self_peer, (const uint8_t(*)[32])seeds, 3, y),
               FL_E_INVAL);
  cr_assert_eq(fl__secagg_mask(x, 4, 5, b, zero_peer, (const uint8_t(*)[32])seeds, 3, y),
               FL_E_INVAL);
  cr_assert_eq(fl__secagg_mask(x, 4, 5, b, dup, (const uint8_t(*)[32])seeds, 3, y), FL_E_INVAL);
  cr_assert_eq(fl__secagg_mask(x, 4, 0, b, ok, (const uint8_t(*)[32])seeds, 3, y), FL_E_INVAL);
  /* In place works, and with no neighbours the self mask alone comes off again. */
  cr_assert_eq(fl__secagg_mask(x, 4, 5, b, ok, (const uint8_t(*)[32])seeds, 0, x), FL_OK);
  cr_assert_eq(fl__secagg_unmask_self(x, 4, b), FL_OK);
  for (uint32_t i = 0; i < 4; i++)
    cr_assert_eq(x[i], i + 1);
  cr_assert_eq(fl__secagg_unmask_pair(x, 4, 3, 3, b), FL_E_INVAL);
}

/* What the coordinator receives is independent of the input: the masked words of an all-zero
 * input and of an all-top input are both uniform (chi-square on the top 4 bits, 16 bins, 15
 * degrees of freedom; fixed seeds, so the test is deterministic). */
Test(secagg, masked_input_is_uniform_whatever_the_input) {
  enum { LEN = 8192, BINS = 16 };
  static uint32_t x[LEN], y[LEN];
  uint8_t b[32], seeds[2][32];
  for (int i = 0; i < 32; i++) {
    b[i] = (uint8_t)(7 * i + 1);
    seeds[0][i] = (uint8_t)(11 * i + 2);
    seeds[1][i] = (uint8_t)(13 * i + 3);
  }
  uint32_t peers[2] = {2, 9};
  for (int input = 0; input < 2; input++) {
    for (int i = 0; i < LEN; i++)
      x[i] = input ? (1u << 22) - 1 : 0;
    cr_assert_eq(fl__secagg_mask(x, LEN, 5, b, peers, (const uint8_t(*)[32])seeds, 2, y), FL_OK);
    int hist[BINS] = {0};
    for (int i = 0; i < LEN; i++)
      hist[y[i] >> 28]++;
    double chi = 0, e = (double)LEN / BINS;
    for (int i = 0; i < BINS; i++)
      chi += (hist[i] - e) * (hist[i] - e) / e;
    cr_assert_lt(chi, 60.0, "input %d", input);
  }
}

/* Below the threshold the round cannot unmask: too few responders refuse to reconstruct. */
Test(secagg, round_below_threshold_refused) {
  int adj[MAXU + 1][MAXU + 1];
  sm_state = 6;
  memset(users, 0, sizeof users);
  build_graph(8, 4, adj);
  uint32_t u = 1;
  fl_shamir_share sb[MAXU];
  cr_assert_eq(fl__random_bytes(users[u].b, 32), FL_OK);
  cr_assert_eq(fl__shamir_split(users[u].b, 3, users[u].peers, users[u].k, sb), FL_OK);
  int responds[MAXU + 1] = {0};
  for (uint32_t i = 0; i < users[u].k; i++)
    users[users[u].peers[i]].held_b[u] = sb[i];
  responds[users[u].peers[0]] = responds[users[u].peers[1]] = 1;
  uint8_t secret[32];
  cr_assert_eq(reconstruct(u, responds, 3, 0, secret), FL_E_INVAL);
  responds[users[u].peers[3]] = 1;
  cr_assert_eq(reconstruct(u, responds, 3, 0, secret), FL_OK);
  cr_assert_arr_eq(secret, users[u].b, 32);
}

/* The neighbour graph: d-regular, symmetric, no self loops, rows sorted, for several n and k
 * (odd and even, k past n - 1: the complete graph), and a known small case. */
static void check_graph(uint32_t n, uint32_t k) {
  uint32_t d = fl__secagg_degree(n, k);
  uint32_t *g = calloc((size_t)n * d + 1, sizeof *g);
  cr_assert_not_null(g);
  cr_assert_eq(fl__secagg_graph(n, k, g), FL_OK, "n=%u k=%u", n, k);
  cr_assert((n * d) % 2 == 0 && d <= n - 1 && d >= (k < n - 1 ? k : n - 1));
  for (uint32_t p = 1; p <= n; p++) {
    const uint32_t *row = g + (size_t)(p - 1) * d;
    for (uint32_t a = 0; a < d; a++) {
      cr_assert(row[a] >= 1 && row[a] <= n && row[a] != p, "n=%u k=%u p=%u", n, k, p);
      if (a > 0)
        cr_assert_lt(row[a - 1], row[a]);
      const uint32_t *back = g + (size_t)(row[a] - 1) * d;
      int found = 0;
      for (uint32_t b = 0; b < d; b++)
        found |= back[b] == p;
      cr_assert(found, "edge %u-%u not symmetric (n=%u k=%u)", p, row[a], n, k);
    }
  }
  free(g);
}

Test(secagg, graph_is_regular_and_symmetric) {
  static const uint32_t cases[][2] = {{2, 1},  {3, 2},    {5, 3},   {6, 3},  {10, 4},
                                      {11, 5}, {100, 20}, {101, 9}, {7, 50}, {1000, 16}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_graph(cases[i][0], cases[i][1]);
  cr_assert_eq(fl__secagg_degree(1, 4), 0);
  cr_assert_eq(fl__secagg_degree(9, 3), 4);
  cr_assert_eq(fl__secagg_degree(10, 3), 3);
  cr_assert_eq(fl__secagg_degree(10, 40), 9);
}

Test(secagg, harary_known_case_and_bad_permutations) {
  /* H(6, 3) on the identity: ring neighbours and the opposite one. */
  uint32_t perm[6] = {1, 2, 3, 4, 5, 6}, g[18];
  static const uint32_t want[18] = {2, 4, 6, 1, 3, 5, 2, 4, 6, 1, 3, 5, 2, 4, 6, 1, 3, 5};
  cr_assert_eq(fl__secagg_harary(6, 3, perm, g), FL_OK);
  cr_assert_arr_eq(g, want, sizeof want);
  uint32_t dup[6] = {1, 2, 2, 4, 5, 6}, zero[6] = {0, 2, 3, 4, 5, 6};
  cr_assert_eq(fl__secagg_harary(6, 3, dup, g), FL_E_INVAL);
  cr_assert_eq(fl__secagg_harary(6, 3, zero, g), FL_E_INVAL);
  cr_assert_eq(fl__secagg_harary(1, 3, perm, g), FL_E_INVAL);
}
