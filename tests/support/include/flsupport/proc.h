/*
 * Child processes and scratch files for the programs that start real services around
 * fleetlearn (integration tests, benches, fl-sim): spawn a program with its output in a log,
 * optionally as another user and in its own session; stop it; remove a directory tree; find a
 * free loopback port; make a temporary directory. Every child started here gets
 * PR_SET_PDEATHSIG (SIGKILL), so it cannot outlive the program that started it.
 */
#ifndef FLSUPPORT_PROC_H
#define FLSUPPORT_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct fl_sup_spawn_opts {
  char *const *env;     /* NULL-terminated "K=V" strings added to the environment (may be NULL) */
  const char *log_path; /* stdout and stderr, appended; NULL: /dev/null */
  bool switch_user;     /* drop to uid/gid in the child (PostgreSQL refuses to run as root) */
  uid_t uid;
  gid_t gid;
  /* A session of its own: a terminal's ^C (sent to the foreground process group) does not
   * reach it, so the caller decides how it stops. pg_ctl's postmaster is started so. */
  bool new_session;
  /* No PR_SET_PDEATHSIG: for a program that must finish even if we die (pg_ctl stop). */
  bool survive_parent;
} fl_sup_spawn_opts;

/* NULL-terminated argv (argv[0] is looked up in PATH when it has no '/'); o may be NULL.
 * *pid on success; FL_E_IO when fork fails. */
int fl_sup_spawn(pid_t *pid, char *const argv[], const fl_sup_spawn_opts *o);
/* Runs to completion: FL_OK when it exits with status 0, FL_E_IO otherwise. */
int fl_sup_run(char *const argv[], const fl_sup_spawn_opts *o);
/* Sends sig, waits up to wait_ms for the exit, then SIGKILL. Returns the exit status, or
 * 128 + the signal that ended it; -1 when pid is not a child. */
int fl_sup_terminate(pid_t pid, int sig, int wait_ms);
/* true while the child has not exited (reaps it when it has). */
bool fl_sup_alive(pid_t pid);

/* rm -rf; errors are ignored (it is cleanup). */
void fl_sup_rmtree(const char *path);
/* A TCP port on 127.0.0.1 that was free a moment ago (bound, read, closed), or 0. */
int fl_sup_free_port(void);
/* mkdtemp of $TMPDIR (when short enough, else /tmp) "/<prefix>XXXXXX" into out. FL_OK, or
 * FL_E_IO (out too small, mkdtemp failed). */
int fl_sup_mkdtemp(char *out, size_t cap, const char *prefix);

/* Clocks: monotonic seconds, the calling thread's CPU seconds (on a shared machine wall time
 * also counts the time other programs held the core), wall-clock milliseconds since the
 * epoch, a plain sleep. */
double fl_sup_mono_s(void);
/* CPU of a process from /proc/<pid>/stat in clock ticks: utime + stime, plus cutime + cstime
 * (its reaped children) when children; -1 when it is gone. *ppid (if not NULL) gets its
 * parent. */
long long fl_sup_proc_ticks(pid_t pid, bool children, pid_t *ppid);
/* A process with its reaped children and its live children (e.g. a postmaster and its
 * backends), in clock ticks. *picked (if pick is not NULL) gets the share of the live children
 * for which pick(pid) is true. */
long long fl_sup_family_ticks(pid_t parent, bool (*pick)(pid_t), long long *picked);
double fl_sup_thread_cpu_s(void);
int64_t fl_sup_wall_ms(void);
void fl_sup_sleep_ms(long ms);

#endif
