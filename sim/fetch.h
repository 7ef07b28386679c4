/*
 * Downloading a model version the way a device does (a signed GET of
 * /v1/models/{id}/versions/{v} with X-FL-Auth), to evaluate every round's result on the
 * held-out test set. Before the parameters are used, the coordinator's Ed25519 signature over the
 * version's SHA-256 model digest is verified, and the digest is recomputed from the parameters
 * (docs/SIGNING.md), as a device does: evaluation scores only what the coordinator signed.
 */
#ifndef SIM_FETCH_H
#define SIM_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "model.h"

/* Signs as device `device_id` with `key`; loads the weights into m (whose spec must match).
 * coord_pub: the coordinator's public key. FL_E_TRANSPORT, FL_E_REFUSED (HTTP status >= 400),
 * FL_E_PARSE, FL_E_BADSIG, FL_E_SHAPE, FL_E_BADHASH; on error m's weights may be partly
 * overwritten. */
int sim_fetch_version(const char *base_url, const fl_key *key, uint64_t device_id,
                      const uint8_t coord_pub[FL_PUBKEY_LEN], uint64_t model_id,
                      uint64_t version, fl_model *m, uint64_t *bytes);

/* The checks of sim_fetch_version on a serialized fl.v1.ModelVersion already in memory: the
 * signature over its digest, then the digest recomputed from model_id, version, its parent,
 * m's spec and the parameters. FL_E_PARSE, FL_E_BADSIG, FL_E_SHAPE, FL_E_BADHASH. */
int sim_fetch_check(const uint8_t *body, size_t len, const uint8_t coord_pub[FL_PUBKEY_LEN],
                    uint64_t model_id, uint64_t version, fl_model *m);

#endif
