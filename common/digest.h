/*
 * Canonical digests: the exact bytes that are signed. Specified in docs/API.md ("Signing").
 * Every field is hashed as fixed-width little-endian integers or length-prefixed bytes after a
 * domain-separation tag, so two different messages never hash the same bytes.
 */
#ifndef FL__DIGEST_H
#define FL__DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "model.h"

/* "fl.v1.request\0" | method | path | device_id u64 | timestamp_ms i64 | nonce | body */
int fl__request_digest(const char *method, const char *path, uint64_t device_id,
                       int64_t timestamp_ms, const uint8_t *nonce, size_t nonce_len,
                       const uint8_t *body, size_t body_len, uint8_t out[FL_SHA256_LEN]);

/* "fl.v1.update\0" | device_id | round_id | model_id | base_version | sample_count |
 * loss (f32 bits) | norm (f32 bits) | n_tensors | per tensor: encoding u32, count u64,
 * ndim u32, shape u32..., scale (f32 bits), data, indices */
int fl__update_digest(uint64_t device_id, const Fl__V1__UpdateUpload *u,
                      uint8_t out[FL_SHA256_LEN]);

/* "fl.v1.model\0" | model_id | version | parent_version | spec (canonical, fields as u32) |
 * n_params u64 | params as float32 LE */
int fl__model_digest(uint64_t model_id, uint64_t version, uint64_t parent_version,
                     const fl_model_spec *spec, const float *params, size_t n_params,
                     uint8_t out[FL_SHA256_LEN]);

#endif
