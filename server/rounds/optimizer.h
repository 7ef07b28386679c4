/*
 * Server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2). The
 * pseudo-gradient is the weighted mean of the client deltas (w_local - w_base), so a step
 * *adds* it: FedAvg is w += lr * delta.
 *
 *   FedAvg   w += lr * d
 *   FedAvgM  m = momentum * m + d;                     w += lr * m
 *   FedAdam  m = b1 m + (1-b1) d;  v = b2 v + (1-b2) d^2;              w += lr * m / (sqrt(v) + tau)
 *   FedYogi  m as Adam;            v = v - (1-b2) d^2 sign(v - d^2);   w as Adam
 *
 * Defaults: lr 1.0 (FedAvg, FedAvgM), 0.01 (FedAdam, FedYogi); momentum 0.9; b1 0.9, b2 0.99,
 * tau 1e-3 (the paper's values); v starts at tau^2 as in the paper (v_{-1} >= tau^2), m at 0.
 * No bias correction, as in the paper.
 */
#ifndef FL__OPTIMIZER_H
#define FL__OPTIMIZER_H

#include <stdbool.h>
#include <stddef.h>

enum { FL_OPT_FEDAVG = 0, FL_OPT_FEDAVGM = 1, FL_OPT_FEDADAM = 2, FL_OPT_FEDYOGI = 3 };

typedef struct fl_opt_params {
  int kind;
  double lr, momentum, beta1, beta2, tau;
} fl_opt_params;

/* Name <-> kind ("fedavg", "fedavgm", "fedadam", "fedyogi"); -1 / NULL when unknown. */
int fl__opt_kind(const char *name);
const char *fl__opt_name(int kind);
void fl__opt_defaults(fl_opt_params *p, int kind);
/* Number of state vectors of n floats the optimizer keeps: 0, 1 (m) or 2 (m, v). */
int fl__opt_num_state(int kind);
/* Initial state: m = 0, v = tau^2 (either may be NULL when not used). */
void fl__opt_init_state(const fl_opt_params *p, float *m, float *v, size_t n);
/* One server step on w (n floats) with pseudo-gradient d; m and v as fl__opt_num_state says. */
void fl__opt_step(const fl_opt_params *p, float *w, const float *d, float *m, float *v, size_t n);

#endif
