/* Stored updates (common/codec.c): pack keeps each encoding's bytes, view reads them back in
 * place and refuses malformed buffers, and a range decode equals the same slice of a full
 * decode for every encoding, at tensor boundaries and inside top-k gaps. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fl/err.h"
#include "rng.h"

#define NT 3
static const size_t COUNTS[NT] = {7, 300, 45};

static void layout(fl_tensor_info *li) {
  size_t off = 0;
  for (int i = 0; i < NT; i++) {
    memset(&li[i], 0, sizeof li[i]);
    li[i].offset = off;
    li[i].count = COUNTS[i];
    off += COUNTS[i];
  }
}

/* Encodes a random delta tensor by tensor; full receives the full decode. */
static void encode(int enc, Fl__V1__Tensor *t, Fl__V1__Tensor **ptr, float *full, uint64_t seed) {
  fl_rng rng;
  fl__rng_seed(&rng, seed);
  size_t off = 0;
  for (int i = 0; i < NT; i++) {
    float x[300];
    for (size_t k = 0; k < COUNTS[i]; k++)
      x[k] = (float)(fl__rng_uniform(&rng) * 2.0 - 1.0);
    fl__v1__tensor__init(&t[i]);
    cr_assert_eq(fl__tensor_encode(&t[i], x, COUNTS[i], NULL, 0, enc, 0.1f, NULL), FL_OK);
    cr_assert_eq(fl__tensor_decode(&t[i], full + off, COUNTS[i]), FL_OK);
    ptr[i] = &t[i];
    off += COUNTS[i];
  }
}

Test(codec_stored, range_decode_equals_full_decode) {
  fl_tensor_info li[NT];
  layout(li);
  const size_t dim = 352;
  for (int enc = 1; enc <= 4; enc++) {
    Fl__V1__Tensor t[NT], v[NT], *tp[NT], *vp[NT];
    float full[352], part[352];
    encode(enc, t, tp, full, (uint64_t)enc);
    uint8_t *blob;
    size_t len;
    cr_assert_eq(fl__delta_pack(tp, NT, &blob, &len, NULL), FL_OK);
    size_t raw = 0;
    for (int i = 0; i < NT; i++)
      raw += t[i].data.len + t[i].indices.len;
    cr_assert_eq(len, raw + NT * 32, "encoding %d stored as sent (%zu bytes)", enc, len);
    cr_assert_eq(fl__delta_view(blob, len, li, NT, v), FL_OK);
    for (int i = 0; i < NT; i++)
      vp[i] = &v[i];
    /* Every range of a few lengths at every start, across the 7 | 300 | 45 boundaries. */
    const size_t lens[] = {1, 3, 7, 64, 256, 352};
    for (size_t li_ = 0; li_ < sizeof lens / sizeof lens[0]; li_++)
      for (size_t off = 0; off + lens[li_] <= dim; off++) {
        memset(part, 0x7f, sizeof part);
        cr_assert_eq(fl__delta_decode_range(vp, li, NT, off, lens[li_], part), FL_OK);
        cr_assert_eq(memcmp(part, full + off, lens[li_] * sizeof(float)), 0,
                     "encoding %d, range [%zu, +%zu)", enc, off, lens[li_]);
      }
    cr_assert_eq(fl__delta_decode_range(vp, li, NT, 350, 3, part), FL_E_INVAL);
    cr_assert_eq(fl__delta_decode_range(vp, li, NT, SIZE_MAX, 2, part), FL_E_INVAL);
    free(blob);
    for (int i = 0; i < NT; i++)
      fl__tensor_release(&t[i], NULL);
  }
}

Test(codec_stored, view_refuses_malformed_buffers) {
  fl_tensor_info li[NT];
  layout(li);
  Fl__V1__Tensor t[NT], v[NT], *tp[NT];
  float full[352];
  encode(FL__V1__ENCODING__ENCODING_TOPK, t, tp, full, 9);
  uint8_t *blob;
  size_t len;
  cr_assert_eq(fl__delta_pack(tp, NT, &blob, &len, NULL), FL_OK);
  cr_assert_eq(fl__delta_view(blob, len - 1, li, NT, v), FL_E_PARSE, "truncated");
  cr_assert_eq(fl__delta_view(blob, 20, li, NT, v), FL_E_PARSE, "header cut");
  uint8_t *longer = malloc(len + 1);
  memcpy(longer, blob, len);
  longer[len] = 0;
  cr_assert_eq(fl__delta_view(longer, len + 1, li, NT, v), FL_E_PARSE, "trailing byte");
  longer[16] ^= 0x80; /* first tensor's data length: huge */
  cr_assert_eq(fl__delta_view(longer, len, li, NT, v), FL_E_PARSE);
  memcpy(longer, blob, len);
  longer[0] = 9; /* unknown encoding */
  cr_assert_eq(fl__delta_view(longer, len, li, NT, v), FL_E_PARSE);
  memcpy(longer, blob, len);
  fl_tensor_info other[NT];
  memcpy(other, li, sizeof other);
  other[1].count = 301;
  cr_assert_eq(fl__delta_view(longer, len, other, NT, v), FL_E_SHAPE, "another layout");
  free(longer);
  free(blob);
  for (int i = 0; i < NT; i++)
    fl__tensor_release(&t[i], NULL);
}
