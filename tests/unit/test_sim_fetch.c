/* Evaluation scores only what the coordinator signed: a downloaded version is checked against
 * the coordinator's key and against its own digest. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "crypto.h"
#include "digest.h"
#include "fetch.h"
#include "fl/err.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "model_specs.h"

#define MODEL_ID 7
#define VERSION 3
#define PARENT 2

typedef struct fixture {
  fl_model *m;        /* the published weights */
  fl_key *coord;      /* the coordinator's key */
  uint8_t pub[FL_PUBKEY_LEN];
  uint8_t *wire;      /* a signed ModelVersion of m */
  size_t len;
} fixture;

/* Packs m as version VERSION; flip_weight changes one weight after the digest was taken. */
static void publish(fixture *f, int flip_weight) {
  Fl__V1__ModelVersion mv = FL__V1__MODEL_VERSION__INIT;
  uint8_t digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  const float *p = fl__model_params_const(f->m);
  cr_assert_eq(fl__model_digest(MODEL_ID, VERSION, PARENT, fl__model_spec(f->m), p,
                                fl__model_num_params(f->m), digest), FL_OK);
  cr_assert_eq(fl__sign(f->coord, digest, sizeof(digest), sig), FL_OK);
  cr_assert_eq(fl__weights_to_proto(f->m, &mv.weights, &mv.n_weights, NULL), FL_OK);
  if (flip_weight) {
    float *w = (float *)mv.weights[0]->data.data;
    w[1] += 0.25f;
  }
  mv.model_id = MODEL_ID;
  mv.version = VERSION;
  mv.parent_version = PARENT;
  mv.sha256 = (ProtobufCBinaryData){sizeof(digest), digest};
  mv.signature = (ProtobufCBinaryData){sizeof(sig), sig};
  f->len = fl__v1__model_version__get_packed_size(&mv);
  f->wire = malloc(f->len);
  fl__v1__model_version__pack(&mv, f->wire);
  fl__delta_release(mv.weights, mv.n_weights, NULL);
}

static fixture make(int flip_weight) {
  fixture f = {0};
  fl_model_spec spec;
  cr_assert_eq(sim_model_named(&spec, "mlp", 16, 3), FL_OK);
  cr_assert_eq(fl__model_new(&f.m, &spec, NULL), FL_OK);
  float *p = fl__model_params(f.m);
  for (size_t i = 0; i < fl__model_num_params(f.m); i++)
    p[i] = (float)(i % 13) * 0.01f - 0.05f;
  cr_assert_eq(fl__key_generate(&f.coord), FL_OK);
  cr_assert_eq(fl__key_public(f.coord, f.pub), FL_OK);
  publish(&f, flip_weight);
  return f;
}

static void release(fixture *f) {
  fl__model_free(f->m);
  fl__key_free(f->coord);
  free(f->wire);
}

static fl_model *blank_like(const fl_model *m) {
  fl_model *b;
  cr_assert_eq(fl__model_new(&b, fl__model_spec(m), NULL), FL_OK);
  memset(fl__model_params(b), 0, fl__model_num_params(b) * sizeof(float));
  return b;
}

Test(sim_fetch, a_signed_version_loads) {
  fixture f = make(0);
  fl_model *got = blank_like(f.m);
  cr_assert_eq(sim_fetch_check(f.wire, f.len, f.pub, MODEL_ID, VERSION, got), FL_OK);
  cr_assert_eq(memcmp(fl__model_params(got), fl__model_params(f.m),
                      fl__model_num_params(f.m) * sizeof(float)), 0);
  fl__model_free(got);
  release(&f);
}

Test(sim_fetch, another_key_is_refused) {
  fixture f = make(0);
  fl_key *other;
  uint8_t other_pub[FL_PUBKEY_LEN];
  cr_assert_eq(fl__key_generate(&other), FL_OK);
  cr_assert_eq(fl__key_public(other, other_pub), FL_OK);
  fl_model *got = blank_like(f.m);
  cr_assert_eq(sim_fetch_check(f.wire, f.len, other_pub, MODEL_ID, VERSION, got), FL_E_BADSIG);
  fl__key_free(other);
  fl__model_free(got);
  release(&f);
}

Test(sim_fetch, a_damaged_signature_is_refused) {
  fixture f = make(0);
  /* One bit of the signature, everything else as published. */
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(NULL, f.len, f.wire);
  cr_assert_not_null(mv);
  mv->signature.data[10] ^= 0x01;
  cr_assert_eq(fl__v1__model_version__pack(mv, f.wire), f.len);
  fl__v1__model_version__free_unpacked(mv, NULL);
  fl_model *got = blank_like(f.m);
  cr_assert_eq(sim_fetch_check(f.wire, f.len, f.pub, MODEL_ID, VERSION, got), FL_E_BADSIG);
  fl__model_free(got);
  release(&f);
}

Test(sim_fetch, weights_that_do_not_match_the_signed_digest_are_refused) {
  fixture f = make(1);
  fl_model *got = blank_like(f.m);
  cr_assert_eq(sim_fetch_check(f.wire, f.len, f.pub, MODEL_ID, VERSION, got), FL_E_BADHASH);
  fl__model_free(got);
  release(&f);
}

Test(sim_fetch, a_signed_version_of_another_number_is_refused) {
  fixture f = make(0);
  fl_model *got = blank_like(f.m);
  cr_assert_eq(sim_fetch_check(f.wire, f.len, f.pub, MODEL_ID, VERSION + 1, got), FL_E_BADHASH);
  cr_assert_eq(sim_fetch_check(f.wire, 5, f.pub, MODEL_ID, VERSION, got), FL_E_PARSE);
  fl__model_free(got);
  release(&f);
}
