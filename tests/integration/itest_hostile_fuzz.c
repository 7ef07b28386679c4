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
#include "itest_hostile_common.h"

#define FUZZ_ITERATIONS 8000
#define FUZZ_SECONDS 45.0

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 64-bit values that break careless code: the extremes, the signed boundary, small ones. */
static uint64_t edgy_u64(void) {
  static const uint64_t v[] = {0,
                               1,
                               2,
                               1000,
                               UINT32_MAX,
                               (uint64_t)UINT32_MAX + 1,
                               (uint64_t)INT64_MAX,
                               (uint64_t)INT64_MAX + 1,
                               UINT64_MAX,
                               UINT64_MAX - 1};
  return hx_below(4) == 0 ? hx_rnd() : v[hx_below(sizeof v / sizeof v[0])];
}

static float edgy_float(void) {
  static const float v[] = {NAN,   INFINITY, -INFINITY, -1.0f,  FLT_MAX, -FLT_MAX,
                            1e38f, 0.0f,     -0.0f,     1e-45f, 0.5f};
  return v[hx_below(sizeof v / sizeof v[0])];
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
    snprintf(why, n, "HTTP %ld without an fl.v1.Error reason (%zu bytes: %.40s)", r->status, r->len,
             r->len ? (const char *)r->data : "");
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

static void mutate_update(upd *x, size_t nt) {
  size_t i = hx_below(nt), n0 = (size_t)x->count0[i];
  Fl__V1__Tensor *t = &x->t[i];
  switch (hx_below(12)) {
    case 0: { /* shape: any number of dimensions, extreme sizes */
      t->n_shape = hx_below(9);
      static const uint32_t dims[] = {0, 1, 2, 3, 4, 6, 65536, UINT32_MAX};
      for (size_t d = 0; d < t->n_shape; d++)
        x->shape[i][d] = hx_below(3) ? dims[hx_below(8)] : (uint32_t)hx_rnd();
      t->shape = x->shape[i];
      break;
    }
    case 1: /* count */
      t->count = hx_below(2) ? edgy_u64() : t->count + hx_below(3) - 1;
      break;
    case 2: /* an encoding the data does not fit, or none at all */
      t->encoding = (Fl__V1__Encoding)(hx_below(2) ? hx_below(8) : (uint32_t)hx_rnd());
      break;
    case 3: { /* data of another length with random bytes (NaNs included) */
      size_t len = hx_below(2 * t->data.len + 9);
      uint8_t *p = hx_upd_buf(&x->data[i], len);
      hx_rnd_fill(p, len);
      t->data = (ProtobufCBinaryData){len, p};
      break;
    }
    case 4: { /* top-k with indices in and out of range, unsorted, repeated */
      size_t k = hx_below(n0 + 3);
      uint8_t *d = hx_upd_buf(&x->data[i], 4 * k), *ix = hx_upd_buf(&x->idx[i], 4 * k + 4);
      uint32_t prev = 0;
      int style = (int)hx_below(4);
      for (size_t j = 0; j < k; j++) {
        float v = (float)(hx_below(1000)) / 1000.0f;
        uint32_t id = style == 0   ? prev + (uint32_t)hx_below(3)
                      : style == 1 ? (uint32_t)hx_rnd()
                      : style == 2 ? (uint32_t)(k - j)
                                   : (uint32_t)n0;
        prev = id;
        memcpy(d + 4 * j, &v, 4);
        memcpy(ix + 4 * j, &id, 4);
      }
      t->encoding = FL__V1__ENCODING__ENCODING_TOPK;
      t->data = (ProtobufCBinaryData){4 * k, d};
      t->indices = (ProtobufCBinaryData){4 * k + (hx_below(4) == 0 ? 4 : 0), ix};
      break;
    }
    case 5: { /* int8 with a hostile scale */
      uint8_t *p = hx_upd_buf(&x->data[i], n0);
      hx_rnd_fill(p, n0);
      t->encoding = FL__V1__ENCODING__ENCODING_INT8;
      t->data = (ProtobufCBinaryData){n0, p};
      t->scale = edgy_float();
      break;
    }
    case 6: /* one non-finite float32 */
      if (t->data.len >= 4 && t->encoding == FL__V1__ENCODING__ENCODING_FLOAT32) {
        float v = hx_below(2) ? NAN : INFINITY;
        memcpy(t->data.data + 4 * hx_below(t->data.len / 4), &v, 4);
      }
      break;
    case 7: { /* float16 with random halves (infinities and NaNs among them) */
      uint8_t *p = hx_upd_buf(&x->data[i], 2 * n0);
      hx_rnd_fill(p, 2 * n0);
      p[1] |= 0x7c; /* at least the first half is inf or NaN */
      t->encoding = FL__V1__ENCODING__ENCODING_FLOAT16;
      t->data = (ProtobufCBinaryData){2 * n0, p};
      break;
    }
    case 8: /* too few or too many tensors */
      x->u.n_delta = hx_below(3) == 0 ? 0 : (hx_below(2) ? nt - 1 : nt + 1);
      if (x->u.n_delta == nt + 1) { /* a deep copy: later mutations free the original's */
        Fl__V1__Tensor *c = &x->t[nt];
        *c = x->t[nt - 1];
        memcpy(x->shape[nt], x->shape[nt - 1], sizeof x->shape[nt]);
        c->shape = c->n_shape ? x->shape[nt] : NULL;
        c->data.data = hx_upd_buf(&x->data[nt], c->data.len);
        if (c->data.len)
          memcpy(c->data.data, x->t[nt - 1].data.data, c->data.len);
        c->indices.data = hx_upd_buf(&x->idx[nt], c->indices.len);
        if (c->indices.len)
          memcpy(c->indices.data, x->t[nt - 1].indices.data, c->indices.len);
        x->tp[nt] = c;
      }
      break;
    case 9: /* ids */
      if (hx_below(2))
        x->u.round_id = edgy_u64();
      else if (hx_below(2))
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
      t->count = hx_below(2) ? 0 : UINT64_MAX;
      break;
  }
}

/* A signed update with 1..3 structural mutations (always refused: sample_count is 0 or out of
 * range). */
static uint8_t *hostile_update(const scene *s, size_t *len) {
  upd x;
  hx_upd_init(&x, s);
  for (uint64_t k = 0, n = 1 + hx_below(3); k < n; k++)
    mutate_update(&x, s->base->n_weights);
  if (hx_below(4) == 0)
    x.u.sample_count = hx_below(2) ? UINT64_MAX : (uint64_t)INT64_MAX + 1;
  uint8_t *buf = hx_pack_update(&x, len);
  hx_upd_free(&x);
  return buf;
}

/* Random text of 0..max bytes: printable, or any bytes (not UTF-8, embedded NULs cut it). */
static char *rnd_text(size_t max) {
  size_t n = hx_below(max + 1);
  char *p = malloc(n + 1);
  cr_assert_not_null(p);
  bool printable = hx_below(2);
  for (size_t i = 0; i < n; i++) {
    p[i] = printable ? (char)(' ' + hx_below(95)) : (char)(1 + hx_below(255));
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
  e.model_id = hx_below(2) ? s->model_id : edgy_u64();
  e.version = 1000 + hx_below(1000);
  e.sample_count = edgy_u64();
  e.gate_id = hx_below(2) ? 0 : edgy_u64();
  e.n_metrics = hx_below(6);
  for (size_t i = 0; i < e.n_metrics; i++) {
    fl__v1__metric__init(&m[i]);
    names[i] = rnd_text(40);
    m[i].name = names[i];
    m[i].value = hx_below(2) ? (double)edgy_float() : (double)hx_below(1000) / 7.0;
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
  size_t pl = hx_below(4) ? FL_PUBKEY_LEN : hx_below(64);
  if (pl != FL_PUBKEY_LEN || hx_below(8) == 0)
    hx_rnd_fill(pub, pl);
  e.public_key = (ProtobufCBinaryData){pl, pub};
  e.n_labels = hx_below(5);
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

/* Byte-level damage: bit flips, truncation, insertions, runs of 0xff (endless varints),
 * duplicated slices. Returns a new buffer. */
static uint8_t *mutate_bytes(const uint8_t *in, size_t n, size_t *out_n) {
  size_t cap = 2 * n + 64;
  uint8_t *p = malloc(cap);
  cr_assert_not_null(p);
  memcpy(p, in, n);
  for (uint64_t k = 0, rounds = 1 + hx_below(4); k < rounds; k++) {
    switch (hx_below(5)) {
      case 0:
        if (n > 0)
          p[hx_below(n)] ^= (uint8_t)(1u << hx_below(8));
        break;
      case 1:
        n = hx_below(n + 1);
        break;
      case 2: {
        size_t at = hx_below(n + 1), m = 1 + hx_below(8);
        if (n + m > cap)
          break;
        memmove(p + at + m, p + at, n - at);
        hx_rnd_fill(p + at, m);
        n += m;
        break;
      }
      case 3: {
        size_t at = hx_below(n + 1), m = 1 + hx_below(10);
        for (size_t j = at; j < at + m && j < n; j++)
          p[j] = 0xff;
        break;
      }
      default: {
        size_t a = hx_below(n + 1), m = hx_below(n - a + 1);
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
      return hx_checkin_body(s->model_id, 0, 0, len);
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
      size_t n = hx_below(4) ? hx_below(256) : hx_below(8192);
      uint8_t *junk = malloc(n + 1);
      cr_assert_not_null(junk);
      hx_rnd_fill(junk, n);
      *rc = hx_send_env(method, path, junk, n, r);
      free(junk);
      snprintf(what, wn, "%s %s random %zu bytes", method, path, n);
      break;
    }
    case 1: { /* a valid envelope, then damaged bytes */
      body = inner_for(s, ep, &k, &len);
      env_spec e = hx_honest_env(&s->dev[0], method, path);
      if (k != NULL) {
        e.key = k;
        e.device_id = 0;
      }
      size_t n, m;
      uint8_t *env = hx_pack_env(&e, body, len, &n), *bad = mutate_bytes(env, n, &m);
      *rc = hx_send_env(method, path, bad, m, r);
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
        body = hx_checkin_body(edgy_u64(), edgy_u64(), edgy_u64(), &len);
        may_succeed = true;
      } else if (ep == EP_DOWNLOAD) {
        static const char *const junk[] = {"/v1/models/18446744073709551616/versions/1",
                                           "/v1/models/9223372036854775808/versions/1",
                                           "/v1/models/1/versions/18446744073709551615",
                                           "/v1/models/-1/versions/1",
                                           "/v1/models/0/versions/1",
                                           "/v1/models/1/versions/1x",
                                           "/v1/models/1/versions/",
                                           "/v1/models/1/versions/1/",
                                           "/v1/models/+1/versions/1",
                                           "/v1/models/%201/versions/1",
                                           "/v1/models/1/versions/99999999999999999999999999999"};
        path = junk[hx_below(sizeof junk / sizeof junk[0])];
      }
      env_spec e = hx_honest_env(&s->dev[0], method, path);
      if (k != NULL) {
        e.key = k;
        e.device_id = 0;
      }
      *rc = hx_signed_req(&e, method, path, body, len, r);
      snprintf(what, wn, "%s %s signed hostile body", method, path);
      break;
    }
    default: { /* an envelope with one hostile field and a harmless body */
      body = ep == EP_CHECKIN || ep == EP_DOWNLOAD ? hx_checkin_body(s->model_id, 0, 0, &len)
                                                   : inner_for(s, ep, &k, &len);
      if (ep == EP_DOWNLOAD)
        len = 0;
      env_spec e = hx_honest_env(&s->dev[0], method, path);
      if (k != NULL) {
        e.key = k;
        e.device_id = 0;
      }
      static const int64_t ts[] = {INT64_MIN, INT64_MAX, INT64_MIN + 1, -1, 0};
      int64_t win = 300000;
      switch (hx_below(9)) {
        case 0:
          e.timestamp_ms =
              hx_below(2) ? ts[hx_below(5)] : hx_wall_ms() + (hx_below(2) ? 1 : -1) * (win + 1000);
          break;
        case 1:
          e.nonce_len = hx_below(2) ? hx_below(16) : 65 + hx_below(900);
          break;
        case 2:
          e.device_id = hx_below(2) ? edgy_u64() : 424242;
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
          e.sig_len = (int)hx_below(2 * FL_SIG_LEN);
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
      *rc = hx_signed_req(&e, method, path, body, len, r);
      snprintf(what, wn, "%s %s hostile envelope field", method, path);
      break;
    }
  }
  free(body);
  fl__key_free(k);
  return may_succeed;
}

Test(hostile, garbage_to_every_device_endpoint, .init = hx_setup, .fini = hx_teardown,
     .timeout = 600) {
  scene s;
  int64_t before[N_STATE];
  tally t = {0};
  hx_scene_build(&s);
  hx_snapshot(before);
  double t0 = mono_s();
  int i;
  for (i = 0; i < FUZZ_ITERATIONS && mono_s() - t0 < FUZZ_SECONDS; i++) {
    fl_h_resp r;
    int rc = -1;
    char what[160];
    int ep = (int)hx_below(N_EP), kind = (int)hx_below(4);
    bool ok200 = one_attack(&s, kind, ep, &r, &rc, what, sizeof what);
    judge(&t, what, rc, &r, ok200);
    if (rc != 0)
      break; /* the coordinator is gone: stop and say so */
  }
  report(&t, "fuzz");
  fprintf(stderr, "itest_hostile: %d requests in %.1f s\n", i, mono_s() - t0);
  hx_assert_alive();
  cr_expect_eq(t.bad, 0,
               "%d of %d hostile requests were not refused with a 4xx fl.v1.Error "
               "(first: %s; seed %llu)",
               t.bad, t.sent, t.first[0], (unsigned long long)hx_seed);
  cr_expect_geq(t.sent, 1000, "too few requests in the time budget");
  /* Signed hostile bodies must get past authentication to the decoders and the checks after
   * them, or this test would only exercise the envelope parser. */
  static const char *const deep[] = {"bad_shape",      "non_finite",      "bad_sample_count",
                                     "unknown_round",  "unknown_version", "bad_enrollment_token",
                                     "device_revoked", "stale_timestamp", "bad_nonce",
                                     "unknown_device", "bad_signature",   "malformed_request"};
  for (size_t k = 0; k < sizeof deep / sizeof deep[0]; k++)
    cr_expect_gt(seen(&t, deep[k]), 0, "no request was refused as %s", deep[k]);
  hx_assert_unchanged(before);
  hx_scene_free(&s);
}
