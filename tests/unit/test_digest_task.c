/* The task digest (TrainTask.signature): its documented byte layout, every field changes
 * the digest, absent hyperparameters and -0.0, the secure-aggregation fields, NULL refused
 * (common/digest.c, docs/SIGNING.md). */
#include <criterion/criterion.h>
#include <string.h>

#include "digest.h"
#include "digest_layout.h"
#include "fl/err.h"

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

/* The secure-aggregation fields of a task are hashed only when set (SIGNING.md). */
Test(digest, task_secagg_fields_hashed_only_when_set) {
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
}
