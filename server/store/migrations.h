/* Schema migrations (migrations.c). */
#ifndef FL__MIGRATIONS_H
#define FL__MIGRATIONS_H

#include "store/store_pg.h"

/* Brings the schema up to date; safe to run from several replicas at once. FL_E_DB. */
int fl__migrate(PGconn *c);

#endif
