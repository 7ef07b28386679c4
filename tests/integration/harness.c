/*
 * Integration test harness; see harness.h. Written for readability over speed: one libcurl
 * easy handle per request, synchronous everything.
 */
#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <libpq-fe.h>
#include <math.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "digest.h"

#define ADMIN_TOKEN "itest-admin-token-0123456789abcdef"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ----- database ---------------------------------------------------------------------------- */

/* Connects to `db` (NULL: the PG* default database). */
static PGconn *connect_db(const char *db) {
  const char *keys[] = {"dbname", NULL};
  const char *vals[] = {db, NULL};
  PGconn *c = db ? PQconnectdbParams(keys, vals, 1) : PQconnectdb("");
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "harness: connect: %s", PQerrorMessage(c));
    PQfinish(c);
    return NULL;
  }
  return c;
}

static int run(PGconn *c, const char *sql) {
  PGresult *r = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
  int ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
  if (!ok)
    fprintf(stderr, "harness: %s: %s", sql, PQerrorMessage(c));
  PQclear(r);
  return ok ? 0 : -1;
}

int fl_h_db_create(char name[64]) {
  static int seq;
  uint8_t rnd[4];
  char hex[9], sql[128];
  fl__random_bytes(rnd, sizeof rnd);
  fl__hex(rnd, sizeof rnd, hex);
  snprintf(name, 64, "fl_itest_%d_%d_%s", (int)getpid(), seq++, hex);
  PGconn *c = connect_db(NULL);
  if (c == NULL)
    return -1;
  /* CREATE DATABASE takes no parameters; the name is generated above from digits and hex. */
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  int rc = run(c, sql);
  PQfinish(c);
  return rc;
}

void fl_h_db_drop(const char *name) {
  char sql[128];
  PGconn *c = connect_db(NULL);
  if (c == NULL || name[0] == '\0') {
    PQfinish(c);
    return;
  }
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
  run(c, sql);
  PQfinish(c);
}

int64_t fl_h_db_int(const char *db, const char *sql) {
  PGconn *c = connect_db(db);
  if (c == NULL)
    return -1;
  PGresult *r = PQexecParams(c, sql, 0, NULL, NULL, NULL, NULL, 0);
  int64_t v = -1;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0)
    v = PQgetisnull(r, 0, 0) ? 0 : strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  else
    fprintf(stderr, "harness: %s: %s", sql, PQerrorMessage(c));
  PQclear(r);
  PQfinish(c);
  return v;
}

/* ----- HTTP -------------------------------------------------------------------------------- */

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
  fl_h_resp *r = ud;
  uint8_t *d = realloc(r->data, r->len + sz * n + 1);
  if (d == NULL)
    return 0;
  memcpy(d + r->len, p, sz * n);
  r->data = d;
  r->len += sz * n;
  r->data[r->len] = 0;
  return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  fl_h_resp *r = ud;
  size_t len = sz * n;
  if (len > 6 && strncasecmp(p, "ETag: ", 6) == 0) {
    size_t m = len - 6;
    while (m > 0 && (p[6 + m - 1] == '\r' || p[6 + m - 1] == '\n'))
      m--;
    snprintf(r->etag, sizeof r->etag, "%.*s", (int)m, p + 6);
  }
  return len;
}

void fl_h_resp_free(fl_h_resp *r) {
  free(r->data);
  memset(r, 0, sizeof *r);
}

/* Set while polling /readyz, where connection errors are expected. */
static bool g_quiet;
/* The certificate that https:// URLs are verified against (fl_h_coord_start_tls). */
static char g_ca_file[320];

static int http(const char *method, const char *url, struct curl_slist *hdrs, const void *body,
                size_t len, fl_h_resp *out) {
  CURL *h = curl_easy_init();
  memset(out, 0, sizeof *out);
  if (h == NULL)
    return -1;
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, out);
  curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
  if (strncmp(url, "https:", 6) == 0 && g_ca_file[0])
    curl_easy_setopt(h, CURLOPT_CAINFO, g_ca_file);
  if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  CURLcode rc = curl_easy_perform(h);
  if (rc == CURLE_OK)
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
  curl_easy_cleanup(h);
  if (rc != CURLE_OK) {
    if (!g_quiet)
      fprintf(stderr, "harness: %s %s: %s\n", method, url, curl_easy_strerror(rc));
    fl_h_resp_free(out);
    return -1;
  }
  return 0;
}

json_t *fl_h_admin(const fl_h_coord *c, const char *method, const char *path, const char *body,
                   long *status) {
  char url[512], auth[128];
  fl_h_resp r;
  snprintf(url, sizeof url, "%s%s", c->url, path);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->admin_token);
  struct curl_slist *h = curl_slist_append(NULL, auth);
  h = curl_slist_append(h, "Content-Type: application/json");
  int rc = http(method, url, h, body, body ? strlen(body) : 0, &r);
  curl_slist_free_all(h);
  *status = rc ? -1 : r.status;
  json_t *j = rc == 0 && r.len ? json_loadb((const char *)r.data, r.len, 0, NULL) : NULL;
  fl_h_resp_free(&r);
  return j;
}

json_t *fl_h_admin_ok(const fl_h_coord *c, const char *method, const char *path,
                      const char *body) {
  long st;
  json_t *j = fl_h_admin(c, method, path, body, &st);
  if (st == 200)
    return j;
  char *s = j ? json_dumps(j, 0) : NULL;
  fprintf(stderr, "harness: %s %s -> %ld %s\n", method, path, st, s ? s : "");
  free(s);
  json_decref(j);
  return NULL;
}

/* ----- coordinator ------------------------------------------------------------------------- */

/* mkdtemp under /tmp; the template's six trailing 'X' are written by memset. */
static int temp_dir(char *out, size_t size) {
  int n = snprintf(out, size, "/tmp/fl_itest_");
  if (n < 0 || (size_t)n + 7 > size)
    return -1;
  memset(out + n, 'X', 6);
  out[n + 6] = '\0';
  return mkdtemp(out) ? 0 : -1;
}

static int free_port(void) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0)
    close(fd);
  return port;
}

static void exec_child(const fl_h_coord *c) {
  char log[300], a_db[128], a_listen[64], a_key[300], a_replica[64];
  const char *argv[24];
  int n = 0;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  snprintf(log, sizeof log, "%s/coordinator.log", c->dir);
  if (freopen(log, "a", stdout) == NULL || dup2(fileno(stdout), STDERR_FILENO) < 0)
    _exit(126);
  snprintf(a_db, sizeof a_db, "--database-url=dbname=%s", c->db);
  snprintf(a_listen, sizeof a_listen, "--listen=127.0.0.1:%d", c->port);
  snprintf(a_key, sizeof a_key, "--signing-key=%s/signing-key.pem", c->dir);
  snprintf(a_replica, sizeof a_replica, "--replica-id=%s", c->replica);
  argv[n++] = FL_COORDINATOR_BIN;
  argv[n++] = a_db;
  argv[n++] = a_listen;
  argv[n++] = a_key;
  argv[n++] = a_replica;
  argv[n++] = "--tick=50";
  argv[n++] = "--log-level=debug";
  for (int i = 0; i < 8 && c->extra[i]; i++)
    argv[n++] = c->extra[i];
  argv[n] = NULL;
  setenv("FL_ADMIN_TOKEN", c->admin_token, 1);
  execv(FL_COORDINATOR_BIN, (char *const *)argv);
  _exit(127);
}

static int wait_ready(fl_h_coord *c) {
  char url[128];
  snprintf(url, sizeof url, "%s/readyz", c->url);
  for (int i = 0; i < 300; i++) {
    fl_h_resp r;
    int status;
    if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
      fprintf(stderr, "harness: coordinator exited during start-up (see %s/coordinator.log)\n",
              c->dir);
      c->pid = 0;
      return -1;
    }
    g_quiet = true;
    int rc = http("GET", url, NULL, NULL, 0, &r);
    g_quiet = false;
    if (rc == 0) {
      long st = r.status;
      fl_h_resp_free(&r);
      if (st == 200)
        return 0;
    }
    sleep_ms(100);
  }
  fprintf(stderr, "harness: coordinator not ready after 30 s\n");
  return -1;
}

int fl_h_coord_restart(fl_h_coord *c) {
  fflush(NULL);
  c->pid = fork();
  if (c->pid < 0)
    return -1;
  if (c->pid == 0)
    exec_child(c);
  return wait_ready(c);
}

static int fl_h_coord_start_scheme(fl_h_coord *c, const char *db, const char *dir,
                                   const char *const *extra, const char *scheme) {
  static int seq;
  memset(c, 0, sizeof *c);
  snprintf(c->db, sizeof c->db, "%s", db);
  snprintf(c->admin_token, sizeof c->admin_token, "%s", ADMIN_TOKEN);
  snprintf(c->replica, sizeof c->replica, "replica-%d", seq++);
  for (int i = 0; extra && i < 7 && extra[i]; i++)
    c->extra[i] = extra[i];
  if (dir != NULL) {
    snprintf(c->dir, sizeof c->dir, "%s", dir);
  } else {
    if (temp_dir(c->dir, sizeof c->dir))
      return -1;
  }
  c->port = free_port();
  if (c->port <= 0)
    return -1;
  snprintf(c->url, sizeof c->url, "%s://127.0.0.1:%d", scheme, c->port);
  return fl_h_coord_restart(c);
}

int fl_h_coord_start(fl_h_coord *c, const char *db, const char *dir, const char *const *extra) {
  return fl_h_coord_start_scheme(c, db, dir, extra, "http");
}

int fl_h_coord_stop(fl_h_coord *c, int sig) {
  int status = 0;
  if (c->pid <= 0)
    return -1;
  kill(c->pid, sig);
  while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
    ;
  c->pid = 0;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void fl_h_coord_cleanup(fl_h_coord *c) {
  char path[320];
  if (c->pid > 0)
    fl_h_coord_stop(c, SIGKILL);
  if (c->dir[0] == '\0')
    return;
  if (getenv("FL_ITEST_KEEP") == NULL) {
    snprintf(path, sizeof path, "%s/signing-key.pem", c->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/coordinator.log", c->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tls-cert.pem", c->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tls-key.pem", c->dir);
    unlink(path);
    rmdir(c->dir);
  }
  c->dir[0] = '\0';
}

/* A self-signed certificate for 127.0.0.1 (subjectAltName IP) with a P-256 key. */
static int make_cert(const char *cert_path, const char *key_path) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  X509_EXTENSION *san = NULL;
  FILE *fc = NULL, *fk = NULL;
  int rc = -1;
  if (k == NULL || x == NULL)
    goto out;
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1,
                             0);
  X509_set_issuer_name(x, n);
  san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "IP:127.0.0.1");
  if (san == NULL || !X509_add_ext(x, san, -1) || !X509_sign(x, k, EVP_sha256()))
    goto out;
  fc = fopen(cert_path, "w");
  fk = fopen(key_path, "w");
  if (fc && fk && PEM_write_X509(fc, x) && PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL))
    rc = 0;
out:
  if (fc)
    fclose(fc);
  if (fk)
    fclose(fk);
  X509_EXTENSION_free(san);
  X509_free(x);
  EVP_PKEY_free(k);
  return rc;
}

int fl_h_coord_start_tls(fl_h_coord *c, const char *db) {
  char dir[64], cert[300], key[300];
  if (temp_dir(dir, sizeof dir))
    return -1;
  snprintf(cert, sizeof cert, "%s/tls-cert.pem", dir);
  snprintf(key, sizeof key, "%s/tls-key.pem", dir);
  if (make_cert(cert, key))
    return -1;
  snprintf(g_ca_file, sizeof g_ca_file, "%s", cert);
  /* c->extra keeps pointers to the flags, so they must outlive this call. */
  static char a_cert[320], a_key[320];
  snprintf(a_cert, sizeof a_cert, "--tls-cert=%s", cert);
  snprintf(a_key, sizeof a_key, "--tls-key=%s", key);
  const char *extra[] = {a_cert, a_key, NULL};
  return fl_h_coord_start_scheme(c, db, dir, extra, "https");
}

/* ----- devices ----------------------------------------------------------------------------- */

int fl_h_device_new(fl_h_device *d) {
  memset(d, 0, sizeof *d);
  return fl__key_generate(&d->key) == FL_OK ? 0 : -1;
}

void fl_h_device_free(fl_h_device *d) {
  fl__key_free(d->key);
  d->key = NULL;
}

/* The body of an upload signed over sr's device id, timestamp and nonce (docs/SIGNING.md).
 * *out is NULL when body goes out unchanged: it is no UpdateUpload, or it carries a forged
 * signature already. */
static int sign_upload(const fl_h_device *d, const Fl__V1__SignedRequest *sr,
                       const uint8_t *body, size_t len, const fl_h_forge *f, uint8_t **out,
                       size_t *out_len) {
  uint8_t digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  int rc = -1;
  *out = NULL;
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, len, body);
  if (u == NULL || u->signature.len != 0) {
    fl__v1__update_upload__free_unpacked(u, NULL);
    return 0;
  }
  if (fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u, NULL,
                        digest) ||
      fl__sign(d->key, digest, sizeof digest, sig))
    goto out;
  if (f->corrupt_signature)
    sig[7] ^= 0x10;
  u->signature = (ProtobufCBinaryData){sizeof sig, sig};
  *out_len = fl__v1__update_upload__get_packed_size(u);
  *out = malloc(*out_len + 1);
  if (*out != NULL) {
    fl__v1__update_upload__pack(u, *out);
    rc = 0;
  }
  /* The unpacked message frees what it allocated, not sig. */
  u->signature = (ProtobufCBinaryData){0, NULL};
out:
  fl__v1__update_upload__free_unpacked(u, NULL);
  return rc;
}

/* Packs a SignedRequest around body for method and path. */
static int envelope(const fl_h_device *d, const char *method, const char *path,
                    const uint8_t *body, size_t len, const fl_h_forge *f, uint8_t **out,
                    size_t *out_len) {
  static const fl_h_forge honest;
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[16], digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  uint8_t *signed_body = NULL;
  size_t signed_len = 0;
  int rc = -1;
  if (f == NULL)
    f = &honest;
  if (f->nonce == NULL && fl__random_bytes(nonce, sizeof nonce))
    return -1;
  sr.device_id = f->device_id ? f->device_id : d->id;
  sr.timestamp_ms = f->timestamp_ms ? f->timestamp_ms : now_ms();
  sr.nonce.data = f->nonce ? (uint8_t *)f->nonce : nonce;
  sr.nonce.len = f->nonce ? f->nonce_len : sizeof nonce;
  sr.body.data = (uint8_t *)body;
  sr.body.len = len;
  bool upload = strcmp(method, "POST") == 0 && strcmp(path, "/v1/updates") == 0;
  if (upload) {
    if (sign_upload(d, &sr, body, len, f, &signed_body, &signed_len))
      goto out;
    if (signed_body != NULL)
      sr.body = (ProtobufCBinaryData){signed_len, signed_body};
  }
  if (!upload || f->envelope_signature) {
    if (fl__request_digest(method, path, sr.device_id, sr.timestamp_ms, sr.nonce.data,
                           sr.nonce.len, sr.body.data ? sr.body.data : (const uint8_t *)"",
                           sr.body.len, digest) ||
        fl__sign(d->key, digest, sizeof digest, sig))
      goto out;
    if (f->corrupt_signature && !upload)
      sig[7] ^= 0x10;
    sr.signature.data = sig;
    sr.signature.len = sizeof sig;
  }
  *out_len = fl__v1__signed_request__get_packed_size(&sr);
  *out = malloc(*out_len + 1);
  if (*out == NULL)
    goto out;
  fl__v1__signed_request__pack(&sr, *out);
  rc = 0;
out:
  free(signed_body);
  return rc;
}

int fl_h_device_post(const fl_h_coord *c, const fl_h_device *d, const char *path,
                     const uint8_t *body, size_t len, const fl_h_forge *f, fl_h_resp *out) {
  uint8_t *env;
  size_t n;
  char url[512];
  if (envelope(d, "POST", path, body, len, f, &env, &n))
    return -1;
  snprintf(url, sizeof url, "%s%s", c->url, path);
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
  int rc = http("POST", url, h, env, n, out);
  curl_slist_free_all(h);
  free(env);
  return rc;
}

int fl_h_device_get(const fl_h_coord *c, const fl_h_device *d, const char *path,
                    const fl_h_forge *f, fl_h_resp *out) {
  uint8_t *env;
  size_t n;
  char url[512], inm[128];
  if (envelope(d, "GET", path, NULL, 0, f, &env, &n))
    return -1;
  char *hdr = malloc(16 + 4 * (n / 3 + 1) + 1);
  if (hdr == NULL) {
    free(env);
    return -1;
  }
  int m = snprintf(hdr, 16, "X-FL-Auth: ");
  EVP_EncodeBlock((unsigned char *)hdr + m, env, (int)n);
  free(env);
  struct curl_slist *h = curl_slist_append(NULL, hdr);
  free(hdr);
  if (f && f->if_none_match) {
    snprintf(inm, sizeof inm, "If-None-Match: %s", f->if_none_match);
    h = curl_slist_append(h, inm);
  }
  snprintf(url, sizeof url, "%s%s", c->url, path);
  int rc = http("GET", url, h, NULL, 0, out);
  curl_slist_free_all(h);
  return rc;
}

const char *fl_h_error_reason(const fl_h_resp *r) {
  static char reason[64];
  reason[0] = '\0';
  Fl__V1__Error *e = r->len ? fl__v1__error__unpack(NULL, r->len, r->data) : NULL;
  if (e != NULL && e->reason)
    snprintf(reason, sizeof reason, "%s", e->reason);
  fl__v1__error__free_unpacked(e, NULL);
  return reason;
}

long fl_h_device_enroll(const fl_h_coord *c, fl_h_device *d, const char *token) {
  Fl__V1__EnrollRequest e = FL__V1__ENROLL_REQUEST__INIT;
  uint8_t pub[FL_PUBKEY_LEN], *body;
  fl_h_resp r;
  if (fl__key_public(d->key, pub))
    return -1;
  e.enrollment_token = (char *)token;
  e.public_key = (ProtobufCBinaryData){sizeof pub, pub};
  size_t n = fl__v1__enroll_request__get_packed_size(&e);
  body = malloc(n + 1);
  if (body == NULL)
    return -1;
  fl__v1__enroll_request__pack(&e, body);
  d->id = 0;
  int rc = fl_h_device_post(c, d, "/v1/enroll", body, n, NULL, &r);
  free(body);
  if (rc)
    return -1;
  long st = r.status;
  Fl__V1__EnrollResponse *er =
      st == 200 ? fl__v1__enroll_response__unpack(NULL, r.len, r.data) : NULL;
  if (er != NULL && er->coordinator_public_key.len == FL_PUBKEY_LEN) {
    d->id = er->device_id;
    memcpy(d->coordinator_pub, er->coordinator_public_key.data, FL_PUBKEY_LEN);
  } else if (st == 200) {
    st = -1;
  }
  fl__v1__enroll_response__free_unpacked(er, NULL);
  fl_h_resp_free(&r);
  return st;
}

int fl_h_checkin(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                 Fl__V1__CheckInResponse **resp) {
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  uint8_t body[64];
  fl_h_resp r;
  ci.model_id = model_id;
  size_t n = fl__v1__check_in_request__pack(&ci, body);
  if (fl_h_device_post(c, d, "/v1/checkin", body, n, NULL, &r))
    return -1;
  *resp = r.status == 200 ? fl__v1__check_in_response__unpack(NULL, r.len, r.data) : NULL;
  if (*resp == NULL)
    fprintf(stderr, "harness: checkin -> %ld %s\n", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  return *resp ? 0 : -1;
}

int fl_h_weights(const Fl__V1__ModelVersion *mv, float **w, size_t *n) {
  size_t total = 0, off = 0;
  for (size_t i = 0; i < mv->n_weights; i++)
    total += mv->weights[i]->count;
  *w = malloc((total + 1) * sizeof **w);
  if (*w == NULL)
    return -1;
  for (size_t i = 0; i < mv->n_weights; i++) {
    if (fl__tensor_decode(mv->weights[i], *w + off, mv->weights[i]->count)) {
      free(*w);
      return -1;
    }
    off += mv->weights[i]->count;
  }
  *n = total;
  return 0;
}

/* Recomputes the model digest and checks the coordinator's signature over it. */
static int verify_version(const fl_h_device *d, const Fl__V1__ModelVersion *mv) {
  fl_model_spec spec;
  uint8_t digest[FL_SHA256_LEN];
  float *w;
  size_t n;
  if (mv->spec == NULL || fl__spec_from_proto(&spec, mv->spec) || fl_h_weights(mv, &w, &n))
    return -1;
  int rc = fl__model_digest(mv->model_id, mv->version, mv->parent_version, &spec, w, n, digest);
  free(w);
  if (rc || mv->sha256.len != FL_SHA256_LEN || memcmp(digest, mv->sha256.data, FL_SHA256_LEN)) {
    fprintf(stderr, "harness: version digest mismatch\n");
    return -1;
  }
  if (fl__verify_raw(d->coordinator_pub, digest, sizeof digest, mv->signature.data,
                     mv->signature.len)) {
    fprintf(stderr, "harness: version signature does not verify\n");
    return -1;
  }
  return 0;
}

int fl_h_download(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                  uint64_t version, Fl__V1__ModelVersion **out) {
  char path[128];
  fl_h_resp r;
  snprintf(path, sizeof path, "/v1/models/%llu/versions/%llu", (unsigned long long)model_id,
           (unsigned long long)version);
  if (fl_h_device_get(c, d, path, NULL, &r))
    return -1;
  *out = r.status == 200 ? fl__v1__model_version__unpack(NULL, r.len, r.data) : NULL;
  if (*out == NULL)
    fprintf(stderr, "harness: download -> %ld %s\n", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  if (*out != NULL && verify_version(d, *out)) {
    fl__v1__model_version__free_unpacked(*out, NULL);
    *out = NULL;
  }
  return *out ? 0 : -1;
}

int fl_h_update_pack(const fl_h_device *d, const Fl__V1__ModelVersion *base, uint64_t round_id,
                     const float *delta, uint64_t samples, float loss,
                     const fl_h_update_opts *o, uint8_t **buf, size_t *len) {
  static const fl_h_update_opts plain;
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  size_t nt = base->n_weights, off = 0;
  Fl__V1__Tensor *ts = calloc(nt + 1, sizeof *ts);
  Fl__V1__Tensor **tp = calloc(nt + 1, sizeof *tp);
  uint8_t digest[FL_SHA256_LEN], sig[FL_SIG_LEN];
  int rc = -1;
  double sq = 0;
  if (o == NULL)
    o = &plain;
  if (ts == NULL || tp == NULL)
    goto out;
  for (size_t i = 0; i < nt; i++) {
    const Fl__V1__Tensor *b = base->weights[i];
    fl__v1__tensor__init(&ts[i]);
    if (fl__tensor_encode(&ts[i], delta + off, b->count, b->shape, (uint32_t)b->n_shape,
                          o->encoding ? o->encoding : 1, 0.1f, NULL))
      goto out;
    tp[i] = &ts[i];
    for (size_t k = 0; k < b->count; k++)
      sq += (double)delta[off + k] * delta[off + k];
    off += b->count;
  }
  if (o->inject_nan && nt > 0 && ts[0].encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
    const float nan = NAN;
    memcpy(ts[0].data.data, &nan, sizeof nan);
  }
  u.round_id = round_id;
  u.model_id = base->model_id;
  u.base_version = base->version;
  u.sample_count = samples;
  u.loss = loss;
  u.n_delta = o->drop_last_tensor ? nt - 1 : nt;
  u.delta = tp;
  u.norm = (float)sqrt(sq);
  if (o->corrupt_signature) {
    /* Signed for a timestamp and nonce no request carries, then damaged: whatever envelope
     * carries it, the signature cannot verify. */
    static const uint8_t other_nonce[16];
    if (fl__update_digest(d->id, 1, other_nonce, sizeof other_nonce, &u, NULL, digest) ||
        fl__sign(d->key, digest, sizeof digest, sig))
      goto out;
    sig[3] ^= 0x01;
    u.signature = (ProtobufCBinaryData){sizeof sig, sig};
  }
  *len = fl__v1__update_upload__get_packed_size(&u);
  *buf = malloc(*len + 1);
  if (*buf != NULL) {
    fl__v1__update_upload__pack(&u, *buf);
    rc = 0;
  }
out:
  for (size_t i = 0; ts && tp && i < nt; i++)
    if (tp[i])
      fl__tensor_release(&ts[i], NULL);
  free(tp);
  free(ts);
  return rc;
}

/* ----- scenario helpers -------------------------------------------------------------------- */

int fl_h_model_and_plan(const fl_h_coord *c, const char *name, const char *spec_json,
                        const char *plan_json, uint64_t *model_id, uint64_t *round_id) {
  char body[4096], path[96];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"spec\":%s,\"seed\":1}", name, spec_json);
  json_t *m = fl_h_admin_ok(c, "POST", "/admin/v1/models", body);
  if (m == NULL)
    return -1;
  *model_id = (uint64_t)json_integer_value(json_object_get(m, "model_id"));
  json_decref(m);
  snprintf(path, sizeof path, "/admin/v1/models/%llu/plans", (unsigned long long)*model_id);
  json_t *p = fl_h_admin_ok(c, "POST", path, plan_json);
  if (p == NULL)
    return -1;
  *round_id = (uint64_t)json_integer_value(json_object_get(p, "round_id"));
  json_decref(p);
  return 0;
}

int fl_h_enroll_devices(const fl_h_coord *c, fl_h_device *devs, int n) {
  char body[64];
  snprintf(body, sizeof body, "{\"count\":%d}", n);
  json_t *t = fl_h_admin_ok(c, "POST", "/admin/v1/enrollment-tokens", body);
  json_t *tokens = json_object_get(t, "tokens");
  int rc = json_array_size(tokens) == (size_t)n ? 0 : -1;
  for (int i = 0; rc == 0 && i < n; i++) {
    if (fl_h_device_new(&devs[i]) ||
        fl_h_device_enroll(c, &devs[i], json_string_value(json_array_get(tokens, i))) != 200)
      rc = -1;
  }
  json_decref(t);
  return rc;
}

json_t *fl_h_wait_round(const fl_h_coord *c, uint64_t round_id, const char *state,
                        int timeout_ms) {
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/rounds/%llu", (unsigned long long)round_id);
  for (int waited = 0; waited <= timeout_ms; waited += 50) {
    long st;
    json_t *r = fl_h_admin(c, "GET", path, NULL, &st);
    const char *s = json_string_value(json_object_get(r, "state"));
    if (st == 200 && s != NULL && strcmp(s, state) == 0)
      return r;
    json_decref(r);
    sleep_ms(50);
  }
  fprintf(stderr, "harness: round %llu did not reach %s\n", (unsigned long long)round_id, state);
  return NULL;
}

int fl_h_upload(const fl_h_coord *c, const fl_h_device *d, const Fl__V1__ModelVersion *base,
                uint64_t round_id, const float *delta, uint64_t samples,
                const fl_h_update_opts *o, fl_h_resp *out) {
  uint8_t *buf;
  size_t len;
  if (fl_h_update_pack(d, base, round_id, delta, samples, 0.5f, o, &buf, &len))
    return -1;
  int rc = fl_h_device_post(c, d, "/v1/updates", buf, len, NULL, out);
  free(buf);
  return rc;
}
