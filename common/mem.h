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
/* The same with a byte budget for unpacking wire_len bytes from the network: honest messages
 * unpack to about their wire size, but an empty repeated sub-message is two bytes on the wire
 * and a struct and a pointer once unpacked, so a hostile one would allocate thirty times its
 * size before any signature could be checked. Allocations fail once twice the wire size plus
 * 64 KiB are spent (protobuf-c then returns NULL). *b must outlive every use of *out. */
typedef struct fl_pb_budget {
  const fl_allocator *a;
  size_t left;
} fl_pb_budget;
void fl__protobuf_budget(struct ProtobufCAllocator *out, fl_pb_budget *b, const fl_allocator *a,
                         size_t wire_len);

typedef struct fl_logger {
  fl_log_fn fn;   /* NULL: logging off */
  void *ctx;
  fl_log_level level; /* lines above this level are dropped before formatting */
} fl_logger;

void fl__log(const fl_logger *lg, fl_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void fl__vlog(const fl_logger *lg, fl_log_level level, const char *fmt, va_list ap);

#endif /* FL__MEM_H */
