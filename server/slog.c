/*
 * Structured logs: one line per event on stderr, key=value pairs after a fixed prefix, so that
 * both people and log shippers read them. Lines are written with one write(2) so that lines of
 * concurrent threads never interleave. Callers never pass secrets (tokens, keys, signatures).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

static int g_level = FL_LOG_INFO;
static char g_replica[96] = "-";

void fl__slog_init(int level, const char *replica_id) {
  g_level = level;
  snprintf(g_replica, sizeof g_replica, "%s", replica_id ? replica_id : "-");
}

void fl__slog(fl_log_level level, const char *event, const char *fmt, ...) {
  static const char *names[] = {"error", "warn", "info", "debug"};
  char line[2048];
  struct timespec ts;
  struct tm tm;
  if ((int)level > g_level)
    return;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line,
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s replica=%s event=%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, names[level], g_replica, event);
  if (n < 0 || (size_t)n >= sizeof line - 2)
    n = (int)sizeof line - 2;
  if (fmt != NULL && *fmt != '\0' && (size_t)n < sizeof line - 3) {
    va_list ap;
    line[n++] = ' ';
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - 1 - (size_t)n, fmt, ap);
    va_end(ap);
    if (m > 0)
      n += m;
    if ((size_t)n > sizeof line - 2)
      n = (int)sizeof line - 2;
  }
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w; /* nowhere left to report a failed log write */
}
