/*
 * PostgreSQL clusters and databases; see flsupport/pg.h.
 */
#include "flsupport/pg.h"

#include <glob.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto.h"
#include "fl/err.h"
#include "flsupport/guard.h"
#include "flsupport/proc.h"

/* The newest Debian-layout server binaries, else "" (PATH). */
static void find_bindir(char *out, size_t cap, const char *given) {
  const char *env = getenv("FL_PG_BIN");
  out[0] = '\0';
  if (given != NULL || env != NULL) {
    snprintf(out, cap, "%s", given ? given : env);
    return;
  }
  glob_t g;
  int best = -1;
  if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; i++) {
      int v = atoi(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"));
      if (v > best) {
        best = v;
        snprintf(out, cap, "%.*s", (int)(strlen(g.gl_pathv[i]) - strlen("/initdb")), g.gl_pathv[i]);
      }
    }
    globfree(&g);
  }
}

static void tool(char *out, size_t cap, const fl_sup_pg *pg, const char *name) {
  if (pg->bindir[0])
    snprintf(out, cap, "%s/%s", pg->bindir, name);
  else
    snprintf(out, cap, "%s", name);
}

/* Root cannot run PostgreSQL: hand the directory to `postgres` and run the tools as it. */
static int choose_user(fl_sup_pg *pg, const char *who) {
  pg->switch_user = false;
  if (geteuid() != 0)
    return FL_OK;
  struct passwd *pw = getpwnam("postgres");
  if (pw == NULL) {
    fprintf(stderr, "%s: running as root needs a `postgres` user for PostgreSQL\n", who);
    return FL_E_STATE;
  }
  if (chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0)
    return FL_E_IO;
  pg->switch_user = true;
  pg->uid = pw->pw_uid;
  pg->gid = pw->pw_gid;
  return FL_OK;
}

static fl_sup_spawn_opts as_owner(const fl_sup_pg *pg, const char *log) {
  return (fl_sup_spawn_opts){
      .log_path = log, .switch_user = pg->switch_user, .uid = pg->uid, .gid = pg->gid};
}

static int init_and_start(fl_sup_pg *pg, const char *who) {
  char initdb[300], pg_ctl[300], data[300], log[300], init_log[300], opts[400];
  tool(initdb, sizeof(initdb), pg, "initdb");
  tool(pg_ctl, sizeof(pg_ctl), pg, "pg_ctl");
  snprintf(data, sizeof(data), "%s/data", pg->dir);
  snprintf(log, sizeof(log), "%s/postgres.log", pg->dir);
  snprintf(init_log, sizeof(init_log), "%s/initdb.log", pg->dir);
  /* Unix socket only: a private directory cannot clash with another cluster's port. */
  snprintf(opts, sizeof(opts), "-k %s -c listen_addresses= -p 5432 -c max_connections=100",
           pg->dir);
  char *init_argv[] = {initdb, "-D", data,   "-A",        "trust", "-U",
                       "fl",   "-E", "UTF8", "--no-sync", NULL};
  fl_sup_spawn_opts o = as_owner(pg, init_log);
  if (fl_sup_run(init_argv, &o) != FL_OK) {
    fprintf(stderr, "%s: initdb failed, see %s\n", who, init_log);
    return FL_E_IO;
  }
  /* Registered before the start: a death during pg_ctl start still stops what it started. */
  fl_sup_guard_cluster(pg_ctl, data, pg->switch_user, pg->uid, pg->gid, true);
  char *start_argv[] = {pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o", opts, "start", NULL};
  o = as_owner(pg, NULL);
  /* Its own session: a terminal's ^C goes to us, and we stop the cluster (or the guard does). */
  o.new_session = true;
  if (fl_sup_run(start_argv, &o) != FL_OK) {
    fprintf(stderr, "%s: pg_ctl start failed, see %s\n", who, log);
    return FL_E_IO;
  }
  return FL_OK;
}

int fl_sup_pg_start(fl_sup_pg *pg, const char *bindir, const char *prefix, const char *who) {
  memset(pg, 0, sizeof(*pg));
  find_bindir(pg->bindir, sizeof(pg->bindir), bindir);
  if (fl_sup_mkdtemp(pg->dir, sizeof(pg->dir), prefix) != FL_OK)
    return FL_E_IO;
  fl_sup_guard_dir(pg->dir, true);
  int rc = choose_user(pg, who);
  if (rc == FL_OK)
    rc = init_and_start(pg, who);
  if (rc != FL_OK) {
    /* The directory stays for its logs: the guard forgets it (the cluster, if any, not). */
    fl_sup_guard_dir(pg->dir, false);
    return rc;
  }
  pg->started = 1;
  snprintf(pg->conninfo, sizeof(pg->conninfo), "host=%s port=5432 user=fl dbname=postgres",
           pg->dir);
  return FL_OK;
}

int fl_sup_pg_restart(fl_sup_pg *pg, const char *mode) {
  if (!pg->started)
    return FL_E_STATE;
  char pg_ctl[300], data[300], log[300], m[32];
  tool(pg_ctl, sizeof(pg_ctl), pg, "pg_ctl");
  snprintf(data, sizeof(data), "%s/data", pg->dir);
  snprintf(log, sizeof(log), "%s/postgres.log", pg->dir);
  snprintf(m, sizeof(m), "%s", mode);
  /* The server options of the first start are in postmaster.opts: restart reuses them. */
  char *argv[] = {pg_ctl, "-D", data, "-l", log, "-m", m, "-w", "-t", "60", "restart", NULL};
  fl_sup_spawn_opts o = as_owner(pg, NULL);
  o.new_session = true;
  return fl_sup_run(argv, &o) == FL_OK ? FL_OK : FL_E_IO;
}

void fl_sup_pg_stop(fl_sup_pg *pg) {
  if (pg->started) {
    char pg_ctl[300], data[300];
    tool(pg_ctl, sizeof(pg_ctl), pg, "pg_ctl");
    snprintf(data, sizeof(data), "%s/data", pg->dir);
    char *argv[] = {pg_ctl, "-D", data, "-m", "fast", "-w", "stop", NULL};
    fl_sup_spawn_opts o = as_owner(pg, NULL);
    fl_sup_run(argv, &o);
    fl_sup_guard_cluster(pg_ctl, data, pg->switch_user, pg->uid, pg->gid, false);
    fl_sup_rmtree(pg->dir);
    fl_sup_guard_dir(pg->dir, false);
  }
  memset(pg, 0, sizeof(*pg));
}

/* ----- the PG* environment's cluster ----------------------------------------------------- */

/* Connects to `db` (NULL: the PG* default database). */
static PGconn *connect_db(const char *db) {
  const char *keys[] = {"dbname", NULL};
  const char *vals[] = {db, NULL};
  PGconn *c = db ? PQconnectdbParams(keys, vals, 1) : PQconnectdb("");
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "flsupport: connect to PostgreSQL: %s", PQerrorMessage(c));
    PQfinish(c);
    return NULL;
  }
  return c;
}

int fl_sup_db_exec(const char *db, const char *sql, int64_t *value) {
  PGconn *c = connect_db(db);
  if (c == NULL)
    return FL_E_DB;
  PGresult *r = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
  int st = PQresultStatus(r), rc = FL_OK;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    fprintf(stderr, "flsupport: %s: %s", sql, PQerrorMessage(c));
    rc = FL_E_DB;
  } else if (value != NULL && (st != PGRES_TUPLES_OK || PQntuples(r) == 0)) {
    fprintf(stderr, "flsupport: %s: no row\n", sql);
    rc = FL_E_NOTFOUND;
  } else if (value != NULL) {
    *value = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  }
  PQclear(r);
  PQfinish(c);
  return rc;
}

int fl_sup_db_create(const char *prefix, char name[64]) {
  static int seq;
  uint8_t rnd[4];
  char hex[9], sql[128];
  if (strspn(prefix, "abcdefghijklmnopqrstuvwxyz_") != strlen(prefix) || strlen(prefix) > 32)
    return FL_E_INVAL;
  fl__random_bytes(rnd, sizeof rnd);
  fl__hex(rnd, sizeof rnd, hex);
  snprintf(name, 64, "%s%d_%d_%s", prefix, (int)getpid(), seq++, hex);
  /* CREATE DATABASE takes no parameters; the name is made above of [a-z_], digits and hex. */
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  return fl_sup_db_exec(NULL, sql, NULL);
}

void fl_sup_db_drop(const char *name) {
  char sql[128];
  if (name == NULL || name[0] == '\0' ||
      strspn(name, "abcdefghijklmnopqrstuvwxyz_0123456789") != strlen(name))
    return;
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
  fl_sup_db_exec(NULL, sql, NULL);
}
