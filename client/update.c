/*
 * The update a device uploads: delta = w_local - w_base, clipped to the task's L2 bound,
 * optionally perturbed with Gaussian noise (drawn from the CSPRNG: privacy noise must not be
 * predictable), encoded tensor by tensor as the task asks, and signed over the canonical update
 * digest. The signature covers the update itself, not the request, so a retried upload is
 * byte-identical inside its fresh envelope and the coordinator can acknowledge it idempotently.
 */
#include <math.h>
#include <string.h>

#include "clip.h"
#include "client_internal.h"
#include "codec.h"
#include "digest.h"
#include "rng.h"
#include "tensor.h"

#define ENCODE_ATTEMPTS 4

static double sent_norm(Fl__V1__Tensor *const *t, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += fl__tensor_sqnorm(t[i]);
  return sqrt(s);
}

/* Encodes the delta; when quantisation rounded the norm above the clip bound (float16 and int8
 * can), shrinks the delta a little and encodes again, so that what is sent respects the bound
 * the coordinator checks. */
static int encode_within_bound(const fl_model *layout, float *delta, size_t n,
                               const fl__update_params *p, const fl_allocator *a,
                               Fl__V1__Tensor ***out, size_t *out_n, double *norm) {
  bool bounded = p->clip_norm > 0 && p->noise_stddev <= 0;
  for (int i = 0;; i++) {
    Fl__V1__Tensor **t = NULL;
    size_t nt = 0;
    int err = fl__delta_encode(layout, delta, p->encoding, p->topk_fraction, &t, &nt, a);
    if (err != FL_OK)
      return err;
    double s = sent_norm(t, nt);
    if (!bounded || s <= p->clip_norm || i + 1 == ENCODE_ATTEMPTS) {
      *out = t;
      *out_n = nt;
      *norm = s;
      return FL_OK;
    }
    fl__delta_release(t, nt, a);
    fl__scal(n, (float)(p->clip_norm / s * (1.0 - 1e-4)), delta);
  }
}

/* Field 8 (signature, length-delimited) with a 64-byte value: key byte (8 << 3 | 2), length. */
#define SIG_FIELD_KEY 0x42
#define SIG_FIELD_HEAD 2
_Static_assert(FL__UPLOAD_TAIL == SIG_FIELD_HEAD + FL_SIG_LEN, "room for the signature field");

/* Packs u without a signature, once, into the buffer it is sent from (room for the envelope's
 * head before it, for the signature field after it), and keeps its content digest: the
 * signature covers the timestamp and nonce of each attempt, so it is made per attempt by
 * fl__update_sign_in_place, which then needs no second pass over the delta. */
static int pack_unsigned(Fl__V1__UpdateUpload *u, uint64_t device_id, const fl_allocator *a,
                         fl__upload_buf *out, uint8_t content[FL_SHA256_LEN]) {
  int err = fl__update_content_digest(device_id, u, content);
  if (err != FL_OK)
    return err;
  size_t len = fl__v1__update_upload__get_packed_size(u);
  uint8_t *buf = fl__malloc(a, FL__UPLOAD_HEAD + len + FL__UPLOAD_TAIL);
  if (buf == NULL)
    return FL_E_NOMEM;
  fl__v1__update_upload__pack(u, buf + FL__UPLOAD_HEAD);
  out->alloc = buf;
  out->body = buf + FL__UPLOAD_HEAD;
  out->len = len;
  return FL_OK;
}

int fl__update_sign_in_place(const uint8_t content[FL_SHA256_LEN], int64_t timestamp_ms,
                             const uint8_t *nonce, size_t nonce_len, const fl_key *key,
                             uint8_t *tail) {
  uint8_t digest[FL_SHA256_LEN];
  int err = fl__upload_digest(content, timestamp_ms, nonce, nonce_len, digest);
  if (err != FL_OK)
    return err;
  /* A protobuf message followed by one more field is that message with the field set, and
   * field 8 is the highest of UpdateUpload: the bytes a full pack would give. */
  tail[0] = SIG_FIELD_KEY;
  tail[1] = (uint8_t)FL_SIG_LEN;
  return fl__sign(key, digest, sizeof digest, tail + SIG_FIELD_HEAD);
}

int fl__update_sign(const uint8_t content[FL_SHA256_LEN], int64_t timestamp_ms,
                    const uint8_t *nonce, size_t nonce_len, const fl_key *key, const uint8_t *body,
                    size_t body_len, const fl_allocator *a, uint8_t **out, size_t *out_len) {
  uint8_t *buf = fl__malloc(a, body_len + FL__UPLOAD_TAIL);
  if (buf == NULL)
    return FL_E_NOMEM;
  if (body_len > 0)
    memcpy(buf, body, body_len);
  int err = fl__update_sign_in_place(content, timestamp_ms, nonce, nonce_len, key, buf + body_len);
  if (err != FL_OK) {
    fl__free(a, buf);
    return err;
  }
  *out = buf;
  *out_len = body_len + FL__UPLOAD_TAIL;
  return FL_OK;
}

int fl__update_pack(const fl_model *layout, const float *base, const float *local,
                    const fl__update_params *p, const fl_allocator *a, fl__upload_buf *out,
                    float *norm, uint8_t content[FL_SHA256_LEN]) {
  size_t n = fl__model_num_params(layout);
  float *delta = fl__malloc(a, n * sizeof *delta);
  if (delta == NULL)
    return FL_E_NOMEM;
  for (size_t i = 0; i < n; i++)
    delta[i] = local[i] - base[i];
  int err = FL_E_NONFINITE;
  if (!fl__all_finite(delta, n))
    goto out_free;
  /* Clipping comes first and local noise after it (PRIVACY.md): the bit says whether the
   * delta as trained was within the bound, before any noise. */
  int clip_state = FL__V1__CLIP_STATE__CLIP_STATE_UNSPECIFIED;
  if (p->clip_norm > 0)
    clip_state = fl__clip_l2(delta, n, p->clip_norm) <= p->clip_norm
                     ? FL__V1__CLIP_STATE__CLIP_STATE_UNCLIPPED
                     : FL__V1__CLIP_STATE__CLIP_STATE_CLIPPED;
  if (p->noise_stddev > 0) {
    fl_rng r;
    err = fl__rng_init_secure(&r);
    if (err != FL_OK)
      goto out_free;
    fl__add_gaussian(delta, n, p->noise_stddev, &r);
  }
  Fl__V1__Tensor **t = NULL;
  size_t nt = 0;
  double s = 0;
  err = encode_within_bound(layout, delta, n, p, a, &t, &nt, &s);
  if (err != FL_OK)
    goto out_free;
  Fl__V1__UpdateUpload u;
  fl__v1__update_upload__init(&u);
  u.round_id = p->round_id;
  u.model_id = p->model_id;
  u.base_version = p->base_version;
  u.sample_count = p->sample_count;
  u.loss = p->loss;
  u.delta = t;
  u.n_delta = nt;
  u.norm = (float)s;
  u.clip_state = (Fl__V1__ClipState)clip_state;
  u.train_stats = (Fl__V1__DriftStats *)p->train_stats;
  err = pack_unsigned(&u, p->device_id, a, out, content);
  if (err == FL_OK)
    *norm = (float)s;
  fl__delta_release(t, nt, a);
out_free:
  fl__free(a, delta);
  return err;
}

int fl__update_clipped(const float *base, const float *local, size_t n, float clip_norm,
                       const fl_allocator *a, float **delta) {
  float *d = fl__malloc(a, (n ? n : 1) * sizeof *d);
  if (d == NULL)
    return FL_E_NOMEM;
  for (size_t i = 0; i < n; i++)
    d[i] = local[i] - base[i];
  if (!fl__all_finite(d, n)) {
    fl__free(a, d);
    return FL_E_NONFINITE;
  }
  fl__clip_l2(d, n, clip_norm);
  *delta = d;
  return FL_OK;
}

int fl__update_pack_masked(const fl__update_params *p, const uint8_t *y, size_t len,
                           const fl_allocator *a, fl__upload_buf *out,
                           uint8_t content[FL_SHA256_LEN]) {
  Fl__V1__UpdateUpload u;
  fl__v1__update_upload__init(&u);
  u.round_id = p->round_id;
  u.model_id = p->model_id;
  u.base_version = p->base_version;
  u.sample_count = p->sample_count;
  u.loss = p->loss;
  u.secagg_masked = (ProtobufCBinaryData){4 * len, (uint8_t *)(uintptr_t)y};
  return pack_unsigned(&u, p->device_id, a, out, content);
}

int fl__update_build(const fl_model *layout, const float *base, const float *local,
                     const fl__update_params *p, const fl_allocator *a, uint8_t **out,
                     size_t *out_len, float *norm, uint8_t content[FL_SHA256_LEN]) {
  fl__upload_buf ub;
  int err = fl__update_pack(layout, base, local, p, a, &ub, norm, content);
  if (err != FL_OK)
    return err;
  uint8_t *buf = fl__malloc(a, ub.len);
  if (buf != NULL)
    memcpy(buf, ub.body, ub.len);
  fl__free(a, ub.alloc);
  if (buf == NULL)
    return FL_E_NOMEM;
  *out = buf;
  *out_len = ub.len;
  return FL_OK;
}
