/* The request digest and the secure-aggregation key advertisement: documented byte layouts,
 * every field changes the digest, NULL refused (common/digest.c, docs/SIGNING.md). */
#include <criterion/criterion.h>
#include <string.h>

#include "digest.h"
#include "digest_layout.h"
#include "fl/err.h"

static void req(const char *m, const char *p, uint64_t dev, int64_t ts, const char *nonce,
                const char *body, uint8_t out[32]) {
  cr_assert_eq(fl__request_digest(m, p, dev, ts, (const uint8_t *)nonce, strlen(nonce),
                                  (const uint8_t *)body, strlen(body), out),
               FL_OK);
}

Test(digest, request_layout_is_as_documented) {
  uint8_t got[32], want[32];
  req("POST", "/v1/updates", 42, -5, "nonce", "body", got);
  buf b = {.n = 0};
  put(&b, "fl.v1.request", 14);
  put_bytes(&b, "POST", 4);
  put_bytes(&b, "/v1/updates", 11);
  put_u64(&b, 42);
  put_u64(&b, (uint64_t)(int64_t)-5);
  put_bytes(&b, "nonce", 5);
  put_bytes(&b, "body", 4);
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
}

Test(digest, request_covers_every_field) {
  uint8_t base[32], d[32];
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyz", base);
  req("GET", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "method");
  req("POST", "/v1/checkim", 7, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "path");
  req("POST", "/v1/checkin", 8, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "device");
  req("POST", "/v1/checkin", 7, 1700000000001, "0123456789abcdef", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "timestamp");
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdeF", "xyz", d);
  cr_assert(memcmp(base, d, 32) != 0, "nonce");
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyZ", d);
  cr_assert(memcmp(base, d, 32) != 0, "body");
  req("POST", "/v1/checkin", 7, 1700000000000, "0123456789abcdef", "xyz", d);
  cr_assert_arr_eq(base, d, 32, "deterministic");
}

Test(digest, request_fields_cannot_slide_into_each_other) {
  uint8_t a[32], b[32];
  req("POST", "/x", 1, 2, "ab", "cd", a);
  req("POS", "T/x", 1, 2, "ab", "cd", b);
  cr_assert(memcmp(a, b, 32) != 0);
  req("POST", "/x", 1, 2, "abc", "d", b);
  cr_assert(memcmp(a, b, 32) != 0);
}

Test(digest, request_refuses_null) {
  uint8_t d[32];
  cr_assert_eq(fl__request_digest(NULL, "/", 1, 1, NULL, 0, NULL, 0, d), FL_E_INVAL);
  cr_assert_eq(fl__request_digest("GET", NULL, 1, 1, NULL, 0, NULL, 0, d), FL_E_INVAL);
  cr_assert_eq(fl__request_digest("GET", "/", 1, 1, NULL, 3, NULL, 0, d), FL_E_INVAL);
  cr_assert_eq(fl__request_digest("GET", "/", 1, 1, NULL, 0, NULL, 0, d), FL_OK);
}

/* ---- secure aggregation (SIGNING.md "Secure aggregation keys", the optional fields) -------- */

Test(digest, secagg_keys_layout_is_as_documented) {
  uint8_t c[32], s[32], got[32], want[32];
  for (int i = 0; i < 32; i++) {
    c[i] = (uint8_t)i;
    s[i] = (uint8_t)(0xff - i);
  }
  cr_assert_eq(fl__secagg_keys_digest(77, 12, c, 32, s, 32, got), FL_OK);
  buf b = {.n = 0};
  put(&b, "fl.v1.secagg.keys", 18);
  put_u64(&b, 77);
  put_u64(&b, 12);
  put_bytes(&b, c, 32);
  put_bytes(&b, s, 32);
  cr_assert_eq(b.n, 114, "the size SIGNING.md gives");
  cr_assert_eq(fl__sha256(b.b, b.n, want), FL_OK);
  cr_assert_arr_eq(got, want, 32);
  /* Swapping the two keys, the device or the round gives another digest. */
  uint8_t other[32];
  cr_assert_eq(fl__secagg_keys_digest(77, 12, s, 32, c, 32, other), FL_OK);
  cr_assert_arr_neq(got, other, 32);
  cr_assert_eq(fl__secagg_keys_digest(78, 12, c, 32, s, 32, other), FL_OK);
  cr_assert_arr_neq(got, other, 32);
  cr_assert_eq(fl__secagg_keys_digest(77, 13, c, 32, s, 32, other), FL_OK);
  cr_assert_arr_neq(got, other, 32);
  cr_assert_eq(fl__secagg_keys_digest(77, 12, NULL, 32, s, 32, other), FL_E_INVAL);
}
