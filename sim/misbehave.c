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

/* POISON and UNCLIPPED: a changed delta, honestly signed by the device. An upload's one
 * signature is the update's, over the envelope's timestamp and nonce (docs/SIGNING.md), so
 * signing the changed update again is all a compromised device has to do. */
static int rescale(Fl__V1__SignedRequest *sr, sim_behaviour b, const fl_key *key,
                   double clip_norm, uint8_t **body, size_t *len) {
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
  if (u == NULL)
    return FL_E_PARSE;
  double norm = sqrt(delta_sqnorm(u));
  float f = b == SIM_POISON ? -20.0f
                            : (float)(norm > 0 ? 3.0 * (clip_norm > 0 ? clip_norm : 1.0) / norm
                                               : 1.0);
  scale_delta(u, f);
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

int sim_misbehave(sim_behaviour b, const fl_key *key, double clip_norm, const char *path,
                  uint8_t **body, size_t *len, sim_replay *replay) {
  if (b == SIM_HONEST)
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
