/*
 * The coordinator's Ed25519 verification of device signatures (server/auth/keys.c, libsodium)
 * against common/crypto.c's fl__verify_raw (OpenSSL): the same verdict on RFC 8032's test
 * vectors, on random signatures, and on every malformed signature and key below. And the key
 * cache: a bounded map by device id.
 */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "auth/keys.h"
#include "crypto.h"
#include "fl/err.h"

static void unhex(const char *h, uint8_t *out, size_t n) {
  cr_assert_eq(strlen(h), 2 * n, "hex of %zu bytes: %s", n, h);
  cr_assert_eq(fl__unhex(h, out, n), 0);
}

/* RFC 8032 section 7.1: TEST 1, 2, 3 and SHA(abc). */
static const struct {
  const char *seed, *pub, *msg, *sig;
} RFC8032[] = {
    {"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b"
     "46b"
     "d25bf5f0595bbe24655141438e7a100b"},
    {"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11"
     "d8c"
     "387b2eaeb4302aeeb00d291612bb0c00"},
    {"c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc"
     "659"
     "4a7c15e9716ed28dc027beceea1ec40a"},
    {"833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
     "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
     "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3fee"
     "bbd"
     "454d4423643ce80e2a9ac94fa54ca49f",
     "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e"
     "030"
     "3dca179c138ac17ad9bef1177331a704"},
};

/* Both verdicts, which must agree; returns whether they accepted. */
static bool both(const uint8_t *pub, const uint8_t *msg, size_t len, const uint8_t *sig,
                 size_t sig_len, const char *what) {
  int a = fl__verify_raw(pub, msg, len, sig, sig_len);
  int b = fl__dev_verify(pub, msg, len, sig, sig_len);
  cr_assert(a == FL_OK || a == FL_E_BADSIG, "%s: OpenSSL gave %d", what, a);
  cr_assert(b == FL_OK || b == FL_E_BADSIG, "%s: libsodium gave %d", what, b);
  cr_assert_eq(a, b, "%s: OpenSSL says %s, libsodium %s", what, a == FL_OK ? "good" : "bad",
               b == FL_OK ? "good" : "bad");
  return a == FL_OK;
}

Test(dev_verify, rfc8032_vectors) {
  for (size_t i = 0; i < sizeof RFC8032 / sizeof RFC8032[0]; i++) {
    uint8_t pub[32], sig[64], msg[64], seed[32], derived[32];
    size_t len = strlen(RFC8032[i].msg) / 2;
    unhex(RFC8032[i].pub, pub, 32);
    unhex(RFC8032[i].sig, sig, 64);
    unhex(RFC8032[i].seed, seed, 32);
    if (len)
      unhex(RFC8032[i].msg, msg, len);
    /* The vector's key is its seed's, and OpenSSL signs the vector's signature (so the vector
     * is what the RFC says). */
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    size_t n = 32, sn = 64;
    uint8_t again[64];
    cr_assert_not_null(k);
    cr_assert_eq(EVP_PKEY_get_raw_public_key(k, derived, &n), 1);
    cr_assert_eq(memcmp(derived, pub, 32), 0, "vector %zu: public key of the seed", i);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    cr_assert_eq(EVP_DigestSignInit(ctx, NULL, NULL, NULL, k), 1);
    cr_assert_eq(EVP_DigestSign(ctx, again, &sn, msg, len), 1);
    cr_assert_eq(memcmp(again, sig, 64), 0, "vector %zu: OpenSSL's signature", i);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(k);
    char what[64];
    snprintf(what, sizeof what, "RFC 8032 vector %zu", i);
    cr_assert(both(pub, msg, len, sig, 64, what), "%s does not verify", what);
    /* Any one bit flipped, in R, in S, in the message or in the key: refused by both. */
    for (int bit = 0; bit < 512; bit += 7) {
      uint8_t bad[64];
      memcpy(bad, sig, 64);
      bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
      snprintf(what, sizeof what, "vector %zu, signature bit %d", i, bit);
      cr_assert_not(both(pub, msg, len, bad, 64, what), "%s verifies", what);
    }
    for (int bit = 0; bit < 256; bit += 5) {
      uint8_t bad[32];
      memcpy(bad, pub, 32);
      bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
      snprintf(what, sizeof what, "vector %zu, key bit %d", i, bit);
      cr_assert_not(both(bad, msg, len, sig, 64, what), "%s verifies", what);
    }
    if (len) {
      msg[len - 1] ^= 1;
      cr_assert_not(both(pub, msg, len, sig, 64, "altered message"));
    }
    cr_assert_not(both(pub, msg, len, sig, 63, "short signature"));
    cr_assert_not(both(pub, msg, len, NULL, 64, "no signature"));
  }
}

/* S + L: the same scalar mod L, a non-canonical encoding that both refuse (RFC 8032 5.1.7). */
Test(dev_verify, non_canonical_s) {
  static const uint8_t L[32] = {0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7,
                                0xa2, 0xde, 0xf9, 0xde, 0x14, 0,    0,    0,    0,    0,    0,
                                0,    0,    0,    0,    0,    0,    0,    0,    0,    0x10};
  for (size_t i = 0; i < sizeof RFC8032 / sizeof RFC8032[0]; i++) {
    uint8_t pub[32], sig[64], msg[64];
    size_t len = strlen(RFC8032[i].msg) / 2;
    unhex(RFC8032[i].pub, pub, 32);
    unhex(RFC8032[i].sig, sig, 64);
    if (len)
      unhex(RFC8032[i].msg, msg, len);
    unsigned carry = 0;
    for (int j = 0; j < 32; j++) {
      unsigned v = sig[32 + j] + L[j] + carry;
      sig[32 + j] = (uint8_t)v;
      carry = v >> 8;
    }
    cr_assert_eq(carry, 0);
    cr_assert_not(both(pub, msg, len, sig, 64, "S + L"));
    sig[63] |= 0xe0;
    cr_assert_not(both(pub, msg, len, sig, 64, "S with its top bits set"));
  }
}

/* Small-order and non-canonical points as the key and as R, with the S that makes the
 * cofactorless equation hold for the identity: a verifier that took them would accept a
 * signature nobody made. */
Test(dev_verify, small_order_and_non_canonical_points) {
  static const char *const POINTS[] = {
      "0100000000000000000000000000000000000000000000000000000000000000", /* identity */
      "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", /* order 2 */
      "0000000000000000000000000000000000000000000000000000000000000000", /* order 4 */
      "0000000000000000000000000000000000000000000000000000000000000080", /* order 4 */
      "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", /* order 8 */
      "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", /* order 8 */
      "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", /* y = p + 1 */
      "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", /* y = p */
      "0100000000000000000000000000000000000000000000000000000000000080", /* -0 identity */
  };
  const uint8_t msg[] = "a request digest";
  for (size_t i = 0; i < sizeof POINTS / sizeof POINTS[0]; i++) {
    uint8_t p[32], sig[64] = {0};
    char what[96];
    unhex(POINTS[i], p, 32);
    for (size_t j = 0; j < sizeof POINTS / sizeof POINTS[0]; j++) {
      unhex(POINTS[j], sig, 32);
      memset(sig + 32, 0, 32);
      snprintf(what, sizeof what, "key %zu, R %zu, S 0", i, j);
      cr_assert_not(both(p, msg, sizeof msg, sig, 64, what), "%s verifies", what);
    }
  }
  /* A good key with a small-order R. */
  uint8_t pub[32], sig[64];
  unhex(RFC8032[0].pub, pub, 32);
  unhex(RFC8032[0].sig, sig, 64);
  for (size_t j = 0; j < sizeof POINTS / sizeof POINTS[0]; j++) {
    unhex(POINTS[j], sig, 32);
    cr_assert_not(both(pub, (const uint8_t *)"", 0, sig, 64, "small-order R"));
  }
}

Test(dev_verify, random_signatures) {
  for (int i = 0; i < 200; i++) {
    fl_key *k = NULL;
    uint8_t pub[32], msg[32], sig[64];
    cr_assert_eq(fl__key_generate(&k), FL_OK);
    cr_assert_eq(fl__key_public(k, pub), FL_OK);
    cr_assert_eq(fl__random_bytes(msg, sizeof msg), FL_OK);
    cr_assert_eq(fl__sign(k, msg, sizeof msg, sig), FL_OK);
    cr_assert(both(pub, msg, sizeof msg, sig, 64, "random"));
    sig[i % 64] ^= (uint8_t)(1u << (i % 8));
    cr_assert_not(both(pub, msg, sizeof msg, sig, 64, "random, one bit flipped"));
    fl__key_free(k);
  }
}

Test(dev_verify, key_cache) {
  fl_keys *c = NULL;
  uint8_t a[32], b[32], out[32];
  memset(a, 0xaa, 32);
  memset(b, 0xbb, 32);
  cr_assert_eq(fl__keys_new(&c), FL_OK);
  cr_assert_not(fl__keys_get(c, 7, out));
  fl__keys_put(c, 7, a);
  cr_assert(fl__keys_get(c, 7, out));
  cr_assert_eq(memcmp(out, a, 32), 0);
  cr_assert_not(fl__keys_get(c, 8, out), "another device's key");
  fl__keys_put(c, 7, b);
  cr_assert(fl__keys_get(c, 7, out));
  cr_assert_eq(memcmp(out, b, 32), 0, "a put replaces");
  fl__keys_drop(c, 7);
  cr_assert_not(fl__keys_get(c, 7, out), "dropped");
  /* A fleet of 2000 devices stays cached whole (buckets of four: a direct-mapped cache lost
   * 3% of them to collisions). */
  for (uint64_t id = 1; id <= 2000; id++) {
    memcpy(out, &id, sizeof id);
    fl__keys_put(c, id, out);
  }
  for (uint64_t id = 1; id <= 2000; id++)
    cr_assert(fl__keys_get(c, id, out), "device %llu evicted", (unsigned long long)id);
  /* Bounded: more devices than slots leave at most FL_KEY_CACHE_SLOTS of them cached, and every
   * hit is the right key. */
  for (uint64_t id = 1; id <= 2 * FL_KEY_CACHE_SLOTS; id++) {
    memcpy(out, &id, sizeof id);
    fl__keys_put(c, id, out);
  }
  size_t hits = 0;
  for (uint64_t id = 1; id <= 2 * FL_KEY_CACHE_SLOTS; id++) {
    if (fl__keys_get(c, id, out)) {
      hits++;
      cr_assert_eq(memcmp(out, &id, sizeof id), 0);
    }
  }
  cr_assert_leq(hits, FL_KEY_CACHE_SLOTS);
  cr_assert_gt(hits, FL_KEY_CACHE_SLOTS / 2);
  cr_assert_not(fl__keys_get(c, 0, out), "device id 0 is never cached");
  fl__keys_free(c);
  fl__keys_free(NULL);
}
