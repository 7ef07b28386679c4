/*
 * The device's side of secure aggregation (SecAgg+, docs/SECAGG.md "Protocol"): one round's
 * keys and the shares it holds for its neighbours, and the message of each phase built from
 * the coordinator's SecAggState. No I/O: libflclient's round and the integration tests drive
 * it. The secrets live only in this struct, in memory, for one round; fl__sa_dev_free wipes
 * them. Not installed.
 */
#ifndef FL__CLIENT_SECAGG_DEV_H
#define FL__CLIENT_SECAGG_DEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "fl/v1/fleetlearn.pb-c.h"
#include "secagg.h"

typedef struct fl_sa_dev {
  uint64_t round_id, device_id;
  uint32_t threshold;
  uint32_t self, n; /* participant number and count, from the share phase on */
  uint8_t c_sk[FL_X25519_LEN], c_pk[FL_X25519_LEN];
  uint8_t s_sk[FL_X25519_LEN], s_pk[FL_X25519_LEN];
  uint8_t b[FL_SECAGG_SEED_LEN];
  uint8_t sig[FL_SIG_LEN]; /* over the keys digest */
  size_t k;                /* neighbours */
  uint32_t *peer;          /* their participant numbers */
  uint8_t (*peer_cpk)[FL_X25519_LEN], (*peer_spk)[FL_X25519_LEN];
  /* The shares the neighbours sent (by neighbour index): of their s_sk and of their b. */
  fl_shamir_share *held_s, *held_b;
  bool *held;
  /* The messages' storage: sealed shares (k x 104) and unmasking shares (k x 44). */
  uint8_t *sealed, *unmask;
  Fl__V1__SecAggSealed *msgs;
  Fl__V1__SecAggSealed **msg_ptrs;
  Fl__V1__SecAggUnmaskShare *ushares;
  Fl__V1__SecAggUnmaskShare **ushare_ptrs;
  /* fl__sa_dev_premask's input masked with every neighbour's pairwise mask (pre_len words). */
  uint32_t *pre;
  size_t pre_len;
} fl_sa_dev;

/* Fresh key pairs and self-mask seed for a round, and the advertisement signed with the
 * device key (its digest: SIGNING.md "Secure aggregation keys"). *adv points into d. */
int fl__sa_dev_init(fl_sa_dev *d, uint64_t round_id, uint64_t device_id, uint32_t threshold,
                    const fl_key *key, Fl__V1__SecAggAdvertise *adv);

/* Share phase: the neighbours of st (each key signature checked with the device key the
 * coordinator relays, FL_E_BADSIG if one fails), then s_sk and b split t-of-k among them and
 * sealed one message each. *out points into d. FL_E_STATE when st is not the share phase or
 * names no participant, FL_E_REFUSED with fewer neighbours than the threshold. */
int fl__sa_dev_shares(fl_sa_dev *d, const Fl__V1__SecAggState *st, Fl__V1__SecAggShares *out);

/* Masked-input phase: opens the inbox (the shares the live neighbours sent; FL_E_BADSIG for a
 * message that does not open), quantizes x (already clipped to clip: SECAGG.md
 * "Quantization", n_max = st->n) and masks it with the self mask and the pairwise masks of
 * the neighbours whose shares arrived. y receives len uint32 LE words (4 len bytes); q, when
 * not NULL, the quantized input. */
int fl__sa_dev_mask(fl_sa_dev *d, const Fl__V1__SecAggState *st, const float *x, size_t len,
                    double clip, uint32_t *q, uint8_t *y);

/* Before the masked-input phase, once the share phase gave the neighbours (on the training
 * thread, while the others still share): x quantized and masked with the self mask and the
 * pairwise masks of all neighbours, kept in d. fl__sa_dev_mask then only removes the masks of
 * the neighbours whose shares did not arrive (a few dropouts) instead of expanding k + 1
 * masks when the phase begins. FL_E_STATE before the share phase. */
int fl__sa_dev_premask(fl_sa_dev *d, const float *x, size_t len, double clip);

/* Unmasking phase: for every neighbour whose shares this device holds, its share of b when
 * st->survivors names it, of s_sk when not. FL_E_REFUSED when fewer than t neighbours
 * survived (their inputs would be the only ones in what is unmasked). *out points into d. */
int fl__sa_dev_unmask(fl_sa_dev *d, const Fl__V1__SecAggState *st, Fl__V1__SecAggUnmask *out);

/* Wipes the secrets and frees what d holds. */
void fl__sa_dev_free(fl_sa_dev *d);

#endif
