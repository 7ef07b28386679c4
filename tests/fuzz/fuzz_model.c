/*
 * Model specs and models from the wire (common/model.c, common/codec_model.c and the
 * client's fl__model_verify). The first byte picks:
 * - spec (even): an fl.v1.ModelSpec; a spec that validates builds a model, which initialises
 *   and runs a forward pass over one zero example, and its proto form converts back to the
 *   same spec;
 * - version (odd): an fl.v1.ModelVersion as a device downloads it: fl__model_verify (the
 *   signature is checked first, so only seeds signed with fuzz_key.pem get further), then the
 *   steps after the signature (spec, model, weights, digest) as fl__model_verify takes them.
 * Models whose weights could not be on the wire (4 bytes a parameter) are not built: their
 * size is bounded by the spec limits, not by the input, and would only measure the allocator.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "codec.h"
#include "digest.h"
#include "fuzz_common.h"
#include "mem.h"

#define MAX_PARAMS ((size_t)1 << 20)

static size_t spec_params(const fl_model_spec *spec) {
  fl_tensor_info *ti = NULL;
  size_t n = 0, total = 0;
  if (fl__layout_new(spec, &ti, &n, NULL) != FL_OK)
    return SIZE_MAX;
  for (size_t i = 0; i < n; i++)
    total += ti[i].count;
  free(ti);
  return total;
}

static void spec_half(const uint8_t *p, size_t n) {
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, n);
  Fl__V1__ModelSpec *ps = fl__v1__model_spec__unpack(&pa, n, p);
  if (ps == NULL)
    return;
  fl_model_spec spec, back;
  if (fl__spec_from_proto(&spec, ps) != FL_OK)
    goto out;
  FZ_ASSERT(fl__spec_validate(&spec) == FL_OK);
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, &spec);
  FZ_ASSERT(fl__spec_from_proto(&back, &st.spec) == FL_OK);
  FZ_ASSERT(back.n_layers == spec.n_layers && back.input_ndim == spec.input_ndim);
  fl_model *m = NULL;
  if (spec_params(&spec) > MAX_PARAMS || fl__model_new(&m, &spec, NULL) != FL_OK)
    goto out;
  fl__model_init(m, 42);
  size_t in = fl__model_input_size(m), outn = fl__model_output_size(m);
  if (in <= MAX_PARAMS && outn <= MAX_PARAMS) {
    float *x = calloc(in, sizeof *x), *y = calloc(outn, sizeof *y);
    if (x == NULL || y == NULL)
      abort();
    int err = fl__model_forward(m, x, 1, y);
    FZ_ASSERT(err == FL_OK || err == FL_E_NOMEM);
    free(x);
    free(y);
  }
  fl__model_free(m);
out:
  fl__v1__model_spec__free_unpacked(ps, NULL);
}

static void version_half(const uint8_t *p, size_t n) {
  fl__loaded_model lm = {0};
  char why[256];
  if (fl__model_verify(p, n, fz_pub(), NULL, NULL, &lm, why, sizeof why) == FL_OK)
    fl__loaded_free(&lm);
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl__protobuf_budget(&pa, &pb, NULL, n);
  Fl__V1__ModelVersion *mv = fl__v1__model_version__unpack(&pa, n, p);
  if (mv == NULL)
    return;
  fl_model_spec spec;
  fl_model *m = NULL;
  if (fl__spec_from_proto(&spec, mv->spec) != FL_OK || spec_params(&spec) > n / 4 + 1 ||
      fl__model_new(&m, &spec, NULL) != FL_OK)
    goto out;
  if (fl__weights_from_proto(m, mv->weights, mv->n_weights) == FL_OK) {
    uint8_t d[FL_SHA256_LEN];
    const float *w = fl__model_params_const(m);
    for (size_t i = 0; i < fl__model_num_params(m); i++)
      FZ_ASSERT(isfinite(w[i]));
    FZ_ASSERT(fl__model_digest(mv->model_id, mv->version, mv->parent_version, &spec, w,
                               fl__model_num_params(m), d) == FL_OK);
  }
  fl__model_free(m);
out:
  fl__v1__model_version__free_unpacked(mv, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_cur c = {data, size};
  if (fz_u8(&c) % 2 == 0)
    spec_half(c.p, c.left);
  else
    version_half(c.p, c.left);
  return 0;
}
