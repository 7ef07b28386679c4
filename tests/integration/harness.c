/*
 * Integration test harness; see harness.h. Written for readability over speed: one libcurl
 * easy handle per request, synchronous everything. The launcher, the admin client and the
 * signer are the shared ones of tests/support.
 */
#include "harness.h"

#include <curl/curl.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "digest.h"
#include "fl/err.h"
#include "flsupport/admin.h"
#include "flsupport/coord.h"
#include "flsupport/pg.h"
#include "flsupport/proc.h"

#define ADMIN_TOKEN "itest-admin-token-0123456789abcdef"

/* ----- database ---------------------------------------------------------------------------- */

int fl_h_db_create(char name[64]) {
  return fl_sup_db_create("fl_itest_", name) == FL_OK ? 0 : -1;
}

void fl_h_db_drop(const char *name) {
  fl_sup_db_drop(name);
}

int64_t fl_h_db_int(const char *db, const char *sql) {
  int64_t v;
  return fl_sup_db_exec(db, sql, &v) == FL_OK ? v : -1;
}

int64_t fl_h_db_intf(const char *db, const char *fmt, ...) {
  char sql[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(sql, sizeof sql, fmt, ap);
  va_end(ap);
  return n < 0 || (size_t)n >= sizeof sql ? -1 : fl_h_db_int(db, sql);
}

/* ----- HTTP -------------------------------------------------------------------------------- */

void fl_h_resp_free(fl_h_resp *r) {
  fl_sup_resp_free(r);
}

/* The certificate that https:// URLs are verified against (fl_h_coord_start_tls). */
static char g_ca_file[320];

static const char *ca_file(void) {
  return g_ca_file[0] ? g_ca_file : NULL;
}

static int http(const char *method, const char *url, struct curl_slist *hdrs, const void *body,
                size_t len, fl_h_resp *out) {
  char err[512];
  fl_sup_http_opts o = {.headers = hdrs, .body = body, .len = len, .ca_file = ca_file()};
  if (fl_sup_http(NULL, method, url, &o, out, err, sizeof err) == FL_OK)
    return 0;
  fprintf(stderr, "harness: %s\n", err);
  return -1;
}

json_t *fl_h_admin(const fl_h_coord *c, const char *method, const char *path, const char *body,
                   long *status) {
  fl_sup_admin *a = NULL;
  json_t *j = NULL;
  *status = -1;
  if (fl_sup_admin_new(&a, c->url, c->admin_token) != FL_OK ||
      fl_sup_admin_set_ca(a, ca_file()) != FL_OK) {
    fprintf(stderr, "harness: cannot make an admin client for %s\n", c->url);
  } else if (fl_sup_admin_request(a, method, path, body, status, &j) != FL_OK) {
    fprintf(stderr, "harness: %s\n", fl_sup_admin_errmsg(a));
  }
  fl_sup_admin_free(a);
  return j;
}

json_t *fl_h_admin_ok(const fl_h_coord *c, const char *method, const char *path, const char *body) {
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

double fl_h_metric(const fl_h_coord *c, const char *series) {
  fl_sup_admin *a = NULL;
  const char *text = NULL;
  double v = -1;
  if (fl_sup_admin_new(&a, c->url, c->admin_token) != FL_OK ||
      fl_sup_admin_set_ca(a, ca_file()) != FL_OK ||
      fl_sup_admin_get_text(a, "/metrics", &text) != FL_OK) {
    fprintf(stderr, "harness: GET /metrics: %s\n", a ? fl_sup_admin_errmsg(a) : "no client");
    goto out;
  }
  size_t n = strlen(series);
  for (const char *l = text; l != NULL && *l != '\0';
       l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
    if (strncmp(l, series, n) == 0 && l[n] == ' ') {
      v = strtod(l + n + 1, NULL);
      break;
    }
out:
  fl_sup_admin_free(a);
  return v;
}

/* ----- coordinator ------------------------------------------------------------------------- */

int fl_h_coord_restart(fl_h_coord *c) {
  char a_db[128], a_replica[64];
  char *args[16] = {a_replica, "--tick=50", "--log-level=debug"};
  size_t n = 3;
  for (int i = 0; i < 8 && c->extra[i] && n < 15; i++)
    args[n++] = (char *)c->extra[i];
  args[n] = NULL;
  snprintf(a_db, sizeof a_db, "dbname=%s", c->db);
  snprintf(a_replica, sizeof a_replica, "--replica-id=%s", c->replica);
  fl_sup_coord_opts o = {.bin = FL_COORDINATOR_BIN,
                         .database_url = a_db,
                         .dir = c->dir,
                         .admin_token = c->admin_token,
                         .port = c->port,
                         .tls = strncmp(c->url, "https:", 6) == 0,
                         .ca_file = ca_file(),
                         .args = args};
  fl_sup_coord sc;
  int rc = fl_sup_coord_start(&sc, &o);
  c->pid = sc.pid;
  return rc == FL_OK ? 0 : -1;
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
  if (dir != NULL)
    snprintf(c->dir, sizeof c->dir, "%s", dir);
  else if (fl_sup_mkdtemp(c->dir, sizeof c->dir, "fl_itest_") != FL_OK)
    return -1;
  c->port = fl_sup_free_port();
  if (c->port <= 0)
    return -1;
  snprintf(c->url, sizeof c->url, "%s://127.0.0.1:%d", scheme, c->port);
  return fl_h_coord_restart(c);
}

int fl_h_coord_start(fl_h_coord *c, const char *db, const char *dir, const char *const *extra) {
  return fl_h_coord_start_scheme(c, db, dir, extra, "http");
}

int fl_h_coord_stop(fl_h_coord *c, int sig) {
  if (c->pid <= 0)
    return -1;
  /* A graceful stop may take a while (draining); two minutes is a hang. */
  int st = fl_sup_terminate(c->pid, sig, 120000);
  c->pid = 0;
  return st;
}

void fl_h_coord_cleanup(fl_h_coord *c) {
  if (c->pid > 0)
    fl_h_coord_stop(c, SIGKILL);
  if (c->dir[0] != '\0' && getenv("FL_ITEST_KEEP") == NULL)
    fl_sup_rmtree(c->dir);
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
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1, 0);
  X509_set_issuer_name(x, n);
  san = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "IP:127.0.0.1");
  if (san == NULL || !X509_add_ext(x, san, -1) || !X509_sign(x, k, EVP_sha256()))
    goto out;
  fc = fopen(cert_path, "w");
  fk = fopen(key_path, "w");
  /* 0600: the coordinator refuses a private key that group or others may read. */
  if (fc && fk && PEM_write_X509(fc, x) && PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL) &&
      fchmod(fileno(fk), 0600) == 0)
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
  char dir[256], cert[300], key[300];
  if (fl_sup_mkdtemp(dir, sizeof dir, "fl_itest_") != FL_OK)
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

int fl_h_device_post(const fl_h_coord *c, const fl_h_device *d, const char *path,
                     const uint8_t *body, size_t len, const fl_h_forge *f, fl_h_resp *out) {
  uint8_t *env;
  size_t n;
  char url[512];
  if (fl_sup_envelope(d->key, d->id, "POST", path, body, len, f, &env, &n) != FL_OK)
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
  if (fl_sup_envelope(d->key, d->id, "GET", path, NULL, 0, f, &env, &n) != FL_OK)
    return -1;
  char *hdr = fl_sup_auth_header(env, n);
  free(env);
  if (hdr == NULL)
    return -1;
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
  /* Per thread: tests call this from upload worker threads. */
  static _Thread_local char reason[64];
  return fl_sup_error_reason(r->data, r->len, reason, sizeof reason);
}

long fl_h_device_enroll(const fl_h_coord *c, fl_h_device *d, const char *token) {
  uint8_t *env;
  size_t n;
  char url[512];
  fl_h_resp r;
  d->id = 0;
  if (fl_sup_enroll_request(d->key, token, &env, &n) != FL_OK)
    return -1;
  snprintf(url, sizeof url, "%s/v1/enroll", c->url);
  struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
  int rc = http("POST", url, h, env, n, &r);
  curl_slist_free_all(h);
  free(env);
  if (rc)
    return -1;
  long st = r.status;
  if (st == 200 && fl_sup_enroll_parse(r.data, r.len, &d->id, d->coordinator_pub) != FL_OK)
    st = -1;
  fl_h_resp_free(&r);
  return st;
}

int fl_h_checkin(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                 Fl__V1__CheckInResponse **resp) {
  return fl_h_checkin_cond(c, d, model_id, NULL, 0, resp);
}

int fl_h_checkin_cond(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id,
                      const char *const *conds, size_t n_conds, Fl__V1__CheckInResponse **resp) {
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  uint8_t body[4096];
  fl_h_resp r;
  ci.model_id = model_id;
  ci.conditions = (char **)conds;
  ci.n_conditions = n_conds;
  if (fl__v1__check_in_request__get_packed_size(&ci) > sizeof body)
    return -1;
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

int fl_h_download(const fl_h_coord *c, const fl_h_device *d, uint64_t model_id, uint64_t version,
                  Fl__V1__ModelVersion **out) {
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
                     const float *delta, uint64_t samples, float loss, const fl_h_update_opts *o,
                     uint8_t **buf, size_t *len) {
  static const fl_h_update_opts plain;
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  size_t nt = base->n_weights, off = 0;
  Fl__V1__Tensor *ts = calloc(nt + 1, sizeof *ts);
  Fl__V1__Tensor **tp = calloc(nt + 1, sizeof *tp);
  uint8_t sig[FL_SIG_LEN];
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
  u.clip_state = (Fl__V1__ClipState)o->clip_state;
  u.train_stats = (Fl__V1__DriftStats *)o->train_stats;
  if (o->corrupt_signature) {
    /* Signed for a timestamp and nonce no request carries, then damaged: whatever envelope
     * carries it, the signature cannot verify. */
    static const uint8_t other_nonce[16];
    if (fl_sup_sign_update(d->key, d->id, 1, other_nonce, sizeof other_nonce, &u, sig))
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

/* An admin client for c (the bootstrap token, the TLS certificate); NULL (printed) on failure. */
static fl_sup_admin *admin_of(const fl_h_coord *c) {
  fl_sup_admin *a = NULL;
  if (fl_sup_admin_new(&a, c->url, c->admin_token) != FL_OK ||
      fl_sup_admin_set_ca(a, ca_file()) != FL_OK) {
    fprintf(stderr, "harness: cannot make an admin client for %s\n", c->url);
    fl_sup_admin_free(a);
    return NULL;
  }
  return a;
}

int fl_h_model_and_plan(const fl_h_coord *c, const char *name, const char *spec_json,
                        const char *plan_json, uint64_t *model_id, uint64_t *round_id) {
  fl_sup_admin *a = admin_of(c);
  json_t *spec = json_loads(spec_json, 0, NULL), *plan = json_loads(plan_json, 0, NULL);
  int rc = a && spec && plan ? FL_OK : FL_E_INVAL;
  if (rc == FL_OK)
    rc = fl_sup_admin_create_model(a, name, spec, 1, model_id, NULL);
  if (rc == FL_OK)
    rc = fl_sup_admin_create_plan(a, *model_id, plan, NULL, round_id);
  if (rc != FL_OK)
    fprintf(stderr, "harness: model and plan: %s\n", a ? fl_sup_admin_errmsg(a) : "no client");
  json_decref(spec);
  json_decref(plan);
  fl_sup_admin_free(a);
  return rc == FL_OK ? 0 : -1;
}

int fl_h_enroll_devices(const fl_h_coord *c, fl_h_device *devs, int n) {
  return fl_h_enroll_labeled(c, devs, n, NULL);
}

int fl_h_enroll_labeled(const fl_h_coord *c, fl_h_device *devs, int n, const char *labels) {
  fl_sup_admin *a = admin_of(c);
  char **tokens = NULL;
  json_t *lj = labels != NULL ? json_loads(labels, 0, NULL) : NULL;
  int trc = a == NULL || (labels != NULL && lj == NULL)
                ? FL_E_INVAL
                : fl_sup_admin_enrollment_tokens_labeled(a, (size_t)n, lj, &tokens);
  json_decref(lj);
  if (trc != FL_OK) {
    fprintf(stderr, "harness: enrollment tokens: %s\n", a ? fl_sup_admin_errmsg(a) : "");
    fl_sup_admin_free(a);
    return -1;
  }
  fl_sup_admin_free(a);
  int rc = 0;
  for (int i = 0; rc == 0 && i < n; i++) {
    if (fl_h_device_new(&devs[i]) || fl_h_device_enroll(c, &devs[i], tokens[i]) != 200)
      rc = -1;
  }
  fl_sup_admin_free_tokens(tokens, (size_t)n);
  return rc;
}

json_t *fl_h_wait_round(const fl_h_coord *c, uint64_t round_id, const char *state, int timeout_ms) {
  fl_sup_admin *a = admin_of(c);
  json_t *r = NULL;
  if (a != NULL && fl_sup_admin_wait_round(a, round_id, state, timeout_ms, &r) != FL_OK)
    fprintf(stderr, "harness: %s\n", fl_sup_admin_errmsg(a));
  fl_sup_admin_free(a);
  return r;
}

int fl_h_upload(const fl_h_coord *c, const fl_h_device *d, const Fl__V1__ModelVersion *base,
                uint64_t round_id, const float *delta, uint64_t samples, const fl_h_update_opts *o,
                fl_h_resp *out) {
  uint8_t *buf;
  size_t len;
  if (fl_h_update_pack(d, base, round_id, delta, samples, 0.5f, o, &buf, &len))
    return -1;
  int rc = fl_h_device_post(c, d, "/v1/updates", buf, len, NULL, out);
  free(buf);
  return rc;
}
