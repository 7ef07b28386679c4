/*
 * HTTP plumbing (http.c): the MHD daemons (epoll event loops, a few threads for any number of
 * connections; header and body deadlines in conns.c), routing on the request line, body
 * collection within the route's size limit, answers deferred without a thread (an upload
 * waiting for its group commit), and response helpers shared by the device and admin APIs.
 */
#ifndef FL__HTTP_H
#define FL__HTTP_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

struct fl_route;
struct fl_req;
struct fl_resp;
struct fl_conn;
struct fl_auth; /* the authenticated context of a request (auth/auth.h) */

/* A deferred answer (fl__req_defer): fills *r once the connection is resumed, on the
 * connection's thread. Called with r == NULL when the connection ends first: then it only
 * frees arg. */
typedef void (*fl_finish)(fl_srv *s, struct fl_req *q, struct fl_resp *r, void *arg);

typedef struct fl_req {
  struct MHD_Connection *conn;
  const char *method;
  const char *path;          /* without the query string */
  const struct fl_route *rt; /* chosen on the request line; NULL: no such endpoint */
  bool method_mismatch;      /* the path exists with another method */
  bool escaped;              /* the path as sent has a %-escape (http.c: refused) */
  uint8_t *body;
  size_t len, cap;
  size_t limit;    /* largest body this route takes */
  size_t declared; /* Content-Length (0: none or chunked) */
  bool too_big;
  bool answered; /* a response was queued before the body arrived */
  double t0;
  struct fl_conn *cx;   /* the connection's deadlines (conns.h) */
  struct fl_http *http; /* the listener's, for the count of deferred answers */
  fl_finish finish;     /* set while an answer is deferred */
  void *finish_arg;
  /* What the route's policy established (auth/auth.h), set by dispatch before the handler
   * runs and freed when the request is answered; NULL only for FL_AUTH_NONE routes. */
  struct fl_auth *auth;
} fl_req;

typedef struct fl_resp {
  int status;
  const char *content_type;
  char *data; /* malloc'ed, freed by MHD; or shared (release set, fl__resp_shared) */
  size_t len;
  void (*release)(void *cls); /* set: data is not ours, release(release_cls) when sent */
  void *release_cls;
  char etag[72];          /* set: ETag header */
  int64_t retry_after_ms; /* > 0: Retry-After header (seconds, rounded up) */
  const char *reason;     /* refusal reason for metrics and logs, static storage */
  /* Further headers: name, value, name, value, ..., NULL; static storage (the dashboard's
   * security and cache headers, server/admin/ui.c). */
  const char *const *headers;
} fl_resp;

typedef void (*fl_handler)(fl_srv *s, fl_req *q, fl_resp *r);

/* Deferring an answer: instead of filling *r, a handler that would wait for another thread
 * (an upload for its group commit) calls fl__req_defer, which parks the connection (MHD
 * suspends it: no thread is held and no timeout runs), hands the work over and returns with *r
 * untouched. Exactly one fl__req_resume(q) must follow, from any thread and possibly before the
 * handler returns; the connection's thread then calls finish to fill the answer. Only from a
 * handler, once per request. */
void fl__req_defer(fl_req *q, fl_finish finish, void *arg);
void fl__req_resume(fl_req *q);

int fl__http_start(fl_srv *s);
/* Stops accepting new connections; in-flight requests continue. */
void fl__http_quiesce(fl_srv *s);
/* Waits for in-flight requests and closes everything. */
void fl__http_stop(fl_srv *s);

/* Request helpers. */
const char *fl__req_header(fl_req *q, const char *name);
const char *fl__req_query(fl_req *q, const char *name);
/* A query parameter that holds an id: 0 with *out = 0 when absent, 0 with *out set for a
 * decimal 0..INT64_MAX, -1 (and *out = 0) for anything else. */
int fl__query_id(fl_req *q, const char *name, uint64_t *out);
/* Parses "/prefix/{id}/rest": the id (1..INT64_MAX, decimal) after `prefix`; 0 and *rest set
 * on success, -1 for anything else (overflow, sign, trailing junk). */
int fl__path_u64(const char *path, const char *prefix, uint64_t *out, const char **rest);

/* Response helpers; each sets status, content type and body (on allocation failure the
 * response becomes a bodiless 500). */
void fl__resp_json(fl_resp *r, int status, json_t *j); /* steals j */
void fl__resp_admin_error(fl_resp *r, int status, const char *reason, const char *msg);
void fl__resp_proto(fl_resp *r, int status, const ProtobufCMessage *m);
void fl__resp_dev_error(fl_resp *r, int status, const char *reason, const char *msg,
                        int64_t retry_after_ms);
void fl__resp_text(fl_resp *r, int status, const char *ctype, const char *text);
/* A body that is not copied: MHD sends data as it is and calls release(cls) once the response
 * is done with it (also when it cannot be created). For buffers shared by many responses,
 * e.g. a refcounted model version. */
void fl__resp_shared(fl_resp *r, int status, const char *ctype, const void *data, size_t len,
                     void (*release)(void *), void *cls);

/* Who may call a route: every row declares one, and dispatch (http.c) runs it before the
 * handler, which gets what it established in q->auth (auth/auth.h: the pipeline, one place
 * for every check). 0 is no policy: a table with such a row is refused at start-up
 * (fl__routes_check) and never dispatched. Device policies answer in fl.v1.Error and belong
 * to /v1/ paths, the admin roles answer in JSON and belong to the others. */
typedef enum fl_auth_policy {
  FL_AUTH_UNDECLARED = 0,
  FL_AUTH_NONE,   /* anyone: the probes, /metrics, the dashboard's static files */
  FL_AUTH_DEVICE, /* signed envelope of an enrolled, active device: timestamp window, device,
                   * Ed25519 signature over the request digest, nonce recorded (SIGNING.md) */
  /* FL_AUTH_DEVICE whose last check (device active, the nonce unseen and recorded) rides in
   * the handler's first statement when the key was cached: FL_AUTH_FOLD_CTE and
   * fl__auth_fold_finish (auth/auth.h) */
  FL_AUTH_DEVICE_FOLD,
  FL_AUTH_ENROLL, /* signed envelope with device_id 0, by the key the EnrollRequest carries;
                   * its nonce is recorded by the handler with the new device */
  FL_AUTH_UPLOAD, /* UpdateUpload.signature over the upload digest (SIGNING.md); the nonce is
                   * reserved in flight and recorded by the group commit or the handler */
  FL_AUTH_VIEWER, /* admin bearer token with at least this role */
  FL_AUTH_OPERATOR,
  FL_AUTH_ADMIN,
  FL_AUTH_POLICY_END /* not a policy: one past the last */
} fl_auth_policy;

/* The route tables provided by devapi.c and adminapi.c.
 * Body limits: a GET or DELETE takes no body; otherwise body_limit (when set) decides, else
 * max_body (when not 0), else --max-body; every limit is capped at --max-body. A body over
 * the limit is refused with 413 before it is read when its Content-Length says so, and as
 * soon as it passes the limit when it is chunked. */
typedef struct fl_route {
  const char *method;
  const char *prefix; /* exact path, or prefix when it ends in '/' */
  const char *name;   /* metrics label */
  fl_handler fn;
  size_t max_body; /* 0: --max-body */
  /* The limit for a request that declares `declared` bytes (SIZE_MAX: chunked), for a route
   * whose limit depends on the registry (uploads: the largest model). */
  size_t (*body_limit)(fl_srv *s, size_t declared);
  fl_auth_policy auth; /* who may call it; a row without one is refused (fl__routes_check) */
} fl_route;

/* 0 when every row of the NULL-terminated table t is complete: method, path, name, handler
 * and a declared policy that fits the path (device policies on /v1/, admin roles elsewhere).
 * Else -1 with the first bad row described in msg. fl__http_start refuses to start with a
 * bad table. */
int fl__routes_check(const fl_route *t, char *msg, size_t n);
extern const fl_route fl__dev_routes[];
extern const fl_route fl__admin_routes[];
/* /metrics, /healthz, /readyz; and the last two alone, for the main port when --metrics-listen
 * takes /metrics (adminapi.c). */
extern const fl_route fl__ops_routes[];
extern const fl_route fl__probe_routes[];

#endif
