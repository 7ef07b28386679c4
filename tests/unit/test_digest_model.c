/* The model digest: its documented byte layout, ids, spec and parameters covered, a bad
 * spec refused (common/digest.c, docs/SIGNING.md). */
#include <criterion/criterion.h>
#include <string.h>

#include "digest.h"
#include "digest_layout.h"
#include "fl/err.h"

static void make_spec(fl_model_spec *s) {
  memset(s, 0, sizeof *s);
  s->input_ndim = 3;
  s->input_shape[0] = 1;
  s->input_shape[1] = 28;
  s->input_shape[2] = 28;
  s->n_layers = 3;
  s->layers[0] = (fl_layer_spec){FL_LAYER_CONV2D, 0, 6, 5, 1, 0};
  s->layers[1] = (fl_layer_spec){FL_LAYER_RELU, 0, 0, 0, 0, 0};
  s->layers[2] = (fl_layer_spec){FL_LAYER_DENSE, 10, 0, 0, 0, 0};
  s->loss = FL_LOSS_SOFTMAX_CE;
}

Test(digest, model_layout_is_as_documented) {
  fl_model_spec s;
  make_spec(&s);
  float p[3] = {1.0f, -2.5f, 0.125f};
  uint8_t got[32], want[32];
  cr_assert_eq(fl__model_digest(4, 9, 8, &s, p, 3, got), FL_OK);
  buf b = {.n = 0};
  put(&b, "fl.v1.model", 12);
  put_u64(&b, 4);
  put_u64(&b, 9);
  put_u64(&b, 8);
  put_u32(&b, 3);
  put_u32(&b, 1);
  put_u32(&b, 28);
  put_u32(&b, 28);
  put_u32(&b, 3);
  const uint32_t layers[3][6] = {{2, 0, 6, 5, 1, 0}, {5, 0, 0, 0, 0, 0}, {1, 10, 0, 0, 0, 0}};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 6; j++)
      put_u32(&b, layers[i][j]);
  put_u32(&b, 1);
  put_u64(&b, 3);
  for (int i = 0; i < 3; i++)
    put_u32(&b, bits(p[i]));
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
}

Test(digest, model_covers_ids_spec_and_params) {
  enum { N = 5000 }; /* more than one staging chunk */
  static float p[N];
  for (int i = 0; i < N; i++)
    p[i] = (float)i * 0.001f;
  fl_model_spec s;
  make_spec(&s);
  uint8_t base[32], d[32];
  cr_assert_eq(fl__model_digest(4, 9, 8, &s, p, N, base), FL_OK);
  cr_assert_eq(fl__model_digest(5, 9, 8, &s, p, N, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "model_id");
  cr_assert_eq(fl__model_digest(4, 10, 8, &s, p, N, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "version");
  cr_assert_eq(fl__model_digest(4, 9, 7, &s, p, N, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "parent");
  cr_assert_eq(fl__model_digest(4, 9, 8, &s, p, N - 1, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "n_params");
  /* Every parameter, including those in the last partial chunk. */
  for (int i = 0; i < N; i += 997) {
    float old = p[i];
    p[i] = -p[i] - 1.0f;
    cr_assert_eq(fl__model_digest(4, 9, 8, &s, p, N, d), FL_OK);
    cr_assert(memcmp(base, d, 32) != 0, "param %d", i);
    p[i] = old;
  }
  p[N - 1] = 1.0f;
  cr_assert_eq(fl__model_digest(4, 9, 8, &s, p, N, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "last param");
  p[N - 1] = (float)(N - 1) * 0.001f;
  /* Every spec field. */
  for (int f = 0; f < 9; f++) {
    fl_model_spec m;
    make_spec(&m);
    switch (f) {
      case 0:
        m.input_ndim = 1;
        break;
      case 1:
        m.input_shape[2] = 27;
        break;
      case 2:
        m.n_layers = 2;
        break;
      case 3:
        m.layers[2].type = FL_LAYER_CONV2D;
        break;
      case 4:
        m.layers[2].units = 11;
        break;
      case 5:
        m.layers[0].out_channels = 7;
        break;
      case 6:
        m.layers[0].kernel = 3;
        break;
      case 7:
        m.layers[0].stride = 2;
        m.layers[0].padding = 1;
        break;
      case 8:
        m.loss = FL_LOSS_MSE;
        break;
    }
    cr_assert_eq(fl__model_digest(4, 9, 8, &m, p, N, d), FL_OK);
    cr_assert(memcmp(base, d, 32) != 0, "spec field %d", f);
  }
  fl_model_spec m;
  make_spec(&m);
  m.layers[0].padding = 2;
  cr_assert_eq(fl__model_digest(4, 9, 8, &m, p, N, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "padding");
  cr_assert_eq(fl__model_digest(4, 9, 8, &s, p, N, d), FL_OK);
  cr_assert_arr_eq(base, d, 32);
}

Test(digest, model_refuses_bad_spec) {
  fl_model_spec s;
  make_spec(&s);
  uint8_t d[32];
  s.input_ndim = 4;
  cr_assert_eq(fl__model_digest(1, 1, 0, &s, NULL, 0, d), FL_E_INVAL);
  make_spec(&s);
  s.n_layers = FL_MAX_LAYERS + 1;
  cr_assert_eq(fl__model_digest(1, 1, 0, &s, NULL, 0, d), FL_E_INVAL);
  make_spec(&s);
  cr_assert_eq(fl__model_digest(1, 1, 0, &s, NULL, 3, d), FL_E_INVAL);
}
