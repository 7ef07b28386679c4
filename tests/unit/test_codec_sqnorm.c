/* fl__tensor_check_sqnorm (common/codec.c): the verdicts of fl__tensor_check and the norm of
 * fl__tensor_sqnorm in one pass, for every encoding, with non-finite and extreme values (the
 * float32 finiteness is read from the norm: it must still refuse every inf and NaN). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "codec.h"
#include "fl/err.h"

enum { N = 8 };

typedef struct tensor {
  Fl__V1__Tensor t;
  uint32_t shape[1];
  uint8_t data[4 * N], idx[4 * N];
} tensor;

static void make(tensor *x, Fl__V1__Encoding enc, const float *v) {
  memset(x, 0, sizeof *x);
  fl__v1__tensor__init(&x->t);
  x->shape[0] = N;
  x->t.shape = x->shape;
  x->t.n_shape = 1;
  x->t.count = N;
  x->t.encoding = enc;
  x->t.data.data = x->data;
  if (enc == FL__V1__ENCODING__ENCODING_FLOAT32) {
    memcpy(x->data, v, 4 * N);
    x->t.data.len = 4 * N;
  } else if (enc == FL__V1__ENCODING__ENCODING_FLOAT16) {
    for (int i = 0; i < N; i++) {
      uint16_t h = fl__f32_to_f16(v[i]);
      memcpy(x->data + 2 * i, &h, 2);
    }
    x->t.data.len = 2 * N;
  } else if (enc == FL__V1__ENCODING__ENCODING_INT8) {
    for (int i = 0; i < N; i++)
      x->data[i] = (uint8_t)(int8_t)(i * 20 - 70);
    x->t.data.len = N;
    x->t.scale = 0.5f;
  } else { /* top-k: the first three values at 1, 4, 6 */
    const uint32_t at[3] = {1, 4, 6};
    memcpy(x->data, v, 12);
    memcpy(x->idx, at, 12);
    x->t.data.len = x->t.indices.len = 12;
    x->t.indices.data = x->idx;
  }
}

static void same_as_two_passes(tensor *x, const char *what) {
  double sq = -1;
  int want = fl__tensor_check(&x->t, N);
  cr_assert_eq(fl__tensor_check_sqnorm(&x->t, N, &sq), want, "%s: verdict", what);
  if (want == FL_OK)
    cr_assert_eq(sq, fl__tensor_sqnorm(&x->t), "%s: norm", what);
}

Test(codec_sqnorm, agrees_with_check_and_sqnorm) {
  static const Fl__V1__Encoding encs[] = {
      FL__V1__ENCODING__ENCODING_FLOAT32, FL__V1__ENCODING__ENCODING_FLOAT16,
      FL__V1__ENCODING__ENCODING_INT8, FL__V1__ENCODING__ENCODING_TOPK};
  const float bad[] = {INFINITY, -INFINITY, NAN, -NAN};
  for (size_t e = 0; e < sizeof encs / sizeof encs[0]; e++) {
    float v[N] = {1.5f, -2.0f, 0.0f, -0.0f, 3e-39f, 7.0f, -0.25f, 1e-3f};
    tensor x;
    make(&x, encs[e], v);
    same_as_two_passes(&x, "finite");
    for (int pos = 0; pos < 3; pos++)
      for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        float w[N];
        memcpy(w, v, sizeof w);
        w[pos] = bad[b];
        make(&x, encs[e], w);
        same_as_two_passes(&x, "non-finite");
        if (encs[e] != FL__V1__ENCODING__ENCODING_INT8)
          cr_assert_eq(fl__tensor_check_sqnorm(&x.t, N, &(double){0}), FL_E_NONFINITE);
      }
  }
}

/* The largest floats square to about 1.2e77 in double: finite, so accepted as before. */
Test(codec_sqnorm, largest_floats_are_finite) {
  float v[N];
  for (int i = 0; i < N; i++)
    v[i] = i % 2 ? FLT_MAX : -FLT_MAX;
  tensor x;
  make(&x, FL__V1__ENCODING__ENCODING_FLOAT32, v);
  same_as_two_passes(&x, "FLT_MAX");
  double sq = 0;
  cr_assert_eq(fl__tensor_check_sqnorm(&x.t, N, &sq), FL_OK);
  cr_assert(isfinite(sq) && sq > 1e77);
}

Test(codec_sqnorm, sizes_refused_first) {
  float v[N] = {0};
  tensor x;
  make(&x, FL__V1__ENCODING__ENCODING_FLOAT32, v);
  x.t.data.len -= 4;
  same_as_two_passes(&x, "short data");
  cr_assert_eq(fl__tensor_check_sqnorm(&x.t, N, &(double){0}), FL_E_PARSE);
}

/* A float32 tensor's values at an unaligned address (an upload unpacked in place) fold exactly
 * as the same values aligned, across several of the fold's blocks. */
Test(codec_sqnorm, unaligned_fold_equals_aligned) {
  enum { M = 2500 };
  static uint8_t buf[4 * M + 4];
  static float a1[M], a2[M];
  uint32_t shape[1] = {M};
  for (size_t i = 0; i < M; i++) {
    float v = (float)i * 0.001f - 1.0f;
    memcpy(buf + 4 * i, &v, 4);
    a1[i] = a2[i] = 0.5f;
  }
  Fl__V1__Tensor t = FL__V1__TENSOR__INIT;
  t.encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
  t.count = M;
  t.n_shape = 1;
  t.shape = shape;
  t.data = (ProtobufCBinaryData){4 * M, buf};
  fl__tensor_fold(&t, 0.25f, a1);
  memmove(buf + 1, buf, 4 * M);
  t.data.data = buf + 1;
  fl__tensor_fold(&t, 0.25f, a2);
  for (size_t i = 0; i < M; i++)
    cr_assert_eq(a1[i], a2[i], "element %zu", i);
}
