/*
 * The throwaway PostgreSQL cluster of an fl-sim run.
 */
#include "pg.h"

#include <glob.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fl/err.h"
#include "proc.h"

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
        snprintf(out, cap, "%.*s", (int)(strlen(g.gl_pathv[i]) - strlen("/initdb")),
                 g.gl_pathv[i]);
      }
    }
    globfree(&g);
  }
}

static void tool(char *out, size_t cap, const sim_pg *pg, const char *name) {
  if (pg->bindir[0])
    snprintf(out, cap, "%s/%s", pg->bindir, name);
  else
    snprintf(out, cap, "%s", name);
}

/* Root cannot run PostgreSQL: hand the directory to `postgres` and run the tools as it. */
static int choose_user(sim_pg *pg, sim_run_as *as) {
  as->switch_user = false;
  if (geteuid() != 0)
    return FL_OK;
  struct passwd *pw = getpwnam("postgres");
  if (pw == NULL) {
    fprintf(stderr, "fl-sim: running as root needs a `postgres` user for PostgreSQL\n");
    return FL_E_STATE;
  }
  if (chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0)
    return FL_E_IO;
  as->switch_user = true;
  as->uid = pw->pw_uid;
  as->gid = pw->pw_gid;
  return FL_OK;
}

static int init_and_start(sim_pg *pg, const sim_run_as *as) {
  char initdb[300], pg_ctl[300], data[300], log[300], init_log[300], opts[400];
  tool(initdb, sizeof(initdb), pg, "initdb");
  tool(pg_ctl, sizeof(pg_ctl), pg, "pg_ctl");
  snprintf(data, sizeof(data), "%s/data", pg->dir);
  snprintf(log, sizeof(log), "%s/postgres.log", pg->dir);
  snprintf(init_log, sizeof(init_log), "%s/initdb.log", pg->dir);
  /* Unix socket only: a private directory cannot clash with another cluster's port. */
  snprintf(opts, sizeof(opts), "-k %s -c listen_addresses= -p 5432 -c max_connections=100",
           pg->dir);
  char *init_argv[] = {initdb, "-D", data, "-A", "trust", "-U", "fl", "-E", "UTF8",
                       "--no-sync", NULL};
  if (sim_run_command(init_argv, init_log, as) != FL_OK) {
    fprintf(stderr, "fl-sim: initdb failed, see %s\n", init_log);
    return FL_E_IO;
  }
  char *start_argv[] = {pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o", opts, "start",
                        NULL};
  if (sim_run_command(start_argv, NULL, as) != FL_OK) {
    fprintf(stderr, "fl-sim: pg_ctl start failed, see %s\n", log);
    return FL_E_IO;
  }
  return FL_OK;
}

int sim_pg_start(sim_pg *pg, const char *bindir) {
  memset(pg, 0, sizeof(*pg));
  find_bindir(pg->bindir, sizeof(pg->bindir), bindir);
  snprintf(pg->dir, sizeof(pg->dir), "%s/fl-sim-pg-XXXXXX",
           getenv("TMPDIR") && strlen(getenv("TMPDIR")) < 60 ? getenv("TMPDIR") : "/tmp");
  if (mkdtemp(pg->dir) == NULL)
    return FL_E_IO;
  sim_run_as as;
  int rc = choose_user(pg, &as);
  if (rc == FL_OK)
    rc = init_and_start(pg, &as);
  if (rc != FL_OK)
    return rc; /* the directory stays for its logs */
  pg->started = 1;
  snprintf(pg->conninfo, sizeof(pg->conninfo), "host=%s port=5432 user=fl dbname=postgres",
           pg->dir);
  return FL_OK;
}

void sim_pg_stop(sim_pg *pg) {
  if (pg->started) {
    char pg_ctl[300], data[300];
    tool(pg_ctl, sizeof(pg_ctl), pg, "pg_ctl");
    snprintf(data, sizeof(data), "%s/data", pg->dir);
    sim_run_as as = {.switch_user = false};
    struct passwd *pw = geteuid() == 0 ? getpwnam("postgres") : NULL;
    if (pw != NULL)
      as = (sim_run_as){.switch_user = true, .uid = pw->pw_uid, .gid = pw->pw_gid};
    char *argv[] = {pg_ctl, "-D", data, "-m", "fast", "-w", "stop", NULL};
    sim_run_command(argv, NULL, &as);
    sim_rmtree(pg->dir);
  }
  memset(pg, 0, sizeof(*pg));
}
