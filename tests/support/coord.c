/*
 * The coordinator child process; see flsupport/coord.h.
 */
#include "flsupport/coord.h"

#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "crypto.h"
#include "fl/err.h"
#include "flsupport/admin.h"
#include "flsupport/guard.h"
#include "flsupport/proc.h"

#define MAX_ARGS 64

/* Polls /readyz until it answers 200, the child dies or the time is up. */
static int wait_ready(fl_sup_coord *c, const fl_sup_coord_opts *o) {
  fl_sup_admin *a = NULL;
  if (fl_sup_admin_new(&a, c->url, c->admin_token) != FL_OK ||
      fl_sup_admin_set_ca(a, o->ca_file) != FL_OK) {
    fl_sup_admin_free(a);
    return FL_E_NOMEM;
  }
  int rc = FL_E_TIMEOUT;
  double until = fl_sup_mono_s() + (o->ready_timeout_ms > 0 ? o->ready_timeout_ms : 30000) / 1e3;
  while (fl_sup_mono_s() < until) {
    if (!fl_sup_alive(c->pid)) {
      c->pid = 0;
      rc = FL_E_STATE;
      break;
    }
    if (fl_sup_admin_probe(a, "/readyz") == FL_OK) {
      rc = FL_OK;
      break;
    }
    fl_sup_sleep_ms(50);
  }
  fl_sup_admin_free(a);
  return rc;
}

/* The child's environment: the admin token, then the caller's. */
static void child_env(const fl_sup_coord *c, const fl_sup_coord_opts *o, char *token_var,
                      size_t cap, char **env) {
  size_t n = 0;
  snprintf(token_var, cap, "FL_ADMIN_TOKEN=%s", c->admin_token);
  env[n++] = token_var;
  for (size_t i = 0; o->env && o->env[i] && n < MAX_ARGS - 1; i++)
    env[n++] = o->env[i];
  env[n] = NULL;
}

int fl_sup_coord_start(fl_sup_coord *c, const fl_sup_coord_opts *o) {
  char listen[64], key[PATH_MAX], db[1024], token_var[96];
  char *argv[MAX_ARGS], *env[MAX_ARGS];
  memset(c, 0, sizeof(*c));
  if (o->bin == NULL || o->dir == NULL)
    return FL_E_INVAL;
  if (o->admin_token != NULL) {
    if (strlen(o->admin_token) >= sizeof(c->admin_token))
      return FL_E_INVAL;
    snprintf(c->admin_token, sizeof(c->admin_token), "%s", o->admin_token);
  } else {
    uint8_t raw[32];
    if (fl__random_bytes(raw, sizeof(raw)) != FL_OK)
      return FL_E_IO;
    fl__hex(raw, sizeof(raw), c->admin_token);
  }
  c->port = o->port > 0 ? o->port : fl_sup_free_port();
  if (c->port == 0)
    return FL_E_IO;
  snprintf(c->url, sizeof(c->url), "%s://127.0.0.1:%d", o->tls ? "https" : "http", c->port);
  snprintf(listen, sizeof(listen), "--listen=127.0.0.1:%d", c->port);
  snprintf(key, sizeof(key), "--signing-key=%s/signing-key.pem", o->dir);
  snprintf(db, sizeof(db), "--database-url=%s", o->database_url ? o->database_url : "");
  snprintf(c->log_path, sizeof(c->log_path), "%s/coordinator.log", o->dir);
  size_t n = 0;
  argv[n++] = (char *)o->bin;
  argv[n++] = listen;
  argv[n++] = key;
  argv[n++] = db;
  for (size_t i = 0; o->args && o->args[i] && n < MAX_ARGS - 1; i++)
    argv[n++] = o->args[i];
  argv[n] = NULL;
  child_env(c, o, token_var, sizeof(token_var), env);
  /* Its own session: a terminal's ^C reaches only us, and we decide how it stops. */
  fl_sup_spawn_opts so = {.env = env, .log_path = c->log_path, .new_session = true};
  int rc = fl_sup_spawn(&c->pid, argv, &so);
  if (rc != FL_OK)
    return rc;
  if (o->guard)
    c->guarded = fl_sup_guard_pid(c->pid, true) == FL_OK;
  rc = wait_ready(c, o);
  if (rc != FL_OK) {
    fprintf(stderr, "%s did not become ready (%s); the end of %s:\n", o->bin, fl_strerror(rc),
            c->log_path);
    fl_sup_coord_log_tail(c, 20);
    fl_sup_coord_stop(c, SIGKILL, 5000);
  }
  return rc;
}

int fl_sup_coord_stop(fl_sup_coord *c, int sig, int wait_ms) {
  if (c->pid <= 0)
    return -1;
  int st = fl_sup_terminate(c->pid, sig, wait_ms);
  if (c->guarded)
    fl_sup_guard_pid(c->pid, false);
  c->guarded = false;
  c->pid = 0;
  return st;
}

void fl_sup_coord_log_tail(const fl_sup_coord *c, int lines) {
  FILE *f = fopen(c->log_path, "r");
  if (f == NULL)
    return;
  char ring[64][512];
  int count = 0;
  if (lines > 64)
    lines = 64;
  if (lines < 1)
    lines = 1;
  while (fgets(ring[count % lines], sizeof(ring[0]), f) != NULL)
    count++;
  fclose(f);
  for (int i = count > lines ? count - lines : 0; i < count; i++)
    fprintf(stderr, "  | %s", ring[i % lines]);
}
