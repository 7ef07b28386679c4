/*
 * A throwaway PostgreSQL cluster for one fl-sim run: initdb and pg_ctl in a temporary
 * directory, reachable only over a Unix socket in that directory (so no TCP port can clash),
 * stopped and deleted at the end. As root the server runs as the `postgres` user, because
 * PostgreSQL refuses to run as root.
 */
#ifndef SIM_PG_H
#define SIM_PG_H

#include <limits.h>

typedef struct sim_pg {
  char dir[256];     /* temporary directory (data, socket, log) */
  char bindir[256];  /* where initdb and pg_ctl were found */
  char conninfo[512];/* libpq conninfo of the running cluster */
  int started;
} sim_pg;

/* bindir NULL: $FL_PG_BIN, else the newest /usr/lib/postgresql/<v>/bin, else PATH.
 * On failure the directory is removed and the log's path is in pg->dir's parent message. */
int sim_pg_start(sim_pg *pg, const char *bindir);
void sim_pg_stop(sim_pg *pg);

#endif
