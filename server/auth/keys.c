/*
 * The device key cache and libsodium's verification (keys.h).
 */
#include "auth/keys.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "fl/err.h"

#define STRIPES 64

typedef struct slot {
  uint64_t device_id; /* 0: empty (device ids start at 1) */
  uint8_t pub[FL_PUBKEY_LEN];
} slot;

struct fl_keys {
  pthread_mutex_t mu[STRIPES];
  slot slots[FL_KEY_CACHE_SLOTS];
};

static size_t slot_of(uint64_t id) {
  id ^= id >> 33;
  id *= 0xff51afd7ed558ccdULL;
  id ^= id >> 33;
  return (size_t)(id & (FL_KEY_CACHE_SLOTS - 1));
}

int fl__keys_new(fl_keys **out) {
  fl_keys *k = calloc(1, sizeof *k);
  if (k == NULL)
    return FL_E_NOMEM;
  for (int i = 0; i < STRIPES; i++)
    pthread_mutex_init(&k->mu[i], NULL);
  *out = k;
  return FL_OK;
}

void fl__keys_free(fl_keys *k) {
  if (k == NULL)
    return;
  for (int i = 0; i < STRIPES; i++)
    pthread_mutex_destroy(&k->mu[i]);
  free(k);
}

bool fl__keys_get(fl_keys *k, uint64_t device_id, uint8_t pub[FL_PUBKEY_LEN]) {
  if (k == NULL || device_id == 0)
    return false;
  size_t i = slot_of(device_id);
  pthread_mutex_t *mu = &k->mu[i % STRIPES];
  pthread_mutex_lock(mu);
  bool hit = k->slots[i].device_id == device_id;
  if (hit)
    memcpy(pub, k->slots[i].pub, FL_PUBKEY_LEN);
  pthread_mutex_unlock(mu);
  return hit;
}

void fl__keys_put(fl_keys *k, uint64_t device_id, const uint8_t pub[FL_PUBKEY_LEN]) {
  if (k == NULL || device_id == 0)
    return;
  size_t i = slot_of(device_id);
  pthread_mutex_t *mu = &k->mu[i % STRIPES];
  pthread_mutex_lock(mu);
  k->slots[i].device_id = device_id;
  memcpy(k->slots[i].pub, pub, FL_PUBKEY_LEN);
  pthread_mutex_unlock(mu);
}

void fl__keys_drop(fl_keys *k, uint64_t device_id) {
  if (k == NULL || device_id == 0)
    return;
  size_t i = slot_of(device_id);
  pthread_mutex_t *mu = &k->mu[i % STRIPES];
  pthread_mutex_lock(mu);
  if (k->slots[i].device_id == device_id)
    memset(&k->slots[i], 0, sizeof k->slots[i]);
  pthread_mutex_unlock(mu);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_sodium_ok;

static void init_sodium(void) {
  g_sodium_ok = sodium_init() >= 0;
}

int fl__dev_verify(const uint8_t pub[FL_PUBKEY_LEN], const void *msg, size_t len,
                   const uint8_t *sig, size_t sig_len) {
  pthread_once(&g_once, init_sodium);
  /* sodium_init fails only without a usable random source, which verification does not use;
   * OpenSSL then gives the same verdict, slower. */
  if (!g_sodium_ok)
    return fl__verify_raw(pub, msg, len, sig, sig_len);
  if (pub == NULL || sig == NULL || sig_len != FL_SIG_LEN)
    return FL_E_BADSIG;
  return crypto_sign_verify_detached(sig, msg, len, pub) == 0 ? FL_OK : FL_E_BADSIG;
}
