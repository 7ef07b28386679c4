/* The encoders never write what the decoder refuses: values at the edges of the float16 and
 * int8 ranges saturate at encode time (found by fuzzing: float16 turned finite values >= 65520
 * into infinity, int8's scale overflowed the decoder's bound near FLT_MAX). */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "codec.h"
#include "fl/err.h"
#include "rng.h"

#define ENC_F16 FL__V1__ENCODING__ENCODING_FLOAT16
#define ENC_I8 FL__V1__ENCODING__ENCODING_INT8

static void encode_ok(Fl__V1__Tensor *t, const float *x, size_t n, int enc) {
  fl__v1__tensor__init(t);
  uint32_t shape[1] = {(uint32_t)n};
  cr_assert_eq(fl__tensor_encode(t, x, n, shape, 1, enc, 0.0f, NULL), FL_OK);
}

Test(codec_range, float16_saturates_at_the_largest_half) {
  const float x[] = {65519.99f, 65520.0f, 1e10f, FLT_MAX, -65520.0f, -FLT_MAX, 1.0f, -0.5f};
  const float want[] = {65504.0f, 65504.0f, 65504.0f, 65504.0f, -65504.0f, -65504.0f, 1.0f, -0.5f};
  size_t n = sizeof x / sizeof x[0];
  Fl__V1__Tensor t;
  encode_ok(&t, x, n, ENC_F16);
  cr_assert_eq(fl__tensor_check(&t, n), FL_OK, "the decoder accepts what the encoder wrote");
  float y[8];
  cr_assert_eq(fl__tensor_decode(&t, y, n), FL_OK);
  for (size_t i = 0; i < n; i++)
    cr_assert_eq(y[i], want[i], "%zu: %g -> %g, want %g", i, x[i], y[i], want[i]);
  fl__tensor_release(&t, NULL);
}

Test(codec_range, int8_scale_stays_within_the_decoders_bound) {
  const float x[] = {FLT_MAX, -FLT_MAX, FLT_MAX / 2, 0.0f, 1.0f};
  size_t n = sizeof x / sizeof x[0];
  Fl__V1__Tensor t;
  encode_ok(&t, x, n, ENC_I8);
  cr_assert(isfinite(t.scale) && t.scale <= FLT_MAX / 128.0f, "scale %g", t.scale);
  cr_assert_eq(fl__tensor_check(&t, n), FL_OK);
  float y[5];
  cr_assert_eq(fl__tensor_decode(&t, y, n), FL_OK);
  for (size_t i = 0; i < n; i++) {
    cr_assert(isfinite(y[i]), "%zu", i);
    /* Saturation costs at most 1/128 of the range at the very top; elsewhere half a step. */
    cr_assert_leq(fabs((double)y[i] - x[i]), fabs((double)x[i]) / 127.0 + t.scale / 2.0 + 1.0,
                  "%zu: %g -> %g", i, x[i], y[i]);
  }
  fl__tensor_release(&t, NULL);
}

/* Random vectors with magnitudes over the whole float range: every encoding round-trips
 * through the decoder's checks. */
Test(codec_range, wide_magnitudes_always_decode) {
  fl_rng r;
  fl__rng_seed(&r, 77);
  float x[64], y[64];
  for (int trial = 0; trial < 500; trial++) {
    for (int i = 0; i < 64; i++) {
      float m = ldexpf(1.0f + (float)fl__rng_uniform(&r), (int)(fl__rng_u64(&r) % 254) - 126);
      x[i] = fl__rng_u64(&r) & 1 ? -m : m;
    }
    const int encs[] = {ENC_F16, ENC_I8};
    for (int e = 0; e < 2; e++) {
      Fl__V1__Tensor t;
      encode_ok(&t, x, 64, encs[e]);
      cr_assert_eq(fl__tensor_decode(&t, y, 64), FL_OK, "trial %d encoding %d", trial, encs[e]);
      fl__tensor_release(&t, NULL);
    }
  }
}
