/*
 * A failing allocator for the allocation-failure sweeps (fail the Nth allocation for every N):
 * it counts the allocations attempted and the blocks alive, and refuses the allocation whose
 * index is fail_at, and keeps the largest size asked for (what a hostile input made it spend).
 * Shared by the unit tests of every module that takes an fl_allocator.
 */
#ifndef TEST_ALLOC_H
#define TEST_ALLOC_H

#include <stdlib.h>

#include "fl/alloc.h"

typedef struct test_alloc {
  long calls;   /* allocations attempted */
  long fail_at; /* the one that fails; -1: none */
  long failed;  /* allocations refused */
  long live;    /* blocks currently allocated */
  size_t largest; /* the largest size asked for */
} test_alloc;

static inline void *test_alloc_malloc(void *ctx, size_t n) {
  test_alloc *a = ctx;
  if (n > a->largest)
    a->largest = n;
  if (a->calls++ == a->fail_at) {
    a->failed++;
    return NULL;
  }
  void *p = malloc(n);
  if (p != NULL)
    a->live++;
  return p;
}

static inline void *test_alloc_realloc(void *ctx, void *p, size_t n) {
  test_alloc *a = ctx;
  if (n > a->largest)
    a->largest = n;
  if (a->calls++ == a->fail_at) {
    a->failed++;
    return NULL;
  }
  void *q = realloc(p, n);
  if (q != NULL && p == NULL)
    a->live++;
  return q;
}

static inline void test_alloc_free(void *ctx, void *p) {
  test_alloc *a = ctx;
  if (p != NULL)
    a->live--;
  free(p);
}

/* The hooks over `a`, which must outlive every allocation made through them. */
static inline fl_allocator test_alloc_hooks(test_alloc *a) {
  return (fl_allocator){.malloc_fn = test_alloc_malloc,
                        .realloc_fn = test_alloc_realloc,
                        .free_fn = test_alloc_free,
                        .ctx = a};
}

#endif
