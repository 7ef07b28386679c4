/*
 * Canonical digests of requests, updates, model versions and training tasks (docs/SIGNING.md).
 *
 * Nothing here depends on protobuf's serialisation: two encoders may order or pack fields
 * differently, so signatures are over these fixed layouts, rebuilt by the receiver from the
 * parsed fields.
 */
#include "digest.h"

#include <string.h>

#include "fl/err.h"

static const char tag_request[] = "fl.v1.request"; /* hashed with its NUL */
static const char tag_update[] = "fl.v1.update";
static const char tag_upload[] = "fl.v1.upload";
static const char tag_model[] = "fl.v1.model";
static const char tag_task[] = "fl.v1.task";
static const char tag_sa_keys[] = "fl.v1.secagg.keys";

/* Floats as their bit patterns: two NaNs are different messages. */
static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

/* A protobuf float field (loss, norm, scale, the task's hyperparameters): proto3 omits a field
 * equal to zero, and -0.0 is equal to zero, so a receiver parses 0.0 where the sender had -0.0.
 * Hashing -0.0 as 0.0 on both sides keeps such a message verifiable (docs/SIGNING.md). Parameters
 * travel as bytes and keep their bits. */
static uint32_t f32_field(float f) {
  return f == 0.0f ? 0 : f32_bits(f);
}

int fl__request_digest(const char *method, const char *path, uint64_t device_id,
                       int64_t timestamp_ms, const uint8_t *nonce, size_t nonce_len,
                       const uint8_t *body, size_t body_len, uint8_t out[FL_SHA256_LEN]) {
  if (method == NULL || path == NULL || (nonce == NULL && nonce_len > 0) ||
      (body == NULL && body_len > 0))
    return FL_E_INVAL;
  fl_sha256 h;
  int err = fl__sha256_begin(&h);
  if (err != FL_OK)
    return err;
  fl__sha256_update(&h, tag_request, sizeof tag_request);
  fl__sha256_bytes(&h, method, strlen(method));
  fl__sha256_bytes(&h, path, strlen(path));
  fl__sha256_u64(&h, device_id);
  fl__sha256_u64(&h, (uint64_t)timestamp_ms);
  fl__sha256_bytes(&h, nonce, nonce_len);
  fl__sha256_bytes(&h, body, body_len);
  return fl__sha256_end(&h, out);
}

static void hash_tensor(fl_sha256 *h, const Fl__V1__Tensor *t) {
  fl__sha256_u32(h, (uint32_t)t->encoding);
  fl__sha256_u64(h, t->count);
  fl__sha256_u32(h, (uint32_t)t->n_shape);
  for (size_t i = 0; i < t->n_shape; i++)
    fl__sha256_u32(h, t->shape[i]);
  fl__sha256_u32(h, f32_field(t->scale));
  fl__sha256_bytes(h, t->data.data, t->data.len);
  fl__sha256_bytes(h, t->indices.data, t->indices.len);
}

/* Doubles of DriftStats as their bits, -0.0 as 0.0 like f32_field (proto3 drops a scalar
 * double equal to zero). */
static uint64_t f64_field(double d) {
  uint64_t u = 0;
  if (d != 0.0)
    memcpy(&u, &d, sizeof u);
  return u;
}

/* UpdateUpload.train_stats (SIGNING.md): led by u32(10), its field number, which clip_state
 * (1 or 2) never is. */
static void hash_drift_stats(fl_sha256 *h, const Fl__V1__DriftStats *d) {
  fl__sha256_u32(h, 10);
  fl__sha256_u64(h, d->model_id);
  fl__sha256_u64(h, d->version);
  fl__sha256_u64(h, d->count);
  fl__sha256_u64(h, (uint64_t)d->n_mean);
  for (size_t i = 0; i < d->n_mean; i++)
    fl__sha256_u64(h, f64_field(d->mean[i]));
  fl__sha256_u64(h, (uint64_t)d->n_m2);
  for (size_t i = 0; i < d->n_m2; i++)
    fl__sha256_u64(h, f64_field(d->m2[i]));
  fl__sha256_u64(h, (uint64_t)d->n_score_hist);
  for (size_t i = 0; i < d->n_score_hist; i++)
    fl__sha256_u64(h, d->score_hist[i]);
  fl__sha256_u64(h, f64_field(d->score_lo));
  fl__sha256_u64(h, f64_field(d->score_hi));
  fl__sha256_u64(h, d->anomalies);
}

int fl__update_content_digest(uint64_t device_id, const Fl__V1__UpdateUpload *u,
                              uint8_t out[FL_SHA256_LEN]) {
  if (u == NULL || (u->n_delta > 0 && u->delta == NULL))
    return FL_E_INVAL;
  for (size_t i = 0; i < u->n_delta; i++)
    if (u->delta[i] == NULL || u->delta[i]->n_shape > UINT32_MAX)
      return FL_E_INVAL;
  fl_sha256 h;
  int err = fl__sha256_begin(&h);
  if (err != FL_OK)
    return err;
  fl__sha256_update(&h, tag_update, sizeof tag_update);
  fl__sha256_u64(&h, device_id);
  fl__sha256_u64(&h, u->round_id);
  fl__sha256_u64(&h, u->model_id);
  fl__sha256_u64(&h, u->base_version);
  fl__sha256_u64(&h, u->sample_count);
  fl__sha256_u32(&h, f32_field(u->loss));
  fl__sha256_u32(&h, f32_field(u->norm));
  fl__sha256_u64(&h, (uint64_t)u->n_delta);
  for (size_t i = 0; i < u->n_delta; i++)
    hash_tensor(&h, u->delta[i]);
  /* Hashed only when set, so the digests of uploads without it are those of before. */
  if (u->clip_state != FL__V1__CLIP_STATE__CLIP_STATE_UNSPECIFIED)
    fl__sha256_u32(&h, (uint32_t)u->clip_state);
  if (u->train_stats != NULL)
    hash_drift_stats(&h, u->train_stats);
  if (u->secagg_masked.len > 0)
    fl__sha256_bytes(&h, u->secagg_masked.data, u->secagg_masked.len);
  return fl__sha256_end(&h, out);
}

int fl__upload_digest(const uint8_t content[FL_SHA256_LEN], int64_t timestamp_ms,
                      const uint8_t *nonce, size_t nonce_len, uint8_t out[FL_SHA256_LEN]) {
  if (content == NULL || (nonce == NULL && nonce_len > 0))
    return FL_E_INVAL;
  fl_sha256 h;
  int err = fl__sha256_begin(&h);
  if (err != FL_OK)
    return err;
  fl__sha256_update(&h, tag_upload, sizeof tag_upload);
  fl__sha256_update(&h, content, FL_SHA256_LEN);
  fl__sha256_u64(&h, (uint64_t)timestamp_ms);
  fl__sha256_bytes(&h, nonce, nonce_len);
  return fl__sha256_end(&h, out);
}

int fl__update_digest(uint64_t device_id, int64_t timestamp_ms, const uint8_t *nonce,
                      size_t nonce_len, const Fl__V1__UpdateUpload *u,
                      uint8_t content[FL_SHA256_LEN], uint8_t out[FL_SHA256_LEN]) {
  uint8_t c[FL_SHA256_LEN];
  if (nonce == NULL && nonce_len > 0)
    return FL_E_INVAL;
  int err = fl__update_content_digest(device_id, u, c);
  if (err != FL_OK)
    return err;
  if (content != NULL)
    memcpy(content, c, sizeof c);
  return fl__upload_digest(c, timestamp_ms, nonce, nonce_len, out);
}

int fl__task_digest(uint64_t device_id, const Fl__V1__TrainTask *t, uint8_t out[FL_SHA256_LEN]) {
  if (t == NULL || (t->base_sha256.data == NULL && t->base_sha256.len > 0))
    return FL_E_INVAL;
  static const Fl__V1__Hyperparameters none = FL__V1__HYPERPARAMETERS__INIT;
  const Fl__V1__Hyperparameters *h = t->hyperparameters != NULL ? t->hyperparameters : &none;
  fl_sha256 s;
  int err = fl__sha256_begin(&s);
  if (err != FL_OK)
    return err;
  fl__sha256_update(&s, tag_task, sizeof tag_task);
  fl__sha256_u64(&s, device_id);
  fl__sha256_u64(&s, t->round_id);
  fl__sha256_u64(&s, t->model_id);
  fl__sha256_u64(&s, t->base_version);
  fl__sha256_bytes(&s, t->base_sha256.data, t->base_sha256.len);
  fl__sha256_u32(&s, h->local_epochs);
  fl__sha256_u32(&s, h->batch_size);
  fl__sha256_u32(&s, f32_field(h->learning_rate));
  fl__sha256_u32(&s, f32_field(h->momentum));
  fl__sha256_u32(&s, f32_field(h->weight_decay));
  fl__sha256_u32(&s, f32_field(h->prox_mu));
  fl__sha256_u32(&s, f32_field(t->clip_norm));
  fl__sha256_u32(&s, f32_field(t->noise_stddev));
  fl__sha256_u32(&s, (uint32_t)t->encoding);
  fl__sha256_u32(&s, f32_field(t->topk_fraction));
  fl__sha256_u64(&s, (uint64_t)t->deadline_ms);
  fl__sha256_u64(&s, t->seed);
  /* Hashed only when set: the digests of plain tasks are those of before. */
  if (t->secure_aggregation != NULL) {
    fl__sha256_u32(&s, t->secure_aggregation->threshold);
    fl__sha256_u32(&s, t->secure_aggregation->neighbors);
  }
  return fl__sha256_end(&s, out);
}

int fl__secagg_keys_digest(uint64_t device_id, uint64_t round_id, const uint8_t *c_pk, size_t c_len,
                           const uint8_t *s_pk, size_t s_len, uint8_t out[FL_SHA256_LEN]) {
  if ((c_pk == NULL && c_len > 0) || (s_pk == NULL && s_len > 0))
    return FL_E_INVAL;
  fl_sha256 h;
  int err = fl__sha256_begin(&h);
  if (err != FL_OK)
    return err;
  fl__sha256_update(&h, tag_sa_keys, sizeof tag_sa_keys);
  fl__sha256_u64(&h, device_id);
  fl__sha256_u64(&h, round_id);
  fl__sha256_bytes(&h, c_pk, c_len);
  fl__sha256_bytes(&h, s_pk, s_len);
  return fl__sha256_end(&h, out);
}

static void hash_spec(fl_sha256 *h, const fl_model_spec *spec) {
  fl__sha256_u32(h, spec->input_ndim);
  for (uint32_t i = 0; i < spec->input_ndim; i++)
    fl__sha256_u32(h, spec->input_shape[i]);
  fl__sha256_u32(h, spec->n_layers);
  for (uint32_t i = 0; i < spec->n_layers; i++) {
    const fl_layer_spec *l = &spec->layers[i];
    fl__sha256_u32(h, (uint32_t)l->type);
    fl__sha256_u32(h, l->units);
    fl__sha256_u32(h, l->out_channels);
    fl__sha256_u32(h, l->kernel);
    fl__sha256_u32(h, l->stride);
    fl__sha256_u32(h, l->padding);
  }
  fl__sha256_u32(h, (uint32_t)spec->loss);
}

/* Parameters go through a little-endian staging buffer, so the digest is the same on a
 * big-endian device; the copy is cheap next to SHA-256 itself. */
static void hash_params(fl_sha256 *h, const float *params, size_t n) {
  uint8_t buf[4096];
  fl__sha256_u64(h, (uint64_t)n);
  while (n > 0) {
    size_t chunk = n < sizeof buf / 4 ? n : sizeof buf / 4;
    for (size_t i = 0; i < chunk; i++) {
      uint32_t u = f32_bits(params[i]);
      buf[4 * i] = (uint8_t)u;
      buf[4 * i + 1] = (uint8_t)(u >> 8);
      buf[4 * i + 2] = (uint8_t)(u >> 16);
      buf[4 * i + 3] = (uint8_t)(u >> 24);
    }
    fl__sha256_update(h, buf, 4 * chunk);
    params += chunk;
    n -= chunk;
  }
}

int fl__model_digest(uint64_t model_id, uint64_t version, uint64_t parent_version,
                     const fl_model_spec *spec, const float *params, size_t n_params,
                     uint8_t out[FL_SHA256_LEN]) {
  if (spec == NULL || (params == NULL && n_params > 0) || spec->input_ndim > 3 ||
      spec->n_layers > FL_MAX_LAYERS)
    return FL_E_INVAL;
  fl_sha256 h;
  int err = fl__sha256_begin(&h);
  if (err != FL_OK)
    return err;
  fl__sha256_update(&h, tag_model, sizeof tag_model);
  fl__sha256_u64(&h, model_id);
  fl__sha256_u64(&h, version);
  fl__sha256_u64(&h, parent_version);
  hash_spec(&h, spec);
  hash_params(&h, params, n_params);
  return fl__sha256_end(&h, out);
}
