/* The update content digest and the signed upload digest: documented byte layouts (the
 * tensors, the training statistics, the masked words), every field changes the digest, the
 * signature is not covered, NULL refused (common/digest.c, docs/SIGNING.md). */
#include <criterion/criterion.h>
#include <string.h>

#include "digest.h"
#include "digest_layout.h"
#include "fl/err.h"

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

/* The masked words (secure aggregation) are covered when present, absent they change nothing. */
Test(digest, update_secagg_masked_hashed_only_when_set) {
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
