/*
 * Enrollment: a device proves possession of a one-time token and registers its public key; the
 * coordinator answers with the device id and its own public key, which is pinned from then on
 * (models and tasks are verified against it). The answer itself is not signed: it is only as
 * trustworthy as the channel, so enrollment needs TLS or a provisioned coordinator_key (which
 * the answer must match); plain http is the embedder's explicit choice (allow_insecure_http).
 * The device key is created before the first attempt and
 * kept if enrollment fails, so a retry presents the same key.
 */
#include <string.h>
#include <time.h>

#include <protobuf-c/protobuf-c.h>

#include "client_internal.h"

static int pack_enroll(fl_client *c, const char *token, const fl_label *labels, size_t n_labels,
                       const char *firmware, uint8_t **out, size_t *out_len) {
  uint8_t pub[FL_PUBKEY_LEN];
  int err = fl__key_public(c->key, pub);
  if (err != FL_OK)
    return err;
  Fl__V1__EnrollRequest req;
  fl__v1__enroll_request__init(&req);
  req.enrollment_token = (char *)token;
  req.public_key.data = pub;
  req.public_key.len = sizeof pub;
  req.firmware = (char *)(firmware != NULL ? firmware : "");
  Fl__V1__Label *items = NULL;
  Fl__V1__Label **ptrs = NULL;
  err = FL_E_NOMEM;
  if (n_labels > 0) {
    items = fl__calloc(c->alloc, n_labels, sizeof *items);
    ptrs = fl__calloc(c->alloc, n_labels, sizeof *ptrs);
    if (items == NULL || ptrs == NULL)
      goto out_free;
    for (size_t i = 0; i < n_labels; i++) {
      fl__v1__label__init(&items[i]);
      items[i].key = (char *)(labels[i].key != NULL ? labels[i].key : "");
      items[i].value = (char *)(labels[i].value != NULL ? labels[i].value : "");
      ptrs[i] = &items[i];
    }
    req.labels = ptrs;
    req.n_labels = n_labels;
  }
  size_t n = fl__v1__enroll_request__get_packed_size(&req);
  uint8_t *buf = fl__malloc(c->alloc, n);
  if (buf == NULL)
    goto out_free;
  fl__v1__enroll_request__pack(&req, buf);
  *out = buf;
  *out_len = n;
  err = FL_OK;
out_free:
  fl__free(c->alloc, ptrs);
  fl__free(c->alloc, items);
  return err;
}

static void sleep_until(int64_t wake_ms) {
  int64_t d = wake_ms - fl__client_now_ms();
  if (d <= 0)
    return;
  struct timespec ts = {.tv_sec = d / 1000, .tv_nsec = (long)(d % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int accept_answer(fl_client *c, const fl_http_response *resp) {
  fl__answer_arena ar;
  Fl__V1__EnrollResponse *r = (Fl__V1__EnrollResponse *)fl__answer_unpack(
      c, &ar, &fl__v1__enroll_response__descriptor, resp, "enrollment answer");
  if (r == NULL)
    return FL_E_PARSE;
  int err = FL_E_PARSE;
  if (r->device_id == 0 || r->coordinator_public_key.len != FL_PUBKEY_LEN) {
    fl__client_err(c, "enrollment answer lacks the device id or the coordinator key");
    goto out_free;
  }
  if (c->coord_from_opts &&
      memcmp(c->coord_pub, r->coordinator_public_key.data, FL_PUBKEY_LEN) != 0) {
    fl__client_err(c, "coordinator key differs from the provisioned one; not enrolled");
    err = FL_E_BADSIG;
    goto out_free;
  }
  err = fl__state_save_identity(c, r->device_id, r->coordinator_public_key.data);
  if (err == FL_OK)
    fl__log(&c->log, FL_LOG_INFO, "enrolled as device %llu", (unsigned long long)r->device_id);
  if (err == FL_OK && c->insecure_http && !c->coord_from_opts)
    fl__log(&c->log, FL_LOG_WARN,
            "enrolled over plain http without a provisioned coordinator key: the key now pinned "
            "is whatever the network answered");
out_free:
  fl__v1__enroll_response__free_unpacked(r, &ar.pa);
  return err;
}

fl_err fl_client_enroll(fl_client *c, const char *token, const fl_label *labels, size_t n_labels,
                        const char *firmware) {
  if (c == NULL || token == NULL || (labels == NULL && n_labels > 0))
    return FL_E_INVAL;
  if (fl_client_is_enrolled(c))
    return FL_OK;
  /* Enrollment blocks on the transport; in an fl_multi the multi drives it instead. */
  if ((c->phase != FL__PH_IDLE && c->phase != FL__PH_DONE) || c->multi != NULL)
    return FL_E_STATE;
  int err = fl__state_load_key(c, true);
  if (err != FL_OK)
    return err;
  uint8_t *body = NULL;
  size_t len = 0;
  err = pack_enroll(c, token, labels, n_labels, firmware, &body, &len);
  if (err != FL_OK)
    return err;
  /* The envelope says device 0: the key inside the body signs this request. */
  c->device_id = 0;
  err = fl__request_set(c, "POST", "/v1/enroll", body, len);
  fl__free(c->alloc, body);
  if (err != FL_OK)
    return err;
  c->attempts = 0;
  fl_http_response resp;
  fl_step step;
  for (;;) {
    err = fl__exchange_step(c, 250, 0, &resp, &step);
    if (err != FL_E_AGAIN)
      break;
    if (step == FL_STEP_WAIT_TIME)
      sleep_until(c->wake_at_ms);
  }
  if (err == FL_OK)
    err = accept_answer(c, &resp);
  fl__exchange_end(c);
  fl__request_clear(c);
  c->attempts = 0;
  return err;
}
