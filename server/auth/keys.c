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
#define WAYS 4 /* slots per bucket: a device is in one of the WAYS slots of its bucket */
#define BUCKETS (FL_KEY_CACHE_SLOTS / WAYS)

typedef struct slot {
  uint64_t device_id; /* 0: empty (device ids start at 1) */
  uint8_t pub[FL_PUBKEY_LEN];
} slot;

struct fl_keys {
  pthread_mutex_t mu[STRIPES];
  slot slots[FL_KEY_CACHE_SLOTS];
  unsigned victim[STRIPES]; /* round-robin replacement within a full bucket */
};

static uint64_t mix(uint64_t id) {
  id ^= id >> 33;
  id *= 0xff51afd7ed558ccdULL;
  id ^= id >> 33;
  return id;
}

/* The bucket's first slot; its lock is mu[bucket % STRIPES]. */
static size_t bucket_of(uint64_t id) {
  return (size_t)(mix(id) & (BUCKETS - 1));
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

/* The device's slot in bucket b, or NULL (under the bucket's lock). */
static slot *find(fl_keys *k, size_t b, uint64_t device_id) {
  for (int w = 0; w < WAYS; w++)
    if (k->slots[b * WAYS + w].device_id == device_id)
      return &k->slots[b * WAYS + w];
  return NULL;
}

bool fl__keys_get(fl_keys *k, uint64_t device_id, uint8_t pub[FL_PUBKEY_LEN]) {
  if (k == NULL || device_id == 0)
    return false;
  size_t b = bucket_of(device_id);
  pthread_mutex_t *mu = &k->mu[b % STRIPES];
  pthread_mutex_lock(mu);
  const slot *e = find(k, b, device_id);
  if (e != NULL)
    memcpy(pub, e->pub, FL_PUBKEY_LEN);
  pthread_mutex_unlock(mu);
  return e != NULL;
}

void fl__keys_put(fl_keys *k, uint64_t device_id, const uint8_t pub[FL_PUBKEY_LEN]) {
  if (k == NULL || device_id == 0)
    return;
  size_t b = bucket_of(device_id);
  pthread_mutex_t *mu = &k->mu[b % STRIPES];
  pthread_mutex_lock(mu);
  slot *e = find(k, b, device_id);
  if (e == NULL)
    e = find(k, b, 0);
  if (e == NULL)
    e = &k->slots[b * WAYS + k->victim[b % STRIPES]++ % WAYS];
  e->device_id = device_id;
  memcpy(e->pub, pub, FL_PUBKEY_LEN);
  pthread_mutex_unlock(mu);
}

void fl__keys_drop(fl_keys *k, uint64_t device_id) {
  if (k == NULL || device_id == 0)
    return;
  size_t b = bucket_of(device_id);
  pthread_mutex_t *mu = &k->mu[b % STRIPES];
  pthread_mutex_lock(mu);
  slot *e = find(k, b, device_id);
  if (e != NULL)
    memset(e, 0, sizeof *e);
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
