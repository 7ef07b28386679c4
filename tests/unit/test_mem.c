/* Allocation wrappers route through the fl_allocator, check overflow, and the logger formats. */
#include <criterion/criterion.h>
#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mem.h"

typedef struct counting {
  int mallocs, reallocs, frees;
  int fail_after; /* fail every allocation once this many have succeeded; -1 = never */
} counting;

static void *c_malloc(void *ctx, size_t n) {
  counting *c = ctx;
  if (c->fail_after >= 0 && c->mallocs + c->reallocs >= c->fail_after)
    return NULL;
  c->mallocs++;
  return malloc(n);
}
static void *c_realloc(void *ctx, void *p, size_t n) {
  counting *c = ctx;
  if (c->fail_after >= 0 && c->mallocs + c->reallocs >= c->fail_after)
    return NULL;
  c->reallocs++;
  return realloc(p, n);
}
static void c_free(void *ctx, void *p) {
  counting *c = ctx;
  if (p != NULL)
    c->frees++;
  free(p);
}

Test(mem, libc_default) {
  char *p = fl__malloc(NULL, 16);
  cr_assert_not_null(p);
  memset(p, 7, 16);
  p = fl__realloc(NULL, p, 64);
  cr_assert_not_null(p);
  cr_assert_eq(p[15], 7);
  fl__free(NULL, p);
  fl__free(NULL, NULL);
  unsigned char *z = fl__calloc(NULL, 10, 10);
  cr_assert_not_null(z);
  for (int i = 0; i < 100; i++)
    cr_assert_eq(z[i], 0);
  fl__free(NULL, z);
}

Test(mem, zero_size_is_not_null) {
  void *p = fl__malloc(NULL, 0);
  cr_assert_not_null(p);
  fl__free(NULL, p);
  p = fl__calloc(NULL, 0, 8);
  cr_assert_not_null(p);
  fl__free(NULL, p);
}

Test(mem, calloc_overflow_refused) {
  counting c = {0, 0, 0, -1};
  fl_allocator a = {c_malloc, c_realloc, c_free, &c};
  cr_assert_null(fl__calloc(NULL, SIZE_MAX / 2, 3));
  cr_assert_null(fl__calloc(&a, SIZE_MAX / 4 + 1, 4));
  cr_assert_eq(c.mallocs, 0, "overflowing request must not reach the allocator");
}

Test(mem, custom_allocator_sees_everything) {
  counting c = {0, 0, 0, -1};
  fl_allocator a = {c_malloc, c_realloc, c_free, &c};
  unsigned char *z = fl__calloc(&a, 4, 8);
  cr_assert_not_null(z);
  for (int i = 0; i < 32; i++)
    cr_assert_eq(z[i], 0);
  z = fl__realloc(&a, z, 128);
  char *s = fl__strdup(&a, "fleet");
  cr_assert_str_eq(s, "fleet");
  fl__free(&a, z);
  fl__free(&a, s);
  fl__free(&a, NULL);
  cr_assert_eq(c.mallocs, 2);
  cr_assert_eq(c.reallocs, 1);
  cr_assert_eq(c.frees, 2);
}

Test(mem, failing_allocator_returns_null) {
  counting c = {0, 0, 0, 0};
  fl_allocator a = {c_malloc, c_realloc, c_free, &c};
  cr_assert_null(fl__malloc(&a, 8));
  cr_assert_null(fl__calloc(&a, 2, 8));
  cr_assert_null(fl__strdup(&a, "x"));
  cr_assert_null(fl__strdup(NULL, NULL));
}

Test(mem, protobuf_allocator_forwards) {
  counting c = {0, 0, 0, -1};
  fl_allocator a = {c_malloc, c_realloc, c_free, &c};
  ProtobufCAllocator pa;
  fl__protobuf_allocator(&pa, &a);
  void *p = pa.alloc(pa.allocator_data, 40);
  cr_assert_not_null(p);
  pa.free(pa.allocator_data, p);
  cr_assert_eq(c.mallocs, 1);
  cr_assert_eq(c.frees, 1);
  fl__protobuf_allocator(&pa, NULL);
  p = pa.alloc(pa.allocator_data, 40);
  cr_assert_not_null(p);
  pa.free(pa.allocator_data, p);
}

typedef struct captured {
  int calls;
  fl_log_level level;
  char line[2048];
} captured;

static void capture(void *ctx, fl_log_level level, const char *line) {
  captured *cap = ctx;
  cap->calls++;
  cap->level = level;
  snprintf(cap->line, sizeof cap->line, "%s", line);
}

Test(mem, log_formats_and_filters) {
  captured cap = {0};
  fl_logger lg = {capture, &cap, FL_LOG_INFO};
  fl__log(&lg, FL_LOG_WARN, "round %d of %s\n", 3, "plan");
  cr_assert_eq(cap.calls, 1);
  cr_assert_eq(cap.level, FL_LOG_WARN);
  cr_assert_str_eq(cap.line, "round 3 of plan");
  fl__log(&lg, FL_LOG_DEBUG, "dropped %d", 1);
  cr_assert_eq(cap.calls, 1, "a level above the logger's must be dropped");
  fl__log(NULL, FL_LOG_ERROR, "no logger");
  fl_logger off = {NULL, NULL, FL_LOG_DEBUG};
  fl__log(&off, FL_LOG_ERROR, "off");
  cr_assert_eq(cap.calls, 1);
}

Test(mem, log_truncates_long_lines) {
  captured cap = {0};
  fl_logger lg = {capture, &cap, FL_LOG_DEBUG};
  char big[3000];
  memset(big, 'a', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  fl__log(&lg, FL_LOG_INFO, "%s", big);
  cr_assert_eq(cap.calls, 1);
  size_t n = strlen(cap.line);
  cr_assert_lt(n, 1024);
  cr_assert_gt(n, 1000);
  cr_assert_str_eq(cap.line + n - 3, "...");
}
