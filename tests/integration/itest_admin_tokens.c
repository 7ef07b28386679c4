/*
 * Admin tokens and the coordinator's secrets (issue 13 items 7 and 11), against the real
 * coordinator and PostgreSQL: tokens with an expiry, listed without secrets, revoked, each
 * refusal a 401 with its reason; a bootstrap token applied once (a revoked or deleted one
 * stays so across restarts, a changed one replaces it); weak or unreadable bootstrap tokens
 * refused at start-up; a generated token written to a 0600 file and never to the log; private
 * keys readable by others refused; the TLS key's text gone from the process's memory; nonces
 * kept for a skew margin past the window; /metrics on its own listener; an admin POST
 * refused on its header, before its body is read. Run under pg_virtualenv.
 */
#define _GNU_SOURCE /* memmem */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fl/err.h"
#include "flsupport/admin.h"
#include "flsupport/coord.h"
#include "flsupport/http.h"
#include "flsupport/proc.h"
#include "harness.h"

/* A database URL no server answers: a start-up that reaches the database does not exit 2. */
#define NO_DB "--database-url=host=/nonexistent-socket-dir dbname=none connect_timeout=2"

static char g_db[64];
static fl_h_coord g_coord;
static char g_dir[256];

static void setup(void) {
  unsetenv("FL_ADMIN_TOKEN_FILE");
  g_db[0] = '\0';
  cr_assert_eq(fl_sup_mkdtemp(g_dir, sizeof g_dir, "fl_itest_tokens_"), FL_OK);
}

static void teardown(void) {
  fl_h_coord_cleanup(&g_coord);
  if (g_db[0])
    fl_h_db_drop(g_db);
  if (getenv("FL_ITEST_KEEP") == NULL)
    fl_sup_rmtree(g_dir);
}

TestSuite(tokens, .init = setup, .fini = teardown, .timeout = 300);

static void start(const char *const *extra) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
}

/* One admin request with `token`; the answer's JSON (NULL if none) and *status. */
static json_t *call(const char *token, const char *method, const char *path, const char *body,
                    long *status) {
  fl_sup_admin *a = NULL;
  json_t *j = NULL;
  cr_assert_eq(fl_sup_admin_new(&a, g_coord.url, token), FL_OK);
  cr_assert_eq(fl_sup_admin_request(a, method, path, body, status, &j), FL_OK, "%s %s: %s", method,
               path, fl_sup_admin_errmsg(a));
  fl_sup_admin_free(a);
  return j;
}

static const char *reason(json_t *j) {
  const char *r = json_string_value(json_object_get(j, "error"));
  return r ? r : "";
}

/* Creates a token and returns its secret (static storage) and id. */
static const char *create_token(const char *body, json_int_t *id) {
  static char secret[4][80];
  static int next;
  long st;
  json_t *j = call(g_coord.admin_token, "POST", "/admin/v1/tokens", body, &st);
  cr_assert_eq(st, 200, "POST /admin/v1/tokens %s: %ld %s", body, st, reason(j));
  const char *t = json_string_value(json_object_get(j, "token"));
  cr_assert(t != NULL && strlen(t) == 64);
  char *out = secret[next++ % 4];
  snprintf(out, sizeof secret[0], "%s", t);
  *id = json_integer_value(json_object_get(j, "token_id"));
  json_decref(j);
  return out;
}

/* The row of the token list whose token_id is id (borrowed from *list; NULL when absent). */
static json_t *listed(json_t **list, json_int_t id) {
  long st;
  json_decref(*list);
  *list = call(g_coord.admin_token, "GET", "/admin/v1/tokens", NULL, &st);
  cr_assert_eq(st, 200, "GET /admin/v1/tokens: %ld %s", st, reason(*list));
  size_t i;
  json_t *row;
  json_array_foreach(json_object_get(*list, "tokens"), i, row) {
    if (json_integer_value(json_object_get(row, "token_id")) == id)
      return row;
  }
  return NULL;
}

static long status_of(const char *token, const char *path, char why[64]) {
  long st;
  json_t *j = call(token, "GET", path, NULL, &st);
  snprintf(why, 64, "%s", reason(j));
  json_decref(j);
  return st;
}

/* ----- tokens through the API --------------------------------------------------------------- */

Test(tokens, create_list_expire_and_revoke) {
  char why[64];
  long st;
  json_t *list = NULL, *j;
  start(NULL);
  json_int_t ro_id, op_id, dflt_id;
  const char *ro = create_token("{\"role\":\"viewer\",\"name\":\"ro\",\"expires_in_s\":2}", &ro_id);
  const char *op = create_token("{\"role\":\"operator\",\"name\":\"ci\"}", &op_id);
  create_token("{\"role\":\"viewer\"}", &dflt_id);
  cr_assert_eq(status_of(ro, "/admin/v1/models", why), 200, "%s", why);
  cr_assert_eq(status_of(op, "/admin/v1/models", why), 200, "%s", why);

  /* Listed without secrets; expiry as asked, 90 days by default; last use recorded. */
  json_t *row = listed(&list, ro_id);
  cr_assert_not_null(row);
  cr_assert_str_eq(json_string_value(json_object_get(row, "name")), "ro");
  cr_assert_str_eq(json_string_value(json_object_get(row, "role")), "viewer");
  cr_assert_str_eq(json_string_value(json_object_get(row, "state")), "active");
  cr_assert(json_is_string(json_object_get(row, "expires_at")));
  cr_assert(json_is_string(json_object_get(row, "last_used_at")), "last use not recorded");
  cr_assert(json_is_string(json_object_get(row, "created_at")));
  cr_assert_null(json_object_get(row, "token"));
  char *text = json_dumps(list, 0);
  cr_assert_null(strstr(text, ro), "a secret in the list: %s", text);
  cr_assert_null(strstr(text, op), "a secret in the list: %s", text);
  free(text);
  int64_t days = fl_h_db_int(g_db,
                             "SELECT round(extract(epoch FROM expires_at - created_at)"
                             " / 86400) FROM admin_tokens WHERE name = '' AND role = "
                             "'viewer'");
  cr_assert_eq(days, 90, "default expiry %lld days", (long long)days);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM admin_tokens WHERE bootstrap"), 1);

  /* Only admins list or make tokens; bounds of expires_in_s. */
  cr_assert_eq(status_of(op, "/admin/v1/tokens", why), 403);
  const char *bad[] = {"{\"role\":\"viewer\",\"expires_in_s\":0}",
                       "{\"role\":\"viewer\",\"expires_in_s\":31536001}",
                       "{\"role\":\"viewer\",\"expires_in_s\":\"1\"}",
                       "{\"role\":\"root\"}",
                       "{\"role\":\"viewer\",\"name\":\"a\\nb\"}",
                       NULL};
  for (int i = 0; bad[i]; i++) {
    j = call(g_coord.admin_token, "POST", "/admin/v1/tokens", bad[i], &st);
    cr_assert_eq(st, 400, "%s: %ld", bad[i], st);
    json_decref(j);
  }

  /* Revoked: 401 token_revoked at once, audited; the secret is in no audit row. */
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/tokens/%lld/revoke", (long long)op_id);
  j = call(g_coord.admin_token, "POST", path, NULL, &st);
  cr_assert_eq(st, 200, "%ld %s", st, reason(j));
  json_decref(j);
  cr_assert_eq(status_of(op, "/admin/v1/models", why), 401);
  cr_assert_str_eq(why, "token_revoked");
  cr_assert_str_eq(json_string_value(json_object_get(listed(&list, op_id), "state")), "revoked");
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM audit_log WHERE action = 'token.revoke'"),
               1);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM audit_log WHERE action = 'token.create'"),
               3);
  char sql[256];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%%%.16s%%'",
           ro);
  cr_assert_eq(fl_h_db_int(g_db, sql), 0, "a secret in the audit log");
  j = call(g_coord.admin_token, "POST", "/admin/v1/tokens/999999/revoke", NULL, &st);
  cr_assert_eq(st, 404);
  json_decref(j);

  /* Expired: 401 token_expired. */
  fl_sup_sleep_ms(2500);
  cr_assert_eq(status_of(ro, "/admin/v1/models", why), 401);
  cr_assert_str_eq(why, "token_expired");
  cr_assert_str_eq(json_string_value(json_object_get(listed(&list, ro_id), "state")), "expired");

  /* The only usable admin token is not revoked. */
  json_int_t boot = fl_h_db_int(g_db, "SELECT token_id FROM admin_tokens WHERE bootstrap");
  snprintf(path, sizeof path, "/admin/v1/tokens/%lld/revoke", (long long)boot);
  j = call(g_coord.admin_token, "POST", path, NULL, &st);
  cr_assert_eq(st, 409, "%ld %s", st, reason(j));
  cr_assert_str_eq(reason(j), "last_admin_token");
  json_decref(j);
  cr_assert_eq(status_of(g_coord.admin_token, "/admin/v1/models", why), 200);
  json_decref(list);
}

/* ----- bootstrap --------------------------------------------------------------------------- */

Test(tokens, bootstrap_token_is_applied_once_and_replaced_when_changed) {
  char why[64], path[64];
  long st;
  start(NULL);
  char first[65];
  snprintf(first, sizeof first, "%s", g_coord.admin_token);
  json_int_t admin2_id;
  const char *admin2 = create_token("{\"role\":\"admin\",\"name\":\"ops\"}", &admin2_id);
  json_int_t boot = fl_h_db_int(g_db, "SELECT token_id FROM admin_tokens WHERE bootstrap");
  snprintf(path, sizeof path, "/admin/v1/tokens/%lld/revoke", (long long)boot);
  json_t *j = call(admin2, "POST", path, NULL, &st);
  cr_assert_eq(st, 200, "%ld %s", st, reason(j));
  json_decref(j);

  /* The same FL_ADMIN_TOKEN again: the revocation holds. */
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);
  cr_assert_eq(fl_h_coord_restart(&g_coord), 0);
  cr_assert_eq(status_of(first, "/admin/v1/models", why), 401);
  cr_assert_str_eq(why, "token_revoked");
  /* Deleted rather than revoked: not inserted again either. */
  cr_assert_eq(fl_h_db_int(g_db,
                           "WITH d AS (DELETE FROM admin_tokens WHERE bootstrap"
                           " RETURNING 1) SELECT count(*) FROM d"),
               1);
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);
  cr_assert_eq(fl_h_coord_restart(&g_coord), 0);
  cr_assert_eq(status_of(first, "/admin/v1/models", why), 401);
  cr_assert_str_eq(why, "unauthorized");
  cr_assert_eq(status_of(admin2, "/admin/v1/models", why), 200);

  /* A changed FL_ADMIN_TOKEN is a rotation: the new one is stored, once. */
  snprintf(g_coord.admin_token, sizeof g_coord.admin_token, "%s",
           "rotated-bootstrap-token-5f1c9e27ab3d40d8b6a1");
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);
  cr_assert_eq(fl_h_coord_restart(&g_coord), 0);
  cr_assert_eq(status_of(g_coord.admin_token, "/admin/v1/tokens", why), 200, "%s", why);
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);
  cr_assert_eq(fl_h_coord_restart(&g_coord), 0);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM admin_tokens WHERE bootstrap"), 1);
  cr_assert_eq(status_of(first, "/admin/v1/models", why), 401);
  /* Rotated again: the token it replaces is revoked. */
  char second[65];
  snprintf(second, sizeof second, "%s", g_coord.admin_token);
  snprintf(g_coord.admin_token, sizeof g_coord.admin_token, "%s",
           "third-bootstrap-token-0c7e4b19f25a4d83a9e6");
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);
  cr_assert_eq(fl_h_coord_restart(&g_coord), 0);
  cr_assert_eq(status_of(g_coord.admin_token, "/admin/v1/models", why), 200, "%s", why);
  cr_assert_eq(status_of(second, "/admin/v1/models", why), 401);
  cr_assert_str_eq(why, "token_revoked");
  cr_assert_eq(fl_h_db_int(g_db,
                           "SELECT count(*) FROM audit_log"
                           " WHERE action = 'token.bootstrap_rotate'"),
               2);
}

/* Starts the coordinator binary with args and env and waits up to 20 s for its exit; the exit
 * status (128 + signal when it had to be killed) and its output in log. */
static int run_refused(const char *const *args, const char *const *env, char *log, size_t cap) {
  char log_path[300], *argv[16];
  int n = 0;
  snprintf(log_path, sizeof log_path, "%s/refused.log", g_dir);
  unlink(log_path);
  argv[n++] = FL_COORDINATOR_BIN;
  argv[n++] = "--listen=127.0.0.1:0";
  argv[n++] = NO_DB;
  for (int i = 0; args[i] && n < 15; i++)
    argv[n++] = (char *)args[i];
  argv[n] = NULL;
  fl_sup_spawn_opts so = {.env = (char *const *)env, .log_path = log_path};
  pid_t pid;
  cr_assert_eq(fl_sup_spawn(&pid, argv, &so), FL_OK);
  int st = fl_sup_terminate(pid, 0, 20000);
  FILE *f = fopen(log_path, "r");
  size_t got = f ? fread(log, 1, cap - 1, f) : 0;
  log[got] = '\0';
  if (f)
    fclose(f);
  return st;
}

static void write_file(const char *path, const char *text, mode_t mode) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
  cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
  cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  cr_assert_eq(chmod(path, mode), 0);
}

static char *in_dir(const char *name) {
  static char bufs[8][320];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", g_dir, name);
  return b;
}

Test(tokens, weak_or_unreadable_bootstrap_tokens_are_refused_at_start) {
  static char log[1 << 16];
  char key[400], file_env[400];
  snprintf(key, sizeof key, "--signing-key=%s", in_dir("signing.pem"));
  const char *args[] = {key, NULL};
  struct {
    const char *env[3];
    const char *want[3];
  } cases[] = {
      {{"FL_ADMIN_TOKEN=changeme", NULL}, {"FL_ADMIN_TOKEN", "8 characters", NULL}},
      {{"FL_ADMIN_TOKEN=passwordpasswordpasswordpassword", NULL},
       {"FL_ADMIN_TOKEN", "too predictable", NULL}},
      {{"FL_ADMIN_TOKEN=", "FL_ADMIN_TOKEN_FILE=/nonexistent/admin-token"},
       {"FL_ADMIN_TOKEN_FILE", "/nonexistent/admin-token", "No such file"}},
      {{"FL_ADMIN_TOKEN=", file_env}, {"FL_ADMIN_TOKEN_FILE", "first line is empty", NULL}},
  };
  write_file(in_dir("empty-token"), "\n", 0600);
  snprintf(file_env, sizeof file_env, "FL_ADMIN_TOKEN_FILE=%s", in_dir("empty-token"));
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int st = run_refused(args, cases[i].env, log, sizeof log);
    cr_assert_eq(st, 2, "case %zu: exit %d:\n%s", i, st, log);
    const char *line = strstr(log, "event=startup_failed step=config");
    cr_assert_not_null(line, "case %zu:\n%s", i, log);
    for (int k = 0; k < 3 && cases[i].want[k]; k++)
      cr_assert_not_null(strstr(line, cases[i].want[k]), "case %zu: no '%s' in %s", i,
                         cases[i].want[k], line);
    cr_assert_null(strstr(log, "changeme"), "the token itself in the log:\n%s", log);
    cr_assert_null(strstr(log, "passwordpassword"), "the token itself in the log:\n%s", log);
  }
}

Test(tokens, generated_token_goes_to_a_private_file_not_the_log) {
  char db_url[128], out[400], log[1 << 14];
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  snprintf(db_url, sizeof db_url, "dbname=%s", g_db);
  char *env[] = {"FL_ADMIN_TOKEN=", NULL};
  fl_sup_coord_opts o = {
      .bin = FL_COORDINATOR_BIN, .database_url = db_url, .dir = g_dir, .env = env};
  fl_sup_coord c;
  /* A token file that cannot be written: the start fails, naming it, and nothing is stored. */
  char dbflag[160], key[400];
  snprintf(dbflag, sizeof dbflag, "--database-url=%s", db_url);
  snprintf(key, sizeof key, "--signing-key=%s", in_dir("signing.pem"));
  const char *bargs[] = {dbflag, key, "--admin-token-out=/nonexistent/dir/admin-token", NULL};
  const char *benv[] = {"FL_ADMIN_TOKEN=", NULL};
  int rc = run_refused(bargs, benv, log, sizeof log);
  cr_assert_eq(rc, 1, "exit %d:\n%s", rc, log);
  cr_assert_not_null(strstr(log, "event=bootstrap_token_unwritable"), "%s", log);
  cr_assert_not_null(strstr(log, "/nonexistent/dir/admin-token"), "%s", log);
  cr_assert_not_null(strstr(log, "step=admin_token"), "%s", log);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM admin_tokens"), 0);
  for (int run = 0; run < 2; run++) {
    cr_assert_eq(fl_sup_coord_start(&c, &o), FL_OK);
    cr_assert_eq(fl_sup_coord_stop(&c, SIGTERM, 60000), 0);
  }
  /* Beside the signing key, 0600, one line of 64 hex digits; made once. */
  snprintf(out, sizeof out, "%s/admin-token", g_dir);
  struct stat st;
  cr_assert_eq(stat(out, &st), 0, "no %s", out);
  cr_assert_eq(st.st_mode & 0777, 0600, "mode %o", st.st_mode & 0777);
  char tok[128] = {0};
  FILE *f = fopen(out, "r");
  cr_assert(f && fgets(tok, sizeof tok, f));
  fclose(f);
  tok[strcspn(tok, "\n")] = '\0';
  cr_assert_eq(strlen(tok), 64);
  cr_assert_eq(fl_h_db_int(g_db, "SELECT count(*) FROM admin_tokens"), 1);
  /* Never in the output (stdout and stderr: the container's log); the path is. */
  f = fopen(c.log_path, "r");
  size_t n = f ? fread(log, 1, sizeof log - 1, f) : 0;
  log[n] = '\0';
  if (f)
    fclose(f);
  cr_assert_null(strstr(log, tok), "the generated token is in the log:\n%s", log);
  cr_assert_not_null(strstr(log, "event=bootstrap_token_created"), "%s", log);
  cr_assert_not_null(strstr(log, out), "the file is not named in the log:\n%s", log);
  /* And it works. */
  cr_assert_eq(fl_sup_coord_start(&c, &o), FL_OK);
  snprintf(g_coord.url, sizeof g_coord.url, "%s", c.url);
  long code;
  json_t *j = call(tok, "GET", "/admin/v1/tokens", NULL, &code);
  cr_assert_eq(code, 200);
  json_decref(j);
  fl_sup_coord_stop(&c, SIGTERM, 60000);
}

/* ----- key files (item 11) ------------------------------------------------------------------- */

Test(tokens, private_keys_readable_by_others_are_refused) {
  static char log[1 << 16];
  char key[400], tcert[400], tkey[400];
  /* A signing key the coordinator made, then opened to the group. */
  const char *sk = in_dir("signing.pem");
  fl_key *k = NULL;
  cr_assert_eq(fl__key_generate(&k), FL_OK);
  cr_assert_eq(fl__key_save_pem(k, sk), FL_OK);
  fl__key_free(k);
  cr_assert_eq(chmod(sk, 0640), 0);
  snprintf(key, sizeof key, "--signing-key=%s", sk);
  const char *args[] = {key, NULL};
  const char *env[] = {"FL_ADMIN_TOKEN=itest-admin-token-0123456789abcdef", NULL};
  int rc = run_refused(args, env, log, sizeof log);
  cr_assert_eq(rc, 2, "exit %d:\n%s", rc, log);
  cr_assert_not_null(strstr(log, "--signing-key"), "%s", log);
  cr_assert_not_null(strstr(log, "group or others (mode 0640)"), "%s", log);
  /* A TLS key readable by everyone: the same refusal, whatever the certificate. */
  cr_assert_eq(chmod(sk, 0600), 0);
  write_file(in_dir("tls.crt"), "-----BEGIN CERTIFICATE-----\n", 0644);
  write_file(in_dir("tls.key"), "-----BEGIN PRIVATE KEY-----\n", 0644);
  snprintf(tcert, sizeof tcert, "--tls-cert=%s", in_dir("tls.crt"));
  snprintf(tkey, sizeof tkey, "--tls-key=%s", in_dir("tls.key"));
  const char *targs[] = {key, tcert, tkey, NULL};
  rc = run_refused(targs, env, log, sizeof log);
  cr_assert_eq(rc, 2, "exit %d:\n%s", rc, log);
  cr_assert_not_null(strstr(log, "--tls-key"), "%s", log);
  cr_assert_not_null(strstr(log, "mode 0644"), "%s", log);
}

/* Whether needle occurs in the coordinator's writable memory (every rw mapping below 1 GiB,
 * read through /proc/PID/mem; the sanitizer's shadow mappings are far larger and skipped). */
static bool in_memory(pid_t pid, const char *needle) {
  char path[64], line[512];
  size_t nl = strlen(needle);
  snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
  FILE *maps = fopen(path, "r");
  snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
  int fd = open(path, O_RDONLY);
  cr_assert(maps && fd >= 0, "%s: %s", path, strerror(errno));
  size_t cap = 1 << 20;
  char *buf = malloc(cap + nl);
  bool found = false;
  while (!found && fgets(line, sizeof line, maps)) {
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[0] != 'r' || perms[1] != 'w' ||
        hi - lo > (1ul << 30))
      continue;
    for (unsigned long at = lo; !found && at < hi; at += cap) {
      size_t want = hi - at < cap + nl ? hi - at : cap + nl;
      ssize_t got = pread(fd, buf, want, (off_t)at);
      if (got <= 0)
        break;
      found = memmem(buf, (size_t)got, needle, nl) != NULL;
    }
  }
  free(buf);
  close(fd);
  fclose(maps);
  return found;
}

/* The second line of a PEM file: 64 base64 characters of the key itself. */
static void pem_line(const char *file, char out[80]) {
  char line[128];
  FILE *f = fopen(file, "r");
  cr_assert_not_null(f, "%s", file);
  cr_assert(fgets(line, sizeof line, f) && fgets(line, sizeof line, f));
  fclose(f);
  line[strcspn(line, "\n")] = '\0';
  snprintf(out, 80, "%.79s", line);
  cr_assert_geq(strlen(out), 40);
}

Test(tokens, tls_key_text_does_not_stay_in_memory) {
  char key_line[80], cert_line[80], file[400];
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start_tls(&g_coord, g_db), 0, "coordinator start (TLS)");
  snprintf(file, sizeof file, "%s/tls-key.pem", g_coord.dir);
  pem_line(file, key_line);
  snprintf(file, sizeof file, "%s/tls-cert.pem", g_coord.dir);
  pem_line(file, cert_line);
  /* The scan sees what is there: the certificate's text stays (MHD serves it). */
  cr_assert(in_memory(g_coord.pid, cert_line), "the scan does not find the certificate");
  cr_assert(!in_memory(g_coord.pid, key_line), "the TLS key's PEM text is in memory");
}

/* ----- nonces (item 11) ---------------------------------------------------------------------- */

Test(tokens, nonce_is_kept_for_the_skew_margin_past_the_window) {
  const char *extra[] = {"--timestamp-window=30000", NULL};
  start(extra);
  fl_h_device d[2];
  cr_assert_eq(fl_h_enroll_devices(&g_coord, d, 2), 0);
  uint8_t nonce[16];
  memset(nonce, 0x5a, sizeof nonce);
  fl_h_forge f = {.timestamp_ms = fl_sup_wall_ms(), .nonce = nonce, .nonce_len = sizeof nonce};
  fl_h_resp r = {0};
  /* Authenticated, then "no such model": the nonce is recorded. */
  cr_assert_eq(fl_h_device_get(&g_coord, &d[0], "/v1/models/999/versions/1", &f, &r), 0);
  cr_assert_eq(r.status, 404, "%ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  fl_h_resp ctl = {0};
  cr_assert_eq(fl_h_device_get(&g_coord, &d[1], "/v1/models/999/versions/1", NULL, &ctl), 0);
  fl_h_resp_free(&ctl);
  /* As the database's clock has it, device 0's nonce was seen 65 s ago: past 2 x window, so a
   * replica whose clock lags the database's by 5 s or more still takes its timestamp. Device
   * 1's was seen an hour ago: the control that pruning happened. */
  char sql[256], ctl_sql[96];
  snprintf(sql, sizeof sql,
           "WITH u AS (UPDATE nonces SET seen_at = seen_at - CASE WHEN device_id = %llu THEN"
           " interval '65 s' ELSE interval '1 h' END RETURNING 1) SELECT count(*) FROM u",
           (unsigned long long)d[0].id);
  cr_assert_geq(fl_h_db_int(g_db, sql), 2);
  snprintf(ctl_sql, sizeof ctl_sql, "SELECT count(*) FROM nonces WHERE device_id = %llu",
           (unsigned long long)d[1].id);
  /* Pruning runs at the first tick after a start. */
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);
  cr_assert_eq(fl_h_coord_restart(&g_coord), 0);
  for (int i = 0; i < 100 && fl_h_db_int(g_db, ctl_sql) != 0; i++)
    fl_sup_sleep_ms(50);
  cr_assert_eq(fl_h_db_int(g_db, ctl_sql), 0, "no pruning happened");
  cr_assert_lt(fl_sup_wall_ms() - f.timestamp_ms, 25000, "too slow for the window");
  cr_assert_eq(fl_h_device_get(&g_coord, &d[0], "/v1/models/999/versions/1", &f, &r), 0);
  cr_assert_eq(r.status, 401, "replay answered %ld %s", r.status, fl_h_error_reason(&r));
  cr_assert_str_eq(fl_h_error_reason(&r), "replayed_nonce");
  fl_h_resp_free(&r);
  fl_h_device_free(&d[0]);
  fl_h_device_free(&d[1]);
}

/* ----- the metrics listener (item 11) ------------------------------------------------------ */

Test(tokens, metrics_on_their_own_listener) {
  char flag[64], url[96];
  int port = fl_sup_free_port();
  snprintf(flag, sizeof flag, "--metrics-listen=127.0.0.1:%d", port);
  const char *extra[] = {flag, NULL};
  start(extra);
  fl_sup_admin *m = NULL, *main_port = NULL;
  snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
  cr_assert_eq(fl_sup_admin_new(&m, url, "-"), FL_OK);
  cr_assert_eq(fl_sup_admin_new(&main_port, g_coord.url, "-"), FL_OK);
  const char *text = NULL;
  cr_assert_eq(fl_sup_admin_get_text(m, "/metrics", &text), FL_OK, "%s", fl_sup_admin_errmsg(m));
  cr_assert_not_null(strstr(text, "fl_http_requests_total"));
  cr_assert_eq(fl_sup_admin_probe(m, "/healthz"), FL_OK);
  cr_assert_eq(fl_sup_admin_probe(m, "/readyz"), FL_OK);
  /* Nothing else there; and the main port keeps its probes but not /metrics. */
  long st;
  json_t *j = NULL;
  cr_assert_eq(fl_sup_admin_request(m, "GET", "/admin/v1/models", NULL, &st, &j), FL_OK);
  cr_assert_eq(st, 404);
  json_decref(j);
  cr_assert_eq(fl_sup_admin_request(main_port, "GET", "/metrics", NULL, &st, &j), FL_OK);
  cr_assert_eq(st, 404);
  json_decref(j);
  cr_assert_eq(fl_sup_admin_probe(main_port, "/healthz"), FL_OK);
  fl_sup_admin_free(m);
  fl_sup_admin_free(main_port);
}

/* ----- admin bodies after authentication --------------------------------------------------- */

/* Sends the header of a POST to path declaring `declared` body bytes (0: chunked) with the
 * extra header lines `auth` ("" for none), then `body` (NULL: nothing) after `pause_ms`;
 * returns the status of what the coordinator answers within 5 s (0: nothing), its text in buf
 * and the milliseconds from the header to the answer's first byte in *ms. */
static int post_raw(const char *path, const char *auth, size_t declared, const char *body,
                    int pause_ms, char *buf, size_t cap, double *ms) {
  char head[512];
  int st = 0, fd = fl_sup_tcp_connect(g_coord.port);
  cr_assert_geq(fd, 0);
  int m = declared ? snprintf(head, sizeof head,
                              "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\n\r\n",
                              path, auth, declared)
                   : snprintf(head, sizeof head,
                              "POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n",
                              path, auth);
  double t0 = fl_sup_mono_s();
  cr_assert_eq(send(fd, head, (size_t)m, MSG_NOSIGNAL), m);
  if (body != NULL) {
    usleep((useconds_t)pause_ms * 1000);
    cr_assert_eq(send(fd, body, strlen(body), MSG_NOSIGNAL), (ssize_t)strlen(body));
  }
  size_t n = fl_sup_tcp_read(fd, buf, cap, 5000);
  *ms = (fl_sup_mono_s() - t0) * 1e3;
  close(fd);
  if (n == 0 || sscanf(buf, "HTTP/1.%*d %d", &st) != 1)
    return 0;
  return st;
}

/* An admin POST was read up to --max-body (64 MiB) before its bearer token was looked at: any
 * client could make the coordinator buffer that much per connection without a token. The token
 * and its role are now checked on the header (auth/pipeline.c, fl__auth_before_body): each
 * request below declares a body just under the limit, sends none of it, and is answered at
 * once (before this change: nothing within 5 s, the coordinator waiting for the body). A valid
 * token's request is served as before, its body read after the check. */
Test(tokens, admin_post_is_refused_before_its_body) {
  start(NULL);
  json_int_t id;
  char auth[160], buf[4096];
  double ms;
  const char *viewer = create_token("{\"role\":\"viewer\"}", &id);
  size_t big = (64u << 20) - 1;
  struct {
    const char *auth;
    size_t declared;
    int status;
    const char *reason;
  } cases[] = {
      {"", big, 401, "\"unauthorized\""},
      {"Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n", big, 401, "\"unauthorized\""},
      {"Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n", 0, 401, "\"unauthorized\""},
      {NULL, big, 403, "\"forbidden\""}};
  snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", viewer);
  cases[3].auth = auth; /* a viewer may not create models */
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int st = post_raw("/admin/v1/models", cases[i].auth, cases[i].declared, NULL, 0, buf,
                      sizeof buf, &ms);
    cr_expect_eq(st, cases[i].status, "case %zu: %d after %.0f ms (%.80s)", i, st, ms, buf);
    cr_expect_not_null(strstr(buf, cases[i].reason), "case %zu: %.200s", i, buf);
  }
  /* With its token, the same POST is read and served; its body comes after the check. */
  char body[512];
  snprintf(body, sizeof body, "{\"name\":\"after-check\",\"spec\":%s}", FL_H_SMALL_SPEC);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", g_coord.admin_token);
  int st = post_raw("/admin/v1/models", auth, strlen(body), body, 300, buf, sizeof buf, &ms);
  cr_expect_eq(st, 200, "%.300s", buf);
  cr_expect_not_null(strstr(buf, "\"model_id\""), "%.300s", buf);
}
