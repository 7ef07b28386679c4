/*
 * Structured logs (server/slog.c): values from fl__slog_str are bare or quoted logfmt values
 * that a logfmt reader turns back into the original text, whatever quotes, backslashes,
 * spaces or newlines it has; fl__slog keeps every event on one line. And the listen address
 * forms of server/config.c (names, [IPv6]:PORT, :PORT).
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server.h"

/* Reads one logfmt value at *p (bare or quoted with \" \\ \n \r \t \u00XX); NULL when the
 * quoted value is not closed. */
static char *read_value(const char **p) {
  static char out[4096];
  size_t n = 0;
  const char *s = *p;
  if (*s != '"') {
    while (*s && *s != ' ' && *s != '\n')
      out[n++] = *s++;
    out[n] = '\0';
    *p = s;
    return out;
  }
  for (s++; *s && *s != '"'; s++) {
    if (*s != '\\') {
      out[n++] = *s;
      continue;
    }
    s++;
    if (*s == 'u') {
      unsigned c;
      cr_assert_eq(sscanf(s + 1, "%4x", &c), 1);
      out[n++] = (char)c;
      s += 4;
    } else {
      out[n++] = *s == 'n' ? '\n' : *s == 'r' ? '\r' : *s == 't' ? '\t' : *s;
    }
  }
  if (*s != '"')
    return NULL;
  out[n] = '\0';
  *p = s + 1;
  return out;
}

static const char *roundtrip(const char *v) {
  const char *enc = fl__slog_str(v), *p = enc;
  char *dec = read_value(&p);
  cr_assert_not_null(dec, "unterminated: %s", enc);
  cr_assert_eq(*p, '\0', "value %s ends early at %s", enc, p);
  return dec;
}

Test(slog, plain_values_stay_bare) {
  cr_assert_str_eq(fl__slog_str("plant-3"), "plant-3");
  cr_assert_str_eq(fl__slog_str("/etc/fleetlearn/tls.crt"), "/etc/fleetlearn/tls.crt");
  cr_assert_str_eq(fl__slog_str("42"), "42");
}

Test(slog, values_that_would_break_the_line_are_quoted_and_escaped) {
  cr_assert_str_eq(fl__slog_str(""), "\"\"");
  cr_assert_str_eq(fl__slog_str(NULL), "\"\"");
  cr_assert_str_eq(fl__slog_str("two words"), "\"two words\"");
  cr_assert_str_eq(fl__slog_str("a=b"), "\"a=b\"");
  cr_assert_str_eq(fl__slog_str("say \"hi\""), "\"say \\\"hi\\\"\"");
  cr_assert_str_eq(fl__slog_str("C:\\dir"), "\"C:\\\\dir\"");
  cr_assert_str_eq(fl__slog_str("l1\nl2\tx\r"), "\"l1\\nl2\\tx\"");
  cr_assert_str_eq(fl__slog_str("bell\a"), "\"bell\\u0007\"");
}

Test(slog, libpq_message_roundtrips) {
  const char *msg =
      "connection to server at \"pg\" (10.0.0.5), port 5432 failed: FATAL:  "
      "database \"fleet\\x\" does not exist\nDETAIL:  see \"log\"\n";
  const char *dec = roundtrip(msg);
  /* The trailing newline is dropped, everything else survives. */
  cr_assert_eq(strlen(dec), strlen(msg) - 1);
  cr_assert_eq(strncmp(dec, msg, strlen(msg) - 1), 0, "%s", dec);
}

Test(slog, trailing_newlines_dropped_and_long_values_cut) {
  cr_assert_str_eq(fl__slog_str("ok\n\n"), "ok");
  char big[3000];
  memset(big, '"', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  const char *enc = fl__slog_str(big);
  cr_assert_leq(strlen(enc), FL_SLOG_VALUE_MAX + 5);
  const char *p = enc;
  cr_assert_not_null(read_value(&p), "cut value still closed: %.40s...", enc);
  cr_assert_eq(*p, '\0');
  cr_assert_str_eq(fl__slog_strn("select 1 from t", 6), "select");
}

Test(slog, four_values_in_one_call_are_distinct) {
  char line[256];
  snprintf(line, sizeof line, "%s %s %s %s", fl__slog_str("a b"), fl__slog_str("c"),
           fl__slog_str("d\"e"), fl__slog_str("f"));
  cr_assert_str_eq(line, "\"a b\" c \"d\\\"e\" f");
}

/* Captures one fl__slog line from stderr. */
static void capture_as(char *out, size_t cap, const char *event, const char *value, bool json) {
  char path[] = "/tmp/fl_test_slog_XXXXXX";
  int fd = mkstemp(path), saved = dup(STDERR_FILENO);
  cr_assert(fd >= 0 && saved >= 0);
  unlink(path);
  dup2(fd, STDERR_FILENO);
  fl__slog_init(FL_LOG_INFO, "replica \"x\"", json);
  fl__slog(FL_LOG_ERROR, event, "error=%s raw=%s", fl__slog_str(value), value);
  dup2(saved, STDERR_FILENO);
  close(saved);
  ssize_t n = pread(fd, out, cap - 1, 0);
  out[n > 0 ? n : 0] = '\0';
  close(fd);
  fl__slog_init(FL_LOG_INFO, NULL, false);
}

static void capture(char *out, size_t cap, const char *event, const char *value) {
  capture_as(out, cap, event, value, false);
}

Test(slog, a_line_carries_the_value_and_stays_one_line) {
  char line[4096];
  const char *msg = "FATAL:  database \"nope\" does not exist\nsecond line";
  capture(line, sizeof line, "db_connect_failed", msg);
  /* One line: the only newline ends it, even for the unescaped "raw" value. */
  cr_assert_eq(strchr(line, '\n'), line + strlen(line) - 1, "%s", line);
  const char *r = strstr(line, " replica=");
  cr_assert_not_null(r, "%s", line);
  r += strlen(" replica=");
  cr_assert_str_eq(read_value(&r), "replica \"x\"");
  const char *p = strstr(line, " error=");
  cr_assert_not_null(p, "%s", line);
  p += strlen(" error=");
  char *v = read_value(&p);
  cr_assert_not_null(v);
  cr_assert_str_eq(v, msg);
  cr_assert_eq(strncmp(p, " raw=", 5), 0, "the next key follows the value: %s", p);
}

/* ----- listen addresses (config.c) ----------------------------------------------------------- */

static int parse_listen(fl_config *cfg, const char *value) {
  char arg[128];
  snprintf(arg, sizeof arg, "--listen=%s", value);
  char *argv[] = {"fl-coordinator", arg, NULL};
  unsetenv("FL_LISTEN");
  return fl__config_parse(cfg, 2, argv);
}

Test(config, listen_forms) {
  fl_config cfg;
  cr_assert_eq(parse_listen(&cfg, "[::1]:8443"), 0);
  cr_assert_str_eq(cfg.listen_host, "::1");
  cr_assert_eq(cfg.port, 8443);
  cr_assert_str_eq(fl__config_listen_text(&cfg), "[::1]:8443");
  cr_assert_eq(parse_listen(&cfg, "coordinator.example:80"), 0);
  cr_assert_str_eq(cfg.listen_host, "coordinator.example");
  cr_assert_eq(parse_listen(&cfg, ":9000"), 0);
  cr_assert_str_eq(cfg.listen_host, "0.0.0.0");
  cr_assert_eq(cfg.port, 9000);
  cr_assert_eq(parse_listen(&cfg, "10.1.2.3:1"), 0);
  cr_assert_str_eq(cfg.listen_host, "10.1.2.3");
}

Test(config, bad_listen_forms_are_refused) {
  static const char *const bad[] = {"::1:8080", "[::1]8080",  "[::1]",   "[]:80",  "host",
                                    "host:",    "host:65536", "host:-1", "[::1:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fl_config cfg;
    cr_expect_eq(parse_listen(&cfg, bad[i]), -1, "%s accepted", bad[i]);
  }
}

Test(config, check_resolves_ipv6_loopback) {
  fl_config cfg;
  char why[256] = "";
  cr_assert_eq(parse_listen(&cfg, "[::1]:0"), 0);
  cfg.signing_key = "/tmp/fl-test-slog-missing-key.pem"; /* missing: created in /tmp */
  cr_assert_eq(fl__config_check(&cfg, why, sizeof why), 0, "%s", why);
  cr_assert_eq(cfg.listen_addr.ss_family, AF_INET6);
  cr_assert_eq(parse_listen(&cfg, "192.0.2.1:8080"), 0);
  cfg.signing_key = "/tmp/fl-test-slog-missing-key.pem";
  cr_assert_eq(fl__config_check(&cfg, why, sizeof why), -1);
  cr_assert(strstr(why, "--listen 192.0.2.1:8080") != NULL, "%s", why);
}

/* --log-format=json: the same pairs as one JSON object per line, the escaped value decoded
 * back to the caller's text, and a value a caller passed unescaped still valid JSON. */
Test(slog, json_lines_are_json_objects_with_the_same_pairs) {
  static const char *const values[] = {"FATAL:  database \"nope\"\nsecond\tline \\ end", "plain",
                                       "", "a=b c", "\x01\x7f"};
  for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
    char line[8192];
    capture_as(line, sizeof line, "db_connect_failed", values[i], true);
    cr_assert_eq(strchr(line, '\n'), line + strlen(line) - 1, "%s", line);
    json_error_t e;
    json_t *j = json_loads(line, 0, &e);
    cr_assert_not_null(j, "not JSON (%s): %s", e.text, line);
    cr_assert_str_eq(json_string_value(json_object_get(j, "event")), "db_connect_failed");
    cr_assert_str_eq(json_string_value(json_object_get(j, "level")), "error");
    cr_assert_str_eq(json_string_value(json_object_get(j, "replica")), "replica \"x\"");
    cr_assert_not_null(json_string_value(json_object_get(j, "ts")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "error")), values[i], "%s", line);
    cr_assert_not_null(json_object_get(j, "raw"), "%s", line);
    json_decref(j);
  }
}
