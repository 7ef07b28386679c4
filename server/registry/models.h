/*
 * Models and versions (models.c): a cache of model layouts (specs never change once
 * created), the JSON form of a spec, and version storage. A version's weights are an
 * immutable float32 little-endian bytea with the model digest and the coordinator's
 * Ed25519 signature over that digest.
 */
#ifndef FL__MODELS_H
#define FL__MODELS_H

#include <jansson.h>

#include "model.h"
#include "server.h"
#include "store/store_pg.h"

typedef struct fl_model_info {
  uint64_t model_id;
  fl_model_spec spec;
  size_t n_params, n_tensors;
  fl_tensor_info *tensors;
} fl_model_info;

int fl__models_new(fl_models **out);
void fl__models_free(fl_models *m);

/* The cached layout of a model, loaded on first use; valid until fl__models_free.
 * FL_OK, FL_E_NOTFOUND or FL_E_DB. */
int fl__models_get(fl_srv *s, PGconn *c, uint64_t model_id, const fl_model_info **out);

/* {"input_shape":[..], "layers":[{"type":"dense","units":N},..], "loss":"softmax_ce"|"mse"};
 * validated with fl__spec_validate. -1 with a message on error. */
int fl__spec_from_json(fl_model_spec *spec, const json_t *j, char msg[160]);

/* Creates a model and its version 1 (seeded initialisation) inside the caller's
 * transaction. *model_id receives the id. FL_E_STATE when the name exists. */
int fl__model_create(fl_srv *s, PGconn *c, const char *name, const json_t *spec_json,
                     const fl_model_spec *spec, uint64_t seed, uint64_t *model_id);

/* Inserts a version (digest computed and signed here). metrics may be NULL. */
int fl__version_insert(fl_srv *s, PGconn *c, const fl_model_info *mi, uint64_t version,
                       uint64_t parent, uint64_t round_id, const float *w, json_t *metrics,
                       uint8_t sha_out[FL_SHA256_LEN]);

/* Weights of a version into a new malloc'ed array of mi->n_params floats.
 * FL_OK, FL_E_NOTFOUND, FL_E_DB, FL_E_NOMEM. */
int fl__version_weights(PGconn *c, const fl_model_info *mi, uint64_t version, float **w);

/* The sha256 of a version. FL_OK, FL_E_NOTFOUND, FL_E_DB. */
int fl__version_sha(PGconn *c, uint64_t model_id, uint64_t version, uint8_t sha[FL_SHA256_LEN]);

/* A packed fl.v1.ModelVersion, shared: versions are immutable, so one buffer serves every
 * download of a version (the zero-copy download, devapi.c). */
typedef struct fl_packed fl_packed;

/* The packed version with a reference for the caller, from the cache (no database access) or
 * loaded, packed and cached. Release it with fl__packed_release (which takes a void * so that
 * it can be a response's free callback). FL_OK, FL_E_NOTFOUND, FL_E_DB, FL_E_NOMEM. */
int fl__version_acquire(fl_srv *s, PGconn *c, uint64_t model_id, uint64_t version, fl_packed **out);
void fl__packed_release(void *pk); /* NULL: no-op */
/* Its bytes (valid while the reference is held), their length and the version's sha256 (when
 * sha is not NULL). */
const uint8_t *fl__packed_data(const fl_packed *p, size_t *len, uint8_t sha[FL_SHA256_LEN]);

/* fl__version_sha, answered from the packed cache when the version is there. */
int fl__version_sha_cached(fl_srv *s, PGconn *c, uint64_t model_id, uint64_t version,
                           uint8_t sha[FL_SHA256_LEN]);

#endif
