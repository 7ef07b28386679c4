/*
 * Canonical digests: the exact bytes that are hashed (SHA-256) and whose 32-byte digest is
 * signed (Ed25519). Specified byte for byte in docs/SIGNING.md.
 *
 * Every digest starts with a NUL-terminated domain-separation tag, then fixed-width
 * little-endian integers (u32/u64; i64 as its two's-complement u64; floats as their IEEE
 * bits in a u32) and length-prefixed byte strings (u64 length, then the bytes), in the order
 * below, so that two different messages never hash the same bytes.
 * All return FL_OK, FL_E_INVAL (NULL where bytes are required, a spec beyond its bounds) or
 * FL_E_NOMEM/FL_E_CRYPTO from the hash context.
 */
#ifndef FL__DIGEST_H
#define FL__DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "model.h"

/* "fl.v1.request\0" | method | path | device_id u64 | timestamp_ms i64 | nonce | body
 * (method, path, nonce and body length-prefixed; path without the query string is the
 * caller's choice, the digest hashes what it is given). */
int fl__request_digest(const char *method, const char *path, uint64_t device_id,
                       int64_t timestamp_ms, const uint8_t *nonce, size_t nonce_len,
                       const uint8_t *body, size_t body_len, uint8_t out[FL_SHA256_LEN]);

/* Content digest of an update: "fl.v1.update\0" | device_id | round_id | model_id |
 * base_version | sample_count (u64 each) | loss (f32 bits) | norm (f32 bits) | n_tensors u64 |
 * per tensor: encoding u32, count u64, ndim u32, shape u32..., scale (f32 bits), data, indices
 * [| clip_state u32 when set] [| secagg_masked (length-prefixed) when not empty]
 * (loss, norm and scale: -0.0 hashed as 0.0, as protobuf delivers it)
 * (length-prefixed). The signature field of u is not part of it. It names the update itself,
 * whatever request carried it: the coordinator stores it for idempotence (a retry is sent
 * with a fresh nonce and timestamp and must still be recognised as the same update). */
int fl__update_content_digest(uint64_t device_id, const Fl__V1__UpdateUpload *u,
                              uint8_t out[FL_SHA256_LEN]);

/* Signed upload digest, from a content digest: "fl.v1.upload\0" | content (32 raw bytes) |
 * timestamp_ms i64 | nonce (length-prefixed). Ed25519 over it is UpdateUpload.signature, the
 * only signature of an upload: it authenticates the device, the update and the freshness of
 * the request (docs/SIGNING.md). 32 + 40 + nonce bytes: re-signing a retry costs no pass over
 * the delta. */
int fl__upload_digest(const uint8_t content[FL_SHA256_LEN], int64_t timestamp_ms,
                      const uint8_t *nonce, size_t nonce_len, uint8_t out[FL_SHA256_LEN]);

/* Both of the above with one pass over the delta: out is the signed upload digest, content
 * (may be NULL) receives the content digest. */
int fl__update_digest(uint64_t device_id, int64_t timestamp_ms, const uint8_t *nonce,
                      size_t nonce_len, const Fl__V1__UpdateUpload *u,
                      uint8_t content[FL_SHA256_LEN], uint8_t out[FL_SHA256_LEN]);

/* Task digest, signed by the coordinator into TrainTask.signature: "fl.v1.task\0" | device_id |
 * round_id | model_id | base_version (u64 each) | base_sha256 (length-prefixed) |
 * local_epochs, batch_size (u32) | learning_rate, momentum, weight_decay, prox_mu (f32 bits;
 * all six zero when hyperparameters is absent) | clip_norm, noise_stddev (f32) | encoding u32 |
 * topk_fraction f32 | deadline_ms i64 | seed u64 [| threshold u32 | neighbors u32, only when
 * secure_aggregation is set]. Floats: -0.0 hashed as 0.0. device_id is the
 * device the task was assigned to (a task copied to another device does not verify). The
 * signature field is not part of it. */
int fl__task_digest(uint64_t device_id, const Fl__V1__TrainTask *t, uint8_t out[FL_SHA256_LEN]);

/* Secure aggregation's key advertisement (docs/SECAGG.md), signed by the device and relayed to
 * its neighbours: "fl.v1.secagg.keys\0" | device_id u64 | round_id u64 | c_pk | s_pk
 * (length-prefixed). */
int fl__secagg_keys_digest(uint64_t device_id, uint64_t round_id, const uint8_t *c_pk, size_t c_len,
                           const uint8_t *s_pk, size_t s_len, uint8_t out[FL_SHA256_LEN]);

/* "fl.v1.model\0" | model_id | version | parent_version (u64 each) | spec: input_ndim u32,
 * input_shape u32 x input_ndim, n_layers u32, per layer: type, units, out_channels, kernel,
 * stride, padding (u32 each, as stored, unused ones included), loss u32 | n_params u64 |
 * params as float32 LE */
int fl__model_digest(uint64_t model_id, uint64_t version, uint64_t parent_version,
                     const fl_model_spec *spec, const float *params, size_t n_params,
                     uint8_t out[FL_SHA256_LEN]);

#endif
