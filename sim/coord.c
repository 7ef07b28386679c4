/*
 * The coordinator child process of an fl-sim run.
 */
#include "coord.h"

#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "crypto.h"
#include "fl/err.h"
#include "proc.h"

#define READY_TIMEOUT_MS 30000

/* fl-coordinator beside /proc/self/exe, or in the build tree's server/ directory. */
static int find_binary(char *out, size_t cap) {
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    const char *dir = dirname(self);
    const char *cands[] = {"%s/fl-coordinator", "%s/../../server/fl-coordinator"};
    for (size_t i = 0; i < 2; i++) {
      snprintf(out, cap, cands[i], dir);
      if (access(out, X_OK) == 0)
        return FL_OK;
    }
  }
  snprintf(out, cap, "fl-coordinator"); /* PATH, via execvp */
  return FL_OK;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Polls /readyz until it answers 200, the child dies or the time is up. */
static int wait_ready(sim_coord *c) {
  sim_admin *a = NULL;
  if (sim_admin_new(&a, c->url, c->admin_token) != FL_OK)
    return FL_E_NOMEM;
  int rc = FL_E_TIMEOUT;
  for (int waited = 0; waited < READY_TIMEOUT_MS; waited += 50) {
    if (!sim_alive(c->pid)) {
      c->pid = 0;
      rc = FL_E_STATE;
      break;
    }
    if (sim_admin_probe(a, "/readyz") == FL_OK) {
      rc = FL_OK;
      break;
    }
    sleep_ms(50);
  }
  sim_admin_free(a);
  return rc;
}

int sim_coord_start(sim_coord *c, const char *bin, const char *database_url,
                    const char *work_dir, char *const extra_args[]) {
  memset(c, 0, sizeof(*c));
  char exe[PATH_MAX], listen[64], key[PATH_MAX], db[1024], env_token[96];
  if (bin != NULL)
    snprintf(exe, sizeof(exe), "%s", bin);
  else
    find_binary(exe, sizeof(exe));
  uint8_t raw[32];
  int port = sim_free_port();
  if (port == 0 || fl__random_bytes(raw, sizeof(raw)) != FL_OK)
    return FL_E_IO;
  fl__hex(raw, sizeof(raw), c->admin_token);
  snprintf(c->url, sizeof(c->url), "http://127.0.0.1:%d", port);
  snprintf(listen, sizeof(listen), "--listen=127.0.0.1:%d", port);
  snprintf(key, sizeof(key), "--signing-key=%s/coordinator-key.pem", work_dir);
  snprintf(db, sizeof(db), "--database-url=%s", database_url ? database_url : "");
  snprintf(env_token, sizeof(env_token), "FL_ADMIN_TOKEN=%s", c->admin_token);
  snprintf(c->log_path, sizeof(c->log_path), "%s/coordinator.log", work_dir);
  char *argv[64] = {exe, listen, key, db};
  size_t n = 4;
  for (size_t i = 0; extra_args && extra_args[i] && n < 63; i++)
    argv[n++] = extra_args[i];
  argv[n] = NULL;
  /* The coordinator's BLAS work (folding updates) runs on its request threads already; OpenBLAS
   * threads of its own would spin in sched_yield between calls, taking a quarter of a core
   * from the fleet's workers and PostgreSQL on a small machine (measured with perf). Current
   * coordinators set this themselves (server/main.c); a given --coordinator-bin may not. */
  char *env[] = {env_token, "OPENBLAS_NUM_THREADS=1", NULL};
  int rc = sim_spawn(&c->pid, argv, env, c->log_path, NULL);
  if (rc != FL_OK)
    return rc;
  rc = wait_ready(c);
  if (rc != FL_OK) {
    fprintf(stderr, "fl-sim: %s did not become ready (%s); its log:\n", exe, fl_strerror(rc));
    sim_coord_log_tail(c, 20);
    sim_coord_stop(c);
  }
  return rc;
}

void sim_coord_stop(sim_coord *c) {
  if (c->pid > 0)
    sim_terminate(c->pid, 10000);
  c->pid = 0;
}

void sim_coord_log_tail(const sim_coord *c, int lines) {
  FILE *f = fopen(c->log_path, "r");
  if (f == NULL)
    return;
  char ring[64][512];
  int count = 0;
  if (lines > 64)
    lines = 64;
  while (fgets(ring[count % lines], sizeof(ring[0]), f) != NULL)
    count++;
  fclose(f);
  for (int i = count > lines ? count - lines : 0; i < count; i++)
    fprintf(stderr, "  | %s", ring[i % lines]);
}
