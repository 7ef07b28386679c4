/*
 * PostgreSQL for the programs that need one: a throwaway cluster (initdb and pg_ctl in a
 * temporary directory, reachable only over a Unix socket in that directory, so that no TCP
 * port can clash; as root it runs as the `postgres` user, because PostgreSQL refuses to run as
 * root), or the cluster that libpq's PG* environment names (pg_virtualenv), with a fresh
 * database per user.
 *
 * A throwaway cluster is registered with the guard (flsupport/guard.h): it is stopped and its
 * directory removed even when the process that started it dies without calling
 * fl_sup_pg_stop.
 */
#ifndef FLSUPPORT_PG_H
#define FLSUPPORT_PG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct fl_sup_pg {
  char dir[256];      /* temporary directory (data, socket, logs) */
  char bindir[256];   /* where initdb and pg_ctl were found ("" : PATH) */
  char conninfo[512]; /* libpq conninfo of the running cluster */
  int started;
  bool switch_user; /* the tools run as uid/gid (postgres) */
  uid_t uid;
  gid_t gid;
} fl_sup_pg;

/* bindir NULL: $FL_PG_BIN, else the newest /usr/lib/postgresql/<v>/bin, else PATH. prefix
 * names the directory ("fl-sim-pg-"). Progress and failures are printed on stderr, prefixed
 * with `who`; on failure the directory stays for its logs. */
int fl_sup_pg_start(fl_sup_pg *pg, const char *bindir, const char *prefix, const char *who);
/* pg_ctl restart with a shutdown mode ("immediate": a crash, the next start replays the WAL;
 * "fast"), waiting until the cluster accepts connections again. Existing connections are
 * broken. FL_OK, FL_E_STATE when not started, FL_E_IO (see postgres.log). */
int fl_sup_pg_restart(fl_sup_pg *pg, const char *mode);
/* pg_ctl stop (fast), then the directory is removed. Does nothing when not started. */
void fl_sup_pg_stop(fl_sup_pg *pg);

/* ----- the PG* environment's cluster ----------------------------------------------------- */

/* Creates a database with a unique name "<prefix><pid>_<seq>_<hex>" (written to name, 64
 * bytes) in the cluster of the PG* variables. FL_OK or FL_E_DB (printed). */
int fl_sup_db_create(const char *prefix, char name[64]);
/* DROP DATABASE ... WITH (FORCE); errors are printed and ignored (it is cleanup). */
void fl_sup_db_drop(const char *name);
/* A parameterless statement in `db` (NULL: the default database); with value, the first cell
 * of its answer as an integer (NULL -> 0). FL_OK, FL_E_DB, or FL_E_NOTFOUND when value was
 * asked for and there is no row (printed). */
int fl_sup_db_exec(const char *db, const char *sql, int64_t *value);

#endif
