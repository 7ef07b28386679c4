/*
 * Writes the seed corpus (tests/fuzz/corpus/<harness>/) from real encoded messages: uploads
 * signed as libflclient signs them (flsupport's signer) in every encoding, tensors and specs
 * as the codec writes them, a model version signed with fuzz_key.pem as the coordinator signs
 * one, check-in answers that lead a device through a whole round, and small IDX and CSV
 * files. The files are committed; run again (tests/fuzz/run.sh --seeds) after a wire change.
 *   fl-fuzz-seeds <corpus dir>
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "codec.h"
#include "digest.h"
#include "flsupport/signer.h"
#include "fuzz_common.h"
#include "mem.h"

static const char *g_root;
static int g_err;

static void put(const char *harness, const char *name, const uint8_t *a, size_t an,
                const uint8_t *b, size_t bn) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", g_root, harness);
  if (mkdir(path, 0755) != 0 && errno != EEXIST)
    g_err = 1;
  snprintf(path, sizeof path, "%s/%s/%s", g_root, harness, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(a, 1, an, f) != an || (bn && fwrite(b, 1, bn, f) != bn) ||
      fclose(f) != 0) {
    fprintf(stderr, "fl-fuzz-seeds: cannot write %s\n", path);
    g_err = 1;
  }
}

/* A part of a fuzz_client script: status pick, u32 length, body. */
static size_t part(uint8_t *out, uint8_t pick, const uint8_t *body, size_t len) {
  out[0] = pick;
  for (int i = 0; i < 4; i++)
    out[1 + i] = (uint8_t)(len >> (8 * i));
  if (len > 0)
    memcpy(out + 5, body, len);
  return 5 + len;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *b = malloc(*len + 1);
  if (b == NULL)
    abort();
  protobuf_c_message_pack(m, b);
  return b;
}

static const float k_delta[15] = {0.5f,  -0.25f, 0.125f, 0,     1e-3f, -2.0f, 0.75f, 0.0f,
                                  -0.5f, 0.3f,   0.01f,  -0.1f, 0.2f,  0.0f,  -0.05f};

/* The fields of every seed upload: round 3 of model 1 on version 1, the delta t. */
static void upload_fields(Fl__V1__UpdateUpload *u, Fl__V1__Tensor **t, size_t n) {
  u->round_id = 3;
  u->model_id = 1;
  u->base_version = 1;
  u->sample_count = 4;
  u->loss = 0.7f;
  u->norm = 2.5f;
  u->delta = t;
  u->n_delta = n;
}

/* DriftStats of the 15-parameter model's inputs (fz_spec: 4 features), as a device sends them:
 * version 0 for its training data, the running version for its service window. */
static void drift_stats(Fl__V1__DriftStats *s, uint64_t version) {
  static double mean[4] = {0.5, -1.0, 2.0, 0.0}, m2[4] = {3.0, 0.5, 8.0, 0.0};
  static uint64_t hist[4] = {5, 2, 0, 1};
  fl__v1__drift_stats__init(s);
  s->model_id = 1;
  s->version = version;
  s->count = 8;
  s->n_mean = s->n_m2 = 4;
  s->mean = mean;
  s->m2 = m2;
  s->n_score_hist = 4;
  s->score_hist = hist;
  s->score_lo = -4.0;
  s->score_hi = 4.0;
  s->anomalies = 1;
}

/* Uploads with the fields added since the first seeds, each signed (the update digest covers
 * them, docs/SIGNING.md): a clipped f32 update with its training statistics, and a secure
 * aggregation upload whose delta is its masked words. */
static void stats_uploads(fl_model *m) {
  static uint8_t words[16] = {1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0};
  Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
  Fl__V1__DriftStats train;
  Fl__V1__Tensor **t = NULL;
  size_t n = 0, len;
  uint8_t *env;
  if (fl__delta_encode(m, k_delta, 1, 0.4f, &t, &n, NULL) != 0)
    abort();
  drift_stats(&train, 0);
  upload_fields(&u, t, n);
  u.clip_state = FL__V1__CLIP_STATE__CLIP_STATE_CLIPPED;
  u.train_stats = &train;
  if (fl_sup_upload_envelope(fz_key(), FZ_DEVICE_ID, &u, &env, &len) != 0)
    abort();
  put("envelope", "upload_stats", env, len, NULL, 0);
  free(env);
  fl__delta_release(t, n, NULL);
  u.delta = NULL;
  u.n_delta = 0;
  u.train_stats = NULL;
  u.secagg_masked = (ProtobufCBinaryData){sizeof words, words};
  if (fl_sup_upload_envelope(fz_key(), FZ_DEVICE_ID, &u, &env, &len) != 0)
    abort();
  put("envelope", "upload_masked", env, len, NULL, 0);
  free(env);
}

static void uploads(fl_model *m) {
  static const char *names[] = {"", "upload_f32", "upload_f16", "upload_i8", "upload_topk"};
  for (int enc = 1; enc <= 4; enc++) {
    Fl__V1__UpdateUpload u = FL__V1__UPDATE_UPLOAD__INIT;
    Fl__V1__Tensor **t = NULL;
    size_t n = 0;
    if (fl__delta_encode(m, k_delta, enc, 0.4f, &t, &n, NULL) != 0)
      abort();
    upload_fields(&u, t, n);
    uint8_t *env;
    size_t len;
    if (fl_sup_upload_envelope(fz_key(), FZ_DEVICE_ID, &u, &env, &len) != 0)
      abort();
    put("envelope", names[enc], env, len, NULL, 0);
    free(env);
    free(u.signature.data);
    /* The first tensor alone, for the codec's decoding half. */
    size_t tl;
    uint8_t *tb = pack(&t[0]->base, &tl), sel = 0;
    char name[32];
    snprintf(name, sizeof name, "decode_%s", names[enc] + 7);
    put("codec", name, &sel, 1, tb, tl);
    free(tb);
    fl__delta_release(t, n, NULL);
    /* The same values for the round trip: pick odd, encoding, fraction byte, floats. */
    uint8_t hdr[3] = {1, (uint8_t)(enc - 1), 100};
    snprintf(name, sizeof name, "encode_%s", names[enc] + 7);
    put("codec", name, hdr, 3, (const uint8_t *)k_delta, sizeof k_delta);
  }
  stats_uploads(m);
  Fl__V1__CheckInRequest ci = FL__V1__CHECK_IN_REQUEST__INIT;
  ci.model_id = 1;
  size_t cl, el;
  uint8_t *cb = pack(&ci.base, &cl), *env;
  if (fl_sup_envelope(fz_key(), FZ_DEVICE_ID, "POST", "/v1/checkin", cb, cl, NULL, &env, &el))
    abort();
  put("envelope", "checkin", env, el, NULL, 0);
  free(env);
  free(cb);
  /* With the fields added since: conditions and the running version's service statistics. */
  char *conds[] = {"charging", "unmetered"};
  Fl__V1__DriftStats svc;
  drift_stats(&svc, 1);
  ci.running_model_id = 1;
  ci.running_version = 1;
  ci.n_conditions = 2;
  ci.conditions = conds;
  ci.service_stats = &svc;
  cb = pack(&ci.base, &cl);
  if (fl_sup_envelope(fz_key(), FZ_DEVICE_ID, "POST", "/v1/checkin", cb, cl, NULL, &env, &el))
    abort();
  put("envelope", "checkin_stats", env, el, NULL, 0);
  free(env);
  free(cb);
  /* Issue 13 item 1: 16 KiB of two-byte unknown fields (field 15, varint 0), which protobuf-c
   * without a budget unpacks into some forty times their size: as the envelope itself, as
   * the body of a well-formed envelope, and as a tensor. */
  size_t jn = 16384;
  uint8_t *junk = malloc(jn);
  if (junk == NULL)
    abort();
  for (size_t i = 0; i < jn; i += 2) {
    junk[i] = 15 << 3;
    junk[i + 1] = 0;
  }
  put("envelope", "unknown_fields", junk, jn, NULL, 0);
  if (fl_sup_envelope(fz_key(), FZ_DEVICE_ID, "POST", "/v1/checkin", junk, jn, NULL, &env, &el))
    abort();
  put("envelope", "body_unknown_fields", env, el, NULL, 0);
  free(env);
  uint8_t sel = 0;
  put("codec", "decode_unknown_fields", &sel, 1, junk, jn);
  free(junk);
}

/* ModelVersion 1 of model 1, signed as the coordinator signs it; its digest in sha. */
static uint8_t *model_version(fl_model *m, const fl_model_spec *spec, uint8_t sha[32],
                              size_t *len) {
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, spec);
  Fl__V1__ModelVersion mv = FL__V1__MODEL_VERSION__INIT;
  Fl__V1__Tensor **w = NULL;
  size_t n = 0;
  uint8_t sig[FL_SIG_LEN];
  if (fl__weights_to_proto(m, &w, &n, NULL) != 0 ||
      fl__model_digest(1, 1, 0, spec, fl__model_params_const(m), fl__model_num_params(m), sha) ||
      fl__sign(fz_key(), sha, FL_SHA256_LEN, sig))
    abort();
  mv.model_id = 1;
  mv.version = 1;
  mv.spec = &st.spec;
  mv.weights = w;
  mv.n_weights = n;
  mv.sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, sha};
  mv.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
  uint8_t *b = pack(&mv.base, len);
  fl__delta_release(w, n, NULL);
  return b;
}

static void models(fl_model *m, const fl_model_spec *spec) {
  uint8_t sel = 0, sha[32];
  size_t len;
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, spec);
  uint8_t *b = pack(&st.spec.base, &len);
  put("model", "spec_dense", &sel, 1, b, len);
  free(b);
  fl_model_spec conv = {
      .input_ndim = 3,
      .input_shape = {1, 8, 8},
      .n_layers = 6,
      .layers = {{.type = FL_LAYER_CONV2D, .out_channels = 2, .kernel = 3, .padding = 1},
                 {.type = FL_LAYER_RELU},
                 {.type = FL_LAYER_MAXPOOL2D, .kernel = 2},
                 {.type = FL_LAYER_FLATTEN},
                 {.type = FL_LAYER_DENSE, .units = 3},
                 {.type = FL_LAYER_TANH}},
      .loss = FL_LOSS_MSE};
  fl__spec_to_proto(&st, &conv);
  b = pack(&st.spec.base, &len);
  put("model", "spec_conv", &sel, 1, b, len);
  free(b);
  sel = 1;
  b = model_version(m, spec, sha, &len);
  put("model", "version_signed", &sel, 1, b, len);

  /* fuzz_client: a whole round (check-in with a task, the base model, the upload's ack), a
   * retry window, and an answer with nothing in it. */
  Fl__V1__Hyperparameters hp = FL__V1__HYPERPARAMETERS__INIT;
  hp.local_epochs = 1;
  hp.batch_size = 2;
  hp.learning_rate = 0.1f;
  Fl__V1__TrainTask task = FL__V1__TRAIN_TASK__INIT;
  task.round_id = 3;
  task.model_id = 1;
  task.base_version = 1;
  task.base_sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, sha};
  task.hyperparameters = &hp;
  task.clip_norm = 5.0f;
  task.encoding = FL__V1__ENCODING__ENCODING_INT8;
  Fl__V1__CheckInResponse cr = FL__V1__CHECK_IN_RESPONSE__INIT;
  cr.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
  cr.task = &task;
  size_t cl, al, n = 0;
  uint8_t *cb = pack(&cr.base, &cl);
  Fl__V1__UpdateAck ack = FL__V1__UPDATE_ACK__INIT;
  ack.round_id = 3;
  ack.accepted_in_round = 1;
  uint8_t *ab = pack(&ack.base, &al);
  uint8_t *script = malloc(cl + len + al + 15);
  if (script == NULL)
    abort();
  n += part(script + n, 0, cb, cl);
  n += part(script + n, 0, b, len);
  n += part(script + n, 0, ab, al);
  put("client", "round_task", script, n, NULL, 0);
  free(cb);
  Fl__V1__RetryWindow rw = FL__V1__RETRY_WINDOW__INIT;
  rw.retry_after_ms = 1700000000000;
  rw.reason = "not_selected";
  cr.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY;
  cr.retry = &rw;
  cr.server_time_ms = 1700000000000;
  cb = pack(&cr.base, &cl);
  n = part(script, 0, cb, cl);
  put("client", "retry", script, n, NULL, 0);
  n = part(script, 0, NULL, 0);
  put("client", "empty", script, n, NULL, 0);
  free(cb);
  free(ab);
  free(script);
  free(b);
}

static void data_files(void) {
  uint8_t img[1 + 4 + 16 + 16] = {1, 32, 0, 0, 0, 0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 2};
  for (int i = 0; i < 16; i++)
    img[21 + i] = (uint8_t)(i * 16);
  uint8_t lab[12] = {0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 2, 1};
  put("idx", "images_labels", img, sizeof img, lab, sizeof lab);
  img[0] = 0;
  put("idx", "images_only", img, sizeof img, NULL, 0);
  static const char csv1[] =
      "\x03"
      "a,b,label,c\n0.5,1,2,3\n-1e3,\"2.5\",0,4\r\n\n7,8,1,9\n";
  static const char csv2[] =
      "\x00"
      "1,2,3\n4,5,6\n";
  put("csv", "header_label", (const uint8_t *)csv1, sizeof csv1 - 1, NULL, 0);
  put("csv", "no_label", (const uint8_t *)csv2, sizeof csv2 - 1, NULL, 0);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fl-fuzz-seeds <corpus dir>\n");
    return 2;
  }
  g_root = argv[1];
  if (mkdir(g_root, 0755) != 0 && errno != EEXIST)
    return 1;
  fl_model_spec spec;
  fl_model *m = NULL;
  fz_spec(&spec);
  if (fl__model_new(&m, &spec, NULL) != 0)
    return 1;
  fl__model_init(m, 1);
  uploads(m);
  models(m, &spec);
  data_files();
  fl__model_free(m);
  return g_err;
}
