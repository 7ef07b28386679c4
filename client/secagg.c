/*
 * The device's side of secure aggregation (secagg_dev.h; the bytes in docs/SECAGG.md), and the
 * steps of a secure-aggregation round in libflclient's state machine (round.c):
 *
 *   ... FETCH_BASE -> SA_KEYS -> SA_POLL (shares) -> SA_SHARES -> TRAIN -> SA_POLL (masked)
 *       -> UPLOAD (the masked input) -> SA_POLL (unmask) -> SA_UNMASK -> DONE
 *
 * A poll asks the coordinator to hold it until the phase it waits for comes (a long poll,
 * SA_HOLD_MS); one answered before that phase looks again after the answer's poll_after_ms,
 * or SA_POLL_MS when the coordinator gave none (a backoff: FL_STEP_WAIT_TIME, no thread held).
 */
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "client_internal.h"
#include "digest.h"
#include "fl/err.h"
#include "secagg.h"
#include "secagg_dev.h"

int fl__sa_dev_init(fl_sa_dev *d, uint64_t round_id, uint64_t device_id, uint32_t threshold,
                    const fl_key *key, Fl__V1__SecAggAdvertise *adv) {
  uint8_t dg[FL_SHA256_LEN];
  memset(d, 0, sizeof *d);
  d->round_id = round_id;
  d->device_id = device_id;
  d->threshold = threshold;
  int err = fl__x25519_generate(d->c_sk, d->c_pk);
  if (err == FL_OK)
    err = fl__x25519_generate(d->s_sk, d->s_pk);
  if (err == FL_OK)
    err = fl__random_bytes(d->b, sizeof d->b);
  if (err == FL_OK)
    err = fl__secagg_keys_digest(device_id, round_id, d->c_pk, sizeof d->c_pk, d->s_pk,
                                 sizeof d->s_pk, dg);
  if (err == FL_OK)
    err = fl__sign(key, dg, sizeof dg, d->sig);
  if (err != FL_OK) {
    fl__sa_dev_free(d);
    return err;
  }
  fl__v1__sec_agg_advertise__init(adv);
  adv->round_id = round_id;
  adv->c_pk = (ProtobufCBinaryData){sizeof d->c_pk, d->c_pk};
  adv->s_pk = (ProtobufCBinaryData){sizeof d->s_pk, d->s_pk};
  adv->signature = (ProtobufCBinaryData){sizeof d->sig, d->sig};
  return FL_OK;
}

/* One neighbour's keys, checked against its device key's signature. */
static int take_peer(fl_sa_dev *d, size_t i, const Fl__V1__SecAggPeer *p) {
  uint8_t dg[FL_SHA256_LEN];
  if (p->c_pk.len != FL_X25519_LEN || p->s_pk.len != FL_X25519_LEN ||
      p->device_key.len != FL_PUBKEY_LEN || p->participant == 0 || p->participant == d->self)
    return FL_E_PARSE;
  for (size_t j = 0; j < i; j++)
    if (d->peer[j] == p->participant)
      return FL_E_PARSE;
  int err = fl__secagg_keys_digest(p->device_id, d->round_id, p->c_pk.data, p->c_pk.len,
                                   p->s_pk.data, p->s_pk.len, dg);
  if (err == FL_OK &&
      fl__verify_raw(p->device_key.data, dg, sizeof dg, p->signature.data, p->signature.len))
    err = FL_E_BADSIG;
  if (err != FL_OK)
    return err;
  d->peer[i] = p->participant;
  memcpy(d->peer_cpk[i], p->c_pk.data, FL_X25519_LEN);
  memcpy(d->peer_spk[i], p->s_pk.data, FL_X25519_LEN);
  return FL_OK;
}

static int alloc_peers(fl_sa_dev *d, size_t k) {
  d->k = k;
  d->peer = calloc(k + 1, sizeof *d->peer);
  d->peer_cpk = calloc(k + 1, sizeof *d->peer_cpk);
  d->peer_spk = calloc(k + 1, sizeof *d->peer_spk);
  d->held_s = calloc(k + 1, sizeof *d->held_s);
  d->held_b = calloc(k + 1, sizeof *d->held_b);
  d->held = calloc(k + 1, sizeof *d->held);
  d->sealed = calloc(k + 1, FL_SECAGG_SEALED_BYTES);
  d->unmask = calloc(k + 1, FL_SHAMIR_SHARE_LEN);
  d->msgs = calloc(k + 1, sizeof *d->msgs);
  d->msg_ptrs = calloc(k + 1, sizeof *d->msg_ptrs);
  d->ushares = calloc(k + 1, sizeof *d->ushares);
  d->ushare_ptrs = calloc(k + 1, sizeof *d->ushare_ptrs);
  return d->peer && d->peer_cpk && d->peer_spk && d->held_s && d->held_b && d->held && d->sealed &&
                 d->unmask && d->msgs && d->msg_ptrs && d->ushares && d->ushare_ptrs
             ? FL_OK
             : FL_E_NOMEM;
}

/* The pairwise key for the share messages with neighbour i. */
static int share_key(const fl_sa_dev *d, size_t i, uint8_t key[FL_SECAGG_SEED_LEN]) {
  uint8_t shared[FL_X25519_LEN];
  int err = fl__x25519_agree(d->c_sk, d->peer_cpk[i], shared);
  if (err == FL_OK)
    err = fl__secagg_enc_key(shared, key);
  OPENSSL_cleanse(shared, sizeof shared);
  return err;
}

int fl__sa_dev_shares(fl_sa_dev *d, const Fl__V1__SecAggState *st, Fl__V1__SecAggShares *out) {
  fl_shamir_share *ss = NULL, *sb = NULL;
  uint8_t key[FL_SECAGG_SEED_LEN], pt[2 * FL_SHAMIR_SHARE_LEN];
  if (st->phase != FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES || st->participant == 0 ||
      st->round_id != d->round_id || d->peer != NULL)
    return FL_E_STATE;
  if (st->n_neighbors < d->threshold)
    return FL_E_REFUSED;
  d->self = st->participant;
  d->n = st->n;
  int err = alloc_peers(d, st->n_neighbors);
  for (size_t i = 0; err == FL_OK && i < d->k; i++)
    err = take_peer(d, i, st->neighbors[i]);
  ss = calloc(d->k + 1, sizeof *ss);
  sb = calloc(d->k + 1, sizeof *sb);
  if (err == FL_OK && (ss == NULL || sb == NULL))
    err = FL_E_NOMEM;
  if (err == FL_OK)
    err = fl__shamir_split(d->s_sk, d->threshold, d->peer, (uint32_t)d->k, ss);
  if (err == FL_OK)
    err = fl__shamir_split(d->b, d->threshold, d->peer, (uint32_t)d->k, sb);
  for (size_t i = 0; err == FL_OK && i < d->k; i++) {
    uint8_t *ct = d->sealed + i * FL_SECAGG_SEALED_BYTES;
    fl__shamir_encode(&ss[i], pt);
    fl__shamir_encode(&sb[i], pt + FL_SHAMIR_SHARE_LEN);
    err = share_key(d, i, key);
    if (err == FL_OK)
      err = fl__secagg_seal(key, d->round_id, d->self, d->peer[i], pt, sizeof pt, ct);
    fl__v1__sec_agg_sealed__init(&d->msgs[i]);
    d->msgs[i].sender = d->self;
    d->msgs[i].receiver = d->peer[i];
    d->msgs[i].ciphertext = (ProtobufCBinaryData){FL_SECAGG_SEALED_BYTES, ct};
    d->msg_ptrs[i] = &d->msgs[i];
  }
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(pt, sizeof pt);
  if (ss != NULL)
    OPENSSL_cleanse(ss, d->k * sizeof *ss);
  if (sb != NULL)
    OPENSSL_cleanse(sb, d->k * sizeof *sb);
  free(ss);
  free(sb);
  if (err != FL_OK)
    return err;
  fl__v1__sec_agg_shares__init(out);
  out->round_id = d->round_id;
  out->n_shares = d->k;
  out->shares = d->msg_ptrs;
  return FL_OK;
}

static int peer_index(const fl_sa_dev *d, uint32_t x) {
  for (size_t i = 0; i < d->k; i++)
    if (d->peer[i] == x)
      return (int)i;
  return -1;
}

/* Opens the shares the live neighbours sent into held_s / held_b. */
static int open_inbox(fl_sa_dev *d, const Fl__V1__SecAggState *st) {
  uint8_t key[FL_SECAGG_SEED_LEN], pt[2 * FL_SHAMIR_SHARE_LEN];
  int err = FL_OK;
  for (size_t j = 0; j < st->n_inbox && err == FL_OK; j++) {
    const Fl__V1__SecAggSealed *m = st->inbox[j];
    int i = peer_index(d, m->sender);
    if (i < 0 || d->held[i] || m->receiver != d->self ||
        m->ciphertext.len != FL_SECAGG_SEALED_BYTES) {
      err = FL_E_PARSE;
      break;
    }
    err = share_key(d, (size_t)i, key);
    if (err == FL_OK)
      err = fl__secagg_open(key, d->round_id, m->sender, d->self, m->ciphertext.data,
                            m->ciphertext.len, pt);
    if (err == FL_OK && (fl__shamir_decode(pt, &d->held_s[i]) != FL_OK ||
                         fl__shamir_decode(pt + FL_SHAMIR_SHARE_LEN, &d->held_b[i]) != FL_OK ||
                         d->held_s[i].x != d->self || d->held_b[i].x != d->self))
      err = FL_E_PARSE;
    d->held[i] = err == FL_OK;
  }
  OPENSSL_cleanse(key, sizeof key);
  OPENSSL_cleanse(pt, sizeof pt);
  return err;
}

/* The pairwise mask seed with neighbour i. */
static int pair_seed(const fl_sa_dev *d, size_t i, uint8_t seed[FL_SECAGG_SEED_LEN]) {
  uint8_t shared[FL_X25519_LEN];
  int err = fl__x25519_agree(d->s_sk, d->peer_spk[i], shared);
  if (err == FL_OK)
    err = fl__secagg_mask_seed(shared, seed);
  OPENSSL_cleanse(shared, sizeof shared);
  return err;
}

int fl__sa_dev_premask(fl_sa_dev *d, const float *x, size_t len, double clip) {
  fl_secagg_quant qt;
  uint8_t(*seeds)[FL_SECAGG_SEED_LEN] = NULL;
  if (d->peer == NULL || d->pre != NULL)
    return FL_E_STATE;
  uint32_t *y = malloc((len + 1) * sizeof *y);
  seeds = calloc(d->k + 1, sizeof *seeds);
  int err = y != NULL && seeds != NULL ? fl__secagg_quant_init(&qt, clip, d->n) : FL_E_NOMEM;
  if (err == FL_OK)
    err = fl__secagg_quantize(&qt, x, len, y);
  for (size_t i = 0; err == FL_OK && i < d->k; i++)
    err = pair_seed(d, i, seeds[i]);
  if (err == FL_OK)
    err = fl__secagg_mask(y, len, d->self, d->b, d->peer,
                          (const uint8_t(*)[FL_SECAGG_SEED_LEN])seeds, d->k, y);
  if (seeds != NULL)
    OPENSSL_cleanse(seeds, d->k * sizeof *seeds);
  free(seeds);
  if (err != FL_OK) {
    if (y != NULL)
      OPENSSL_cleanse(y, len * sizeof *y);
    free(y);
    return err;
  }
  d->pre = y;
  d->pre_len = len;
  return FL_OK;
}

/* fl__sa_dev_mask from the premasked input: the masks of the neighbours not held removed. */
static int mask_from_pre(fl_sa_dev *d, uint32_t *yw) {
  uint8_t seed[FL_SECAGG_SEED_LEN];
  size_t live = 0;
  int err = FL_OK;
  for (size_t i = 0; i < d->k; i++)
    live += d->held[i];
  if (live < d->threshold)
    return FL_E_REFUSED;
  memcpy(yw, d->pre, d->pre_len * sizeof *yw);
  for (size_t i = 0; err == FL_OK && i < d->k; i++) {
    if (d->held[i])
      continue;
    err = pair_seed(d, i, seed);
    /* The opposite of the sign fl__secagg_mask added it with. */
    if (err == FL_OK)
      err = fl__secagg_prg_add(seed, d->peer[i] > d->self ? -1 : 1, yw, d->pre_len);
  }
  OPENSSL_cleanse(seed, sizeof seed);
  return err;
}

int fl__sa_dev_mask(fl_sa_dev *d, const Fl__V1__SecAggState *st, const float *x, size_t len,
                    double clip, uint32_t *q, uint8_t *y) {
  fl_secagg_quant qt;
  uint32_t *xq = NULL, *yw = NULL, *live = NULL;
  uint8_t(*seeds)[FL_SECAGG_SEED_LEN] = NULL;
  size_t m = 0;
  if (st->phase != FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED || d->peer == NULL ||
      st->round_id != d->round_id || st->participant != d->self)
    return FL_E_STATE;
  int err = open_inbox(d, st);
  if (err == FL_OK)
    err = fl__secagg_quant_init(&qt, clip, d->n);
  xq = malloc((len + 1) * sizeof *xq);
  yw = malloc((len + 1) * sizeof *yw);
  live = calloc(d->k + 1, sizeof *live);
  seeds = calloc(d->k + 1, sizeof *seeds);
  if (err == FL_OK && (xq == NULL || yw == NULL || live == NULL || seeds == NULL))
    err = FL_E_NOMEM;
  if (err == FL_OK)
    err = fl__secagg_quantize(&qt, x, len, xq);
  bool pre = d->pre != NULL && d->pre_len == len;
  if (err == FL_OK && pre)
    err = mask_from_pre(d, yw);
  /* Pairwise masks only with the neighbours whose shares arrived: the others are out of the
   * round for everyone (the coordinator relays the shares of live participants only). */
  for (size_t i = 0; err == FL_OK && !pre && i < d->k; i++) {
    if (!d->held[i])
      continue;
    err = pair_seed(d, i, seeds[m]);
    live[m++] = d->peer[i];
  }
  if (err == FL_OK && !pre && m < d->threshold)
    err = FL_E_REFUSED;
  if (err == FL_OK && !pre)
    err = fl__secagg_mask(xq, len, d->self, d->b, live, (const uint8_t(*)[FL_SECAGG_SEED_LEN])seeds,
                          m, yw);
  if (err != FL_OK && yw != NULL)
    memset(yw, 0, len * sizeof *yw); /* a half-masked input must never be sent */
  for (size_t i = 0; err == FL_OK && i < len; i++) {
    y[4 * i] = (uint8_t)yw[i];
    y[4 * i + 1] = (uint8_t)(yw[i] >> 8);
    y[4 * i + 2] = (uint8_t)(yw[i] >> 16);
    y[4 * i + 3] = (uint8_t)(yw[i] >> 24);
  }
  if (err == FL_OK && q != NULL)
    memcpy(q, xq, len * sizeof *xq);
  if (seeds != NULL)
    OPENSSL_cleanse(seeds, d->k * sizeof *seeds);
  free(seeds);
  free(live);
  free(xq);
  free(yw);
  return err;
}

int fl__sa_dev_unmask(fl_sa_dev *d, const Fl__V1__SecAggState *st, Fl__V1__SecAggUnmask *out) {
  size_t m = 0;
  if (st->phase != FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK || d->peer == NULL ||
      st->round_id != d->round_id || st->participant != d->self)
    return FL_E_STATE;
  for (size_t j = 0; j < st->n_survivors; j++)
    if (peer_index(d, st->survivors[j]) < 0 || !d->held[peer_index(d, st->survivors[j])])
      return FL_E_PARSE;
  if (st->n_survivors < d->threshold)
    return FL_E_REFUSED;
  for (size_t i = 0; i < d->k; i++) {
    bool survived = false;
    if (!d->held[i])
      continue;
    for (size_t j = 0; j < st->n_survivors && !survived; j++)
      survived = st->survivors[j] == d->peer[i];
    uint8_t *buf = d->unmask + m * FL_SHAMIR_SHARE_LEN;
    fl__shamir_encode(survived ? &d->held_b[i] : &d->held_s[i], buf);
    fl__v1__sec_agg_unmask_share__init(&d->ushares[m]);
    d->ushares[m].owner = d->peer[i];
    d->ushares[m].self_mask = survived;
    d->ushares[m].share = (ProtobufCBinaryData){FL_SHAMIR_SHARE_LEN, buf};
    d->ushare_ptrs[m] = &d->ushares[m];
    m++;
  }
  fl__v1__sec_agg_unmask__init(out);
  out->round_id = d->round_id;
  out->n_shares = m;
  out->shares = d->ushare_ptrs;
  return FL_OK;
}

void fl__sa_dev_free(fl_sa_dev *d) {
  if (d == NULL)
    return;
  if (d->held_s != NULL)
    OPENSSL_cleanse(d->held_s, d->k * sizeof *d->held_s);
  if (d->held_b != NULL)
    OPENSSL_cleanse(d->held_b, d->k * sizeof *d->held_b);
  if (d->unmask != NULL)
    OPENSSL_cleanse(d->unmask, d->k * FL_SHAMIR_SHARE_LEN);
  free(d->peer);
  free(d->peer_cpk);
  free(d->peer_spk);
  free(d->held_s);
  free(d->held_b);
  free(d->held);
  free(d->sealed);
  free(d->unmask);
  free(d->msgs);
  free(d->msg_ptrs);
  free(d->ushares);
  free(d->ushare_ptrs);
  if (d->pre != NULL)
    OPENSSL_cleanse(d->pre, d->pre_len * sizeof *d->pre);
  free(d->pre);
  OPENSSL_cleanse(d, sizeof *d);
}

/* ---- the round's steps (client_internal.h: round.c and train.c call them) --------------- */

/* How long a device waits between two looks at the round's state when the coordinator says
 * nothing (one without long polls): phases last seconds. */
#define SA_POLL_MS 250
/* How long a poll may be held by the coordinator until the awaited phase comes (a long poll):
 * within the request timeout, with room for the answer. */
#define SA_HOLD_MS 20000

/* POST of a packed message; the phase becomes ph. */
static int sa_post(fl_client *c, const char *path, const ProtobufCMessage *m, fl__phase ph) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = fl__malloc(c->alloc, n + 1);
  if (buf == NULL)
    return FL_E_NOMEM;
  protobuf_c_message_pack(m, buf);
  int err = fl__request_set(c, "POST", path, buf, n);
  fl__free(c->alloc, buf);
  if (err == FL_OK) {
    c->phase = ph;
    c->attempts = 0;
  }
  return err;
}

/* Asks for the round's state, after delay_ms, waiting for the SecAggPhase want. */
static int sa_poll(fl_client *c, int want, int64_t delay_ms) {
  Fl__V1__SecAggStateRequest q = FL__V1__SEC_AGG_STATE_REQUEST__INIT;
  q.round_id = c->task.round_id;
  q.wait_for = (Fl__V1__SecAggPhase)want;
  long limit = (c->request_timeout_ms > 0 ? c->request_timeout_ms : 60000) / 2;
  q.hold_ms = (uint32_t)(limit < SA_HOLD_MS ? limit : SA_HOLD_MS);
  int err = sa_post(c, "/v1/secagg/state", &q.base, FL__PH_SA_POLL);
  if (err != FL_OK)
    return err;
  c->sa_wait = want;
  if (delay_ms > 0) {
    c->io = FL__IO_BACKOFF;
    c->wake_at_ms = fl__client_now_ms() + delay_ms;
  }
  return FL_OK;
}

int fl__sa_begin(fl_client *c) {
  Fl__V1__SecAggAdvertise adv;
  c->sa = fl__malloc(c->alloc, sizeof *c->sa);
  if (c->sa == NULL)
    return FL_E_NOMEM;
  int err =
      fl__sa_dev_init(c->sa, c->task.round_id, c->device_id, c->task.sa_threshold, c->key, &adv);
  if (err != FL_OK) {
    fl__free(c->alloc, c->sa);
    c->sa = NULL;
    return err;
  }
  return sa_post(c, "/v1/secagg/keys", &adv.base, FL__PH_SA_KEYS);
}

int fl__sa_after_train(fl_client *c) {
  /* The masks expanded now, on the training thread; a failure only leaves it to the masked
   * phase (fl__sa_dev_mask computes them all then). */
  (void)fl__sa_dev_premask(c->sa, c->sa_delta, c->sa_len, (double)c->task.clip_norm);
  return sa_poll(c, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED, 0);
}

int fl__sa_after_upload(fl_client *c) {
  fl__exchange_end(c);
  return sa_poll(c, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_UNMASK, 0);
}

/* The masked input as the upload of the round (sent by round.c's UPLOAD phase). */
static int sa_masked_upload(fl_client *c, const Fl__V1__SecAggState *st) {
  uint8_t *y = fl__malloc(c->alloc, 4 * c->sa_len + 1), content[FL_SHA256_LEN];
  fl__upload_buf ub;
  if (y == NULL)
    return FL_E_NOMEM;
  int err = fl__sa_dev_mask(c->sa, st, c->sa_delta, c->sa_len, (double)c->task.clip_norm, NULL, y);
  fl__update_params p = {.device_id = c->device_id,
                         .round_id = c->task.round_id,
                         .model_id = c->task.model_id,
                         .base_version = c->task.base_version,
                         .sample_count = c->result.sample_count,
                         .loss = c->result.loss};
  if (err == FL_OK)
    err = fl__update_pack_masked(&p, y, c->sa_len, c->alloc, &ub, content);
  fl__free(c->alloc, y);
  if (err == FL_OK)
    err = fl__request_set_upload_buf(c, &ub, content);
  if (err == FL_OK) {
    c->phase = FL__PH_UPLOAD;
    c->attempts = 0;
  }
  return err;
}

/* The round's state: the next message when the awaited phase has come, another look later
 * when not yet, the round's end when it was abandoned or moved on without this device. */
static int sa_on_state(fl_client *c, const Fl__V1__SecAggState *st) {
  int want = c->sa_wait;
  if (st->phase == FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_ABANDONED) {
    fl__client_err(c, "secure aggregation of round %" PRIu64 " abandoned: %.160s", c->task.round_id,
                   st->reason);
    return FL_E_REFUSED;
  }
  if ((int)st->phase < want)
    return sa_poll(c, want, st->poll_after_ms > 0 ? (int64_t)st->poll_after_ms : SA_POLL_MS);
  if ((int)st->phase > want || st->participant == 0) {
    fl__client_err(c,
                   "secure aggregation of round %" PRIu64
                   " went on without this device"
                   " (phase %d, participant %" PRIu32 ")",
                   c->task.round_id, (int)st->phase, st->participant);
    return FL_E_REFUSED;
  }
  if (want == FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES) {
    Fl__V1__SecAggShares m;
    int err = fl__sa_dev_shares(c->sa, st, &m);
    return err == FL_OK ? sa_post(c, "/v1/secagg/shares", &m.base, FL__PH_SA_SHARES) : err;
  }
  if (want == FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_MASKED)
    return sa_masked_upload(c, st);
  Fl__V1__SecAggUnmask m;
  int err = fl__sa_dev_unmask(c->sa, st, &m);
  return err == FL_OK ? sa_post(c, "/v1/secagg/unmask", &m.base, FL__PH_SA_UNMASK) : err;
}

int fl__sa_on_answer(fl_client *c, const fl_http_response *resp) {
  switch (c->phase) {
    case FL__PH_SA_KEYS:
      fl__exchange_end(c);
      return sa_poll(c, FL__V1__SEC_AGG_PHASE__SECAGG_PHASE_SHARES, 0);
    case FL__PH_SA_SHARES:
      fl__exchange_end(c);
      c->phase = FL__PH_TRAIN; /* trained while the others share */
      return FL_OK;
    case FL__PH_SA_UNMASK:
      fl__round_finish(c, FL_ROUND_UPLOADED, FL_OK);
      return FL_OK;
    default:
      break;
  }
  fl__answer_arena ar;
  Fl__V1__SecAggState *st = (Fl__V1__SecAggState *)fl__answer_unpack(
      c, &ar, &fl__v1__sec_agg_state__descriptor, resp, "secure aggregation state");
  if (st == NULL)
    return FL_E_PARSE;
  fl__exchange_end(c);
  int err = st->round_id == c->task.round_id ? sa_on_state(c, st) : FL_E_PARSE;
  fl__v1__sec_agg_state__free_unpacked(st, &ar.pa);
  return err;
}

void fl__sa_end(fl_client *c) {
  if (c->sa != NULL) {
    fl__sa_dev_free(c->sa);
    fl__free(c->alloc, c->sa);
    c->sa = NULL;
  }
  if (c->sa_delta != NULL) {
    OPENSSL_cleanse(c->sa_delta, c->sa_len * sizeof *c->sa_delta);
    fl__free(c->alloc, c->sa_delta);
    c->sa_delta = NULL;
  }
  c->sa_len = 0;
}
