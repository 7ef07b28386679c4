/*
 * The flctl binary against a real coordinator over HTTPS with a private CA (the harness's
 * self-signed certificate): the CA bundle from --cacert, CURL_CA_BUNDLE or SSL_CERT_FILE;
 * malformed numbers and unknown options refused before anything is sent (checked through the
 * admin API and the database); base URLs with trailing slashes; the fleet table's channel
 * version.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static char g_db[64];
static fl_h_coord g_coord;
static char g_cert[320];
static uint64_t g_model;

static void setup(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start_tls(&g_coord, g_db), 0, "coordinator start (TLS)");
  snprintf(g_cert, sizeof g_cert, "%s/tls-cert.pem", g_coord.dir);
  json_t *m = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/models",
                            "{\"name\":\"flctl-itest\",\"spec\":" FL_H_SMALL_SPEC ",\"seed\":1}");
  cr_assert_not_null(m);
  g_model = (uint64_t)json_integer_value(json_object_get(m, "model_id"));
  json_decref(m);
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

TestSuite(flctl, .init = setup, .fini = teardown, .timeout = 120);

/* ----- running flctl ------------------------------------------------------------------------- */

typedef struct run {
  int rc;
  char out[1 << 16];
  char err[1 << 14];
} run;

static void slurp(int fd, char *buf, size_t cap) {
  ssize_t n = pread(fd, buf, cap - 1, 0);
  buf[n > 0 ? n : 0] = '\0';
  close(fd);
}

/* Runs flctl with argv (NULL-terminated varargs). The child starts without FL_URL,
 * FL_ADMIN_TOKEN, CURL_CA_BUNDLE and SSL_CERT_FILE (the machine may set the last two), then
 * gets env: "NAME=VALUE" entries (NULL-terminated, may be NULL). */
static run *flctl(const char *const *env, ...) {
  static run r;
  const char *argv[32];
  int n = 0;
  va_list ap;
  argv[n++] = FL_FLCTL_BIN;
  va_start(ap, env);
  for (const char *a; n < 31 && (a = va_arg(ap, const char *)) != NULL;)
    argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  char out_path[] = "/tmp/fl_itest_flctl_outXXXXXX", err_path[] = "/tmp/fl_itest_flctl_errXXXXXX";
  int out = mkstemp(out_path), err = mkstemp(err_path);
  cr_assert(out >= 0 && err >= 0);
  unlink(out_path);
  unlink(err_path);
  fflush(NULL);
  pid_t pid = fork();
  cr_assert(pid >= 0);
  if (pid == 0) {
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    unsetenv("FL_URL");
    unsetenv("FL_ADMIN_TOKEN");
    unsetenv("CURL_CA_BUNDLE");
    unsetenv("SSL_CERT_FILE");
    for (int i = 0; env && env[i]; i++)
      putenv((char *)env[i]);
    execv(FL_FLCTL_BIN, (char *const *)argv);
    _exit(127);
  }
  int st;
  cr_assert_eq(waitpid(pid, &st, 0), pid);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  slurp(out, r.out, sizeof r.out);
  slurp(err, r.err, sizeof r.err);
  return &r;
}

/* flctl with the coordinator's URL, token and certificate given as options. */
#define FLCTL(...)                                                                      \
  flctl(NULL, "--url", g_coord.url, "--token", g_coord.admin_token, "--cacert", g_cert, \
        __VA_ARGS__, NULL)

static int64_t db_count(const char *table) {
  char sql[96];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
  return fl_h_db_int(g_db, sql);
}

static size_t admin_list_size(const char *path, const char *key) {
  json_t *j = fl_h_admin_ok(&g_coord, "GET", path, NULL);
  cr_assert_not_null(j, "GET %s", path);
  size_t n = json_array_size(json_object_get(j, key));
  json_decref(j);
  return n;
}

/* The whitespace-separated words of the first line of text that starts with `first`. */
static int row_words(const char *text, const char *first, char words[8][32]) {
  size_t len = strlen(first);
  for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    if (strncmp(l, first, len) != 0 || (l[len] != ' ' && l[len] != '\n'))
      continue;
    int n = 0;
    const char *p = l;
    while (n < 8 && *p && *p != '\n') {
      while (*p == ' ')
        p++;
      size_t w = strcspn(p, " \n");
      if (w == 0)
        break;
      snprintf(words[n++], 32, "%.*s", (int)w, p);
      p += w;
    }
    return n;
  }
  return -1;
}

/* ----- the CA bundle ------------------------------------------------------------------------- */

Test(flctl, cacert_option_verifies_a_private_ca) {
  run *r = FLCTL("info");
  cr_assert_eq(r->rc, 0, "flctl --cacert info: %d %s", r->rc, r->err);
  cr_assert(strlen(r->out) > 0);
  r = FLCTL("whoami");
  cr_assert_eq(r->rc, 0, "flctl whoami: %d %s", r->rc, r->err);
  cr_assert(strstr(r->out, "admin") != NULL, "whoami: %s", r->out);
  /* Without the CA the same call fails verification and says how to give one. */
  r = flctl(NULL, "--url", g_coord.url, "--token", g_coord.admin_token, "info", NULL);
  cr_assert_eq(r->rc, 1, "%s", r->err);
  cr_assert(strstr(r->err, "--cacert") != NULL, "%s", r->err);
  /* A missing bundle is named before anything is sent. */
  r = flctl(NULL, "--url", g_coord.url, "--cacert", "/nonexistent/ca.pem", "info", NULL);
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "/nonexistent/ca.pem") != NULL, "%s", r->err);
}

Test(flctl, ca_bundle_from_the_environment) {
  char ssl[400], curl[400], url[128], tok[128];
  snprintf(ssl, sizeof ssl, "SSL_CERT_FILE=%s", g_cert);
  snprintf(curl, sizeof curl, "CURL_CA_BUNDLE=%s", g_cert);
  snprintf(url, sizeof url, "FL_URL=%s", g_coord.url);
  snprintf(tok, sizeof tok, "FL_ADMIN_TOKEN=%s", g_coord.admin_token);
  const char *const with_ssl[] = {ssl, url, tok, NULL};
  run *r = flctl(with_ssl, "models", "list", NULL);
  cr_assert_eq(r->rc, 0, "SSL_CERT_FILE: %d %s", r->rc, r->err);
  cr_assert(strstr(r->out, "flctl-itest") != NULL, "%s", r->out);
  const char *const with_curl[] = {curl, url, tok, NULL};
  r = flctl(with_curl, "models", "list", NULL);
  cr_assert_eq(r->rc, 0, "CURL_CA_BUNDLE: %d %s", r->rc, r->err);
  /* --cacert wins over the environment. */
  const char *const wrong[] = {"SSL_CERT_FILE=/nonexistent/env-ca.pem", url, tok, NULL};
  r = flctl(wrong, "--cacert", g_cert, "models", "list", NULL);
  cr_assert_eq(r->rc, 0, "%s", r->err);
  r = flctl(wrong, "models", "list", NULL);
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "/nonexistent/env-ca.pem") && strstr(r->err, "SSL_CERT_FILE"), "%s",
            r->err);
  /* Only https:// reads the environment's bundle: a stale one does not stop http://. */
  const char *const plain[] = {"SSL_CERT_FILE=/nonexistent/env-ca.pem", "FL_URL=http://127.0.0.1:1",
                               NULL};
  r = flctl(plain, "info", NULL);
  cr_assert_eq(r->rc, 1, "%s", r->err);
  cr_assert_null(strstr(r->err, "env-ca.pem"), "%s", r->err);
}

/* ----- numbers and options ------------------------------------------------------------------- */

Test(flctl, bad_numbers_are_refused_and_change_nothing) {
  char model[32], body[128];
  snprintf(model, sizeof model, "%llu", (unsigned long long)g_model);
  /* With the channel in place the old flctl created a live rollout at 0% for --percent abc. */
  snprintf(body, sizeof body, "{\"model_id\":%s,\"name\":\"stable\",\"version\":1}", model);
  json_decref(fl_h_admin_ok(&g_coord, "POST", "/admin/v1/channels", body));
  int64_t audit0 = db_count("audit_log"), models0 = db_count("models");
  static const struct {
    const char *args[8];
    const char *names;
  } cases[] = {
      {{"rollouts", "create", "M", "1", "--percent", "abc"}, "--percent"},
      {{"rollouts", "create", "M", "1", "--percent", "5%"}, "--percent"},
      {{"rollouts", "create", "M", "1", "--percent", "101"}, "--percent"},
      {{"rollouts", "create", "M", "1x", "--percent", "5"}, "VERSION"},
      {{"rollouts", "create", "0", "1"}, "MODEL_ID"},
      {{"models", "create", "m2", "--spec", FL_H_SMALL_SPEC, "--seed", "7q"}, "--seed"},
      {{"enrollment-tokens", "create", "--count", "abc"}, "--count"},
      {{"enrollment-tokens", "create", "--ttl", "-5"}, "--ttl"},
      {{"pins", "add", "M", "1", "--device", "abc"}, "--device"},
      {{"channels", "set", "M", "stable", "one"}, "VERSION"},
      {{"rounds", "list", "--model", "abc"}, "--model"},
      {{"audit", "--limit", "abc"}, "--limit"},
      {{"audit", "--limit", "0"}, "--limit"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *a[8] = {0};
    for (int k = 0; k < 8 && cases[i].args[k]; k++)
      a[k] = strcmp(cases[i].args[k], "M") == 0 ? model : cases[i].args[k];
    run *r = FLCTL(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
    cr_expect_eq(r->rc, 2, "%s %s ...: exit %d", a[0], a[1], r->rc);
    cr_expect(strstr(r->err, cases[i].names) != NULL, "%s %s: message names %s: %s", a[0], a[1],
              cases[i].names, r->err);
    cr_expect_str_empty(r->out, "%s %s printed %s", a[0], a[1], r->out);
  }
  run *r = FLCTL("--timeout", "abc", "info");
  cr_expect_eq(r->rc, 2);
  cr_expect(strstr(r->err, "--timeout") != NULL, "%s", r->err);
  /* Nothing was created: no rollout, pin, enrollment token, model or audit entry. */
  cr_assert_eq(admin_list_size("/admin/v1/rollouts", "rollouts"), 0);
  cr_assert_eq(admin_list_size("/admin/v1/pins", "pins"), 0);
  cr_assert_eq(admin_list_size("/admin/v1/channels", "channels"), 1);
  cr_assert_eq(db_count("enrollment_tokens"), 0);
  cr_assert_eq(db_count("models"), models0);
  cr_assert_eq(db_count("audit_log"), audit0);
  /* The good forms work. */
  r = FLCTL("audit", "--limit", "1");
  cr_assert_eq(r->rc, 0, "%s", r->err);
  int lines = 0;
  for (const char *p = r->out; *p; p++)
    lines += *p == '\n';
  cr_assert_eq(lines, 2, "header and one entry: %s", r->out);
  r = FLCTL("rollouts", "create", model, "1", "--percent=2.5");
  cr_assert_eq(r->rc, 0, "%s", r->err);
  json_t *list = fl_h_admin_ok(&g_coord, "GET", "/admin/v1/rollouts", NULL);
  json_t *ro = json_array_get(json_object_get(list, "rollouts"), 0);
  cr_assert_float_eq(json_number_value(json_object_get(ro, "percent")), 2.5, 1e-9);
  json_decref(list);
}

Test(flctl, unknown_options_give_the_commands_usage) {
  char model[32];
  snprintf(model, sizeof model, "%llu", (unsigned long long)g_model);
  run *r = FLCTL("rollouts", "create", model, "1", "--precent", "5");
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "rollouts create: unknown option --precent"), "%s", r->err);
  cr_assert(strstr(r->err, "usage: flctl rollouts create MODEL_ID VERSION"), "%s", r->err);
  /* An option of another form of the same command is unknown here too. */
  r = FLCTL("rollouts", "list", "--percent", "5");
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "rollouts list: unknown option --percent"), "%s", r->err);
  cr_assert(strstr(r->err, "usage: flctl rollouts list"), "%s", r->err);
  r = FLCTL("models", "list", "--json");
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "global options go before the command"), "%s", r->err);
  r = FLCTL("audit", "--limit", "3", "--limit", "4");
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "--limit given twice"), "%s", r->err);
  r = flctl(NULL, "--url", g_coord.url, "--bogus", "x", "info", NULL);
  cr_assert_eq(r->rc, 2);
  cr_assert(strstr(r->err, "unknown option --bogus"), "%s", r->err);
  r = FLCTL("pins", "--help");
  cr_assert_eq(r->rc, 0);
  cr_assert(strstr(r->out, "flctl pins add MODEL_ID VERSION"), "%s", r->out);
  cr_assert_eq(admin_list_size("/admin/v1/rollouts", "rollouts"), 0);
}

/* ----- URLs and output ----------------------------------------------------------------------- */

Test(flctl, base_url_with_trailing_slashes) {
  char url[128], env_url[160];
  snprintf(url, sizeof url, "%s/", g_coord.url);
  run *r = flctl(NULL, "--url", url, "--token", g_coord.admin_token, "--cacert", g_cert, "models",
                 "list", NULL);
  cr_assert_eq(r->rc, 0, "%s: %s", url, r->err);
  cr_assert(strstr(r->out, "flctl-itest") != NULL, "%s", r->out);
  snprintf(env_url, sizeof env_url, "FL_URL=%s//", g_coord.url);
  const char *const env[] = {env_url, NULL};
  r = flctl(env, "--token", g_coord.admin_token, "--cacert", g_cert, "--json", "info", NULL);
  cr_assert_eq(r->rc, 0, "%s", r->err);
  json_t *j = json_loads(r->out, 0, NULL);
  cr_assert(json_is_object(j), "%s", r->out);
  json_decref(j);
}

Test(flctl, fleet_shows_the_channels_version) {
  char model[32], body[128], words[8][32];
  fl_h_device devs[2];
  snprintf(model, sizeof model, "%llu", (unsigned long long)g_model);
  for (int i = 0; i < 2; i++) {
    snprintf(body, sizeof body, "{\"model_id\":%s,\"name\":\"%s\",\"version\":1}", model,
             i ? "canary" : "stable");
    json_decref(fl_h_admin_ok(&g_coord, "POST", "/admin/v1/channels", body));
  }
  cr_assert_eq(fl_h_enroll_devices(&g_coord, devs, 2), 0);
  run *r = FLCTL("fleet", model);
  cr_assert_eq(r->rc, 0, "%s", r->err);
  cr_assert_eq(row_words(r->out, "CHANNEL", words), 5, "%s", r->out);
  cr_assert_str_eq(words[1], "VERSION");
  cr_assert_str_eq(words[2], "RUNNING");
  /* Two devices on stable (the default channel) that run no version of this model yet. */
  cr_assert_eq(row_words(r->out, "stable", words), 5, "%s", r->out);
  cr_assert_str_eq(words[1], "1", "%s", r->out);
  cr_assert_str_eq(words[2], "none", "%s", r->out);
  cr_assert_str_eq(words[3], "2", "%s", r->out);
  cr_assert_str_eq(words[4], "100.0%", "%s", r->out);
  /* A channel without devices still shows its version. */
  cr_assert_eq(row_words(r->out, "canary", words), 5, "%s", r->out);
  cr_assert_str_eq(words[1], "1", "%s", r->out);
  cr_assert_str_eq(words[3], "0", "%s", r->out);
  for (int i = 0; i < 2; i++)
    fl_h_device_free(&devs[i]);
}

/* ----- admin tokens (issue 13 item 7) ------------------------------------------------------ */

Test(flctl, tokens_create_list_and_revoke) {
  run *r = FLCTL("--json", "tokens", "create", "--role", "viewer", "--name", "dash", "--expires-in",
                 "3600");
  cr_assert_eq(r->rc, 0, "tokens create: %d %s", r->rc, r->err);
  json_t *j = json_loads(r->out, 0, NULL);
  cr_assert_not_null(j, "%s", r->out);
  char secret[80], id[24];
  snprintf(secret, sizeof secret, "%s", json_string_value(json_object_get(j, "token")));
  snprintf(id, sizeof id, "%lld", (long long)json_integer_value(json_object_get(j, "token_id")));
  cr_assert_eq(strlen(secret), 64);
  cr_assert(json_is_string(json_object_get(j, "expires_at")));
  json_decref(j);
  /* The list shows the token without its secret. */
  r = FLCTL("tokens", "list");
  cr_assert_eq(r->rc, 0, "tokens list: %d %s", r->rc, r->err);
  char words[8][32];
  cr_assert_geq(row_words(r->out, id, words), 4, "%s", r->out);
  cr_assert_str_eq(words[1], "dash");
  cr_assert_str_eq(words[2], "viewer");
  cr_assert_str_eq(words[3], "active");
  cr_assert_null(strstr(r->out, secret), "%s", r->out);
  /* Bad options change nothing. */
  int64_t tokens0 = db_count("admin_tokens");
  const char *bad[][8] = {{"tokens", "create", "--role", "root"},
                          {"tokens", "create", "--role", "viewer", "--expires-in", "10s"},
                          {"tokens", "create", "--role", "viewer", "--expires-in", "0"},
                          {"tokens", "create", "viewer", "--role", "viewer"},
                          {"tokens", "create", "--name", "x"},
                          {"tokens", "revoke", "abc"},
                          {"tokens", "revoke"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    r = FLCTL(bad[i][0], bad[i][1], bad[i][2], bad[i][3], bad[i][4], bad[i][5]);
    cr_assert_eq(r->rc, 2, "case %zu: %d %s", i, r->rc, r->err);
  }
  cr_assert_eq(db_count("admin_tokens"), tokens0);
  /* Revoked: the coordinator refuses it with its reason. */
  r = FLCTL("tokens", "revoke", id);
  cr_assert_eq(r->rc, 0, "tokens revoke: %d %s", r->rc, r->err);
  r = flctl(NULL, "--url", g_coord.url, "--token", secret, "--cacert", g_cert, "models", "list",
            NULL);
  cr_assert_eq(r->rc, 1);
  cr_assert_not_null(strstr(r->err, "token_revoked"), "%s", r->err);
  r = FLCTL("tokens", "list");
  cr_assert_geq(row_words(r->out, id, words), 4, "%s", r->out);
  cr_assert_str_eq(words[3], "revoked");
}

Test(flctl, plans_create_takes_the_aggregator_fields) {
  char model[32];
  snprintf(model, sizeof model, "%llu", (unsigned long long)g_model);
  run *r = FLCTL("plans", "create", model, "--byzantine", "one");
  cr_expect_eq(r->rc, 2, "%s", r->err);
  cr_expect(strstr(r->err, "--byzantine") != NULL, "%s", r->err);
  r = FLCTL("plans", "create", model, "--aggregator", "krum", "--byzantine", "2", "--plan",
            "{\"participants\":6}");
  cr_expect_neq(r->rc, 0, "krum with f = 2 needs 7 per round: %s", r->out);
  cr_expect(strstr(r->err, "bad_plan") != NULL, "%s", r->err);
  cr_assert_eq(db_count("plans"), 0);
  r = FLCTL("plans", "create", model, "--plan", "{\"participants\":7}", "--aggregator",
            "multi_krum", "--byzantine", "1", "--krum-select", "3");
  cr_assert_eq(r->rc, 0, "%s", r->err);
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM plans WHERE config->>'aggregator' ="
                           " 'multi_krum' AND (config->>'byzantine')::int = 1"
                           " AND (config->>'krum_select')::int = 3"),
               1, "%s", r->out);
}

/* The cohort and evaluation flags of plans create; versions get with the evaluation table. */
Test(flctl, plans_create_takes_cohort_and_evaluation) {
  char model[32];
  snprintf(model, sizeof model, "%llu", (unsigned long long)g_model);
  run *r = FLCTL("plans", "create", model, "--eval-share", "0.1", "--eval-count", "5");
  cr_expect_eq(r->rc, 2, "%s", r->err);
  cr_expect(strstr(r->err, "exclude") != NULL, "%s", r->err);
  r = FLCTL("plans", "create", model, "--cohort-labels", "site");
  cr_expect_eq(r->rc, 2, "%s", r->err);
  r = FLCTL("plans", "create", model, "--eval-share", "2");
  cr_expect_neq(r->rc, 0);
  cr_expect(strstr(r->err, "bad_plan") != NULL, "%s", r->err);
  cr_assert_eq(db_count("plans"), 0);
  r = FLCTL("plans", "create", model, "--cohort-labels", "site=plant-3", "--cohort-conditions",
            "charging,unmetered", "--eval-count", "50", "--eval-by", "site");
  cr_assert_eq(r->rc, 0, "%s", r->err);
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM plans WHERE config->'cohort' ="
                           " '{\"labels\":{\"site\":\"plant-3\"},"
                           "\"conditions\":[\"charging\",\"unmetered\"]}'::jsonb"
                           " AND (config->'evaluation'->>'count')::int = 50"
                           " AND config->'evaluation'->>'by_label' = 'site'"),
               1, "%s", r->out);
  r = FLCTL("versions", "get", model, "1");
  cr_assert_eq(r->rc, 0, "%s", r->err);
  cr_expect(strstr(r->out, "federated evaluation") != NULL, "%s", r->out);
  cr_expect(strstr(r->out, "no reports") != NULL, "%s", r->out);
  r = FLCTL("versions", "get", model, "9");
  cr_expect_eq(r->rc, 1, "%s", r->out);
  cr_expect(strstr(r->err, "not_found") != NULL, "%s", r->err);
}
