/*
 * A device round's outcome as fl-sim counts it (fleet.c): a refusal that is not a failure.
 */
#ifndef SIM_OUTCOME_H
#define SIM_OUTCOME_H

#include <stdbool.h>

#include "fl/err.h"

/* Whether a failed round's error and its handle's message (fl_client_errmsg) are a 409
 * target_reached: the round had its target count of updates before this one committed
 * (docs/API.md), so the device did its part and its update is only not folded, which the
 * counts keep apart from failures. The public result says FL_E_REFUSED; the reason is in the
 * message, as client/request.c writes it ("POST /v1/updates: HTTP 409 target_reached: ..."). */
bool sim_target_reached(fl_err err, const char *errmsg);

#endif
