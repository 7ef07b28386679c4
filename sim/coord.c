/*
 * The coordinator child process of an fl-sim run: where its binary is, and fl-sim's settings
 * for it; the launching is tests/support's.
 */
#include "coord.h"

#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "fl/err.h"

/* fl-coordinator beside /proc/self/exe (an install), or in the build tree (build/sim/fl-sim and
 * build/server/fl-coordinator), else PATH. */
static void find_binary(char *out, size_t cap) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    const char *dir = dirname(self);
    const char *cands[] = {"%s/fl-coordinator", "%s/../server/fl-coordinator"};
    for (size_t i = 0; i < 2; i++) {
      snprintf(out, cap, cands[i], dir);
      if (access(out, X_OK) == 0)
        return;
    }
  }
  snprintf(out, cap, "fl-coordinator"); /* PATH, via execvp */
}

int sim_coord_start(sim_coord *c, const char *bin, const char *database_url, const char *work_dir,
                    char *const extra_args[]) {
  char exe[PATH_MAX];
  if (bin != NULL)
    snprintf(exe, sizeof(exe), "%s", bin);
  else
    find_binary(exe, sizeof(exe));
  /* The coordinator's BLAS work (folding updates) runs on its request threads already; OpenBLAS
   * threads of its own would spin in sched_yield between calls, taking a quarter of a core
   * from the fleet's workers and PostgreSQL on a small machine (measured with perf). Current
   * coordinators set this themselves (server/main.c); a given --coordinator-bin may not. */
  char *env[] = {"OPENBLAS_NUM_THREADS=1", NULL};
  fl_sup_coord_opts o = {.bin = exe,
                         .database_url = database_url,
                         .dir = work_dir,
                         .args = extra_args,
                         .env = env,
                         .guard = true};
  return fl_sup_coord_start(c, &o);
}

void sim_coord_stop(sim_coord *c) {
  fl_sup_coord_stop(c, SIGTERM, 10000);
}

void sim_coord_log_tail(const sim_coord *c, int lines) {
  fl_sup_coord_log_tail(c, lines);
}
