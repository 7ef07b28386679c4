/*
 * libflclient footprint:
 *  - size of the stripped shared library (target: <= 300 KB without its shared dependencies);
 *  - peak RSS of one training round of the 2NN (784-200-200-10, 199,210 parameters) on 600
 *    Fashion-MNIST examples, 1 epoch, batch 10 (target: <= 3x (model + data));
 *  - bytes on the wire per update for each encoding;
 *  - time of one local epoch: fl_client_train() on a round driven step by step (1 epoch of 600
 *    examples, batch 10, then delta, clip, encode and sign), OpenBLAS on one thread and on all
 *    cores, best and median of 7 rounds.
 * The round runs against an in-process coordinator behind the fl_transport interface (signed
 * model, real check-in/upload messages), so that only the client is measured.
 *
 *   bench_client [path/to/libflclient.so]   (default: ../client/libflclient.so next to this)
 */
#include <libgen.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client_internal.h"
#include "codec.h"
#include "data.h"
#include "digest.h"
#include "flsupport/proc.h"
#include "tensor.h"

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define N_EX 600

/* ---- an in-process coordinator: one task, one signed model, acknowledgements -------------- */

typedef struct coord {
  fl_key *key;
  uint8_t pub[FL_PUBKEY_LEN], sha[FL_SHA256_LEN];
  uint8_t *model;
  size_t model_len;
  int encoding;
  uint8_t *resp;
  size_t resp_len;
  size_t last_upload;
} coord;

static const fl_model_spec mlp2nn = {.input_ndim = 1,
                                     .input_shape = {784},
                                     .n_layers = 5,
                                     .layers = {{.type = FL_LAYER_DENSE, .units = 200},
                                                {.type = FL_LAYER_RELU},
                                                {.type = FL_LAYER_DENSE, .units = 200},
                                                {.type = FL_LAYER_RELU},
                                                {.type = FL_LAYER_DENSE, .units = 10}},
                                     .loss = FL_LOSS_SOFTMAX_CE};

static int coord_init(coord *k) {
  memset(k, 0, sizeof *k);
  fl_model *m = NULL;
  if (fl__key_generate(&k->key) || fl__key_public(k->key, k->pub) ||
      fl__model_new(&m, &mlp2nn, NULL))
    return -1;
  fl__model_init(m, 1);
  Fl__V1__ModelVersion mv;
  fl__v1__model_version__init(&mv);
  mv.model_id = 1;
  mv.version = 1;
  fl_spec_proto_storage st;
  fl__spec_to_proto(&st, &mlp2nn);
  mv.spec = &st.spec;
  if (fl__weights_to_proto(m, &mv.weights, &mv.n_weights, NULL))
    return -1;
  uint8_t sig[FL_SIG_LEN];
  fl__model_digest(1, 1, 0, &mlp2nn, fl__model_params_const(m), fl__model_num_params(m), k->sha);
  fl__sign(k->key, k->sha, sizeof k->sha, sig);
  mv.sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, k->sha};
  mv.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
  k->model_len = fl__v1__model_version__get_packed_size(&mv);
  k->model = malloc(k->model_len);
  fl__v1__model_version__pack(&mv, k->model);
  fl__delta_release(mv.weights, mv.n_weights, NULL);
  fl__model_free(m);
  return 0;
}

static void answer(coord *k, const ProtobufCMessage *msg) {
  free(k->resp);
  k->resp_len = protobuf_c_message_get_packed_size(msg);
  k->resp = malloc(k->resp_len + 1);
  protobuf_c_message_pack(msg, k->resp);
}

static void checkin(coord *k) {
  Fl__V1__CheckInResponse r;
  Fl__V1__TrainTask t;
  Fl__V1__Hyperparameters h;
  fl__v1__check_in_response__init(&r);
  fl__v1__train_task__init(&t);
  fl__v1__hyperparameters__init(&h);
  h.local_epochs = 1;
  h.batch_size = 10;
  h.learning_rate = 0.05f;
  t.round_id = 1;
  t.model_id = 1;
  t.base_version = 1;
  t.base_sha256 = (ProtobufCBinaryData){FL_SHA256_LEN, k->sha};
  t.hyperparameters = &h;
  t.clip_norm = 10;
  t.encoding = k->encoding;
  t.topk_fraction = 0.1f;
  uint8_t d[FL_SHA256_LEN], sig[FL_SIG_LEN]; /* signed as the coordinator signs it */
  fl__task_digest(1, &t, d);
  fl__sign(k->key, d, sizeof d, sig);
  t.signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
  r.assignment_case = FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK;
  r.task = &t;
  answer(k, &r.base);
}

static fl_err c_begin(void *ctx, const fl_http_request *req) {
  coord *k = ctx;
  if (strcmp(req->path, "/v1/enroll") == 0) {
    Fl__V1__EnrollResponse r;
    fl__v1__enroll_response__init(&r);
    r.device_id = 1;
    r.coordinator_public_key = (ProtobufCBinaryData){FL_PUBKEY_LEN, k->pub};
    answer(k, &r.base);
  } else if (strcmp(req->path, "/v1/checkin") == 0) {
    checkin(k);
  } else if (strcmp(req->path, "/v1/updates") == 0) {
    k->last_upload = req->body_len;
    Fl__V1__UpdateAck a;
    fl__v1__update_ack__init(&a);
    a.round_id = 1;
    answer(k, &a.base);
  } else {
    free(k->resp);
    k->resp = malloc(k->model_len);
    memcpy(k->resp, k->model, k->model_len);
    k->resp_len = k->model_len;
  }
  return FL_OK;
}

static fl_err c_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  coord *k = ctx;
  (void)timeout_ms;
  *resp = (fl_http_response){.status = 200, .body = k->resp, .body_len = k->resp_len};
  return FL_OK;
}

static void c_end(void *ctx) {
  (void)ctx;
}

/* ---- measurements -------------------------------------------------------------------------- */

static long status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  size_t n = strlen(field);
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (strncmp(line, field, n) == 0)
      v = strtol(line + n + 1, NULL, 10);
  if (f != NULL)
    fclose(f);
  return v;
}

static void library_size(const char *so) {
  char cmd[PATH_MAX + 64];
  snprintf(cmd, sizeof cmd, "strip -o /tmp/bench_client_stripped.so '%s'", so);
  struct stat st;
  if (system(cmd) != 0 || stat("/tmp/bench_client_stripped.so", &st) != 0) {
    printf("library size: cannot strip %s\n", so);
    return;
  }
  printf("libflclient.so stripped: %lld bytes (%.0f KB; target <= 300 KB)%s\n",
         (long long)st.st_size, st.st_size / 1024.0,
         getenv("ASAN_OPTIONS") != NULL ? " [sanitizer builds are larger]" : "");
  unlink("/tmp/bench_client_stripped.so");
}

/* First N_EX training examples of Fashion-MNIST in fresh arrays; the full set is freed. */
static int load_data(float **x, int32_t **y) {
  fl_dataset d;
  memset(&d, 0, sizeof d);
  if (fl__idx_load(&d, FMNIST "train-images-idx3-ubyte.gz", FMNIST "train-labels-idx1-ubyte.gz",
                   NULL) != FL_OK)
    return -1;
  *x = malloc(N_EX * 784 * sizeof **x);
  *y = malloc(N_EX * sizeof **y);
  memcpy(*x, d.x, N_EX * 784 * sizeof **x);
  memcpy(*y, d.labels, N_EX * sizeof **y);
  fl__dataset_free(&d);
  malloc_trim(0);
  return 0;
}

/* One enrolled client and one round with the given encoding; returns the upload size. */
static long one_round(coord *k, int encoding, const float *x, const int32_t *y, bool measure) {
  char dir[256];
  if (fl_sup_mkdtemp(dir, sizeof dir, "bench-client-") != FL_OK)
    return -1;
  k->encoding = encoding;
  fl_transport tr = {
      .version = FL_TRANSPORT_VERSION, .ctx = k, .begin = c_begin, .poll = c_poll, .end = c_end};
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION, .state_dir = dir, .transport = &tr};
  fl_client *c = NULL;
  fl_round_result r = {.size = sizeof r};
  long rss0 = 0;
  int err = fl_client_new(&c, &o);
  if (err == FL_OK)
    err = fl_client_enroll(c, "t", NULL, 0, NULL);
  if (err == FL_OK)
    err = fl_client_set_data_memory(c, x, y, N_EX, 784);
  if (err == FL_OK && measure) {
    malloc_trim(0);
    rss0 = status_kb("VmRSS:");
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* "5" resets the peak (VmHWM) */
    if (f != NULL) {
      fputs("5", f);
      fclose(f);
    }
  }
  if (err == FL_OK)
    err = fl_client_run_round(c, &r);
  if (err == FL_OK && measure) {
    long peak = status_kb("VmHWM:");
    double model_kb = 199210 * 4 / 1024.0, data_kb = N_EX * 785 * 4 / 1024.0;
    printf("training round (2NN, %d examples, 1 epoch, batch 10):\n", N_EX);
    printf("  RSS before the round %ld KB (libraries, data, client), peak %ld KB\n", rss0, peak);
    printf(
        "  growth during the round %ld KB = %.2f x (model %.0f KB + data %.0f KB); "
        "target <= 3x\n",
        peak - rss0, (peak - rss0) / (model_kb + data_kb), model_kb, data_kb);
  }
  fl_client_free(c);
  fl_sup_rmtree(dir);
  if (err != FL_OK) {
    fprintf(stderr, "round failed: %s\n", fl_strerror(err));
    return -1;
  }
  return (long)r.upload_bytes;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Rounds driven with fl_client_step; only fl_client_train() is timed. */
static int epoch_times(coord *k, const float *x, const int32_t *y, int threads) {
  enum { ROUNDS = 7 };
  char dir[256];
  double t[ROUNDS];
  if (fl_sup_mkdtemp(dir, sizeof dir, "bench-client-") != FL_OK)
    return -1;
  k->encoding = FL__V1__ENCODING__ENCODING_FLOAT32;
  fl_transport tr = {
      .version = FL_TRANSPORT_VERSION, .ctx = k, .begin = c_begin, .poll = c_poll, .end = c_end};
  fl_client_opts o = {.version = FL_CLIENT_OPTS_VERSION, .state_dir = dir, .transport = &tr};
  fl_client *c = NULL;
  int err = fl_client_new(&c, &o);
  if (err == FL_OK)
    err = fl_client_enroll(c, "t", NULL, 0, NULL);
  if (err == FL_OK)
    err = fl_client_set_data_memory(c, x, y, N_EX, 784);
  fl__tensor_set_threads(threads);
  for (int r = 0; r < ROUNDS && err == FL_OK; r++) {
    fl_step step = FL_STEP_IDLE;
    t[r] = -1;
    err = fl_client_round_begin(c);
    while (err == FL_OK && step != FL_STEP_DONE) {
      err = fl_client_step(c, 1000, &step);
      if (err == FL_OK && step == FL_STEP_NEED_TRAIN) {
        double t0 = fl_sup_mono_s();
        err = fl_client_train(c);
        t[r] = fl_sup_mono_s() - t0;
      }
    }
    if (err == FL_OK && t[r] < 0)
      err = FL_E_STATE;
  }
  fl_client_free(c);
  fl_sup_rmtree(dir);
  if (err != FL_OK) {
    fprintf(stderr, "epoch rounds failed: %s\n", fl_strerror(err));
    return -1;
  }
  qsort(t, ROUNDS, sizeof *t, cmp_double);
  printf("  OpenBLAS threads %d: best %.1f ms, median %.1f ms (%.0f examples/s)\n", threads,
         t[0] * 1e3, t[ROUNDS / 2] * 1e3, N_EX / t[ROUNDS / 2]);
  return 0;
}

int main(int argc, char **argv) {
  char so[PATH_MAX];
  if (argc > 1) {
    snprintf(so, sizeof so, "%s", argv[1]);
  } else {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = '\0';
    snprintf(so, sizeof so, "%s/../client/libflclient.so", dirname(self));
  }
  library_size(so);
  float *x = NULL;
  int32_t *y = NULL;
  coord k;
  if (load_data(&x, &y) != 0 || coord_init(&k) != 0) {
    fprintf(stderr, "cannot load Fashion-MNIST from " FMNIST "\n");
    return 1;
  }
  if (one_round(&k, FL__V1__ENCODING__ENCODING_FLOAT32, x, y, true) < 0)
    return 1;
  static const char *const names[] = {"", "float32", "float16", "int8", "top-k 10%"};
  printf("bytes on the wire per update (2NN, 199,210 parameters, signed envelope):\n");
  for (int e = 1; e <= 4; e++) {
    long bytes = one_round(&k, e, x, y, false);
    if (bytes < 0)
      return 1;
    printf("  %-10s %8ld bytes (%.2f bytes/parameter)\n", names[e], bytes, bytes / 199210.0);
  }
  printf(
      "one local epoch (fl_client_train: 2NN, %d examples, batch 10, SGD lr 0.05; then delta,"
      " clip, encode float32, sign), 7 rounds:\n",
      N_EX);
  long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
  if (epoch_times(&k, x, y, 1) != 0 || (ncpu > 1 && epoch_times(&k, x, y, (int)ncpu) != 0))
    return 1;
  free(x);
  free(y);
  free(k.model);
  free(k.resp);
  fl__key_free(k.key);
  return 0;
}
