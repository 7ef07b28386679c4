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
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <protobuf-c/protobuf-c.h>

#include "client_internal.h"
#include "codec.h"
#include "digest.h"

#define MODEL_FILE_MAX ((size_t)1 << 30)
/* Versions an fl_model_store keeps while no client holds them: the current base and a few
 * before it, for the clients of the process that have not fetched theirs yet. */
#define STORE_KEEP_UNUSED 4

/* ---- the shared store (fl_model_store) ------------------------------------------------------
 * Entries are immutable once in the list: their model (weights and spec, never run: no work
 * buffers are touched) and bytes are read by clients on any thread without the lock; the lock
 * guards the list, the reference counts and the use ticks. */

typedef struct fl__store_entry {
  struct fl__store_entry *next;
  fl_model_store *store;
  uint8_t sha256[FL_SHA256_LEN]; /* recomputed from the content when it was verified */
  uint64_t model_id, version, parent_version;
  uint8_t sig[FL_SIG_LEN];
  size_t sig_len;
  fl_model *model; /* allocated with the store's allocator */
  uint8_t *bytes;  /* the ModelVersion message, for a client's disk cache */
  size_t len;
  size_t refs;
  uint64_t used;
} fl__store_entry;

struct fl_model_store {
  fl_allocator alloc_copy;
  const fl_allocator *alloc;
  pthread_mutex_t mu;
  fl__store_entry *head;
  uint64_t tick;
};

fl_err fl_model_store_new(fl_model_store **out, const fl_allocator *allocator) {
  if (out == NULL)
    return FL_E_INVAL;
  fl_model_store *s = fl__calloc(allocator, 1, sizeof *s);
  if (s == NULL)
    return FL_E_NOMEM;
  if (allocator != NULL) {
    s->alloc_copy = *allocator;
    s->alloc = &s->alloc_copy;
  }
  if (pthread_mutex_init(&s->mu, NULL) != 0) {
    fl__free(allocator, s);
    return FL_E_NOMEM;
  }
  *out = s;
  return FL_OK;
}

static void entry_free(fl_model_store *s, fl__store_entry *e) {
  fl__model_free(e->model);
  fl__free(s->alloc, e->bytes);
  fl__free(s->alloc, e);
}

void fl_model_store_free(fl_model_store *s) {
  if (s == NULL)
    return;
  while (s->head != NULL) {
    fl__store_entry *e = s->head;
    s->head = e->next;
    entry_free(s, e);
  }
  pthread_mutex_destroy(&s->mu);
  fl_allocator copy = s->alloc_copy;
  fl__free(s->alloc != NULL ? &copy : NULL, s);
}

/* Frees the least recently used unreferenced entries beyond STORE_KEEP_UNUSED. Locked. */
static void store_evict(fl_model_store *s) {
  for (;;) {
    size_t unused = 0;
    fl__store_entry **victim = NULL;
    for (fl__store_entry **pp = &s->head; *pp != NULL; pp = &(*pp)->next) {
      if ((*pp)->refs > 0)
        continue;
      unused++;
      if (victim == NULL || (*pp)->used < (*victim)->used)
        victim = pp;
    }
    if (unused <= STORE_KEEP_UNUSED)
      return;
    fl__store_entry *e = *victim;
    *victim = e->next;
    entry_free(s, e);
  }
}

/* A referenced entry with that hash, or NULL. Locked inside. */
static fl__store_entry *store_get(fl_model_store *s, const uint8_t sha[FL_SHA256_LEN]) {
  pthread_mutex_lock(&s->mu);
  fl__store_entry *e = s->head;
  while (e != NULL && memcmp(e->sha256, sha, FL_SHA256_LEN) != 0)
    e = e->next;
  if (e != NULL) {
    e->refs++;
    e->used = ++s->tick;
  }
  pthread_mutex_unlock(&s->mu);
  return e;
}

static void store_release(fl__store_entry *e) {
  fl_model_store *s = e->store;
  pthread_mutex_lock(&s->mu);
  e->refs--;
  store_evict(s);
  pthread_mutex_unlock(&s->mu);
}

/* Points *m at a referenced entry (the caller's reference becomes m's). */
static void ref_entry(fl__loaded_model *m, fl__store_entry *e) {
  m->ref = e;
  m->model_id = e->model_id;
  m->version = e->version;
  m->parent_version = e->parent_version;
  memcpy(m->sha256, e->sha256, FL_SHA256_LEN);
  memcpy(m->sig, e->sig, e->sig_len);
  m->sig_len = e->sig_len;
}

/* The store's copy of a verified model; NULL when out of memory. */
static fl__store_entry *entry_new(fl_model_store *s, const fl__loaded_model *m, const uint8_t *buf,
                                  size_t len) {
  fl__store_entry *e = fl__calloc(s->alloc, 1, sizeof *e);
  if (e == NULL)
    return NULL;
  e->store = s;
  e->bytes = fl__malloc(s->alloc, len > 0 ? len : 1);
  if (e->bytes == NULL || fl__model_new(&e->model, fl__model_spec(m->model), s->alloc) != FL_OK) {
    fl__free(s->alloc, e->bytes);
    fl__free(s->alloc, e);
    return NULL;
  }
  memcpy(e->bytes, buf, len);
  e->len = len;
  memcpy(fl__model_params(e->model), fl__model_params_const(m->model),
         fl__model_num_params(m->model) * sizeof(float));
  memcpy(e->sha256, m->sha256, FL_SHA256_LEN);
  memcpy(e->sig, m->sig, m->sig_len);
  e->sig_len = m->sig_len;
  e->model_id = m->model_id;
  e->version = m->version;
  e->parent_version = m->parent_version;
  return e;
}

void fl__store_adopt(fl_client *c, fl__loaded_model *m, const uint8_t *buf, size_t len) {
  fl_model_store *s = c->store;
  if (s == NULL || m->model == NULL)
    return;
  fl__store_entry *e = store_get(s, m->sha256);
  if (e == NULL) {
    fl__store_entry *fresh = entry_new(s, m, buf, len);
    if (fresh == NULL)
      return; /* the client keeps its own copy */
    pthread_mutex_lock(&s->mu);
    /* Another thread may have added the same version meanwhile: one copy stays. */
    e = s->head;
    while (e != NULL && memcmp(e->sha256, m->sha256, FL_SHA256_LEN) != 0)
      e = e->next;
    if (e == NULL) {
      e = fresh;
      e->next = s->head;
      s->head = e;
      fresh = NULL;
    }
    e->refs++;
    e->used = ++s->tick;
    store_evict(s);
    pthread_mutex_unlock(&s->mu);
    if (fresh != NULL)
      entry_free(s, fresh);
  }
  fl__model_free(m->model);
  m->model = NULL;
  ref_entry(m, e);
}

/* The store's entry for sha, if the coordinator this client pinned signed it: the client
 * verifies what it uses, whoever added it. NULL otherwise (the caller goes to disk or the
 * network). */
static fl__store_entry *store_lookup(fl_client *c, const uint8_t sha[FL_SHA256_LEN]) {
  if (c->store == NULL || !c->have_coord_pub)
    return NULL;
  fl__store_entry *e = store_get(c->store, sha);
  if (e == NULL)
    return NULL;
  if (fl__verify_raw(c->coord_pub, e->sha256, FL_SHA256_LEN, e->sig, e->sig_len) != FL_OK) {
    fl__log(&c->log, FL_LOG_WARN, "shared model %llu v%llu is not signed by this coordinator",
            (unsigned long long)e->model_id, (unsigned long long)e->version);
    store_release(e);
    return NULL;
  }
  return e;
}

void fl__loaded_free(fl__loaded_model *m) {
  fl__model_free(m->model);
  if (m->ref != NULL)
    store_release(m->ref);
  memset(m, 0, sizeof *m);
}

const fl_model *fl__loaded_layout(const fl__loaded_model *m) {
  return m->model != NULL ? m->model : m->ref->model;
}

const float *fl__loaded_params(const fl__loaded_model *m) {
  return fl__model_params_const(fl__loaded_layout(m));
}

int fl__loaded_take_model(fl_client *c, fl__loaded_model *m, fl_model **out) {
  if (m->model != NULL) {
    *out = m->model;
    m->model = NULL;
    return FL_OK;
  }
  const fl_model *src = m->ref->model;
  fl_model *copy = NULL;
  int err = fl__model_new(&copy, fl__model_spec(src), c->alloc);
  if (err != FL_OK)
    return err;
  memcpy(fl__model_params(copy), fl__model_params_const(src),
         fl__model_num_params(src) * sizeof(float));
  *out = copy;
  return FL_OK;
}

static int build_and_digest(const Fl__V1__ModelVersion *mv, const fl_allocator *a, fl_model **out,
                            uint8_t digest[FL_SHA256_LEN], char *why, size_t why_len) {
  fl_model_spec spec;
  int err = fl__spec_from_proto(&spec, mv->spec);
  if (err != FL_OK) {
    snprintf(why, why_len, "model spec is invalid: %s", fl_strerror(err));
    return err;
  }
  /* The weights against the spec's layout before the model is built: a spec declaring 2^26
   * parameters beside a few weights would otherwise cost two 256 MiB blocks to refuse. */
  err = fl__delta_check(&spec, mv->weights, mv->n_weights);
  if (err != FL_OK) {
    snprintf(why, why_len, "model weights do not fit the spec: %s", fl_strerror(err));
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
  out->ref = NULL;
  out->sig_len = mv->signature.len <= FL_SIG_LEN ? mv->signature.len : FL_SIG_LEN;
  memcpy(out->sig, mv->signature.data, out->sig_len);
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

/* A version the store has but this client's disk cache lacks (it came from the store): its
 * own copy of the model, and the file written, so that it can become the inference model. */
static int load_from_store(fl_client *c, const uint8_t sha[FL_SHA256_LEN], const char *path,
                           fl__loaded_model *out) {
  fl__store_entry *e = store_lookup(c, sha);
  if (e == NULL)
    return FL_E_NOTFOUND;
  fl__loaded_model lm = {0};
  ref_entry(&lm, e);
  int err = fl__write_file_fast(path, e->bytes, e->len, 0600);
  fl_model *m = NULL;
  if (err == FL_OK)
    err = fl__loaded_take_model(c, &lm, &m);
  store_release(e); /* lm keeps copies of the entry's fields */
  lm.ref = NULL;
  if (err != FL_OK)
    return err;
  lm.model = m;
  *out = lm;
  return FL_OK;
}

static int load_file(fl_client *c, const uint8_t sha[FL_SHA256_LEN], fl__loaded_model *out,
                     bool adopt) {
  char path[FL__PATH_MAX];
  int err = cache_path(c, sha, path, sizeof path);
  if (err != FL_OK)
    return err;
  uint8_t *buf = NULL;
  size_t len = 0;
  err = fl__read_file(c->alloc, path, MODEL_FILE_MAX, &buf, &len);
  if (err == FL_E_NOTFOUND && !adopt)
    return load_from_store(c, sha, path, out);
  if (err != FL_OK)
    return err;
  char why[FL__ERRMSG_MAX];
  if (!c->have_coord_pub) {
    err = FL_E_NOT_ENROLLED;
    snprintf(why, sizeof why, "no coordinator key to verify it");
  } else {
    err = fl__model_verify(buf, len, c->coord_pub, sha, c->alloc, out, why, sizeof why);
  }
  if (err == FL_OK && adopt)
    fl__store_adopt(c, out, buf, len);
  fl__free(c->alloc, buf);
  if (err != FL_OK && err != FL_E_NOMEM)
    fl__client_err(c, "cached %s refused: %s", path, why);
  /* Torn or damaged: it goes, or the write-once store would never replace it. */
  if (err != FL_OK && err != FL_E_NOMEM && err != FL_E_NOT_ENROLLED && unlink(path) == 0)
    fl__log(&c->log, FL_LOG_WARN, "removed cached model %s, which does not verify", path);
  return err;
}

int fl__cache_load(fl_client *c, const uint8_t sha[FL_SHA256_LEN], fl__loaded_model *out) {
  return load_file(c, sha, out, false);
}

int fl__cache_load_base(fl_client *c, const uint8_t sha[FL_SHA256_LEN], fl__loaded_model *out) {
  fl__store_entry *e = store_lookup(c, sha);
  if (e != NULL) {
    *out = (fl__loaded_model){0};
    ref_entry(out, e);
    return FL_OK;
  }
  return load_file(c, sha, out, true);
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
