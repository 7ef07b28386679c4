/*
 * Ed25519 and SHA-256 on OpenSSL 3 EVP, hex helpers and atomic file writes.
 *
 * An fl_key is an EVP_PKEY in disguise: the opaque type keeps OpenSSL out of our headers and
 * costs no allocation of our own. Every OpenSSL failure path clears the thread's error queue so
 * that a stale error never shows up in an unrelated later call.
 */
#include "crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fl/err.h"
#include "mem.h"

/* PEM key files are a few hundred bytes; anything much larger is not a key. */
#define FL__KEY_FILE_MAX (64 * 1024)

static EVP_PKEY *pkey_of(const fl_key *k) {
  return (EVP_PKEY *)(void *)k;
}
static fl_key *key_of(EVP_PKEY *p) {
  return (fl_key *)(void *)p;
}

int fl__key_generate(fl_key **out) {
  EVP_PKEY *p = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  if (p == NULL) {
    ERR_clear_error();
    return FL_E_CRYPTO;
  }
  *out = key_of(p);
  return FL_OK;
}

void fl__key_free(fl_key *k) {
  EVP_PKEY_free(pkey_of(k));
}

bool fl__key_has_private(const fl_key *k) {
  size_t len = 0;
  if (k == NULL)
    return false;
  if (EVP_PKEY_get_raw_private_key(pkey_of(k), NULL, &len) != 1) {
    ERR_clear_error();
    return false;
  }
  return len == 32;
}

int fl__key_public(const fl_key *k, uint8_t pub[FL_PUBKEY_LEN]) {
  size_t len = FL_PUBKEY_LEN;
  if (k == NULL)
    return FL_E_INVAL;
  if (EVP_PKEY_get_raw_public_key(pkey_of(k), pub, &len) != 1 || len != FL_PUBKEY_LEN) {
    ERR_clear_error();
    return FL_E_CRYPTO;
  }
  return FL_OK;
}

int fl__key_from_public(fl_key **out, const uint8_t pub[FL_PUBKEY_LEN]) {
  EVP_PKEY *p = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, FL_PUBKEY_LEN);
  if (p == NULL) {
    ERR_clear_error();
    return FL_E_PARSE;
  }
  *out = key_of(p);
  return FL_OK;
}

/* Refuses every passphrase prompt: an encrypted key file must not block a daemon on a tty. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

static int read_small_file(const char *path, char **out, size_t *out_len) {
  int err = FL_E_IO;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return FL_E_IO;
  char *buf = fl__malloc(NULL, FL__KEY_FILE_MAX);
  if (buf == NULL) {
    err = FL_E_NOMEM;
    goto out_close;
  }
  size_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, FL__KEY_FILE_MAX - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      goto out_free;
    if (n == 0)
      break;
    len += (size_t)n;
    if (len == FL__KEY_FILE_MAX) {
      err = FL_E_TOOBIG;
      goto out_free;
    }
  }
  close(fd);
  *out = buf;
  *out_len = len;
  return FL_OK;
out_free:
  OPENSSL_cleanse(buf, FL__KEY_FILE_MAX);
  fl__free(NULL, buf);
out_close:
  close(fd);
  return err;
}

/* A private key (PKCS#8) first, then a public one (SPKI); only Ed25519 is accepted. */
static EVP_PKEY *parse_pem(const char *pem, size_t len) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  if (bio == NULL)
    return NULL;
  EVP_PKEY *p = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
  if (p == NULL) {
    ERR_clear_error();
    BIO_free(bio);
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
      return NULL;
    p = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
  }
  BIO_free(bio);
  if (p != NULL && EVP_PKEY_get_id(p) != EVP_PKEY_ED25519) {
    EVP_PKEY_free(p);
    p = NULL;
  }
  ERR_clear_error();
  return p;
}

int fl__key_load_pem(fl_key **out, const char *path) {
  char *pem = NULL;
  size_t len = 0;
  int err = read_small_file(path, &pem, &len);
  if (err != FL_OK)
    return err;
  EVP_PKEY *p = parse_pem(pem, len);
  OPENSSL_cleanse(pem, len);
  fl__free(NULL, pem);
  if (p == NULL)
    return FL_E_PARSE;
  *out = key_of(p);
  return FL_OK;
}

int fl__key_save_pem(const fl_key *k, const char *path) {
  if (!fl__key_has_private(k))
    return FL_E_INVAL;
  int err = FL_E_CRYPTO;
  BIO *bio = BIO_new(BIO_s_mem());
  if (bio == NULL)
    goto out;
  /* OpenSSL 3 writes PKCS#8 ("BEGIN PRIVATE KEY") for this call, unencrypted. */
  if (PEM_write_bio_PrivateKey(bio, pkey_of(k), NULL, NULL, 0, NULL, NULL) != 1)
    goto out_free_bio;
  char *data = NULL;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || data == NULL)
    goto out_free_bio;
  err = fl__write_file_atomic(path, data, (size_t)len, 0600);
  OPENSSL_cleanse(data, (size_t)len);
out_free_bio:
  BIO_free(bio);
out:
  ERR_clear_error();
  return err;
}

int fl__sign(const fl_key *k, const void *msg, size_t len, uint8_t sig[FL_SIG_LEN]) {
  if (!fl__key_has_private(k))
    return FL_E_INVAL;
  int err = FL_E_CRYPTO;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx == NULL)
    goto out;
  size_t sig_len = FL_SIG_LEN;
  /* Ed25519 is "pure": no separate digest, hence the NULL md and the one-shot call. */
  if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, pkey_of(k)) != 1)
    goto out_free_ctx;
  if (EVP_DigestSign(ctx, sig, &sig_len, msg, len) != 1 || sig_len != FL_SIG_LEN)
    goto out_free_ctx;
  err = FL_OK;
out_free_ctx:
  EVP_MD_CTX_free(ctx);
out:
  if (err != FL_OK)
    ERR_clear_error();
  return err;
}

/* Points no honest signer produces as a public key or as a signature's R: the small-order
 * ones (with either sign bit) and the non-canonical encodings (y >= p). OpenSSL's cofactorless
 * check takes a small-order key with R = identity and S = 0 for any message; libsodium refuses
 * them, and the coordinator verifies device signatures with libsodium (server/auth/keys.c), so
 * both refuse the same points: libsodium 1.0.18's list and test (ge25519_has_small_order,
 * ge25519_is_canonical; docs/SIGNING.md). */
static bool weak_point(const uint8_t p[32]) {
  static const uint8_t small[7][32] = {
      {0},
      {1},
      {0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4,
       0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6,
       0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05},
      {0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b,
       0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39,
       0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a},
      {0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
      {0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
      {0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
  };
  for (int j = 0; j < 7; j++) {
    if (memcmp(p, small[j], 31) == 0 && (p[31] & 0x7f) == small[j][31])
      return true;
  }
  /* y >= p = 2^255 - 19: bytes 1..30 all 0xff, the top byte 0x7f (sign bit aside), the low one
   * at least 0xed. */
  bool top = (p[31] & 0x7f) == 0x7f && p[0] >= 0xed;
  for (int i = 1; top && i < 31; i++)
    top = p[i] == 0xff;
  return top;
}

int fl__verify(const fl_key *k, const void *msg, size_t len, const uint8_t *sig, size_t sig_len) {
  uint8_t pub[FL_PUBKEY_LEN];
  size_t pub_len = sizeof pub;
  if (k == NULL || sig == NULL || sig_len != FL_SIG_LEN || weak_point(sig))
    return FL_E_BADSIG;
  if (EVP_PKEY_get_raw_public_key(pkey_of(k), pub, &pub_len) != 1 || pub_len != sizeof pub ||
      weak_point(pub)) {
    ERR_clear_error();
    return FL_E_BADSIG;
  }
  int err = FL_E_BADSIG;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (ctx == NULL)
    return FL_E_NOMEM;
  if (EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey_of(k)) != 1) {
    err = FL_E_CRYPTO;
    goto out_free_ctx;
  }
  /* 1 is a good signature; 0 a bad one; negative values are malformed input: all but 1 fail. */
  if (EVP_DigestVerify(ctx, sig, sig_len, msg, len) == 1)
    err = FL_OK;
out_free_ctx:
  EVP_MD_CTX_free(ctx);
  if (err != FL_OK)
    ERR_clear_error();
  return err;
}

int fl__verify_raw(const uint8_t pub[FL_PUBKEY_LEN], const void *msg, size_t len,
                   const uint8_t *sig, size_t sig_len) {
  fl_key *k = NULL;
  if (sig == NULL || sig_len != FL_SIG_LEN)
    return FL_E_BADSIG;
  /* A public key that is not a curve point can never have signed anything. */
  if (fl__key_from_public(&k, pub) != FL_OK)
    return FL_E_BADSIG;
  int err = fl__verify(k, msg, len, sig, sig_len);
  fl__key_free(k);
  return err;
}

int fl__sha256(const void *data, size_t len, uint8_t out[FL_SHA256_LEN]) {
  unsigned int n = 0;
  if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != FL_SHA256_LEN) {
    ERR_clear_error();
    return FL_E_CRYPTO;
  }
  return FL_OK;
}

int fl__sha256_begin(fl_sha256 *h) {
  h->err = FL_OK;
  h->md_ctx = EVP_MD_CTX_new();
  if (h->md_ctx == NULL)
    return FL_E_NOMEM;
  if (EVP_DigestInit_ex(h->md_ctx, EVP_sha256(), NULL) != 1) {
    ERR_clear_error();
    EVP_MD_CTX_free(h->md_ctx);
    h->md_ctx = NULL;
    return FL_E_CRYPTO;
  }
  return FL_OK;
}

void fl__sha256_update(fl_sha256 *h, const void *data, size_t len) {
  if (h->err != FL_OK || len == 0)
    return;
  if (EVP_DigestUpdate(h->md_ctx, data, len) != 1) {
    ERR_clear_error();
    h->err = FL_E_CRYPTO;
  }
}

void fl__sha256_u32(fl_sha256 *h, uint32_t v) {
  uint8_t b[4];
  for (int i = 0; i < 4; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  fl__sha256_update(h, b, sizeof b);
}

void fl__sha256_u64(fl_sha256 *h, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  fl__sha256_update(h, b, sizeof b);
}

void fl__sha256_bytes(fl_sha256 *h, const void *data, size_t len) {
  fl__sha256_u64(h, (uint64_t)len);
  fl__sha256_update(h, data, len);
}

int fl__sha256_end(fl_sha256 *h, uint8_t out[FL_SHA256_LEN]) {
  int err = h->err;
  unsigned int n = 0;
  if (err == FL_OK && (EVP_DigestFinal_ex(h->md_ctx, out, &n) != 1 || n != FL_SHA256_LEN)) {
    ERR_clear_error();
    err = FL_E_CRYPTO;
  }
  fl__sha256_abort(h);
  return err;
}

void fl__sha256_abort(fl_sha256 *h) {
  EVP_MD_CTX_free(h->md_ctx);
  h->md_ctx = NULL;
}

int fl__random_bytes(void *buf, size_t len) {
  unsigned char *p = buf;
  /* RAND_bytes takes an int length. */
  while (len > 0) {
    int n = len > (1u << 30) ? (1 << 30) : (int)len;
    if (RAND_bytes(p, n) != 1) {
      ERR_clear_error();
      return FL_E_CRYPTO;
    }
    p += n;
    len -= (size_t)n;
  }
  return FL_OK;
}

void fl__hex(const uint8_t *in, size_t len, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < len; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * len] = '\0';
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int fl__unhex(const char *in, uint8_t *out, size_t out_len) {
  if (in == NULL || strlen(in) != 2 * out_len)
    return FL_E_PARSE;
  for (size_t i = 0; i < out_len; i++) {
    int hi = hex_value(in[2 * i]), lo = hex_value(in[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return FL_E_PARSE;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return FL_OK;
}

/* The directory part of path ("." when there is none), for the fsync after rename. */
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL)
    return fl__strdup(NULL, ".");
  size_t n = slash == path ? 1 : (size_t)(slash - path);
  char *d = fl__malloc(NULL, n + 1);
  if (d != NULL) {
    memcpy(d, path, n);
    d[n] = '\0';
  }
  return d;
}

static int write_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FL_E_IO;
    p += n;
    len -= (size_t)n;
  }
  return FL_OK;
}

/* Creates "<path>.tmp.<16 random hex>" with O_EXCL, so two writers never share a temp file
 * and a planted symlink is never followed. */
static int open_temp(const char *path, unsigned mode, char **tmp_out, int *fd_out) {
  size_t plen = strlen(path);
  char *tmp = fl__malloc(NULL, plen + 5 + 16 + 1);
  if (tmp == NULL)
    return FL_E_NOMEM;
  for (int attempt = 0; attempt < 8; attempt++) {
    uint8_t rnd[8];
    int err = fl__random_bytes(rnd, sizeof rnd);
    if (err != FL_OK) {
      fl__free(NULL, tmp);
      return err;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.", 5);
    fl__hex(rnd, sizeof rnd, tmp + plen + 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (fd >= 0) {
      *tmp_out = tmp;
      *fd_out = fd;
      return FL_OK;
    }
    if (errno != EEXIST)
      break;
  }
  fl__free(NULL, tmp);
  return FL_E_IO;
}

static int fsync_dir(const char *path) {
  char *dir = dir_of(path);
  if (dir == NULL)
    return FL_E_NOMEM;
  int err = FL_E_IO;
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    if (fsync(fd) == 0)
      err = FL_OK;
    close(fd);
  }
  fl__free(NULL, dir);
  return err;
}

int fl__write_file_atomic(const char *path, const void *data, size_t len, unsigned mode) {
  char *tmp = NULL;
  int fd = -1;
  if (path == NULL || (data == NULL && len > 0))
    return FL_E_INVAL;
  int err = open_temp(path, mode, &tmp, &fd);
  if (err != FL_OK)
    return err;
  /* The umask may have narrowed the mode at creation; the caller asked for exactly this. */
  err = FL_E_IO;
  if (fchmod(fd, (mode_t)mode) != 0)
    goto out_unlink;
  if (write_all(fd, data, len) != FL_OK)
    goto out_unlink;
  /* Data must be on disk before the rename makes it visible, or a crash can leave an empty
   * file under the final name. */
  if (fsync(fd) != 0)
    goto out_unlink;
  if (close(fd) != 0) {
    fd = -1;
    goto out_unlink;
  }
  fd = -1;
  if (rename(tmp, path) != 0)
    goto out_unlink;
  fl__free(NULL, tmp);
  /* The rename itself is durable only once the directory is synced. */
  return fsync_dir(path);
out_unlink:
  if (fd >= 0)
    close(fd);
  unlink(tmp);
  fl__free(NULL, tmp);
  return err;
}
