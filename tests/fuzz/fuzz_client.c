/*
 * libflclient's handling of the coordinator's answers (client/request.c fl__answer_unpack and
 * the round state machine of client/round.c), without a network: an in-memory transport
 * answers each request with the next part of the input, [u8 status pick][u32 length][body],
 * and fails the exchange once the input is used up. The device is enrolled once per process
 * (a fixed EnrollResponse naming fuzz_key.pem's key as the coordinator's), then each input is
 * one round: check-in answer, model downloads, the upload acknowledgement, as far as the
 * answers lead. The seeds carry a signed model, so a mutated task reaches training on four
 * examples in memory. Backoffs are not waited for: a round that wants to sleep is cancelled.
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/client.h"
#include "digest.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "fuzz_common.h"

typedef struct fz_net {
  fz_cur in;
  uint8_t *body;
  size_t body_len;
  int status;
  bool have;
} fz_net;

static const int k_status[8] = {200, 200, 200, 304, 409, 503, 404, 401};

static fz_net g_net;
static fl_client *g_client;
static char g_dir[64];
static float g_x[16];
static int32_t g_y[4] = {0, 1, 2, 1};

#ifdef FZ_SIGN_TASKS
/* The coordinator signs the tasks it assigns (TrainTask.signature over fl__task_digest): the
 * harness signs whatever task the input holds with the coordinator's key, so that what the
 * client does with a signed task (its bounds on epochs, batch and buffers, which hold whoever
 * signed it) stays reachable; an input's own signature is replaced. */
static void sign_task(fz_net *n) {
  Fl__V1__CheckInResponse *r = fl__v1__check_in_response__unpack(NULL, n->body_len, n->body);
  uint8_t d[FL_SHA256_LEN], sig[FL_SIG_LEN];
  if (r != NULL && r->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK &&
      fl__task_digest(FZ_DEVICE_ID, r->task, d) == 0 && fl__sign(fz_key(), d, sizeof d, sig) == 0) {
    ProtobufCBinaryData old = r->task->signature;
    r->task->signature = (ProtobufCBinaryData){FL_SIG_LEN, sig};
    size_t len = fl__v1__check_in_response__get_packed_size(r);
    uint8_t *b = malloc(len ? len : 1);
    if (b == NULL)
      abort();
    fl__v1__check_in_response__pack(r, b);
    r->task->signature = old;
    free(n->body);
    n->body = b;
    n->body_len = len;
  }
  fl__v1__check_in_response__free_unpacked(r, NULL);
}
#endif

static fl_err net_begin(void *ctx, const fl_http_request *req) {
  fz_net *n = ctx;
  free(n->body);
  n->body = NULL;
  n->have = n->in.left > 0;
  if (!n->have)
    return FL_OK;
  n->status = k_status[fz_u8(&n->in) % 8];
  size_t len;
  const uint8_t *p = fz_span(&n->in, n->in.left, &len);
  /* A copy of its own, so that reading past a body is caught by ASan. */
  n->body = malloc(len ? len : 1);
  if (n->body == NULL)
    abort();
  memcpy(n->body, p, len);
  n->body_len = len;
#ifdef FZ_SIGN_TASKS
  if (n->status == 200 && strcmp(req->path, "/v1/checkin") == 0)
    sign_task(n);
#else
  (void)req;
#endif
  return FL_OK;
}

static fl_err net_poll(void *ctx, int timeout_ms, fl_http_response *resp) {
  fz_net *n = ctx;
  (void)timeout_ms;
  if (!n->have)
    return FL_E_TRANSPORT;
  resp->status = n->status;
  resp->body = n->body;
  resp->body_len = n->body_len;
  return FL_OK;
}

static void net_end(void *ctx) {
  fz_net *n = ctx;
  n->have = false;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *f) {
  (void)st, (void)flag, (void)f;
  return remove(path);
}

static void cleanup(void) {
  fl_client_free(g_client);
  free(g_net.body);
  nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static void setup(void) {
  strcpy(g_dir, "/tmp/fl-fuzz-client-XXXXXX");
  if (mkdtemp(g_dir) == NULL)
    abort();
  fl_transport tr = {.version = FL_TRANSPORT_VERSION,
                     .ctx = &g_net,
                     .begin = net_begin,
                     .poll = net_poll,
                     .end = net_end};
  fl_client_opts o = {0};
  o.version = FL_CLIENT_OPTS_VERSION;
  o.state_dir = g_dir;
  o.coordinator_key = fz_pub();
  o.transport = &tr;
  o.max_retries = 0;
  o.backoff_base_ms = 1;
  o.backoff_max_ms = 1;
  if (fl_client_new(&g_client, &o) != FL_OK)
    abort();
  atexit(cleanup);
  /* The enrollment answer: status 200, EnrollResponse{device_id, coordinator key}. */
  Fl__V1__EnrollResponse er = FL__V1__ENROLL_RESPONSE__INIT;
  er.device_id = FZ_DEVICE_ID;
  er.coordinator_public_key.data = (uint8_t *)fz_pub();
  er.coordinator_public_key.len = FL_PUBKEY_LEN;
  uint8_t buf[128];
  size_t len = fl__v1__enroll_response__pack(&er, buf + 5);
  buf[0] = 0;
  for (int i = 0; i < 4; i++)
    buf[1 + i] = (uint8_t)(len >> (8 * i));
  g_net.in = (fz_cur){buf, len + 5};
  if (fl_client_enroll(g_client, "fuzz-token", NULL, 0, NULL) != FL_OK) {
    fprintf(stderr, "fuzz_client: enrollment failed: %s\n", fl_client_errmsg(g_client));
    abort();
  }
  for (int i = 0; i < 16; i++)
    g_x[i] = (float)(i % 5) / 4.0f;
  if (fl_client_set_data_memory(g_client, g_x, g_y, 4, 4) != FL_OK)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_client == NULL)
    setup();
  g_net.in = (fz_cur){data, size};
  if (fl_client_round_begin(g_client) != FL_OK)
    abort();
  fl_step step = FL_STEP_IDLE;
  for (int i = 0; i < 64; i++) {
    fl_err err = fl_client_step(g_client, 0, &step);
    if (err != FL_OK || step == FL_STEP_DONE || step == FL_STEP_IDLE || step == FL_STEP_WAIT_TIME)
      break;
    if (step == FL_STEP_NEED_TRAIN)
      (void)fl_client_train(g_client);
  }
  fl_round_result res = {.size = sizeof res};
  if (step == FL_STEP_DONE) {
    FZ_ASSERT(fl_client_round_result(g_client, &res) == FL_OK);
    if (getenv("FZ_DEBUG") != NULL) /* to see how far a seed leads */
      fprintf(stderr, "round outcome %d err %d: %s\n", (int)res.outcome, (int)res.err,
              fl_client_errmsg(g_client));
  }
  fl_client_round_cancel(g_client);
  return 0;
}
