/*
 * The helpers shared by the itest_hostile_*.c programs (see itest_hostile_common.h).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <curl/curl.h>
#include <float.h>
#include <math.h>
#include <openssl/evp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "digest.h"
#include "itest_hostile_common.h"

char hx_db[64];
fl_h_coord hx_coord;
CURL *hx_curl;
uint64_t hx_seed, hx_rs;

void hx_setup(void) {
  static const char *const extra[] = {"--max-body=65536", NULL};
  cr_assert_eq(fl_h_db_create(hx_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&hx_coord, hx_db, NULL, extra), 0, "coordinator start");
  hx_curl = curl_easy_init();
  cr_assert_not_null(hx_curl);
  const char *env = getenv("FL_HOSTILE_SEED");
  hx_seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
  hx_rs = hx_seed * 0x9e3779b97f4a7c15ULL + 1;
  fprintf(stderr, "itest_hostile: seed %llu (FL_HOSTILE_SEED to replay)\n",
          (unsigned long long)hx_seed);
}

void hx_teardown(void) {
  curl_easy_cleanup(hx_curl);
  fl_h_coord_stop(&hx_coord, SIGTERM);
  fl_h_coord_cleanup(&hx_coord);
  fl_h_db_drop(hx_db);
}

int64_t hx_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ----- seeded randomness (xorshift64*) ---------------------------------------------------- */

uint64_t hx_rnd(void) {
  hx_rs ^= hx_rs >> 12;
  hx_rs ^= hx_rs << 25;
  hx_rs ^= hx_rs >> 27;
  return hx_rs * 2685821657736338717ULL;
}

uint64_t hx_below(uint64_t n) {
  return n ? hx_rnd() % n : 0;
}

void hx_rnd_fill(uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)hx_rnd();
}

/* ----- raw HTTP on one keep-alive connection ---------------------------------------------- */

typedef struct chunked_src {
  size_t left;
} chunked_src;

static size_t on_read(char *buf, size_t sz, size_t n, void *ud) {
  chunked_src *s = ud;
  size_t k = sz * n < s->left ? sz * n : s->left;
  memset(buf, 'x', k);
  s->left -= k;
  return k;
}

int hx_raw(const char *method, const char *path, struct curl_slist *hdrs, const void *body,
           size_t len, bool chunked, fl_h_resp *out) {
  char url[2048];
  chunked_src src = {len};
  memset(out, 0, sizeof *out);
  snprintf(url, sizeof url, "%s%s", hx_coord.url, path);
  curl_easy_reset(hx_curl);
  curl_easy_setopt(hx_curl, CURLOPT_URL, url);
  curl_easy_setopt(hx_curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(hx_curl, CURLOPT_WRITEFUNCTION, fl_sup_resp_write);
  curl_easy_setopt(hx_curl, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(hx_curl, CURLOPT_TIMEOUT, 30L);
  struct curl_slist *h = curl_slist_append(NULL, "Expect:");
  h = curl_slist_append(h, "Content-Type: application/x-protobuf");
  for (struct curl_slist *p = hdrs; p != NULL; p = p->next)
    h = curl_slist_append(h, p->data);
  if (chunked) {
    h = curl_slist_append(h, "Transfer-Encoding: chunked");
    curl_easy_setopt(hx_curl, CURLOPT_POST, 1L);
    curl_easy_setopt(hx_curl, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(hx_curl, CURLOPT_READDATA, &src);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(hx_curl, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(hx_curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  curl_easy_setopt(hx_curl, CURLOPT_HTTPHEADER, h);
  CURLcode rc = curl_easy_perform(hx_curl);
  if (rc == CURLE_OK)
    curl_easy_getinfo(hx_curl, CURLINFO_RESPONSE_CODE, &out->status);
  curl_slist_free_all(h);
  if (rc != CURLE_OK) {
    fl_h_resp_free(out);
    return -1;
  }
  return 0;
}

/* ----- signed envelopes with every field under the caller's control ----------------------- */

env_spec hx_honest_env(const fl_h_device *d, const char *method, const char *path) {
  return (env_spec){d->key, d->id, hx_wall_ms(), 16, method, path, FL_SIG_LEN, false};
}

/* An upload signed for POST /v1/updates carries its one signature in the UpdateUpload, over
 * the envelope's device id, timestamp and nonce, and an empty envelope signature
 * (docs/SIGNING.md); the signature knobs of e then apply to the update signature. A body that
 * is no UpdateUpload goes out as it is, unsigned. *out receives the body to send (malloc'ed,
 * NULL when body is sent unchanged). Returns true when the body was signed this way. */
static bool sign_upload(const env_spec *e, const Fl__V1__SignedRequest *sr, const uint8_t *body,
                        size_t len, uint8_t **out, size_t *out_len) {
  *out = NULL;
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, len, body);
  if (u == NULL)
    return false;
  uint8_t digest[FL_SHA256_LEN], sig[2 * FL_SIG_LEN];
  ProtobufCBinaryData old = u->signature;
  hx_rnd_fill(sig, sizeof sig);
  cr_assert_eq(fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u,
                                 NULL, digest),
               0);
  cr_assert_eq(fl__sign(e->key, digest, sizeof digest, sig), 0);
  if (e->flip_sig)
    sig[hx_below(FL_SIG_LEN)] ^= (uint8_t)(1u << hx_below(8));
  u->signature = (ProtobufCBinaryData){(size_t)e->sig_len, sig};
  *out_len = fl__v1__update_upload__get_packed_size(u);
  *out = malloc(*out_len + 1);
  cr_assert_not_null(*out);
  fl__v1__update_upload__pack(u, *out);
  u->signature = old;
  fl__v1__update_upload__free_unpacked(u, NULL);
  return true;
}

uint8_t *hx_pack_env(const env_spec *e, const uint8_t *body, size_t len, size_t *out_len) {
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[1024], digest[FL_SHA256_LEN], sig[2 * FL_SIG_LEN];
  uint8_t *signed_body = NULL;
  size_t nl = e->nonce_len < sizeof nonce ? e->nonce_len : sizeof nonce;
  hx_rnd_fill(nonce, nl);
  sr.device_id = e->device_id;
  sr.timestamp_ms = e->timestamp_ms;
  sr.nonce = (ProtobufCBinaryData){nl, nonce};
  sr.body = (ProtobufCBinaryData){len, (uint8_t *)body};
  bool upload = strcmp(e->sign_method, "POST") == 0 && strcmp(e->sign_path, "/v1/updates") == 0;
  if (upload) {
    size_t sl = 0;
    if (sign_upload(e, &sr, body, len, &signed_body, &sl))
      sr.body = (ProtobufCBinaryData){sl, signed_body};
  } else {
    cr_assert_eq(fl__request_digest(e->sign_method, e->sign_path, sr.device_id, sr.timestamp_ms,
                                    nonce, nl, body ? body : (const uint8_t *)"", len, digest),
                 0);
    hx_rnd_fill(sig, sizeof sig);
    cr_assert_eq(fl__sign(e->key, digest, sizeof digest, sig), 0);
    if (e->flip_sig)
      sig[hx_below(FL_SIG_LEN)] ^= (uint8_t)(1u << hx_below(8));
    sr.signature = (ProtobufCBinaryData){(size_t)e->sig_len, sig};
  }
  *out_len = fl__v1__signed_request__get_packed_size(&sr);
  uint8_t *buf = malloc(*out_len + 1);
  cr_assert_not_null(buf);
  fl__v1__signed_request__pack(&sr, buf);
  free(signed_body);
  return buf;
}

static char *to_b64(const uint8_t *p, size_t n) {
  char *s = malloc(4 * ((n + 2) / 3) + 1);
  cr_assert_not_null(s);
  EVP_EncodeBlock((unsigned char *)s, p, (int)n);
  return s;
}

/* Sends an envelope: as the body of a POST, or base64 in X-FL-Auth for a GET. */
int hx_send_env(const char *method, const char *path, const uint8_t *env, size_t n,
                fl_h_resp *out) {
  if (strcmp(method, "GET") != 0)
    return hx_raw(method, path, NULL, env, n, false, out);
  char *b = to_b64(env, n), *line = malloc(strlen(b) + 16);
  cr_assert_not_null(line);
  sprintf(line, "X-FL-Auth: %s", b);
  struct curl_slist *h = curl_slist_append(NULL, line);
  int rc = hx_raw("GET", path, h, NULL, 0, false, out);
  curl_slist_free_all(h);
  free(line);
  free(b);
  return rc;
}

int hx_signed_req(const env_spec *e, const char *method, const char *path, const uint8_t *body,
                  size_t len, fl_h_resp *out) {
  size_t n;
  uint8_t *env = hx_pack_env(e, body, len, &n);
  int rc = hx_send_env(method, path, env, n, out);
  free(env);
  return rc;
}

/* ----- state before and after ------------------------------------------------------------- */

static const char *const STATE_SQL[] = {
    "SELECT count(*) FROM rounds",
    "SELECT coalesce(sum(accepted), 0) FROM rounds",
    "SELECT coalesce(sum(assigned), 0) FROM rounds",
    "SELECT count(*) FROM rounds WHERE state = 'open'",
    "SELECT count(*) FROM acceptances",
    "SELECT count(*) FROM assignments",
    "SELECT count(*) FROM partials",
    "SELECT count(*) FROM devices",
    "SELECT count(*) FROM devices WHERE state = 'active'",
    "SELECT count(*) FROM versions",
    "SELECT count(*) FROM enrollment_tokens WHERE used_at IS NOT NULL",
    "SELECT count(*) FROM evaluations",
    "SELECT count(*) FROM models",
    "SELECT count(*) FROM plans",
    "SELECT count(*) FROM audit_log",
};
_Static_assert(sizeof STATE_SQL / sizeof STATE_SQL[0] == N_STATE, "N_STATE counts STATE_SQL");

void hx_snapshot(int64_t out[N_STATE]) {
  for (size_t i = 0; i < N_STATE; i++) {
    out[i] = fl_h_db_int(hx_db, STATE_SQL[i]);
    cr_assert_geq(out[i], 0, "%s", STATE_SQL[i]);
  }
}

void hx_assert_unchanged(const int64_t before[N_STATE]) {
  int64_t after[N_STATE];
  hx_snapshot(after);
  for (size_t i = 0; i < N_STATE; i++)
    cr_expect_eq(after[i], before[i], "%s: %lld before, %lld after", STATE_SQL[i],
                 (long long)before[i], (long long)after[i]);
}

/* The end of the coordinator's log, for a failure report (the directory goes at teardown). */
static void dump_log(void) {
  char path[320], cmd[400];
  snprintf(path, sizeof path, "%s/coordinator.log", hx_coord.dir);
  snprintf(cmd, sizeof cmd, "grep -v 'event=http_request' '%s' | tail -n 40 >&2", path);
  if (system(cmd) != 0)
    fprintf(stderr, "itest_hostile: cannot show %s\n", path);
}

void hx_assert_alive(void) {
  int status;
  pid_t w = waitpid(hx_coord.pid, &status, WNOHANG);
  if (w != 0) {
    dump_log();
    hx_coord.pid = 0; /* reaped: teardown must not signal a recycled pid */
  }
  cr_assert_eq(w, 0, "the coordinator died");
  fl_h_resp r;
  cr_assert_eq(hx_raw("GET", "/healthz", NULL, NULL, 0, false, &r), 0);
  cr_assert_eq(r.status, 200);
  fl_h_resp_free(&r);
}

/* ----- the fleet under attack ------------------------------------------------------------- */

void hx_scene_build(scene *s) {
  Fl__V1__CheckInResponse *resp = NULL;
  cr_assert_eq(fl_h_model_and_plan(&hx_coord, "hostile", FL_H_SMALL_SPEC,
                                   "{\"participants\":50,\"deadline_s\":3600,\"clip_norm\":5}",
                                   &s->model_id, &s->round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&hx_coord, s->dev, 3), 0);
  cr_assert_eq(fl_h_checkin(&hx_coord, &s->dev[0], s->model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  cr_assert_eq(fl_h_download(&hx_coord, &s->dev[0], s->model_id, 1, &s->base), 0);
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/devices/%llu/revoke", (unsigned long long)s->dev[1].id);
  json_decref(fl_h_admin_ok(&hx_coord, "POST", path, NULL));
}

void hx_scene_free(scene *s) {
  fl__v1__model_version__free_unpacked(s->base, NULL);
  for (int i = 0; i < 3; i++)
    fl_h_device_free(&s->dev[i]);
}

void hx_upd_init(upd *x, const scene *s) {
  memset(x, 0, sizeof *x);
  fl__v1__update_upload__init(&x->u);
  size_t nt = s->base->n_weights;
  cr_assert_leq(nt + 1, UPD_MAX_T);
  for (size_t i = 0; i < nt; i++) {
    const Fl__V1__Tensor *b = s->base->weights[i];
    Fl__V1__Tensor *t = &x->t[i];
    fl__v1__tensor__init(t);
    t->encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
    t->count = x->count0[i] = b->count;
    t->n_shape = b->n_shape;
    memcpy(x->shape[i], b->shape, b->n_shape * sizeof *b->shape);
    t->shape = x->shape[i];
    x->data[i] = calloc(b->count * 4 + 1, 1);
    cr_assert_not_null(x->data[i]);
    t->data = (ProtobufCBinaryData){b->count * 4, x->data[i]};
    x->tp[i] = t;
  }
  x->u.round_id = s->round_id;
  x->u.model_id = s->model_id;
  x->u.base_version = 1;
  x->u.n_delta = nt;
  x->u.delta = x->tp;
  x->u.loss = 0.5f;
  /* Zero samples: whatever else survives the mutations, the update is refused, and that check
   * comes after every tensor has been decoded (docs/API.md 1.6). */
  x->u.sample_count = 0;
}

void hx_upd_free(upd *x) {
  for (int i = 0; i < UPD_MAX_T; i++) {
    free(x->data[i]);
    free(x->idx[i]);
  }
}

/* Replaces the buffer in *slot (owned by the upd) with a new one of len bytes. */
uint8_t *hx_upd_buf(uint8_t **slot, size_t len) {
  free(*slot);
  *slot = malloc(len + 1);
  cr_assert_not_null(*slot);
  return *slot;
}

uint8_t *hx_pack_update(upd *x, size_t *len) {
  x->u.signature = (ProtobufCBinaryData){0, NULL};
  *len = fl__v1__update_upload__get_packed_size(&x->u);
  uint8_t *buf = malloc(*len + 1);
  cr_assert_not_null(buf);
  fl__v1__update_upload__pack(&x->u, buf);
  return buf;
}

uint8_t *hx_checkin_body(uint64_t model_id, uint64_t running_version, uint64_t running_model_id,
                         size_t *len) {
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  ci.model_id = model_id;
  ci.running_version = running_version;
  ci.running_model_id = running_model_id;
  *len = fl__v1__check_in_request__get_packed_size(&ci);
  uint8_t *buf = malloc(*len + 1);
  cr_assert_not_null(buf);
  fl__v1__check_in_request__pack(&ci, buf);
  return buf;
}

/* ----- one answer ------------------------------------------------------------------------- */

/* The status of an answer, its fl.v1.Error reason in why; frees the answer. */
long hx_status_reason(int rc, fl_h_resp *r, char *why, size_t n) {
  cr_assert_eq(rc, 0, "transport error: is the coordinator alive?");
  long st = r->status;
  snprintf(why, n, "%s", st == 200 ? "" : fl_h_error_reason(r));
  fl_h_resp_free(r);
  return st;
}
