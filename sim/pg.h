/*
 * The throwaway PostgreSQL cluster of one fl-sim run: tests/support's (flsupport/pg.h), in a
 * temporary directory fl-sim-pg-XXXXXX, reachable only over a Unix socket there, stopped and
 * deleted at the end, and by the guard if fl-sim dies first.
 */
#ifndef SIM_PG_H
#define SIM_PG_H

#include "flsupport/pg.h"

typedef fl_sup_pg sim_pg;

/* bindir NULL: $FL_PG_BIN, else the newest /usr/lib/postgresql/<v>/bin, else PATH.
 * On failure the directory stays for its logs (named on stderr). */
static inline int sim_pg_start(sim_pg *pg, const char *bindir) {
  return fl_sup_pg_start(pg, bindir, "fl-sim-pg-", "fl-sim");
}

static inline void sim_pg_stop(sim_pg *pg) {
  fl_sup_pg_stop(pg);
}

#endif
