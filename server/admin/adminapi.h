/*
 * Admin API plumbing shared by adminapi.c and adminapi_rollouts.c: the request context
 * (connection, actor, JSON body), JSON answers built by PostgreSQL, and commits with their
 * audit row.
 */
#ifndef FL__ADMINAPI_H
#define FL__ADMINAPI_H

#include <jansson.h>
#include <stdbool.h>

#include "http/http.h"
#include "store/store_pg.h"

typedef struct admin_ctx {
  PGconn *c;
  char actor[96];
  json_t *body;
} admin_ctx;

/* The connection and actor of the route's policy (the role is the route row's, checked by
 * dispatch: auth/pipeline.c) and (for POST) the JSON body. 0, or -1 with *r set. */
int fl__admin_begin(fl_srv *s, fl_req *q, fl_resp *r, admin_ctx *a);
void fl__admin_end(fl_srv *s, admin_ctx *a);
/* Runs a query whose single text cell is JSON and answers {key: that JSON} (or the JSON
 * itself when single; 404 when single and no row). */
void fl__admin_json_query(fl_resp *r, PGconn *c, const char *key, const char *sql, const fl_pgp *p,
                          bool single);
/* Commits the caller's transaction after its audit row (detail: the request body); answers
 * with `ok` (stolen). */
void fl__admin_commit_audited(fl_resp *r, admin_ctx *a, const char *action, const char *target,
                              json_t *ok);
/* GET of a whole list for viewers: `sql` (no parameters) answers {key: [...]}. */
void fl__admin_list(fl_srv *s, fl_req *q, fl_resp *r, const char *key, const char *sql);
/* The same filtered by ?model_id=, $1 in `sql` (0 when absent: every model); 400 when the
 * parameter is not a decimal id. */
void fl__admin_list_by_model(fl_srv *s, fl_req *q, fl_resp *r, const char *key, const char *sql);
/* fl__admin_begin for the path `prefix`{id}`suffix` exactly; a 404 for any other path. 0 with
 * *id set, or -1 with *r set. */
int fl__admin_begin_at(fl_srv *s, fl_req *q, fl_resp *r, const char *prefix, const char *suffix,
                       uint64_t *id, admin_ctx *a);
/* Opens the transaction and runs `sql` with $1 = id. The result when it has a row (the caller
 * clears it); NULL with *r set otherwise: 503 on a database error, 404 `missing` on no row. */
PGresult *fl__admin_change_by_id(fl_resp *r, admin_ctx *a, const char *sql, uint64_t id,
                                 const char *missing);

/* The dashboard (ui.c): GET /ui and /ui/<file> from its directory (--ui-dir, else
 * share/fleetlearn/ui beside the executable's directory), and GET /admin/v1/whoami. */
void fl__ui_static(fl_srv *s, fl_req *q, fl_resp *r);
void fl__admin_whoami(fl_srv *s, fl_req *q, fl_resp *r);
const char *fl__ui_dir(fl_srv *s); /* resolved (and logged) once */

#endif
