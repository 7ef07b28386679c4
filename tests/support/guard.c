/*
 * The watchdog of flsupport/guard.h. The messages on the socket are lines of tab-separated
 * fields, "+" or "-" first, then the kind (P process, C cluster, D directory) and its fields;
 * a "-" line forgets the entry whose fields are the same.
 */
#define _GNU_SOURCE /* close_range */
#include "flsupport/guard.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fl/err.h"
#include "flsupport/proc.h"

#define MAX_ENTRIES 64
#define LINE_MAX_LEN 2048

static int g_fd = -1; /* our end of the socket */
static pid_t g_owner; /* the process that started the guard */
static pid_t g_guard;

/* ----- in the guard ------------------------------------------------------------------------ */

typedef struct entries {
  char *e[MAX_ENTRIES]; /* "KIND\tfields...", without the sign */
  int n;
} entries;

static void apply(entries *es, char *line) {
  if ((line[0] != '+' && line[0] != '-') || line[1] != '\t')
    return;
  const char *body = line + 2;
  for (int i = 0; i < es->n; i++) {
    if (strcmp(es->e[i], body) == 0) {
      if (line[0] == '-') {
        free(es->e[i]);
        es->e[i] = es->e[--es->n];
      }
      return; /* a second "+" of the same entry is the same entry */
    }
  }
  if (line[0] == '+' && es->n < MAX_ENTRIES)
    es->e[es->n++] = strdup(body);
}

/* Splits "K\ta\tb..." in place; returns the field count (at most max). */
static int fields(char *s, char **f, int max) {
  int n = 0;
  for (char *save = NULL, *t = strtok_r(s, "\t", &save); t && n < max;
       t = strtok_r(NULL, "\t", &save))
    f[n++] = t;
  return n;
}

static void kill_process(pid_t pid) {
  if (pid <= 1 || kill(pid, SIGKILL) != 0)
    return;
  /* Not our child: poll until it is gone (or a zombie its new parent has not reaped yet). */
  for (int i = 0; i < 100 && kill(pid, 0) == 0; i++)
    fl_sup_sleep_ms(20);
}

static void stop_cluster(char **f) {
  fl_sup_spawn_opts o = {.switch_user = atoi(f[1]) != 0,
                         .uid = (uid_t)strtoul(f[2], NULL, 10),
                         .gid = (gid_t)strtoul(f[3], NULL, 10)};
  char *argv[] = {f[4], "-D", f[5], "-m", "immediate", "-w", "-t", "30", "stop", NULL};
  fl_sup_run(argv, &o);
}

/* Processes first (they may write into the directories), then clusters, then directories. */
static void clean_up(entries *es) {
  for (int pass = 0; pass < 3; pass++) {
    for (int i = 0; i < es->n; i++) {
      char copy[LINE_MAX_LEN], *f[8];
      snprintf(copy, sizeof copy, "%s", es->e[i]);
      int n = fields(copy, f, 8);
      if (pass == 0 && n == 2 && f[0][0] == 'P')
        kill_process((pid_t)atol(f[1]));
      else if (pass == 1 && n == 6 && f[0][0] == 'C')
        stop_cluster(f);
      else if (pass == 2 && n == 2 && f[0][0] == 'D')
        fl_sup_rmtree(f[1]);
    }
  }
}

static void guard_main(int fd) {
  setsid();
  prctl(PR_SET_NAME, "fl-guard"); /* not mistaken for its owner in ps */
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  /* Hold nothing of the parent's open: a pipe to `tee` would not see its end while we live. */
  int null_fd = open("/dev/null", O_RDWR);
  for (int i = 0; i < 3 && null_fd >= 0; i++)
    dup2(null_fd, i);
  if (fd > 3)
    close_range(3, (unsigned)fd - 1, 0);
  close_range((unsigned)fd + 1, ~0U, 0);
  entries es = {.n = 0};
  char buf[LINE_MAX_LEN * 2];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break; /* the owner is gone */
    len += (size_t)r;
    buf[len] = '\0';
    char *nl, *start = buf;
    while ((nl = strchr(start, '\n')) != NULL) {
      *nl = '\0';
      apply(&es, start);
      start = nl + 1;
    }
    len -= (size_t)(start - buf);
    memmove(buf, start, len);
    if (len >= sizeof buf - 1)
      len = 0; /* a line too long to be ours */
  }
  clean_up(&es);
  _exit(0);
}

/* ----- in the owner ------------------------------------------------------------------------ */

int fl_sup_guard_start(void) {
  if (g_fd >= 0 && g_owner == getpid())
    return FL_OK;
  if (g_fd >= 0)
    close(g_fd); /* inherited from the process that forked us: its guard, not ours */
  g_fd = -1;
  int sv[2];
  /* Close-on-exec: a program we start that inherited our end would keep the guard from seeing
   * our end close. */
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return FL_E_IO;
  fflush(NULL);
  pid_t p = fork();
  if (p < 0) {
    close(sv[0]);
    close(sv[1]);
    return FL_E_IO;
  }
  if (p == 0) {
    close(sv[0]);
    guard_main(sv[1]);
  }
  close(sv[1]);
  g_fd = sv[0];
  g_owner = getpid();
  g_guard = p;
  return FL_OK;
}

pid_t fl_sup_guard_pid_of(void) {
  return g_owner == getpid() ? g_guard : 0;
}

static int say(bool add, const char *body) {
  char line[LINE_MAX_LEN];
  int n = snprintf(line, sizeof line, "%c\t%s\n", add ? '+' : '-', body);
  if (n < 0 || (size_t)n >= sizeof line || strchr(body, '\n') != NULL)
    return FL_E_INVAL;
  int rc = fl_sup_guard_start();
  if (rc != FL_OK)
    return rc;
  /* MSG_NOSIGNAL: a guard that died must not take us with it through SIGPIPE. */
  for (int off = 0; off < n;) {
    ssize_t w = send(g_fd, line + off, (size_t)(n - off), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return FL_E_IO;
    off += (int)w;
  }
  return FL_OK;
}

int fl_sup_guard_pid(pid_t pid, bool add) {
  char body[32];
  snprintf(body, sizeof body, "P\t%ld", (long)pid);
  return say(add, body);
}

int fl_sup_guard_cluster(const char *pg_ctl, const char *data, bool switch_user, uid_t uid,
                         gid_t gid, bool add) {
  char body[LINE_MAX_LEN];
  if (strchr(pg_ctl, '\t') || strchr(data, '\t'))
    return FL_E_INVAL;
  snprintf(body, sizeof body, "C\t%d\t%lu\t%lu\t%s\t%s", switch_user ? 1 : 0, (unsigned long)uid,
           (unsigned long)gid, pg_ctl, data);
  return say(add, body);
}

int fl_sup_guard_dir(const char *path, bool add) {
  char body[LINE_MAX_LEN];
  if (strchr(path, '\t'))
    return FL_E_INVAL;
  snprintf(body, sizeof body, "D\t%s", path);
  return say(add, body);
}
