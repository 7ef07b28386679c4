/*
 * Splitting a labelled data set over simulated devices.
 *
 * A partition lists, for each party (device), the indices of its examples in the data set:
 * party p owns index[offsets[p] .. offsets[p+1]). Every function draws from a "pool" of example
 * indices (NULL pool: all examples 0..n-1), so a fleet can use a random subset of a large data
 * set. Parties never share an example; every pool example is assigned to exactly one party,
 * except for the shards scheme, which drops the remainder that does not fill a whole shard, and
 * the labels scheme, which leaves out the classes no party holds.
 *
 * On error *out is untouched and nothing is allocated.
 */
#ifndef SIM_PARTITION_H
#define SIM_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

typedef struct sim_partition {
  size_t n_parties;
  size_t *offsets; /* n_parties + 1 */
  uint32_t *index; /* offsets[n_parties] example indices */
} sim_partition;

void sim_partition_free(sim_partition *p); /* leaves p zeroed; NULL and zeroed are fine */

static inline size_t sim_partition_size(const sim_partition *p, size_t party) {
  return p->offsets[party + 1] - p->offsets[party];
}

/* A uniformly random subset of k of the indices 0..n-1, in random order (k <= n). */
int sim_subsample(uint32_t **out, size_t n, size_t k, fl_rng *r);

/* IID: the pool shuffled and dealt in near-equal contiguous runs (sizes differ by <= 1). */
int sim_partition_iid(sim_partition *out, size_t n_pool, const uint32_t *pool, size_t n_parties,
                      fl_rng *r);

/* Label skew as in NIID-Bench (Li et al. 2021): for each class, proportions over the parties are
 * drawn from Dirichlet(alpha); parties that already hold their fair share (n/parties) get none
 * of the next class; the class's examples are split by those proportions. The whole draw is
 * repeated until every party has at least min_size examples. FL_E_STATE when that does not
 * happen within max_attempts draws (say, alpha too small for the fleet). */
int sim_partition_dirichlet(sim_partition *out, const int32_t *labels, int32_t n_classes,
                            size_t n_pool, const uint32_t *pool, size_t n_parties, double alpha,
                            size_t min_size, int max_attempts, fl_rng *r);

/* McMahan et al. 2017 pathological non-IID: the pool sorted by label, cut into
 * shards_per_party * n_parties shards of equal size, each party gets shards_per_party shards
 * drawn at random without replacement. */
int sim_partition_shards(sim_partition *out, const int32_t *labels, size_t n_pool,
                         const uint32_t *pool, size_t n_parties, size_t shards_per_party,
                         fl_rng *r);

/* NIID-Bench's quantity-based label imbalance ("#C=k", partition noniid-#label<k> in Li et al.
 * 2021): every party holds examples of exactly k of the n_classes classes. Party p's first
 * class is p mod n_classes (so every class is held when there are enough parties); its other
 * k - 1 are drawn uniformly among the classes it does not hold yet. Each class's pool examples
 * are shuffled and cut into as many near-equal runs as parties hold it (sizes differ by at most
 * one, the longer runs first), dealt to those parties in party order. Examples of a class no
 * party holds are left out. FL_E_INVAL for k = 0 or k > n_classes; FL_E_STATE when a class
 * has fewer pool examples than parties holding it (some party would get fewer than k). */
int sim_partition_labels(sim_partition *out, const int32_t *labels, int32_t n_classes,
                         size_t n_pool, const uint32_t *pool, size_t n_parties, size_t k,
                         fl_rng *r);

/* Parses "iid", "dirichlet:ALPHA", "shards:K" (K shards per party) or "labels:K" (K classes
 * per party). */
typedef struct sim_partition_scheme {
  enum { SIM_PART_IID, SIM_PART_DIRICHLET, SIM_PART_SHARDS, SIM_PART_LABELS } kind;
  double alpha;
  size_t shards;
  size_t labels;
} sim_partition_scheme;
int sim_partition_scheme_parse(sim_partition_scheme *out, const char *s);

/* Applies a parsed scheme (min_size for Dirichlet; 100 attempts). */
int sim_partition_apply(sim_partition *out, const sim_partition_scheme *s, const int32_t *labels,
                        int32_t n_classes, size_t n_pool, const uint32_t *pool, size_t n_parties,
                        size_t min_size, fl_rng *r);

#endif
