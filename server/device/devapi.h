/* Device API handlers split over devapi.c (enroll, check-in, download, evaluations) and
 * upload.c (update uploads). */
#ifndef FL__DEVAPI_H
#define FL__DEVAPI_H

#include "fl/v1/fleetlearn.pb-c.h"
#include "http/http.h"
#include "store/store_pg.h"

/* How long a device request waits for a database connection before it is answered 503 with
 * Retry-After: the pool is shared with the round closer and the group committer, and a request
 * that queued without bound would hold its HTTP connection (and threads) while the pool is
 * exhausted, e.g. by a slow database. */
#define FL_DEVICE_POOL_WAIT_MS 2000

/* Envelope, database connection and signature check shared by every handler except enroll
 * and uploads (fl__auth_device: the nonce is recorded). Returns 0 with *c and *sr set, or -1
 * with the refusal in *r (and nothing to release); fl__devapi_end releases both. */
int fl__devapi_begin(fl_srv *s, fl_req *q, fl_resp *r, PGconn **c, Fl__V1__SignedRequest **sr,
                     uint8_t pub[FL_PUBKEY_LEN]);
void fl__devapi_end(fl_srv *s, PGconn *c, Fl__V1__SignedRequest *sr);

/* POST /v1/updates (upload.c). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r);
/* Its body limit (fl_route.body_limit): the largest upload of the largest model, in the
 * encoding that takes most bytes (docs/API.md 1.2). */
size_t fl__devapi_update_limit(fl_srv *s, size_t declared);

#endif
