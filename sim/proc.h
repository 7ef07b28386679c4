/*
 * Child processes for fl-sim's throwaway services: run a command to completion, or start one in
 * the background, optionally as another user (PostgreSQL refuses to run as root), with its
 * output appended to a log file. Also: removing a directory tree and finding a free TCP port.
 */
#ifndef SIM_PROC_H
#define SIM_PROC_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct sim_run_as {
  bool switch_user; /* drop to uid/gid in the child */
  uid_t uid;
  gid_t gid;
} sim_run_as;

/* NULL-terminated argv; env_extra: NULL-terminated "K=V" strings added to the environment (may
 * be NULL). Output goes to log_path (appended; NULL: /dev/null). *pid on success. */
int sim_spawn(pid_t *pid, char *const argv[], char *const env_extra[], const char *log_path,
              const sim_run_as *as);
/* Runs to completion: FL_OK when it exits with status 0, FL_E_IO otherwise. */
int sim_run_command(char *const argv[], const char *log_path, const sim_run_as *as);
/* SIGTERM, up to wait_ms for the exit, then SIGKILL. */
void sim_terminate(pid_t pid, int wait_ms);
/* true while the process has not exited (reaps it when it has). */
bool sim_alive(pid_t pid);

/* rm -rf; errors are ignored (it is cleanup). */
void sim_rmtree(const char *path);
/* A TCP port on 127.0.0.1 that was free a moment ago (bound, read, closed), or 0. */
int sim_free_port(void);

#endif
