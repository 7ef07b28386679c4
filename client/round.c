/*
 * One training round as a step machine:
 *
 *   IDLE -> CHECKIN -> [FETCH_ROLLOUT] -> [[FETCH_EVAL] -> EVAL_REPORT] -> [FETCH_BASE]
 *        -> TRAIN -> UPLOAD -> DONE
 *                  \-> DONE (not selected: retry window)
 *
 * Network phases never block longer than the caller's timeout: fl_client_step() polls the
 * transport and returns WAIT_IO or WAIT_TIME (a backoff) when there is nothing to do yet. TRAIN
 * is CPU work the caller runs with fl_client_train(), on any thread, so that few threads can
 * drive many clients. A check-in that assigns a new inference version fetches, verifies and
 * activates it on the way; a refused version does not stop training (the result tells).
 * A check-in that carries an evaluation task (and hold-out data is set) evaluates that
 * version and reports the metrics (evaluate.c); a failed evaluation does not stop training
 * either. Models already in the cache (by hash) are not downloaded again.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <protobuf-c/protobuf-c.h>

#include "client_internal.h"
#include "digest.h"

void fl__round_reset(fl_client *c) {
  fl__exchange_end(c);
  fl__sa_end(c);
  fl__request_clear(c);
  fl__loaded_free(&c->base);
  c->have_task = false;
  c->want_rollout = false;
  c->rollout_assigned = false;
  c->want_eval = false;
  memset(&c->task, 0, sizeof c->task);
  memset(&c->result, 0, sizeof c->result);
  c->phase = FL__PH_IDLE;
  c->attempts = 0;
  c->wake_at_ms = 0;
}

void fl__round_finish(fl_client *c, fl_round_outcome outcome, int err) {
  fl__exchange_end(c);
  fl__sa_end(c);
  fl__request_clear(c);
  fl__loaded_free(&c->base);
  c->result.outcome = outcome;
  c->result.err = err;
  c->result.running_version = c->active.version;
  c->phase = FL__PH_DONE;
  c->wake_at_ms = 0;
}

static int pack_checkin(fl_client *c) {
  Fl__V1__CheckInRequest req;
  Fl__V1__DriftStats ds;
  fl__v1__check_in_request__init(&req);
  req.model_id = c->want_model_id;
  req.running_version = c->active.version;
  req.running_model_id = c->active.model_id;
  char *conds[FL__CONDITIONS_MAX];
  req.n_conditions = fl__conditions_view(c, conds);
  req.conditions = conds;
  const fl__drift_acc *acc = fl__drift_due(c);
  if (acc != NULL) {
    fl__drift_msg(acc, &ds);
    req.service_stats = &ds;
  }
  /* Three varints, the conditions (each at most 63 bytes and its two-byte header), and at most
   * 256 features x 2 doubles and 64 bins of statistics. */
  uint8_t buf[64 + FL__CONDITIONS_MAX * (FL__CONDITION_LEN + 2) + 2 * 9 * FL__DRIFT_MAX_FEATURES +
              10 * FL__DRIFT_MAX_BINS + 64];
  size_t n = fl__v1__check_in_request__get_packed_size(&req);
  if (n > sizeof buf)
    return FL_E_TOOBIG;
  fl__v1__check_in_request__pack(&req, buf);
  return fl__request_set(c, "POST", "/v1/checkin", buf, n);
}

fl_err fl_client_round_begin(fl_client *c) {
  if (c == NULL)
    return FL_E_INVAL;
  if (!fl_client_is_enrolled(c))
    return FL_E_NOT_ENROLLED;
  if (c->phase != FL__PH_IDLE && c->phase != FL__PH_DONE)
    return FL_E_STATE;
  fl__round_reset(c);
  int err = pack_checkin(c);
  if (err != FL_OK)
    return err;
  c->phase = FL__PH_CHECKIN;
  c->round_gen++;
  c->errmsg[0] = '\0';
  return FL_OK;
}

static int set_fetch(fl_client *c, fl__phase phase, uint64_t model_id, uint64_t version) {
  char path[96];
  snprintf(path, sizeof path, "/v1/models/%" PRIu64 "/versions/%" PRIu64, model_id, version);
  int err = fl__request_set(c, "GET", path, NULL, 0);
  if (err == FL_OK)
    c->phase = phase;
  return err;
}

/* Tries the cache for the rollout model; FL_OK when nothing more is needed for it. */
static int rollout_from_cache(fl_client *c) {
  return fl__inference_activate_cached(c, c->rollout.sha256);
}

/* Without rollouts, a device may serve the newest version it trains on. The base is in the
 * cache by now (the download stored it); a second, untrained copy is loaded from there. */
static int follow_base(fl_client *c) {
  const fl__loaded_model *a = &c->active;
  if (!c->follow_base || c->rollout_assigned ||
      (a->model != NULL && a->model_id == c->task.model_id && a->version >= c->task.base_version))
    return FL_OK;
  fl__loaded_model lm = {0};
  int err = fl__cache_load(c, c->task.base_sha256, &lm);
  if (err == FL_OK)
    err = fl__inference_activate(c, &lm);
  if (err != FL_OK) {
    fl__loaded_free(&lm);
    c->result.rollout_err = err;
    return err == FL_E_NOMEM ? err : FL_OK;
  }
  fl__cache_prune(c);
  return FL_OK;
}

static int advance(fl_client *c);

/* Ends the evaluation task; a failure is noted in the result and the round goes on. */
static int eval_done(fl_client *c, int err) {
  if (err == FL_E_NOMEM)
    return err;
  c->result.eval_err = err;
  c->want_eval = false;
  return advance(c);
}

/* Evaluates the verified model (freed here) and queues the report. */
static int eval_start(fl_client *c, fl__loaded_model *lm) {
  int err = fl__eval_run(c, lm);
  fl__loaded_free(lm);
  if (err != FL_OK)
    return eval_done(c, err);
  c->phase = FL__PH_EVAL_REPORT;
  return FL_OK;
}

/* Chooses the next phase after the check-in or a download. */
static int advance(fl_client *c) {
  if (c->want_rollout) {
    int err = rollout_from_cache(c);
    if (err == FL_E_NOMEM)
      return err;
    if (err != FL_OK)
      return set_fetch(c, FL__PH_FETCH_ROLLOUT, c->rollout.model_id, c->rollout.version);
    c->want_rollout = false;
    fl__cache_prune(c);
  }
  if (c->want_eval) {
    fl__loaded_model lm = {0};
    int err = fl__cache_load(c, c->eval.sha256, &lm);
    if (err == FL_E_NOMEM)
      return err;
    if (err != FL_OK)
      return set_fetch(c, FL__PH_FETCH_EVAL, c->eval.model_id, c->eval.version);
    return eval_start(c, &lm);
  }
  if (!c->have_task) {
    fl__round_finish(c, FL_ROUND_NOT_SELECTED, FL_OK);
    return FL_OK;
  }
  if (!fl__loaded_have(&c->base)) {
    int err = fl__cache_load_base(c, c->task.base_sha256, &c->base);
    if (err == FL_E_NOMEM)
      return err;
    if (err != FL_OK)
      return set_fetch(c, FL__PH_FETCH_BASE, c->task.model_id, c->task.base_version);
  }
  /* Secure aggregation: the keys go first, the training after the share exchange. */
  if (c->task.sa_threshold > 0 && c->sa == NULL) {
    int err = follow_base(c);
    return err == FL_OK ? fl__sa_begin(c) : err;
  }
  c->phase = FL__PH_TRAIN;
  return follow_base(c);
}

static void copy_task(fl_client *c, const Fl__V1__TrainTask *t) {
  fl__task *k = &c->task;
  memset(k, 0, sizeof *k);
  k->round_id = t->round_id;
  k->model_id = t->model_id;
  k->base_version = t->base_version;
  k->seed = t->seed;
  memcpy(k->base_sha256, t->base_sha256.data, FL_SHA256_LEN);
  const Fl__V1__Hyperparameters *h = t->hyperparameters;
  k->local_epochs = h != NULL && h->local_epochs > 0 ? h->local_epochs : 1;
  k->batch_size = h != NULL && h->batch_size > 0 ? h->batch_size : 32;
  if (k->batch_size > FL__TASK_MAX_BATCH)
    k->batch_size = FL__TASK_MAX_BATCH; /* the same examples, in smaller steps */
  k->learning_rate = h != NULL && h->learning_rate > 0 ? h->learning_rate : 0.01f;
  k->momentum = h != NULL ? h->momentum : 0;
  k->weight_decay = h != NULL ? h->weight_decay : 0;
  k->prox_mu = h != NULL ? h->prox_mu : 0;
  k->clip_norm = t->clip_norm;
  k->noise_stddev = t->noise_stddev;
  k->topk_fraction = t->topk_fraction;
  k->encoding = t->encoding != 0 ? (int)t->encoding : FL__V1__ENCODING__ENCODING_FLOAT32;
  k->deadline_ms = t->deadline_ms;
  if (t->secure_aggregation != NULL) {
    k->sa_threshold = t->secure_aggregation->threshold;
    k->sa_neighbors = t->secure_aggregation->neighbors;
  }
  c->have_task = true;
  c->result.round_id = t->round_id;
  c->result.model_id = t->model_id;
  c->result.base_version = t->base_version;
}

static void note_rollout(fl_client *c, const Fl__V1__RolloutAssignment *r) {
  if (r == NULL || r->version == 0 || r->sha256.len != FL_SHA256_LEN)
    return;
  c->rollout_assigned = true;
  if (c->active.model != NULL && memcmp(c->active.sha256, r->sha256.data, FL_SHA256_LEN) == 0)
    return;
  c->rollout.model_id = r->model_id;
  c->rollout.version = r->version;
  memcpy(c->rollout.sha256, r->sha256.data, FL_SHA256_LEN);
  c->want_rollout = true;
}

/* A task is the coordinator's only if its signature verifies with the pinned key, for this
 * device (docs/SIGNING.md, "Task digest"): otherwise anyone on the path could set the sizes
 * the device allocates and trains for, or the hyperparameters of its update. What it may ask
 * is bounded even then, before anything is allocated for it. */
static int check_task(fl_client *c, const Fl__V1__TrainTask *t) {
  if (t->base_sha256.len != FL_SHA256_LEN || t->round_id == 0) {
    fl__client_err(c, "check-in task lacks the round or the base model hash");
    return FL_E_PARSE;
  }
  uint8_t d[FL_SHA256_LEN];
  int err = fl__task_digest(c->device_id, t, d);
  if (err != FL_OK)
    return err;
  if (!c->have_coord_pub ||
      fl__verify_raw(c->coord_pub, d, sizeof d, t->signature.data, t->signature.len) != FL_OK) {
    fl__client_err(c,
                   "check-in task of round %" PRIu64 " refused: %s with the pinned coordinator key",
                   t->round_id, t->signature.len == 0 ? "it is unsigned" : "its signature fails");
    return FL_E_BADSIG;
  }
  /* Secure aggregation quantizes within the clip and needs t <= k shares (SECAGG.md). */
  const Fl__V1__SecAggTask *sa = t->secure_aggregation;
  if (sa != NULL && (sa->threshold == 0 || sa->threshold > sa->neighbors || !(t->clip_norm > 0))) {
    fl__client_err(c,
                   "check-in task of round %" PRIu64
                   " asks for secure aggregation with threshold"
                   " %" PRIu32 " of %" PRIu32 " neighbours and clip %g: refused",
                   t->round_id, sa->threshold, sa->neighbors, (double)t->clip_norm);
    return FL_E_PARSE;
  }
  const Fl__V1__Hyperparameters *h = t->hyperparameters;
  if (h != NULL && h->local_epochs > FL__TASK_MAX_EPOCHS) {
    fl__client_err(c, "check-in task asks for %" PRIu32 " local epochs (at most %u): refused",
                   h->local_epochs, FL__TASK_MAX_EPOCHS);
    return FL_E_TOOBIG;
  }
  return FL_OK;
}

/* RetryWindow.retry_after_ms (coordinator's Unix ms) as a local time, at most a day away: a
 * window of years would park the gateway for ever. */
static int64_t retry_at(const fl_client *c, int64_t at_ms) {
  int64_t local = fl__sub_sat(at_ms, c->clock_offset_ms);
  int64_t latest = fl__add_sat(fl__client_now_ms(), FL__WAIT_MAX_MS);
  return local < latest ? local : latest;
}

static int on_checkin(fl_client *c, const fl_http_response *resp) {
  fl__answer_arena ar;
  Fl__V1__CheckInResponse *r = (Fl__V1__CheckInResponse *)fl__answer_unpack(
      c, &ar, &fl__v1__check_in_response__descriptor, resp, "check-in answer");
  if (r == NULL)
    return FL_E_PARSE;
  int err = FL_OK;
  /* Timestamps we sign must fall in the coordinator's window, whatever our clock says. */
  if (r->server_time_ms > 0)
    c->clock_offset_ms = r->server_time_ms - fl__client_now_ms();
  note_rollout(c, r->rollout);
  fl__eval_note(c, r->eval);
  if (r->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_TASK) {
    err = check_task(c, r->task);
    if (err == FL_OK)
      copy_task(c, r->task);
  } else if (r->assignment_case == FL__V1__CHECK_IN_RESPONSE__ASSIGNMENT_RETRY &&
             r->retry->retry_after_ms > 0) {
    c->result.retry_at_ms = retry_at(c, r->retry->retry_after_ms);
  }
  fl__v1__check_in_response__free_unpacked(r, &ar.pa);
  return err;
}

/* A downloaded model: verify, cache, then activate (rollout) or keep as the base (task). */
static int on_model(fl_client *c, const fl_http_response *resp) {
  bool rollout = c->phase == FL__PH_FETCH_ROLLOUT;
  const uint8_t *sha = rollout ? c->rollout.sha256 : c->task.base_sha256;
  fl__loaded_model lm = {0};
  char why[FL__ERRMSG_MAX];
  if (resp->status != 200) {
    fl__client_err(c, "model download: unexpected HTTP %d", resp->status);
    return FL_E_PARSE;
  }
  int err = fl__model_verify(resp->body, resp->body_len, c->coord_pub, sha, c->alloc, &lm, why,
                             sizeof why);
  if (err != FL_OK) {
    fl__client_err(c, "model refused: %s", why);
    return err;
  }
  err = fl__cache_store(c, sha, resp->body, resp->body_len);
  if (err != FL_OK && rollout)
    goto out_free; /* an inference model must survive a reboot */
  if (!rollout) {
    fl__store_adopt(c, &lm, resp->body, resp->body_len); /* shared with the process's clients */
    c->base = lm;
    return FL_OK;
  }
  err = fl__inference_activate(c, &lm);
  if (err != FL_OK)
    goto out_free;
  fl__cache_prune(c);
  return FL_OK;
out_free:
  fl__loaded_free(&lm);
  return err;
}

static int on_upload(fl_client *c, const fl_http_response *resp) {
  fl__answer_arena ar;
  Fl__V1__UpdateAck *a = (Fl__V1__UpdateAck *)fl__answer_unpack(
      c, &ar, &fl__v1__update_ack__descriptor, resp, "upload acknowledgement");
  if (a == NULL)
    return FL_E_PARSE;
  c->result.duplicate = a->duplicate;
  c->result.upload_bytes = c->wire_len;
  fl__v1__update_ack__free_unpacked(a, &ar.pa);
  return FL_OK;
}

/* The version an evaluation gate asked for: verified against the task's hash and the
 * coordinator's signature like any model, then evaluated. Not cached: it is not run. */
static int on_eval_model(fl_client *c, const fl_http_response *resp) {
  fl__loaded_model lm = {0};
  char why[FL__ERRMSG_MAX];
  if (resp->status != 200) {
    fl__client_err(c, "evaluation model download: unexpected HTTP %d", resp->status);
    return eval_done(c, FL_E_PARSE);
  }
  int err = fl__model_verify(resp->body, resp->body_len, c->coord_pub, c->eval.sha256, c->alloc,
                             &lm, why, sizeof why);
  if (err != FL_OK) {
    fl__client_err(c, "evaluation model refused: %s", why);
    return eval_done(c, err);
  }
  return eval_start(c, &lm);
}

/* Handles a complete answer for the current phase and moves on. */
static int on_answer(fl_client *c, const fl_http_response *resp) {
  int err;
  switch (c->phase) {
    case FL__PH_CHECKIN:
      err = on_checkin(c, resp);
      fl__drift_checkin_done(c, err == FL_OK);
      fl__exchange_end(c);
      return err == FL_OK ? advance(c) : err;
    case FL__PH_FETCH_ROLLOUT:
      err = on_model(c, resp);
      fl__exchange_end(c);
      if (err == FL_E_NOMEM)
        return err;
      /* A refused inference model leaves the active one in place; training goes on. */
      c->result.rollout_err = err;
      c->want_rollout = false;
      return advance(c);
    case FL__PH_FETCH_EVAL:
      err = on_eval_model(c, resp);
      fl__exchange_end(c);
      return err;
    case FL__PH_EVAL_REPORT:
      fl__exchange_end(c);
      return eval_done(c, FL_OK);
    case FL__PH_FETCH_BASE:
      err = on_model(c, resp);
      fl__exchange_end(c);
      return err == FL_OK ? advance(c) : err;
    case FL__PH_UPLOAD:
      err = on_upload(c, resp);
      if (err == FL_OK && c->sa != NULL)
        return fl__sa_after_upload(c);
      if (err == FL_OK)
        fl__round_finish(c, FL_ROUND_UPLOADED, FL_OK);
      return err;
    case FL__PH_SA_KEYS:
    case FL__PH_SA_POLL:
    case FL__PH_SA_SHARES:
    case FL__PH_SA_UNMASK:
      return fl__sa_on_answer(c, resp);
    default:
      return FL_E_STATE;
  }
}

/* Local-clock deadline for the exchanges of the task (the coordinator's clock may differ). */
static int64_t phase_deadline(const fl_client *c) {
  if (!c->have_task || c->task.deadline_ms <= 0 || c->phase == FL__PH_FETCH_ROLLOUT ||
      c->phase == FL__PH_FETCH_EVAL || c->phase == FL__PH_EVAL_REPORT)
    return 0;
  /* A secure-aggregation round's deadline moves with its phases (SECAGG.md "Protocol"). */
  if (c->sa != NULL)
    return 0;
  return fl__sub_sat(c->task.deadline_ms, c->clock_offset_ms);
}

static int network_step(fl_client *c, int timeout_ms, fl_step *step) {
  fl_http_response resp;
  int64_t retry_at = c->result.retry_at_ms;
  int err = fl__exchange_step(c, timeout_ms, phase_deadline(c), &resp, step);
  if (err == FL_E_AGAIN)
    return FL_E_AGAIN;
  if (err == FL_OK)
    return on_answer(c, &resp);
  if ((c->phase == FL__PH_FETCH_EVAL || c->phase == FL__PH_EVAL_REPORT) && err != FL_E_NOMEM) {
    /* The check-in's retry window stands; a refused report only loses this evaluation. */
    c->result.retry_at_ms = retry_at;
    return eval_done(c, err);
  }
  if (c->phase == FL__PH_FETCH_ROLLOUT && err != FL_E_NOMEM) {
    c->result.rollout_err = err;
    c->want_rollout = false;
    return advance(c);
  }
  return err;
}

fl_err fl_client_step(fl_client *c, int timeout_ms, fl_step *step) {
  if (c == NULL || step == NULL)
    return FL_E_INVAL;
  int64_t until = fl__client_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    switch (c->phase) {
      case FL__PH_IDLE:
        *step = FL_STEP_IDLE;
        return FL_OK;
      case FL__PH_DONE:
        *step = FL_STEP_DONE;
        return c->result.err;
      case FL__PH_TRAIN:
        *step = FL_STEP_NEED_TRAIN;
        return FL_OK;
      default:
        break;
    }
    int64_t left = until - fl__client_now_ms();
    int err = network_step(c, left > 0 ? (int)left : 0, step);
    if (err == FL_E_AGAIN)
      return FL_OK;
    if (err != FL_OK) {
      fl__round_finish(c, FL_ROUND_FAILED, err);
      *step = FL_STEP_DONE;
      return err;
    }
  }
}

int64_t fl_client_wake_at_ms(const fl_client *c) {
  return c != NULL && c->io == FL__IO_BACKOFF ? c->wake_at_ms : 0;
}

fl_err fl_client_round_result(const fl_client *c, fl_round_result *out) {
  if (c == NULL || out == NULL)
    return FL_E_INVAL;
  return fl__copy_out(out, &c->result, sizeof c->result, sizeof c->result);
}

void fl_client_round_cancel(fl_client *c) {
  if (c != NULL)
    fl__round_reset(c);
}

static void sleep_until(int64_t wake_ms) {
  int64_t d = wake_ms - fl__client_now_ms();
  if (d <= 0)
    return;
  struct timespec ts = {.tv_sec = d / 1000, .tv_nsec = (long)(d % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

fl_err fl_client_run_round(fl_client *c, fl_round_result *result) {
  fl_round_result failed = {.size = sizeof failed, .outcome = FL_ROUND_FAILED};
  /* A bad size is refused before anything is sent: the result could not be reported. */
  if (result != NULL && fl__copy_out(result, &failed, sizeof failed, sizeof failed) != FL_OK)
    return FL_E_INVAL;
  int err = fl_client_round_begin(c);
  if (err != FL_OK) {
    failed.err = err;
    if (result != NULL)
      fl__copy_out(result, &failed, sizeof failed, sizeof failed);
    return err;
  }
  fl_step step = FL_STEP_IDLE;
  do {
    err = fl_client_step(c, 1000, &step);
    if (step == FL_STEP_NEED_TRAIN)
      fl_client_train(c); /* a failure ends the round; the next step reports it */
    else if (step == FL_STEP_WAIT_TIME)
      sleep_until(c->wake_at_ms);
  } while (step != FL_STEP_DONE && step != FL_STEP_IDLE);
  if (result != NULL)
    fl__copy_out(result, &c->result, sizeof c->result, sizeof c->result);
  return c->result.outcome == FL_ROUND_FAILED ? c->result.err : FL_OK;
}
