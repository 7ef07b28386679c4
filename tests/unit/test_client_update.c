/* The update path without a network: delta = local - base, clipping, noise, each encoding,
 * the norm as sent, and the signature over the canonical update digest. */
#include "test_client_fake.h"

static fl_model *layout;
static fl_key *key;
static uint8_t pub[FL_PUBKEY_LEN];
static float *base, *local;
static size_t n;

static void setup(void) {
  cr_assert_eq(fl__model_new(&layout, &fake_spec, NULL), FL_OK);
  n = fl__model_num_params(layout);
  base = malloc(n * sizeof *base);
  local = malloc(n * sizeof *local);
  for (size_t i = 0; i < n; i++) {
    base[i] = 0.1f * (float)i;
    local[i] = base[i] + 0.25f * (float)((int)(i % 5) - 2); /* deltas -0.5 .. 0.5 */
  }
  cr_assert_eq(fl__key_generate(&key), FL_OK);
  cr_assert_eq(fl__key_public(key, pub), FL_OK);
}

static void teardown(void) {
  fl__model_free(layout);
  fl__key_free(key);
  free(base);
  free(local);
}

TestSuite(client_update, .init = setup, .fini = teardown);

static fl__update_params params(int encoding, float clip) {
  return (fl__update_params){.device_id = 9,
                             .round_id = 3,
                             .model_id = 1,
                             .base_version = 2,
                             .sample_count = 50,
                             .loss = 0.5f,
                             .clip_norm = clip,
                             .topk_fraction = 0.25f,
                             .encoding = encoding};
}

/* Builds the unsigned upload, signs it for one attempt as the request layer does, then unpacks
 * it, checks the content digest, the signature over the attempt's timestamp and nonce, and
 * decodes the delta into out. */
static Fl__V1__UpdateUpload *build(const fl__update_params *p, float *out, float *norm) {
  uint8_t *buf = NULL, *wire = NULL, content[FL_SHA256_LEN];
  size_t len = 0, wire_len = 0;
  static const uint8_t nonce[16] = {7, 7, 7};
  cr_assert_eq(fl__update_build(layout, base, local, p, NULL, &buf, &len, norm, content), FL_OK);
  Fl__V1__UpdateUpload *unsigned_u = fl__v1__update_upload__unpack(NULL, len, buf);
  cr_assert_not_null(unsigned_u);
  cr_assert_eq(unsigned_u->signature.len, 0, "the build leaves the signature to each attempt");
  fl__v1__update_upload__free_unpacked(unsigned_u, NULL);
  cr_assert_eq(fl__update_sign(content, 1700000000123, nonce, sizeof nonce, key, buf, len, NULL,
                               &wire, &wire_len),
               FL_OK);
  free(buf);
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, wire_len, wire);
  free(wire);
  cr_assert_not_null(u);
  uint8_t c[FL_SHA256_LEN], d[FL_SHA256_LEN];
  cr_assert_eq(fl__update_digest(p->device_id, 1700000000123, nonce, sizeof nonce, u, c, d), FL_OK);
  cr_assert_eq(memcmp(c, content, sizeof c), 0);
  cr_assert_eq(fl__verify_raw(pub, d, sizeof d, u->signature.data, u->signature.len), FL_OK);
  /* Another attempt's freshness fields do not verify with this signature. */
  cr_assert_eq(fl__update_digest(p->device_id, 1700000000124, nonce, sizeof nonce, u, NULL, d),
               FL_OK);
  cr_assert_neq(fl__verify_raw(pub, d, sizeof d, u->signature.data, u->signature.len), FL_OK);
  cr_assert_eq(fl__delta_check(&fake_spec, u->delta, u->n_delta), FL_OK);
  size_t off = 0;
  for (size_t i = 0; i < u->n_delta; i++) {
    cr_assert_eq(fl__tensor_decode(u->delta[i], out + off, u->delta[i]->count), FL_OK);
    off += u->delta[i]->count;
  }
  cr_assert_eq(off, n);
  return u;
}

static double norm_of(const float *x) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)x[i] * x[i];
  return sqrt(s);
}

Test(client_update, float32_carries_the_exact_delta_and_metadata) {
  fl__update_params p = params(FL__V1__ENCODING__ENCODING_FLOAT32, 0);
  float d[64], norm = 0;
  Fl__V1__UpdateUpload *u = build(&p, d, &norm);
  for (size_t i = 0; i < n; i++)
    cr_assert_eq(d[i], local[i] - base[i], "element %zu", i);
  cr_assert_eq(u->round_id, 3);
  cr_assert_eq(u->model_id, 1);
  cr_assert_eq(u->base_version, 2);
  cr_assert_eq(u->sample_count, 50);
  cr_assert_float_eq(u->loss, 0.5f, 0);
  cr_assert_float_eq(u->norm, norm_of(d), 1e-5);
  cr_assert_float_eq(norm, u->norm, 0);
  fl__v1__update_upload__free_unpacked(u, NULL);
}

Test(client_update, every_encoding_respects_the_clip_bound) {
  const int enc[] = {FL__V1__ENCODING__ENCODING_FLOAT32, FL__V1__ENCODING__ENCODING_FLOAT16,
                     FL__V1__ENCODING__ENCODING_INT8, FL__V1__ENCODING__ENCODING_TOPK};
  for (size_t e = 0; e < sizeof enc / sizeof enc[0]; e++) {
    fl__update_params p = params(enc[e], 0.3f);
    float d[64], norm = 0;
    Fl__V1__UpdateUpload *u = build(&p, d, &norm);
    cr_assert_leq(norm_of(d), 0.3 + 1e-6, "encoding %d sent norm %f", enc[e], norm_of(d));
    cr_assert_float_eq(u->norm, norm_of(d), 1e-5, "encoding %d", enc[e]);
    cr_assert_eq((int)u->delta[0]->encoding, enc[e]);
    fl__v1__update_upload__free_unpacked(u, NULL);
  }
}

Test(client_update, clipping_keeps_the_direction) {
  fl__update_params p = params(FL__V1__ENCODING__ENCODING_FLOAT32, 0.3f);
  float d[64], norm = 0;
  Fl__V1__UpdateUpload *u = build(&p, d, &norm);
  double full = 0, dot = 0;
  for (size_t i = 0; i < n; i++) {
    double r = local[i] - base[i];
    full += r * r;
    dot += r * d[i];
  }
  cr_assert_float_eq(dot / (sqrt(full) * norm_of(d)), 1.0, 1e-5);
  fl__v1__update_upload__free_unpacked(u, NULL);
}

Test(client_update, quantised_encodings_stay_close) {
  const int enc[] = {FL__V1__ENCODING__ENCODING_FLOAT16, FL__V1__ENCODING__ENCODING_INT8};
  const float tol[] = {1e-3f, 0.5f / 127 + 1e-6f};
  for (size_t e = 0; e < 2; e++) {
    fl__update_params p = params(enc[e], 0);
    float d[64], norm = 0;
    Fl__V1__UpdateUpload *u = build(&p, d, &norm);
    for (size_t i = 0; i < n; i++)
      cr_assert_float_eq(d[i], local[i] - base[i], tol[e], "encoding %d element %zu", enc[e], i);
    fl__v1__update_upload__free_unpacked(u, NULL);
  }
}

Test(client_update, topk_keeps_only_the_largest) {
  fl__update_params p = params(FL__V1__ENCODING__ENCODING_TOPK, 0);
  float d[64], norm = 0;
  Fl__V1__UpdateUpload *u = build(&p, d, &norm);
  size_t nonzero = 0;
  for (size_t i = 0; i < n; i++) {
    if (d[i] != 0) {
      nonzero++;
      cr_assert_float_eq(d[i], local[i] - base[i], 0);
      cr_assert_float_eq(fabsf(d[i]), 0.5f, 1e-5, "only the largest |delta| survive");
    }
  }
  cr_assert_gt(nonzero, 0);
  cr_assert_lt(nonzero, n);
  fl__v1__update_upload__free_unpacked(u, NULL);
}

Test(client_update, noise_is_added_after_clipping) {
  fl__update_params p = params(FL__V1__ENCODING__ENCODING_FLOAT32, 0.3f);
  p.noise_stddev = 0.5f;
  float d[64], norm = 0;
  Fl__V1__UpdateUpload *u = build(&p, d, &norm);
  cr_assert_gt(norm_of(d), 0.3, "noise of stddev 0.5 over %zu elements stays inside 0.3", n);
  cr_assert_float_eq(u->norm, norm_of(d), 1e-5);
  fl__v1__update_upload__free_unpacked(u, NULL);
}

Test(client_update, diverged_training_is_not_uploaded) {
  local[3] = NAN;
  fl__update_params p = params(FL__V1__ENCODING__ENCODING_FLOAT32, 0);
  uint8_t *buf = NULL;
  size_t len = 0;
  float norm = 0;
  uint8_t content[FL_SHA256_LEN];
  cr_assert_eq(fl__update_build(layout, base, local, &p, NULL, &buf, &len, &norm, content),
               FL_E_NONFINITE);
  cr_assert_null(buf);
}

/* Adaptive clipping's bit (docs/PRIVACY.md 3): 1 when the delta was within the clip, 2 when it
 * was scaled down, not set without a clip; it is part of the signed content digest, and an
 * upload without it digests as before the field existed. */
Test(client_update, clip_state_reports_whether_the_delta_was_clipped) {
  float *out = malloc(n * sizeof *out), norm = 0;
  double raw = 0;
  for (size_t i = 0; i < n; i++)
    raw += (double)(local[i] - base[i]) * (local[i] - base[i]);
  raw = sqrt(raw);
  fl__update_params p = params(1, (float)(raw * 2));
  Fl__V1__UpdateUpload *u = build(&p, out, &norm);
  cr_expect_eq(u->clip_state, FL__V1__CLIP_STATE__CLIP_STATE_UNCLIPPED);
  fl__v1__update_upload__free_unpacked(u, NULL);
  p = params(1, (float)(raw / 2));
  u = build(&p, out, &norm);
  cr_expect_eq(u->clip_state, FL__V1__CLIP_STATE__CLIP_STATE_CLIPPED);
  uint8_t with[FL_SHA256_LEN], without[FL_SHA256_LEN];
  cr_assert_eq(fl__update_content_digest(9, u, with), FL_OK);
  u->clip_state = FL__V1__CLIP_STATE__CLIP_STATE_UNSPECIFIED;
  cr_assert_eq(fl__update_content_digest(9, u, without), FL_OK);
  cr_expect_neq(memcmp(with, without, sizeof with), 0, "clip_state is signed");
  fl__v1__update_upload__free_unpacked(u, NULL);
  p = params(1, 0);
  u = build(&p, out, &norm);
  cr_expect_eq(u->clip_state, FL__V1__CLIP_STATE__CLIP_STATE_UNSPECIFIED);
  fl__v1__update_upload__free_unpacked(u, NULL);
  free(out);
}

/* The upload is packed once and each attempt signs it in place: the wire is the bytes the
 * reference construction (the signed UpdateUpload inside a SignedRequest packed by protobuf-c)
 * gives, for every attempt, with the attempt's own nonce and timestamp. */
Test(client_update, upload_is_signed_in_place_with_the_bytes_a_full_pack_gives) {
  fake_env e;
  fake_env_enrolled(&e);
  fl_client *c = e.c;
  fl__update_params p = params(FL__V1__ENCODING__ENCODING_FLOAT32, 0);
  p.device_id = c->device_id;
  fl__upload_buf ub;
  float norm = 0;
  uint8_t content[FL_SHA256_LEN];
  cr_assert_eq(fl__update_pack(layout, base, local, &p, NULL, &ub, &norm, content), FL_OK);
  size_t body_len = ub.len;
  uint8_t *body = malloc(body_len);
  memcpy(body, ub.body, body_len);
  cr_assert_eq(fl__request_set_upload_buf(c, &ub, content), FL_OK);
  uint8_t first_nonce[16] = {0};
  for (int attempt = 0; attempt < 2; attempt++) {
    cr_assert_eq(fl__request_sign(c), FL_OK);
    cr_assert(c->wire_in_req, "the wire is the request's own buffer");
    Fl__V1__SignedRequest *env = fl__v1__signed_request__unpack(NULL, c->wire_len, c->wire);
    cr_assert_not_null(env);
    cr_assert_eq(env->nonce.len, 16);
    if (attempt == 0)
      memcpy(first_nonce, env->nonce.data, 16);
    else
      cr_assert_neq(memcmp(first_nonce, env->nonce.data, 16), 0, "a fresh nonce per attempt");
    uint8_t *signed_body = NULL;
    size_t signed_len = 0;
    cr_assert_eq(fl__update_sign(content, env->timestamp_ms, env->nonce.data, env->nonce.len,
                                 c->key, body, body_len, NULL, &signed_body, &signed_len),
                 FL_OK);
    Fl__V1__SignedRequest ref;
    fl__v1__signed_request__init(&ref);
    ref.device_id = env->device_id;
    ref.timestamp_ms = env->timestamp_ms;
    ref.nonce = env->nonce;
    ref.body.data = signed_body;
    ref.body.len = signed_len;
    size_t ref_len = fl__v1__signed_request__get_packed_size(&ref);
    uint8_t *ref_wire = malloc(ref_len);
    fl__v1__signed_request__pack(&ref, ref_wire);
    cr_assert_eq(c->wire_len, ref_len);
    cr_assert_eq(memcmp(c->wire, ref_wire, ref_len), 0, "attempt %d", attempt);
    cr_assert_eq(env->device_id, c->device_id);
    cr_assert_eq(env->signature.len, 0, "an upload's envelope carries no signature");
    free(ref_wire);
    free(signed_body);
    fl__v1__signed_request__free_unpacked(env, NULL);
  }
  free(body);
  fake_env_down(&e);
}
