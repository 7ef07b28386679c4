/*
 * What the libFuzzer harnesses share: the test key that signs the seed corpus (fuzz_key.pem,
 * a key for this directory only), the small model whose layout the upload harness checks
 * deltas against, and a cursor that cuts one input into fields.
 */
#ifndef FL_FUZZ_COMMON_H
#define FL_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "model.h"

/* The private key of fuzz_key.pem (loaded once; aborts when it cannot be read: a harness
 * without its key would test nothing past the signature check). */
const fl_key *fz_key(void);
const uint8_t *fz_pub(void);
/* The device id and model of the seed uploads: 4 inputs, dense 3, softmax cross-entropy. */
#define FZ_DEVICE_ID 7u
void fz_spec(fl_model_spec *spec);

/* Cuts an input into fields; reads past the end give zeros / empty spans. */
typedef struct fz_cur {
  const uint8_t *p;
  size_t left;
} fz_cur;
uint8_t fz_u8(fz_cur *c);
uint32_t fz_u32(fz_cur *c);
/* A span of at most max bytes: its length is a little-endian u32 taken from the input. */
const uint8_t *fz_span(fz_cur *c, size_t max, size_t *len);

/* Bytes the process holds on the heap now (ASan's allocator): a decoder's allocations while
 * its result is alive must stay within its budget, whatever the input is (issue 13 item 1:
 * protobuf-c allocated 44x the wire size of tiny unknown fields). */
size_t fz_heap_bytes(void);
/* The budget of mem.h's fl__protobuf_budget for wire_len bytes, plus slack for the
 * refusal a caller builds. */
#define FZ_PB_BUDGET(wire_len) (2 * (size_t)(wire_len) + 65536 + 8192)

/* A harness checks an invariant of the code under test: a violation is a crash. */
#define FZ_ASSERT(cond)                   \
  do {                                    \
    if (!(cond))                          \
      fz_fail(__FILE__, __LINE__, #cond); \
  } while (0)
_Noreturn void fz_fail(const char *file, int line, const char *what);

#endif
