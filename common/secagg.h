/*
 * Secure aggregation (SecAgg / SecAgg+, issue 17): the cryptographic and arithmetic building
 * blocks shared by libflclient and the coordinator. Pure functions, no I/O, no protocol state.
 *
 * docs/SECAGG.md specifies the exact bytes of every construction here (key derivation info
 * strings, AEAD nonce and associated data, the PRG, the share encoding, the quantization) so
 * that another implementation can interoperate; keep the two in step.
 *
 * Participants of a round are numbered 1..n (uint32, never 0): the number is both the
 * x-coordinate of the Shamir shares a participant holds and the order that decides the sign of
 * a pairwise mask.
 */
#ifndef FL__SECAGG_H
#define FL__SECAGG_H

#include <stddef.h>
#include <stdint.h>

#define FL_X25519_LEN 32
#define FL_SECAGG_SEED_LEN 32 /* PRG seeds, HKDF outputs, AEAD keys, shared secrets */
#define FL_SECAGG_TAG_LEN 16  /* AES-256-GCM tag, appended to the ciphertext */
#define FL_SECAGG_NONCE_LEN 12
#define FL_SECAGG_AD_LEN 16 /* round id u64 LE, sender u32 LE, receiver u32 LE */

/* X25519 (RFC 7748) on OpenSSL EVP. Keys are the raw 32-byte strings of the RFC. */
int fl__x25519_generate(uint8_t priv[FL_X25519_LEN], uint8_t pub[FL_X25519_LEN]);
int fl__x25519_public(const uint8_t priv[FL_X25519_LEN], uint8_t pub[FL_X25519_LEN]);
/* FL_E_CRYPTO also when the result is all zero (a small-order peer key, RFC 7748 section 6.1):
 * such a "secret" is known to everyone. */
int fl__x25519_agree(const uint8_t priv[FL_X25519_LEN], const uint8_t peer_pub[FL_X25519_LEN],
                     uint8_t shared[FL_X25519_LEN]);

/* HKDF-SHA256 (RFC 5869), extract then expand. salt may be NULL with salt_len 0 (then the RFC's
 * HashLen zero bytes). out_len at most 255 * 32, info at most 1024 bytes (OpenSSL's limit). */
int fl__hkdf_sha256(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                    const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

/* The two pairwise derivations of SECAGG.md "Key derivation": the AEAD key from the agreement of
 * the encryption key pairs, the mask seed from the agreement of the masking key pairs. */
int fl__secagg_enc_key(const uint8_t shared[FL_X25519_LEN], uint8_t key[FL_SECAGG_SEED_LEN]);
int fl__secagg_mask_seed(const uint8_t shared[FL_X25519_LEN], uint8_t seed[FL_SECAGG_SEED_LEN]);

/* AES-256-GCM of one share message from sender to receiver in a round. out holds len +
 * FL_SECAGG_TAG_LEN bytes (ciphertext, then tag). The nonce and the associated data are built
 * from (round, sender, receiver), so a ciphertext replayed to another pair, direction or round
 * is refused. */
int fl__secagg_seal(const uint8_t key[FL_SECAGG_SEED_LEN], uint64_t round, uint32_t sender,
                    uint32_t receiver, const uint8_t *msg, size_t len, uint8_t *out);
/* in_len includes the tag; out holds in_len - FL_SECAGG_TAG_LEN bytes. FL_E_BADSIG when the tag
 * does not verify (tampered bytes, wrong key, pair or round), FL_E_PARSE when shorter than a
 * tag. */
int fl__secagg_open(const uint8_t key[FL_SECAGG_SEED_LEN], uint64_t round, uint32_t sender,
                    uint32_t receiver, const uint8_t *in, size_t in_len, uint8_t *out);

/* PRG: acc[i] += sign * W[i] mod 2^32 for the ChaCha20 keystream words W of the seed
 * (SECAGG.md "PRG"); sign is +1 or -1. FL_E_TOOBIG beyond 2^36 words (the block counter). */
int fl__secagg_prg_add(const uint8_t seed[FL_SECAGG_SEED_LEN], int sign, uint32_t *acc, size_t len);

/* Shamir t-of-n sharing of a 32-byte secret over GF(2^61 - 1), the secret cut into 5 chunks of
 * 7, 7, 7, 7, 4 bytes (SECAGG.md "Shares"). */
#define FL_SHAMIR_CHUNKS 5
#define FL_SHAMIR_SHARE_LEN (4 + 8 * FL_SHAMIR_CHUNKS) /* encoded: x u32 LE, y[5] u64 LE */
/* A share message (SECAGG.md "Share messages"): share(s_sk) || share(b), sealed: 104 bytes. */
#define FL_SECAGG_SEALED_BYTES (2 * FL_SHAMIR_SHARE_LEN + FL_SECAGG_TAG_LEN)
typedef struct fl_shamir_share {
  uint32_t x; /* the holder's participant number, 1..n */
  uint64_t y[FL_SHAMIR_CHUNKS];
} fl_shamir_share;

/* One share per xs[i] (distinct, nonzero), out[n]. 1 <= t <= n. Fresh random coefficients
 * from the CSPRNG on each call. */
int fl__shamir_split(const uint8_t secret[FL_SECAGG_SEED_LEN], uint32_t t, const uint32_t *xs,
                     uint32_t n, fl_shamir_share *out);
/* Lagrange interpolation at 0 over the m >= t shares given. FL_E_INVAL for fewer than t
 * shares, a zero or repeated x; FL_E_PARSE when the result is not a valid chunking (a share
 * that does not belong to the same polynomial usually shows up this way, but not always: the
 * protocol authenticates shares, this is no substitute). */
int fl__shamir_combine(const fl_shamir_share *shares, uint32_t m, uint32_t t,
                       uint8_t secret[FL_SECAGG_SEED_LEN]);
void fl__shamir_encode(const fl_shamir_share *s, uint8_t out[FL_SHAMIR_SHARE_LEN]);
/* FL_E_PARSE for x = 0 or a y outside the field. */
int fl__shamir_decode(const uint8_t in[FL_SHAMIR_SHARE_LEN], fl_shamir_share *s);

/* Fixed point in Z_(2^32) (SECAGG.md "Quantization"): coordinates in [-clip, clip] map to
 * [0, 2^bits - 1] with bits = 32 - ceil(log2 n_max), so the sum of up to n_max quantized
 * values stays below 2^32 and the modular sum is the integer sum. */
typedef struct fl_secagg_quant {
  double clip;
  uint32_t n_max;
  uint32_t bits;
  double scale; /* (2^bits - 1) / (2 clip): quantization steps per unit */
} fl_secagg_quant;

#define FL_SECAGG_MIN_BITS 8 /* so n_max <= 2^24 */
/* FL_E_INVAL: clip not finite and > 0, n_max 0 or beyond 2^(32 - FL_SECAGG_MIN_BITS). */
int fl__secagg_quant_init(fl_secagg_quant *q, double clip, uint32_t n_max);
/* Deterministic round to nearest. FL_E_NONFINITE for NaN/inf, FL_E_NORM for a coordinate beyond
 * clip by more than a relative 1e-6 (what clipping's float rounding can leave is clamped). */
int fl__secagg_quantize(const fl_secagg_quant *q, const float *x, size_t len, uint32_t *out);
/* The mean of count inputs from their unmasked sum: sum / (count * scale) - clip. FL_E_INVAL
 * for count 0 or beyond n_max. */
int fl__secagg_dequantize_mean(const fl_secagg_quant *q, const uint32_t *sum, size_t len,
                               uint32_t count, float *mean);

/* Client side: y = x + PRG(self_seed) + sum over neighbours v of sign(self, v) PRG(s_uv), with
 * sign +1 when v > self and -1 when v < self. pair_seeds[i] belongs to peers[i]; FL_E_INVAL for
 * a peer 0, self or repeated. On failure y is zeroed: a half-masked input must never leave. */
int fl__secagg_mask(const uint32_t *x, size_t len, uint32_t self,
                    const uint8_t self_seed[FL_SECAGG_SEED_LEN], const uint32_t *peers,
                    const uint8_t (*pair_seeds)[FL_SECAGG_SEED_LEN], size_t k, uint32_t *y);
/* Server side, on the running sum of the masked inputs received: remove a surviving
 * participant's self mask, or the pairwise mask a survivor added for a dropped neighbour
 * (whose seed the server recomputed from the dropped one's reconstructed masking key). */
int fl__secagg_unmask_self(uint32_t *acc, size_t len, const uint8_t self_seed[FL_SECAGG_SEED_LEN]);
int fl__secagg_unmask_pair(uint32_t *acc, size_t len, uint32_t survivor, uint32_t dropped,
                           const uint8_t seed[FL_SECAGG_SEED_LEN]);

/* The SecAgg+ neighbour graph (SECAGG.md "Neighbour graph"): the Harary graph H(n, d) on a
 * permutation of the participants 1..n (Bell et al. 2020, section 3): position i is joined to
 * positions i +- 1 .. i +- d/2 (mod n) and, for odd d, to i + n/2. d = fl__secagg_degree(n, k):
 * min(k, n - 1), one more when k and n are both odd (n * d must be even); 0 for n < 2.
 * out[(p - 1) * d .. p * d - 1] receives participant p's neighbours in ascending order.
 * fl__secagg_harary takes the permutation (perm[position] = participant; FL_E_INVAL when it is
 * not one), fl__secagg_graph draws it uniformly from the CSPRNG. */
uint32_t fl__secagg_degree(uint32_t n, uint32_t k);
int fl__secagg_harary(uint32_t n, uint32_t k, const uint32_t *perm, uint32_t *out);
int fl__secagg_graph(uint32_t n, uint32_t k, uint32_t *out);

#endif
