/*
 * Ed25519 keys and signatures and SHA-256, on OpenSSL EVP.
 *
 * Key files are PKCS#8 PEM (private) written 0600 and atomically (temp file in the same
 * directory, fsync, rename, fsync of the directory). Public keys travel as the raw 32 bytes.
 * The exact bytes that are signed are specified in docs/SIGNING.md.
 */
#ifndef FL__CRYPTO_H
#define FL__CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FL_PUBKEY_LEN 32
#define FL_SIG_LEN 64
#define FL_SHA256_LEN 32

typedef struct fl_key fl_key; /* private or public-only Ed25519 key */

/* Constructors set *out only on success. */
int fl__key_generate(fl_key **out);
/* Reads a PKCS#8 private key or an SPKI public key ("PUBLIC KEY") PEM file. FL_E_IO when the
 * file cannot be read, FL_E_PARSE when it holds no Ed25519 key. */
int fl__key_load_pem(fl_key **out, const char *path);
int fl__key_save_pem(const fl_key *k, const char *path); /* private keys only, 0600 */
int fl__key_from_public(fl_key **out, const uint8_t pub[FL_PUBKEY_LEN]);
int fl__key_public(const fl_key *k, uint8_t pub[FL_PUBKEY_LEN]);
bool fl__key_has_private(const fl_key *k);
void fl__key_free(fl_key *k); /* NULL is a no-op */

/* FL_E_INVAL for a public-only key. */
int fl__sign(const fl_key *k, const void *msg, size_t len, uint8_t sig[FL_SIG_LEN]);
/* FL_OK or FL_E_BADSIG (also for a wrong-length signature). */
int fl__verify(const fl_key *k, const void *msg, size_t len, const uint8_t *sig, size_t sig_len);
int fl__verify_raw(const uint8_t pub[FL_PUBKEY_LEN], const void *msg, size_t len,
                   const uint8_t *sig, size_t sig_len);

/* One-shot SHA-256. FL_E_CRYPTO only if OpenSSL cannot allocate its context. */
int fl__sha256(const void *data, size_t len, uint8_t out[FL_SHA256_LEN]);

/* Incremental SHA-256 (used for canonical digests). A failure inside update is remembered and
 * reported by end, so a caller checks once. */
typedef struct fl_sha256 {
  void *md_ctx; /* EVP_MD_CTX */
  int err;
} fl_sha256;
int fl__sha256_begin(fl_sha256 *h);
void fl__sha256_update(fl_sha256 *h, const void *data, size_t len);
void fl__sha256_u32(fl_sha256 *h, uint32_t v);                     /* little-endian */
void fl__sha256_u64(fl_sha256 *h, uint64_t v);                     /* little-endian */
void fl__sha256_bytes(fl_sha256 *h, const void *data, size_t len); /* u64 length, then bytes */
int fl__sha256_end(fl_sha256 *h, uint8_t out[FL_SHA256_LEN]);      /* also frees */
void fl__sha256_abort(fl_sha256 *h);

int fl__random_bytes(void *buf, size_t len);            /* CSPRNG; FL_E_CRYPTO on failure */
void fl__hex(const uint8_t *in, size_t len, char *out); /* out: 2*len+1, lowercase */
/* Exactly 2*out_len hex digits (either case); FL_E_PARSE otherwise. */
int fl__unhex(const char *in, uint8_t *out, size_t out_len);

/* Writes data to path atomically with the given mode (temp, fsync, rename, fsync dir). On
 * failure the previous file, if any, is left as it was and no temp file remains. */
int fl__write_file_atomic(const char *path, const void *data, size_t len, unsigned mode);

#endif
