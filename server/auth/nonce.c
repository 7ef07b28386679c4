/*
 * The set of upload nonces in flight (nonce.h): a list of the callers' slots under one mutex.
 * It holds at most the uploads parked for their group commit, so a scan is short.
 */
#include "auth/nonce.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

struct fl_nonces {
  pthread_mutex_t mu;
  fl_nonce_slot *head;
};

int fl__nonces_new(fl_nonces **out) {
  fl_nonces *n = calloc(1, sizeof *n);
  if (n == NULL)
    return FL_E_NOMEM;
  pthread_mutex_init(&n->mu, NULL);
  *out = n;
  return FL_OK;
}

void fl__nonces_free(fl_nonces *n) {
  if (n == NULL)
    return;
  pthread_mutex_destroy(&n->mu);
  free(n);
}

int fl__nonce_reserve(fl_nonces *n, fl_nonce_slot *slot, uint64_t device_id, const uint8_t *nonce,
                      size_t len) {
  int rc = 0;
  if (len > FL_NONCE_MAX)
    return 1; /* never the case: auth refuses such nonces first */
  slot->device_id = device_id;
  slot->len = len;
  memcpy(slot->nonce, nonce, len);
  pthread_mutex_lock(&n->mu);
  for (const fl_nonce_slot *x = n->head; x != NULL && rc == 0; x = x->next)
    rc = x->device_id == device_id && x->len == len && memcmp(x->nonce, nonce, len) == 0;
  if (rc == 0) {
    slot->next = n->head;
    n->head = slot;
  }
  pthread_mutex_unlock(&n->mu);
  return rc;
}

void fl__nonce_release(fl_nonces *n, fl_nonce_slot *slot) {
  pthread_mutex_lock(&n->mu);
  for (fl_nonce_slot **p = &n->head; *p != NULL; p = &(*p)->next)
    if (*p == slot) {
      *p = slot->next;
      break;
    }
  pthread_mutex_unlock(&n->mu);
}
