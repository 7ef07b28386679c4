/*
 * A device round's outcome as fl-sim counts it: outcome.h.
 */
#include "outcome.h"

#include <stddef.h>
#include <string.h>

bool sim_target_reached(fl_err err, const char *errmsg) {
  return err == FL_E_REFUSED && errmsg != NULL && strstr(errmsg, "HTTP 409 target_reached") != NULL;
}
