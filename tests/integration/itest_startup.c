/*
 * fl-coordinator start-up, the real binary: what does not need the database (TLS files, the
 * listen address, key files) is refused before it is contacted, with a message that names the
 * file or value; an IPv6 listen address serves; log values with quotes (a libpq message) stay
 * one parseable logfmt line.
 *
 * Refusals run with a database URL no server answers (a socket directory that does not exist):
 * a coordinator that went to the database first would retry it for a minute, log
 * db_connect_failed and not exit within the test's limit.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define NO_DB "--database-url=host=/nonexistent-socket-dir dbname=none connect_timeout=2"

static char g_dir[64];

static void setup(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/fl_itest_startupXXXXXX");
  cr_assert_not_null(mkdtemp(g_dir));
}

static void teardown(void) {
  char cmd[128];
  if (getenv("FL_ITEST_KEEP") == NULL && g_dir[0] == '/') {
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    cr_expect_eq(system(cmd), 0);
  }
}

TestSuite(startup, .init = setup, .fini = teardown, .timeout = 120);

/* ----- running the coordinator --------------------------------------------------------------- */

typedef struct proc {
  pid_t pid;
  char log_path[128];
  char log[1 << 16];
  int status; /* exit status, or 128 + signal */
  double seconds;
} proc;

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Starts FL_COORDINATOR_BIN with args (NULL-terminated), its output in a log file; env is a
 * NULL-terminated list of "NAME=VALUE" (may be NULL). */
static void spawn(proc *p, const char *const *args, const char *const *env) {
  static int seq;
  const char *argv[24];
  int n = 0;
  memset(p, 0, sizeof *p);
  snprintf(p->log_path, sizeof p->log_path, "%s/coordinator-%d.log", g_dir, seq++);
  argv[n++] = FL_COORDINATOR_BIN;
  argv[n++] = "--listen=127.0.0.1:0"; /* a later --listen wins */
  for (int i = 0; args[i] && n < 23; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  fflush(NULL);
  p->seconds = mono();
  p->pid = fork();
  cr_assert(p->pid >= 0);
  if (p->pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (freopen(p->log_path, "w", stdout) == NULL || dup2(fileno(stdout), STDERR_FILENO) < 0)
      _exit(126);
    unsetenv("FL_ADMIN_TOKEN_FILE");
    setenv("FL_ADMIN_TOKEN", "itest-startup-admin-token-0123456789", 1);
    for (int i = 0; env && env[i]; i++)
      putenv((char *)env[i]);
    execv(FL_COORDINATOR_BIN, (char *const *)argv);
    _exit(127);
  }
}

static void read_log(proc *p) {
  FILE *f = fopen(p->log_path, "r");
  size_t n = f ? fread(p->log, 1, sizeof p->log - 1, f) : 0;
  p->log[n] = '\0';
  if (f)
    fclose(f);
}

/* Waits up to limit_s for the process to exit (then kills it); reads its log. */
static void finish(proc *p, double limit_s) {
  int st = 0;
  pid_t r = 0;
  double t0 = p->seconds;
  while ((r = waitpid(p->pid, &st, WNOHANG)) == 0 && mono() - t0 < limit_s) {
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  if (r == 0) {
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &st, 0);
  }
  p->seconds = mono() - t0;
  p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  read_log(p);
}

/* Runs a start-up that must be refused before the database: exit 2 within 15 s, a
 * startup_failed line that contains every string of `want`, no database contact. */
static void refused(const char *const *args, const char *const *env, const char *const *want) {
  proc p;
  spawn(&p, args, env);
  finish(&p, 15);
  cr_assert_eq(p.status, 2, "exit %d after %.1f s:\n%s", p.status, p.seconds, p.log);
  cr_assert_null(strstr(p.log, "db_connect_failed"), "database contacted first:\n%s", p.log);
  const char *line = strstr(p.log, "event=startup_failed");
  cr_assert_not_null(line, "no startup_failed line:\n%s", p.log);
  for (int i = 0; want[i]; i++)
    cr_assert(strstr(line, want[i]) != NULL, "'%s' not in: %s", want[i], line);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f, "%s", path);
  fchmod(fileno(f), 0600); /* key files must be private (a refusal of its own) */
  fputs(text, f);
  fclose(f);
}

/* A self-signed P-256 certificate and its key, written as PEM. */
static void make_cert(const char *cert_path, const char *key_path) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  cr_assert(k && x);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, k);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             (const unsigned char *)"localhost", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  cr_assert(X509_sign(x, k, EVP_sha256()));
  FILE *fc = fopen(cert_path, "w"), *fk = fopen(key_path, "w");
  cr_assert(fc && fk);
  cr_assert(PEM_write_X509(fc, x) && PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL));
  cr_assert_eq(fchmod(fileno(fk), 0600), 0);
  fclose(fc);
  fclose(fk);
  X509_free(x);
  EVP_PKEY_free(k);
}

static char *path_in_dir(const char *name) {
  static char bufs[8][160];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", g_dir, name);
  return b;
}

static char *flag_arg(const char *flag, const char *value) {
  static char bufs[8][256];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "--%s=%s", flag, value);
  return b;
}

/* ----- TLS files ----------------------------------------------------------------------------- */

Test(startup, missing_tls_certificate) {
  const char *key = flag_arg("signing-key", path_in_dir("signing.pem"));
  const char *args[] = {NO_DB, key, "--tls-cert=/nonexistent/tls.crt",
                        "--tls-key=/nonexistent/tls.key", NULL};
  const char *want[] = {"step=config", "--tls-cert /nonexistent/tls.crt",
                        "No such file or directory", NULL};
  refused(args, NULL, want);
}

Test(startup, tls_files_that_are_not_pem_or_do_not_match) {
  char *cert = path_in_dir("tls.crt"), *tkey = path_in_dir("tls.key");
  char *other_cert = path_in_dir("other.crt"), *other_key = path_in_dir("other.key");
  char *junk = path_in_dir("junk.pem");
  make_cert(cert, tkey);
  make_cert(other_cert, other_key);
  write_file(junk, "this is not PEM\n");
  const char *key = flag_arg("signing-key", path_in_dir("signing.pem"));
  {
    const char *args[] = {NO_DB, key, flag_arg("tls-cert", junk), flag_arg("tls-key", tkey), NULL};
    const char *want[] = {"--tls-cert", junk, "not a PEM certificate", NULL};
    refused(args, NULL, want);
  }
  {
    const char *args[] = {NO_DB, key, flag_arg("tls-cert", cert), flag_arg("tls-key", junk), NULL};
    const char *want[] = {"--tls-key", junk, "private key", NULL};
    refused(args, NULL, want);
  }
  {
    const char *args[] = {NO_DB, key, flag_arg("tls-cert", cert), flag_arg("tls-key", other_key),
                          NULL};
    const char *want[] = {"--tls-key", other_key, "not the key of the certificate", NULL};
    refused(args, NULL, want);
  }
}

/* ----- listen addresses ---------------------------------------------------------------------- */

Test(startup, listen_addresses_that_cannot_be_used) {
  const char *key = flag_arg("signing-key", path_in_dir("signing.pem"));
  {
    /* TEST-NET-1: an address of no interface here. */
    const char *args[] = {NO_DB, key, "--listen=192.0.2.1:8080", NULL};
    const char *want[] = {"--listen 192.0.2.1:8080", "cannot bind", NULL};
    refused(args, NULL, want);
  }
  {
    const char *args[] = {NO_DB, key, "--listen=no-such-host.invalid:8080", NULL};
    const char *want[] = {"--listen no-such-host.invalid:8080", "host no-such-host.invalid", NULL};
    refused(args, NULL, want);
  }
  {
    /* A port someone else listens on. */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(fd, 1) == 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char listen_at[96], text[64];
    snprintf(text, sizeof text, "127.0.0.1:%d", ntohs(sa.sin_port));
    snprintf(listen_at, sizeof listen_at, "--listen=%s", text);
    const char *args[] = {NO_DB, key, listen_at, NULL};
    const char *want[] = {text, "Address already in use", NULL};
    refused(args, NULL, want);
    close(fd);
  }
  /* Malformed values are usage errors that quote the value. */
  static const char *const bad[] = {"::1:8080", "[::1]8080", "[::1]", "localhost", "h:99999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    proc p;
    const char *args[] = {NO_DB, key, flag_arg("listen", bad[i]), NULL};
    spawn(&p, args, NULL);
    finish(&p, 15);
    cr_assert_eq(p.status, 2, "%s: exit %d", bad[i], p.status);
    char quoted[64];
    snprintf(quoted, sizeof quoted, "bad value '%s'", bad[i]);
    cr_assert(strstr(p.log, quoted) && strstr(p.log, "--listen"), "%s", p.log);
  }
}

/* ----- key files ----------------------------------------------------------------------------- */

Test(startup, unreadable_key_files) {
  char *dir_as_key = path_in_dir("keydir");
  cr_assert_eq(mkdir(dir_as_key, 0700), 0);
  {
    const char *args[] = {NO_DB, flag_arg("signing-key", dir_as_key), NULL};
    const char *want[] = {"--signing-key", dir_as_key, "Is a directory", NULL};
    refused(args, NULL, want);
  }
  {
    const char *args[] = {NO_DB, "--signing-key=/nonexistent/dir/signing.pem", NULL};
    const char *want[] = {"--signing-key /nonexistent/dir/signing.pem", "cannot be created", NULL};
    refused(args, NULL, want);
  }
  if (geteuid() != 0) {
    /* Root reads any file: this case only exists for other users. */
    char *locked = path_in_dir("locked.pem");
    write_file(locked, "x\n");
    chmod(locked, 0);
    const char *args[] = {NO_DB, flag_arg("signing-key", locked), NULL};
    const char *want[] = {"--signing-key", locked, "Permission denied", NULL};
    refused(args, NULL, want);
  }
  {
    /* An admin token file that exists but cannot be read (FL_ADMIN_TOKEN unset). */
    char env[256];
    snprintf(env, sizeof env, "FL_ADMIN_TOKEN_FILE=%s", dir_as_key);
    const char *envs[] = {"FL_ADMIN_TOKEN=", env, NULL};
    const char *args[] = {NO_DB, flag_arg("signing-key", path_in_dir("signing.pem")), NULL};
    const char *want[] = {"FL_ADMIN_TOKEN_FILE", dir_as_key, "Is a directory", NULL};
    refused(args, envs, want);
  }
  {
    /* A signing key that is no PEM: refused while loading it, still before the database. */
    char *junk = path_in_dir("junk-key.pem");
    write_file(junk, "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n");
    proc p;
    const char *args[] = {NO_DB, flag_arg("signing-key", junk), NULL};
    spawn(&p, args, NULL);
    finish(&p, 15);
    cr_assert_eq(p.status, 1, "exit %d:\n%s", p.status, p.log);
    cr_assert_null(strstr(p.log, "db_connect_failed"), "%s", p.log);
    cr_assert(strstr(p.log, "event=signing_key_failed") && strstr(p.log, junk), "%s", p.log);
    cr_assert(strstr(p.log, "event=startup_failed step=signing_key"), "%s", p.log);
  }
}

/* ----- serving on IPv6; logfmt with quotes ---------------------------------------------------- */

/* The body's first bytes into a static buffer (http_body). */
static char g_body[1 << 16];
static size_t g_body_len;

static size_t keep(char *p, size_t size, size_t n, void *ctx) {
  size_t m = size * n, room = sizeof g_body - 1 - g_body_len;
  (void)ctx;
  memcpy(g_body + g_body_len, p, m < room ? m : room);
  g_body_len += m < room ? m : room;
  g_body[g_body_len] = '\0';
  return m;
}

static long http_get(const char *url) {
  CURL *h = curl_easy_init();
  long status = -1;
  g_body_len = 0;
  g_body[0] = '\0';
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 5L);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, keep);
  if (curl_easy_perform(h) == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(h);
  return status;
}

Test(startup, ipv6_listen_address_serves) {
  char db[64], url_db[128], listen_at[64], url[96];
  struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  socklen_t len = sizeof sa;
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "no IPv6 loopback");
  cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  int port = ntohs(sa.sin6_port);
  close(fd);
  cr_assert_eq(fl_h_db_create(db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  snprintf(url_db, sizeof url_db, "--database-url=dbname=%s", db);
  snprintf(listen_at, sizeof listen_at, "--listen=[::1]:%d", port);
  const char *args[] = {url_db, listen_at, flag_arg("signing-key", path_in_dir("signing.pem")),
                        NULL};
  proc p;
  spawn(&p, args, NULL);
  snprintf(url, sizeof url, "http://[::1]:%d/readyz", port);
  long st = -1;
  for (int i = 0; i < 300 && st != 200 && waitpid(p.pid, NULL, WNOHANG) == 0; i++) {
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
    st = http_get(url);
  }
  snprintf(url, sizeof url, "http://[::1]:%d/healthz", port);
  long health = http_get(url);
  snprintf(url, sizeof url, "http://[::1]:%d/metrics", port);
  long metrics = http_get(url);
  kill(p.pid, SIGTERM);
  finish(&p, 30);
  fl_h_db_drop(db);
  cr_assert_eq(st, 200, "/readyz on [::1]:%d -> %ld:\n%s", port, st, p.log);
  cr_assert_eq(health, 200, "/healthz -> %ld", health);
  /* The HELP text says what the counter counts (it said "Device requests"). */
  cr_assert_eq(metrics, 200);
  cr_assert(strstr(g_body, "# HELP fl_updates_refused_total Update uploads (POST /v1/updates)"),
            "%s", g_body);
  cr_assert_eq(p.status, 0, "graceful stop: exit %d\n%s", p.status, p.log);
  cr_assert(strstr(p.log, "event=listening host=::1"), "%s", p.log);
  cr_assert(strstr(p.log, "replica=[::1]:"), "%s", p.log);
}

/* The value of `key` in a logfmt line, unescaped (\" \\ \n \r \t); -1 when absent. */
static int logfmt_value(const char *line, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof pat, " %s=", key);
  const char *p = strstr(line, pat);
  size_t n = 0;
  if (p == NULL)
    return -1;
  p += strlen(pat);
  if (*p != '"') {
    while (*p && *p != ' ' && *p != '\n' && n + 1 < cap)
      out[n++] = *p++;
    out[n] = '\0';
    return 0;
  }
  for (p++; *p && *p != '"' && *p != '\n' && n + 1 < cap; p++) {
    if (*p == '\\') {
      p++;
      out[n++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p == 'r' ? '\r' : *p;
    } else {
      out[n++] = *p;
    }
  }
  out[n] = '\0';
  return *p == '"' ? 0 : -1;
}

Test(startup, libpq_message_with_quotes_is_one_logfmt_value) {
  /* The server exists, the database does not: libpq says database "..." does not exist. */
  const char *args[] = {"--database-url=dbname=fl_itest_no_such_db",
                        flag_arg("signing-key", path_in_dir("signing.pem")), NULL};
  proc p;
  spawn(&p, args, NULL);
  const char *line = NULL;
  for (int i = 0; i < 150 && line == NULL; i++) {
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL);
    read_log(&p);
    line = strstr(p.log, "event=db_connect_failed");
  }
  kill(p.pid, SIGKILL);
  finish(&p, 10);
  line = strstr(p.log, "event=db_connect_failed");
  cr_assert_not_null(line, "%s", p.log);
  char value[1024];
  const char *eol = strchr(line, '\n');
  cr_assert_not_null(eol);
  cr_assert_eq(logfmt_value(line, "error", value, sizeof value), 0, "%s", line);
  cr_assert(strstr(value, "database \"fl_itest_no_such_db\" does not exist") != NULL,
            "error value '%s' from %.*s", value, (int)(eol - line), line);
  /* Nothing of the message leaks out of its value: the line ends with it. */
  const char *close = eol - 1;
  cr_assert_eq(*close, '"', "%.*s", (int)(eol - line), line);
}

/* ----- the listening socket and TLS ---------------------------------------------------------- */

/* A second coordinator on a port a coordinator already serves is a start-up error, also when
 * only the newcomer asks for --reuse-port=1 (both must opt in to share a port). Before, every
 * coordinator bound with SO_REUSEPORT and the kernel split connections between the two. */
Test(startup, port_in_use_by_a_coordinator_is_refused) {
  char db[64];
  cr_assert_eq(fl_h_db_create(db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  fl_h_coord c;
  cr_assert_eq(fl_h_coord_start(&c, db, NULL, NULL), 0);
  char listen_at[64], text[32];
  snprintf(text, sizeof text, "127.0.0.1:%d", c.port);
  snprintf(listen_at, sizeof listen_at, "--listen=%s", text);
  const char *key = flag_arg("signing-key", path_in_dir("signing.pem"));
  const char *want[] = {text, "Address already in use", NULL};
  const char *plain[] = {NO_DB, key, listen_at, NULL};
  refused(plain, NULL, want);
  const char *reuse[] = {NO_DB, key, listen_at, "--reuse-port=1", NULL};
  refused(reuse, NULL, want);
  fl_h_coord_stop(&c, SIGTERM);
  fl_h_db_drop(db);
}

/* openssl s_client against 127.0.0.1:port with extra arguments; 0 when the handshake and
 * certificate verification succeed. SECLEVEL=0 so that the client itself would offer TLS 1.0
 * and 1.1 and CBC suites: the server must be the one that refuses them. */
static int handshake(int port, const char *cafile, const char *extra) {
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "timeout 10 openssl s_client -connect 127.0.0.1:%d -CAfile '%s' -verify_return_error"
           " -cipher 'DEFAULT:@SECLEVEL=0' %s </dev/null >/dev/null 2>&1",
           port, cafile, extra);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(startup, tls_is_1_2_or_1_3_with_aead_suites_only) {
  char db[64], ca[300];
  cr_assert_eq(fl_h_db_create(db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  fl_h_coord c;
  cr_assert_eq(fl_h_coord_start_tls(&c, db), 0);
  snprintf(ca, sizeof ca, "%s/tls-cert.pem", c.dir);
  cr_assert_eq(access(ca, R_OK), 0, "%s", ca);
  int tls13 = handshake(c.port, ca, "-tls1_3");
  int gcm = handshake(c.port, ca, "-tls1_2 -cipher 'ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0'");
  int chacha = handshake(c.port, ca, "-tls1_2 -cipher 'ECDHE-ECDSA-CHACHA20-POLY1305'");
  int cbc = handshake(c.port, ca, "-tls1_2 -cipher 'ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0'");
  int cbc256 = handshake(c.port, ca, "-tls1_2 -cipher 'ECDHE-ECDSA-AES256-SHA384:@SECLEVEL=0'");
  int tls11 = handshake(c.port, ca, "-tls1_1");
  int tls10 = handshake(c.port, ca, "-tls1");
  fl_h_coord_stop(&c, SIGTERM);
  fl_h_db_drop(db);
  cr_assert_eq(tls13, 0, "TLS 1.3 refused");
  cr_assert_eq(gcm, 0, "TLS 1.2 AES-GCM refused");
  cr_assert_eq(chacha, 0, "TLS 1.2 ChaCha20-Poly1305 refused");
  cr_assert_neq(cbc, 0, "TLS 1.2 CBC/SHA-1 suite accepted");
  cr_assert_neq(cbc256, 0, "TLS 1.2 CBC/SHA-384 suite accepted");
  cr_assert_neq(tls11, 0, "TLS 1.1 accepted");
  cr_assert_neq(tls10, 0, "TLS 1.0 accepted");
}
