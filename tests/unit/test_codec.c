/* Update encodings: float16 conversion, round trips with error bounds, strict validation, fold. */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fl/err.h"
#include "rng.h"

#define ENC_F32 FL__V1__ENCODING__ENCODING_FLOAT32
#define ENC_F16 FL__V1__ENCODING__ENCODING_FLOAT16
#define ENC_I8 FL__V1__ENCODING__ENCODING_INT8
#define ENC_TOPK FL__V1__ENCODING__ENCODING_TOPK

static float bits_to_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* ---- float16 ------------------------------------------------------------------------------- */

Test(codec, f16_known_values) {
  cr_assert_eq(fl__f32_to_f16(1.0f), 0x3c00);
  cr_assert_eq(fl__f32_to_f16(-2.0f), 0xc000);
  cr_assert_eq(fl__f32_to_f16(0.0f), 0x0000);
  cr_assert_eq(fl__f32_to_f16(-0.0f), 0x8000);
  cr_assert_eq(fl__f32_to_f16(65504.0f), 0x7bff);
  cr_assert_eq(fl__f32_to_f16(65519.99f), 0x7bff);
  cr_assert_eq(fl__f32_to_f16(65520.0f), 0x7c00, "halfway above the max rounds to inf");
  cr_assert_eq(fl__f32_to_f16(1e10f), 0x7c00);
  cr_assert_eq(fl__f32_to_f16(INFINITY), 0x7c00);
  cr_assert_eq(fl__f32_to_f16(-INFINITY), 0xfc00);
  uint16_t n = fl__f32_to_f16(NAN);
  cr_assert_eq(n & 0x7c00, 0x7c00);
  cr_assert_neq(n & 0x3ff, 0);
  cr_assert_eq(fl__f32_to_f16(0x1p-14f), 0x0400, "smallest normal");
  cr_assert_eq(fl__f32_to_f16(0x1p-24f), 0x0001, "smallest subnormal");
  cr_assert_eq(fl__f32_to_f16(0x1p-25f), 0x0000, "tie to even: zero");
  cr_assert_eq(fl__f32_to_f16(0x1.0002p-25f), 0x0001, "above the tie");
  cr_assert_eq(fl__f32_to_f16(0x1.8p-24f), 0x0002, "1.5 units: tie to even 2");
  cr_assert_eq(fl__f32_to_f16(0x1.4p-23f), 0x0002, "2.5 units: tie to even 2");
  cr_assert_eq(fl__f32_to_f16(0x1.ff8p-15f), 0x03ff, "largest subnormal");
  cr_assert_eq(fl__f32_to_f16(0x1.ffcp-15f), 0x0400, "subnormal rounding carries to normal");
  cr_assert_eq(fl__f32_to_f16(1.0f + 0x1p-11f), 0x3c00, "tie to even (down)");
  cr_assert_eq(fl__f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02, "tie to even (up)");
  cr_assert_eq(fl__f32_to_f16(1.0f + 0x1.2p-11f), 0x3c01);
  cr_assert_eq(fl__f16_to_f32(0x3555), 0x1.554p-2f);
  cr_assert_eq(fl__f16_to_f32(0x0001), 0x1p-24f);
  cr_assert_eq(fl__f16_to_f32(0x03ff), 0x1.ff8p-15f);
  cr_assert(isinf(fl__f16_to_f32(0xfc00)) && fl__f16_to_f32(0xfc00) < 0);
  cr_assert(isnan(fl__f16_to_f32(0x7e00)));
}

Test(codec, f16_every_half_round_trips) {
  for (uint32_t h = 0; h < 65536; h++) {
    float f = fl__f16_to_f32((uint16_t)h);
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
      cr_assert(isnan(f));
      continue;
    }
    cr_assert_eq(fl__f32_to_f16(f), h, "half %04x", h);
  }
}

/* Nearest-even check against the neighbours, for floats all over the half range. */
Test(codec, f16_rounds_to_nearest) {
  fl_rng r;
  fl__rng_seed(&r, 8);
  for (int i = 0; i < 200000; i++) {
    /* Exponents from 2^-26 to 2^16: subnormals, normals and overflow. */
    uint32_t e = 101 + (uint32_t)fl__rng_below(&r, 42);
    uint32_t u =
        (uint32_t)fl__rng_below(&r, 2) << 31 | e << 23 | (uint32_t)fl__rng_below(&r, 1u << 23);
    float f = bits_to_f(u);
    uint16_t h = fl__f32_to_f16(f);
    double v = fl__f16_to_f32(h);
    if (isinf(v)) {
      cr_assert_geq(fabs((double)f), 65520.0, "%a", (double)f);
      continue;
    }
    double err = fabs(v - f);
    uint16_t mag = h & 0x7fff, sign = h & 0x8000;
    if (mag < 0x7bff) {
      double up = fl__f16_to_f32((uint16_t)(sign | (mag + 1)));
      cr_assert_leq(err, fabs(up - f), "%a -> %04x", (double)f, h);
    }
    if (mag > 0) {
      double down = fl__f16_to_f32((uint16_t)(sign | (mag - 1)));
      cr_assert_leq(err, fabs(down - f), "%a -> %04x", (double)f, h);
    }
    if (fabs((double)f) >= 0x1p-14)
      cr_assert_leq(err / fabs((double)f), 0x1p-11, "%a", (double)f);
  }
}

/* ---- round trips --------------------------------------------------------------------------- */

enum { N = 1000 };
static const uint32_t SHAPE[2] = {10, 100};

static void random_vector(float *x, size_t n, uint64_t seed) {
  fl_rng r;
  fl__rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++)
    x[i] = (float)(fl__rng_normal(&r) * 0.01);
}

static void encode(Fl__V1__Tensor *t, const float *x, int enc, float frac) {
  fl__v1__tensor__init(t);
  cr_assert_eq(fl__tensor_encode(t, x, N, SHAPE, 2, enc, frac, NULL), FL_OK);
  cr_assert_eq(t->count, N);
  cr_assert_eq(t->n_shape, 2);
  cr_assert_eq(t->shape[0], 10);
  cr_assert_eq(t->shape[1], 100);
  cr_assert_eq(fl__tensor_check(t, N), FL_OK);
}

Test(codec, float32_round_trip_exact) {
  float x[N], y[N];
  random_vector(x, N, 1);
  Fl__V1__Tensor t;
  encode(&t, x, ENC_F32, 0);
  cr_assert_eq(t.data.len, 4 * N);
  cr_assert_eq(fl__tensor_decode(&t, y, N), FL_OK);
  cr_assert(memcmp(x, y, sizeof x) == 0);
  fl__tensor_release(&t, NULL);
}

Test(codec, float16_round_trip_relative_error) {
  float x[N], y[N];
  random_vector(x, N, 2);
  x[0] = 1000.0f;
  x[1] = -0x1p-13f;
  Fl__V1__Tensor t;
  encode(&t, x, ENC_F16, 0);
  cr_assert_eq(t.data.len, 2 * N);
  cr_assert_eq(fl__tensor_decode(&t, y, N), FL_OK);
  for (int i = 0; i < N; i++) {
    if (fabsf(x[i]) >= 0x1p-14f)
      cr_assert_leq(fabs((double)y[i] - x[i]) / fabs((double)x[i]), 0x1p-11, "%d", i);
    else /* subnormal halves: absolute error within half a unit of 2^-24 */
      cr_assert_leq(fabs((double)y[i] - x[i]), 0x1p-25, "%d", i);
  }
  fl__tensor_release(&t, NULL);
}

Test(codec, int8_round_trip_absolute_error) {
  float x[N], y[N];
  random_vector(x, N, 3);
  Fl__V1__Tensor t;
  encode(&t, x, ENC_I8, 0);
  cr_assert_eq(t.data.len, N);
  float maxabs = 0;
  for (int i = 0; i < N; i++)
    maxabs = fmaxf(maxabs, fabsf(x[i]));
  cr_assert_float_eq(t.scale, maxabs / 127.0f, 1e-12);
  cr_assert_eq(fl__tensor_decode(&t, y, N), FL_OK);
  for (int i = 0; i < N; i++)
    cr_assert_leq(fabs((double)y[i] - x[i]), t.scale / 2.0 * (1 + 1e-5), "%d", i);
  fl__tensor_release(&t, NULL);
}

Test(codec, int8_all_zero_has_zero_scale) {
  float x[N] = {0}, y[N];
  Fl__V1__Tensor t;
  encode(&t, x, ENC_I8, 0);
  cr_assert_eq(t.scale, 0.0f);
  cr_assert_eq(fl__tensor_decode(&t, y, N), FL_OK);
  for (int i = 0; i < N; i++)
    cr_assert_eq(y[i], 0.0f);
  fl__tensor_release(&t, NULL);
}

static uint32_t idx_at(const Fl__V1__Tensor *t, size_t j) {
  const uint8_t *p = t->indices.data + 4 * j;
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

Test(codec, topk_keeps_exactly_the_largest) {
  float x[N], y[N];
  random_vector(x, N, 4);
  Fl__V1__Tensor t;
  encode(&t, x, ENC_TOPK, 0.1f);
  size_t k = t.data.len / 4;
  cr_assert_eq(k, 100);
  cr_assert_eq(t.indices.len, 4 * k);
  for (size_t j = 1; j < k; j++)
    cr_assert_lt(idx_at(&t, j - 1), idx_at(&t, j), "indices ascending");
  cr_assert_eq(fl__tensor_decode(&t, y, N), FL_OK);
  float min_kept = INFINITY, max_dropped = 0;
  size_t kept = 0;
  for (int i = 0; i < N; i++) {
    if (y[i] != 0.0f) {
      cr_assert_eq(y[i], x[i], "kept values are exact");
      min_kept = fminf(min_kept, fabsf(x[i]));
      kept++;
    } else {
      max_dropped = fmaxf(max_dropped, fabsf(x[i]));
    }
  }
  cr_assert_eq(kept, k);
  cr_assert_gt(min_kept, max_dropped);
  fl__tensor_release(&t, NULL);
}

Test(codec, topk_ties_take_lowest_indices) {
  float x[N];
  for (int i = 0; i < N; i++)
    x[i] = (i % 7 == 3) ? -2.0f : 1.0f;
  x[999] = 5.0f;
  Fl__V1__Tensor t;
  encode(&t, x, ENC_TOPK, 0.01f);
  cr_assert_eq(t.data.len / 4, 10);
  /* 5.0 at 999, then the nine lowest indices holding -2: 3, 10, 17, ... */
  for (size_t j = 0; j < 9; j++)
    cr_assert_eq(idx_at(&t, j), 3 + 7 * j);
  cr_assert_eq(idx_at(&t, 9), 999);
  fl__tensor_release(&t, NULL);
  float z[N] = {0};
  encode(&t, z, ENC_TOPK, 0.005f);
  cr_assert_eq(t.data.len / 4, 5);
  for (size_t j = 0; j < 5; j++)
    cr_assert_eq(idx_at(&t, j), j);
  fl__tensor_release(&t, NULL);
}

/* Reference: sort all indices by (|x| descending, index ascending), keep the first k. */
static const float *ref_x;
static int by_magnitude(const void *pa, const void *pb) {
  uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
  float ma = fabsf(ref_x[a]), mb = fabsf(ref_x[b]);
  if (ma != mb)
    return ma > mb ? -1 : 1;
  return a < b ? -1 : (a > b);
}
static int by_value(const void *pa, const void *pb) {
  uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
  return a < b ? -1 : (a > b);
}

Test(codec, topk_selection_matches_sort_on_many_inputs) {
  enum { M = 777 };
  static float x[M];
  static uint32_t order[M];
  fl_rng r;
  fl__rng_seed(&r, 13);
  for (int trial = 0; trial < 300; trial++) {
    for (int i = 0; i < M; i++) {
      /* Few distinct magnitudes in some trials to stress ties; sorted input in others. */
      if (trial % 3 == 0)
        x[i] = (float)fl__rng_below(&r, 5) - 2.0f;
      else if (trial % 3 == 1)
        x[i] = (float)i * (trial % 2 ? 1.0f : -1.0f);
      else
        x[i] = (float)fl__rng_normal(&r);
      order[i] = (uint32_t)i;
    }
    float frac = (float)(0.0005 + fl__rng_uniform(&r));
    frac = frac > 1.0f ? 1.0f : frac;
    size_t k = fl__topk_count(frac, M);
    ref_x = x;
    qsort(order, M, sizeof *order, by_magnitude);
    qsort(order, k, sizeof *order, by_value);
    Fl__V1__Tensor t;
    fl__v1__tensor__init(&t);
    cr_assert_eq(fl__tensor_encode(&t, x, M, NULL, 0, ENC_TOPK, frac, NULL), FL_OK);
    cr_assert_eq(t.data.len / 4, k, "trial %d", trial);
    for (size_t j = 0; j < k; j++) {
      cr_assert_eq(idx_at(&t, j), order[j], "trial %d, entry %zu", trial, j);
      float v;
      memcpy(&v, t.data.data + 4 * j, 4);
      cr_assert_eq(v, x[order[j]]);
    }
    fl__tensor_release(&t, NULL);
  }
}

Test(codec, topk_count_rule) {
  cr_assert_eq(fl__topk_count(0.1f, 1000), 100);
  cr_assert_eq(fl__topk_count(0.013f, 1000), 13);
  cr_assert_eq(fl__topk_count(0.001f, 10), 1);
  cr_assert_eq(fl__topk_count(0.5f, 3), 2);
  cr_assert_eq(fl__topk_count(1.0f, 7), 7);
  cr_assert_eq(fl__topk_count(0.3f, 0), 0);
  cr_assert_eq(fl__topk_count(0.0f, 10), 0);
}

/* ---- malformed tensors --------------------------------------------------------------------- */

/* A tensor over caller storage, so each case can break one thing. */
typedef struct raw {
  Fl__V1__Tensor t;
  uint32_t shape[1];
  uint8_t data[64];
  uint8_t idx[64];
} raw;

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}
static void put_f32(uint8_t *p, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  put_u32(p, u);
}

/* 8 elements; top-k keeps 3 at 1, 4, 6. */
static void make_raw(raw *r, int enc) {
  memset(r, 0, sizeof *r);
  fl__v1__tensor__init(&r->t);
  r->shape[0] = 8;
  r->t.shape = r->shape;
  r->t.n_shape = 1;
  r->t.count = 8;
  r->t.encoding = enc;
  r->t.data.data = r->data;
  if (enc == ENC_F32) {
    for (int i = 0; i < 8; i++)
      put_f32(r->data + 4 * i, (float)i - 3.5f);
    r->t.data.len = 32;
  } else if (enc == ENC_F16) {
    for (int i = 0; i < 8; i++) {
      uint16_t h = fl__f32_to_f16((float)i);
      r->data[2 * i] = (uint8_t)h;
      r->data[2 * i + 1] = (uint8_t)(h >> 8);
    }
    r->t.data.len = 16;
  } else if (enc == ENC_I8) {
    for (int i = 0; i < 8; i++)
      r->data[i] = (uint8_t)(int8_t)(i * 30 - 100);
    r->t.data.len = 8;
    r->t.scale = 0.01f;
  } else {
    const uint32_t at[3] = {1, 4, 6};
    for (int j = 0; j < 3; j++) {
      put_f32(r->data + 4 * j, 1.5f * (float)(j + 1));
      put_u32(r->idx + 4 * j, at[j]);
    }
    r->t.data.len = 12;
    r->t.indices.data = r->idx;
    r->t.indices.len = 12;
  }
}

/* Check and decode must both refuse, and decode must leave the output alone. */
static void expect_refused(raw *r, int want, const char *what) {
  float out[16];
  for (int i = 0; i < 16; i++)
    out[i] = 42.0f;
  cr_assert_eq(fl__tensor_check(&r->t, 8), want, "%s: check", what);
  cr_assert_eq(fl__tensor_decode(&r->t, out, 8), want, "%s: decode", what);
  for (int i = 0; i < 16; i++)
    cr_assert_eq(out[i], 42.0f, "%s: output touched", what);
}

Test(codec, well_formed_raw_tensors_pass) {
  const int encs[4] = {ENC_F32, ENC_F16, ENC_I8, ENC_TOPK};
  for (int e = 0; e < 4; e++) {
    raw r;
    make_raw(&r, encs[e]);
    float out[8];
    cr_assert_eq(fl__tensor_decode(&r.t, out, 8), FL_OK, "encoding %d", encs[e]);
  }
  raw r;
  make_raw(&r, ENC_TOPK);
  float out[8];
  cr_assert_eq(fl__tensor_decode(&r.t, out, 8), FL_OK);
  const float want[8] = {0, 1.5f, 0, 0, 3.0f, 0, 4.5f, 0};
  cr_assert_arr_eq(out, want, sizeof want);
}

Test(codec, wrong_sizes_refused) {
  const int encs[4] = {ENC_F32, ENC_F16, ENC_I8, ENC_TOPK};
  for (int e = 0; e < 4; e++) {
    raw r;
    make_raw(&r, encs[e]);
    r.t.data.len -= 1;
    expect_refused(&r, FL_E_PARSE, "data one byte short");
    make_raw(&r, encs[e]);
    r.t.data.len += encs[e] == ENC_TOPK ? 4 : 1;
    expect_refused(&r, FL_E_PARSE, "data too long");
    make_raw(&r, encs[e]);
    r.t.count = 9;
    r.shape[0] = 9;
    expect_refused(&r, FL_E_SHAPE, "count differs from expected");
    make_raw(&r, encs[e]);
    r.shape[0] = 4;
    expect_refused(&r, FL_E_SHAPE, "shape product differs from count");
  }
  raw r;
  make_raw(&r, ENC_F32);
  r.t.indices.data = r.idx;
  r.t.indices.len = 4;
  expect_refused(&r, FL_E_PARSE, "indices on a dense tensor");
  make_raw(&r, ENC_TOPK);
  r.t.indices.len = 8;
  expect_refused(&r, FL_E_PARSE, "fewer indices than values");
  make_raw(&r, ENC_TOPK);
  for (int j = 0; j < 9; j++) {
    put_f32(r.data + 4 * j, 1.0f);
    put_u32(r.idx + 4 * j, (uint32_t)j);
  }
  r.t.data.len = r.t.indices.len = 36;
  expect_refused(&r, FL_E_PARSE, "more entries than elements");
  make_raw(&r, ENC_F32);
  r.t.data.data = NULL;
  expect_refused(&r, FL_E_PARSE, "missing data");
}

Test(codec, bad_indices_refused) {
  raw r;
  make_raw(&r, ENC_TOPK);
  put_u32(r.idx + 8, 8);
  expect_refused(&r, FL_E_PARSE, "index == count");
  make_raw(&r, ENC_TOPK);
  put_u32(r.idx + 8, 0xffffffffu);
  expect_refused(&r, FL_E_PARSE, "index far out of range");
  make_raw(&r, ENC_TOPK);
  put_u32(r.idx + 4, 1);
  expect_refused(&r, FL_E_PARSE, "repeated index");
  make_raw(&r, ENC_TOPK);
  put_u32(r.idx + 0, 5);
  expect_refused(&r, FL_E_PARSE, "descending indices");
}

Test(codec, nonfinite_values_refused) {
  const float bad[3] = {NAN, INFINITY, -INFINITY};
  for (int b = 0; b < 3; b++) {
    raw r;
    make_raw(&r, ENC_F32);
    put_f32(r.data + 4 * 5, bad[b]);
    expect_refused(&r, FL_E_NONFINITE, "float32");
    make_raw(&r, ENC_F16);
    uint16_t h = fl__f32_to_f16(bad[b]);
    r.data[14] = (uint8_t)h;
    r.data[15] = (uint8_t)(h >> 8);
    expect_refused(&r, FL_E_NONFINITE, "float16");
    make_raw(&r, ENC_TOPK);
    put_f32(r.data + 4, bad[b]);
    expect_refused(&r, FL_E_NONFINITE, "top-k value");
    make_raw(&r, ENC_I8);
    r.t.scale = bad[b];
    expect_refused(&r, FL_E_NONFINITE, "int8 scale");
  }
  raw r;
  make_raw(&r, ENC_I8);
  r.t.scale = FLT_MAX;
  expect_refused(&r, FL_E_NONFINITE, "scale that overflows when dequantised");
  make_raw(&r, ENC_I8);
  r.t.scale = -0.5f;
  expect_refused(&r, FL_E_PARSE, "negative scale");
}

Test(codec, unknown_encoding_refused) {
  raw r;
  make_raw(&r, ENC_F32);
  r.t.encoding = FL__V1__ENCODING__ENCODING_UNSPECIFIED;
  expect_refused(&r, FL_E_PARSE, "unspecified");
  r.t.encoding = 9;
  expect_refused(&r, FL_E_PARSE, "unknown");
  cr_assert_eq(fl__tensor_check(NULL, 8), FL_E_INVAL);
}

/* ---- encode errors ------------------------------------------------------------------------- */

Test(codec, encode_refusals_leave_tensor_untouched) {
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const uint32_t sh[2] = {2, 3};
  Fl__V1__Tensor t;
  fl__v1__tensor__init(&t);
  cr_assert_eq(fl__tensor_encode(&t, x, 8, sh, 2, ENC_F32, 0, NULL), FL_E_SHAPE);
  cr_assert_eq(fl__tensor_encode(&t, x, 8, NULL, 0, 0, 0, NULL), FL_E_INVAL);
  cr_assert_eq(fl__tensor_encode(&t, x, 8, NULL, 0, ENC_TOPK, 0.0f, NULL), FL_E_INVAL);
  cr_assert_eq(fl__tensor_encode(&t, x, 8, NULL, 0, ENC_TOPK, 1.5f, NULL), FL_E_INVAL);
  cr_assert_eq(fl__tensor_encode(&t, x, 8, NULL, 0, ENC_TOPK, NAN, NULL), FL_E_INVAL);
  x[3] = NAN;
  cr_assert_eq(fl__tensor_encode(&t, x, 8, NULL, 0, ENC_I8, 0, NULL), FL_E_NONFINITE);
  x[3] = INFINITY;
  cr_assert_eq(fl__tensor_encode(&t, x, 8, NULL, 0, ENC_F16, 0, NULL), FL_E_NONFINITE);
  cr_assert_eq(t.count, 0);
  cr_assert_null(t.data.data);
  cr_assert_null(t.shape);
}

/* Fails every allocation after the first `budget`; counts live blocks to find leaks. */
typedef struct budget {
  int left, live;
} budget;
static void *b_malloc(void *ctx, size_t n) {
  budget *b = ctx;
  if (b->left == 0)
    return NULL;
  b->left--;
  b->live++;
  return malloc(n);
}
static void *b_realloc(void *ctx, void *p, size_t n) {
  (void)ctx, (void)p, (void)n;
  return NULL;
}
static void b_free(void *ctx, void *p) {
  budget *b = ctx;
  if (p != NULL)
    b->live--;
  free(p);
}

Test(codec, encode_allocation_failures) {
  float x[N];
  random_vector(x, N, 6);
  const int encs[4] = {ENC_F32, ENC_F16, ENC_I8, ENC_TOPK};
  for (int e = 0; e < 4; e++) {
    for (int n = 0;; n++) {
      budget b = {n, 0};
      fl_allocator a = {b_malloc, b_realloc, b_free, &b};
      Fl__V1__Tensor t;
      fl__v1__tensor__init(&t);
      int err = fl__tensor_encode(&t, x, N, SHAPE, 2, encs[e], 0.2f, &a);
      if (err == FL_OK) {
        fl__tensor_release(&t, &a);
        cr_assert_eq(b.live, 0);
        break;
      }
      cr_assert_eq(err, FL_E_NOMEM);
      cr_assert_eq(b.live, 0, "leak after failing allocation %d", n);
      cr_assert_null(t.data.data);
      cr_assert_lt(n, 10);
    }
  }
}

/* ---- fold and norm ------------------------------------------------------------------------- */

static void fold_matches_decode_axpy(Fl__V1__Tensor *t, const char *what) {
  float acc[N], ref[N], dec[N];
  random_vector(acc, N, 77);
  memcpy(ref, acc, sizeof acc);
  const float w = 0.37f;
  cr_assert_eq(fl__tensor_decode(t, dec, N), FL_OK);
  for (int i = 0; i < N; i++)
    ref[i] += w * dec[i];
  fl__tensor_fold(t, w, acc);
  double sq = 0;
  for (int i = 0; i < N; i++) {
    cr_assert_float_eq(acc[i], ref[i], 1e-6 * (fabsf(ref[i]) + 1e-3f), "%s: %d", what, i);
    sq += (double)dec[i] * dec[i];
  }
  cr_assert_float_eq(fl__tensor_sqnorm(t), sq, sq * 1e-12, "%s: sqnorm", what);
}

Test(codec, fold_equals_decode_plus_axpy) {
  float x[N];
  random_vector(x, N, 9);
  const int encs[4] = {ENC_F32, ENC_F16, ENC_I8, ENC_TOPK};
  const char *names[4] = {"float32", "float16", "int8", "topk"};
  for (int e = 0; e < 4; e++) {
    Fl__V1__Tensor t;
    encode(&t, x, encs[e], 0.05f);
    fold_matches_decode_axpy(&t, names[e]);
    fl__tensor_release(&t, NULL);
  }
}

Test(codec, fold_float32_unaligned_data) {
  float x[N];
  random_vector(x, N, 10);
  Fl__V1__Tensor t;
  encode(&t, x, ENC_F32, 0);
  /* Protobuf may hand over bytes at any address: shift them by one. */
  static uint8_t shifted[4 * N + 1];
  memcpy(shifted + 1, t.data.data, 4 * N);
  uint8_t *own = t.data.data;
  t.data.data = shifted + 1;
  cr_assert_eq(fl__tensor_check(&t, N), FL_OK);
  fold_matches_decode_axpy(&t, "unaligned");
  t.data.data = own;
  fl__tensor_release(&t, NULL);
}

/* ---- model layouts: spec, weights, deltas -------------------------------------------------- */

/* conv 1->2 3x3 on 1x6x6, relu, flatten, dense 3, relu, dense 2: tensors of rank 4, 1, 2, 1. */
static void small_spec(fl_model_spec *s) {
  memset(s, 0, sizeof *s);
  s->input_ndim = 3;
  s->input_shape[0] = 1;
  s->input_shape[1] = 6;
  s->input_shape[2] = 6;
  s->layers[0] = (fl_layer_spec){FL_LAYER_CONV2D, 0, 2, 3, 1, 0};
  s->layers[1] = (fl_layer_spec){FL_LAYER_RELU, 0, 0, 0, 0, 0};
  s->layers[2] = (fl_layer_spec){FL_LAYER_FLATTEN, 0, 0, 0, 0, 0};
  s->layers[3] = (fl_layer_spec){FL_LAYER_DENSE, 3, 0, 0, 0, 0};
  s->layers[4] = (fl_layer_spec){FL_LAYER_RELU, 0, 0, 0, 0, 0};
  s->layers[5] = (fl_layer_spec){FL_LAYER_DENSE, 2, 0, 0, 0, 0};
  s->n_layers = 6;
  s->loss = FL_LOSS_SOFTMAX_CE;
}

static fl_model *small_model(uint64_t seed) {
  fl_model_spec s;
  small_spec(&s);
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &s, NULL), FL_OK);
  fl__model_init(m, seed);
  return m;
}

Test(codec, spec_proto_round_trip) {
  fl_model_spec s, back;
  small_spec(&s);
  s.layers[0].padding = 1;
  s.layers[0].stride = 2;
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, &s);
  cr_assert_eq(st.spec.n_input_shape, 3);
  cr_assert_eq(st.spec.n_layers, 6);
  /* Through the wire format too, as a device would see it. */
  size_t len = fl__v1__model_spec__get_packed_size(&st.spec);
  uint8_t *buf = malloc(len);
  fl__v1__model_spec__pack(&st.spec, buf);
  Fl__V1__ModelSpec *p = fl__v1__model_spec__unpack(NULL, len, buf);
  cr_assert_not_null(p);
  memset(&back, 0xab, sizeof back);
  cr_assert_eq(fl__spec_from_proto(&back, p), FL_OK);
  cr_assert_eq(back.input_ndim, 3);
  cr_assert_arr_eq(back.input_shape, s.input_shape, sizeof s.input_shape);
  cr_assert_eq(back.n_layers, s.n_layers);
  cr_assert_arr_eq(back.layers, s.layers, s.n_layers * sizeof s.layers[0]);
  cr_assert_eq(back.loss, s.loss);
  fl__v1__model_spec__free_unpacked(p, NULL);
  free(buf);
}

Test(codec, spec_from_proto_refusals) {
  fl_model_spec s, out;
  small_spec(&s);
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, &s);
  memset(&out, 0x5a, sizeof out);
  fl_model_spec before = out;
  st.spec.n_input_shape = 2;
  cr_assert_eq(fl__spec_from_proto(&out, &st.spec), FL_E_SHAPE);
  st.spec.n_input_shape = 3;
  st.spec.n_layers = FL_MAX_LAYERS + 1;
  cr_assert_eq(fl__spec_from_proto(&out, &st.spec), FL_E_TOOBIG);
  st.spec.n_layers = 6;
  st.layers[3].units = 0;
  cr_assert_neq(fl__spec_from_proto(&out, &st.spec), FL_OK, "fl__spec_validate runs");
  st.layers[3].units = 3;
  st.layer_ptrs[2] = NULL;
  cr_assert_eq(fl__spec_from_proto(&out, &st.spec), FL_E_PARSE);
  cr_assert(memcmp(&out, &before, sizeof out) == 0, "*out untouched on error");
  cr_assert_eq(fl__spec_from_proto(&out, NULL), FL_E_INVAL);
}

Test(codec, layout_matches_model) {
  fl_model *m = small_model(1);
  fl_tensor_info *lay = NULL;
  size_t n = 0;
  cr_assert_eq(fl__layout_new(fl__model_spec(m), &lay, &n, NULL), FL_OK);
  cr_assert_eq(n, fl__model_num_tensors(m));
  cr_assert_eq(n, 6);
  for (size_t i = 0; i < n; i++) {
    fl_tensor_info info;
    fl__model_tensor_info(m, i, &info);
    cr_assert(memcmp(&info, &lay[i], sizeof info) == 0, "tensor %zu", i);
  }
  cr_assert_eq(lay[0].ndim, 4);
  free(lay);
  fl__model_free(m);
}

Test(codec, weights_round_trip_exact) {
  fl_model *m = small_model(42), *m2 = small_model(0);
  Fl__V1__Tensor **ts = NULL;
  size_t n = 0;
  cr_assert_eq(fl__weights_to_proto(m, &ts, &n, NULL), FL_OK);
  cr_assert_eq(n, 6);
  for (size_t i = 0; i < n; i++)
    cr_assert_eq(ts[i]->encoding, ENC_F32);
  cr_assert_eq(fl__weights_from_proto(m2, ts, n), FL_OK);
  size_t np = fl__model_num_params(m);
  cr_assert(memcmp(fl__model_params(m), fl__model_params(m2), np * sizeof(float)) == 0);
  fl__delta_release(ts, n, NULL);
  fl__model_free(m);
  fl__model_free(m2);
}

Test(codec, weights_from_proto_refusals_leave_model_alone) {
  fl_model *m = small_model(42), *m2 = small_model(7);
  size_t np = fl__model_num_params(m2);
  float *before = malloc(np * sizeof(float));
  memcpy(before, fl__model_params(m2), np * sizeof(float));
  Fl__V1__Tensor **ts = NULL;
  size_t n = 0;
  cr_assert_eq(fl__weights_to_proto(m, &ts, &n, NULL), FL_OK);
  cr_assert_eq(fl__weights_from_proto(m2, ts, n - 1), FL_E_SHAPE);
  /* Last tensor broken after the others are fine: nothing may have been written. */
  uint32_t dim = ts[5]->shape[0];
  ts[5]->shape[0] = dim + 1;
  cr_assert_eq(fl__weights_from_proto(m2, ts, n), FL_E_SHAPE);
  ts[5]->shape[0] = dim;
  float nan = NAN;
  uint8_t saved[4];
  memcpy(saved, ts[5]->data.data, 4);
  memcpy(ts[5]->data.data, &nan, 4);
  cr_assert_eq(fl__weights_from_proto(m2, ts, n), FL_E_NONFINITE);
  memcpy(ts[5]->data.data, saved, 4);
  cr_assert(memcmp(before, fl__model_params(m2), np * sizeof(float)) == 0);
  free(before);
  fl__delta_release(ts, n, NULL);
  fl__model_free(m);
  fl__model_free(m2);
}

Test(codec, delta_encode_and_check_every_encoding) {
  fl_model *m = small_model(3);
  size_t np = fl__model_num_params(m);
  float *delta = malloc(np * sizeof(float));
  random_vector(delta, np, 12);
  fl_tensor_info *lay = NULL;
  size_t nl = 0;
  cr_assert_eq(fl__layout_new(fl__model_spec(m), &lay, &nl, NULL), FL_OK);
  const int encs[4] = {ENC_F32, ENC_F16, ENC_I8, ENC_TOPK};
  for (int e = 0; e < 4; e++) {
    Fl__V1__Tensor **ts = NULL;
    size_t n = 0;
    cr_assert_eq(fl__delta_encode(m, delta, encs[e], 0.25f, &ts, &n, NULL), FL_OK);
    cr_assert_eq(n, 6);
    cr_assert_eq(fl__delta_check(fl__model_spec(m), ts, n), FL_OK, "encoding %d", encs[e]);
    cr_assert_eq(fl__delta_check_layout(lay, nl, ts, n), FL_OK);
    /* Folding tensor by tensor rebuilds the delta within the encoding's error. */
    float *acc = calloc(np, sizeof(float));
    for (size_t i = 0; i < n; i++)
      fl__tensor_fold(ts[i], 1.0f, acc + lay[i].offset);
    if (encs[e] == ENC_F32)
      cr_assert(memcmp(acc, delta, np * sizeof(float)) == 0);
    free(acc);
    cr_assert_eq(fl__delta_check(fl__model_spec(m), ts, n - 1), FL_E_SHAPE);
    Fl__V1__Tensor *t = ts[0];
    ts[0] = ts[2]; /* right number, wrong order */
    cr_assert_eq(fl__delta_check(fl__model_spec(m), ts, n), FL_E_SHAPE);
    cr_assert_eq(fl__delta_check_layout(lay, nl, ts, n), FL_E_SHAPE);
    ts[0] = t;
    ts[1]->data.len -= 1;
    cr_assert_eq(fl__delta_check_layout(lay, nl, ts, n), FL_E_PARSE);
    ts[1]->data.len += 1;
    if (encs[e] == ENC_F32) {
      uint8_t keep[4], nan_bytes[4] = {0x00, 0x00, 0xc0, 0x7f};
      memcpy(keep, ts[1]->data.data, 4);
      memcpy(ts[1]->data.data, nan_bytes, 4);
      cr_assert_eq(fl__delta_check_layout(lay, nl, ts, n), FL_E_NONFINITE);
      memcpy(ts[1]->data.data, keep, 4);
    }
    fl__delta_release(ts, n, NULL);
  }
  free(lay);
  free(delta);
  fl__model_free(m);
}

Test(codec, delta_encode_allocation_failures) {
  fl_model *m = small_model(3);
  size_t np = fl__model_num_params(m);
  float *delta = malloc(np * sizeof(float));
  random_vector(delta, np, 12);
  for (int n = 0;; n++) {
    budget b = {n, 0};
    fl_allocator a = {b_malloc, b_realloc, b_free, &b};
    Fl__V1__Tensor **ts = (Fl__V1__Tensor **)1;
    size_t nt = 99;
    int err = fl__delta_encode(m, delta, ENC_TOPK, 0.3f, &ts, &nt, &a);
    if (err == FL_OK) {
      fl__delta_release(ts, nt, &a);
      cr_assert_eq(b.live, 0);
      break;
    }
    cr_assert_eq(err, FL_E_NOMEM);
    cr_assert_eq(b.live, 0, "leak after failing allocation %d", n);
    cr_assert_eq(ts, (Fl__V1__Tensor **)1, "outputs untouched");
    cr_assert_eq(nt, 99);
    cr_assert_lt(n, 40);
  }
  free(delta);
  fl__model_free(m);
}
