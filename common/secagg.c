/*
 * Secure aggregation building blocks (see secagg.h; the bytes are specified in docs/SECAGG.md).
 */
#include "secagg.h"

#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "fl/err.h"

/* ---- X25519 ---------------------------------------------------------------------------- */

int fl__x25519_public(const uint8_t priv[FL_X25519_LEN], uint8_t pub[FL_X25519_LEN]) {
  if (priv == NULL || pub == NULL)
    return FL_E_INVAL;
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, FL_X25519_LEN);
  if (k == NULL)
    return FL_E_CRYPTO;
  size_t len = FL_X25519_LEN;
  int rc =
      EVP_PKEY_get_raw_public_key(k, pub, &len) == 1 && len == FL_X25519_LEN ? FL_OK : FL_E_CRYPTO;
  EVP_PKEY_free(k);
  return rc;
}

int fl__x25519_generate(uint8_t priv[FL_X25519_LEN], uint8_t pub[FL_X25519_LEN]) {
  if (priv == NULL || pub == NULL)
    return FL_E_INVAL;
  /* Any 32 random bytes are a private key: X25519 clamps the scalar itself (RFC 7748 s. 5). */
  int rc = fl__random_bytes(priv, FL_X25519_LEN);
  if (rc == FL_OK)
    rc = fl__x25519_public(priv, pub);
  if (rc != FL_OK)
    OPENSSL_cleanse(priv, FL_X25519_LEN);
  return rc;
}

int fl__x25519_agree(const uint8_t priv[FL_X25519_LEN], const uint8_t peer_pub[FL_X25519_LEN],
                     uint8_t shared[FL_X25519_LEN]) {
  if (priv == NULL || peer_pub == NULL || shared == NULL)
    return FL_E_INVAL;
  int rc = FL_E_CRYPTO;
  EVP_PKEY_CTX *ctx = NULL;
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, FL_X25519_LEN);
  EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, peer_pub, FL_X25519_LEN);
  if (k == NULL || peer == NULL)
    goto done;
  ctx = EVP_PKEY_CTX_new(k, NULL);
  size_t len = FL_X25519_LEN;
  if (ctx == NULL || EVP_PKEY_derive_init(ctx) != 1 || EVP_PKEY_derive_set_peer(ctx, peer) != 1 ||
      EVP_PKEY_derive(ctx, shared, &len) != 1 || len != FL_X25519_LEN)
    goto done;
  /* OpenSSL already refuses an all-zero result; checked here too so the guarantee does not
   * depend on the library version. */
  static const uint8_t zero[FL_X25519_LEN];
  if (CRYPTO_memcmp(shared, zero, FL_X25519_LEN) == 0)
    goto done;
  rc = FL_OK;
done:
  if (rc != FL_OK)
    OPENSSL_cleanse(shared, FL_X25519_LEN);
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(peer);
  EVP_PKEY_free(k);
  return rc;
}

/* ---- HKDF ------------------------------------------------------------------------------ */

int fl__hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                    const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len) {
  if ((salt == NULL && salt_len > 0) || ikm == NULL || ikm_len == 0 ||
      (info == NULL && info_len > 0) || out == NULL || out_len == 0 || out_len > 255 * 32 ||
      salt_len > INT32_MAX || ikm_len > INT32_MAX || info_len > 1024)
    return FL_E_INVAL;
  int rc = FL_E_CRYPTO;
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
  if (ctx == NULL || EVP_PKEY_derive_init(ctx) != 1 ||
      EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set1_hkdf_key(ctx, ikm, (int)ikm_len) != 1)
    goto done;
  /* An absent salt is the RFC's string of HashLen zeros, OpenSSL's default. */
  if (salt_len > 0 && EVP_PKEY_CTX_set1_hkdf_salt(ctx, salt, (int)salt_len) != 1)
    goto done;
  if (info_len > 0 && EVP_PKEY_CTX_add1_hkdf_info(ctx, info, (int)info_len) != 1)
    goto done;
  size_t len = out_len;
  if (EVP_PKEY_derive(ctx, out, &len) != 1 || len != out_len)
    goto done;
  rc = FL_OK;
done:
  EVP_PKEY_CTX_free(ctx);
  return rc;
}

/* The info strings of SECAGG.md: distinct, so the AEAD key and the mask seed are independent
 * even if one shared secret were ever fed to both. */
static const char enc_info[] = "fleetlearn secagg v1 share key";
static const char mask_info[] = "fleetlearn secagg v1 mask seed";

int fl__secagg_enc_key(const uint8_t shared[FL_X25519_LEN], uint8_t key[FL_SECAGG_SEED_LEN]) {
  return fl__hkdf_sha256(NULL, 0, shared, FL_X25519_LEN, (const uint8_t *)enc_info,
                         sizeof enc_info - 1, key, FL_SECAGG_SEED_LEN);
}

int fl__secagg_mask_seed(const uint8_t shared[FL_X25519_LEN], uint8_t seed[FL_SECAGG_SEED_LEN]) {
  return fl__hkdf_sha256(NULL, 0, shared, FL_X25519_LEN, (const uint8_t *)mask_info,
                         sizeof mask_info - 1, seed, FL_SECAGG_SEED_LEN);
}

/* ---- AEAD ------------------------------------------------------------------------------ */

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

static void aead_params(uint64_t round, uint32_t sender, uint32_t receiver,
                        uint8_t nonce[FL_SECAGG_NONCE_LEN], uint8_t ad[FL_SECAGG_AD_LEN]) {
  put_u32(nonce, sender);
  put_u32(nonce + 4, receiver);
  memset(nonce + 8, 0, 4);
  put_u64(ad, round);
  put_u32(ad + 8, sender);
  put_u32(ad + 12, receiver);
}

static int aead(int enc, const uint8_t key[FL_SECAGG_SEED_LEN], uint64_t round, uint32_t sender,
                uint32_t receiver, const uint8_t *in, size_t len, uint8_t *tag, uint8_t *out) {
  if (key == NULL || (in == NULL && len > 0) || (out == NULL && len > 0) || len > INT32_MAX ||
      sender == 0 || receiver == 0 || sender == receiver)
    return FL_E_INVAL;
  uint8_t nonce[FL_SECAGG_NONCE_LEN], ad[FL_SECAGG_AD_LEN];
  aead_params(round, sender, receiver, nonce, ad);
  int rc = FL_E_CRYPTO, n = 0;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  if (c == NULL || EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, FL_SECAGG_NONCE_LEN, NULL) != 1 ||
      EVP_CipherInit_ex(c, NULL, NULL, key, nonce, enc) != 1 ||
      EVP_CipherUpdate(c, NULL, &n, ad, sizeof ad) != 1)
    goto done;
  if (len > 0 && EVP_CipherUpdate(c, out, &n, in, (int)len) != 1)
    goto done;
  if (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, FL_SECAGG_TAG_LEN, tag) != 1)
    goto done;
  if (EVP_CipherFinal_ex(c, out == NULL ? NULL : out + len, &n) != 1) {
    rc = enc ? FL_E_CRYPTO : FL_E_BADSIG;
    goto done;
  }
  if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, FL_SECAGG_TAG_LEN, tag) != 1)
    goto done;
  rc = FL_OK;
done:
  /* A refused message leaves no plaintext behind. */
  if (rc != FL_OK && out != NULL && len > 0)
    OPENSSL_cleanse(out, len);
  EVP_CIPHER_CTX_free(c);
  return rc;
}

int fl__secagg_seal(const uint8_t key[FL_SECAGG_SEED_LEN], uint64_t round, uint32_t sender,
                    uint32_t receiver, const uint8_t *msg, size_t len, uint8_t *out) {
  if (out == NULL)
    return FL_E_INVAL;
  return aead(1, key, round, sender, receiver, msg, len, out + len, out);
}

int fl__secagg_open(const uint8_t key[FL_SECAGG_SEED_LEN], uint64_t round, uint32_t sender,
                    uint32_t receiver, const uint8_t *in, size_t in_len, uint8_t *out) {
  if (in == NULL)
    return FL_E_INVAL;
  if (in_len < FL_SECAGG_TAG_LEN)
    return FL_E_PARSE;
  size_t len = in_len - FL_SECAGG_TAG_LEN;
  /* OpenSSL wants a writable tag buffer for SET_TAG. */
  uint8_t tag[FL_SECAGG_TAG_LEN];
  memcpy(tag, in + len, FL_SECAGG_TAG_LEN);
  return aead(0, key, round, sender, receiver, in, len, tag, out);
}

/* ---- PRG ------------------------------------------------------------------------------- */

int fl__secagg_prg_add(const uint8_t seed[FL_SECAGG_SEED_LEN], int sign, uint32_t *acc,
                       size_t len) {
  if (seed == NULL || (acc == NULL && len > 0) || (sign != 1 && sign != -1))
    return FL_E_INVAL;
  /* The 32-bit block counter of the IV covers 2^32 * 16 words. */
  if ((uint64_t)len > ((uint64_t)1 << 36))
    return FL_E_TOOBIG;
  static const uint8_t iv[16]; /* counter 0, nonce 0: one seed, one stream */
  static const uint8_t zeros[1024];
  uint8_t ks[sizeof zeros];
  int rc = FL_E_CRYPTO;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  if (c == NULL || EVP_EncryptInit_ex(c, EVP_chacha20(), NULL, seed, iv) != 1)
    goto done;
  for (size_t done_words = 0; done_words < len;) {
    size_t words = len - done_words;
    if (words > sizeof ks / 4)
      words = sizeof ks / 4;
    int n = 0;
    if (EVP_EncryptUpdate(c, ks, &n, zeros, (int)(words * 4)) != 1 || (size_t)n != words * 4)
      goto done;
    for (size_t i = 0; i < words; i++) {
      const uint8_t *p = ks + 4 * i;
      uint32_t w =
          (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
      acc[done_words + i] += sign > 0 ? w : (uint32_t)0 - w;
    }
    done_words += words;
  }
  rc = FL_OK;
done:
  OPENSSL_cleanse(ks, sizeof ks);
  EVP_CIPHER_CTX_free(c);
  return rc;
}

/* ---- Shamir over GF(2^61 - 1) ---------------------------------------------------------- */

#define P61 ((((uint64_t)1) << 61) - 1)
__extension__ typedef unsigned __int128 fl__u128;

static const unsigned chunk_off[FL_SHAMIR_CHUNKS] = {0, 7, 14, 21, 28};
static const unsigned chunk_len[FL_SHAMIR_CHUNKS] = {7, 7, 7, 7, 4};

static uint64_t f_add(uint64_t a, uint64_t b) {
  uint64_t s = a + b;
  return s >= P61 ? s - P61 : s;
}

static uint64_t f_sub(uint64_t a, uint64_t b) {
  return a >= b ? a - b : a + P61 - b;
}

static uint64_t f_mul(uint64_t a, uint64_t b) {
  fl__u128 r = (fl__u128)a * b;
  /* 2^61 = 1 mod p: fold the high bits onto the low ones. */
  uint64_t s = ((uint64_t)r & P61) + (uint64_t)(r >> 61);
  s = (s & P61) + (s >> 61);
  return s >= P61 ? s - P61 : s;
}

static uint64_t f_inv(uint64_t a) { /* a^(p-2), a != 0 */
  uint64_t r = 1, e = P61 - 2;
  while (e) {
    if (e & 1)
      r = f_mul(r, a);
    a = f_mul(a, a);
    e >>= 1;
  }
  return r;
}

static int f_random(uint64_t *out) {
  for (;;) { /* uniform on [0, p) by rejection of the single value p */
    uint8_t b[8];
    int rc = fl__random_bytes(b, sizeof b);
    if (rc != FL_OK)
      return rc;
    uint64_t v = get_u64(b) & P61;
    OPENSSL_cleanse(b, sizeof b);
    if (v < P61) {
      *out = v;
      return FL_OK;
    }
  }
}

/* Nonzero and pairwise distinct. */
static int check_xs(const uint32_t *xs, size_t stride, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    uint32_t xi = *(const uint32_t *)((const char *)xs + i * stride);
    if (xi == 0)
      return FL_E_INVAL;
    for (uint32_t j = 0; j < i; j++)
      if (*(const uint32_t *)((const char *)xs + j * stride) == xi)
        return FL_E_INVAL;
  }
  return FL_OK;
}

int fl__shamir_split(const uint8_t secret[FL_SECAGG_SEED_LEN], uint32_t t, const uint32_t *xs,
                     uint32_t n, fl_shamir_share *out) {
  if (secret == NULL || xs == NULL || out == NULL || t == 0 || t > n || n > 65536)
    return FL_E_INVAL;
  int rc = check_xs(xs, sizeof *xs, n);
  if (rc != FL_OK)
    return rc;
  uint64_t *coef = OPENSSL_zalloc((size_t)t * sizeof *coef);
  if (coef == NULL)
    return FL_E_NOMEM;
  for (uint32_t i = 0; i < n; i++)
    out[i].x = xs[i];
  for (unsigned c = 0; c < FL_SHAMIR_CHUNKS; c++) {
    uint64_t v = 0;
    for (int b = (int)chunk_len[c] - 1; b >= 0; b--)
      v = (v << 8) | secret[chunk_off[c] + (unsigned)b];
    coef[0] = v;
    for (uint32_t j = 1; j < t; j++)
      if ((rc = f_random(&coef[j])) != FL_OK)
        goto done;
    for (uint32_t i = 0; i < n; i++) { /* Horner */
      uint64_t y = 0;
      for (uint32_t j = t; j-- > 0;)
        y = f_add(f_mul(y, xs[i]), coef[j]);
      out[i].y[c] = y;
    }
  }
done:
  OPENSSL_clear_free(coef, (size_t)t * sizeof *coef);
  if (rc != FL_OK)
    OPENSSL_cleanse(out, (size_t)n * sizeof *out);
  return rc;
}

int fl__shamir_combine(const fl_shamir_share *shares, uint32_t m, uint32_t t,
                       uint8_t secret[FL_SECAGG_SEED_LEN]) {
  if (shares == NULL || secret == NULL || t == 0 || m < t)
    return FL_E_INVAL;
  /* The first t shares determine the polynomial; any more are not needed. */
  int rc = check_xs(&shares[0].x, sizeof *shares, t);
  if (rc != FL_OK)
    return rc;
  for (uint32_t i = 0; i < t; i++)
    for (unsigned c = 0; c < FL_SHAMIR_CHUNKS; c++)
      if (shares[i].y[c] >= P61)
        return FL_E_INVAL;
  uint64_t acc[FL_SHAMIR_CHUNKS] = {0};
  for (uint32_t i = 0; i < t; i++) {
    /* Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i). */
    uint64_t num = 1, den = 1;
    for (uint32_t j = 0; j < t; j++) {
      if (j == i)
        continue;
      num = f_mul(num, shares[j].x);
      den = f_mul(den, f_sub(shares[j].x, shares[i].x));
    }
    uint64_t l = f_mul(num, f_inv(den));
    for (unsigned c = 0; c < FL_SHAMIR_CHUNKS; c++)
      acc[c] = f_add(acc[c], f_mul(shares[i].y[c], l));
  }
  rc = FL_OK;
  for (unsigned c = 0; c < FL_SHAMIR_CHUNKS; c++) {
    if (acc[c] >> (8 * chunk_len[c]))
      rc = FL_E_PARSE;
    for (unsigned b = 0; b < chunk_len[c]; b++)
      secret[chunk_off[c] + b] = (uint8_t)(acc[c] >> (8 * b));
  }
  OPENSSL_cleanse(acc, sizeof acc);
  if (rc != FL_OK)
    OPENSSL_cleanse(secret, FL_SECAGG_SEED_LEN);
  return rc;
}

void fl__shamir_encode(const fl_shamir_share *s, uint8_t out[FL_SHAMIR_SHARE_LEN]) {
  put_u32(out, s->x);
  for (unsigned c = 0; c < FL_SHAMIR_CHUNKS; c++)
    put_u64(out + 4 + 8 * c, s->y[c]);
}

int fl__shamir_decode(const uint8_t in[FL_SHAMIR_SHARE_LEN], fl_shamir_share *s) {
  if (in == NULL || s == NULL)
    return FL_E_INVAL;
  s->x = (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 | (uint32_t)in[3] << 24;
  if (s->x == 0)
    return FL_E_PARSE;
  for (unsigned c = 0; c < FL_SHAMIR_CHUNKS; c++) {
    s->y[c] = get_u64(in + 4 + 8 * c);
    if (s->y[c] >= P61)
      return FL_E_PARSE;
  }
  return FL_OK;
}

/* ---- Quantization ---------------------------------------------------------------------- */

int fl__secagg_quant_init(fl_secagg_quant *q, double clip, uint32_t n_max) {
  if (q == NULL || !isfinite(clip) || clip <= 0 || n_max == 0 ||
      n_max > ((uint32_t)1 << (32 - FL_SECAGG_MIN_BITS)))
    return FL_E_INVAL;
  uint32_t lg = 0; /* ceil(log2 n_max) */
  while (((uint64_t)1 << lg) < n_max)
    lg++;
  q->clip = clip;
  q->n_max = n_max;
  q->bits = 32 - lg;
  q->scale = (double)((((uint64_t)1) << q->bits) - 1) / (2.0 * clip);
  return FL_OK;
}

int fl__secagg_quantize(const fl_secagg_quant *q, const float *x, size_t len, uint32_t *out) {
  if (q == NULL || ((x == NULL || out == NULL) && len > 0))
    return FL_E_INVAL;
  const double top = (double)((((uint64_t)1) << q->bits) - 1);
  for (size_t i = 0; i < len; i++) {
    double v = x[i];
    if (!isfinite(v))
      return FL_E_NONFINITE;
    if (fabs(v) > q->clip * (1 + 1e-6))
      return FL_E_NORM;
    double r = floor((v + q->clip) * q->scale + 0.5);
    /* Clamping keeps the no-wrap bound whatever the rounding of the clipped float. */
    out[i] = (uint32_t)(r < 0 ? 0 : r > top ? top : r);
  }
  return FL_OK;
}

int fl__secagg_dequantize_mean(const fl_secagg_quant *q, const uint32_t *sum, size_t len,
                               uint32_t count, float *mean) {
  if (q == NULL || ((sum == NULL || mean == NULL) && len > 0) || count == 0 || count > q->n_max)
    return FL_E_INVAL;
  const double div = (double)count * q->scale;
  for (size_t i = 0; i < len; i++)
    mean[i] = (float)((double)sum[i] / div - q->clip);
  return FL_OK;
}

/* ---- Masks ----------------------------------------------------------------------------- */

int fl__secagg_mask(const uint32_t *x, size_t len, uint32_t self,
                    const uint8_t self_seed[FL_SECAGG_SEED_LEN], const uint32_t *peers,
                    const uint8_t (*pair_seeds)[FL_SECAGG_SEED_LEN], size_t k, uint32_t *y) {
  if (((x == NULL || y == NULL) && len > 0) || self == 0 || self_seed == NULL ||
      ((peers == NULL || pair_seeds == NULL) && k > 0))
    return FL_E_INVAL;
  /* A repeated neighbour would add its mask twice and the sum would never unmask. */
  for (size_t i = 0; i < k; i++) {
    if (peers[i] == 0 || peers[i] == self)
      return FL_E_INVAL;
    for (size_t j = 0; j < i; j++)
      if (peers[j] == peers[i])
        return FL_E_INVAL;
  }
  if (y != x && len > 0)
    memmove(y, x, len * sizeof *y);
  int rc = fl__secagg_prg_add(self_seed, 1, y, len);
  for (size_t i = 0; i < k && rc == FL_OK; i++)
    rc = fl__secagg_prg_add(pair_seeds[i], peers[i] > self ? 1 : -1, y, len);
  if (rc != FL_OK && len > 0) /* a half-masked input must never be sent */
    memset(y, 0, len * sizeof *y);
  return rc;
}

int fl__secagg_unmask_self(uint32_t *acc, size_t len, const uint8_t self_seed[FL_SECAGG_SEED_LEN]) {
  return fl__secagg_prg_add(self_seed, -1, acc, len);
}

int fl__secagg_unmask_pair(uint32_t *acc, size_t len, uint32_t survivor, uint32_t dropped,
                           const uint8_t seed[FL_SECAGG_SEED_LEN]) {
  if (survivor == 0 || dropped == 0 || survivor == dropped)
    return FL_E_INVAL;
  /* The survivor added +PRG when the dropped neighbour is the larger number. */
  return fl__secagg_prg_add(seed, dropped > survivor ? -1 : 1, acc, len);
}

/* ---- the neighbour graph --------------------------------------------------------------- */

uint32_t fl__secagg_degree(uint32_t n, uint32_t k) {
  if (n < 2)
    return 0;
  if (k >= n - 1)
    return n - 1;
  return (k & 1) && (n & 1) ? k + 1 : k; /* n * k must be even */
}

int fl__secagg_harary(uint32_t n, uint32_t k, const uint32_t *perm, uint32_t *out) {
  uint32_t d = fl__secagg_degree(n, k);
  if (d == 0 || perm == NULL || out == NULL)
    return FL_E_INVAL;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t p = perm[i], *row = out + (size_t)(p - 1) * d, m = 0;
    if (p == 0 || p > n)
      return FL_E_INVAL;
    for (uint32_t j = 1; j <= d / 2; j++) {
      row[m++] = perm[(i + j) % n];
      row[m++] = perm[(i + n - j) % n];
    }
    if (d & 1)
      row[m++] = perm[(i + n / 2) % n];
    /* Sorted (insertion: d is small), so that a row reads the same whoever builds it. */
    for (uint32_t a = 1; a < m; a++)
      for (uint32_t b = a; b > 0 && row[b - 1] > row[b]; b--) {
        uint32_t t = row[b];
        row[b] = row[b - 1];
        row[b - 1] = t;
      }
    for (uint32_t a = 1; a < m; a++)
      if (row[a] == row[a - 1] || row[a] == p)
        return FL_E_INVAL; /* perm is not a permutation of 1..n */
    if (m > 0 && row[0] == p)
      return FL_E_INVAL;
  }
  return FL_OK;
}

int fl__secagg_graph(uint32_t n, uint32_t k, uint32_t *out) {
  uint32_t *perm = malloc((size_t)n * sizeof *perm + 1);
  int err = FL_E_NOMEM;
  if (perm == NULL)
    return err;
  for (uint32_t i = 0; i < n; i++)
    perm[i] = i + 1;
  /* Fisher-Yates from the CSPRNG, by rejection (no modulo bias). */
  err = FL_OK;
  for (uint32_t i = n; i > 1 && err == FL_OK; i--) {
    uint32_t lim = UINT32_MAX - UINT32_MAX % i, x;
    do
      err = fl__random_bytes(&x, sizeof x);
    while (err == FL_OK && x >= lim);
    uint32_t j = x % i, t = perm[i - 1];
    perm[i - 1] = perm[j];
    perm[j] = t;
  }
  if (err == FL_OK)
    err = fl__secagg_harary(n, k, perm, out);
  free(perm);
  return err;
}
