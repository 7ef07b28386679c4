/*
 * fork/exec helpers; see flsupport/proc.h.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include "flsupport/proc.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fl/err.h"

/* In the child: user, death signal, output, environment, exec. Never returns. */
static void exec_child(char *const argv[], const fl_sup_spawn_opts *o, pid_t parent) {
  /* The user first, so that the log belongs to the user who keeps writing it; the death
   * signal after it, because changing credentials clears it. */
  if (o->switch_user && (setgid(o->gid) != 0 || setuid(o->uid) != 0))
    _exit(126);
  if (o->new_session)
    setsid();
  if (!o->survive_parent) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) /* the parent died before prctl took effect */
      _exit(125);
  }
  int fd = open(o->log_path ? o->log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                0600);
  int null_in = open("/dev/null", O_RDONLY);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
  }
  if (null_in >= 0)
    dup2(null_in, STDIN_FILENO);
  for (size_t i = 0; o->env && o->env[i]; i++)
    putenv(o->env[i]);
  /* The parent may ignore or block signals (fl-sim's handlers); the child starts clean. */
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  execvp(argv[0], argv);
  fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

int fl_sup_spawn(pid_t *pid, char *const argv[], const fl_sup_spawn_opts *o) {
  static const fl_sup_spawn_opts plain;
  pid_t parent = getpid();
  fflush(NULL);
  pid_t p = fork();
  if (p < 0)
    return FL_E_IO;
  if (p == 0)
    exec_child(argv, o ? o : &plain, parent);
  *pid = p;
  return FL_OK;
}

static int wait_status(pid_t pid, int options) {
  int st;
  pid_t r;
  while ((r = waitpid(pid, &st, options)) < 0 && errno == EINTR)
    ;
  if (r <= 0)
    return r == 0 ? -2 : -1; /* -2: still running (WNOHANG) */
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int fl_sup_run(char *const argv[], const fl_sup_spawn_opts *o) {
  pid_t p;
  int rc = fl_sup_spawn(&p, argv, o);
  if (rc != FL_OK)
    return rc;
  return wait_status(p, 0) == 0 ? FL_OK : FL_E_IO;
}

bool fl_sup_alive(pid_t pid) {
  return pid > 0 && wait_status(pid, WNOHANG) == -2;
}

int fl_sup_terminate(pid_t pid, int sig, int wait_ms) {
  if (pid <= 0)
    return -1;
  kill(pid, sig);
  for (int waited = 0; waited < wait_ms; waited += 20) {
    int st = wait_status(pid, WNOHANG);
    if (st != -2)
      return st;
    fl_sup_sleep_ms(20);
  }
  kill(pid, SIGKILL);
  return wait_status(pid, 0);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

void fl_sup_rmtree(const char *path) {
  if (path != NULL && path[0] != '\0')
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int fl_sup_free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0)
    return 0;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(s, (struct sockaddr *)&a, sizeof(a)) == 0 &&
      getsockname(s, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(s);
  return port;
}

int fl_sup_mkdtemp(char *out, size_t cap, const char *prefix) {
  const char *tmp = getenv("TMPDIR");
  if (tmp == NULL || tmp[0] == '\0' || strlen(tmp) > 100)
    tmp = "/tmp";
  int n = snprintf(out, cap, "%s/%sXXXXXX", tmp, prefix);
  if (n < 0 || (size_t)n >= cap)
    return FL_E_IO;
  return mkdtemp(out) ? FL_OK : FL_E_IO;
}

double fl_sup_mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

long long fl_sup_proc_ticks(pid_t pid, bool children, pid_t *ppid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* the comm may hold spaces */
  if (p == NULL)
    return -1;
  long long v[20] = {0};
  int k = 0;
  char *save = NULL;
  for (char *t = strtok_r(p + 2, " ", &save); t != NULL && k < 20; t = strtok_r(NULL, " ", &save))
    v[k++] = atoll(t);
  /* after the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) */
  if (ppid != NULL)
    *ppid = (pid_t)v[1];
  return v[11] + v[12] + (children ? v[13] + v[14] : 0);
}

long long fl_sup_family_ticks(pid_t parent, bool (*pick)(pid_t), long long *picked) {
  long long t = fl_sup_proc_ticks(parent, true, NULL);
  DIR *d = opendir("/proc");
  struct dirent *e;
  if (picked != NULL)
    *picked = 0;
  while (d != NULL && (e = readdir(d)) != NULL) {
    if (!isdigit((unsigned char)e->d_name[0]))
      continue;
    pid_t pid = (pid_t)atoi(e->d_name), pp = 0;
    long long c = fl_sup_proc_ticks(pid, false, &pp);
    if (c > 0 && pp == parent) {
      t += c;
      if (pick != NULL && picked != NULL && pick(pid))
        *picked += c;
    }
  }
  if (d != NULL)
    closedir(d);
  return t;
}

double fl_sup_thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t fl_sup_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A signal ends the sleep early (no restart): a caller polling for a stop flag sees it soon. */
void fl_sup_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}
