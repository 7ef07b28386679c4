/*
 * Hostile input against the coordinator's device API (docs/API.md 1.2: "a refusal changes no
 * state"). A seeded generator sends a few thousand random, truncated and mutated protobuf
 * bodies and headers to every device endpoint, both as unauthenticated garbage and as properly
 * signed requests whose inner messages are malformed (so that the parsers behind the signature
 * check are reached too). Every answer must be a 4xx carrying an fl.v1.Error reason (a check-in
 * or a download that stays valid after a mutation may be answered 200: it changes nothing);
 * afterwards the process is alive, /healthz answers, and the rounds, acceptances, devices and
 * versions in the database are as they were.
 *
 * Further tests pin the edge values that once got through (64-bit extremes in timestamps and
 * ids, oversized and chunked bodies, text that is not UTF-8), a revoked device on every
 * endpoint, one enrollment token raced by two devices, and the admin roles on every route.
 *
 * The seed is printed; FL_HOSTILE_SEED=<n> replays a run. Run under pg_virtualenv.
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
#include "harness.h"

#define MAX_BODY 65536
#define FUZZ_ITERATIONS 8000
#define FUZZ_SECONDS 45.0

static char g_db[64];
static fl_h_coord g_coord;
static CURL *g_curl;
static uint64_t g_seed, g_rs;

static void setup(void) {
  static const char *const extra[] = {"--max-body=65536", NULL};
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, extra), 0, "coordinator start");
  g_curl = curl_easy_init();
  cr_assert_not_null(g_curl);
  const char *env = getenv("FL_HOSTILE_SEED");
  g_seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
  g_rs = g_seed * 0x9e3779b97f4a7c15ULL + 1;
  fprintf(stderr, "itest_hostile: seed %llu (FL_HOSTILE_SEED to replay)\n",
          (unsigned long long)g_seed);
}

static void teardown(void) {
  curl_easy_cleanup(g_curl);
  fl_h_coord_stop(&g_coord, SIGTERM);
  fl_h_coord_cleanup(&g_coord);
  fl_h_db_drop(g_db);
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ----- seeded randomness (xorshift64*) ---------------------------------------------------- */

static uint64_t rnd(void) {
  g_rs ^= g_rs >> 12;
  g_rs ^= g_rs << 25;
  g_rs ^= g_rs >> 27;
  return g_rs * 2685821657736338717ULL;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

static void rnd_fill(uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)rnd();
}

/* 64-bit values that break careless code: the extremes, the signed boundary, small ones. */
static uint64_t edgy_u64(void) {
  static const uint64_t v[] = {0, 1, 2, 1000, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
                               (uint64_t)INT64_MAX, (uint64_t)INT64_MAX + 1, UINT64_MAX,
                               UINT64_MAX - 1};
  return below(4) == 0 ? rnd() : v[below(sizeof v / sizeof v[0])];
}

static float edgy_float(void) {
  static const float v[] = {NAN, INFINITY, -INFINITY, -1.0f, FLT_MAX, -FLT_MAX, 1e38f, 0.0f,
                            -0.0f, 1e-45f, 0.5f};
  return v[below(sizeof v / sizeof v[0])];
}

/* ----- raw HTTP on one keep-alive connection ---------------------------------------------- */

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

/* One request; body_len > MAX_BODY with `chunked` streams that many bytes without a length.
 * Returns 0 with *out set, -1 on a transport error. */
static int raw(const char *method, const char *path, struct curl_slist *hdrs, const void *body,
               size_t len, bool chunked, fl_h_resp *out) {
  char url[2048];
  chunked_src src = {len};
  memset(out, 0, sizeof *out);
  snprintf(url, sizeof url, "%s%s", g_coord.url, path);
  curl_easy_reset(g_curl);
  curl_easy_setopt(g_curl, CURLOPT_URL, url);
  curl_easy_setopt(g_curl, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(g_curl, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(g_curl, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(g_curl, CURLOPT_TIMEOUT, 30L);
  struct curl_slist *h = curl_slist_append(NULL, "Expect:");
  h = curl_slist_append(h, "Content-Type: application/x-protobuf");
  for (struct curl_slist *p = hdrs; p != NULL; p = p->next)
    h = curl_slist_append(h, p->data);
  if (chunked) {
    h = curl_slist_append(h, "Transfer-Encoding: chunked");
    curl_easy_setopt(g_curl, CURLOPT_POST, 1L);
    curl_easy_setopt(g_curl, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(g_curl, CURLOPT_READDATA, &src);
  } else if (strcmp(method, "GET") != 0) {
    curl_easy_setopt(g_curl, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(g_curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  }
  curl_easy_setopt(g_curl, CURLOPT_HTTPHEADER, h);
  CURLcode rc = curl_easy_perform(g_curl);
  if (rc == CURLE_OK)
    curl_easy_getinfo(g_curl, CURLINFO_RESPONSE_CODE, &out->status);
  curl_slist_free_all(h);
  if (rc != CURLE_OK) {
    fl_h_resp_free(out);
    return -1;
  }
  return 0;
}

/* ----- signed envelopes with every field under the caller's control ----------------------- */

typedef struct env_spec {
  const fl_key *key;        /* signs the request digest (uploads: the upload digest) */
  uint64_t device_id;
  int64_t timestamp_ms;
  size_t nonce_len;         /* 16 for an honest request */
  const char *sign_method;  /* method and path in the digest (may differ from the request) */
  const char *sign_path;
  int sig_len;              /* 64 for an honest signature */
  bool flip_sig;
} env_spec;

static env_spec honest_env(const fl_h_device *d, const char *method, const char *path) {
  return (env_spec){d->key, d->id, wall_ms(), 16, method, path, FL_SIG_LEN, false};
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
  rnd_fill(sig, sizeof sig);
  cr_assert_eq(fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data,
                                 sr->nonce.len, u, NULL, digest),
               0);
  cr_assert_eq(fl__sign(e->key, digest, sizeof digest, sig), 0);
  if (e->flip_sig)
    sig[below(FL_SIG_LEN)] ^= (uint8_t)(1u << below(8));
  u->signature = (ProtobufCBinaryData){(size_t)e->sig_len, sig};
  *out_len = fl__v1__update_upload__get_packed_size(u);
  *out = malloc(*out_len + 1);
  cr_assert_not_null(*out);
  fl__v1__update_upload__pack(u, *out);
  u->signature = old;
  fl__v1__update_upload__free_unpacked(u, NULL);
  return true;
}

static uint8_t *pack_env(const env_spec *e, const uint8_t *body, size_t len, size_t *out_len) {
  Fl__V1__SignedRequest sr = FL__V1__SIGNED_REQUEST__INIT;
  uint8_t nonce[1024], digest[FL_SHA256_LEN], sig[2 * FL_SIG_LEN];
  uint8_t *signed_body = NULL;
  size_t nl = e->nonce_len < sizeof nonce ? e->nonce_len : sizeof nonce;
  rnd_fill(nonce, nl);
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
    rnd_fill(sig, sizeof sig);
    cr_assert_eq(fl__sign(e->key, digest, sizeof digest, sig), 0);
    if (e->flip_sig)
      sig[below(FL_SIG_LEN)] ^= (uint8_t)(1u << below(8));
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
static int send_env(const char *method, const char *path, const uint8_t *env, size_t n,
                    fl_h_resp *out) {
  if (strcmp(method, "GET") != 0)
    return raw(method, path, NULL, env, n, false, out);
  char *b = to_b64(env, n), *line = malloc(strlen(b) + 16);
  cr_assert_not_null(line);
  sprintf(line, "X-FL-Auth: %s", b);
  struct curl_slist *h = curl_slist_append(NULL, line);
  int rc = raw("GET", path, h, NULL, 0, false, out);
  curl_slist_free_all(h);
  free(line);
  free(b);
  return rc;
}

static int signed_req(const env_spec *e, const char *method, const char *path,
                      const uint8_t *body, size_t len, fl_h_resp *out) {
  size_t n;
  uint8_t *env = pack_env(e, body, len, &n);
  int rc = send_env(method, path, env, n, out);
  free(env);
  return rc;
}

/* ----- verdicts --------------------------------------------------------------------------- */

typedef struct tally {
  int sent, bad;
  char first[8][400];
  int n_reasons;
  char reason[48][40]; /* refusal reasons seen, with counts: the fuzz must reach deep checks */
  int count[48];
} tally;

static void count_reason(tally *t, const fl_h_resp *r) {
  const char *why = r->status == 200 || r->status == 304 ? "(success)" : fl_h_error_reason(r);
  for (int i = 0; i < t->n_reasons; i++)
    if (strcmp(t->reason[i], why) == 0) {
      t->count[i]++;
      return;
    }
  if (t->n_reasons < 48) {
    snprintf(t->reason[t->n_reasons], sizeof t->reason[0], "%s", why);
    t->count[t->n_reasons++] = 1;
  }
}

static int seen(const tally *t, const char *reason) {
  for (int i = 0; i < t->n_reasons; i++)
    if (strcmp(t->reason[i], reason) == 0)
      return t->count[i];
  return 0;
}

/* A refusal as docs/API.md 1.2 promises it: 4xx with an fl.v1.Error that names a reason.
 * Returns true when it is one; otherwise describes the answer in why. */
static bool is_refusal(const fl_h_resp *r, char *why, size_t n) {
  if (r->status < 400 || r->status > 499) {
    snprintf(why, n, "HTTP %ld (%s)", r->status, r->len ? fl_h_error_reason(r) : "no body");
    return false;
  }
  Fl__V1__Error *e = r->len ? fl__v1__error__unpack(NULL, r->len, r->data) : NULL;
  bool ok = e != NULL && e->reason != NULL && e->reason[0] != '\0';
  if (!ok)
    snprintf(why, n, "HTTP %ld without an fl.v1.Error reason (%zu bytes: %.40s)", r->status,
             r->len, r->len ? (const char *)r->data : "");
  fl__v1__error__free_unpacked(e, NULL);
  return ok;
}

/* Records one answer: transport errors and non-refusals count as failures, except a 200/304
 * where `may_succeed` (a valid check-in or download changes nothing). */
static void judge(tally *t, const char *what, int rc, fl_h_resp *r, bool may_succeed) {
  char why[160];
  t->sent++;
  bool ok;
  if (rc != 0) {
    snprintf(why, sizeof why, "transport error (coordinator gone?)");
    ok = false;
  } else if (may_succeed && (r->status == 200 || r->status == 304)) {
    ok = true;
  } else {
    ok = is_refusal(r, why, sizeof why);
  }
  if (!ok) {
    if (t->bad < 8)
      snprintf(t->first[t->bad], sizeof t->first[0], "%s: %s", what, why);
    t->bad++;
  }
  if (rc == 0) {
    count_reason(t, r);
    fl_h_resp_free(r);
  }
}

static void report(const tally *t, const char *phase) {
  fprintf(stderr, "itest_hostile: %s: %d requests, %d not refused properly\n", phase, t->sent,
          t->bad);
  for (int i = 0; i < t->bad && i < 8; i++)
    fprintf(stderr, "  %s\n", t->first[i]);
  for (int i = 0; i < t->n_reasons; i++)
    fprintf(stderr, "  %6d %s\n", t->count[i], t->reason[i]);
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
#define N_STATE (sizeof STATE_SQL / sizeof STATE_SQL[0])

static void snapshot(int64_t out[N_STATE]) {
  for (size_t i = 0; i < N_STATE; i++) {
    out[i] = fl_h_db_int(g_db, STATE_SQL[i]);
    cr_assert_geq(out[i], 0, "%s", STATE_SQL[i]);
  }
}

static void assert_unchanged(const int64_t before[N_STATE]) {
  int64_t after[N_STATE];
  snapshot(after);
  for (size_t i = 0; i < N_STATE; i++)
    cr_expect_eq(after[i], before[i], "%s: %lld before, %lld after", STATE_SQL[i],
                 (long long)before[i], (long long)after[i]);
}

/* The end of the coordinator's log, for a failure report (the directory goes at teardown). */
static void dump_log(void) {
  char path[320], cmd[400];
  snprintf(path, sizeof path, "%s/coordinator.log", g_coord.dir);
  snprintf(cmd, sizeof cmd, "grep -v 'event=http_request' '%s' | tail -n 40 >&2", path);
  if (system(cmd) != 0)
    fprintf(stderr, "itest_hostile: cannot show %s\n", path);
}

static void assert_alive(void) {
  int status;
  pid_t w = waitpid(g_coord.pid, &status, WNOHANG);
  if (w != 0) {
    dump_log();
    g_coord.pid = 0; /* reaped: teardown must not signal a recycled pid */
  }
  cr_assert_eq(w, 0, "the coordinator died");
  fl_h_resp r;
  cr_assert_eq(raw("GET", "/healthz", NULL, NULL, 0, false, &r), 0);
  cr_assert_eq(r.status, 200);
  fl_h_resp_free(&r);
}

/* ----- the fleet under attack ------------------------------------------------------------- */

typedef struct scene {
  uint64_t model_id, round_id;
  fl_h_device dev[3]; /* 0: assigned to the open round, 1: revoked, 2: enrolled, idle */
  Fl__V1__ModelVersion *base;
} scene;

static void scene_build(scene *s) {
  Fl__V1__CheckInResponse *resp = NULL;
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "hostile", FL_H_SMALL_SPEC,
                                   "{\"participants\":50,\"deadline_s\":3600,\"clip_norm\":5}",
                                   &s->model_id, &s->round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, s->dev, 3), 0);
  cr_assert_eq(fl_h_checkin(&g_coord, &s->dev[0], s->model_id, &resp), 0);
  cr_assert_eq(resp->assignment_case, FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  cr_assert_eq(fl_h_download(&g_coord, &s->dev[0], s->model_id, 1, &s->base), 0);
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/devices/%llu/revoke", (unsigned long long)s->dev[1].id);
  json_decref(fl_h_admin_ok(&g_coord, "POST", path, NULL));
}

static void scene_free(scene *s) {
  fl__v1__model_version__free_unpacked(s->base, NULL);
  for (int i = 0; i < 3; i++)
    fl_h_device_free(&s->dev[i]);
}

/* An UpdateUpload whose tensors, shapes and buffers the mutators may replace; every buffer is
 * owned here and freed by upd_free. */
#define UPD_MAX_T 8
typedef struct upd {
  Fl__V1__UpdateUpload u;
  Fl__V1__Tensor t[UPD_MAX_T];
  Fl__V1__Tensor *tp[UPD_MAX_T];
  uint32_t shape[UPD_MAX_T][8];
  uint8_t *data[UPD_MAX_T], *idx[UPD_MAX_T];
  uint64_t count0[UPD_MAX_T]; /* the model's counts: buffer sizes never follow a mutated one */
} upd;

static void upd_init(upd *x, const scene *s) {
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

static void upd_free(upd *x) {
  for (int i = 0; i < UPD_MAX_T; i++) {
    free(x->data[i]);
    free(x->idx[i]);
  }
}

/* Replaces the buffer in *slot (owned by the upd) with a new one of len bytes. */
static uint8_t *upd_buf(uint8_t **slot, size_t len) {
  free(*slot);
  *slot = malloc(len + 1);
  cr_assert_not_null(*slot);
  return *slot;
}

static void mutate_update(upd *x, size_t nt) {
  size_t i = below(nt), n0 = (size_t)x->count0[i];
  Fl__V1__Tensor *t = &x->t[i];
  switch (below(12)) {
    case 0: { /* shape: any number of dimensions, extreme sizes */
      t->n_shape = below(9);
      static const uint32_t dims[] = {0, 1, 2, 3, 4, 6, 65536, UINT32_MAX};
      for (size_t d = 0; d < t->n_shape; d++)
        x->shape[i][d] = below(3) ? dims[below(8)] : (uint32_t)rnd();
      t->shape = x->shape[i];
      break;
    }
    case 1: /* count */
      t->count = below(2) ? edgy_u64() : t->count + below(3) - 1;
      break;
    case 2: /* an encoding the data does not fit, or none at all */
      t->encoding = (Fl__V1__Encoding)(below(2) ? below(8) : (uint32_t)rnd());
      break;
    case 3: { /* data of another length with random bytes (NaNs included) */
      size_t len = below(2 * t->data.len + 9);
      uint8_t *p = upd_buf(&x->data[i], len);
      rnd_fill(p, len);
      t->data = (ProtobufCBinaryData){len, p};
      break;
    }
    case 4: { /* top-k with indices in and out of range, unsorted, repeated */
      size_t k = below(n0 + 3);
      uint8_t *d = upd_buf(&x->data[i], 4 * k), *ix = upd_buf(&x->idx[i], 4 * k + 4);
      uint32_t prev = 0;
      int style = (int)below(4);
      for (size_t j = 0; j < k; j++) {
        float v = (float)(below(1000)) / 1000.0f;
        uint32_t id = style == 0   ? prev + (uint32_t)below(3)
                      : style == 1 ? (uint32_t)rnd()
                      : style == 2 ? (uint32_t)(k - j)
                                   : (uint32_t)n0;
        prev = id;
        memcpy(d + 4 * j, &v, 4);
        memcpy(ix + 4 * j, &id, 4);
      }
      t->encoding = FL__V1__ENCODING__ENCODING_TOPK;
      t->data = (ProtobufCBinaryData){4 * k, d};
      t->indices = (ProtobufCBinaryData){4 * k + (below(4) == 0 ? 4 : 0), ix};
      break;
    }
    case 5: { /* int8 with a hostile scale */
      uint8_t *p = upd_buf(&x->data[i], n0);
      rnd_fill(p, n0);
      t->encoding = FL__V1__ENCODING__ENCODING_INT8;
      t->data = (ProtobufCBinaryData){n0, p};
      t->scale = edgy_float();
      break;
    }
    case 6: /* one non-finite float32 */
      if (t->data.len >= 4 && t->encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
        float v = below(2) ? NAN : INFINITY;
        memcpy(t->data.data + 4 * below(t->data.len / 4), &v, 4);
      }
      break;
    case 7: { /* float16 with random halves (infinities and NaNs among them) */
      uint8_t *p = upd_buf(&x->data[i], 2 * n0);
      rnd_fill(p, 2 * n0);
      p[1] |= 0x7c; /* at least the first half is inf or NaN */
      t->encoding = FL__V1__ENCODING__ENCODING_FLOAT16;
      t->data = (ProtobufCBinaryData){2 * n0, p};
      break;
    }
    case 8: /* too few or too many tensors */
      x->u.n_delta = below(3) == 0 ? 0 : (below(2) ? nt - 1 : nt + 1);
      if (x->u.n_delta == nt + 1) { /* a deep copy: later mutations free the original's */
        Fl__V1__Tensor *c = &x->t[nt];
        *c = x->t[nt - 1];
        memcpy(x->shape[nt], x->shape[nt - 1], sizeof x->shape[nt]);
        c->shape = c->n_shape ? x->shape[nt] : NULL;
        c->data.data = upd_buf(&x->data[nt], c->data.len);
        if (c->data.len)
          memcpy(c->data.data, x->t[nt - 1].data.data, c->data.len);
        c->indices.data = upd_buf(&x->idx[nt], c->indices.len);
        if (c->indices.len)
          memcpy(c->indices.data, x->t[nt - 1].indices.data, c->indices.len);
        x->tp[nt] = c;
      }
      break;
    case 9: /* ids */
      if (below(2))
        x->u.round_id = edgy_u64();
      else if (below(2))
        x->u.model_id = edgy_u64();
      else
        x->u.base_version = edgy_u64();
      break;
    case 10: /* non-finite header values */
      x->u.loss = edgy_float();
      x->u.norm = edgy_float();
      break;
    default: /* dimensions whose product overflows 64 bits */
      t->n_shape = 4;
      for (int d = 0; d < 4; d++)
        x->shape[i][d] = 65536;
      t->shape = x->shape[i];
      t->count = below(2) ? 0 : UINT64_MAX;
      break;
  }
}

/* Packed without its signature: an upload is signed over its envelope's timestamp and nonce,
 * which pack_env chooses (docs/SIGNING.md). */
static uint8_t *pack_update(upd *x, size_t *len) {
  x->u.signature = (ProtobufCBinaryData){0, NULL};
  *len = fl__v1__update_upload__get_packed_size(&x->u);
  uint8_t *buf = malloc(*len + 1);
  cr_assert_not_null(buf);
  fl__v1__update_upload__pack(&x->u, buf);
  return buf;
}

/* A signed update with 1..3 structural mutations (always refused: sample_count is 0 or out of
 * range). */
static uint8_t *hostile_update(const scene *s, size_t *len) {
  upd x;
  upd_init(&x, s);
  for (uint64_t k = 0, n = 1 + below(3); k < n; k++)
    mutate_update(&x, s->base->n_weights);
  if (below(4) == 0)
    x.u.sample_count = below(2) ? UINT64_MAX : (uint64_t)INT64_MAX + 1;
  uint8_t *buf = pack_update(&x, len);
  upd_free(&x);
  return buf;
}

/* Random text of 0..max bytes: printable, or any bytes (not UTF-8, embedded NULs cut it). */
static char *rnd_text(size_t max) {
  size_t n = below(max + 1);
  char *p = malloc(n + 1);
  cr_assert_not_null(p);
  bool printable = below(2);
  for (size_t i = 0; i < n; i++) {
    p[i] = printable ? (char)(' ' + below(95)) : (char)(1 + below(255));
  }
  p[n] = '\0';
  return p;
}

/* An evaluation report for a version that does not exist (so never recorded), with random
 * metrics and ids. */
static uint8_t *hostile_eval(const scene *s, size_t *len) {
  Fl__V1__EvalReport e = FL__V1__EVAL_REPORT__INIT;
  Fl__V1__Metric m[5], *mp[5];
  char *names[5] = {0};
  e.model_id = below(2) ? s->model_id : edgy_u64();
  e.version = 1000 + below(1000);
  e.sample_count = edgy_u64();
  e.gate_id = below(2) ? 0 : edgy_u64();
  e.n_metrics = below(6);
  for (size_t i = 0; i < e.n_metrics; i++) {
    fl__v1__metric__init(&m[i]);
    names[i] = rnd_text(40);
    m[i].name = names[i];
    m[i].value = below(2) ? (double)edgy_float() : (double)below(1000) / 7.0;
    mp[i] = &m[i];
  }
  e.metrics = mp;
  *len = fl__v1__eval_report__get_packed_size(&e);
  uint8_t *buf = malloc(*len + 1);
  cr_assert_not_null(buf);
  fl__v1__eval_report__pack(&e, buf);
  for (int i = 0; i < 5; i++)
    free(names[i]);
  return buf;
}

/* An enrollment with a random (so unknown) token, random labels and firmware, signed by a new
 * key whose public key is in the body, unless the body's key is garbled. */
static uint8_t *hostile_enroll(fl_key *k, size_t *len) {
  Fl__V1__EnrollRequest e = FL__V1__ENROLL_REQUEST__INIT;
  Fl__V1__Label l[4], *lp[4];
  char *texts[10] = {0};
  uint8_t pub[64];
  cr_assert_eq(fl__key_public(k, pub), 0);
  texts[0] = rnd_text(80);
  e.enrollment_token = texts[0];
  size_t pl = below(4) ? FL_PUBKEY_LEN : below(64);
  if (pl != FL_PUBKEY_LEN || below(8) == 0)
    rnd_fill(pub, pl);
  e.public_key = (ProtobufCBinaryData){pl, pub};
  e.n_labels = below(5);
  for (size_t i = 0; i < e.n_labels; i++) {
    fl__v1__label__init(&l[i]);
    texts[1 + 2 * i] = rnd_text(20);
    texts[2 + 2 * i] = rnd_text(20);
    l[i].key = texts[1 + 2 * i];
    l[i].value = texts[2 + 2 * i];
    lp[i] = &l[i];
  }
  e.labels = lp;
  texts[9] = rnd_text(40);
  e.firmware = texts[9];
  *len = fl__v1__enroll_request__get_packed_size(&e);
  uint8_t *buf = malloc(*len + 1);
  cr_assert_not_null(buf);
  fl__v1__enroll_request__pack(&e, buf);
  for (int i = 0; i < 10; i++)
    free(texts[i]);
  return buf;
}

static uint8_t *checkin_body(uint64_t model_id, uint64_t running_version,
                             uint64_t running_model_id, size_t *len) {
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

/* Byte-level damage: bit flips, truncation, insertions, runs of 0xff (endless varints),
 * duplicated slices. Returns a new buffer. */
static uint8_t *mutate_bytes(const uint8_t *in, size_t n, size_t *out_n) {
  size_t cap = 2 * n + 64;
  uint8_t *p = malloc(cap);
  cr_assert_not_null(p);
  memcpy(p, in, n);
  for (uint64_t k = 0, rounds = 1 + below(4); k < rounds; k++) {
    switch (below(5)) {
      case 0:
        if (n > 0)
          p[below(n)] ^= (uint8_t)(1u << below(8));
        break;
      case 1:
        n = below(n + 1);
        break;
      case 2: {
        size_t at = below(n + 1), m = 1 + below(8);
        if (n + m > cap)
          break;
        memmove(p + at + m, p + at, n - at);
        rnd_fill(p + at, m);
        n += m;
        break;
      }
      case 3: {
        size_t at = below(n + 1), m = 1 + below(10);
        for (size_t j = at; j < at + m && j < n; j++)
          p[j] = 0xff;
        break;
      }
      default: {
        size_t a = below(n + 1), m = below(n - a + 1);
        if (n + m > cap)
          break;
        memmove(p + a + m, p + a, n - a);
        n += m;
        break;
      }
    }
  }
  *out_n = n;
  return p;
}

/* ----- the fuzz test ---------------------------------------------------------------------- */

enum { EP_ENROLL, EP_CHECKIN, EP_UPDATE, EP_EVAL, EP_DOWNLOAD, N_EP };
static const char *const EP_PATH[N_EP] = {"/v1/enroll", "/v1/checkin", "/v1/updates",
                                          "/v1/evaluations", "/v1/models/1/versions/1"};
static const char *const EP_METHOD[N_EP] = {"POST", "POST", "POST", "POST", "GET"};

/* The inner message an honest client would send to ep, except that it is always refused
 * (updates and evaluations) or harmless (check-in, download). For enroll *k is the new key. */
static uint8_t *inner_for(const scene *s, int ep, fl_key **k, size_t *len) {
  *len = 0;
  switch (ep) {
    case EP_ENROLL:
      cr_assert_eq(fl__key_generate(k), 0);
      return hostile_enroll(*k, len);
    case EP_CHECKIN:
      return checkin_body(s->model_id, 0, 0, len);
    case EP_UPDATE:
      return hostile_update(s, len);
    case EP_EVAL:
      return hostile_eval(s, len);
    default:
      return NULL;
  }
}

/* One hostile request; returns true when a 200 is an acceptable answer. */
static bool one_attack(const scene *s, int kind, int ep, fl_h_resp *r, int *rc, char *what,
                       size_t wn) {
  const char *method = EP_METHOD[ep], *path = EP_PATH[ep];
  fl_key *k = NULL;
  size_t len = 0;
  uint8_t *body = NULL;
  bool may_succeed = false;
  char dl_path[96];
  if (ep == EP_DOWNLOAD) {
    snprintf(dl_path, sizeof dl_path, "/v1/models/%llu/versions/1",
             (unsigned long long)s->model_id);
    path = dl_path;
  }
  switch (kind) {
    case 0: { /* random bytes as the envelope */
      size_t n = below(4) ? below(256) : below(8192);
      uint8_t *junk = malloc(n + 1);
      cr_assert_not_null(junk);
      rnd_fill(junk, n);
      *rc = send_env(method, path, junk, n, r);
      free(junk);
      snprintf(what, wn, "%s %s random %zu bytes", method, path, n);
      break;
    }
    case 1: { /* a valid envelope, then damaged bytes */
      body = inner_for(s, ep, &k, &len);
      env_spec e = honest_env(&s->dev[0], method, path);
      if (k != NULL) {
        e.key = k;
        e.device_id = 0;
      }
      size_t n, m;
      uint8_t *env = pack_env(&e, body, len, &n), *bad = mutate_bytes(env, n, &m);
      *rc = send_env(method, path, bad, m, r);
      free(env);
      free(bad);
      may_succeed = ep == EP_CHECKIN || ep == EP_DOWNLOAD;
      snprintf(what, wn, "%s %s mutated envelope", method, path);
      break;
    }
    case 2: { /* an honest envelope around a hostile inner message */
      body = inner_for(s, ep, &k, &len);
      if (ep == EP_CHECKIN) {
        free(body);
        body = checkin_body(edgy_u64(), edgy_u64(), edgy_u64(), &len);
        may_succeed = true;
      } else if (ep == EP_DOWNLOAD) {
        static const char *const junk[] = {
            "/v1/models/18446744073709551616/versions/1", "/v1/models/9223372036854775808/versions/1",
            "/v1/models/1/versions/18446744073709551615", "/v1/models/-1/versions/1",
            "/v1/models/0/versions/1",  "/v1/models/1/versions/1x", "/v1/models/1/versions/",
            "/v1/models/1/versions/1/", "/v1/models/+1/versions/1", "/v1/models/%201/versions/1",
            "/v1/models/1/versions/99999999999999999999999999999"};
        path = junk[below(sizeof junk / sizeof junk[0])];
      }
      env_spec e = honest_env(&s->dev[0], method, path);
      if (k != NULL) {
        e.key = k;
        e.device_id = 0;
      }
      *rc = signed_req(&e, method, path, body, len, r);
      snprintf(what, wn, "%s %s signed hostile body", method, path);
      break;
    }
    default: { /* an envelope with one hostile field and a harmless body */
      body = ep == EP_CHECKIN || ep == EP_DOWNLOAD ? checkin_body(s->model_id, 0, 0, &len)
                                                   : inner_for(s, ep, &k, &len);
      if (ep == EP_DOWNLOAD)
        len = 0;
      env_spec e = honest_env(&s->dev[0], method, path);
      if (k != NULL) {
        e.key = k;
        e.device_id = 0;
      }
      static const int64_t ts[] = {INT64_MIN, INT64_MAX, INT64_MIN + 1, -1, 0};
      int64_t win = 300000;
      switch (below(9)) {
        case 0:
          e.timestamp_ms = below(2) ? ts[below(5)] : wall_ms() + (below(2) ? 1 : -1) * (win + 1000);
          break;
        case 1:
          e.nonce_len = below(2) ? below(16) : 65 + below(900);
          break;
        case 2:
          e.device_id = below(2) ? edgy_u64() : 424242;
          if (e.device_id == s->dev[0].id || e.device_id == 0)
            e.device_id = UINT64_MAX;
          break;
        case 3: /* the revoked device, correctly signed */
          e.key = s->dev[1].key;
          e.device_id = s->dev[1].id;
          break;
        case 4: /* someone else's key */
          e.key = s->dev[2].key;
          break;
        case 5:
          e.sig_len = (int)below(2 * FL_SIG_LEN);
          if (e.sig_len == FL_SIG_LEN)
            e.sig_len = 0;
          break;
        case 6:
          e.flip_sig = true;
          break;
        case 7: /* signed for another path */
          e.sign_path = EP_PATH[(ep + 1) % N_EP];
          break;
        default: /* signed for another method */
          e.sign_method = strcmp(method, "GET") == 0 ? "POST" : "GET";
          break;
      }
      *rc = signed_req(&e, method, path, body, len, r);
      snprintf(what, wn, "%s %s hostile envelope field", method, path);
      break;
    }
  }
  free(body);
  fl__key_free(k);
  return may_succeed;
}

Test(hostile, garbage_to_every_device_endpoint, .init = setup, .fini = teardown, .timeout = 600) {
  scene s;
  int64_t before[N_STATE];
  tally t = {0};
  scene_build(&s);
  snapshot(before);
  double t0 = mono_s();
  int i;
  for (i = 0; i < FUZZ_ITERATIONS && mono_s() - t0 < FUZZ_SECONDS; i++) {
    fl_h_resp r;
    int rc = -1;
    char what[160];
    int ep = (int)below(N_EP), kind = (int)below(4);
    bool ok200 = one_attack(&s, kind, ep, &r, &rc, what, sizeof what);
    judge(&t, what, rc, &r, ok200);
    if (rc != 0)
      break; /* the coordinator is gone: stop and say so */
  }
  report(&t, "fuzz");
  fprintf(stderr, "itest_hostile: %d requests in %.1f s\n", i, mono_s() - t0);
  assert_alive();
  cr_expect_eq(t.bad, 0, "%d of %d hostile requests were not refused with a 4xx fl.v1.Error "
                         "(first: %s; seed %llu)",
               t.bad, t.sent, t.first[0], (unsigned long long)g_seed);
  cr_expect_geq(t.sent, 1000, "too few requests in the time budget");
  /* Signed hostile bodies must get past authentication to the decoders and the checks after
   * them, or this test would only exercise the envelope parser. */
  static const char *const deep[] = {"bad_shape", "non_finite", "bad_sample_count",
                                     "unknown_round", "unknown_version", "bad_enrollment_token",
                                     "device_revoked", "stale_timestamp", "bad_nonce",
                                     "unknown_device", "bad_signature", "malformed_request"};
  for (size_t k = 0; k < sizeof deep / sizeof deep[0]; k++)
    cr_expect_gt(seen(&t, deep[k]), 0, "no request was refused as %s", deep[k]);
  assert_unchanged(before);
  scene_free(&s);
}

/* ----- edge values, one by one ------------------------------------------------------------ */

/* The status of an answer, its fl.v1.Error reason in why; frees the answer. */
static long status_reason(int rc, fl_h_resp *r, char *why, size_t n) {
  cr_assert_eq(rc, 0, "transport error: is the coordinator alive?");
  long st = r->status;
  snprintf(why, n, "%s", st == 200 ? "" : fl_h_error_reason(r));
  fl_h_resp_free(r);
  return st;
}

#define EXPECT_REFUSAL(rc, r, status, reason)                                                \
  do {                                                                                       \
    char why_[64];                                                                           \
    long st_ = status_reason((rc), (r), why_, sizeof why_);                                    \
    cr_expect(st_ == (status) && strcmp(why_, (reason)) == 0, "%s:%d: got %ld %s, want %d %s", \
              __FILE__, __LINE__, st_, why_, (status), (reason));                            \
  } while (0)

Test(hostile, extreme_values_get_clear_refusals, .init = setup, .fini = teardown, .timeout = 300) {
  scene s;
  int64_t before[N_STATE];
  fl_h_resp r;
  size_t len;
  scene_build(&s);
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  const char *token = json_string_value(json_array_get(json_object_get(tok, "tokens"), 0));
  cr_assert_not_null(token);
  snapshot(before);
  uint8_t *ci = checkin_body(s.model_id, 0, 0, &len);

  /* Timestamps at the ends of int64: the window check once overflowed (UBSan aborted the
   * coordinator on INT64_MIN). */
  static const int64_t ts[] = {INT64_MIN, INT64_MIN + 1, INT64_MAX, -1};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
    env_spec e = honest_env(&s.dev[0], "POST", "/v1/checkin");
    e.timestamp_ms = ts[i];
    EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 401,
                   "stale_timestamp");
  }
  assert_alive();

  /* Device ids above INT64_MAX name no device (they once failed the query: 503). */
  static const uint64_t ids[] = {(uint64_t)INT64_MAX + 1, UINT64_MAX};
  for (size_t i = 0; i < 2; i++) {
    env_spec e = honest_env(&s.dev[0], "POST", "/v1/checkin");
    e.device_id = ids[i];
    EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 401,
                   "unknown_device");
  }

  /* Check-in ids: above INT64_MAX malformed; above INT32_MAX an ordinary unknown model (the
   * round query once compared its parameter as an int4). */
  env_spec e = honest_env(&s.dev[0], "POST", "/v1/checkin");
  free(ci);
  ci = checkin_body((uint64_t)INT64_MAX + 1, 0, 0, &len);
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 400,
                 "malformed_request");
  free(ci);
  ci = checkin_body(s.model_id, 1, UINT64_MAX, &len);
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 400,
                 "malformed_request");
  free(ci);
  ci = checkin_body((uint64_t)1 << 32, 0, 0, &len);
  cr_assert_eq(signed_req(&e, "POST", "/v1/checkin", ci, len, &r), 0);
  cr_expect_eq(r.status, 200, "check-in for model 2^32: %ld %s", r.status, fl_h_error_reason(&r));
  Fl__V1__CheckInResponse *cr = fl__v1__check_in_response__unpack(NULL, r.len, r.data);
  cr_expect(cr != NULL && cr->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY &&
                strcmp(cr->retry->reason, "no_open_round") == 0,
            "model 2^32 has no open round");
  fl__v1__check_in_response__free_unpacked(cr, NULL);
  fl_h_resp_free(&r);
  free(ci);

  /* An otherwise valid update for round 2^63: no such round. */
  upd x;
  upd_init(&x, &s);
  x.u.round_id = (uint64_t)INT64_MAX + 1;
  x.u.sample_count = 10;
  uint8_t *ub = pack_update(&x, &len);
  upd_free(&x);
  e = honest_env(&s.dev[0], "POST", "/v1/updates");
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/updates", ub, len, &r), &r, 404, "unknown_round");
  free(ub);

  /* Evaluation reports: ids above INT64_MAX, sample counts above --max-samples. */
  Fl__V1__EvalReport ev = FL__V1__EVAL_REPORT__INIT;
  uint8_t eb[256];
  ev.model_id = s.model_id;
  ev.version = 1;
  ev.gate_id = (uint64_t)INT64_MAX + 1;
  len = fl__v1__eval_report__pack(&ev, eb);
  e = honest_env(&s.dev[0], "POST", "/v1/evaluations");
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 400,
                 "malformed_request");
  ev.gate_id = 0;
  ev.sample_count = UINT64_MAX;
  len = fl__v1__eval_report__pack(&ev, eb);
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 422,
                 "bad_sample_count");

  /* Path ids: overflow, above INT64_MAX, sign, trailing junk. */
  static const char *const paths[] = {
      "/v1/models/18446744073709551616/versions/1", "/v1/models/9223372036854775808/versions/1",
      "/v1/models/1/versions/99999999999999999999", "/v1/models/-1/versions/1",
      "/v1/models/1/versions/1junk"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    e = honest_env(&s.dev[0], "GET", paths[i]);
    EXPECT_REFUSAL(signed_req(&e, "GET", paths[i], NULL, 0, &r), &r, 404, "not_found");
  }
  /* Unknown device paths and wrong methods answer in the device API's format too. */
  EXPECT_REFUSAL(raw("POST", "/v1/nowhere", NULL, "x", 1, false, &r), &r, 404, "not_found");
  EXPECT_REFUSAL(raw("GET", "/v1/checkin", NULL, NULL, 0, false, &r), &r, 405,
                 "method_not_allowed");
  long st;
  json_decref(fl_h_admin(&g_coord, "GET", "/admin/v1/rounds/18446744073709551616", NULL, &st));
  cr_expect_eq(st, 404);
  json_decref(
      fl_h_admin(&g_coord, "POST", "/admin/v1/devices/9223372036854775808/revoke", NULL, &st));
  cr_expect_eq(st, 404);
  static const char *const lists[] = {"/admin/v1/rounds?model_id=4294967296",
                                      "/admin/v1/channels?model_id=4294967296",
                                      "/admin/v1/rollouts?model_id=4294967296"};
  for (size_t i = 0; i < 3; i++) {
    json_decref(fl_h_admin(&g_coord, "GET", lists[i], NULL, &st));
    cr_expect_eq(st, 200, "%s: %ld", lists[i], st);
  }

  /* Text that is not UTF-8 is refused before it reaches a text column (once a 503), and the
   * enrollment token stays unused. */
  fl_key *k = NULL;
  uint8_t pub[FL_PUBKEY_LEN];
  cr_assert_eq(fl__key_generate(&k), 0);
  cr_assert_eq(fl__key_public(k, pub), 0);
  Fl__V1__EnrollRequest er = FL__V1__ENROLL_REQUEST__INIT;
  Fl__V1__Label lab = FL__V1__LABEL__INIT, *labp = &lab;
  er.enrollment_token = (char *)token;
  er.public_key = (ProtobufCBinaryData){sizeof pub, pub};
  static char bad_utf8[][8] = {"\xff", "\xc0\x80", "\xed\xa0\x80", "ok\x80"};
  for (size_t i = 0; i < 4; i++) {
    er.firmware = i % 2 ? bad_utf8[i] : "fw";
    lab.key = "site";
    lab.value = i % 2 ? "x" : bad_utf8[i];
    er.n_labels = 1;
    er.labels = &labp;
    len = fl__v1__enroll_request__pack(&er, eb);
    env_spec en = {k, 0, wall_ms(), 16, "POST", "/v1/enroll", FL_SIG_LEN, false};
    EXPECT_REFUSAL(signed_req(&en, "POST", "/v1/enroll", eb, len, &r), &r, 400,
                   "malformed_request");
  }
  assert_unchanged(before);
  fl_h_device d = {.key = k};
  cr_expect_eq(fl_h_device_enroll(&g_coord, &d, token), 200, "the token was consumed");
  fl_h_device_free(&d);
  json_decref(tok);
  assert_alive();
  scene_free(&s);
}

/* ----- revoked devices, raced tokens, admin roles ----------------------------------------- */

Test(hostile, revoked_device_is_refused_everywhere, .init = setup, .fini = teardown,
     .timeout = 300) {
  scene s;
  int64_t before[N_STATE];
  fl_h_resp r;
  size_t len;
  scene_build(&s);
  /* The revoked device was assigned before its revocation: that must not let it upload. */
  const fl_h_device *rv = &s.dev[1];
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":1}");
  const char *token = json_string_value(json_array_get(json_object_get(tok, "tokens"), 0));
  cr_assert_not_null(token);
  snapshot(before);

  uint8_t *ci = checkin_body(s.model_id, 0, 0, &len);
  env_spec e = honest_env(rv, "POST", "/v1/checkin");
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/checkin", ci, len, &r), &r, 403, "device_revoked");
  free(ci);

  upd x;
  upd_init(&x, &s);
  x.u.sample_count = 10;
  uint8_t *ub = pack_update(&x, &len);
  upd_free(&x);
  e = honest_env(rv, "POST", "/v1/updates");
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/updates", ub, len, &r), &r, 403, "device_revoked");
  free(ub);

  Fl__V1__EvalReport ev = FL__V1__EVAL_REPORT__INIT;
  uint8_t eb[64];
  ev.model_id = s.model_id;
  ev.version = 1;
  len = fl__v1__eval_report__pack(&ev, eb);
  e = honest_env(rv, "POST", "/v1/evaluations");
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 403,
                 "device_revoked");

  char path[96];
  snprintf(path, sizeof path, "/v1/models/%llu/versions/1", (unsigned long long)s.model_id);
  e = honest_env(rv, "GET", path);
  EXPECT_REFUSAL(signed_req(&e, "GET", path, NULL, 0, &r), &r, 403, "device_revoked");

  /* Its key cannot come back under a new identity with a fresh token. */
  fl_h_device again = {.key = rv->key};
  cr_expect_eq(fl_h_device_enroll(&g_coord, &again, token), 409);
  assert_unchanged(before);
  json_decref(tok);
  scene_free(&s);
}

typedef struct race {
  pthread_barrier_t *go;
  const char *token;
  fl_h_device dev;
  long status;
} race;

static void *race_enroll(void *arg) {
  race *r = arg;
  pthread_barrier_wait(r->go);
  r->status = fl_h_device_enroll(&g_coord, &r->dev, r->token);
  return NULL;
}

/* One enrollment token, two devices at the same instant: exactly one gets an identity. */
Test(hostile, enrollment_token_is_single_use_under_a_race, .init = setup, .fini = teardown,
     .timeout = 300) {
  enum { ROUNDS = 12 };
  json_t *tok = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":12}");
  json_t *list = json_object_get(tok, "tokens");
  cr_assert_eq(json_array_size(list), ROUNDS);
  int64_t devices0 = fl_h_db_int(g_db, "SELECT count(*) FROM devices");
  for (int i = 0; i < ROUNDS; i++) {
    pthread_barrier_t go;
    race rc[2];
    pthread_t th[2];
    pthread_barrier_init(&go, NULL, 2);
    for (int k = 0; k < 2; k++) {
      rc[k] = (race){&go, json_string_value(json_array_get(list, (size_t)i)), {0}, 0};
      cr_assert_eq(fl_h_device_new(&rc[k].dev), 0);
      cr_assert_eq(pthread_create(&th[k], NULL, race_enroll, &rc[k]), 0);
    }
    for (int k = 0; k < 2; k++)
      pthread_join(th[k], NULL);
    pthread_barrier_destroy(&go);
    int ok = (rc[0].status == 200) + (rc[1].status == 200);
    cr_expect_eq(ok, 1, "token %d: statuses %ld and %ld", i, rc[0].status, rc[1].status);
    for (int k = 0; k < 2; k++) {
      if (rc[k].status != 200)
        cr_expect_eq(rc[k].status, 401, "the loser gets bad_enrollment_token, not %ld",
                     rc[k].status);
      fl_h_device_free(&rc[k].dev);
    }
  }
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM devices"), devices0 + ROUNDS);
  json_decref(tok);
}

/* Every mutating admin route refuses a viewer (and the token route an operator) before it
 * reads the body, and nothing is written; missing, unknown and malformed tokens get 401. */
Test(hostile, admin_roles_on_every_route, .init = setup, .fini = teardown, .timeout = 300) {
  scene s;
  int64_t before[N_STATE];
  long st;
  scene_build(&s);
  json_t *v = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/tokens",
                            "{\"role\":\"viewer\",\"name\":\"ro\"}");
  json_t *o = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/tokens",
                            "{\"role\":\"operator\",\"name\":\"op\"}");
  cr_assert(v != NULL && o != NULL);
  fl_h_coord viewer = g_coord, op = g_coord, nobody = g_coord;
  snprintf(viewer.admin_token, sizeof viewer.admin_token, "%s",
           json_string_value(json_object_get(v, "token")));
  snprintf(op.admin_token, sizeof op.admin_token, "%s",
           json_string_value(json_object_get(o, "token")));
  /* The viewer's token with one character changed: a hash lookup finds nothing. */
  snprintf(nobody.admin_token, sizeof nobody.admin_token, "%s", viewer.admin_token);
  nobody.admin_token[0] = nobody.admin_token[0] == 'a' ? 'b' : 'a';
  snapshot(before);

  static const struct {
    const char *method, *path, *body;
  } muts[] = {
      {"POST", "/admin/v1/tokens", "{\"role\":\"admin\",\"name\":\"up\"}"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"count\":1}"},
      {"POST", "/admin/v1/models", "{\"name\":\"m2\",\"spec\":" FL_H_SMALL_SPEC "}"},
      {"POST", "/admin/v1/models/1/plans", "{}"},
      {"POST", "/admin/v1/plans/1/stop", NULL},
      {"POST", "/admin/v1/devices/1/revoke", NULL},
      {"POST", "/admin/v1/channels", "{\"model_id\":1,\"name\":\"stable\",\"version\":1}"},
      {"POST", "/admin/v1/channels/1/rollback", NULL},
      {"POST", "/admin/v1/rollouts", "{\"model_id\":1,\"version\":1}"},
      {"POST", "/admin/v1/rollouts/1/raise", "{\"percent\":50}"},
      {"POST", "/admin/v1/rollouts/1/pause", NULL},
      {"POST", "/admin/v1/rollouts/1/resume", NULL},
      {"POST", "/admin/v1/rollouts/1/promote", NULL},
      {"POST", "/admin/v1/rollouts/1/rollback", NULL},
      {"POST", "/admin/v1/pins", "{\"model_id\":1,\"version\":1,\"device_id\":1}"},
      {"DELETE", "/admin/v1/pins/1", NULL},
  };
  for (size_t i = 0; i < sizeof muts / sizeof muts[0]; i++) {
    json_decref(fl_h_admin(&viewer, muts[i].method, muts[i].path, muts[i].body, &st));
    cr_expect_eq(st, 403, "viewer: %s %s -> %ld", muts[i].method, muts[i].path, st);
    json_decref(fl_h_admin(&nobody, muts[i].method, muts[i].path, muts[i].body, &st));
    cr_expect_eq(st, 401, "unknown token: %s %s -> %ld", muts[i].method, muts[i].path, st);
  }
  /* An operator cannot mint tokens, so no role can be raised from below. */
  static const char *const roles[] = {"admin", "operator", "viewer"};
  for (int i = 0; i < 3; i++) {
    char body[64];
    snprintf(body, sizeof body, "{\"role\":\"%s\",\"name\":\"x\"}", roles[i]);
    json_decref(fl_h_admin(&op, "POST", "/admin/v1/tokens", body, &st));
    cr_expect_eq(st, 403, "operator minting a %s token -> %ld", roles[i], st);
  }
  /* Malformed Authorization headers. */
  static const char *const auths[] = {NULL, "", "Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=",
                                      "bearer x", "Bearer \t"};
  for (size_t i = 0; i < sizeof auths / sizeof auths[0]; i++) {
    struct curl_slist *h = NULL;
    char line[128];
    if (auths[i] != NULL) {
      snprintf(line, sizeof line, "Authorization: %s", auths[i]);
      h = curl_slist_append(h, line);
    }
    fl_h_resp r;
    cr_assert_eq(raw("POST", "/admin/v1/enrollment-tokens", h, "{}", 2, false, &r), 0);
    cr_expect_eq(r.status, 401, "Authorization \"%s\" -> %ld", auths[i] ? auths[i] : "(none)",
                 r.status);
    fl_h_resp_free(&r);
    curl_slist_free_all(h);
  }
  /* Reads stay open to a viewer. */
  json_decref(fl_h_admin(&viewer, "GET", "/admin/v1/models", NULL, &st));
  cr_expect_eq(st, 200);
  json_decref(fl_h_admin(&viewer, "GET", "/admin/v1/audit", NULL, &st));
  cr_expect_eq(st, 200);
  assert_unchanged(before);
  json_decref(v);
  json_decref(o);
  scene_free(&s);
}

/* ----- bodies over --max-body ------------------------------------------------------------- */

static int connect_coord(void) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_coord.port)};
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(fd, 0);
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

/* Reads what the server sends until it closes or goes quiet for timeout_ms; returns the
 * number of bytes (the answer is NUL-terminated in buf). */
static size_t read_answer(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t n = 0;
  struct pollfd p = {fd, POLLIN, 0};
  while (n + 1 < cap && poll(&p, 1, timeout_ms) == 1) {
    ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);
    if (k <= 0)
      break;
    n += (size_t)k;
  }
  buf[n] = '\0';
  return n;
}

/* The status of a raw HTTP answer and whether its body is an fl.v1.Error with `reason`. */
static bool answer_is(const char *buf, size_t n, int status, const char *reason) {
  int st = 0;
  if (sscanf(buf, "HTTP/1.%*d %d", &st) != 1 || st != status)
    return false;
  const char *body = strstr(buf, "\r\n\r\n");
  if (body == NULL)
    return false;
  body += 4;
  fl_h_resp r = {.status = st, .data = (uint8_t *)body, .len = n - (size_t)(body - buf)};
  return strcmp(fl_h_error_reason(&r), reason) == 0;
}

Test(hostile, oversized_bodies_are_refused_before_they_are_read, .init = setup, .fini = teardown,
     .timeout = 120) {
  char buf[4096];
  int64_t before[N_STATE];
  snapshot(before);
  /* A declared length over the limit: answered at once, as an fl.v1.Error. */
  static const char *const lengths[] = {"1000000000000", "65537", "18446744073709551615"};
  int fd;
  for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
    fd = connect_coord();
    int m = snprintf(buf, sizeof buf,
                     "POST /v1/updates HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n",
                     lengths[i]);
    cr_assert_eq(send(fd, buf, (size_t)m, MSG_NOSIGNAL), m);
    size_t n = read_answer(fd, buf, sizeof buf, 5000);
    cr_expect(answer_is(buf, n, 413, "body_too_large"), "Content-Length %s: %.60s", lengths[i],
              buf);
    close(fd);
  }
  /* A length that does not fit 64 bits: libmicrohttpd refuses it itself, before routing. */
  fd = connect_coord();
  const char *huge = "POST /v1/updates HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: 99999999999999999999999\r\n\r\n";
  cr_assert_eq(send(fd, huge, strlen(huge), MSG_NOSIGNAL), (ssize_t)strlen(huge));
  read_answer(fd, buf, sizeof buf, 5000);
  cr_expect_eq(strncmp(buf, "HTTP/1.1 413", 12), 0, "%.40s", buf);
  close(fd);
  /* A chunked body that never ends: refused once it passes the limit, not read to its end
   * (there is none). */
  fd = connect_coord();
  const char *head = "POST /v1/updates HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  cr_assert_eq(send(fd, head, strlen(head), MSG_NOSIGNAL), (ssize_t)strlen(head));
  static char chunk[8192 + 16];
  int hl = snprintf(chunk, sizeof chunk, "2000\r\n");
  memset(chunk + hl, 'x', 8192);
  memcpy(chunk + hl + 8192, "\r\n", 2);
  /* Without sending blocking: once the server stops reading, the socket buffers (a few MB on
   * loopback) fill and sending stops; reading it all would take the whole 64 MB. */
  size_t sent = 0, n = 0, total = (size_t)64 << 20;
  struct pollfd p = {fd, POLLIN, 0};
  while (sent < total) {
    ssize_t k = send(fd, chunk, (size_t)hl + 8194, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      break; /* closed by the server */
    if (k > 0)
      sent += (size_t)k;
    if (poll(&p, 1, k < 0 ? 2000 : 0) == 1) {
      n = read_answer(fd, buf, sizeof buf, 2000);
      break;
    }
    if (k < 0)
      break; /* neither reading nor answering */
  }
  close(fd);
  fprintf(stderr, "itest_hostile: chunked: %zu bytes sent, answer: %.30s\n", sent,
          n ? buf : "(connection closed)");
  cr_expect_lt(sent, total / 2, "the server read %zu bytes of a chunked body over a %d-byte limit",
               sent, MAX_BODY);
  cr_expect(n == 0 || answer_is(buf, n, 413, "body_too_large"), "chunked: %.60s", buf);
  assert_alive();
  assert_unchanged(before);
}

/* ----- the log -------------------------------------------------------------------------- */

static char *read_log(void) {
  char path[320];
  snprintf(path, sizeof path, "%s/coordinator.log", g_coord.dir);
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "%s", path);
  char *buf = calloc(1, (size_t)64 << 20);
  cr_assert_not_null(buf);
  size_t n = fread(buf, 1, ((size_t)64 << 20) - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Tokens and keys never reach the log, whatever requests carry them; the signing key file is
 * 0600; a request path cannot forge a log line (libmicrohttpd decodes %0A into a newline). */
Test(hostile, no_secrets_and_no_forged_lines_in_the_log, .init = setup, .fini = teardown,
     .timeout = 120) {
  scene s;
  fl_h_resp r;
  long st;
  scene_build(&s);
  json_t *v = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/tokens",
                            "{\"role\":\"viewer\",\"name\":\"ro\"}");
  json_t *et = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/enrollment-tokens", "{\"count\":2}");
  cr_assert(v != NULL && et != NULL);
  const char *viewer_tok = json_string_value(json_object_get(v, "token"));
  const char *enroll_tok = json_string_value(json_array_get(json_object_get(et, "tokens"), 0));
  const char *unused_tok = json_string_value(json_array_get(json_object_get(et, "tokens"), 1));
  cr_assert(viewer_tok && enroll_tok && unused_tok);
  /* Use them, rightly and wrongly: refusals are where error paths might echo them. */
  fl_h_device d;
  cr_assert_eq(fl_h_device_new(&d), 0);
  cr_assert_eq(fl_h_device_enroll(&g_coord, &d, enroll_tok), 200);
  cr_assert_eq(fl_h_device_enroll(&g_coord, &s.dev[2], enroll_tok), 401); /* used token */
  fl_h_coord viewer = g_coord;
  snprintf(viewer.admin_token, sizeof viewer.admin_token, "%s", viewer_tok);
  json_decref(fl_h_admin(&viewer, "POST", "/admin/v1/tokens", "{\"role\":\"admin\"}", &st));
  cr_assert_eq(st, 403);
  json_decref(fl_h_admin(&viewer, "POST", "/admin/v1/models", "{not json", &st));
  char bad_auth[128];
  snprintf(bad_auth, sizeof bad_auth, "Authorization: Bearer %sx", unused_tok);
  struct curl_slist *h = curl_slist_append(NULL, bad_auth);
  cr_assert_eq(raw("GET", "/admin/v1/models", h, NULL, 0, false, &r), 0);
  cr_expect_eq(r.status, 401);
  fl_h_resp_free(&r);
  curl_slist_free_all(h);

  /* A path with a newline and a forged event, through both APIs and an unknown route. */
  static const char *const forged[] = {
      "/v1/models/1%0Ats=0%20level=error%20event=forged/versions/1",
      "/admin/v1/rounds/1%0D%0Ats=0%20level=error%20event=forged",
      "/nowhere%0Ats=0%20level=error%20event=forged%22"};
  for (size_t i = 0; i < 3; i++) {
    cr_assert_eq(raw("GET", forged[i], NULL, NULL, 0, false, &r), 0);
    fl_h_resp_free(&r);
  }
  assert_alive();
  cr_assert_eq(fl_h_coord_stop(&g_coord, SIGTERM), 0);

  char *log = read_log();
  const char *secrets[] = {g_coord.admin_token, viewer_tok, enroll_tok, unused_tok};
  for (size_t i = 0; i < 4; i++)
    cr_expect_null(strstr(log, secrets[i]), "secret %zu appears in the log", i);
  cr_expect_null(strstr(log, "PRIVATE KEY"));
  cr_expect_null(strstr(log, "\nts=0 level=error event=forged"), "a request forged a log line");
  cr_expect_null(strstr(log, "\"event=forged"), "a request forged a log line");
  free(log);

  char key[320];
  struct stat sb;
  snprintf(key, sizeof key, "%s/signing-key.pem", g_coord.dir);
  cr_assert_eq(stat(key, &sb), 0);
  cr_expect_eq(sb.st_mode & 0777, 0600, "signing key mode %o", (unsigned)(sb.st_mode & 0777));
  fl_h_device_free(&d);
  json_decref(v);
  json_decref(et);
  scene_free(&s);
}

/* ----- admin values --------------------------------------------------------------------- */

/* Bad values in admin requests are 4xx and change nothing; none reaches PostgreSQL as an
 * out-of-range value (once: 503 for a ttl_s of 2^63-1 seconds and for query ids that are
 * negative or too large; ids that were not numbers listed everything). */
Test(hostile, admin_bad_values_get_4xx, .init = setup, .fini = teardown, .timeout = 120) {
  scene s;
  int64_t before[N_STATE];
  scene_build(&s);
  snapshot(before);
  static const struct {
    const char *method, *path, *body;
  } bad[] = {
      {"GET", "/admin/v1/rounds?model_id=-1", NULL},
      {"GET", "/admin/v1/rounds?model_id=18446744073709551615", NULL},
      {"GET", "/admin/v1/rounds?model_id=99999999999999999999999", NULL},
      {"GET", "/admin/v1/rounds?model_id=abc", NULL},
      {"GET", "/admin/v1/rounds?model_id=1x", NULL},
      {"GET", "/admin/v1/channels?model_id=-1", NULL},
      {"GET", "/admin/v1/rollouts?model_id=9223372036854775808", NULL},
      {"GET", "/admin/v1/fleet?model_id=18446744073709551615", NULL},
      {"GET", "/admin/v1/fleet?model_id=-1", NULL},
      {"GET", "/admin/v1/rounds/-1", NULL},
      {"GET", "/admin/v1/models/18446744073709551616/versions", NULL},
      {"POST", "/admin/v1/models", "{\"name\":\"big\",\"spec\":{\"input_shape\":[4294967296],"
                                   "\"layers\":[{\"type\":\"dense\",\"units\":2}],"
                                   "\"loss\":\"mse\"}}"},
      {"POST", "/admin/v1/models", "{\"name\":\"deep\",\"spec\":{\"input_shape\":[65535,65535,"
                                   "65535],\"layers\":[{\"type\":\"dense\",\"units\":16777216}],"
                                   "\"loss\":\"mse\"}}"},
      {"POST", "/admin/v1/models", "[1,2,3]"},
      {"POST", "/admin/v1/models", "{\"name\":\"x\",\"spec\":" FL_H_SMALL_SPEC "} trailing"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"ttl_s\":9223372036854775807}"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"count\":-1}"},
      {"POST", "/admin/v1/enrollment-tokens", "{\"labels\":[1]}"},
      {"POST", "/admin/v1/tokens", "{\"role\":\"root\"}"},
      {"POST", "/admin/v1/models/1/plans", "{\"deadline_s\":1e300}"},
      {"POST", "/admin/v1/models/1/plans", "{\"participants\":-5}"},
      {"POST", "/admin/v1/models/1/plans", "{\"learning_rate\":\"fast\"}"},
      {"POST", "/admin/v1/channels", "{\"model_id\":1,\"name\":\"stable\",\"version\":-5}"},
      {"POST", "/admin/v1/channels",
       "{\"model_id\":1,\"name\":\"stable\",\"version\":9223372036854775807}"},
      {"POST", "/admin/v1/channels", "{\"model_id\":1,\"name\":\"UPPER case\",\"version\":1}"},
      {"POST", "/admin/v1/pins", "{\"model_id\":1,\"version\":9223372036854775807,"
                                 "\"device_id\":1}"},
      {"POST", "/admin/v1/pins", "{\"model_id\":-1,\"version\":1,\"device_id\":1}"},
      {"POST", "/admin/v1/rollouts", "{\"model_id\":1,\"version\":1,\"percent\":1e308}"},
      {"POST", "/admin/v1/rollouts/9223372036854775807/raise", "{\"percent\":50}"},
      {"DELETE", "/admin/v1/pins/9223372036854775808", NULL},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    long st;
    json_t *j = fl_h_admin(&g_coord, bad[i].method, bad[i].path, bad[i].body, &st);
    cr_expect(st >= 400 && st < 500 && json_is_string(json_object_get(j, "error")),
              "%s %s %s -> %ld", bad[i].method, bad[i].path, bad[i].body ? bad[i].body : "", st);
    json_decref(j);
  }
  assert_alive();
  assert_unchanged(before);
  scene_free(&s);
}

/* ----- expansion on unpack ------------------------------------------------------------ */

static void setup_default_body(void) {
  cr_assert_eq(fl_h_db_create(g_db), 0, "CREATE DATABASE (run under pg_virtualenv)");
  cr_assert_eq(fl_h_coord_start(&g_coord, g_db, NULL, NULL), 0, "coordinator start");
  g_curl = curl_easy_init();
  cr_assert_not_null(g_curl);
  g_seed = 1;
  g_rs = 12345;
}

/* Peak resident memory of the coordinator (kB). */
static long coord_hwm_kb(void) {
  char path[64], line[256];
  long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)g_coord.pid);
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f);
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
      break;
  fclose(f);
  return kb;
}

/* An unauthenticated enrollment of 4 MiB made of empty repeated labels: two bytes each on the
 * wire, a struct and a pointer each once unpacked (about 30-fold, 200 MB and more under ASan),
 * and the EnrollRequest is unpacked before its signature can be checked. Unpacking must stay
 * within a small multiple of the body. */
Test(hostile, repeated_fields_do_not_amplify_memory, .init = setup_default_body,
     .fini = teardown, .timeout = 120) {
  enum { LABELS = 2 << 20 };
  size_t n = 2 * (size_t)LABELS + 64;
  uint8_t *body = malloc(n), *p = body;
  cr_assert_not_null(body);
  *p++ = 0x0a; /* enrollment_token = "t" */
  *p++ = 1;
  *p++ = 't';
  *p++ = 0x12; /* public_key: 32 bytes */
  *p++ = 32;
  memset(p, 7, 32);
  p += 32;
  for (int i = 0; i < LABELS; i++) {
    *p++ = 0x1a; /* labels: an empty Label */
    *p++ = 0;
  }
  fl_key *k = NULL;
  cr_assert_eq(fl__key_generate(&k), 0);
  env_spec e = {k, 0, wall_ms(), 16, "POST", "/v1/enroll", FL_SIG_LEN, false};
  long before = coord_hwm_kb();
  fl_h_resp r;
  int rc = signed_req(&e, "POST", "/v1/enroll", body, (size_t)(p - body), &r);
  cr_assert_eq(rc, 0);
  cr_expect(r.status >= 400 && r.status < 500, "status %ld", r.status);
  fl_h_resp_free(&r);
  long after = coord_hwm_kb();
  fprintf(stderr, "itest_hostile: peak RSS %ld kB -> %ld kB for a %zu-byte enrollment\n", before,
          after, (size_t)(p - body));
  cr_expect_lt(after - before, 64 * 1024, "unpacking grew the coordinator by %ld MB",
               (after - before) / 1024);
  assert_alive();
  fl__key_free(k);
  free(body);
}

/* ----- the norm bound ------------------------------------------------------------------- */

/* The int8 quantisation allowance of the norm bound grows with the tensor's scale, which the
 * device chooses: with a huge scale and a quarter of the values at +-1, any norm fitted under
 * it (docs/API.md 1.6). An honest scale is at most max|x|/127 <= bound/127. */
Test(hostile, int8_scale_cannot_lift_the_norm_bound, .init = setup, .fini = teardown,
     .timeout = 120) {
  scene s;
  int64_t before[N_STATE];
  fl_h_resp r;
  size_t len;
  scene_build(&s);
  snapshot(before);
  static const float scales[] = {1e6f, 1.0f, 5.0f / 127.0f * 1.01f};
  for (size_t k = 0; k < sizeof scales / sizeof scales[0]; k++) {
    upd x;
    upd_init(&x, &s);
    for (size_t i = 0; i < s.base->n_weights; i++) {
      Fl__V1__Tensor *t = &x.t[i];
      size_t n = (size_t)x.count0[i];
      uint8_t *p = upd_buf(&x.data[i], n);
      for (size_t j = 0; j < n; j++)
        p[j] = j % 4 == 0 ? (uint8_t)(j % 8 ? 1 : 0xff) : 0;
      t->encoding = FL__V1__ENCODING__ENCODING_INT8;
      t->data = (ProtobufCBinaryData){n, p};
      t->scale = scales[k];
    }
    x.u.sample_count = 10;
    uint8_t *ub = pack_update(&x, &len);
    upd_free(&x);
    env_spec e = honest_env(&s.dev[0], "POST", "/v1/updates");
    EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/updates", ub, len, &r), &r, 422,
                   "norm_exceeded");
    free(ub);
  }
  assert_unchanged(before);
  /* An honest int8 update (scale = max|x|/127, clipped to the plan's bound of 5) still counts. */
  float delta[43];
  for (int i = 0; i < 43; i++)
    delta[i] = (float)((i % 7) - 3) * 0.1f;
  fl_h_update_opts o = {.encoding = FL__V1__ENCODING__ENCODING_INT8};
  cr_assert_eq(fl_h_upload(&g_coord, &s.dev[0], s.base, s.round_id, delta, 10, &o, &r), 0);
  cr_expect_eq(r.status, 200, "honest int8 update: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  scene_free(&s);
}

/* ----- evaluation gates ----------------------------------------------------------------- */

static bool gate_member(uint64_t device, uint64_t id, double pct) {
  uint8_t buf[64], h[FL_SHA256_LEN];
  size_t n = strlen("fl.v1.gate");
  memcpy(buf, "fl.v1.gate", n);
  for (int i = 0; i < 8; i++) {
    buf[n + (size_t)i] = (uint8_t)(device >> (8 * i));
    buf[n + 8 + (size_t)i] = (uint8_t)(id >> (8 * i));
  }
  fl__sha256(buf, n + 16, h);
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = (v << 8) | h[i];
  return pct >= 100 || (pct > 0 && v < (uint64_t)ldexp(pct / 100.0, 64));
}

/* A gate is decided by the sample it asked (docs/API.md 5.3): a device outside the sample, or
 * outside the rollout's cohort, cannot vote by sending a report nobody asked for (with the
 * largest sample_count, one such report outweighed the whole sample). */
Test(hostile, only_the_gate_sample_reports, .init = setup, .fini = teardown, .timeout = 120) {
  enum { NDEV = 24 };
  fl_h_device dev[NDEV];
  uint64_t model_id, round_id;
  char body[512];
  cr_assert_eq(fl_h_model_and_plan(&g_coord, "gated", FL_H_SMALL_SPEC,
                                   "{\"participants\":1,\"deadline_s\":3600,\"clip_norm\":5}",
                                   &model_id, &round_id),
               0);
  cr_assert_eq(fl_h_enroll_devices(&g_coord, dev, NDEV), 0);
  /* Version 2 from one honest round, so that a rollout has a candidate. */
  Fl__V1__CheckInResponse *resp = NULL;
  Fl__V1__ModelVersion *base = NULL;
  cr_assert_eq(fl_h_checkin(&g_coord, &dev[0], model_id, &resp), 0);
  fl__v1__check_in_response__free_unpacked(resp, NULL);
  cr_assert_eq(fl_h_download(&g_coord, &dev[0], model_id, 1, &base), 0);
  float delta[43] = {0.01f};
  fl_h_resp r;
  cr_assert_eq(fl_h_upload(&g_coord, &dev[0], base, round_id, delta, 10, NULL, &r), 0);
  cr_assert_eq(r.status, 200);
  fl_h_resp_free(&r);
  json_decref(fl_h_wait_round(&g_coord, round_id, "closed", 30000));
  snprintf(body, sizeof body, "{\"model_id\":%llu,\"name\":\"stable\",\"version\":1}",
           (unsigned long long)model_id);
  json_decref(fl_h_admin_ok(&g_coord, "POST", "/admin/v1/channels", body));
  snprintf(body, sizeof body,
           "{\"model_id\":%llu,\"version\":2,\"percent\":100,"
           "\"gate\":{\"metric\":\"accuracy\",\"min\":0.5,\"sample_pct\":50,\"min_reports\":1}}",
           (unsigned long long)model_id);
  json_t *ro = fl_h_admin_ok(&g_coord, "POST", "/admin/v1/rollouts", body);
  cr_assert_not_null(ro);
  uint64_t gate = (uint64_t)json_integer_value(json_object_get(ro, "rollout_id"));
  json_decref(ro);

  int outside = -1, inside = -1;
  for (int i = 0; i < NDEV; i++) {
    if (gate_member(dev[i].id, gate, 50))
      inside = inside < 0 ? i : inside;
    else
      outside = outside < 0 ? i : outside;
  }
  cr_assert(inside >= 0 && outside >= 0, "need devices on both sides of the 50%% sample");
  Fl__V1__EvalReport ev = FL__V1__EVAL_REPORT__INIT;
  Fl__V1__Metric m = FL__V1__METRIC__INIT, *mp = &m;
  uint8_t eb[256];
  m.name = "accuracy";
  m.value = 1.0;
  ev.model_id = model_id;
  ev.version = 2;
  ev.gate_id = gate;
  ev.sample_count = 1000000;
  ev.n_metrics = 1;
  ev.metrics = &mp;
  size_t len = fl__v1__eval_report__pack(&ev, eb);
  int64_t evals = fl_h_db_int(g_db, "SELECT count(*) FROM evaluations");
  env_spec e = honest_env(&dev[outside], "POST", "/v1/evaluations");
  EXPECT_REFUSAL(signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), &r, 403,
                 "not_sampled");
  cr_expect_eq(fl_h_db_int(g_db, "SELECT count(*) FROM evaluations"), evals);
  char path[64];
  snprintf(path, sizeof path, "/admin/v1/rollouts/%llu", (unsigned long long)gate);
  json_t *g = fl_h_admin_ok(&g_coord, "GET", path, NULL);
  cr_expect_str_eq(json_string_value(json_object_get(g, "gate_state")), "evaluating",
                   "an unsampled report decided the gate");
  json_decref(g);
  /* A sampled device's report counts. */
  e = honest_env(&dev[inside], "POST", "/v1/evaluations");
  cr_assert_eq(signed_req(&e, "POST", "/v1/evaluations", eb, len, &r), 0);
  cr_expect_eq(r.status, 200, "sampled report: %ld %s", r.status, fl_h_error_reason(&r));
  fl_h_resp_free(&r);
  fl__v1__model_version__free_unpacked(base, NULL);
  for (int i = 0; i < NDEV; i++)
    fl_h_device_free(&dev[i]);
}
