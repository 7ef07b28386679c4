/*
 * Allocation wrappers and the logger.
 *
 * Every allocation goes through here so that a caller-supplied fl_allocator (or a test
 * allocator that fails the Nth call) sees all of them. A zero-byte request is rounded up to one
 * byte so that NULL always means "out of memory" and never "you asked for nothing".
 */
#include "mem.h"

#include <protobuf-c/protobuf-c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *fl__malloc(const fl_allocator *a, size_t size) {
  if (size == 0)
    size = 1;
  if (a == NULL || a->malloc_fn == NULL)
    return malloc(size);
  return a->malloc_fn(a->ctx, size);
}

void *fl__calloc(const fl_allocator *a, size_t n, size_t size) {
  if (size != 0 && n > SIZE_MAX / size)
    return NULL;
  size_t total = n * size;
  if (a == NULL || a->malloc_fn == NULL)
    return calloc(total ? n : 1, total ? size : 1);
  void *p = fl__malloc(a, total);
  if (p != NULL)
    memset(p, 0, total ? total : 1);
  return p;
}

void *fl__realloc(const fl_allocator *a, void *ptr, size_t size) {
  if (size == 0)
    size = 1;
  if (a == NULL || a->realloc_fn == NULL)
    return realloc(ptr, size);
  return a->realloc_fn(a->ctx, ptr, size);
}

void fl__free(const fl_allocator *a, void *ptr) {
  if (ptr == NULL)
    return;
  if (a == NULL || a->free_fn == NULL)
    free(ptr);
  else
    a->free_fn(a->ctx, ptr);
}

char *fl__strdup(const fl_allocator *a, const char *s) {
  if (s == NULL)
    return NULL;
  size_t n = strlen(s) + 1;
  char *d = fl__malloc(a, n);
  if (d != NULL)
    memcpy(d, s, n);
  return d;
}

/* protobuf-c hands its allocator_data back to us; it holds the fl_allocator (or NULL). */
static void *pb_alloc(void *data, size_t size) {
  return fl__malloc(data, size);
}

static void pb_free(void *data, void *ptr) {
  fl__free(data, ptr);
}

void fl__protobuf_allocator(struct ProtobufCAllocator *out, const fl_allocator *a) {
  out->alloc = pb_alloc;
  out->free = pb_free;
  /* protobuf-c's field is not const-qualified; we never write through it. */
  out->allocator_data = (void *)(uintptr_t)a;
}

static void *pb_budget_alloc(void *data, size_t size) {
  fl_pb_budget *b = data;
  if (size > b->left)
    return NULL;
  b->left -= size;
  return fl__malloc(b->a, size);
}

static void pb_budget_free(void *data, void *ptr) {
  fl_pb_budget *b = data;
  fl__free(b->a, ptr);
}

void fl__protobuf_budget(struct ProtobufCAllocator *out, fl_pb_budget *b, const fl_allocator *a,
                         size_t wire_len) {
  b->a = a;
  b->left = wire_len > (SIZE_MAX - 65536) / 2 ? SIZE_MAX : 2 * wire_len + 65536;
  out->alloc = pb_budget_alloc;
  out->free = pb_budget_free;
  out->allocator_data = b;
}

/* Lines longer than this are cut and end in "..."; logging must never allocate. */
#define FL__LOG_LINE_MAX 1024

void fl__vlog(const fl_logger *lg, fl_log_level level, const char *fmt, va_list ap) {
  if (lg == NULL || lg->fn == NULL || level > lg->level || fmt == NULL)
    return;
  char line[FL__LOG_LINE_MAX];
  int n = vsnprintf(line, sizeof line, fmt, ap);
  if (n < 0)
    return;
  size_t len = (size_t)n;
  if (len >= sizeof line) {
    len = sizeof line - 1;
    memcpy(line + len - 3, "...", 3);
  }
  /* The callback gets one line without its newline, whatever the format string ended with. */
  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
    line[--len] = '\0';
  lg->fn(lg->ctx, level, line);
}

void fl__log(const fl_logger *lg, fl_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fl__vlog(lg, level, fmt, ap);
  va_end(ap);
}
