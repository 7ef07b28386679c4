/*
 * PostgreSQL access: a fixed-size connection pool that reconnects by itself, and a small
 * parameter builder so that every statement goes through PQexecParams with its values kept
 * apart from the SQL text.
 */
#ifndef FL__STORE_PG_H
#define FL__STORE_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fl_pool fl_pool;

/* Opens `size` connections lazily (the first is opened here so that a bad URL fails early).
 * On error *out is untouched. */
int fl__pool_new(fl_pool **out, const char *conninfo, unsigned size);
void fl__pool_free(fl_pool *p);
/* Blocks until a connection is free. A connection found broken is reset; NULL when the
 * database cannot be reached now (the caller answers "unavailable"). */
PGconn *fl__pool_get(fl_pool *p);
/* The same, waiting at most wait_ms for a free connection (NULL when none became free). */
PGconn *fl__pool_get_timed(fl_pool *p, unsigned wait_ms);
/* Returns a connection; one left inside a transaction is rolled back first. */
void fl__pool_put(fl_pool *p, PGconn *c);

/* The pool now and since start, for /metrics: connections handed out, takes that had to wait
 * for one (and waited wait_s seconds in all), takes that gave up at their deadline. */
typedef struct fl_pool_stats {
  unsigned size, in_use;
  uint64_t waits, timeouts;
  double wait_s;
} fl_pool_stats;
void fl__pool_stats(fl_pool *p, fl_pool_stats *out);

#define FL_PG_MAXP 16

typedef struct fl_pgp {
  int n;
  const char *v[FL_PG_MAXP];
  int len[FL_PG_MAXP];
  int fmt[FL_PG_MAXP];
  char buf[FL_PG_MAXP][32];
} fl_pgp;

void fl__pgp_init(fl_pgp *p);
void fl__pgp_u64(fl_pgp *p, uint64_t v);
void fl__pgp_i64(fl_pgp *p, int64_t v);
void fl__pgp_f64(fl_pgp *p, double v);
void fl__pgp_text(fl_pgp *p, const char *s); /* NULL = SQL NULL; not copied */
void fl__pgp_bin(fl_pgp *p, const void *data, size_t len); /* bytea, not copied */

/* Runs sql with the parameters; results in text (binary = false) or binary format. Returns
 * NULL after logging when the statement failed (the error text is logged, never the values).
 * `sqlstate`, when given, receives the five-character SQLSTATE of a failure ("" if none). */
PGresult *fl__pg_exec(PGconn *c, const char *sql, const fl_pgp *p, bool binary,
                      char sqlstate[6]);
/* fl__pg_exec for the hot statements: prepared once per connection under `name` (a string
 * literal, one per SQL text, at most 64 per connection) and executed by name afterwards, which
 * spares PostgreSQL the parse and plan of every execution. Prepared again after a reset. */
PGresult *fl__pg_exec_prep(PGconn *c, const char *name, const char *sql, const fl_pgp *p,
                           bool binary, char sqlstate[6]);
/* Runs a parameterless command (BEGIN, COMMIT, ROLLBACK); 0 or -1. */
int fl__pg_cmd(PGconn *c, const char *sql);

/* Text-format field readers (NULL reads as 0 / ""). */
uint64_t fl__pg_u64(const PGresult *r, int row, int col);
int64_t fl__pg_i64(const PGresult *r, int row, int col);
double fl__pg_f64(const PGresult *r, int row, int col);
/* Binary-format field readers. */
int64_t fl__pg_bin_i64(const PGresult *r, int row, int col);
int32_t fl__pg_bin_i32(const PGresult *r, int row, int col);
double fl__pg_bin_f64(const PGresult *r, int row, int col);

#endif
