/*
 * Model versions: verification and the on-disk cache by content hash.
 *
 * A model is used (trained on, predicted with, cached) only after three checks: the
 * coordinator's Ed25519 signature over the digest in the message, the digest recomputed from
 * the spec and the weights, and the digest the check-in asked for. Cached files are verified
 * again when loaded, so a file damaged on disk is refused like a tampered download.
 *
 * Files are named by the version's sha256 and written once, without fsync (state.c says why
 * that is safe): a file that exists holds that version or is refused at load and removed.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <protobuf-c/protobuf-c.h>

#include "client_internal.h"
#include "codec.h"
#include "digest.h"

#define MODEL_FILE_MAX ((size_t)1 << 30)

void fl__loaded_free(fl__loaded_model *m) {
  fl__model_free(m->model);
  memset(m, 0, sizeof *m);
}

static int build_and_digest(const Fl__V1__ModelVersion *mv, const fl_allocator *a, fl_model **out,
                            uint8_t digest[FL_SHA256_LEN], char *why, size_t why_len) {
  fl_model_spec spec;
  int err = fl__spec_from_proto(&spec, mv->spec);
  if (err != FL_OK) {
    snprintf(why, why_len, "model spec is invalid: %s", fl_strerror(err));
    return err;
  }
  fl_model *m = NULL;
  err = fl__model_new(&m, &spec, a);
  if (err != FL_OK) {
    snprintf(why, why_len, "cannot build the model: %s", fl_strerror(err));
    return err;
  }
  err = fl__weights_from_proto(m, mv->weights, mv->n_weights);
  if (err != FL_OK) {
    snprintf(why, why_len, "model weights do not fit the spec: %s", fl_strerror(err));
    goto out_free;
  }
  err = fl__model_digest(mv->model_id, mv->version, mv->parent_version, &spec,
                         fl__model_params_const(m), fl__model_num_params(m), digest);
  if (err != FL_OK) {
    snprintf(why, why_len, "cannot compute the model digest: %s", fl_strerror(err));
    goto out_free;
  }
  *out = m;
  return FL_OK;
out_free:
  fl__model_free(m);
  return err;
}

int fl__model_verify(const uint8_t *buf, size_t len, const uint8_t coord_pub[FL_PUBKEY_LEN],
                     const uint8_t *expect_sha, const fl_allocator *a, fl__loaded_model *out,
                     char *why, size_t why_len) {
  ProtobufCAllocator pa;
  fl_pb_budget pbb;
  fl__protobuf_budget(&pa, &pbb, a, len);
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(&pa, len, buf);
  if (mv == NULL) {
    /* protobuf-c does not tell malformed input from a failed allocation. */
    snprintf(why, why_len, "model version does not parse (or out of memory)");
    return FL_E_PARSE;
  }
  int err = FL_E_BADHASH;
  if (mv->sha256.len != FL_SHA256_LEN) {
    snprintf(why, why_len, "model version has no sha256");
    goto out_free;
  }
  /* The signature first: it is cheap and refuses anything the coordinator did not sign. */
  err = fl__verify_raw(coord_pub, mv->sha256.data, FL_SHA256_LEN, mv->signature.data,
                       mv->signature.len);
  if (err != FL_OK) {
    snprintf(why, why_len, "model %llu v%llu: coordinator signature does not verify",
             (unsigned long long)mv->model_id, (unsigned long long)mv->version);
    err = FL_E_BADSIG;
    goto out_free;
  }
  err = FL_E_BADHASH;
  if (expect_sha != NULL && memcmp(expect_sha, mv->sha256.data, FL_SHA256_LEN) != 0) {
    snprintf(why, why_len, "model %llu v%llu is not the version asked for (sha256 differs)",
             (unsigned long long)mv->model_id, (unsigned long long)mv->version);
    goto out_free;
  }
  fl_model *m = NULL;
  uint8_t digest[FL_SHA256_LEN];
  err = build_and_digest(mv, a, &m, digest, why, why_len);
  if (err != FL_OK)
    goto out_free;
  if (memcmp(digest, mv->sha256.data, FL_SHA256_LEN) != 0) {
    snprintf(why, why_len, "model %llu v%llu: content does not match its sha256",
             (unsigned long long)mv->model_id, (unsigned long long)mv->version);
    fl__model_free(m);
    err = FL_E_BADHASH;
    goto out_free;
  }
  out->model = m;
  out->model_id = mv->model_id;
  out->version = mv->version;
  out->parent_version = mv->parent_version;
  memcpy(out->sha256, digest, FL_SHA256_LEN);
  err = FL_OK;
out_free:
  fl__v1__model_version__free_unpacked(mv, &pa);
  return err;
}

static int cache_path(const fl_client *c, const uint8_t sha[FL_SHA256_LEN], char *path,
                      size_t len) {
  char hex[2 * FL_SHA256_LEN + 1];
  fl__hex(sha, FL_SHA256_LEN, hex);
  return fl__state_path(c, path, len, "models/%s.pb", hex);
}

int fl__cache_load(fl_client *c, const uint8_t sha[FL_SHA256_LEN], fl__loaded_model *out) {
  char path[FL__PATH_MAX];
  int err = cache_path(c, sha, path, sizeof path);
  if (err != FL_OK)
    return err;
  uint8_t *buf = NULL;
  size_t len = 0;
  err = fl__read_file(c->alloc, path, MODEL_FILE_MAX, &buf, &len);
  if (err != FL_OK)
    return err;
  char why[FL__ERRMSG_MAX];
  if (!c->have_coord_pub) {
    err = FL_E_NOT_ENROLLED;
    snprintf(why, sizeof why, "no coordinator key to verify it");
  } else {
    err = fl__model_verify(buf, len, c->coord_pub, sha, c->alloc, out, why, sizeof why);
  }
  fl__free(c->alloc, buf);
  if (err != FL_OK && err != FL_E_NOMEM)
    fl__client_err(c, "cached %s refused: %s", path, why);
  /* Torn or damaged: it goes, or the write-once store would never replace it. */
  if (err != FL_OK && err != FL_E_NOMEM && err != FL_E_NOT_ENROLLED && unlink(path) == 0)
    fl__log(&c->log, FL_LOG_WARN, "removed cached model %s, which does not verify", path);
  return err;
}

int fl__cache_store(fl_client *c, const uint8_t sha[FL_SHA256_LEN], const uint8_t *buf,
                    size_t len) {
  char path[FL__PATH_MAX];
  int err = cache_path(c, sha, path, sizeof path);
  if (err != FL_OK)
    return err;
  if (access(path, F_OK) == 0)
    return FL_OK;
  err = fl__write_file_fast(path, buf, len, 0600);
  if (err != FL_OK)
    fl__client_err(c, "cannot write %s: %s", path, fl_strerror(err));
  return err;
}

int fl__cache_sync(fl_client *c, const uint8_t sha[FL_SHA256_LEN]) {
  char path[FL__PATH_MAX];
  int err = cache_path(c, sha, path, sizeof path);
  if (err == FL_OK)
    err = fl__file_sync(path);
  if (err != FL_OK)
    fl__client_err(c, "cannot sync %s: %s", path, fl_strerror(err));
  return err;
}

static bool keep_hex(const fl_client *c, const char *name) {
  const uint8_t *keep[3];
  size_t n = 0;
  if (c->active.model != NULL)
    keep[n++] = c->active.sha256;
  if (c->has_previous)
    keep[n++] = c->previous_sha;
  /* The base of the round in progress may be cached before it is loaded. */
  if (c->have_task)
    keep[n++] = c->task.base_sha256;
  for (size_t i = 0; i < n; i++) {
    char hex[2 * FL_SHA256_LEN + 1];
    fl__hex(keep[i], FL_SHA256_LEN, hex);
    if (strncmp(name, hex, 2 * FL_SHA256_LEN) == 0)
      return true;
  }
  return false;
}

/* Only files named <64 hex>.pb are ours to remove. */
static bool is_cache_name(const char *name) {
  size_t n = strlen(name);
  if (n != 2 * FL_SHA256_LEN + 3 || strcmp(name + 2 * FL_SHA256_LEN, ".pb") != 0)
    return false;
  return strspn(name, "0123456789abcdef") == 2 * FL_SHA256_LEN;
}

void fl__cache_prune(fl_client *c) {
  char path[FL__PATH_MAX];
  if (fl__state_path(c, path, sizeof path, "models") != FL_OK)
    return;
  DIR *d = opendir(path);
  if (d == NULL)
    return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!is_cache_name(e->d_name) || keep_hex(c, e->d_name))
      continue;
    if (unlinkat(dirfd(d), e->d_name, 0) == 0)
      fl__log(&c->log, FL_LOG_DEBUG, "removed cached model %s", e->d_name);
  }
  closedir(d);
}
