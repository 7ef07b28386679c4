/*
 * An in-process fake coordinator behind the fl_transport interface, for the client's unit
 * tests: it checks every signature the way the real one does (request digest, update digest),
 * serves signed model versions, and can be told to refuse, delay or tamper. Everything here
 * allocates with the C library, so a failing test allocator given to the client sees only the
 * client's own allocations.
 */
#ifndef TEST_CLIENT_FAKE_H
#define TEST_CLIENT_FAKE_H

#include <criterion/criterion.h>
#include <inttypes.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client_internal.h"
#include "codec.h"
#include "crypto.h"
#include "digest.h"
#include "fl/client.h"

#define FAKE_DEVICE_ID 7
#define FAKE_MAX_VERSIONS 4
#define FAKE_IN 4
#define FAKE_CLASSES 3

typedef struct fake_version {
  uint8_t *bytes;
  size_t len;
  uint8_t sha[FL_SHA256_LEN];
} fake_version;

typedef struct fake_coord {
  fl_key *key;
  uint8_t pub[FL_PUBKEY_LEN];
  uint8_t device_pub[FL_PUBKEY_LEN];
  bool enrolled;
  fake_version v[FAKE_MAX_VERSIONS + 1]; /* index = version */
  /* behaviour */
  bool give_task;
  uint64_t task_version;    /* the task's base version (and round 10 + it); 0: 1 */
  uint64_t rollout_version; /* 0: none */
  bool tamper_models;       /* flip one weight byte in served models */
  int fail_next;            /* answer this many requests with 503 first */
  int refuse_uploads;       /* HTTP status for uploads, 0: accept */
  const char *upload_reason; /* the reason of those refusals; NULL: round_closed */
  int lose_acks;            /* store this many uploads, then answer 503 as if the ack was lost */
  int encoding;
  float clip_norm, noise_stddev, topk_fraction;
  uint32_t epochs, batch;
  float lr, momentum, prox_mu;
  int64_t retry_at_ms;
  int64_t server_time_ms;   /* CheckInResponse.server_time_ms; 0: now */
  int64_t task_deadline_ms; /* TrainTask.deadline_ms */
  int64_t fail_hint_ms;     /* Error.retry_after_ms of the fail_next refusals */
  bool unsigned_task;       /* send the task without TrainTask.signature */
  uint32_t mitm_epochs;     /* non-zero: change local_epochs after signing (a man in the middle) */
  const char *refuse_message; /* Error.message of refusals; NULL: a plain one */
  /* non-zero: the task asks for secure aggregation with this threshold and neighbours */
  uint32_t secagg_threshold, secagg_neighbors;
  /* observations */
  int n_enroll, n_checkin, n_model_get, n_upload, n_bad_sig;
  Fl__V1__UpdateUpload *last_upload;
  Fl__V1__CheckInRequest *last_checkin; /* the body of the last check-in */
  uint8_t last_content[FL_SHA256_LEN]; /* content digest of last_upload (SIGNING.md) */
  size_t last_upload_wire;
  /* the exchange in flight */
  int status;
  uint8_t *resp;
  size_t resp_len;
  bool busy;
} fake_coord;

static const fl_model_spec fake_spec = {.input_ndim = 1,
                                        .input_shape = {FAKE_IN},
                                        .n_layers = 1,
                                        .layers = {{.type = FL_LAYER_DENSE, .units = FAKE_CLASSES}},
                                        .loss = FL_LOSS_SOFTMAX_CE};

/* Builds and signs version v of the fake model (weights from the seed v). */
static inline void fake_make_version(fake_coord *f, uint64_t v) {
  fl_model *m = NULL;
  cr_assert_eq(fl__model_new(&m, &fake_spec, NULL), FL_OK);
  fl__model_init(m, 100 + v);
  Fl__V1__ModelVersion mv;
  fl__v1__model_version__init(&mv);
  mv.model_id = 1;
  mv.version = v;
  mv.parent_version = v - 1;
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, &fake_spec);
  mv.spec = &st.spec;
  Fl__V1__Tensor **w = NULL;
  size_t nw = 0;
  cr_assert_eq(fl__weights_to_proto(m, &w, &nw, NULL), FL_OK);
  mv.weights = w;
  mv.n_weights = nw;
  uint8_t sha[FL_SHA256_LEN], sig[FL_SIG_LEN];
  cr_assert_eq(fl__model_digest(1, v, v - 1, &fake_spec, fl__model_params_const(m),
                                fl__model_num_params(m), sha),
               FL_OK);
  cr_assert_eq(fl__sign(f->key, sha, sizeof sha, sig), FL_OK);
  mv.sha256.data = sha;
  mv.sha256.len = sizeof sha;
  mv.signature.data = sig;
  mv.signature.len = sizeof sig;
  fake_version *fv = &f->v[v];
  fv->len = fl__v1__model_version__get_packed_size(&mv);
  fv->bytes = malloc(fv->len);
  fl__v1__model_version__pack(&mv, fv->bytes);
  memcpy(fv->sha, sha, sizeof sha);
  fl__delta_release(w, nw, NULL);
  fl__model_free(m);
}

static inline void fake_init(fake_coord *f) {
  memset(f, 0, sizeof *f);
  cr_assert_eq(fl__key_generate(&f->key), FL_OK);
  cr_assert_eq(fl__key_public(f->key, f->pub), FL_OK);
  for (uint64_t v = 1; v <= FAKE_MAX_VERSIONS; v++)
    fake_make_version(f, v);
  f->give_task = true;
  f->encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
  f->epochs = 2;
  f->batch = 4;
  f->lr = 0.1f;
}

static inline void fake_free(fake_coord *f) {
  for (int v = 0; v <= FAKE_MAX_VERSIONS; v++)
    free(f->v[v].bytes);
  if (f->last_upload != NULL)
    fl__v1__update_upload__free_unpacked(f->last_upload, NULL);
  if (f->last_checkin != NULL)
    fl__v1__check_in_request__free_unpacked(f->last_checkin, NULL);
  free(f->resp);
  fl__key_free(f->key);
}

static inline void fake_answer(fake_coord *f, int status, const ProtobufCMessage *msg) {
  free(f->resp);
  f->status = status;
  f->resp_len = protobuf_c_message_get_packed_size(msg);
  f->resp = malloc(f->resp_len ? f->resp_len : 1);
  protobuf_c_message_pack(msg, f->resp);
}

static inline void fake_refuse(fake_coord *f, int status, const char *reason, int64_t retry_ms) {
  Fl__V1__Error e;
  fl__v1__error__init(&e);
  e.reason = (char *)reason;
  e.message = (char *)(f->refuse_message != NULL ? f->refuse_message : "fake coordinator says no");
  e.retry_after_ms = retry_ms;
  fake_answer(f, status, &e.base);
}

/* Checks the envelope's signature with `pub` (the device key, or for enrollment the key in the
 * body); returns the unpacked envelope or NULL. */
static inline Fl__V1__SignedRequest *fake_open(fake_coord *f, const char *method, const char *path,
                                               const uint8_t *buf, size_t len, const uint8_t *pub) {
  Fl__V1__SignedRequest *env = fl__v1__signed_request__unpack(NULL, len, buf);
  if (env == NULL)
    return NULL;
  uint8_t d[FL_SHA256_LEN];
  fl__request_digest(method, path, env->device_id, env->timestamp_ms, env->nonce.data,
                     env->nonce.len, env->body.data, env->body.len, d);
  bool ok = env->nonce.len == 16;
  if (pub == NULL) { /* enrollment: the key comes with the body */
    Fl__V1__EnrollRequest *er = fl__v1__enroll_request__unpack(NULL, env->body.len, env->body.data);
    ok = ok && er != NULL && er->public_key.len == FL_PUBKEY_LEN &&
         strcmp(er->enrollment_token, "tok") == 0 && env->device_id == 0;
    if (ok)
      memcpy(f->device_pub, er->public_key.data, FL_PUBKEY_LEN);
    if (er != NULL)
      fl__v1__enroll_request__free_unpacked(er, NULL);
    pub = f->device_pub;
  } else {
    ok = ok && env->device_id == FAKE_DEVICE_ID;
  }
  ok = ok && fl__verify_raw(pub, d, sizeof d, env->signature.data, env->signature.len) == FL_OK;
  if (!ok) {
    f->n_bad_sig++;
    fl__v1__signed_request__free_unpacked(env, NULL);
    return NULL;
  }
  return env;
}

static inline void fake_enroll(fake_coord *f, const fl_http_request *req) {
  Fl__V1__SignedRequest *env = fake_open(f, "POST", req->path, req->body, req->body_len, NULL);
  if (env == NULL) {
    fake_refuse(f, 401, "bad_signature", 0);
    return;
  }
  fl__v1__signed_request__free_unpacked(env, NULL);
  f->n_enroll++;
  f->enrolled = true;
  Fl__V1__EnrollResponse r;
  fl__v1__enroll_response__init(&r);
  r.device_id = FAKE_DEVICE_ID;
  r.coordinator_public_key.data = f->pub;
  r.coordinator_public_key.len = FL_PUBKEY_LEN;
  fake_answer(f, 200, &r.base);
}

static inline void fake_checkin(fake_coord *f, const fl_http_request *req) {
  Fl__V1__SignedRequest *env =
      fake_open(f, "POST", req->path, req->body, req->body_len, f->device_pub);
  if (env == NULL) {
    fake_refuse(f, 401, "bad_signature", 0);
    return;
  }
  if (f->last_checkin != NULL)
    fl__v1__check_in_request__free_unpacked(f->last_checkin, NULL);
  f->last_checkin = fl__v1__check_in_request__unpack(NULL, env->body.len, env->body.data);
  cr_assert_not_null(f->last_checkin, "the check-in body is a CheckInRequest");
  fl__v1__signed_request__free_unpacked(env, NULL);
  f->n_checkin++;
  Fl__V1__CheckInResponse r;
  fl__v1__check_in_response__init(&r);
  Fl__V1__TrainTask t;
  fl__v1__train_task__init(&t);
  uint8_t d[FL_SHA256_LEN], sig[FL_SIG_LEN]; /* the task's signature lives until packed */
  Fl__V1__Hyperparameters h;
  fl__v1__hyperparameters__init(&h);
  Fl__V1__RetryWindow w;
  fl__v1__retry_window__init(&w);
  Fl__V1__RolloutAssignment ro;
  fl__v1__rollout_assignment__init(&ro);
  Fl__V1__SecAggTask sa;
  fl__v1__sec_agg_task__init(&sa);
  if (f->give_task) {
    if (f->secagg_threshold != 0) {
      sa.threshold = f->secagg_threshold;
      sa.neighbors = f->secagg_neighbors;
      t.secure_aggregation = &sa;
    }
    h.local_epochs = f->epochs;
    h.batch_size = f->batch;
    h.learning_rate = f->lr;
    h.momentum = f->momentum;
    h.prox_mu = f->prox_mu;
    uint64_t bv = f->task_version ? f->task_version : 1;
    t.round_id = 10 + bv;
    t.model_id = 1;
    t.base_version = bv;
    t.base_sha256.data = f->v[bv].sha;
    t.base_sha256.len = FL_SHA256_LEN;
    t.hyperparameters = &h;
    t.clip_norm = f->clip_norm;
    t.noise_stddev = f->noise_stddev;
    t.encoding = f->encoding;
    t.topk_fraction = f->topk_fraction;
    t.seed = 5;
    t.deadline_ms = f->task_deadline_ms;
    /* Signed as the coordinator signs it (docs/SIGNING.md, "Task digest"). */
    cr_assert_eq(fl__task_digest(FAKE_DEVICE_ID, &t, d), FL_OK);
    cr_assert_eq(fl__sign(f->key, d, sizeof d, sig), FL_OK);
    if (!f->unsigned_task)
      t.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
    if (f->mitm_epochs != 0)
      h.local_epochs = f->mitm_epochs;
    r.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
    r.task = &t;
  } else {
    w.retry_after_ms = f->retry_at_ms;
    w.reason = (char *)"not_selected";
    r.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY;
    r.retry = &w;
  }
  if (f->rollout_version != 0) {
    ro.rollout_id = 1;
    ro.model_id = 1;
    ro.version = f->rollout_version;
    ro.sha256.data = f->v[f->rollout_version].sha;
    ro.sha256.len = FL_SHA256_LEN;
    r.rollout = &ro;
  }
  r.server_time_ms = f->server_time_ms ? f->server_time_ms : fl__client_now_ms();
  fake_answer(f, 200, &r.base);
}

static inline void fake_model(fake_coord *f, const fl_http_request *req) {
  uint8_t env_buf[512];
  int n = req->auth != NULL
              ? EVP_DecodeBlock(env_buf, (const unsigned char *)req->auth, (int)strlen(req->auth))
              : -1;
  if (n > 0) /* EVP_DecodeBlock counts the padding as zero bytes */
    n -= (int)(strlen(req->auth) - strcspn(req->auth, "="));
  Fl__V1__SignedRequest *env =
      n > 0 ? fake_open(f, "GET", req->path, env_buf, (size_t)n, f->device_pub) : NULL;
  if (env == NULL) {
    fake_refuse(f, 401, "bad_signature", 0);
    return;
  }
  fl__v1__signed_request__free_unpacked(env, NULL);
  unsigned long long model = 0, version = 0;
  if (sscanf(req->path, "/v1/models/%llu/versions/%llu", &model, &version) != 2 || model != 1 ||
      version == 0 || version > FAKE_MAX_VERSIONS) {
    fake_refuse(f, 404, "not_found", 0);
    return;
  }
  f->n_model_get++;
  fake_version *v = &f->v[version];
  free(f->resp);
  f->status = 200;
  f->resp_len = v->len;
  f->resp = malloc(v->len);
  memcpy(f->resp, v->bytes, v->len);
  if (f->tamper_models)
    f->resp[v->len - 101] ^= 0x01; /* last byte of the bias data: sha256 and signature follow */
}

static inline void fake_upload(fake_coord *f, const fl_http_request *req) {
  /* As the coordinator checks an upload (docs/SIGNING.md): the envelope signature is empty and
   * the update signature covers the envelope's device id, timestamp and nonce. */
  Fl__V1__SignedRequest *env = fl__v1__signed_request__unpack(NULL, req->body_len, req->body);
  if (env == NULL || env->signature.len != 0 || env->nonce.len != 16 ||
      env->device_id != FAKE_DEVICE_ID) {
    f->n_bad_sig++;
    fl__v1__signed_request__free_unpacked(env, NULL);
    fake_refuse(f, 401, "bad_signature", 0);
    return;
  }
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(NULL, env->body.len, env->body.data);
  uint8_t d[FL_SHA256_LEN], content[FL_SHA256_LEN];
  bool signed_ok =
      u != NULL && fl__update_digest(FAKE_DEVICE_ID, env->timestamp_ms, env->nonce.data,
                                     env->nonce.len, u, content, d) == FL_OK;
  fl__v1__signed_request__free_unpacked(env, NULL);
  if (!signed_ok ||
      fl__verify_raw(f->device_pub, d, sizeof d, u->signature.data, u->signature.len) != FL_OK ||
      fl__delta_check(&fake_spec, u->delta, u->n_delta) != FL_OK) {
    f->n_bad_sig++;
    if (u != NULL)
      fl__v1__update_upload__free_unpacked(u, NULL);
    fake_refuse(f, 400, "bad_update", 0);
    return;
  }
  if (f->refuse_uploads != 0) {
    fl__v1__update_upload__free_unpacked(u, NULL);
    fake_refuse(f, f->refuse_uploads, f->upload_reason ? f->upload_reason : "round_closed", 0);
    return;
  }
  /* Idempotent like the real one: the same update again (same content digest; a retry is
   * signed anew over its own timestamp and nonce) is acknowledged as such. */
  bool dup = f->last_upload != NULL && memcmp(f->last_content, content, sizeof content) == 0;
  memcpy(f->last_content, content, sizeof content);
  if (f->last_upload != NULL)
    fl__v1__update_upload__free_unpacked(f->last_upload, NULL);
  f->last_upload = u;
  f->last_upload_wire = req->body_len;
  if (!dup)
    f->n_upload++;
  if (f->lose_acks > 0) {
    f->lose_acks--;
    fake_refuse(f, 503, "unavailable", 0);
    return;
  }
  Fl__V1__UpdateAck ack;
  fl__v1__update_ack__init(&ack);
  ack.round_id = u->round_id;
  ack.duplicate = dup;
  ack.accepted_in_round = (uint32_t)f->n_upload;
  fake_answer(f, 200, &ack.base);
}

static inline fl_err fake_begin(void *ctx, const fl_http_request *req) {
  fake_coord *f = ctx;
  cr_assert(!f->busy, "begin() while an exchange is in flight");
  f->busy = true;
  if (f->fail_next > 0) {
    f->fail_next--;
    fake_refuse(f, 503, "overloaded", f->fail_hint_ms);
  } else if (strcmp(req->path, "/v1/enroll") == 0) {
    fake_enroll(f, req);
  } else if (strcmp(req->path, "/v1/checkin") == 0) {
    fake_checkin(f, req);
  } else if (strcmp(req->path, "/v1/updates") == 0) {
    fake_upload(f, req);
  } else if (strcmp(req->method, "GET") == 0) {
    fake_model(f, req);
  } else {
    fake_refuse(f, 404, "not_found", 0);
  }
  return FL_OK;
}

static inline fl_err fake_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  fake_coord *f = ctx;
  (void)timeout_ms;
  cr_assert(f->busy, "poll() without begin()");
  resp->status = f->status;
  resp->body = f->resp;
  resp->body_len = f->resp_len;
  resp->retry_after_ms = 0;
  return FL_OK;
}

static inline void fake_end(void *ctx) {
  fake_coord *f = ctx;
  f->busy = false;
}

static inline fl_transport fake_transport(fake_coord *f) {
  return (fl_transport){.version = FL_TRANSPORT_VERSION,
                        .ctx = f,
                        .begin = fake_begin,
                        .poll = fake_poll,
                        .end = fake_end,
                        .destroy = NULL,
                        .detail = NULL};
}

/* A fresh state directory under /tmp, removed by fake_rmdir. */
static inline void fake_tmpdir(char *out, size_t len) {
  snprintf(out, len, "/tmp/fl-client-test-XXXXXX");
  cr_assert_not_null(mkdtemp(out));
}

static inline void fake_rmdir(const char *dir) {
  char cmd[512];
  int n = snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  cr_assert(n > 0 && (size_t)n < sizeof cmd, "state dir path too long: %s", dir);
  cr_assert_eq(system(cmd), 0);
}

static inline void fake_opts(fl_client_opts *o, const char *dir, const fl_transport *tr) {
  memset(o, 0, sizeof *o);
  o->version = FL_CLIENT_OPTS_VERSION;
  o->state_dir = dir;
  o->transport = tr;
  o->backoff_base_ms = 2;
  o->backoff_max_ms = 10;
  o->max_retries = 3;
}

/* Twenty examples of four features, three classes, separable by the first features. */
static float fake_x[20 * FAKE_IN];
static int32_t fake_y[20];
static inline void fake_data(void) {
  for (int i = 0; i < 20; i++) {
    fake_y[i] = i % FAKE_CLASSES;
    for (int j = 0; j < FAKE_IN; j++)
      fake_x[i * FAKE_IN + j] = (j == fake_y[i] ? 1.0f : 0.0f) + 0.01f * (float)((i * 7 + j) % 5);
  }
}

/* A client on a fresh state directory talking to its own fake coordinator. */
typedef struct fake_env {
  char dir[64];
  fake_coord f;
  fl_transport tr;
  fl_client *c;
} fake_env;

static inline void fake_env_up(fake_env *e) {
  fake_data();
  fake_tmpdir(e->dir, sizeof e->dir);
  fake_init(&e->f);
  e->tr = fake_transport(&e->f);
  fl_client_opts o;
  fake_opts(&o, e->dir, &e->tr);
  cr_assert_eq(fl_client_new(&e->c, &o), FL_OK);
}

/* The same, enrolled and with the fake data set as its training data. */
static inline void fake_env_enrolled(fake_env *e) {
  fake_env_up(e);
  cr_assert_eq(fl_client_enroll(e->c, "tok", NULL, 0, "fw-1"), FL_OK, "%s", fl_client_errmsg(e->c));
  cr_assert_eq(fl_client_set_data_memory(e->c, fake_x, fake_y, 20, FAKE_IN), FL_OK);
}

static inline void fake_env_down(fake_env *e) {
  fl_client_free(e->c);
  fake_free(&e->f);
  fake_rmdir(e->dir);
}

#endif
