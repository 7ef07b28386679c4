/*
 * Internal allocation wrappers and logger. Every allocation in common/, client/ and server/
 * goes through these so that an fl_allocator (or a failing test allocator) sees all of them.
 * `a` may be NULL: the C library is used.
 */
#ifndef FL__MEM_H
#define FL__MEM_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"
#include "fl/err.h"

void *fl__malloc(const fl_allocator *a, size_t size);
/* Zeroed; returns NULL on n*size overflow. */
void *fl__calloc(const fl_allocator *a, size_t n, size_t size);
void *fl__realloc(const fl_allocator *a, void *ptr, size_t size);
void fl__free(const fl_allocator *a, void *ptr);
char *fl__strdup(const fl_allocator *a, const char *s);
/* protobuf-c allocator that forwards to `a` (the ProtobufCAllocator is filled in place). */
struct ProtobufCAllocator;
void fl__protobuf_allocator(struct ProtobufCAllocator *out, const fl_allocator *a);

typedef struct fl_logger {
  fl_log_fn fn;   /* NULL: logging off */
  void *ctx;
  fl_log_level level; /* lines above this level are dropped before formatting */
} fl_logger;

void fl__log(const fl_logger *lg, fl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void fl__vlog(const fl_logger *lg, fl_log_level level, const char *fmt, va_list ap);

#endif /* FL__MEM_H */
