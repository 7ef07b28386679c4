/*
 * Rewriting update uploads the way misbehaving devices would.
 */
#include "misbehave.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "rng.h"

/* "A little is enough": how many estimated standard deviations the shift moves. Baruch et
 * al.'s z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, is 0.5 to 1 for the fleets and
 * attacker shares fl-sim runs (n = 10..100, f = 10..30%); 1 is the upper end. */
#define SIM_LIE_Z 1.0
/* In-bound attacks aim just inside the bound, so the coordinator's float check of the norm
 * cannot refuse them for rounding. */
#define SIM_INSIDE 0.999

/* Squared L2 norm of the float32 and int8 tensors of an update. */
static double delta_sqnorm(const Fl__V1__UpdateUpload *u) {
  double s = 0;
  for (size_t t = 0; t < u->n_delta; t++) {
    const Fl__V1__Tensor *x = u->delta[t];
    if (x->encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
      for (size_t i = 0; i + 4 <= x->data.len; i += 4) {
        float v;
        memcpy(&v, x->data.data + i, 4);
        s += (double)v * v;
      }
    } else if (x->encoding == FL__V1__ENCODING__ENCODING_INT8) {
      for (size_t i = 0; i < x->data.len; i++) {
        double v = (double)(int8_t)x->data.data[i] * x->scale;
        s += v * v;
      }
    }
  }
  return s;
}

static void scale_delta(Fl__V1__UpdateUpload *u, float f) {
  for (size_t t = 0; t < u->n_delta; t++) {
    Fl__V1__Tensor *x = u->delta[t];
    if (x->encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
      for (size_t i = 0; i + 4 <= x->data.len; i += 4) {
        float v;
        memcpy(&v, x->data.data + i, 4);
        v *= f;
        memcpy(x->data.data + i, &v, 4);
      }
    } else if (x->encoding == FL__V1__ENCODING__ENCODING_INT8) {
      x->scale *= f;
    }
  }
}

/* The float32 and int8 values of an update as one flat vector (other encodings are left
 * out, and left as they are). */
static size_t flat_count(const Fl__V1__UpdateUpload *u) {
  size_t n = 0;
  for (size_t t = 0; t < u->n_delta; t++) {
    const Fl__V1__Tensor *x = u->delta[t];
    if (x->encoding == FL__V1__ENCODING__ENCODING_FLOAT32)
      n += x->data.len / 4;
    else if (x->encoding == FL__V1__ENCODING__ENCODING_INT8)
      n += x->data.len;
  }
  return n;
}

/* put = 0: tensors -> v; put = 1: v -> tensors (int8 requantised with scale max|x| / 127). */
static void flat_io(Fl__V1__UpdateUpload *u, float *v, int put) {
  size_t k = 0;
  for (size_t t = 0; t < u->n_delta; t++) {
    Fl__V1__Tensor *x = u->delta[t];
    if (x->encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
      for (size_t i = 0; i + 4 <= x->data.len; i += 4, k++) {
        if (put)
          memcpy(x->data.data + i, &v[k], 4);
        else
          memcpy(&v[k], x->data.data + i, 4);
      }
    } else if (x->encoding == FL__V1__ENCODING__ENCODING_INT8 && !put) {
      for (size_t i = 0; i < x->data.len; i++)
        v[k++] = (float)(int8_t)x->data.data[i] * x->scale;
    } else if (x->encoding == FL__V1__ENCODING__ENCODING_INT8) {
      float m = 0;
      for (size_t i = 0; i < x->data.len; i++)
        m = fabsf(v[k + i]) > m ? fabsf(v[k + i]) : m;
      x->scale = m / 127.0f;
      for (size_t i = 0; i < x->data.len; i++, k++) {
        long q = m > 0 ? lrintf(v[k] / x->scale) : 0;
        x->data.data[i] = (uint8_t)(int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
      }
    }
  }
}

static double sqnorm(const float *v, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)v[i] * v[i];
  return s;
}

/* The in-bound attacks on the flat delta v (bound: the plan's clip norm, or the honest norm
 * when there is none):
 *   SIGNFLIP  -v: the honest norm, the opposite direction
 *   SCALED    -v scaled to just inside the bound: the largest step against descent the bound
 *             lets through
 *   LIE       "a little is enough" (Baruch et al. 2019): mean - z sigma, moved against the
 *             honest direction coordinate by coordinate. A device sees no other update, so its
 *             own delta stands for the honest mean and the root mean square of its own values
 *             for the per-coordinate standard deviation (an approximation: the attack needs
 *             only their order of magnitude); the result is kept inside the bound
 *   NOISE     Gaussian noise of norm just inside the bound, seeded by the request's nonce */
static void attack(sim_behaviour b, float *v, size_t n, double clip_norm, uint64_t seed) {
  double norm = sqrt(sqnorm(v, n));
  double bound = SIM_INSIDE * (clip_norm > 0 ? clip_norm : norm);
  if (b == SIM_SIGNFLIP || b == SIM_SCALED) {
    double f = b == SIM_SCALED && norm > 0 ? bound / norm : 1.0;
    for (size_t i = 0; i < n; i++)
      v[i] = (float)(-f * v[i]);
    return;
  }
  if (b == SIM_LIE) {
    double sigma = n ? norm / sqrt((double)n) : 0;
    for (size_t i = 0; i < n; i++)
      v[i] = (float)(v[i] - (v[i] >= 0 ? 1 : -1) * SIM_LIE_Z * sigma);
  } else {
    fl_rng r;
    fl__rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
      v[i] = (float)fl__rng_normal(&r);
  }
  double now = sqrt(sqnorm(v, n));
  if (now > bound || (b == SIM_NOISE && now > 0)) {
    double f = bound / now;
    for (size_t i = 0; i < n; i++)
      v[i] = (float)(v[i] * f);
  }
}

static int pack_request(const Fl__V1__SignedRequest *sr, uint8_t **body, size_t *len) {
  size_t n = fl__v1__signed_request__get_packed_size(sr);
  uint8_t *out = malloc(n ? n : 1);
  if (out == NULL)
    return FL_E_NOMEM;
  fl__v1__signed_request__pack(sr, out);
  free(*body);
  *body = out;
  *len = n;
  return FL_OK;
}

/* Replaces the UpdateUpload in sr's body by u, packed; sr->body then points into *inner,
 * which the caller frees after packing the envelope. */
static int repack_update(Fl__V1__SignedRequest *sr, const Fl__V1__UpdateUpload *u,
                         uint8_t **inner) {
  size_t n = fl__v1__update_upload__get_packed_size(u);
  *inner = malloc(n ? n : 1);
  if (*inner == NULL)
    return FL_E_NOMEM;
  fl__v1__update_upload__pack(u, *inner);
  sr->body = (ProtobufCBinaryData){n, *inner};
  return FL_OK;
}

/* POISON, UNCLIPPED and the in-bound attacks: a changed delta, honestly signed by the device. An
 * upload's one signature is the update's, over the envelope's timestamp and nonce
 * (docs/SIGNING.md), so signing the changed update again is all a compromised device has to do. */
static int rescale(Fl__V1__SignedRequest *sr, sim_behaviour b, const fl_key *key,
                   double clip_norm, uint8_t **body, size_t *len) {
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
  if (u == NULL)
    return FL_E_PARSE;
  if (b == SIM_POISON || b == SIM_UNCLIPPED) {
    double norm = sqrt(delta_sqnorm(u));
    float f = b == SIM_POISON
                  ? -20.0f
                  : (float)(norm > 0 ? 3.0 * (clip_norm > 0 ? clip_norm : 1.0) / norm : 1.0);
    scale_delta(u, f);
  } else {
    size_t n = flat_count(u);
    float *v = malloc((n ? n : 1) * sizeof *v);
    if (v == NULL) {
      fl__v1__update_upload__free_unpacked(u, NULL);
      return FL_E_NOMEM;
    }
    uint64_t seed = 0;
    for (size_t i = 0; i < sr->nonce.len; i++)
      seed = seed * 1099511628211u + sr->nonce.data[i];
    flat_io(u, v, 0);
    attack(b, v, n, clip_norm, seed);
    flat_io(u, v, 1);
    free(v);
  }
  u->norm = (float)sqrt(delta_sqnorm(u));
  uint8_t digest[FL_SHA256_LEN], usig[FL_SIG_LEN];
  ProtobufCBinaryData old_usig = u->signature, old_body = sr->body;
  int rc = fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u,
                             NULL, digest);
  if (rc == FL_OK)
    rc = fl__sign(key, digest, sizeof(digest), usig);
  uint8_t *inner = NULL;
  if (rc == FL_OK) {
    u->signature = (ProtobufCBinaryData){FL_SIG_LEN, usig};
    rc = repack_update(sr, u, &inner);
  }
  if (rc == FL_OK)
    rc = pack_request(sr, body, len);
  /* Hand the unpacked messages back their own buffers before they are freed. */
  u->signature = old_usig;
  sr->body = old_body;
  free(inner);
  fl__v1__update_upload__free_unpacked(u, NULL);
  return rc;
}

/* BADSIG on an upload: one bit of the update signature flipped, the only signature an upload
 * carries (its envelope signature is empty). */
static int corrupt_update_signature(Fl__V1__SignedRequest *sr, uint8_t **body, size_t *len) {
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
  if (u == NULL)
    return FL_E_PARSE;
  ProtobufCBinaryData old_body = sr->body;
  uint8_t *inner = NULL;
  if (u->signature.len > 0)
    u->signature.data[u->signature.len / 2] ^= 0x01;
  int rc = repack_update(sr, u, &inner);
  if (rc == FL_OK)
    rc = pack_request(sr, body, len);
  sr->body = old_body;
  free(inner);
  fl__v1__update_upload__free_unpacked(u, NULL);
  return rc;
}

int sim_misbehave_resigns(sim_behaviour b) {
  return b == SIM_POISON || b == SIM_UNCLIPPED || b == SIM_SIGNFLIP || b == SIM_SCALED ||
         b == SIM_LIE || b == SIM_NOISE;
}

int sim_misbehave(sim_behaviour b, const fl_key *key, double clip_norm, const char *path,
                  uint8_t **body, size_t *len, sim_replay *replay) {
  if (b == SIM_HONEST || b == SIM_LABELFLIP) /* label flipping changed the data, not this */
    return FL_OK;
  if (b == SIM_REPLAY) {
    if (replay->data == NULL) {
      replay->data = malloc(*len ? *len : 1);
      if (replay->data == NULL)
        return FL_E_NOMEM;
      memcpy(replay->data, *body, *len);
      replay->len = *len;
      return FL_OK;
    }
    uint8_t *copy = malloc(replay->len ? replay->len : 1);
    if (copy == NULL)
      return FL_E_NOMEM;
    memcpy(copy, replay->data, replay->len);
    free(*body);
    *body = copy;
    *len = replay->len;
    return FL_OK;
  }
  Fl__V1__SignedRequest *sr = fl__v1__signed_request__unpack(NULL, *len, *body);
  if (sr == NULL)
    return FL_E_PARSE;
  int rc = FL_OK;
  if (b == SIM_BADSIG && strcmp(path, "/v1/updates") == 0) {
    rc = corrupt_update_signature(sr, body, len);
  } else if (b == SIM_BADSIG) {
    if (sr->signature.len > 0)
      sr->signature.data[sr->signature.len / 2] ^= 0x01;
    rc = pack_request(sr, body, len);
  } else if (key == NULL) {
    rc = FL_E_INVAL;
  } else {
    rc = rescale(sr, b, key, clip_norm, body, len);
  }
  fl__v1__signed_request__free_unpacked(sr, NULL);
  return rc;
}
