/*
 * What misbehaving simulated devices do to their update uploads. The input is the signed
 * request body the honest client library produced (an fl.v1.SignedRequest carrying an
 * UpdateUpload); the output is what goes on the wire instead:
 *   SIM_POISON     delta * -20, norm field set to the new norm, both signatures redone
 *   SIM_UNCLIPPED  delta rescaled to 3 * clip_norm (an update that skipped clipping), re-signed
 *   SIM_BADSIG     one bit of the request signature flipped
 *   SIM_REPLAY     the exact bytes of the previous upload of this device (the first upload is
 *                  sent unchanged and remembered)
 * and the attacks inside the norm bound (clip_norm; re-signed like POISON), which signatures
 * and the norm check cannot stop and robust aggregators are for:
 *   SIM_SIGNFLIP   -delta
 *   SIM_SCALED     -delta scaled to just inside the bound
 *   SIM_LIE        "a little is enough" (Baruch et al. 2019), estimated from the device's own
 *                  update (misbehave.c says how)
 *   SIM_NOISE      Gaussian noise of norm just inside the bound
 *   SIM_LABELFLIP  nothing here: the device trains on flipped labels (fleet.c)
 * Deltas in float32 are changed value by value, int8 through the tensor's scale (requantised
 * for the in-bound attacks); float16 and top-k tensors are left as they are.
 */
#ifndef SIM_MISBEHAVE_H
#define SIM_MISBEHAVE_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "transport.h"

typedef struct sim_replay {
  uint8_t *data; /* malloc'd; owned by the caller between calls */
  size_t len;
} sim_replay;

/* Whether b changes the update and so signs it again (needs the device's key). */
int sim_misbehave_resigns(sim_behaviour b);

/* key: the device's private key (needed when sim_misbehave_resigns(b)). *body is replaced by a new
 * malloc'd buffer when it changes. FL_E_PARSE when the body is not an update upload. */
int sim_misbehave(sim_behaviour b, const fl_key *key, double clip_norm, const char *path,
                  uint8_t **body, size_t *len, sim_replay *replay);

#endif
