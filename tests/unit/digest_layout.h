/*
 * The digest tests' byte builder (test_digest_*.c): spells out the layouts of docs/SIGNING.md
 * independently of common/digest.c, little-endian integers, float bits and length-prefixed
 * byte strings.
 */
#ifndef TEST_DIGEST_LAYOUT_H
#define TEST_DIGEST_LAYOUT_H

#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

/* A little byte builder to spell out the layouts of docs/SIGNING.md independently. */
typedef struct buf {
  uint8_t b[4096];
  size_t n;
} buf;

static inline void put(buf *b, const void *p, size_t n) {
  cr_assert_leq(b->n + n, sizeof b->b);
  if (n > 0)
    memcpy(b->b + b->n, p, n);
  b->n += n;
}
static inline void put_u32(buf *b, uint32_t v) {
  for (int i = 0; i < 4; i++)
    b->b[b->n++] = (uint8_t)(v >> (8 * i));
}
static inline void put_u64(buf *b, uint64_t v) {
  for (int i = 0; i < 8; i++)
    b->b[b->n++] = (uint8_t)(v >> (8 * i));
}
static inline void put_bytes(buf *b, const void *p, size_t n) {
  put_u64(b, n);
  put(b, p, n);
}
static inline uint32_t bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static inline void put_f64(buf *b, double d) {
  uint64_t u = 0;
  if (d != 0)
    memcpy(&u, &d, 8);
  put_u64(b, u);
}

#endif
