/* fl-sim partitions: every scheme is disjoint and complete, sizes and label skew behave as the
 * papers define them, and impossible requests fail instead of looping. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"
#include "partition.h"

#define N_EX 6000
#define N_CLASSES 10

static int32_t labels[N_EX];

/* 600 examples of each class in random order. */
static void make_labels(uint64_t seed) {
  fl_rng r;
  fl__rng_seed(&r, seed);
  uint32_t perm[N_EX];
  for (uint32_t i = 0; i < N_EX; i++)
    perm[i] = i;
  fl__rng_shuffle_u32(&r, perm, N_EX);
  for (uint32_t i = 0; i < N_EX; i++)
    labels[perm[i]] = (int32_t)(i % N_CLASSES);
}

/* Each pool example appears once at most; returns how many appear. */
static size_t check_disjoint(const sim_partition *p, size_t n_ex) {
  unsigned char *seen = calloc(n_ex, 1);
  cr_assert_not_null(seen);
  size_t total = p->offsets[p->n_parties];
  cr_assert_eq(p->offsets[0], 0);
  for (size_t k = 0; k < p->n_parties; k++)
    cr_assert_leq(p->offsets[k], p->offsets[k + 1]);
  for (size_t i = 0; i < total; i++) {
    cr_assert_lt(p->index[i], n_ex);
    cr_assert_eq(seen[p->index[i]], 0, "example %u assigned twice", p->index[i]);
    seen[p->index[i]] = 1;
  }
  free(seen);
  return total;
}

static int n_labels_of(const sim_partition *p, size_t k) {
  int present[N_CLASSES] = {0}, n = 0;
  for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++)
    present[labels[p->index[i]]] = 1;
  for (int c = 0; c < N_CLASSES; c++)
    n += present[c];
  return n;
}

/* Mean over parties of the largest single-class share: 0.1 for perfectly balanced labels. */
static double mean_top_share(const sim_partition *p) {
  double s = 0;
  for (size_t k = 0; k < p->n_parties; k++) {
    size_t cnt[N_CLASSES] = {0}, top = 0;
    for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++)
      cnt[labels[p->index[i]]]++;
    for (int c = 0; c < N_CLASSES; c++)
      top = cnt[c] > top ? cnt[c] : top;
    s += (double)top / (double)sim_partition_size(p, k);
  }
  return s / (double)p->n_parties;
}

Test(sim_partition, iid_complete_balanced) {
  fl_rng r;
  fl__rng_seed(&r, 1);
  sim_partition p = {0};
  cr_assert_eq(sim_partition_iid(&p, N_EX, NULL, 7, &r), FL_OK);
  cr_assert_eq(check_disjoint(&p, N_EX), N_EX);
  for (size_t k = 0; k < 7; k++) {
    size_t n = sim_partition_size(&p, k);
    cr_assert(n == N_EX / 7 || n == N_EX / 7 + 1, "party %zu has %zu", k, n);
  }
  sim_partition_free(&p);
  cr_assert_null(p.index);
}

Test(sim_partition, iid_same_seed_same_split) {
  fl_rng a, b;
  fl__rng_seed(&a, 9);
  fl__rng_seed(&b, 9);
  sim_partition p = {0}, q = {0};
  cr_assert_eq(sim_partition_iid(&p, 500, NULL, 10, &a), FL_OK);
  cr_assert_eq(sim_partition_iid(&q, 500, NULL, 10, &b), FL_OK);
  cr_assert_eq(memcmp(p.index, q.index, 500 * sizeof(uint32_t)), 0);
  sim_partition_free(&p);
  sim_partition_free(&q);
}

Test(sim_partition, subsample_pool_is_respected) {
  fl_rng r;
  fl__rng_seed(&r, 2);
  uint32_t *pool = NULL;
  cr_assert_eq(sim_subsample(&pool, N_EX, 600, &r), FL_OK);
  unsigned char in_pool[N_EX] = {0};
  for (size_t i = 0; i < 600; i++)
    in_pool[pool[i]] = 1;
  sim_partition p = {0};
  cr_assert_eq(sim_partition_iid(&p, 600, pool, 10, &r), FL_OK);
  cr_assert_eq(check_disjoint(&p, N_EX), 600);
  for (size_t i = 0; i < 600; i++)
    cr_assert(in_pool[p.index[i]], "example outside the pool");
  cr_assert_eq(sim_subsample(&pool, 10, 11, &r), FL_E_INVAL);
  sim_partition_free(&p);
  free(pool);
}

Test(sim_partition, dirichlet_complete_with_min_size) {
  make_labels(3);
  fl_rng r;
  fl__rng_seed(&r, 3);
  sim_partition p = {0};
  cr_assert_eq(sim_partition_dirichlet(&p, labels, N_CLASSES, N_EX, NULL, 10, 0.5, 10, 100, &r),
               FL_OK);
  cr_assert_eq(check_disjoint(&p, N_EX), N_EX);
  for (size_t k = 0; k < 10; k++)
    cr_assert_geq(sim_partition_size(&p, k), 10);
  sim_partition_free(&p);
}

Test(sim_partition, dirichlet_skew_grows_as_alpha_shrinks) {
  make_labels(4);
  double alphas[3] = {100.0, 1.0, 0.1}, share[3];
  for (int i = 0; i < 3; i++) {
    fl_rng r;
    fl__rng_seed(&r, 40 + (uint64_t)i);
    sim_partition p = {0};
    cr_assert_eq(
        sim_partition_dirichlet(&p, labels, N_CLASSES, N_EX, NULL, 20, alphas[i], 5, 200, &r),
        FL_OK, "alpha %g", alphas[i]);
    share[i] = mean_top_share(&p);
    sim_partition_free(&p);
  }
  cr_assert_lt(share[0], 0.2, "alpha 100 is close to IID: top share %g", share[0]);
  cr_assert_lt(share[0], share[1]);
  cr_assert_lt(share[1], share[2]);
  cr_assert_gt(share[2], 0.5, "alpha 0.1: most of a party is one class (%g)", share[2]);
}

Test(sim_partition, dirichlet_gives_up_when_impossible) {
  make_labels(5);
  fl_rng r;
  fl__rng_seed(&r, 5);
  sim_partition p = {0};
  cr_assert_eq(sim_partition_dirichlet(&p, labels, N_CLASSES, 1000, NULL, 100, 0.001, 9, 20, &r),
               FL_E_STATE);
  cr_assert_null(p.index);
  cr_assert_eq(sim_partition_dirichlet(&p, labels, N_CLASSES, 100, NULL, 20, 0.5, 6, 20, &r),
               FL_E_INVAL);
}

Test(sim_partition, shards_two_labels_per_party) {
  make_labels(6);
  fl_rng r;
  fl__rng_seed(&r, 6);
  sim_partition p = {0};
  /* 6000 examples, 100 parties x 2 shards of 30: shard edges fall on class edges (600 = 20*30). */
  cr_assert_eq(sim_partition_shards(&p, labels, N_EX, NULL, 100, 2, &r), FL_OK);
  cr_assert_eq(check_disjoint(&p, N_EX), N_EX);
  size_t two = 0;
  for (size_t k = 0; k < 100; k++) {
    cr_assert_eq(sim_partition_size(&p, k), 60);
    int n = n_labels_of(&p, k);
    cr_assert(n == 1 || n == 2, "party %zu has %d labels", k, n);
    two += n == 2;
  }
  cr_assert_gt(two, 80, "two shards of one class should be rare, got %zu of 100", 100 - two);
  sim_partition_free(&p);
}

Test(sim_partition, shards_drop_only_the_remainder) {
  make_labels(7);
  fl_rng r;
  fl__rng_seed(&r, 7);
  sim_partition p = {0};
  cr_assert_eq(sim_partition_shards(&p, labels, 1003, NULL, 10, 3, &r), FL_OK);
  cr_assert_eq(check_disjoint(&p, N_EX), 30 * 33);
  sim_partition_free(&p);
  cr_assert_eq(sim_partition_shards(&p, labels, 10, NULL, 10, 2, &r), FL_E_INVAL);
}

Test(sim_partition, scheme_parse) {
  sim_partition_scheme s;
  cr_assert_eq(sim_partition_scheme_parse(&s, "iid"), FL_OK);
  cr_assert_eq(s.kind, SIM_PART_IID);
  cr_assert_eq(sim_partition_scheme_parse(&s, "dirichlet:0.5"), FL_OK);
  cr_assert_eq(s.kind, SIM_PART_DIRICHLET);
  cr_assert_float_eq(s.alpha, 0.5, 1e-12);
  cr_assert_eq(sim_partition_scheme_parse(&s, "shards:2"), FL_OK);
  cr_assert_eq(s.kind, SIM_PART_SHARDS);
  cr_assert_eq(s.shards, 2);
  cr_assert_eq(sim_partition_scheme_parse(&s, "labels:3"), FL_OK);
  cr_assert_eq(s.kind, SIM_PART_LABELS);
  cr_assert_eq(s.labels, 3);
  const char *bad[] = {
      "",          "IID",        "dirichlet:", "dirichlet:0",  "dirichlet:-1", "dirichlet:1x",
      "shards:0",  "shards:two", "shards:2.5", "pathological", "labels:",      "labels:0",
      "labels:-2", "labels:1.5"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    cr_assert_eq(sim_partition_scheme_parse(&s, bad[i]), FL_E_INVAL, "%s", bad[i]);
}

/* The classes party p holds, as a bit set. */
static unsigned class_set(const sim_partition *p, size_t k) {
  unsigned set = 0;
  for (size_t i = p->offsets[k]; i < p->offsets[k + 1]; i++)
    set |= 1u << labels[p->index[i]];
  return set;
}

/* NIID-Bench #C=k: exactly k classes per party, party p's first one p mod 10; every example of
 * a held class assigned once, the holders of a class getting runs that differ by at most one. */
Test(sim_partition, labels_k_classes_per_party_as_niid_bench) {
  make_labels(11);
  for (size_t k = 1; k <= 3; k++) {
    for (size_t parties = 10; parties <= 100; parties += 90) {
      fl_rng r;
      fl__rng_seed(&r, 5 + k);
      sim_partition p = {0};
      cr_assert_eq(sim_partition_labels(&p, labels, N_CLASSES, N_EX, NULL, parties, k, &r), FL_OK);
      size_t holders[N_CLASSES] = {0}, got[N_CLASSES] = {0};
      size_t lo[N_CLASSES], hi[N_CLASSES];
      for (int c = 0; c < N_CLASSES; c++) {
        lo[c] = SIZE_MAX;
        hi[c] = 0;
      }
      for (size_t q = 0; q < parties; q++) {
        cr_assert_eq(n_labels_of(&p, q), (int)k, "party %zu of %zu holds %d classes, not %zu", q,
                     parties, n_labels_of(&p, q), k);
        unsigned set = class_set(&p, q);
        cr_assert(set & (1u << (q % N_CLASSES)), "party %zu lacks its class %zu", q, q % N_CLASSES);
        size_t per[N_CLASSES] = {0};
        for (size_t i = p.offsets[q]; i < p.offsets[q + 1]; i++)
          per[labels[p.index[i]]]++;
        for (int c = 0; c < N_CLASSES; c++) {
          if (!(set & (1u << c)))
            continue;
          holders[c]++;
          got[c] += per[c];
          lo[c] = per[c] < lo[c] ? per[c] : lo[c];
          hi[c] = per[c] > hi[c] ? per[c] : hi[c];
        }
      }
      size_t total = check_disjoint(&p, N_EX), expect = 0;
      for (int c = 0; c < N_CLASSES; c++) {
        if (holders[c] == 0)
          continue;
        cr_assert_eq(got[c], N_EX / N_CLASSES, "class %d: all its examples, to its holders", c);
        cr_assert_leq(hi[c] - lo[c], 1, "class %d split unevenly (%zu..%zu)", c, lo[c], hi[c]);
        expect += got[c];
      }
      cr_assert_eq(total, expect, "only examples of held classes are assigned");
      if (parties >= N_CLASSES)
        cr_assert_eq(total, N_EX, "every class is held when parties >= classes");
      sim_partition_free(&p);
    }
  }
}

Test(sim_partition, labels_all_classes_is_an_even_split_of_each) {
  make_labels(12);
  fl_rng r;
  fl__rng_seed(&r, 3);
  sim_partition p = {0};
  cr_assert_eq(sim_partition_labels(&p, labels, N_CLASSES, N_EX, NULL, 20, N_CLASSES, &r), FL_OK);
  for (size_t q = 0; q < 20; q++)
    cr_assert_eq(sim_partition_size(&p, q), N_EX / 20);
  cr_assert_eq(check_disjoint(&p, N_EX), N_EX);
  sim_partition_free(&p);
}

Test(sim_partition, labels_same_seed_same_split_and_bad_requests) {
  make_labels(13);
  sim_partition a = {0}, b = {0};
  fl_rng r;
  fl__rng_seed(&r, 9);
  cr_assert_eq(sim_partition_labels(&a, labels, N_CLASSES, N_EX, NULL, 30, 2, &r), FL_OK);
  fl__rng_seed(&r, 9);
  cr_assert_eq(sim_partition_labels(&b, labels, N_CLASSES, N_EX, NULL, 30, 2, &r), FL_OK);
  cr_assert_eq(memcmp(a.offsets, b.offsets, 31 * sizeof(size_t)), 0);
  cr_assert_eq(memcmp(a.index, b.index, a.offsets[30] * sizeof(uint32_t)), 0);
  sim_partition_free(&a);
  sim_partition_free(&b);
  sim_partition p = {0};
  cr_assert_eq(sim_partition_labels(&p, labels, N_CLASSES, N_EX, NULL, 30, 0, &r), FL_E_INVAL);
  cr_assert_eq(sim_partition_labels(&p, labels, N_CLASSES, N_EX, NULL, 30, 11, &r), FL_E_INVAL);
  /* 6000 examples, 600 per class, 1000 parties holding 9 classes each: about 900 holders a
   * class, more than it has examples. */
  cr_assert_eq(sim_partition_labels(&p, labels, N_CLASSES, N_EX, NULL, 1000, 9, &r), FL_E_STATE);
  cr_assert_null(p.index, "nothing allocated on error");
  sim_partition_scheme s = {.kind = SIM_PART_LABELS, .labels = 2};
  cr_assert_eq(sim_partition_apply(&p, &s, labels, N_CLASSES, N_EX, NULL, 30, 1, &r), FL_OK);
  for (size_t q = 0; q < 30; q++)
    cr_assert_eq(n_labels_of(&p, q), 2);
  sim_partition_free(&p);
}
