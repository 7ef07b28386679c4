/*
 * Tensor encodings: float32, float16, int8 with a per-tensor scale, top-k sparse.
 *
 * The receiving side is the coordinator, which must survive anything a device sends: check
 * and decode look at every length, index and value before a single float is written. Fold is
 * the aggregation hot path; it trusts a tensor that has passed fl__tensor_check and streams it
 * straight into the accumulator without a temporary vector.
 *
 * Multi-byte values in `data` and `indices` are little-endian (proto/fl/v1/fleetlearn.proto);
 * on a little-endian host with aligned buffers float32 data is used in place.
 */
#include "codec.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "fl/err.h"
#include "mem.h"
#include "tensor.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FL__LITTLE_ENDIAN 1
#else
#define FL__LITTLE_ENDIAN 0
#endif

/* ---- byte access --------------------------------------------------------------------------- */

static uint16_t ld_u16(const uint8_t *p) {
  return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t ld_u32(const uint8_t *p) {
#if FL__LITTLE_ENDIAN
  uint32_t u;
  memcpy(&u, p, 4); /* compiles to one load */
  return u;
#else
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

static float ld_f32(const uint8_t *p) {
  uint32_t u = ld_u32(p);
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void st_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void st_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

static void st_f32(uint8_t *p, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  st_u32(p, u);
}

/* ---- float16 ------------------------------------------------------------------------------- */

#define FL_F16_MAX 65504.0f /* the largest finite half */

uint16_t fl__f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  x &= 0x7fffffff;
  if (x >= 0x7f800000) /* inf stays inf; NaN keeps its top payload bits and stays quiet */
    return (uint16_t)(sign | 0x7c00 | (x > 0x7f800000 ? 0x200 | ((x >> 13) & 0x3ff) : 0));
  if (x >= 0x477ff000) /* >= 65520, halfway above the largest half 65504: rounds to inf */
    return (uint16_t)(sign | 0x7c00);
  if (x < 0x38800000) {  /* below 2^-14: a half subnormal or zero */
    if (x <= 0x33000000) /* <= 2^-25, at most half the smallest subnormal: ties to even 0 */
      return sign;
    uint32_t m = (x & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - (x >> 23); /* 14..24: m * 2^(e-150) in units of 2^-24 */
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
      h++; /* may carry into the smallest normal, which is the right encoding */
    return (uint16_t)(sign | h);
  }
  /* Normal: rebias the exponent (127 -> 15) and round away 13 mantissa bits, ties to even.
   * A carry out of the mantissa correctly bumps the exponent. */
  uint32_t h = (x - 0x38000000) >> 13, rem = x & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
    h++;
  return (uint16_t)(sign | h);
}

float fl__f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff, x;
  if (e == 0x1f) {
    x = sign | 0x7f800000 | m << 13;
  } else if (e != 0) {
    x = sign | (e + 112) << 23 | m << 13;
  } else if (m == 0) {
    x = sign;
  } else { /* subnormal half: normalise; every one is a normal float */
    e = 113;
    while (!(m & 0x400)) {
      m <<= 1;
      e--;
    }
    x = sign | e << 23 | (m & 0x3ff) << 13;
  }
  float f;
  memcpy(&f, &x, 4);
  return f;
}

/* The same value as fl__f16_to_f32 for a finite half (the hot paths run after the check, which
 * refuses inf and NaN), without branches so that loops over it vectorise: the 15 magnitude bits
 * placed at a float's exponent and mantissa are the value times 2^-112, exactly, subnormal
 * halves included, and the product by 2^112 is exact. */
static float f16_finite_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)(h & 0x7fff) << 13, y;
  float f;
  memcpy(&f, &x, 4);
  f *= 0x1p112f;
  memcpy(&y, &f, 4);
  y |= (uint32_t)(h & 0x8000) << 16;
  memcpy(&f, &y, 4);
  return f;
}

/* ---- validation ---------------------------------------------------------------------------- */

/* Product of the dimensions; false when it overflows 64 bits. */
static bool shape_product(const uint32_t *shape, size_t ndim, uint64_t *out) {
  uint64_t prod = 1;
  for (size_t i = 0; i < ndim; i++) {
    if (shape[i] != 0 && prod > UINT64_MAX / shape[i])
      return false;
    prod *= shape[i];
  }
  *out = prod;
  return true;
}

static int check_shape(const Fl__V1__Tensor *t) {
  if (t->n_shape == 0)
    return FL_OK;
  if (t->shape == NULL)
    return FL_E_PARSE;
  uint64_t prod;
  if (!shape_product(t->shape, t->n_shape, &prod) || prod != t->count)
    return FL_E_SHAPE;
  return FL_OK;
}

/* Sizes only: count, shape, data/indices lengths, scale. */
static int check_sizes(const Fl__V1__Tensor *t, size_t expected_count) {
  if (t == NULL)
    return FL_E_INVAL;
  if (t->count != (uint64_t)expected_count)
    return FL_E_SHAPE;
  int err = check_shape(t);
  if (err != FL_OK)
    return err;
  if (t->count > SIZE_MAX / 4)
    return FL_E_TOOBIG;
  size_t n = (size_t)t->count, dlen = t->data.len, ilen = t->indices.len;
  if ((dlen > 0 && t->data.data == NULL) || (ilen > 0 && t->indices.data == NULL))
    return FL_E_PARSE;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      return dlen == 4 * n && ilen == 0 ? FL_OK : FL_E_PARSE;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      return dlen == 2 * n && ilen == 0 ? FL_OK : FL_E_PARSE;
    case FL__V1__ENCODING__ENCODING_INT8:
      if (dlen != n || ilen != 0)
        return FL_E_PARSE;
      /* 128 * scale must stay finite, or a dequantised value would overflow to inf. */
      if (!isfinite(t->scale) || !(fabsf(t->scale) <= FLT_MAX / 128.0f))
        return FL_E_NONFINITE;
      return t->scale >= 0.0f ? FL_OK : FL_E_PARSE;
    case FL__V1__ENCODING__ENCODING_TOPK:
      return dlen % 4 == 0 && ilen == dlen && dlen / 4 <= n ? FL_OK : FL_E_PARSE;
    default:
      return FL_E_PARSE;
  }
}

/* Branch-free over the data so the loop vectorises: one OR of "exponent all ones" flags. */
static bool f32_data_finite(const uint8_t *p, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++)
    bad |= (ld_u32(p + 4 * i) & 0x7f800000) == 0x7f800000;
  return bad == 0;
}

static bool f16_data_finite(const uint8_t *p, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++)
    bad |= (ld_u16(p + 2 * i) & 0x7c00) == 0x7c00;
  return bad == 0;
}

static int check_topk_indices(const uint8_t *idx, size_t k, uint64_t count) {
  uint64_t prev = 0;
  for (size_t j = 0; j < k; j++) {
    uint64_t i = ld_u32(idx + 4 * j);
    if (i >= count || (j > 0 && i <= prev))
      return FL_E_PARSE;
    prev = i;
  }
  return FL_OK;
}

int fl__tensor_check(const Fl__V1__Tensor *t, size_t expected_count) {
  int err = check_sizes(t, expected_count);
  if (err != FL_OK)
    return err;
  const uint8_t *d = t->data.data;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      return f32_data_finite(d, expected_count) ? FL_OK : FL_E_NONFINITE;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      return f16_data_finite(d, expected_count) ? FL_OK : FL_E_NONFINITE;
    case FL__V1__ENCODING__ENCODING_TOPK:
      err = check_topk_indices(t->indices.data, t->data.len / 4, t->count);
      if (err != FL_OK)
        return err;
      return f32_data_finite(d, t->data.len / 4) ? FL_OK : FL_E_NONFINITE;
    default: /* int8: every byte is a valid value, the scale was checked with the sizes */
      return FL_OK;
  }
}

/* ---- decode, fold, norm -------------------------------------------------------------------- */

int fl__tensor_decode(const Fl__V1__Tensor *t, float *out, size_t expected_count) {
  int err = fl__tensor_check(t, expected_count);
  if (err != FL_OK)
    return err;
  const uint8_t *d = t->data.data;
  size_t n = expected_count;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      for (size_t i = 0; i < n; i++)
        out[i] = ld_f32(d + 4 * i);
      break;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      for (size_t i = 0; i < n; i++)
        out[i] = f16_finite_to_f32(ld_u16(d + 2 * i));
      break;
    case FL__V1__ENCODING__ENCODING_INT8:
      for (size_t i = 0; i < n; i++)
        out[i] = (float)(int8_t)d[i] * t->scale;
      break;
    default: { /* top-k, the only other encoding check lets through */
      const uint8_t *idx = t->indices.data;
      memset(out, 0, n * sizeof *out);
      for (size_t j = 0; j < t->data.len / 4; j++)
        out[ld_u32(idx + 4 * j)] = ld_f32(d + 4 * j);
      break;
    }
  }
  return FL_OK;
}

/* acc += w * x for float32 data: fl__axpy (OpenBLAS, or the portable kernel) when the bytes
 * can be used as floats in place. */
static void fold_f32(const uint8_t *d, size_t n, float w, float *acc) {
#if FL__LITTLE_ENDIAN
  if (((uintptr_t)d % _Alignof(float)) == 0) {
    fl__axpy(n, w, (const float *)(const void *)d, acc);
    return;
  }
  /* Unaligned values (an upload unpacked in place, server/auth/inplace.h): through an aligned
   * block that stays in L1, so the fold keeps the vector kernel (the scalar loop below took
   * twice as long as the copy and axpy together). */
  float blk[1024];
  for (size_t i = 0; i < n; i += 1024) {
    size_t m = n - i < 1024 ? n - i : 1024;
    memcpy(blk, d + 4 * i, 4 * m);
    fl__axpy(m, w, blk, acc + i);
  }
  return;
#endif
  for (size_t i = 0; i < n; i++)
    acc[i] += w * ld_f32(d + 4 * i);
}

void fl__tensor_fold(const Fl__V1__Tensor *t, float w, float *acc) {
  const uint8_t *d = t->data.data;
  size_t n = (size_t)t->count;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      fold_f32(d, n, w, acc);
      break;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      for (size_t i = 0; i < n; i++)
        acc[i] += w * f16_finite_to_f32(ld_u16(d + 2 * i));
      break;
    case FL__V1__ENCODING__ENCODING_INT8: {
      /* Dequantise exactly as decode does, so fold equals decode followed by axpy. */
      float s = t->scale;
      for (size_t i = 0; i < n; i++)
        acc[i] += w * ((float)(int8_t)d[i] * s);
      break;
    }
    case FL__V1__ENCODING__ENCODING_TOPK: {
      const uint8_t *idx = t->indices.data;
      for (size_t j = 0; j < t->data.len / 4; j++)
        acc[ld_u32(idx + 4 * j)] += w * ld_f32(d + 4 * j);
      break;
    }
    default:
      break;
  }
}

/* Squares summed in double over eight independent partial sums: a single running sum would be
 * bound by the latency of the add (this runs on every received update); eight lanes vectorise,
 * and the order changes the double result by far less than the norm check's tolerance. */
static double sum8(const double p[8]) {
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

static double sq_f32(const uint8_t *d, size_t n) {
  double p[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t k = 0; k < 8; k++) {
      double v = ld_f32(d + 4 * (i + k));
      p[k] += v * v;
    }
  for (; i < n; i++) {
    double v = ld_f32(d + 4 * i);
    p[0] += v * v;
  }
  return sum8(p);
}

static double sq_f16(const uint8_t *d, size_t n) {
  double p[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t k = 0; k < 8; k++) {
      double v = f16_finite_to_f32(ld_u16(d + 2 * (i + k)));
      p[k] += v * v;
    }
  for (; i < n; i++) {
    double v = f16_finite_to_f32(ld_u16(d + 2 * i));
    p[0] += v * v;
  }
  return sum8(p);
}

/* Dequantised exactly as decode does (the float product, then widened). */
static double sq_i8(const uint8_t *d, size_t n, float scale) {
  double p[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t k = 0; k < 8; k++) {
      double v = (float)(int8_t)d[i + k] * scale;
      p[k] += v * v;
    }
  for (; i < n; i++) {
    double v = (float)(int8_t)d[i] * scale;
    p[0] += v * v;
  }
  return sum8(p);
}

double fl__tensor_sqnorm(const Fl__V1__Tensor *t) {
  const uint8_t *d = t->data.data;
  size_t n = (size_t)t->count;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      return sq_f32(d, n);
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      return sq_f16(d, n);
    case FL__V1__ENCODING__ENCODING_INT8:
      return sq_i8(d, n, t->scale);
    case FL__V1__ENCODING__ENCODING_TOPK:
      return sq_f32(d, t->data.len / 4);
    default:
      return 0.0;
  }
}

int fl__tensor_check_sqnorm(const Fl__V1__Tensor *t, size_t expected_count, double *sq) {
  int err = check_sizes(t, expected_count);
  if (err != FL_OK)
    return err;
  const uint8_t *d = t->data.data;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
    case FL__V1__ENCODING__ENCODING_TOPK:
      if (t->encoding == FL__V1__ENCODING__ENCODING_TOPK &&
          (err = check_topk_indices(t->indices.data, t->data.len / 4, t->count)) != FL_OK)
        return err;
      /* The finiteness of the values from their norm, without a pass of its own: a float's
       * square is at most 1.2e77 in double, so a sum of them is finite exactly when every
       * value is (an inf squares to inf, a NaN stays NaN). */
      *sq = sq_f32(d, t->data.len / 4);
      return isfinite(*sq) ? FL_OK : FL_E_NONFINITE;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      if (!f16_data_finite(d, expected_count))
        return FL_E_NONFINITE; /* sq_f16 decodes finite halves only */
      *sq = sq_f16(d, expected_count);
      return FL_OK;
    default:
      *sq = sq_i8(d, expected_count, t->scale);
      return FL_OK;
  }
}

/* ---- encode -------------------------------------------------------------------------------- */

size_t fl__topk_count(float fraction, size_t count) {
  if (count == 0 || !(fraction > 0.0f))
    return 0;
  if (fraction >= 1.0f)
    return count;
  double k = ceil((double)(float)((double)fraction * (double)count));
  if (k < 1.0)
    return 1;
  return k >= (double)count ? count : (size_t)k;
}

/* The element that would sit at position p (0-based) of a[0..n) sorted ascending; reorders a.
 * Hoare partition around a median of three: equal values split evenly, so a tensor full of
 * zeros (common in deltas) stays linear. */
static float select_nth(float *a, size_t n, size_t p) {
  ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, target = (ptrdiff_t)p;
  while (lo < hi) {
    float x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi];
    float pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
    ptrdiff_t i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot)
        i++;
      while (a[j] > pivot)
        j--;
      if (i <= j) {
        float t = a[i];
        a[i++] = a[j];
        a[j--] = t;
      }
    }
    if (target <= j)
      hi = j;
    else if (target >= i)
      lo = i;
    else
      return a[target]; /* between the partitions every value equals the pivot */
  }
  return a[target];
}

/* Writes the k largest |x| (ties: lowest index first) with ascending indices. */
static int topk_pick(const float *x, size_t n, size_t k, uint8_t *vals, uint8_t *idx,
                     const fl_allocator *a) {
  if (k == 0)
    return FL_OK;
  float *mag = fl__malloc(a, n * sizeof *mag);
  if (mag == NULL)
    return FL_E_NOMEM;
  for (size_t i = 0; i < n; i++)
    mag[i] = fabsf(x[i]);
  float thr = select_nth(mag, n, n - k);
  fl__free(a, mag);
  size_t above = 0;
  for (size_t i = 0; i < n; i++)
    above += fabsf(x[i]) > thr;
  size_t ties = k - above, j = 0;
  for (size_t i = 0; i < n && j < k; i++) {
    float m = fabsf(x[i]);
    if (m > thr || (m == thr && ties > 0)) {
      if (m == thr)
        ties--;
      st_u32(idx + 4 * j, (uint32_t)i);
      st_f32(vals + 4 * j, x[i]);
      j++;
    }
  }
  return FL_OK;
}

/* The largest scale the decoder accepts (128 * scale must stay finite). Above it the encoder
 * saturates: values beyond 127 * FL_I8_SCALE_MAX (within 1% of FLT_MAX) become +-127 steps,
 * so that the codec never writes what its own decoder refuses. */
#define FL_I8_SCALE_MAX (FLT_MAX / 128.0f)

static void encode_int8(const float *x, size_t n, uint8_t *out, float *scale_out) {
  float maxabs = 0.0f;
  for (size_t i = 0; i < n; i++)
    maxabs = fmaxf(maxabs, fabsf(x[i]));
  float scale = fminf(maxabs / 127.0f, FL_I8_SCALE_MAX);
  *scale_out = scale;
  for (size_t i = 0; i < n; i++) {
    /* Division rather than a reciprocal: 1/scale overflows for tiny subnormal scales. */
    long q = scale > 0.0f ? lrintf(x[i] / scale) : 0;
    q = q > 127 ? 127 : (q < -127 ? -127 : q);
    out[i] = (uint8_t)(int8_t)q;
  }
}

/* Data (and indices) buffers for one encoding; *data_len may be 0 (buffer still allocated). */
static int encode_data(const float *x, size_t n, int encoding, float fraction,
                       const fl_allocator *a, ProtobufCBinaryData *data,
                       ProtobufCBinaryData *indices, float *scale) {
  size_t k = 0, dlen;
  switch (encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      dlen = 4 * n;
      break;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      dlen = 2 * n;
      break;
    case FL__V1__ENCODING__ENCODING_INT8:
      dlen = n;
      break;
    case FL__V1__ENCODING__ENCODING_TOPK:
      if (!(fraction > 0.0f && fraction <= 1.0f))
        return FL_E_INVAL;
      if (n > UINT32_MAX)
        return FL_E_TOOBIG;
      k = fl__topk_count(fraction, n);
      dlen = 4 * k;
      break;
    default:
      return FL_E_INVAL;
  }
  uint8_t *d = fl__malloc(a, dlen), *ix = NULL;
  if (d == NULL)
    return FL_E_NOMEM;
  int err = FL_OK;
  *scale = 0.0f;
  if (encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
    for (size_t i = 0; i < n; i++)
      st_f32(d + 4 * i, x[i]);
  } else if (encoding == FL__V1__ENCODING__ENCODING_FLOAT16) {
    /* Saturate at the largest finite half (65504): IEEE rounding would turn |x| >= 65520 into
     * infinity, which every decoder (ours included) refuses. Clamping only shrinks a value, so
     * a delta that met the clip norm still does. */
    for (size_t i = 0; i < n; i++)
      st_u16(d + 2 * i, fl__f32_to_f16(fmaxf(-FL_F16_MAX, fminf(x[i], FL_F16_MAX))));
  } else if (encoding == FL__V1__ENCODING__ENCODING_INT8) {
    encode_int8(x, n, d, scale);
  } else {
    ix = fl__malloc(a, dlen);
    err = ix == NULL ? FL_E_NOMEM : topk_pick(x, n, k, d, ix, a);
  }
  if (err != FL_OK) {
    fl__free(a, ix);
    fl__free(a, d);
    return err;
  }
  data->data = d;
  data->len = dlen;
  indices->data = ix;
  indices->len = ix != NULL ? dlen : 0;
  return FL_OK;
}

static bool floats_finite(const float *x, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    bad |= (u & 0x7f800000) == 0x7f800000;
  }
  return bad == 0;
}

int fl__tensor_encode(Fl__V1__Tensor *t, const float *x, size_t count, const uint32_t *shape,
                      uint32_t ndim, int encoding, float topk_fraction, const fl_allocator *a) {
  if (t == NULL || (x == NULL && count > 0) || (shape == NULL && ndim > 0))
    return FL_E_INVAL;
  if (count > SIZE_MAX / 4)
    return FL_E_TOOBIG;
  uint64_t prod;
  if (ndim > 0 && (!shape_product(shape, ndim, &prod) || prod != (uint64_t)count))
    return FL_E_SHAPE;
  if (!floats_finite(x, count))
    return FL_E_NONFINITE;
  uint32_t *sh = NULL;
  if (ndim > 0) {
    sh = fl__calloc(a, ndim, sizeof *sh);
    if (sh == NULL)
      return FL_E_NOMEM;
    memcpy(sh, shape, ndim * sizeof *sh);
  }
  ProtobufCBinaryData data, indices;
  float scale;
  int err = encode_data(x, count, encoding, topk_fraction, a, &data, &indices, &scale);
  if (err != FL_OK) {
    fl__free(a, sh);
    return err;
  }
  t->n_shape = ndim;
  t->shape = sh;
  t->encoding = (Fl__V1__Encoding)encoding;
  t->count = count;
  t->data = data;
  t->indices = indices;
  t->scale = scale;
  return FL_OK;
}

void fl__tensor_release(Fl__V1__Tensor *t, const fl_allocator *a) {
  if (t == NULL)
    return;
  fl__free(a, t->shape);
  fl__free(a, t->data.data);
  fl__free(a, t->indices.data);
  t->shape = NULL;
  t->n_shape = 0;
  t->data.data = t->indices.data = NULL;
  t->data.len = t->indices.len = 0;
}

/* ---- stored updates ------------------------------------------------------------------------ */

/* Per tensor: u32 encoding, f32 scale, u64 count, u64 data length, u64 indices length
 * (little-endian), then the data and index bytes exactly as the device sent them. */
#define STORED_HDR 32

static void st_u64(uint8_t *p, uint64_t v) {
  st_u32(p, (uint32_t)v);
  st_u32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t ld_u64(const uint8_t *p) {
  return (uint64_t)ld_u32(p) | (uint64_t)ld_u32(p + 4) << 32;
}

int fl__delta_pack(Fl__V1__Tensor *const *t, size_t n, uint8_t **out, size_t *out_len,
                   const fl_allocator *a) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    size_t add = STORED_HDR + t[i]->data.len + t[i]->indices.len;
    if (add < t[i]->data.len || len > SIZE_MAX - add)
      return FL_E_TOOBIG;
    len += add;
  }
  uint8_t *b = fl__malloc(a, len ? len : 1), *p = b;
  if (b == NULL)
    return FL_E_NOMEM;
  for (size_t i = 0; i < n; i++) {
    st_u32(p, (uint32_t)t[i]->encoding);
    st_f32(p + 4, t[i]->scale);
    st_u64(p + 8, t[i]->count);
    st_u64(p + 16, t[i]->data.len);
    st_u64(p + 24, t[i]->indices.len);
    p += STORED_HDR;
    if (t[i]->data.len)
      memcpy(p, t[i]->data.data, t[i]->data.len);
    p += t[i]->data.len;
    if (t[i]->indices.len)
      memcpy(p, t[i]->indices.data, t[i]->indices.len);
    p += t[i]->indices.len;
  }
  *out = b;
  *out_len = len;
  return FL_OK;
}

int fl__delta_view(const uint8_t *blob, size_t len, const fl_tensor_info *layout, size_t n,
                   Fl__V1__Tensor *views) {
  size_t pos = 0;
  for (size_t i = 0; i < n; i++) {
    if (len - pos < STORED_HDR)
      return FL_E_PARSE;
    const uint8_t *h = blob + pos;
    uint64_t dlen = ld_u64(h + 16), ilen = ld_u64(h + 24);
    pos += STORED_HDR;
    if (dlen > len - pos || ilen > len - pos - dlen)
      return FL_E_PARSE;
    Fl__V1__Tensor *v = &views[i];
    fl__v1__tensor__init(v);
    v->encoding = (Fl__V1__Encoding)ld_u32(h);
    v->scale = ld_f32(h + 4);
    v->count = ld_u64(h + 8);
    v->data.len = (size_t)dlen;
    v->data.data = dlen ? (uint8_t *)blob + pos : NULL;
    v->indices.len = (size_t)ilen;
    v->indices.data = ilen ? (uint8_t *)blob + pos + dlen : NULL;
    pos += (size_t)(dlen + ilen);
    int err = fl__tensor_check(v, layout[i].count);
    if (err != FL_OK)
      return err;
  }
  return pos == len ? FL_OK : FL_E_PARSE;
}

/* The first position j in [0, k) whose index is >= lo (indices ascend). */
static size_t topk_lower(const uint8_t *idx, size_t k, uint64_t lo) {
  size_t a = 0, b = k;
  while (a < b) {
    size_t m = a + (b - a) / 2;
    if (ld_u32(idx + 4 * m) < lo)
      a = m + 1;
    else
      b = m;
  }
  return a;
}

/* Values [s, e) of one checked tensor into out[0 .. e - s). */
static void decode_part(const Fl__V1__Tensor *t, size_t s, size_t e, float *out) {
  const uint8_t *d = t->data.data;
  switch (t->encoding) {
    case FL__V1__ENCODING__ENCODING_FLOAT32:
      for (size_t i = s; i < e; i++)
        out[i - s] = ld_f32(d + 4 * i);
      break;
    case FL__V1__ENCODING__ENCODING_FLOAT16:
      for (size_t i = s; i < e; i++)
        out[i - s] = f16_finite_to_f32(ld_u16(d + 2 * i));
      break;
    case FL__V1__ENCODING__ENCODING_INT8:
      for (size_t i = s; i < e; i++)
        out[i - s] = (float)(int8_t)d[i] * t->scale;
      break;
    default: {
      const uint8_t *idx = t->indices.data;
      size_t k = t->data.len / 4;
      memset(out, 0, (e - s) * sizeof *out);
      for (size_t j = topk_lower(idx, k, s); j < k; j++) {
        size_t at = ld_u32(idx + 4 * j);
        if (at >= e)
          break;
        out[at - s] = ld_f32(d + 4 * j);
      }
      break;
    }
  }
}

int fl__delta_decode_range(Fl__V1__Tensor *const *t, const fl_tensor_info *layout, size_t n,
                           size_t off, size_t len, float *out) {
  size_t end = off + len, total = n ? layout[n - 1].offset + layout[n - 1].count : 0;
  if (end < off || end > total)
    return FL_E_INVAL;
  for (size_t i = 0; i < n && len > 0; i++) {
    size_t o = layout[i].offset, c = layout[i].count;
    if (o + c <= off || o >= end)
      continue;
    size_t s = off > o ? off - o : 0, e = end < o + c ? end - o : c;
    decode_part(t[i], s, e, out + (o + s - off));
  }
  return FL_OK;
}
