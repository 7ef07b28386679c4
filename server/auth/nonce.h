/*
 * Nonces of uploads in flight on this replica (nonce.c). An upload's nonce is written in the
 * group commit, not before its checks, so until then this set is what refuses a second request
 * with the same nonce here; across replicas the primary key of nonces decides at commit. The
 * slot is the caller's (no allocation); reserve returns 0, or 1 when the nonce is already in
 * flight. A reserved slot must be released.
 */
#ifndef FL__NONCE_H
#define FL__NONCE_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_nonces fl_nonces;

#define FL_NONCE_MAX 64
typedef struct fl_nonce_slot {
  uint64_t device_id;
  size_t len;
  uint8_t nonce[FL_NONCE_MAX];
  struct fl_nonce_slot *next;
} fl_nonce_slot;

int fl__nonces_new(fl_nonces **out);
void fl__nonces_free(fl_nonces *n); /* NULL: no-op; no slot may be reserved any more */
int fl__nonce_reserve(fl_nonces *n, fl_nonce_slot *slot, uint64_t device_id, const uint8_t *nonce,
                      size_t len);
void fl__nonce_release(fl_nonces *n, fl_nonce_slot *slot);

#endif
