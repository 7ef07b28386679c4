/*
 * Starting fl-coordinator as a child process for one fl-sim run (tests/support's launcher,
 * flsupport/coord.h): on a free loopback port, with a fresh admin token (FL_ADMIN_TOKEN) and
 * signing key in the run's work directory, its output in work_dir/coordinator.log; ready when
 * /readyz answers 200. It dies with fl-sim (PR_SET_PDEATHSIG, and the guard).
 */
#ifndef SIM_COORD_H
#define SIM_COORD_H

#include "flsupport/coord.h"

/* pid, url, admin_token, log_path */
typedef fl_sup_coord sim_coord;

/* bin NULL: fl-coordinator next to this executable, then ../../server/ (the build tree), then
 * PATH. extra_args: NULL-terminated coordinator flags appended to ours (may be NULL). */
int sim_coord_start(sim_coord *c, const char *bin, const char *database_url, const char *work_dir,
                    char *const extra_args[]);
void sim_coord_stop(sim_coord *c);
/* Prints the last lines of the coordinator's log to stderr (after a failure). */
void sim_coord_log_tail(const sim_coord *c, int lines);

#endif
