/*
 * fork/exec helpers for the services fl-sim starts.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include "proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fl/err.h"

/* In the child: redirect output, change user, exec. Never returns. */
static void exec_child(char *const argv[], char *const env_extra[], const char *log_path,
                       const sim_run_as *as) {
  /* The user first, so that the log belongs to the user who keeps writing it. */
  if (as && as->switch_user && (setgid(as->gid) != 0 || setuid(as->uid) != 0))
    _exit(126);
  int fd = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                0600);
  int null_in = open("/dev/null", O_RDONLY);
  if (fd >= 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
  }
  if (null_in >= 0)
    dup2(null_in, STDIN_FILENO);
  for (size_t i = 0; env_extra && env_extra[i]; i++)
    putenv(env_extra[i]);
  execvp(argv[0], argv);
  fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
  _exit(127);
}

int sim_spawn(pid_t *pid, char *const argv[], char *const env_extra[], const char *log_path,
              const sim_run_as *as) {
  fflush(NULL);
  pid_t p = fork();
  if (p < 0)
    return FL_E_IO;
  if (p == 0)
    exec_child(argv, env_extra, log_path, as);
  *pid = p;
  return FL_OK;
}

int sim_run_command(char *const argv[], const char *log_path, const sim_run_as *as) {
  pid_t p;
  int rc = sim_spawn(&p, argv, NULL, log_path, as);
  if (rc != FL_OK)
    return rc;
  int st;
  while (waitpid(p, &st, 0) < 0)
    if (errno != EINTR)
      return FL_E_IO;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? FL_OK : FL_E_IO;
}

bool sim_alive(pid_t pid) {
  int st;
  return waitpid(pid, &st, WNOHANG) == 0;
}

void sim_terminate(pid_t pid, int wait_ms) {
  if (pid <= 0)
    return;
  kill(pid, SIGTERM);
  for (int waited = 0; waited < wait_ms; waited += 20) {
    int st;
    if (waitpid(pid, &st, WNOHANG) != 0)
      return;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

void sim_rmtree(const char *path) {
  if (path != NULL && path[0] != '\0')
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int sim_free_port(void) {
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
