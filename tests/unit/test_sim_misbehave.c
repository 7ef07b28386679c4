/* fl-sim's in-bound attacks (sim/misbehave.c): each rewritten update stays inside the norm
 * bound, is signed again so that it verifies, and is the attack it claims to be. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "digest.h"
#include "fl/err.h"
#include "misbehave.h"

#define N 64
#define CLIP 2.0

static fl_key *g_key;

static void setup(void) {
  cr_assert_eq(fl__key_generate(&g_key), FL_OK);
}
static void teardown(void) {
  fl__key_free(g_key);
}

/* A signed upload of one float32 tensor (honest delta d, norm 1) and one int8 tensor. */
static void make_body(const float *d, uint8_t **body, size_t *len) {
  Fl__V1__Tensor t32 = FL__V1__TENSOR__INIT, t8 = FL__V1__TENSOR__INIT, *ts[2] = {&t32, &t8};
  uint8_t q[4] = {10, (uint8_t)(int8_t)-20, 30, 0};
  t32.encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
  t32.count = N;
  t32.data = (ProtobufCBinaryData){4 * N, (uint8_t *)d};
  t8.encoding = FL__V1__ENCODING__ENCODING_INT8;
  t8.count = 4;
  t8.scale = 0.001f;
  t8.data = (ProtobufCBinaryData){4, q};
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  u.round_id = 3;
  u.sample_count = 10;
  u.n_delta = 2;
  u.delta = ts;
  uint8_t nonce[16] = {1, 2, 3}, digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  cr_assert_eq(fl__update_digest(7, 1000, nonce, sizeof nonce, &u, NULL, digest), FL_OK);
  cr_assert_eq(fl__sign(g_key, digest, sizeof digest, sig), FL_OK);
  u.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
  size_t ulen = fl__v1__update_upload__get_packed_size(&u);
  uint8_t *inner = malloc(ulen);
  fl__v1__update_upload__pack(&u, inner);
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  sr.device_id = 7;
  sr.timestamp_ms = 1000;
  sr.nonce = (ProtobufCBinaryData){sizeof nonce, nonce};
  sr.body = (ProtobufCBinaryData){ulen, inner};
  *len = fl__v1__signed_request__get_packed_size(&sr);
  *body = malloc(*len);
  fl__v1__signed_request__pack(&sr, *body);
  free(inner);
}

/* Unpacks the rewritten upload, checks its signature, returns the flat values (float32 then
 * dequantised int8: N + 4). */
static void read_body(const uint8_t *body, size_t len, float *out) {
  Fl__V1__SignedRequest *sr = fl__v1__signed_request__unpack(NULL, len, body);
  cr_assert_not_null(sr);
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, sr->body.len, sr->body.data);
  cr_assert_not_null(u);
  uint8_t digest[FL_SHA256_LEN];
  cr_assert_eq(fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u,
                                 NULL, digest),
               FL_OK);
  cr_assert_eq(fl__verify(g_key, digest, sizeof digest, u->signature.data, u->signature.len), FL_OK,
               "the rewritten update is signed again");
  cr_assert_eq(u->n_delta, 2);
  memcpy(out, u->delta[0]->data.data, 4 * N);
  cr_assert(u->delta[1]->scale >= 0, "int8 scales stay non-negative");
  for (int i = 0; i < 4; i++)
    out[N + i] = (float)(int8_t)u->delta[1]->data.data[i] * u->delta[1]->scale;
  fl__v1__update_upload__free_unpacked(u, NULL);
  fl__v1__signed_request__free_unpacked(sr, NULL);
}

static double norm(const float *v, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)v[i] * v[i];
  return sqrt(s);
}

static void run(sim_behaviour b, const float *d, float *out) {
  uint8_t *body;
  size_t len;
  make_body(d, &body, &len);
  cr_assert_eq(sim_misbehave(b, g_key, CLIP, "/v1/updates", &body, &len, NULL), FL_OK);
  read_body(body, len, out);
  free(body);
}

static void honest(float *d) {
  for (int i = 0; i < N; i++)
    d[i] = (float)((i % 7) - 3) / 20.0f;
}

static const float INT8_HONEST[4] = {0.010f, -0.020f, 0.030f, 0.0f};

Test(sim_misbehave, sign_flip_negates, .init = setup, .fini = teardown) {
  float d[N], out[N + 4];
  honest(d);
  run(SIM_SIGNFLIP, d, out);
  for (int i = 0; i < N; i++)
    cr_assert_eq(out[i], -d[i]);
  for (int i = 0; i < 4; i++)
    cr_assert_float_eq(out[N + i], -INT8_HONEST[i], 1e-4, "int8 value %d", i);
}

Test(sim_misbehave, scaled_reaches_just_inside_the_bound, .init = setup, .fini = teardown) {
  float d[N], out[N + 4], all[N + 4];
  honest(d);
  memcpy(all, d, sizeof d);
  memcpy(all + N, INT8_HONEST, sizeof INT8_HONEST);
  run(SIM_SCALED, d, out);
  double n = norm(out, N + 4), f = n / norm(all, N + 4);
  cr_assert(n < CLIP && n > 0.99 * CLIP, "norm %g", n);
  for (int i = 0; i < N; i++)
    cr_assert_float_eq(out[i], -f * d[i], 1e-5, "coordinate %d", i);
}

Test(sim_misbehave, little_is_enough_moves_against_the_honest_direction, .init = setup,
     .fini = teardown) {
  float d[N], out[N + 4];
  honest(d);
  run(SIM_LIE, d, out);
  double sigma = 0;
  for (int i = 0; i < N; i++)
    sigma += (double)d[i] * d[i];
  sigma = sqrt((sigma + 0.0014) / (N + 4)); /* + the int8 tensor's squares */
  cr_assert(norm(out, N + 4) <= CLIP);
  for (int i = 0; i < N; i++) {
    double want = d[i] - (d[i] >= 0 ? sigma : -sigma);
    cr_assert_float_eq(out[i], want, 1e-5, "coordinate %d: %g, want %g", i, out[i], want);
  }
}

Test(sim_misbehave, noise_has_the_bound_as_norm, .init = setup, .fini = teardown) {
  float d[N], out[N + 4], again[N + 4];
  honest(d);
  run(SIM_NOISE, d, out);
  double n = norm(out, N + 4);
  cr_assert(n < CLIP && n > 0.99 * CLIP, "norm %g", n);
  double dot = 0;
  for (int i = 0; i < N; i++)
    dot += (double)out[i] * d[i];
  cr_assert(fabs(dot) < n * norm(d, N), "not the honest direction");
  run(SIM_NOISE, d, again);
  cr_assert_eq(memcmp(out, again, sizeof out), 0, "seeded by the request (same nonce here)");
}

Test(sim_misbehave, label_flip_leaves_the_upload_alone, .init = setup, .fini = teardown) {
  float d[N];
  uint8_t *body, *copy;
  size_t len;
  honest(d);
  make_body(d, &body, &len);
  copy = malloc(len);
  memcpy(copy, body, len);
  cr_assert_eq(sim_misbehave(SIM_LABELFLIP, g_key, CLIP, "/v1/updates", &body, &len, NULL), FL_OK);
  cr_assert_eq(memcmp(body, copy, len), 0);
  free(body);
  free(copy);
}

Test(sim_misbehave, the_rewriting_attacks_load_the_key) {
  /* The transport loads the device key only for these: an in-bound attack without it failed
   * every upload with FL_E_INVAL (found by the first fl-sim run of the robustness table). */
  const sim_behaviour resign[] = {SIM_POISON, SIM_UNCLIPPED, SIM_SIGNFLIP,
                                  SIM_SCALED, SIM_LIE,       SIM_NOISE};
  for (size_t i = 0; i < sizeof resign / sizeof resign[0]; i++)
    cr_expect(sim_misbehave_resigns(resign[i]), "%s", sim_behaviour_name(resign[i]));
  cr_expect(!sim_misbehave_resigns(SIM_HONEST));
  cr_expect(!sim_misbehave_resigns(SIM_LABELFLIP));
  cr_expect(!sim_misbehave_resigns(SIM_BADSIG));
}
