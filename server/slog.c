/*
 * Structured logs: one line per event on stderr, key=value pairs after a fixed prefix (logfmt),
 * so that both people and log shippers read them. Lines are written with one write(2) so that
 * lines of concurrent threads never interleave. Callers never pass secrets (tokens, keys,
 * signatures), and pass any text they did not write themselves (libpq and libmicrohttpd
 * messages, file names, option values) through fl__slog_str so that a quote, a space or a
 * newline in it cannot break the line.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

static int g_level = FL_LOG_INFO;
static bool g_json;
static char g_replica[FL_SLOG_VALUE_MAX + 8] = "-";

void fl__slog_init(int level, const char *replica_id, bool json) {
  g_level = level;
  g_json = json;
  /* --replica-id is the operator's text: escaped once here for every line. */
  snprintf(g_replica, sizeof g_replica, "%s", replica_id ? fl__slog_str(replica_id) : "-");
}

/* Whether a logfmt value must be quoted: empty, or a byte that ends or splits a bare value. */
static bool needs_quotes(const char *s, size_t n) {
  if (n == 0)
    return true;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
      return true;
  }
  return false;
}

const char *fl__slog_strn(const char *s, size_t n) {
  /* Four buffers per thread, used in turn: one log line may carry four such values. */
  static _Thread_local char bufs[4][FL_SLOG_VALUE_MAX + 8];
  static _Thread_local unsigned next;
  char *out = bufs[next++ % 4];
  size_t len = 0, cap = FL_SLOG_VALUE_MAX;
  if (s == NULL)
    s = "";
  n = strnlen(s, n);
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
    n--;
  if (!needs_quotes(s, n)) {
    size_t m = n < cap ? n : cap;
    memcpy(out, s, m);
    out[m] = '\0';
    return out;
  }
  out[len++] = '"';
  size_t i = 0;
  for (; i < n && len + 7 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = c == '"'    ? "\\\""
                      : c == '\\' ? "\\\\"
                      : c == '\n' ? "\\n"
                      : c == '\r' ? "\\r"
                      : c == '\t' ? "\\t"
                                  : NULL;
    if (esc != NULL)
      len += (size_t)sprintf(out + len, "%s", esc);
    else if (c < 0x20 || c == 0x7f)
      len += (size_t)sprintf(out + len, "\\u%04x", c);
    else
      out[len++] = (char)c;
  }
  if (i < n)
    len += (size_t)sprintf(out + len, "...");
  out[len++] = '"';
  out[len] = '\0';
  return out;
}

const char *fl__slog_str(const char *s) {
  return fl__slog_strn(s, (size_t)-1);
}

/* Appends s[0..n) to out as JSON string content. s is a logfmt value's text (fl__slog_strn's
 * escapes \" \\ \n \r \t \u00XX are JSON escapes too, so a quoted value's inside is copied as
 * is); control bytes that are still there are escaped. */
static size_t json_chars(char *out, size_t cap, size_t len, const char *s, size_t n) {
  for (size_t i = 0; i < n && len + 8 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f)
      len += (size_t)snprintf(out + len, cap - len, "\\u%04x", c);
    else
      out[len++] = (char)c;
  }
  return len;
}

/* One logfmt value at *p as a JSON string: bare (up to a space) or quoted (up to the quote
 * that is not escaped). */
static size_t json_value(char *out, size_t cap, size_t len, const char **p) {
  const char *s = *p, *e;
  if (len + 8 >= cap)
    return len;
  out[len++] = '"';
  if (*s == '"') {
    for (e = s + 1; *e && *e != '"'; e++)
      if (*e == '\\' && e[1] != '\0')
        e++;
    len = json_chars(out, cap, len, s + 1, (size_t)(e - s - 1));
    *p = *e == '"' ? e + 1 : e;
  } else {
    for (e = s; *e && *e != ' '; e++)
      if (*e == '"' || *e == '\\') /* not logfmt: a caller skipped fl__slog_str */
        break;
    len = json_chars(out, cap, len, s, (size_t)(e - s));
    /* The rest of a malformed bare value, escaped. */
    for (; *e && *e != ' '; e++) {
      if (len + 8 >= cap)
        break;
      if (*e == '"' || *e == '\\')
        out[len++] = '\\';
      out[len++] = *e;
    }
    *p = e;
  }
  if (len + 2 < cap)
    out[len++] = '"';
  return len;
}

/* The logfmt line "ts=.. level=.. key=value ..." (no newline) as one JSON object. A word
 * without '=' (a caller's free text) is collected under "msg". */
static size_t to_json(const char *line, char *out, size_t cap) {
  size_t len = 0;
  const char *p = line;
  out[len++] = '{';
  bool first = true;
  while (*p) {
    while (*p == ' ')
      p++;
    if (!*p)
      break;
    const char *k = p;
    while (*p && *p != '=' && *p != ' ')
      p++;
    if (len + 16 >= cap)
      break;
    if (!first)
      out[len++] = ',';
    first = false;
    out[len++] = '"';
    if (*p == '=') {
      len = json_chars(out, cap, len, k, (size_t)(p - k));
      len += (size_t)snprintf(out + len, cap - len, "\":");
      p++;
      len = json_value(out, cap, len, &p);
    } else {
      len += (size_t)snprintf(out + len, cap - len, "msg\":");
      p = k;
      len = json_value(out, cap, len, &p);
    }
  }
  if (len + 2 >= cap)
    len = cap - 2;
  out[len++] = '}';
  return len;
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
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000000, names[level], g_replica, event);
  if (n < 0 || (size_t)n >= sizeof line - 2)
    n = (int)sizeof line - 2;
  if (fmt != NULL && *fmt != '\0' && (size_t)n < sizeof line - 3) {
    va_list ap;
    int start = ++n;
    line[start - 1] = ' ';
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - 1 - (size_t)n, fmt, ap);
    va_end(ap);
    if (m > 0)
      n += m;
    if ((size_t)n > sizeof line - 2)
      n = (int)sizeof line - 2;
    /* One event, one line, whatever a caller formatted without fl__slog_str. */
    for (int i = start; i < n; i++)
      if ((unsigned char)line[i] < 0x20)
        line[i] = ' ';
  }
  if (g_json) {
    char js[2 * sizeof line + 16];
    line[n] = '\0';
    size_t m = to_json(line, js, sizeof js - 1);
    js[m++] = '\n';
    ssize_t w = write(STDERR_FILENO, js, m);
    (void)w;
    return;
  }
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w; /* nowhere left to report a failed log write */
}
