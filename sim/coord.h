/*
 * Starting fl-coordinator as a child process for one fl-sim run: on a free loopback port, with
 * a fresh admin token (FL_ADMIN_TOKEN) and signing key in the run's work directory, its output
 * in work_dir/coordinator.log; ready when /readyz answers 200.
 */
#ifndef SIM_COORD_H
#define SIM_COORD_H

#include <sys/types.h>

typedef struct sim_coord {
  pid_t pid;
  char url[64];
  char admin_token[65];
  char log_path[512];
} sim_coord;

/* bin NULL: fl-coordinator next to this executable, then ../../server/ (the build tree), then
 * PATH. extra_args: NULL-terminated coordinator flags appended to ours (may be NULL). */
int sim_coord_start(sim_coord *c, const char *bin, const char *database_url,
                    const char *work_dir, char *const extra_args[]);
void sim_coord_stop(sim_coord *c);
/* Prints the last lines of the coordinator's log to stderr (after a failure). */
void sim_coord_log_tail(const sim_coord *c, int lines);

#endif
