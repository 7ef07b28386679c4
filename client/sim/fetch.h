/*
 * Downloading a model version the way a device does (a signed GET of
 * /v1/models/{id}/versions/{v} with X-FL-Auth), to evaluate every round's result on the
 * held-out test set. The downloaded parameters are checked against the version's SHA-256 model
 * digest (docs/SIGNING.md) before they are used.
 */
#ifndef SIM_FETCH_H
#define SIM_FETCH_H

#include <stdint.h>

#include "crypto.h"
#include "model.h"

/* Signs as device `device_id` with `key`; loads the weights into m (whose spec must match).
 * FL_E_TRANSPORT, FL_E_REFUSED (HTTP status >= 400), FL_E_PARSE, FL_E_SHAPE, FL_E_BADHASH. */
int sim_fetch_version(const char *base_url, const fl_key *key, uint64_t device_id,
                      uint64_t model_id, uint64_t version, fl_model *m, uint64_t *bytes);

#endif
