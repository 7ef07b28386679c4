/*
 * A watchdog for the throwaway services of one process. PR_SET_PDEATHSIG ties a direct child to
 * us, but PostgreSQL's postmaster is a daemon (pg_ctl forks it off) and a directory has no
 * process at all: when the process that made them dies without cleaning up (SIGKILL, abort, a
 * SIGPIPE it did not catch, exit() from deep inside), they would stay. So the first
 * registration forks a guard: a small process in a session of its own (a terminal's ^C does not
 * reach it), reading a pipe whose only writer is us. When we die, however we die, the kernel
 * closes our end; the guard reads end-of-file, kills the registered processes, stops the
 * registered clusters (pg_ctl stop -m immediate) and removes the registered directories, in
 * that order, then exits. A clean shutdown unregisters what it stopped itself, so the guard
 * then has nothing left to do.
 *
 * Per process: a child forked after the guard started (a Criterion worker) starts its own.
 */
#ifndef FLSUPPORT_GUARD_H
#define FLSUPPORT_GUARD_H

#include <stdbool.h>
#include <sys/types.h>

/* Starts the guard if this process has none (the calls below start it too). FL_OK, FL_E_IO. */
int fl_sup_guard_start(void);
/* Registers (add) or forgets (!add) a process to SIGKILL. */
int fl_sup_guard_pid(pid_t pid, bool add);
/* A PostgreSQL cluster to stop with `pg_ctl -D data -m immediate stop`, run as uid/gid when
 * switch_user. */
int fl_sup_guard_cluster(const char *pg_ctl, const char *data, bool switch_user, uid_t uid,
                         gid_t gid, bool add);
/* A directory tree to remove. */
int fl_sup_guard_dir(const char *path, bool add);
/* The guard's pid (0: none), for tests. */
pid_t fl_sup_guard_pid_of(void);

#endif
