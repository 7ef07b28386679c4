/*
 * Device public keys on the coordinator: a bounded cache by device id, and the Ed25519
 * verification of device signatures (libsodium; OpenSSL everywhere else).
 *
 * A device's key never changes (enrollment gives a new key a new device id, device ids are
 * never reused), so an entry needs no invalidation for correctness: the statement that records
 * a request's nonce also compares the stored key with the one that verified (auth.c), and a
 * mismatch drops the entry and looks the key up again. What does change, the device's state,
 * is read by that same statement on every request, on every replica: a revocation is honoured
 * at once, whatever the caches hold. Entries are dropped on revocation only to give the memory
 * back. The cache holds FL_KEY_CACHE_SLOTS entries (about 2.5 MB) in buckets of four under
 * striped locks: a device evicted from its full bucket costs one lookup more, nothing else
 * (direct-mapped, 3% of 2000 devices kept evicting each other in bench_checkin).
 */
#ifndef FL_AUTH_KEYS_H
#define FL_AUTH_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"

#define FL_KEY_CACHE_SLOTS 65536

typedef struct fl_keys fl_keys;

int fl__keys_new(fl_keys **out);
void fl__keys_free(fl_keys *k);
/* The cached key of a device into pub: true when it was there (pub untouched otherwise). */
bool fl__keys_get(fl_keys *k, uint64_t device_id, uint8_t pub[FL_PUBKEY_LEN]);
/* Remembers a device's key (replacing whatever held its slot). NULL k: no-op. */
void fl__keys_put(fl_keys *k, uint64_t device_id, const uint8_t pub[FL_PUBKEY_LEN]);
/* Forgets a device's key, if cached. NULL k: no-op. */
void fl__keys_drop(fl_keys *k, uint64_t device_id);

/* Ed25519 verification of a device's signature with libsodium (crypto_sign_verify_detached):
 * FL_OK or FL_E_BADSIG, the same verdict as fl__verify_raw (OpenSSL) on every input the unit
 * test holds (tests/unit/test_dev_verify.c: RFC 8032's vectors, altered signatures, messages
 * and keys, non-canonical S, small-order and non-canonical keys and R). libsodium is 2-3 times
 * faster here (benches/RESULTS.md, bench_ed25519); it refuses small-order keys and R, which
 * fl__verify_raw refuses too (common/crypto.c). Thread-safe. */
int fl__dev_verify(const uint8_t pub[FL_PUBKEY_LEN], const void *msg, size_t len,
                   const uint8_t *sig, size_t sig_len);

#endif
