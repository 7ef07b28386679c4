/* The in-place unpack of an upload (server/auth/inplace.c): the same messages as protobuf-c's
 * copying unpack, with the envelope's body and the tensors' data and indices pointing into the
 * request's bytes (no copy); whatever it accepts protobuf-c accepts identically (truncations
 * and flipped bytes), and what it declines is left to protobuf-c. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "auth/inplace.h"

typedef struct wire {
  uint8_t *env; /* the packed SignedRequest */
  size_t env_len;
} wire;

static uint8_t data0[4 * 60], data1[4 * 3], idx1[4 * 3];

/* A float32 tensor of 60 values and a top-k one of 3 of 10, training statistics, a signature,
 * in an envelope with a nonce. */
static wire make_wire(void) {
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  Fl__V1__Tensor t[2] = {FL__V1__TENSOR__INIT, FL__V1__TENSOR__INIT}, *tp[2] = {&t[0], &t[1]};
  Fl__V1__DriftStats ds = FL__V1__DRIFT_STATS__INIT;
  uint32_t shape0[2] = {6, 10}, shape1[1] = {10};
  uint8_t sig[64], nonce[16];
  for (size_t i = 0; i < sizeof data0; i++)
    data0[i] = (uint8_t)(i * 7 + 1);
  memset(data1, 0x3f, sizeof data1);
  const uint32_t at[3] = {1, 4, 9};
  memcpy(idx1, at, sizeof idx1);
  memset(sig, 0xa5, sizeof sig);
  memset(nonce, 0x11, sizeof nonce);
  t[0].encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
  t[0].count = 60;
  t[0].n_shape = 2;
  t[0].shape = shape0;
  t[0].data = (ProtobufCBinaryData){sizeof data0, data0};
  t[1].encoding = FL__V1__ENCODING__ENCODING_TOPK;
  t[1].count = 10;
  t[1].n_shape = 1;
  t[1].shape = shape1;
  t[1].data = (ProtobufCBinaryData){sizeof data1, data1};
  t[1].indices = (ProtobufCBinaryData){sizeof idx1, idx1};
  ds.model_id = 3;
  ds.count = 9;
  u.round_id = 11;
  u.model_id = 3;
  u.base_version = 5;
  u.sample_count = 600;
  u.loss = 0.25f;
  u.norm = 1.5f;
  u.n_delta = 2;
  u.delta = tp;
  u.signature = (ProtobufCBinaryData){sizeof sig, sig};
  u.clip_state = FL__V1__CLIP_STATE__CLIP_STATE_CLIPPED;
  u.train_stats = &ds;
  size_t ulen = fl__v1__update_upload__get_packed_size(&u);
  uint8_t *ub = malloc(ulen);
  fl__v1__update_upload__pack(&u, ub);
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  sr.device_id = 42;
  sr.timestamp_ms = 1700000000000;
  sr.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
  sr.body = (ProtobufCBinaryData){ulen, ub};
  wire w;
  w.env_len = fl__v1__signed_request__get_packed_size(&sr);
  w.env = malloc(w.env_len);
  fl__v1__signed_request__pack(&sr, w.env);
  free(ub);
  return w;
}

static bool inside(const void *p, const uint8_t *b, size_t n) {
  const uint8_t *q = p;
  return q >= b && q < b + n;
}

static uint8_t *repack_sr(const Fl__V1__SignedRequest *m, size_t *n) {
  *n = fl__v1__signed_request__get_packed_size(m);
  uint8_t *b = malloc(*n + 1);
  fl__v1__signed_request__pack(m, b);
  return b;
}

static uint8_t *repack_uu(const Fl__V1__UpdateUpload *m, size_t *n) {
  *n = fl__v1__update_upload__get_packed_size(m);
  uint8_t *b = malloc(*n + 1);
  fl__v1__update_upload__pack(m, b);
  return b;
}

Test(inplace, same_message_no_copy) {
  wire w = make_wire();
  Fl__V1__SignedRequest *a = fl__inplace_envelope(w.env, w.env_len);
  Fl__V1__SignedRequest *b = fl__v1__signed_request__unpack(NULL, w.env_len, w.env);
  cr_assert_not_null(a);
  cr_assert_not_null(b);
  cr_assert(inside(a->body.data, w.env, w.env_len), "the body is not copied");
  size_t na, nb;
  uint8_t *pa = repack_sr(a, &na), *pb = repack_sr(b, &nb);
  cr_assert(na == nb && memcmp(pa, pb, na) == 0);
  Fl__V1__UpdateUpload *ua = fl__inplace_upload(a->body.data, a->body.len);
  Fl__V1__UpdateUpload *ub = fl__v1__update_upload__unpack(NULL, b->body.len, b->body.data);
  cr_assert_not_null(ua);
  cr_assert_eq(ua->n_delta, 2);
  for (size_t i = 0; i < 2; i++)
    cr_assert(inside(ua->delta[i]->data.data, w.env, w.env_len), "tensor %zu copied", i);
  cr_assert(inside(ua->delta[1]->indices.data, w.env, w.env_len));
  cr_assert_eq(ua->delta[0]->indices.data, NULL);
  cr_assert_eq(memcmp(ua->delta[0]->data.data, data0, sizeof data0), 0);
  cr_assert_not_null(ua->train_stats);
  free(pa);
  free(pb);
  pa = repack_uu(ua, &na);
  pb = repack_uu(ub, &nb);
  cr_assert(na == nb && memcmp(pa, pb, na) == 0, "the upload differs from protobuf-c's");
  free(pa);
  free(pb);
  fl__inplace_upload_free(ua);
  fl__v1__update_upload__free_unpacked(ub, NULL);
  fl__inplace_envelope_free(a);
  fl__v1__signed_request__free_unpacked(b, NULL);
  free(w.env);
}

/* When it accepts, protobuf-c accepts the same bytes as the same message. */
static void agrees(const uint8_t *env, size_t len) {
  Fl__V1__SignedRequest *a = fl__inplace_envelope(env, len);
  if (a == NULL)
    return;
  Fl__V1__SignedRequest *b = fl__v1__signed_request__unpack(NULL, len, env);
  cr_assert_not_null(b, "accepted an envelope protobuf-c refuses");
  size_t na, nb;
  uint8_t *pa = repack_sr(a, &na), *pb = repack_sr(b, &nb);
  cr_assert(na == nb && memcmp(pa, pb, na) == 0);
  free(pa);
  free(pb);
  Fl__V1__UpdateUpload *ua = fl__inplace_upload(a->body.data, a->body.len);
  Fl__V1__UpdateUpload *ub = fl__v1__update_upload__unpack(NULL, b->body.len, b->body.data);
  if (ua != NULL) {
    cr_assert_not_null(ub, "accepted an upload protobuf-c refuses");
    pa = repack_uu(ua, &na);
    pb = repack_uu(ub, &nb);
    cr_assert(na == nb && memcmp(pa, pb, na) == 0);
    free(pa);
    free(pb);
  }
  fl__inplace_upload_free(ua);
  fl__v1__update_upload__free_unpacked(ub, NULL);
  fl__inplace_envelope_free(a);
  fl__v1__signed_request__free_unpacked(b, NULL);
}

Test(inplace, truncations_and_flips_agree_with_protobuf_c) {
  wire w = make_wire();
  for (size_t n = 0; n <= w.env_len; n++)
    agrees(w.env, n);
  uint8_t *m = malloc(w.env_len);
  for (size_t i = 0; i < w.env_len; i++)
    for (unsigned bit = 0; bit < 8; bit++) {
      memcpy(m, w.env, w.env_len);
      m[i] ^= (uint8_t)(1u << bit);
      agrees(m, w.env_len);
    }
  free(m);
  free(w.env);
}
