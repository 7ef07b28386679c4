/*
 * Aggregators: the rule that turns a round's accepted deltas into the pseudo-gradient the
 * server optimizer (optimizer.h) applies. Pure math, a name table, one call site at close.
 *
 * Two kinds:
 *   streaming  FedAvg: the sample-weighted mean, folded update by update into group-committed
 *              partial sums (aggregate.c); nothing per update is kept, so there is no
 *              aggregate function here.
 *   stored     robust rules that need every update at close. They are unweighted (each
 *              accepted update counts once) and work on the decoded deltas:
 *     median        coordinate-wise median (the mean of the two middle values for even n)
 *     trimmed_mean  per coordinate, drop the floor(beta n) smallest and largest values and
 *                   average the rest (beta = trim_fraction, 0 <= beta < 0.5)
 *     krum          the update whose summed squared distance to its n - f - 2 nearest others
 *                   is smallest (Blanchard et al. 2017); f = byzantine; needs n >= 2f + 3
 *     multi_krum    the mean of the m updates with the lowest Krum scores (m = krum_select)
 *     bulyan        El Mhamdi et al. 2018: select theta = n - 2f updates by repeated Krum on
 *                   what remains, then per coordinate average the n - 4f selected values
 *                   closest to the selection's median (equal distances: the smaller value
 *                   first); needs n >= 4f + 3
 * Ties are broken by the lower update index, so a result never depends on anything but the
 * inputs and their order. Inputs are finite (the coordinator refuses non-finite deltas), and
 * so is every result: each is a mean of input values or one of them.
 */
#ifndef FL__AGGREGATOR_H
#define FL__AGGREGATOR_H

#include <stddef.h>
#include <stdint.h>

#include "fl/alloc.h"

typedef enum fl_agg_rule {
  FL_AGGR_FEDAVG = 0,
  FL_AGGR_MEDIAN = 1,
  FL_AGGR_TRIMMED_MEAN = 2,
  FL_AGGR_KRUM = 3,
  FL_AGGR_MULTI_KRUM = 4,
  FL_AGGR_BULYAN = 5
} fl_agg_rule;

typedef enum fl_agg_kind { FL_AGG_STREAMING = 0, FL_AGG_STORED = 1 } fl_agg_kind;

typedef struct fl_agg_params {
  fl_agg_rule rule;
  double trim_fraction; /* trimmed_mean: beta per side */
  uint32_t byzantine;   /* krum, multi_krum, bulyan: f, the updates assumed malicious */
  uint32_t krum_select; /* multi_krum: m */
} fl_agg_params;

/* Name <-> rule ("fedavg", "median", "trimmed_mean", "krum", "multi_krum", "bulyan");
 * -1 / NULL when unknown. */
int fl__agg_rule(const char *name);
const char *fl__agg_rule_name(fl_agg_rule rule);
fl_agg_kind fl__agg_kind(fl_agg_rule rule);

/* The fewest updates the rule can aggregate with these parameters (1 for fedavg, median and
 * trimmed_mean; 2f + 3 for krum; max(2f + 3, m) for multi_krum; 4f + 3 for bulyan). */
size_t fl__agg_min_updates(const fl_agg_params *p);

/* Checks the parameters against the number of updates a round may close with (min_n, the
 * plan's min_participants) and the most it aggregates (max_n, its target). Returns 0, or -1
 * with a sentence in why (for 400 bad_plan). */
int fl__agg_check(const fl_agg_params *p, size_t min_n, size_t max_n, char *why, size_t why_len);

/* Where the updates come from. read copies coordinates [off, off + len) of update i (as
 * floats) to dst and returns FL_OK or an error, which aborts the aggregation. The rules read
 * block by block, so stored updates can stay encoded (and on disk or in the database) and
 * memory at close stays O(n * block + n^2), not n decoded copies. */
typedef struct fl_agg_source {
  size_t n, dim;
  int (*read)(void *ctx, size_t i, size_t off, size_t len, float *dst);
  void *ctx;
} fl_agg_source;

/* A source over n in-memory rows of dim floats (rows[i] points at update i); *src keeps the
 * pointer to rows, which must outlive it. */
void fl__agg_source_rows(fl_agg_source *src, const float *const *rows, size_t n, size_t dim);

/* Aggregates the source's updates into out (dim floats) with a stored rule. FL_OK; FL_E_INVAL
 * for a streaming rule, bad parameters or fewer updates than fl__agg_min_updates; FL_E_NOMEM;
 * or the source's error. On error out is untouched. */
int fl__agg_run(const fl_agg_params *p, const fl_agg_source *src, float *out,
                const fl_allocator *a);

/* Krum scores (score[i] = sum of the k smallest squared distances from update i to the
 * others, k = n - f - 2), in double; for tests and for the round's metrics. */
int fl__agg_krum_scores(const fl_agg_source *src, uint32_t f, double *score, const fl_allocator *a);

#endif
