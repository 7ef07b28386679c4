/*
 * Admin API plumbing shared by adminapi.c and adminapi_rollouts.c: the request context
 * (connection, actor, JSON body), JSON answers built by PostgreSQL, and commits with their
 * audit row.
 */
#ifndef FL__ADMINAPI_H
#define FL__ADMINAPI_H

#include <jansson.h>
#include <stdbool.h>

#include "http.h"
#include "store_pg.h"

typedef struct admin_ctx {
  PGconn *c;
  char actor[96];
  json_t *body;
} admin_ctx;

/* Connection, role check and (for POST) the JSON body. 0, or -1 with *r set. */
int fl__admin_begin(fl_srv *s, fl_req *q, fl_resp *r, int role, admin_ctx *a);
void fl__admin_end(fl_srv *s, admin_ctx *a);
/* Runs a query whose single text cell is JSON and answers {key: that JSON} (or the JSON
 * itself when single; 404 when single and no row). */
void fl__admin_json_query(fl_resp *r, PGconn *c, const char *key, const char *sql, const fl_pgp *p,
                          bool single);
/* Commits the caller's transaction after its audit row (detail: the request body); answers
 * with `ok` (stolen). */
void fl__admin_commit_audited(fl_resp *r, admin_ctx *a, const char *action, const char *target,
                              json_t *ok);

#endif
