/*
 * Allocation hooks and logging callbacks shared by libflclient and the coordinator.
 *
 * There is no process-wide allocator: each handle (client, model, ...) is given an
 * fl_allocator at creation, or NULL for the C library's malloc/realloc/free. The library never
 * aborts on allocation failure; it returns FL_E_NOMEM and leaves its state as before the call.
 */
#ifndef FL_ALLOC_H
#define FL_ALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fl_allocator {
  void *(*malloc_fn)(void *ctx, size_t size);
  void *(*realloc_fn)(void *ctx, void *ptr, size_t size);
  void (*free_fn)(void *ctx, void *ptr); /* must accept NULL */
  void *ctx;
} fl_allocator;

typedef enum fl_log_level {
  FL_LOG_ERROR = 0,
  FL_LOG_WARN = 1,
  FL_LOG_INFO = 2,
  FL_LOG_DEBUG = 3
} fl_log_level;

/* Receives one complete line without the trailing newline. Never contains key material. */
typedef void (*fl_log_fn)(void *ctx, fl_log_level level, const char *line);

#ifdef __cplusplus
}
#endif
#endif /* FL_ALLOC_H */
