/* Device API handlers split over devapi.c (enroll, check-in, download, evaluations) and
 * upload.c (update uploads). */
#ifndef FL__DEVAPI_H
#define FL__DEVAPI_H

#include "http/http.h"

/* POST /v1/updates (upload.c). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r);

#endif
