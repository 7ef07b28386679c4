/*
 * fl-coordinator as a child process: on a loopback port (a free one unless given), with a
 * signing key in a work directory (made on the first start, kept across restarts), a known or
 * fresh admin token (FL_ADMIN_TOKEN), its output appended to <dir>/coordinator.log; started
 * when /readyz answers 200, stopped with a signal. The child dies with us (PR_SET_PDEATHSIG).
 */
#ifndef FLSUPPORT_COORD_H
#define FLSUPPORT_COORD_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct fl_sup_coord_opts {
  const char *bin;          /* the fl-coordinator executable (required) */
  const char *database_url; /* --database-url (libpq conninfo); NULL: "" (the PG* variables) */
  const char *dir;          /* work directory: signing-key.pem and coordinator.log (required) */
  const char *admin_token;  /* NULL: 64 fresh hex digits */
  int port;                 /* 0: a free port */
  bool tls;                 /* https://; the flags --tls-cert/--tls-key come in args */
  const char *ca_file;      /* with tls: what /readyz is verified against */
  char *const *args;        /* NULL-terminated flags appended to ours (may be NULL) */
  char *const *env;         /* NULL-terminated "K=V" for the child (may be NULL) */
  int ready_timeout_ms;     /* 0: 30 s */
  bool guard;               /* also register the child with the guard (flsupport/guard.h) */
} fl_sup_coord_opts;

typedef struct fl_sup_coord {
  pid_t pid;
  int port;
  char url[64]; /* http(s)://127.0.0.1:<port> */
  char admin_token[65];
  char log_path[512];
  bool guarded;
} fl_sup_coord;

/* FL_OK when ready; else the child is stopped, the reason and the log's last lines printed on
 * stderr, and FL_E_STATE (it exited), FL_E_TIMEOUT or FL_E_IO returned. */
int fl_sup_coord_start(fl_sup_coord *c, const fl_sup_coord_opts *o);
/* Sends sig (SIGTERM: graceful, SIGKILL: a crash), waits up to wait_ms, then SIGKILL. Returns
 * the exit status (128 + signal when killed), -1 when it was not running. */
int fl_sup_coord_stop(fl_sup_coord *c, int sig, int wait_ms);
/* Prints the last lines of the coordinator's log to stderr (after a failure). */
void fl_sup_coord_log_tail(const fl_sup_coord *c, int lines);

#endif
