/* Device API handlers, one file per route: enroll.c, checkin.c, upload.c (update uploads) and
 * devapi.c (model download, evaluation reports, the route table and the helpers below). */
#ifndef FL__DEVAPI_H
#define FL__DEVAPI_H

#include "http/http.h"

/* How long a device request waits for a database connection before it is answered 503 with
 * Retry-After: the pool is shared with the round closer and the group committer, and a request
 * that queued without bound would hold its HTTP connection (and threads) while the pool is
 * exhausted, e.g. by a slow database. */
#define FL_DEVICE_POOL_WAIT_MS 2000

/* 503 "unavailable" with a retry in a second: the database could not answer. */
void fl__dev_unavailable(fl_resp *r);
/* Ids are bigserial: anything above INT64_MAX names nothing and is no bigint either, so it is
 * refused as malformed instead of reaching PostgreSQL (which would fail the query: a 503). */
bool fl__dev_id_ok(uint64_t id);
/* Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF): PostgreSQL
 * refuses anything else in a text column, which must be a 400, not a failed query. */
bool fl__dev_utf8_ok(const char *s);

/* POST /v1/enroll (enroll.c). */
void fl__dev_h_enroll(fl_srv *s, fl_req *q, fl_resp *r);
/* POST /v1/checkin (checkin.c). */
void fl__dev_h_checkin(fl_srv *s, fl_req *q, fl_resp *r);

/* POST /v1/updates (upload.c). */
void fl__devapi_update(fl_srv *s, fl_req *q, fl_resp *r);
/* Its body limit (fl_route.body_limit): the largest upload of the largest model, in the
 * encoding that takes most bytes (docs/API.md 1.2). */
size_t fl__devapi_update_limit(fl_srv *s, size_t declared);

#endif
