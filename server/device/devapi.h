/* Device API handlers split over devapi.c (enroll, check-in, download, evaluations) and
 * upload.c (update uploads). */
#ifndef FL__DEVAPI_H
#define FL__DEVAPI_H

#include "http/http.h"

/* POST /v1/updates (upload.c). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r);
/* Its body limit (fl_route.body_limit): the largest upload of the largest model, in the
 * encoding that takes most bytes (docs/API.md 1.2). */
size_t fl__devapi_update_limit(fl_srv *s, size_t declared);

#endif
