/*
 * In-process fuzzing of the decoders that face the network: tensors (fl__tensor_check, decode,
 * fold, sqnorm), packed Tensor and ModelSpec messages, fl__spec_from_proto and the layout and
 * weights built from a spec. Seeded and bounded; under ASan/UBSan any out-of-bounds access or
 * overflow aborts the test. Besides "no crash", each case checks the contracts the server
 * relies on: a refused tensor leaves the output untouched, an accepted one decodes to finite
 * values that fold and sqnorm agree with, an accepted spec has a consistent layout.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fl/err.h"
#include "mem.h"
#include "model.h"

#define ENC_F32 FL__V1__ENCODING__ENCODING_FLOAT32
#define ENC_F16 FL__V1__ENCODING__ENCODING_FLOAT16
#define ENC_I8 FL__V1__ENCODING__ENCODING_INT8
#define ENC_TOPK FL__V1__ENCODING__ENCODING_TOPK

/* xorshift64*: the sequence depends on the seed alone, so a failure replays exactly. */
static uint64_t g_rs = 0x2545f4914f6cdd1dULL;

static uint64_t rnd(void) {
  g_rs ^= g_rs >> 12;
  g_rs ^= g_rs << 25;
  g_rs ^= g_rs >> 27;
  return g_rs * 2685821657736338717ULL;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

static void rnd_fill(uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)rnd();
}

static uint64_t edgy_u64(void) {
  static const uint64_t v[] = {0, 1, 2, 3, 7, 64, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
                               (uint64_t)1 << 62, SIZE_MAX / 4, SIZE_MAX / 4 + 1, SIZE_MAX / 2,
                               UINT64_MAX};
  return v[below(sizeof v / sizeof v[0])];
}

static float small_float(void) { return (float)((double)below(2001) / 1000.0 - 1.0); }

/* ----- tensors ---------------------------------------------------------------------------- */

#define MAXN 96
#define CANARY 0x7fa5a5a5u /* a NaN bit pattern no decoder writes */

typedef struct fuzz_tensor {
  Fl__V1__Tensor t;
  uint32_t shape[6];
  uint8_t data[4 * MAXN + 16];
  uint8_t idx[4 * MAXN + 16];
} fuzz_tensor;

/* A tensor that is plausible for `n` values most of the time and broken in one or more ways
 * otherwise: wrong count, shape, lengths, encoding, indices, scale, non-finite data. */
static void make_tensor(fuzz_tensor *f, size_t n) {
  Fl__V1__Tensor *t = &f->t;
  fl__v1__tensor__init(t);
  int enc = (int)(below(10) == 0 ? below(7) : 1 + below(4));
  t->encoding = (Fl__V1__Encoding)enc;
  t->count = below(8) == 0 ? edgy_u64() : n;
  /* shape: none, [n], [a, b] with a*b = n, or random */
  switch (below(5)) {
    case 0:
      t->n_shape = 0;
      break;
    case 1:
      t->n_shape = 1;
      f->shape[0] = (uint32_t)n;
      break;
    case 2:
      t->n_shape = 2;
      f->shape[0] = n % 2 == 0 ? 2 : 1;
      f->shape[1] = (uint32_t)(n / f->shape[0]);
      break;
    default:
      t->n_shape = below(7);
      for (size_t d = 0; d < t->n_shape; d++)
        f->shape[d] = below(2) ? (uint32_t)below(5) : (uint32_t)rnd();
      break;
  }
  t->shape = t->n_shape ? f->shape : NULL;
  size_t k = enc == ENC_TOPK ? below(n + 2) : 0;
  size_t dlen = enc == ENC_F32 ? 4 * n : enc == ENC_F16 ? 2 * n : enc == ENC_I8 ? n : 4 * k;
  if (below(6) == 0)
    dlen = below(sizeof f->data);
  if (dlen > sizeof f->data)
    dlen = sizeof f->data;
  /* Values: mostly finite floats, sometimes raw bytes (NaN and inf among them). */
  bool raw = below(4) == 0;
  if (raw || enc == ENC_I8 || enc == ENC_F16) {
    rnd_fill(f->data, dlen);
    if (enc == ENC_F16 && !raw)
      for (size_t i = 1; i < dlen; i += 2)
        f->data[i] &= 0x7b; /* exponent never all ones: finite halves */
  } else {
    for (size_t i = 0; i + 4 <= dlen; i += 4) {
      float v = small_float();
      memcpy(f->data + i, &v, 4);
    }
  }
  t->data = (ProtobufCBinaryData){dlen, dlen ? f->data : NULL};
  size_t ilen = enc == ENC_TOPK ? 4 * k : 0;
  if (below(8) == 0)
    ilen = below(sizeof f->idx);
  if (ilen > sizeof f->idx)
    ilen = sizeof f->idx;
  uint32_t prev = 0;
  int style = (int)below(4);
  for (size_t j = 0; j + 4 <= ilen; j += 4) {
    uint32_t id = style == 0   ? prev + 1 + (uint32_t)below(2)
                  : style == 1 ? (uint32_t)below(n + 2)
                  : style == 2 ? (uint32_t)rnd()
                               : prev;
    if (j == 0 && style == 0)
      id = (uint32_t)below(2);
    prev = id;
    memcpy(f->idx + j, &id, 4);
  }
  t->indices = (ProtobufCBinaryData){ilen, ilen ? f->idx : NULL};
  static const float scales[] = {0.0f, -0.0f, 0.01f, 1.0f, -1.0f, NAN, INFINITY, FLT_MAX,
                                 FLT_MAX / 128.0f, 1e-45f};
  t->scale = below(3) == 0 ? scales[below(sizeof scales / sizeof scales[0])] : 0.01f;
}

/* Decodes with a canary: a refusal must not write, an acceptance must write n finite values
 * that fold (w = 1 from zero) and sqnorm reproduce. */
static void check_contracts(const Fl__V1__Tensor *t, size_t n) {
  float out[MAXN + 4], acc[MAXN + 4];
  uint32_t canary = CANARY;
  for (size_t i = 0; i < MAXN + 4; i++)
    memcpy(&out[i], &canary, 4);
  int chk = fl__tensor_check(t, n);
  int dec = fl__tensor_decode(t, out, n);
  cr_assert_eq(chk, dec, "check and decode disagree (%d vs %d)", chk, dec);
  if (dec != FL_OK) {
    cr_assert(dec == FL_E_SHAPE || dec == FL_E_PARSE || dec == FL_E_NONFINITE ||
                  dec == FL_E_TOOBIG || dec == FL_E_INVAL,
              "unexpected error %d", dec);
    for (size_t i = 0; i < MAXN + 4; i++)
      cr_assert_eq(memcmp(&out[i], &canary, 4), 0, "refused tensor wrote out[%zu]", i);
    return;
  }
  for (size_t i = n; i < MAXN + 4; i++)
    cr_assert_eq(memcmp(&out[i], &canary, 4), 0, "decode wrote past n at %zu", i);
  double sq = 0;
  memset(acc, 0, sizeof acc);
  fl__tensor_fold(t, 1.0f, acc);
  for (size_t i = 0; i < n; i++) {
    cr_assert(isfinite(out[i]), "accepted tensor decoded a non-finite value at %zu", i);
    cr_assert_eq(acc[i], out[i], "fold differs from decode at %zu", i);
    sq += (double)out[i] * out[i];
  }
  for (size_t i = n; i < MAXN + 4; i++)
    cr_assert_eq(acc[i], 0.0f, "fold wrote past n at %zu", i);
  double s2 = fl__tensor_sqnorm(t);
  cr_assert(fabs(s2 - sq) <= 1e-9 * (sq + 1e-30), "sqnorm %.17g, decoded %.17g", s2, sq);
}

Test(fuzz_codec, random_tensors_keep_the_decoder_contracts) {
  g_rs = 0x9e3779b97f4a7c15ULL;
  int accepted = 0;
  for (int it = 0; it < 40000; it++) {
    fuzz_tensor f;
    size_t n = below(MAXN + 1);
    make_tensor(&f, n);
    check_contracts(&f.t, n);
    accepted += fl__tensor_check(&f.t, n) == FL_OK;
    /* The same tensor against counts it does not have, including huge ones. */
    size_t other = (size_t)edgy_u64();
    int err = fl__tensor_check(&f.t, other);
    /* Only top-k may claim more values than it carries: that is what sparse means. */
    if (other > MAXN + 16 && f.t.encoding != ENC_TOPK)
      cr_assert_neq(err, FL_OK, "a tensor of <= %d bytes passed as %zu values",
                    (int)sizeof f.data, other);
  }
  /* The generator must reach the decoders, not only the size checks. */
  cr_assert_gt(accepted, 4000, "only %d tensors accepted", accepted);
}

/* Encodes a random vector, packs it, damages the bytes, unpacks and checks: protobuf-c's
 * parser and the codec together, as the server runs them. */
Test(fuzz_codec, mutated_packed_tensors) {
  g_rs = 0x1234567887654321ULL;
  for (int it = 0; it < 20000; it++) {
    float x[MAXN];
    size_t n = 1 + below(MAXN);
    for (size_t i = 0; i < n; i++)
      x[i] = small_float();
    uint32_t shape[1] = {(uint32_t)n};
    Fl__V1__Tensor t = FL__V1__TENSOR__INIT;
    int enc = 1 + (int)below(4);
    cr_assert_eq(fl__tensor_encode(&t, x, n, shape, 1, enc, 0.3f, NULL), FL_OK);
    size_t len = fl__v1__tensor__get_packed_size(&t);
    uint8_t *buf = malloc(len + 4 * 32); /* room for four appends */
    cr_assert_not_null(buf);
    fl__v1__tensor__pack(&t, buf);
    fl__tensor_release(&t, NULL);
    for (uint64_t k = 0, m = 1 + below(4); k < m; k++) {
      switch (below(4)) {
        case 0:
          buf[below(len)] ^= (uint8_t)(1u << below(8));
          break;
        case 1:
          len = below(len + 1);
          break;
        case 2:
          buf[below(len ? len : 1)] = 0xff;
          break;
        default: {
          size_t extra = below(32);
          rnd_fill(buf + len, extra);
          len += extra;
          break;
        }
      }
      if (len == 0)
        break;
    }
    Fl__V1__Tensor *u = fl__v1__tensor__unpack(NULL, len, buf);
    if (u != NULL) {
      check_contracts(u, n);
      (void)fl__tensor_check(u, (size_t)u->count); /* its own claim, possibly huge */
      fl__v1__tensor__free_unpacked(u, NULL);
    }
    free(buf);
  }
}

/* ----- model specs ------------------------------------------------------------------------ */

/* A random ModelSpec proto; *small says whether every size was drawn small enough that a
 * valid spec can be built into a model cheaply. */
typedef struct fuzz_spec {
  Fl__V1__ModelSpec p;
  Fl__V1__LayerSpec l[FL_MAX_LAYERS + 4];
  Fl__V1__LayerSpec *lp[FL_MAX_LAYERS + 4];
  uint32_t in[5];
} fuzz_spec;

static uint32_t spec_dim(bool *small) {
  if (below(10) == 0) {
    static const uint32_t v[] = {0, 65535, 65536, 1u << 24, (1u << 24) + 1, UINT32_MAX};
    *small = false;
    return v[below(sizeof v / sizeof v[0])];
  }
  return (uint32_t)below(12);
}

static void make_spec(fuzz_spec *f, bool *small) {
  *small = true;
  fl__v1__model_spec__init(&f->p);
  f->p.n_input_shape = below(8) == 0 ? below(5) : (below(2) ? 1 : 3);
  for (size_t i = 0; i < f->p.n_input_shape; i++)
    f->in[i] = 1 + spec_dim(small);
  f->p.input_shape = f->in;
  f->p.n_layers = below(12) == 0 ? below(FL_MAX_LAYERS + 4) : below(6);
  for (size_t i = 0; i < f->p.n_layers; i++) {
    Fl__V1__LayerSpec *l = &f->l[i];
    fl__v1__layer_spec__init(l);
    l->type = (Fl__V1__LayerType)(below(10) == 0 ? (uint32_t)rnd() : below(9));
    l->units = spec_dim(small);
    l->out_channels = spec_dim(small) % 5;
    l->kernel = below(6) == 0 ? spec_dim(small) : (uint32_t)below(4);
    l->stride = (uint32_t)below(3);
    l->padding = (uint32_t)below(3);
    f->lp[i] = l;
  }
  f->p.layers = f->lp;
  f->p.loss = (Fl__V1__LossType)below(4);
}

/* For an accepted spec: the layout covers the parameters exactly, in order, and the spec
 * survives the trip back to a proto. */
static void check_spec(const fl_model_spec *spec) {
  fl_tensor_info *lay = NULL;
  size_t nt = 0;
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, spec, NULL), FL_OK);
  cr_assert_eq(fl__layout_new(spec, &lay, &nt, NULL), FL_OK);
  cr_assert_eq(nt, fl__model_num_tensors(m));
  size_t off = 0;
  for (size_t i = 0; i < nt; i++) {
    uint64_t prod = 1;
    for (uint32_t d = 0; d < lay[i].ndim; d++)
      prod *= lay[i].shape[d];
    cr_assert_eq(lay[i].offset, off, "tensor %zu not contiguous", i);
    cr_assert_eq(prod, lay[i].count, "tensor %zu: shape product != count", i);
    off += lay[i].count;
  }
  cr_assert_eq(off, fl__model_num_params(m));
  fl_spec_proto_storage st;
  fl_model_spec back;
  fl__spec_to_proto(&st, spec);
  cr_assert_eq(fl__spec_from_proto(&back, &st.spec), FL_OK);
  cr_assert_eq(memcmp(&back, spec, sizeof back), 0, "spec changed on the way through a proto");
  /* Weights of the right layout load; tensors of the wrong one change nothing. */
  Fl__V1__Tensor **w = NULL;
  size_t nw = 0;
  cr_assert_eq(fl__weights_to_proto(m, &w, &nw, NULL), FL_OK);
  if (nw > 0) {
    float before = fl__model_params(m)[0];
    w[nw - 1]->count++;
    cr_assert_neq(fl__weights_from_proto(m, w, nw), FL_OK);
    cr_assert_eq(fl__model_params(m)[0], before);
    w[nw - 1]->count--;
    cr_assert_eq(fl__weights_from_proto(m, w, nw), FL_OK);
    cr_assert_eq(fl__weights_from_proto(m, w, nw - 1), FL_E_SHAPE);
  }
  fl__delta_release(w, nw, NULL);
  fl__free(NULL, lay);
  fl__model_free(m);
}

Test(fuzz_codec, random_specs) {
  g_rs = 0xdeadbeefcafef00dULL;
  int valid = 0;
  for (int it = 0; it < 30000; it++) {
    fuzz_spec f;
    bool small;
    fl_model_spec spec;
    make_spec(&f, &small);
    int err = fl__spec_from_proto(&spec, &f.p);
    if (err != FL_OK)
      continue;
    valid++;
    cr_assert_eq(fl__spec_validate(&spec), FL_OK);
    if (small)
      check_spec(&spec);
  }
  cr_assert_gt(valid, 300, "only %d valid specs: the generator misses the builders", valid);
}

Test(fuzz_codec, mutated_packed_specs) {
  g_rs = 0x0badc0ffee0ddf00ULL;
  for (int it = 0; it < 20000; it++) {
    fuzz_spec f;
    bool small;
    make_spec(&f, &small);
    size_t len = fl__v1__model_spec__get_packed_size(&f.p);
    uint8_t *buf = malloc(len + 16);
    cr_assert_not_null(buf);
    fl__v1__model_spec__pack(&f.p, buf);
    for (uint64_t k = 0, m = 1 + below(3); k < m && len > 0; k++) {
      if (below(2))
        buf[below(len)] ^= (uint8_t)(1u << below(8));
      else
        buf[below(len)] = (uint8_t)rnd();
    }
    Fl__V1__ModelSpec *u = fl__v1__model_spec__unpack(NULL, len, buf);
    if (u != NULL) {
      fl_model_spec spec;
      if (fl__spec_from_proto(&spec, u) == FL_OK)
        cr_assert_eq(fl__spec_validate(&spec), FL_OK);
      fl__v1__model_spec__free_unpacked(u, NULL);
    }
    free(buf);
  }
}
