/*
 * A device round's outcome as fl-sim counts it: outcome.h.
 */
#include "outcome.h"

#include <stddef.h>
#include <string.h>

static bool refused_409(fl_err err, const char *errmsg, const char *what) {
  return err == FL_E_REFUSED && errmsg != NULL && strstr(errmsg, what) != NULL;
}

bool sim_target_reached(fl_err err, const char *errmsg) {
  return refused_409(err, errmsg, "HTTP 409 target_reached");
}

bool sim_round_closed(fl_err err, const char *errmsg) {
  return refused_409(err, errmsg, "HTTP 409 round_closed");
}
