/*
 * Unmasking at close (SECAGG.md "Masked input and unmasking"): the partial sums of the masked
 * inputs added mod 2^32, then for every u in U2 its self mask PRG(b_u) removed (b_u rebuilt
 * from t shares) and for every d in U1 \ U2 the pairwise masks its surviving neighbours added
 * (s_sk_d rebuilt from t shares, checked against the s_pk_d it advertised, the seeds agreed
 * again with each neighbour's s_pk). What remains is the sum of the quantized inputs of U2.
 */
#include <inttypes.h>
#include <math.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secagg.h"
#include "secagg/protocol.h"

/* sum of the round's partials (each n words, written by aggregate.c in host order) into acc;
 * *count receives the inputs they hold. */
static int sum_words(PGconn *c, uint64_t round_id, uint32_t *acc, size_t n, uint64_t *count) {
  fl_pgp p;
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r =
      fl__pg_exec(c, "SELECT sum, count FROM partials WHERE round_id = $1", &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_OK;
  *count = 0;
  for (int row = 0; row < PQntuples(r) && err == FL_OK; row++) {
    const uint8_t *v = (const uint8_t *)PQgetvalue(r, row, 0);
    if ((size_t)PQgetlength(r, row, 0) != n * 4) {
      err = FL_E_SHAPE;
      break;
    }
    for (size_t i = 0; i < n; i++) {
      uint32_t w;
      memcpy(&w, v + 4 * i, sizeof w);
      acc[i] += w;
    }
    *count += (uint64_t)fl__pg_bin_i32(r, row, 1);
  }
  PQclear(r);
  return err;
}

/* The secret of one owner from its shares (rows [from, to) of r). */
static int rebuild(const PGresult *r, int from, int to, uint32_t t, uint8_t secret[32]) {
  fl_shamir_share sh[256];
  uint32_t m = 0;
  for (int row = from; row < to && m < 256; row++) {
    if (PQgetlength(r, row, 2) != FL_SHAMIR_SHARE_LEN ||
        fl__shamir_decode((const uint8_t *)PQgetvalue(r, row, 2), &sh[m]) != FL_OK)
      return FL_E_PARSE;
    m++;
  }
  return fl__shamir_combine(sh, m, t, secret);
}

/* Removes the masks named by the unmasking shares from acc. why gets a reason on refusal. */
static int remove_masks(PGconn *c, uint64_t round_id, const fl_sa_member *m, uint32_t n, uint32_t t,
                        uint32_t *acc, size_t len, char *why, size_t wl) {
  fl_pgp p;
  uint8_t secret[32], pub[32], shared[32], seed[32];
  fl__pgp_init(&p);
  fl__pgp_u64(&p, round_id);
  PGresult *r = fl__pg_exec(c,
                            "SELECT owner, self_mask, share FROM secagg_unmask"
                            " WHERE round_id = $1 ORDER BY owner, holder",
                            &p, true, NULL);
  if (r == NULL)
    return FL_E_DB;
  int err = FL_OK, rows = PQntuples(r);
  for (int from = 0, to; from < rows && err == FL_OK; from = to) {
    uint32_t owner = (uint32_t)fl__pg_bin_i32(r, from, 0);
    bool self = PQgetvalue(r, from, 1)[0] != 0;
    for (to = from; to < rows && (uint32_t)fl__pg_bin_i32(r, to, 0) == owner; to++)
      ;
    if (owner < 1 || owner > n || self != m[owner - 1].in_sum) {
      snprintf(why, wl, "secagg_unmask_failed: shares of the wrong kind for participant %u", owner);
      err = FL_E_REFUSED;
      break;
    }
    if (rebuild(r, from, to, t, secret) != FL_OK) {
      snprintf(why, wl, "secagg_unmask_failed: the shares of participant %u do not combine", owner);
      err = FL_E_REFUSED;
      break;
    }
    const fl_sa_member *d = &m[owner - 1];
    if (self) {
      err = fl__secagg_unmask_self(acc, len, secret);
      continue;
    }
    /* A wrong s_sk would leave masks in the sum: the key it rebuilt must be the one advertised. */
    if (fl__x25519_public(secret, pub) != FL_OK || memcmp(pub, d->s_pk, 32) != 0) {
      snprintf(why, wl, "secagg_unmask_failed: participant %u's rebuilt key is not its s_pk",
               owner);
      err = FL_E_REFUSED;
      break;
    }
    for (uint32_t j = 0; j < d->d && err == FL_OK; j++) {
      const fl_sa_member *u = &m[d->nbr[j] - 1];
      if (!u->in_sum)
        continue;
      err = fl__x25519_agree(secret, u->s_pk, shared);
      if (err == FL_OK)
        err = fl__secagg_mask_seed(shared, seed);
      if (err == FL_OK)
        err = fl__secagg_unmask_pair(acc, len, u->participant, d->participant, seed);
    }
  }
  OPENSSL_cleanse(secret, sizeof secret);
  OPENSSL_cleanse(seed, sizeof seed);
  OPENSSL_cleanse(shared, sizeof shared);
  PQclear(r);
  return err;
}

int fl__secagg_mean(PGconn *c, uint64_t round_id, const fl_plan *p, size_t n_params, float *mean,
                    uint32_t *count, char *why, size_t wl) {
  fl_sa_member *m = NULL;
  uint32_t n = 0, u2 = 0;
  uint64_t inputs = 0;
  fl_secagg_quant q;
  uint32_t *acc = calloc(n_params + 1, sizeof *acc);
  int err = FL_E_NOMEM;
  if (acc == NULL)
    return err;
  err = FL_E_DB;
  if (fl__secagg_members(c, round_id, &m, &n))
    goto out;
  for (uint32_t i = 0; i < n; i++)
    u2 += m[i].in_sum;
  err = sum_words(c, round_id, acc, n_params, &inputs);
  if (err == FL_OK && inputs != u2) {
    snprintf(why, wl, "secagg_unmask_failed: the partial sums hold %" PRIu64 " inputs, U2 %u",
             inputs, u2);
    err = FL_E_REFUSED;
  }
  if (err == FL_OK)
    err = remove_masks(c, round_id, m, n, p->secagg.threshold, acc, n_params, why, wl);
  /* The devices quantized with the task's clip, a float32. */
  if (err == FL_OK && fl__secagg_quant_init(&q, (double)(float)p->clip_norm, n) != FL_OK) {
    snprintf(why, wl, "secagg_unmask_failed: no quantization for %u participants", n);
    err = FL_E_REFUSED;
  }
  if (err == FL_OK)
    err = fl__secagg_dequantize_mean(&q, acc, n_params, u2, mean);
  /* What SecAgg leaves of the norm check: honest inputs are in [-C, C] coordinate by
   * coordinate, so is their mean; a device that sent words outside its range (or garbage)
   * shows here, though not which one. */
  for (size_t i = 0; err == FL_OK && i < n_params; i++)
    if (!(fabs(mean[i]) <= q.clip * (1.0 + 1e-6) + 1.0 / q.scale)) {
      snprintf(why, wl,
               "secagg_mean_out_of_range: coordinate %zu of the unmasked mean is %g, the clip %g",
               i, (double)mean[i], q.clip);
      err = FL_E_REFUSED;
    }
  if (err == FL_OK)
    *count = u2;
out:
  fl__secagg_members_free(m, n);
  free(acc);
  return err;
}
