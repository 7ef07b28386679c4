/* Device API handlers split over devapi.c (enroll, check-in, download, evaluations) and
 * upload.c (update uploads). */
#ifndef FL__DEVAPI_H
#define FL__DEVAPI_H

#include "http/http.h"

/* How long a device request waits for a database connection before it is answered 503 with
 * Retry-After: the pool is shared with the round closer and the group committer, and a request
 * that queued without bound would hold its HTTP connection (and threads) while the pool is
 * exhausted, e.g. by a slow database. */
#define FL_DEVICE_POOL_WAIT_MS 2000

/* POST /v1/updates (upload.c). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r);
/* Its body limit (fl_route.body_limit): the largest upload of the largest model, in the
 * encoding that takes most bytes (docs/API.md 1.2). */
size_t fl__devapi_update_limit(fl_srv *s, size_t declared);

#endif
