/*
 * FedBuff's staleness weighting (Nguyen et al. 2022, "Federated Learning with Buffered
 * Asynchronous Aggregation"), pure math (staleness.c). An update trained on version b and
 * folded into the buffer whose base is version v has staleness tau = v - b (versions, not
 * seconds). Its factor in the buffer's sum is s(tau) * n (n its sample count); the buffer's
 * weight adds n alone, so that the close's mean (close.c: sum / weight) is
 *
 *     mean = sum_i s(tau_i) n_i d_i / sum_i n_i
 *
 * the paper's Algorithm 1 (sum of s(tau) d over the buffer, divided by the buffer's size)
 * with FedAvg's sample weighting in place of the plain count. A buffer of stale updates moves
 * the model less than a buffer of fresh ones, which normalising by sum s(tau_i) n_i would
 * undo. The server optimizer then steps on that mean (w += server_lr * mean for fedavg).
 *
 *   "sqrt"     s(tau) = 1 / sqrt(1 + tau)   (the paper's default)
 *   "poly:a"   s(tau) = (1 + tau)^-a        (a in [0, 10]; "sqrt" is poly:0.5)
 *   "constant" s(tau) = 1
 */
#ifndef FL__STALENESS_H
#define FL__STALENESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct fl_staleness {
  double exponent; /* s(tau) = (1 + tau)^-exponent: 0.5 sqrt, 0 constant */
  int kind;        /* FL_STALE_* (how the plan names it) */
} fl_staleness;

enum { FL_STALE_SQRT = 0, FL_STALE_CONSTANT = 1, FL_STALE_POLY = 2 };

/* Parses "sqrt", "constant" or "poly:a"; -1 with a message when it is none of them. */
int fl__staleness_parse(const char *text, fl_staleness *out, char msg[160]);
/* The plan's spelling of f (round trip of fl__staleness_parse) into buf. */
void fl__staleness_name(const fl_staleness *f, char *buf, size_t len);
/* s(tau), in (0, 1]. */
double fl__staleness_weight(const fl_staleness *f, uint32_t tau);
/* The factor an update's delta is folded into its buffer's sum with: its FedAvg factor
 * (sample count, or a DP plan's clip scale) times s(tau); stale_weight 0 stands for a sync
 * plan's update (factor unchanged). The buffer's weight adds the FedAvg weight alone. */
double fl__staleness_fold_scale(double fedavg_scale, double stale_weight);
/* The version an upload's staleness is measured against: tau = buffer_base - update_base,
 * -1 when the update's base is newer than the buffer's (no honest task names one). */
int64_t fl__staleness_tau(uint64_t buffer_base, uint64_t update_base);

#endif
