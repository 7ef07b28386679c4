/*
 * The tensor codec (common/codec.c). The first byte picks one of two halves:
 * - decode (even): the rest is an fl.v1.Tensor from the wire, unpacked within the budget
 *   uploads get; check, decode, fold and squared norm must agree with each other (a tensor
 *   that checks decodes to finite values, fold with weight 1 into zeros gives the decoded
 *   values, sqnorm is their sum of squares);
 * - round trip (odd): the rest is an encoding, a top-k fraction and float32 values; whatever
 *   fl__tensor_encode writes must pack, unpack and pass fl__tensor_check, and decode to the
 *   values within the encoding's error (float32 exactly).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fuzz_common.h"
#include "mem.h"

#define MAX_COUNT ((size_t)1 << 20)

static Fl__V1__Tensor *unpack(const uint8_t *p, size_t n, ProtobufCAllocator *pa,
                              fl_pb_budget *pb) {
  fl__protobuf_budget(pa, pb, NULL, n);
  return fl__v1__tensor__unpack(pa, n, p);
}

static void decode_half(const uint8_t *p, size_t n) {
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  size_t heap = fz_heap_bytes();
  Fl__V1__Tensor *t = unpack(p, n, &pa, &pb);
  FZ_ASSERT(fz_heap_bytes() <= heap + FZ_PB_BUDGET(n));
  if (t == NULL)
    return;
  /* The count the layout would expect; anything above MAX_COUNT is refused by size here, so
   * that a harness allocation stays small whatever count the input claims. */
  size_t want = t->count <= MAX_COUNT ? (size_t)t->count : 1;
  int err = fl__tensor_check(t, want);
  float *out = calloc(want ? want : 1, sizeof *out), *acc = calloc(want ? want : 1, sizeof *acc);
  if (out == NULL || acc == NULL)
    abort();
  FZ_ASSERT(fl__tensor_decode(t, out, want) == err);
  if (err == FL_OK) {
    double sq = 0;
    fl__tensor_fold(t, 1.0f, acc);
    for (size_t i = 0; i < want; i++) {
      FZ_ASSERT(isfinite(out[i]));
      FZ_ASSERT(acc[i] == out[i]);
      sq += (double)out[i] * out[i];
    }
    double s = fl__tensor_sqnorm(t);
    FZ_ASSERT(fabs(s - sq) <= 1e-9 * sq + 1e-300);
  }
  free(out);
  free(acc);
  fl__v1__tensor__free_unpacked(t, NULL);
}

static void check_values(int enc, const float *x, const float *y, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) {
    float ax = fabsf(x[i]);
    switch (enc) {
      case FL__V1__ENCODING__ENCODING_FLOAT32:
        FZ_ASSERT(memcmp(&x[i], &y[i], 4) == 0);
        break;
      case FL__V1__ENCODING__ENCODING_FLOAT16: /* saturated at 65504, then half precision */
        FZ_ASSERT(fabsf(fminf(ax, 65504.0f) - fabsf(y[i])) <=
                  fminf(ax, 65504.0f) * 0x1p-11f + 0x1p-25f);
        break;
      case FL__V1__ENCODING__ENCODING_INT8:
        /* Half a step, plus for tiny values the subnormal scale's own rounding (127 steps
         * of at most 2^-150 each; below 127 * 2^-150 the scale is 0). */
        if (scale < FLT_MAX / 128.0f)
          FZ_ASSERT(fabsf(x[i] - y[i]) <= 0.501f * scale + ax * 0x1p-20f + 0x1p-140f);
        break;
      default: /* top-k: a kept value is exact, the others are zero */
        FZ_ASSERT(y[i] == 0.0f || y[i] == x[i]);
        break;
    }
  }
}

static void round_trip(fz_cur *c) {
  int enc = 1 + fz_u8(c) % 4;
  float fraction = (float)(fz_u8(c) + 1) / 256.0f;
  size_t n = c->left / 4 < MAX_COUNT ? c->left / 4 : MAX_COUNT;
  float *x = malloc((n ? n : 1) * sizeof *x), *y = malloc((n ? n : 1) * sizeof *y);
  if (x == NULL || y == NULL)
    abort();
  memcpy(x, c->p, n * 4);
  bool finite = true;
  for (size_t i = 0; i < n; i++)
    finite = finite && isfinite(x[i]);
  uint32_t shape[1] = {(uint32_t)n};
  Fl__V1__Tensor t = FL__V1__TENSOR__INIT;
  int err = fl__tensor_encode(&t, x, n, shape, n > 0 ? 1 : 0, enc, fraction, NULL);
  FZ_ASSERT(err == (finite ? FL_OK : FL_E_NONFINITE));
  if (err == FL_OK) {
    size_t len = fl__v1__tensor__get_packed_size(&t);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
      abort();
    fl__v1__tensor__pack(&t, buf);
    ProtobufCAllocator pa;
    fl_pb_budget pb;
    Fl__V1__Tensor *u = unpack(buf, len, &pa, &pb);
    FZ_ASSERT(u != NULL);
    FZ_ASSERT(fl__tensor_check(u, n) == FL_OK);
    FZ_ASSERT(fl__tensor_decode(u, y, n) == FL_OK);
    check_values(enc, x, y, n, u->scale);
    fl__v1__tensor__free_unpacked(u, NULL);
    free(buf);
    fl__tensor_release(&t, NULL);
  }
  free(x);
  free(y);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_cur c = {data, size};
  if (fz_u8(&c) % 2 == 0)
    decode_half(c.p, c.left);
  else
    round_trip(&c);
  return 0;
}
