/* Canonical digests: documented byte layouts, and every field changes the digest. */
#include <criterion/criterion.h>
#include <string.h>

#include "digest.h"
#include "fl/err.h"

/* A little byte builder to spell out the layouts of docs/SIGNING.md independently. */
typedef struct buf {
  uint8_t b[4096];
  size_t n;
} buf;

static void put(buf *b, const void *p, size_t n) {
  cr_assert_leq(b->n + n, sizeof b->b);
  if (n > 0)
    memcpy(b->b + b->n, p, n);
  b->n += n;
}
static void put_u32(buf *b, uint32_t v) {
  for (int i = 0; i < 4; i++)
    b->b[b->n++] = (uint8_t)(v >> (8 * i));
}
static void put_u64(buf *b, uint64_t v) {
  for (int i = 0; i < 8; i++)
    b->b[b->n++] = (uint8_t)(v >> (8 * i));
}
static void put_bytes(buf *b, const void *p, size_t n) {
  put_u64(b, n);
  put(b, p, n);
}
static uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static void req(const char *m, const char *p, uint64_t dev, int64_t ts, const char *nonce,
                const char *body, uint8_t out[32]) {
  cr_assert_eq(fl__request_digest(m, p, dev, ts, (const uint8_t *)nonce, strlen(nonce),
                                  (const uint8_t *)body, strlen(body), out),
               FL_OK);
}

Test(digest, request_layout_is_as_documented) {
  uint8_t got[32], want[32];
  req("POST", "/v1/updates", 42, -5, "nonce", "body", got);
  buf b = {.n = 0};
  put(&b, "fl.v1.request", 14);
  put_bytes(&b, "POST", 4);
  put_bytes(&b, "/v1/updates", 11);
  put_u64(&b, 42);
  put_u64(&b, (uint64_t)(int64_t)-5);
  put_bytes(&b, "nonce", 5);
  put_bytes(&b, "body", 4);
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
}

Test(digest, request_covers_every_field) {
  uint8_t base[32], d[32];
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyz", base);
  req("GET", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "method");
  req("POST", "/v1/checkim", 7, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "path");
  req("POST", "/v1/checkin", 8, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "device");
  req("POST", "/v1/checkin", 7, 1700000000001, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "timestamp");
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdeF", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "nonce");
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyZ", d);
  cr_assert(memcmp(base, d, 32) != 0, "body");
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert_arr_eq(base, d, 32, "deterministic");
}

Test(digest, request_fields_cannot_slide_into_each_other) {
  uint8_t a[32], b[32];
  req("POST", "/x", 1, 2, "ab", "cd", a);
  req("POS", "T/x", 1, 2, "ab", "cd", b);
  cr_assert(memcmp(a, b, 32) != 0);
  req("POST", "/x", 1, 2, "abc", "d", b);
  cr_assert(memcmp(a, b, 32) != 0);
}

Test(digest, request_refuses_null) {
  uint8_t d[32];
  cr_assert_eq(fl__request_digest(NULL, "/", 1, 1, NULL, 0, NULL, 0, d), FL_E_INVAL);
  cr_assert_eq(fl__request_digest("GET", NULL, 1, 1, NULL, 0, NULL, 0, d), FL_E_INVAL);
  cr_assert_eq(fl__request_digest("GET", "/", 1, 1, NULL, 3, NULL, 0, d), FL_E_INVAL);
  cr_assert_eq(fl__request_digest("GET", "/", 1, 1, NULL, 0, NULL, 0, d), FL_OK);
}

/* An update with two tensors: a dense float32 one and a top-k one. */
typedef struct upd {
  Fl__V1__UpdateUpload u;
  Fl__V1__Tensor t[2];
  Fl__V1__Tensor *tp[2];
  uint32_t shape0[2], shape1[1];
  uint8_t data0[24], data1[8], idx1[8];
} upd;

static void make_update(upd *x) {
  memset(x, 0, sizeof *x);
  fl__v1__update_upload__init(&x->u);
  x->u.round_id = 11;
  x->u.model_id = 3;
  x->u.base_version = 5;
  x->u.sample_count = 600;
  x->u.loss = 0.25f;
  x->u.norm = 1.5f;
  for (int i = 0; i < 2; i++) {
    fl__v1__tensor__init(&x->t[i]);
    x->tp[i] = &x->t[i];
  }
  x->shape0[0] = 2;
  x->shape0[1] = 3;
  x->t[0].encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
  x->t[0].count = 6;
  x->t[0].n_shape = 2;
  x->t[0].shape = x->shape0;
  for (int i = 0; i < 24; i++)
    x->data0[i] = (uint8_t)(i + 1);
  x->t[0].data.data = x->data0;
  x->t[0].data.len = 24;
  x->shape1[0] = 10;
  x->t[1].encoding = FL__V1__ENCODING__ENCODING_TOPK;
  x->t[1].count = 10;
  x->t[1].n_shape = 1;
  x->t[1].shape = x->shape1;
  x->t[1].scale = 0.0f;
  for (int i = 0; i < 8; i++)
    x->data1[i] = (uint8_t)(100 + i);
  x->idx1[0] = 1;
  x->idx1[4] = 7;
  x->t[1].data.data = x->data1;
  x->t[1].data.len = 8;
  x->t[1].indices.data = x->idx1;
  x->t[1].indices.len = 8;
  x->u.n_delta = 2;
  x->u.delta = x->tp;
}

static void put_tensor(buf *b, const Fl__V1__Tensor *t) {
  put_u32(b, (uint32_t)t->encoding);
  put_u64(b, t->count);
  put_u32(b, (uint32_t)t->n_shape);
  for (size_t i = 0; i < t->n_shape; i++)
    put_u32(b, t->shape[i]);
  put_u32(b, bits(t->scale));
  put_bytes(b, t->data.data, t->data.len);
  put_bytes(b, t->indices.data, t->indices.len);
}

/* The freshness fields of the upload the tests sign: a negative timestamp pins i64 as its
 * two's-complement u64. */
static const int64_t TS = -1700000000123LL;
static const uint8_t NONCE[17] = {0xa0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xff};

/* The content layout of make_update's upload by device 99, as SIGNING.md lists it. */
static void put_update_layout(buf *b, const upd *x) {
  put(b, "fl.v1.update", 13);
  put_u64(b, 99);
  put_u64(b, 11);
  put_u64(b, 3);
  put_u64(b, 5);
  put_u64(b, 600);
  put_u32(b, bits(0.25f));
  put_u32(b, bits(1.5f));
  put_u64(b, 2);
  put_tensor(b, &x->t[0]);
  put_tensor(b, &x->t[1]);
}

Test(digest, update_layout_is_as_documented) {
  upd x;
  make_update(&x);
  uint8_t got[32], got_content[32], content[32], want[32], want_content[32];
  cr_assert_eq(fl__update_digest(99, TS, NONCE, sizeof NONCE, &x.u, got_content, got), FL_OK);
  cr_assert_eq(fl__update_content_digest(99, &x.u, content), FL_OK);
  buf b = {.n = 0};
  put_update_layout(&b, &x);
  cr_assert_eq(fl__sha256(b.b, b.n, want_content), FL_OK);
  cr_assert_arr_eq(content, want_content, 32);
  cr_assert_arr_eq(got_content, want_content, 32);
  /* The signed digest: tag (13 bytes with its NUL), the content digest raw, then i64
   * timestamp and the length-prefixed nonce; 32 + 13 + 8 + 8 + 17 bytes. */
  buf s = {.n = 0};
  put(&s, "fl.v1.upload", 13);
  put(&s, want_content, 32);
  put_u64(&s, (uint64_t)TS);
  put_bytes(&s, NONCE, sizeof NONCE);
  cr_assert_eq(s.n, 13 + 32 + 8 + 8 + 17);
  static const uint8_t ts_bytes[8] = {0x85, 0x97, 0x1a, 0x30, 0x74, 0xfe, 0xff, 0xff};
  cr_assert_arr_eq(s.b + 45, ts_bytes, 8);
  cr_assert_eq(fl__sha256(s.b, s.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
  uint8_t again[32];
  cr_assert_eq(fl__upload_digest(content, TS, NONCE, sizeof NONCE, again), FL_OK);
  cr_assert_arr_eq(again, want, 32);
}

/* Each mutation changes one field of the upload; the signed digest must change each time. */
static void mutate(upd *x, uint64_t *dev, int64_t *ts, uint8_t *nonce, size_t *nonce_len,
                   int which) {
  switch (which) {
    case 0:
      (*dev)++;
      break;
    case 1:
      x->u.round_id++;
      break;
    case 2:
      x->u.model_id++;
      break;
    case 3:
      x->u.base_version++;
      break;
    case 4:
      x->u.sample_count++;
      break;
    case 5:
      x->u.loss = 0.2500001f;
      break;
    case 6:
      x->u.norm = -1.5f;
      break;
    case 7:
      x->u.n_delta = 1;
      break;
    case 8:
      x->t[0].encoding = FL__V1__ENCODING__ENCODING_FLOAT16;
      break;
    case 9:
      x->t[0].count = 7;
      break;
    case 10:
      x->t[0].n_shape = 1;
      break;
    case 11:
      x->shape0[1] = 4;
      break;
    case 12:
      x->t[0].scale = 1e-30f;
      break;
    case 13:
      x->data0[23] ^= 1;
      break;
    case 14:
      x->t[0].data.len = 23;
      break;
    case 15:
      x->t[1].indices.len = 4;
      break;
    case 16:
      x->idx1[7] ^= 0x80;
      break;
    case 17:
      x->data1[0] ^= 1;
      break;
    case 18:
      x->shape1[0] = 11;
      break;
    case 19:
      x->t[1].encoding = FL__V1__ENCODING__ENCODING_INT8;
      break;
    case 20:
      x->u.loss = -0.0f;
      x->u.norm = 0.0f;
      break;
    case 21:
      (*ts)++;
      break;
    case 22:
      *ts = -*ts;
      break;
    case 23:
      nonce[5] ^= 0x01;
      break;
    case 24:
      (*nonce_len)--;
      break;
  }
}

enum { N_FIELDS = 25, FIRST_FRESHNESS = 21 };

Test(digest, update_every_field_changes_digest) {
  upd x;
  uint8_t base[32], base_content[32], d[32], c[32];
  make_update(&x);
  x.u.loss = 0.0f;
  cr_assert_eq(fl__update_digest(99, TS, NONCE, sizeof NONCE, &x.u, base_content, base), FL_OK);
  make_update(&x);
  cr_assert_eq(fl__update_digest(99, TS, NONCE, sizeof NONCE, &x.u, base_content, base), FL_OK);
  for (int which = 0; which < N_FIELDS; which++) {
    uint64_t dev = 99;
    int64_t ts = TS;
    uint8_t nonce[sizeof NONCE];
    size_t nonce_len = sizeof NONCE;
    memcpy(nonce, NONCE, sizeof nonce);
    make_update(&x);
    mutate(&x, &dev, &ts, nonce, &nonce_len, which);
    cr_assert_eq(fl__update_digest(dev, ts, nonce, nonce_len, &x.u, c, d), FL_OK);
    cr_assert(memcmp(base, d, 32) != 0, "field %d did not change the digest", which);
    /* The content digest names the update alone: a retry with fresh timestamp and nonce is
     * the same update (idempotence), any other field makes it another one. */
    if (which < FIRST_FRESHNESS)
      cr_assert(memcmp(base_content, c, 32) != 0, "field %d did not change the content", which);
    else
      cr_assert_arr_eq(base_content, c, 32, "freshness field %d changed the content", which);
  }
}

/* proto3 omits a float field equal to zero, -0.0 included, so the receiver of an update whose
 * loss, norm or scale is -0.0 parses 0.0: the digests hash -0.0 as 0.0 (docs/SIGNING.md), or a
 * device that signs such an update would be refused bad_signature. */
Test(digest, negative_zero_hashes_as_zero) {
  upd x;
  uint8_t pos[32], neg[32], got[32], cpos[32], cneg[32], cgot[32];
  make_update(&x);
  x.u.loss = 0.0f;
  x.u.norm = 0.0f;
  x.t[0].scale = 0.0f;
  cr_assert_eq(fl__update_digest(7, TS, NONCE, sizeof NONCE, &x.u, cpos, pos), FL_OK);
  x.u.loss = -0.0f;
  x.u.norm = -0.0f;
  x.t[0].scale = -0.0f;
  cr_assert_eq(fl__update_digest(7, TS, NONCE, sizeof NONCE, &x.u, cneg, neg), FL_OK);
  cr_assert_arr_eq(pos, neg, 32, "-0.0 and 0.0 hash differently");
  cr_assert_arr_eq(cpos, cneg, 32);
  /* What the coordinator sees: the update after the wire. */
  size_t n = fl__v1__update_upload__get_packed_size(&x.u);
  uint8_t wire[512];
  cr_assert_leq(n, sizeof wire);
  fl__v1__update_upload__pack(&x.u, wire);
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, n, wire);
  cr_assert_not_null(u);
  cr_assert_eq(fl__update_digest(7, TS, NONCE, sizeof NONCE, u, cgot, got), FL_OK);
  cr_assert_arr_eq(got, neg, 32, "the digest changed on the wire");
  cr_assert_arr_eq(cgot, cneg, 32);
  fl__v1__update_upload__free_unpacked(u, NULL);
  /* Other values keep their bits: -1.0 is not 1.0. */
  x.u.loss = -1.0f;
  cr_assert_eq(fl__update_digest(7, TS, NONCE, sizeof NONCE, &x.u, NULL, got), FL_OK);
  x.u.loss = 1.0f;
  cr_assert_eq(fl__update_digest(7, TS, NONCE, sizeof NONCE, &x.u, NULL, pos), FL_OK);
  cr_assert(memcmp(got, pos, 32) != 0);
}

Test(digest, update_signature_not_covered) {
  upd x;
  uint8_t a[32], b[32], ca[32], cb[32], sig[64] = {1};
  make_update(&x);
  cr_assert_eq(fl__update_digest(1, TS, NONCE, sizeof NONCE, &x.u, ca, a), FL_OK);
  x.u.signature.data = sig;
  x.u.signature.len = 64;
  cr_assert_eq(fl__update_digest(1, TS, NONCE, sizeof NONCE, &x.u, cb, b), FL_OK);
  cr_assert_arr_eq(a, b, 32);
  cr_assert_arr_eq(ca, cb, 32);
}

/* UpdateUpload.train_stats (field 10): after the tensors (and clip_state), led by u32(10),
 * doubles as f64 bits; absent, the layout is the one above. */
static double T_MEAN[2] = {0.5, -2.0}, T_M2[2] = {3.0, 0.0};
static uint64_t T_HIST[3] = {4, 0, 6};
static void make_train_stats(Fl__V1__DriftStats *t) {
  fl__v1__drift_stats__init(t);
  t->model_id = 3;
  t->count = 10;
  t->mean = T_MEAN;
  t->m2 = T_M2;
  t->n_mean = t->n_m2 = 2;
  t->score_hist = T_HIST;
  t->n_score_hist = 3;
  t->score_lo = -6;
  t->score_hi = 2;
  t->anomalies = 1;
}
static void put_f64(buf *b, double d) {
  uint64_t u = 0;
  if (d != 0)
    memcpy(&u, &d, 8);
  put_u64(b, u);
}

Test(digest, update_train_stats_layout_is_as_documented) {
  upd x;
  Fl__V1__DriftStats t;
  uint8_t without[32], content[32], want[32];
  make_update(&x);
  cr_assert_eq(fl__update_content_digest(99, &x.u, without), FL_OK);
  make_train_stats(&t);
  x.u.train_stats = &t;
  cr_assert_eq(fl__update_content_digest(99, &x.u, content), FL_OK);
  buf b = {.n = 0};
  put_update_layout(&b, &x);
  put_u32(&b, 10);
  put_u64(&b, 3);
  put_u64(&b, 0);
  put_u64(&b, 10);
  put_u64(&b, 2);
  put_f64(&b, 0.5);
  put_f64(&b, -2.0);
  put_u64(&b, 2);
  put_f64(&b, 3.0);
  put_f64(&b, 0.0);
  put_u64(&b, 3);
  put_u64(&b, 4);
  put_u64(&b, 0);
  put_u64(&b, 6);
  put_f64(&b, -6);
  put_f64(&b, 2);
  put_u64(&b, 1);
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(content, want, 32);
  cr_assert(memcmp(content, without, 32) != 0);
  /* Every statistic is covered. */
  for (int which = 0; which < 8; which++) {
    uint8_t d[32];
    make_train_stats(&t);
    double mean[2] = {0.5, -2.0}, m2[2] = {3.0, 0.0};
    uint64_t hist[3] = {4, 0, 6};
    t.mean = mean;
    t.m2 = m2;
    t.score_hist = hist;
    switch (which) {
      case 0:
        t.model_id++;
        break;
      case 1:
        t.version++;
        break;
      case 2:
        t.count++;
        break;
      case 3:
        mean[1] = -2.0000001;
        break;
      case 4:
        m2[1] = 1e-300;
        break;
      case 5:
        hist[1] = 1;
        break;
      case 6:
        t.score_hi = 3;
        break;
      case 7:
        t.anomalies = 0;
        break;
    }
    cr_assert_eq(fl__update_content_digest(99, &x.u, d), FL_OK);
    cr_assert(memcmp(d, content, 32) != 0, "statistic %d is not covered", which);
  }
}

Test(digest, update_refuses_null_tensor) {
  upd x;
  uint8_t d[32];
  make_update(&x);
  x.tp[1] = NULL;
  cr_assert_eq(fl__update_digest(1, TS, NONCE, sizeof NONCE, &x.u, NULL, d), FL_E_INVAL);
  cr_assert_eq(fl__update_digest(1, TS, NONCE, sizeof NONCE, NULL, NULL, d), FL_E_INVAL);
  cr_assert_eq(fl__update_content_digest(1, &x.u, d), FL_E_INVAL);
  make_update(&x);
  cr_assert_eq(fl__update_digest(1, TS, NULL, 16, &x.u, NULL, d), FL_E_INVAL);
  cr_assert_eq(fl__upload_digest(NULL, TS, NONCE, sizeof NONCE, d), FL_E_INVAL);
  cr_assert_eq(fl__upload_digest(d, TS, NULL, 1, d), FL_E_INVAL);
}

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

/* ---- task digest (TrainTask.signature) ----------------------------------------------------- */

typedef struct tsk {
  Fl__V1__TrainTask t;
  Fl__V1__Hyperparameters h;
  uint8_t sha[32];
} tsk;

static void make_task(tsk *x) {
  fl__v1__train_task__init(&x->t);
  fl__v1__hyperparameters__init(&x->h);
  for (int i = 0; i < 32; i++)
    x->sha[i] = (uint8_t)(0x40 + i);
  x->h.local_epochs = 3;
  x->h.batch_size = 64;
  x->h.learning_rate = 0.05f;
  x->h.momentum = 0.9f;
  x->h.weight_decay = 1e-4f;
  x->h.prox_mu = 0.01f;
  x->t.round_id = 11;
  x->t.model_id = 2;
  x->t.base_version = 5;
  x->t.base_sha256 = (ProtobufCBinaryData){32, x->sha};
  x->t.hyperparameters = &x->h;
  x->t.clip_norm = 2.5f;
  x->t.noise_stddev = 0.125f;
  x->t.encoding = FL__V1__ENCODING__ENCODING_INT8;
  x->t.topk_fraction = 0.25f;
  x->t.deadline_ms = -1700000000123LL;
  x->t.seed = 0x0102030405060708ULL;
}

Test(digest, task_layout_is_as_documented) {
  tsk x;
  make_task(&x);
  static const uint8_t sig[64] = {1, 2, 3}; /* not covered */
  x.t.signature = (ProtobufCBinaryData){64, (uint8_t *)sig};
  uint8_t got[32], want[32];
  cr_assert_eq(fl__task_digest(77, &x.t, got), FL_OK);
  buf b = {.n = 0};
  put(&b, "fl.v1.task", 11);
  put_u64(&b, 77);
  put_u64(&b, 11);
  put_u64(&b, 2);
  put_u64(&b, 5);
  put_bytes(&b, x.sha, 32);
  put_u32(&b, 3);
  put_u32(&b, 64);
  put_u32(&b, bits(0.05f));
  put_u32(&b, bits(0.9f));
  put_u32(&b, bits(1e-4f));
  put_u32(&b, bits(0.01f));
  put_u32(&b, bits(2.5f));
  put_u32(&b, bits(0.125f));
  put_u32(&b, 3);
  put_u32(&b, bits(0.25f));
  put_u64(&b, (uint64_t)(int64_t)-1700000000123LL);
  put_u64(&b, 0x0102030405060708ULL);
  cr_assert_eq(b.n, 11 + 4 * 8 + 8 + 32 + 10 * 4 + 2 * 8, "the size SIGNING.md gives");
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
}

Test(digest, task_every_field_changes_digest) {
  uint8_t base[32], d[32];
  tsk x;
  make_task(&x);
  cr_assert_eq(fl__task_digest(77, &x.t, base), FL_OK);
  cr_assert_eq(fl__task_digest(78, &x.t, d), FL_OK);
  cr_assert(memcmp(base, d, 32) != 0, "device_id");
  for (int field = 0; field < 16; field++) {
    make_task(&x);
    switch (field) {
      case 0:
        x.t.round_id++;
        break;
      case 1:
        x.t.model_id++;
        break;
      case 2:
        x.t.base_version++;
        break;
      case 3:
        x.sha[31] ^= 1;
        break;
      case 4:
        x.h.local_epochs = 1000000;
        break;
      case 5:
        x.h.batch_size++;
        break;
      case 6:
        x.h.learning_rate = 5.0f;
        break;
      case 7:
        x.h.momentum = 0;
        break;
      case 8:
        x.h.weight_decay = 0;
        break;
      case 9:
        x.h.prox_mu = 0;
        break;
      case 10:
        x.t.clip_norm = 0;
        break;
      case 11:
        x.t.noise_stddev = 0;
        break;
      case 12:
        x.t.encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
        break;
      case 13:
        x.t.topk_fraction = 0.5f;
        break;
      case 14:
        x.t.deadline_ms++;
        break;
      default:
        x.t.seed++;
        break;
    }
    cr_assert_eq(fl__task_digest(77, &x.t, d), FL_OK);
    cr_assert(memcmp(base, d, 32) != 0, "field %d is not covered", field);
  }
  make_task(&x);
  cr_assert_eq(fl__task_digest(77, &x.t, d), FL_OK);
  cr_assert_arr_eq(base, d, 32, "deterministic");
}

/* Absent hyperparameters hash as all zero (what a receiver parses), and -0.0 as 0.0, as in the
 * update digest: a task whose float fields protobuf drops still verifies after the trip. */
Test(digest, task_absent_hyperparameters_and_negative_zero) {
  tsk x;
  make_task(&x);
  uint8_t a[32], b[32];
  fl__v1__hyperparameters__init(&x.h);
  cr_assert_eq(fl__task_digest(1, &x.t, a), FL_OK);
  x.t.hyperparameters = NULL;
  cr_assert_eq(fl__task_digest(1, &x.t, b), FL_OK);
  cr_assert_arr_eq(a, b, 32, "absent = zero");

  make_task(&x);
  x.h.momentum = -0.0f;
  x.t.clip_norm = -0.0f;
  x.t.topk_fraction = -0.0f;
  cr_assert_eq(fl__task_digest(1, &x.t, a), FL_OK);
  size_t n = fl__v1__train_task__get_packed_size(&x.t);
  uint8_t wire[512];
  cr_assert_leq(n, sizeof wire);
  fl__v1__train_task__pack(&x.t, wire);
  Fl__V1__TrainTask *back = fl__v1__train_task__unpack(NULL, n, wire);
  cr_assert_not_null(back);
  cr_assert_eq(fl__task_digest(1, back, b), FL_OK);
  fl__v1__train_task__free_unpacked(back, NULL);
  cr_assert_arr_eq(a, b, 32, "-0.0 survives the protobuf trip");
  x.h.momentum = 0.0f;
  x.t.clip_norm = 0.0f;
  x.t.topk_fraction = 0.0f;
  cr_assert_eq(fl__task_digest(1, &x.t, b), FL_OK);
  cr_assert_arr_eq(a, b, 32);
}

Test(digest, task_refuses_null) {
  uint8_t d[32];
  cr_assert_eq(fl__task_digest(1, NULL, d), FL_E_INVAL);
  tsk x;
  make_task(&x);
  x.t.base_sha256.data = NULL;
  cr_assert_eq(fl__task_digest(1, &x.t, d), FL_E_INVAL);
}

/* ---- secure aggregation (SIGNING.md "Secure aggregation keys", the optional fields) -------- */

Test(digest, secagg_keys_layout_is_as_documented) {
  uint8_t c[32], s[32], got[32], want[32];
  for (int i = 0; i < 32; i++) {
    c[i] = (uint8_t)i;
    s[i] = (uint8_t)(0xff - i);
  }
  cr_assert_eq(fl__secagg_keys_digest(77, 12, c, 32, s, 32, got), FL_OK);
  buf b = {.n = 0};
  put(&b, "fl.v1.secagg.keys", 18);
  put_u64(&b, 77);
  put_u64(&b, 12);
  put_bytes(&b, c, 32);
  put_bytes(&b, s, 32);
  cr_assert_eq(b.n, 114, "the size SIGNING.md gives");
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
  /* Swapping the two keys, the device or the round gives another digest. */
  uint8_t other[32];
  cr_assert_eq(fl__secagg_keys_digest(77, 12, s, 32, c, 32, other), FL_OK);
  cr_assert_arr_neq(got, other, 32);
  cr_assert_eq(fl__secagg_keys_digest(78, 12, c, 32, s, 32, other), FL_OK);
  cr_assert_arr_neq(got, other, 32);
  cr_assert_eq(fl__secagg_keys_digest(77, 13, c, 32, s, 32, other), FL_OK);
  cr_assert_arr_neq(got, other, 32);
  cr_assert_eq(fl__secagg_keys_digest(77, 12, NULL, 32, s, 32, other), FL_E_INVAL);
}

Test(digest, secagg_fields_hashed_only_when_set) {
  tsk x;
  make_task(&x);
  uint8_t plain[32], with[32], other[32];
  cr_assert_eq(fl__task_digest(77, &x.t, plain), FL_OK);
  Fl__V1__SecAggTask sa = FL__V1__SEC_AGG_TASK__INIT;
  sa.threshold = 11;
  sa.neighbors = 20;
  x.t.secure_aggregation = &sa;
  cr_assert_eq(fl__task_digest(77, &x.t, with), FL_OK);
  cr_assert_arr_neq(plain, with, 32);
  sa.neighbors = 21;
  cr_assert_eq(fl__task_digest(77, &x.t, other), FL_OK);
  cr_assert_arr_neq(with, other, 32);
  /* The update: the masked words are covered when present, absent they change nothing. */
  upd u;
  make_update(&u);
  uint8_t c0[32], c1[32], c2[32];
  cr_assert_eq(fl__update_content_digest(99, &u.u, c0), FL_OK);
  uint8_t words[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  u.u.secagg_masked = (ProtobufCBinaryData){8, words};
  cr_assert_eq(fl__update_content_digest(99, &u.u, c1), FL_OK);
  cr_assert_arr_neq(c0, c1, 32);
  words[7] ^= 1;
  cr_assert_eq(fl__update_content_digest(99, &u.u, c2), FL_OK);
  cr_assert_arr_neq(c1, c2, 32);
}
