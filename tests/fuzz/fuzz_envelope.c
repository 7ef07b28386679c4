/*
 * The coordinator's handling of device input before and during authentication, without a
 * database: the SignedRequest envelope as fl__auth_envelope unpacks a POST body (within its
 * budget), the timestamp and nonce precheck, the request signature, then the upload path of
 * fl__devapi_update: the budgeted UpdateUpload unpack, the upload digest, the update
 * signature, the delta checked against a model layout, its norm and its fold into an
 * aggregate. The window is unbounded so that seeds signed long ago still reach the signature.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "codec.h"
#include "digest.h"
#include "fuzz_common.h"
#include "mem.h"
#include "server.h"

static fl_srv g_srv;
static fl_tensor_info *g_layout;
static size_t g_n_layout, g_n_params;

static void setup(void) {
  fl_model_spec spec;
  fz_spec(&spec);
  g_srv.cfg.ts_window_ms = INT64_MAX;
  g_srv.cfg.max_samples = 1000000;
  if (fl__layout_new(&spec, &g_layout, &g_n_layout, NULL) != 0)
    abort();
  for (size_t i = 0; i < g_n_layout; i++)
    g_n_params += g_layout[i].count;
}

static void check_upload(const Fl__V1__SignedRequest *sr) {
  ProtobufCAllocator pa;
  fl_pb_budget pb;
  fl_resp r = {0};
  size_t heap = fz_heap_bytes();
  fl__protobuf_budget(&pa, &pb, NULL, sr->body.len);
  Fl__V1__UpdateUpload *u = fl__v1__update_upload__unpack(&pa, sr->body.len, sr->body.data);
  FZ_ASSERT(fz_heap_bytes() <= heap + FZ_PB_BUDGET(sr->body.len));
  if (u == NULL)
    return;
  uint8_t content[FL_SHA256_LEN], signed_digest[FL_SHA256_LEN];
  if (fl__update_digest(sr->device_id, sr->timestamp_ms, sr->nonce.data, sr->nonce.len, u, content,
                        signed_digest) == 0)
    if (fl__auth_verify(signed_digest, &u->signature, fz_pub(), false, &r) == 0 &&
        getenv("FZ_DEBUG") != NULL) /* to see that a seed gets past the signature */
      fprintf(stderr, "upload signature verifies\n");
  free(r.data);
  /* What check_delta and the accumulator do with an authenticated delta. */
  if (fl__delta_check_layout(g_layout, g_n_layout, u->delta, u->n_delta) == 0) {
    double sq = 0;
    float *acc = calloc(g_n_params, sizeof *acc);
    if (acc == NULL)
      abort();
    for (size_t i = 0; i < u->n_delta; i++) {
      double s = fl__tensor_sqnorm(u->delta[i]);
      FZ_ASSERT(!(s < 0));
      sq += s;
      fl__tensor_fold(u->delta[i], 1.0f, acc + g_layout[i].offset);
    }
    /* Checked values are finite, so is their fold with weight 1 and their squared norm. */
    for (size_t i = 0; i < g_n_params; i++)
      FZ_ASSERT(isfinite(acc[i]));
    FZ_ASSERT(!isnan(sq));
    free(acc);
  }
  fl__v1__update_upload__free_unpacked(u, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (g_layout == NULL)
    setup();
  fl_req q = {0};
  fl_resp r = {0};
  q.method = "POST";
  q.path = "/v1/updates";
  q.body = (uint8_t *)data;
  q.len = q.cap = size;
  size_t heap = fz_heap_bytes();
  Fl__V1__SignedRequest *sr = fl__auth_envelope(&g_srv, &q, &r);
  FZ_ASSERT(fz_heap_bytes() <= heap + FZ_PB_BUDGET(size));
  if (sr == NULL) {
    FZ_ASSERT(r.status == 400);
    free(r.data);
    return 0;
  }
  if (fl__auth_precheck(&g_srv, sr, &r) == 0) {
    (void)fl__auth_signature(&q, sr, fz_pub(), &r);
    check_upload(sr);
  }
  free(r.data);
  fl__v1__signed_request__free_unpacked(sr, NULL);
  return 0;
}
